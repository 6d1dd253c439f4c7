//! The service commands: `migrate`, `submit`, `status`, `link`, `cancel`, `supervise`. Each opens
//! the configured job store and object store (embedded default: SQLite + a local directory under
//! `./airlock-data`). Only `migrate` changes the schema; the others refuse a database whose schema
//! is not this build's (exit 2, "run `airlock migrate`").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::config::ServiceConfig;
use crate::jobs::{Clock, JobError, JobRecord, JobState, JobStore, NewJob, Shared, Submitted};
use crate::policy::Policies;
use crate::storage::{Artifact, Kind, ObjectKey, ObjectStore, PutMeta};
use crate::supervisor::{Settings, Supervisor};

/// A command's failure, with the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad flags or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The request was refused: not found, wrong state, too large (exit 1).
    #[error("{0}")]
    Refused(String),
    /// A service failed or is unreachable (exit 70).
    #[error("{0}")]
    Failed(String),
}

/// Open the job store without looking at its schema (`migrate` only).
async fn connect_jobs(
    config: &ServiceConfig,
    create: bool,
) -> Result<Arc<crate::jobs::sql::SqlStore>, CommandError> {
    crate::jobs::open_sql(&config.database_url, create)
        .await
        .map_err(|e| match e {
            JobError::Config(m) => CommandError::Usage(m),
            e => CommandError::Failed(format!("cannot open the job store: {}", chain(&e))),
        })
}

/// Open the job store, whose schema must be exactly this build's.
pub async fn open_jobs(config: &ServiceConfig) -> Result<Shared, CommandError> {
    let jobs: Shared = open_registry(config).await?;
    Ok(jobs)
}

pub async fn open_store(config: &ServiceConfig) -> Result<Arc<dyn ObjectStore>, CommandError> {
    crate::config::open_store(config)
        .await
        .map_err(|e| CommandError::Failed(format!("cannot open storage: {e}")))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn failed(e: impl std::error::Error) -> CommandError {
    CommandError::Failed(chain(&e))
}

pub async fn migrate(config: &ServiceConfig) -> Result<String, CommandError> {
    let jobs = connect_jobs(config, true).await?;
    jobs.migrate().await.map_err(|e| {
        CommandError::Failed(format!(
            "migrating the job store failed (nothing after the failed step was applied): {}",
            chain(&e)
        ))
    })?;
    Ok(format!(
        "schema is at version {} ({})",
        crate::jobs::schema::latest(),
        config.database_url.split(':').next().unwrap_or("")
    ))
}

#[derive(Debug)]
pub struct SubmitArgs<'a> {
    pub tenant: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub plan: &'a str,
    pub file: &'a Path,
    /// Read through a symbolic link instead of refusing it.
    pub follow_symlinks: bool,
    /// The upload's name for downloads, when not the file's own (the API stages to a temp file).
    pub file_name: Option<&'a str>,
    /// The schema the job runs under, already resolved ([`crate::schemas::Choice::resolve`]).
    pub schema: Option<crate::schemas::JobSchemaCopy>,
}

/// `airlock submit`: `choice` names the job's schema (the tenant's default when not given).
pub async fn submit(
    config: &ServiceConfig,
    policies: &Policies,
    mut args: SubmitArgs<'_>,
    choice: crate::schemas::Choice,
) -> Result<Uuid, CommandError> {
    validate_tenant(args.tenant)?;
    let registry = open_registry(config).await?;
    args.schema = choice
        .resolve(&registry, args.tenant)
        .await
        .map_err(|e| match e {
            crate::schemas::ResolveError::Missing(_) => CommandError::Usage(e.to_string()),
            crate::schemas::ResolveError::Store(e) => failed(e),
        })?;
    let jobs: Shared = registry;
    let store = open_store(config).await?;
    submit_to(&jobs, &store, policies, args).await
}

