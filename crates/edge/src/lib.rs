//! The edge role: holds client connections and speaks the client protocol.
//!
//! # Layout
//! - [`auth`]: passwords, access and refresh tokens, app tokens.
//! - `http`: the HTTP API (`/v1/auth/*`, `/v1/users/{handle}`), `/healthz`, `/readyz`,
//!   `/metrics`; every error is the protocol's `{"error":{"code","message"}}`.
//! - `sse`: `/v1/sse`, engagement events over server-sent events.
//! - `ws`: `/v1/ws`, one task per connection: parse, rate-limit, answer reads from the store,
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
//! The edge knows no service logic: it reads the store for `sync` and simple reads, and
//! forwards everything else.

pub mod auth;
mod http;
mod sse;
mod ws;

use auth::{Auth, AuthConfig};
use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::limits::Limits;
use hubbub_queue::Queue;
use hubbub_registry::Registry;
use hubbub_store::Store;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics_exporter_prometheus::PrometheusHandle;

/// How often the edge probes the store (its gate on writes).
const STORE_PROBE_EVERY: Duration = Duration::from_millis(500);

/// Settings of an edge.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// This edge's id (unique among running edges).
    pub edge_id: String,
    /// Protocol limits.
    pub limits: Limits,
    /// Auth settings.
    pub auth: AuthConfig,
    /// The signing key file.
    pub key_file: PathBuf,
    /// A request with no reply after this long is answered `internal`.
    pub request_timeout: Duration,
    /// Ping interval; a connection silent for three intervals is closed.
    pub ping_interval: Duration,
    /// How often this edge tells the signals service it is alive.
    pub heartbeat_interval: Duration,
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
    /// Presence and typing (the ephemeral path).
    pub signals: Arc<dyn hubbub_registry::Signals>,
    /// Precomputed timelines (`timeline.get`, the push after `hello`).
    pub timelines: Arc<dyn hubbub_registry::Timelines>,
    /// Who is writing a comment (`post.watch`, `comment.typing`).
    pub engagement: Arc<dyn hubbub_registry::Engagement>,
    /// Prometheus rendering of the process's metrics.
    pub metrics: PrometheusHandle,
}

/// What the connection tasks receive from the dispatcher.
#[derive(Debug)]
pub(crate) enum Out {
    Reply(hubbub_protocol::ServerFrame),
    Events(Vec<hubbub_protocol::ServerFrame>, Option<i64>),
    /// Ephemeral frames serialized once and shared by every session that gets them.
    Shared(Vec<Arc<str>>),
}

pub(crate) struct SessionHandle {
    user: String,
    tx: mpsc::Sender<Out>,
    /// Cancelled to cut off a slow reader (close code 1013).
    kick: CancellationToken,
    /// Posts whose engagement this session watches.
    posts: HashSet<String>,
}

impl SessionHandle {
    pub(crate) fn new(user: String, tx: mpsc::Sender<Out>, kick: CancellationToken) -> Self {
        SessionHandle {
            user,
            tx,
            kick,
            posts: HashSet::new(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Sessions {
    by_id: HashMap<String, SessionHandle>,
    by_user: HashMap<String, HashSet<String>>,
    /// post → sessions of this edge watching it.
    watching: HashMap<String, HashSet<String>>,
    /// The latest engagement frame of each watched post, for a session that starts watching.
    last: HashMap<String, Arc<str>>,
}

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
}

impl Inner {
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add_session(&self, session: &str, handle: SessionHandle) {
        let mut s = self.sessions();
        s.by_user
            .entry(handle.user.clone())
            .or_default()
            .insert(session.to_owned());
        s.by_id.insert(session.to_owned(), handle);
        metrics::gauge!("hubbub_connections").set(s.by_id.len() as f64);
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
            unwatched = Self::unwatch_locked(&mut s, session, h.posts.iter());
        }
        metrics::gauge!("hubbub_connections").set(s.by_id.len() as f64);
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

    /// Hand an item to a session without waiting; a full buffer cuts the session off.
    fn offer(handle: &SessionHandle, out: Out) {
        if let Err(mpsc::error::TrySendError::Full(_)) = handle.tx.try_send(out) {
            metrics::counter!("hubbub_slow_consumers_total").increment(1);
            handle.kick.cancel();
        }
    }

    fn dispatch(&self, batch: Vec<ToEdge>) {
        let mut sessions = self.sessions();
        for item in batch {
            match item {
                ToEdge::Reply { session, frame } => {
                    if let Some(h) = sessions.by_id.get(&session) {
                        Self::offer(h, Out::Reply(frame));
                    }
                }
                ToEdge::Events {
                    user,
                    frames,
                    origin_ms,
                } => {
                    if let Some(ids) = sessions.by_user.get(&user) {
                        for id in ids {
                            if let Some(h) = sessions.by_id.get(id) {
                                Self::offer(h, Out::Events(frames.clone(), origin_ms));
                            }
                        }
                    }
                }
                ToEdge::Engagement { frames } => Self::dispatch_engagement(&mut sessions, frames),
            }
        }
    }

    /// Each frame is serialized once; each watching session gets its posts' frames as one
    /// write.
    fn dispatch_engagement(sessions: &mut Sessions, frames: Vec<hubbub_protocol::ServerFrame>) {
        let mut per_session: HashMap<String, Vec<Arc<str>>> = HashMap::new();
        for frame in frames {
            let hubbub_protocol::ServerFrame::Engagement { post, .. } = &frame else {
                continue;
            };
            let Some(watchers) = sessions.watching.get(post) else {
                continue;
            };
            let json: Arc<str> = frame.to_json().into();
            for id in watchers {
                per_session
                    .entry(id.clone())
                    .or_default()
                    .push(json.clone());
            }
            sessions.last.insert(post.clone(), json);
        }
        for (id, list) in per_session {
            if let Some(h) = sessions.by_id.get(&id) {
                Self::offer(h, Out::Shared(list));
            }
        }
    }
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
        let inner = Arc::new(Inner {
            config,
            deps,
            auth,
            sessions: Mutex::new(Sessions::default()),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            store_ok: std::sync::atomic::AtomicBool::new(true),
        });
        let probe = inner.clone();
        tokio::spawn(async move {
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
        tokio::spawn(async move {
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
        let dispatcher = inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    batch = inbox.recv() => match batch {
                        Some(batch) => dispatcher.dispatch(batch),
                        None => break,
                    },
                    _ = dispatcher.cancel.cancelled() => break,
                }
            }
        });
        Ok(Edge { inner })
    }

    /// The HTTP and WebSocket application.
    pub fn app(&self) -> axum::Router {
        http::routes(self.inner.clone())
    }

    /// Serve on a bound listener until cancelled, then close every socket with 1001 and
    /// wait for the connection tasks to finish.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let cancel = self.inner.cancel.clone();
        let app = self
            .app()
            .into_make_service_with_connect_info::<SocketAddr>();
        // Pushes are small writes: without TCP_NODELAY, Nagle's algorithm meeting the
        // client's delayed ACKs holds some of them back ~40 ms.
        let listener =
            axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
            });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await?;
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        Ok(())
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.inner.sessions().by_id.len()
    }
}
