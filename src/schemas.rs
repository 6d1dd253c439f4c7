//! A tenant's stored schemas: named Table Schemas, checked when stored (a bad one is the
//! caller's error, with a JSON pointer), one of which may be the tenant's default. A job takes a
//! copy of its schema's JSON when it is submitted ([`Choice::resolve`]), so a schema changed or
//! deleted later never changes a job already queued.
//!
//! Every change (`schema.put`, `schema.deleted`) is a record in the tenant's audit chain,
//! written in the change's transaction. On PostgreSQL the table is under row-level security
//! like every other tenant table.

use sha2::Digest;
use sqlx::Row;

use crate::jobs::sql::SqlStore;
use crate::jobs::JobError;
use crate::schema::JobSchema;

/// The word that asks for no schema at all, even when the tenant has a default.
pub const NONE: &str = "none";

/// A schema's id: 1-64 of `A-Z a-z 0-9 - _ .`, starting with a letter or digit, not `none`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id != NONE;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a schema id: use 1-64 characters of A-Z a-z 0-9 - _ ., starting with a letter or digit (not {NONE:?})"
        ))
    }
}

/// A stored schema as listed: never its body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StoredSchema {
    pub id: String,
    /// SHA-256 of the stored JSON, hex.
    pub sha256: String,
    /// Jobs submitted without a schema of their own use this one.
    pub default: bool,
    /// The number of fields.
    pub fields: usize,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A stored schema with its JSON.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SchemaWithBody {
    #[serde(flatten)]
    pub meta: StoredSchema,
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

/// The schema a job runs under, as the job row keeps it: the stored schema's id (none for a
/// schema given with the job) and the JSON itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSchemaCopy {
    pub id: Option<String>,
    pub body: String,
}

/// What a submission asks for.
#[derive(Debug, Clone, Default)]
pub enum Choice {
    /// The tenant's default schema, if it has one.
    #[default]
    Default,
    /// No schema, even when the tenant has a default.
    Off,
    /// One of the tenant's stored schemas.
    Stored(String),
    /// A schema given with the job (already checked).
    Inline(JobSchema),
}

impl Choice {
    /// From a `schema=` parameter: `none`, or a stored schema's id; absent is the default.
    pub fn from_param(param: Option<&str>) -> Result<Choice, String> {
        match param {
            None | Some("") => Ok(Choice::Default),
            Some(NONE) => Ok(Choice::Off),
            Some(id) => {
                check_id(id)?;
                Ok(Choice::Stored(id.to_string()))
            }
        }
    }

    /// The copy the job keeps. `Err(Missing)` names a stored schema the tenant does not have.
    pub async fn resolve(
        &self,
        store: &SqlStore,
        tenant: &str,
    ) -> Result<Option<JobSchemaCopy>, ResolveError> {
        match self {
            Choice::Off => Ok(None),
            Choice::Inline(s) => Ok(Some(JobSchemaCopy {
                id: None,
                body: s.json.to_string(),
            })),
            Choice::Stored(id) => match store.schema(tenant, id).await? {
                Some((meta, body)) => Ok(Some(JobSchemaCopy {
                    id: Some(meta.id),
                    body,
                })),
                None => Err(ResolveError::Missing(id.clone())),
            },
            Choice::Default => {
                Ok(store
                    .default_schema(tenant)
                    .await?
                    .map(|(meta, body)| JobSchemaCopy {
                        id: Some(meta.id),
                        body,
                    }))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no schema {0:?}: `airlock schema list` (or GET /v1/schemas) shows the stored ones")]
    Missing(String),
    #[error(transparent)]
    Store(#[from] JobError),
}

fn stored(r: &sqlx::any::AnyRow) -> Result<(StoredSchema, String), JobError> {
    let body: String = r.try_get("body")?;
    let fields = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("fields").and_then(|f| f.as_array()).map(Vec::len))
        .unwrap_or(0);
    Ok((
        StoredSchema {
            id: r.try_get("id")?,
            sha256: r.try_get("sha256")?,
            default: r.try_get::<i64, _>("is_default")? != 0,
            fields,
            created_at_ms: r.try_get("created_at")?,
            updated_at_ms: r.try_get("updated_at")?,
        },
        body,
    ))
}

async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    at: i64,
    action: crate::audit::Action,
) -> Result<(), JobError> {
    crate::audit::append(
        tx,
        vec![crate::audit::Entry {
            tenant: tenant.to_string(),
            at,
            action,
        }],
    )
    .await
}

impl SqlStore {
    /// Store `schema` as the tenant's `id`, replacing one of that id; with `default`, it becomes
    /// the tenant's default (the previous default stays stored, no longer the default). Returns
    /// the stored schema and whether it is new.
    pub async fn put_schema(
        &self,
        tenant: &str,
        id: &str,
        schema: &JobSchema,
        default: bool,
    ) -> Result<(StoredSchema, bool), JobError> {
        let now = crate::jobs::JobStore::now(self).await?;
        let body = schema.json.to_string();
        let sha256 = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        let mut tx = self.begin().await?;
        if default {
            sqlx::query(
                "UPDATE airlock_schemas SET is_default = 0 WHERE tenant = $1 AND id <> $2 AND is_default = 1",
            )
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let existed =
            sqlx::query("SELECT 1 AS one FROM airlock_schemas WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        sqlx::query(
            "INSERT INTO airlock_schemas (tenant, id, body, sha256, is_default, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (tenant, id) DO UPDATE SET body = excluded.body, sha256 = excluded.sha256,
                 is_default = excluded.is_default, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(id)
        .bind(&body)
        .bind(&sha256)
        .bind(i64::from(default))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        record(
            &mut tx,
            tenant,
            now,
            crate::audit::Action::SchemaPut {
                schema_id: id.to_string(),
                sha256,
                default,
            },
        )
        .await?;
        tx.commit().await?;
        let (meta, _) = self
            .schema(tenant, id)
            .await?
            .ok_or_else(|| JobError::Corrupt("the stored schema is not readable".into()))?;
        Ok((meta, !existed))
    }

    /// The tenant's schema `id` and its JSON (another tenant's reads as none).
    pub async fn schema(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(StoredSchema, String)>, JobError> {
        let row = sqlx::query("SELECT * FROM airlock_schemas WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.as_ref().map(stored).transpose()
    }

    /// The tenant's default schema, if it has one.
    pub async fn default_schema(
        &self,
        tenant: &str,
    ) -> Result<Option<(StoredSchema, String)>, JobError> {
        let row = sqlx::query("SELECT * FROM airlock_schemas WHERE tenant = $1 AND is_default = 1")
            .bind(tenant)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.as_ref().map(stored).transpose()
    }

    pub async fn schemas(&self, tenant: &str) -> Result<Vec<StoredSchema>, JobError> {
        let rows = sqlx::query("SELECT * FROM airlock_schemas WHERE tenant = $1 ORDER BY id")
            .bind(tenant)
            .fetch_all(&mut *self.reader().await?)
            .await?;
        rows.iter().map(|r| stored(r).map(|(m, _)| m)).collect()
    }

    /// Delete the tenant's schema `id`; false when there is none. Jobs already submitted keep
    /// their copy.
    pub async fn delete_schema(&self, tenant: &str, id: &str) -> Result<bool, JobError> {
        let now = crate::jobs::JobStore::now(self).await?;
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM airlock_schemas WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            record(
                &mut tx,
                tenant,
                now,
                crate::audit::Action::SchemaDeleted {
                    schema_id: id.to_string(),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }
}
