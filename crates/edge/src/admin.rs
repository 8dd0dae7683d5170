//! The admin API (PROTOCOL.md 1.1, "API keys" and "Runtime config"): `/v1/admin/apikeys` and
//! `/v1/admin/config`, behind an API key with the `admin` scope (the bootstrap key from the
//! configuration has every scope). Served on the admin listener when one is configured, else
//! on the public one.
//!
//! Every answer is the protocol's: a missing, unknown or revoked key is `401`, a key without
//! the scope `403`, a runtime config with an unknown key or a bad value `400` naming the field
//! (an interval under its floor also names the cost), a stale version `409`. The runtime
//! config is stored normalized (every field written out), so `GET` shows the whole of it.
//!
//! For the dashboard (`/admin`, `dashboard.html` built into the binary) also: the queues'
//! stats, a queue's dead letters, their redrive and their purge.

// Handlers return axum responses as errors: the idiom of the framework, and cold paths.
#![allow(clippy::result_large_err)]

use crate::Inner;
use crate::http::error;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hubbub_protocol::ErrorCode;
use hubbub_protocol::admin::{
    ApiKeyInfo, CreateApiKey, CreatedApiKey, Load, MAX_WAIT_S, PutConfig, PutConfigResponse,
    RuntimeConfig, VersionedConfig,
};
use hubbub_protocol::http::HttpError;
use hubbub_queue::clock::now_ms;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// How long a long poll waits when `after_version` is given without `wait_s`, seconds.
const DEFAULT_WAIT_S: u64 = 30;

/// The admin routes, to merge into a listener's router.
pub(crate) fn routes() -> axum::Router<Arc<Inner>> {
    axum::Router::new()
        .route("/v1/admin/config", get(get_config).put(put_config))
        .route("/v1/admin/apikeys", get(list_keys).post(create_key))
        .route("/v1/admin/apikeys/{id}", delete(revoke_key))
        .route("/admin", get(dashboard))
        .route("/v1/admin/queues", get(queues))
        .route("/v1/admin/edges", get(edges))
        .route(
            "/v1/admin/queues/{name}/dlq",
            get(dead_letters).delete(purge),
        )
        .route("/v1/admin/queues/{name}/dlq/redrive", post(redrive))
        .layer(axum::middleware::map_response(count))
}

