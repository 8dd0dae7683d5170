//! `/v1/ws`: one task per connection.
//!
//! # Limits held per connection
//! Frames count against a token bucket (`rate_limited`) and a per-second cut-off (1008);
//! `ack` frames have a bucket and cut-off of their own and are coalesced: only the highest
//! is written, at most one write per session in flight and one every [`ACK_FLUSH_EVERY`].
//! What the dispatcher hands the session is bounded in items and bytes (1013 past either).
//! A session outliving its token by more than the grace without an `auth` frame is closed
//! with 4001. Cleanup (registry, presence, watches, the last ack) runs from a drop guard,
//! so a panic or a stuck write cannot leak a session.
//!
//! The task owns the socket and the session's delivery state, so there is no locking on the
//! hot path. It selects over: frames from the client; replies and events handed to the
//! session by the dispatcher (a bounded channel: a reader too slow to keep up is cut off with
//! 1013 and resumes with `sync`); a ping timer; a one-second tick that answers requests whose
//! reply is overdue; shutdown (close 1001).
//!
//! # Exactly once, in order
//! The session is registered before `last_seq` is read for `hello`, so every event committed
//! after that read is pushed live, and `next_seq = last_seq + 1`. A pushed durable event with
//! `seq < next_seq` was already written (dropped); `seq == next_seq` is written; a larger seq
//! means events were missed (a service's push lost or reordered), so the gap is read from the
//! store first. `sync` replays from the store, skipping what the session already wrote (an
//! event pushed live between `hello` and the client's `sync` is not written twice), and moves
//! `next_seq` past what it replayed.

use crate::auth::AuthError;
use crate::http::{authenticate, error};
use crate::limit::TokenBucket;
use crate::{CloseSignal, Frame, Inner, Out, SessionHandle};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use hubbub_protocol::internal::Envelope;
use hubbub_protocol::{ClientFrame, ErrorCode, ReplyData, Request, ServerFrame, UserRef};
use hubbub_queue::SendOptions;
use hubbub_store::StoreError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The queue edges put requests on.
pub(crate) const MAIN_QUEUE: &str = "main";
const REPLAY_PAGE: usize = 512;
/// Most messages one `message.search` returns.
const SEARCH_LIMIT: usize = 50;
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A close frame is a courtesy: a peer that cannot take it within this long is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_FRAMES_PER_WRITE: usize = 256;
/// Most posts one session watches (PROTOCOL.md).
pub(crate) const MAX_WATCHED_POSTS: usize = 50;
/// The longest post id the engagement path accepts (ours are 17 bytes): longer ones are
/// `bad_request` before anything remembers them.
pub(crate) const MAX_POST_ID_BYTES: usize = 64;
/// A session's acks reach the store at most this often (only the highest is written).
pub(crate) const ACK_FLUSH_EVERY: Duration = Duration::from_millis(250);
/// A WebSocket close reason is at most 123 bytes.
const MAX_CLOSE_REASON: usize = 123;

pub(crate) async fn upgrade(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let auth = match authenticate(&inner, &headers, &query).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    if inner.cancel.is_cancelled() {
        return error(ErrorCode::Unavailable, "server shutting down");
    }
    // Frames over the protocol limit get `too_large` and the connection stays; frames over
    // this hard cap are refused by the WebSocket layer itself (close 1009).
    let hard_cap = (inner.config.limits.max_frame_bytes * 4).max(256 * 1024);
    let tracker = inner.tracker.clone();
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| {
            tracker.track_future(run(inner, auth.user, auth.expires_ms, socket))
        })
}

/// Why the loop ends.
enum Flow {
    Continue,
    Close(u16, String),
    Gone,
}

fn close(code: u16, reason: &str) -> Flow {
    Flow::Close(code, reason.to_owned())
}

/// Counts frames within the current second.
struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    fn new() -> Self {
        Window {
            start: Instant::now(),
            count: 0,
        }
    }
    /// Count one; the count within this second.
    fn count(&mut self) -> u32 {
        let now = Instant::now();
        if now.duration_since(self.start) >= Duration::from_secs(1) {
            self.start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count
    }
}

/// A session's acks: the highest seen, the highest written, and whether a write is in
/// flight.
struct Acks {
    /// The highest acked seq (what the next write records).
    highest: u64,
    /// The highest seq handed to the store.
    written: u64,
    /// Set while a store write is in flight: at most one per session.
    writing: Arc<AtomicBool>,
    /// When the next write may start, while one is due.
    due: Option<Instant>,
    last_write: Option<Instant>,
    bucket: TokenBucket,
    window: Window,
}

