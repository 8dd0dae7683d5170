//! `/v1/ws`: one task per connection.
//!
//! # Limits held per connection
//! Frames count against a token bucket (`rate_limited`) and a per-second cut-off (1008);
//! `ack` frames have a bucket and cut-off of their own and are coalesced: only the highest
//! is written, at most one write per session in flight and one every [`limits::ACK_FLUSH_EVERY`].
//! What the dispatcher hands the session is bounded in items and bytes (1013 past either).
//! A session outliving its token by more than the grace without an `auth` frame is closed
//! with 4001. Cleanup (registry, presence, watches, the last ack) runs from a drop guard,
//! so a panic or a stuck write cannot leak a session.
//!
//! The task owns the socket and the session's delivery state, so there is no locking on the
//! hot path. It selects over: frames from the client; replies and events handed to the
//! session by the dispatcher (a bounded channel: a reader too slow to keep up is cut off with
//! 1013 and resumes with `sync`); a ping timer; a timer set to the session's next deadline
//! (a request whose reply is overdue, or the token's lapse), so an idle session wakes only
//! for its pings; shutdown (close 1001).
//!
//! # Layout
//! - this file: the connection task (the socket, the select loop, writes, closing, cleanup);
//! - [`requests`]: what each client frame does (limits, reads, the ephemeral path, `auth`,
//!   `sync`, forwarding writes to `main`);
//! - [`seq`]: the exactly-once state of a session (which seqs it wrote; gaps; what a `sync`
//!   skips), plain and unit-tested;
//! - [`limits`]: frame counting and ack coalescing, plain and unit-tested;
//! - [`acks`]: the edge's one ack writer, which writes the sessions' acks in batches;
//! - [`pending`]: the requests awaiting their reply and their deadlines, plain and
//!   unit-tested.

pub(crate) mod acks;
mod limits;
mod pending;
mod requests;
mod seq;

pub(crate) use requests::{MAX_POST_ID_BYTES, MAX_WATCHED_POSTS};

use crate::admission::LateMark;
use crate::http::{authenticate, error};
use crate::limit::TokenBucket;
use crate::{CloseSignal, Frame, Inner, Out, SessionHandle};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use hubbub_protocol::{ErrorCode, ServerFrame, UserRef};
use hubbub_queue::clock::now_ms;
use limits::{Acks, Window};
use pending::Pending;
use seq::{Held, Pushed, SeqState};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The queue edges put requests on.
pub(crate) const MAIN_QUEUE: &str = "main";
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A close frame is a courtesy: a peer that cannot take it within this long is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a session sleeps before looking at its deadlines again.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
const MAX_FRAMES_PER_WRITE: usize = 256;
/// Events arriving within this long of the session's last write wait out the rest of it and
/// go in one write with whatever else arrives meanwhile. A session flooded with events (a
/// group at 2,000 messages a second) makes at most 500 writes a second instead of one per
/// event, and each write is a system call and a wake-up of the reader; a quiet one writes at
/// once. A reply never starts a wait (one that arrives during one waits at most its end).
/// Short, because the wait is added to delivery latency (20 ms gave a 100-member group at
/// 2,000 sends/s a p50 of ~18 ms, 5 ms ~10 ms; 2 ms took ~1.5 ms more off the p50 at no CPU
/// measurable at 1,000 × 100, see docs/benchmarks.md); a busy channel's frames are batched
/// before they reach the session instead (the `batch` module).
const COALESCE: Duration = Duration::from_millis(2);
/// Most writes a session holds while a commit of its earlier writes to `main` is under way;
/// they then go in one commit. A client that pipelines is not held to one request per
/// commit, and past this the session stops reading its socket until the commit ends.
const MAX_ACCEPT_BATCH: usize = 64;
/// The WebSocket read buffer of a connection (it grows while a larger frame is read).
const READ_BUFFER: usize = 512;
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
    let hard_cap = (inner.runtime().config.limits.max_frame_bytes * 4).max(256 * 1024);
    let tracker = inner.tracker.clone();
    // Small socket buffers: an idle connection should cost a few KiB, not the 128 KiB read
    // buffer the WebSocket layer allocates by default. Reads grow the buffer as a frame
    // needs; writes go out whole (each is one text frame of a batch), so no write buffer.
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
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
            // After the unregister: the check (after the grace) sees the registry without
            // this session.
            if let Err(e) = inner.deps.webhooks.presence_check(&user, true).await {
                tracing::warn!(error = %e, "webhooks: presence check not queued");
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
    /// Which durable events this session has written (exactly once, in order).
    seq: SeqState,
    /// Events pushed past a gap, waiting a moment for the missing ones.
    held: Held<Frame>,
    acks: Acks,
    pending: Pending,
    bucket: TokenBucket,
    window: Window,
    last_heard: Instant,
    /// Set by the dispatcher (slow reader, revocation, session cap) or by `close_user`.
    close: Arc<CloseSignal>,
    /// Bytes the dispatcher queued for this session and it has not taken yet.
    queued: Arc<AtomicUsize>,
    /// When the session's token expires (ms since the epoch); `auth` moves it.
    expires_ms: i64,
    /// When the token lapses past its grace on tokio's clock ([`Conn::set_expiry`]): kept,
    /// not recomputed on each turn of the loop, so the session's timer is not moved (a lock
    /// on the timer wheel) each time it wakes.
    lapse_at: Instant,
    /// Users this session watches the presence of.
    presence: HashSet<String>,
    /// Events waiting for the coalescing window to end ([`COALESCE`]), and when it ends.
    coalesced: Vec<Out>,
    flush_at: Option<Instant>,
    /// When the session last wrote events.
    last_write: Instant,
    /// Writes accepted from the client and not yet on the `main` queue: (request id, body).
    accepted: Vec<(Option<String>, Vec<u8>)>,
    /// The commit of earlier accepted writes under way, if any.
    committing: Option<Commit>,
    /// This session's part in admission control's count of late sessions.
    late: LateMark,
    /// Requests awaiting their reply that may change the user's channels (their `ok` loads
    /// them again before it is written; see the `channels` module). The change's own
    /// `conversation.updated` loads them too, but a batch from the services carries the reply
    /// before the events, so the `ok` could be written first. At most [`MAX_CHANNEL_OPS`]: an
    /// older one is forgotten, and its event loads the change anyway.
    channel_ops: Vec<String>,
    /// The handles of the metrics each write counts, looked up once per session.
    metrics: SessionMetrics,
}