/// `submit` against stores already open.
pub async fn submit_to(
    jobs: &Shared,
    store: &Arc<dyn ObjectStore>,
    policies: &Policies,
    args: SubmitArgs<'_>,
) -> Result<Uuid, CommandError> {
    validate_tenant(args.tenant)?;
    let plan = policies
        .limits
        .plan(args.plan)
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let (opened, size) = crate::process::open_input(args.file, args.follow_symlinks)
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    // Upload what was opened and checked, not whatever the path names by then.
    let opened_path = {
        use std::os::fd::AsRawFd;
        std::path::PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()))
    };
    if size > plan.limits.max_bytes {
        return Err(CommandError::Refused(format!(
            "too_large: the file is {size} bytes; plan {:?} allows {} (nothing was uploaded)",
            plan.name, plan.limits.max_bytes
        )));
    }
    if let Some(key) = args.idempotency_key {
        if let Some(existing) = jobs
            .find_idempotent(args.tenant, key)
            .await
            .map_err(failed)?
        {
            return Ok(existing);
        }
    }
    let input = ObjectKey::new(Kind::Input);
    let file_name = match args.file_name {
        Some(name) => name.to_string(),
        None => args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload.csv".into()),
    };
    let meta = PutMeta {
        content_type: "application/octet-stream".into(),
        download_name: file_name.clone(),
    };
    store
        .put_file(&input, &opened_path, plan.limits.max_bytes, &meta)
        .await
        .map_err(failed)?;
    let job = NewJob {
        id: Uuid::new_v4(),
        tenant: args.tenant.to_string(),
        idempotency_key: args.idempotency_key.map(String::from),
        plan: plan.name.clone(),
        input_key: input.to_string(),
        input_bytes: size as i64,
        file_name,
        max_attempts: 5,
        schema: args.schema,
    };
    enqueue_stored(jobs, store, &job, input).await
}

/// Enqueue `job`, whose input is already stored at `input`. An idempotency race lost to another
/// job deletes this input; a failed commit is retried with the same id (a duplicate id means
/// it landed) and never deletes the input, which the orphan sweep removes if no job took it.
pub async fn enqueue_stored(
    jobs: &Shared,
    store: &Arc<dyn ObjectStore>,
    job: &NewJob,
    input: ObjectKey,
) -> Result<Uuid, CommandError> {
    let submitted = match jobs.now().await {
        Ok(now) => jobs.submit(job, now).await,
        Err(e) => Err(e),
    };
    match submitted {
        Ok(Submitted::Created(id)) => Ok(id),
        Ok(Submitted::Existing(id)) => {
            // Lost an idempotency race to another job: this upload is not needed.
            if id != job.id {
                let _ = store.delete_many(&[input]).await;
            }
            Ok(id)
        }
        Err(e) => {
            // The commit may have landed with its reply lost, and may become visible only later:
            // never delete the upload here. Send the same job (same id) again: a duplicate id
            // means it landed. An upload no job references is removed by the orphan sweep.
            for delay in [250u64, 1_000, 4_000] {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                if let Ok(Some(_)) = jobs.get(job.id).await {
                    return Ok(job.id);
                }
                let again = match jobs.now().await {
                    Ok(now) => jobs.submit(job, now).await,
                    Err(e) => Err(e),
                };
                match again {
                    Ok(Submitted::Created(id)) => return Ok(id),
                    Ok(Submitted::Existing(id)) => return Ok(id),
                    Err(JobError::Db(sqlx::Error::Database(d))) if d.is_unique_violation() => {
                        return Ok(job.id)
                    }
                    Err(_) => continue,
                }
            }
            Err(CommandError::Failed(format!(
                "the job store failed and job {} could not be confirmed ({}); resubmit with the same --idempotency-key, or check with `airlock status {}`; an unused upload is removed by the orphan sweep",
                job.id,
                chain(&e),
                job.id
            )))
        }
    }
}

fn validate_tenant(tenant: &str) -> Result<(), CommandError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 128
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CommandError::Usage(
            "--tenant must be 1-128 characters of A-Z a-z 0-9 - _ .".into(),
        ))
    }
}

fn parse_id(job: &str) -> Result<Uuid, CommandError> {
    Uuid::parse_str(job).map_err(|_| CommandError::Usage(format!("{job:?} is not a job id (UUID)")))
}

/// The job, if it exists and (when a tenant is named) belongs to that tenant. A job of another
/// tenant looks exactly like a missing one.
async fn find(jobs: &Shared, job: &str, tenant: Option<&str>) -> Result<JobRecord, CommandError> {
    let id = parse_id(job)?;
    let rec = jobs.get(id).await.map_err(failed)?;
    match rec {
        Some(r) if tenant.is_none_or(|t| t == r.tenant) => Ok(r),
        _ => Err(CommandError::Refused(format!("no job {id}"))),
    }
}

pub async fn status(
    config: &ServiceConfig,
    job: &str,
    tenant: Option<&str>,
) -> Result<JobView, CommandError> {
    let jobs = open_jobs(config).await?;
    let r = find(&jobs, job, tenant).await?;
    Ok(JobView::from(&r))
}

