//! The job store over SQL, shared by both backends through sqlx's `Any` driver: the same
//! statements (`$N` parameters work in both), with the dialect's claim query, row locking and
//! schema supplied by [`super::postgres`] and [`super::sqlite`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;
use sqlx::{Any, Executor, Row, Transaction};
use uuid::Uuid;

use super::{
    backoff_ms, AttemptKeys, Claimed, Completion, FailureCode, JobError, JobRecord, JobState,
    JobStore, NewJob, PurgeReason, Receipt, Retry, Submitted, SweepPreview, SweepScope,
};

#[derive(Debug, Clone)]
enum ScopeArg {
    Text(String),
    Int(i64),
}

fn bind_scope<'q>(
    mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    args: &[ScopeArg],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = match a {
            ScopeArg::Text(t) => q.bind(t.clone()),
            ScopeArg::Int(i) => q.bind(*i),
        };
    }
    q
}

/// Infrastructure failures further apart than this are separate outages (each with its own
/// budget): an hour, well above the longest retry delay (5 min).
const OUTAGE_GAP_MS: i64 = 3_600_000;

/// What differs between PostgreSQL and SQLite.
#[derive(Debug)]
pub struct Dialect {
    pub name: &'static str,
    /// Returns a row when sqlx's migrations table exists.
    pub migrations_table: &'static str,
    /// Set before migrating (a lock timeout, so a migration waiting behind a long transaction
    /// fails instead of queueing every claim behind its lock) and reset after.
    pub migration_session: Option<(&'static str, &'static str)>,
    /// Returns `now`: the database's clock, in ms since the Unix epoch.
    pub now: &'static str,
    /// The same clock as an expression, to read it in the same query as something else.
    pub now_expr: &'static str,
    /// `$1` = now; returns one `id`: the next runnable job in fair-queuing order.
    pub claim_pick: &'static str,
    /// Appended to selects that must lock their rows (`FOR UPDATE` or nothing).
    pub for_update: &'static str,
    /// Appended to selects that take rows other claimers must skip.
    pub skip_locked: &'static str,
    /// `$1` = now; returns id, tenant, attempts, max_attempts of expired leases.
    pub reap_select: &'static str,
    /// How write transactions begin.
    pub begin: &'static str,
    /// Run first in every transaction of a tenant-scoped request or command, `$1` = the tenant:
    /// on PostgreSQL the role `airlock_tenant` and the `airlock.tenant` setting its row-level
    /// security policies compare with, both for this transaction only. SQLite has no roles.
    pub tenant_scope: Option<&'static str>,
    /// The position at the queue's front, for a new job's fair-queuing position: on PostgreSQL
    /// a `SECURITY DEFINER` function (migration 10), since a tenant's transaction sees only its
    /// own jobs.
    pub queue_front: &'static str,
    /// Run after each new connection (schema, pragmas).
    pub on_connect: fn(Option<&str>) -> String,
    /// The clean output's byte count from a row's `summary` JSON text, as a BIGINT (NULL when
    /// absent).
    pub summary_output_bytes: &'static str,
}

/// A job store on a SQL database.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: &'static Dialect,
    /// On PostgreSQL, a small pool on the native driver (opened on first use) for bulk reads,
    /// which skip the `Any` driver's copy of every value: `airlock audit verify`.
    native: Option<sqlx::PgPool>,
}

type Tx<'a> = Transaction<'a, Any>;

/// A connection to read with: in a tenant-scoped request or command on PostgreSQL, a
/// transaction as the tenant (dropped, not committed: sqlx rolls it back on the connection's
/// next use); otherwise a pooled connection as the process's role.
pub(crate) enum Reader {
    Scoped(Tx<'static>),
    Pooled(sqlx::pool::PoolConnection<Any>),
}

impl std::ops::Deref for Reader {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        match self {
            Reader::Scoped(tx) => tx,
            Reader::Pooled(c) => c,
        }
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Reader::Scoped(tx) => &mut *tx,
            Reader::Pooled(c) => &mut *c,
        }
    }
}

async fn audit(
    tx: &mut Tx<'_>,
    id: &str,
    tenant: &str,
    now: i64,
    from: Option<&str>,
    to: &str,
    detail: Option<&str>,
) -> Result<(), JobError> {
    // The webhook outbox first, and the chain last: the chain's head row stays locked from the
    // append to the commit, so the append comes as late as it can.
    if from != Some(to) {
        if let Some(kind) =
            crate::jobs::JobState::parse(to).and_then(crate::webhooks::EventType::of)
        {
            outbox(tx, id, kind, now).await?;
        }
    }
    crate::audit::append(
        tx,
        vec![crate::audit::Entry {
            tenant: tenant.to_string(),
            at: now,
            action: crate::audit::Action::JobState {
                job_id: id.to_string(),
                from: from.map(str::to_string),
                to: to.to_string(),
                detail: detail.map(str::to_string),
            },
        }],
    )
    .await?;
    Ok(())
}