impl Acks {
    fn new(acks_per_s: u32) -> Self {
        Acks {
            highest: 0,
            written: 0,
            writing: Arc::new(AtomicBool::new(false)),
            due: None,
            last_write: None,
            bucket: TokenBucket::new(f64::from(acks_per_s.max(1)), acks_per_s),
            window: Window::new(),
        }
    }

    /// Record an ack; a write becomes due (at once, or [`ACK_FLUSH_EVERY`] after the last).
    fn record(&mut self, seq: u64, now: Instant) {
        if seq <= self.highest {
            return;
        }
        self.highest = seq;
        if self.due.is_none() {
            let earliest = self
                .last_write
                .map_or(now, |t| (t + ACK_FLUSH_EVERY).max(now));
            self.due = Some(earliest);
        }
    }

    /// The seq to write now, if one is due and no write is in flight (the caller clears
    /// `writing` when its write ends); otherwise the write is put off.
    fn flush(&mut self, now: Instant) -> Option<u64> {
        self.due = None;
        if self.highest <= self.written {
            return None;
        }
        if self.writing.swap(true, Ordering::AcqRel) {
            self.due = Some(now + ACK_FLUSH_EVERY);
            return None;
        }
        self.written = self.highest;
        self.last_write = Some(now);
        Some(self.highest)
    }
}

/// Removes the session from everything it joined when the connection task ends, however it
/// ends (a return, a panic, a cancelled future).
struct SessionGuard {
    inner: Arc<Inner>,
    user: String,
    session: String,
    /// An ack not yet written when the task ended.
    last_ack: Option<u64>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let unwatched = self.inner.remove_session(&self.session);
        let inner = self.inner.clone();
        let (user, session, last_ack) = (
            std::mem::take(&mut self.user),
            std::mem::take(&mut self.session),
            self.last_ack.take(),
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tracker = inner.tracker.clone();
        let cleanup = async move {
            if let Some(seq) = last_ack
                && let Err(e) = inner.deps.store.ack(&user, seq).await
            {
                tracing::debug!(error = %e, "ack not recorded");
            }
            if !unwatched.is_empty() {
                inner
                    .deps
                    .engagement
                    .unsubscribe(&inner.config.edge_id, &unwatched)
                    .await;
            }
            inner
                .deps
                .signals
                .session_closed(&user, &inner.config.edge_id, &session)
                .await;
            if let Err(e) = inner.deps.registry.unregister(&user, &session).await {
                tracing::warn!(error = %e, "unregister failed");
            }
        };
        let _enter = rt.enter();
        tracker.spawn(cleanup);
    }
}

struct Conn {
    inner: Arc<Inner>,
    user: UserRef,
    session: String,
    socket: WebSocket,
    next_seq: u64,
    /// This session has written every durable event from `written_from` to `next_seq - 1`
    /// (pushed live, filled in, or replayed): a `sync` does not write them a second time.
    written_from: u64,
    acks: Acks,
    pending: HashMap<String, Instant>,
    bucket: TokenBucket,
    window: Window,
    last_heard: Instant,
    /// Set by the dispatcher (slow reader, revocation, session cap) or by `close_user`.
    close: Arc<CloseSignal>,
    /// Bytes the dispatcher queued for this session and it has not taken yet.
    queued: Arc<AtomicUsize>,
    /// When the session's token expires (ms since the epoch); `auth` moves it.
    expires_ms: i64,
    /// Users this session watches the presence of.
    presence: HashSet<String>,
}

async fn run(inner: Arc<Inner>, user: UserRef, expires_ms: i64, socket: WebSocket) {
    let session = match hubbub_store::new_id("s") {
        Ok(s) => s,
        Err(_) => return,
    };
    let (tx, rx) = mpsc::channel(inner.config.limits.max_outgoing_frames.max(16));
    let close_signal = Arc::new(CloseSignal::default());
    let queued = Arc::new(AtomicUsize::new(0));
    inner.add_session(
        &session,
        SessionHandle::new(user.id.clone(), tx, close_signal.clone(), queued.clone()),
    );
    let mut guard = SessionGuard {
        inner: inner.clone(),
        user: user.id.clone(),
        session: session.clone(),
        last_ack: None,
    };
    let limits = &inner.config.limits;
    let mut conn = Conn {
        bucket: TokenBucket::new(f64::from(limits.frames_per_s.max(1)), limits.burst),
        acks: Acks::new(limits.acks_per_s),
        inner: inner.clone(),
        user,
        session,
        socket,
        next_seq: 1,
        written_from: 1,
        pending: HashMap::new(),
        window: Window::new(),
        last_heard: Instant::now(),
        close: close_signal,
        queued,
        expires_ms,
        presence: HashSet::new(),
    };
    let flow = conn.start(rx).await;
    match flow {
        Flow::Close(code, reason) => conn.close_with(code, &reason).await,
        Flow::Gone if conn.close.is_closed() => {
            let (code, reason) = conn.close.why();
            conn.close_with(code, &reason).await
        }
        _ => {}
    }
    if conn.acks.highest > conn.acks.written {
        guard.last_ack = Some(conn.acks.highest);
    }
    drop(guard);
}

