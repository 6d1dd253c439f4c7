//! `airlock supervise`: claim jobs and run each through a fresh sandboxed worker.
//!
//! Per job: `head` the input (over the plan's limit is `too_large`, decided without reading it),
//! stream it into a private temp file (0600 in a 0700 directory), run the worker with the plan's
//! limits, treat its report as untrusted (`process::run` caps and strictly parses it), upload the
//! results under new UUIDv4 keys, and record the result fenced by the lease's token. A heartbeat
//! renews the lease every lease/3; a lost lease kills the worker and records nothing. Every time
//! comes from the database's clock, so hosts with skewed clocks agree on leases and backoff.
//!
//! Failures are typed ([`FailureCode`]). Infrastructure failures (storage, staging, the host's
//! sandbox) spend no attempt: the job is given back within a time budget (`outage_budget`), and
//! after `breaker_threshold` of them in a row this supervisor stops claiming for a cooldown (a
//! circuit breaker) instead of draining the queue. A completion whose commit reply is lost is
//! retried and then re-read: this attempt's objects are deleted only once the row is known not
//! to reference them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_report::Rejection;
use airlock_report::{Code, Report, Status};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;
use uuid::Uuid;

use crate::jobs::{
    backoff_ms, Claimed, Clock, Completion, FailureCode, JobError, JobState, JobSummary, Retry,
    Shared,
};
use crate::policy::limits::Plan;
use crate::policy::Policies;
use crate::process::{self, Dest, Destinations};
use crate::storage::{Kind, ObjectKey, ObjectStore, PutMeta, StorageError};

/// Runs one job's worker on its staged input, writing the three results to `dest` (blocking; the
/// supervisor calls it on a blocking thread). Production uses [`Sandboxed`]; tests replace it.
pub trait Runner: Send + Sync + std::fmt::Debug {
    fn run(
        &self,
        staged: &Path,
        plan: &Plan,
        schema: Option<&crate::schema::JobSchema>,
        dest: &Destinations,
        cancel: &process::Cancel,
    ) -> anyhow::Result<Report>;
}

/// The real thing: a fresh locked-down worker process per job (`process::run`).
#[derive(Debug)]
pub struct Sandboxed {
    pub policies: Arc<Policies>,
}

impl Runner for Sandboxed {
    fn run(
        &self,
        staged: &Path,
        plan: &Plan,
        schema: Option<&crate::schema::JobSchema>,
        dest: &Destinations,
        cancel: &process::Cancel,
    ) -> anyhow::Result<Report> {
        let (file, size) = process::open_input(staged, false)?;
        let run = process::run(
            file,
            size,
            plan,
            &self.policies.sandbox,
            process::Reading {
                delimiter: None,
                schema,
            },
            dest,
            cancel,
        )?;
        Ok(run.report)
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub lease: Duration,
    pub grace: Duration,
    pub poll: Duration,
    pub until_idle: bool,
    pub work_dir: PathBuf,
    /// How long a job may keep failing for infrastructure reasons before it fails for good.
    pub outage_budget: Duration,
    /// Infrastructure failures in a row that open the circuit breaker.
    pub breaker_threshold: u32,
    /// The breaker's first cooldown; it doubles while failures continue, up to 5 minutes.
    pub breaker_cooldown: Duration,
}

/// What one supervisor did, printed at exit.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub succeeded: u64,
    pub rejected: u64,
    pub failed: u64,
    pub retried: u64,
    pub lost_leases: u64,
    pub released: u64,
    /// Times the circuit breaker opened.
    pub breaker_opened: u64,
    /// Completions whose outcome stayed unknown (their objects are left to the orphan sweep).
    pub unknown_outcomes: u64,
}

/// Stops claiming after repeated infrastructure failures.
#[derive(Debug)]
struct Breaker {
    in_a_row: u32,
    open_until: Option<tokio::time::Instant>,
    /// When it last closed.
    closed_at: Option<tokio::time::Instant>,
    cooldown: Duration,
}

