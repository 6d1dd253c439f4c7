//! The tenant API on `airlock serve` (DESIGN §10): `/v1`, JSON, authenticated by a tenant's API
//! key sent as `Authorization: Bearer al_live_…`. The tenant comes from the key, never from the
//! request; another tenant's job is a 404 identical to a random id's. A key anywhere else (the
//! query string) is refused with 401, like a missing, malformed, unknown or revoked one, with one
//! body for all. Errors are `{"error": {"code", "message", "request_id"}}` with stable codes.
//!
//! This part serves `GET /healthz`, `GET /readyz`, `POST /v1/jobs`, `GET /v1/jobs/{id}`,
//! `GET /v1/jobs?state=&limit=&cursor=`, `GET /v1/jobs/{id}/{output|rejects|report}` (303 to a
//! fresh presigned link, audited), `DELETE /v1/jobs/{id}` and `GET /v1/receipts`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use crate::jobs::sql::SqlStore;
use crate::jobs::{JobState, JobStore};
use crate::service::JobView;
use crate::storage::Artifact;
use crate::tenants::{ApiKey, Caller, Cursor};
use sha2::Digest;

/// What the API handlers share.
#[derive(Debug)]
pub struct Api {
    pub store: Arc<SqlStore>,
    pub objects: Arc<dyn crate::storage::ObjectStore>,
    pub policies: Arc<crate::policy::Policies>,
    /// Where uploads are staged (in a private 0700 directory each) on their way to storage.
    pub work_dir: std::path::PathBuf,
    uploads: UploadSlots,
    /// Uploads being completed: one completion per upload at a time.
    completing: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    liveness: Option<crate::liveness::Liveness>,
    pub metrics: Arc<crate::metrics::Metrics>,
    limiters: crate::ratelimit::Limiters,
    /// When set, `/metrics` needs `Authorization: Bearer` this; otherwise it answers loopback
    /// clients that came through no proxy only.
    metrics_token: Option<String>,
    /// Clients reach this server over TLS (terminated in front): send HSTS.
    pub hsts: bool,
    /// Keys and job rows, on PostgreSQL (`crate::hotcache`).
    cache: Option<Arc<crate::hotcache::HotCache>>,
    /// The webhook key-encryption key and allowlist: without them the webhook routes that make
    /// secrets answer 503.
    pub webhooks: Option<crate::service::Webhooks>,
}

impl Api {
    pub fn new(
        store: Arc<SqlStore>,
        objects: Arc<dyn crate::storage::ObjectStore>,
        policies: Arc<crate::policy::Policies>,
        work_dir: std::path::PathBuf,
    ) -> Self {
        Api {
            store,
            objects,
            policies,
            work_dir,
            uploads: UploadSlots::default(),
            completing: Default::default(),
            liveness: None,
            metrics: Arc::new(crate::metrics::Metrics::default()),
            limiters: crate::ratelimit::Limiters::new(crate::ratelimit::Rates::default()),
            metrics_token: None,
            hsts: false,
            cache: None,
            webhooks: None,
        }
    }

    /// Let tenants add and rotate webhook endpoints.
    pub fn with_webhooks(mut self, webhooks: Option<crate::service::Webhooks>) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// Answer hot reads from `cache`.
    pub fn with_cache(mut self, cache: Option<Arc<crate::hotcache::HotCache>>) -> Self {
        self.cache = cache;
        self
    }

    /// Send `Strict-Transport-Security` (the public URL is https).
    pub fn with_hsts(mut self, hsts: bool) -> Self {
        self.hsts = hsts;
        self
    }

    /// Request rate limits other than the defaults.
    pub fn with_rates(mut self, rates: crate::ratelimit::Rates) -> Self {
        self.limiters = crate::ratelimit::Limiters::new(rates);
        self
    }

    /// `/metrics` answers this bearer token (from anywhere).
    pub fn with_metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token.filter(|t| !t.is_empty());
        self
    }

    /// Metrics shared with a supervisor in the same process.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// `/healthz` answers from these heartbeats.
    pub fn with_liveness(mut self, liveness: crate::liveness::Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }
}

/// Uploads in progress, at most [`UploadSlots::TOTAL`] in all and [`UploadSlots::PER_TENANT`]
/// per tenant, so one tenant's slow uploads cannot hold every connection or fill the staging
/// disk for the others.
#[derive(Debug, Default)]
struct UploadSlots {
    total: std::sync::OnceLock<Arc<tokio::sync::Semaphore>>,
    tenants: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl UploadSlots {
    const TOTAL: usize = 64;
    const PER_TENANT: usize = 8;

    /// Both permits, or `None` when either limit is reached.
    fn try_take(
        &self,
        tenant: &str,
    ) -> Option<(
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    )> {
        let total = self
            .total
            .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(Self::TOTAL)))
            .clone();
        let mine = self
            .tenants
            .lock()
            .ok()?
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(Self::PER_TENANT)))
            .clone();
        let a = mine.try_acquire_owned().ok()?;
        let b = total.try_acquire_owned().ok()?;
        Some((a, b))
    }
}

/// How much of an upload is written between two announcements to the store.
const ANNOUNCE_EVERY: u64 = 4 * 1024 * 1024;

