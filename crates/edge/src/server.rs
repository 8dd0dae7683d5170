//! The server API (PROTOCOL.md 1.1, "API keys, the server API and webhooks"): `/v1/server`,
//! what an app's backend calls with an API key of scope `server`, and its OpenAPI document
//! ([`openapi`], served at `/v1/server/openapi.json`, committed as `docs/openapi.json`).
//!
//! Writes (conversations, members, messages) take the clients' durable path: an
//! [`Envelope`] on the `main` queue (marked `server`, acting as the conversation's owner
//! or the named sender), the router, the chat service, the store; the chat service hands its
//! reply to this edge like any reply, under a session id no socket has (`api-...`), and the
//! handler waiting on it answers the HTTP request. Members therefore get the events exactly
//! as if a client had written. Reads (users, presence) and session control (`disconnect`,
//! `revoke`) are answered here: closing reaches every edge through the registry and the edge
//! link, as `POST /v1/auth/revoke` does.
//!
//! Webhook endpoints are created and deleted here; the events are produced by the chat
//! service and the edges' sessions, and delivered by the services crate's webhook worker.
//!
//! Erasure (`DELETE /v1/server/users/{id}`) is answered here too: the store erases the user
//! in steps ([`hubbub_store::erasure`]), this handler pushes each step's events to the
//! members (as the chat service pushes a write's: durable events in their inboxes, a
//! channel's changes broadcast), closes the user's sessions with 4001 once their tokens are
//! refused, and erases their media with its bytes.

// Handlers return axum responses as errors: the idiom of the framework, and cold paths.
#![allow(clippy::result_large_err)]

use crate::Inner;
use crate::http::{error, parse};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hubbub_protocol::http::HttpError;
use hubbub_protocol::internal::Envelope;
use hubbub_protocol::serverapi::{
    AddMembers, ConversationResponse, CreateConversation, CreateUser, CreateWebhook,
    CreatedWebhook, DisconnectResponse, Empty, MAX_PRESENCE_USERS, MessageResponse, PostMessage,
    PresenceRequest, PresenceResponse, ReportsResponse, SYSTEM_SENDER, UserResponse, WebhookInfo,
    WebhooksResponse,
};
use hubbub_protocol::{ErrorCode, IdempotencyKey, ReplyData, Request, ServerFrame};
use hubbub_queue::SendOptions;
use hubbub_queue::clock::now_ms;
use std::sync::Arc;
use utoipa::OpenApi;

/// Longest `idempotency_key` of a posted message, bytes (a message's `client_msg_id`).
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Every route the OpenAPI document describes, as (method, path) in OpenAPI's path syntax:
/// the server API (this module's router), `/v1/auth`, `/v1/users`, `/v1/media` and
/// `/v1/admin`. A test checks the document names exactly these, and another that the
/// server serves each.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/auth/signup"),
    ("post", "/v1/auth/login"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/revoke"),
    ("get", "/v1/users/{handle}"),
    ("post", "/v1/media"),
    ("get", "/v1/media/{id}"),
    ("get", "/v1/admin/config"),
    ("put", "/v1/admin/config"),
    ("get", "/v1/admin/apikeys"),
    ("post", "/v1/admin/apikeys"),
    ("delete", "/v1/admin/apikeys/{id}"),
    ("get", "/v1/admin/queues"),
    ("get", "/v1/admin/edges"),
    ("get", "/v1/admin/queues/{name}/dlq"),
    ("delete", "/v1/admin/queues/{name}/dlq"),
    ("post", "/v1/admin/queues/{name}/dlq/redrive"),
    ("post", "/v1/server/users"),
    ("post", "/v1/server/conversations"),
    ("post", "/v1/server/conversations/{id}/members"),
    ("delete", "/v1/server/conversations/{id}/members/{user}"),
    ("post", "/v1/server/conversations/{id}/messages"),
    ("post", "/v1/server/presence"),
    ("post", "/v1/server/users/{id}/disconnect"),
    ("post", "/v1/server/users/{id}/revoke"),
    ("delete", "/v1/server/users/{id}"),
    ("post", "/v1/server/webhooks"),
    ("get", "/v1/server/webhooks"),
    ("delete", "/v1/server/webhooks/{id}"),
    ("get", "/v1/server/reports"),
    ("get", "/v1/server/openapi.json"),
];

