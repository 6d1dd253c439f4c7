//! PostgreSQL: many supervisors on many hosts. A claim probes, tenant by tenant in round-robin
//! order, one index entry per tenant through `LATERAL`, and locks the job row with
//! `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait on each other's rows.

use super::sql::{Dialect, SqlStore};
use super::JobError;

pub static DIALECT: Dialect = Dialect {
    name: "postgres",
    migrations: r#"
SELECT pg_advisory_xact_lock(7426010);
CREATE TABLE IF NOT EXISTS airlock_jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    plan TEXT NOT NULL,
    input_key TEXT NOT NULL,
    input_bytes BIGINT NOT NULL,
    file_name TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    fence BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    result_code TEXT,
    output_key TEXT,
    rejects_key TEXT,
    report_key TEXT,
    summary TEXT,
    purged_at BIGINT,
    sweep_owner TEXT,
    sweep_lease BIGINT
) WITH (fillfactor = 80);
CREATE UNIQUE INDEX IF NOT EXISTS airlock_jobs_idem ON airlock_jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS airlock_jobs_queue ON airlock_jobs (tenant, run_after, created_at) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS airlock_jobs_lease ON airlock_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS airlock_jobs_finished ON airlock_jobs (finished_at) WHERE state IN ('succeeded', 'rejected', 'failed');
CREATE TABLE IF NOT EXISTS airlock_tenants (
    tenant TEXT PRIMARY KEY,
    queued BIGINT NOT NULL DEFAULT 0,
    last_claimed BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS airlock_tenants_rr ON airlock_tenants (last_claimed) WHERE queued > 0;
CREATE TABLE IF NOT EXISTS airlock_audit (
    id BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    at BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS airlock_audit_job ON airlock_audit (job_id, id);
CREATE TABLE IF NOT EXISTS airlock_receipts (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    run_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS airlock_receipts_tenant ON airlock_receipts (tenant, at);
CREATE INDEX IF NOT EXISTS airlock_jobs_tenant ON airlock_jobs (tenant);
"#,
    claim_pick: "SELECT j.id FROM airlock_tenants t
         CROSS JOIN LATERAL (
             SELECT id FROM airlock_jobs
             WHERE tenant = t.tenant AND state = 'queued' AND run_after <= $1
             ORDER BY run_after, created_at
             LIMIT 1
             FOR UPDATE SKIP LOCKED
         ) j
         WHERE t.queued > 0
         ORDER BY t.last_claimed
         LIMIT 1",
    for_update: " FOR UPDATE",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    reap_select: "SELECT id, tenant, attempts, max_attempts FROM airlock_jobs
         WHERE state = 'running' AND lease_expires_at < $1
         LIMIT 100 FOR UPDATE SKIP LOCKED",
    claim_one: Some(
        "WITH picked AS (
             SELECT j.id FROM airlock_tenants t
             CROSS JOIN LATERAL (
                 SELECT id FROM airlock_jobs
                 WHERE tenant = t.tenant AND state = 'queued' AND run_after <= $1
                 ORDER BY run_after, created_at
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED
             ) j
             WHERE t.queued > 0
             ORDER BY t.last_claimed
             LIMIT 1
         ), upd AS (
             UPDATE airlock_jobs SET state = 'running', attempts = attempts + 1, fence = fence + 1,
                 lease_owner = $2, lease_expires_at = $3, started_at = COALESCE(started_at, $1)
             FROM picked WHERE airlock_jobs.id = picked.id
             RETURNING airlock_jobs.id, airlock_jobs.tenant, plan, input_key, input_bytes, file_name, fence, attempts
         ), tenant AS (
             UPDATE airlock_tenants SET queued = queued - 1,
                 last_claimed = (SELECT COALESCE(MAX(last_claimed), 0) + 1 FROM airlock_tenants)
             FROM upd WHERE airlock_tenants.tenant = upd.tenant
         ), audit AS (
             INSERT INTO airlock_audit (job_id, tenant, at, from_state, to_state, detail)
             SELECT id, tenant, $1, 'queued', 'running', $2 FROM upd
         )
         SELECT * FROM upd",
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
    on_connect: |schema| match schema {
        Some(s) => format!("CREATE SCHEMA IF NOT EXISTS \"{s}\"; SET search_path TO \"{s}\""),
        None => String::new(),
    },
};

/// Connect to PostgreSQL; `schema` puts every connection in that schema.
pub async fn connect(url: &str, schema: Option<String>) -> Result<SqlStore, JobError> {
    SqlStore::connect(url, &DIALECT, schema, 16).await
}
