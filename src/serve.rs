//! `airlock serve`: Airlock's HTTP endpoint: the tenant API (`crate::api`) and, for the local
//! storage backend, signed-link downloads. Listens on 127.0.0.1 by default. Errors carry a
//! stable code; 5xx bodies are generic.
//!
//! The accept loop is hyper's HTTP/1 connection driven directly, because it needs what
//! `axum::serve` does not set: a cap on open connections ([`Limits::max_connections`]; past it,
//! new ones wait in the kernel's backlog), and a header-read timeout that also closes idle
//! keep-alive connections ([`Limits::header_timeout`]), so neither a slowloris client nor
//! thousands of idle sockets can starve a real download. Every request has an id (the client's
//! plain `X-Request-Id`, or a new UUID), echoed in the response, its error body and the audit
//! rows it writes, and one access-log line: method, route, status, duration — never the query,
//! which carries the link's signature.

use std::sync::Arc;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use crate::storage::fs::{check_link, FsStore, LinkError};
use crate::storage::{content_disposition, ObjectKey};

/// How much `serve` lets clients hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle keep-alive connection is closed
    /// after it.
    pub header_timeout: Duration,
    /// At shutdown, in-flight downloads get this long to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    LinkInvalid,
    LinkExpired,
    NotFound,
    MethodNotAllowed,
    Internal,
}