impl Conn {
    async fn start(&mut self, mut rx: mpsc::Receiver<Out>) -> Flow {
        let edge = self.inner.config.edge_id.clone();
        if let Err(e) = self
            .inner
            .deps
            .registry
            .register(&self.user.id, &self.session, &edge)
            .await
        {
            tracing::warn!(error = %e, "register failed");
            return close(1011, "session registry unavailable");
        }
        self.inner
            .deps
            .signals
            .session_opened(&self.user.id, &edge, &self.session)
            .await;
        let last_seq = match self.inner.deps.store.last_seq(&self.user.id).await {
            Ok(s) => s,
            Err(_) => return close(1011, "storage unavailable"),
        };
        self.next_seq = last_seq + 1;
        self.written_from = self.next_seq;
        let hello = ServerFrame::Hello {
            user: self.user.clone(),
            session: self.session.clone(),
            last_seq,
            server_ts: now_ms(),
        };
        if !self.write_frames(&[hello]).await {
            return Flow::Gone;
        }
        // The precomputed timeline follows `hello` unasked. It is ephemeral: a user whose
        // timeline cannot be read now still gets a working session.
        match self.inner.deps.timelines.welcome(&self.user.id).await {
            Ok((items, computed_ts)) => {
                let timeline = ServerFrame::Timeline { items, computed_ts };
                if !self.write_frames(&[timeline]).await {
                    return Flow::Gone;
                }
            }
            Err(e) => tracing::warn!(error = %e, "no timeline pushed after hello"),
        }
        let ping_every = self.inner.config.ping_interval;
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let cancel = self.inner.cancel.clone();
        let signal = self.close.clone();
        loop {
            let ack_due = self.acks.due;
            let flow = tokio::select! {
                // Unbiased: among ready branches one is picked at random, so neither a client
                // that never stops sending nor a flood of events starves the other direction.
                _ = cancel.cancelled() => close(1001, "server shutting down"),
                _ = signal.closed() => {
                    let (code, reason) = signal.why();
                    Flow::Close(code, reason)
                }
                out = rx.recv() => match out {
                    Some(out) => {
                        let mut batch = vec![out];
                        while batch.len() < MAX_FRAMES_PER_WRITE {
                            match rx.try_recv() {
                                Ok(o) => batch.push(o),
                                Err(_) => break,
                            }
                        }
                        let bytes: usize = batch.iter().map(Out::bytes).sum();
                        self.queued.fetch_sub(bytes, Ordering::Relaxed);
                        self.on_outgoing(batch).await
                    }
                    None => Flow::Gone,
                },
                msg = self.socket.recv() => self.on_message(msg).await,
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > ping_every * 3 {
                        close(1001, "idle timeout")
                    } else {
                        // A peer that does not read cannot take even a ping: the send is
                        // bounded, so a stuck socket ends the task instead of holding it.
                        match tokio::time::timeout(ping_every, self.socket.send(Message::Ping(Default::default()))).await {
                            Ok(Ok(())) => Flow::Continue,
                            _ => Flow::Gone,
                        }
                    }
                }
                _ = tick.tick() => self.on_tick().await,
                _ = sleep_until_some(ack_due) => {
                    self.flush_acks();
                    Flow::Continue
                }
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
        }
    }

    /// Every second: answer overdue requests, close a session whose token lapsed.
    async fn on_tick(&mut self) -> Flow {
        let grace_ms = i64::try_from(self.inner.config.auth.expiry_grace_s.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        if now_ms() > self.expires_ms.saturating_add(grace_ms) {
            return close(
                crate::CLOSE_REVOKED,
                "token expired: refresh it and reconnect (send `auth` before expiry)",
            );
        }
        self.expire_pending().await
    }

    async fn close_with(&mut self, code: u16, reason: &str) {
        let mut end = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code,
            reason: reason[..end].to_owned().into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.send(Message::Close(Some(frame))))
            .await;
    }

    /// Write the highest ack if it is due and none is in flight; else try again later.
    fn flush_acks(&mut self) {
        let Some(seq) = self.acks.flush(Instant::now()) else {
            return;
        };
        let (store, user, writing) = (
            self.inner.deps.store.clone(),
            self.user.id.clone(),
            self.acks.writing.clone(),
        );
        self.inner.tracker.spawn(async move {
            if let Err(e) = store.ack(&user, seq).await {
                tracing::debug!(error = %e, "ack not recorded");
            }
            writing.store(false, Ordering::Release);
        });
    }

