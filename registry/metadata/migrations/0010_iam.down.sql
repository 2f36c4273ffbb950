DROP TABLE iam_robots;
DROP TABLE iam_members;
DROP TABLE iam_namespaces;
DROP TABLE iam_users;
