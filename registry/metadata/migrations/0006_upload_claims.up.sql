-- An upload chunk no longer holds a row lock (and a pooled connection)
-- while its body streams: a writer claims the session in one short
-- statement, streams to storage, and records the new offset in another that
-- checks the claim. `writer` names the claim; `claimed_until` is its lease,
-- renewed while the body streams, so a session whose server died is free
-- again once the lease has passed.
ALTER TABLE upload_sessions
    ADD COLUMN writer        uuid,
    ADD COLUMN claimed_until timestamptz;
