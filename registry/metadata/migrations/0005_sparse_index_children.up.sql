-- Children a sparse index (X-Gaia-Sparse-Index: a mirror's platform filter,
-- pull-through) lists while its repository lacks them. When such a child
-- arrives, its reference from the index is recorded (manifest_references),
-- so it cannot be deleted from under the index, as for a complete index.
CREATE TABLE manifest_pending_references (
    parent_id     bigint NOT NULL,
    repository_id bigint NOT NULL,
    child_digest  text   NOT NULL,
    PRIMARY KEY (parent_id, child_digest),
    FOREIGN KEY (parent_id, repository_id) REFERENCES manifests (id, repository_id) ON DELETE CASCADE
);
CREATE INDEX manifest_pending_references_child ON manifest_pending_references (repository_id, child_digest);
