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
    migrations_prelude: "SELECT pg_advisory_xact_lock(7426010);\n",
    int_type: "BIGINT",
    serial_key: "BIGSERIAL PRIMARY KEY",
    jobs_with: "WITH (fillfactor = 80)",
    claim_pick: pick!(),
    for_update: " FOR UPDATE",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    reap_select: "SELECT id, tenant, attempts, max_attempts FROM airlock_jobs
         WHERE state = 'running' AND lease_expires_at < $1
         LIMIT 100 FOR UPDATE SKIP LOCKED",
    claim_one: Some(
        concat!(
            "WITH picked AS (",
            pick!(),
            "), upd AS (
             UPDATE airlock_jobs SET state = 'running', attempts = attempts + 1, fence = fence + 1,
                 lease_owner = $2, lease_expires_at = $3, started_at = COALESCE(started_at, $1)
             FROM picked WHERE airlock_jobs.id = picked.id
             RETURNING airlock_jobs.id, airlock_jobs.tenant, plan, input_key, input_bytes, file_name, fence, attempts
         ), audit AS (
             INSERT INTO airlock_audit (job_id, tenant, at, from_state, to_state, detail)
             SELECT id, tenant, $1, 'queued', 'running', $2 FROM upd
         )
         SELECT * FROM upd"
        ),
    ),
    complete_one: Some(
        "WITH upd AS (
             UPDATE airlock_jobs SET state = $3, finished_at = $4, result_code = $5, output_key = $6,
                 rejects_key = $7, report_key = $8, summary = $9, lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND fence = $2 AND state = 'running'
             RETURNING id, tenant
         )
         INSERT INTO airlock_audit (job_id, tenant, at, from_state, to_state, detail)
         SELECT id, tenant, $4, 'running', $3, $5 FROM upd
         RETURNING job_id",
    ),
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
