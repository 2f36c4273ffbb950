DROP TABLE upload_sessions;
DROP TABLE tags;
DROP TABLE manifest_references;
DROP TABLE manifest_blobs;
DROP TABLE manifests;
DROP TABLE repository_blobs;
DROP TABLE blobs;
DROP TABLE repositories;