/// An upload that sends nothing for this long is dropped.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The stable codes of API errors, each with its one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401: no key, or a malformed, unknown or revoked one, or a key in the URL.
    Unauthenticated,
    /// 404: no such job (another tenant's looks the same).
    NotFound,
    /// 400: a parameter or header is malformed.
    BadRequest,
    /// 415: the body is not `text/csv` or `application/octet-stream`.
    UnsupportedMediaType,
    /// 411: `Content-Length` is missing.
    LengthRequired,
    /// 413: larger than the plan allows.
    TooLarge,
    /// 429: too many uploads at once.
    TooManyUploads,
    /// 429: too many requests; see `Retry-After`.
    RateLimited,
    /// 408: the upload stalled.
    BodyTimeout,
    /// 400: the body did not match `Content-Length`.
    IncompleteBody,
    /// 410: the job's files were deleted.
    Purged,
    /// 409: the job has not finished.
    NotFinished,
    /// 404: the job has no such artifact.
    NoArtifact,
    /// 409: the job is running.
    JobRunning,
    /// 409: the job is being erased; retry.
    Busy,
    /// 409: the uploaded object does not match the declared size or SHA-256.
    UploadMismatch,
    /// 410: the upload's link expired before it was completed.
    UploadExpired,
    /// 400: the schema does not load; `pointer` is a JSON pointer to the bad part.
    InvalidSchema,
    /// 400: `?schema=` names a schema the tenant has not stored.
    UnknownSchema,
    /// 503: a backing service failed; retry.
    Unavailable,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            Unauthenticated => StatusCode::UNAUTHORIZED,
            NotFound | NoArtifact => StatusCode::NOT_FOUND,
            BadRequest | IncompleteBody | InvalidSchema | UnknownSchema => StatusCode::BAD_REQUEST,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            LengthRequired => StatusCode::LENGTH_REQUIRED,
            TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            TooManyUploads | RateLimited => StatusCode::TOO_MANY_REQUESTS,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Purged | UploadExpired => StatusCode::GONE,
            NotFinished | JobRunning | Busy | UploadMismatch => StatusCode::CONFLICT,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The body of every API error.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// What happened and what to do, for people.
    pub message: String,
    /// The request's id: the `X-Request-Id` response header, in the logs and audit rows.
    pub request_id: String,
    /// For `invalid_schema`: a JSON pointer (RFC 6901) to the bad part of the schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
}

/// An API error: a stable code, a message, and the request's id.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    request_id: String,
    retry_after: Option<u64>,
    pointer: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>, rid: &str) -> Self {
        ApiError {
            code,
            message: message.into(),
            request_id: rid.to_string(),
            retry_after: None,
            pointer: None,
        }
    }

    /// 400 `invalid_schema`, pointing at the bad part.
    pub fn invalid_schema(rid: &str, e: &airlock_engine::schema::SchemaError) -> Self {
        let mut err = Self::new(ErrorCode::InvalidSchema, e.to_string(), rid);
        err.pointer = Some(e.pointer.clone());
        err
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// The one answer for every authentication failure: nothing tells them apart.
    fn unauthenticated(rid: &str) -> Self {
        Self::new(
            ErrorCode::Unauthenticated,
            "send a valid API key as `Authorization: Bearer al_live_…` (never in the URL)",
            rid,
        )
    }

    /// Missing, and another tenant's, look the same.
    fn not_found(rid: &str) -> Self {
        Self::new(ErrorCode::NotFound, "no such job", rid)
    }

    pub fn unavailable(rid: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "a backing service failed");
        Self::new(
            ErrorCode::Unavailable,
            "the service is unavailable; retry later",
            rid,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                request_id: self.request_id,
                pointer: self.pointer,
            },
        };
        let mut res = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"airlock\""),
            );
        }
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// The request's id (set by `serve`'s request-id layer before any handler runs).
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// Whether a query string carries something that looks like a key: a parameter named like one,
/// or a value holding a key's prefix, after percent-decoding.
fn key_in_query(query: &str) -> bool {
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .to_ascii_lowercase()
        };
        let name = decode(name).replace('-', "_");
        matches!(
            name.as_str(),
            "key" | "api_key" | "apikey" | "access_token" | "token" | "authorization" | "bearer"
        ) || decode(value).contains(crate::tenants::KEY_PREFIX)
            || name.contains(crate::tenants::KEY_PREFIX)
    })
}

fn rate_limited(rid: &str, wait: std::time::Duration, whose: &str) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        format!("too many requests from {whose}; retry after the Retry-After seconds"),
        rid,
    )
    .retry_after(wait.as_secs_f64().ceil() as u64)
}

/// The client's address, set on every request by `serve` (the TCP peer).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// The per-IP budget of `/v1` requests, checked before any key is looked up.
async fn limit_ip(
    State(api): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path.starts_with("/v1/") || path == "/readyz" {
        if let Some(ClientAddr(peer)) = req.extensions().get::<ClientAddr>().copied() {
            if let Err(wait) = api.limiters.check_ip(peer.ip()) {
                return rate_limited(&request_id(req.headers()), wait, "this address")
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// `GET /metrics`: Prometheus text. Tenant names are in it, so it is for operators: with a
/// metrics token configured, it needs that token; without, only loopback clients that came
/// through no proxy (no `Forwarded`/`X-Forwarded-For`) get it. Everyone else gets a plain 404.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
              (status = 404, description = "Not for this client")))]
async fn metrics(State(api): State<Arc<Api>>, req: axum::extract::Request) -> Response {
    let headers = req.headers();
    let allowed = match &api.metrics_token {
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| {
                use subtle::ConstantTimeEq;
                let (a, b) = (
                    sha2::Sha256::digest(t.as_bytes()),
                    sha2::Sha256::digest(token.as_bytes()),
                );
                bool::from(a.ct_eq(&b))
            }),
        None => {
            req.extensions()
                .get::<ClientAddr>()
                .is_some_and(|c| c.0.ip().is_loopback())
                && !headers.contains_key(header::FORWARDED)
                && !headers.contains_key("x-forwarded-for")
        }
    };
    if !allowed {
        return StatusCode::NOT_FOUND.into_response();
    }
    let rid = request_id(headers);
    let counts = match api.store.counts().await {
        Ok(c) => c,
        Err(e) => return ApiError::unavailable(&rid, &e).into_response(),
    };
    let (oldest, now) = match (api.store.oldest_queued().await, api.store.now().await) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => return ApiError::unavailable(&rid, &e).into_response(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(&counts, &oldest, now),
    )
        .into_response()
}

