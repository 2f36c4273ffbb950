-- Online garbage collection (registry/gc). Review queues are filled by
-- triggers, in the very transactions that drop or add references, so no
-- code path (API, mirror, pull-through, retention) can forget to. An
-- entry is due once queued_at is older than the collector's gc.reviewafter;
-- a reference touched again re-queues it (queued_at = now()), restarting
-- the delay. Entries are leased (lease_until) by the worker reviewing them.

CREATE TABLE gc_manifest_reviews (
    manifest_id bigint PRIMARY KEY,           -- no foreign key: the manifest may be gone already
    queued_at   timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz
);
CREATE INDEX gc_manifest_reviews_due ON gc_manifest_reviews (queued_at);

CREATE TABLE gc_blob_reviews (
    digest      text PRIMARY KEY,             -- no foreign key: the blob may be gone already
    queued_at   timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz
);
CREATE INDEX gc_blob_reviews_due ON gc_blob_reviews (queued_at);

-- Bytes to delete from one IDC's storage: written in the transaction that
-- deletes a blob's rows (one per placement), processed by that IDC's own
-- servers (only they reach its storage), which delete the bytes under the
-- IDC's lock for the digest and then the row.
CREATE TABLE gc_blob_deletions (
    digest      text   NOT NULL,
    idc         text   NOT NULL,
    size        bigint NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,
    PRIMARY KEY (idc, digest)
);

-- Running totals for `gaia-registry gc status` (per IDC for bytes).
CREATE TABLE gc_totals (
    idc               text PRIMARY KEY,        -- '' for the cluster-wide counts
    manifests_deleted bigint NOT NULL DEFAULT 0,
    blobs_deleted     bigint NOT NULL DEFAULT 0,
    bytes_reclaimed   bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Leases of singleton jobs (the storage walk of an IDC): one holder at a time.
CREATE TABLE gc_leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    lease_until timestamptz NOT NULL,
    last_done   timestamptz,
    cursor      text NOT NULL DEFAULT ''
);

CREATE FUNCTION gc_queue_manifest(id bigint) RETURNS void LANGUAGE sql AS $$
    INSERT INTO gc_manifest_reviews (manifest_id) VALUES (id)
    ON CONFLICT (manifest_id) DO UPDATE SET queued_at = now(), lease_until = NULL
$$;

CREATE FUNCTION gc_queue_blob(d text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO gc_blob_reviews (digest) VALUES (d)
    ON CONFLICT (digest) DO UPDATE SET queued_at = now(), lease_until = NULL
$$;

-- A tag deleted or moved: the manifest it pointed at may now be untagged.
CREATE FUNCTION gc_tags_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- Not when the manifest itself is going (the tag cascades).
        IF EXISTS (SELECT 1 FROM manifests WHERE id = OLD.manifest_id) THEN
            PERFORM gc_queue_manifest(OLD.manifest_id);
        END IF;
    ELSIF OLD.manifest_id <> NEW.manifest_id THEN
        PERFORM gc_queue_manifest(OLD.manifest_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER gc_tags_changed AFTER UPDATE OF manifest_id OR DELETE ON tags
    FOR EACH ROW EXECUTE FUNCTION gc_tags_changed();

-- A new manifest may never be tagged (pushed by digest, a child whose
-- index never comes): reviewed after the delay like everything else.
CREATE FUNCTION gc_manifest_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gc_queue_manifest(NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER gc_manifest_added AFTER INSERT ON manifests
    FOR EACH ROW EXECUTE FUNCTION gc_manifest_added();

-- An index deleted: its children may now be unreferenced. A manifest
-- deleted: its blobs may now be unreferenced. Statement triggers over the
-- deleted rows, queueing in digest (id) order: two transactions deleting
-- manifests that share blobs take the queue rows in the same order, so
-- they never deadlock (a row trigger would follow the cascade's scan).
CREATE FUNCTION gc_references_dropped() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gc_manifest_reviews (manifest_id)
    SELECT DISTINCT o.child_id FROM dropped o
    WHERE EXISTS (SELECT 1 FROM manifests m WHERE m.id = o.child_id)
    ORDER BY 1
    ON CONFLICT (manifest_id) DO UPDATE SET queued_at = now(), lease_until = NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER gc_references_dropped AFTER DELETE ON manifest_references
    REFERENCING OLD TABLE AS dropped FOR EACH STATEMENT EXECUTE FUNCTION gc_references_dropped();

CREATE FUNCTION gc_manifest_blobs_dropped() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gc_blob_reviews (digest)
    SELECT DISTINCT digest FROM dropped ORDER BY 1
    ON CONFLICT (digest) DO UPDATE SET queued_at = now(), lease_until = NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER gc_manifest_blobs_dropped AFTER DELETE ON manifest_blobs
    REFERENCING OLD TABLE AS dropped FOR EACH STATEMENT EXECUTE FUNCTION gc_manifest_blobs_dropped();

-- A blob linked into a repository (an upload finished, a mount, a
-- pull-through fetch) or unlinked: reviewed after the delay, by which time
-- a manifest should name it.
CREATE FUNCTION gc_link_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM gc_queue_blob(OLD.digest);
    ELSE
        PERFORM gc_queue_blob(NEW.digest);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER gc_link_changed AFTER INSERT OR DELETE ON repository_blobs
    FOR EACH ROW EXECUTE FUNCTION gc_link_changed();

-- What was there before the collector: everything gets one review.
INSERT INTO gc_manifest_reviews (manifest_id)
    SELECT id FROM manifests m WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id);
INSERT INTO gc_blob_reviews (digest) SELECT digest FROM blobs;
