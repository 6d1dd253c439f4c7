//! Who a job-store write is made for. `serve` runs each tenant request inside [`scope`], and
//! every audit record written meanwhile carries the request's id, so an action in the audit
//! trail leads back to the access log line and the error body that carried the same id. Once
//! the request's key is checked, [`set_actor`] names it as the actor; outside any request the
//! actor is the process's own ([`set_process_actor`]: the operator's CLI, a supervisor, the
//! sweeper).
//!
//! A request also carries its **tenant** once the key is checked ([`set_tenant`]), and an
//! operator's tenant-scoped command runs inside [`as_tenant`]. Every transaction the job store
//! opens meanwhile runs, on PostgreSQL, as the role `airlock_tenant` with `airlock.tenant` set
//! (`SqlStore::begin`), so row-level security admits that tenant's rows only, whatever a query's
//! own `WHERE` says. Outside both, work runs as the process's role (`airlock_service`).

use std::future::Future;
use std::sync::{Arc, OnceLock};

struct Request {
    id: Option<String>,
    actor: OnceLock<String>,
    tenant: OnceLock<String>,
}

tokio::task_local! {
    static REQUEST: Arc<Request>;
}

static PROCESS_ACTOR: OnceLock<String> = OnceLock::new();

/// Run `f` with `id` as the current request.
pub async fn scope<F: Future>(id: String, f: F) -> F::Output {
    let request = Arc::new(Request {
        id: Some(id),
        actor: OnceLock::new(),
        tenant: OnceLock::new(),
    });
    REQUEST.scope(request, f).await
}

/// Run `f` as `tenant` (an operator's tenant-scoped command): no request id, the process's
/// actor, and the store's transactions scoped to the tenant.
pub async fn as_tenant<F: Future>(tenant: String, f: F) -> F::Output {
    let request = Arc::new(Request {
        id: None,
        actor: OnceLock::new(),
        tenant: OnceLock::from(tenant),
    });
    REQUEST.scope(request, f).await
}

/// [`as_tenant`] when there is a tenant, else `f` as it is.
pub async fn maybe_as_tenant<F: Future>(tenant: Option<String>, f: F) -> F::Output {
    match tenant {
        Some(t) => as_tenant(t, f).await,
        None => f.await,
    }
}

/// The current request's id, outside any request `None`.
pub fn current() -> Option<String> {
    REQUEST.try_with(|r| r.id.clone()).ok().flatten()
}

/// Scope the rest of the current request to `tenant` (its key's). Set once: a later call
/// changes nothing, so nothing in a request can widen or switch its tenant. Returns whether the
/// request is now scoped to `tenant`: false outside any request (the caller must refuse to go
/// on, or the store would work unscoped) or when it is already another tenant's.
#[must_use]
pub fn set_tenant(tenant: String) -> bool {
    REQUEST
        .try_with(|r| r.tenant.get_or_init(|| tenant.clone()) == &tenant)
        .unwrap_or(false)
}

/// The tenant the current request or command is scoped to, if any.
pub fn tenant() -> Option<String> {
    REQUEST.try_with(|r| r.tenant.get().cloned()).ok().flatten()
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
