//! Signed webhooks (DESIGN §11), to the Standard Webhooks v1 specification: the headers
//! `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
//! `id.timestamp.body` under the endpoint's `whsec_` secret; several space-separated signatures
//! while a rotated secret overlaps the new one).
//!
//! Secrets must be usable for signing, so they are stored encrypted (XChaCha20-Poly1305) under a
//! key-encryption key the operator provides, never in the clear, and are zeroized in memory.

pub mod dispatch;
pub mod store;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The prefix of every endpoint secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// An endpoint's signing secret (its raw bytes; zeroized on drop, never shown by `Debug`).
pub struct Secret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// 32 random bytes.
    pub fn generate() -> Self {
        let mut b = Zeroizing::new(vec![0u8; 32]);
        rand::rng().fill_bytes(&mut b);
        Secret(b)
    }

    /// `whsec_` + base64: the form receivers configure.
    pub fn expose(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SECRET_PREFIX}{}", B64.encode(&*self.0)))
    }

    /// From the `whsec_` form.
    pub fn parse(s: &str) -> Option<Self> {
        let raw = s.strip_prefix(SECRET_PREFIX)?;
        let bytes = Zeroizing::new(B64.decode(raw).ok()?);
        (bytes.len() >= 24 && bytes.len() <= 64).then(|| Secret(bytes))
    }

    /// `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per live secret, space-separated.
pub fn signature_header(secrets: &[&Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The key-encryption key secrets are stored under: 32 bytes, from a file or the environment
/// (base64), read at the CLI edge.
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("the webhook key-encryption key must be 32 bytes, base64 (e.g. `head -c 32 /dev/urandom | base64`)")]
    Malformed,
    #[error("a stored webhook secret does not open under this key-encryption key (wrong key, or the row was altered)")]
    Open,
}

impl Kek {
    /// From its base64 form (surrounding whitespace ignored).
    pub fn parse(b64: &str) -> Result<Self, KekError> {
        let bytes = Zeroizing::new(B64.decode(b64.trim()).map_err(|_| KekError::Malformed)?);
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KekError::Malformed)?;
        Ok(Kek(Zeroizing::new(key)))
    }

    fn cipher(&self) -> chacha20poly1305::XChaCha20Poly1305 {
        use chacha20poly1305::KeyInit;
        chacha20poly1305::XChaCha20Poly1305::new((&*self.0).into())
    }

    /// Encrypt `secret` for storage; `context` (the endpoint's id) is bound as associated data,
    /// so a sealed secret moved to another row does not open. Base64 of nonce ‖ ciphertext.
    pub fn seal(&self, secret: &Secret, context: &str) -> String {
        use chacha20poly1305::aead::{Aead, Payload};
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: &secret.0,
                    aad: context.as_bytes(),
                },
            )
            .expect("encryption of a short secret cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    /// Decrypt a stored secret.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Secret, KekError> {
        use chacha20poly1305::aead::{Aead, Payload};
        let raw = B64.decode(sealed).map_err(|_| KekError::Open)?;
        if raw.len() < 24 + 16 {
            return Err(KekError::Open);
        }
        let (nonce, ct) = raw.split_at(24);
        let pt = self
            .cipher()
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| KekError::Open)?;
        Ok(Secret(Zeroizing::new(pt)))
    }
}

/// Hosts an operator allows webhooks to reach although they are plain http or private
/// (`AIRLOCK_WEBHOOK_ALLOW`, comma-separated host names or IP addresses; the tests name
/// 127.0.0.1).
#[derive(Debug, Clone, Default)]
pub struct Allowlist(Vec<String>);