    /// Write frames as one text frame, newline-separated.
    async fn write_frames(&mut self, frames: &[ServerFrame]) -> bool {
        let frames: Vec<Frame> = frames.iter().map(Frame::new).collect();
        self.write_mixed(&frames, &[]).await
    }

    async fn write_raw(&mut self, frames: &[Frame], shared: &[Arc<str>]) -> Flow {
        if self.write_mixed(frames, shared).await {
            Flow::Continue
        } else {
            Flow::Gone
        }
    }

    /// Write serialized frames and shared (ephemeral) frames as one text frame.
    async fn write_mixed(&mut self, frames: &[Frame], shared: &[Arc<str>]) -> bool {
        if frames.is_empty() && shared.is_empty() {
            return true;
        }
        let len: usize = frames.iter().map(|f| f.json.len() + 1).sum::<usize>()
            + shared.iter().map(|j| j.len() + 1).sum::<usize>();
        let mut text = String::with_capacity(len);
        for f in frames {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&f.json);
            metrics::counter!("hubbub_frames_out_total", "type" => f.kind).increment(1);
        }
        for raw in shared {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(raw);
        }
        if !shared.is_empty() {
            metrics::counter!("hubbub_frames_out_total", "type" => "engagement")
                .increment(shared.len() as u64);
        }
        // A session told to close (a slow reader cut off) abandons the write at once, not
        // after the send timeout.
        let close = self.close.clone();
        tokio::select! {
            sent = tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(text.into()))) => {
                matches!(sent, Ok(Ok(())))
            }
            _ = close.closed() => false,
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) -> Flow {
        self.last_heard = Instant::now();
        let msg = match msg {
            None => return Flow::Gone,
            Some(Err(e)) => {
                let text = e.to_string();
                return if text.contains("too long")
                    || text.contains("Space limit")
                    || text.contains("capacity")
                {
                    close(1009, "frame too large")
                } else {
                    Flow::Gone
                };
            }
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(text) => {
                if text.len() > self.inner.config.limits.max_frame_bytes {
                    if let Some(flow) = self.count_frame() {
                        return flow;
                    }
                    let limit = self.inner.config.limits.max_frame_bytes;
                    let e = ServerFrame::error(
                        None,
                        ErrorCode::TooLarge,
                        format!("frame is over {limit} bytes"),
                    );
                    return self.written(&[e]).await;
                }
                for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                    match self.on_line(line).await {
                        Flow::Continue => {}
                        other => return other,
                    }
                }
                Flow::Continue
            }
            Message::Binary(_) => {
                if let Some(flow) = self.count_frame() {
                    return flow;
                }
                let e = ServerFrame::error(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text",
                );
                self.written(&[e]).await
            }
            Message::Close(_) => Flow::Gone,
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
        }
    }

    async fn written(&mut self, frames: &[ServerFrame]) -> Flow {
        if self.write_frames(frames).await {
            Flow::Continue
        } else {
            Flow::Gone
        }
    }

    /// Count a frame in the current second; far over the limit closes the connection (1008).
    fn count_frame(&mut self) -> Option<Flow> {
        let max = self
            .inner
            .config
            .limits
            .frames_per_s
            .saturating_mul(5)
            .max(1);
        (self.window.count() > max).then(|| close(1008, "too many frames"))
    }

    /// An `ack`: its own limit and cut-off, then coalesced.
    async fn on_ack_frame(&mut self, id: Option<String>, seq: u64) -> Flow {
        let per_s = self.inner.config.limits.acks_per_s.max(1);
        if self.acks.window.count() > per_s.saturating_mul(5) {
            return close(1008, "too many acks");
        }
        if let Err(retry_after_ms) = self.acks.bucket.take() {
            metrics::counter!("hubbub_rate_limited_total").increment(1);
            // Without an id there is no one to tell: the ack is dropped (a later one covers
            // it).
            if id.is_none() {
                return Flow::Continue;
            }
            let e = ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: "over the ack rate limit; this ack was not recorded".into(),
                retry_after_ms: Some(retry_after_ms),
            };
            return self.written(&[e]).await;
        }
        metrics::counter!("hubbub_frames_in_total", "type" => "ack").increment(1);
        self.acks.record(seq, Instant::now());
        self.reply(id, Ok(ReplyData::Empty {})).await
    }

    async fn on_line(&mut self, line: &str) -> Flow {
        let parsed = ClientFrame::parse(line);
        if let Ok(ClientFrame {
            id,
            request: Request::Ack { seq },
        }) = parsed
        {
            return self.on_ack_frame(id, seq).await;
        }
        if let Some(flow) = self.count_frame() {
            return flow;
        }
        if let Err(retry_after_ms) = self.bucket.take() {
            let silent = matches!(
                &parsed,
                Ok(ClientFrame {
                    request: Request::Typing { .. } | Request::CommentTyping { .. },
                    ..
                })
            );
            if silent {
                return Flow::Continue;
            }
            let id = match &parsed {
                Ok(f) => f.id.clone(),
                Err(e) => e.id.clone(),
            };
            metrics::counter!("hubbub_rate_limited_total").increment(1);
            let e = ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: "over the rate limit; this frame was not processed".into(),
                retry_after_ms: Some(retry_after_ms),
            };
            return self.written(&[e]).await;
        }
        let frame = match parsed {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!("hubbub_frames_in_total", "type" => "invalid").increment(1);
                return self
                    .written(&[ServerFrame::error(e.id, e.code, e.message)])
                    .await;
            }
        };
        metrics::counter!("hubbub_frames_in_total", "type" => frame.request.type_name())
            .increment(1);
        self.on_request(frame).await
    }

    /// `auth`: a new token of the same user moves the session's expiry.
    async fn on_auth(&mut self, id: Option<String>, token: &str) -> Flow {
        match self.inner.auth.authenticate(token).await {
            Ok(a) if a.user.id == self.user.id => {
                self.expires_ms = a.expires_ms;
                self.reply(
                    id,
                    Ok(ReplyData::Auth {
                        expires_ts: a.expires_ms,
                    }),
                )
                .await
            }
            Ok(_) => {
                let e = ServerFrame::error(
                    id,
                    ErrorCode::Forbidden,
                    "the token is another user's; a session keeps its user",
                );
                self.written(&[e]).await
            }
            Err(AuthError::Unauthorized(m)) => {
                self.written(&[ServerFrame::error(id, ErrorCode::Unauthorized, m)])
                    .await
            }
            Err(AuthError::Store(e)) => self.reply(id, Err(e)).await,
            Err(e) => {
                tracing::error!(error = %e, "auth frame failed");
                self.written(&[ServerFrame::error(
                    id,
                    ErrorCode::Internal,
                    "internal error",
                )])
                .await
            }
        }
    }

    /// `presence.watch`: at most `limits.max_presence_watches` users per session in all. A
    /// user who blocks the caller is reported offline and not watched.
    async fn watch_presence(&mut self, id: Option<String>, mut users: Vec<String>) -> Flow {
        let max = self.inner.config.limits.max_presence_watches;
        if users.len() > max {
            let e = ServerFrame::error(
                id,
                ErrorCode::TooLarge,
                format!("watch at most {max} users at once"),
            );
            return self.written(&[e]).await;
        }
        users.sort_unstable();
        users.dedup();
        let new = users.iter().filter(|u| !self.presence.contains(*u)).count();
        if self.presence.len() + new > max {
            let e = ServerFrame::error(
                id,
                ErrorCode::TooLarge,
                format!("a session watches the presence of at most {max} users"),
            );
            return self.written(&[e]).await;
        }
        let blockers = match self
            .inner
            .deps
            .store
            .blocked_by(&self.user.id, &users)
            .await
        {
            Ok(b) => b,
            Err(e) => return self.reply(id, Err(e)).await,
        };
        let (hidden, watch): (Vec<String>, Vec<String>) =
            users.into_iter().partition(|u| blockers.contains(u));
        let edge = self.inner.config.edge_id.clone();
        let r = self
            .inner
            .deps
            .signals
            .watch(&edge, &self.session, &watch)
            .await;
        // Hidden users count against the bound too: the client sees one rule.
        self.presence.extend(hidden.iter().cloned());
        let r = r.map(|mut presence| {
            self.presence.extend(watch);
            presence.extend(hidden.into_iter().map(|user| hubbub_protocol::Presence {
                user,
                status: hubbub_protocol::PresenceStatus::Offline,
                last_seen_ts: None,
            }));
            ReplyData::Presence { presence }
        });
        self.signal_reply(id, r).await
    }

    async fn reply(&mut self, id: Option<String>, result: Result<ReplyData, StoreError>) -> Flow {
        let frame = match (id, result) {
            (Some(id), Ok(data)) => ServerFrame::Ok { id, data },
            (None, Ok(_)) => return Flow::Continue,
            (id, Err(e)) => {
                let code = e.code();
                let message = if code == ErrorCode::Internal {
                    tracing::error!(error = %e, "edge read failed");
                    "internal error".to_owned()
                } else {
                    e.to_string()
                };
                ServerFrame::error(id, code, message)
            }
        };
        self.written(&[frame]).await
    }

    async fn signal_reply(
        &mut self,
        id: Option<String>,
        result: Result<ReplyData, hubbub_registry::SignalError>,
    ) -> Flow {
        match result {
            Ok(data) => self.reply(id, Ok(data)).await,
            Err(e) => {
                self.written(&[ServerFrame::error(id, e.code, e.message)])
                    .await
            }
        }
    }

    async fn on_request(&mut self, frame: ClientFrame) -> Flow {
        let store = self.inner.deps.store.clone();
        let user = self.user.id.clone();
        match frame.request {
            Request::Ack { seq } => self.on_ack_frame(frame.id, seq).await,
            Request::Auth { access_token } => self.on_auth(frame.id, &access_token).await,
            Request::Sync { after_seq } => self.sync(frame.id, after_seq).await,
            Request::ConversationList {} => {
                let r = store
                    .conversations(&user)
                    .await
                    .map(|conversations| ReplyData::Conversations { conversations });
                self.reply(frame.id, r).await
            }
            Request::ConversationGet { conversation } => {
                let r = store
                    .conversation(&user, &conversation)
                    .await
                    .map(|conversation| ReplyData::Conversation { conversation });
                self.reply(frame.id, r).await
            }
            Request::MessageHistory {
                conversation,
                before,
                limit,
            } => {
                let limit = limit.unwrap_or(50).clamp(1, 100) as usize;
                let r = store
                    .history(&user, &conversation, before.as_deref(), limit)
                    .await
                    .map(|(messages, more)| ReplyData::History { messages, more });
                self.reply(frame.id, r).await
            }
            Request::BlockList {} => {
                let r = store
                    .blocks(&user)
                    .await
                    .map(|users| ReplyData::Users { users });
                self.reply(frame.id, r).await
            }
            Request::MessageSearch {
                query,
                conversation,
            } => {
                let r = store
                    .search(&user, &query, conversation.as_deref(), SEARCH_LIMIT)
                    .await
                    .map(|messages| ReplyData::Search { messages });
                self.reply(frame.id, r).await
            }
            // The ephemeral path: presence and typing never touch a queue or a disk.
            Request::Typing {
                conversation,
                state,
            } => {
                let r = self
                    .inner
                    .deps
                    .signals
                    .typing(&user, &conversation, state)
                    .await;
                self.signal_reply(frame.id, r.map(|()| ReplyData::Empty {}))
                    .await
            }
            Request::PresenceSet { status } => {
                self.inner.deps.signals.set_status(&user, status).await;
                self.reply(frame.id, Ok(ReplyData::Empty {})).await
            }
            Request::PresenceWatch { users } => self.watch_presence(frame.id, users).await,
            Request::PresenceUnwatch { users } => {
                for u in &users {
                    self.presence.remove(u);
                }
                let edge = self.inner.config.edge_id.clone();
                self.inner
                    .deps
                    .signals
                    .unwatch(&edge, &self.session, &users)
                    .await;
                self.reply(frame.id, Ok(ReplyData::Empty {})).await
            }
            Request::TimelineGet { before, limit } => {
                let limit = limit.unwrap_or(50).clamp(1, 100) as usize;
                let r = self
                    .inner
                    .deps
                    .timelines
                    .timeline(&user, before.as_deref(), limit)
                    .await
                    .map(|(items, computed_ts)| ReplyData::Timeline { items, computed_ts });
                self.signal_reply(frame.id, r).await
            }
            Request::PostWatch { posts } => self.watch_posts(frame.id, posts).await,
            Request::PostUnwatch { posts } => {
                let edge = self.inner.config.edge_id.clone();
                let gone = self.inner.unwatch_posts(&self.session, &posts);
                if !gone.is_empty() {
                    self.inner.deps.engagement.unsubscribe(&edge, &gone).await;
                }
                self.reply(frame.id, Ok(ReplyData::Empty {})).await
            }
            Request::CommentTyping { post, .. } if post.len() > MAX_POST_ID_BYTES => {
                let e = ServerFrame::error(
                    frame.id,
                    ErrorCode::BadRequest,
                    "no such post id: too long",
                );
                self.written(&[e]).await
            }
            Request::CommentTyping { post, words } => {
                let r = self
                    .inner
                    .deps
                    .engagement
                    .typing(&self.user, &post, words)
                    .await;
                self.signal_reply(frame.id, r.map(|()| ReplyData::Empty {}))
                    .await
            }
            request => self.forward(frame.id, request).await,
        }
    }

    /// `post.watch`: at most [`MAX_WATCHED_POSTS`] per session; an unknown post refuses the
    /// whole request. The edge's latest frame of each post follows the `ok`.
    async fn watch_posts(&mut self, id: Option<String>, mut posts: Vec<String>) -> Flow {
        if posts.iter().any(|p| p.len() > MAX_POST_ID_BYTES) {
            let e = ServerFrame::error(id, ErrorCode::BadRequest, "no such post id: too long");
            return self.written(&[e]).await;
        }
        posts.sort_unstable();
        posts.dedup();
        if !self
            .inner
            .can_watch(&self.session, &posts, MAX_WATCHED_POSTS)
        {
            let e = ServerFrame::error(
                id,
                ErrorCode::TooLarge,
                format!("a session watches at most {MAX_WATCHED_POSTS} posts"),
            );
            return self.written(&[e]).await;
        }
        let edge = self.inner.config.edge_id.clone();
        if let Err(e) = self.inner.deps.engagement.subscribe(&edge, &posts).await {
            return self
                .written(&[ServerFrame::error(id, e.code, e.message)])
                .await;
        }
        match self
            .inner
            .watch_posts(&self.session, &posts, MAX_WATCHED_POSTS)
        {
            Ok(latest) => {
                if let Flow::Gone = self.reply(id, Ok(ReplyData::Empty {})).await {
                    return Flow::Gone;
                }
                self.write_raw(&[], &latest).await
            }
            // Another watch raced this one to the limit (not possible from one connection).
            Err(crate::TooManyPosts) => {
                let e = ServerFrame::error(
                    id,
                    ErrorCode::TooLarge,
                    format!("a session watches at most {MAX_WATCHED_POSTS} posts"),
                );
                self.written(&[e]).await
            }
        }
    }

    /// Put a write on the `main` queue; the reply comes back through the dispatcher.
    async fn forward(&mut self, id: Option<String>, request: Request) -> Flow {
        if !self
            .inner
            .store_ok
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let e = ServerFrame::error(
                id,
                ErrorCode::Unavailable,
                "storage is unavailable; nothing was accepted, retry later",
            );
            return self.written(&[e]).await;
        }
        let envelope_id = match hubbub_store::new_id("e") {
            Ok(e) => e,
            Err(e) => return self.reply(id, Err(e)).await,
        };
        let envelope = Envelope {
            envelope_id,
            user: self.user.id.clone(),
            session: self.session.clone(),
            edge: self.inner.config.edge_id.clone(),
            request_id: id.clone(),
            accepted_ms: now_ms(),
            request,
        };
        let body = match serde_json::to_vec(&envelope) {
            Ok(b) => b,
            Err(e) => {
                return self
                    .reply(id, Err(StoreError::Internal(e.to_string())))
                    .await;
            }
        };
        match self
            .inner
            .deps
            .queue
            .send(MAIN_QUEUE, body, SendOptions::default())
            .await
        {
            Ok(_) => {
                if let Some(id) = id {
                    self.pending
                        .insert(id, Instant::now() + self.inner.config.request_timeout);
                }
                Flow::Continue
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not accept a request");
                let e = ServerFrame::error(
                    id,
                    ErrorCode::Unavailable,
                    "could not accept the request; nothing was accepted, retry later",
                );
                self.written(&[e]).await
            }
        }
    }

    async fn expire_pending(&mut self) -> Flow {
        let now = Instant::now();
        let overdue: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| id.clone())
            .collect();
        if overdue.is_empty() {
            return Flow::Continue;
        }
        let frames: Vec<ServerFrame> = overdue
            .into_iter()
            .map(|id| {
                self.pending.remove(&id);
                ServerFrame::error(Some(id), ErrorCode::Internal, "no reply in time; the outcome is unknown, retrying with the same client_msg_id is safe")
            })
            .collect();
        self.written(&frames).await
    }

    async fn sync(&mut self, id: Option<String>, after_seq: u64) -> Flow {
        let store = self.inner.deps.store.clone();
        let mut cursor = after_seq;
        let mut truncated = None;
        // Events this session already wrote (pushed live after `hello`, before this sync)
        // are not written again: each durable event reaches a session once.
        let written = self.written_from..self.next_seq;
        loop {
            let replay = match store.events_after(&self.user.id, cursor, REPLAY_PAGE).await {
                Ok(r) => r,
                Err(e) => return self.reply(id, Err(e)).await,
            };
            if truncated.is_none() {
                if after_seq > replay.last_seq {
                    let e = ServerFrame::error(
                        id,
                        ErrorCode::BadRequest,
                        format!(
                            "after_seq {after_seq} is beyond the last seq {}",
                            replay.last_seq
                        ),
                    );
                    return self.written(&[e]).await;
                }
                truncated = Some(replay.truncated);
            }
            let page = replay.frames.len();
            if let Some(last) = replay.frames.last().and_then(ServerFrame::seq) {
                cursor = last;
            }
            let fresh: Vec<ServerFrame> = replay
                .frames
                .into_iter()
                .filter(|f| f.seq().is_none_or(|s| !written.contains(&s)))
                .collect();
            if !self.write_frames(&fresh).await {
                return Flow::Gone;
            }
            if page < REPLAY_PAGE {
                // Events gone to retention cannot be replayed; the client reloads state.
                cursor = cursor.max(replay.last_seq);
                break;
            }
        }
        // Written now: everything after `after_seq` up to `cursor`, joined to what was.
        self.written_from = if after_seq < self.next_seq {
            self.written_from.min(after_seq + 1)
        } else {
            after_seq + 1
        };
        self.next_seq = self.next_seq.max(cursor + 1);
        let data = ReplyData::Sync {
            last_seq: cursor,
            truncated: truncated.unwrap_or(false),
        };
        self.reply(id, Ok(data)).await
    }

    async fn on_outgoing(&mut self, batch: Vec<Out>) -> Flow {
        let mut frames: Vec<Frame> = Vec::new();
        let mut shared = Vec::new();
        for out in batch {
            match out {
                Out::Shared(list) => shared.extend(list),
                Out::Reply { id, frame } => match id {
                    // Already answered (timed out): drop the late reply.
                    Some(id) if self.pending.remove(&id).is_none() => {}
                    _ => frames.push(frame),
                },
                Out::Events(events, origin_ms) => {
                    for frame in events.iter() {
                        match frame.seq {
                            None => frames.push(frame.clone()),
                            Some(seq) if seq < self.next_seq => {}
                            Some(seq) if seq == self.next_seq => {
                                self.next_seq += 1;
                                frames.push(frame.clone());
                            }
                            Some(seq) => {
                                // Missed events: read them (this one included) from the store.
                                let missing = seq - self.next_seq + 1;
                                let replay = self
                                    .inner
                                    .deps
                                    .store
                                    .events_after(
                                        &self.user.id,
                                        self.next_seq - 1,
                                        missing as usize,
                                    )
                                    .await;
                                match replay {
                                    Ok(r) => {
                                        for f in r.frames {
                                            if let Some(s) = f.seq() {
                                                self.next_seq = self.next_seq.max(s + 1);
                                            }
                                            frames.push(Frame::new(&f));
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "gap fill failed; client catches up on sync")
                                    }
                                }
                                if self.next_seq <= seq {
                                    self.next_seq = seq + 1;
                                    frames.push(frame.clone());
                                }
                            }
                        }
                    }
                    if let Some(origin) = origin_ms {
                        let ms = (now_ms() - origin).max(0) as f64;
                        metrics::histogram!("hubbub_delivery_latency_seconds").record(ms / 1000.0);
                    }
                }
            }
        }
        self.write_raw(&frames, &shared).await
    }
}

