//! The hot-read cache of `airlock serve` on PostgreSQL: authenticated keys, and job rows for
//! 100 ms, so a client polling `GET /v1/jobs/{id}` costs no database round trip.
//!
//! **Revocation stays strict.** A key's revocation is announced on the channel `airlock_keys`
//! (a trigger, migration 6) and drops the key here. Every 100 ms this server also announces a
//! heartbeat on `airlock_hb` and listens for its own; PostgreSQL delivers notifications in commit
//! order, so once a heartbeat sent at time T has come back, every revocation committed before T
//! has been applied. The cache answers only while the last heartbeat back was sent less than
//! [`FRESHNESS`] ago; otherwise (the listener is down or slow) every request goes to the
//! database. `airlock key revoke` returns only [`REVOKE_SETTLE`] after its commit, longer than
//! that bound, so the key is refused on the next request on every server.
//!
//! **Jobs are cached per (tenant, id)** for [`JOB_TTL`], filled only by the owner's requests: a
//! request for another tenant's job never hits it and costs the same database read as a random
//! id. This server's own writes (DELETE, completing an upload) drop the entry at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::jobs::JobRecord;
use crate::tenants::Caller;

/// How old the last returned heartbeat may be for the cache to answer.
pub const FRESHNESS: Duration = Duration::from_millis(500);
/// How long `airlock key revoke` waits after its commit (longer than [`FRESHNESS`] plus one
/// heartbeat).
pub const REVOKE_SETTLE: Duration = Duration::from_millis(1000);
/// How long a job row is served from the cache.
pub const JOB_TTL: Duration = Duration::from_millis(100);
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Entries at most, per map; past it the map is cleared (a cache, not a store).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug)]
struct CachedKey {
    caller: Caller,
    /// When this server last wrote the key's `last_used_at`.
    last_used_written: Instant,
}

/// The cache and its listener's state.
#[derive(Debug)]
pub struct HotCache {
    origin: Instant,
    instance: Uuid,
    /// Ms since `origin` until which the cache may answer (0: not yet, or not now).
    usable_until: AtomicU64,
    /// Bumped by every invalidation, so a key read from the database before a revocation was
    /// applied is never cached after it.
    generation: AtomicU64,
    keys: Mutex<HashMap<String, CachedKey>>,
    /// (read start, row) per (tenant, id).
    jobs: Mutex<HashMap<(String, Uuid), (Instant, JobRecord)>>,
    /// When this server last changed each job: a read that began before it is not cached.
    changed: Mutex<HashMap<(String, Uuid), Instant>>,
}

impl HotCache {
    fn new() -> Self {
        HotCache {
            origin: Instant::now(),
            instance: Uuid::new_v4(),
            usable_until: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            keys: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            changed: Mutex::new(HashMap::new()),
        }
    }