/// The server API's routes, to merge into the public listener's router.
pub(crate) fn routes() -> axum::Router<Arc<Inner>> {
    axum::Router::new()
        .route("/v1/server/users", post(create_user))
        .route("/v1/server/conversations", post(create_conversation))
        .route("/v1/server/conversations/{id}/members", post(add_members))
        .route(
            "/v1/server/conversations/{id}/members/{user}",
            delete(remove_member),
        )
        .route("/v1/server/conversations/{id}/messages", post(post_message))
        .route("/v1/server/presence", post(presence))
        .route("/v1/server/users/{id}/disconnect", post(disconnect))
        .route("/v1/server/users/{id}/revoke", post(revoke))
        .route("/v1/server/users/{id}", delete(erase_user))
        .route(
            "/v1/server/webhooks",
            post(create_webhook).get(list_webhooks),
        )
        .route("/v1/server/webhooks/{id}", delete(delete_webhook))
        .route("/v1/server/reports", get(reports))
        .route("/v1/server/openapi.json", get(openapi_json))
}

/// The OpenAPI 3.1 document of the HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "hubbub HTTP API",
        description = "The server API (`/v1/server`, an API key of scope `server`), auth and \
                       media (`/v1/auth`, `/v1/users`, `/v1/media`, an access token), and the \
                       admin API (`/v1/admin`, an API key of scope `admin`), all as \
                       `Authorization: Bearer <key or token>`. Errors have the body \
                       `{\"error\":{\"code\",\"message\"}}`. The WebSocket protocol is \
                       described by the JSON Schema in docs/schema.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::http::signup,
        crate::http::login,
        crate::http::refresh,
        crate::http::revoke,
        crate::http::user,
        crate::http::upload,
        crate::http::download,
        crate::admin::get_config,
        crate::admin::put_config,
        crate::admin::list_keys,
        crate::admin::create_key,
        crate::admin::revoke_key,
        crate::admin::queues,
        crate::admin::edges,
        crate::admin::dead_letters,
        crate::admin::purge,
        crate::admin::redrive,
        create_user,
        create_conversation,
        add_members,
        remove_member,
        post_message,
        presence,
        disconnect,
        revoke,
        erase_user,
        create_webhook,
        list_webhooks,
        delete_webhook,
        reports,
        openapi_json
    ),
    modifiers(&ApiKeyAuth),
    security(("api_key" = [])),
    tags(
        (name = "server", description = "The server API (scope `server`)"),
        (name = "auth", description = "Accounts and tokens"),
        (name = "media", description = "Uploaded media (an access token)"),
        (name = "admin", description = "The admin API (scope `admin`)")
    )
)]
struct ServerApi;

/// The bearer API key scheme every operation uses.
struct ApiKeyAuth;

impl utoipa::Modify for ApiKeyAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`POST /v1/admin/apikeys`) with the `server` scope, or the \
                         bootstrap key",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user's access token (`/v1/auth/login`) or an app token",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document (what `/v1/server/openapi.json` serves and `hubbub openapi` writes).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ServerApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// [`openapi`] as pretty JSON with a final newline (the committed file's form).
pub fn openapi_json_text() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// The OpenAPI document of the server API.
#[utoipa::path(get, path = "/v1/server/openapi.json", tag = "server", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json_text(),
    )
        .into_response()
}

fn store_error(e: hubbub_store::StoreError) -> Response {
    let (code, message) = e.for_client();
    error(code, message)
}

