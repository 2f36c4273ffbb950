-- Retention policies and tag immutability, per repository pattern
-- (registry/retention). repository_regex and immutable_regex are compiled
-- from the spec when it is stored, so a manifest PUT checks immutability
-- in the statement that moves the tag.
CREATE TABLE retention_policies (
    name             text PRIMARY KEY,
    spec             jsonb   NOT NULL,
    repository_regex text    NOT NULL,          -- anchored; PostgreSQL's ~
    immutable_regex  text,                      -- tags that may not move to another digest
    enabled          boolean NOT NULL DEFAULT true,
    next_run_at      timestamptz,               -- NULL: never scheduled (no interval)
    worker           text,                      -- who holds the lease of a run
    lease_until      timestamptz,
    last_run_at      timestamptz,
    last_result      jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retention_policies_due ON retention_policies (next_run_at) WHERE enabled;
