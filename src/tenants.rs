//! Tenants and their API keys (DESIGN §10). A key is `al_live_` plus 43 base62 characters (256
//! random bits), shown once when it is created; only its SHA-256 is stored, with its first 12
//! characters as a prefix to tell keys apart. A key belongs to exactly one tenant: the API takes
//! the tenant from the key, never from the request.

use std::fmt;

use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::jobs::sql::SqlStore;
use crate::jobs::JobError;

pub const KEY_PREFIX: &str = "al_live_";
const KEY_CHARS: usize = 43;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of a key kept for listings: `al_live_` and four more.
const SHOWN: usize = 12;

/// A secret API key. Never printed by `Debug` or `Display`; [`ApiKey::expose`] is for the one
/// time it is shown to its owner.
pub struct ApiKey(String);

impl ApiKey {
    fn generate() -> Self {
        let mut rng = rand::rng();
        let body: String = (0..KEY_CHARS)
            .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
            .collect();
        ApiKey(format!("{KEY_PREFIX}{body}"))
    }

    /// A key as presented by a client; `None` when it cannot be one of ours.
    pub fn parse(presented: &str) -> Option<Self> {
        let body = presented.strip_prefix(KEY_PREFIX)?;
        (body.len() == KEY_CHARS && body.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| ApiKey(presented.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", &self.0[..SHOWN.min(self.0.len())])
    }
}

/// What `key list` shows of a key: never the key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub prefix: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// A direct-to-bucket upload: what the tenant promised to put, and where.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Also the id of the job it becomes.
    pub id: Uuid,
    pub tenant: String,
    pub object_key: String,
    pub bytes: u64,
    pub sha256_b64: String,
    pub file_name: String,
    pub plan: String,
    pub created_at: i64,
    /// The upload link's end (ms).
    pub expires_at: i64,
    pub completed_at: Option<i64>,
}

/// The caller a key identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Uuid,
    pub tenant: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant {0:?} already exists")]
    Exists(String),
    #[error("no tenant {0:?}: create it with `airlock tenant create`")]
    NoTenant(String),
    #[error("no key {0}")]
    NoKey(Uuid),
    #[error(transparent)]
    Store(#[from] JobError),
}

impl From<sqlx::Error> for TenantError {
    fn from(e: sqlx::Error) -> Self {
        TenantError::Store(JobError::Db(e))
    }
}

/// A tenant: its name and plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Tenant {
    pub tenant: String,
    pub plan: String,
    pub created_at_ms: i64,
}