/// An authenticated caller, from `Authorization: Bearer`.
#[derive(Debug)]
pub struct Authed {
    pub caller: Caller,
    pub request_id: String,
}

impl FromRequestParts<Arc<Api>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        Ok(authenticate(parts, api, None).await?.0)
    }
}

/// Check the request's key, scope the rest of the request to its tenant (on PostgreSQL every
/// later transaction runs as `airlock_tenant`, under row-level security), and read `job` if it
/// is that tenant's. The key lookup itself is the one tenant-data query made as the service
/// role: it is how the tenant is learned.
async fn authenticate(
    parts: &Parts,
    api: &Api,
    job: Option<Uuid>,
) -> Result<(Authed, Option<crate::jobs::JobRecord>), ApiError> {
    let rid = request_id(&parts.headers);
    // A key in the URL ends up in logs and histories: refused, even a valid one, however it is
    // encoded.
    let query = parts.uri.query().unwrap_or("");
    if key_in_query(query) {
        return Err(ApiError::unauthenticated(&rid));
    }
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|k| ApiKey::parse(k.trim()))
        .ok_or_else(|| ApiError::unauthenticated(&rid))?;
    let hash = presented.sha256();
    if let Some(cache) = &api.cache {
        if let Some((caller, write_last_use)) = cache.key(&hash) {
            return from_cache(api, cache, caller, write_last_use, job, rid).await;
        }
    }
    let generation = api.cache.as_ref().map(|c| c.generation());
    let read_at = std::time::Instant::now();
    let caller = match api.store.authenticate(&presented).await {
        Ok(Some(caller)) => caller,
        Ok(None) => return Err(ApiError::unauthenticated(&rid)),
        Err(e) => return Err(ApiError::unavailable(&rid, &e)),
    };
    if let (Some(cache), Some(generation)) = (&api.cache, generation) {
        cache.put_key(&hash, &caller, generation);
    }
    let authed = scope_to(api, caller, rid)?;
    let record = match job {
        None => None,
        Some(id) => match api.store.job_of(&authed.caller.tenant, id).await {
            Ok(j) => j,
            Err(e) => return Err(ApiError::unavailable(&authed.request_id, &e)),
        },
    };
    if let (Some(cache), Some(j)) = (&api.cache, &record) {
        cache.put_job(j, read_at);
    }
    Ok((authed, record))
}

/// The request is `caller`'s from here on: its tenant scopes the store's transactions, its key
/// is the audit trail's actor, and its key's rate limit applies.
fn scope_to(api: &Api, caller: Caller, rid: String) -> Result<Authed, ApiError> {
    tracing::Span::current().record("tenant", caller.tenant.as_str());
    if !crate::jobs::request::set_tenant(caller.tenant.clone()) {
        // Outside a request scope (`serve::app` gives every request one) the store would run
        // unscoped: refused rather than served without row-level security.
        return Err(ApiError::unavailable(
            &rid,
            &"a tenant request ran outside a request scope",
        ));
    }
    crate::jobs::request::set_actor(format!("key:{}", caller.key_id));
    if let Err(wait) = api.limiters.check_key(caller.key_id) {
        return Err(rate_limited(&rid, wait, "this API key"));
    }
    Ok(Authed {
        caller,
        request_id: rid,
    })
}

/// [`authenticate`] for a key the cache holds: no database round trip unless the job is not
/// cached (or is another tenant's, which costs the same read as a random id).
async fn from_cache(
    api: &Api,
    cache: &crate::hotcache::HotCache,
    caller: Caller,
    write_last_use: bool,
    job: Option<Uuid>,
    rid: String,
) -> Result<(Authed, Option<crate::jobs::JobRecord>), ApiError> {
    api.metrics.cache_hit();
    let authed = scope_to(api, caller, rid)?;
    let caller = &authed.caller;
    if write_last_use {
        let store = api.store.clone();
        let id = caller.key_id;
        tokio::spawn(async move {
            if let Err(e) = store.touch_key(id).await {
                tracing::debug!(error = %e, "recording a key's last use failed");
            }
        });
    }
    let read_at = std::time::Instant::now();
    let record = match job {
        None => None,
        Some(id) => match cache.job(&caller.tenant, id) {
            Some(j) => Some(j),
            // Scoped to the caller's tenant: another tenant's job reads as nothing, at the
            // same cost as a random id.
            None => match api.store.job_of(&caller.tenant, id).await {
                Ok(Some(j)) => {
                    cache.put_job(&j, read_at);
                    Some(j)
                }
                Ok(None) => None,
                Err(e) => return Err(ApiError::unavailable(&authed.request_id, &e)),
            },
        },
    };
    Ok((authed, record))
}

/// The OpenAPI document's frame: title, the Bearer scheme, and the shared schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Airlock tenant API",
        description = "Submit untrusted CSV uploads as jobs and fetch their results. Every `/v1` route takes a tenant's API key as `Authorization: Bearer al_live_…`; the tenant comes from the key.",
    ),
    modifiers(&BearerKey),
    components(schemas(ErrorBody, ErrorCode, crate::jobs::Receipt))
)]
struct ApiDoc;

struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("al_live_ + 43 base62 characters")
                    .build(),
            ),
        );
    }
}

