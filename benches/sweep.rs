//! Sweep throughput against the real S3 server: objects deleted per second by `Sweeper::sweep`
//! end to end (claiming jobs in PostgreSQL, DeleteObjects, marking rows, writing receipts),
//! against the reference measured in the same run: a plain loop of 1000-key DeleteObjects over
//! the same number of objects. Needs the S3 server's AIRLOCK_TEST_S3_* variables
//! (`.ci/s3-server.sh start DIR; source DIR/env`) and PostgreSQL.
//!
//! `cargo bench --bench sweep -- [JOBS]` (4 objects per job)

use std::sync::Arc;
use std::time::Instant;

use airlock::jobs::{Completion, JobState, JobStore, NewJob};
use airlock::storage::s3::{Explicit, S3Store};
use airlock::storage::{Kind, ObjectKey, ObjectStore, PutMeta};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the S3 server with .ci/s3-server.sh and source its env")
    })
}

async fn put_many(store: &Arc<S3Store>, n: usize, file: &std::path::Path) -> Vec<ObjectKey> {
    let kinds = [Kind::Input, Kind::Output, Kind::Rejects, Kind::Report];
    let keys: Vec<ObjectKey> = (0..n).map(|i| ObjectKey::new(kinds[i % 4])).collect();
    let mut tasks = Vec::new();
    for chunk in keys.chunks(n.div_ceil(16).max(1)) {
        let store = store.clone();
        let chunk = chunk.to_vec();
        let file = file.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let meta = PutMeta {
                content_type: "text/csv".into(),
                download_name: "x.csv".into(),
            };
            for k in chunk {
                store.put_file(&k, &file, 1 << 20, &meta).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    keys
}

#[tokio::main]
async fn main() {
    let jobs_n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let objects = jobs_n * 4;
    let store = Arc::new(S3Store::explicit(
        Explicit {
            endpoint: &var("AIRLOCK_TEST_S3_ENDPOINT"),
            region: "us-east-1",
            access_key: &var("AIRLOCK_TEST_S3_ACCESS_KEY"),
            secret_key: var("AIRLOCK_TEST_S3_SECRET_KEY").into(),
        },
        &var("AIRLOCK_TEST_S3_BUCKET"),
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("obj");
    std::fs::write(&file, vec![b'x'; 1024]).unwrap();

    // Reference: plain batched DeleteObjects.
    let keys = put_many(&store, objects, &file).await;
    let started = Instant::now();
    let out = store.delete_many(&keys).await.unwrap();
    let reference = out.deleted.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "reference  DeleteObjects loop: {} objects in {:.2} s = {reference:.0} objects/s",
        out.deleted.len(),
        started.elapsed().as_secs_f64()
    );

    // The sweep over jobs holding the same number of objects.
    let url = std::env::var("AIRLOCK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let pg = airlock::jobs::postgres::connect(&url, Some(schema.clone()))
        .await
        .expect("PostgreSQL");
    pg.migrate().await.unwrap();
    let pool = pg.pool().clone();
    let jobs: Arc<dyn JobStore> = Arc::new(pg);
    let keys = put_many(&store, objects, &file).await;
    for group in keys.chunks(4) {
        let [input, output, rejects, report] = group else {
            unreachable!()
        };
        let job = NewJob {
            id: uuid::Uuid::new_v4(),
            tenant: "bench".into(),
            idempotency_key: None,
            plan: "default".into(),
            input_key: input.to_string(),
            input_bytes: 1024,
            file_name: "x.csv".into(),
            max_attempts: 3,
            schema: None,
        };
        let id = jobs.submit(&job, 0).await.unwrap().id();
        let c = jobs.claim("bench", 60_000, 1).await.unwrap().unwrap();
        assert_eq!(c.id, id);
        let done = Completion {
            state: JobState::Succeeded,
            result_code: None,
            output_key: Some(output.to_string()),
            rejects_key: Some(rejects.to_string()),
            report_key: Some(report.to_string()),
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
                    bytes: 1024,
                    sha256: "".into(),
                },
            },
        };
        jobs.complete(id, c.fence, &done, 2).await.unwrap();
    }
    let policies = airlock::policy::Policies::load(None).unwrap();
    let sweeper = airlock::sweeper::Sweeper::new(
        jobs.clone(),
        store.clone() as Arc<dyn ObjectStore>,
        policies.retention,
    );
    let started = Instant::now();
    let summary = sweeper
        .sweep(airlock::jobs::Clock::Fixed(40 * 86_400_000), false)
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let rate = summary.objects_deleted as f64 / secs;
    println!(
        "sweep      {} jobs, {} objects in {secs:.2} s = {rate:.0} objects/s (orphan listing included)",
        summary.jobs_purged, summary.objects_deleted
    );
    println!("sweep / reference: {:.2}", rate / reference);
    assert!(summary.failures.is_empty(), "{summary:?}");
    sqlx::Executor::execute(
        &pool,
        // As the owner: the store's connections work as `airlock_service`.
        format!("RESET ROLE; DROP SCHEMA \"{schema}\" CASCADE").as_str(),
    )
    .await
    .ok();
}
