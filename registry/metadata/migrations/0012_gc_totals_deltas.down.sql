SELECT gc_totals_fold();
DROP FUNCTION gc_totals_fold();
DROP TABLE gc_totals_deltas;
