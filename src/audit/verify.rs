//! `airlock audit verify`: recompute every chain and check it against its signed checkpoints.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use super::checkpoint::{CheckpointBody, PublicKey, CHECKPOINT_TYPE};
use std::borrow::Cow;

use sha2::{Digest, Sha256};

use super::GENESIS;
use crate::jobs::sql::SqlStore;
use crate::jobs::JobError;

/// Something wrong with a chain, and where.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub tenant: String,
    /// The record it concerns, when it is one.
    pub seq: Option<i64>,
    pub what: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub chains: usize,
    pub records: u64,
    /// Records written before the chain existed (schema version 8): in no chain.
    pub unchained: u64,
    pub checkpoints: usize,
    /// Whether checkpoint signatures were checked (a public key was given).
    pub checkpoints_checked: bool,
    pub problems: Vec<Problem>,
}

impl Verified {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

const PAGE: i64 = 20_000;

/// The fields of a record's body that its columns repeat, read without building its
/// [`super::Action`] (whose flattened, tagged form serde must buffer: a third of verify's time).
#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    tenant: Cow<'a, str>,
    at: i64,
    #[serde(borrow)]
    actor: Cow<'a, str>,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow, default)]
    job_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    detail: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    artifact: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    key_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    endpoint_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    schema_id: Option<Cow<'a, str>>,
}

/// `from_state`, `to_state` and `detail` as a body says they must be.
type Columns<'a> = (Option<&'a str>, &'a str, Option<Cow<'a, str>>);

impl Fields<'_> {
    /// What `from_state`, `to_state` and `detail` must hold, as [`super::Action`] writes them
    /// (a unit test holds the two to each other); `None` for an unknown action.
    fn columns(&self) -> Option<Columns<'_>> {
        Some(match &*self.action {
            "job.state" => (
                self.from.as_deref(),
                self.to.as_deref()?,
                borrowed(&self.detail),
            ),
            "link.issued" => (
                self.state.as_deref(),
                self.state.as_deref()?,
                Some(Cow::Owned(format!(
                    "link issued: {}",
                    self.artifact.as_deref()?
                ))),
            ),
            "job.purged" => (self.from.as_deref(), "purged", borrowed(&self.reason)),
            "key.created" | "key.revoked" => (None, &*self.action, borrowed(&self.key_id)),
            "webhook.added" | "webhook.removed" | "webhook.rotated" => {
                (None, &*self.action, borrowed(&self.endpoint_id))
            }
            "schema.put" | "schema.deleted" => (None, &*self.action, borrowed(&self.schema_id)),
            _ => return None,
        })
    }
}

fn borrowed<'a>(c: &'a Option<Cow<'_, str>>) -> Option<Cow<'a, str>> {
    c.as_deref().map(Cow::Borrowed)
}

/// A page of records, from whichever driver read it.
enum Page {
    Any(Vec<sqlx::any::AnyRow>),
    Native(Vec<sqlx::postgres::PgRow>),
}

impl Page {
    fn records(&self) -> Result<Vec<Rec<'_>>, sqlx::Error> {
        match self {
            Page::Any(rows) => rows.iter().map(Rec::of).collect(),
            Page::Native(rows) => rows.iter().map(Rec::of).collect(),
        }
    }
}

/// One record's columns, borrowed from its row.
#[derive(Clone, Copy)]
struct Rec<'r> {
    seq: i64,
    job: &'r str,
    at: i64,
    actor: Option<&'r str>,
    request: Option<&'r str>,
    from: Option<&'r str>,
    to: &'r str,
    detail: Option<&'r str>,
    body: Option<&'r str>,
    prev_hash: Option<&'r str>,
    hash: Option<&'r str>,
}

impl<'r> Rec<'r> {
    /// By position, as the page query selects them.
    fn of<R: Row>(r: &'r R) -> Result<Self, sqlx::Error>
    where
        usize: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Rec {
            seq: r.try_get(0)?,
            job: r.try_get(1)?,
            at: r.try_get(2)?,
            actor: r.try_get(3)?,
            request: r.try_get(4)?,
            from: r.try_get(5)?,
            to: r.try_get(6)?,
            detail: r.try_get(7)?,
            body: r.try_get(8)?,
            prev_hash: r.try_get(9)?,
            hash: r.try_get(10)?,
        })
    }
}

