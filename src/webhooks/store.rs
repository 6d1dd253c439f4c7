//! Webhook endpoints in the job store.

use sqlx::Row;
use uuid::Uuid;

use crate::jobs::sql::SqlStore;
use crate::jobs::JobError;

use super::EventType;

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;

/// An endpoint as listed: never its secret.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub tenant: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub created_at_ms: i64,
    /// While a rotated-out secret still signs beside the current one.
    pub previous_secret_until_ms: Option<i64>,
    pub disabled_at_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    pub failing_since_ms: Option<i64>,
}

/// One delivery attempt, as the delivery log shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub event_id: String,
    pub attempt: i32,
    pub at_ms: i64,
    /// The HTTP status, when there was an answer.
    pub status: Option<i32>,
    pub latency_ms: Option<i64>,
    pub error: Option<String>,
}

fn endpoint(r: &sqlx::any::AnyRow) -> Result<Endpoint, JobError> {
    let id: String = r.try_get("id")?;
    let events: String = r.try_get("events")?;
    Ok(Endpoint {
        id: Uuid::parse_str(&id).map_err(|e| JobError::Corrupt(e.to_string()))?,
        tenant: r.try_get("tenant")?,
        url: r.try_get("url")?,
        events: events.split(',').filter_map(EventType::parse).collect(),
        created_at_ms: r.try_get("created_at")?,
        previous_secret_until_ms: r.try_get("previous_until")?,
        disabled_at_ms: r.try_get("disabled_at")?,
        disabled_reason: r.try_get("disabled_reason")?,
        failing_since_ms: r.try_get("failing_since")?,
    })
}

/// One audit record for an endpoint change, in its transaction.
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

