//! The retention sweeper (`airlock sweep`, for cron) and erasure on request (`airlock purge`).
//!
//! Per batch: claim due jobs under a lease (so overlapping sweeps never take the same job), delete
//! their objects first (`delete_many`, reading every per-key error), then mark each job `purged`
//! and write its deletion receipt in one transaction. A crash between the two steps leaves the
//! lease to expire; the next run deletes again (a missing key is success) and finishes the rows.
//! Receipts hold ids, keys, sizes and hashes, never file names or cell data.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use crate::jobs::{
    Clock, DeletedObject, JobError, JobRecord, JobState, PurgeReason, Receipt, ReceiptKind, Shared,
    SweepScope,
};
use crate::policy::retention::RetentionPolicy;
use crate::storage::{Kind, ObjectKey, ObjectStore};

/// The JSON a sweep prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepSummary {
    pub run_id: String,
    pub dry_run: bool,
    pub candidates: i64,
    pub jobs_purged: u64,
    pub objects_deleted: u64,
    /// Inputs and clean outputs (their sizes are recorded); rejects and reports are small.
    pub bytes_freed: i64,
    pub failures: BTreeMap<String, u64>,
    pub oldest_overdue_completed_at_ms: Option<i64>,
    pub orphans_found: u64,
    pub orphans_deleted: u64,
    /// Erasure only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erasure: Option<Erasure>,
}

/// What an erasure did to the tenant's unfinished jobs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Erasure {
    /// Queued jobs cancelled (a dry run: would be).
    pub cancelled_queued: u64,
    /// Running jobs cancelled: their workers are stopped at the next heartbeat and nothing they
    /// make is recorded (a dry run: would be).
    pub cancelled_running: u64,
    /// Jobs still queued or running when the erasure ended (then it exits 1; run it again).
    pub still_active: i64,
}

impl SweepSummary {
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    fn fail(&mut self, code: &str, n: u64) {
        *self.failures.entry(code.to_string()).or_default() += n;
    }
}

#[derive(Debug)]
pub struct Sweeper {
    jobs: Shared,
    store: Arc<dyn ObjectStore>,
    policy: RetentionPolicy,
    owner: String,
}

/// The objects a job owns, with what is known of each.
fn objects_of(job: &JobRecord) -> Vec<DeletedObject> {
    let summary = job.summary.as_ref();
    let sha = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mut out = vec![DeletedObject {
        key: job.input_key.clone(),
        kind: Kind::Input,
        bytes: Some(job.input_bytes),
        sha256: summary.and_then(|s| sha(&s.input.sha256)),
    }];
    if let Some(k) = &job.output_key {
        out.push(DeletedObject {
            key: k.clone(),
            kind: Kind::Output,
            bytes: summary.and_then(|s| i64::try_from(s.output.bytes).ok()),
            sha256: summary.and_then(|s| sha(&s.output.sha256)),
        });
    }
    for (key, kind) in [
        (&job.rejects_key, Kind::Rejects),
        (&job.report_key, Kind::Report),
    ] {
        if let Some(k) = key {
            out.push(DeletedObject {
                key: k.clone(),
                kind,
                bytes: None,
                sha256: None,
            });
        }
    }
    // What the latest attempt may have uploaded without completing (cancelled, failed, crashed).
    for key in &job.attempt_keys {
        if out.iter().any(|o| &o.key == key) {
            continue;
        }
        if let Ok(k) = ObjectKey::parse(key) {
            out.push(DeletedObject {
                key: key.clone(),
                kind: k.kind(),
                bytes: None,
                sha256: None,
            });
        }
    }
    out
}

fn receipt(job: &JobRecord, run_id: &str, reason: PurgeReason, now: i64) -> Receipt {
    Receipt {
        receipt: ReceiptKind::Deletion,
        job_id: job.id,
        tenant: job.tenant.clone(),
        run_id: run_id.to_string(),
        reason,
        deleted_at_ms: now,
        job_finished_at_ms: job.finished_at,
        objects: objects_of(job),
    }
}