impl ApiError {
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::LinkInvalid => (
                StatusCode::FORBIDDEN,
                "link_invalid",
                "this link is not valid; ask for a new one",
            ),
            ApiError::LinkExpired => (
                StatusCode::FORBIDDEN,
                "link_expired",
                "this link has expired; ask for a new one",
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such object"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "download links allow GET only, upload links PUT only",
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

#[derive(Debug)]
struct LinkQuery {
    exp: u64,
    name: String,
    sig: String,
}

impl LinkQuery {
    fn from_map(q: &std::collections::HashMap<String, String>) -> Option<Self> {
        Some(LinkQuery {
            exp: q.get("exp")?.parse().ok()?,
            name: q.get("name")?.clone(),
            sig: q.get("sig")?.clone(),
        })
    }
}

/// Signed uploads to the local backend in progress at once; more get 429.
const LOCAL_UPLOADS: usize = 16;

/// The local backend's links: its store, and the uploads in progress (one per key at a time).
#[derive(Debug)]
pub struct Local {
    store: Arc<FsStore>,
    uploading: std::sync::Mutex<std::collections::HashSet<String>>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// Signed-link downloads for the local backend.
pub fn downloads(store: Arc<FsStore>) -> Router {
    let local = Arc::new(Local {
        store,
        uploading: std::sync::Mutex::new(std::collections::HashSet::new()),
        slots: Arc::new(tokio::sync::Semaphore::new(LOCAL_UPLOADS)),
    });
    Router::new()
        .route("/o/{*key}", any(download))
        .route("/u/{*key}", any(upload))
        .with_state(local)
}

/// The downloads alone, with request ids and the access log.
pub fn router(store: Arc<FsStore>) -> Router {
    with_access_log(downloads(store))
}

/// Everything `airlock serve` answers: the tenant API, and the downloads when storage is local.
pub fn app(api: Arc<crate::api::Api>, local: Option<Arc<FsStore>>) -> Router {
    let metrics = api.metrics.clone();
    let hsts = api.hsts;
    let mut routes = crate::api::router(api);
    if let Some(store) = local {
        routes = routes.merge(downloads(store));
    }
    // On every response, including unmatched routes and the downloads.
    with_access_log(
        routes
            .layer(axum::middleware::map_response(crate::api::security_headers))
            .layer(axum::middleware::map_response(
                move |mut res: Response| async move {
                    // TLS is terminated in front of `serve` (README): an https public URL says
                    // clients arrive over it.
                    if hsts {
                        res.headers_mut().insert(
                            header::STRICT_TRANSPORT_SECURITY,
                            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
                        );
                    }
                    res
                },
            ))
            .layer(axum::middleware::from_fn(request_scope))
            .layer(axum::middleware::from_fn_with_state(metrics, measure)),
    )
}

/// Requests by route, method and status, and their durations, for `/metrics`.
async fn measure(
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().clone();
    let start = std::time::Instant::now();
    let res = next.run(req).await;
    metrics.request(
        &route,
        method.as_str(),
        res.status().as_u16(),
        start.elapsed(),
    );
    res
}

/// Audit rows written while handling the request record its id.
async fn request_scope(req: Request, next: axum::middleware::Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    crate::jobs::request::scope(id, next.run(req)).await
}

/// Whether a client's `X-Request-Id` is kept: 1-128 characters of `A-Z a-z 0-9 . _ : -`, so it
/// is safe in logs, audit rows and headers. Anything else is replaced by a new UUID.
pub fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// Request ids and one access-log line per request. The last layer added runs first: the id is
/// set, then the request is traced, then the id is copied to the response.
fn with_access_log(routes: Router) -> Router {
    use tower_http::request_id::{
        MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
    };
    use tower_http::trace::TraceLayer;
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            let request_id = req
                .extensions()
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or("-");
            // Never the URI: its query is the link's signature. The tenant is recorded once a
            // key has been checked.
            tracing::info_span!(
                "request",
                method = %req.method(),
                route,
                request_id,
                tenant = tracing::field::Empty
            )
        })
        .on_request(())
        .on_response(|res: &Response, latency: Duration, _: &tracing::Span| {
            tracing::info!(
                status = res.status().as_u16(),
                millis = latency.as_millis() as u64,
                "served"
            );
        });
    routes
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // A client's own X-Request-Id is honoured when it is plain; otherwise a new one is made.
        .layer(axum::middleware::map_request(
            |mut req: Request| async move {
                let keep = req
                    .headers()
                    .get_all("x-request-id")
                    .iter()
                    .map(acceptable_request_id)
                    .collect::<Vec<_>>();
                if keep != [true] {
                    req.headers_mut().remove("x-request-id");
                }
                req
            },
        ))
}

async fn download(
    State(local): State<Arc<Local>>,
    method: Method,
    Path(key): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // The signature covers GET only; HEAD, PUT and the rest are refused before anything else.
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let q = LinkQuery::from_map(&query).ok_or(ApiError::LinkInvalid)?;
    let key = ObjectKey::parse(&key).map_err(|_| ApiError::LinkInvalid)?;
    check_link(
        local.store.signing_key(),
        key.as_str(),
        q.exp,
        &q.name,
        &q.sig,
    )
    .map_err(|e| match e {
        LinkError::BadSignature | LinkError::BeyondCap => ApiError::LinkInvalid,
        LinkError::Expired => ApiError::LinkExpired,
    })?;
    let file = match tokio::fs::File::open(local.store.path_of(&key)).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::NotFound),
        Err(e) => {
            tracing::error!(error = %e, key = %key, "opening an object failed");
            return Err(ApiError::Internal);
        }
    };
    let len = file
        .metadata()
        .await
        .map(|m| m.len())
        .map_err(|_| ApiError::Internal)?;
    let disposition =
        HeaderValue::from_str(&content_disposition(&q.name)).map_err(|_| ApiError::LinkInvalid)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(key.kind().content_type()),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response())
}

