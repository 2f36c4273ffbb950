-- Storage accounting per repository and per namespace (the first path
-- component), maintained incrementally by triggers:
--   dedup:   each blob once (a repository's links; a namespace's blobs
--            linked in any of its repositories);
--   logical: what pulling every manifest would transfer (each manifest's
--            blobs, counted per manifest, plus its own bytes).
-- Triggers append to storage_usage_deltas (no hot row: concurrent pushes
-- to one namespace never wait on each other); readers add the pending
-- deltas to the folded totals; the collector folds deltas now and then.

CREATE TABLE storage_usage_deltas (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository_id bigint NOT NULL,
    namespace     text   NOT NULL COLLATE "C",
    repo_dedup    bigint NOT NULL DEFAULT 0,
    ns_dedup      bigint NOT NULL DEFAULT 0,
    logical       bigint NOT NULL DEFAULT 0
);

CREATE TABLE repository_usage (
    repository_id bigint PRIMARY KEY REFERENCES repositories (id) ON DELETE CASCADE,
    dedup_bytes   bigint NOT NULL DEFAULT 0,
    logical_bytes bigint NOT NULL DEFAULT 0
);

CREATE TABLE namespace_usage (
    namespace     text PRIMARY KEY COLLATE "C",
    dedup_bytes   bigint NOT NULL DEFAULT 0,
    logical_bytes bigint NOT NULL DEFAULT 0
);

-- How many repositories of a namespace link a blob: its bytes count once.
CREATE TABLE namespace_blobs (
    namespace text NOT NULL COLLATE "C",
    digest    text NOT NULL,
    refs      int  NOT NULL,
    PRIMARY KEY (namespace, digest)
);

