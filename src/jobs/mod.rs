//! The job store (DESIGN §4): a queue of jobs per tenant, shared by any number of supervisors.
//!
//! States: `queued → running → succeeded | rejected | failed | cancelled`, and `purged` after
//! retention. A claim takes a lease (`lease_expires_at`) and bumps a fencing token; heartbeats,
//! completion and failure are fenced by it, so a supervisor that lost its lease cannot record
//! anything. The reaper returns expired leases to `queued` (or `failed` once attempts are spent).
//! Fairness is start-time fair queuing: each job gets a position when submitted — one past its
//! tenant's previous job while that tenant has a backlog, else one past the queue's front — and
//! claims take the lowest position. Tenants thus interleave, so one tenant's 10,000 queued jobs
//! cannot starve another's one, and a claim touches no per-tenant row. Every state change writes its audit
//! row in the same transaction. All times are milliseconds since the Unix epoch, passed in by the
//! caller, so tests drive the clock.
//!
//! Backends: one implementation ([`sql::SqlStore`]) with two dialects: [`postgres`]
//! (`FOR UPDATE SKIP LOCKED`, many supervisors on many hosts) and [`sqlite`] (`BEGIN IMMEDIATE`,
//! the embedded default; one host).

pub mod postgres;
pub mod request;
pub mod schema;
pub mod sql;
pub mod sqlite;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Rejected,
    Failed,
    Cancelled,
    Purged,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Rejected => "rejected",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Purged => "purged",
        }
    }

    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Rejected,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Purged,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Rejected | JobState::Failed
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to enqueue; the input is already in storage.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Chosen before the upload, so a submit whose commit reply was lost can look its job up.
    pub id: Uuid,
    pub tenant: String,
    pub idempotency_key: Option<String>,
    pub plan: String,
    pub input_key: String,
    pub input_bytes: i64,
    /// The uploaded file's name, kept only for download names.
    pub file_name: String,
    pub max_attempts: i32,
    /// The schema the job runs under: a copy, so later changes to a stored schema never reach it.
    pub schema: Option<crate::schemas::JobSchemaCopy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    Created(Uuid),
    /// The tenant already has a job with this idempotency key.
    Existing(Uuid),
}

impl Submitted {
    pub fn id(self) -> Uuid {
        match self {
            Submitted::Created(id) | Submitted::Existing(id) => id,
        }
    }
}

/// Why a job failed, or was given back, without a worker's report (a `failed` job's
/// `result_code`; the report's own codes cover rejections and worker failures). Stable
/// snake_case, listed in the README. Free text (error chains, paths) goes to the audit detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The object store could not be reached or answered with a server error.
    StorageUnavailable,
    /// The object store refused a request (permissions, a bad bucket).
    StorageRefused,
    /// The job's input is gone from storage.
    InputMissing,
    /// The job names a plan this supervisor's policies do not have.
    UnknownPlan,
    /// The job's input key is not one Airlock makes.
    BadInputKey,
    /// The schema the job was submitted with does not load in this build.
    BadSchema,
    /// The private staging directory could not be made or written.
    WorkDir,
    /// The worker process could not be started.
    WorkerStart,
    /// This host cannot run the sandbox the policy asks for.
    SandboxUnavailable,
    /// The supervisor's own task failed (a bug; counted as an attempt).
    Internal,
    /// Leases expired (the supervisor died or stalled) until the attempts were spent.
    LeaseExpired,
    /// Infrastructure failures went on for longer than the outage budget.
    OutageBudgetSpent,
}