/// The webhook outbox: a job reached a final state, in the transaction `tx` that moved it. When
/// the job's tenant has an enabled endpoint subscribed to `kind`, the event is recorded (with
/// the job's state, result code and summary as of this commit) and one delivery is queued per
/// such endpoint. Both commit with the state change or not at all.
pub(crate) async fn outbox(
    tx: &mut Tx<'_>,
    job_id: &str,
    kind: crate::webhooks::EventType,
    now: i64,
) -> Result<(), JobError> {
    let event_id = format!("msg_{}", Uuid::new_v4().simple());
    let subscribed = format!("%,{},%", kind.as_str());
    let recorded = sqlx::query(
        "INSERT INTO airlock_webhook_events (id, tenant, job_id, type, created_at, state, result_code, summary)
         SELECT $1, j.tenant, j.id, $2, $3, j.state, j.result_code, j.summary FROM airlock_jobs j
         WHERE j.id = $4 AND EXISTS (SELECT 1 FROM airlock_webhooks w WHERE w.tenant = j.tenant
               AND w.disabled_at IS NULL AND (',' || w.events || ',') LIKE $5)",
    )
    .bind(&event_id)
    .bind(kind.as_str())
    .bind(now)
    .bind(job_id)
    .bind(&subscribed)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if recorded == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO airlock_webhook_deliveries (event_id, endpoint_id, state, attempts, next_at)
         SELECT $1, w.id, 'pending', 0, $2 FROM airlock_webhooks w, airlock_jobs j
         WHERE j.id = $3 AND w.tenant = j.tenant AND w.disabled_at IS NULL
               AND (',' || w.events || ',') LIKE $4",
    )
    .bind(&event_id)
    .bind(now)
    .bind(job_id)
    .bind(&subscribed)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn uuid(s: &str) -> Result<Uuid, JobError> {
    Uuid::parse_str(s).map_err(|e| JobError::Corrupt(format!("job id {s:?}: {e}")))
}

fn claimed(row: &AnyRow, keys: AttemptKeys) -> Result<Claimed, JobError> {
    let id: String = row.try_get("id")?;
    Ok(Claimed {
        id: uuid(&id)?,
        tenant: row.try_get("tenant")?,
        plan: row.try_get("plan")?,
        input_key: row.try_get("input_key")?,
        input_bytes: row.try_get("input_bytes")?,
        file_name: row.try_get("file_name")?,
        fence: row.try_get("fence")?,
        attempt: row.try_get::<i64, _>("attempts")? as i32,
        schema: row.try_get("schema_body")?,
        keys,
    })
}

pub(crate) fn record(row: &AnyRow) -> Result<JobRecord, JobError> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let summary: Option<String> = row.try_get("summary")?;
    let summary = summary
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| JobError::Corrupt(format!("job {id}: summary: {e}")))?;
    Ok(JobRecord {
        id: uuid(&id)?,
        tenant: row.try_get("tenant")?,
        state: JobState::parse(&state).ok_or_else(|| JobError::Corrupt(state.clone()))?,
        plan: row.try_get("plan")?,
        file_name: row.try_get("file_name")?,
        input_key: row.try_get("input_key")?,
        input_bytes: row.try_get("input_bytes")?,
        attempts: row.try_get::<i64, _>("attempts")? as i32,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as i32,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        result_code: row.try_get("result_code")?,
        output_key: row.try_get("output_key")?,
        rejects_key: row.try_get("rejects_key")?,
        report_key: row.try_get("report_key")?,
        summary,
        purged_at: row.try_get("purged_at")?,
        fence: row.try_get("fence")?,
        attempt_keys: [
            "attempt_output_key",
            "attempt_rejects_key",
            "attempt_report_key",
        ]
        .into_iter()
        .map(|c| row.try_get::<Option<String>, _>(c))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect(),
        lease_expires_at: row.try_get("lease_expires_at")?,
        schema_id: row.try_get("schema_id")?,
        has_schema: row.try_get::<Option<String>, _>("schema_body")?.is_some(),
    })
}

