-- Version 10: what the tenant role needs beyond its own rows.
--
-- A new job's fair-queuing position starts one past the queue's front: the lowest position of
-- any tenant's queued job. A tenant's transaction sees only its own jobs, so the front is read
-- through this function, which runs as its owner (who is not subject to row-level security)
-- and returns one number, never a row.
--
-- (`pg_temp` last in its search path, so a temporary table cannot stand in for the jobs table.)
--
-- Narrower grants than migration 9's: the tenant role may not touch the migrations table, nor
-- change or delete audit records and checkpoints, nor write checkpoints (the service signs
-- them); the service role may only read the migrations table.
--
-- Tables and sequences that later migrations create are granted to both roles as they are
-- created (migration 9 granted the ones that existed then).
DO $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %I.airlock_queue_front() RETURNS BIGINT '
        'LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %I, pg_temp AS '
        '$f$ SELECT CAST(COALESCE(MIN(vseq), 0) AS BIGINT) FROM airlock_jobs WHERE state = ''queued'' $f$',
        current_schema(), current_schema());
    EXECUTE format('REVOKE ALL ON FUNCTION %I.airlock_queue_front() FROM PUBLIC', current_schema());
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.airlock_queue_front() TO airlock_tenant, airlock_service',
        current_schema());
    EXECUTE format('REVOKE ALL ON %I._sqlx_migrations FROM airlock_tenant', current_schema());
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %I._sqlx_migrations FROM airlock_service', current_schema());
    EXECUTE format('REVOKE UPDATE, DELETE ON %I.airlock_audit, %I.airlock_audit_checkpoints FROM airlock_tenant',
        current_schema(), current_schema());
    EXECUTE format('REVOKE INSERT ON %I.airlock_audit_checkpoints FROM airlock_tenant', current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO airlock_tenant, airlock_service',
        current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO airlock_tenant, airlock_service',
        current_schema());
END
$$;