/// A session's handles on the metrics its writes count: looking a metric up by name and
/// labels in the recorder (hashing the key, building the labels) cost more than counting,
/// once or twice per frame written.
#[derive(Default)]
struct SessionMetrics {
    /// Counters by name and `type` label, in the order first counted.
    counters: Vec<(&'static str, &'static str, metrics::Counter)>,
    delivery_latency: Option<metrics::Histogram>,
}

impl SessionMetrics {
    /// Add `n` to the counter `name` with the label `type` = `kind`.
    fn count(&mut self, name: &'static str, kind: &'static str, n: u64) {
        let i = match self
            .counters
            .iter()
            .position(|(m, k, _)| *m == name && *k == kind)
        {
            Some(i) => i,
            None => {
                self.counters
                    .push((name, kind, metrics::counter!(name, "type" => kind)));
                self.counters.len() - 1
            }
        };
        self.counters[i].2.increment(n);
    }

    fn frames_out(&mut self, kind: &'static str, n: u64) {
        self.count(hubbub_protocol::metrics::FRAMES_OUT, kind, n);
    }

    fn delivery_latency(&mut self, seconds: f64) {
        self.delivery_latency
            .get_or_insert_with(|| metrics::histogram!(hubbub_protocol::metrics::DELIVERY_LATENCY))
            .record(seconds);
    }
}

/// The most channel-changing requests a session tracks at once.
const MAX_CHANNEL_OPS: usize = 16;

/// A commit of accepted writes to `main`: their request ids, and the queue's refusal if any.
type Commit = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (Vec<Option<String>>, Option<hubbub_queue::QueueError>)>
            + Send,
    >,
>;

