//! `policies/storage/`: presign limits (loaded and enforced) and the bucket policy and lifecycle
//! backstop that an operator applies to the bucket (validated here so they say what they claim).

use std::time::Duration;

use serde::Deserialize;

use super::PolicyError;

/// The hard ceiling for any presigned link (DESIGN §5).
pub const LINK_TTL_CEILING: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPresign {
    max_ttl_seconds: u64,
    default_ttl_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresignPolicy {
    pub max_ttl: Duration,
    pub default_ttl: Duration,
}

impl PresignPolicy {
    pub fn parse(text: &str, file: &str) -> Result<Self, PolicyError> {
        let raw: RawPresign = super::parse_toml(text, file)?;
        let invalid = |what: String| PolicyError::invalid(file, what);
        let max = Duration::from_secs(raw.max_ttl_seconds);
        if raw.max_ttl_seconds == 0 || max > LINK_TTL_CEILING {
            return Err(invalid(format!(
                "max_ttl_seconds = {} is outside 1..=300",
                raw.max_ttl_seconds
            )));
        }
        if raw.default_ttl_seconds == 0 || raw.default_ttl_seconds > raw.max_ttl_seconds {
            return Err(invalid(
                "default_ttl_seconds must be in 1..=max_ttl_seconds".into(),
            ));
        }
        Ok(PresignPolicy {
            max_ttl: max,
            default_ttl: Duration::from_secs(raw.default_ttl_seconds),
        })
    }

    /// The TTL to use for a request, or why it is refused.
    pub fn ttl(&self, asked: Option<u64>) -> Result<Duration, String> {
        let ttl = asked.map(Duration::from_secs).unwrap_or(self.default_ttl);
        if ttl.is_zero() || ttl > self.max_ttl {
            return Err(format!(
                "--ttl must be 1..={} seconds",
                self.max_ttl.as_secs()
            ));
        }
        Ok(ttl)
    }
}

/// Days after which the bucket lifecycle rule expires every object (the backstop).
pub fn lifecycle_backstop_days(lifecycle_json: &str) -> Result<u64, String> {
    let v: serde_json::Value = serde_json::from_str(lifecycle_json).map_err(|e| e.to_string())?;
    v["Rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["Status"] == "Enabled" && r["Filter"]["Prefix"] == "")
        .filter_map(|r| r["Expiration"]["Days"].as_u64())
        .min()
        .ok_or_else(|| "no enabled whole-bucket Expiration rule".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRESIGN: &str = include_str!("../../policies/storage/presign.toml");
    const LIFECYCLE: &str = include_str!("../../policies/storage/lifecycle.json");
    const BUCKET: &str = include_str!("../../policies/storage/bucket-policy.json");

    #[test]
    fn presign_policy_caps_links_at_five_minutes() {
        let p = PresignPolicy::parse(PRESIGN, "t").unwrap();
        assert_eq!(p.max_ttl, Duration::from_secs(300));
        assert!(p.ttl(Some(301)).is_err());
        assert_eq!(p.ttl(Some(60)).unwrap(), Duration::from_secs(60));
        assert!(PresignPolicy::parse(
            &PRESIGN.replace("max_ttl_seconds = 300", "max_ttl_seconds = 3600"),
            "t"
        )
        .is_err());
        assert!(PresignPolicy::parse(&format!("{PRESIGN}\nextra = 1\n"), "t").is_err());
    }

    #[test]
    fn lifecycle_backstop_outlives_retention_plus_job_time() {
        let days = lifecycle_backstop_days(LIFECYCLE).unwrap();
        // Longest retention (30 days) + longest job wall time (600 s) must fit inside it.
        assert!(days * 86_400 > 30 * 86_400 + 600, "{days}");
        let v: serde_json::Value = serde_json::from_str(LIFECYCLE).unwrap();
        let abort = v["Rules"].as_array().unwrap().iter().any(|r| {
            r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
                .as_u64()
                .is_some()
        });
        assert!(abort, "incomplete multipart uploads must be aborted");
    }

    #[test]
    fn bucket_policy_denies_plain_http_public_access_and_unencrypted_puts() {
        let v: serde_json::Value = serde_json::from_str(BUCKET).unwrap();
        let statements = v["Statement"].as_array().unwrap();
        assert!(
            statements.iter().all(|s| s["Effect"] == "Deny"),
            "only denies"
        );
        let tls = statements.iter().any(|s| {
            s["Action"] == "s3:*" && s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        });
        assert!(tls, "non-TLS requests are denied");
        let public = statements.iter().any(|s| {
            s["Principal"] == "*"
                && s["Condition"]["StringNotEquals"]["aws:PrincipalAccount"].is_string()
        });
        assert!(public, "principals outside the account are denied");
        let sse = statements.iter().any(|s| {
            s["Action"] == "s3:PutObject"
                && s["Condition"]["StringNotEquals"]["s3:x-amz-server-side-encryption"] == "AES256"
        });
        assert!(sse, "puts without SSE are denied");
    }
}