fn json(status: StatusCode, body: impl serde::Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Put a request on `main` as `user` (marked as the server API's) and wait for the chat
/// service's reply. `unavailable` when nothing could be accepted, `internal` when no reply
/// came in time (the outcome is unknown: a retry with the same idempotency key is safe).
async fn forward(inner: &Arc<Inner>, user: &str, request: Request) -> Result<ReplyData, Response> {
    if !inner.store_ok.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(error(
            ErrorCode::Unavailable,
            "storage is unavailable; nothing was accepted, retry later",
        ));
    }
    let envelope_id = hubbub_store::new_id("e").map_err(store_error)?;
    let session = format!("api-{envelope_id}");
    let envelope = Envelope {
        envelope_id,
        user: user.to_owned(),
        session: session.clone(),
        edge: inner.config.edge_id.clone(),
        request_id: Some("server".into()),
        accepted_ms: now_ms(),
        request,
        server: true,
    };
    let body = envelope
        .encode()
        .map_err(|e| error(ErrorCode::Internal, format!("encode: {e}")))?;
    if let Some((code, message)) = crate::too_large_for_queue(body.len(), &inner.config) {
        return Err(error(code, message));
    }
    let rx = inner.await_reply(&session);
    if let Err(e) = inner
        .deps
        .queue
        .send(crate::ws::MAIN_QUEUE, body, SendOptions::default())
        .await
    {
        inner.forget_reply(&session);
        tracing::warn!(error = %e, "server API: could not accept a request");
        return Err(error(
            ErrorCode::Unavailable,
            "could not accept the request; nothing was accepted, retry later",
        ));
    }
    let frame = tokio::select! {
        r = tokio::time::timeout(inner.config.request_timeout, rx) => r.ok().and_then(Result::ok),
        _ = inner.cancel.cancelled() => None,
    };
    inner.forget_reply(&session);
    match frame {
        Some(ServerFrame::Ok { data, .. }) => Ok(data),
        Some(ServerFrame::Error { code, message, .. }) => Err(error(code, message)),
        Some(_) => Err(error(ErrorCode::Internal, "an unexpected reply")),
        None => Err(error(
            ErrorCode::Internal,
            "no reply in time; the outcome is unknown, retrying with the same idempotency key is safe",
        )),
    }
}

/// Create a user (an app user id), or find it.
#[utoipa::path(post, path = "/v1/server/users", tag = "server", request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserResponse),
        (status = 200, description = "The user existed", body = UserResponse),
        (status = 400, description = "A bad id", body = HttpError),
        (status = 401, description = "No or a revoked key", body = HttpError),
        (status = 403, description = "The key lacks the `server` scope", body = HttpError),
        (status = 409, description = "The id is an erased user's: it is never given again", body = HttpError)))]
async fn create_user(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let req: CreateUser = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if !crate::auth::valid_app_sub(&req.id) {
        return error(
            ErrorCode::BadRequest,
            "id must be 1-64 characters of [A-Za-z0-9_.-]",
        );
    }
    match inner.deps.store.user(&req.id).await {
        Ok(Some(user)) => return json(StatusCode::OK, UserResponse { user }),
        Ok(None) => {}
        Err(e) => return store_error(e),
    }
    match inner
        .deps
        .store
        .ensure_user(&req.id, req.handle.as_deref())
        .await
    {
        Ok(user) => json(StatusCode::CREATED, UserResponse { user }),
        Err(e) => store_error(e),
    }
}

/// Create a conversation (through the chat service, as its owner).
#[utoipa::path(post, path = "/v1/server/conversations", tag = "server",
    request_body = CreateConversation,
    responses(
        (status = 201, description = "Created (or found again by its idempotency key)", body = ConversationResponse),
        (status = 400, description = "A bad body", body = HttpError),
        (status = 404, description = "A user does not exist", body = HttpError),
        (status = 403, description = "Forbidden", body = HttpError)))]
