//! The edge role: holds client connections and speaks the client protocol.
//!
//! # Layout
//! - [`auth`]: passwords, access and refresh tokens, app tokens.
//! - `http`: the HTTP API (`/v1/auth/*`, `/v1/users/{handle}`), `/healthz`, `/readyz`,
//!   `/metrics`; every error is the protocol's `{"error":{"code","message"}}`.
//! - `admin`: the admin API (`/v1/admin/apikeys`, `/v1/admin/config`), behind API keys.
//! - `runtime`: the runtime config as this edge applies it (limits, flags and their push,
//!   per-session debug logging).
//! - [`server`]: the server API (`/v1/server`, API keys of scope `server`) and its OpenAPI
//!   document; its writes take the clients' durable path and wait for the reply.
//! - `demo`: the demo web app at `/demo/` (the files of `examples/web`, built in), unless
//!   turned off.
//! - `sse`: `/v1/sse`, engagement events over server-sent events.
//! - [`listener`]: the accept loop every HTTP listener runs: connection caps (server-wide,
//!   per IP), header and body read timeouts.
//! - [`media_type`]: the strict parser of upload types and how media is served back.
//! - `limit`: token buckets, and keyed buckets of bounded memory (login attempts).
//! - `channels`: which of this edge's users are members of which channels (a channel's
//!   message names the channel; the edge finds its recipients).
//! - `ws`: `/v1/ws`, one task per connection: parse, rate-limit, answer reads (through the
//!   chat service's query side, `ChatReads`),
//!   put writes on the `main` queue, and write replies and events to the socket in seq order.
//! - [`Edge`]: ties them together, plus the dispatcher that takes batches handed to this edge
//!   (replies, events) and routes them to connections.
//!
//! # How a reply finds its way back
//! A write is put on `main` as an [`Envelope`](hubbub_protocol::internal::Envelope) naming
//! this edge and the session. The service that handles it hands `ToEdge::Reply` to the edge
//! named in the envelope (through the [`EdgeLink`](hubbub_registry::EdgeLink)); the
//! dispatcher passes it to the session's connection task, which writes it if the request is
//! still pending. A request with no reply within `request_timeout` is answered `internal`
//! (outcome unknown; retrying with the same `client_msg_id` is safe), so every request with
//! an id gets exactly one reply.
//!
//! The edge knows no service logic: it asks the chat query side for reads and `sync`, and
//! forwards everything else.

mod admin;
mod admission;
pub mod auth;
mod batch;
mod channel_loads;
mod channels;
mod demo;
mod http;
mod limit;
pub mod listener;
pub mod media_type;
mod runtime;
pub mod server;
pub mod sse;
mod ws;

pub use runtime::DEBUG_TARGET;

use auth::{Auth, AuthConfig};
use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::limits::Limits;
use hubbub_queue::Queue;
use hubbub_registry::Delivery;
use hubbub_registry::Registry;
use hubbub_store::Store;
use limit::KeyedLimiter;
use listener::HttpLimits;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics_exporter_prometheus::PrometheusHandle;

/// How long after a failed load of a user's channels it is tried again, and how many times.
const CHANNELS_RETRY: Duration = Duration::from_secs(1);
const CHANNELS_RETRIES: usize = 60;

/// How often the edge probes the store (its gate on writes).
const STORE_PROBE_EVERY: Duration = Duration::from_millis(500);

/// Settings of an edge.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// This edge's id (unique among running edges).
    pub edge_id: String,
    /// Protocol limits of the configuration file. The edge reads limits from the runtime
    /// config ([`EdgeDeps::runtime`]), which starts from these at version 0.
    pub limits: Limits,
    /// Auth settings.
    pub auth: AuthConfig,
    /// The signing key file.
    pub key_file: PathBuf,
    /// Where uploads are written as they arrive (on the media directory's file system).
    pub spool_dir: PathBuf,
    /// A request with no reply after this long is answered `internal`.
    pub request_timeout: Duration,
    /// Ping interval of the configuration file; a connection silent for three intervals is
    /// closed. Connections use the runtime config's `intervals.ping_interval_s`, which starts
    /// from it at version 0.
    pub ping_interval: Duration,
    /// How often this edge tells the signals service it is alive.
    pub heartbeat_interval: Duration,
    /// Connection caps and timeouts of the public listener.
    pub http: HttpLimits,
    /// Most sessions (WebSocket and SSE) one user holds on this edge; a new one past it
    /// closes the user's oldest with 4000.
    pub max_sessions_per_user: usize,
    /// Whether `/readyz` and `/metrics` are served on the public listener (no admin
    /// listener is configured).
    pub operational_on_public: bool,
    /// Behind a reverse proxy: the header whose last entry is the client's address.
    pub client_ip_header: Option<String>,
    /// Admission control: the most writes in flight on this edge (forwarded, not answered).
    pub max_inflight_writes: usize,
    /// The largest write the `main` queue takes (`queue.max_body_bytes`): a request whose
    /// envelope is bigger (the runtime config's `max_frame_bytes` may let such a frame in) is
    /// answered `too_large`, alone, instead of failing the commit it would share.
    pub max_envelope_bytes: usize,
    /// Admission control: past this average reply time, writes are refused while any is in
    /// flight.
    pub admission_wait: Duration,
    /// Admission control: writes are refused while most of this edge's sessions receive
    /// events of its writes later than this after acceptance (`None`: not watched).
    pub admission_delivery: Option<Duration>,
    /// The bootstrap API key (`api.bootstrap_key`): every scope.
    pub bootstrap_key: Option<String>,
    /// Users active within this are the ones whose timelines are precomputed (the cost of a
    /// precompute interval).
    pub active_window: Duration,
    /// The queues the admin API shows (stats, dead letters, redrive).
    pub queues: Vec<String>,
    /// The contact note keys: a `contact.set`'s note is sealed before it goes on the queue
    /// (without, it travels as sent).
    pub note_keys: Option<Arc<hubbub_store::NoteKeys>>,
    /// Whether the public listener serves the demo web app at `/demo/` (`demo.enabled`).
    pub demo: bool,
}

