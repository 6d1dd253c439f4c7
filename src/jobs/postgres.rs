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

pub static DIALECT: Dialect = Dialect {
    name: "postgres",
    migrations_table: "SELECT 1 AS x WHERE to_regclass('_sqlx_migrations') IS NOT NULL",
    migration_session: Some(("SET lock_timeout = '10s'", "RESET lock_timeout")),
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
    summary_output_bytes: "CAST(CAST(summary AS jsonb) #>> '{output,bytes}' AS BIGINT)",
    on_connect: |schema| match schema {
        Some(s) => format!("CREATE SCHEMA IF NOT EXISTS \"{s}\"; SET search_path TO \"{s}\""),
        None => String::new(),
    },
};

/// Connect to PostgreSQL; `schema` puts every connection in that schema.
pub async fn connect(url: &str, schema: Option<String>) -> Result<SqlStore, JobError> {
    SqlStore::connect(url, &DIALECT, schema, 16).await
}