/// A hash column as its 32 bytes (`None` when it is not 64 hex digits).
fn raw(hex_hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).ok()?;
    Some(out)
}

/// Verify the chains of `tenant` (every tenant when `None`). Without `key`, checkpoints are
/// still compared with the chains but their signatures are not checked.
pub async fn verify(
    store: &SqlStore,
    tenant: Option<&str>,
    key: Option<&PublicKey>,
) -> Result<Verified, JobError> {
    let tenants: Vec<String> = match tenant {
        Some(t) => vec![t.to_string()],
        None => sqlx::query(
            "SELECT tenant FROM airlock_audit_heads
             UNION SELECT DISTINCT tenant FROM airlock_audit WHERE seq IS NOT NULL
             UNION SELECT DISTINCT tenant FROM airlock_audit_checkpoints
             ORDER BY 1",
        )
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?,
    };
    let unchained: i64 = match tenant {
        Some(t) => {
            sqlx::query("SELECT COUNT(*) FROM airlock_audit WHERE seq IS NULL AND tenant = $1")
                .bind(t)
                .fetch_one(store.pool())
                .await?
                .try_get(0)?
        }
        None => sqlx::query("SELECT COUNT(*) FROM airlock_audit WHERE seq IS NULL")
            .fetch_one(store.pool())
            .await?
            .try_get(0)?,
    };
    let mut out = Verified {
        chains: 0,
        records: 0,
        unchained: unchained as u64,
        checkpoints: 0,
        checkpoints_checked: key.is_some(),
        problems: Vec::new(),
    };
    // Chains are independent: several are checked at once (a chain itself is sequential),
    // and their findings are merged in tenant order.
    let width = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let mut running = std::collections::VecDeque::new();
    let mut tenants = tenants.into_iter();
    loop {
        while running.len() < width {
            let Some(t) = tenants.next() else { break };
            let (store, key) = (store.clone(), key.copied());
            running.push_back(tokio::spawn(async move {
                let mut part = Verified {
                    chains: 1,
                    records: 0,
                    unchained: 0,
                    checkpoints: 0,
                    checkpoints_checked: key.is_some(),
                    problems: Vec::new(),
                };
                verify_chain(&store, &t, key.as_ref(), &mut part)
                    .await
                    .map(|()| part)
            }));
        }
        let Some(next) = running.pop_front() else {
            break;
        };
        let part = next
            .await
            .map_err(|e| JobError::Corrupt(format!("verifying a chain: {e}")))??;
        out.chains += part.chains;
        out.records += part.records;
        out.checkpoints += part.checkpoints;
        out.problems.extend(part.problems);
    }
    Ok(out)
}

