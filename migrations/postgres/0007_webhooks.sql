-- Version 7: webhook endpoints (secrets sealed under the operator's key-encryption key), the
-- outbox of events (written in the same transaction as a job's final state change), one
-- delivery per event and subscribed endpoint (leased like jobs), and the log of attempts.
CREATE TABLE airlock_webhooks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_until BIGINT,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT,
    disabled_reason TEXT,
    failing_since BIGINT
);
CREATE INDEX airlock_webhooks_tenant ON airlock_webhooks (tenant);
CREATE TABLE airlock_webhook_events (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    result_code TEXT,
    summary TEXT
);
CREATE INDEX airlock_webhook_events_tenant ON airlock_webhook_events (tenant, created_at);
CREATE TABLE airlock_webhook_deliveries (
    event_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    delivered_at BIGINT,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX airlock_webhook_deliveries_due ON airlock_webhook_deliveries (state, next_at);
CREATE TABLE airlock_webhook_attempts (
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at BIGINT NOT NULL,
    status INTEGER,
    latency_ms BIGINT,
    error TEXT
);
CREATE INDEX airlock_webhook_attempts_endpoint ON airlock_webhook_attempts (endpoint_id, at);