/// What an edge needs from the rest of the system.
#[derive(Clone)]
pub struct EdgeDeps {
    /// The store (reads, auth).
    pub store: Arc<dyn Store>,
    /// The queues (`main`).
    pub queue: Arc<dyn Queue>,
    /// The session registry.
    pub registry: Arc<dyn Registry>,
    /// Uploaded media.
    pub media: Arc<dyn hubbub_store::MediaStore>,
    /// The chat reads and the inbox (`conversation.list/get`, `message.history`,
    /// `message.search`, `block.list`, `hello`, `sync`, gap fills): the chat service's query
    /// side.
    pub chat: Arc<dyn hubbub_registry::ChatReads>,
    /// Presence and typing (the ephemeral path).
    pub signals: Arc<dyn hubbub_registry::Signals>,
    /// Precomputed timelines (`timeline.get`, the push after `hello`).
    pub timelines: Arc<dyn hubbub_registry::Timelines>,
    /// Who is writing a comment (`post.watch`, `comment.typing`).
    pub engagement: Arc<dyn hubbub_registry::Engagement>,
    /// Prometheus rendering of the process's metrics.
    pub metrics: PrometheusHandle,
    /// Registry lookups and the link to every edge: how a revocation closes the user's
    /// sessions on all edges.
    pub delivery: Delivery,
    /// Webhooks' producer side: the edge asks for presence checks as sessions open and
    /// close (only while some endpoint receives presence events).
    pub webhooks: Arc<hubbub_store::webhooks::Webhooks>,
    /// The runtime config this process applies, published by its watcher.
    pub runtime: tokio::sync::watch::Receiver<Arc<hubbub_protocol::admin::VersionedConfig>>,
}

/// A frame serialized once by the dispatcher (and shared by every session of the user).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// Its seq, for durable events.
    pub(crate) seq: Option<u64>,
    /// Its `type`, for metrics.
    pub(crate) kind: &'static str,
    /// Whether it tells its user of a change to a channel: the session loads the user's
    /// channels again before writing it (see the `channels` module).
    pub(crate) changes_channels: bool,
    /// The JSON.
    pub(crate) json: FrameJson,
}

/// A frame's JSON: whole, or a `message.new` kept as its seq and its message's JSON, which
/// every recipient of the message in a batch shares, and written out only into the socket's
/// text (a group's message was copied twice per member, into a buffer and then an `Arc`).
#[derive(Debug, Clone)]
pub(crate) enum FrameJson {
    /// Serialized whole.
    Whole(Arc<str>),
    /// `{"type":"message.new","seq":<seq>,"message":<message>}`: the shape serde gives the
    /// frame (the tag, then the fields in declaration order).
    MessageNew {
        /// The recipient's seq.
        seq: u64,
        /// The message's JSON.
        message: Arc<str>,
    },
}

const MESSAGE_NEW_HEAD: &str = r#"{"type":"message.new","seq":"#;
const MESSAGE_NEW_MIDDLE: &str = r#","message":"#;

impl FrameJson {
    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            FrameJson::Whole(json) => json.len(),
            FrameJson::MessageNew { seq, message } => {
                let digits = seq.checked_ilog10().map_or(1, |d| d as usize + 1);
                MESSAGE_NEW_HEAD.len() + digits + MESSAGE_NEW_MIDDLE.len() + message.len() + 1
            }
        }
    }

    /// Append it to `out`.
    pub(crate) fn write_to(&self, out: &mut String) {
        match self {
            FrameJson::Whole(json) => out.push_str(json),
            FrameJson::MessageNew { seq, message } => {
                out.push_str(MESSAGE_NEW_HEAD);
                // Writing to a `String` cannot fail.
                let _ = std::fmt::Write::write_fmt(out, format_args!("{seq}"));
                out.push_str(MESSAGE_NEW_MIDDLE);
                out.push_str(message);
                out.push('}');
            }
        }
    }
}

impl std::fmt::Display for FrameJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::with_capacity(self.len());
        self.write_to(&mut out);
        f.write_str(&out)
    }
}

impl Frame {
    pub(crate) fn new(frame: &hubbub_protocol::ServerFrame) -> Self {
        if let hubbub_protocol::ServerFrame::Error { code, .. } = frame {
            metrics::counter!(hubbub_protocol::metrics::ERROR_REPLIES, "code" => code.as_str())
                .increment(1);
        }
        Frame {
            seq: frame.seq(),
            kind: frame.type_name(),
            changes_channels: channel_changed(frame),
            json: FrameJson::Whole(frame.to_json().into()),
        }
    }
}

/// Serializes the frames of one batch from the services, each `message.new`'s message once
/// for all its recipients in the batch: a group's message is the same message under each
/// member's seq, and serializing it per member was most of the dispatcher's work.
#[derive(Default)]
struct BatchSerializer {
    /// A message's JSON, by message id.
    messages: HashMap<String, Arc<str>>,
}

impl BatchSerializer {
    fn frame(&mut self, frame: &hubbub_protocol::ServerFrame) -> Frame {
        match frame {
            hubbub_protocol::ServerFrame::MessageNew { seq, message } => {
                self.message_new(*seq, message)
            }
            _ => Frame::new(frame),
        }
    }

    /// The `message.new` of `message` at `seq`.
    fn message_new(&mut self, seq: u64, message: &hubbub_protocol::Message) -> Frame {
        let json = match self.messages.get(&message.id) {
            Some(json) => json.clone(),
            None => {
                let json: Arc<str> = serde_json::to_string(message).unwrap_or_default().into();
                self.messages.insert(message.id.clone(), json.clone());
                json
            }
        };
        Frame {
            seq: Some(seq),
            kind: "message.new",
            changes_channels: false,
            json: FrameJson::MessageNew { seq, message: json },
        }
    }
}