impl FailureCode {
    pub const ALL: [FailureCode; 12] = [
        FailureCode::StorageUnavailable,
        FailureCode::StorageRefused,
        FailureCode::InputMissing,
        FailureCode::UnknownPlan,
        FailureCode::BadInputKey,
        FailureCode::BadSchema,
        FailureCode::WorkDir,
        FailureCode::WorkerStart,
        FailureCode::SandboxUnavailable,
        FailureCode::Internal,
        FailureCode::LeaseExpired,
        FailureCode::OutageBudgetSpent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::StorageUnavailable => "storage_unavailable",
            FailureCode::StorageRefused => "storage_refused",
            FailureCode::InputMissing => "input_missing",
            FailureCode::UnknownPlan => "unknown_plan",
            FailureCode::BadInputKey => "bad_input_key",
            FailureCode::BadSchema => "bad_schema",
            FailureCode::WorkDir => "work_dir",
            FailureCode::WorkerStart => "worker_start",
            FailureCode::SandboxUnavailable => "sandbox_unavailable",
            FailureCode::Internal => "internal",
            FailureCode::LeaseExpired => "lease_expired",
            FailureCode::OutageBudgetSpent => "outage_budget_spent",
        }
    }

    /// The host or a service, not the job: retried without spending an attempt, within the
    /// outage budget, and counted by the supervisor's circuit breaker.
    pub fn is_infrastructure(self) -> bool {
        matches!(
            self,
            FailureCode::StorageUnavailable
                | FailureCode::WorkDir
                | FailureCode::WorkerStart
                | FailureCode::SandboxUnavailable
        )
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a job after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Final: `failed` now.
    Never,
    /// The job itself may have caused it: queued again after `delay_ms`, the attempt spent
    /// (`failed` once attempts are spent).
    Attempt { delay_ms: i64 },
    /// Infrastructure: queued again without spending the attempt, unless the job's outage
    /// (counted from its first infrastructure failure in a row) has lasted longer than
    /// `budget_ms`, which fails it with `outage_budget_spent`. The delay grows with the
    /// outage: as long as it has lasted so far, from 5 s up to 5 min.
    Outage { budget_ms: i64 },
}

/// A job this supervisor now holds the lease on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: Uuid,
    pub tenant: String,
    pub plan: String,
    pub input_key: String,
    pub input_bytes: i64,
    pub file_name: String,
    pub fence: i64,
    pub attempt: i32,
    /// The JSON of the schema the job runs under (checked at submit, and again before use).
    pub schema: Option<String>,
    /// The keys this attempt uploads under, chosen and recorded at claim time (new UUIDv4s), so
    /// a sweep or an erasure can delete them even if the attempt never completes.
    pub keys: AttemptKeys,
}

/// An attempt's output keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptKeys {
    pub output: crate::storage::ObjectKey,
    pub rejects: crate::storage::ObjectKey,
    pub report: crate::storage::ObjectKey,
}

impl AttemptKeys {
    pub fn new() -> Self {
        use crate::storage::{Kind, ObjectKey};
        AttemptKeys {
            output: ObjectKey::new(Kind::Output),
            rejects: ObjectKey::new(Kind::Rejects),
            report: ObjectKey::new(Kind::Report),
        }
    }
}

impl Default for AttemptKeys {
    fn default() -> Self {
        Self::new()
    }
}

/// How a job finished.
#[derive(Debug, Clone)]
pub struct Completion {
    pub state: JobState,
    /// The report's rejection code, if any.
    pub result_code: Option<airlock_report::Code>,
    pub output_key: Option<String>,
    pub rejects_key: Option<String>,
    pub report_key: Option<String>,
    pub summary: JobSummary,
}

/// What a job's row keeps of its report: outcome, counts, sizes and hashes (`status` shows it;
/// the sweeper's receipts take sizes and hashes from it). The full report is an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSummary {
    pub status: airlock_report::Status,
    pub rejection: Option<airlock_report::Rejection>,
    pub input: InputSummary,
    pub rows: airlock_report::RowCounts,
    pub issue_counts: BTreeMap<airlock_report::Code, u64>,
    pub output: airlock_report::OutputInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSummary {
    pub bytes: u64,
    pub sha256: String,
    pub detected_type: String,
}

