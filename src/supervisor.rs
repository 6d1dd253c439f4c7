//! `airlock supervise`: claim jobs and run each through a fresh sandboxed worker.
//!
//! Per job: `head` the input (over the plan's limit is `too_large`, decided without reading it),
//! stream it into a private temp file (0600 in a 0700 directory), run the worker with the plan's
//! limits, treat its report as untrusted (`process::run` caps and strictly parses it), upload the
//! results under new UUIDv4 keys, and record the result fenced by the lease's token. A heartbeat
//! renews the lease every lease/3; a lost lease stops the job from recording anything. Storage or
//! database outages retry with backoff; bad input and sandbox violations are final.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_engine::report::Rejection;
use airlock_engine::{Code, Report, Status};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;
use uuid::Uuid;

use crate::jobs::{backoff_ms, now_ms, Claimed, Completion, JobState, Shared};
use crate::policy::Policies;
use crate::process::{self, Dest, Destinations};
use crate::storage::{Kind, ObjectKey, ObjectStore, PutMeta, StorageError};

#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub lease: Duration,
    pub grace: Duration,
    pub poll: Duration,
    pub until_idle: bool,
    pub work_dir: PathBuf,
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
}

/// Why an attempt ended without a result.
enum Attempt {
    Done(Completion),
    /// Worth retrying later (outage, host problem).
    Transient(String),
    /// Final failure with this code.
    Permanent(String),
}

fn summary_of(report: &Report) -> serde_json::Value {
    serde_json::json!({
        "status": report.status,
        "rejection": report.rejection,
        "input": {"bytes": report.input.bytes, "sha256": report.input.sha256, "detected_type": report.input.detected_type},
        "rows": report.rows,
        "issue_counts": report.issue_counts,
        "output": report.output,
    })
}

