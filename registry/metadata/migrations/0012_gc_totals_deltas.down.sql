-- Fold what is pending into gc_totals, with no fold or deletion running
-- or starting meanwhile (gc_totals_fold only tries its lock: a fold in
-- progress would make it return without folding).
LOCK TABLE gc_totals_deltas IN ACCESS EXCLUSIVE MODE;
INSERT INTO gc_totals (idc, manifests_deleted, blobs_deleted, bytes_reclaimed, updated_at)
SELECT idc, sum(manifests_deleted), sum(blobs_deleted), sum(bytes_reclaimed), max(at)
FROM gc_totals_deltas GROUP BY idc ORDER BY idc
ON CONFLICT (idc) DO UPDATE SET
    manifests_deleted = gc_totals.manifests_deleted + EXCLUDED.manifests_deleted,
    blobs_deleted = gc_totals.blobs_deleted + EXCLUDED.blobs_deleted,
    bytes_reclaimed = gc_totals.bytes_reclaimed + EXCLUDED.bytes_reclaimed,
    updated_at = greatest(gc_totals.updated_at, EXCLUDED.updated_at);
DROP FUNCTION gc_totals_fold();
DROP TABLE gc_totals_deltas;