impl JobSummary {
    pub fn of(report: &airlock_report::Report) -> Self {
        JobSummary {
            status: report.status,
            rejection: report.rejection.clone(),
            input: InputSummary {
                bytes: report.input.bytes,
                sha256: report.input.sha256.clone(),
                detected_type: report.input.detected_type.clone(),
            },
            rows: report.rows.clone(),
            issue_counts: report.issue_counts.clone(),
            output: report.output.clone(),
        }
    }
}

/// Why a sweep deleted a job's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PurgeReason {
    /// The job ended longer ago than its plan's retention.
    Retention,
    /// `airlock purge --tenant`.
    ErasureRequest,
}

impl PurgeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeReason::Retention => "retention",
            PurgeReason::ErasureRequest => "erasure_request",
        }
    }
}

/// The record that a job's files were deleted: ids, keys, sizes and hashes, never file names or
/// cell data. Stored with the job's purge, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Always `deletion`.
    pub receipt: ReceiptKind,
    pub job_id: Uuid,
    pub tenant: String,
    pub run_id: String,
    pub reason: PurgeReason,
    pub deleted_at_ms: i64,
    pub job_finished_at_ms: Option<i64>,
    pub objects: Vec<DeletedObject>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Deletion,
}

/// One deleted object. Sizes and hashes are known for the input and the clean output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletedObject {
    pub key: String,
    pub kind: crate::storage::Kind,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
}

/// Everything known about a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub tenant: String,
    pub state: JobState,
    pub plan: String,
    pub file_name: String,
    pub input_key: String,
    pub input_bytes: i64,
    pub attempts: i32,
    pub max_attempts: i32,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub result_code: Option<String>,
    pub output_key: Option<String>,
    pub rejects_key: Option<String>,
    pub report_key: Option<String>,
    pub summary: Option<JobSummary>,
    pub purged_at: Option<i64>,
    /// The fencing token of the latest claim.
    pub fence: i64,
    /// The keys of an attempt that never completed (see [`Claimed::keys`]): what it may have
    /// uploaded. A completion records its keys as output, rejects and report, and clears these.
    pub attempt_keys: Vec<String>,
    /// While a job cancelled by an erasure may still have a live attempt: its old lease's end.
    pub lease_expires_at: Option<i64>,
    /// The stored schema the job runs under (none for no schema, or one sent with the job).
    pub schema_id: Option<String>,
    /// Whether the job runs under a schema.
    pub has_schema: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no job {0}")]
    NotFound(Uuid),
    #[error(
        "job {0}: the lease was lost (fencing token {1} is stale); the result is not recorded"
    )]
    StaleFence(Uuid, i64),
    #[error("job {id} is {state}; {what}")]
    WrongState {
        id: Uuid,
        state: JobState,
        what: &'static str,
    },
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error(
        "the database schema is at version {found}; this build needs {want}: run `airlock migrate`"
    )]
    SchemaBehind { found: i64, want: i64 },
    #[error("the database schema is at version {found}, newer than this build's {want}: upgrade airlock")]
    SchemaAhead { found: i64, want: i64 },
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A bad database URL or option (exit 2).
    #[error("{0}")]
    Config(String),
}

impl JobError {
    /// An outage worth retrying, as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, JobError::Db(_))
    }
}

pub type Shared = Arc<dyn JobStore>;