async fn verify_chain(
    store: &SqlStore,
    tenant: &str,
    key: Option<&PublicKey>,
    out: &mut Verified,
) -> Result<(), JobError> {
    let problem = |out: &mut Verified, seq: Option<i64>, what: String| {
        out.problems.push(Problem {
            tenant: tenant.to_string(),
            seq,
            what,
        })
    };
    // The checkpoints: signed (when there is a key), this tenant's, and what they state.
    let mut signed: Vec<CheckpointBody> = Vec::new();
    let rows = sqlx::query(
        "SELECT seq, body, signature FROM airlock_audit_checkpoints WHERE tenant = $1 ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(store.pool())
    .await?;
    for (i, r) in rows.iter().enumerate() {
        let c = super::checkpoint::Signed {
            checkpoint: r.try_get("body")?,
            signature: r.try_get("signature")?,
        };
        let column: i64 = r.try_get("seq")?;
        out.checkpoints += 1;
        let n = i + 1;
        if let Some(k) = key {
            if !k.verifies(&c.checkpoint, &c.signature) {
                problem(
                    out,
                    None,
                    format!("checkpoint {n}: the signature does not verify with key {} (forged, edited, or signed with another key)", k.key_id()),
                );
                continue;
            }
        }
        match serde_json::from_str::<CheckpointBody>(&c.checkpoint) {
            // The column decides what is signed next: it must say what the signature covers.
            Ok(b) if b.tenant == tenant && b.kind == CHECKPOINT_TYPE && b.seq != column => problem(
                out,
                Some(b.seq),
                format!(
                    "checkpoint {n}: its seq column says {column}, its signed body {}",
                    b.seq
                ),
            ),
            Ok(b) if b.tenant == tenant && b.kind == CHECKPOINT_TYPE => signed.push(b),
            Ok(b) => problem(
                out,
                None,
                format!(
                    "checkpoint {n}: it is for {:?} ({}), not this chain",
                    b.tenant, b.kind
                ),
            ),
            Err(e) => problem(out, None, format!("checkpoint {n}: unreadable: {e}")),
        }
    }
    // The head row (kept for appends), read before the records: on a running system, records
    // appended meanwhile lie beyond it, and it must still match the record it names.
    let head: Option<(i64, String)> =
        sqlx::query("SELECT seq, hash FROM airlock_audit_heads WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(store.pool())
            .await?
            .map(|h| Ok::<_, sqlx::Error>((h.try_get("seq")?, h.try_get("hash")?)))
            .transpose()?;
    let mut wanted: HashMap<i64, &str> = signed.iter().map(|c| (c.seq, c.hash.as_str())).collect();
    if let Some((seq, hash)) = &head {
        wanted.entry(*seq).or_insert(hash.as_str());
    }
    let mut at_checkpoint: HashMap<i64, String> = HashMap::new();
    // Records no chain holds: a seq below 1, or none at all after the chain began.
    let stray: i64 = sqlx::query(
        "SELECT COUNT(*) FROM airlock_audit WHERE tenant = $1 AND (seq < 1 OR (seq IS NULL
           AND id > (SELECT MIN(c.id) FROM airlock_audit c WHERE c.tenant = $1 AND c.seq IS NOT NULL)))",
    )
    .bind(tenant)
    .fetch_one(store.pool())
    .await?
    .try_get(0)?;
    if stray > 0 {
        problem(
            out,
            None,
            format!("{stray} records outside the chain (a seq below 1, or none though written after the chain began): inserted"),
        );
    }

    let mut expected = 1i64;
    let mut prev: [u8; 32] = raw(GENESIS).expect("the genesis hash is 64 hex digits");
    let mut last = 0i64;
    // One page after another, the next one read while this one is checked.
    let page = |after: i64| {
        let any = store.pool().clone();
        let native = store.native_postgres().cloned();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let q = "SELECT seq, job_id, at, actor, request_id, from_state, to_state, detail, body, prev_hash, hash
                 FROM airlock_audit WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3";
            Ok::<_, sqlx::Error>(match native {
                Some(pg) => Page::Native(
                    sqlx::query(q)
                        .bind(tenant)
                        .bind(after)
                        .bind(PAGE)
                        .fetch_all(&pg)
                        .await?,
                ),
                None => Page::Any(
                    sqlx::query(q)
                        .bind(tenant)
                        .bind(after)
                        .bind(PAGE)
                        .fetch_all(&any)
                        .await?,
                ),
            })
        })
    };
    let mut next = page(0);
    loop {
        let fetched = next
            .await
            .map_err(|e| JobError::Corrupt(format!("reading the chain: {e}")))??;
        let rows = fetched.records()?;
        let n = rows.len();
        if n as i64 == PAGE {
            next = page(rows[n - 1].seq);
        } else {
            next = tokio::spawn(async { Ok(Page::Any(Vec::new())) });
        }
        for r in &rows {
            let seq = r.seq;
            let (Some(body), Some(prev_hash), Some(hash)) = (r.body, r.prev_hash, r.hash) else {
                problem(out, Some(seq), "the body or a hash is missing".into());
                last = seq;
                expected = seq + 1;
                continue;
            };
            out.records += 1;
            if seq > expected {
                let what = if seq == expected + 1 {
                    format!("record {expected} is missing (deleted)")
                } else {
                    format!("records {expected}–{} are missing (deleted)", seq - 1)
                };
                problem(out, Some(expected), what);
            }
            let stated = raw(prev_hash);
            if stated != Some(prev) {
                problem(
                    out,
                    Some(seq),
                    "its prev_hash is not the hash of the record before it (a record was removed, reordered, or edited and rehashed)".into(),
                );
            }
            let computed = stated.map(|p| {
                let mut h = Sha256::new();
                h.update(p);
                h.update(body.as_bytes());
                <[u8; 32]>::from(h.finalize())
            });
            let own = raw(hash);
            if computed.is_none() || computed != own {
                problem(
                    out,
                    Some(seq),
                    "its hash does not match its body (the body or the hash was edited)".into(),
                );
            }
            match serde_json::from_str::<Fields>(body)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    b.columns().ok_or("an unknown action")?;
                    Ok(b)
                }) {
                Ok(b) => {
                    let (want_from, want_to, want_detail) =
                        b.columns().expect("checked just above");
                    if b.tenant != tenant {
                        problem(
                            out,
                            Some(seq),
                            format!("its body is a record of {:?} (moved)", b.tenant),
                        );
                    }
                    let Rec {
                        at,
                        actor,
                        job,
                        to,
                        from,
                        detail,
                        request,
                        ..
                    } = *r;
                    if at != b.at
                        || actor != Some(&*b.actor)
                        || job != b.job_id.as_deref().unwrap_or("")
                        || to != want_to
                        || from != want_from
                        || detail != want_detail.as_deref()
                        || request != b.request_id.as_deref()
                    {
                        problem(
                            out,
                            Some(seq),
                            "its columns (time, actor, request, job, states or detail) differ from its hashed body"
                                .into(),
                        );
                    }
                }
                Err(e) => problem(out, Some(seq), format!("its body is not a record: {e}")),
            }
            if wanted.contains_key(&seq) {
                at_checkpoint.insert(seq, hash.to_string());
            }
            // A hash column that is not hex breaks the chain here: the next record's prev_hash
            // cannot match it.
            prev = own.unwrap_or([0xff; 32]);
            expected = seq + 1;
            last = seq;
        }
        if (n as i64) < PAGE {
            break;
        }
    }
    match &head {
        None if last > 0 => problem(
            out,
            None,
            "the chain has records but no head row (it was deleted; appends to this chain fail until it is restored)".into(),
        ),
        Some((seq, hash)) if *seq > 0 && at_checkpoint.get(seq) != Some(hash) => problem(
            out,
            None,
            format!("the chain's head says {seq} records ending in {hash:.12}…, but the chain does not (its tail was cut off, or the head was edited)"),
        ),
        _ => {}
    }
    for c in &signed {
        match at_checkpoint.get(&c.seq) {
            None if c.seq > last => problem(
                out,
                Some(c.seq),
                format!(
                    "a signed checkpoint says the chain had {} records, but it ends at {last} (truncated)",
                    c.seq
                ),
            ),
            Some(h) if h == &c.hash => {}
            _ => problem(
                out,
                Some(c.seq),
                format!(
                    "record {}'s hash differs from the signed checkpoint (the chain was rewritten)",
                    c.seq
                ),
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Action, Body};
    use super::Fields;

    /// verify's reading of a body gives the columns `append` wrote, for every action.
    #[test]
    fn fields_give_the_columns_actions_write() {
        let id = || "x\"y é".to_string();
        for action in [
            Action::JobState {
                job_id: id(),
                from: Some("queued".into()),
                to: "running".into(),
                detail: Some(id()),
            },
            Action::JobState {
                job_id: id(),
                from: None,
                to: "queued".into(),
                detail: None,
            },
            Action::LinkIssued {
                job_id: id(),
                state: "succeeded".into(),
                artifact: "output".into(),
            },
            Action::KeyCreated { key_id: id() },
            Action::KeyRevoked { key_id: id() },
            Action::WebhookAdded {
                endpoint_id: id(),
                events: vec!["job.succeeded".into()],
            },
            Action::WebhookRemoved { endpoint_id: id() },
            Action::WebhookRotated { endpoint_id: id() },
            Action::SchemaPut {
                schema_id: id(),
                sha256: id(),
                default: true,
            },
            Action::SchemaDeleted { schema_id: id() },
            Action::Purged {
                job_id: id(),
                from: "succeeded".into(),
                reason: "retention".into(),
                receipt_id: id(),
                receipt_sha256: id(),
            },
        ] {
            let body = Body {
                v: 1,
                tenant: "acme".into(),
                at: 5,
                actor: "operator:root@h".into(),
                request_id: Some(id()),
                action: action.clone(),
            }
            .canonical()
            .unwrap();
            let f: Fields = serde_json::from_str(&body).unwrap();
            let (from, to, detail) = action.columns();
            assert_eq!(
                f.columns(),
                Some((from.as_deref(), to.as_str(), detail.map(Into::into))),
                "{body}"
            );
            assert_eq!(f.job_id.as_deref(), action.job_id(), "{body}");
            assert_eq!(f.request_id.as_deref(), Some("x\"y é"));
        }
    }
}
