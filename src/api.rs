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
use crate::tenants::{ApiKey, Caller, Cursor};

/// What the API handlers share.
#[derive(Debug)]
pub struct Api {
    pub store: Arc<SqlStore>,
    pub objects: Arc<dyn crate::storage::ObjectStore>,
    pub policies: Arc<crate::policy::Policies>,
    /// Where uploads are staged (in a private 0700 directory each) on their way to storage.
    pub work_dir: std::path::PathBuf,
    uploads: UploadSlots,
    liveness: Option<crate::liveness::Liveness>,
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
            liveness: None,
        }
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

/// An upload that sends nothing for this long is dropped.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// An API error: a stable code, a message, and the request's id.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    request_id: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>, rid: &str) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            request_id: rid.to_string(),
        }
    }

    /// The one answer for every authentication failure: nothing tells them apart.
    fn unauthenticated(rid: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send a valid API key as `Authorization: Bearer al_live_…` (never in the URL)",
            rid,
        )
    }

    /// Missing, and another tenant's, look the same.
    fn not_found(rid: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such job", rid)
    }

    fn unavailable(rid: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "the job store failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service is unavailable; retry later",
            rid,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {
            "code": self.code,
            "message": self.message,
            "request_id": self.request_id,
        }});
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"airlock\""),
            );
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

/// An authenticated caller, from `Authorization: Bearer`.
#[derive(Debug)]
pub struct Authed {
    pub caller: Caller,
    pub request_id: String,
}

impl FromRequestParts<Arc<Api>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let rid = request_id(&parts.headers);
        // A key in the URL ends up in logs and histories: refused, even a valid one, however
        // it is encoded.
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
        match api.store.authenticate(&presented).await {
            Ok(Some(caller)) => {
                tracing::Span::current().record("tenant", caller.tenant.as_str());
                Ok(Authed {
                    caller,
                    request_id: rid,
                })
            }
            Ok(None) => Err(ApiError::unauthenticated(&rid)),
            Err(e) => Err(ApiError::unavailable(&rid, &e)),
        }
    }
}

pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/{artifact}", get(artifact_link))
        .route("/v1/receipts", get(receipts))
        .layer(axum::middleware::map_response(security_headers));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(v1)
        .with_state(api)
}

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
async fn healthz(State(api): State<Arc<Api>>) -> Response {
    match api.liveness.as_ref().map_or(Ok(()), |l| l.check()) {
        Ok(()) => "ok".into_response(),
        Err(part) => {
            tracing::error!(part = part.as_str(), "liveness check failed: stalled");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "stalled", "part": part.as_str()})),
            )
                .into_response()
        }
    }
}