/// A job as `status` and the API show it: state, times, result code, report summary and which
/// artifacts can be fetched. Never keys or file names.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub tenant: String,
    pub state: JobState,
    pub plan: String,
    pub attempts: i32,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub purged_at_ms: Option<i64>,
    /// Why the job failed, when it did (see the failure codes).
    pub result_code: Option<String>,
    /// The worker's report, summarised; the full report is the `report` artifact.
    #[schema(value_type = Option<Object>)]
    pub report: Option<crate::jobs::JobSummary>,
    /// What `GET /v1/jobs/{id}/{artifact}` can fetch now.
    pub artifacts: Vec<crate::storage::Artifact>,
    /// Whether the job's rows are checked against a schema.
    pub has_schema: bool,
    /// The stored schema it runs under (none when the schema came with the job).
    pub schema_id: Option<String>,
}

impl From<&JobRecord> for JobView {
    fn from(r: &JobRecord) -> Self {
        let artifacts = Artifact::ALL
            .into_iter()
            .filter(|a| a.key_of(r).is_some() && r.state != JobState::Purged)
            .collect();
        JobView {
            id: r.id,
            tenant: r.tenant.clone(),
            state: r.state,
            plan: r.plan.clone(),
            attempts: r.attempts,
            created_at_ms: r.created_at,
            started_at_ms: r.started_at,
            finished_at_ms: r.finished_at,
            purged_at_ms: r.purged_at,
            result_code: r.result_code.clone(),
            report: r.summary.clone(),
            artifacts,
            has_schema: r.has_schema,
            schema_id: r.schema_id.clone(),
        }
    }
}

pub async fn link(
    config: &ServiceConfig,
    policies: &Policies,
    job: &str,
    artifact: &str,
    ttl: Option<u64>,
    tenant: Option<&str>,
) -> Result<String, CommandError> {
    let ttl = policies.presign.ttl(ttl).map_err(CommandError::Usage)?;
    let registry = open_registry(config).await?;
    let jobs: Shared = registry.clone();
    let r = find(&jobs, job, tenant).await?;
    if r.state == JobState::Purged {
        return Err(CommandError::Refused(format!(
            "job {} was purged at {} ms (retention or erasure); its files are gone",
            r.id,
            r.purged_at.unwrap_or_default()
        )));
    }
    if !r.state.is_finished() {
        return Err(CommandError::Refused(format!(
            "job {} is {}; links exist only for finished jobs",
            r.id, r.state
        )));
    }
    let Some(artifact) = crate::storage::Artifact::parse(artifact) else {
        return Err(CommandError::Usage(format!(
            "--artifact {artifact:?}: use output, rejects or report"
        )));
    };
    let key = artifact.key_of(&r).ok_or_else(|| {
        CommandError::Refused(format!("job {} ({}) has no {artifact}", r.id, r.state))
    })?;
    let key = ObjectKey::parse(key).map_err(failed)?;
    let store = open_store(config).await?;
    let link = store
        .presign_get(&key, ttl, &artifact.file_name(&r.file_name))
        .await
        .map_err(failed)?;
    let now = jobs.now().await.map_err(failed)?;
    registry
        .record_link(r.id, &r.tenant, r.state, artifact, now)
        .await
        .map_err(failed)?;
    Ok(link)
}

pub async fn cancel(
    config: &ServiceConfig,
    job: &str,
    tenant: Option<&str>,
) -> Result<JobState, CommandError> {
    let jobs = open_jobs(config).await?;
    let r = find(&jobs, job, tenant).await?;
    let now = jobs.now().await.map_err(failed)?;
    jobs.cancel(r.id, now).await.map_err(|e| match e {
        crate::jobs::JobError::WrongState { .. } => CommandError::Refused(e.to_string()),
        e => failed(e),
    })
}

/// What the webhook dispatcher needs: the key that opens the secrets, and the hosts an operator
/// allows although private or plain http. Without a key no dispatcher runs.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub kek: crate::webhooks::Kek,
    pub allow: crate::webhooks::Allowlist,
}

/// Start the webhook dispatcher, when configured, until `shutdown`.
fn start_dispatcher(
    store: &Arc<crate::jobs::sql::SqlStore>,
    webhooks: Option<Webhooks>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(w) = webhooks else {
        tracing::info!("webhooks off: no key-encryption key (AIRLOCK_WEBHOOK_KEK_FILE)");
        return None;
    };
    let dispatcher = Arc::new(crate::webhooks::dispatch::Dispatcher::new(
        store.clone(),
        w.kek,
        w.allow,
    ));
    Some(tokio::spawn(dispatcher.run(shutdown)))
}

