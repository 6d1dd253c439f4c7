//! Signed checkpoints: a statement of one chain's head (tenant, length, hash), signed with the
//! operator's Ed25519 key. A checkpoint is per tenant, so a tenant's export carries its own
//! and nothing about anyone else's chain.

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::jobs::sql::SqlStore;
use crate::jobs::JobError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The operator's checkpoint key: a 32-byte Ed25519 seed, base64, in a file
/// (`--audit-key-file` / `AIRLOCK_AUDIT_KEY_FILE`). Make one with `airlock audit keygen`.
pub struct AuditKey(SigningKey);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AuditKey").field(&self.key_id()).finish()
    }
}

impl AuditKey {
    pub fn generate() -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rng(), seed.as_mut());
        AuditKey(SigningKey::from_bytes(&seed))
    }

    /// Parse the file's text: the base64 seed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw = zeroize::Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| "the audit key is not base64".to_string())?,
        );
        let seed: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| format!("the audit key is {} bytes, not 32", raw.len()))?;
        Ok(AuditKey(SigningKey::from_bytes(&seed)))
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the audit key {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The file's text for this key.
    pub fn to_file_text(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(B64.encode(self.0.to_bytes()) + "\n")
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn key_id(&self) -> String {
        self.public().key_id()
    }
}

/// The public half: what `verify` and offline checkers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Base64 of the 32-byte key, as `airlock audit keygen` prints it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw = B64
            .decode(text.trim())
            .map_err(|_| "the public key is not base64".to_string())?;
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| format!("the public key is {} bytes, not 32", raw.len()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| format!("not an Ed25519 public key: {e}"))
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    /// The first 16 hex digits of the key's SHA-256.
    pub fn key_id(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.0.to_bytes())[..8])
    }

    /// Whether `signature` (base64) is this key's over `body`.
    pub fn verifies(&self, body: &str, signature: &str) -> bool {
        let Ok(raw) = B64.decode(signature) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&raw) else {
            return false;
        };
        self.0.verify(body.as_bytes(), &sig).is_ok()
    }
}

/// What a checkpoint states (canonical JSON, signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub tenant: String,
    /// The chain's length: the head record's seq.
    pub seq: i64,
    /// The head record's hash.
    pub hash: String,
    pub at: i64,
    pub key_id: String,
}

pub const CHECKPOINT_TYPE: &str = "airlock.audit.checkpoint";

/// A stored checkpoint, as exported: the body exactly as signed, and the signature.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Signed {
    pub checkpoint: String,
    /// Base64 Ed25519 signature over `checkpoint`'s bytes.
    pub signature: String,
}

/// Sign the head of every chain that has grown since its last checkpoint. Returns how many
/// checkpoints were written.
pub async fn checkpoint(store: &SqlStore, key: &AuditKey) -> Result<usize, JobError> {
    let now = crate::jobs::JobStore::now(store).await?;
    let heads = sqlx::query(
        "SELECT h.tenant, h.seq, h.hash FROM airlock_audit_heads h
         WHERE h.seq > COALESCE((SELECT MAX(c.seq) FROM airlock_audit_checkpoints c WHERE c.tenant = h.tenant), 0)
         ORDER BY h.tenant",
    )
    .fetch_all(store.pool())
    .await?;
    let key_id = key.key_id();
    let mut n = 0;
    for h in heads {
        let body = CheckpointBody {
            v: 1,
            kind: CHECKPOINT_TYPE.into(),
            tenant: h.try_get("tenant")?,
            seq: h.try_get("seq")?,
            hash: h.try_get("hash")?,
            at: now,
            key_id: key_id.clone(),
        };
        let text = serde_json_canonicalizer::to_string(&body)
            .map_err(|e| JobError::Corrupt(e.to_string()))?;
        let signature = B64.encode(key.0.sign(text.as_bytes()).to_bytes());
        sqlx::query("INSERT INTO airlock_audit_checkpoints (tenant, at, seq, body, signature) VALUES ($1, $2, $3, $4, $5)")
            .bind(&body.tenant)
            .bind(now)
            .bind(body.seq)
            .bind(&text)
            .bind(&signature)
            .execute(store.pool())
            .await?;
        n += 1;
    }
    Ok(n)
}

/// The tenant's checkpoints, oldest first.
pub async fn checkpoints(store: &SqlStore, tenant: &str) -> Result<Vec<Signed>, JobError> {
    let rows = sqlx::query(
        "SELECT body, signature FROM airlock_audit_checkpoints WHERE tenant = $1 ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(&mut *store.reader().await?)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Signed {
                checkpoint: r.try_get("body")?,
                signature: r.try_get("signature")?,
            })
        })
        .collect()
}

/// The tenant's latest checkpoint.
pub async fn latest(store: &SqlStore, tenant: &str) -> Result<Option<Signed>, JobError> {
    let row = sqlx::query(
        "SELECT body, signature FROM airlock_audit_checkpoints WHERE tenant = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(tenant)
    .fetch_optional(&mut *store.reader().await?)
    .await?;
    row.map(|r| {
        Ok(Signed {
            checkpoint: r.try_get("body")?,
            signature: r.try_get("signature")?,
        })
    })
    .transpose()
}

/// Every minute, until `shutdown`: [`checkpoint`]. Failures are logged and retried.
pub async fn run_every_minute(
    store: std::sync::Arc<SqlStore>,
    key: AuditKey,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match checkpoint(&store, &key).await {
            Ok(n) if n > 0 => tracing::info!(checkpoints = n, "audit chains checkpointed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "writing audit checkpoints failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            // One last checkpoint so a clean stop leaves the heads signed.
            let _ = checkpoint(&store, &key).await;
            break;
        }
    }
}
