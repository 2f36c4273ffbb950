-- The collector's running totals without a hot row. Every review that
-- deleted and every byte deletion updated its IDC's one gc_totals row
-- ('' for the cluster-wide counts) in its own transaction, so concurrent
-- collectors queued on that row, and one stalled in its transaction (a
-- paused process, a lost connection not yet noticed) held up every other
-- deletion. Deletions now append deltas; `gc status` adds the pending
-- deltas to gc_totals, and every collector pass ends by folding them
-- (gc_totals_fold), as storage usage's deltas are folded.

CREATE TABLE gc_totals_deltas (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idc               text   NOT NULL,
    manifests_deleted bigint NOT NULL DEFAULT 0,
    blobs_deleted     bigint NOT NULL DEFAULT 0,
    bytes_reclaimed   bigint NOT NULL DEFAULT 0,
    at                timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION gc_totals_fold() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    -- One fold at a time (others return at once).
    IF NOT pg_try_advisory_xact_lock(hashtextextended('gaia-gc-totals-fold', 0)) THEN
        RETURN 0;
    END IF;
    WITH d AS (DELETE FROM gc_totals_deltas RETURNING idc, manifests_deleted, blobs_deleted, bytes_reclaimed, at),
    s AS (SELECT idc, sum(manifests_deleted) AS m, sum(blobs_deleted) AS b, sum(bytes_reclaimed) AS y,
                 max(at) AS at, count(*) AS k
          FROM d GROUP BY idc),
    up AS (INSERT INTO gc_totals (idc, manifests_deleted, blobs_deleted, bytes_reclaimed, updated_at)
           SELECT idc, m, b, y, at FROM s ORDER BY idc
           ON CONFLICT (idc) DO UPDATE SET
               manifests_deleted = gc_totals.manifests_deleted + EXCLUDED.manifests_deleted,
               blobs_deleted = gc_totals.blobs_deleted + EXCLUDED.blobs_deleted,
               bytes_reclaimed = gc_totals.bytes_reclaimed + EXCLUDED.bytes_reclaimed,
               updated_at = greatest(gc_totals.updated_at, EXCLUDED.updated_at))
    SELECT coalesce(sum(k), 0) INTO n FROM s;
    RETURN n;
END $$;