#[derive(Debug)]
pub struct SuperviseArgs {
    pub concurrency: usize,
    pub until_idle: bool,
    pub lease: Duration,
    pub grace: Duration,
    pub work_dir: Option<PathBuf>,
    pub outage_budget: Duration,
    pub webhooks: Option<Webhooks>,
    /// Signs audit checkpoints every minute (and once when stopping).
    pub audit_key: Option<crate::audit::AuditKey>,
}

/// Start signing audit checkpoints every minute, when a key is given, until `shutdown`.
fn start_checkpoints(
    store: &Arc<crate::jobs::sql::SqlStore>,
    key: Option<crate::audit::AuditKey>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(key) = key else {
        tracing::info!("audit checkpoints off: no key (AIRLOCK_AUDIT_KEY_FILE)");
        return None;
    };
    Some(tokio::spawn(crate::audit::checkpoint::run_every_minute(
        store.clone(),
        key,
        shutdown,
    )))
}

/// Refuse to supervise on a host that cannot run the sandbox.
fn check_host(policies: &Policies) -> Result<(), CommandError> {
    let problems = airlock_sandbox::host::HostSupport::probe().problems(&policies.sandbox);
    if !problems.is_empty() {
        return Err(CommandError::Failed(format!(
            "this host cannot run the sandbox ({}); see `airlock doctor`",
            problems.join("; ")
        )));
    }
    Ok(())
}

fn settings(args: &SuperviseArgs, work_dir: &Path) -> Settings {
    Settings {
        concurrency: args.concurrency,
        lease: args.lease,
        grace: args.grace,
        poll: Duration::from_millis(200),
        until_idle: args.until_idle,
        work_dir: work_dir.to_path_buf(),
        outage_budget: args.outage_budget,
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_secs(30),
    }
}

/// A watch that turns true on SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutdown requested");
        let _ = tx.send(true);
    });
    rx
}

