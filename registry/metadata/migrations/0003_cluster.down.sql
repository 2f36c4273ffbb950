DROP TABLE replication_jobs;
DROP TABLE blob_placements;
