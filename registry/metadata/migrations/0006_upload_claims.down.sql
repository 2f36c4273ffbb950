ALTER TABLE upload_sessions
    DROP COLUMN claimed_until,
    DROP COLUMN writer;