async fn get_job(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = own_job(&api, &auth, &id).await?;
    Ok(Json(crate::service::job_json(&job)).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn list_jobs(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let rid = &auth.request_id;
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m, rid);
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
    Ok(Json(serde_json::json!({
        "jobs": page.iter().map(crate::service::job_json).collect::<Vec<_>>(),
        "next_cursor": next,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    name: Option<String>,
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
    let err = |status, code, m: String| ApiError::new(status, code, m, rid);
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
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the CSV as text/csv or application/octet-stream".into(),
        ));
    }
    let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return Err(err(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send Content-Length (the size is checked against your plan before anything is read)"
                .into(),
        ));
    };
    let registered = api
        .store
        .tenant(tenant)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    let plan_name = registered
        .map(|t| t.plan)
        .unwrap_or_else(|| "default".into());
    let plan = api
        .policies
        .limits
        .plan(&plan_name)
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    if length > plan.limits.max_bytes {
        return Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the file is {length} bytes; your plan allows {}",
                plan.limits.max_bytes
            ),
        ));
    }
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Some(k.to_string()),
            _ => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
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
        let mut res = err(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            format!(
                "at most {} uploads at once per tenant ({} in all); retry shortly",
                UploadSlots::PER_TENANT,
                UploadSlots::TOTAL
            ),
        )
        .into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(res);
    };
    // Stage the body: streamed, capped at the declared length, and dropped when it stalls.
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
    let mut body = body;
    let mut received: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(err(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the upload sent nothing for {} s", BODY_IDLE.as_secs()),
                ))
            }
        };
        let frame = frame.map_err(|_| {
            err(
                StatusCode::BAD_REQUEST,
                "incomplete_body",
                "the upload ended before Content-Length bytes arrived".into(),
            )
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        received += chunk.len() as u64;
        if received > length {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "incomplete_body",
                "the body is longer than Content-Length".into(),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::unavailable(rid, &e))?;
    }
    if received != length {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "incomplete_body",
            "the upload ended before Content-Length bytes arrived".into(),
        ));
    }
    file.flush()
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    drop(file);
    let jobs: crate::jobs::Shared = api.store.clone();
    let submitted = crate::service::submit_to(
        &jobs,
        &api.objects,
        &api.policies,
        crate::service::SubmitArgs {
            tenant,
            idempotency_key: idempotency_key.as_deref(),
            plan: &plan.name,
            file: &path,
            follow_symlinks: false,
            file_name: Some(&name),
        },
    )
    .await;
    drop(staging);
    let id = submitted.map_err(|e| match e {
        crate::service::CommandError::Refused(m) => {
            err(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)
        }
        e => ApiError::unavailable(rid, &e),
    })?;
    tracing::info!(job_id = %id, bytes = received, "job submitted");
    match api.store.get(id).await {
        Ok(Some(job)) => {
            Ok((StatusCode::ACCEPTED, Json(crate::service::job_json(&job))).into_response())
        }
        Ok(None) => Err(ApiError::unavailable(
            rid,
            &"the new job is not readable yet",
        )),
        Err(e) => Err(ApiError::unavailable(rid, &e)),
    }
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
async fn artifact_link(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path((id, artifact)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rid = auth.request_id.clone();
    let job = own_job(&api, &auth, &id).await?;
    let (key, suffix) = match artifact.as_str() {
        "output" => (&job.output_key, "clean.csv"),
        "rejects" => (&job.rejects_key, "rejects.csv"),
        "report" => (&job.report_key, "report.json"),
        _ => return Err(ApiError::not_found(&rid)),
    };
    if job.state == JobState::Purged {
        return Err(ApiError::new(
            StatusCode::GONE,
            "purged",
            "the job's files were deleted (retention or erasure)",
            &rid,
        ));
    }
    if !job.state.is_finished() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_finished",
            format!(
                "the job is {}; files exist only once it has finished",
                job.state
            ),
            &rid,
        ));
    }
    let Some(key) = key.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_artifact",
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
    let stem = std::path::Path::new(&job.file_name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".into());
    let url = api
        .objects
        .presign_get(&key, ttl, &format!("{stem}.{suffix}"))
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    let now = api
        .store
        .now()
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    api.store
        .record_link(job.id, &job.tenant, job.state, &artifact, &rid, now)
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    let location = HeaderValue::from_str(&url).map_err(|e| ApiError::unavailable(&rid, &e))?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
}

/// `DELETE /v1/jobs/{id}`: a queued job is cancelled; a finished or cancelled one is erased now,
/// with a deletion receipt; a running one is refused (409).
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
                StatusCode::CONFLICT,
                "job_running",
                "the job is running; delete it once it has finished",
                &rid,
            ))
        }
        JobState::Purged => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "purged",
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
                        StatusCode::CONFLICT,
                        "job_running",
                        "the job started; delete it once it has finished",
                        &rid,
                    ))
                }
                Err(e) => return Err(ApiError::unavailable(&rid, &e)),
            }
        }
        _ => {}
    }
    // Finished, or just cancelled: erase its files now.
    let jobs: crate::jobs::Shared = api.store.clone();
    let sweeper =
        crate::sweeper::Sweeper::new(jobs, api.objects.clone(), api.policies.retention.clone());
    let summary = sweeper
        .erase_job(&job.tenant, job.id, crate::jobs::Clock::Database)
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?;
    let after = api
        .store
        .get(job.id)
        .await
        .map_err(|e| ApiError::unavailable(&rid, &e))?
        .ok_or_else(|| ApiError::not_found(&rid))?;
    if summary.jobs_purged == 1 {
        return Ok(Json(crate::service::job_json(&after)).into_response());
    }
    if after.state == JobState::Purged {
        // Another erasure (or the retention sweep) got there first.
        return Err(ApiError::new(
            StatusCode::GONE,
            "purged",
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
        StatusCode::CONFLICT,
        "busy",
        "the job is being erased or its last run is winding down; retry in a minute",
        &rid,
    ))
}

/// `GET /v1/receipts`: the caller's deletion receipts, oldest first.
async fn receipts(State(api): State<Arc<Api>>, auth: Authed) -> Result<Response, ApiError> {
    let list = api
        .store
        .receipts(&auth.caller.tenant)
        .await
        .map_err(|e| ApiError::unavailable(&auth.request_id, &e))?;
    Ok(Json(serde_json::json!({ "receipts": list })).into_response())
}
