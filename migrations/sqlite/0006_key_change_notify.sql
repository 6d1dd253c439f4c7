-- Version 6: on PostgreSQL, key revocations are announced to every `airlock serve` (LISTEN/NOTIFY).
-- SQLite has no such channel and `serve` keeps no key cache on it: nothing to change.
SELECT 1;
