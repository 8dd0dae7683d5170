//! The HTTP side of the edge: auth endpoints, user lookup, media, health, readiness, metrics
//! (and the demo app's files, see `demo`).
//! Every error body is `{"error":{"code","message"}}` with the protocol's status.
//!
//! Login and signup are rate limited per client IP and (login) per handle, answered `429`
//! with `Retry-After`; password hashing runs at most one job per core (see `auth`). With an
//! admin listener configured, `/readyz` and `/metrics` move there and the public listener
//! answers them 404 (PROTOCOL.md 1.1, "Operational endpoints").

// Handlers return axum responses as errors: the idiom of the framework, and cold paths.
#![allow(clippy::result_large_err)]

use crate::Inner;
use crate::auth::AuthError;
use crate::auth::Authenticated;
use crate::media_type::{self, MediaTypeError};
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hubbub_protocol::http::{
    AuthResponse, HttpError, LoginRequest, MediaResponse, RefreshRequest, SignupRequest,
};
use hubbub_protocol::{ErrorCode, UserRef};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// The public listener's routes; `/readyz`, `/metrics` and the admin API only when
/// `operational` (no admin listener).
pub(crate) fn routes(inner: Arc<Inner>, operational: bool) -> axum::Router {
    let router = axum::Router::new()
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/revoke", post(revoke))
        .route("/v1/users/{handle}", get(user))
        .route("/v1/media", post(upload))
        .route("/v1/media/{id}", get(download))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/sse", get(crate::sse::stream))
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::server::routes());
    let router = if inner.config.demo {
        router.merge(crate::demo::routes())
    } else {
        router
    };
    let router = if operational {
        router
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .merge(crate::admin::routes())
    } else {
        router
    };
    router
        .fallback(|| async { error(ErrorCode::NotFound, "no such endpoint") })
        .with_state(inner)
}

/// The admin listener's routes: health, readiness, metrics, the admin API.
pub(crate) fn admin_routes(inner: Arc<Inner>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::admin::routes())
        .fallback(|| async { error(ErrorCode::NotFound, "no such endpoint") })
        .with_state(inner)
}

/// A `429 rate_limited` answer with `Retry-After` (seconds) and `retry_after_ms`.
fn rate_limited(retry_after_ms: u64, message: &str) -> Response {
    metrics::counter!(hubbub_protocol::metrics::RATE_LIMITED).increment(1);
    let secs = retry_after_ms.div_ceil(1000).max(1);
    let mut body = HttpError::new(ErrorCode::RateLimited, message);
    body.error.retry_after_ms = Some(retry_after_ms);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.to_string())],
        axum::Json(body),
    )
        .into_response()
}

/// The client's address: the last entry of the configured proxy header, else the socket's
/// peer (set by the listener; absent when the app is served another way).
fn client_ip(
    inner: &Inner,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
) -> Option<std::net::IpAddr> {
    if let Some(name) = &inner.config.client_ip_header {
        return headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|ip| ip.trim().parse().ok());
    }
    extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Take a login/signup token for the client's IP, and for `handle` when given.
fn auth_attempt(
    inner: &Inner,
    ip: Option<std::net::IpAddr>,
    handle: Option<&str>,
) -> Result<(), Response> {
    if let Some(ip) = ip
        && let Err(ms) = inner.auth_limits.per_ip.take(&ip)
    {
        return Err(rate_limited(
            ms,
            "too many attempts from this address; retry later",
        ));
    }
    if let Some(handle) = handle
        && let Err(ms) = inner
            .auth_limits
            .per_handle
            .take(&handle.to_ascii_lowercase())
    {
        return Err(rate_limited(
            ms,
            "too many attempts for this handle; retry later",
        ));
    }
    Ok(())
}

/// A protocol error response.
pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(HttpError::new(code, message))).into_response()
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            AuthError::Unauthorized(m) => error(ErrorCode::Unauthorized, m),
            AuthError::BadRequest(m) => error(ErrorCode::BadRequest, m),
            AuthError::Store(e) => {
                let (code, message) = e.for_client();
                error(code, message)
            }
            AuthError::Keys { .. } | AuthError::Config(_) => {
                tracing::error!(error = %self, "auth: key failure");
                error(ErrorCode::Internal, "internal error")
            }
        }
    }
}

/// A request body as `T`: `bad_request` when it is not one, or when a string in it holds
/// U+0000 (as a WebSocket frame would be answered: [`hubbub_protocol::holds_nul`]).
pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    if hubbub_protocol::json_holds_nul(body) {
        return Err(error(ErrorCode::BadRequest, hubbub_protocol::NUL_REFUSED));
    }
    serde_json::from_slice(body)
        .map_err(|e| error(ErrorCode::BadRequest, format!("invalid body: {e}")))
}

/// The access token of a request: `Authorization: Bearer T` or `?access_token=T`.
pub(crate) fn token<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or_else(|| query.get("access_token").map(String::as_str))
}

