//! The tenant API's schema routes: `/v1/schemas` (list) and `/v1/schemas/{id}` (put, get,
//! delete). A schema is checked when it is put: a bad one is a 400 `invalid_schema` whose
//! `pointer` is a JSON pointer to the bad part. Another tenant's schema is a 404 exactly like
//! one that does not exist.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::api::{Api, ApiError, Authed, ErrorBody, ErrorCode};
use crate::schemas::{SchemaWithBody, StoredSchema};

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SchemaList {
    pub schemas: Vec<StoredSchema>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PutQuery {
    /// Make it the tenant's default: jobs submitted without `?schema=` use it [default: false].
    #[serde(default)]
    default: bool,
}

fn not_found(rid: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such schema", rid)
}

/// The id from the path, or the 404 an unknown id gets (a malformed one included).
fn schema_id<'a>(rid: &str, id: &'a str) -> Result<&'a str, ApiError> {
    crate::schemas::check_id(id).map_err(|_| not_found(rid))?;
    Ok(id)
}

/// The caller's schemas (ids, hashes, defaults; not their JSON).
#[utoipa::path(get, path = "/v1/schemas", tag = "schemas", security(("api_key" = [])),
    responses((status = 200, body = SchemaList), (status = 401, body = ErrorBody)))]
pub async fn list(State(api): State<Arc<Api>>, auth: Authed) -> Result<Json<SchemaList>, ApiError> {
    let schemas = api
        .store
        .schemas(&auth.caller.tenant)
        .await
        .map_err(|e| ApiError::unavailable(&auth.request_id, &e))?;
    Ok(Json(SchemaList { schemas }))
}

/// Store the body (a Frictionless Table Schema, JSON, at most 64 KiB) as the schema `id`,
/// replacing one of that id. Jobs already submitted keep the copy they took.
#[utoipa::path(put, path = "/v1/schemas/{id}", tag = "schemas", security(("api_key" = [])),
    params(("id" = String, Path, description = "1-64 characters of A-Z a-z 0-9 - _ ."), PutQuery),
    request_body(content = Object, content_type = "application/json", description = "The Table Schema"),
    responses((status = 201, description = "Stored", body = StoredSchema),
              (status = 200, description = "Replaced", body = StoredSchema),
              (status = 400, description = "Not a schema this build accepts; `pointer` says where", body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn put(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
    Query(q): Query<PutQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let rid = auth.request_id.as_str();
    crate::schemas::check_id(&id).map_err(|m| ApiError::new(ErrorCode::BadRequest, m, rid))?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidSchema,
            "send the schema as UTF-8 JSON",
            rid,
        )
    })?;
    let schema =
        crate::schema::JobSchema::parse(text).map_err(|e| ApiError::invalid_schema(rid, &e))?;
    let (stored, created) = api
        .store
        .put_schema(&auth.caller.tenant, &id, &schema, q.default)
        .await
        .map_err(|e| ApiError::unavailable(rid, &e))?;
    tracing::info!(schema_id = %id, created, "schema stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored)).into_response())
}

/// One of the caller's schemas, with its JSON.
#[utoipa::path(get, path = "/v1/schemas/{id}", tag = "schemas", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = SchemaWithBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<SchemaWithBody>, ApiError> {
    let rid = auth.request_id.as_str();
    let id = schema_id(rid, &id)?;
    match api.store.schema(&auth.caller.tenant, id).await {
        Ok(Some((meta, body))) => {
            let schema = serde_json::from_str(&body).map_err(|e| ApiError::unavailable(rid, &e))?;
            Ok(Json(SchemaWithBody { meta, schema }))
        }
        Ok(None) => Err(not_found(rid)),
        Err(e) => Err(ApiError::unavailable(rid, &e)),
    }
}

/// Delete one of the caller's schemas; jobs already submitted keep their copy.
#[utoipa::path(delete, path = "/v1/schemas/{id}", tag = "schemas", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(api): State<Arc<Api>>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let rid = auth.request_id.as_str();
    let id = schema_id(rid, &id)?;
    match api.store.delete_schema(&auth.caller.tenant, id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(not_found(rid)),
        Err(e) => Err(ApiError::unavailable(rid, &e)),
    }
}
