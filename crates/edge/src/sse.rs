//! `GET /v1/sse?streams=post:ID,...`: the `engagement` events of posts over server-sent
//! events, for clients that only read.
//!
//! An SSE connection is a session of this edge that watches posts and nothing else: it is
//! subscribed like a WebSocket session's `post.watch` (the same limit of posts, the same
//! errors, answered before the stream starts), gets the same shared frames, and is removed
//! (its subscriptions with it) when the client goes away, the reader falls behind, or the
//! server shuts down.

use crate::http::{authenticate, error};
use crate::ws::MAX_WATCHED_POSTS;
use crate::{Inner, Out, SessionHandle};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hubbub_protocol::ErrorCode;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Removes the session when the stream is dropped.
struct Guard {
    inner: Arc<Inner>,
    session: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let unwatched = self.inner.remove_session(&self.session);
        if unwatched.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                inner
                    .deps
                    .engagement
                    .unsubscribe(&inner.config.edge_id, &unwatched)
                    .await;
            });
        }
    }
}

pub(crate) async fn stream(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let user = match authenticate(&inner, &headers, &query).await {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let mut posts = Vec::new();
    for stream in query
        .get("streams")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        match stream.strip_prefix("post:") {
            Some(id) if !id.is_empty() => posts.push(id.to_owned()),
            _ => {
                return error(
                    ErrorCode::BadRequest,
                    format!("unknown stream `{stream}`: streams are `post:ID`"),
                );
            }
        }
    }
    posts.sort_unstable();
    posts.dedup();
    if posts.is_empty() {
        return error(
            ErrorCode::BadRequest,
            "name at least one stream: ?streams=post:ID",
        );
    }
    if posts.len() > MAX_WATCHED_POSTS {
        return error(
            ErrorCode::TooLarge,
            format!("at most {MAX_WATCHED_POSTS} posts per stream"),
        );
    }
    if inner.cancel.is_cancelled() {
        return error(ErrorCode::Unavailable, "server shutting down");
    }
    let edge = inner.config.edge_id.clone();
    if let Err(e) = inner.deps.engagement.subscribe(&edge, &posts).await {
        return error(e.code, e.message);
    }
    let session = match hubbub_store::sqlite::new_id("sse") {
        Ok(s) => s,
        Err(e) => return error(ErrorCode::Internal, e.to_string()),
    };
    let (tx, rx) = mpsc::channel(inner.config.limits.max_outgoing_frames.max(16));
    let kick = CancellationToken::new();
    inner.add_session(&session, SessionHandle::new(user.id, tx, kick.clone()));
    // The limit was checked above; a fresh session cannot be over it.
    let latest = inner
        .watch_posts(&session, &posts, MAX_WATCHED_POSTS)
        .unwrap_or_default();
    let guard = Guard {
        inner: inner.clone(),
        session,
    };
    let cancel = inner.cancel.clone();
    let first: Vec<Result<Event, Infallible>> = latest.iter().map(|j| Ok(event(j))).collect();
    let state = (rx, guard, cancel, kick);
    let live = futures_util::stream::unfold(state, |(mut rx, guard, cancel, kick)| async move {
        loop {
            let out = tokio::select! {
                out = rx.recv() => out?,
                _ = cancel.cancelled() => return None,
                _ = kick.cancelled() => return None,
            };
            // Only engagement reaches an SSE session; anything else is not for it.
            if let Out::Shared(list) = out {
                let events: Vec<Result<Event, Infallible>> =
                    list.iter().map(|j| Ok(event(j))).collect();
                return Some((
                    futures_util::stream::iter(events),
                    (rx, guard, cancel, kick),
                ));
            }
        }
    });
    use futures_util::StreamExt;
    let body = futures_util::stream::iter(first).chain(live.flatten());
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn event(json: &str) -> Event {
    metrics::counter!("hubbub_frames_out_total", "type" => "engagement").increment(1);
    Event::default().event("engagement").data(json)
}
