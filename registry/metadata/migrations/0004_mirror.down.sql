DROP TABLE mirror_runs;
DROP TABLE mirror_rules;
