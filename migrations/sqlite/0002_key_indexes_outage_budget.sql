-- Version 2.
-- The orphan sweep asks which of a page of object keys a job still references: one index per
-- key column turns four sequential scans per page into index lookups.
CREATE INDEX airlock_jobs_input_key ON airlock_jobs (input_key);
CREATE INDEX airlock_jobs_output_key ON airlock_jobs (output_key);
CREATE INDEX airlock_jobs_rejects_key ON airlock_jobs (rejects_key);
CREATE INDEX airlock_jobs_report_key ON airlock_jobs (report_key);
-- Superseded by airlock_jobs_ended (which also covers cancelled jobs).
DROP INDEX IF EXISTS airlock_jobs_finished;
-- Infrastructure failures (storage or database outages, a host that cannot stage or sandbox)
-- spend no attempts; they are bounded by time instead, counted from the first one in a row
-- (outage_since) while they keep coming (outage_last).
ALTER TABLE airlock_jobs ADD COLUMN outage_since INTEGER;
ALTER TABLE airlock_jobs ADD COLUMN outage_last INTEGER;
-- The keys the current attempt uploads under, chosen at claim time, so an erasure or a sweep can
-- delete what an attempt uploaded even when it never completed.
ALTER TABLE airlock_jobs ADD COLUMN attempt_output_key TEXT;
ALTER TABLE airlock_jobs ADD COLUMN attempt_rejects_key TEXT;
ALTER TABLE airlock_jobs ADD COLUMN attempt_report_key TEXT;
