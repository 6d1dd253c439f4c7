//! The supervisor against stores that fail on purpose, with real sandboxed workers: a completion
//! whose commit lands but whose reply is lost keeps its objects; a submit whose reply is lost
//! keeps its input; storage outages spend no attempts and open the circuit breaker instead of
//! draining the queue. Run on both job stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock::jobs::{
    Claimed, Completion, FailureCode, JobError, JobRecord, JobState, JobStore, NewJob, Retry,
    Submitted, SweepPreview, SweepScope,
};
use airlock::storage::{
    DeleteOutcome, Kind, ListPage, ObjectKey, ObjectMeta, ObjectStore, PutMeta, StorageError,
};
use airlock::supervisor::{Settings, Supervisor};
use async_trait::async_trait;
use uuid::Uuid;

use crate::common::fixture;

fn lost_reply() -> JobError {
    JobError::Db(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset (test)",
    )))
}

/// A job store whose replies can be lost after the write landed.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn JobStore>,
    /// `complete` and `submit` calls whose commit lands but whose reply is lost.
    lose_replies: AtomicU32,
}

impl Flaky {
    fn lose_one(&self) -> bool {
        self.lose_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[async_trait]
impl JobStore for Flaky {
    async fn migrate(&self) -> Result<(), JobError> {
        self.inner.migrate().await
    }
    async fn check_schema(&self) -> Result<(), JobError> {
        self.inner.check_schema().await
    }
    async fn now(&self) -> Result<i64, JobError> {
        self.inner.now().await
    }
    async fn find_idempotent(&self, tenant: &str, key: &str) -> Result<Option<Uuid>, JobError> {
        self.inner.find_idempotent(tenant, key).await
    }
    async fn submit(&self, job: &NewJob, now: i64) -> Result<Submitted, JobError> {
        let r = self.inner.submit(job, now).await;
        if r.is_ok() && self.lose_one() {
            return Err(lost_reply());
        }
        r
    }
    async fn claim(
        &self,
        owner: &str,
        lease_ms: i64,
        now: i64,
    ) -> Result<Option<Claimed>, JobError> {
        self.inner.claim(owner, lease_ms, now).await
    }
    async fn heartbeat(
        &self,
        id: Uuid,
        fence: i64,
        lease_ms: i64,
        now: i64,
    ) -> Result<bool, JobError> {
        self.inner.heartbeat(id, fence, lease_ms, now).await
    }
    async fn complete(
        &self,
        id: Uuid,
        fence: i64,
        done: &Completion,
        now: i64,
    ) -> Result<(), JobError> {
        let r = self.inner.complete(id, fence, done, now).await;
        if r.is_ok() && self.lose_one() {
            return Err(lost_reply());
        }
        r
    }
    async fn fail(
        &self,
        id: Uuid,
        fence: i64,
        code: FailureCode,
        detail: &str,
        retry: Retry,
        now: i64,
    ) -> Result<JobState, JobError> {
        self.inner.fail(id, fence, code, detail, retry, now).await
    }
    async fn release(&self, id: Uuid, fence: i64, now: i64) -> Result<(), JobError> {
        self.inner.release(id, fence, now).await
    }
    async fn reap(&self, now: i64) -> Result<u64, JobError> {
        self.inner.reap(now).await
    }
    async fn cancel(&self, id: Uuid, now: i64) -> Result<JobState, JobError> {
        self.inner.cancel(id, now).await
    }
    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, JobError> {
        self.inner.get(id).await
    }
    async fn counts(&self) -> Result<BTreeMap<String, i64>, JobError> {
        self.inner.counts().await
    }
    async fn claim_sweep(
        &self,
        scope: &SweepScope,
        owner: &str,
        lease_ms: i64,
        limit: i64,
        now: i64,
    ) -> Result<Vec<JobRecord>, JobError> {
        self.inner
            .claim_sweep(scope, owner, lease_ms, limit, now)
            .await
    }
    async fn preview_sweep(&self, scope: &SweepScope, now: i64) -> Result<SweepPreview, JobError> {
        self.inner.preview_sweep(scope, now).await
    }
    async fn mark_purged(
        &self,
        done: &[airlock::jobs::Receipt],
        owner: &str,
        run_id: &str,
        reason: airlock::jobs::PurgeReason,
        now: i64,
    ) -> Result<Vec<Uuid>, JobError> {
        self.inner
            .mark_purged(done, owner, run_id, reason, now)
            .await
    }
    async fn release_sweep(&self, ids: &[Uuid], owner: &str) -> Result<(), JobError> {
        self.inner.release_sweep(ids, owner).await
    }
    async fn referenced(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>, JobError> {
        self.inner.referenced(keys).await
    }
    async fn receipts(&self, tenant: &str) -> Result<Vec<airlock::jobs::Receipt>, JobError> {
        self.inner.receipts(tenant).await
    }
    async fn cancel_tenant(
        &self,
        tenant: &str,
        now: i64,
    ) -> Result<Vec<(Uuid, JobState)>, JobError> {
        self.inner.cancel_tenant(tenant, now).await
    }
    async fn active_of(&self, tenant: &str) -> Result<i64, JobError> {
        self.inner.active_of(tenant).await
    }
    async fn audit(
        &self,
        id: Uuid,
    ) -> Result<Vec<(Option<String>, String, Option<String>)>, JobError> {
        self.inner.audit(id).await
    }
}

/// An object store that can be switched off (every call fails as an outage).
#[derive(Debug)]
struct Switch {
    inner: Arc<dyn ObjectStore>,
    down: AtomicBool,
    /// Calls refused while down.
    refused: AtomicU32,
}

impl Switch {
    fn check(&self) -> Result<(), StorageError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StorageError::Unavailable(
                "connection refused (test outage)".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for Switch {
    async fn put_file(
        &self,
        key: &ObjectKey,
        path: &Path,
        cap: u64,
        meta: &PutMeta,
    ) -> Result<u64, StorageError> {
        self.check()?;
        self.inner.put_file(key, path, cap, meta).await
    }
    async fn get_to_file(
        &self,
        key: &ObjectKey,
        dest: &Path,
        cap: u64,
    ) -> Result<u64, StorageError> {
        self.check()?;
        self.inner.get_to_file(key, dest, cap).await
    }
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        self.check()?;
        self.inner.head(key).await
    }
    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<DeleteOutcome, StorageError> {
        self.check()?;
        self.inner.delete_many(keys).await
    }
    async fn presign_get(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        name: &str,
    ) -> Result<String, StorageError> {
        self.inner.presign_get(key, ttl, name).await
    }
    async fn list(&self, prefix: &str, next: Option<String>) -> Result<ListPage, StorageError> {
        self.check()?;
        self.inner.list(prefix, next).await
    }
}

struct Rig {
    jobs: Arc<Flaky>,
    store: Arc<Switch>,
    work: tempfile::TempDir,
    _db: Option<tempfile::TempDir>,
}

impl Rig {
    async fn new(backend: &str) -> Self {
        // The supervisor runs inside the test harness: its workers must be `airlock`.
        std::env::set_var(
            airlock::hostile::WORKER_EXE_ENV,
            env!("CARGO_BIN_EXE_airlock"),
        );
        let (inner, db) = match backend {
            "postgres" => crate::jobs::postgres().await,
            _ => crate::jobs::sqlite().await,
        };
        let work = tempfile::tempdir().unwrap();
        let fs =
            airlock::storage::fs::FsStore::open(&work.path().join("storage"), "http://127.0.0.1:1")
                .unwrap();
        Rig {
            jobs: Arc::new(Flaky {
                inner,
                lose_replies: AtomicU32::new(0),
            }),
            store: Arc::new(Switch {
                inner: Arc::new(fs),
                down: AtomicBool::new(false),
                refused: AtomicU32::new(0),
            }),
            work,
            _db: db,
        }
    }

    /// Upload a fixture and enqueue it, as `airlock submit` does.
    async fn enqueue(&self, fixture_path: &str) -> Uuid {
        let input = ObjectKey::new(Kind::Input);
        let path = fixture(fixture_path);
        let size = std::fs::metadata(&path).unwrap().len();
        self.store
            .inner
            .put_file(
                &input,
                &path,
                1 << 30,
                &PutMeta {
                    content_type: "application/octet-stream".into(),
                    download_name: "leads.csv".into(),
                },
            )
            .await
            .unwrap();
        let job = NewJob {
            id: Uuid::new_v4(),
            tenant: "acme".into(),
            idempotency_key: None,
            plan: "default".into(),
            input_key: input.to_string(),
            input_bytes: size as i64,
            file_name: "leads.csv".into(),
            max_attempts: 5,
        };
        let now = self.jobs.inner.now().await.unwrap();
        self.jobs.inner.submit(&job, now).await.unwrap().id()
    }

    fn supervisor(&self, threshold: u32, cooldown: Duration) -> Arc<Supervisor> {
        let work_dir = self.work.path().join("work");
        std::fs::create_dir_all(&work_dir).unwrap();
        let settings = Settings {
            concurrency: 1,
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(5),
            poll: Duration::from_millis(50),
            until_idle: true,
            work_dir,
            outage_budget: Duration::from_secs(3600),
            breaker_threshold: threshold,
            breaker_cooldown: cooldown,
        };
        let policies = Arc::new(airlock::policy::Policies::load(None).unwrap());
        Arc::new(Supervisor::new(
            self.jobs.clone(),
            self.store.clone(),
            policies,
            settings,
        ))
    }

    async fn exists(&self, key: &str) -> bool {
        self.store
            .inner
            .head(&ObjectKey::parse(key).unwrap())
            .await
            .unwrap()
            .is_some()
    }
}

/// The commit of a completion lands but its reply is lost: the job is `succeeded` and every
/// object it points at still exists (before, the supervisor deleted them as "not ours").
async fn a_lost_completion_reply_keeps_the_objects(backend: &str) {
    let rig = Rig::new(backend).await;
    let id = rig.enqueue("valid/leads.csv").await;
    rig.jobs.lose_replies.store(1, Ordering::SeqCst);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let summary = rig.supervisor(3, Duration::from_secs(30)).run(rx).await;
    assert_eq!(
        rig.jobs.lose_replies.load(Ordering::SeqCst),
        0,
        "a reply was lost"
    );
    assert_eq!(summary.succeeded, 1, "{summary:?}");
    assert_eq!(summary.lost_leases, 0, "{summary:?}");
    let rec = rig.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Succeeded);
    for key in [
        &rec.output_key,
        &rec.report_key,
        &Some(rec.input_key.clone()),
    ] {
        let key = key.as_ref().expect("recorded key");
        assert!(rig.exists(key).await, "{key} was deleted");
    }
}

/// A storage outage: the first jobs meet it, give their attempt back, and after three in a row
/// the breaker stops this supervisor from claiming the rest. When storage returns, everything
/// succeeds on its first counted attempt.
async fn a_storage_outage_opens_the_breaker_and_spends_no_attempts(backend: &str) {
    let rig = Rig::new(backend).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(rig.enqueue("valid/leads.csv").await);
    }
    rig.store.down.store(true, Ordering::SeqCst);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let supervisor = rig.supervisor(3, Duration::from_secs(3));
    let run = tokio::spawn(supervisor.clone().run(rx));
    // Well inside the 3 s cooldown.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut touched = 0;
    for id in &ids {
        let rec = rig.jobs.get(*id).await.unwrap().unwrap();
        assert_eq!(rec.state, JobState::Queued);
        assert_eq!(rec.attempts, 0, "an outage spends no attempt");
        if rig.jobs.audit(*id).await.unwrap().len() > 1 {
            touched += 1;
            assert_eq!(rec.result_code.as_deref(), Some("storage_unavailable"));
        }
    }
    assert_eq!(
        touched, 3,
        "the breaker opened after three failures in a row"
    );
    rig.store.down.store(false, Ordering::SeqCst);
    let summary = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("drains once storage is back")
        .unwrap();
    drop(tx);
    assert_eq!(summary.breaker_opened, 1, "{summary:?}");
    assert_eq!(summary.succeeded, 6, "{summary:?}");
    for id in &ids {
        let rec = rig.jobs.get(*id).await.unwrap().unwrap();
        assert_eq!(rec.state, JobState::Succeeded);
        assert_eq!(rec.attempts, 1, "only the attempt that ran counts");
    }
}

/// The commit of a submit lands but its reply is lost: `submit` finds its job (the id was chosen
/// before the upload) and keeps the input, instead of deleting the input of a queued job.
async fn a_lost_submit_reply_keeps_the_input(backend: &str) {
    let rig = Rig::new(backend).await;
    let policies = airlock::policy::Policies::load(None).unwrap();
    let jobs: airlock::jobs::Shared = rig.jobs.clone();
    let store: Arc<dyn ObjectStore> = rig.store.clone();
    for key in [None, Some("upload-42")] {
        rig.jobs.lose_replies.store(1, Ordering::SeqCst);
        let id = airlock::service::submit_to(
            &jobs,
            &store,
            &policies,
            airlock::service::SubmitArgs {
                tenant: "acme",
                idempotency_key: key,
                plan: "default",
                file: &fixture("valid/leads.csv"),
                follow_symlinks: false,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            rig.jobs.lose_replies.load(Ordering::SeqCst),
            0,
            "a reply was lost"
        );
        let rec = rig.jobs.get(id).await.unwrap().expect("the job exists");
        assert_eq!(rec.state, JobState::Queued);
        assert!(rig.exists(&rec.input_key).await, "the input was deleted");
    }
}

macro_rules! both {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread")]
            async fn a_lost_completion_reply_keeps_the_objects() {
                super::a_lost_completion_reply_keeps_the_objects(stringify!($backend)).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_lost_submit_reply_keeps_the_input() {
                super::a_lost_submit_reply_keeps_the_input(stringify!($backend)).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_storage_outage_opens_the_breaker_and_spends_no_attempts() {
                super::a_storage_outage_opens_the_breaker_and_spends_no_attempts(stringify!(
                    $backend
                ))
                .await;
            }
        }
    };
}

both!(postgres);
both!(sqlite);