/// What the connection tasks receive from the dispatcher. Every variant is one pointer:
/// each session's channel holds a block of 32 slots from its start, idle or not, each the
/// size of this enum (16 bytes; unboxed it was 40, 1.3 KiB per connection).
#[derive(Debug)]
pub(crate) enum Out {
    /// The reply to a request and the request's id, when it had one.
    Reply(Box<(Option<String>, Frame)>),
    /// Events for the user, durable ones in seq order, and when the write causing them was
    /// accepted.
    /// Shared, not boxed: a channel's message is one item for all its sessions.
    Events(Arc<(Arc<[Frame]>, Option<Accepted>)>),
    /// Ephemeral frames serialized once and shared by every session that gets them.
    // Boxed on purpose: a `Vec` is three words, a `Box` one (see the enum's doc).
    #[allow(clippy::box_collection)]
    Shared(Box<Vec<Arc<str>>>),
}

impl Out {
    /// The bytes it will take on the socket (what the session's buffer bound counts).
    fn bytes(&self) -> usize {
        match self {
            Out::Reply(reply) => reply.1.json.len() + 1,
            Out::Events(events) => events.0.iter().map(|f| f.json.len() + 1).sum(),
            Out::Shared(list) => list.iter().map(|j| j.len() + 1).sum(),
        }
    }
}

/// When the write behind pushed events was accepted (ms since the epoch, by the accepting
/// edge's clock), and whether this edge accepted it (then the time is on this edge's clock,
/// and their lateness counts for its admission control).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    pub(crate) ms: i64,
    pub(crate) here: bool,
}

impl Accepted {
    fn new(edge: &str, ms: Option<i64>, origin_edge: Option<&str>) -> Option<Accepted> {
        ms.map(|ms| Accepted {
            ms,
            here: origin_edge == Some(edge),
        })
    }
}

/// How a session is told to close, and with which code; and told to write what waits for it
/// now, before its coalescing window ends (its buffer is filling up).
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    token: CancellationToken,
    /// The code and reason given; set also tells that a close was asked for (the
    /// dispatcher reads it for every item it hands over: reading the token takes its lock).
    why: std::sync::OnceLock<(u16, String)>,
    flush: tokio::sync::Notify,
}

impl CloseSignal {
    /// A signal that also fires when `token` is cancelled by its parent (the server shutting
    /// down: code 1001).
    pub(crate) fn new(token: CancellationToken) -> Self {
        CloseSignal {
            token,
            ..CloseSignal::default()
        }
    }

    /// Ask the session to write what waits for it now.
    pub(crate) fn flush_now(&self) {
        self.flush.notify_one();
    }

    /// Resolves when the session is asked to write now.
    pub(crate) async fn flush_wanted(&self) {
        self.flush.notified().await
    }

    /// Ask the session to close (the first reason given wins).
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let _ = self.why.set((code, reason.to_owned()));
        self.token.cancel();
    }

    /// Resolves once the session is asked to close.
    pub(crate) async fn closed(&self) {
        self.token.cancelled().await
    }

    /// Whether the session was asked to close.
    pub(crate) fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The code and reason given; none given (the token's parent cancelled it): the server
    /// is shutting down.
    pub(crate) fn why(&self) -> (u16, String) {
        self.why
            .get()
            .cloned()
            .unwrap_or((1001, "server shutting down".into()))
    }
}

/// The close code of a session cut off because it read too slowly.
pub(crate) const CLOSE_SLOW: u16 = 1013;
/// The close code of a server-initiated disconnect (PROTOCOL.md 1.1).
pub const CLOSE_DISCONNECTED: u16 = 4000;
/// The close code of a session whose token expired or was revoked (PROTOCOL.md 1.1).
pub const CLOSE_REVOKED: u16 = 4001;

pub(crate) struct SessionHandle {
    user: String,
    /// Where items for it go (shared with the channels' lists of recipients).
    out: Arc<Target>,
    /// Posts whose engagement this session watches.
    posts: HashSet<String>,
}

impl SessionHandle {
    pub(crate) fn new(
        user: String,
        tx: mpsc::Sender<Out>,
        close: Arc<CloseSignal>,
        queued: Arc<AtomicUsize>,
    ) -> Self {
        SessionHandle {
            user,
            out: Arc::new(Target {
                tx,
                close,
                queued,
                opened: 0,
            }),
            posts: HashSet::new(),
        }
    }
}

/// Where the items for one session go.
#[derive(Clone)]
pub(crate) struct Target {
    tx: mpsc::Sender<Out>,
    /// Tells the session to close (a slow reader, a revoked user, a newer session past the
    /// per-user cap).
    close: Arc<CloseSignal>,
    /// Bytes handed to the session and not yet taken by its task.
    queued: Arc<AtomicUsize>,
    /// When it opened, in this edge's order (the oldest of a user is closed first; the slice
    /// of a channel's sessions it is in; which held frames it gets).
    opened: u64,
}

/// A channel's sessions here, in [`batch::SLICES`] slices (by [`batch::slice_of`]).
type Recipients = Arc<[Arc<[Arc<Target>]>]>;

/// What the dispatcher hands a session, decided under the sessions' lock.
pub(crate) enum Handover {
    /// One item to one session.
    One(Arc<Target>, Out),
    /// One shared item (a channel's frames) to each of many sessions; with the frames' marks
    /// when they were held (a session opened after a frame's mark does not get it: the
    /// `batch` module).
    Shared(
        Arc<[Arc<Target>]>,
        Arc<(Arc<[Frame]>, Option<Accepted>)>,
        Option<Arc<[u64]>>,
    ),
    /// Close a session with this code and reason.
    Close(Arc<Target>, u16, String),
}