/// Every route with its documentation: one list, so the document cannot miss a route.
fn documented() -> utoipa_axum::router::OpenApiRouter<Arc<Api>> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(list_jobs, create_job))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(artifact_link))
        .routes(routes!(receipts))
        .routes(routes!(audit_trail))
        .routes(routes!(create_upload))
        .routes(routes!(complete_upload))
        .routes(routes!(metrics))
        .routes(routes!(crate::api_webhooks::add, crate::api_webhooks::list))
        .routes(routes!(
            crate::api_webhooks::get_one,
            crate::api_webhooks::remove
        ))
        .routes(routes!(crate::api_webhooks::rotate))
        .routes(routes!(crate::api_webhooks::deliveries))
        .routes(routes!(crate::api_webhooks::replay))
        .routes(routes!(crate::api_schemas::list))
        .routes(routes!(
            crate::api_schemas::get_one,
            crate::api_schemas::put,
            crate::api_schemas::remove
        ))
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = documented()
        .routes(utoipa_axum::routes!(openapi_json))
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

pub fn router(api: Arc<Api>) -> Router {
    let doc: Arc<str> = openapi().to_pretty_json().unwrap_or_default().into();
    let (routes, _) = documented().split_for_parts();
    routes
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(api.clone(), limit_ip))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(api)
}

/// `GET /v1/openapi.json`: this document (documented here; served by [`router`]).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
#[allow(dead_code)]
async fn openapi_json() {}

/// Headers on every tenant response: nothing is cached, sniffed, framed or referred.
pub async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

/// `GET /healthz`: liveness. 503 naming the part whose heartbeat stopped (the runtime's ticker,
/// or an in-process supervisor's claim loop); no answer at all when the runtime is blocked.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = String),
              (status = 503, description = "A part stalled: `{\"status\": \"stalled\", \"part\": \"runtime\"|\"supervisor\"}`")))]
async fn healthz(State(api): State<Arc<Api>>) -> Response {
    match api.liveness.as_ref().map_or(Ok(()), |l| l.check()) {
        Ok(()) => Json(serde_json::json!({"status": "ok", "build": crate::build_info::BUILD}))
            .into_response(),
        Err(part) => {
            tracing::error!(part = part.as_str(), "liveness check failed: stalled");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({
                    "status": "stalled",
                    "part": part.as_str(),
                    "build": crate::build_info::BUILD,
                })),
            )
                .into_response()
        }
    }
}

/// One of the caller's jobs.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobView),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Json<JobView>, ApiError> {
    // The hot read: key and job from the cache when it holds them; otherwise the key, then the
    // job under the tenant's scope. A malformed id is a random id's 404, after the key is
    // checked like anywhere else.
    let parsed = Uuid::parse_str(&id).ok();
    let (auth, job) = authenticate(&parts, &api, Some(parsed.unwrap_or_default())).await?;
    match (parsed, job) {
        (Some(_), Some(job)) => Ok(Json(JobView::from(&job))),
        _ => Err(ApiError::not_found(&auth.request_id)),
    }
}

