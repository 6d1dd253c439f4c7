//! Who a job-store write is made for. `serve` runs each tenant request inside [`scope`], and
//! every audit record written meanwhile carries the request's id, so an action in the audit
//! trail leads back to the access log line and the error body that carried the same id. Once
//! the request's key is checked, [`set_actor`] names it as the actor; outside any request the
//! actor is the process's own ([`set_process_actor`]: the operator's CLI, a supervisor, the
//! sweeper).

use std::future::Future;
use std::sync::{Arc, OnceLock};

struct Request {
    id: String,
    actor: OnceLock<String>,
}

tokio::task_local! {
    static REQUEST: Arc<Request>;
}

static PROCESS_ACTOR: OnceLock<String> = OnceLock::new();

/// Run `f` with `id` as the current request.
pub async fn scope<F: Future>(id: String, f: F) -> F::Output {
    let request = Arc::new(Request {
        id,
        actor: OnceLock::new(),
    });
    REQUEST.scope(request, f).await
}

/// The current request's id, outside any request `None`.
pub fn current() -> Option<String> {
    REQUEST.try_with(|r| r.id.clone()).ok()
}

/// Name the current request's actor (its API key), once its key is checked.
pub fn set_actor(actor: String) {
    let _ = REQUEST.try_with(|r| r.actor.set(actor));
}

/// Name this process's actor, for writes made outside any request.
pub fn set_process_actor(actor: String) {
    let _ = PROCESS_ACTOR.set(actor);
}

/// Who is acting: the request's key, else the process (`operator:…`, `supervisor:…`,
/// `sweeper:…`), else `unknown`.
pub fn actor() -> String {
    REQUEST
        .try_with(|r| r.actor.get().cloned())
        .ok()
        .flatten()
        .or_else(|| PROCESS_ACTOR.get().cloned())
        .unwrap_or_else(|| "unknown".into())
}
