//! The supervisor against stores that fail on purpose, with real sandboxed workers: a completion
//! whose commit lands but whose reply is lost keeps its objects; a submit whose reply is lost
//! keeps its input; storage outages spend no attempts and open the circuit breaker instead of
//! draining the queue. Run on both job stores.
//!
//! The `step_*` tests drive `Supervisor::run_once(now)` with the engine in-process in place of the
//! sandboxed worker: retry, permanent, lost-lease, outage and cleanup paths without sleeps.

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
    async fn active_of(&self, tenant: &str, now: i64) -> Result<i64, JobError> {
        self.inner.active_of(tenant, now).await
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
    async fn put_growing(
        &self,
        key: &ObjectKey,
        path: &Path,
        size: u64,
        meta: &PutMeta,
        written: tokio::sync::watch::Receiver<u64>,
    ) -> Result<u64, StorageError> {
        self.check()?;
        self.inner.put_growing(key, path, size, meta, written).await
    }
    async fn presign_put(
        &self,
        key: &ObjectKey,
        size: u64,
        sha256_b64: &str,
        ttl: Duration,
    ) -> Result<airlock::storage::PresignedPut, StorageError> {
        self.inner.presign_put(key, size, sha256_b64, ttl).await
    }
    async fn digest(
        &self,
        key: &ObjectKey,
        cap: u64,
    ) -> Result<Option<airlock::storage::Digest>, StorageError> {
        self.check()?;
        self.inner.digest(key, cap).await
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
            schema: None,
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
    let supervisor = rig.supervisor(3, Duration::from_secs(10));
    // Step by step: three jobs meet the outage, then the breaker is open and the next step
    // claims nothing (well inside the 10 s cooldown).
    let now = rig.jobs.now().await.unwrap();
    for step in 0..3 {
        let ran = supervisor.run_once(now).await.unwrap();
        assert!(ran.is_some(), "step {step} claimed nothing");
    }
    assert_eq!(
        supervisor.run_once(now).await.unwrap(),
        None,
        "the breaker did not open after three failures in a row"
    );
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
    // The loop takes over: it waits out the cooldown, then drains the queue.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(supervisor.clone().run(rx));
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
                file_name: None,
                schema: None,
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

/// The engine in-process in place of the sandboxed worker: the same results, no process, no
/// sleeps. `fail_start` makes it fail as a worker that cannot start; `during` runs while the
/// "worker" runs (on its blocking thread).
#[derive(Default)]
struct InProcess {
    fail_start: AtomicBool,
    #[allow(clippy::type_complexity)]
    during: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcess")
    }
}

impl airlock::supervisor::Runner for InProcess {
    fn run(
        &self,
        staged: &Path,
        plan: &airlock::policy::limits::Plan,
        _schema: Option<&airlock::schema::JobSchema>,
        dest: &airlock::process::Destinations,
        _cancel: &airlock::process::Cancel,
    ) -> anyhow::Result<airlock_report::Report> {
        if self.fail_start.load(Ordering::SeqCst) {
            anyhow::bail!("the worker could not be started (test)");
        }
        if let Some(hook) = self.during.lock().unwrap().take() {
            hook();
        }
        let path = |d: &airlock::process::Dest| match d {
            airlock::process::Dest::File(p) => p.clone(),
            other => panic!("the supervisor writes files, not {other:?}"),
        };
        let options = airlock_engine::Options {
            limits: plan.limits.clone(),
            fallback_encoding: plan.fallback_encoding,
            ..Default::default()
        };
        let report = airlock_engine::process(
            std::fs::File::open(staged)?,
            std::fs::File::create(path(&dest.output))?,
            std::fs::File::create(path(&dest.rejects))?,
            &options,
        )?;
        std::fs::write(path(&dest.report), serde_json::to_vec(&report)?)?;
        Ok(report)
    }
}

impl Rig {
    /// A supervisor stepped by `run_once` with the in-process runner.
    fn stepped(&self, runner: Arc<InProcess>) -> Arc<Supervisor> {
        let sup = Arc::into_inner(self.supervisor(3, Duration::from_secs(3600))).unwrap();
        Arc::new(sup.with_runner(runner))
    }

    /// Objects in storage.
    async fn stored(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for prefix in Kind::prefixes() {
            let page = self.store.inner.list(prefix, None).await.unwrap();
            keys.extend(page.objects.into_iter().map(|o| o.key));
        }
        keys.sort();
        keys
    }

    /// Leftovers in the supervisor's staging directory.
    fn staged_leftovers(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.work.path().join("work"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

/// Well after the real clock, which `enqueue` uses (year 2096).
const T0: i64 = 4_000_000_000_000;

/// Infrastructure failure, then success: no attempt spent, the retry waits its 5 s, and nothing
/// is left staged either time.
async fn step_retry_after_an_outage(backend: &str) {
    let rig = Rig::new(backend).await;
    let id = rig.enqueue("valid/leads.csv").await;
    let runner = Arc::new(InProcess::default());
    runner.fail_start.store(true, Ordering::SeqCst);
    let sup = rig.stepped(runner.clone());
    assert_eq!(sup.run_once(T0).await.unwrap(), Some(id));
    let rec = rig.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempts, rec.result_code.as_deref()),
        (JobState::Queued, 0, Some("worker_start"))
    );
    let (_, _, detail) = rig.jobs.audit(id).await.unwrap().pop().unwrap();
    assert!(detail.unwrap().contains("could not be started"));
    assert!(rig.staged_leftovers().is_empty());
    runner.fail_start.store(false, Ordering::SeqCst);
    assert_eq!(sup.run_once(T0 + 4_999).await.unwrap(), None, "backing off");
    assert_eq!(sup.run_once(T0 + 5_000).await.unwrap(), Some(id));
    let rec = rig.jobs.get(id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempts), (JobState::Succeeded, 1));
    assert!(rig.staged_leftovers().is_empty());
    let mut expected: Vec<String> = [
        Some(rec.input_key.clone()),
        rec.output_key.clone(),
        rec.rejects_key.clone(),
        rec.report_key.clone(),
    ]
    .into_iter()
    .flatten()
    .collect();
    expected.sort();
    assert_eq!(rig.stored().await, expected);
}

/// Permanent outcomes are never retried: a missing input fails, a rejected file is rejected.
async fn step_permanent_outcomes(backend: &str) {
    let rig = Rig::new(backend).await;
    let gone = rig.enqueue("valid/leads.csv").await;
    let input = rig.jobs.get(gone).await.unwrap().unwrap().input_key;
    rig.store
        .inner
        .delete_many(&[ObjectKey::parse(&input).unwrap()])
        .await
        .unwrap();
    let sup = rig.stepped(Arc::new(InProcess::default()));
    assert_eq!(sup.run_once(T0).await.unwrap(), Some(gone));
    let rec = rig.jobs.get(gone).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.result_code.as_deref()),
        (JobState::Failed, Some("input_missing"))
    );
    let bad = rig.enqueue("invalid/binary_content.csv").await;
    assert_eq!(sup.run_once(T0 + 1).await.unwrap(), Some(bad));
    let rec = rig.jobs.get(bad).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.result_code.as_deref()),
        (JobState::Rejected, Some("binary_content"))
    );
    assert!(rec.report_key.is_some() && rec.output_key.is_none());
    assert_eq!(
        sup.run_once(T0 + 10_000_000).await.unwrap(),
        None,
        "nothing retried"
    );
    assert!(rig.staged_leftovers().is_empty());
}