/// A page of jobs.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// The caller's deletion receipts.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReceiptList {
    pub receipts: Vec<crate::jobs::Receipt>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct ListQuery {
    /// Only jobs in this state.
    state: Option<String>,
    /// 1-500 [default 50].
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The caller's jobs, newest first, cursor-paged.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("api_key" = [])),
    params(ListQuery),
    responses((status = 200, body = JobPage),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_jobs(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let rid = &auth.request_id;
    let bad = |m: &str| ApiError::new(ErrorCode::BadRequest, m, rid);
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            bad("state must be one of queued, running, succeeded, rejected, failed, cancelled, purged")
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad("limit must be 1-500"));
    }
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| bad("cursor is not one this API gave"))?),
    };
    let jobs = api
        .store
        .jobs_of(&auth.caller.tenant, state, limit + 1, after.as_ref())
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let more = jobs.len() as i64 > limit;
    let page: Vec<_> = jobs.into_iter().take(limit as usize).collect();
    let next = more.then(|| {
        let last = page.last().expect("a full page");
        Cursor {
            created_at: last.created_at,
            id: last.id,
        }
        .encode()
    });
    Ok(Json(JobPage {
        jobs: page.iter().map(JobView::from).collect(),
        next_cursor: next,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct CreateQuery {
    /// The upload's file name (or send `X-File-Name`); sanitised.
    name: Option<String>,
    /// A stored schema's id to check every row against, or `none` [default: the tenant's
    /// default schema, if it has one].
    schema: Option<String>,
}

/// A download name from what a client sent: its last path component, printable, at most 200
/// characters; `upload.csv` when nothing usable is left.
fn sanitize_name(raw: Option<&str>) -> String {
    let base = raw.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '<' | '>' | '|' | '*' | '?' | ':'))
        .take(200)
        .collect();
    let clean = clean.trim().trim_start_matches('.').to_string();
    if clean.is_empty() {
        "upload.csv".into()
    } else {
        clean
    }
}

/// `POST /v1/jobs`: the body is the CSV. `Content-Length` is required and checked against the
/// tenant's plan before a byte is read (413 at once); only `text/csv` and
/// `application/octet-stream` are accepted (415). The body is streamed to a private temp file,
/// never held in memory, then uploaded and enqueued like `airlock submit` does. The file name
/// comes from `X-File-Name` or `?name=`, sanitised; `Idempotency-Key` returns the same job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", security(("api_key" = [])),
    params(CreateQuery,
        ("Content-Length" = u64, Header, description = "Required; checked against the plan before anything is read"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the same job"),
        ("X-File-Name" = Option<String>, Header, description = "The upload's file name")),
    request_body(content = Vec<u8>, description = "The CSV", content_type = "text/csv"),
    responses((status = 202, description = "The job, queued", body = JobView),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 408, body = ErrorBody), (status = 411, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn create_job(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Query(q): Query<CreateQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    let rid = auth.request_id.as_str();
    let tenant = auth.caller.tenant.as_str();
    let err = |code, m: String| ApiError::new(code, m, rid);
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if !matches!(
        media.as_deref(),
        Some("text/csv") | Some("application/octet-stream")
    ) {
        return Err(err(
            ErrorCode::UnsupportedMediaType,
            "send the CSV as text/csv or application/octet-stream".into(),
        ));
    }
    let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return Err(err(
            ErrorCode::LengthRequired,
            "send Content-Length (the size is checked against your plan before anything is read)"
                .into(),
        ));
    };
    let plan = plan_of(&api, tenant, rid).await?;
    if length > plan.limits.max_bytes {
        return Err(err(
            ErrorCode::TooLarge,
            format!(
                "the file is {length} bytes; your plan allows {}",
                plan.limits.max_bytes
            ),
        ));
    }
    let schema = job_schema(&api, tenant, q.schema.as_deref(), rid).await?;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Some(k.to_string()),
            _ => {
                return Err(err(
                    ErrorCode::BadRequest,
                    "Idempotency-Key must be 1-255 visible characters".into(),
                ))
            }
        },
        None => None,
    };
    let name = sanitize_name(
        headers
            .get("x-file-name")
            .and_then(|v| v.to_str().ok())
            .or(q.name.as_deref()),
    );
    let Some(_slots) = api.uploads.try_take(tenant) else {
        return Err(err(
            ErrorCode::TooManyUploads,
            format!(
                "at most {} uploads at once per tenant ({} in all); retry shortly",
                UploadSlots::PER_TENANT,
                UploadSlots::TOTAL
            ),
        )
        .retry_after(5));
    };
    if let Some(k) = &idempotency_key {
        // The same key returns the same job, without storing the body again.
        match api.store.find_idempotent(tenant, k).await {
            Ok(Some(existing)) => return respond_with_job(&api, existing, rid).await,
            Ok(None) => {}
            Err(e) => return Err(ApiError::unavailable(rid, &e)),
        }
    }
    // Stage the body (streamed, capped at the declared length, dropped when it stalls) and
    // store it at the same time: a large body goes up part by part as its parts land on disk.
    let staging = tempfile::Builder::new()
        .prefix("airlock-upload-")
        .tempdir_in(&api.work_dir)
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let path = staging.path().join("upload");
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let input = crate::storage::ObjectKey::new(crate::storage::Kind::Input);
    let meta = crate::storage::PutMeta {
        content_type: "application/octet-stream".into(),
        download_name: name.clone(),
    };
    let (written, on_disk) = tokio::sync::watch::channel(0u64);
    let receive = async move {
        let mut body = body;
        let mut received: u64 = 0;
        let mut announced: u64 = 0;
        loop {
            let frame = match tokio::time::timeout(BODY_IDLE, body.frame()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    return Err(err(
                        ErrorCode::BodyTimeout,
                        format!("the upload sent nothing for {} s", BODY_IDLE.as_secs()),
                    ))
                }
            };
            let frame = frame.map_err(|_| {
                err(
                    ErrorCode::IncompleteBody,
                    "the upload ended before Content-Length bytes arrived".into(),
                )
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            received += chunk.len() as u64;
            if received > length {
                return Err(err(
                    ErrorCode::IncompleteBody,
                    "the body is longer than Content-Length".into(),
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::unavailable(rid, &e))?;
            // Flushed, so the store can read what is announced.
            if received - announced >= ANNOUNCE_EVERY {
                file.flush()
                    .await
                    .map_err(|e| ApiError::unavailable(rid, &e))?;
                announced = received;
                let _ = written.send(received);
            }
        }
        if received != length {
            return Err(err(
                ErrorCode::IncompleteBody,
                "the upload ended before Content-Length bytes arrived".into(),
            ));
        }
        file.flush()
            .await
            .map_err(|e| ApiError::unavailable(rid, &e))?;
        let _ = written.send(received);
        Ok(received)
        // `written` is dropped here: on any error above, the store gives up and stores nothing.
    };
    // Storage failing first ends the request at once (the rest of the body is not read).
    let received = {
        let store = api
            .objects
            .put_growing(&input, &path, length, &meta, on_disk);
        tokio::pin!(receive, store);
        tokio::select! {
            r = &mut receive => {
                // Awaited either way: on a failed body it aborts what it began.
                let stored = store.await;
                let n = r?;
                stored.map_err(|e| ApiError::unavailable(rid, &e))?;
                n
            }
            s = &mut store => {
                s.map_err(|e| ApiError::unavailable(rid, &e))?;
                receive.await?
            }
        }
    };
    drop(staging);
    let job = crate::jobs::NewJob {
        id: Uuid::new_v4(),
        tenant: tenant.to_string(),
        idempotency_key: idempotency_key.clone(),
        plan: plan.name.clone(),
        input_key: input.to_string(),
        input_bytes: received as i64,
        file_name: name,
        max_attempts: 5,
        schema,
    };
    let jobs: crate::jobs::Shared = api.store.clone();
    let id = crate::service::enqueue_stored(&jobs, &api.objects, &job, input)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    tracing::info!(job_id = %id, bytes = received, "job submitted");
    respond_with_job(&api, id, rid).await
}

/// The schema copy a new job keeps: `?schema=ID`, `none`, or the tenant's default.
async fn job_schema(
    api: &Api,
    tenant: &str,
    param: Option<&str>,
    rid: &str,
) -> Result<Option<crate::schemas::JobSchemaCopy>, ApiError> {
    use crate::schemas::{Choice, ResolveError};
    let choice =
        Choice::from_param(param).map_err(|m| ApiError::new(ErrorCode::UnknownSchema, m, rid))?;
    match choice.resolve(&api.store, tenant).await {
        Ok(schema) => Ok(schema),
        Err(e @ ResolveError::Missing(_)) => {
            Err(ApiError::new(ErrorCode::UnknownSchema, e.to_string(), rid))
        }
        Err(ResolveError::Store(e)) => Err(ApiError::unavailable(rid, &e)),
    }
}

/// 202 with the job.
async fn respond_with_job(api: &Api, id: Uuid, rid: &str) -> Result<Response, ApiError> {
    match api.store.get(id).await {
        Ok(Some(job)) => Ok((StatusCode::ACCEPTED, Json(JobView::from(&job))).into_response()),
        Ok(None) => Err(ApiError::unavailable(
            rid,
            &"the new job is not readable yet",
        )),
        Err(e) => Err(ApiError::unavailable(rid, &e)),
    }
}

/// The tenant's plan (`default` for a tenant submitted to before it was registered).
async fn plan_of<'a>(
    api: &'a Api,
    tenant: &str,
    rid: &str,
) -> Result<&'a crate::policy::limits::Plan, ApiError> {
    let registered = api
        .store
        .tenant(tenant)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let name = registered
        .map(|t| t.plan)
        .unwrap_or_else(|| "default".into());
    api.policies
        .limits
        .plan(&name)
        .map_err(|e| ApiError::unavailable(rid, &e))
}

/// How long an upload link lives.
const UPLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// How long after its link expires an upload can still be completed. Past this it is an
/// orphan; the orphan sweep's grace (hours) is far longer, so nothing it deletes can still be
/// completed.
const COMPLETE_GRACE_MS: i64 = 15 * 60 * 1000;

/// `POST /v1/uploads`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// The file's exact size in bytes.
    pub size: u64,
    /// The file's SHA-256, hex (as `sha256sum` prints it).
    pub sha256: String,
    /// The file's name, for download names; sanitised.
    pub name: Option<String>,
}

