//! The webhook dispatcher: delivers the outbox's pending deliveries, leased like jobs so two
//! dispatchers (in `serve` and `supervise`, on any hosts) never send the same attempt at once.
//!
//! Each attempt: the endpoint's host is resolved and every address checked ([`forbidden`]:
//! loopback, private, link-local, CGNAT, multicast, metadata…, unless the operator's allowlist
//! names the host); the connection goes to the checked address (pinned, so DNS cannot change
//! it between the check and the connect); 15 s timeout; no redirects (a 3xx fails); the body of
//! the answer is capped and discarded. 2xx delivers; 410 disables the endpoint; anything else is
//! retried on the schedule (now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ±10%), honouring
//! `Retry-After` on 429 and 503. An endpoint failing for 5 days straight is disabled.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use uuid::Uuid;

use super::{Allowlist, Kek};
use crate::jobs::sql::SqlStore;
use crate::jobs::{JobError, JobStore};

/// Delays before attempts 2…8 (the first is immediate).
pub const SCHEDULE_S: [u64; 7] = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];
/// One attempt's limit.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a claimed delivery is held.
const LEASE_MS: i64 = 60_000;
/// The lease, shortened in tests of a dispatcher killed mid-delivery.
fn lease_ms() -> i64 {
    #[cfg(feature = "test-seam")]
    if let Some(ms) = crate::hostile::webhook_lease_ms() {
        return ms;
    }
    LEASE_MS
}
/// An endpoint failing this long is disabled.
const DISABLE_AFTER_MS: i64 = 5 * 24 * 3600 * 1000;
/// Failures further apart than this (the schedule's longest gap, 10 h + 10%, and some) are
/// not one streak.
const STREAK_GAP_MS: i64 = 12 * 3600 * 1000;
/// Attempts one dispatcher runs at once.
const IN_FLIGHT: usize = 16;
/// Attempts in flight to one endpoint, across all dispatchers.
const PER_ENDPOINT: i64 = 4;
/// At most this much of an answer is read (then discarded).
const ANSWER_CAP: usize = 64 * 1024;

/// Whether an address is refused as a webhook destination (unless allowlisted).
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
                || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // 6to4 (2002::/16) carries an IPv4 address in its second and third segments.
            if s[0] == 0x2002 {
                let v4 = std::net::Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                );
                return forbidden(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (fd00:ec2::254 among them)
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 to anywhere
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard 100::/64
                || s[..5] == [0; 5] // IPv4-compatible ::/96
                || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0) // SIIT ::ffff:0:0/96
        }
    }
}

/// The checked address to connect to: every resolved address must pass (or the host be
/// allowlisted), so a name that resolves to a mix is refused.
pub async fn resolve(url: &url::Url, allow: &Allowlist) -> Result<SocketAddr, String> {
    let host = url.host_str().ok_or("no host")?;
    let port = url.port_or_known_default().ok_or("no port")?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{host} has no address"))?;
    if !allow.allows(host) {
        if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
            // The address goes to the operator's log only: the attempt log is the tenant's,
            // and must not map the operator's network.
            tracing::warn!(host, address = %bad.ip(), "webhook destination refused: private or reserved address");
            return Err(format!(
                "{host} resolves to a private or reserved address, which webhooks may not reach"
            ));
        }
        if url.scheme() != "https" {
            return Err("webhooks are https only".into());
        }
    }
    Ok(first)
}

/// A claimed delivery.
#[derive(Debug)]
struct Due {
    event_id: String,
    endpoint_id: String,
    attempts: i32,
}

/// What one attempt came to.
#[derive(Debug)]
enum Answer {
    Delivered(u16),
    Gone,
    Failed {
        status: Option<u16>,
        retry_after: Option<u64>,
        error: String,
    },
}

pub struct Dispatcher {
    store: Arc<SqlStore>,
    kek: Kek,
    allow: Allowlist,
    owner: String,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("owner", &self.owner)
            .finish()
    }
}

impl Dispatcher {
    pub fn new(store: Arc<SqlStore>, kek: Kek, allow: Allowlist) -> Self {
        Dispatcher {
            store,
            kek,
            allow,
            owner: format!(
                "dispatch:{}:{}",
                std::process::id(),
                &Uuid::new_v4().simple().to_string()[..8]
            ),
        }
    }