#[derive(Debug)]
pub struct Supervisor {
    jobs: Shared,
    store: Arc<dyn ObjectStore>,
    policies: Arc<Policies>,
    owner: String,
    settings: Settings,
    summary: Mutex<Summary>,
    /// Jobs in flight: id → fence, to release at shutdown.
    in_flight: Mutex<HashMap<Uuid, i64>>,
    /// Set when the shutdown grace runs out: every running worker is killed.
    cancel: process::Cancel,
    breaker: Mutex<Breaker>,
    runner: Arc<dyn Runner>,
    /// Beaten on every turn of the claim loop, for `/healthz` when run inside `serve`.
    liveness: Option<crate::liveness::Liveness>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// How an attempt ended.
enum Attempt {
    Done(Box<Completion>),
    /// No result; `detail` (an error chain) goes to the audit row and the log only.
    Failed {
        code: FailureCode,
        detail: String,
    },
}

impl Attempt {
    fn failed(code: FailureCode, detail: impl Into<String>) -> Self {
        Attempt::Failed {
            code,
            detail: detail.into(),
        }
    }
}

/// Whether a completion is in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Recorded,
    /// Definitely not recorded: the row is another attempt's now.
    NotOurs,
    /// The database could not say; nothing may be deleted.
    Unknown,
}

