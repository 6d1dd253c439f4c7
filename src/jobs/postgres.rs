//! PostgreSQL: many supervisors on many hosts. A claim takes the queued job with the lowest
//! fair-queuing position and locks it with `FOR UPDATE SKIP LOCKED`, in one statement with its
//! audit row, so concurrent claimers never wait on each other's rows.

use super::sql::{Dialect, SqlStore};

/// The next runnable job in fair-queuing order (see `next_vseq`), skipping rows other claimers
/// hold. `$1` = now.
macro_rules! pick {
    () => {
        "SELECT id FROM airlock_jobs
         WHERE state = 'queued' AND run_after <= $1
         ORDER BY vseq, created_at
         LIMIT 1
         FOR UPDATE SKIP LOCKED"
    };
}
use super::JobError;

/// Every connection works as `airlock_service` (migration 9: it may see every tenant) once that
/// role has been granted the tables (a database not yet at version 9 keeps working as the
/// login, for `airlock migrate` to upgrade it); a login that may not take both roles is refused
/// with what to grant, rather than left working as itself;
/// tenant-scoped work narrows each transaction to `airlock_tenant` (`Dialect::tenant_scope`).
/// `airlock migrate` resets this on its own connection, which owns the tables, and closes it
/// afterwards.
const SERVICE_ROLE: &str = "DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'airlock_service')
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'airlock_tenant')
       AND to_regclass('airlock_jobs') IS NOT NULL THEN
        IF has_table_privilege('airlock_service', 'airlock_jobs', 'SELECT') THEN
            IF NOT pg_has_role(session_user, 'airlock_service', 'MEMBER')
               OR NOT pg_has_role(session_user, 'airlock_tenant', 'MEMBER') THEN
                RAISE EXCEPTION 'airlock: the database login % is not a member of airlock_service and airlock_tenant, so it can neither work as the service nor narrow a request to its tenant; run GRANT airlock_tenant, airlock_service TO % (README, \"Row-level security\")', session_user, session_user;
            END IF;
            SET ROLE airlock_service;
        END IF;
    END IF;
END $$";

pub static DIALECT: Dialect = Dialect {
    name: "postgres",
    migrations_table: "SELECT 1 AS x WHERE to_regclass('_sqlx_migrations') IS NOT NULL",
    migration_session: Some(("RESET ROLE; SET lock_timeout = '10s'", "RESET lock_timeout")),
    now: "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) AS now",
    now_expr: "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)",
    claim_pick: pick!(),
    for_update: " FOR UPDATE",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    // In tenant order: requeuing locks tenant rows (`next_vseq`) in this order, so two reapers
    // cannot deadlock on them.
    reap_select: "SELECT id, tenant, attempts, max_attempts FROM airlock_jobs
         WHERE state = 'running' AND lease_expires_at < $1
         ORDER BY tenant LIMIT 100 FOR UPDATE SKIP LOCKED",
    begin: "BEGIN",
    tenant_scope: Some(
        "SELECT set_config('role', 'airlock_tenant', true), set_config('airlock.tenant', $1, true)",
    ),
    queue_front: "SELECT airlock_queue_front() AS v",
    summary_output_bytes: "CAST(CAST(summary AS jsonb) #>> '{output,bytes}' AS BIGINT)",
    on_connect: |schema| {
        let schema = match schema {
            Some(s) => format!("CREATE SCHEMA IF NOT EXISTS \"{s}\"; SET search_path TO \"{s}\"; "),
            None => String::new(),
        };
        format!("{schema}{SERVICE_ROLE}")
    },
};

/// Connect to PostgreSQL; `schema` puts every connection in that schema.
pub async fn connect(url: &str, schema: Option<String>) -> Result<SqlStore, JobError> {
    SqlStore::connect(url, &DIALECT, schema, 16).await
}
