//! SQLite: the embedded default, for one host. Writers serialize on `BEGIN IMMEDIATE` (so a claim
//! never upgrades a read lock into a deadlock), in WAL mode with a busy timeout so several
//! supervisor processes on the same file wait instead of failing.

use std::path::Path;

use super::sql::{Dialect, SqlStore};
use super::JobError;

pub static DIALECT: Dialect = Dialect {
    name: "sqlite",
    migrations_table:
        "SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    // busy_timeout (below) already bounds every wait for the write lock.
    migration_session: None,
    // One host: its clock is the database's.
    now: "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS now",
    now_expr: "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    claim_pick: "SELECT id FROM airlock_jobs
         WHERE state = 'queued' AND run_after <= $1
         ORDER BY vseq, created_at LIMIT 1",
    for_update: "",
    skip_locked: "",
    reap_select: "SELECT id, tenant, attempts, max_attempts FROM airlock_jobs
         WHERE state = 'running' AND lease_expires_at < $1 ORDER BY tenant LIMIT 100",
    begin: "BEGIN IMMEDIATE",
    tenant_scope: None,
    queue_front: "SELECT CAST(COALESCE(MIN(vseq), 0) AS BIGINT) AS v FROM airlock_jobs WHERE state = 'queued'",
    summary_output_bytes: "CAST(json_extract(summary, '$.output.bytes') AS INTEGER)",
    on_connect: |_| {
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;".to_string()
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