impl Supervisor {
    pub fn new(
        jobs: Shared,
        store: Arc<dyn ObjectStore>,
        policies: Arc<Policies>,
        settings: Settings,
    ) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let cooldown = settings.breaker_cooldown;
        let policies_for_runner = policies.clone();
        Supervisor {
            jobs,
            store,
            policies,
            owner: format!(
                "{}:{}:{}",
                host.trim(),
                std::process::id(),
                &Uuid::new_v4().simple().to_string()[..8]
            ),
            settings,
            summary: Mutex::new(Summary::default()),
            in_flight: Mutex::new(HashMap::new()),
            cancel: process::Cancel::default(),
            breaker: Mutex::new(Breaker {
                in_a_row: 0,
                open_until: None,
                closed_at: None,
                cooldown,
            }),
            runner: Arc::new(Sandboxed {
                policies: policies_for_runner,
            }),
            liveness: None,
            metrics: None,
        }
    }

    /// The same supervisor, counting claims, outcomes and durations in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn measure(&self, f: impl FnOnce(&crate::metrics::Metrics)) {
        if let Some(m) = &self.metrics {
            f(m);
        }
    }

    /// The same supervisor, beating `liveness` on every turn of its claim loop.
    pub fn with_liveness(mut self, liveness: crate::liveness::Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    fn beat(&self) {
        if let Some(l) = &self.liveness {
            l.beat_supervisor();
        }
    }

    /// The same supervisor with another worker runner (tests).
    pub fn with_runner(mut self, runner: Arc<dyn Runner>) -> Self {
        self.runner = runner;
        self
    }

    /// One step at a fixed time, for tests: reap, then (unless the circuit breaker is open)
    /// claim one job and run it to the end, every write at `now`. Returns the job run, if any.
    /// The heartbeat runs only if the job outlives a third of the lease.
    pub async fn run_once(self: &Arc<Self>, now: i64) -> Result<Option<Uuid>, JobError> {
        self.jobs.reap(now).await?;
        if self.breaker_open_until().is_some() {
            return Ok(None);
        }
        let Some(job) = self.jobs.claim(&self.owner, self.lease_ms(), now).await? else {
            return Ok(None);
        };
        let id = job.id;
        self.clone().run_job(job, Clock::Fixed(now)).await;
        Ok(Some(id))
    }

    fn lease_ms(&self) -> i64 {
        self.settings.lease.as_millis() as i64
    }

    fn count(&self, f: impl FnOnce(&mut Summary)) {
        if let Ok(mut s) = self.summary.lock() {
            f(&mut s);
        }
    }

    /// An infrastructure failure of a job claimed at `claimed_at`: after `breaker_threshold` in a
    /// row, stop claiming for the cooldown (doubling, up to 5 minutes, while failures continue).
    /// Failures of jobs claimed before the breaker last closed are ignored: they were in flight
    /// during the same outage and say nothing new.
    fn infrastructure_failed(&self, claimed_at: tokio::time::Instant) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        let now = tokio::time::Instant::now();
        if b.open_until.is_some_and(|t| t > now) || b.closed_at.is_some_and(|t| claimed_at < t) {
            return;
        }
        b.in_a_row += 1;
        if b.in_a_row >= self.settings.breaker_threshold.max(1) {
            let cooldown = b.cooldown;
            b.open_until = Some(tokio::time::Instant::now() + cooldown);
            b.cooldown = (cooldown * 2).min(Duration::from_secs(300));
            b.in_a_row = 0;
            drop(b);
            self.count(|s| s.breaker_opened += 1);
            tracing::error!(
                cooldown_s = cooldown.as_secs_f64(),
                "infrastructure failures in a row: not claiming jobs until the cooldown ends"
            );
        }
    }

    fn infrastructure_ok(&self) {
        if let Ok(mut b) = self.breaker.lock() {
            b.in_a_row = 0;
            b.cooldown = self.settings.breaker_cooldown;
        }
    }

    /// When the breaker is open, the instant it closes.
    fn breaker_open_until(&self) -> Option<tokio::time::Instant> {
        let mut b = self.breaker.lock().ok()?;
        let now = tokio::time::Instant::now();
        match b.open_until {
            Some(t) if t > now => Some(t),
            Some(t) => {
                b.open_until = None;
                b.closed_at = Some(t);
                None
            }
            None => None,
        }
    }

    /// Claim and run jobs until `shutdown` turns true (or, with `until_idle`, nothing is left).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> Summary {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut db_backoff = 1;
        let mut next_reap = 0;
        tracing::info!(owner = %self.owner, concurrency = self.settings.concurrency, "supervisor started");
        loop {
            self.beat();
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let now = match self.jobs.now().await {
                Ok(now) => now,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = db_backoff, "database unavailable");
                    self.pause(&mut shutdown, Duration::from_secs(db_backoff))
                        .await;
                    db_backoff = (db_backoff * 2).min(30);
                    continue;
                }
            };
            if now >= next_reap {
                match self.jobs.reap(now).await {
                    Ok(n) if n > 0 => {
                        tracing::warn!(requeued_or_failed = n, "reaped expired leases")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reaper failed; will retry"),
                }
                next_reap = now + self.lease_ms() / 3;
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = shutdown.changed() => continue,
                // Every slot busy: the loop still turns (and beats) once a second.
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            // After the permit: the job that just gave it back may have opened the breaker.
            if let Some(until) = self.breaker_open_until() {
                drop(permit);
                let turn = tokio::time::Instant::now() + Duration::from_secs(1);
                tokio::select! {
                    _ = tokio::time::sleep_until(until.min(turn)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let claimed = match self.jobs.now().await {
                Ok(now) => self.jobs.claim(&self.owner, self.lease_ms(), now).await,
                Err(e) => Err(e),
            };
            match claimed {
                Ok(Some(job)) => {
                    db_backoff = 1;
                    self.measure(|m| m.claimed());
                    let me = self.clone();
                    let span = tracing::info_span!("job", job_id = %job.id, tenant = %job.tenant, attempt = job.attempt);
                    tasks.spawn(
                        async move {
                            me.run_job(job, Clock::Database).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    db_backoff = 1;
                    drop(permit);
                    if self.settings.until_idle && tasks.is_empty() && self.idle().await {
                        break;
                    }
                    self.pause(&mut shutdown, self.settings.poll).await;
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, retry_in_s = db_backoff, "claim failed; database unavailable?");
                    self.pause(&mut shutdown, Duration::from_secs(db_backoff))
                        .await;
                    db_backoff = (db_backoff * 2).min(30);
                }
            }
        }
        if let Some(l) = &self.liveness {
            l.supervisor_stopped();
        }
        self.drain(tasks).await;
        let summary = self.summary.lock().map(|s| s.clone()).unwrap_or_default();
        tracing::info!(?summary, "supervisor stopped");
        summary
    }

    async fn pause(&self, shutdown: &mut watch::Receiver<bool>, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = shutdown.changed() => {}
        }
    }

    /// Nothing queued and nothing running anywhere.
    async fn idle(&self) -> bool {
        match self.jobs.counts().await {
            Ok(c) => {
                c.get("queued").copied().unwrap_or(0) == 0
                    && c.get("running").copied().unwrap_or(0) == 0
            }
            Err(_) => false,
        }
    }

    /// Let in-flight jobs finish within the grace period, then give the rest back.
    async fn drain(&self, mut tasks: tokio::task::JoinSet<()>) {
        if tasks.is_empty() {
            return;
        }
        tracing::info!(
            in_flight = tasks.len(),
            grace_s = self.settings.grace.as_secs(),
            "waiting for in-flight jobs"
        );
        let finished = tokio::time::timeout(self.settings.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            let held: Vec<(Uuid, i64)> = self
                .in_flight
                .lock()
                .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
                .unwrap_or_default();
            for (id, fence) in held {
                let released = match self.jobs.now().await {
                    Ok(now) => self.jobs.release(id, fence, now).await,
                    Err(e) => Err(e),
                };
                match released {
                    Ok(()) => {
                        self.count(|s| s.released += 1);
                        tracing::warn!(job_id = %id, "released at shutdown");
                    }
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %e, "release failed; the reaper will requeue it")
                    }
                }
            }
            // Released first, so nothing a worker still produces can be recorded; then the
            // workers are killed (within 100 ms), and their tasks dropped before any upload.
            self.cancel.cancel();
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    async fn run_job(self: Arc<Self>, job: Claimed, clock: Clock) {
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(job.id, job.fence);
        }
        let (lost_tx, lost_rx) = watch::channel(false);
        // A lost lease stops this job's worker at once: nothing it makes could be recorded.
        let job_cancel = self.cancel.child();
        let heartbeat = {
            let me = self.clone();
            let stop = job_cancel.clone();
            let (id, fence) = (job.id, job.fence);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.settings.lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let beat = match clock.now(&*me.jobs).await {
                        Ok(now) => me.jobs.heartbeat(id, fence, me.lease_ms(), now).await,
                        Err(e) => Err(e),
                    };
                    match beat {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = lost_tx.send(true);
                            stop.cancel();
                            tracing::warn!("lease lost; stopping the worker");
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
                    }
                }
            })
        };
        let claimed_at = tokio::time::Instant::now();
        let mut uploaded = Vec::new();
        let attempt = self.attempt(&job, &mut uploaded, &job_cancel).await;
        let lost = *lost_rx.borrow();
        // The heartbeat keeps the lease while the result is recorded (a slow or retried commit
        // must not let the reaper take a finished job).
        self.finish(&job, attempt, uploaded, lost, clock, claimed_at)
            .await;
        heartbeat.abort();
        if let Ok(mut m) = self.in_flight.lock() {
            m.remove(&job.id);
        }
    }

    /// How long an unanswered write is retried before the row is re-read.
    fn write_patience(&self) -> Duration {
        self.settings.lease.max(Duration::from_secs(10))
    }

    async fn finish(
        &self,
        job: &Claimed,
        attempt: Attempt,
        uploaded: Vec<ObjectKey>,
        lost: bool,
        clock: Clock,
        claimed_at: tokio::time::Instant,
    ) {
        if lost {
            // The heartbeat saw another fence: definitely not ours.
            self.count(|s| s.lost_leases += 1);
            tracing::warn!("lease lost; deleting this attempt's objects");
            self.forget(&uploaded).await;
            return;
        }
        match attempt {
            Attempt::Done(done) => match self.complete(job, &done, clock).await {
                Outcome::Recorded => {
                    tracing::info!(state = %done.state, "job recorded");
                    self.measure(|m| m.outcome(done.state.as_str(), claimed_at.elapsed()));
                    self.infrastructure_ok();
                    self.count(|s| match done.state {
                        JobState::Succeeded => s.succeeded += 1,
                        JobState::Rejected => s.rejected += 1,
                        _ => s.failed += 1,
                    });
                }
                Outcome::NotOurs => {
                    self.count(|s| s.lost_leases += 1);
                    tracing::warn!("the job is no longer ours; deleting this attempt's objects");
                    self.forget(&uploaded).await;
                }
                Outcome::Unknown => {
                    self.count(|s| s.unknown_outcomes += 1);
                    tracing::error!(
                        objects = uploaded.len(),
                        "could not learn whether the result was recorded; its objects are left for the orphan sweep"
                    );
                }
            },
            Attempt::Failed { code, detail } => {
                // A failed attempt's objects are never referenced by the row: always deletable.
                self.forget(&uploaded).await;
                if code.is_infrastructure() {
                    self.infrastructure_failed(claimed_at);
                }
                let retry = if code.is_infrastructure() {
                    Retry::Outage {
                        budget_ms: self.settings.outage_budget.as_millis() as i64,
                    }
                } else if code == FailureCode::Internal {
                    Retry::Attempt {
                        delay_ms: backoff_ms(job.attempt),
                    }
                } else {
                    Retry::Never
                };
                tracing::warn!(code = %code, detail = %detail, "attempt failed");
                self.measure(|m| m.outcome(code.as_str(), claimed_at.elapsed()));
                match self
                    .write(clock, |now| {
                        self.jobs.fail(job.id, job.fence, code, &detail, retry, now)
                    })
                    .await
                {
                    Ok(state) => self.count(|s| match state {
                        JobState::Failed => s.failed += 1,
                        _ => s.retried += 1,
                    }),
                    Err(e) => {
                        self.count(|s| s.lost_leases += 1);
                        tracing::warn!(error = %e, "could not record the failure; the reaper will requeue the job");
                    }
                }
            }
        }
    }

    /// Run a write with the database's time, retrying errors other than a refusal for
    /// [`Self::write_patience`].
    async fn write<T, F, Fut>(&self, clock: Clock, f: F) -> Result<T, JobError>
    where
        F: Fn(i64) -> Fut,
        Fut: std::future::Future<Output = Result<T, JobError>>,
    {
        let deadline = tokio::time::Instant::now() + self.write_patience();
        let mut delay = Duration::from_millis(250);
        loop {
            let result = match clock.now(&*self.jobs).await {
                Ok(now) => f(now).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_transient() && tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, "database write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Record a completion. A stale fence on the first try is definite; after an error whose
    /// outcome is unknown (the commit may have landed), the row decides.
    async fn complete(&self, job: &Claimed, done: &Completion, clock: Clock) -> Outcome {
        let tried = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .write(clock, |now| {
                let first = !tried.swap(true, std::sync::atomic::Ordering::Relaxed);
                async move {
                    match self.jobs.complete(job.id, job.fence, done, now).await {
                        Err(JobError::StaleFence(..)) if !first => {
                            Err(JobError::Corrupt("stale after an unanswered try".into()))
                        }
                        other => other,
                    }
                }
            })
            .await;
        match result {
            Ok(()) => Outcome::Recorded,
            Err(JobError::StaleFence(..)) => Outcome::NotOurs,
            Err(e) => {
                tracing::warn!(error = %e, "completion outcome unknown; re-reading the job");
                self.reread(job, done).await
            }
        }
    }

    async fn reread(&self, job: &Claimed, done: &Completion) -> Outcome {
        let deadline = tokio::time::Instant::now() + self.write_patience();
        loop {
            match self.jobs.get(job.id).await {
                Ok(Some(row)) if row.report_key.is_some() && row.report_key == done.report_key => {
                    return Outcome::Recorded
                }
                // Still running under our fence: our commit might yet land.
                Ok(Some(row)) if row.state == JobState::Running && row.fence == job.fence => {
                    return Outcome::Unknown
                }
                // Moved on without our keys (another fence, cancelled, purged): our commit can
                // no longer land.
                Ok(Some(_)) => return Outcome::NotOurs,
                Ok(None) => return Outcome::NotOurs,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "re-reading the job failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(_) => return Outcome::Unknown,
            }
        }
    }

    async fn forget(&self, keys: &[ObjectKey]) {
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.store.delete_many(keys).await {
            tracing::warn!(error = %e, objects = keys.len(), "could not delete an abandoned attempt's objects; the orphan sweep will");
        }
    }

    fn storage_attempt(e: StorageError, what: &str) -> Attempt {
        // Refused credentials are this host's problem (an expired token), not the job's: retried
        // elsewhere or later, and counted by the breaker, instead of failing every job claimed.
        let code = if e.is_transient() || matches!(e, StorageError::Credentials { .. }) {
            FailureCode::StorageUnavailable
        } else {
            FailureCode::StorageRefused
        };
        Attempt::failed(code, format!("{what}: {e}"))
    }

    async fn attempt(
        &self,
        job: &Claimed,
        uploaded: &mut Vec<ObjectKey>,
        cancel: &process::Cancel,
    ) -> Attempt {
        let Ok(plan) = self.policies.limits.plan(&job.plan).cloned() else {
            return Attempt::failed(FailureCode::UnknownPlan, format!("plan {:?}", job.plan));
        };
        let Ok(input) = ObjectKey::parse(&job.input_key) else {
            return Attempt::failed(FailureCode::BadInputKey, "the input key is malformed");
        };
        let schema = match job.schema.as_deref().map(crate::schema::JobSchema::parse) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return Attempt::failed(FailureCode::BadSchema, e.to_string()),
        };
        let size = match self.store.head(&input).await {
            Ok(Some(meta)) => meta.size,
            Ok(None) => return Attempt::failed(FailureCode::InputMissing, "HEAD found nothing"),
            Err(e) => return Self::storage_attempt(e, "head"),
        };
        if size > plan.limits.max_bytes {
            let rejection = Rejection::new(
                Code::TooLarge,
                format!("the file is {size} bytes; plan {:?} allows {} (decided from the size, nothing was read)", plan.name, plan.limits.max_bytes),
            )
            .with_limit(plan.limits.max_bytes);
            let report = Report::without_input(Status::Rejected, rejection, size);
            return self.record(job, report, None, uploaded).await;
        }
        let dir = match crate::workdir::job_dir(&self.settings.work_dir) {
            Ok(d) => d,
            Err(e) => return Attempt::failed(FailureCode::WorkDir, format!("{e:#}")),
        };
        let staged = dir.path().join("input");
        if let Err(e) = self
            .store
            .get_to_file(&input, &staged, plan.limits.max_bytes)
            .await
        {
            return Self::storage_attempt(e, "get");
        }
        let dest = Destinations {
            output: Dest::File(dir.path().join("out.csv")),
            rejects: Dest::File(dir.path().join("rejects.csv")),
            report: Dest::File(dir.path().join("report.json")),
        };
        let runner = self.runner.clone();
        let cancel = cancel.clone();
        // The worker's diagnostics are logged from the blocking thread: keep the job's span.
        let span = tracing::Span::current();
        let run = tokio::task::spawn_blocking(move || -> anyhow::Result<Report> {
            let _span = span.enter();
            runner.run(&staged, &plan, schema.as_ref(), &dest, &cancel)
        })
        .await;
        let report = match run {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return Attempt::failed(FailureCode::WorkerStart, format!("{e:#}")),
            Err(e) => return Attempt::failed(FailureCode::Internal, format!("worker task: {e}")),
        };
        let attempt = self.record(job, report, Some(dir.path()), uploaded).await;
        drop(dir);
        attempt
    }

    /// Upload the results under new keys and build the completion.
    async fn record(
        &self,
        job: &Claimed,
        report: Report,
        dir: Option<&Path>,
        uploaded: &mut Vec<ObjectKey>,
    ) -> Attempt {
        if let Some(r) = &report.rejection {
            if r.code == Code::SandboxUnavailable {
                // The host, not the file: give it to a supervisor that can run it.
                return Attempt::failed(FailureCode::SandboxUnavailable, r.message.clone());
            }
        }
        let state = match report.status {
            Status::Accepted => JobState::Succeeded,
            Status::Rejected => JobState::Rejected,
            Status::Failed => JobState::Failed,
        };
        let stem = Path::new(&job.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into());
        let report_path = match dir {
            Some(d) => d.join("report.json"),
            None => {
                let kept = tempfile::NamedTempFile::new_in(&self.settings.work_dir)
                    .map_err(|e| e.to_string())
                    .and_then(|t| t.keep().map_err(|e| e.to_string()));
                match kept {
                    Ok((_, path)) => path,
                    Err(e) => return Attempt::failed(FailureCode::WorkDir, e),
                }
            }
        };
        if dir.is_none() {
            let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
            if let Err(e) = std::fs::write(&report_path, json) {
                return Attempt::failed(FailureCode::WorkDir, e.to_string());
            }
        }
        let mut files = vec![(
            Kind::Report,
            report_path.clone(),
            format!("{stem}.report.json"),
        )];
        if let Some(d) = dir {
            if report.status == Status::Accepted {
                files.push((Kind::Output, d.join("out.csv"), format!("{stem}.clean.csv")));
            }
            if report.status != Status::Failed && d.join("rejects.csv").exists() {
                files.push((
                    Kind::Rejects,
                    d.join("rejects.csv"),
                    format!("{stem}.rejects.csv"),
                ));
            }
        }
        let mut keys: HashMap<Kind, String> = HashMap::new();
        let cap = 4 * self
            .policies
            .limits
            .plan(&job.plan)
            .map(|p| p.limits.max_bytes)
            .unwrap_or(1 << 30)
            + (1 << 20);
        for (kind, path, name) in files {
            // The keys the claim recorded for this attempt.
            let key = match kind {
                Kind::Output => job.keys.output.clone(),
                Kind::Rejects => job.keys.rejects.clone(),
                _ => job.keys.report.clone(),
            };
            let meta = PutMeta {
                content_type: kind.content_type().into(),
                download_name: name,
            };
            match self.store.put_file(&key, &path, cap, &meta).await {
                Ok(_) => {
                    uploaded.push(key.clone());
                    keys.insert(kind, key.to_string());
                }
                Err(e) => {
                    if dir.is_none() {
                        let _ = std::fs::remove_file(&report_path);
                    }
                    return Self::storage_attempt(e, "put");
                }
            }
        }
        if dir.is_none() {
            let _ = std::fs::remove_file(&report_path);
        }
        Attempt::Done(Box::new(Completion {
            state,
            result_code: report.rejection.as_ref().map(|r| r.code),
            output_key: keys.remove(&Kind::Output),
            rejects_key: keys.remove(&Kind::Rejects),
            report_key: keys.remove(&Kind::Report),
            summary: JobSummary::of(&report),
        }))
    }
}