pub async fn supervise(
    config: &ServiceConfig,
    policies: Policies,
    args: SuperviseArgs,
) -> Result<crate::supervisor::Summary, CommandError> {
    check_host(&policies)?;
    let registry = open_registry(config).await?;
    let jobs: Shared = registry.clone();
    let store = open_store(config).await?;
    let base = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work_dir =
        crate::workdir::WorkDir::create(&base).map_err(|e| CommandError::Failed(e.to_string()))?;
    tracing::info!(work_dir = %work_dir.path().display(), "staging inputs here");
    let supervisor = Arc::new(Supervisor::new(
        jobs,
        store,
        Arc::new(policies),
        settings(&args, work_dir.path()),
    ));
    let mut args = args;
    let shutdown = shutdown_on_signal();
    let (stop_dispatch, dispatch_stopped) = tokio::sync::watch::channel(false);
    let dispatcher = if args.until_idle {
        // A drain delivers what its jobs raised, then stops with them.
        start_dispatcher(&registry, args.webhooks.take(), dispatch_stopped)
    } else {
        start_dispatcher(&registry, args.webhooks.take(), shutdown.clone())
    };
    let (stop_checkpoints, checkpoints_stopped) = tokio::sync::watch::channel(false);
    let checkpoints = start_checkpoints(&registry, args.audit_key.take(), checkpoints_stopped);
    let summary = supervisor.run(shutdown).await;
    if let Some(d) = dispatcher {
        if args.until_idle {
            // Until nothing is due (bounded: retries far in the future are left for later).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline
                && registry.webhooks_due().await.unwrap_or(0) > 0
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let _ = stop_dispatch.send(true);
        let _ = d.await;
    }
    // Last, so the heads signed include everything this run appended.
    if let Some(c) = checkpoints {
        let _ = stop_checkpoints.send(true);
        let _ = c.await;
    }
    drop(work_dir);
    Ok(summary)
}

/// `airlock serve`'s options beyond the service configuration.
#[derive(Debug)]
pub struct ServeArgs {
    pub listen: String,
    pub limits: crate::serve::Limits,
    pub rates: crate::ratelimit::Rates,
    pub metrics_token: Option<String>,
    pub work_dir: Option<PathBuf>,
    /// Supervisors run in the same process (`--supervise N`): jobs at once; 0 for none.
    pub supervise: SuperviseArgs,
}

/// The tenant created on the embedded default's first start.
pub const FIRST_TENANT: &str = "demo";

/// Whether this is the embedded default's first start: the built-in SQLite URL, and no database
/// yet. Only then does `serve` create the database (with the versioned migrations, as `airlock
/// migrate` would), a tenant and its first key; a database URL someone typed is never created
/// by anything but `migrate`, so a typo cannot start an empty queue.
fn first_start(config: &ServiceConfig) -> bool {
    config.database_url == crate::config::DEFAULT_DATABASE_URL
        && config
            .database_url
            .strip_prefix("sqlite://")
            .is_some_and(|p| !Path::new(p).exists())
}

/// `airlock serve`: the tenant API (and local downloads), plus `supervise.concurrency`
/// supervisor slots in the same process, until SIGINT/SIGTERM; then the listener stops, in-flight
/// requests drain and the supervisor finishes or gives back its jobs.
pub async fn serve(
    config: &ServiceConfig,
    policies: Arc<Policies>,
    args: ServeArgs,
) -> Result<(), CommandError> {
    if args.supervise.concurrency > 0 {
        check_host(&policies).map_err(|e| {
            CommandError::Failed(format!(
                "{e}; or run with --supervise 0 and supervise elsewhere"
            ))
        })?;
    }
    if first_start(config) {
        let schema = migrate(config).await?;
        let store = open_registry(config).await?;
        let now = store.now().await.map_err(failed)?;
        store
            .create_tenant(FIRST_TENANT, "default", now)
            .await
            .map_err(tenant_error)?;
        let (_, key) = store
            .create_key(FIRST_TENANT, "first-start", now)
            .await
            .map_err(tenant_error)?;
        // Standard output, once, like `airlock key create`; never the log.
        println!(
            "airlock: first start: created {} ({schema}) with tenant {FIRST_TENANT:?} and its API key:\n\n  {}\n\nIt is shown only now (only its SHA-256 is stored); `airlock key create --tenant {FIRST_TENANT}` makes another.",
            crate::config::DEFAULT_DATA_DIR,
            key.expose()
        );
    }
    let store = open_registry(config).await?;
    let objects = open_store(config).await?;
    let local = match &config.storage {
        crate::config::StorageUrl::File(root) => Some(Arc::new(
            crate::storage::fs::FsStore::open(root, &config.public_url)
                .map_err(|e| CommandError::Usage(e.to_string()))?,
        )),
        // S3 serves its own presigned links.
        crate::config::StorageUrl::S3 { .. } => None,
    };
    let base = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work_dir =
        crate::workdir::WorkDir::create(&base).map_err(|e| CommandError::Failed(e.to_string()))?;
    let liveness = crate::liveness::Liveness::start();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let mut args = args;
    let webhooks = args.supervise.webhooks.take();
    let api = Arc::new(
        crate::api::Api::new(
            store.clone(),
            objects.clone(),
            policies.clone(),
            work_dir.path().to_path_buf(),
        )
        .with_liveness(liveness.clone())
        .with_metrics(metrics.clone())
        .with_rates(args.rates)
        .with_metrics_token(args.metrics_token.clone())
        .with_hsts(config.public_url.starts_with("https://"))
        .with_webhooks(webhooks.clone())
        .with_cache(
            config
                .database_url
                .starts_with("postgres")
                .then(|| crate::hotcache::HotCache::start(&config.database_url)),
        ),
    );
    let shutdown = shutdown_on_signal();
    let dispatcher = start_dispatcher(&store, webhooks, shutdown.clone());
    let (stop_checkpoints, checkpoints_stopped) = tokio::sync::watch::channel(false);
    let checkpoints =
        start_checkpoints(&store, args.supervise.audit_key.take(), checkpoints_stopped);
    let supervisor = (args.supervise.concurrency > 0).then(|| {
        let jobs: Shared = store.clone();
        let supervisor = Arc::new(
            Supervisor::new(
                jobs,
                objects.clone(),
                policies.clone(),
                settings(&args.supervise, work_dir.path()),
            )
            .with_liveness(liveness.clone())
            .with_metrics(metrics.clone()),
        );
        tokio::spawn(supervisor.run(shutdown.clone()))
    });
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| CommandError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let mut stop = shutdown.clone();
    let served = crate::serve::serve_router(
        listener,
        crate::serve::app(api, local),
        args.limits,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )
    .await;
    if let Some(d) = dispatcher {
        let _ = d.await;
    }
    if let Some(task) = supervisor {
        match task.await {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "the supervisor task failed"),
        }
    }
    if let Some(c) = checkpoints {
        let _ = stop_checkpoints.send(true);
        let _ = c.await;
    }
    drop(work_dir);
    served.map_err(|e| CommandError::Failed(format!("{e:#}")))
}

