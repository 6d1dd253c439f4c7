//! Claim-and-complete throughput of the job store with empty jobs: N jobs over 10 tenants are
//! enqueued, then K concurrent workers claim and complete until the queue is empty. Run against
//! PostgreSQL (AIRLOCK_TEST_DATABASE_URL, default the machine's `test` database, fresh schema)
//! and SQLite (a temp file). Reference in the same run: K workers doing a bare `SELECT 1` round
//! trip per job, the floor any claim query stands on.
//!
//! The outbox (webhooks issue): on PostgreSQL the drain runs ROUNDS times each way, alternating,
//! each in a fresh schema: with every tenant subscribed to every event (each completion also
//! writes its event and delivery rows in the same transaction) and with no endpoint at all (the
//! outbox statement finds no subscriber and writes nothing). Medians and their ratio.
//!
//! The audit chain and row-level security (audit issue): the same, alternating, with both on
//! and both off. On: each audit record chained (its tenant's head locked, the body
//! canonicalized and hashed), row-level security enabled on every tenant table, each submit made
//! as its tenant (`airlock_tenant`, as the API does) and claims and completions as
//! `airlock_service`, as supervisors do. Off: unchained records (the version-7 row,
//! `airlock::audit::set_chained_for_benchmarks(false)`), row-level security disabled on every
//! table, submits as the service role. Medians and their ratio.
//!
//! `cargo bench --bench queue -- [JOBS] [WORKERS] [ROUNDS]`

use std::sync::Arc;
use std::time::Instant;

use airlock::jobs::{Completion, JobState, JobStore, NewJob};

fn job(i: usize) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4(),
        tenant: format!("tenant-{}", i % 10),
        idempotency_key: None,
        plan: "default".into(),
        input_key: "in/00000000-0000-4000-8000-000000000000".into(),
        input_bytes: 0,
        file_name: "x.csv".into(),
        max_attempts: 3,
        schema: None,
    }
}

