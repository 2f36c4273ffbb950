DROP TABLE instance_events;
DROP TABLE instances;
DROP TABLE app_versions;
DROP TABLE apps;
DROP TABLE pools;
DROP TABLE nodes;
DROP TABLE scheduler_term;
