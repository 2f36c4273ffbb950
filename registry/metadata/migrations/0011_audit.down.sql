DROP TABLE audit_events; -- and every partition