async fn drain(store: Arc<dyn JobStore>, workers: usize) -> usize {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            let done = Completion {
                state: JobState::Succeeded,
                result_code: None,
                output_key: None,
                rejects_key: None,
                report_key: None,
                summary: airlock::jobs::JobSummary {
                    status: airlock_report::Status::Accepted,
                    rejection: None,
                    input: airlock::jobs::InputSummary {
                        bytes: 0,
                        sha256: "".into(),
                        detected_type: "text/csv".into(),
                    },
                    rows: Default::default(),
                    issue_counts: Default::default(),
                    output: airlock_report::OutputInfo {
                        bytes: 0,
                        sha256: "".into(),
                    },
                },
            };
            while let Some(c) = store
                .claim(&format!("bench-{w}"), 30_000, 1_000_000_000)
                .await
                .unwrap()
            {
                store
                    .complete(c.id, c.fence, &done, 1_000_000_001)
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

async fn bench(name: &str, store: Arc<dyn JobStore>, jobs: usize, workers: usize) -> f64 {
    store.migrate().await.unwrap();
    enqueue_and_drain(name, store, jobs, workers, false).await
}

/// Enqueue `jobs` (each as its tenant when `as_tenant`), then time the drain.
async fn enqueue_and_drain(
    name: &str,
    store: Arc<dyn JobStore>,
    jobs: usize,
    workers: usize,
    as_tenant: bool,
) -> f64 {
    for i in 0..jobs {
        let j = job(i);
        let tenant = as_tenant.then(|| j.tenant.clone());
        airlock::jobs::request::maybe_as_tenant(tenant, store.submit(&j, i as i64))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let n = drain(store, workers).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(n, jobs);
    let rate = n as f64 / secs;
    println!("{name:<10} {n} jobs, {workers} workers: {secs:.2} s = {rate:.0} jobs/s (claim + complete, each with its audit row)");
    rate
}

/// Run `sql` as the login role, which owns the tables (the store's connections work as
/// `airlock_service`).
async fn as_owner(pool: &sqlx::AnyPool, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE NONE")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let jobs = args.first().copied().unwrap_or(5000);
    let workers = args.get(1).copied().unwrap_or(8);
    let rounds = args.get(2).copied().unwrap_or(3).max(1);
    let url = std::env::var("AIRLOCK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let pg = airlock::jobs::postgres::connect(&url, Some(schema.clone()))
        .await
        .expect("PostgreSQL");
    let pool = pg.pool().clone();
    // Reference: the bare round-trip rate with the same concurrency.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..jobs / workers {
                sqlx::query("SELECT 1").execute(&pool).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let floor = (jobs / workers * workers) as f64 / started.elapsed().as_secs_f64();
    println!("reference  SELECT 1 round trips, {workers} workers: {floor:.0} /s");
    let rate = bench("postgres", Arc::new(pg), jobs, workers).await;
    println!("postgres claim+complete / SELECT 1: {:.3}", rate / floor);
    sqlx::Executor::execute(
        &pool,
        // As the owner: the store's connections work as `airlock_service`.
        format!("RESET ROLE; DROP SCHEMA \"{schema}\" CASCADE").as_str(),
    )
    .await
    .ok();

    // The outbox: with every tenant subscribed against none, alternating, fresh schemas.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for subscribed in [true, false] {
            let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
            let pg = airlock::jobs::postgres::connect(&url, Some(schema.clone()))
                .await
                .expect("PostgreSQL");
            pg.migrate().await.unwrap();
            if subscribed {
                for t in 0..10 {
                    pg.add_webhook(
                        uuid::Uuid::new_v4(),
                        &format!("tenant-{t}"),
                        "https://hooks.example/airlock",
                        &airlock::webhooks::EventType::ALL,
                        "sealed",
                        0,
                    )
                    .await
                    .unwrap();
                }
            }
            let name = if subscribed { "outbox" } else { "no-outbox" };
            let rate = enqueue_and_drain(name, Arc::new(pg), jobs, workers, false).await;
            if subscribed {
                let events: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM \"{schema}\".airlock_webhook_deliveries"
                ))
                .fetch_one(&pool)
                .await
                .unwrap();
                assert_eq!(events as usize, jobs, "one delivery per completed job");
                with.push(rate);
            } else {
                without.push(rate);
            }
            sqlx::Executor::execute(
                &pool,
                // As the owner: the store's connections work as `airlock_service`.
                format!("RESET ROLE; DROP SCHEMA \"{schema}\" CASCADE").as_str(),
            )
            .await
            .ok();
        }
    }
    let (w, wo) = (median(with.clone()), median(without.clone()));
    println!(
        "postgres outbox: with {with:.0?} jobs/s, without {without:.0?} jobs/s; medians {w:.0} / {wo:.0} = {:.3} (goal >= 0.9)",
        w / wo
    );

    // The audit chain: chained against unchained records, alternating, fresh schemas.
    let (mut chained, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for on in [true, false] {
            airlock::audit::set_chained_for_benchmarks(on);
            let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
            let pg = airlock::jobs::postgres::connect(&url, Some(schema.clone()))
                .await
                .expect("PostgreSQL");
            pg.migrate().await.unwrap();
            if !on {
                as_owner(&pool, &format!("DO $$ DECLARE t TEXT; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' AND rowsecurity LOOP EXECUTE format('ALTER TABLE %I.%I DISABLE ROW LEVEL SECURITY', '{schema}', t); END LOOP; END $$")).await;
            }
            let secured: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' AND rowsecurity"
            ))
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(
                secured,
                if on { 13 } else { 0 },
                "tables under row-level security"
            );
            let name = if on { "both on" } else { "both off" };
            let rate = enqueue_and_drain(name, Arc::new(pg), jobs, workers, on).await;
            let records: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM \"{schema}\".airlock_audit WHERE seq IS NOT NULL"
            ))
            .fetch_one(&pool)
            .await
            .unwrap();
            // submit, claim and complete: three chained records per job, or none.
            assert_eq!(records as usize, if on { 3 * jobs } else { 0 });
            if on {
                chained.push(rate);
            } else {
                plain.push(rate);
            }
            as_owner(&pool, &format!("DROP SCHEMA \"{schema}\" CASCADE")).await;
        }
    }
    airlock::audit::set_chained_for_benchmarks(true);
    let (c, p) = (median(chained.clone()), median(plain.clone()));
    println!(
        "postgres audit chain + row-level security: both on {chained:.0?} jobs/s, both off {plain:.0?} jobs/s; medians {c:.0} / {p:.0} = {:.3} (goal >= 0.85)",
        c / p
    );
    let dir = tempfile::tempdir().unwrap();
    let lite = airlock::jobs::sqlite::open(&dir.path().join("bench.db"))
        .await
        .unwrap();
    bench("sqlite", Arc::new(lite), jobs, workers).await;
}