#[derive(Default)]
pub(crate) struct Sessions {
    by_id: HashMap<String, SessionHandle>,
    by_user: HashMap<String, HashSet<String>>,
    /// post → sessions of this edge watching it.
    watching: HashMap<String, HashSet<String>>,
    /// The latest engagement frame of each watched post, for a session that starts watching.
    last: HashMap<String, Arc<str>>,
    /// The channels of the users with a session here.
    channels: channels::Channels,
    /// Each channel's sessions here, as last listed, in the slices its held frames go to
    /// ([`batch::SLICES`]; a channel's message to 10,000 sessions looks up none); dropped
    /// when a member's sessions or a membership change.
    recipients: HashMap<String, Recipients>,
    /// Busy channels' frames held for a moment, to go to their sessions together.
    batches: batch::Batches,
    /// Sessions opened so far (orders them).
    opened: u64,
}

impl Sessions {
    /// Hand every session of `user` on this edge the frames `make` gives (called only if the
    /// user has a session here: serialized once, one item for all of them).
    fn to_user(
        &self,
        user: &str,
        accepted: Option<Accepted>,
        out: &mut Vec<Handover>,
        make: impl FnOnce() -> Arc<[Frame]>,
    ) {
        let Some(ids) = self.by_user.get(user) else {
            return;
        };
        let item = Arc::new((make(), accepted));
        for id in ids {
            if let Some(h) = self.by_id.get(id) {
                out.push(Handover::One(h.out.clone(), Out::Events(item.clone())));
            }
        }
    }

    /// The sessions here of a channel's members (listed once, then kept until a member's
    /// sessions or a membership change).
    fn recipients(&mut self, channel: &str) -> Recipients {
        if let Some(r) = self.recipients.get(channel) {
            return r.clone();
        }
        let mut slices: Vec<Vec<Arc<Target>>> = vec![Vec::new(); batch::SLICES];
        for h in self
            .channels
            .members(channel)
            .flat_map(|user| self.by_user.get(user).into_iter().flatten())
            .filter_map(|id| self.by_id.get(id))
        {
            slices[batch::slice_of(h.out.opened)].push(h.out.clone());
        }
        let list: Recipients = slices.into_iter().map(Arc::from).collect();
        self.recipients.insert(channel.to_owned(), list.clone());
        list
    }

    /// The user's sessions changed: their channels' lists of recipients are made again.
    fn forget_recipients_of(&mut self, user: &str) {
        let Sessions {
            channels,
            recipients,
            ..
        } = self;
        for c in channels.of(user) {
            recipients.remove(c);
        }
    }
}

/// Login and signup attempts, per client IP and per handle.
pub(crate) struct AuthLimits {
    pub(crate) per_ip: KeyedLimiter<std::net::IpAddr>,
    pub(crate) per_handle: KeyedLimiter<String>,
}

/// Most keys each attempt limiter remembers.
const MAX_LIMITER_KEYS: usize = 100_000;

/// Why a session may not watch more posts.
pub(crate) struct TooManyPosts;

pub(crate) struct Inner {
    config: EdgeConfig,
    deps: EdgeDeps,
    auth: Auth,
    sessions: Mutex<Sessions>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Whether the store answered its last probe: writes are refused with `unavailable`
    /// while it does not (they would wait in the queue with no outcome to tell).
    store_ok: std::sync::atomic::AtomicBool,
    auth_limits: AuthLimits,
    /// Whether a write may be accepted now (overload sheds writes early).
    admission: Arc<admission::Admission>,
    /// Whether the runtime config has any `debug` entry (the hot paths look no further).
    debug_any: std::sync::atomic::AtomicBool,
    /// The runtime config's `limits.max_outgoing_bytes` (read for every item handed over).
    max_outgoing_bytes: AtomicUsize,
    /// Server API requests awaiting their reply, by the session id their envelope names
    /// (no socket has it).
    api_waiters: Mutex<HashMap<String, tokio::sync::oneshot::Sender<hubbub_protocol::ServerFrame>>>,
    /// The sessions' acks, for the edge's one ack writer ([`ws::acks::write_acks`]).
    acks: mpsc::UnboundedSender<ws::acks::AckJob>,
    /// Loads of users' channel lists, for the edge's one loader
    /// ([`channel_loads::load_channels`]).
    channel_loads: mpsc::UnboundedSender<channel_loads::LoadJob>,
}

