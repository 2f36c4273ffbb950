-- The spec lists tags and repositories in lexical (byte) order, whatever the
-- database's locale; "C" collation makes ORDER BY and `> $last` match it and
-- lets the primary-key indexes serve the pages.
ALTER TABLE repositories ALTER COLUMN name TYPE text COLLATE "C";
ALTER TABLE tags ALTER COLUMN name TYPE text COLLATE "C";

-- The referrers API returns each referrer's annotations; keep them beside
-- the manifest so a listing never re-parses manifest bodies.
ALTER TABLE manifests ADD COLUMN annotations jsonb;