/// Where and how to upload.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct UploadTicket {
    /// The upload's id, and the id of the job it becomes.
    pub id: Uuid,
    /// Always `PUT`.
    pub method: String,
    /// The presigned link (at most 15 minutes).
    pub url: String,
    /// Send exactly these headers with the PUT: the signature covers them (the size and the
    /// SHA-256, which the store verifies).
    pub headers: std::collections::BTreeMap<String, String>,
    pub expires_at_ms: i64,
    /// `POST` here once the PUT succeeded.
    pub complete_url: String,
}

/// `POST /v1/uploads`: a presigned PUT for a large file, straight to storage. The size is
/// checked against the plan first (413); the link's signature covers the exact
/// `Content-Length` and `x-amz-checksum-sha256`, and it lives 10 minutes.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads", security(("api_key" = [])),
    request_body(content = UploadRequest, content_type = "application/json"),
    responses((status = 201, body = UploadTicket),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
async fn create_upload(
    State(api): State<Arc<Api>>,
    auth: Authed,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let rid = auth.request_id.as_str();
    let tenant = auth.caller.tenant.as_str();
    let bad = |m: String| ApiError::new(ErrorCode::BadRequest, m, rid);
    let req: UploadRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "send JSON {{\"size\": BYTES, \"sha256\": HEX, \"name\": NAME}}: {e}"
        ))
    })?;
    let digest = match hex::decode(&req.sha256) {
        Ok(d) if d.len() == 32 => d,
        _ => return Err(bad("sha256 must be 64 hexadecimal characters".into())),
    };
    let plan = plan_of(&api, tenant, rid).await?;
    if req.size > plan.limits.max_bytes {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "the file is {} bytes; your plan allows {}",
                req.size, plan.limits.max_bytes
            ),
            rid,
        ));
    }
    use base64::Engine;
    let sha256_b64 = base64::engine::general_purpose::STANDARD.encode(&digest);
    let key = crate::storage::ObjectKey::new(crate::storage::Kind::Input);
    let now = api
        .store
        .now()
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let put = api
        .objects
        .presign_put(&key, req.size, &sha256_b64, UPLOAD_TTL)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let upload = crate::tenants::Upload {
        id: Uuid::new_v4(),
        tenant: tenant.to_string(),
        object_key: key.to_string(),
        bytes: req.size,
        sha256_b64,
        file_name: sanitize_name(req.name.as_deref()),
        plan: plan.name.clone(),
        created_at: now,
        expires_at: now + UPLOAD_TTL.as_millis() as i64,
        completed_at: None,
    };
    api.store
        .create_upload(&upload)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    tracing::info!(upload_id = %upload.id, bytes = upload.bytes, "upload link issued");
    let ticket = UploadTicket {
        id: upload.id,
        method: "PUT".into(),
        url: put.url,
        headers: put.headers.into_iter().collect(),
        expires_at_ms: upload.expires_at,
        complete_url: format!("/v1/uploads/{}/complete", upload.id),
    };
    Ok((StatusCode::CREATED, Json(ticket)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct CompleteQuery {
    /// A stored schema's id to check every row against, or `none` [default: the tenant's
    /// default schema, if it has one].
    schema: Option<String>,
}

/// `POST /v1/uploads/{id}/complete`: the stored object's size and SHA-256 are checked against
/// what was declared, and the job (with the upload's id) is enqueued. Completing again returns
/// the same job.
#[utoipa::path(post, path = "/v1/uploads/{id}/complete", tag = "uploads", security(("api_key" = [])),
    params(("id" = String, Path, description = "The upload's id"), CompleteQuery),
    responses((status = 202, description = "The job, queued", body = JobView),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Nothing uploaded yet, or not what was declared", body = ErrorBody),
              (status = 410, body = ErrorBody)))]
