-- Version 4: the id of the API request (X-Request-Id, honoured or generated) behind an audit row;
-- NULL for rows written by the CLI, supervisors and the sweeper.
ALTER TABLE airlock_audit ADD COLUMN request_id TEXT;