impl Supervisor {
    pub fn new(
        jobs: Shared,
        store: Arc<dyn ObjectStore>,
        policies: Arc<Policies>,
        settings: Settings,
    ) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
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
        }
    }

    fn lease_ms(&self) -> i64 {
        self.settings.lease.as_millis() as i64
    }

    fn count(&self, f: impl FnOnce(&mut Summary)) {
        if let Ok(mut s) = self.summary.lock() {
            f(&mut s);
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
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let now = now_ms();
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
            };
            match self
                .jobs
                .claim(&self.owner, self.lease_ms(), now_ms())
                .await
            {
                Ok(Some(job)) => {
                    db_backoff = 1;
                    let me = self.clone();
                    let span = tracing::info_span!("job", job_id = %job.id, tenant = %job.tenant, attempt = job.attempt);
                    tasks.spawn(
                        async move {
                            me.run_job(job).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
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
                match self.jobs.release(id, fence, now_ms()).await {
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

    async fn run_job(self: Arc<Self>, job: Claimed) {
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
                    match me.jobs.heartbeat(id, fence, me.lease_ms(), now_ms()).await {
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
        let mut uploaded = Vec::new();
        let attempt = self.attempt(&job, &mut uploaded, &job_cancel).await;
        heartbeat.abort();
        let lost = *lost_rx.borrow();
        self.finish(&job, attempt, uploaded, lost).await;
        if let Ok(mut m) = self.in_flight.lock() {
            m.remove(&job.id);
        }
    }

    async fn finish(&self, job: &Claimed, attempt: Attempt, uploaded: Vec<ObjectKey>, lost: bool) {
        let now = now_ms();
        let recorded = match &attempt {
            _ if lost => Err("lease lost".to_string()),
            Attempt::Done(done) => self
                .jobs
                .complete(job.id, job.fence, done, now)
                .await
                .map(|()| done.state)
                .map_err(|e| e.to_string()),
            Attempt::Transient(code) => self
                .jobs
                .fail(
                    job.id,
                    job.fence,
                    code,
                    Some(now + backoff_ms(job.attempt)),
                    now,
                )
                .await
                .map_err(|e| e.to_string()),
            Attempt::Permanent(code) => self
                .jobs
                .fail(job.id, job.fence, code, None, now)
                .await
                .map_err(|e| e.to_string()),
        };
        match recorded {
            Ok(state) => {
                tracing::info!(state = %state, "job recorded");
                self.count(|s| match state {
                    JobState::Succeeded => s.succeeded += 1,
                    JobState::Rejected => s.rejected += 1,
                    JobState::Failed => s.failed += 1,
                    _ => s.retried += 1,
                });
                if !matches!(attempt, Attempt::Done(_)) {
                    self.forget(&uploaded).await;
                }
            }
            Err(why) => {
                // Not ours any more: nothing this attempt made may stay referenced or stored.
                self.count(|s| s.lost_leases += 1);
                tracing::warn!(reason = %why, "result not recorded; deleting this attempt's objects");
                self.forget(&uploaded).await;
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
        if e.is_transient() {
            Attempt::Transient(format!("storage_unavailable: {what}"))
        } else {
            Attempt::Permanent(format!("storage_refused: {what}"))
        }
    }

    async fn attempt(
        &self,
        job: &Claimed,
        uploaded: &mut Vec<ObjectKey>,
        cancel: &process::Cancel,
    ) -> Attempt {
        let Ok(plan) = self.policies.limits.plan(&job.plan).cloned() else {
            return Attempt::Permanent("unknown_plan".into());
        };
        let Ok(input) = ObjectKey::parse(&job.input_key) else {
            return Attempt::Permanent("bad_input_key".into());
        };
        let size = match self.store.head(&input).await {
            Ok(Some(meta)) => meta.size,
            Ok(None) => return Attempt::Permanent("input_missing".into()),
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
            Err(e) => return Attempt::Transient(format!("work_dir: {e}")),
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
        let policies = self.policies.clone();
        let cancel = cancel.clone();
        // The worker's diagnostics are logged from the blocking thread: keep the job's span.
        let span = tracing::Span::current();
        let run = tokio::task::spawn_blocking(move || -> anyhow::Result<Report> {
            let _span = span.enter();
            let (file, size) = process::open_input(&staged, false)?;
            let plan = policies.limits.plan(&plan.name)?;
            let sandbox = &policies.sandbox;
            let run = process::run(file, size, plan, sandbox, None, &dest, &cancel)?;
            Ok(run.report)
        })
        .await;
        let report = match run {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return Attempt::Transient(format!("worker_start: {e:#}")),
            Err(_) => return Attempt::Transient("worker_task_panicked".into()),
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
                return Attempt::Transient("sandbox_unavailable".into());
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
                let Ok(tmp) = tempfile::NamedTempFile::new_in(&self.settings.work_dir) else {
                    return Attempt::Transient("work_dir".into());
                };
                let (_, path) = match tmp.keep() {
                    Ok(kept) => kept,
                    Err(_) => return Attempt::Transient("work_dir".into()),
                };
                path
            }
        };
        if dir.is_none() {
            let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
            if std::fs::write(&report_path, json).is_err() {
                return Attempt::Transient("work_dir".into());
            }
        }
        let mut files = vec![(
            Kind::Report,
            report_path.clone(),
            "application/json",
            format!("{stem}.report.json"),
        )];
        if let Some(d) = dir {
            if report.status == Status::Accepted {
                files.push((
                    Kind::Output,
                    d.join("out.csv"),
                    "text/csv",
                    format!("{stem}.clean.csv"),
                ));
            }
            if report.status != Status::Failed && d.join("rejects.csv").exists() {
                files.push((
                    Kind::Rejects,
                    d.join("rejects.csv"),
                    "text/csv",
                    format!("{stem}.rejects.csv"),
                ));
            }
        }
        let mut keys: HashMap<&'static str, String> = HashMap::new();
        let cap = 4 * self
            .policies
            .limits
            .plan(&job.plan)
            .map(|p| p.limits.max_bytes)
            .unwrap_or(1 << 30)
            + (1 << 20);
        for (kind, path, content_type, name) in files {
            let key = ObjectKey::new(kind);
            let meta = PutMeta {
                content_type: content_type.into(),
                download_name: name,
            };
            match self.store.put_file(&key, &path, cap, &meta).await {
                Ok(_) => {
                    uploaded.push(key.clone());
                    keys.insert(
                        match kind {
                            Kind::Output => "output",
                            Kind::Rejects => "rejects",
                            _ => "report",
                        },
                        key.to_string(),
                    );
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
        Attempt::Done(Completion {
            state,
            result_code: report
                .rejection
                .as_ref()
                .map(|r| r.code.as_str().to_string()),
            output_key: keys.remove("output"),
            rejects_key: keys.remove("rejects"),
            report_key: keys.remove("report"),
            summary: summary_of(&report),
        })
    }
}