async fn complete_upload(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
    Query(q): Query<CompleteQuery>,
) -> Result<Response, ApiError> {
    let rid = auth.request_id.as_str();
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such upload", rid);
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let upload = match api.store.upload(id).await {
        Ok(Some(u)) if u.tenant == auth.caller.tenant => u,
        Ok(_) => return Err(not_found()),
        Err(e) => return Err(ApiError::unavailable(rid, &e)),
    };
    let queued = |job: crate::jobs::JobRecord| {
        (StatusCode::ACCEPTED, Json(JobView::from(&job))).into_response()
    };
    if let Some(job) = api
        .store
        .get(id)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?
    {
        return Ok(queued(job));
    }
    let now = api
        .store
        .now()
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    if now > upload.expires_at + COMPLETE_GRACE_MS {
        return Err(ApiError::new(
            ErrorCode::UploadExpired,
            "this upload was not completed in time; ask for a new one",
            rid,
        ));
    }
    // One completion per upload at a time: the check reads (and may hash) the whole object.
    struct Completing<'a>(&'a Api, Uuid);
    impl Drop for Completing<'_> {
        fn drop(&mut self) {
            if let Ok(mut c) = self.0.completing.lock() {
                c.remove(&self.1);
            }
        }
    }
    let first = api
        .completing
        .lock()
        .map(|mut c| c.insert(id))
        .unwrap_or(false);
    if !first {
        return Err(ApiError::new(
            ErrorCode::Busy,
            "this upload is being completed; retry in a moment",
            rid,
        )
        .retry_after(1));
    }
    let _completing = Completing(&api, id);
    let key = crate::storage::ObjectKey::parse(&upload.object_key)
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let mismatch = |m: String| ApiError::new(ErrorCode::UploadMismatch, m, rid);
    let stored = match api.objects.digest(&key, upload.bytes).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Err(mismatch(
                "nothing has been uploaded yet: PUT the file to the upload's url first".into(),
            ))
        }
        Err(crate::storage::StorageError::TooLarge { size, .. }) => {
            return Err(mismatch(format!(
                "the stored object is {size} bytes; {} were declared",
                upload.bytes
            )))
        }
        Err(e) => return Err(ApiError::unavailable(rid, &e)),
    };
    if stored.size != upload.bytes || stored.sha256_b64 != upload.sha256_b64 {
        return Err(mismatch(
            "the stored object's size or SHA-256 is not what was declared".into(),
        ));
    }
    let schema = job_schema(&api, &upload.tenant, q.schema.as_deref(), rid).await?;
    let job = crate::jobs::NewJob {
        id: upload.id,
        tenant: upload.tenant.clone(),
        idempotency_key: None,
        plan: upload.plan.clone(),
        input_key: upload.object_key.clone(),
        input_bytes: upload.bytes as i64,
        file_name: upload.file_name.clone(),
        max_attempts: 5,
        schema,
    };
    let submitted = api.store.submit(&job, now).await;
    // A concurrent completion may have created it: the same id means the same job.
    let record = api
        .store
        .get(id)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let Some(record) = record else {
        return Err(match submitted {
            Err(e) => ApiError::unavailable(rid, &e),
            Ok(_) => ApiError::unavailable(rid, &"the new job is not readable yet"),
        });
    };
    if let Err(e) = api.store.complete_upload(id, now).await {
        tracing::warn!(error = %e, "marking the upload completed failed (the job exists)");
    }
    tracing::info!(job_id = %id, bytes = upload.bytes, "upload completed; job submitted");
    Ok(queued(record))
}

/// The caller's job, or the 404 a random id gets (a malformed id included).
async fn own_job(api: &Api, auth: &Authed, id: &str) -> Result<crate::jobs::JobRecord, ApiError> {
    let rid = &auth.request_id;
    let Ok(id) = Uuid::parse_str(id) else {
        return Err(ApiError::not_found(rid));
    };
    match api.store.get(id).await {
        Ok(Some(job)) if job.tenant == auth.caller.tenant => Ok(job),
        Ok(_) => Err(ApiError::not_found(rid)),
        Err(e) => Err(ApiError::unavailable(rid, &e)),
    }
}

/// `GET /readyz`: the job store and the object store both answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`{\"database\": \"ok\", \"storage\": \"ok\"}`"),
              (status = 503, description = "One of them is `unavailable`")))]
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let db = api.store.now().await.is_ok();
    // One cheap request: a HEAD of a key that does not exist.
    let probe = crate::storage::ObjectKey::new(crate::storage::Kind::Input);
    let storage = api.objects.head(&probe).await.is_ok();
    let status = if db && storage {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        Json(serde_json::json!({"database": word(db), "storage": word(storage)})),
    )
        .into_response()
}