impl Sweeper {
    pub fn new(jobs: Shared, store: Arc<dyn ObjectStore>, policy: RetentionPolicy) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Sweeper {
            jobs,
            store,
            policy,
            owner: format!(
                "sweep:{}:{}:{}",
                host.trim(),
                std::process::id(),
                Uuid::new_v4().simple()
            ),
        }
    }

    /// Retention: every job past its plan's retention, and old orphans.
    pub async fn sweep(&self, clock: Clock, dry_run: bool) -> Result<SweepSummary, JobError> {
        let now = clock.now(&*self.jobs).await?;
        let scope = SweepScope::Retention(self.policy.classes(now));
        let mut summary = self
            .run(&scope, PurgeReason::Retention, clock, dry_run)
            .await?;
        let now = clock.now(&*self.jobs).await?;
        self.orphans(now, dry_run, &mut summary).await;
        Ok(summary)
    }

    /// Erasure on request: cancel the tenant's queued and running jobs (a running job's worker
    /// is stopped at its next heartbeat and its result refused by its fence), then delete every
    /// file of every job of the tenant now, including what a cancelled attempt uploaded. A job
    /// cancelled while running is erased once its old lease has run out (by then its supervisor
    /// has stopped or is dead); until then, and while any of the tenant's jobs could not be
    /// swept, the erasure reports `still_active` and fails (exit 1): run it again.
    pub async fn purge(
        &self,
        tenant: &str,
        clock: Clock,
        dry_run: bool,
    ) -> Result<SweepSummary, JobError> {
        let mut erasure = Erasure::default();
        let now = clock.now(&*self.jobs).await?;
        if !dry_run {
            for (_, was) in self.jobs.cancel_tenant(tenant, now).await? {
                match was {
                    JobState::Running => erasure.cancelled_running += 1,
                    _ => erasure.cancelled_queued += 1,
                }
            }
        }
        let scope = SweepScope::Tenant {
            tenant: tenant.to_string(),
            now,
        };
        let mut summary = self
            .run(&scope, PurgeReason::ErasureRequest, clock, dry_run)
            .await?;
        // At the scope's time: a job whose old lease ran out during this run was not swept by it,
        // so it still counts.
        erasure.still_active = self.jobs.active_of(tenant, now).await?;
        if !dry_run {
            // Jobs another sweep holds, or whose deletion failed, are not erased yet either.
            let left = self.jobs.preview_sweep(&scope, now).await?.jobs;
            if erasure.still_active > 0 {
                summary.fail("still_active", erasure.still_active as u64);
            }
            if left > 0 {
                summary.fail("not_erased", left as u64);
            }
        }
        summary.erasure = Some(erasure);
        Ok(summary)
    }

    /// Erase one finished or cancelled job of a tenant now, with its receipt.
    pub async fn erase_job(
        &self,
        tenant: &str,
        id: Uuid,
        clock: Clock,
    ) -> Result<SweepSummary, JobError> {
        let now = clock.now(&*self.jobs).await?;
        let scope = SweepScope::Job {
            tenant: tenant.to_string(),
            id,
            now,
        };
        self.run(&scope, PurgeReason::ErasureRequest, clock, false)
            .await
    }

    async fn run(
        &self,
        scope: &SweepScope,
        reason: PurgeReason,
        clock: Clock,
        dry_run: bool,
    ) -> Result<SweepSummary, JobError> {
        let now = clock.now(&*self.jobs).await?;
        let preview = self.jobs.preview_sweep(scope, now).await?;
        let mut summary = SweepSummary {
            run_id: Uuid::new_v4().to_string(),
            dry_run,
            candidates: preview.jobs,
            oldest_overdue_completed_at_ms: preview.oldest_finished_at,
            ..SweepSummary::default()
        };
        if dry_run {
            summary.bytes_freed = preview.bytes;
            return Ok(summary);
        }
        let bar = progress(preview.jobs as u64);
        let lease_ms = self.policy.lease.as_millis() as i64;
        let mut refused = Vec::new();
        loop {
            // A fresh time per batch: a sweep longer than its lease must not hand later batches
            // an already-expired lease.
            let now = clock.now(&*self.jobs).await?;
            let batch = self
                .jobs
                .claim_sweep(scope, &self.owner, lease_ms, self.policy.batch_size, now)
                .await?;
            if batch.is_empty() {
                break;
            }
            self.purge_batch(&batch, reason, now, &mut summary, &mut refused)
                .await;
            if let Some(bar) = &bar {
                bar.inc(batch.len() as u64);
            } else {
                tracing::info!(run_id = %summary.run_id, batch = batch.len(), purged = summary.jobs_purged, "sweep batch");
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        // Only now, so this run does not take them again: the next run retries them at once.
        if let Err(e) = self.jobs.release_sweep(&refused, &self.owner).await {
            tracing::warn!(error = %e, jobs = refused.len(), "could not give back refused jobs; they wait for their sweep lease");
        }
        Ok(summary)
    }

    async fn purge_batch(
        &self,
        batch: &[JobRecord],
        reason: PurgeReason,
        now: i64,
        summary: &mut SweepSummary,
        refused: &mut Vec<Uuid>,
    ) {
        let mut keys = Vec::new();
        for job in batch {
            for object in objects_of(job) {
                match ObjectKey::parse(&object.key) {
                    Ok(k) => keys.push(k),
                    Err(_) => summary.fail("bad_key", 1),
                }
            }
        }
        let outcome = match self.store.delete_many(&keys).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "storage delete failed; the batch is retried by the next run");
                summary.fail(
                    if e.is_transient() {
                        "storage_unavailable"
                    } else {
                        "storage_refused"
                    },
                    batch.len() as u64,
                );
                return;
            }
        };
        summary.objects_deleted += outcome.deleted.len() as u64;
        let failed: BTreeMap<String, String> = outcome
            .failed
            .iter()
            .map(|(k, c)| (k.to_string(), c.clone()))
            .collect();
        let mut done = Vec::new();
        let mut freed = BTreeMap::new();
        for job in batch {
            let objects = objects_of(job);
            if let Some(code) = objects.iter().find_map(|o| failed.get(&o.key)) {
                summary.fail(&format!("delete_{code}"), 1);
                refused.push(job.id);
                continue;
            }
            freed.insert(job.id, objects.iter().filter_map(|o| o.bytes).sum::<i64>());
            done.push(receipt(job, &summary.run_id, reason, now));
        }
        match self
            .jobs
            .mark_purged(&done, &self.owner, &summary.run_id, reason, now)
            .await
        {
            Ok(marked) => {
                summary.jobs_purged += marked.len() as u64;
                summary.bytes_freed += marked.iter().filter_map(|id| freed.get(id)).sum::<i64>();
                if marked.len() < done.len() {
                    summary.fail("lease_lost", (done.len() - marked.len()) as u64);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "marking a batch purged failed; the next run finishes it");
                summary.fail("database", done.len() as u64);
            }
        }
    }

    /// Objects under Airlock's prefixes that no job references, older than the grace period.
    async fn orphans(&self, now: i64, dry_run: bool, summary: &mut SweepSummary) {
        let cutoff = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64)
            - self.policy.orphan_grace;
        for prefix in Kind::prefixes() {
            let mut next = None;
            loop {
                let page = match self.store.list(prefix, next.take()).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, prefix, "listing for orphans failed");
                        summary.fail("orphan_list", 1);
                        break;
                    }
                };
                let old: Vec<String> = page
                    .objects
                    .iter()
                    .filter(|o| o.modified.is_some_and(|m| m < cutoff))
                    .map(|o| o.key.clone())
                    .collect();
                let live = match self.jobs.referenced(&old).await {
                    Ok(l) => l,
                    Err(_) => {
                        summary.fail("database", 1);
                        break;
                    }
                };
                let orphans: Vec<ObjectKey> = old
                    .iter()
                    .filter(|k| !live.contains(*k))
                    .filter_map(|k| ObjectKey::parse(k).ok())
                    .collect();
                summary.orphans_found += orphans.len() as u64;
                if !dry_run && !orphans.is_empty() {
                    match self.store.delete_many(&orphans).await {
                        Ok(o) => {
                            summary.orphans_deleted += o.deleted.len() as u64;
                            if !o.failed.is_empty() {
                                summary.fail("orphan_delete", o.failed.len() as u64);
                            }
                        }
                        Err(_) => summary.fail("orphan_delete", orphans.len() as u64),
                    }
                }
                match page.next {
                    Some(n) => next = Some(n),
                    None => break,
                }
            }
        }
    }
}

fn progress(total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (total > 0 && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("sweeping {pos}/{len} jobs {bar:30} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    })
}
