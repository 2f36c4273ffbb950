ALTER TABLE manifests DROP COLUMN annotations;
ALTER TABLE tags ALTER COLUMN name TYPE text COLLATE "default";
ALTER TABLE repositories ALTER COLUMN name TYPE text COLLATE "default";