/// `airlock sweep` / `airlock purge`: the summary, and whether anything failed.
pub async fn sweep(
    config: &ServiceConfig,
    policies: &Policies,
    tenant: Option<&str>,
    dry_run: bool,
) -> Result<(String, bool), CommandError> {
    if let Some(t) = tenant {
        validate_tenant(t)?;
    }
    let jobs = open_jobs(config).await?;
    let store = open_store(config).await?;
    let sweeper = crate::sweeper::Sweeper::new(jobs, store, policies.retention.clone());
    let summary = match tenant {
        Some(t) => sweeper.purge(t, Clock::Database, dry_run).await,
        None => sweeper.sweep(Clock::Database, dry_run).await,
    }
    .map_err(failed)?;
    let failed = summary.failed();
    Ok((
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
        failed,
    ))
}

pub async fn receipts(config: &ServiceConfig, tenant: &str) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    let jobs = open_jobs(config).await?;
    let list = jobs.receipts(tenant).await.map_err(failed)?;
    Ok(serde_json::to_string_pretty(&list).unwrap_or_default())
}

/// The job store with its tenant registry, whose schema must be this build's.
pub async fn open_registry(
    config: &ServiceConfig,
) -> Result<Arc<crate::jobs::sql::SqlStore>, CommandError> {
    let store = connect_jobs(config, false).await?;
    store.check_schema().await.map_err(|e| match e {
        JobError::SchemaBehind { .. } | JobError::SchemaAhead { .. } => {
            CommandError::Usage(e.to_string())
        }
        e => CommandError::Failed(format!("cannot read the schema version: {}", chain(&e))),
    })?;
    Ok(store)
}

fn tenant_error(e: crate::tenants::TenantError) -> CommandError {
    use crate::tenants::TenantError;
    match e {
        TenantError::Exists(_) | TenantError::NoTenant(_) | TenantError::NoKey(_) => {
            CommandError::Refused(e.to_string())
        }
        TenantError::Store(e) => failed(e),
    }
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `airlock schema put ID --tenant T [--default] FILE`.
pub async fn schema_put(
    config: &ServiceConfig,
    tenant: &str,
    id: &str,
    schema: &crate::schema::JobSchema,
    default: bool,
) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    crate::schemas::check_id(id).map_err(CommandError::Usage)?;
    let store = open_registry(config).await?;
    let (stored, _) = store
        .put_schema(tenant, id, schema, default)
        .await
        .map_err(failed)?;
    Ok(json(&stored))
}

/// `airlock schema list --tenant T`.
pub async fn schema_list(config: &ServiceConfig, tenant: &str) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    let store = open_registry(config).await?;
    let list = store.schemas(tenant).await.map_err(failed)?;
    Ok(json(&list))
}

/// `airlock schema get ID --tenant T`: the schema's JSON, as stored.
pub async fn schema_get(
    config: &ServiceConfig,
    tenant: &str,
    id: &str,
) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    crate::schemas::check_id(id).map_err(CommandError::Usage)?;
    let store = open_registry(config).await?;
    match store.schema(tenant, id).await.map_err(failed)? {
        Some((_, body)) => {
            let value: serde_json::Value = serde_json::from_str(&body)
                .map_err(|e| failed(JobError::Corrupt(e.to_string())))?;
            Ok(json(&value))
        }
        None => Err(CommandError::Refused(format!(
            "tenant {tenant:?} has no schema {id:?}"
        ))),
    }
}

/// `airlock schema delete ID --tenant T`.
pub async fn schema_delete(
    config: &ServiceConfig,
    tenant: &str,
    id: &str,
) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    crate::schemas::check_id(id).map_err(CommandError::Usage)?;
    let store = open_registry(config).await?;
    if store.delete_schema(tenant, id).await.map_err(failed)? {
        Ok(format!("deleted schema {id:?} of tenant {tenant:?}"))
    } else {
        Err(CommandError::Refused(format!(
            "tenant {tenant:?} has no schema {id:?}"
        )))
    }
}

/// `airlock tenant create NAME [--plan P]`.
pub async fn tenant_create(
    config: &ServiceConfig,
    policies: &Policies,
    name: &str,
    plan: &str,
) -> Result<String, CommandError> {
    validate_tenant(name)?;
    let plan = policies
        .limits
        .plan(plan)
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let store = open_registry(config).await?;
    let now = store.now().await.map_err(failed)?;
    store
        .create_tenant(name, &plan.name, now)
        .await
        .map_err(tenant_error)?;
    let tenant = store.tenant(name).await.map_err(tenant_error)?;
    Ok(json(&tenant))
}