async fn create_conversation(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let req: CreateConversation = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(owner) = req.owner.clone().or_else(|| req.members.first().cloned()) else {
        return error(ErrorCode::BadRequest, "give `owner` or at least one member");
    };
    let idempotency_key = match req.idempotency_key.map(IdempotencyKey::try_from) {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => return error(ErrorCode::BadRequest, e),
    };
    let request = Request::ConversationCreate {
        kind: req.kind,
        members: req.members,
        title: req.title,
        ephemeral: None,
        idempotency_key,
        public: req.public,
    };
    match forward(&inner, &owner, request).await {
        Ok(ReplyData::Conversation { conversation }) => {
            json(StatusCode::CREATED, ConversationResponse { conversation })
        }
        Ok(_) => error(ErrorCode::Internal, "an unexpected reply"),
        Err(r) => r,
    }
}

/// The owner of a conversation (its creator, unless ownership passed on): the server API
/// changes members in its name.
async fn owner(inner: &Inner, id: &str) -> Result<String, Response> {
    match inner.deps.store.conversation_by_id(id).await {
        Ok(Some(c)) => Ok(c.owner().to_owned()),
        Ok(None) => Err(error(ErrorCode::NotFound, format!("no conversation {id}"))),
        Err(e) => Err(store_error(e)),
    }
}

/// Add members to a group or channel (members already in are skipped).
#[utoipa::path(post, path = "/v1/server/conversations/{id}/members", tag = "server",
    params(("id" = String, Path, description = "The conversation")),
    request_body = AddMembers,
    responses(
        (status = 200, description = "Added", body = Empty),
        (status = 404, description = "No such conversation or user", body = HttpError),
        (status = 403, description = "A direct conversation, or a user who blocks the owner", body = HttpError)))]
async fn add_members(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let req: AddMembers = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let owner = match owner(&inner, &id).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let request = Request::ConversationAdd {
        conversation: id,
        user: None,
        users: Some(req.users),
    };
    match forward(&inner, &owner, request).await {
        Ok(_) => json(StatusCode::OK, Empty {}),
        Err(r) => r,
    }
}

/// Remove a member (removing a non-member is a no-op).
#[utoipa::path(delete, path = "/v1/server/conversations/{id}/members/{user}", tag = "server",
    params(("id" = String, Path, description = "The conversation"),
           ("user" = String, Path, description = "The member to remove")),
    responses(
        (status = 200, description = "Removed", body = Empty),
        (status = 404, description = "No such conversation", body = HttpError),
        (status = 403, description = "A direct conversation", body = HttpError)))]
async fn remove_member(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path((id, user)): Path<(String, String)>,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let owner = match owner(&inner, &id).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    // Removing the owner is their leaving, in their name: ownership passes on as when an
    // owner leaves (nobody, not even the owner, removes the owner).
    let request = if user == owner {
        Request::ConversationLeave { conversation: id }
    } else {
        Request::ConversationRemove {
            conversation: id,
            user,
        }
    };
    match forward(&inner, &owner, request).await {
        Ok(_) => json(StatusCode::OK, Empty {}),
        Err(r) => r,
    }
}

/// Post a message as a member, or a system message (no `sender`), idempotently.
#[utoipa::path(post, path = "/v1/server/conversations/{id}/messages", tag = "server",
    params(("id" = String, Path, description = "The conversation")),
    request_body = PostMessage,
    responses(
        (status = 201, description = "Sent", body = MessageResponse),
        (status = 200, description = "A repeated idempotency key: the first message", body = MessageResponse),
        (status = 403, description = "The sender is not a member", body = HttpError),
        (status = 404, description = "No such conversation", body = HttpError),
        (status = 409, description = "The key was used by this sender in another conversation", body = HttpError)))]
