-- The registry cluster: each IDC keeps blobs in its own storage; PostgreSQL
-- (shared) records which IDCs hold each blob, and queues eager replication.

CREATE TABLE blob_placements (
    digest     text NOT NULL REFERENCES blobs (digest) ON DELETE CASCADE,
    idc        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (digest, idc)
);

-- Blobs stored before the cluster existed are in the storage of the IDC
-- named "default" (a server's IDC when none is configured).
INSERT INTO blob_placements (digest, idc) SELECT digest, 'default' FROM blobs;

-- Copy a blob into an IDC that lacks it, ahead of the first pull there.
-- Servers of to_idc claim jobs with FOR UPDATE SKIP LOCKED.
CREATE TABLE replication_jobs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest      text   NOT NULL REFERENCES blobs (digest) ON DELETE CASCADE,
    repository  text   NOT NULL,   -- a repository the blob is linked in (the source serves it there)
    to_idc      text   NOT NULL,
    attempts    int    NOT NULL DEFAULT 0,
    last_error  text,
    not_before  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (digest, to_idc)
);
CREATE INDEX replication_jobs_due ON replication_jobs (to_idc, not_before);
