-- mirror-sync: admin mirror rules and the record of their runs.

CREATE TABLE mirror_rules (
    name        text PRIMARY KEY,
    spec        jsonb NOT NULL,          -- the rule as the admin API takes it (password included: never returned)
    enabled     boolean NOT NULL,
    on_demand   boolean NOT NULL DEFAULT false,
    next_run_at timestamptz,             -- when the scheduler queues the next run
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mirror_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule        text NOT NULL REFERENCES mirror_rules (name) ON DELETE CASCADE,
    trigger     text NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    state       text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    worker      text,                    -- who holds the lease
    lease_until timestamptz,             -- a worker that dies loses the run when this passes
    started_at  timestamptz,
    finished_at timestamptz,
    images      int    NOT NULL DEFAULT 0,
    tags        int    NOT NULL DEFAULT 0,
    blobs       int    NOT NULL DEFAULT 0,
    bytes       bigint NOT NULL DEFAULT 0,
    errors      jsonb  NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mirror_runs_rule ON mirror_runs (rule, id DESC);
-- At most one queued or running run per rule.
CREATE UNIQUE INDEX mirror_runs_active ON mirror_runs (rule) WHERE state IN ('queued', 'running');