/// The key-encryption key for webhook secrets, as the operator gave it.
pub fn load_kek(
    file: Option<&Path>,
    value: Option<&str>,
) -> Result<crate::webhooks::Kek, CommandError> {
    let text = match (file, value) {
        (Some(f), _) => zeroize::Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
            CommandError::Usage(format!("reading the webhook key-encryption key {}: {e}", f.display()))
        })?),
        (None, Some(v)) => zeroize::Zeroizing::new(v.to_string()),
        (None, None) => {
            return Err(CommandError::Usage(
                "webhook secrets need a key-encryption key: --kek-file / AIRLOCK_WEBHOOK_KEK_FILE, or AIRLOCK_WEBHOOK_KEK (32 bytes, base64)".into(),
            ))
        }
    };
    crate::webhooks::Kek::parse(&text).map_err(|e| CommandError::Usage(e.to_string()))
}

fn parse_events(list: &str) -> Result<Vec<crate::webhooks::EventType>, CommandError> {
    if list.trim().is_empty() || list.trim() == "all" {
        return Ok(crate::webhooks::EventType::ALL.to_vec());
    }
    list.split(',')
        .map(|e| {
            crate::webhooks::EventType::parse(e.trim()).ok_or_else(|| {
                CommandError::Usage(format!(
                    "{e:?} is not an event: use job.succeeded, job.rejected, job.failed, job.cancelled, job.purged (or all)"
                ))
            })
        })
        .collect()
}

/// `airlock webhook add --tenant T --url URL [--events LIST]`: the secret, shown this once.
pub async fn webhook_add(
    config: &ServiceConfig,
    kek: &crate::webhooks::Kek,
    allow: &crate::webhooks::Allowlist,
    tenant: &str,
    url: &str,
    events: &str,
) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    let url = crate::webhooks::check_url(url, allow).map_err(CommandError::Usage)?;
    let events = parse_events(events)?;
    let store = open_registry(config).await?;
    if store.tenant(tenant).await.map_err(tenant_error)?.is_none() {
        return Err(CommandError::Refused(format!(
            "no tenant {tenant:?}: `airlock tenant create {tenant}` first"
        )));
    }
    let id = Uuid::new_v4();
    let secret = crate::webhooks::Secret::generate();
    let sealed = kek.seal(&secret, &id.to_string());
    let now = store.now().await.map_err(failed)?;
    let endpoint = store
        .add_webhook(id, tenant, url.as_str(), &events, &sealed, now)
        .await
        .map_err(failed)?;
    let mut v = serde_json::to_value(&endpoint).unwrap_or_default();
    v["secret"] = serde_json::Value::String(secret.expose().to_string());
    v["note"] = "the secret is shown only now; configure it in the receiver".into();
    Ok(json(&v))
}

/// `airlock webhook list --tenant T`: never a secret.
pub async fn webhook_list(config: &ServiceConfig, tenant: &str) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    let store = open_registry(config).await?;
    Ok(json(&store.webhooks(tenant).await.map_err(failed)?))
}

fn endpoint_id(id: &str) -> Result<Uuid, CommandError> {
    Uuid::parse_str(id)
        .map_err(|_| CommandError::Usage(format!("{id:?} is not an endpoint id (UUID)")))
}

/// `airlock webhook remove ID --tenant T`.
pub async fn webhook_remove(
    config: &ServiceConfig,
    tenant: &str,
    id: &str,
) -> Result<String, CommandError> {
    let id = endpoint_id(id)?;
    let store = open_registry(config).await?;
    if store.remove_webhook(tenant, id).await.map_err(failed)? {
        Ok(json(&serde_json::json!({"removed": id})))
    } else {
        Err(CommandError::Refused(format!(
            "tenant {tenant:?} has no endpoint {id}"
        )))
    }
}

/// `airlock webhook rotate ID --tenant T`: the new secret, shown this once; the old one keeps
/// signing beside it for 24 h.
pub async fn webhook_rotate(
    config: &ServiceConfig,
    kek: &crate::webhooks::Kek,
    tenant: &str,
    id: &str,
) -> Result<String, CommandError> {
    let id = endpoint_id(id)?;
    let store = open_registry(config).await?;
    let secret = crate::webhooks::Secret::generate();
    let sealed = kek.seal(&secret, &id.to_string());
    let now = store.now().await.map_err(failed)?;
    if !store
        .rotate_webhook(tenant, id, &sealed, now)
        .await
        .map_err(failed)?
    {
        return Err(CommandError::Refused(format!(
            "tenant {tenant:?} has no endpoint {id}"
        )));
    }
    Ok(json(&serde_json::json!({
        "id": id,
        "secret": secret.expose().to_string(),
        "previous_secret_until_ms": now + crate::webhooks::store::ROTATION_OVERLAP_MS,
        "note": "the new secret is shown only now; the old one keeps signing beside it for 24 h",
    })))
}