    fn ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Start the listener and the heartbeat for the PostgreSQL database at `url`; `pool` sends
    /// the heartbeats. Must run inside a tokio runtime.
    pub fn start(url: &str) -> Arc<Self> {
        let me = Arc::new(HotCache::new());
        let listener = me.clone();
        let listen_url = url.to_string();
        tokio::spawn(async move { listener.listen(&listen_url).await });
        let beat = me.clone();
        let url = url.to_string();
        tokio::spawn(async move {
            // A connection of its own: a pool saturated by requests must not starve the
            // heartbeat (and so turn the cache off exactly under load).
            let mut conn: Option<sqlx::PgConnection> = None;
            let mut every = tokio::time::interval(HEARTBEAT);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if conn.is_none() {
                    use sqlx::Connection;
                    // Named, so an operator (or a test) can tell it apart in pg_stat_activity.
                    let name = format!("airlock cache heartbeat {}", std::process::id());
                    conn = match url.parse::<sqlx::postgres::PgConnectOptions>() {
                        Ok(o) => sqlx::PgConnection::connect_with(&o.application_name(&name))
                            .await
                            .ok(),
                        Err(_) => None,
                    };
                }
                let Some(c) = conn.as_mut() else { continue };
                let payload = format!("{}:{}", beat.instance, beat.ms());
                if let Err(e) = sqlx::query("SELECT pg_notify('airlock_hb', $1)")
                    .bind(payload)
                    .execute(&mut *c)
                    .await
                {
                    tracing::debug!(error = %e, "cache heartbeat failed");
                    conn = None;
                }
            }
        });
        me
    }

    async fn listen(self: Arc<Self>, url: &str) {
        use sqlx::postgres::PgListener;
        loop {
            let connected = async {
                // Named, as the heartbeat's session is.
                let options = url
                    .parse::<sqlx::postgres::PgConnectOptions>()?
                    .application_name(&format!("airlock cache listener {}", std::process::id()));
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_lazy_with(options);
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen_all(["airlock_keys", "airlock_hb"]).await?;
                Ok::<_, sqlx::Error>(l)
            }
            .await;
            let mut l = match connected {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cache listener cannot connect; serving from the database");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Whatever was missed while disconnected: start over.
            self.invalidate_all();
            // `recv` would reconnect silently and lose notifications: an error ends this
            // connection, and everything cached with it. So does silence: heartbeats come every
            // 100 ms, so 2 s without any notification means a stalled connection.
            while let Ok(Ok(Some(n))) =
                tokio::time::timeout(Duration::from_secs(2), l.try_recv()).await
            {
                self.on_notification(n.channel(), n.payload());
            }
            self.invalidate_all();
            tracing::warn!("cache listener lost its connection; reconnecting");
        }
    }

    fn on_notification(&self, channel: &str, payload: &str) {
        match channel {
            "airlock_hb" => {
                let Some((instance, sent)) = payload.split_once(':') else {
                    return;
                };
                if instance == self.instance.to_string() {
                    // A heartbeat from the future was not sent by this process.
                    if let Ok(sent) = sent.parse::<u64>() {
                        if sent <= self.ms() {
                            self.usable_until.fetch_max(
                                sent.saturating_add(FRESHNESS.as_millis() as u64),
                                Ordering::SeqCst,
                            );
                        }
                    }
                }
            }
            "airlock_keys" => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut keys) = self.keys.lock() {
                    keys.retain(|_, k| k.caller.key_id.to_string() != payload);
                }
            }
            _ => {}
        }
    }

    fn invalidate_all(&self) {
        self.usable_until.store(0, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut keys) = self.keys.lock() {
            keys.clear();
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.clear();
        }
    }

    /// Whether the cache may answer now.
    pub fn usable(&self) -> bool {
        self.ms() < self.usable_until.load(Ordering::SeqCst)
    }

    /// The invalidation generation, to read before a database lookup whose result is cached.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The caller of a cached key (by its SHA-256), and whether its last use should be written
    /// now (at most once a minute per server).
    pub fn key(&self, sha256: &str) -> Option<(Caller, bool)> {
        if !self.usable() {
            return None;
        }
        let mut keys = self.keys.lock().ok()?;
        let k = keys.get_mut(sha256)?;
        let due = k.last_used_written.elapsed() >= Duration::from_secs(60);
        if due {
            k.last_used_written = Instant::now();
        }
        Some((k.caller.clone(), due))
    }

    /// Cache a key read from the database, unless an invalidation came since `generation`.
    pub fn put_key(&self, sha256: &str, caller: &Caller, generation: u64) {
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        if self.generation() != generation || !self.usable() {
            return;
        }
        if keys.len() >= MAX_ENTRIES {
            keys.clear();
        }
        keys.insert(
            sha256.to_string(),
            CachedKey {
                caller: caller.clone(),
                last_used_written: Instant::now(),
            },
        );
    }

    /// The tenant's job, if read less than [`JOB_TTL`] ago.
    pub fn job(&self, tenant: &str, id: Uuid) -> Option<JobRecord> {
        if !self.usable() {
            return None;
        }
        let jobs = self.jobs.lock().ok()?;
        let (at, job) = jobs.get(&(tenant.to_string(), id))?;
        (at.elapsed() < JOB_TTL).then(|| job.clone())
    }

    /// Cache the tenant's own job, as read by a query that began at `read_at`: not when this
    /// server changed the job since, and its age counts from `read_at`.
    pub fn put_job(&self, job: &JobRecord, read_at: Instant) {
        if !self.usable() {
            return;
        }
        let key = (job.tenant.clone(), job.id);
        let changed = self.changed.lock().ok().and_then(|c| c.get(&key).copied());
        if changed.is_some_and(|c| c >= read_at) {
            return;
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            if jobs.len() >= MAX_ENTRIES {
                jobs.retain(|_, (at, _)| at.elapsed() < JOB_TTL);
                if jobs.len() >= MAX_ENTRIES {
                    jobs.clear();
                }
            }
            jobs.insert(key, (read_at, job.clone()));
        }
    }

    /// This server is changing the job: forget it, and refuse reads that began before now.
    pub fn forget_job(&self, tenant: &str, id: Uuid) {
        let key = (tenant.to_string(), id);
        if let Ok(mut changed) = self.changed.lock() {
            if changed.len() >= MAX_ENTRIES {
                changed.retain(|_, at| at.elapsed() < Duration::from_secs(10));
            }
            changed.insert(key.clone(), Instant::now());
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(&key);
        }
    }
}
