//! The tamper-evident audit trail.
//!
//! Every job state change, issued download link, key creation and revocation, webhook endpoint
//! change and purge (with its deletion receipt) is a record in its tenant's **hash chain**: the
//! record's body is canonical JSON (RFC 8785) naming the tenant, the time, the actor and
//! request, and the action; its hash is `SHA-256(previous hash || body)`, the first record's
//! previous hash 32 zero bytes, and its place in the chain (`seq`, from 1) is where the links
//! put it. Records
//! are written in the transaction of the change they describe, and triggers refuse UPDATE and
//! DELETE of them on both backends.
//!
//! Hashes alone cannot show that the tail was cut off or that a whole chain was rewritten:
//! [`checkpoint()`] signs each chain's head with the operator's Ed25519 key (every minute from
//! `supervise` and `serve`), and [`verify()`] checks every record and every checkpoint.

pub mod checkpoint;
pub mod verify;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};

use crate::jobs::JobError;

pub use checkpoint::{checkpoint, AuditKey};
pub use verify::{verify, Problem, Verified};

/// The previous hash of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action")]
pub enum Action {
    /// A job moved from one state to another (or was first queued: no `from`).
    #[serde(rename = "job.state")]
    JobState {
        job_id: String,
        from: Option<String>,
        to: String,
        detail: Option<String>,
    },
    /// A download link to one of a job's artifacts was issued.
    #[serde(rename = "link.issued")]
    LinkIssued {
        job_id: String,
        state: String,
        artifact: String,
    },
    #[serde(rename = "key.created")]
    KeyCreated { key_id: String },
    #[serde(rename = "key.revoked")]
    KeyRevoked { key_id: String },
    #[serde(rename = "webhook.added")]
    WebhookAdded {
        endpoint_id: String,
        events: Vec<String>,
    },
    #[serde(rename = "webhook.removed")]
    WebhookRemoved { endpoint_id: String },
    #[serde(rename = "webhook.rotated")]
    WebhookRotated { endpoint_id: String },
    /// A stored schema was added or replaced (its JSON's SHA-256; never the JSON).
    #[serde(rename = "schema.put")]
    SchemaPut {
        schema_id: String,
        sha256: String,
        default: bool,
    },
    #[serde(rename = "schema.deleted")]
    SchemaDeleted { schema_id: String },
    /// A job's files were erased; the deletion receipt is named and its body hashed here.
    #[serde(rename = "job.purged")]
    Purged {
        job_id: String,
        from: String,
        reason: String,
        receipt_id: String,
        receipt_sha256: String,
    },
}

impl Action {
    /// The job the record is about, if any.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Action::JobState { job_id, .. }
            | Action::LinkIssued { job_id, .. }
            | Action::Purged { job_id, .. } => Some(job_id),
            _ => None,
        }
    }

    /// The columns a job's history is read from (`from_state`, `to_state`, `detail`).
    pub(crate) fn columns(&self) -> (Option<String>, String, Option<String>) {
        match self {
            Action::JobState {
                from, to, detail, ..
            } => (from.clone(), to.clone(), detail.clone()),
            Action::LinkIssued {
                state, artifact, ..
            } => (
                Some(state.clone()),
                state.clone(),
                Some(format!("link issued: {artifact}")),
            ),
            Action::Purged { from, reason, .. } => {
                (Some(from.clone()), "purged".into(), Some(reason.clone()))
            }
            Action::KeyCreated { key_id } | Action::KeyRevoked { key_id } => {
                (None, self.name().into(), Some(key_id.clone()))
            }
            Action::WebhookAdded { endpoint_id, .. }
            | Action::WebhookRemoved { endpoint_id }
            | Action::WebhookRotated { endpoint_id } => {
                (None, self.name().into(), Some(endpoint_id.clone()))
            }
            Action::SchemaPut { schema_id, .. } | Action::SchemaDeleted { schema_id } => {
                (None, self.name().into(), Some(schema_id.clone()))
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Action::JobState { .. } => "job.state",
            Action::LinkIssued { .. } => "link.issued",
            Action::KeyCreated { .. } => "key.created",
            Action::KeyRevoked { .. } => "key.revoked",
            Action::WebhookAdded { .. } => "webhook.added",
            Action::WebhookRemoved { .. } => "webhook.removed",
            Action::WebhookRotated { .. } => "webhook.rotated",
            Action::SchemaPut { .. } => "schema.put",
            Action::SchemaDeleted { .. } => "schema.deleted",
            Action::Purged { .. } => "job.purged",
        }
    }
}

