-- Version 9: row-level security is PostgreSQL's (see its file). SQLite has none; there, tenant
-- scoping is a type: a tenant-scoped store method takes the tenant its caller's key produced.
SELECT 1;
