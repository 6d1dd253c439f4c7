//! `airlock audit verify`'s rate (audit issue): RECORDS records over 10 tenants are appended
//! through `airlock::audit::append` (the service's own path) in transactions of 1,000, the heads
//! are signed, then `airlock::audit::verify` checks every chain and checkpoint, timed. On
//! PostgreSQL (a fresh schema in AIRLOCK_TEST_DATABASE_URL, default the machine's `test`
//! database) and SQLite (a temp file). Reference in the same run: reading the same rows with the
//! same paged query and checking nothing (the floor verify stands on).
//!
//! `cargo bench --bench audit -- [RECORDS]` (default 1,000,000). Goal (BENCHMARKS.md §10):
//! ≥ 200,000 records/s.

use std::time::Instant;

use airlock::audit::{Action, AuditKey, Entry};
use airlock::jobs::sql::SqlStore;
use airlock::jobs::JobStore;

async fn fill(store: &SqlStore, records: usize) {
    let started = Instant::now();
    let mut done = 0;
    while done < records {
        let n = (records - done).min(1000);
        let mut tx = store.pool().begin().await.unwrap();
        let entries = (done..done + n)
            .map(|i| Entry {
                tenant: format!("tenant-{}", i % 10),
                at: 1_700_000_000_000 + i as i64,
                action: Action::JobState {
                    job_id: uuid::Uuid::new_v4().to_string(),
                    from: Some("running".into()),
                    to: "succeeded".into(),
                    detail: None,
                },
            })
            .collect();
        airlock::audit::append(&mut tx, entries).await.unwrap();
        tx.commit().await.unwrap();
        done += n;
    }
    println!(
        "  appended {records} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The floor: the same pages verify reads, on the same driver (PostgreSQL's native one, or
/// SQLite through `Any`), each value decoded and nothing checked.
async fn read_only(store: &SqlStore) -> usize {
    let mut n = 0;
    for t in 0..10 {
        let mut last = 0i64;
        loop {
            let sql = "SELECT seq, job_id, at, actor, request_id, from_state, to_state, detail, body, prev_hash, hash
                 FROM airlock_audit WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3";
            let tenant = format!("tenant-{t}");
            let (got, tail) = match store.native_postgres() {
                Some(pg) => decode_all(
                    &sqlx::query(sql)
                        .bind(tenant)
                        .bind(last)
                        .bind(20_000i64)
                        .fetch_all(pg)
                        .await
                        .unwrap(),
                ),
                None => decode_all(
                    &sqlx::query(sql)
                        .bind(tenant)
                        .bind(last)
                        .bind(20_000i64)
                        .fetch_all(store.pool())
                        .await
                        .unwrap(),
                ),
            };
            n += got;
            last = tail.unwrap_or(last);
            if got < 20_000 {
                break;
            }
        }
    }
    n
}

/// Decode every column of every row (as verify does); how many, and the last seq.
fn decode_all<R: sqlx::Row>(rows: &[R]) -> (usize, Option<i64>)
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut last = None;
    for r in rows {
        for c in [1, 3, 4, 5, 6, 7, 8, 9, 10] {
            std::hint::black_box(r.try_get::<Option<&str>, _>(c).unwrap());
        }
        std::hint::black_box(r.try_get::<i64, _>(2).unwrap());
        last = Some(r.try_get::<i64, _>(0).unwrap());
    }
    (rows.len(), last)
}

async fn bench(name: &str, store: &SqlStore, records: usize) {
    store.migrate().await.unwrap();
    fill(store, records).await;
    let key = AuditKey::generate();
    airlock::audit::checkpoint(store, &key).await.unwrap();
    let started = Instant::now();
    let floor_n = read_only(store).await;
    let floor = floor_n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let v = airlock::audit::verify(store, None, Some(&key.public()))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.records as usize, records);
    let rate = records as f64 / secs;
    println!(
        "{name:<9} verify: {records} records, 10 chains, {} checkpoints in {secs:.2} s = {rate:.0} records/s (goal >= 200000); reading and decoding them alone {floor:.0} records/s; verify / read {:.2}",
        v.checkpoints,
        rate / floor
    );
}

#[tokio::main]
async fn main() {
    let records = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000usize);
    let url = std::env::var("AIRLOCK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let pg = airlock::jobs::postgres::connect(&url, Some(schema.clone()))
        .await
        .expect("PostgreSQL");
    bench("postgres", &pg, records).await;
    sqlx::Executor::execute(
        pg.pool(),
        // As the owner: the store's connections work as `airlock_service`.
        format!("RESET ROLE; DROP SCHEMA \"{schema}\" CASCADE").as_str(),
    )
    .await
    .ok();
    let dir = tempfile::tempdir().unwrap();
    let lite = airlock::jobs::sqlite::open(&dir.path().join("bench.db"))
        .await
        .unwrap();
    bench("sqlite", &lite, records).await;
}