impl Inner {
    /// The reply to the server API's envelope naming `session` will come on the receiver.
    pub(crate) fn await_reply(
        &self,
        session: &str,
    ) -> tokio::sync::oneshot::Receiver<hubbub_protocol::ServerFrame> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.api_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.to_owned(), tx);
        rx
    }

    /// The reply is no longer awaited (it came, or the wait ended).
    pub(crate) fn forget_reply(&self, session: &str) {
        self.api_waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session);
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a session. Past the per-user cap, the user's oldest sessions are told to close
    /// with 4000 (they leave the table when their tasks end).
    fn add_session(&self, session: &str, mut handle: SessionHandle) {
        let mut s = self.sessions();
        s.opened += 1;
        let mut target = Arc::unwrap_or_clone(handle.out);
        target.opened = s.opened;
        handle.out = Arc::new(target);
        let user = handle.user.clone();
        s.by_id.insert(session.to_owned(), handle);
        s.channels.track(&user);
        s.forget_recipients_of(&user);
        let ids = s.by_user.entry(user).or_default();
        ids.insert(session.to_owned());
        let cap = self.config.max_sessions_per_user.max(1);
        let ids: Vec<String> = ids.iter().cloned().collect();
        let mut open: Vec<(u64, &SessionHandle)> = ids
            .iter()
            .filter_map(|id| s.by_id.get(id))
            .filter(|h| !h.out.close.is_closed())
            .map(|h| (h.out.opened, h))
            .collect();
        if open.len() > cap {
            open.sort_unstable_by_key(|(opened, _)| *opened);
            for (_, h) in &open[..open.len() - cap] {
                metrics::counter!(hubbub_protocol::metrics::SESSIONS_EVICTED).increment(1);
                h.out.close.close(
                    CLOSE_DISCONNECTED,
                    "session limit: a newer session of this user opened",
                );
            }
        }
        metrics::gauge!(hubbub_protocol::metrics::CONNECTIONS).set(s.by_id.len() as f64);
    }

    /// Remove a session; returns the posts no session of this edge watches any more.
    fn remove_session(&self, session: &str) -> Vec<String> {
        let mut s = self.sessions();
        let mut unwatched = Vec::new();
        if let Some(h) = s.by_id.remove(session) {
            if let Some(set) = s.by_user.get_mut(&h.user) {
                set.remove(session);
                if set.is_empty() {
                    s.by_user.remove(&h.user);
                }
            }
            s.forget_recipients_of(&h.user);
            if !s.by_user.contains_key(&h.user) {
                s.channels.forget(&h.user);
            }
            unwatched = Self::unwatch_locked(&mut s, session, h.posts.iter());
        }
        metrics::gauge!(hubbub_protocol::metrics::CONNECTIONS).set(s.by_id.len() as f64);
        unwatched
    }

    /// A session watches more posts (at most `max` in all). Returns the latest engagement
    /// frames this edge has for them.
    fn watch_posts(
        &self,
        session: &str,
        posts: &[String],
        max: usize,
    ) -> Result<Vec<Arc<str>>, TooManyPosts> {
        let mut s = self.sessions();
        let Some(h) = s.by_id.get_mut(session) else {
            return Ok(Vec::new());
        };
        let new = posts.iter().filter(|p| !h.posts.contains(*p)).count();
        if h.posts.len() + new > max {
            return Err(TooManyPosts);
        }
        h.posts.extend(posts.iter().cloned());
        for p in posts {
            s.watching
                .entry(p.clone())
                .or_default()
                .insert(session.to_owned());
        }
        Ok(posts
            .iter()
            .filter_map(|p| s.last.get(p).cloned())
            .collect())
    }

    /// Whether a session could watch these posts too.
    fn can_watch(&self, session: &str, posts: &[String], max: usize) -> bool {
        let s = self.sessions();
        s.by_id.get(session).is_none_or(|h| {
            let new = posts.iter().filter(|p| !h.posts.contains(*p)).count();
            h.posts.len() + new <= max
        })
    }

    /// A session stops watching posts; returns those no session of this edge watches now.
    fn unwatch_posts(&self, session: &str, posts: &[String]) -> Vec<String> {
        let mut s = self.sessions();
        if let Some(h) = s.by_id.get_mut(session) {
            for p in posts {
                h.posts.remove(p);
            }
        }
        Self::unwatch_locked(&mut s, session, posts.iter())
    }

    fn unwatch_locked<'a>(
        s: &mut Sessions,
        session: &str,
        posts: impl Iterator<Item = &'a String>,
    ) -> Vec<String> {
        let mut gone = Vec::new();
        for p in posts {
            if let Some(set) = s.watching.get_mut(p) {
                set.remove(session);
                if set.is_empty() {
                    s.watching.remove(p);
                    s.last.remove(p);
                    gone.push(p.clone());
                }
            }
        }
        gone
    }

    /// Every post some session of this edge watches.
    fn watched_posts(&self) -> Vec<String> {
        self.sessions().watching.keys().cloned().collect()
    }

    /// Load `user`'s channels from the store (see the `channels` module), unless the user
    /// has no session here. When the store does not answer, the user is taken out of every
    /// channel here (a member removed meanwhile must not go on receiving), and the load is
    /// tried again every [`CHANNELS_RETRY`] in the background, at most [`CHANNELS_RETRIES`]
    /// times; the error is returned.
    pub(crate) async fn load_channels(
        self: &Arc<Self>,
        user: &str,
    ) -> Result<(), hubbub_store::StoreError> {
        let Err((generation, e)) = self.load_channels_once(user).await else {
            return Ok(());
        };
        tracing::warn!(%user, error = %e, "channels not loaded; out of them until loaded");
        self.apply_channels(user, generation, Vec::new());
        let inner = self.clone();
        let user = user.to_owned();
        self.tracker.spawn(async move {
            for _ in 0..CHANNELS_RETRIES {
                tokio::select! {
                    _ = tokio::time::sleep(CHANNELS_RETRY) => {}
                    _ = inner.cancel.cancelled() => return,
                }
                if inner.load_channels_once(&user).await.is_ok() {
                    return;
                }
            }
        });
        Err(e)
    }

    /// One load of `user`'s channels, applied (nothing to do when the user has no session
    /// here); the load's generation and the error when the store did not answer.
    async fn load_channels_once(&self, user: &str) -> Result<(), (u64, hubbub_store::StoreError)> {
        // Numbered and handed to the loader under one lock: the loader reads loads in the
        // order of their generations (the `channel_loads` module).
        let (generation, answer) = {
            let mut s = self.sessions();
            let Some(generation) = s.channels.begin_load(user) else {
                return Ok(());
            };
            let (reply, answer) = tokio::sync::oneshot::channel();
            let job = channel_loads::LoadJob {
                user: user.to_owned(),
                reply,
            };
            if self.channel_loads.send(job).is_err() {
                return Err((generation, stopping()));
            }
            (generation, answer)
        };
        let list = match answer.await {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => return Err((generation, e)),
            Err(_) => return Err((generation, stopping())),
        };
        self.apply_channels(user, generation, list);
        Ok(())
    }

    /// A load of `user`'s channels finished: its changes, and the recipient lists they touch.
    fn apply_channels(&self, user: &str, generation: u64, list: Vec<String>) {
        let mut s = self.sessions();
        for c in s
            .channels
            .loaded(user, generation, list)
            .unwrap_or_default()
        {
            s.recipients.remove(&c);
        }
    }

    /// Hand an item to a session without waiting. A buffer past its bound, in items or in
    /// bytes, cuts the session off (1013): a slow reader never grows memory without bound.
    fn offer(&self, handle: &Target, out: Out) {
        if handle.close.why.get().is_some() {
            return;
        }
        let bytes = out.bytes();
        let queued = handle.queued.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let max = self.max_outgoing_bytes.load(Ordering::Relaxed);
        let over = queued > max;
        // Half full: a session waiting out its coalescing window writes now instead, so the
        // window never turns a reader that keeps up into a slow one.
        if !over && queued > max / 2 && queued - bytes <= max / 2 {
            handle.close.flush_now();
        }
        if over || handle.tx.try_send(out).is_err() {
            handle.queued.fetch_sub(bytes, Ordering::Relaxed);
            if over || !handle.tx.is_closed() {
                metrics::counter!(hubbub_protocol::metrics::SLOW_CONSUMERS).increment(1);
                handle
                    .close
                    .close(CLOSE_SLOW, "too slow: reconnect and sync");
            }
        }
    }

    /// Route a batch from the services to the sessions: decide, under the sessions' lock,
    /// what each session gets, onto `out` (handed over after the lock, [`Inner::hand_over`]).
    /// Returns when the next busy channel's held frames are due ([`Inner::dispatch_due`]).
    fn dispatch(
        &self,
        batch: Vec<ToEdge>,
        out: &mut Vec<Handover>,
    ) -> Option<tokio::time::Instant> {
        let mut sessions = self.sessions();
        let mut serializer = BatchSerializer::default();
        for item in batch {
            match item {
                ToEdge::Reply { session, frame } => {
                    if session.starts_with("api-") {
                        let waiter = self
                            .api_waiters
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&session);
                        if let Some(tx) = waiter {
                            let _ = tx.send(frame);
                        }
                        continue;
                    }
                    if let Some(h) = sessions.by_id.get(&session) {
                        let id = match &frame {
                            hubbub_protocol::ServerFrame::Ok { id, .. } => Some(id.clone()),
                            hubbub_protocol::ServerFrame::Error { id, .. } => id.clone(),
                            _ => None,
                        };
                        let frame = Frame::new(&frame);
                        out.push(Handover::One(
                            h.out.clone(),
                            Out::Reply(Box::new((id, frame))),
                        ));
                    }
                }
                ToEdge::Events {
                    user,
                    frames,
                    origin_ms,
                    origin_edge,
                } => {
                    let accepted =
                        Accepted::new(&self.config.edge_id, origin_ms, origin_edge.as_deref());
                    // What a channel held goes first: a session told it is out of a channel
                    // gets none of its messages after that (the `batch` module).
                    if frames.iter().any(channel_changed) {
                        self.hand_out_held(&mut sessions, None, out);
                    }
                    sessions.to_user(&user, accepted, out, || {
                        frames.iter().map(|f| serializer.frame(f)).collect()
                    });
                }
                ToEdge::Message {
                    message,
                    users,
                    origin_ms,
                    origin_edge,
                } => {
                    let accepted =
                        Accepted::new(&self.config.edge_id, origin_ms, origin_edge.as_deref());
                    for (user, seq) in users {
                        sessions.to_user(&user, accepted, out, || {
                            Arc::from([serializer.message_new(seq, &message)])
                        });
                    }
                }
                ToEdge::Channel {
                    conversation,
                    frame,
                    origin_ms,
                    origin_edge,
                } => {
                    let accepted =
                        Accepted::new(&self.config.edge_id, origin_ms, origin_edge.as_deref());
                    // Serialized once, one item for every session of every member here; a
                    // busy channel's frames are held a moment and go together.
                    let now = tokio::time::Instant::now();
                    let mark = sessions.opened;
                    if let Some((frame, accepted)) = sessions.batches.offer(
                        &conversation,
                        Frame::new(&frame),
                        accepted,
                        mark,
                        now,
                    ) {
                        let item = Arc::new((Arc::from([frame]), accepted));
                        for slice in sessions.recipients(&conversation).iter() {
                            out.push(Handover::Shared(slice.clone(), item.clone(), None));
                        }
                    }
                }
                ToEdge::Engagement { frames } => {
                    self.dispatch_engagement(&mut sessions, frames, out)
                }
                ToEdge::Close {
                    user,
                    session,
                    code,
                    reason,
                } => {
                    self.hand_out_held(&mut sessions, None, out);
                    if let Some(ids) = sessions.by_user.get(&user) {
                        for id in ids {
                            if session.as_ref().is_none_or(|s| s == id)
                                && let Some(h) = sessions.by_id.get(id)
                            {
                                out.push(Handover::Close(h.out.clone(), code, reason.clone()));
                            }
                        }
                    }
                }
            }
        }
        sessions.batches.next_due()
    }

    /// The busy channels' held frames onto `out`: those due at `now`, or all of them
    /// (`None`).
    fn hand_out_held(
        &self,
        sessions: &mut Sessions,
        now: Option<tokio::time::Instant>,
        out: &mut Vec<Handover>,
    ) {
        let held = match now {
            Some(now) => sessions.batches.due(now),
            None => sessions.batches.all(),
        };
        for (channel, h) in held {
            if let Some(slice) = sessions.recipients(&channel).get(h.slice) {
                out.push(Handover::Shared(
                    slice.clone(),
                    Arc::new((h.frames.into(), h.accepted)),
                    Some(h.marks.into()),
                ));
            }
        }
    }

    /// The held frames now due onto `out`; returns when the next are.
    fn dispatch_due(&self, out: &mut Vec<Handover>) -> Option<tokio::time::Instant> {
        let mut sessions = self.sessions();
        self.hand_out_held(&mut sessions, Some(tokio::time::Instant::now()), out);
        sessions.batches.next_due()
    }

    /// Hand what [`Inner::dispatch`] decided to the sessions, in order (after the sessions'
    /// lock is let go).
    fn hand_over(&self, list: Vec<Handover>) {
        for h in list {
            match h {
                Handover::One(target, item) => self.offer(&target, item),
                Handover::Shared(targets, item, marks) => {
                    for target in targets.iter() {
                        match marks.as_deref() {
                            // Opened after some of the frames came: only those after.
                            Some(marks) if marks.first().is_some_and(|m| target.opened > *m) => {
                                let from = marks.partition_point(|m| *m < target.opened);
                                if let Some(later) = item.0.get(from..).filter(|l| !l.is_empty()) {
                                    let later = Arc::new((Arc::from(later), item.1));
                                    self.offer(target, Out::Events(later));
                                }
                            }
                            _ => self.offer(target, Out::Events(item.clone())),
                        }
                    }
                }
                Handover::Close(target, code, reason) => target.close.close(code, &reason),
            }
        }
    }

    /// Close every session of `user`, on this edge and every other, with `code`.
    async fn close_user(&self, user: &str, code: u16, reason: &str) {
        self.close_user_here(user, code, reason);
        self.deps.delivery.close_user(user, code, reason).await;
    }

    /// Close every session of `user` on this edge with `code`.
    fn close_user_here(&self, user: &str, code: u16, reason: &str) {
        let sessions = self.sessions();
        if let Some(ids) = sessions.by_user.get(user) {
            for id in ids {
                if let Some(h) = sessions.by_id.get(id) {
                    h.out.close.close(code, reason);
                }
            }
        }
    }

    /// Each frame is serialized once; each watching session gets its posts' frames as one
    /// write.
    fn dispatch_engagement(
        &self,
        sessions: &mut Sessions,
        frames: Vec<hubbub_protocol::ServerFrame>,
        out: &mut Vec<Handover>,
    ) {
        // Session ids are borrowed from the watch lists: a post watched by 10,000 sessions
        // copies no id.
        let mut per_session: HashMap<&str, Vec<Arc<str>>> = HashMap::new();
        for frame in &frames {
            let hubbub_protocol::ServerFrame::Engagement { post, .. } = frame else {
                continue;
            };
            let Some(watchers) = sessions.watching.get(post) else {
                continue;
            };
            let json: Arc<str> = frame.to_json().into();
            for id in watchers {
                per_session.entry(id).or_default().push(json.clone());
            }
            sessions.last.insert(post.clone(), json);
        }
        for (id, list) in per_session {
            if let Some(h) = sessions.by_id.get(id) {
                out.push(Handover::One(h.out.clone(), Out::Shared(Box::new(list))));
            }
        }
    }
}