pub(crate) async fn authenticate(
    inner: &Inner,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Authenticated, Response> {
    let Some(t) = token(headers, query) else {
        return Err(error(ErrorCode::Unauthorized, "missing access token"));
    };
    inner
        .auth
        .authenticate(t)
        .await
        .map_err(IntoResponse::into_response)
}

async fn issue(inner: &Inner, user: UserRef, family: Option<&str>, status: StatusCode) -> Response {
    match inner.auth.issue(&user, family).await {
        Ok(t) => (
            status,
            axum::Json(AuthResponse {
                user,
                access_token: t.access_token,
                refresh_token: t.refresh_token,
                expires_in: t.expires_in,
            }),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Sign up with a handle and a password.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest, security(()),
    responses((status = 201, description = "Signed up", body = AuthResponse), (status = 400, description = "A bad body", body = HttpError),
        (status = 409, description = "The handle is taken", body = HttpError),
        (status = 429, description = "Too many attempts", body = HttpError)))]
async fn signup(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Response {
    if let Err(resp) = auth_attempt(&inner, client_ip(&inner, &headers, &extensions), None) {
        return resp;
    }
    let req: SignupRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match inner
        .auth
        .signup(&req.handle, &req.password, req.email.as_deref())
        .await
    {
        Ok(user) => issue(&inner, user, None, StatusCode::CREATED).await,
        Err(e) => e.into_response(),
    }
}

/// Log in.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest, security(()),
    responses((status = 200, description = "Logged in", body = AuthResponse),
        (status = 401, description = "Wrong credentials", body = HttpError),
        (status = 429, description = "Too many attempts", body = HttpError)))]
async fn login(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Response {
    let req: LoginRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let ip = client_ip(&inner, &headers, &extensions);
    if let Err(resp) = auth_attempt(&inner, ip, Some(&req.handle)) {
        return resp;
    }
    match inner.auth.login(&req.handle, &req.password).await {
        Ok(user) => issue(&inner, user, None, StatusCode::OK).await,
        Err(e) => e.into_response(),
    }
}

/// A new token pair for a refresh token (usable once).
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest, security(()),
    responses((status = 200, description = "A new pair", body = AuthResponse),
        (status = 401, description = "A used, expired or unknown refresh token", body = HttpError)))]
async fn refresh(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let req: RefreshRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match inner.auth.refresh(&req.refresh_token).await {
        Ok((user, family)) => issue(&inner, user, Some(&family), StatusCode::OK).await,
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(post, path = "/v1/auth/revoke", tag = "auth", security(("access_token" = [])),
    responses((status = 200, description = "Every token of the caller refused from now on; sessions closed with 4001"),
        (status = 401, description = "No or a bad token", body = HttpError)))]
/// `POST /v1/auth/revoke` (the caller's access token): log out everywhere. Every token of
/// the caller issued until now is refused from now on, and every open session of the caller,
/// on every edge, is closed with 4001.
async fn revoke(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let user = match authenticate(&inner, &headers, &query).await {
        Ok(a) => a.user,
        Err(resp) => return resp,
    };
    if let Err(e) = inner.auth.revoke(&user.id).await {
        return e.into_response();
    }
    inner
        .close_user(
            &user.id,
            crate::CLOSE_REVOKED,
            "tokens revoked: log in again",
        )
        .await;
    (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()
}

/// A user by handle.
#[utoipa::path(get, path = "/v1/users/{handle}", tag = "auth", security(("access_token" = [])),
    params(("handle" = String, Path, description = "The handle")),
    responses((status = 200, description = "The user", body = UserRef),
        (status = 404, description = "No such user", body = HttpError)))]
async fn user(
    State(inner): State<Arc<Inner>>,
    Path(handle): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&inner, &headers, &query).await {
        return resp;
    }
    match inner.deps.store.user_by_handle(&handle).await {
        Ok(Some(u)) => axum::Json(u).into_response(),
        Ok(None) => error(ErrorCode::NotFound, format!("no user {handle}")),
        Err(e) => AuthError::Store(e).into_response(),
    }
}

/// Upload media: the body is the bytes, `Content-Type` their type.
#[utoipa::path(post, path = "/v1/media", tag = "media", security(("access_token" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bytes (any allowed media type)"),
    responses((status = 201, description = "Stored", body = MediaResponse),
        (status = 413, description = "Over the size limit or the quota", body = HttpError),
        (status = 400, description = "A type not allowed", body = HttpError)))]