    /// Deliver until `shutdown` turns true; attempts in flight then finish (each is bounded).
    /// Up to `IN_FLIGHT` attempts run at once, and a new one starts as soon as one ends, so a
    /// slow receiver holds one slot, not the whole dispatcher.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(owner = %self.owner, "webhook dispatcher started");
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let room = IN_FLIGHT - tasks.len();
            let claimed = if room == 0 {
                0
            } else {
                match self.claim(room).await {
                    Ok(due) => {
                        let n = due.len();
                        for d in due {
                            let me = self.clone();
                            tasks.spawn(async move {
                                if let Err(e) = me.attempt(d).await {
                                    tracing::warn!(error = %e, "recording a webhook attempt failed; the lease will expire and it is retried");
                                }
                            });
                        }
                        n
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming webhook deliveries failed; retrying");
                        0
                    }
                }
            };
            if claimed == 0 || tasks.len() >= IN_FLIGHT {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.changed() => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Claim up to `room` due deliveries, at most `PER_ENDPOINT` per endpoint counting those
    /// already in flight, so one tenant's slow or busy endpoint cannot take every slot.
    async fn claim(&self, room: usize) -> Result<Vec<Due>, JobError> {
        let now = self.store.now().await?;
        // A job's events reach an endpoint in the order they were raised: a delivery waits
        // while an earlier event of the same job is still pending for the same endpoint.
        let lock = if self.store.dialect_name() == "postgres" {
            " FOR UPDATE OF d SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE airlock_webhook_deliveries SET lease_owner = $1, lease_until = $2
             WHERE (event_id, endpoint_id) IN (
               SELECT event_id, endpoint_id FROM (
                 SELECT c.event_id, c.endpoint_id, c.next_at,
                        ROW_NUMBER() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_at) + c.busy AS nth
                 FROM (
                   SELECT d.event_id, d.endpoint_id, d.next_at,
                          (SELECT COUNT(*) FROM airlock_webhook_deliveries f
                           WHERE f.endpoint_id = d.endpoint_id AND f.state = 'pending' AND f.lease_until >= $3) AS busy
                   FROM airlock_webhook_deliveries d
                   JOIN airlock_webhook_events e ON e.id = d.event_id
                   WHERE d.state = 'pending' AND d.next_at <= $3
                     AND (d.lease_until IS NULL OR d.lease_until < $3)
                     AND NOT EXISTS (
                         SELECT 1 FROM airlock_webhook_deliveries d2
                         JOIN airlock_webhook_events e2 ON e2.id = d2.event_id
                         WHERE d2.endpoint_id = d.endpoint_id AND e2.job_id = e.job_id
                           AND d2.state = 'pending' AND e2.created_at < e.created_at)
                   ORDER BY d.next_at LIMIT 256{lock}) c
               ) r
               WHERE r.nth <= $4
               ORDER BY r.next_at LIMIT $5)
             RETURNING event_id, endpoint_id, attempts"
        );
        let rows = sqlx::query(&sql)
            .bind(&self.owner)
            .bind(now + lease_ms())
            .bind(now)
            .bind(PER_ENDPOINT)
            .bind(room as i64)
            .fetch_all(self.store.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Due {
                    event_id: r.try_get("event_id")?,
                    endpoint_id: r.try_get("endpoint_id")?,
                    attempts: r.try_get::<i32, _>("attempts")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn attempt(&self, d: Due) -> Result<(), JobError> {
        let event = sqlx::query("SELECT * FROM airlock_webhook_events WHERE id = $1")
            .bind(&d.event_id)
            .fetch_optional(self.store.pool())
            .await?;
        let endpoint = sqlx::query("SELECT url, disabled_at FROM airlock_webhooks WHERE id = $1")
            .bind(&d.endpoint_id)
            .fetch_optional(self.store.pool())
            .await?;
        let (Some(event), Some(endpoint)) = (event, endpoint) else {
            return self.finish(&d, "failed", None).await;
        };
        if endpoint.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
            return self.finish(&d, "failed", None).await;
        }
        let body = payload(&event)?;
        let now = self.store.now().await?;
        let timestamp = now / 1000;
        let id = Uuid::parse_str(&d.endpoint_id).map_err(|e| JobError::Corrupt(e.to_string()))?;
        let Some((current, previous)) = self.store.webhook_secrets(id, now).await? else {
            return self.finish(&d, "failed", None).await;
        };
        let mut secrets = vec![self
            .kek
            .open(&current, &d.endpoint_id)
            .map_err(|e| JobError::Corrupt(e.to_string()))?];
        if let Some(p) = previous {
            secrets.push(
                self.kek
                    .open(&p, &d.endpoint_id)
                    .map_err(|e| JobError::Corrupt(e.to_string()))?,
            );
        }
        let refs: Vec<&super::Secret> = secrets.iter().collect();
        let signature = super::signature_header(&refs, &d.event_id, timestamp, body.as_bytes());
        let url: String = endpoint.try_get("url")?;
        let started = Instant::now();
        // The whole attempt, resolving included, within the limit.
        let answer = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            self.send(&url, &d.event_id, timestamp, &signature, body),
        )
        .await
        .unwrap_or(Answer::Failed {
            status: None,
            retry_after: None,
            error: "timed out".into(),
        });
        let latency = started.elapsed().as_millis() as i64;
        self.record(&d, answer, latency).await
    }

    async fn send(
        &self,
        raw: &str,
        id: &str,
        timestamp: i64,
        signature: &str,
        body: String,
    ) -> Answer {
        let failed = |error: String| Answer::Failed {
            status: None,
            retry_after: None,
            error,
        };
        let url = match url::Url::parse(raw) {
            Ok(u) => u,
            Err(e) => return failed(format!("bad URL: {e}")),
        };
        let addr = match resolve(&url, &self.allow).await {
            Ok(a) => a,
            Err(e) => return failed(e),
        };
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(ATTEMPT_TIMEOUT)
            .resolve(&host, addr)
            .no_proxy()
            .build()
        {
            Ok(c) => c,
            Err(e) => return failed(format!("client: {e}")),
        };
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(
                "user-agent",
                concat!("airlock-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .body(body)
            .send()
            .await;
        let mut res = match res {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return failed("timed out".into()),
            Err(e) => return failed(format!("{e}")),
        };
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Read a little of the answer, then drop it.
        let mut read = 0;
        while read < ANSWER_CAP {
            match tokio::time::timeout(Duration::from_secs(2), res.chunk()).await {
                Ok(Ok(Some(c))) => read += c.len(),
                _ => break,
            }
        }
        match status {
            200..=299 => Answer::Delivered(status),
            410 => Answer::Gone,
            _ => Answer::Failed {
                status: Some(status),
                retry_after: if status == 429 || status == 503 {
                    retry_after
                } else {
                    None
                },
                error: format!("HTTP {status}"),
            },
        }
    }

    async fn record(&self, d: &Due, answer: Answer, latency_ms: i64) -> Result<(), JobError> {
        let now = self.store.now().await?;
        let attempt = d.attempts + 1;
        let (status, error) = match &answer {
            Answer::Delivered(s) => (Some(*s as i32), None),
            Answer::Gone => (Some(410), Some("410 Gone: endpoint disabled".to_string())),
            Answer::Failed { status, error, .. } => (status.map(|s| s as i32), Some(error.clone())),
        };
        sqlx::query("INSERT INTO airlock_webhook_attempts (endpoint_id, event_id, attempt, at, status, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&d.endpoint_id)
            .bind(&d.event_id)
            .bind(attempt)
            .bind(now)
            .bind(status)
            .bind(latency_ms)
            .bind(error.clone())
            .execute(self.store.pool())
            .await?;
        match answer {
            Answer::Delivered(_) => {
                sqlx::query("UPDATE airlock_webhooks SET failing_since = NULL WHERE id = $1")
                    .bind(&d.endpoint_id)
                    .execute(self.store.pool())
                    .await?;
                self.finish(d, "delivered", Some(now)).await
            }
            Answer::Gone => {
                self.disable(&d.endpoint_id, "the endpoint answered 410 Gone", now)
                    .await?;
                self.finish(d, "failed", None).await
            }
            Answer::Failed { retry_after, .. } => {
                // A streak of failures: it goes on while attempts keep failing no further apart
                // than the schedule's longest gap; after a quiet spell a failure starts anew.
                sqlx::query("UPDATE airlock_webhooks SET failing_since = CASE WHEN failing_since IS NOT NULL AND EXISTS (SELECT 1 FROM airlock_webhook_attempts a WHERE a.endpoint_id = $1 AND a.at >= $3 AND a.at < $2) THEN failing_since ELSE $2 END WHERE id = $1")
                    .bind(&d.endpoint_id)
                    .bind(now)
                    .bind(now - STREAK_GAP_MS)
                    .execute(self.store.pool())
                    .await?;
                let since: Option<i64> =
                    sqlx::query("SELECT failing_since FROM airlock_webhooks WHERE id = $1")
                        .bind(&d.endpoint_id)
                        .fetch_optional(self.store.pool())
                        .await?
                        .map(|r| r.try_get("failing_since"))
                        .transpose()?
                        .flatten();
                if since.is_some_and(|s| now - s >= DISABLE_AFTER_MS) {
                    self.disable(&d.endpoint_id, "failing for 5 days", now)
                        .await?;
                    return self.finish(d, "failed", None).await;
                }
                let Some(base) = SCHEDULE_S.get(d.attempts as usize) else {
                    return self.finish(d, "failed", None).await;
                };
                let jitter = 0.9 + rand::random::<f64>() * 0.2;
                #[cfg(feature = "test-seam")]
                let jitter = jitter * crate::hostile::webhook_schedule_scale();
                let delay = ((*base as f64) * jitter * 1000.0) as i64;
                let delay = delay.max(retry_after.unwrap_or(0).min(36_000) as i64 * 1000);
                sqlx::query("UPDATE airlock_webhook_deliveries SET attempts = $3, next_at = $4, lease_owner = NULL, lease_until = NULL WHERE event_id = $1 AND endpoint_id = $2 AND lease_owner = $5")
                    .bind(&d.event_id)
                    .bind(&d.endpoint_id)
                    .bind(attempt)
                    .bind(now + delay)
                    .bind(&self.owner)
                    .execute(self.store.pool())
                    .await?;
                Ok(())
            }
        }
    }

    async fn disable(&self, endpoint: &str, reason: &str, now: i64) -> Result<(), JobError> {
        tracing::warn!(endpoint, reason, "webhook endpoint disabled");
        sqlx::query("UPDATE airlock_webhooks SET disabled_at = $2, disabled_reason = $3 WHERE id = $1 AND disabled_at IS NULL")
            .bind(endpoint)
            .bind(now)
            .bind(reason)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    async fn finish(&self, d: &Due, state: &str, at: Option<i64>) -> Result<(), JobError> {
        sqlx::query("UPDATE airlock_webhook_deliveries SET state = $3, attempts = attempts + 1, delivered_at = $4, lease_owner = NULL, lease_until = NULL WHERE event_id = $1 AND endpoint_id = $2 AND lease_owner = $5")
            .bind(&d.event_id)
            .bind(&d.endpoint_id)
            .bind(state)
            .bind(at)
            .bind(&self.owner)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }
}

/// The thin payload: type, timestamp, and the job's id, state, result code, row counts and
/// report summary. Never a URL, a file name or cell data.
fn payload(event: &sqlx::any::AnyRow) -> Result<String, JobError> {
    let created: i64 = event.try_get("created_at")?;
    let summary: Option<String> = event.try_get("summary")?;
    let summary: Option<serde_json::Value> = summary
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| JobError::Corrupt(e.to_string()))?;
    let timestamp = time_rfc3339(created);
    let body = serde_json::json!({
        "type": event.try_get::<String, _>("type")?,
        "timestamp": timestamp,
        "data": {
            "job_id": event.try_get::<String, _>("job_id")?,
            "state": event.try_get::<String, _>("state")?,
            "result_code": event.try_get::<Option<String>, _>("result_code")?,
            "rows": summary.as_ref().map(|s| s["rows"].clone()),
            "summary": summary.as_ref().map(|s| serde_json::json!({
                "status": s["status"],
                "rejection": s["rejection"]["code"],
                "issue_counts": s["issue_counts"],
            })),
        },
    });
    Ok(body.to_string())
}

/// Milliseconds since the epoch as RFC 3339 UTC.
fn time_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001::1",
            "::ffff:0:7f00:1",
            "fec0::1",
            "100::1",
            "192.88.99.1",
            // Each IPv4 range on its own (mutation testing found these untested).
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.254",
            "100.127.255.254",
            "240.0.0.1",
            // 6to4 around 198.51.100.1: every octet of the carried address counts.
            "2002:c633:6401::1",
            // Each IPv6 range on its own.
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2002:5db8:d822::1",
            // Neighbours of the refused ranges, each sharing a part of one.
            "198.20.0.1",
            "100.128.0.1",
            "100.63.255.254",
            "1.64.1.1",
            "192.0.1.1",
            "192.1.0.1",
            "8.8.0.1",
            "8.8.99.8",
            "223.255.255.254",
            "64:ff9a::1",
            "2606:ff9b::1",
            "2001:db9::1",
            "2606::1",
        ] {
            assert!(!forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(time_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time_rfc3339(1_795_812_535_743), "2026-11-27T20:48:55.743Z");
        assert_eq!(time_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