/// `PUT /u/{key}?exp&len&sha&sig`: the local backend's presigned upload. The signature covers
/// the key, the expiry, the exact size and the SHA-256; `Content-Length` and
/// `x-amz-checksum-sha256` must be those, and the body must match them, or nothing is stored.
/// An existing object is never replaced.
async fn upload(
    State(local): State<Arc<Local>>,
    method: Method,
    Path(key): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    use crate::storage::fs::{check_put_link, receive_upload, UploadError};
    let refuse = |status: StatusCode, code: &str, message: &str| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
        )
            .into_response()
    };
    if method != Method::PUT {
        return ApiError::MethodNotAllowed.into_response();
    }
    let signed = (|| {
        let exp: u64 = query.get("exp")?.parse().ok()?;
        let len: u64 = query.get("len")?.parse().ok()?;
        Some((
            exp,
            len,
            query.get("sha")?.clone(),
            query.get("sig")?.clone(),
        ))
    })();
    let Some((exp, len, sha, sig)) = signed else {
        return ApiError::LinkInvalid.into_response();
    };
    let key = match ObjectKey::parse(&key) {
        Ok(k) if k.kind() == crate::storage::Kind::Input => k,
        _ => return ApiError::LinkInvalid.into_response(),
    };
    match check_put_link(
        local.store.signing_key(),
        key.as_str(),
        exp,
        len,
        &sha,
        &sig,
    ) {
        Ok(()) => {}
        Err(LinkError::Expired) => return ApiError::LinkExpired.into_response(),
        Err(_) => return ApiError::LinkInvalid.into_response(),
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("content-length") != Some(len.to_string().as_str())
        || header("x-amz-checksum-sha256") != Some(sha.as_str())
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "headers_not_signed",
            "send exactly the headers the upload was issued with (Content-Length, x-amz-checksum-sha256)",
        );
    }
    // One upload per key at a time, a bounded number in all, and none past its link's expiry
    // (plus the time to finish a transfer begun just before it).
    let Ok(_slot) = local.slots.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            "too many uploads in progress; retry shortly",
        );
    };
    struct Uploading<'a>(&'a Local, String);
    impl Drop for Uploading<'_> {
        fn drop(&mut self) {
            if let Ok(mut u) = self.0.uploading.lock() {
                u.remove(&self.1);
            }
        }
    }
    let fresh = local
        .uploading
        .lock()
        .map(|mut u| u.insert(key.to_string()))
        .unwrap_or(false);
    if !fresh {
        return refuse(
            StatusCode::CONFLICT,
            "exists",
            "this upload is already in progress",
        );
    }
    let _uploading = Uploading(&local, key.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let deadline = Duration::from_secs(exp.saturating_sub(now) + 60);
    let received = tokio::time::timeout(
        deadline,
        receive_upload(
            &local.store,
            &key,
            len,
            &sha,
            body.into_data_stream(),
            Duration::from_secs(30),
        ),
    )
    .await
    .unwrap_or(Err(UploadError::Stalled));
    match received {
        Ok(()) => StatusCode::OK.into_response(),
        Err(UploadError::Mismatch) => refuse(
            StatusCode::BAD_REQUEST,
            "bad_digest",
            "the body's size or SHA-256 is not the signed one",
        ),
        Err(UploadError::Incomplete) => refuse(
            StatusCode::BAD_REQUEST,
            "incomplete_body",
            "the body ended before Content-Length bytes",
        ),
        Err(UploadError::Stalled) => refuse(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the upload sent nothing for 30 s",
        ),
        Err(UploadError::Exists) => refuse(
            StatusCode::CONFLICT,
            "exists",
            "this upload was already stored",
        ),
        Err(UploadError::Io(e)) => {
            tracing::error!(error = %e, "storing an upload failed");
            ApiError::Internal.into_response()
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending().await,
            }
        } => {}
    }
}

/// Serve `app` on `listen` until SIGINT/SIGTERM, then let in-flight requests finish within the
/// drain timeout.
pub async fn run(app: Router, listen: &str, limits: Limits) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    serve_router(listener, app, limits, shutdown_signal()).await
}

/// Serve the downloads of `store` on a bound listener until `shutdown` completes.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    store: Arc<FsStore>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_router(listener, router(store), limits, shutdown).await
}

/// Serve `app` on a bound listener until `shutdown` completes.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    tracing::info!(
        addr = %listener.local_addr()?,
        max_connections = limits.max_connections,
        header_timeout_s = limits.header_timeout.as_secs(),
        "serving"
    );
    let app = app;
    let mut http = hyper::server::conn::http1::Builder::new();
    // Without a timer hyper cannot time anything out.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s?,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Every request on this connection knows its peer (per-IP limits, /metrics access).
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(crate::api::ClientAddr(peer));
                req
            },
        ));
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, timeout = e.is_timeout(), error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down; draining connections");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed; closing the remaining connections");
    }
    Ok(())
}