/// `GET /v1/jobs/{id}/{output|rejects|report}`: 303 to a fresh presigned link (the presign
/// policy's TTL, at most 300 s), recorded in the job's audit trail. Refused for unfinished (409)
/// and purged (410) jobs.
#[utoipa::path(get, path = "/v1/jobs/{id}/{artifact}", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "The job's id"),
           ("artifact" = Artifact, Path, description = "output, rejects or report")),
    responses((status = 303, description = "`Location` is a fresh presigned link (≤ 300 s)"),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn artifact_link(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path((id, artifact)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rid = auth.request_id.clone();
    let job = own_job(&api, &auth, &id).await?;
    let Some(artifact) = Artifact::parse(&artifact) else {
        return Err(ApiError::not_found(&rid));
    };
    if job.state == JobState::Purged {
        return Err(ApiError::new(
            ErrorCode::Purged,
            "the job's files were deleted (retention or erasure)",
            &rid,
        ));
    }
    if !job.state.is_finished() {
        return Err(ApiError::new(
            ErrorCode::NotFinished,
            format!(
                "the job is {}; files exist only once it has finished",
                job.state
            ),
            &rid,
        ));
    }
    let Some(key) = artifact.key_of(&job) else {
        return Err(ApiError::new(
            ErrorCode::NoArtifact,
            format!("this job has no {artifact} (it is {})", job.state),
            &rid,
        ));
    };
    let key = crate::storage::ObjectKey::parse(key).map_err(|e| ApiError::unavailable(&rid, &e))?;
    let ttl = api
        .policies
        .presign
        .ttl(None)
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    let url = api
        .objects
        .presign_get(&key, ttl, &artifact.file_name(&job.file_name))
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    let now = api
        .store
        .now()
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    api.store
        .record_link(job.id, &job.tenant, job.state, artifact, now)
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    let location = HeaderValue::from_str(&url).map_err(|e| ApiError::unavailable(&rid, &e))?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
}

/// `DELETE /v1/jobs/{id}`: a queued job is cancelled; a finished or cancelled one is erased now,
/// with a deletion receipt; a running one is refused (409).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "Erased (its receipt is in `GET /v1/receipts`)", body = JobView),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn delete_job(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rid = auth.request_id.clone();
    let job = own_job(&api, &auth, &id).await?;
    let now = api
        .store
        .now()
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    match job.state {
        JobState::Running => {
            return Err(ApiError::new(
                ErrorCode::JobRunning,
                "the job is running; delete it once it has finished",
                &rid,
            ))
        }
        JobState::Purged => {
            return Err(ApiError::new(
                ErrorCode::Purged,
                "the job's files were already deleted",
                &rid,
            ))
        }
        JobState::Queued => {
            match api.store.cancel(job.id, now).await {
                Ok(_) => {}
                // Claimed meanwhile.
                Err(crate::jobs::JobError::WrongState { .. }) => {
                    return Err(ApiError::new(
                        ErrorCode::JobRunning,
                        "the job started; delete it once it has finished",
                        &rid,
                    ))
                }
                Err(e) => return Err(ApiError::unavailable(&rid, &e)),
            }
        }
        _ => {}
    }
    if let Some(cache) = &api.cache {
        cache.forget_job(&job.tenant, job.id);
    }
    // Finished, or just cancelled: erase its files now.
    let jobs: crate::jobs::Shared = api.store.clone();
    let sweeper =
        crate::sweeper::Sweeper::new(jobs, api.objects.clone(), api.policies.retention.clone());
    let summary = sweeper
        .erase_job(&job.tenant, job.id, crate::jobs::Clock::Database)
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    if let Some(cache) = &api.cache {
        cache.forget_job(&job.tenant, job.id);
    }
    let after = api
        .store
        .get(job.id)
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?
        .ok_or_else(|| ApiError::not_found(&rid))?;
    if summary.jobs_purged == 1 {
        return Ok(Json(JobView::from(&after)).into_response());
    }
    if after.state == JobState::Purged {
        // Another erasure (or the retention sweep) got there first.
        return Err(ApiError::new(
            ErrorCode::Purged,
            "the job's files were already deleted",
            &rid,
        ));
    }
    if summary.failed() {
        return Err(ApiError::unavailable(
            &rid,
            &format!("erasure incomplete: {:?}", summary.failures),
        ));
    }
    // Held by a sweep, or cancelled while running and its attempt may still upload.
    Err(ApiError::new(
        ErrorCode::Busy,
        "the job is being erased or its last run is winding down; retry in a minute",
        &rid,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct AuditQuery {
    /// Records after this one (its `seq`) [default 0: from the start].
    after: Option<i64>,
    /// 1-1000 [default 100].
    limit: Option<i64>,
}

/// A page of the caller's audit chain, and its latest signed checkpoint.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub records: Vec<crate::audit::Exported>,
    /// `after` for the next page; absent at the end of the chain.
    pub next_after: Option<i64>,
    /// The latest signed statement of the chain's head (absent before the first).
    pub checkpoint: Option<crate::audit::checkpoint::Signed>,
}

/// `GET /v1/audit`: the caller's own audit chain, in order, paged; each record's canonical
/// body exactly as hashed, so it can be verified offline with the operator's public key.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("api_key" = [])),
    params(AuditQuery),
    responses((status = 200, body = AuditPage),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn audit_trail(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let rid = &auth.request_id;
    let limit = q.limit.unwrap_or(100);
    let after = q.after.unwrap_or(0);
    if !(1..=1000).contains(&limit) || after < 0 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "limit must be 1-1000 and after at least 0",
            rid,
        ));
    }
    let tenant = &auth.caller.tenant;
    let records = crate::audit::records(&api.store, tenant, after, limit)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let checkpoint = crate::audit::checkpoint::latest(&api.store, tenant)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let next_after = (records.len() as i64 == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(AuditPage {
        records,
        next_after,
        checkpoint,
    }))
}

/// `GET /v1/receipts`: the caller's deletion receipts, oldest first.
#[utoipa::path(get, path = "/v1/receipts", tag = "jobs", security(("api_key" = [])),
    responses((status = 200, body = ReceiptList), (status = 401, body = ErrorBody)))]
async fn receipts(
    State(api): State<Arc<Api>>,
    auth: Authed,
) -> Result<Json<ReceiptList>, ApiError> {
    let list = api
        .store
        .receipts(&auth.caller.tenant)
        .await
        .map_err(|e| ApiError::unavailable(&auth.request_id, &e))?;
    Ok(Json(ReceiptList { receipts: list }))
}