async fn post_message(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let req: PostMessage = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.idempotency_key.is_empty() || req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        return error(
            ErrorCode::BadRequest,
            format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
        );
    }
    let c = match inner.deps.store.conversation_by_id(&id).await {
        Ok(Some(c)) => c,
        Ok(None) => return error(ErrorCode::NotFound, format!("no conversation {id}")),
        Err(e) => return store_error(e),
    };
    let sender = req.sender.unwrap_or_else(|| SYSTEM_SENDER.to_owned());
    let system = sender == SYSTEM_SENDER;
    if !system && !c.members.contains(&sender) {
        return error(ErrorCode::Forbidden, format!("{sender} is not a member"));
    }
    let in_this = |m: &hubbub_protocol::Message| {
        if m.conversation == id {
            Ok(())
        } else {
            Err(error(
                ErrorCode::Conflict,
                "this idempotency_key was used by this sender in another conversation",
            ))
        }
    };
    // A repeat is answered from the store: the key is unique per sender, for as long as the
    // message exists (well over the 24 hours the contract asks).
    match inner
        .deps
        .store
        .message_by_key(&sender, &req.idempotency_key)
        .await
    {
        Ok(Some(message)) => {
            return match in_this(&message) {
                Ok(()) => json(StatusCode::OK, MessageResponse { message }),
                Err(r) => r,
            };
        }
        Ok(None) => {}
        Err(e) => return store_error(e),
    }
    let request = Request::MessageSend {
        conversation: id.clone(),
        client_msg_id: req.idempotency_key,
        text: req.text,
        attachments: req.attachments,
        reply_to: None,
        thread: None,
        mentions: None,
    };
    match forward(&inner, &sender, request).await {
        Ok(ReplyData::Message { message }) => match in_this(&message) {
            Ok(()) => json(StatusCode::CREATED, MessageResponse { message }),
            Err(r) => r,
        },
        Ok(_) => error(ErrorCode::Internal, "an unexpected reply"),
        Err(r) => r,
    }
}

/// The presence of up to 1,000 users.
#[utoipa::path(post, path = "/v1/server/presence", tag = "server", request_body = PresenceRequest,
    responses(
        (status = 200, description = "Each user's presence, in the order asked", body = PresenceResponse),
        (status = 413, description = "Over 1,000 users", body = HttpError)))]
async fn presence(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let req: PresenceRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if req.users.len() > MAX_PRESENCE_USERS {
        return error(
            ErrorCode::TooLarge,
            format!("ask about at most {MAX_PRESENCE_USERS} users"),
        );
    }
    let session = match hubbub_store::new_id("api-presence-") {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    match inner
        .deps
        .signals
        .presence(&inner.config.edge_id, &session, &req.users)
        .await
    {
        Ok(presence) => json(StatusCode::OK, PresenceResponse { presence }),
        Err(e) => error(e.code, e.message),
    }
}

/// Close every open session of the user, on every edge, with 4000.
#[utoipa::path(post, path = "/v1/server/users/{id}/disconnect", tag = "server",
    params(("id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The sessions told to close (0 for a user with none, or unknown)", body = DisconnectResponse),
        (status = 503, description = "The session registry is unavailable", body = HttpError)))]
async fn disconnect(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let sessions = match inner.deps.registry.sessions(&id).await {
        Ok(s) => s.len() as u64,
        Err(e) => {
            tracing::warn!(error = %e, "server API: registry unavailable");
            return error(
                ErrorCode::Unavailable,
                "the session registry is unavailable; retry later",
            );
        }
    };
    inner
        .close_user(&id, crate::CLOSE_DISCONNECTED, "disconnected by the server")
        .await;
    tracing::info!(user = %id, sessions, "server API: user disconnected");
    json(StatusCode::OK, DisconnectResponse { sessions })
}

/// Refuse every token of the user issued before now, and close its open sessions with 4001.
#[utoipa::path(post, path = "/v1/server/users/{id}/revoke", tag = "server",
    params(("id" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "Revoked", body = Empty),
        (status = 404, description = "No such user", body = HttpError)))]
