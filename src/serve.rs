//! `airlock serve`: Airlock's HTTP endpoint. For now it serves signed-link downloads for the local
//! storage backend; the tenant API will join it on the same server. Listens on 127.0.0.1 by
//! default. Errors are one `ApiError` with a stable code; 5xx bodies are generic.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use crate::storage::fs::{check_link, FsStore, LinkError};
use crate::storage::{content_disposition, ObjectKey};

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
                "links allow GET only",
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

pub fn router(store: Arc<FsStore>) -> Router {
    Router::new()
        .route("/o/{*key}", any(download))
        .with_state(store)
}

async fn download(
    State(store): State<Arc<FsStore>>,
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
    check_link(store.signing_key(), key.as_str(), q.exp, &q.name, &q.sig).map_err(|e| match e {
        LinkError::BadSignature => ApiError::LinkInvalid,
        LinkError::Expired => ApiError::LinkExpired,
    })?;
    let file = match tokio::fs::File::open(store.path_of(&key)).await {
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
                HeaderValue::from_static("text/csv; charset=utf-8"),
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

/// Serve until SIGINT/SIGTERM.
pub async fn run(store: Arc<FsStore>, listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving signed-link downloads");
    axum::serve(listener, router(store))
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("shutting down");
        })
        .await?;
    Ok(())
}
