-- Gaia's registry metadata. Blob bytes live in the storage driver under a
-- content-addressed path; everything else a registry knows lives here.
-- Foreign keys make dangling references impossible: a tag always points
-- at a manifest of its own repository, a manifest's blobs are linked to its
-- repository, and an index's children cannot be deleted from under it.

CREATE TABLE repositories (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,          -- catalog pages: WHERE name > $last ORDER BY name
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per blob whose bytes are in storage (written once, by digest).
CREATE TABLE blobs (
    digest     text PRIMARY KEY,              -- "sha256:<hex>" or "sha512:<hex>"
    size       bigint NOT NULL CHECK (size >= 0),
    media_type text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Which repositories may serve which blobs (pushed, mounted or referenced).
CREATE TABLE repository_blobs (
    repository_id bigint NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest        text   NOT NULL REFERENCES blobs (digest),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);

CREATE TABLE manifests (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository_id  bigint NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest         text   NOT NULL,
    media_type     text   NOT NULL,
    artifact_type  text,                      -- OCI 1.1: artifactType, or the config's media type
    subject_digest text,                      -- OCI 1.1: the manifest this one refers to
    content        bytea  NOT NULL,           -- the exact bytes pushed (digests are of these)
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (repository_id, digest),
    UNIQUE (id, repository_id)                -- target of the same-repository foreign keys below
);
-- The referrers API: manifests of a repository whose subject is a digest.
CREATE INDEX manifests_subject ON manifests (repository_id, subject_digest)
    WHERE subject_digest IS NOT NULL;

-- Blobs a manifest references (config and layers), each linked to the
-- manifest's own repository: the link cannot be removed while referenced.
CREATE TABLE manifest_blobs (
    manifest_id   bigint NOT NULL,
    repository_id bigint NOT NULL,
    digest        text   NOT NULL,
    PRIMARY KEY (manifest_id, digest),
    FOREIGN KEY (manifest_id, repository_id) REFERENCES manifests (id, repository_id) ON DELETE CASCADE,
    FOREIGN KEY (repository_id, digest) REFERENCES repository_blobs (repository_id, digest)
);
CREATE INDEX manifest_blobs_link ON manifest_blobs (repository_id, digest);

-- Children of an index (manifest list), in the index's own repository. A
-- child cannot be deleted while an index refers to it.
CREATE TABLE manifest_references (
    parent_id     bigint NOT NULL,
    child_id      bigint NOT NULL,
    repository_id bigint NOT NULL,
    PRIMARY KEY (parent_id, child_id),
    FOREIGN KEY (parent_id, repository_id) REFERENCES manifests (id, repository_id) ON DELETE CASCADE,
    FOREIGN KEY (child_id, repository_id) REFERENCES manifests (id, repository_id)
);
CREATE INDEX manifest_references_child ON manifest_references (child_id);

-- A tag points at a complete manifest of its own repository; deleting the
-- manifest deletes its tags. Moving a tag is one UPDATE: atomic.
CREATE TABLE tags (
    repository_id bigint NOT NULL,
    name          text   NOT NULL,
    manifest_id   bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, name),        -- tags/list pages: WHERE name > $last ORDER BY name
    FOREIGN KEY (manifest_id, repository_id) REFERENCES manifests (id, repository_id) ON DELETE CASCADE
);
CREATE INDEX tags_manifest ON tags (manifest_id);

-- Upload sessions: any server appends the next chunk from the stored offset
-- and hash state, without re-reading what was written.
CREATE TABLE upload_sessions (
    id               uuid   PRIMARY KEY,
    repository_id    bigint NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    storage_path     text   NOT NULL,         -- where the driver holds the partial data
    size             bigint NOT NULL DEFAULT 0 CHECK (size >= 0),  -- bytes received: the next offset
    digest_algorithm text   NOT NULL DEFAULT 'sha256',
    hash_state       bytea,                   -- serialized hash after `size` bytes
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX upload_sessions_updated ON upload_sessions (updated_at);  -- expiry sweep