/// The dashboard page: one file, built into the binary; it asks for the key itself.
const DASHBOARD: &str = include_str!("admin/dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn count(resp: Response) -> Response {
    metrics::counter!(hubbub_protocol::metrics::ADMIN_REQUESTS, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

/// SHA-256 of a secret: keys are compared by their digests, so the comparison's time says
/// nothing of where they differ.
fn digest(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Check the request's API key for `scope`.
pub(crate) async fn authorize(
    inner: &Inner,
    headers: &HeaderMap,
    scope: &str,
) -> Result<(), Response> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = key else {
        return Err(error(
            ErrorCode::Unauthorized,
            "an API key is required: Authorization: Bearer <key>",
        ));
    };
    if let Some(boot) = &inner.config.bootstrap_key {
        let (a, b) = (digest(boot), digest(key));
        if a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
        {
            return Ok(());
        }
    }
    match inner.deps.store.api_key(key).await {
        Ok(Some(k)) if k.has(scope) => Ok(()),
        Ok(Some(_)) => Err(error(
            ErrorCode::Forbidden,
            format!("this API key does not have the {scope} scope"),
        )),
        Ok(None) => Err(error(ErrorCode::Unauthorized, "unknown or revoked API key")),
        Err(e) => {
            let (code, message) = e.for_client();
            Err(error(code, message))
        }
    }
}

fn store_error(e: hubbub_store::StoreError) -> Response {
    let (code, message) = e.for_client();
    error(code, message)
}

#[derive(Debug, Deserialize)]
struct PollQuery {
    after_version: Option<u64>,
    wait_s: Option<u64>,
}

/// The runtime config now: the stored one, or at version 0 the one this process runs on (its
/// configuration file's).
async fn current(inner: &Inner) -> Result<VersionedConfig, Response> {
    let stored = inner
        .deps
        .store
        .runtime_config()
        .await
        .map_err(store_error)?;
    if stored.version == 0 {
        return Ok(VersionedConfig {
            version: 0,
            config: inner.runtime().config.clone(),
        });
    }
    let value: serde_json::Value = serde_json::from_str(&stored.body).map_err(|e| {
        tracing::error!(error = %e, "the stored runtime config is not JSON");
        error(
            ErrorCode::Internal,
            "the stored runtime config is unreadable",
        )
    })?;
    let config = RuntimeConfig::parse(value).map_err(|e| {
        tracing::error!(error = %e, "the stored runtime config does not parse");
        error(
            ErrorCode::Internal,
            format!("the stored runtime config is invalid: {e}"),
        )
    })?;
    Ok(VersionedConfig {
        version: stored.version,
        config,
    })
}

/// The runtime config; with `after_version`, a long poll.
#[utoipa::path(get, path = "/v1/admin/config", tag = "admin",
    params(("after_version" = Option<u64>, Query, description = "Answer once the version is greater"),
           ("wait_s" = Option<u64>, Query, description = "Longest wait, seconds (at most 60)")),
    responses((status = 200, description = "`{\"version\",\"config\"}`", content_type = "application/json"), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
async fn get_config(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    query: Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    let Ok(Query(query)) = query else {
        return error(
            ErrorCode::BadRequest,
            "after_version and wait_s are non-negative integers",
        );
    };
    if let Some(after) = query.after_version {
        let wait = query.wait_s.unwrap_or(DEFAULT_WAIT_S).min(MAX_WAIT_S);
        let cancel = inner.cancel.clone();
        tokio::select! {
            _ = inner.deps.store.wait_runtime_config(after, Duration::from_secs(wait)) => {}
            _ = cancel.cancelled() => {}
        }
    }
    match current(&inner).await {
        Ok(c) => axum::Json(c).into_response(),
        Err(r) => r,
    }
}

/// Replace the runtime config (compare and set on `version`).
#[utoipa::path(put, path = "/v1/admin/config", tag = "admin",
    request_body(content = String, content_type = "application/json", description = "`{\"version\",\"config\"}`: what GET gave, changed"),
    responses((status = 200, description = "The new version", body = PutConfigResponse),
        (status = 400, description = "An unknown key, a bad value, an interval under its floor", body = HttpError),
        (status = 409, description = "Another version is current", body = HttpError), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
async fn put_config(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    let put: PutConfig = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(ErrorCode::BadRequest, format!("invalid body: {e}")),
    };
    let config = match RuntimeConfig::parse(put.config) {
        Ok(c) => c,
        Err(e) => return error(ErrorCode::BadRequest, e.to_string()),
    };
    let since = now_ms()
        .saturating_sub(i64::try_from(inner.config.active_window.as_millis()).unwrap_or(i64::MAX));
    let active_users = match inner.deps.store.active_user_count(since).await {
        Ok(n) => n,
        Err(e) => return store_error(e),
    };
    let load = Load {
        active_users,
        connections: inner.sessions().by_id.len() as u64,
    };
    if let Err(e) = config.intervals.check_floors("intervals", load) {
        return error(ErrorCode::BadRequest, e.to_string());
    }
    // Plain data with string keys: serialization cannot fail.
    let normalized = serde_json::to_string(&config).unwrap_or_default();
    match inner
        .deps
        .store
        .put_runtime_config(put.version, &normalized)
        .await
    {
        Ok(version) => {
            tracing::info!(version, "runtime config changed");
            axum::Json(PutConfigResponse { version }).into_response()
        }
        Err(e) => store_error(e),
    }
}

fn info(k: hubbub_store::ApiKey) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id,
        name: k.name,
        scopes: k.scopes,
        created_ts: k.created_ms,
    }
}

/// Every live API key (never the key itself).
#[utoipa::path(get, path = "/v1/admin/apikeys", tag = "admin",
    responses((status = 200, description = "`{\"keys\":[ApiKeyInfo]}`, oldest first", content_type = "application/json"), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
async fn list_keys(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    match inner.deps.store.api_keys().await {
        Ok(keys) => axum::Json(serde_json::json!({
            "keys": keys.into_iter().map(info).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}

/// Create an API key; the answer shows it once.
#[utoipa::path(post, path = "/v1/admin/apikeys", tag = "admin", request_body = CreateApiKey,
    responses((status = 201, description = "Created", body = CreatedApiKey),
        (status = 400, description = "A bad name or scope", body = HttpError), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
async fn create_key(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    let req: CreateApiKey = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::BadRequest, format!("invalid body: {e}")),
    };
    match inner
        .deps
        .store
        .create_api_key(&req.name, &req.scopes)
        .await
    {
        Ok((k, key)) => {
            tracing::info!(id = %k.id, name = %k.name, scopes = ?k.scopes, "API key created");
            (
                StatusCode::CREATED,
                axum::Json(CreatedApiKey { id: k.id, key }),
            )
                .into_response()
        }
        Err(e) => store_error(e),
    }
}

/// Revoke an API key at once.
#[utoipa::path(delete, path = "/v1/admin/apikeys/{id}", tag = "admin",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No live key with that id", body = HttpError), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
async fn revoke_key(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    match inner.deps.store.revoke_api_key(&id).await {
        Ok(()) => {
            tracing::info!(id = %id, "API key revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}

/// The queue named in a path, if the admin API shows it.
fn known_queue(inner: &Inner, name: &str) -> Result<(), Response> {
    if inner.config.queues.iter().any(|q| q == name) {
        Ok(())
    } else {
        Err(error(ErrorCode::NotFound, "no such queue"))
    }
}

fn queue_error(e: hubbub_queue::QueueError) -> Response {
    tracing::warn!(error = %e, "admin: queue operation failed");
    error(
        ErrorCode::Unavailable,
        "the queue is unavailable; retry later",
    )
}

#[utoipa::path(get, path = "/v1/admin/queues", tag = "admin",
    responses((status = 200, description = "`{\"queues\":[{\"name\",\"visible\",\"in_flight\",\"delayed\",\"dlq_depth\",\"oldest_age_ms\"}]}`", content_type = "application/json"), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
/// `GET /v1/admin/queues`: every queue's depths and oldest age.
async fn queues(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    let mut out = Vec::new();
    for name in &inner.config.queues {
        match inner.deps.queue.stats(name).await {
            Ok(s) => out.push(serde_json::json!({
                "name": name, "visible": s.visible, "in_flight": s.in_flight,
                "delayed": s.delayed + s.waiting_on_key, "dlq_depth": s.dlq_depth,
                "oldest_age_ms": s.oldest_age_ms,
            })),
            Err(e) => return queue_error(e),
        }
    }
    axum::Json(serde_json::json!({ "queues": out })).into_response()
}

#[utoipa::path(get, path = "/v1/admin/edges", tag = "admin",
    responses((status = 200, description = "`{\"edges\":[{\"edge\",\"sessions\"}]}`", content_type = "application/json"), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
/// `GET /v1/admin/edges`: every live edge of the deployment with its open sessions (one in
/// `hubbub serve`; with roles apart, each edge's heartbeat publishes its count).
async fn edges(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    match inner.deps.registry.edges().await {
        Ok(list) => {
            let out: Vec<_> = list
                .into_iter()
                .map(|e| serde_json::json!({ "edge": e.edge, "sessions": e.sessions }))
                .collect();
            axum::Json(serde_json::json!({ "edges": out })).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin: registry unavailable");
            error(
                ErrorCode::Unavailable,
                "the session registry is unavailable; retry later",
            )
        }
    }
}

/// Most dead letters listed at once, and bytes of each body shown.
const MAX_LISTED: usize = 100;
const MAX_BODY_SHOWN: usize = 2048;

#[utoipa::path(get, path = "/v1/admin/queues/{name}/dlq", tag = "admin",
    params(("name" = String, Path, description = "The queue (`webhooks`, `notify`, ...)")),
    responses((status = 200, description = "`{\"messages\":[{\"id\",\"receive_count\",\"first_enqueued_ts\",\"body\"}]}`, the 100 oldest", content_type = "application/json"),
        (status = 404, description = "No such queue", body = HttpError), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
/// `GET /v1/admin/queues/{name}/dlq`: the oldest dead letters (bodies cut at 2 KiB).
async fn dead_letters(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    if let Err(r) = known_queue(&inner, &name) {
        return r;
    }
    match inner.deps.queue.dlq_list(&name, MAX_LISTED).await {
        Ok(list) => {
            let messages: Vec<serde_json::Value> = list
                .into_iter()
                .map(|d| {
                    let mut body = String::from_utf8_lossy(&d.body).into_owned();
                    if body.len() > MAX_BODY_SHOWN {
                        let mut end = MAX_BODY_SHOWN;
                        while !body.is_char_boundary(end) {
                            end -= 1;
                        }
                        body.truncate(end);
                    }
                    serde_json::json!({
                        "id": d.id, "receive_count": d.receive_count,
                        "first_enqueued_ts": d.first_enqueued_ms, "body": body,
                    })
                })
                .collect();
            axum::Json(serde_json::json!({ "messages": messages })).into_response()
        }
        Err(e) => queue_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct RedriveBody {
    max: Option<usize>,
}

#[utoipa::path(post, path = "/v1/admin/queues/{name}/dlq/redrive", tag = "admin",
    params(("name" = String, Path, description = "The queue")),
    request_body(content = String, content_type = "application/json", description = "`{\"max\"?}` (default 1,000, at most 10,000), or empty"),
    responses((status = 200, description = "`{\"redriven\":n}`", content_type = "application/json"),
        (status = 404, description = "No such queue", body = HttpError), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
/// `POST /v1/admin/queues/{name}/dlq/redrive` `{"max"?}`: dead letters back to the queue.
async fn redrive(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    if let Err(r) = known_queue(&inner, &name) {
        return r;
    }
    let max = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<RedriveBody>(&body) {
            Ok(b) => b.max,
            Err(e) => return error(ErrorCode::BadRequest, format!("invalid body: {e}")),
        }
    };
    match inner
        .deps
        .queue
        .redrive(&name, max.unwrap_or(1000).min(10_000))
        .await
    {
        Ok(n) => {
            tracing::info!(queue = %name, redriven = n, "dead letters redriven");
            axum::Json(serde_json::json!({ "redriven": n })).into_response()
        }
        Err(e) => queue_error(e),
    }
}

#[utoipa::path(delete, path = "/v1/admin/queues/{name}/dlq", tag = "admin",
    params(("name" = String, Path, description = "The queue")),
    responses((status = 200, description = "`{\"purged\":n}`", content_type = "application/json"),
        (status = 404, description = "No such queue", body = HttpError), (status = 401, description = "No or a revoked key", body = HttpError), (status = 403, description = "The key lacks the `admin` scope", body = HttpError)))]
/// `DELETE /v1/admin/queues/{name}/dlq`: every dead letter deleted (at most 100,000 a call).
async fn purge(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = authorize(&inner, &headers, "admin").await {
        return r;
    }
    if let Err(r) = known_queue(&inner, &name) {
        return r;
    }
    match inner.deps.queue.purge_dlq(&name, 100_000).await {
        Ok(n) => {
            tracing::info!(queue = %name, purged = n, "dead letters purged");
            axum::Json(serde_json::json!({ "purged": n })).into_response()
        }
        Err(e) => queue_error(e),
    }
}
