//! Versioned migrations: an upgrade from version 1 keeps the data, a database created before
//! migrations were versioned is adopted, only `airlock migrate` changes the schema, every other
//! command refuses a schema that is behind (exit 2), and a migration stuck behind a long
//! transaction gives up at its lock timeout instead of stalling the queue.

use std::time::{Duration, Instant};

use airlock::jobs::sql::SqlStore;
use airlock::jobs::{JobError, JobState, JobStore, NewJob};
use sqlx::Executor;

use crate::common::airlock;
use crate::jobs::pg_url;

fn new_job() -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4(),
        tenant: "acme".into(),
        idempotency_key: Some("k1".into()),
        plan: "default".into(),
        input_key: airlock::storage::ObjectKey::new(airlock::storage::Kind::Input).to_string(),
        input_bytes: 10,
        file_name: "leads.csv".into(),
        max_attempts: 5,
        schema: None,
    }
}

async fn pg_store(schema: &str) -> SqlStore {
    airlock::jobs::postgres::connect(&pg_url(), Some(schema.to_string()))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", pg_url()))
}

async fn index_exists(store: &SqlStore, name: &str) -> bool {
    let sql = if store.dialect_name() == "postgres" {
        "SELECT 1 AS x FROM pg_indexes WHERE schemaname = current_schema() AND indexname = $1"
    } else {
        "SELECT 1 AS x FROM sqlite_master WHERE type = 'index' AND name = $1"
    };
    sqlx::query(sql)
        .bind(name)
        .fetch_optional(store.pool())
        .await
        .unwrap()
        .is_some()
}

/// A queued job and its audit row, as a version-1 build wrote them (today's code writes
/// columns and tables that version 1 lacks).
async fn write_v1_job(store: &SqlStore) -> uuid::Uuid {
    let j = new_job();
    sqlx::query("INSERT INTO airlock_jobs (id, tenant, idempotency_key, state, plan, input_key, input_bytes, file_name, max_attempts, run_after, created_at, vseq) VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, 1000, 1000, 1)")
        .bind(j.id.to_string())
        .bind(&j.tenant)
        .bind(j.idempotency_key.as_deref())
        .bind(&j.plan)
        .bind(&j.input_key)
        .bind(j.input_bytes)
        .bind(&j.file_name)
        .bind(j.max_attempts)
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO airlock_tenants (tenant, last_vseq) VALUES ($1, 1)")
        .bind(&j.tenant)
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO airlock_audit (job_id, tenant, at, from_state, to_state) VALUES ($1, $2, 1000, NULL, 'queued')")
        .bind(j.id.to_string())
        .bind(&j.tenant)
        .execute(store.pool())
        .await
        .unwrap();
    j.id
}

async fn upgrade_from_version_1(store: SqlStore) {
    assert_eq!(store.schema_version().await.unwrap(), 0);
    assert!(matches!(
        store.check_schema().await,
        Err(JobError::SchemaBehind { found: 0, .. })
    ));
    store.migrate_to(1).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    let err = store.check_schema().await.unwrap_err();
    assert!(
        matches!(err, JobError::SchemaBehind { found: 1, want } if want == airlock::jobs::schema::latest()),
        "{err}"
    );
    assert!(err.to_string().contains("run `airlock migrate`"), "{err}");
    assert!(!index_exists(&store, "airlock_jobs_output_key").await);
    // Data written at version 1 survives the upgrade.
    let id = write_v1_job(&store).await;
    store.migrate().await.unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        airlock::jobs::schema::latest()
    );
    store.check_schema().await.unwrap();
    assert!(index_exists(&store, "airlock_jobs_output_key").await);
    assert!(!index_exists(&store, "airlock_jobs_finished").await);
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Queued);
    assert_eq!(store.find_idempotent("acme", "k1").await.unwrap(), Some(id));
    let c = store.claim("sup", 30_000, 2_000).await.unwrap().unwrap();
    assert_eq!(c.id, id);
    // The record written at version 1 is in no chain; the claim's is the chain's first.
    let v = airlock::audit::verify(&store, None, None).await.unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!((v.unchained, v.records, v.chains), (1, 1, 1));
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        airlock::jobs::schema::latest()
    );
}

/// A database made by a build from before versioned migrations (the version 1 schema, no
/// `_sqlx_migrations`) is adopted as version 1 and upgraded.
async fn adopts_an_unversioned_database(store: SqlStore) {
    let v1 = if store.dialect_name() == "postgres" {
        include_str!("../migrations/postgres/0001_schema.sql")
    } else {
        include_str!("../migrations/sqlite/0001_schema.sql")
    };
    store.pool().execute(v1).await.unwrap();
    let id = write_v1_job(&store).await;
    assert_eq!(store.schema_version().await.unwrap(), 0);
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        JobState::Queued
    );
}

