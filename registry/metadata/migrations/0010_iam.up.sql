-- Multi-tenant access (registry/iam): users, namespaces with members and
-- roles, robot accounts. A namespace is a repository name's first path
-- component; its quota stays in namespace_quotas (0009).

CREATE TABLE iam_users (
    name          text PRIMARY KEY COLLATE "C",
    source        text NOT NULL CHECK (source IN ('local', 'ldap')),
    password_hash text,                       -- bcrypt; local users only
    admin         boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((source = 'local') = (password_hash IS NOT NULL))
);

CREATE TABLE iam_namespaces (
    name        text PRIMARY KEY COLLATE "C",
    public      boolean NOT NULL DEFAULT false,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A member is a user or an LDAP group, with one role per namespace.
CREATE TABLE iam_members (
    namespace  text NOT NULL COLLATE "C" REFERENCES iam_namespaces (name) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('user', 'group')),
    name       text NOT NULL COLLATE "C",
    role       text NOT NULL CHECK (role IN ('admin', 'maintainer', 'developer', 'guest')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, kind, name)
);
CREATE INDEX iam_members_by_name ON iam_members (kind, name);

-- Robots: robot$<namespace>+<name> (namespace set) or robot$<name>
-- (system-wide). The secret is random (32 bytes), so a SHA-256 of it is
-- enough; permissions is [{"namespace","repositories","actions"}].
CREATE TABLE iam_robots (
    name        text PRIMARY KEY COLLATE "C",
    namespace   text COLLATE "C" REFERENCES iam_namespaces (name) ON DELETE CASCADE,
    secret_hash bytea NOT NULL,
    permissions jsonb NOT NULL,
    description text NOT NULL DEFAULT '',
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX iam_robots_by_namespace ON iam_robots (namespace, name);