/// `airlock key create --tenant T [--name N]`: the key, shown this once.
pub async fn key_create(
    config: &ServiceConfig,
    tenant: &str,
    name: &str,
) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    let store = open_registry(config).await?;
    let now = store.now().await.map_err(failed)?;
    let (info, key) = store
        .create_key(tenant, name, now)
        .await
        .map_err(tenant_error)?;
    Ok(json(&serde_json::json!({
        "key": key.expose(),
        "id": info.id,
        "tenant": info.tenant,
        "name": info.name,
        "prefix": info.prefix,
        "note": "the key is shown only now; only its SHA-256 is stored",
    })))
}

/// `airlock key list --tenant T`: names, prefixes and times, never a key.
pub async fn key_list(config: &ServiceConfig, tenant: &str) -> Result<String, CommandError> {
    validate_tenant(tenant)?;
    let store = open_registry(config).await?;
    Ok(json(&store.list_keys(tenant).await.map_err(tenant_error)?))
}

/// `airlock key revoke ID`: refused from the next request on.
pub async fn key_revoke(config: &ServiceConfig, id: &str) -> Result<String, CommandError> {
    let id = Uuid::parse_str(id)
        .map_err(|_| CommandError::Usage(format!("{id:?} is not a key id (UUID)")))?;
    let store = open_registry(config).await?;
    let now = store.now().await.map_err(failed)?;
    let revoked = store.revoke_key(id, now).await.map_err(tenant_error)?;
    if store.dialect_name() == "postgres" {
        // Every `serve` has applied the revocation to its key cache once this has passed
        // (`crate::hotcache`): refused on the next request everywhere.
        tokio::time::sleep(crate::hotcache::REVOKE_SETTLE).await;
    }
    Ok(json(&revoked))
}

/// `airlock audit verify`: the report as JSON; `Refused` (exit 1) naming the first problems
/// when anything is wrong.
pub async fn audit_verify(
    config: &ServiceConfig,
    tenant: Option<&str>,
    key: Option<&crate::audit::checkpoint::PublicKey>,
) -> Result<String, CommandError> {
    let store = open_registry(config).await?;
    let started = std::time::Instant::now();
    let report = crate::audit::verify(&store, tenant, key)
        .await
        .map_err(failed)?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(records = report.records, secs, "audit chains verified");
    if !report.checkpoints_checked {
        eprintln!(
            "airlock: checkpoint signatures not checked: give --public-key or --audit-key-file"
        );
    }
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    if report.ok() {
        return Ok(text);
    }
    println!("{text}");
    let first: Vec<String> = report
        .problems
        .iter()
        .take(5)
        .map(|p| match p.seq {
            Some(seq) => format!("{} record {seq}: {}", p.tenant, p.what),
            None => format!("{}: {}", p.tenant, p.what),
        })
        .collect();
    Err(CommandError::Refused(format!(
        "the audit trail does not verify ({} problems): {}",
        report.problems.len(),
        first.join("; ")
    )))
}

/// `airlock audit export`: the tenant's records as JSON lines, then its signed checkpoints.
pub async fn audit_export(config: &ServiceConfig, tenant: &str) -> Result<String, CommandError> {
    use std::io::Write;
    let store = open_registry(config).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after = 0;
    loop {
        let page = crate::audit::records(&store, tenant, after, 10_000)
            .await
            .map_err(failed)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            writeln!(out, "{}", json_line(r)).map_err(failed)?;
        }
    }
    for c in crate::audit::checkpoint::checkpoints(&store, tenant)
        .await
        .map_err(failed)?
    {
        writeln!(out, "{}", json_line(&c)).map_err(failed)?;
    }
    out.flush().map_err(failed)?;
    Ok(String::new())
}

fn json_line<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `airlock audit checkpoint`: how many chain heads were signed.
pub async fn audit_checkpoint(
    config: &ServiceConfig,
    key: &crate::audit::AuditKey,
) -> Result<String, CommandError> {
    let store = open_registry(config).await?;
    let n = crate::audit::checkpoint(&store, key)
        .await
        .map_err(failed)?;
    Ok(serde_json::json!({"checkpoints": n, "key_id": key.key_id()}).to_string())
}