/// The lease is lost while the worker runs (another supervisor reaped and re-claimed the job):
/// nothing is recorded, and every object the attempt uploaded is deleted.
async fn step_lost_lease(backend: &str) {
    let rig = Rig::new(backend).await;
    let id = rig.enqueue("valid/leads.csv").await;
    let before = rig.stored().await;
    let runner = Arc::new(InProcess::default());
    let jobs = rig.jobs.inner.clone();
    let handle = tokio::runtime::Handle::current();
    *runner.during.lock().unwrap() = Some(Box::new(move || {
        handle.block_on(async {
            let later = T0 + 30_001;
            assert_eq!(jobs.reap(later).await.unwrap(), 1);
            let thief = jobs
                .claim("other-supervisor", 30_000, later + 10_000_000)
                .await
                .unwrap();
            assert!(thief.is_some());
        })
    }));
    let sup = rig.stepped(runner);
    assert_eq!(sup.run_once(T0).await.unwrap(), Some(id));
    let rec = rig.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Running, "the other supervisor's now");
    assert!(rec.output_key.is_none() && rec.report_key.is_none());
    assert_eq!(
        rig.stored().await,
        before,
        "the attempt's uploads were deleted"
    );
    assert!(rig.staged_leftovers().is_empty());
}

/// Three infrastructure failures in a row open the breaker: the next step claims nothing,
/// though a job is due, and the jobs that met the outage kept their attempts.
async fn step_breaker(backend: &str) {
    let rig = Rig::new(backend).await;
    let ids = [
        rig.enqueue("valid/leads.csv").await,
        rig.enqueue("valid/leads.csv").await,
        rig.enqueue("valid/leads.csv").await,
        rig.enqueue("valid/leads.csv").await,
    ];
    rig.store.down.store(true, Ordering::SeqCst);
    let sup = rig.stepped(Arc::new(InProcess::default()));
    for i in 0..3 {
        assert!(sup.run_once(T0 + i).await.unwrap().is_some());
    }
    let due = T0 + 1_000_000;
    assert_eq!(sup.run_once(due).await.unwrap(), None, "breaker open");
    let mut untouched = 0;
    for id in ids {
        let rec = rig.jobs.get(id).await.unwrap().unwrap();
        assert_eq!((rec.state, rec.attempts), (JobState::Queued, 0));
        if rec.result_code.is_none() {
            untouched += 1;
        }
    }
    assert_eq!(untouched, 1);
}

macro_rules! both {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread")]
            async fn a_lost_completion_reply_keeps_the_objects() {
                super::a_lost_completion_reply_keeps_the_objects(stringify!($backend)).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn step_retry_after_an_outage() {
                super::step_retry_after_an_outage(stringify!($backend)).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn step_permanent_outcomes() {
                super::step_permanent_outcomes(stringify!($backend)).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn step_lost_lease() {
                super::step_lost_lease(stringify!($backend)).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn step_breaker() {
                super::step_breaker(stringify!($backend)).await;
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