-- Namespace quotas (bytes, deduplicated), enforced at upload completion
-- and manifest PUT.
CREATE TABLE namespace_quotas (
    namespace  text PRIMARY KEY COLLATE "C",
    bytes      bigint NOT NULL CHECK (bytes >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION gaia_namespace(repo text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT split_part(repo, '/', 1)
$$;

CREATE FUNCTION usage_link_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ns   text;
    sz   bigint;
    n    int;
    rid  bigint;
    d    text;
    sign int;
    edge boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN rid := NEW.repository_id; d := NEW.digest; sign := 1;
    ELSE rid := OLD.repository_id; d := OLD.digest; sign := -1; END IF;
    SELECT gaia_namespace(name) INTO ns FROM repositories WHERE id = rid;
    IF ns IS NULL THEN RETURN NULL; END IF;  -- the repository is being deleted
    SELECT size INTO sz FROM blobs WHERE digest = d;
    sz := coalesce(sz, 0);
    IF sign = 1 THEN
        INSERT INTO namespace_blobs (namespace, digest, refs) VALUES (ns, d, 1)
        ON CONFLICT (namespace, digest) DO UPDATE SET refs = namespace_blobs.refs + 1
        RETURNING refs INTO n;
        edge := coalesce(n = 1, false);  -- the namespace's first link
    ELSE
        UPDATE namespace_blobs SET refs = refs - 1 WHERE namespace = ns AND digest = d RETURNING refs INTO n;
        edge := coalesce(n = 0, false);  -- its last
        IF edge THEN DELETE FROM namespace_blobs WHERE namespace = ns AND digest = d; END IF;
    END IF;
    INSERT INTO storage_usage_deltas (repository_id, namespace, repo_dedup, ns_dedup)
    VALUES (rid, ns, sign * sz, CASE WHEN edge THEN sign * sz ELSE 0 END);
    RETURN NULL;
END $$;
CREATE TRIGGER usage_link_changed AFTER INSERT OR DELETE ON repository_blobs
    FOR EACH ROW EXECUTE FUNCTION usage_link_changed();

CREATE FUNCTION usage_manifest_blob_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ns  text;
    sz  bigint;
    rec record;
    sign int;
BEGIN
    IF TG_OP = 'INSERT' THEN rec := NEW; sign := 1; ELSE rec := OLD; sign := -1; END IF;
    SELECT gaia_namespace(name) INTO ns FROM repositories WHERE id = rec.repository_id;
    IF ns IS NULL THEN RETURN NULL; END IF;
    SELECT size INTO sz FROM blobs WHERE digest = rec.digest;
    INSERT INTO storage_usage_deltas (repository_id, namespace, logical)
    VALUES (rec.repository_id, ns, sign * coalesce(sz, 0));
    RETURN NULL;
END $$;
CREATE TRIGGER usage_manifest_blob_changed AFTER INSERT OR DELETE ON manifest_blobs
    FOR EACH ROW EXECUTE FUNCTION usage_manifest_blob_changed();

CREATE FUNCTION usage_manifest_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ns  text;
    rec record;
    sign int;
BEGIN
    IF TG_OP = 'INSERT' THEN rec := NEW; sign := 1; ELSE rec := OLD; sign := -1; END IF;
    SELECT gaia_namespace(name) INTO ns FROM repositories WHERE id = rec.repository_id;
    IF ns IS NULL THEN RETURN NULL; END IF;
    INSERT INTO storage_usage_deltas (repository_id, namespace, logical)
    VALUES (rec.repository_id, ns, sign * octet_length(rec.content));
    RETURN NULL;
END $$;
CREATE TRIGGER usage_manifest_changed AFTER INSERT OR DELETE ON manifests
    FOR EACH ROW EXECUTE FUNCTION usage_manifest_changed();

-- Folds the pending deltas into the totals.
CREATE FUNCTION storage_usage_fold() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    -- One fold at a time (others return at once): concurrent folds would
    -- upsert the same totals rows in different orders.
    IF NOT pg_try_advisory_xact_lock(hashtextextended('gaia-usage-fold', 0)) THEN
        RETURN 0;
    END IF;
    CREATE TEMP TABLE IF NOT EXISTS usage_fold (repository_id bigint, namespace text COLLATE "C", repo_dedup bigint, ns_dedup bigint, logical bigint) ON COMMIT DROP;
    WITH d AS (DELETE FROM storage_usage_deltas RETURNING repository_id, namespace, repo_dedup, ns_dedup, logical)
    INSERT INTO usage_fold SELECT * FROM d;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO repository_usage (repository_id, dedup_bytes, logical_bytes)
    SELECT f.repository_id, sum(f.repo_dedup), sum(f.logical) FROM usage_fold f
    WHERE EXISTS (SELECT 1 FROM repositories r WHERE r.id = f.repository_id)
    GROUP BY f.repository_id
    ON CONFLICT (repository_id) DO UPDATE SET dedup_bytes = repository_usage.dedup_bytes + EXCLUDED.dedup_bytes,
        logical_bytes = repository_usage.logical_bytes + EXCLUDED.logical_bytes;
    INSERT INTO namespace_usage (namespace, dedup_bytes, logical_bytes)
    SELECT namespace, sum(ns_dedup), sum(logical) FROM usage_fold GROUP BY namespace
    ON CONFLICT (namespace) DO UPDATE SET dedup_bytes = namespace_usage.dedup_bytes + EXCLUDED.dedup_bytes,
        logical_bytes = namespace_usage.logical_bytes + EXCLUDED.logical_bytes;
    DROP TABLE usage_fold;
    RETURN n;
END $$;

-- What is there already, counted once.
INSERT INTO namespace_blobs (namespace, digest, refs)
    SELECT gaia_namespace(r.name), rb.digest, count(*) FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
    GROUP BY 1, 2;
INSERT INTO repository_usage (repository_id, dedup_bytes, logical_bytes)
    SELECT r.id,
           coalesce((SELECT sum(b.size) FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest WHERE rb.repository_id = r.id), 0),
           coalesce((SELECT sum(b.size) FROM manifest_blobs mb JOIN blobs b ON b.digest = mb.digest WHERE mb.repository_id = r.id), 0)
         + coalesce((SELECT sum(octet_length(m.content)) FROM manifests m WHERE m.repository_id = r.id), 0)
    FROM repositories r;
INSERT INTO namespace_usage (namespace, dedup_bytes, logical_bytes)
    SELECT ns, coalesce((SELECT sum(b.size) FROM namespace_blobs nb JOIN blobs b ON b.digest = nb.digest WHERE nb.namespace = ns), 0), logical
    FROM (SELECT gaia_namespace(r.name) AS ns, sum(u.logical_bytes) AS logical
          FROM repositories r JOIN repository_usage u ON u.repository_id = r.id GROUP BY 1) x;
CREATE INDEX storage_usage_deltas_namespace ON storage_usage_deltas (namespace);
CREATE INDEX storage_usage_deltas_repository ON storage_usage_deltas (repository_id);