impl SqlStore {
    /// Connect to `url` with `dialect`; `schema` (PostgreSQL) isolates tests.
    pub async fn connect(
        url: &str,
        dialect: &'static Dialect,
        schema: Option<String>,
        max_connections: u32,
    ) -> Result<Self, JobError> {
        sqlx::any::install_default_drivers();
        let setup = (dialect.on_connect)(schema.as_deref());
        if dialect.name == "postgres" && !setup.is_empty() {
            // Once by hand first: a pool retries a failing setup until its acquire timeout and
            // then reports only the timeout; here its own error (a login refused its roles, a
            // schema it may not create) reaches the operator at once.
            use sqlx::Connection;
            let mut probe = sqlx::AnyConnection::connect(url).await?;
            probe.execute(setup.as_str()).await?;
            probe.close().await?;
        }
        let native = match dialect.name {
            "postgres" => {
                let setup = setup.clone();
                Some(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(4)
                        .after_connect(move |conn, _| {
                            let setup = setup.clone();
                            Box::pin(async move {
                                if !setup.is_empty() {
                                    conn.execute(setup.as_str()).await?;
                                }
                                Ok(())
                            })
                        })
                        .connect_lazy(url)?,
                )
            }
            _ => None,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(move |conn, _| {
                let setup = setup.clone();
                Box::pin(async move {
                    if !setup.is_empty() {
                        conn.execute(setup.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(SqlStore {
            pool,
            dialect,
            native,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The native PostgreSQL pool for bulk reads (`None` on SQLite).
    pub fn native_postgres(&self) -> Option<&sqlx::PgPool> {
        self.native.as_ref()
    }

    /// "postgres" or "sqlite".
    pub fn dialect(&self) -> &'static Dialect {
        self.dialect
    }

    pub fn dialect_name(&self) -> &'static str {
        self.dialect.name
    }

    /// Apply every migration up to `version` that the database lacks, under the dialect's lock
    /// timeout (sqlx's migrator holds an advisory lock, so concurrent migrators take turns).
    pub async fn migrate_to(&self, version: i64) -> Result<(), JobError> {
        let migrator = super::schema::migrator(self.dialect.name, version).await?;
        let mut conn = self.pool.acquire().await?;
        if let Some((set, _)) = self.dialect.migration_session {
            conn.execute(set).await?;
        }
        // `run_direct`: `run(&mut *conn)` is not general enough inside an `async_trait` future.
        let ran = migrator.run_direct(&mut *conn).await;
        let reset = match self.dialect.migration_session {
            Some((_, reset)) => conn.execute(reset).await.map(|_| ()),
            None => Ok(()),
        };
        // This connection owns the tables (the session setup's role was reset); it goes, so
        // that every pooled connection works under the service role.
        let _ = conn.close().await;
        ran?;
        Ok(reset?)
    }

    /// The highest migration applied (0 for an empty database). A migration recorded as failed
    /// part-way is an error: it needs a person.
    pub async fn schema_version(&self) -> Result<i64, JobError> {
        if sqlx::query(self.dialect.migrations_table)
            .fetch_optional(&self.pool)
            .await?
            .is_none()
        {
            return Ok(0);
        }
        let row = sqlx::query(
            "SELECT CAST(MAX(version) AS BIGINT) AS v, CAST(SUM(CASE WHEN success THEN 0 ELSE 1 END) AS BIGINT) AS dirty FROM _sqlx_migrations",
        )
        .fetch_one(&self.pool)
        .await?;
        if row.try_get::<Option<i64>, _>("dirty")?.unwrap_or(0) > 0 {
            return Err(JobError::Corrupt(
                "a schema migration failed part-way (_sqlx_migrations has an unsuccessful row); restore from backup or repair it by hand before running `airlock migrate` again".into(),
            ));
        }
        Ok(row.try_get::<Option<i64>, _>("v")?.unwrap_or(0))
    }

    /// The WHERE clause for a sweep scope, with its parameters from `$first` on.
    fn scope_sql(scope: &SweepScope, first: usize) -> (String, Vec<ScopeArg>) {
        let mut args = Vec::new();
        let mut next = first;
        let mut param = |a: ScopeArg, args: &mut Vec<ScopeArg>| {
            args.push(a);
            next += 1;
            format!("${}", next - 1)
        };
        let clause = match scope {
            SweepScope::Tenant { tenant, now } => {
                let p = param(ScopeArg::Text(tenant.clone()), &mut args);
                let n = param(ScopeArg::Int(*now), &mut args);
                format!(
                    "tenant = {p} AND state IN ('succeeded', 'rejected', 'failed', 'cancelled')
                     AND (state <> 'cancelled' OR lease_expires_at IS NULL OR lease_expires_at < {n})"
                )
            }
            SweepScope::Job { tenant, id, now } => {
                let p = param(ScopeArg::Text(tenant.clone()), &mut args);
                let i = param(ScopeArg::Text(id.to_string()), &mut args);
                let n = param(ScopeArg::Int(*now), &mut args);
                format!(
                    "tenant = {p} AND id = {i} AND state IN ('succeeded', 'rejected', 'failed', 'cancelled')
                     AND (state <> 'cancelled' OR lease_expires_at IS NULL OR lease_expires_at < {n})"
                )
            }
            SweepScope::Retention(classes) => {
                let named: Vec<String> = classes
                    .iter()
                    .filter(|c| !c.others)
                    .flat_map(|c| c.plans.clone())
                    .collect();
                let mut parts = Vec::new();
                for class in classes {
                    let cutoff = param(ScopeArg::Int(class.cutoff), &mut args);
                    let plans: Vec<String> = if class.others {
                        named.clone()
                    } else {
                        class.plans.clone()
                    };
                    let list: Vec<String> = plans
                        .into_iter()
                        .map(|p| param(ScopeArg::Text(p), &mut args))
                        .collect();
                    let membership = match (class.others, list.is_empty()) {
                        (true, true) => "TRUE".to_string(),
                        (true, false) => format!("plan NOT IN ({})", list.join(", ")),
                        (false, true) => "FALSE".to_string(),
                        (false, false) => format!("plan IN ({})", list.join(", ")),
                    };
                    parts.push(format!("({membership} AND finished_at <= {cutoff})"));
                }
                let any = if parts.is_empty() {
                    "FALSE".to_string()
                } else {
                    parts.join(" OR ")
                };
                // Every final state: a cancelled job's input is tenant data too.
                format!("state IN ('succeeded', 'rejected', 'failed', 'cancelled') AND ({any})")
            }
        };
        (format!("{clause} AND purged_at IS NULL"), args)
    }

    /// Fair-queuing position for a tenant's new job (start-time fair queuing): one past the
    /// tenant's last position while it has a backlog, else one past the queue's current front.
    /// Claims then simply take the lowest position, so a claim touches no tenant row.
    async fn next_vseq(&self, tx: &mut Tx<'_>, tenant: &str) -> Result<i64, JobError> {
        sqlx::query(
            "INSERT INTO airlock_tenants (tenant) VALUES ($1) ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
        // Serializes this tenant's submits (PostgreSQL; SQLite holds the write lock already).
        let sql = format!(
            "SELECT last_vseq FROM airlock_tenants WHERE tenant = $1{}",
            self.dialect.for_update
        );
        let last: i64 = sqlx::query(&sql)
            .bind(tenant)
            .fetch_one(&mut **tx)
            .await?
            .try_get("last_vseq")?;
        let front: i64 = sqlx::query(self.dialect.queue_front)
            .fetch_one(&mut **tx)
            .await?
            .try_get("v")?;
        let backlogged = sqlx::query(
            "SELECT 1 AS x FROM airlock_jobs WHERE tenant = $1 AND state = 'queued' LIMIT 1",
        )
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
        let next = if backlogged {
            last.max(front) + 1
        } else {
            front + 1
        };
        sqlx::query("UPDATE airlock_tenants SET last_vseq = $2 WHERE tenant = $1")
            .bind(tenant)
            .bind(next)
            .execute(&mut **tx)
            .await?;
        Ok(next)
    }

    /// A write transaction; in a tenant-scoped request or command, as that tenant
    /// ([`crate::jobs::request::tenant`]).
    pub(crate) async fn begin(&self) -> Result<Tx<'static>, JobError> {
        let mut tx = self.pool.begin_with(self.dialect.begin).await?;
        if let (Some(scope), Some(tenant)) =
            (self.dialect.tenant_scope, crate::jobs::request::tenant())
        {
            sqlx::query(scope).bind(tenant).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// A connection for reads ([`Reader`]).
    pub(crate) async fn reader(&self) -> Result<Reader, JobError> {
        match (self.dialect.tenant_scope, crate::jobs::request::tenant()) {
            (Some(scope), Some(tenant)) => {
                let mut tx = self.pool.begin().await?;
                sqlx::query(scope).bind(tenant).execute(&mut *tx).await?;
                Ok(Reader::Scoped(tx))
            }
            _ => Ok(Reader::Pooled(self.pool.acquire().await?)),
        }
    }

    /// Fenced transition out of `running`: the job's tenant, or `StaleFence`.
    async fn fenced(&self, tx: &mut Tx<'_>, id: Uuid, fence: i64) -> Result<String, JobError> {
        let sql = format!(
            "SELECT tenant FROM airlock_jobs WHERE id = $1 AND fence = $2 AND state = 'running'{}",
            self.dialect.for_update
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(fence)
            .fetch_optional(&mut **tx)
            .await?;
        match row {
            Some(r) => Ok(r.try_get("tenant")?),
            None => Err(JobError::StaleFence(id, fence)),
        }
    }
}

#[async_trait]
impl JobStore for SqlStore {
    async fn migrate(&self) -> Result<(), JobError> {
        self.migrate_to(super::schema::latest()).await
    }

    async fn check_schema(&self) -> Result<(), JobError> {
        let found = self.schema_version().await?;
        let want = super::schema::latest();
        match found.cmp(&want) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(JobError::SchemaBehind { found, want }),
            std::cmp::Ordering::Greater => Err(JobError::SchemaAhead { found, want }),
        }
    }

    async fn now(&self) -> Result<i64, JobError> {
        Ok(sqlx::query(self.dialect.now)
            .fetch_one(&self.pool)
            .await?
            .try_get("now")?)
    }

    async fn find_idempotent(&self, tenant: &str, key: &str) -> Result<Option<Uuid>, JobError> {
        let row =
            sqlx::query("SELECT id FROM airlock_jobs WHERE tenant = $1 AND idempotency_key = $2")
                .bind(tenant)
                .bind(key)
                .fetch_optional(&mut *self.reader().await?)
                .await?;
        row.map(|r| {
            let id: String = r.try_get("id")?;
            uuid(&id)
        })
        .transpose()
    }

    async fn submit(&self, job: &NewJob, now: i64) -> Result<Submitted, JobError> {
        let id = job.id;
        let mut tx = self.begin().await?;
        let vseq = self.next_vseq(&mut tx, &job.tenant).await?;
        let inserted = sqlx::query(
            "INSERT INTO airlock_jobs (id, tenant, idempotency_key, state, plan, input_key, input_bytes, file_name, max_attempts, run_after, created_at, vseq, schema_id, schema_body)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $9, $10, $11, $12)
             ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(id.to_string())
        .bind(&job.tenant)
        .bind(&job.idempotency_key)
        .bind(&job.plan)
        .bind(&job.input_key)
        .bind(job.input_bytes)
        .bind(&job.file_name)
        .bind(i64::from(job.max_attempts))
        .bind(now)
        .bind(vseq)
        .bind(job.schema.as_ref().and_then(|s| s.id.clone()))
        .bind(job.schema.as_ref().map(|s| s.body.clone()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            let key = job.idempotency_key.as_deref().unwrap_or_default();
            let existing = self.find_idempotent(&job.tenant, key).await?;
            return existing
                .map(Submitted::Existing)
                .ok_or_else(|| JobError::Corrupt("idempotency conflict without a row".into()));
        }
        audit(
            &mut tx,
            &id.to_string(),
            &job.tenant,
            now,
            None,
            "queued",
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(Submitted::Created(id))
    }

    async fn claim(
        &self,
        owner: &str,
        lease_ms: i64,
        now: i64,
    ) -> Result<Option<Claimed>, JobError> {
        let mut tx = self.begin().await?;
        let picked = sqlx::query(self.dialect.claim_pick)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(picked) = picked else {
            tx.rollback().await?;
            return Ok(None);
        };
        let id: String = picked.try_get("id")?;
        let keys = AttemptKeys::new();
        let row = sqlx::query(
            "UPDATE airlock_jobs SET state = 'running', attempts = attempts + 1, fence = fence + 1,
                 lease_owner = $2, lease_expires_at = $3, started_at = COALESCE(started_at, $4),
                 attempt_output_key = $5, attempt_rejects_key = $6, attempt_report_key = $7
             WHERE id = $1
             RETURNING id, tenant, plan, input_key, input_bytes, file_name, fence, attempts, schema_body",
        )
        .bind(&id)
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(keys.output.as_str())
        .bind(keys.rejects.as_str())
        .bind(keys.report.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let tenant: String = row.try_get("tenant")?;

        audit(
            &mut tx,
            &id,
            &tenant,
            now,
            Some("queued"),
            "running",
            Some(owner),
        )
        .await?;
        tx.commit().await?;
        claimed(&row, keys).map(Some)
    }

    async fn heartbeat(
        &self,
        id: Uuid,
        fence: i64,
        lease_ms: i64,
        now: i64,
    ) -> Result<bool, JobError> {
        let n = sqlx::query("UPDATE airlock_jobs SET lease_expires_at = $3 WHERE id = $1 AND fence = $2 AND state = 'running'")
            .bind(id.to_string())
            .bind(fence)
            .bind(now + lease_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn complete(
        &self,
        id: Uuid,
        fence: i64,
        done: &Completion,
        now: i64,
    ) -> Result<(), JobError> {
        let mut tx = self.begin().await?;
        let tenant = self.fenced(&mut tx, id, fence).await?;
        sqlx::query(
            "UPDATE airlock_jobs SET state = $2, finished_at = $3, result_code = $4, output_key = $5,
                 rejects_key = $6, report_key = $7, summary = $8, lease_owner = NULL, lease_expires_at = NULL,
                 attempt_output_key = NULL, attempt_rejects_key = NULL, attempt_report_key = NULL
             WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(done.state.as_str())
        .bind(now)
        .bind(done.result_code.map(|c| c.as_str()))
        .bind(&done.output_key)
        .bind(&done.rejects_key)
        .bind(&done.report_key)
        .bind(serde_json::to_string(&done.summary).map_err(|e| JobError::Corrupt(e.to_string()))?)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            &id.to_string(),
            &tenant,
            now,
            Some("running"),
            done.state.as_str(),
            done.result_code.map(|c| c.as_str()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
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
        let mut tx = self.begin().await?;
        let tenant = self.fenced(&mut tx, id, fence).await?;
        let row = sqlx::query(
            "SELECT attempts, max_attempts, outage_since, outage_last FROM airlock_jobs WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let (attempts, max) = (
            row.try_get::<i64, _>("attempts")? as i32,
            row.try_get::<i64, _>("max_attempts")? as i32,
        );
        let outage_since: Option<i64> = row.try_get("outage_since")?;
        let outage_last: Option<i64> = row.try_get("outage_last")?;
        // (run again at, attempts to give back, outage start) or the final code.
        let requeue = match retry {
            Retry::Attempt { delay_ms } if attempts < max => Ok((now + delay_ms, 0, None)),
            Retry::Outage { budget_ms } => {
                // The same outage while failures keep coming; a new one after an hour without.
                let since = match (outage_since, outage_last) {
                    (Some(since), Some(last)) if now - last <= OUTAGE_GAP_MS => since,
                    _ => now,
                };
                if now - since <= budget_ms {
                    Ok((now + (now - since).clamp(5_000, 300_000), 1, Some(since)))
                } else {
                    Err(FailureCode::OutageBudgetSpent)
                }
            }
            Retry::Attempt { .. } | Retry::Never => Err(code),
        };
        let (state, detail) = match requeue {
            Ok((at, give_back, since)) => {
                let vseq = self.next_vseq(&mut tx, &tenant).await?;
                sqlx::query("UPDATE airlock_jobs SET state = 'queued', run_after = $2, result_code = $3, attempts = attempts - $4, outage_since = $5, outage_last = $6, vseq = $7, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1")
                    .bind(id.to_string())
                    .bind(at)
                    .bind(code.as_str())
                    .bind(give_back)
                    .bind(since)
                    .bind(since.map(|_| now))
                    .bind(vseq)
                    .execute(&mut *tx)
                    .await?;
                (JobState::Queued, format!("{code}: {detail}"))
            }
            Err(final_code) => {
                sqlx::query("UPDATE airlock_jobs SET state = 'failed', finished_at = $2, result_code = $3, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1")
                    .bind(id.to_string())
                    .bind(now)
                    .bind(final_code.as_str())
                    .execute(&mut *tx)
                    .await?;
                (JobState::Failed, format!("{final_code}: {code}: {detail}"))
            }
        };
        audit(
            &mut tx,
            &id.to_string(),
            &tenant,
            now,
            Some("running"),
            state.as_str(),
            Some(&detail),
        )
        .await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn release(&self, id: Uuid, fence: i64, now: i64) -> Result<(), JobError> {
        let mut tx = self.begin().await?;
        let tenant = self.fenced(&mut tx, id, fence).await?;
        sqlx::query("UPDATE airlock_jobs SET state = 'queued', attempts = attempts - 1, run_after = $2, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1")
            .bind(id.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            &id.to_string(),
            &tenant,
            now,
            Some("running"),
            "queued",
            Some("released at shutdown"),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reap(&self, now: i64) -> Result<u64, JobError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(self.dialect.reap_select)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let id: String = row.try_get("id")?;
            let tenant: String = row.try_get("tenant")?;
            let (attempts, max) = (
                row.try_get::<i64, _>("attempts")? as i32,
                row.try_get::<i64, _>("max_attempts")? as i32,
            );
            if attempts < max {
                let vseq = self.next_vseq(&mut tx, &tenant).await?;
                sqlx::query("UPDATE airlock_jobs SET state = 'queued', run_after = $2, vseq = $3, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1")
                    .bind(&id)
                    .bind(now + backoff_ms(attempts))
                    .bind(vseq)
                    .execute(&mut *tx)
                    .await?;
                audit(
                    &mut tx,
                    &id,
                    &tenant,
                    now,
                    Some("running"),
                    "queued",
                    Some("lease expired"),
                )
                .await?;
            } else {
                sqlx::query("UPDATE airlock_jobs SET state = 'failed', finished_at = $2, result_code = $3, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1")
                    .bind(&id)
                    .bind(now)
                    .bind(FailureCode::LeaseExpired.as_str())
                    .execute(&mut *tx)
                    .await?;
                audit(
                    &mut tx,
                    &id,
                    &tenant,
                    now,
                    Some("running"),
                    "failed",
                    Some("lease expired; attempts spent"),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    async fn cancel(&self, id: Uuid, now: i64) -> Result<JobState, JobError> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT tenant, state FROM airlock_jobs WHERE id = $1{}",
            self.dialect.for_update
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(JobError::NotFound(id))?;
        let (tenant, state): (String, String) = (row.try_get("tenant")?, row.try_get("state")?);
        let state = JobState::parse(&state).ok_or_else(|| JobError::Corrupt(state.clone()))?;
        if state != JobState::Queued {
            return Err(JobError::WrongState {
                id,
                state,
                what: "only a queued job can be cancelled",
            });
        }
        sqlx::query("UPDATE airlock_jobs SET state = 'cancelled', finished_at = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            &id.to_string(),
            &tenant,
            now,
            Some("queued"),
            "cancelled",
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(JobState::Cancelled)
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, JobError> {
        let row = sqlx::query("SELECT * FROM airlock_jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.as_ref().map(record).transpose()
    }

    async fn counts(&self) -> Result<BTreeMap<String, i64>, JobError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM airlock_jobs GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("state")?, r.try_get::<i64, _>("n")?)))
            .collect()
    }

    async fn claim_sweep(
        &self,
        scope: &SweepScope,
        owner: &str,
        lease_ms: i64,
        limit: i64,
        now: i64,
    ) -> Result<Vec<JobRecord>, JobError> {
        let (clause, args) = Self::scope_sql(scope, 5);
        let sql = format!(
            "UPDATE airlock_jobs SET sweep_owner = $1, sweep_lease = $2
             WHERE id IN (SELECT id FROM airlock_jobs
                          WHERE {clause} AND (sweep_lease IS NULL OR sweep_lease < $3)
                          ORDER BY finished_at LIMIT $4{})
             RETURNING *",
            self.dialect.skip_locked
        );
        let mut tx = self.begin().await?;
        let q = sqlx::query(&sql)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(limit);
        let rows = bind_scope(q, &args).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(record).collect()
    }

    async fn preview_sweep(&self, scope: &SweepScope, _now: i64) -> Result<SweepPreview, JobError> {
        let (clause, args) = Self::scope_sql(scope, 1);
        // Inputs and clean outputs, as the real run counts them (`sweeper::objects_of`).
        let output = self.dialect.summary_output_bytes;
        let sql = format!(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(input_bytes + CASE WHEN output_key IS NULL THEN 0 ELSE COALESCE({output}, 0) END), 0) AS BIGINT) AS bytes, MIN(finished_at) AS oldest FROM airlock_jobs WHERE {clause}"
        );
        let row = bind_scope(sqlx::query(&sql), &args)
            .fetch_one(&mut *self.reader().await?)
            .await?;
        Ok(SweepPreview {
            jobs: row.try_get("n")?,
            bytes: row.try_get("bytes")?,
            oldest_finished_at: row.try_get("oldest")?,
        })
    }

    async fn release_sweep(&self, ids: &[Uuid], owner: &str) -> Result<(), JobError> {
        let mut tx = self.begin().await?;
        for chunk in ids.chunks(500) {
            let list = (2..2 + chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE airlock_jobs SET sweep_owner = NULL, sweep_lease = NULL WHERE sweep_owner = $1 AND id IN ({list})"
            );
            let mut q = sqlx::query(&sql).bind(owner);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mark_purged(
        &self,
        done: &[Receipt],
        owner: &str,
        run_id: &str,
        reason: PurgeReason,
        now: i64,
    ) -> Result<Vec<Uuid>, JobError> {
        let reason = reason.as_str();
        if done.is_empty() {
            return Ok(Vec::new());
        }
        // Set-based: four statements per batch, whatever its size, in one transaction.
        let list = |first: usize, n: usize| {
            (first..first + n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT id, tenant, state FROM airlock_jobs WHERE sweep_owner = $1 AND id IN ({}){}",
            list(2, done.len()),
            self.dialect.for_update
        );
        let mut q = sqlx::query(&sql).bind(owner);
        for r in done {
            q = q.bind(r.job_id.to_string());
        }
        let rows = q.fetch_all(&mut *tx).await?;
        let mut held = std::collections::HashMap::new();
        for row in &rows {
            let id: String = row.try_get("id")?;
            held.insert(
                id,
                (
                    row.try_get::<String, _>("tenant")?,
                    row.try_get::<String, _>("state")?,
                ),
            );
        }
        let marked: Vec<&Receipt> = done
            .iter()
            .filter(|r| held.contains_key(&r.job_id.to_string()))
            .collect();
        if marked.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE airlock_jobs SET state = 'purged', purged_at = $1, sweep_owner = NULL, sweep_lease = NULL WHERE id IN ({})",
            list(2, marked.len())
        );
        let mut q = sqlx::query(&sql).bind(now);
        for r in &marked {
            q = q.bind(r.job_id.to_string());
        }
        q.execute(&mut *tx).await?;
        let values: Vec<String> = (0..marked.len())
            .map(|i| {
                let b = 4 + i * 4;
                format!("(${b}, ${}, ${}, $1, $2, $3, ${})", b + 1, b + 2, b + 3)
            })
            .collect();
        let sql = format!(
            "INSERT INTO airlock_receipts (id, job_id, tenant, run_id, reason, at, body) VALUES {}",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(run_id).bind(reason).bind(now);
        let mut chained = Vec::with_capacity(marked.len());
        for r in &marked {
            let (tenant, state) = &held[&r.job_id.to_string()];
            let body = serde_json::to_string(r).map_err(|e| JobError::Corrupt(e.to_string()))?;
            let receipt_id = Uuid::new_v4().to_string();
            chained.push(crate::audit::Entry {
                tenant: tenant.clone(),
                at: now,
                action: crate::audit::Action::Purged {
                    job_id: r.job_id.to_string(),
                    from: state.clone(),
                    reason: reason.to_string(),
                    receipt_id: receipt_id.clone(),
                    receipt_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                        body.as_bytes(),
                    )),
                },
            });
            q = q
                .bind(receipt_id)
                .bind(r.job_id.to_string())
                .bind(tenant.clone())
                .bind(body);
        }
        q.execute(&mut *tx).await?;
        crate::audit::append(&mut tx, chained).await?;
        for r in &marked {
            outbox(
                &mut tx,
                &r.job_id.to_string(),
                crate::webhooks::EventType::Purged,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(marked.into_iter().map(|r| r.job_id).collect())
    }

    async fn referenced(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>, JobError> {
        let mut found = std::collections::HashSet::new();
        for chunk in keys.chunks(200) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let list = list.join(", ");
            let sql = format!(
                "SELECT input_key AS k FROM airlock_jobs WHERE state <> 'purged' AND input_key IN ({list})
                 UNION SELECT output_key FROM airlock_jobs WHERE state <> 'purged' AND output_key IN ({list})
                 UNION SELECT rejects_key FROM airlock_jobs WHERE state <> 'purged' AND rejects_key IN ({list})
                 UNION SELECT report_key FROM airlock_jobs WHERE state <> 'purged' AND report_key IN ({list})"
            );
            let mut q = sqlx::query(&sql);
            for k in chunk {
                q = q.bind(k.clone());
            }
            for row in q.fetch_all(&mut *self.reader().await?).await? {
                found.insert(row.try_get::<String, _>("k")?);
            }
        }
        Ok(found)
    }

    async fn receipts(&self, tenant: &str) -> Result<Vec<Receipt>, JobError> {
        let rows =
            sqlx::query("SELECT body FROM airlock_receipts WHERE tenant = $1 ORDER BY at, id")
                .bind(tenant)
                .fetch_all(&mut *self.reader().await?)
                .await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get("body")?;
                serde_json::from_str(&body).map_err(|e| JobError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn cancel_tenant(
        &self,
        tenant: &str,
        now: i64,
    ) -> Result<Vec<(Uuid, JobState)>, JobError> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT id, state FROM airlock_jobs WHERE tenant = $1 AND state IN ('queued', 'running'){}",
            self.dialect.for_update
        );
        let rows = sqlx::query(&sql).bind(tenant).fetch_all(&mut *tx).await?;
        let mut cancelled = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id")?;
            let state: String = row.try_get("state")?;
            let state = JobState::parse(&state).ok_or_else(|| JobError::Corrupt(state.clone()))?;
            // A running job keeps its lease's end: until then its attempt may still upload, so
            // the erasure waits for it (`active_of`, and the tenant sweep scope).
            sqlx::query("UPDATE airlock_jobs SET state = 'cancelled', finished_at = $2, fence = fence + 1, lease_owner = NULL WHERE id = $1")
                .bind(&id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            audit(
                &mut tx,
                &id,
                tenant,
                now,
                Some(state.as_str()),
                "cancelled",
                Some("erasure request"),
            )
            .await?;
            cancelled.push((uuid(&id)?, state));
        }
        tx.commit().await?;
        Ok(cancelled)
    }

    async fn active_of(&self, tenant: &str, now: i64) -> Result<i64, JobError> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM airlock_jobs WHERE tenant = $1
             AND (state IN ('queued', 'running') OR (state = 'cancelled' AND lease_expires_at >= $2))",
        )
        .bind(tenant)
        .bind(now)
        .fetch_one(&mut *self.reader().await?)
        .await?
        .try_get("n")?)
    }

    async fn audit(
        &self,
        id: Uuid,
    ) -> Result<Vec<(Option<String>, String, Option<String>)>, JobError> {
        let rows = sqlx::query(
            "SELECT from_state, to_state, detail FROM airlock_audit WHERE job_id = $1 ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("from_state")?,
                    r.try_get("to_state")?,
                    r.try_get("detail")?,
                ))
            })
            .collect()
    }
}