impl SqlStore {
    pub async fn create_tenant(
        &self,
        tenant: &str,
        plan: &str,
        now: i64,
    ) -> Result<(), TenantError> {
        // A tenant that submitted through the CLI before registration has a row without a
        // creation time: registering it keeps its queue position.
        let mut tx = self.begin().await?;
        let existing = sqlx::query("SELECT created_at FROM airlock_tenants WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
        match existing {
            Some(row) if row.try_get::<Option<i64>, _>("created_at")?.is_some() => {
                return Err(TenantError::Exists(tenant.to_string()));
            }
            Some(_) => {
                sqlx::query(
                    "UPDATE airlock_tenants SET plan = $2, created_at = $3 WHERE tenant = $1",
                )
                .bind(tenant)
                .bind(plan)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO airlock_tenants (tenant, plan, created_at) VALUES ($1, $2, $3)",
                )
                .bind(tenant)
                .bind(plan)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => {
                        TenantError::Exists(tenant.to_string())
                    }
                    e => e.into(),
                })?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// A registered tenant.
    pub async fn tenant(&self, tenant: &str) -> Result<Option<Tenant>, TenantError> {
        let row = sqlx::query(
            "SELECT tenant, plan, created_at FROM airlock_tenants WHERE tenant = $1 AND created_at IS NOT NULL",
        )
        .bind(tenant)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        row.map(|r| {
            Ok(Tenant {
                tenant: r.try_get("tenant")?,
                plan: r.try_get::<Option<String>, _>("plan")?.unwrap_or_default(),
                created_at_ms: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// A new key for a registered tenant. The key is returned once and never stored.
    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        now: i64,
    ) -> Result<(KeyInfo, ApiKey), TenantError> {
        if self.tenant(tenant).await?.is_none() {
            return Err(TenantError::NoTenant(tenant.to_string()));
        }
        let key = ApiKey::generate();
        let info = KeyInfo {
            id: Uuid::new_v4(),
            tenant: tenant.to_string(),
            name: name.to_string(),
            prefix: key.expose()[..SHOWN].to_string(),
            created_at_ms: now,
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO airlock_api_keys (id, tenant, name, prefix, sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(info.id.to_string())
        .bind(tenant)
        .bind(name)
        .bind(&info.prefix)
        .bind(key.sha256())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        crate::audit::append(
            &mut tx,
            vec![crate::audit::Entry {
                tenant: tenant.to_string(),
                at: now,
                action: crate::audit::Action::KeyCreated {
                    key_id: info.id.to_string(),
                },
            }],
        )
        .await?;
        tx.commit().await?;
        Ok((info, key))
    }

    pub async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyInfo>, TenantError> {
        let rows = sqlx::query(
            "SELECT id, tenant, name, prefix, created_at, last_used_at, revoked_at FROM airlock_api_keys WHERE tenant = $1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                Ok(KeyInfo {
                    id: Uuid::parse_str(&id)
                        .map_err(|e| JobError::Corrupt(format!("key id {id:?}: {e}")))?,
                    tenant: r.try_get("tenant")?,
                    name: r.try_get("name")?,
                    prefix: r.try_get("prefix")?,
                    created_at_ms: r.try_get("created_at")?,
                    last_used_at_ms: r.try_get("last_used_at")?,
                    revoked_at_ms: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// Revoke a key; the next request with it is refused. Revoking twice is not an error.
    pub async fn revoke_key(&self, id: Uuid, now: i64) -> Result<KeyInfo, TenantError> {
        let mut tx = self.begin().await?;
        let Some(row) =
            sqlx::query("SELECT tenant, revoked_at FROM airlock_api_keys WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Err(TenantError::NoKey(id));
        };
        let tenant: String = row.try_get("tenant")?;
        // Only the first revocation changes anything, and only it is recorded.
        let n = sqlx::query(
            "UPDATE airlock_api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            crate::audit::append(
                &mut tx,
                vec![crate::audit::Entry {
                    tenant: tenant.clone(),
                    at: now,
                    action: crate::audit::Action::KeyRevoked {
                        key_id: id.to_string(),
                    },
                }],
            )
            .await?;
        }
        tx.commit().await?;
        self.list_keys(&tenant)
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or(TenantError::NoKey(id))
    }

    /// The caller a presented key identifies: `None` for an unknown or revoked key. The stored
    /// hash is compared in constant time. The last use is recorded at most once a minute (so
    /// requests do not each cost a write), with the database's time, taken only for a known key.
    ///
    /// The lookup runs as the process's role (on PostgreSQL `airlock_service`), never inside a
    /// tenant scope: it is how a request learns its tenant. It reads the keys table only.
    pub async fn authenticate(&self, key: &ApiKey) -> Result<Option<Caller>, TenantError> {
        let hash = key.sha256();
        let sql = format!(
            "SELECT id AS key_id, tenant AS key_tenant, sha256 AS key_sha256, \
             revoked_at AS key_revoked_at, last_used_at AS key_last_used_at, {} AS key_now \
             FROM airlock_api_keys WHERE sha256 = $1",
            self.dialect().now_expr,
        );
        let Some(row) = sqlx::query(&sql)
            .bind(&hash)
            .fetch_optional(self.pool())
            .await?
        else {
            return Ok(None);
        };
        let stored: String = row.try_get("key_sha256")?;
        let revoked: Option<i64> = row.try_get("key_revoked_at")?;
        if !bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) || revoked.is_some() {
            return Ok(None);
        }
        let id: String = row.try_get("key_id")?;
        let last: Option<i64> = row.try_get("key_last_used_at")?;
        let now: i64 = row.try_get("key_now")?;
        if last.is_none_or(|l| now - l >= 60_000) {
            sqlx::query("UPDATE airlock_api_keys SET last_used_at = $2 WHERE id = $1")
                .bind(&id)
                .bind(now)
                .execute(self.pool())
                .await?;
        }
        Ok(Some(Caller {
            key_id: Uuid::parse_str(&id)
                .map_err(|e| JobError::Corrupt(format!("key id {id:?}: {e}")))?,
            tenant: row.try_get("key_tenant")?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_never_shown_by_debug() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), KEY_PREFIX.len() + KEY_CHARS);
        assert!(ApiKey::parse(a.expose()).is_some());
        let shown = format!("{a:?}");
        assert!(!shown.contains(&a.expose()[SHOWN..]), "{shown}");
        for bad in [
            "",
            "al_live_",
            "al_test_x",
            &a.expose()[..50],
            &format!("{}!", &a.expose()[..50]),
        ] {
            assert!(ApiKey::parse(bad).is_none(), "{bad}");
        }
    }
}

/// The job-read filter on the tenant parameter `param`. With the `test-seam` feature and
/// [`crate::hostile::DROP_TENANT_FILTER_ENV`] set, a condition that holds for every row instead
/// (the parameter stays, so the statement binds the same values).
fn tenant_is(param: &str) -> String {
    #[cfg(feature = "test-seam")]
    if crate::hostile::tenant_filter_dropped() {
        return format!("CAST({param} AS TEXT) IS NOT NULL");
    }
    format!("tenant = {param}")
}

/// Where a listing continues: after the job created at `created_at` with id `id` (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients: `<created_at>.<id>` in hex.
    pub fn encode(&self) -> String {
        hex::encode(format!("{}.{}", self.created_at, self.id))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let text = String::from_utf8(hex::decode(s).ok()?).ok()?;
        let (at, id) = text.split_once('.')?;
        Some(Cursor {
            created_at: at.parse().ok()?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

impl SqlStore {
    /// Record in the job's audit trail that a download link was issued (no state change).
    pub async fn record_link(
        &self,
        job: Uuid,
        tenant: &str,
        state: crate::jobs::JobState,
        artifact: crate::storage::Artifact,
        now: i64,
    ) -> Result<(), JobError> {
        let mut tx = self.begin().await?;
        crate::audit::append(
            &mut tx,
            vec![crate::audit::Entry {
                tenant: tenant.to_string(),
                at: now,
                action: crate::audit::Action::LinkIssued {
                    job_id: job.to_string(),
                    state: state.as_str().to_string(),
                    artifact: artifact.to_string(),
                },
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The tenant's job `id`; another tenant's reads as none.
    pub async fn job_of(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<crate::jobs::JobRecord>, JobError> {
        let sql = format!(
            "SELECT * FROM airlock_jobs WHERE id = $1 AND {}",
            tenant_is("$2")
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.as_ref().map(crate::jobs::sql::record).transpose()
    }

    /// The database's clock (ms).
    pub async fn now_ms(&self) -> Result<i64, JobError> {
        crate::jobs::JobStore::now(self).await
    }

    /// Record a key's use now (the database's clock).
    pub async fn touch_key(&self, id: Uuid) -> Result<(), JobError> {
        let sql = format!(
            "UPDATE airlock_api_keys SET last_used_at = {} WHERE id = $1",
            self.dialect().now_expr
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Record an upload link's promise.
    pub async fn create_upload(&self, u: &Upload) -> Result<(), JobError> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO airlock_uploads (id, tenant, object_key, bytes, sha256, file_name, plan, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(u.id.to_string())
            .bind(&u.tenant)
            .bind(&u.object_key)
            .bind(u.bytes as i64)
            .bind(&u.sha256_b64)
            .bind(&u.file_name)
            .bind(&u.plan)
            .bind(u.created_at)
            .bind(u.expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// An upload by id (any tenant's: the caller checks the owner).
    pub async fn upload(&self, id: Uuid) -> Result<Option<Upload>, JobError> {
        let row = sqlx::query("SELECT * FROM airlock_uploads WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(|r| {
            let id: String = r.try_get("id")?;
            Ok(Upload {
                id: Uuid::parse_str(&id).map_err(|e| JobError::Corrupt(e.to_string()))?,
                tenant: r.try_get("tenant")?,
                object_key: r.try_get("object_key")?,
                bytes: r.try_get::<i64, _>("bytes")?.max(0) as u64,
                sha256_b64: r.try_get("sha256")?,
                file_name: r.try_get("file_name")?,
                plan: r.try_get("plan")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                completed_at: r.try_get("completed_at")?,
            })
        })
        .transpose()
    }

    /// Mark an upload completed (its job exists).
    pub async fn complete_upload(&self, id: Uuid, now: i64) -> Result<(), JobError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE airlock_uploads SET completed_at = $1 WHERE id = $2 AND completed_at IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Each tenant with queued jobs, and its oldest queued job's creation time (ms).
    pub async fn oldest_queued(&self) -> Result<Vec<(String, i64)>, JobError> {
        let rows = sqlx::query(
            "SELECT tenant, MIN(created_at) AS oldest FROM airlock_jobs WHERE state = 'queued' GROUP BY tenant ORDER BY tenant",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant")?, r.try_get("oldest")?)))
            .collect()
    }

    /// One tenant's jobs, newest first, `limit` at a time after `after`, optionally in one state.
    pub async fn jobs_of(
        &self,
        tenant: &str,
        state: Option<crate::jobs::JobState>,
        limit: i64,
        after: Option<&Cursor>,
    ) -> Result<Vec<crate::jobs::JobRecord>, JobError> {
        let mut sql = format!("SELECT * FROM airlock_jobs WHERE {}", tenant_is("$1"));
        let mut n = 2;
        if state.is_some() {
            sql.push_str(&format!(" AND state = ${n}"));
            n += 1;
        }
        if after.is_some() {
            sql.push_str(&format!(
                " AND (created_at < ${n} OR (created_at = ${n} AND id < ${}))",
                n + 1
            ));
            n += 2;
        }
        sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${n}"));
        let mut q = sqlx::query(&sql).bind(tenant);
        if let Some(st) = state {
            q = q.bind(st.as_str());
        }
        if let Some(c) = after {
            q = q.bind(c.created_at).bind(c.id.to_string());
        }
        let rows = q.bind(limit).fetch_all(&mut *self.reader().await?).await?;
        rows.iter().map(crate::jobs::sql::record).collect()
    }
}