async fn revoke(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    if let Err(e) = inner.auth.revoke(&id).await {
        return e.into_response();
    }
    inner
        .close_user(&id, crate::CLOSE_REVOKED, "tokens revoked: log in again")
        .await;
    tracing::info!(user = %id, "server API: tokens revoked");
    json(StatusCode::OK, Empty {})
}

/// Conversations, messages or reactions one step of an erasure takes on: a transaction short
/// enough not to hold the writer long.
const ERASE_BATCH: usize = 200;

/// Erase a user: the account (its id is never given again; its handle is free), its media
/// and contacts; its messages become deleted tombstones (docs/protocol.md, "Erasure").
#[utoipa::path(delete, path = "/v1/server/users/{id}", tag = "server",
    params(("id" = String, Path, description = "The user")),
    responses(
        (status = 204, description = "Erased (also for a user erased before, or unknown)"),
        (status = 503, description = "Storage is unavailable, or the server is shutting down: what was erased stays erased; call again to finish", body = HttpError)))]
async fn erase_user(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    // Its own task, tracked: a client that gives up waiting does not stop the erasure half
    // way; shutdown does, between two steps (a repeat finishes it).
    let task = inner.tracker.spawn(erase(inner.clone(), id));
    match task.await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(response)) => response,
        Err(e) => {
            tracing::error!(error = %e, "server API: erasure task failed");
            error(
                ErrorCode::Internal,
                "the erasure stopped; call again to finish it",
            )
        }
    }
}

/// Erase user `id` step by step (the store's), pushing each step's events; after the first
/// step (every token refused) close the user's sessions and erase their media.
async fn erase(inner: Arc<Inner>, id: String) -> Result<(), Response> {
    let mut steps = 0u64;
    let mut closed = false;
    loop {
        if inner.cancel.is_cancelled() {
            return Err(error(
                ErrorCode::Unavailable,
                "the server is shutting down; call again to finish the erasure",
            ));
        }
        let written = inner
            .deps
            .store
            .erase_user(&id, ERASE_BATCH)
            .await
            .map_err(store_error)?;
        steps += 1;
        let stage = written.value;
        deliver(&inner, written).await;
        if stage == hubbub_store::Erasure::Unknown {
            tracing::info!(user = %id, "server API: erasure of an unknown user");
            return Ok(());
        }
        if !closed {
            // The first step refused every token: no session opens again, and the open
            // ones close before anything else goes.
            inner
                .close_user(&id, crate::CLOSE_REVOKED, "account erased")
                .await;
            let n = inner
                .deps
                .media
                .erase_owner(&id)
                .await
                .map_err(store_error)?;
            tracing::info!(user = %id, media = n, "server API: media erased");
            closed = true;
        }
        if stage == hubbub_store::Erasure::Done {
            tracing::info!(user = %id, steps, "server API: user erased");
            return Ok(());
        }
    }
}

/// Push a write's events to the sessions of their users, and a channel's broadcast to its
/// members (best effort: the events are in the inboxes; a channel's changes are found by
/// `channel.sync`).
async fn deliver<T>(inner: &Inner, written: hubbub_store::Written<T>) {
    if let Some(b) = written.broadcast {
        for frame in b.frames {
            inner
                .deps
                .delivery
                .broadcast(&b.conversation, frame, None)
                .await;
        }
    }
    if !written.events.is_empty() {
        let frames = written
            .events
            .into_iter()
            .map(|e| (e.user, e.frame))
            .collect();
        inner.deps.delivery.push(frames, Vec::new(), None).await;
    }
}

/// Subscribe an endpoint to event types; the answer shows its signing secret, once.
#[utoipa::path(post, path = "/v1/server/webhooks", tag = "server", request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; events are POSTed to it from within a second", body = CreatedWebhook),
        (status = 400, description = "A URL that is not http(s), an unknown event type", body = HttpError)))]