/// A record's body: what is hashed, canonicalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// The body's format version.
    pub v: u32,
    pub tenant: String,
    /// Milliseconds since the epoch, the database's clock.
    pub at: i64,
    /// `key:<id>` for an API request, `operator:<user>@<host>`, `supervisor:<host>:<pid>`,
    /// `serve:<host>:<pid>` or `sweeper:<host>:<pid>`.
    pub actor: String,
    pub request_id: Option<String>,
    #[serde(flatten)]
    pub action: Action,
}

impl Body {
    /// The RFC 8785 canonical form.
    pub fn canonical(&self) -> Result<String, JobError> {
        serde_json_canonicalizer::to_string(self).map_err(|e| JobError::Corrupt(e.to_string()))
    }
}

/// `SHA-256(previous hash || body)`, hex; `None` when `prev` is not a hex SHA-256.
pub fn chain_hash(prev: &str, body: &str) -> Option<String> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(prev, &mut raw).ok()?;
    let mut h = Sha256::new();
    h.update(raw);
    h.update(body.as_bytes());
    Some(hex::encode(h.finalize()))
}

/// Whether records are chained (always, except in a benchmark's reference run).
static CHAINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Benchmarks only: write audit records as schema version 7 did (the same row, with no seq,
/// body or hashes, and no head to lock), to measure what the chain costs. Never called by the
/// service.
#[doc(hidden)]
pub fn set_chained_for_benchmarks(on: bool) {
    CHAINED.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// One record to append: the time, tenant, actor and request are filled in by [`append`].
#[derive(Debug, Clone)]
pub struct Entry {
    pub tenant: String,
    pub at: i64,
    pub action: Action,
}

/// Append `entries` to their tenants' chains inside `tx`, in order. Each chain's head row is
/// locked until `tx` ends, so the appends of one tenant are serialized and those of different
/// tenants never wait on each other. A transaction that appends to several chains (a purge
/// batch, a reap) can meet another that takes the same heads in another order; PostgreSQL then
/// aborts one of them, which is retried like any failed transaction.
pub async fn append(tx: &mut Transaction<'_, Any>, entries: Vec<Entry>) -> Result<(), JobError> {
    let actor = crate::jobs::request::actor();
    let request = crate::jobs::request::current();
    if !CHAINED.load(std::sync::atomic::Ordering::Relaxed) {
        for e in entries {
            let (from, to, detail) = e.action.columns();
            sqlx::query("INSERT INTO airlock_audit (job_id, tenant, at, from_state, to_state, detail, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(e.action.job_id().unwrap_or("").to_string())
                .bind(&e.tenant)
                .bind(e.at)
                .bind(from)
                .bind(to)
                .bind(detail)
                .bind(request.clone())
                .execute(&mut **tx)
                .await?;
        }
        return Ok(());
    }
    let mut by_tenant: std::collections::BTreeMap<String, Vec<Entry>> = Default::default();
    for e in entries {
        by_tenant.entry(e.tenant.clone()).or_default().push(e);
    }
    let postgres = tx.backend_name() == "PostgreSQL";
    for (tenant, entries) in by_tenant {
        let bodies: Vec<String> = entries
            .iter()
            .map(|e| {
                Body {
                    v: 1,
                    tenant: tenant.clone(),
                    at: e.at,
                    actor: actor.clone(),
                    request_id: request.clone(),
                    action: e.action.clone(),
                }
                .canonical()
            })
            .collect::<Result<_, _>>()?;
        if postgres && entries.len() == 1 {
            // One round trip: advance the head (hashing there) and insert the record from it.
            let (from, to, detail) = entries[0].action.columns();
            let first = chain_hash(GENESIS, &bodies[0])
                .ok_or_else(|| JobError::Corrupt("genesis".into()))?;
            sqlx::query(
                "WITH h AS (
                   INSERT INTO airlock_audit_heads (tenant, seq, prev_hash, hash) VALUES ($1, 1, $2, $3)
                   ON CONFLICT (tenant) DO UPDATE SET seq = airlock_audit_heads.seq + 1,
                       prev_hash = airlock_audit_heads.hash,
                       hash = encode(sha256(decode(airlock_audit_heads.hash, 'hex') || convert_to($4, 'UTF8')), 'hex')
                   RETURNING seq, prev_hash, hash)
                 INSERT INTO airlock_audit (job_id, tenant, at, from_state, to_state, detail, request_id, seq, actor, body, prev_hash, hash)
                 SELECT $5, $1, $6, $7, $8, $9, $10, h.seq, $11, $4, h.prev_hash, h.hash FROM h",
            )
            .bind(&tenant)
            .bind(GENESIS)
            .bind(first)
            .bind(&bodies[0])
            .bind(entries[0].action.job_id().unwrap_or("").to_string())
            .bind(entries[0].at)
            .bind(from)
            .bind(to)
            .bind(detail)
            .bind(request.clone())
            .bind(&actor)
            .execute(&mut **tx)
            .await?;
            continue;
        }
        // Several records (a purge batch), or SQLite: lock the head, link here, write back.
        let head = sqlx::query(
            "INSERT INTO airlock_audit_heads (tenant, seq, prev_hash, hash) VALUES ($1, 0, $2, $2)
             ON CONFLICT (tenant) DO UPDATE SET seq = airlock_audit_heads.seq
             RETURNING seq, hash",
        )
        .bind(&tenant)
        .bind(GENESIS)
        .fetch_one(&mut **tx)
        .await?;
        let mut seq: i64 = head.try_get("seq")?;
        let mut prev: String = head.try_get("hash")?;
        let mut before = prev.clone();
        let linked: Vec<(&Entry, String, i64, String, String)> = entries
            .iter()
            .zip(bodies)
            .map(|(e, body)| {
                seq += 1;
                let hash = chain_hash(&prev, &body)
                    .ok_or_else(|| JobError::Corrupt(format!("{tenant}: bad chain head")))?;
                let row = (e, body, seq, prev.clone(), hash.clone());
                before = std::mem::replace(&mut prev, hash);
                Ok(row)
            })
            .collect::<Result<_, JobError>>()?;
        for chunk in linked.chunks(200) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 12;
                    let n: Vec<String> = (1..=12).map(|k| format!("${}", b + k)).collect();
                    format!("({})", n.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO airlock_audit (job_id, tenant, at, from_state, to_state, detail, request_id, seq, actor, body, prev_hash, hash) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (e, body, seq, prev, hash) in chunk {
                let (from, to, detail) = e.action.columns();
                q = q
                    .bind(e.action.job_id().unwrap_or("").to_string())
                    .bind(tenant.clone())
                    .bind(e.at)
                    .bind(from)
                    .bind(to)
                    .bind(detail)
                    .bind(request.clone())
                    .bind(*seq)
                    .bind(actor.clone())
                    .bind(body.clone())
                    .bind(prev.clone())
                    .bind(hash.clone());
            }
            q.execute(&mut **tx).await?;
        }
        sqlx::query(
            "UPDATE airlock_audit_heads SET seq = $2, prev_hash = $3, hash = $4 WHERE tenant = $1",
        )
        .bind(&tenant)
        .bind(seq)
        .bind(&before)
        .bind(&prev)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One record as exported (`airlock audit export`, `GET /v1/audit`): the body exactly as
/// hashed, and the hashes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Exported {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    /// The canonical JSON body, as hashed.
    pub body: String,
}

/// The tenant's records after `after` (seq), at most `limit`, in chain order.
pub async fn records(
    store: &crate::jobs::sql::SqlStore,
    tenant: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Exported>, JobError> {
    let rows = sqlx::query(
        "SELECT seq, prev_hash, hash, body FROM airlock_audit WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *store.reader().await?)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Exported {
                seq: r.try_get("seq")?,
                prev_hash: r.try_get("prev_hash")?,
                hash: r.try_get("hash")?,
                body: r.try_get("body")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_canonical_and_chained() {
        let body = Body {
            v: 1,
            tenant: "acme".into(),
            at: 1_700_000_000_000,
            actor: "operator:root@host".into(),
            request_id: None,
            action: Action::JobState {
                job_id: "j".into(),
                from: None,
                to: "queued".into(),
                detail: Some("é \"x\"".into()),
            },
        };
        let text = body.canonical().unwrap();
        // Keys sorted, no whitespace, non-ASCII kept as is.
        assert_eq!(
            text,
            r#"{"action":"job.state","actor":"operator:root@host","at":1700000000000,"detail":"é \"x\"","from":null,"job_id":"j","request_id":null,"tenant":"acme","to":"queued","v":1}"#
        );
        let back: Body = serde_json::from_str(&text).unwrap();
        assert_eq!(back, body);
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(text.as_bytes());
        assert_eq!(
            chain_hash(GENESIS, &text).unwrap(),
            hex::encode(h.finalize())
        );
        assert!(chain_hash("zz", &text).is_none());
    }
}
