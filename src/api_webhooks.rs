//! The tenant API's webhook routes: `/v1/webhooks` (add, list), `/v1/webhooks/{id}` (get,
//! remove), `/rotate`, `/deliveries` (the attempt log: status, latency, no bodies) and `/replay`.
//! Another tenant's endpoint is a 404 exactly like a random id's.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use crate::api::{Api, ApiError, Authed, ErrorBody, ErrorCode};
use crate::webhooks::store::{Attempt, Endpoint};
use crate::webhooks::EventType;

/// `POST /v1/webhooks`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// https://… (plain http only for hosts the operator allows).
    pub url: String,
    /// The events wanted [default: all].
    pub events: Option<Vec<EventType>>,
}

/// An endpoint with its secret: returned once, when it is made or rotated.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_…`: shown only now.
    pub secret: String,
}

impl std::fmt::Debug for EndpointWithSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointWithSecret")
            .field("endpoint", &self.endpoint)
            .field("secret", &"whsec_…")
            .finish()
    }
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub webhooks: Vec<Endpoint>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AttemptList {
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Deliveries queued again.
    pub queued: u64,
}

fn not_found(rid: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such webhook endpoint", rid)
}

fn unconfigured(rid: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "webhooks are not configured on this server (no key-encryption key); ask the operator",
        rid,
    )
}

async fn own_endpoint(api: &Api, auth: &Authed, id: &str) -> Result<Endpoint, ApiError> {
    let rid = &auth.request_id;
    let Ok(id) = Uuid::parse_str(id) else {
        return Err(not_found(rid));
    };
    match api.store.webhook(&auth.caller.tenant, id).await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => Err(not_found(rid)),
        Err(e) => Err(ApiError::unavailable(rid, &e)),
    }
}

/// Add an endpoint; its secret is in the answer, this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("api_key" = [])),
    request_body(content = NewEndpoint, content_type = "application/json"),
    responses((status = 201, body = EndpointWithSecret), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn add(
    State(api): State<Arc<Api>>,
    auth: Authed,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let rid = auth.request_id.as_str();
    let Some(w) = api.webhooks.as_ref() else {
        return Err(unconfigured(rid));
    };
    let req: NewEndpoint = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "send JSON {{\"url\": \"https://…\", \"events\": [\"job.succeeded\", …]}}: {e}"
            ),
            rid,
        )
    })?;
    let url = crate::webhooks::check_url(&req.url, &w.allow)
        .map_err(|m| ApiError::new(ErrorCode::BadRequest, m, rid))?;
    let events = req
        .events
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| EventType::ALL.to_vec());
    let id = Uuid::new_v4();
    let secret = crate::webhooks::Secret::generate();
    let sealed = w.kek.seal(&secret, &id.to_string());
    let now = api
        .store
        .now_ms()
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let endpoint = api
        .store
        .add_webhook(id, &auth.caller.tenant, url.as_str(), &events, &sealed, now)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let out = EndpointWithSecret {
        endpoint,
        secret: secret.expose().to_string(),
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// The caller's endpoints (never a secret).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, body = EndpointList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(api): State<Arc<Api>>,
    auth: Authed,
) -> Result<Json<EndpointList>, ApiError> {
    let webhooks = api
        .store
        .webhooks(&auth.caller.tenant)
        .await
        .map_err(|e| ApiError::unavailable(&auth.request_id, &e))?;
    Ok(Json(EndpointList { webhooks }))
}

/// One of the caller's endpoints, with its disabled state.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Endpoint), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(own_endpoint(&api, &auth, &id).await?))
}

/// Remove an endpoint (its pending deliveries go with it).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Endpoint), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    let endpoint = own_endpoint(&api, &auth, &id).await?;
    match api
        .store
        .remove_webhook(&auth.caller.tenant, endpoint.id)
        .await
    {
        Ok(true) => Ok(Json(endpoint)),
        Ok(false) => Err(not_found(&auth.request_id)),
        Err(e) => Err(ApiError::unavailable(&auth.request_id, &e)),
    }
}

/// A new secret, shown once; the old one keeps signing beside it for 24 h.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = EndpointWithSecret), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn rotate(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<EndpointWithSecret>, ApiError> {
    let rid = auth.request_id.clone();
    let endpoint = own_endpoint(&api, &auth, &id).await?;
    let Some(w) = api.webhooks.as_ref() else {
        return Err(unconfigured(&rid));
    };
    let secret = crate::webhooks::Secret::generate();
    let sealed = w.kek.seal(&secret, &endpoint.id.to_string());
    let now = api
        .store
        .now_ms()
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    let tenant = auth.caller.tenant.as_str();
    match api
        .store
        .rotate_webhook(tenant, endpoint.id, &sealed, now)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Err(not_found(&rid)),
        Err(e) => return Err(ApiError::unavailable(&rid, &e)),
    }
    let endpoint = own_endpoint(&api, &auth, &id).await?;
    Ok(Json(EndpointWithSecret {
        endpoint,
        secret: secret.expose().to_string(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeliveriesQuery {
    /// 1-500 [default 100].
    limit: Option<i64>,
}

/// The endpoint's delivery log, newest first: attempts, status, latency, error; no bodies.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path), DeliveriesQuery),
    responses((status = 200, body = AttemptList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<AttemptList>, ApiError> {
    let endpoint = own_endpoint(&api, &auth, &id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let attempts = api
        .store
        .webhook_attempts(endpoint.id, limit)
        .await
        .map_err(|e| ApiError::unavailable(&auth.request_id, &e))?;
    Ok(Json(AttemptList { attempts }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReplayQuery {
    /// Events from this time on (ms since the epoch).
    since: i64,
}

/// Send the endpoint every event since `since` again (same webhook-ids).
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path), ReplayQuery),
    responses((status = 202, body = Replayed), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replay(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Result<Response, ApiError> {
    let rid = auth.request_id.clone();
    let endpoint = own_endpoint(&api, &auth, &id).await?;
    let now = api
        .store
        .now_ms()
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    let queued = api
        .store
        .replay_webhook(&auth.caller.tenant, &endpoint, q.since, now)
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    Ok((StatusCode::ACCEPTED, Json(Replayed { queued })).into_response())
}