/// Whether a frame tells its user of a change to a channel (they may have joined or left it).
pub(crate) fn channel_changed(frame: &hubbub_protocol::ServerFrame) -> bool {
    matches!(frame, hubbub_protocol::ServerFrame::ConversationUpdated { conversation, .. }
        if conversation.kind == hubbub_protocol::ConversationKind::Channel)
}

/// `too_large` for a write whose envelope (`len` bytes) is bigger than the `main` queue takes;
/// `None` when it fits.
pub(crate) fn too_large_for_queue(
    len: usize,
    config: &EdgeConfig,
) -> Option<(hubbub_protocol::ErrorCode, String)> {
    (len > config.max_envelope_bytes).then(|| {
        (
            hubbub_protocol::ErrorCode::TooLarge,
            format!(
                "the request is {len} bytes once addressed, over the {} bytes this server's queue takes (queue.max_body_bytes); nothing was accepted",
                config.max_envelope_bytes
            ),
        )
    })
}

/// A running edge.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("edge_id", &self.inner.config.edge_id)
            .finish()
    }
}

impl Edge {
    /// An edge; `inbox` carries the batches services hand to it.
    pub fn new(
        config: EdgeConfig,
        deps: EdgeDeps,
        mut inbox: mpsc::UnboundedReceiver<Vec<ToEdge>>,
        cancel: CancellationToken,
    ) -> Result<Self, auth::AuthError> {
        let auth = Auth::new(deps.store.clone(), config.auth.clone(), &config.key_file)?;
        let config_auth = config.auth.clone();
        let (debug_any, max_outgoing_bytes) = {
            let now = deps.runtime.borrow();
            (
                !now.config.debug.is_empty(),
                now.config.limits.max_outgoing_bytes.max(1),
            )
        };
        let admission = Arc::new(admission::Admission::new(
            config.max_inflight_writes,
            config.admission_wait,
            config.admission_delivery,
        ));
        let (acks, ack_jobs) = mpsc::unbounded_channel();
        let (channel_loads, load_jobs) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            config,
            deps,
            auth,
            sessions: Mutex::new(Sessions::default()),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            store_ok: std::sync::atomic::AtomicBool::new(true),
            admission,
            debug_any: std::sync::atomic::AtomicBool::new(debug_any),
            max_outgoing_bytes: AtomicUsize::new(max_outgoing_bytes),
            api_waiters: Mutex::new(HashMap::new()),
            acks,
            channel_loads,
            auth_limits: AuthLimits {
                per_ip: KeyedLimiter::per_minute(
                    config_auth.attempts_per_ip_per_minute,
                    config_auth.attempts_per_ip_burst,
                    MAX_LIMITER_KEYS,
                ),
                per_handle: KeyedLimiter::per_minute(
                    config_auth.attempts_per_handle_per_minute,
                    config_auth.attempts_per_handle_burst,
                    MAX_LIMITER_KEYS,
                ),
            },
        });
        let probe = inner.clone();
        inner.tracker.spawn(async move {
            let mut tick = tokio::time::interval(STORE_PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let ok = matches!(
                            tokio::time::timeout(STORE_PROBE_EVERY * 4, probe.deps.store.ping()).await,
                            Ok(Ok(()))
                        );
                        let was = probe.store_ok.swap(ok, std::sync::atomic::Ordering::Relaxed);
                        if was != ok {
                            tracing::warn!(store_ok = ok, "store availability changed");
                        }
                    }
                    _ = probe.cancel.cancelled() => break,
                }
            }
        });
        let beat = inner.clone();
        inner.tracker.spawn(async move {
            let mut tick = tokio::time::interval(
                beat.config
                    .heartbeat_interval
                    .max(Duration::from_millis(100)),
            );
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        beat.deps.signals.heartbeat(&beat.config.edge_id).await;
                        // Subscriptions are leases: renewing them every beat is also how a
                        // restarted engagement service learns them again.
                        let posts = beat.watched_posts();
                        if !posts.is_empty() {
                            beat.deps.engagement.renew(&beat.config.edge_id, &posts).await;
                        }
                    }
                    _ = beat.cancel.cancelled() => break,
                }
            }
        });
        inner.tracker.spawn(runtime::follow(inner.clone()));
        inner.tracker.spawn(ws::acks::write_acks(
            inner.deps.store.clone(),
            ack_jobs,
            cancel.clone(),
        ));
        inner.tracker.spawn(channel_loads::load_channels(
            inner.deps.store.clone(),
            load_jobs,
            cancel.clone(),
        ));
        let dispatcher = inner.clone();
        inner.tracker.spawn(async move {
            // When the next busy channel's held frames are due (the `batch` module).
            let mut due: Option<tokio::time::Instant> = None;
            let timer = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(timer);
            loop {
                if let Some(at) = due
                    && timer.deadline() != at
                {
                    timer.as_mut().reset(at);
                }
                let mut handovers = Vec::new();
                tokio::select! {
                    batch = inbox.recv() => match batch {
                        Some(batch) => due = dispatcher.dispatch(batch, &mut handovers),
                        None => break,
                    },
                    _ = &mut timer, if due.is_some() => {
                        due = dispatcher.dispatch_due(&mut handovers);
                    }
                    _ = dispatcher.cancel.cancelled() => break,
                }
                // The replies a batch starts with (the sender's `ok`) are handed over, and
                // their sessions given a turn to write them, before the events behind them
                // wake every member's session: otherwise the sender's session waits in the
                // run queue behind a group's fan-out (a 1,000-member group's `ok` came
                // half-way through it).
                let replies = handovers
                    .iter()
                    .take_while(|h| matches!(h, Handover::One(_, Out::Reply(_))))
                    .count();
                if replies > 0 && replies < handovers.len() {
                    let rest = handovers.split_off(replies);
                    dispatcher.hand_over(handovers);
                    tokio::task::yield_now().await;
                    dispatcher.hand_over(rest);
                } else {
                    dispatcher.hand_over(handovers);
                }
            }
        });
        Ok(Edge { inner })
    }

    /// The HTTP and WebSocket application of the public listener.
    pub fn app(&self) -> axum::Router {
        http::routes(self.inner.clone(), self.inner.config.operational_on_public)
    }

    /// The admin listener's application: `/healthz`, `/readyz`, `/metrics`.
    pub fn admin_app(&self) -> axum::Router {
        http::admin_routes(self.inner.clone())
    }

    /// Serve on a bound listener until cancelled, then close every socket with 1001 and
    /// wait for the connection tasks to finish.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let cancel = self.inner.cancel.clone();
        listener::serve(listener, self.app(), self.inner.config.http.clone(), cancel).await?;
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        Ok(())
    }

    /// Serve the admin application on its own listener until cancelled.
    pub async fn serve_admin(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let limits = HttpLimits {
            max_connections: 256,
            max_per_ip: 256,
            ..self.inner.config.http.clone()
        };
        listener::serve(
            listener,
            self.admin_app(),
            limits,
            self.inner.cancel.clone(),
        )
        .await
    }

    /// Close every open session of `user` on every edge (4001 when its tokens were
    /// revoked, 4000 for a server-initiated disconnect).
    pub async fn close_user(&self, user: &str, code: u16, reason: &str) {
        self.inner.close_user_here(user, code, reason);
        self.inner
            .deps
            .delivery
            .close_user(user, code, reason)
            .await;
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.inner.sessions().by_id.len()
    }
}