impl Allowlist {
    pub fn parse(list: &str) -> Self {
        Allowlist(
            list.split(',')
                .map(|h| h.trim().trim_matches(['[', ']']).to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.0.contains(&host)
    }
}

/// A webhook URL as stored: https (plain http only for an allowlisted host), a host, no
/// credentials, no fragment.
pub fn check_url(raw: &str, allow: &Allowlist) -> Result<url::Url, String> {
    let u = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let host = u
        .host_str()
        .ok_or_else(|| format!("{raw:?} has no host"))?
        .to_string();
    match u.scheme() {
        "https" => {}
        "http" if allow.allows(&host) => {}
        "http" => {
            return Err(format!(
                "{raw:?}: webhooks are https only (an operator can allow a host in AIRLOCK_WEBHOOK_ALLOW)"
            ))
        }
        other => return Err(format!("{raw:?}: scheme {other} is not https")),
    }
    // A literal address that may not be reached is refused now, not at every delivery.
    let literal = match u.host() {
        Some(url::Host::Ipv4(a)) => Some(std::net::IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => Some(std::net::IpAddr::V6(a)),
        _ => None,
    };
    if literal.is_some_and(dispatch::forbidden) && !allow.allows(&host) {
        return Err(format!(
            "{raw:?}: a private or reserved address, which webhooks may not reach (an operator can allow a host in AIRLOCK_WEBHOOK_ALLOW)"
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{raw:?}: credentials in the URL are refused"));
    }
    if u.fragment().is_some() {
        return Err(format!("{raw:?}: a fragment is never sent; remove it"));
    }
    if raw.len() > 2048 {
        return Err("the URL is longer than 2048 characters".into());
    }
    Ok(u)
}

/// The events a tenant can subscribe to: a job reaching a final state.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub enum EventType {
    #[serde(rename = "job.succeeded")]
    Succeeded,
    #[serde(rename = "job.rejected")]
    Rejected,
    #[serde(rename = "job.failed")]
    Failed,
    #[serde(rename = "job.cancelled")]
    Cancelled,
    #[serde(rename = "job.purged")]
    Purged,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::Succeeded,
        EventType::Rejected,
        EventType::Failed,
        EventType::Cancelled,
        EventType::Purged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Succeeded => "job.succeeded",
            EventType::Rejected => "job.rejected",
            EventType::Failed => "job.failed",
            EventType::Cancelled => "job.cancelled",
            EventType::Purged => "job.purged",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The event a job's move into `state` raises, if any.
    pub fn of(state: crate::jobs::JobState) -> Option<Self> {
        use crate::jobs::JobState;
        match state {
            JobState::Succeeded => Some(EventType::Succeeded),
            JobState::Rejected => Some(EventType::Rejected),
            JobState::Failed => Some(EventType::Failed),
            JobState::Cancelled => Some(EventType::Cancelled),
            JobState::Purged => Some(EventType::Purged),
            JobState::Queued | JobState::Running => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_any_part_of_the_url_are_refused() {
        let none = Allowlist::parse("");
        assert!(check_url("https://hooks.example/in", &none).is_ok());
        for url in [
            "https://user:pw@hooks.example/in",
            "https://user@hooks.example/in",
            "https://:pw@hooks.example/in",
        ] {
            let err = check_url(url, &none).unwrap_err();
            assert!(err.contains("credentials"), "{url}: {err}");
        }
    }

    #[test]
    fn urls_up_to_2048_characters_are_accepted() {
        let none = Allowlist::parse("");
        let base = "https://hooks.example/";
        let of_len = |n: usize| format!("{base}{}", "a".repeat(n - base.len()));
        assert!(check_url(&of_len(2048), &none).is_ok());
        let err = check_url(&of_len(2049), &none).unwrap_err();
        assert!(err.contains("2048"), "{err}");
    }

    #[test]
    fn secrets_round_trip_and_hide() {
        let s = Secret::generate();
        let shown = s.expose();
        assert!(shown.starts_with("whsec_"));
        let back = Secret::parse(&shown).unwrap();
        assert_eq!(back.sign("msg_1", 1, b"{}"), s.sign("msg_1", 1, b"{}"));
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert!(Secret::parse("whsec_c2hvcnQ=").is_none(), "too short");
    }

    #[test]
    fn the_specification_example() {
        // From the Standard Webhooks specification's test vectors.
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn sealed_secrets_open_only_under_their_key_and_row() {
        let kek = Kek::parse(&B64.encode([7u8; 32])).unwrap();
        let other = Kek::parse(&B64.encode([8u8; 32])).unwrap();
        let s = Secret::generate();
        let sealed = kek.seal(&s, "ep_1");
        assert!(!sealed.contains(&*s.expose()));
        let opened = kek.open(&sealed, "ep_1").unwrap();
        assert_eq!(opened.sign("a", 1, b"x"), s.sign("a", 1, b"x"));
        assert!(kek.open(&sealed, "ep_2").is_err(), "bound to its row");
        assert!(other.open(&sealed, "ep_1").is_err(), "bound to its key");
        assert!(Kek::parse("c2hvcnQ=").is_err());
    }
}