/// Sleep until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of rising acks becomes a handful of writes, one at a time, and the last write
    /// records the highest ack.
    #[tokio::test(start_paused = true)]
    async fn acks_are_coalesced() {
        let mut acks = Acks::new(1_000_000);
        let start = Instant::now();
        let mut writes = Vec::new();
        for seq in 1..=100_000u64 {
            // 100,000 acks over one second.
            let now = start + Duration::from_micros(seq * 10);
            acks.record(seq, now);
            if acks.due.is_some_and(|d| d <= now)
                && let Some(s) = acks.flush(now)
            {
                writes.push((now, s));
                // The write ends at once, except every third one, still in flight at the
                // next due time (the next flush must wait for it).
                if writes.len() % 3 != 0 {
                    acks.writing.store(false, Ordering::Release);
                }
            }
            if writes.len() % 3 == 0 && acks.due.is_some_and(|d| d <= now) {
                acks.writing.store(false, Ordering::Release);
            }
        }
        let end = start + Duration::from_secs(2);
        acks.writing.store(false, Ordering::Release);
        if let Some(s) = acks.flush(end) {
            writes.push((end, s));
        }
        assert!(writes.len() <= 10, "{} writes", writes.len());
        assert_eq!(writes.last().map(|w| w.1), Some(100_000));
        for pair in writes.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= ACK_FLUSH_EVERY,
                "writes too close: {pair:?}"
            );
            assert!(pair[1].1 > pair[0].1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_ack_changes_nothing() {
        let mut acks = Acks::new(100);
        let now = Instant::now();
        acks.record(5, now);
        assert_eq!(acks.flush(now), Some(5));
        acks.writing.store(false, Ordering::Release);
        acks.record(3, now);
        assert_eq!(acks.due, None);
        assert_eq!(acks.flush(now), None);
    }
}
