//! The API request a job-store write is made for. `serve` runs each tenant request inside
//! [`scope`], and every audit row written meanwhile records the request's id, so an action in
//! the audit trail leads back to the access log line and the error body that carried the same id.

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Run `f` with `id` as the current request.
pub async fn scope<F: Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The current request's id, outside any request `None`.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}
