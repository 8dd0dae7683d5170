//! `GET /v1/sse?streams=post:ID,...`: the `engagement` events of posts over server-sent
//! events, for clients that only read.
//!
//! An SSE connection is a session of this edge that watches posts and nothing else: it is
//! subscribed like a WebSocket session's `post.watch` (the same limit of posts, the same
//! errors, answered before the stream starts), gets the same shared frames, and is removed
//! (its subscriptions with it) when the client goes away, the reader falls behind, or the
//! server shuts down.

use crate::http::{authenticate, error};
use crate::ws::{MAX_POST_ID_BYTES, MAX_WATCHED_POSTS};
use crate::{CloseSignal, Inner, Out, SessionHandle};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hubbub_protocol::ErrorCode;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

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
        // On the edge's tracker, so shutdown waits for it (the stream's task is gone).
        if tokio::runtime::Handle::try_current().is_ok() {
            self.inner.tracker.spawn(async move {
                inner
                    .deps
                    .engagement
                    .unsubscribe(&inner.config.edge_id, &unwatched)
                    .await;
            });
        }
    }
}

/// Why a `streams` parameter is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsError(pub ErrorCode, pub String);

/// Parse the `streams` parameter (`post:ID,post:ID2`) into distinct post ids, sorted: at
/// least one, at most 50 (the posts a session may watch), each id 1–64 bytes.
pub fn parse_streams(streams: &str) -> Result<Vec<String>, StreamsError> {
    let mut posts = Vec::new();
    for stream in streams.split(',').filter(|s| !s.is_empty()) {
        match stream.strip_prefix("post:") {
            Some(id) if !id.is_empty() && id.len() <= MAX_POST_ID_BYTES => {
                posts.push(id.to_owned())
            }
            _ => {
                let shown: String = stream.chars().take(80).collect();
                return Err(StreamsError(
                    ErrorCode::BadRequest,
                    format!("unknown stream `{shown}`: streams are `post:ID`"),
                ));
            }
        }
        if posts.len() > MAX_WATCHED_POSTS * 4 {
            break;
        }
    }
    posts.sort_unstable();
    posts.dedup();
    if posts.is_empty() {
        return Err(StreamsError(
            ErrorCode::BadRequest,
            "name at least one stream: ?streams=post:ID".into(),
        ));
    }
    if posts.len() > MAX_WATCHED_POSTS {
        return Err(StreamsError(
            ErrorCode::TooLarge,
            format!("at most {MAX_WATCHED_POSTS} posts per stream"),
        ));
    }
    Ok(posts)
}

pub(crate) async fn stream(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let user = match authenticate(&inner, &headers, &query).await {
        Ok(a) => a.user,
        Err(resp) => return resp,
    };
    let posts = match parse_streams(query.get("streams").map(String::as_str).unwrap_or("")) {
        Ok(p) => p,
        Err(StreamsError(code, message)) => return error(code, message),
    };
    if inner.cancel.is_cancelled() {
        return error(ErrorCode::Unavailable, "server shutting down");
    }
    let edge = inner.config.edge_id.clone();
    if let Err(e) = inner.deps.engagement.subscribe(&edge, &posts).await {
        return error(e.code, e.message);
    }
    let session = match hubbub_store::new_id("sse") {
        Ok(s) => s,
        Err(e) => return error(ErrorCode::Internal, e.to_string()),
    };
    let (tx, rx) = mpsc::channel(inner.runtime().config.limits.max_outgoing_frames.max(16));
    let close = Arc::new(CloseSignal::default());
    let queued = Arc::new(AtomicUsize::new(0));
    inner.add_session(
        &session,
        SessionHandle::new(user.id, tx, close.clone(), queued.clone()),
    );
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
    let state = (rx, guard, cancel, close, queued);
    let live =
        futures_util::stream::unfold(state, |(mut rx, guard, cancel, close, queued)| async move {
            loop {
                let out = tokio::select! {
                    out = rx.recv() => out?,
                    _ = cancel.cancelled() => return None,
                    _ = close.closed() => return None,
                };
                queued.fetch_sub(out.bytes(), Ordering::Relaxed);
                // Only engagement reaches an SSE session; anything else is not for it.
                if let Out::Shared(list) = out {
                    let events: Vec<Result<Event, Infallible>> =
                        list.iter().map(|j| Ok(event(j))).collect();
                    return Some((
                        futures_util::stream::iter(events),
                        (rx, guard, cancel, close, queued),
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
    metrics::counter!(hubbub_protocol::metrics::FRAMES_OUT, "type" => "engagement").increment(1);
    Event::default().event("engagement").data(json)
}
