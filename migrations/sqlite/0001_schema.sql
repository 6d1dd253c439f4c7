-- Version 1: the schema as it stood before versioned migrations. Every statement is
-- IF NOT EXISTS, so a database created by an earlier build is adopted as version 1 unchanged.
CREATE TABLE IF NOT EXISTS airlock_jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    plan TEXT NOT NULL,
    input_key TEXT NOT NULL,
    input_bytes INTEGER NOT NULL,
    file_name TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_after INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    fence INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    result_code TEXT,
    output_key TEXT,
    rejects_key TEXT,
    report_key TEXT,
    summary TEXT,
    purged_at INTEGER,
    vseq INTEGER NOT NULL DEFAULT 0,
    sweep_owner TEXT,
    sweep_lease INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS airlock_jobs_idem ON airlock_jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS airlock_jobs_queue ON airlock_jobs (tenant, run_after, created_at) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS airlock_jobs_fair ON airlock_jobs (vseq, created_at) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS airlock_jobs_lease ON airlock_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS airlock_jobs_finished ON airlock_jobs (finished_at) WHERE state IN ('succeeded', 'rejected', 'failed');
CREATE INDEX IF NOT EXISTS airlock_jobs_ended ON airlock_jobs (finished_at) WHERE state IN ('succeeded', 'rejected', 'failed', 'cancelled');
CREATE TABLE IF NOT EXISTS airlock_tenants (
    tenant TEXT PRIMARY KEY,
    last_vseq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS airlock_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    at INTEGER NOT NULL,
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
    at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS airlock_receipts_tenant ON airlock_receipts (tenant, at);
CREATE INDEX IF NOT EXISTS airlock_jobs_tenant ON airlock_jobs (tenant);
