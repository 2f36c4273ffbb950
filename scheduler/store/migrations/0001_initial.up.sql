-- gaia-scheduler's state. Everything a scheduler process holds in memory is
-- rebuilt from these tables when it becomes the leader.

-- The leader's term (epoch). A new leader increments it before its first
-- write; every write of a leader first reads it FOR SHARE in the same
-- transaction and gives up (store.ErrDeposed) when it is not its own.
CREATE TABLE scheduler_term (
    id         integer PRIMARY KEY CHECK (id = 1),
    term       bigint NOT NULL,
    holder     text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO scheduler_term (id, term, holder) VALUES (1, 0, '');

-- Objects are kept whole as JSONB (the model's JSON, the same as the API's),
-- with the columns queries select or page on beside them.
CREATE TABLE nodes (
    name           text PRIMARY KEY,
    state          text NOT NULL,
    node           jsonb NOT NULL,
    last_heartbeat timestamptz,
    registered_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pools (
    name       text PRIMARY KEY,
    pool       jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE apps (
    name       text PRIMARY KEY,
    pool       text NOT NULL,
    app        jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX apps_pool ON apps (pool);

-- Every version of every app's spec (the app's history), with the image
-- digest it resolved to.
CREATE TABLE app_versions (
    app        text NOT NULL,
    version    integer NOT NULL,
    spec       jsonb NOT NULL,
    digest     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, version)
);

-- Instances. A row stays until its node confirmed it stopped (or it never
-- reached one); terminal rows are kept for history.
CREATE TABLE instances (
    id         text PRIMARY KEY,
    app        text NOT NULL,
    node       text NOT NULL,
    state      text NOT NULL,
    desired    text NOT NULL,
    live       boolean NOT NULL,
    instance   jsonb NOT NULL,
    term       bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_app ON instances (app, id);
CREATE INDEX instances_live ON instances (id) WHERE live;

CREATE TABLE instance_events (
    id       bigserial PRIMARY KEY,
    instance text NOT NULL,
    state    text NOT NULL,
    reason   text NOT NULL DEFAULT '',
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instance_events_instance ON instance_events (instance, id);