/// The queue. Object-safe; held as `Arc<dyn JobStore>`.
#[async_trait]
pub trait JobStore: Send + Sync + fmt::Debug {
    /// Apply the migrations this build has and the database lacks (`airlock migrate` only).
    async fn migrate(&self) -> Result<(), JobError>;
    /// `Ok` when the database's schema is exactly this build's; `SchemaBehind` / `SchemaAhead`.
    async fn check_schema(&self) -> Result<(), JobError>;
    /// The database's clock (ms since the Unix epoch): one clock for every host, so leases,
    /// backoff and the reaper agree however far apart the hosts' own clocks are.
    async fn now(&self) -> Result<i64, JobError>;
    /// The tenant's job with this idempotency key, if any.
    async fn find_idempotent(&self, tenant: &str, key: &str) -> Result<Option<Uuid>, JobError>;
    /// Enqueue; with an idempotency key the tenant's existing job wins.
    async fn submit(&self, job: &NewJob, now: i64) -> Result<Submitted, JobError>;
    /// Take the next runnable job, in fair-queuing order across tenants.
    async fn claim(
        &self,
        owner: &str,
        lease_ms: i64,
        now: i64,
    ) -> Result<Option<Claimed>, JobError>;
    /// Extend the lease; `false` when the lease is no longer ours.
    async fn heartbeat(
        &self,
        id: Uuid,
        fence: i64,
        lease_ms: i64,
        now: i64,
    ) -> Result<bool, JobError>;
    /// Record the result, fenced.
    async fn complete(
        &self,
        id: Uuid,
        fence: i64,
        done: &Completion,
        now: i64,
    ) -> Result<(), JobError>;
    /// A failed attempt: `queued` again or `failed`, as `retry` says (a retried job takes a new
    /// fair-queuing position). `detail` goes to the audit row only. Fenced. Returns the new state.
    async fn fail(
        &self,
        id: Uuid,
        fence: i64,
        code: FailureCode,
        detail: &str,
        retry: Retry,
        now: i64,
    ) -> Result<JobState, JobError>;
    /// Give a job back without counting the attempt (graceful shutdown). Fenced.
    async fn release(&self, id: Uuid, fence: i64, now: i64) -> Result<(), JobError>;
    /// Return expired leases to `queued` (retry after backoff) or `failed`. Returns how many.
    async fn reap(&self, now: i64) -> Result<u64, JobError>;
    /// Cancel a queued job.
    async fn cancel(&self, id: Uuid, now: i64) -> Result<JobState, JobError>;
    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, JobError>;
    /// Jobs per state.
    async fn counts(&self) -> Result<BTreeMap<String, i64>, JobError>;
    /// Take up to `limit` due jobs for sweeping under a lease owned by `owner`.
    async fn claim_sweep(
        &self,
        scope: &SweepScope,
        owner: &str,
        lease_ms: i64,
        limit: i64,
        now: i64,
    ) -> Result<Vec<JobRecord>, JobError>;
    /// What `claim_sweep` would find now, without taking anything.
    async fn preview_sweep(&self, scope: &SweepScope, now: i64) -> Result<SweepPreview, JobError>;
    /// After their objects are deleted: mark each job `purged` and store its receipt, all in one
    /// transaction, fenced by the sweep lease. A job no longer leased to `owner` is skipped.
    /// Returns the ids marked.
    async fn mark_purged(
        &self,
        done: &[Receipt],
        owner: &str,
        run_id: &str,
        reason: PurgeReason,
        now: i64,
    ) -> Result<Vec<Uuid>, JobError>;
    /// Give back `owner`'s sweep lease on `ids` (their deletion failed), so the next run retries
    /// them at once instead of after the lease.
    async fn release_sweep(&self, ids: &[Uuid], owner: &str) -> Result<(), JobError>;
    /// The subset of `keys` that some job still references (any state but purged).
    async fn referenced(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>, JobError>;
    /// A tenant's deletion receipts, oldest first.
    async fn receipts(&self, tenant: &str) -> Result<Vec<Receipt>, JobError>;
    /// Erasure: cancel every queued and running job of a tenant, in one transaction. A running
    /// job's fence is bumped, so its supervisor can record nothing (its heartbeat stops the
    /// worker) and no reaper re-runs it. Returns the jobs cancelled and the state each was in.
    async fn cancel_tenant(
        &self,
        tenant: &str,
        now: i64,
    ) -> Result<Vec<(Uuid, JobState)>, JobError>;
    /// How many of a tenant's jobs are queued or running, or were cancelled while running and
    /// their old lease has not yet run out at `now` (their attempt may still upload).
    async fn active_of(&self, tenant: &str, now: i64) -> Result<i64, JobError>;
    /// Audit rows for a job, oldest first: (from, to, detail).
    async fn audit(
        &self,
        id: Uuid,
    ) -> Result<Vec<(Option<String>, String, Option<String>)>, JobError>;
}

/// Which finished jobs a sweep may take.
#[derive(Debug, Clone)]
pub enum SweepScope {
    /// Retention: jobs finished at or before the cutoff of their plan's class.
    Retention(Vec<RetentionClass>),
    /// Erasure on request: every finished or cancelled job of one tenant, except a job cancelled
    /// while running whose old lease has not run out at `now` (its attempt may still upload).
    Tenant { tenant: String, now: i64 },
    /// One finished or cancelled job of a tenant (`DELETE /v1/jobs/{id}`), unless it was
    /// cancelled while running and its old lease has not run out at `now`.
    Job { tenant: String, id: Uuid, now: i64 },
}

/// Plans sharing one retention period. `others` = every plan not named in another class.
#[derive(Debug, Clone)]
pub struct RetentionClass {
    pub plans: Vec<String>,
    pub others: bool,
    /// Jobs finished at or before this time (ms) are due.
    pub cutoff: i64,
}

/// What a dry run would take.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepPreview {
    pub jobs: i64,
    /// Inputs and clean outputs, as a real run counts `bytes_freed`.
    pub bytes: i64,
    pub oldest_finished_at: Option<i64>,
}

