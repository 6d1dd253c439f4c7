-- Version 10: the tenant role's queue-front function is PostgreSQL's (see its file); SQLite has
-- no roles and reads the front directly.
SELECT 1;
