//! The retention sweeper and erasure, on both deployments (SQLite + local directory, PostgreSQL +
//! the real S3 server), with an injected clock: nothing sleeps.

use std::collections::HashSet;
use std::sync::Arc;

use airlock::jobs::{Completion, JobRecord, JobState, JobStore, NewJob};
use airlock::policy::Policies;
use airlock::storage::{Kind, ObjectKey, ObjectStore, PutMeta};
use airlock::sweeper::Sweeper;

const DAY: i64 = 86_400_000;
const SECRET_CELL: &str = "ana.secret@example.com";

struct World {
    jobs: Arc<dyn JobStore>,
    store: Arc<dyn ObjectStore>,
    dir: tempfile::TempDir,
    /// The production world's own bucket.
    bucket: Option<String>,
}

async fn embedded() -> World {
    let (jobs, dir) = crate::jobs::sqlite().await;
    let dir = dir.unwrap();
    let store = Arc::new(
        airlock::storage::fs::FsStore::open(&dir.path().join("storage"), "http://127.0.0.1:1")
            .unwrap(),
    );
    World {
        jobs,
        store,
        dir,
        bucket: None,
    }
}

/// PostgreSQL in a fresh schema and a fresh bucket: the orphan sweep owns everything under
/// Airlock's prefixes in its bucket, so sharing one with other tests would be wrong.
async fn production() -> World {
    let (jobs, _) = crate::jobs::postgres().await;
    let env = crate::storage::s3_env();
    let bucket = format!("sweep-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let client = crate::storage::s3_client();
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = airlock::storage::s3::S3Store::explicit(
        airlock::storage::s3::Explicit {
            endpoint: &env.endpoint,
            region: "us-east-1",
            access_key: &env.access_key,
            secret_key: env.secret_key.clone().into(),
        },
        &bucket,
    );
    World {
        jobs,
        store: Arc::new(store),
        dir: tempfile::tempdir().unwrap(),
        bucket: Some(bucket),
    }
}

fn policies() -> Policies {
    Policies::load(None).unwrap()
}

impl World {
    /// Put an object outside Airlock's prefixes (someone else's data in the same bucket), by the
    /// backend's own means, and return a check of whether it still exists.
    async fn put_foreign(&self) -> bool {
        match &self.bucket {
            Some(bucket) => {
                let client = crate::storage::s3_client();
                client
                    .put_object()
                    .bucket(bucket)
                    .key("backups/not-airlock.csv")
                    .body(b"keep me".to_vec().into())
                    .send()
                    .await
                    .unwrap();
                true
            }
            None => {
                let path = self
                    .dir
                    .path()
                    .join("storage/objects/backups/not-airlock.csv");
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, b"keep me").unwrap();
                true
            }
        }
    }

    async fn foreign_exists(&self) -> bool {
        match &self.bucket {
            Some(bucket) => crate::storage::s3_client()
                .head_object()
                .bucket(bucket)
                .key("backups/not-airlock.csv")
                .send()
                .await
                .is_ok(),
            None => self
                .dir
                .path()
                .join("storage/objects/backups/not-airlock.csv")
                .exists(),
        }
    }

    /// A queued job of acme's on `input`, submitted at `at`.
    async fn queued_job(&self, input: &str, at: i64) -> uuid::Uuid {
        let job = NewJob {
            id: uuid::Uuid::new_v4(),
            tenant: "acme".into(),
            idempotency_key: None,
            plan: "default".into(),
            input_key: input.to_string(),
            input_bytes: 1,
            file_name: "x".into(),
            max_attempts: 5,
            schema: None,
        };
        self.jobs.submit(&job, at).await.unwrap().id()
    }

    fn sweeper(&self) -> Sweeper {
        Sweeper::new(self.jobs.clone(), self.store.clone(), policies().retention)
    }

    async fn put(&self, kind: Kind) -> String {
        let path = self.dir.path().join(format!("f-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, format!("email\n{SECRET_CELL}\n")).unwrap();
        let key = ObjectKey::new(kind);
        let meta = PutMeta {
            content_type: "text/csv".into(),
            download_name: "leads of Ana.csv".into(),
        };
        self.store
            .put_file(&key, &path, 1 << 20, &meta)
            .await
            .unwrap();
        key.to_string()
    }

    /// A job of `tenant` that finished at `finished` (ms), with all four objects stored.
    async fn finished_job(&self, tenant: &str, plan: &str, finished: i64) -> JobRecord {
        let input = self.put(Kind::Input).await;
        let job = NewJob {
            id: uuid::Uuid::new_v4(),
            tenant: tenant.into(),
            idempotency_key: None,
            plan: plan.into(),
            input_key: input,
            input_bytes: 30,
            file_name: "leads of Ana.csv".into(),
            max_attempts: 5,
            schema: None,
        };
        let id = self.jobs.submit(&job, finished - 10).await.unwrap().id();
        let c = self
            .jobs
            .claim("test", 60_000, finished - 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.id, id, "each world's queue holds only the job being made");
        let done = Completion {
            state: JobState::Succeeded,
            result_code: None,
            output_key: Some(self.put(Kind::Output).await),
            rejects_key: Some(self.put(Kind::Rejects).await),
            report_key: Some(self.put(Kind::Report).await),
            summary: airlock::jobs::JobSummary {
                status: airlock_report::Status::Accepted,
                rejection: None,
                input: airlock::jobs::InputSummary {
                    bytes: 0,
                    sha256: "ab".into(),
                    detected_type: "text/csv".into(),
                },
                rows: Default::default(),
                issue_counts: Default::default(),
                output: airlock_report::OutputInfo {
                    bytes: 30,
                    sha256: "cd".into(),
                },
            },
        };
        self.jobs
            .complete(c.id, c.fence, &done, finished)
            .await
            .unwrap();
        self.jobs.get(id).await.unwrap().unwrap()
    }

    async fn exists(&self, key: &str) -> bool {
        self.store
            .head(&ObjectKey::parse(key).unwrap())
            .await
            .unwrap()
            .is_some()
    }

    async fn all_exist(&self, job: &JobRecord) -> Vec<bool> {
        let mut v = Vec::new();
        for k in keys(job) {
            v.push(self.exists(&k).await);
        }
        v
    }
}

fn keys(job: &JobRecord) -> Vec<String> {
    [
        Some(job.input_key.clone()),
        job.output_key.clone(),
        job.rejects_key.clone(),
        job.report_key.clone(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

async fn retention_boundary(w: World) {
    let now = 100 * DAY;
    let kept = w
        .finished_job("acme", "default", now - 30 * DAY + 60_000)
        .await;
    let due = w
        .finished_job("acme", "default", now - 30 * DAY - 1_000)
        .await;
    let trial_due = w.finished_job("acme", "trial", now - 7 * DAY - 1_000).await;
    // An unfinished job, however old, is never touched.
    let queued_input = w.put(Kind::Input).await;
    let queued = w.queued_job(&queued_input, 1).await;

    let dry = w
        .sweeper()
        .sweep(airlock::jobs::Clock::Fixed(now), true)
        .await
        .unwrap();
    assert_eq!(dry.candidates, 2, "{dry:?}");
    assert_eq!(
        dry.oldest_overdue_completed_at_ms,
        Some(due.finished_at.unwrap())
    );
    assert_eq!(
        w.all_exist(&due).await,
        [true; 4],
        "dry-run deletes nothing"
    );

    let s = w
        .sweeper()
        .sweep(airlock::jobs::Clock::Fixed(now), false)
        .await
        .unwrap();
    assert_eq!((s.jobs_purged, s.objects_deleted), (2, 8), "{s:?}");
    // The dry run reported what the real run then did.
    assert_eq!(dry.candidates, s.jobs_purged as i64);
    assert_eq!(dry.bytes_freed, s.bytes_freed);
    assert_eq!(
        dry.oldest_overdue_completed_at_ms,
        s.oldest_overdue_completed_at_ms
    );
    assert!(s.failures.is_empty(), "{s:?}");
    assert_eq!(w.all_exist(&due).await, [false; 4]);
    assert_eq!(w.all_exist(&trial_due).await, [false; 4]);
    assert_eq!(
        w.all_exist(&kept).await,
        [true; 4],
        "30 days minus a minute is kept"
    );
    assert!(w.exists(&queued_input).await);
    assert_eq!(
        w.jobs.get(queued).await.unwrap().unwrap().state,
        JobState::Queued
    );
    let rec = w.jobs.get(due.id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.purged_at), (JobState::Purged, Some(now)));

    // Receipts: one per job, ids, keys and hashes, no file name and no cell data.
    let receipts = w.jobs.receipts("acme").await.unwrap();
    assert_eq!(receipts.len(), 2);
    let text = serde_json::to_string(&receipts).unwrap();
    assert!(
        !text.contains(SECRET_CELL) && !text.contains("Ana"),
        "{text}"
    );
    let r = receipts.iter().find(|r| r.job_id == due.id).unwrap();
    let listed: HashSet<String> = r.objects.iter().map(|o| o.key.clone()).collect();
    assert_eq!(listed, keys(&due).into_iter().collect());
    assert_eq!(r.run_id, s.run_id);
    let input = r.objects.iter().find(|o| o.kind == Kind::Input).unwrap();
    assert_eq!(input.sha256.as_deref(), Some("ab"));
    let output = r.objects.iter().find(|o| o.kind == Kind::Output).unwrap();
    assert_eq!(
        (output.bytes, output.sha256.as_deref()),
        (Some(30), Some("cd"))
    );

    // A re-run finds nothing more.
    let again = w
        .sweeper()
        .sweep(airlock::jobs::Clock::Fixed(now), false)
        .await
        .unwrap();
    assert_eq!((again.candidates, again.jobs_purged), (0, 0));
}

async fn crash_between_delete_and_mark_then_rerun(w: World) {
    let now = 100 * DAY;
    let job = w.finished_job("acme", "default", now - 31 * DAY).await;
    // A sweep claims the job and deletes its objects, then dies before marking the row.
    let classes = policies().retention.classes(now);
    let scope = airlock::jobs::SweepScope::Retention(classes);
    let taken = w
        .jobs
        .claim_sweep(&scope, "dead-sweep", 600_000, 10, now)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let ks: Vec<ObjectKey> = keys(&job)
        .iter()
        .map(|k| ObjectKey::parse(k).unwrap())
        .collect();
    w.store.delete_many(&ks).await.unwrap();
    // While its lease lasts, nobody else takes the job.
    assert_eq!(
        w.sweeper()
            .sweep(airlock::jobs::Clock::Fixed(now + 1_000), false)
            .await
            .unwrap()
            .jobs_purged,
        0
    );
    // After the lease, the next run finishes cleanly: the objects are already gone, which is fine.
    let s = w
        .sweeper()
        .sweep(airlock::jobs::Clock::Fixed(now + 600_001), false)
        .await
        .unwrap();
    assert_eq!(s.jobs_purged, 1, "{s:?}");
    assert!(s.failures.is_empty());
    assert_eq!(
        w.jobs.get(job.id).await.unwrap().unwrap().state,
        JobState::Purged
    );
    assert_eq!(w.jobs.receipts("acme").await.unwrap().len(), 1);
}

async fn concurrent_sweeps_take_each_job_once(w: World) {
    let now = 100 * DAY;
    let mut all = Vec::new();
    for i in 0..12 {
        all.push(w.finished_job("acme", "default", now - 40 * DAY + i).await);
    }
    let (a, b) = tokio::join!(
        async {
            w.sweeper()
                .sweep(airlock::jobs::Clock::Fixed(now), false)
                .await
                .unwrap()
        },
        async {
            w.sweeper()
                .sweep(airlock::jobs::Clock::Fixed(now), false)
                .await
                .unwrap()
        }
    );
    assert_eq!(a.jobs_purged + b.jobs_purged, 12, "{a:?} {b:?}");
    assert_eq!(
        a.objects_deleted + b.objects_deleted,
        48,
        "each object deleted once"
    );
    let receipts = w.jobs.receipts("acme").await.unwrap();
    let ids: HashSet<String> = receipts.iter().map(|r| r.job_id.to_string()).collect();
    assert_eq!((receipts.len(), ids.len()), (12, 12));
}

/// A cancelled job is deleted 30 days after it ended, like every other final state.
async fn cancelled_jobs_are_inside_retention(w: World) {
    let now = 100 * DAY;
    let input = w.put(Kind::Input).await;
    let job = w.queued_job(&input, now - 61 * DAY).await;
    assert_eq!(
        w.jobs.cancel(job, now - 60 * DAY).await.unwrap(),
        JobState::Cancelled
    );
    let dry = w
        .sweeper()
        .sweep(airlock::jobs::Clock::Fixed(now), true)
        .await
        .unwrap();
    assert_eq!(dry.candidates, 1, "{dry:?}");
    let s = w
        .sweeper()
        .sweep(airlock::jobs::Clock::Fixed(now), false)
        .await
        .unwrap();
    assert_eq!(s.jobs_purged, 1, "{s:?}");
    assert!(
        !w.exists(&input).await,
        "the cancelled job's input outlived retention"
    );
    assert_eq!(
        w.jobs.get(job).await.unwrap().unwrap().state,
        JobState::Purged
    );
}

async fn orphans_go_and_referenced_objects_stay(w: World) {
    let real_now = airlock::jobs::now_ms();
    let job = w.finished_job("acme", "default", real_now - DAY).await;
    let orphan = w.put(Kind::Output).await;
    assert!(w.put_foreign().await);
    // Within the 48 h grace (47 h later, by the injected clock): kept.
    let s = w
        .sweeper()
        .sweep(
            airlock::jobs::Clock::Fixed(real_now + 47 * 3_600_000),
            false,
        )
        .await
        .unwrap();
    assert!(w.exists(&orphan).await, "{s:?}");
    assert_eq!(s.orphans_deleted, 0, "{s:?}");
    // Past it (49 h later): the orphan goes, the live job's objects stay, and an object outside
    // Airlock's prefixes is never touched.
    let later = real_now + 49 * 3_600_000;
    let s = w
        .sweeper()
        .sweep(airlock::jobs::Clock::Fixed(later), false)
        .await
        .unwrap();
    assert_eq!(s.orphans_deleted, 1, "{s:?}");
    assert!(!w.exists(&orphan).await);
    assert_eq!(w.all_exist(&job).await, [true; 4]);
    assert!(
        w.foreign_exists().await,
        "an object outside in/ out/ rej/ rep/ was deleted"
    );
}

async fn purge_erases_exactly_one_tenant(w: World) {
    let now = airlock::jobs::now_ms();
    let a1 = w.finished_job("acme", "default", now - 1_000).await;
    let g1 = w.finished_job("globex", "default", now - 900).await;
    let a2 = w.finished_job("acme", "trial", now - 800).await;
    let dry = w
        .sweeper()
        .purge("acme", airlock::jobs::Clock::Fixed(now), true)
        .await
        .unwrap();
    assert_eq!(dry.candidates, 2);
    assert_eq!(w.all_exist(&a1).await, [true; 4]);
    let s = w
        .sweeper()
        .purge("acme", airlock::jobs::Clock::Fixed(now), false)
        .await
        .unwrap();
    assert_eq!(s.jobs_purged, 2, "{s:?}");
    assert_eq!(w.all_exist(&a1).await, [false; 4]);
    assert_eq!(w.all_exist(&a2).await, [false; 4]);
    assert_eq!(
        w.all_exist(&g1).await,
        [true; 4],
        "another tenant is untouched"
    );
    assert_eq!(
        w.jobs.get(g1.id).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    let receipts = w.jobs.receipts("acme").await.unwrap();
    assert_eq!(receipts.len(), 2);
    assert!(receipts
        .iter()
        .all(|r| r.reason == airlock::jobs::PurgeReason::ErasureRequest));
    assert!(w.jobs.receipts("globex").await.unwrap().is_empty());
}

/// An attempt uploaded its results and its supervisor died before recording them; then the
/// tenant asks for erasure. The erasure waits out the old lease (exit 1, `still_active`), then
/// deletes the input and what the attempt uploaded under the keys its claim recorded.
async fn erasure_deletes_a_dead_attempts_uploads(w: World) {
    use airlock::jobs::Clock;
    let input = w.put(Kind::Input).await;
    let t = 1_000_000;
    let id = w.queued_job(&input, t).await;
    let c = w.jobs.claim("dies", 60_000, t + 1).await.unwrap().unwrap();
    let meta = PutMeta {
        content_type: "text/csv".into(),
        download_name: "x.csv".into(),
    };
    let path = w.dir.path().join("attempt-output");
    std::fs::write(&path, format!("email\n{SECRET_CELL}\n")).unwrap();
    for key in [&c.keys.output, &c.keys.report] {
        w.store.put_file(key, &path, 1 << 20, &meta).await.unwrap();
    }
    // The supervisor is gone; nothing was recorded.
    let s = w
        .sweeper()
        .purge("acme", Clock::Fixed(t + 2), false)
        .await
        .unwrap();
    let erasure = s.erasure.clone().unwrap();
    assert_eq!(
        (erasure.cancelled_running, erasure.still_active),
        (1, 1),
        "{s:?}"
    );
    assert!(s.failed(), "exit 1 until the old lease has run out");
    assert!(w.exists(&c.keys.output.to_string()).await);
    let s = w
        .sweeper()
        .purge("acme", Clock::Fixed(t + 1 + 60_000 + 1), false)
        .await
        .unwrap();
    assert!(!s.failed(), "{s:?}");
    assert_eq!(s.jobs_purged, 1, "{s:?}");
    for key in [
        input.clone(),
        c.keys.output.to_string(),
        c.keys.report.to_string(),
    ] {
        assert!(
            !w.exists(&key).await,
            "{key} outlived the erasure: {s:?} {:?}",
            w.jobs.receipts("acme").await.unwrap()
        );
    }
    let receipts = w.jobs.receipts("acme").await.unwrap();
    let listed: Vec<&str> = receipts[0].objects.iter().map(|o| o.key.as_str()).collect();
    assert!(listed.contains(&c.keys.output.as_str()), "{listed:?}");
    assert_eq!(
        w.jobs.get(id).await.unwrap().unwrap().state,
        JobState::Purged
    );
}

macro_rules! sweeper_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn retention_boundary_dry_run_and_receipts() {
                retention_boundary($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn crash_between_delete_and_mark() {
                crash_between_delete_and_mark_then_rerun($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn two_concurrent_sweeps() {
                concurrent_sweeps_take_each_job_once($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn cancelled_jobs_are_swept_too() {
                cancelled_jobs_are_inside_retention($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn orphans() {
                orphans_go_and_referenced_objects_stay($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn erasure_of_a_dead_attempt() {
                erasure_deletes_a_dead_attempts_uploads($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn purge_one_tenant() {
                purge_erases_exactly_one_tenant($make).await;
            }
        }
    };
}

sweeper_suite!(embedded, embedded().await);
sweeper_suite!(production, production().await);