/// Where a caller takes the time from: the database's clock in production (one clock for every
/// host), a fixed time in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Database,
    Fixed(i64),
}

impl Clock {
    pub async fn now(self, jobs: &dyn JobStore) -> Result<i64, JobError> {
        match self {
            Clock::Database => jobs.now().await,
            Clock::Fixed(t) => Ok(t),
        }
    }
}

/// Delay before retry `attempt` (1-based): 2 s doubling, capped at 5 min, with ±25% jitter.
pub fn backoff_ms(attempt: i32) -> i64 {
    use rand::Rng;
    let base = 2_000i64
        .saturating_mul(1i64 << attempt.clamp(1, 20).saturating_sub(1))
        .min(300_000);
    let jitter = rand::rng().random_range(-base / 4..=base / 4);
    base + jitter
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Open the store named by a URL: `postgres://…` or `sqlite://path`. A SQLite file is created
/// only with `create` (`airlock migrate`); otherwise a missing one is a configuration error, so a
/// mistyped path does not make an empty queue.
pub async fn open_sql(url: &str, create: bool) -> Result<Arc<sql::SqlStore>, JobError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match postgres::connect(url, None).await {
            Ok(store) => Ok(Arc::new(store)),
            Err(JobError::Db(sqlx::Error::Configuration(e))) => Err(JobError::Config(format!(
                "the database URL is not valid: {e}"
            ))),
            Err(e) => Err(e),
        }
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        let path = std::path::Path::new(path);
        if !create && !path.exists() {
            return Err(JobError::Config(format!(
                "no job database at {}: run `airlock migrate` to create it, or check --database-url",
                path.display()
            )));
        }
        Ok(Arc::new(sqlite::open(path).await?))
    } else {
        Err(JobError::Config(format!(
            "the database URL must start with postgres:// or sqlite:// (got {:?})",
            url.split(':').next().unwrap_or("")
        )))
    }
}

/// [`open_sql`], as the queue.
pub async fn open(url: &str, create: bool) -> Result<Shared, JobError> {
    let store: Shared = open_sql(url, create).await?;
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        for (attempt, base) in [(1, 2_000), (2, 4_000), (3, 8_000), (12, 300_000)] {
            let d = backoff_ms(attempt);
            assert!(d >= base * 3 / 4 && d <= base * 5 / 4, "{attempt}: {d}");
        }
    }
}