async fn create_webhook(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let req: CreateWebhook = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(e) = req.check() {
        return error(ErrorCode::BadRequest, e);
    }
    let mut events = req.events;
    events.sort_unstable();
    events.dedup();
    match inner.deps.store.create_webhook(&req.url, &events).await {
        Ok(w) => {
            tracing::info!(id = %w.id, url = %w.url, events = ?w.events, "webhook created");
            json(
                StatusCode::CREATED,
                CreatedWebhook {
                    id: w.id,
                    secret: w.secret,
                },
            )
        }
        Err(e) => store_error(e),
    }
}

/// Most reports in one page of `GET /v1/server/reports`.
const MAX_REPORTS_PAGE: usize = 500;

/// Query of `GET /v1/server/reports`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
struct ReportsQuery {
    /// Only reports older than this one (its id: the last of the previous page).
    before: Option<String>,
    /// At most this many (1 to 500, default 100).
    limit: Option<usize>,
}

/// Reported messages, newest first (`message.report`).
#[utoipa::path(get, path = "/v1/server/reports", tag = "server", params(ReportsQuery),
    responses(
        (status = 200, description = "A page of reports, newest first", body = ReportsResponse),
        (status = 400, description = "An unknown `before`", body = HttpError)))]
async fn reports(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ReportsQuery>,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_REPORTS_PAGE);
    match inner.deps.store.reports(q.before.as_deref(), limit).await {
        Ok((reports, more)) => json(StatusCode::OK, ReportsResponse { reports, more }),
        Err(e) => store_error(e),
    }
}

/// Every webhook endpoint, oldest first (never a secret).
#[utoipa::path(get, path = "/v1/server/webhooks", tag = "server",
    responses((status = 200, description = "The endpoints", body = WebhooksResponse)))]
async fn list_webhooks(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    match inner.deps.store.webhooks().await {
        Ok(list) => json(
            StatusCode::OK,
            WebhooksResponse {
                webhooks: list
                    .into_iter()
                    .map(|w| WebhookInfo {
                        id: w.id,
                        url: w.url,
                        events: w.events,
                        created_ts: w.created_ms,
                    })
                    .collect(),
            },
        ),
        Err(e) => store_error(e),
    }
}

/// Delete an endpoint: it receives nothing more (events already queued for it are dropped).
#[utoipa::path(delete, path = "/v1/server/webhooks/{id}", tag = "server",
    params(("id" = String, Path, description = "The webhook")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such webhook", body = HttpError)))]
async fn delete_webhook(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = crate::admin::authorize(&inner, &headers, "server").await {
        return r;
    }
    match inner.deps.store.delete_webhook(&id).await {
        Ok(()) => {
            tracing::info!(id = %id, "webhook deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The committed document is the generated one: regenerate with `hubbub openapi`.
    #[test]
    fn the_committed_openapi_document_is_fresh() {
        assert!(
            committed() == openapi_json_text(),
            "docs/openapi.json is stale: run `hubbub openapi` and commit it"
        );
    }

    /// It parses, says 3.1, and names every route the router serves with its method; every
    /// `$ref` points at a schema it defines.
    #[test]
    fn the_openapi_document_is_valid_and_complete() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json_text()).expect("JSON");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is missing from the document"
            );
        }
        let paths = doc["paths"].as_object().expect("paths");
        let listed: usize = paths
            .values()
            .map(|p| p.as_object().map_or(0, |o| o.len()))
            .sum();
        assert_eq!(
            listed,
            ROUTES.len(),
            "the document names a route not served"
        );
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = openapi_json_text();
        let mut refs = 0;
        for part in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "a $ref to {name}, not defined");
            refs += 1;
        }
        assert!(refs > 5, "the bodies are referenced");
        assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    }
}
