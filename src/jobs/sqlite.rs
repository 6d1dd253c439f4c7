//! SQLite: the embedded default, for one host. Writers serialize on `BEGIN IMMEDIATE` (so a claim
//! never upgrades a read lock into a deadlock), in WAL mode with a busy timeout so several
//! supervisor processes on the same file wait instead of failing.

use std::path::Path;

use super::sql::{Dialect, SqlStore};
use super::JobError;

pub static DIALECT: Dialect = Dialect {
    name: "sqlite",
    migrations: r#"
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
    sweep_owner TEXT,
    sweep_lease INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS airlock_jobs_idem ON airlock_jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS airlock_jobs_queue ON airlock_jobs (tenant, run_after, created_at) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS airlock_jobs_lease ON airlock_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS airlock_jobs_finished ON airlock_jobs (finished_at) WHERE state IN ('succeeded', 'rejected', 'failed');
CREATE TABLE IF NOT EXISTS airlock_tenants (
    tenant TEXT PRIMARY KEY,
    queued INTEGER NOT NULL DEFAULT 0,
    last_claimed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS airlock_tenants_rr ON airlock_tenants (last_claimed) WHERE queued > 0;
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
"#,
    claim_pick: "SELECT id FROM (
             SELECT (SELECT id FROM airlock_jobs
                     WHERE tenant = t.tenant AND state = 'queued' AND run_after <= $1
                     ORDER BY run_after, created_at LIMIT 1) AS id,
                    t.last_claimed AS last_claimed
             FROM airlock_tenants t WHERE t.queued > 0
             ORDER BY t.last_claimed LIMIT 256
         ) WHERE id IS NOT NULL ORDER BY last_claimed LIMIT 1",
    for_update: "",
    skip_locked: "",
    reap_select: "SELECT id, tenant, attempts, max_attempts FROM airlock_jobs
         WHERE state = 'running' AND lease_expires_at < $1 LIMIT 100",
    claim_one: None,
    complete_one: None,
    begin: "BEGIN IMMEDIATE",
    on_connect: |_| {
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;".to_string()
    },
};

/// Open (creating, 0600 in a 0700 directory) the database file at `path`.
pub async fn open(path: &Path) -> Result<SqlStore, JobError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| JobError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
    }
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| JobError::Corrupt(format!("cannot create {}: {e}", path.display())))?;
    }
    let url = format!("sqlite://{}", path.display());
    SqlStore::connect(&url, &DIALECT, None, 4).await
}
