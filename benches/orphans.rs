//! The orphan sweep's lookup at scale: which of a page of object keys does some job still
//! reference (`JobStore::referenced`)? N finished jobs with all four keys each are loaded into a
//! schema at version 1 (no key indexes); pages of 1,000 keys (half referenced, half unknown) are
//! timed there, as the reference, then the database is migrated to the current version (timed:
//! the indexes are built on N rows) and the same pages are timed again. PostgreSQL
//! (AIRLOCK_TEST_DATABASE_URL, default the machine's `test` database, fresh schema) and SQLite (a
//! temp file).
//!
//! `cargo bench --bench orphans -- [JOBS] [PAGES]` (default 1,000,000 jobs, 5 pages)

use std::time::Instant;

use airlock::jobs::sql::SqlStore;
use airlock::jobs::JobStore;
use sqlx::Executor;

const PAGE: usize = 1_000;

/// Insert `n` purged-or-finished jobs in one statement; keys derive from the row number.
async fn load(store: &SqlStore, n: usize) {
    let sql = if store.dialect_name() == "postgres" {
        format!(
            "INSERT INTO airlock_jobs (id, tenant, state, plan, input_key, input_bytes, file_name,
                 max_attempts, run_after, created_at, finished_at, output_key, rejects_key, report_key)
             SELECT 'job-' || i, 'tenant-' || (i % 10), 'succeeded', 'default',
                 'in/' || md5('in' || i), 1, 'x.csv', 5, 0, 0, 0,
                 'out/' || md5('out' || i), 'rej/' || md5('rej' || i), 'rep/' || md5('rep' || i)
             FROM generate_series(1, {n}) AS i"
        )
    } else {
        format!(
            "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n})
             INSERT INTO airlock_jobs (id, tenant, state, plan, input_key, input_bytes, file_name,
                 max_attempts, run_after, created_at, finished_at, output_key, rejects_key, report_key)
             SELECT 'job-' || i, 'tenant-' || (i % 10), 'succeeded', 'default',
                 'in/' || i, 1, 'x.csv', 5, 0, 0, 0, 'out/' || i, 'rej/' || i, 'rep/' || i
             FROM seq"
        )
    };
    store.pool().execute(sql.as_str()).await.unwrap();
    let analyze = "ANALYZE";
    store.pool().execute(analyze).await.unwrap();
}

/// Page `p`: 500 keys of existing jobs (spread over the table, all four kinds) and 500 unknown.
async fn page(store: &SqlStore, n: usize, p: usize) -> Vec<String> {
    let mut keys = Vec::with_capacity(PAGE);
    let pg = store.dialect_name() == "postgres";
    for j in 0..PAGE / 2 {
        let i = (p * 7919 + j * 104_729) % n + 1;
        let kind = ["in", "out", "rej", "rep"][j % 4];
        keys.push(if pg {
            let row: (String,) = sqlx::query_as(&format!("SELECT md5('{kind}' || {i})"))
                .fetch_one(store.pool())
                .await
                .unwrap();
            format!("{kind}/{}", row.0)
        } else {
            format!("{kind}/{i}")
        });
        keys.push(format!("{kind}/unknown-{p}-{j}"));
    }
    keys
}

async fn time_pages(store: &SqlStore, pages: &[Vec<String>]) -> f64 {
    let started = Instant::now();
    for keys in pages {
        let found = store.referenced(keys).await.unwrap();
        assert_eq!(found.len(), PAGE / 2, "half of each page is referenced");
    }
    started.elapsed().as_secs_f64() * 1000.0 / pages.len() as f64
}

async fn run(name: &str, store: SqlStore, n: usize, pages: usize) {
    store.migrate_to(1).await.unwrap();
    let t = Instant::now();
    load(&store, n).await;
    let load_s = t.elapsed().as_secs_f64();
    let mut keys = Vec::new();
    for p in 0..pages {
        keys.push(page(&store, n, p).await);
    }
    let v1 = time_pages(&store, &keys).await;
    let t = Instant::now();
    store.migrate().await.unwrap();
    let migrate_s = t.elapsed().as_secs_f64();
    let v2 = time_pages(&store, &keys).await;
    println!(
        "{name}: {n} jobs (loaded in {load_s:.1} s); per page of {PAGE} keys: version 1 {v1:.1} ms, \
         current {v2:.1} ms ({:.0}x faster); migrating to the current version took {migrate_s:.1} s; \
         a nightly pass over 5M objects: {:.0} s before, {:.0} s now",
        v1 / v2,
        v1 * 5_000.0 / 1000.0,
        v2 * 5_000.0 / 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let pages: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let url = std::env::var("AIRLOCK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let pg = airlock::jobs::postgres::connect(&url, Some(schema.clone()))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required: {e}"));
    run("postgres", pg.clone(), n, pages).await;
    pg.pool()
        .execute(format!("RESET ROLE; DROP SCHEMA {schema} CASCADE").as_str())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lite = airlock::jobs::sqlite::open(&dir.path().join("jobs.db"))
        .await
        .unwrap();
    run("sqlite", lite, n, pages).await;
}