/// The outcome of the commit under way; never resolves when there is none.
async fn commit_done(
    commit: &mut Option<Commit>,
) -> (Vec<Option<String>>, Option<hubbub_queue::QueueError>) {
    match commit {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

async fn run(inner: Arc<Inner>, user: UserRef, expires_ms: i64, socket: WebSocket) {
    let session = match hubbub_store::new_id("s") {
        Ok(s) => s,
        Err(_) => return,
    };
    let (tx, rx) = mpsc::channel(inner.runtime().config.limits.max_outgoing_frames.max(16));
    let close_signal = Arc::new(CloseSignal::new(inner.cancel.child_token()));
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
    let runtime = inner.runtime();
    let limits = &runtime.config.limits;
    let mut conn = Conn {
        bucket: TokenBucket::new(f64::from(limits.frames_per_s.max(1)), limits.burst),
        acks: Acks::new(limits.acks_per_s),
        inner: inner.clone(),
        user,
        session,
        socket,
        seq: SeqState::new(0),
        held: Held::new(),
        pending: Pending::new(inner.config.request_timeout, inner.admission.clone()),
        window: Window::new(),
        last_heard: Instant::now(),
        close: close_signal,
        queued,
        expires_ms,
        lapse_at: Instant::now(),
        presence: HashSet::new(),
        coalesced: Vec::new(),
        flush_at: None,
        last_write: Instant::now(),
        accepted: Vec::new(),
        committing: None,
        late: LateMark::default(),
        channel_ops: Vec::new(),
        metrics: SessionMetrics::default(),
    };
    conn.set_expiry(expires_ms);
    let flow = conn.start(rx).await;
    Box::pin(conn.commit_the_rest()).await;
    match flow {
        Flow::Close(code, reason) => Box::pin(conn.close_with(code, &reason)).await,
        Flow::Gone if conn.close.is_closed() => {
            let (code, reason) = conn.close.why();
            Box::pin(conn.close_with(code, &reason)).await
        }
        _ => {}
    }
    if conn.acks.highest > conn.acks.written {
        guard.last_ack = Some(conn.acks.highest);
    }
    drop(guard);
}

impl Conn {
    /// The session: `hello` and the timeline, then the loop until the socket or the server
    /// ends it.
    ///
    /// Memory: this future lives as long as the connection, and an async fn's future is as
    /// large as its largest await point. The loop's idle await (the `select!`) is small; the
    /// work done on a frame, an event or a tick (store reads, replies, gap fills) is boxed,
    /// so it costs memory only while it runs, not for every idle connection.
    async fn start(&mut self, rx: mpsc::Receiver<Out>) -> Flow {
        match Box::pin(self.welcome()).await {
            Flow::Continue => self.serve(rx).await,
            other => other,
        }
    }

    /// Register the session, send `hello` and the precomputed timeline.
    async fn welcome(&mut self) -> Flow {
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
        if let Err(e) = self
            .inner
            .deps
            .webhooks
            .presence_check(&self.user.id, false)
            .await
        {
            tracing::warn!(error = %e, "webhooks: presence check not queued");
        }
        let last_seq = match self.inner.deps.chat.last_seq(&self.user.id).await {
            Ok(s) => s,
            Err(_) => return close(1011, "storage unavailable"),
        };
        self.seq = SeqState::new(last_seq);
        // A client that has its `hello` gets its channels' messages.
        if self.inner.load_channels(&self.user.id).await.is_err() {
            // Cut off by shutdown is going away, not a failed store.
            if self.inner.cancel.is_cancelled() {
                return close(1001, "server shutting down");
            }
            return close(1011, "storage unavailable");
        }
        let hello = ServerFrame::Hello {
            user: self.user.clone(),
            session: self.session.clone(),
            last_seq,
            server_ts: now_ms(),
            protocol: hubbub_protocol::PROTOCOL_VERSION_STRING.to_owned(),
            flags: self.inner.flags_of(&self.user.id),
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
        Flow::Continue
    }

    /// The session's loop: events out, frames in, pings, ticks, acks.
    async fn serve(&mut self, mut rx: mpsc::Receiver<Out>) -> Flow {
        // The runtime config's interval when the session starts.
        let ping_every =
            Duration::from_secs(self.inner.runtime().config.intervals.ping_interval_s.max(1));
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let signal = self.close.clone();
        // Futures made once and polled by reference: `select!` polls every branch on every
        // wake-up, and one made afresh each time registers (and drops) a waiter each time,
        // on a lock the edge's sessions share. The session's close signal is a child of the
        // server's shutdown, so one future hears both.
        let closed = signal.closed();
        tokio::pin!(closed);
        let flush_wanted = signal.flush_wanted();
        tokio::pin!(flush_wanted);
        // One timer for the session's deadlines (acks included), moved only when the next
        // one changes.
        let timer = tokio::time::sleep_until(self.next_due());
        tokio::pin!(timer);
        loop {
            let due = self.next_due();
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            let flow = tokio::select! {
                // Unbiased: among ready branches one is picked at random, so neither a client
                // that never stops sending nor a flood of events starves the other direction.
                _ = &mut closed => {
                    let (code, reason) = signal.why();
                    Flow::Close(code, reason)
                }
                // Its buffer is half full: the coalescing window ends now.
                _ = &mut flush_wanted, if self.flush_at.is_some() => {
                    flush_wanted.set(signal.flush_wanted());
                    self.flush_at = None;
                    self.last_write = Instant::now();
                    let mut batch = std::mem::take(&mut self.coalesced);
                    self.take_waiting(&mut rx, &mut batch);
                    Box::pin(self.on_outgoing(batch)).await
                }
                // Not read while events wait out the coalescing window: what arrives meanwhile
                // stays in the channel without waking this task, and is taken at the flush.
                out = rx.recv(), if self.flush_at.is_none() => match out {
                    Some(out) => {
                        self.queued.fetch_sub(out.bytes(), Ordering::Relaxed);
                        let mut batch = std::mem::take(&mut self.coalesced);
                        batch.push(out);
                        self.take_waiting(&mut rx, &mut batch);
                        let now = Instant::now();
                        let wait_until = self.last_write + COALESCE;
                        if now < wait_until
                            && batch.len() < MAX_FRAMES_PER_WRITE
                            && !batch.iter().any(|o| matches!(o, Out::Reply(_)))
                        {
                            self.coalesced = batch;
                            self.flush_at = Some(wait_until);
                            Flow::Continue
                        } else {
                            self.flush_at = None;
                            self.last_write = now;
                            Box::pin(self.on_outgoing(batch)).await
                        }
                    }
                    None => Flow::Gone,
                },
                // Not read while a full batch of writes waits behind a commit: the client is
                // held back by TCP instead of the edge buffering without bound.
                msg = self.socket.recv(), if self.accepted.len() < MAX_ACCEPT_BATCH => {
                    Box::pin(self.on_message(msg)).await
                }
                (ids, refused) = commit_done(&mut self.committing), if self.committing.is_some() => {
                    Box::pin(self.committed(ids, refused)).await
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > ping_every * 3 {
                        close(1001, "idle timeout")
                    } else {
                        // A peer that does not read cannot take even a ping: the send is
                        // bounded, so a stuck socket ends the task instead of holding it.
                        match tokio::time::timeout(ping_every, Box::pin(self.socket.send(Message::Ping(Default::default())))).await {
                            Ok(Ok(())) => Flow::Continue,
                            _ => Flow::Gone,
                        }
                    }
                }
                // No timer per second per session: it wakes when a reply is overdue or its
                // token lapses (19,000 idle sessions cost 19,000 wake-ups a second otherwise).
                _ = &mut timer => {
                    let now = Instant::now();
                    let acked = self.acks.due.is_some_and(|at| at <= now);
                    if acked {
                        self.flush_acks();
                    }
                    if self.flush_at.is_some_and(|at| at <= now) {
                        self.flush_at = None;
                        self.last_write = now;
                        let mut batch = std::mem::take(&mut self.coalesced);
                        self.take_waiting(&mut rx, &mut batch);
                        Box::pin(self.on_outgoing(batch)).await
                    } else if acked && self.next_due() > now {
                        // Only the ack was due.
                        Flow::Continue
                    } else {
                        Box::pin(self.on_tick()).await
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
        }
    }

    /// Move what waits in the session's channel onto `batch`, up to a write's worth, and
    /// stop counting it as queued.
    fn take_waiting(&self, rx: &mut mpsc::Receiver<Out>, batch: &mut Vec<Out>) {
        let mut bytes = 0;
        while batch.len() < MAX_FRAMES_PER_WRITE {
            let Ok(o) = rx.try_recv() else { break };
            bytes += o.bytes();
            batch.push(o);
        }
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Move the token's expiry, and when the session closes for it: one millisecond past its
    /// lapse (so the check in `on_tick` sees it passed), at most an hour ahead (the wall clock
    /// may be moved; `on_tick` reads it again then).
    pub(super) fn set_expiry(&mut self, expires_ms: i64) {
        self.expires_ms = expires_ms;
        let grace_ms = i64::try_from(self.inner.config.auth.expiry_grace_s.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let lapse_in = expires_ms
            .saturating_add(grace_ms)
            .saturating_sub(now_ms())
            .clamp(0, MAX_SLEEP.as_millis() as i64) as u64;
        self.lapse_at = Instant::now() + Duration::from_millis(lapse_in + 1);
    }

    /// When the session next has something to do on its own: answer an overdue request, or
    /// close for a token that lapsed past its grace.
    fn next_due(&self) -> Instant {
        [
            self.pending.next_deadline(),
            self.held.due(),
            self.flush_at,
            self.acks.due,
        ]
        .into_iter()
        .flatten()
        .fold(self.lapse_at, Instant::min)
    }

    /// Read the events missing before the held ones from the store, then queue what is to
    /// be written (the filled events and the held ones) on `frames`, in order.
    async fn fill_gap(&mut self, frames: &mut Vec<Frame>) {
        let Some((after, missing)) = self.held.gap(&self.seq) else {
            return;
        };
        metrics::counter!(hubbub_protocol::metrics::GAP_FILLS).increment(1);
        match self
            .inner
            .deps
            .chat
            .events_after(&self.user.id, after, missing)
            .await
        {
            Ok(r) => {
                if r.frames.iter().any(crate::channel_changed) {
                    let _ = self.inner.load_channels(&self.user.id).await;
                }
                for f in r.frames {
                    if let Some(s) = f.seq() {
                        self.seq.filled(s);
                    }
                    frames.push(Frame::new(&f));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "gap fill failed; client catches up on sync")
            }
        }
        frames.extend(self.held.flush(&mut self.seq));
    }

    /// A reply overdue, a token lapsed, a gap still open: answer `internal`, close with
    /// 4001, read the gap from the store.
    async fn on_tick(&mut self) -> Flow {
        let grace_ms = i64::try_from(self.inner.config.auth.expiry_grace_s.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        if now_ms() > self.expires_ms.saturating_add(grace_ms) {
            return close(
                crate::CLOSE_REVOKED,
                "token expired: refresh it and reconnect (send `auth` before expiry)",
            );
        }
        if self.lapse_at <= Instant::now() {
            // Not lapsed by the wall clock (it was moved back, or an hour went by): look again.
            self.set_expiry(self.expires_ms);
        }
        if self.held.due().is_some_and(|d| d <= Instant::now()) {
            let mut frames = Vec::new();
            self.fill_gap(&mut frames).await;
            if let Flow::Gone = self.write_raw(&frames, &[]).await {
                return Flow::Gone;
            }
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
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let _ =
            tokio::time::timeout_at(deadline, self.socket.send(Message::Close(Some(frame)))).await;
        // The closing handshake: read until the peer answers the close (or goes, or the
        // deadline passes). A socket dropped with unread data from the peer (a pong, frames
        // in flight) is reset by the kernel, and the peer can lose the close frame, its code
        // and what came before it.
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.socket.recv()).await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    }

    /// Write the highest ack if it is due and none is in flight; else try again later.
    fn flush_acks(&mut self) {
        let Some(seq) = self.acks.flush(Instant::now()) else {
            return;
        };
        let job = acks::AckJob {
            user: self.user.id.clone(),
            seq,
            writing: self.acks.writing.clone(),
        };
        // The writer is gone only when the edge shuts down: the session's last ack is
        // written by its cleanup then.
        if let Err(gone) = self.inner.acks.send(job) {
            gone.0.writing.store(false, Ordering::Release);
        }
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

    /// Log what is written to a session under a `debug` entry.
    fn log_out(&self, frames: &[Frame], shared: &[Arc<str>]) {
        let jsons = frames
            .iter()
            .map(|f| &f.json as &dyn std::fmt::Display)
            .chain(shared.iter().map(|j| j as &dyn std::fmt::Display));
        for json in jsons {
            metrics::counter!(hubbub_protocol::metrics::DEBUG_LOGGED).increment(1);
            tracing::debug!(target: crate::DEBUG_TARGET, user = %self.user.id,
                session = %self.session, frame = %json, "frame out");
        }
    }

    /// Write serialized frames and shared (ephemeral) frames as one text frame.
    async fn write_mixed(&mut self, frames: &[Frame], shared: &[Arc<str>]) -> bool {
        if frames.is_empty() && shared.is_empty() {
            return true;
        }
        let len: usize = frames.iter().map(|f| f.json.len() + 1).sum::<usize>()
            + shared.iter().map(|j| j.len() + 1).sum::<usize>();
        if self.inner.debugged(&self.user.id, &self.session) {
            self.log_out(frames, shared);
        }
        let mut text = String::with_capacity(len);
        // Counted by runs of one type (a channel's batch is a run of `channel.message`): the
        // counter's lookup by label is most of what counting costs.
        let mut run: Option<(&'static str, u64)> = None;
        for f in frames {
            if !text.is_empty() {
                text.push('\n');
            }
            f.json.write_to(&mut text);
            match run.as_mut() {
                Some((kind, n)) if *kind == f.kind => *n += 1,
                _ => {
                    if let Some((kind, n)) = run.replace((f.kind, 1)) {
                        self.metrics.frames_out(kind, n);
                    }
                }
            }
        }
        if let Some((kind, n)) = run {
            self.metrics.frames_out(kind, n);
        }
        for raw in shared {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(raw);
        }
        if !shared.is_empty() {
            self.metrics.frames_out("engagement", shared.len() as u64);
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
                // A frame over the hard cap is the WebSocket layer's capacity error (close
                // 1009); anything else means the connection is gone.
                use tokio_tungstenite::tungstenite::Error as WsError;
                let over_capacity = e
                    .into_inner()
                    .downcast_ref::<WsError>()
                    .is_some_and(|e| matches!(e, WsError::Capacity(_)));
                return if over_capacity {
                    close(1009, "frame too large")
                } else {
                    Flow::Gone
                };
            }
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(text) => {
                if self.inner.debugged(&self.user.id, &self.session) {
                    metrics::counter!(hubbub_protocol::metrics::DEBUG_LOGGED).increment(1);
                    tracing::debug!(target: crate::DEBUG_TARGET, user = %self.user.id,
                        session = %self.session, frame = %text.as_str(), "frame in");
                }
                let limit = self.inner.runtime().config.limits.max_frame_bytes;
                if text.len() > limit {
                    if let Some(flow) = self.count_frame() {
                        return flow;
                    }
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

    async fn on_outgoing(&mut self, batch: Vec<Out>) -> Flow {
        let mut frames: Vec<Frame> = Vec::new();
        let mut shared = Vec::new();
        // The oldest acceptance (this edge's clock) among the events of this edge's writes.
        let mut oldest_here: Option<i64> = None;
        for out in batch {
            match out {
                Out::Shared(list) => shared.extend(*list),
                Out::Reply(reply) => {
                    let (id, frame) = *reply;
                    let op = id
                        .as_ref()
                        .and_then(|id| self.channel_ops.iter().position(|o| o == id));
                    if let Some(i) = op {
                        self.channel_ops.swap_remove(i);
                    }
                    // Already answered (timed out): drop the late reply.
                    if id.as_ref().is_some_and(|id| !self.pending.answered(id)) {
                        continue;
                    }
                    if op.is_some() && frame.kind == "ok" {
                        let _ = Box::pin(self.inner.load_channels(&self.user.id)).await;
                    }
                    frames.push(frame);
                }
                Out::Events(batch) => {
                    let (events, accepted) = (batch.0.clone(), batch.1);
                    // A client told of a channel's change gets its messages (or no more of
                    // them) from then on.
                    if events.iter().any(|f| f.changes_channels) {
                        let _ = Box::pin(self.inner.load_channels(&self.user.id)).await;
                    }
                    let now = Instant::now();
                    for frame in events.iter() {
                        let Some(seq) = frame.seq else {
                            frames.push(frame.clone());
                            continue;
                        };
                        match self.seq.pushed(seq) {
                            Pushed::Drop => {}
                            Pushed::Write => {
                                frames.push(frame.clone());
                                frames.extend(self.held.release(&mut self.seq, now));
                            }
                            // Past a gap: held until the missing events arrive (they are
                            // nearly always a moment behind), read from the store when it
                            // holds too many.
                            Pushed::Gap { .. } => {
                                if self.held.hold(seq, frame.clone(), now) {
                                    self.fill_gap(&mut frames).await;
                                }
                            }
                        }
                    }
                    if let Some(accepted) = accepted {
                        let origin = accepted.ms;
                        if accepted.here {
                            oldest_here = Some(oldest_here.map_or(origin, |o| o.min(origin)));
                        }
                        let ms = (now_ms() - origin).max(0);
                        self.metrics.delivery_latency(ms as f64 / 1000.0);
                        if self.inner.debugged(&self.user.id, &self.session) {
                            for f in events.iter() {
                                tracing::debug!(target: crate::DEBUG_TARGET, user = %self.user.id,
                                    session = %self.session, seq = ?f.seq, r#type = f.kind,
                                    latency_ms = ms, "event delivered");
                            }
                        }
                    }
                }
            }
        }
        if let Some(origin) = oldest_here {
            let age = Duration::from_millis((now_ms() - origin).max(0) as u64);
            self.inner
                .admission
                .delivered(&mut self.late, age, std::time::Instant::now());
        }
        self.write_raw(&frames, &shared).await
    }
}