/// Add to `batch` what is waiting in `jobs` without waiting, until it holds `max` (the edge's
/// batchers: the ack writer, the channel loader).
pub(crate) fn take_waiting<T>(
    jobs: &mut mpsc::UnboundedReceiver<T>,
    batch: &mut Vec<T>,
    max: usize,
) {
    while batch.len() < max {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// The error of a channel load the edge's loader will not answer (it stopped).
fn stopping() -> hubbub_store::StoreError {
    hubbub_store::StoreError::Unavailable("the edge is stopping".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle session holds a block of 32 channel slots: keep a slot one pointer wide.
    #[test]
    fn a_channel_slot_is_small() {
        assert!(
            std::mem::size_of::<Out>() <= 16,
            "{}",
            std::mem::size_of::<Out>()
        );
    }

    /// A `message.new` serialized from the batch's cached message is byte for byte what
    /// serde gives the whole frame, whatever the message holds.
    #[test]
    fn a_cached_message_new_is_the_frame_serde_writes() {
        use hubbub_protocol::{Message, ServerFrame};
        let full: Message = serde_json::from_value(serde_json::json!({
            "id": "42", "conversation": "c_1", "sender": "u_\"q\"", "client_msg_id": "k\u{e9}",
            "text": "line\nbreak \u{2028} \"quoted\"", "ts": 1_700_000_000_000_i64,
            "attachments": [{"media": "m_1"}], "reply_to": "41", "thread": "40",
            "mentions": ["u_2"], "replies": 3, "edited_ts": 5, "deleted": false,
        }))
        .expect("a message");
        let mut serializer = BatchSerializer::default();
        for (seq, message) in [(7, Message::default()), (8, full.clone()), (9, full)] {
            let frame = ServerFrame::MessageNew {
                seq,
                message: message.into(),
            };
            let cached = serializer.frame(&frame);
            assert_eq!(cached.json.to_string(), frame.to_json());
            assert_eq!((cached.seq, cached.kind), (Some(seq), "message.new"));
        }
        let other = ServerFrame::Typing {
            conversation: "c".into(),
            user: "u".into(),
            state: hubbub_protocol::TypingState::Start,
        };
        assert_eq!(serializer.frame(&other).json.to_string(), other.to_json());
    }
}