#[tokio::test]
async fn postgres_upgrade_from_version_1() {
    let schema = format!("m_{}", uuid::Uuid::new_v4().simple());
    upgrade_from_version_1(pg_store(&schema).await).await;
}

#[tokio::test]
async fn sqlite_upgrade_from_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let store = airlock::jobs::sqlite::open(&dir.path().join("jobs.db"))
        .await
        .unwrap();
    upgrade_from_version_1(store).await;
}

#[tokio::test]
async fn postgres_adopts_an_unversioned_database() {
    let schema = format!("m_{}", uuid::Uuid::new_v4().simple());
    adopts_an_unversioned_database(pg_store(&schema).await).await;
}

#[tokio::test]
async fn sqlite_adopts_an_unversioned_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = airlock::jobs::sqlite::open(&dir.path().join("jobs.db"))
        .await
        .unwrap();
    adopts_an_unversioned_database(store).await;
}

/// Every command but `migrate` refuses a database that is behind, with exit 2 and what to run,
/// and leaves the schema as it found it.
#[tokio::test]
async fn commands_refuse_a_schema_that_is_behind_and_only_migrate_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("airlock.db");
    let url = format!("sqlite://{}", db.display());
    let storage = format!("file://{}/storage", dir.path().display());
    let file = dir.path().join("leads.csv");
    std::fs::write(&file, "a,b\n1,2\n").unwrap();
    let job = uuid::Uuid::new_v4().to_string();
    let run = |args: &[&str]| {
        airlock()
            .args(args)
            .env("AIRLOCK_DATABASE_URL", &url)
            .env("AIRLOCK_STORAGE_URL", &storage)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let file_arg = file.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", &job],
        vec!["cancel", &job],
        vec!["link", &job],
        vec!["submit", "--tenant", "acme", file_arg],
        vec!["sweep", "--dry-run"],
        vec!["receipts", "--tenant", "acme"],
        vec!["supervise", "--until-idle"],
    ];
    // No database file yet: every command but migrate refuses, and none creates it.
    for args in &commands {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("airlock migrate"), "{args:?}: {stderr}");
        assert!(!db.exists(), "{args:?} created the database file");
    }
    // An empty database file (schema version 0): the same, and nothing is created in it.
    let store = airlock::jobs::sqlite::open(&db).await.unwrap();
    for args in &commands {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("airlock migrate"), "{args:?}: {stderr}");
    }
    assert_eq!(store.schema_version().await.unwrap(), 0, "nothing migrated");
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'airlock_%'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(tables, 0, "no command but migrate creates tables");
    let out = run(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        store.schema_version().await.unwrap(),
        airlock::jobs::schema::latest()
    );
    let out = run(&["status", &job]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing job, not a schema error"
    );
    // A bad database URL is a configuration error.
    let out = airlock()
        .args(["status", &job, "--database-url", "mysql://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `airlock migrate` behind a long transaction gives up at its lock timeout (10 s) instead of
/// queueing every claim behind its lock; `status` meanwhile answers at once. In a database of
/// its own: sqlx's migration lock is per database.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_behind_a_long_transaction_times_out() {
    let admin = sqlx::PgPool::connect(&pg_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", pg_url()));
    let name = format!(
        "airlock_lock_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let base = pg_url();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let url = format!("{prefix}/{name}");
    let store = airlock::jobs::postgres::connect(&url, None).await.unwrap();
    store.migrate_to(1).await.unwrap();
    // A long transaction that has written to the jobs table.
    let mut long = store.pool().begin().await.unwrap();
    sqlx::query("UPDATE airlock_jobs SET attempts = attempts WHERE id = 'none'")
        .execute(&mut *long)
        .await
        .unwrap();
    let started = Instant::now();
    let out = airlock()
        .arg("migrate")
        .env("AIRLOCK_DATABASE_URL", &url)
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(stderr.contains("lock timeout"), "{stderr}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(30),
        "gave up after {took:?}"
    );
    let started = Instant::now();
    let out = airlock()
        .args(["status", &uuid::Uuid::new_v4().to_string()])
        .env("AIRLOCK_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "status did not wait for a lock"
    );
    long.rollback().await.unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        1,
        "the failed step rolled back"
    );
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    store.pool().close().await;
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
}

/// The embedded store commits with `synchronous = FULL`: a committed completion survives a power
/// cut (`NORMAL` in WAL mode may roll the last commits back).
#[tokio::test]
async fn sqlite_commits_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = airlock::jobs::sqlite::open(&dir.path().join("jobs.db"))
        .await
        .unwrap();
    // Several connections: the pragma is set on each one the pool opens.
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = store.pool().acquire().await.unwrap();
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert_eq!(level, 2, "synchronous = FULL");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        conns.push(c);
    }
}