fn events_column(events: &[EventType]) -> String {
    events
        .iter()
        .map(|e| e.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

impl SqlStore {
    /// Add an endpoint whose secret is already sealed (bound to `id`).
    pub async fn add_webhook(
        &self,
        id: Uuid,
        tenant: &str,
        url: &str,
        events: &[EventType],
        sealed: &str,
        now: i64,
    ) -> Result<Endpoint, JobError> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO airlock_webhooks (id, tenant, url, events, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(id.to_string())
            .bind(tenant)
            .bind(url)
            .bind(events_column(events))
            .bind(sealed)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            tenant,
            now,
            crate::audit::Action::WebhookAdded {
                endpoint_id: id.to_string(),
                events: events.iter().map(|e| e.as_str().to_string()).collect(),
            },
        )
        .await?;
        tx.commit().await?;
        self.webhook(tenant, id)
            .await?
            .ok_or_else(|| JobError::Corrupt("the new endpoint is not readable".into()))
    }

    /// The tenant's endpoint `id` (another tenant's reads as none).
    pub async fn webhook(&self, tenant: &str, id: Uuid) -> Result<Option<Endpoint>, JobError> {
        let row = sqlx::query("SELECT * FROM airlock_webhooks WHERE id = $1 AND tenant = $2")
            .bind(id.to_string())
            .bind(tenant)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.as_ref().map(endpoint).transpose()
    }

    pub async fn webhooks(&self, tenant: &str) -> Result<Vec<Endpoint>, JobError> {
        let rows =
            sqlx::query("SELECT * FROM airlock_webhooks WHERE tenant = $1 ORDER BY created_at, id")
                .bind(tenant)
                .fetch_all(&mut *self.reader().await?)
                .await?;
        rows.iter().map(endpoint).collect()
    }

    /// Remove the tenant's endpoint and its pending deliveries; false when there is none.
    pub async fn remove_webhook(&self, tenant: &str, id: Uuid) -> Result<bool, JobError> {
        let now = crate::jobs::JobStore::now(self).await?;
        let mut tx = self.begin().await?;
        // Deliveries first: row-level security shows a tenant only the deliveries of endpoints
        // that exist, so once the endpoint is gone its deliveries are out of reach.
        sqlx::query(
            "DELETE FROM airlock_webhook_deliveries WHERE state = 'pending' AND endpoint_id IN (SELECT id FROM airlock_webhooks WHERE id = $1 AND tenant = $2)",
        )
        .bind(id.to_string())
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query("DELETE FROM airlock_webhooks WHERE id = $1 AND tenant = $2")
            .bind(id.to_string())
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            record(
                &mut tx,
                tenant,
                now,
                crate::audit::Action::WebhookRemoved {
                    endpoint_id: id.to_string(),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Replace the secret with `sealed`; the current one keeps signing beside it for
    /// [`ROTATION_OVERLAP_MS`]. False when the tenant has no such endpoint.
    pub async fn rotate_webhook(
        &self,
        tenant: &str,
        id: Uuid,
        sealed: &str,
        now: i64,
    ) -> Result<bool, JobError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE airlock_webhooks SET previous_secret = secret, previous_until = $3, secret = $4 WHERE id = $1 AND tenant = $2",
        )
        .bind(id.to_string())
        .bind(tenant)
        .bind(now + ROTATION_OVERLAP_MS)
        .bind(sealed)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            record(
                &mut tx,
                tenant,
                now,
                crate::audit::Action::WebhookRotated {
                    endpoint_id: id.to_string(),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The endpoint's latest attempts, newest first: when, status, latency, error; no bodies.
    pub async fn webhook_attempts(
        &self,
        endpoint: Uuid,
        limit: i64,
    ) -> Result<Vec<Attempt>, JobError> {
        let rows = sqlx::query(
            "SELECT event_id, attempt, at, status, latency_ms, error FROM airlock_webhook_attempts WHERE endpoint_id = $1 ORDER BY at DESC, attempt DESC LIMIT $2",
        )
        .bind(endpoint.to_string())
        .bind(limit)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    event_id: r.try_get("event_id")?,
                    attempt: r.try_get::<i32, _>("attempt")?,
                    at_ms: r.try_get("at")?,
                    status: r.try_get::<Option<i32>, _>("status")?,
                    latency_ms: r.try_get("latency_ms")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    /// Send again, from now, every event of the endpoint's tenant since `since` (ms) that the
    /// endpoint subscribes to: delivered or failed ones are queued afresh (same webhook-id),
    /// missing ones are added. Returns how many are queued.
    pub async fn replay_webhook(
        &self,
        tenant: &str,
        endpoint: &Endpoint,
        since: i64,
        now: i64,
    ) -> Result<u64, JobError> {
        let types: Vec<&str> = endpoint.events.iter().map(|e| e.as_str()).collect();
        let kinds = format!(",{},", types.join(","));
        let mut tx = self.begin().await?;
        let reset = sqlx::query(
            "UPDATE airlock_webhook_deliveries SET state = 'pending', attempts = 0, next_at = $3, lease_owner = NULL, lease_until = NULL, delivered_at = NULL
             WHERE endpoint_id = $1 AND event_id IN (SELECT id FROM airlock_webhook_events WHERE tenant = $2 AND created_at >= $4)
               AND (lease_until IS NULL OR lease_until < $3)",
        )
        .bind(endpoint.id.to_string())
        .bind(tenant)
        .bind(now)
        .bind(since)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let added = sqlx::query(
            "INSERT INTO airlock_webhook_deliveries (event_id, endpoint_id, state, attempts, next_at)
             SELECT e.id, $1, 'pending', 0, $3 FROM airlock_webhook_events e
             WHERE e.tenant = $2 AND e.created_at >= $4 AND $5 LIKE ('%,' || e.type || ',%')
               AND NOT EXISTS (SELECT 1 FROM airlock_webhook_deliveries d WHERE d.event_id = e.id AND d.endpoint_id = $1)",
        )
        .bind(endpoint.id.to_string())
        .bind(tenant)
        .bind(now)
        .bind(since)
        .bind(&kinds)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(reset + added)
    }

    /// Deliveries pending and due within the next 10 s.
    pub async fn webhooks_due(&self) -> Result<i64, JobError> {
        use crate::jobs::JobStore;
        let now = self.now().await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM airlock_webhook_deliveries WHERE state = 'pending' AND next_at <= $1",
        )
        .bind(now + 10_000)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("n")?)
    }

    /// The sealed secrets that sign now: the current one, and the previous one during its
    /// overlap.
    pub async fn webhook_secrets(
        &self,
        id: Uuid,
        now: i64,
    ) -> Result<Option<(String, Option<String>)>, JobError> {
        let row = sqlx::query(
            "SELECT secret, previous_secret, previous_until FROM airlock_webhooks WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            let until: Option<i64> = r.try_get("previous_until")?;
            let previous: Option<String> = r.try_get("previous_secret")?;
            Ok((
                r.try_get("secret")?,
                previous.filter(|_| until.is_some_and(|u| now < u)),
            ))
        })
        .transpose()
    }
}
