-- The audit log (registry/audit): who did what, when, from where.
-- Partitioned by day (UTC) on `at`, so retention drops whole partitions
-- instead of deleting rows. The writer creates each day's partition ahead
-- of time; the DEFAULT partition takes an event no day partition covers
-- (a skewed clock), and maintenance moves such rows into the day's
-- partition when it creates it.
CREATE SEQUENCE audit_events_id_seq AS bigint;

CREATE TABLE audit_events (
    id         bigint      NOT NULL DEFAULT nextval('audit_events_id_seq'),
    at         timestamptz NOT NULL,
    actor      text        NOT NULL DEFAULT '' COLLATE "C",
    actor_kind text        NOT NULL,
    action     text        NOT NULL COLLATE "C",
    namespace  text        NOT NULL DEFAULT '' COLLATE "C",
    repository text        NOT NULL DEFAULT '' COLLATE "C",
    reference  text        NOT NULL DEFAULT '',
    remote     text        NOT NULL DEFAULT '',
    detail     jsonb
) PARTITION BY RANGE (at);

ALTER SEQUENCE audit_events_id_seq OWNED BY audit_events.id;

CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

-- Queries are newest first, keyset-paged by (at, id), filtered by one of
-- these (a repository filter also constrains its namespace).
CREATE INDEX audit_events_at ON audit_events (at, id);
CREATE INDEX audit_events_namespace ON audit_events (namespace, at, id);
CREATE INDEX audit_events_actor ON audit_events (actor, at, id);
CREATE INDEX audit_events_action ON audit_events (action, at, id);