async fn upload(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let user = match authenticate(&inner, &headers, &query).await {
        Ok(a) => a.user,
        Err(resp) => return resp,
    };
    let content_type = match headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().map_err(|_| MediaTypeError::Malformed))
        .unwrap_or(Err(MediaTypeError::Malformed))
        .and_then(media_type::parse_upload)
    {
        Ok(t) => t,
        Err(e) => return error(ErrorCode::BadRequest, e.to_string()),
    };
    let essence = content_type;
    let limit = inner.runtime().config.limits.max_media_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        error(
            ErrorCode::TooLarge,
            format!("media is at most {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let quota = inner.runtime().config.limits.media_quota_bytes;
    let over_quota = |used: u64| {
        error(
            ErrorCode::TooLarge,
            format!("media quota: {used} of {quota} bytes used"),
        )
    };
    let used = if quota > 0 {
        match inner.deps.media.usage(&user.id).await {
            Ok(u) => u,
            Err(e) => return AuthError::Store(e).into_response(),
        }
    } else {
        0
    };
    if quota > 0 && used.saturating_add(declared.unwrap_or(1) as u64) > quota {
        return over_quota(used);
    }
    // The body goes to a file as it arrives: an upload is never held whole in memory.
    let spool = match Spooled::new(&inner.config.spool_dir).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "media spool");
            return error(
                ErrorCode::Unavailable,
                "media storage is unavailable; retry later",
            );
        }
    };
    let size = match spool.fill(body, limit).await {
        Ok(n) => n,
        Err(SpoolError::TooLarge) => return too_large(),
        Err(SpoolError::Body) => {
            return error(ErrorCode::BadRequest, "the body was not received whole");
        }
        Err(SpoolError::Io(e)) => {
            tracing::error!(error = %e, "media spool");
            return error(
                ErrorCode::Unavailable,
                "media storage is unavailable; retry later",
            );
        }
    };
    if size == 0 {
        return error(ErrorCode::BadRequest, "the body is empty");
    }
    if quota > 0 && used.saturating_add(size) > quota {
        return over_quota(used);
    }
    match inner
        .deps
        .media
        .put_file(&user.id, essence, spool.take(), size)
        .await
    {
        Ok(m) => (
            StatusCode::CREATED,
            axum::Json(hubbub_protocol::http::MediaResponse {
                media: hubbub_protocol::http::Media {
                    url: format!("/v1/media/{}", m.id),
                    id: m.id,
                    content_type: m.content_type,
                    size: m.size,
                },
            }),
        )
            .into_response(),
        Err(e) => AuthError::Store(e).into_response(),
    }
}

/// Why an upload was not spooled.
enum SpoolError {
    TooLarge,
    Body,
    Io(std::io::Error),
}

/// An upload's temporary file, removed when dropped unless handed to the media store.
struct Spooled {
    path: Option<std::path::PathBuf>,
}

impl Spooled {
    async fn new(dir: &std::path::Path) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let name = hubbub_store::new_id("up").map_err(std::io::Error::other)?;
        Ok(Spooled {
            path: Some(dir.join(name)),
        })
    }

    /// Write the body to the file, at most `limit` bytes; its size.
    async fn fill(&self, body: axum::body::Body, limit: usize) -> Result<u64, SpoolError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let Some(path) = &self.path else {
            return Err(SpoolError::Body);
        };
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(SpoolError::Io)?;
        let mut stream = body.into_data_stream();
        let mut size = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| SpoolError::Body)?;
            size += chunk.len();
            if size > limit {
                return Err(SpoolError::TooLarge);
            }
            file.write_all(&chunk).await.map_err(SpoolError::Io)?;
        }
        file.flush().await.map_err(SpoolError::Io)?;
        Ok(size as u64)
    }

    /// The file, now the media store's to move or remove.
    fn take(mut self) -> std::path::PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The bytes of uploaded media.
#[utoipa::path(get, path = "/v1/media/{id}", tag = "media", security(("access_token" = [])),
    params(("id" = String, Path, description = "The media id")),
    responses((status = 200, description = "The bytes, with their type"),
        (status = 404, description = "No such media", body = HttpError)))]
async fn download(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = authenticate(&inner, &headers, &query).await {
        return resp;
    }
    match inner.deps.media.get(&id).await {
        Ok(Some((info, bytes))) => {
            let (content_type, disposition) = media_type::serve_as(&info.content_type, &info.id);
            (
                [
                    (header::CONTENT_TYPE, content_type.to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
                    (
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; sandbox".to_owned(),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Ok(None) => error(ErrorCode::NotFound, format!("no media {id}")),
        Err(e) => AuthError::Store(e).into_response(),
    }
}

async fn ready(State(inner): State<Arc<Inner>>) -> Response {
    let store = inner.deps.store.ping().await;
    let queue = inner.deps.queue.stats(hubbub_queue_main()).await;
    match (store, queue, inner.cancel.is_cancelled()) {
        (Ok(_), Ok(_), false) => (StatusCode::OK, "ready").into_response(),
        (s, q, stopping) => {
            let why = if stopping {
                "shutting down".to_owned()
            } else {
                format!("store: {:?}; queue: {:?}", s.err(), q.err())
            };
            (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
        }
    }
}

fn hubbub_queue_main() -> &'static str {
    crate::ws::MAIN_QUEUE
}

async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        inner.deps.metrics.render(),
    )
        .into_response()
}
