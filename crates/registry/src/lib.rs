//! Where each user's sessions are, and how events reach them.
//!
//! - [`Registry`]: user → sessions, each with the id of the edge holding its socket. Edges
//!   register a session when its socket opens and unregister it when it closes. The
//!   in-process [`LocalRegistry`] serves `hubbub serve`; a Redis one (with heartbeat TTLs so a
//!   dead edge's sessions expire) is in `hubbub-cluster`.
//! - [`EdgeLink`]: hands a batch of [`ToEdge`] items to one edge. [`LocalEdges`] is the
//!   in-process channel; the distributed one (`hubbub-cluster`) is a batched HTTP POST to the
//!   edge's internal address.
//! - [`Delivery`]: what services use: "deliver these frames to these users" becomes one batch
//!   per edge holding any of their sessions (every edge at once), plus frames for single
//!   sessions (replies, and presence events for a watcher).
//! - [`Coalescing`]: a registry in front of a remote one that merges the lookups asked for
//!   while one is in flight into one (roles apart, a worker's concurrent pushes).
//! - [`Signals`]: the ephemeral path (presence, typing) as the edge sees it: in memory, never
//!   on disk or on a durable queue. Implemented by the services crate.
//!
//! - [`Timelines`], [`Engagement`]: the feed's reads and the engagement path as the edge sees
//!   them. Implemented by the services crate.
//!
//! With the feature `conformance`, [`conformance`] holds the edge link's conformance suite
//! and the test edges the suites of the edge-facing traits share.
//!
//! This crate knows nothing of storage or of what the frames mean.

pub mod coalesce;
#[cfg(feature = "conformance")]
pub mod conformance;

pub use coalesce::Coalescing;

use async_trait::async_trait;
use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::{
    ErrorCode, Post, Presence, ServerFrame, SetPresenceStatus, TypingState, UserRef,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

/// Why a registry or edge link operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry's backend cannot be reached.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// No edge with this id is reachable (it shut down or died).
    #[error("edge {0} is gone")]
    EdgeGone(String),
}

/// One session of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id.
    pub session: String,
    /// The edge holding its socket.
    pub edge: String,
}

/// A live edge and how many sessions it holds (the admin API's per-edge view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLoad {
    /// The edge id.
    pub edge: String,
    /// Its open sessions.
    pub sessions: u64,
}

/// user → sessions → edges.
#[async_trait]
pub trait Registry: Send + Sync {
    /// A session opened on `edge`.
    async fn register(&self, user: &str, session: &str, edge: &str) -> Result<(), RegistryError>;
    /// A session closed.
    async fn unregister(&self, user: &str, session: &str) -> Result<(), RegistryError>;
    /// Every open session of a user.
    async fn sessions(&self, user: &str) -> Result<Vec<SessionInfo>, RegistryError>;

    /// Every live edge with its session count, by edge id.
    async fn edges(&self) -> Result<Vec<EdgeLoad>, RegistryError>;

    /// Every open session of each of these users, in their order (one round trip where the
    /// backend allows it).
    async fn sessions_of(&self, users: &[String]) -> Result<Vec<Vec<SessionInfo>>, RegistryError> {
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            out.push(self.sessions(u).await?);
        }
        Ok(out)
    }

    /// The edges holding a session of any of `users`, each with the indexes (into `users`,
    /// ascending, each once) of the users it holds: what a push needs, without a list of
    /// sessions per user (a message to a group of 1,000 looks up 1,000 users).
    ///
    /// An answer may list an edge for a user it holds no session of (a backend may answer a
    /// lookup of many users with every live edge holding all of them, cheaper than reading
    /// each user): an edge hands a user's events only to its own sessions of that user and
    /// drops the rest. It never leaves out a live edge that holds a session of a user.
    async fn users_by_edge(&self, users: &[&str]) -> Result<UsersByEdge, RegistryError> {
        let owned: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
        let sessions = self.sessions_of(&owned).await?;
        let mut out = UsersByEdge::default();
        for (i, list) in sessions.iter().enumerate() {
            for s in list {
                out.add(&s.edge, i);
            }
        }
        Ok(out)
    }
}

/// The answer of [`Registry::users_by_edge`]: per edge, the indexes of the users it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersByEdge {
    /// (edge id, indexes into the users asked about, ascending, each once).
    pub edges: Vec<(String, Vec<usize>)>,
    /// Where each edge is in `edges`.
    index: HashMap<String, usize>,
}

impl UsersByEdge {
    /// Every one of `users` users on each of `edges` (distinct): what a lookup answered from
    /// the live edges alone is.
    pub fn every_user_on(edges: Vec<String>, users: usize) -> Self {
        let index = edges
            .iter()
            .enumerate()
            .map(|(i, e)| (e.clone(), i))
            .collect();
        UsersByEdge {
            edges: edges
                .into_iter()
                .map(|e| (e, (0..users).collect()))
                .collect(),
            index,
        }
    }

    /// Note that `edge` holds a session of user `i`; users are added in ascending order.
    pub fn add(&mut self, edge: &str, i: usize) {
        let slot = match self.index.get(edge) {
            Some(&slot) => slot,
            None => {
                self.index.insert(edge.to_owned(), self.edges.len());
                self.edges.push((edge.to_owned(), Vec::new()));
                self.edges.len() - 1
            }
        };
        let users = &mut self.edges[slot].1;
        if users.last() != Some(&i) {
            users.push(i);
        }
    }
}

/// A refused signal: its protocol code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SignalError {
    /// The protocol code.
    pub code: ErrorCode,
    /// For the client.
    pub message: String,
}

impl SignalError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SignalError {
            code,
            message: message.into(),
        }
    }
}

/// The ephemeral path: presence and typing. Losing a signal is harmless; none waits for a disk.
#[async_trait]
pub trait Signals: Send + Sync {
    /// A session of `user` opened on `edge`.
    async fn session_opened(&self, user: &str, edge: &str, session: &str);
    /// A session closed (its watches end with it).
    async fn session_closed(&self, user: &str, edge: &str, session: &str);
    /// `presence.set`.
    async fn set_status(&self, user: &str, status: SetPresenceStatus);
    /// `presence.watch`: the session gets `presence` events for these users from now on;
    /// returns their presence now.
    async fn watch(
        &self,
        edge: &str,
        session: &str,
        users: &[String],
    ) -> Result<Vec<Presence>, SignalError>;
    /// `presence.unwatch`.
    async fn unwatch(&self, edge: &str, session: &str, users: &[String]);
    /// The presence of these users now, watching nothing (the server API's lookup). By
    /// default a watch and an unwatch under a session id no client has (`session` names
    /// the asker uniquely), so every backend answers as it answers `presence.watch`.
    async fn presence(
        &self,
        edge: &str,
        session: &str,
        users: &[String],
    ) -> Result<Vec<Presence>, SignalError> {
        let out = self.watch(edge, session, users).await;
        self.unwatch(edge, session, users).await;
        out
    }
    /// `typing` in a conversation.
    async fn typing(
        &self,
        user: &str,
        conversation: &str,
        state: TypingState,
    ) -> Result<(), SignalError>;
    /// The edge is alive; an edge not heard from within the TTL loses its sessions (a
    /// crashed edge's users go offline).
    async fn heartbeat(&self, edge: &str);
}

/// Timeline reads as the edge sees them: `timeline.get` and the push after `hello`.
/// Implemented by the feed service (it reads the precomputed timeline and applies fixups).
#[async_trait]
pub trait Timelines: Send + Sync {
    /// The user's timeline: up to `limit` posts after `before` (a post id) and when the
    /// timeline was precomputed.
    async fn timeline(
        &self,
        user: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Post>, i64), SignalError>;

    /// A session of `user` opened: note the user as active (the scheduler precomputes
    /// timelines for active users) and return the first page of the timeline.
    async fn welcome(&self, user: &str) -> Result<(Vec<Post>, i64), SignalError>;
}

/// A page of a user's durable events, for `sync` and for filling a gap in live pushes.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// Events with seq above the one asked for, in order.
    pub frames: Vec<ServerFrame>,
    /// The user's latest seq.
    pub last_seq: u64,
    /// Events the client needed are gone (older than the retention window).
    pub truncated: bool,
}

/// The chat domain's reads as the edge sees them: `conversation.list/get`,
/// `message.history`, `message.search`, `block.list`, and the inbox (`hello`'s `last_seq`,
/// `sync`, gap fills). Answered by the chat service's query side straight from the store,
/// never through a queue; the rules of reads (limits, membership) live there, beside the
/// writes. Errors carry the protocol code and a message fit for the client.
#[async_trait]
pub trait ChatReads: Send + Sync {
    /// `conversation.list`.
    async fn conversations(
        &self,
        user: &str,
    ) -> Result<Vec<hubbub_protocol::ConversationSummary>, SignalError>;
    /// `conversation.get`.
    async fn conversation(
        &self,
        user: &str,
        conversation: &str,
    ) -> Result<hubbub_protocol::Conversation, SignalError>;
    /// `conversation.members`: a page of member ids (by id, after `after`), and whether more
    /// follow.
    async fn members(
        &self,
        user: &str,
        conversation: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<String>, bool), SignalError>;
    /// `message.history` (with `thread`: that thread's replies only): newest first, and
    /// whether older messages remain.
    async fn history(
        &self,
        user: &str,
        conversation: &str,
        thread: Option<&str>,
        before: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(Vec<hubbub_protocol::Message>, bool), SignalError>;
    /// `message.versions`: oldest first, the current text last.
    async fn versions(
        &self,
        user: &str,
        conversation: &str,
        message: &str,
    ) -> Result<Vec<hubbub_protocol::MessageVersion>, SignalError>;
    /// `conversation.pins`: most recently pinned first.
    async fn pins(
        &self,
        user: &str,
        conversation: &str,
    ) -> Result<Vec<hubbub_protocol::Message>, SignalError>;
    /// `message.search`: best first.
    async fn search(
        &self,
        user: &str,
        query: &str,
        conversation: Option<&str>,
    ) -> Result<Vec<hubbub_protocol::Message>, SignalError>;
    /// `block.list`.
    async fn blocks(&self, user: &str) -> Result<Vec<String>, SignalError>;
    /// `contact.list`: the user's contacts by user id, notes opened.
    async fn contacts(&self, user: &str) -> Result<Vec<hubbub_protocol::Contact>, SignalError>;
    /// `channel.sync`: up to `limit` (default and at most 1,000) `channel.message` frames
    /// with offset above `after_offset`, in order; the last offset replayed; whether more
    /// remain.
    async fn channel_sync(
        &self,
        user: &str,
        channel: &str,
        after_offset: u64,
        limit: Option<u32>,
    ) -> Result<(Vec<ServerFrame>, u64, bool), SignalError>;
    /// The user's latest seq (`hello`).
    async fn last_seq(&self, user: &str) -> Result<u64, SignalError>;
    /// Up to `limit` durable events with seq above `after_seq`.
    async fn events_after(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<EventPage, SignalError>;
}

/// Engagement ("who is writing a comment") as the edge sees it: the ephemeral path, never a
/// disk on the way of a `comment.typing`. Implemented by the engagement service.
///
/// Subscriptions are per edge and per post, and they are leases: an edge renews all of its
/// posts every heartbeat, so a restarted engagement worker has them back within one
/// heartbeat, and a dead edge's lapse without anyone telling the worker.
#[async_trait]
pub trait Engagement: Send + Sync {
    /// Edge `edge` has sessions watching these posts; `not_found` names a post that does not
    /// exist (then nothing is subscribed).
    async fn subscribe(&self, edge: &str, posts: &[String]) -> Result<(), SignalError>;
    /// No session of `edge` watches these posts any more.
    async fn unsubscribe(&self, edge: &str, posts: &[String]);
    /// Renew the edge's subscriptions (every post some session of it watches).
    async fn renew(&self, edge: &str, posts: &[String]);
    /// `comment.typing`.
    async fn typing(&self, user: &UserRef, post: &str, words: u32) -> Result<(), SignalError>;
    /// A post changed: a comment was added (its new count), or it was deleted (`None`).
    async fn post_changed(&self, post: &str, comments: Option<u64>);
}

/// The in-process registry: each user's sessions (with their edge), sorted by session id.
/// A user has a few sessions, so a sorted `Vec` rather than a map: it costs one small
/// allocation per online user (a `BTreeMap` node is over 500 bytes, at every idle user).
#[derive(Debug, Default)]
pub struct LocalRegistry {
    users: RwLock<HashMap<String, Vec<(String, String)>>>,
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn register(&self, user: &str, session: &str, edge: &str) -> Result<(), RegistryError> {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        let sessions = users.entry(user.to_owned()).or_default();
        match sessions.binary_search_by(|(s, _)| s.as_str().cmp(session)) {
            Ok(i) => sessions[i].1 = edge.to_owned(),
            Err(i) => {
                sessions.reserve_exact(1);
                sessions.insert(i, (session.to_owned(), edge.to_owned()));
            }
        }
        Ok(())
    }

    async fn unregister(&self, user: &str, session: &str) -> Result<(), RegistryError> {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        if let Some(sessions) = users.get_mut(user) {
            if let Ok(i) = sessions.binary_search_by(|(s, _)| s.as_str().cmp(session)) {
                sessions.remove(i);
            }
            if sessions.is_empty() {
                users.remove(user);
            }
        }
        Ok(())
    }

    async fn edges(&self) -> Result<Vec<EdgeLoad>, RegistryError> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
        for (_, edge) in users.values().flatten() {
            *counts.entry(edge.as_str()).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|(edge, sessions)| EdgeLoad {
                edge: edge.to_owned(),
                sessions,
            })
            .collect())
    }

    async fn sessions(&self, user: &str) -> Result<Vec<SessionInfo>, RegistryError> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        Ok(users
            .get(user)
            .map(|s| {
                s.iter()
                    .map(|(session, edge)| SessionInfo {
                        session: session.clone(),
                        edge: edge.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One read lock for all of them, and no copy of a session id.
    async fn users_by_edge(&self, users: &[&str]) -> Result<UsersByEdge, RegistryError> {
        let map = self.users.read().unwrap_or_else(|p| p.into_inner());
        let mut out = UsersByEdge::default();
        for (i, user) in users.iter().enumerate() {
            for (_, edge) in map.get(*user).into_iter().flatten() {
                out.add(edge, i);
            }
        }
        Ok(out)
    }
}

/// Hands batches to edges.
#[async_trait]
pub trait EdgeLink: Send + Sync {
    /// Deliver a batch to one edge.
    async fn deliver(&self, edge: &str, batch: Vec<ToEdge>) -> Result<(), RegistryError>;

    /// The edges running now: where a channel's message goes (each edge knows which of its
    /// users are members). A backend may answer from a cache of a second or so.
    async fn edges(&self) -> Result<Vec<String>, RegistryError>;
}

/// Where pushed events came from: the edge that accepted the write producing them, and when
/// (its clock, ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The accepting edge's id.
    pub edge: &'a str,
    /// When it accepted the write.
    pub accepted_ms: i64,
}

impl Origin<'_> {
    fn split(origin: Option<Origin<'_>>) -> (Option<i64>, Option<String>) {
        match origin {
            Some(o) => (Some(o.accepted_ms), Some(o.edge.to_owned())),
            None => (None, None),
        }
    }
}

/// In-process edges: each edge of this process registers the sending half of its inbox.
#[derive(Debug, Default)]
pub struct LocalEdges {
    edges: RwLock<HashMap<String, mpsc::UnboundedSender<Vec<ToEdge>>>>,
}

impl LocalEdges {
    /// Attach an edge; it reads its batches from the returned receiver.
    pub fn attach(&self, edge: &str) -> mpsc::UnboundedReceiver<Vec<ToEdge>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.edges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(edge.to_owned(), tx);
        rx
    }

    /// Detach an edge (it shut down).
    pub fn detach(&self, edge: &str) {
        self.edges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(edge);
    }
}

#[async_trait]
impl EdgeLink for LocalEdges {
    async fn deliver(&self, edge: &str, batch: Vec<ToEdge>) -> Result<(), RegistryError> {
        let edges = self.edges.read().unwrap_or_else(|p| p.into_inner());
        let tx = edges
            .get(edge)
            .ok_or_else(|| RegistryError::EdgeGone(edge.to_owned()))?;
        tx.send(batch)
            .map_err(|_| RegistryError::EdgeGone(edge.to_owned()))
    }

    async fn edges(&self) -> Result<Vec<String>, RegistryError> {
        let edges = self.edges.read().unwrap_or_else(|p| p.into_inner());
        Ok(edges.keys().cloned().collect())
    }
}

/// Messages whose `message.new` goes to several users of a push.
type Fanned = Vec<Arc<hubbub_protocol::Message>>;

/// The users (indexes into `by_user`) whose only frame of a push is the `message.new` of a
/// message other users of it also get (the very same shared message): they go as one
/// [`ToEdge::Message`] per edge, the message encoded once. Returns, per user, the index of
/// its message in the second list, if it is one of those.
fn fanned_messages(by_user: &[(usize, String, Vec<ServerFrame>)]) -> (Vec<Option<usize>>, Fanned) {
    fn only_message(frames: &[ServerFrame]) -> Option<&Arc<hubbub_protocol::Message>> {
        match frames {
            [ServerFrame::MessageNew { message, .. }] => Some(message),
            _ => None,
        }
    }
    let mut users_of: HashMap<*const hubbub_protocol::Message, usize> = HashMap::new();
    for (_, _, frames) in by_user {
        if let Some(m) = only_message(frames) {
            *users_of.entry(Arc::as_ptr(m)).or_default() += 1;
        }
    }
    // A message only one user gets goes as that user's events.
    let mut index: HashMap<*const hubbub_protocol::Message, usize> = HashMap::new();
    let mut fanned = Vec::new();
    let of = by_user
        .iter()
        .map(|(_, _, frames)| {
            let m = only_message(frames)?;
            let key = Arc::as_ptr(m);
            (users_of.get(&key).copied().unwrap_or(0) > 1).then(|| {
                *index.entry(key).or_insert_with(|| {
                    fanned.push(m.clone());
                    fanned.len() - 1
                })
            })
        })
        .collect();
    (of, fanned)
}

/// One push of [`Delivery::push_all`]: frames for users, frames for single sessions, and
/// where they came from.
#[derive(Debug)]
pub struct Push<'a> {
    /// `(user, frame)`: for every session of the user.
    pub frames: Vec<(String, ServerFrame)>,
    /// `(edge, session, frame)`: for one session.
    pub replies: Vec<(String, String, ServerFrame)>,
    /// The write the frames come from.
    pub origin: Option<Origin<'a>>,
}

/// What services use to push frames: registry lookups plus one batch per edge.
#[derive(Clone)]
pub struct Delivery {
    registry: Arc<dyn Registry>,
    link: Arc<dyn EdgeLink>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Delivery")
    }
}

impl Delivery {
    /// Delivery through this registry and link.
    pub fn new(registry: Arc<dyn Registry>, link: Arc<dyn EdgeLink>) -> Self {
        Delivery { registry, link }
    }

    /// The registry behind it.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The link to the edges behind it.
    pub fn link(&self) -> &Arc<dyn EdgeLink> {
        &self.link
    }

    /// Close every session of `user`, on every edge, with `code` (best effort, like pushes).
    pub async fn close_user(&self, user: &str, code: u16, reason: &str) {
        let sessions = match self.registry.sessions_of(&[user.to_owned()]).await {
            Ok(mut s) => s.pop().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "registry lookup failed; sessions not closed");
                return;
            }
        };
        let mut edges: Vec<&str> = sessions.iter().map(|s| s.edge.as_str()).collect();
        edges.sort_unstable();
        edges.dedup();
        self.deliver_all(edges.into_iter().map(|edge| {
            let close = ToEdge::Close {
                user: user.to_owned(),
                session: None,
                code,
                reason: reason.to_owned(),
            };
            (edge.to_owned(), vec![close])
        }))
        .await;
    }

    /// Hand each edge its batch, every edge at once: a slow or distant edge does not hold up
    /// the others (a group spread over ten edges waited for ten requests one after the
    /// other), and each edge's batch keeps its order. Failures are logged, never returned.
    async fn deliver_all(&self, batches: impl IntoIterator<Item = (String, Vec<ToEdge>)>) {
        let sends = batches.into_iter().map(|(edge, batch)| async move {
            if let Err(e) = self.link.deliver(&edge, batch).await {
                tracing::debug!(%edge, error = %e, "edge delivery failed");
            }
        });
        futures_util::future::join_all(sends).await;
    }

    /// Push frames to users (every session of each) and frames to single sessions (`(edge,
    /// session, frame)`: replies, presence events), one batch per edge. Best effort: a user
    /// who misses a durable event gets it on `sync`; failures are logged, never returned, so a
    /// dead edge cannot fail the write that produced the event.
    pub async fn push(
        &self,
        frames: Vec<(String, ServerFrame)>,
        replies: Vec<(String, String, ServerFrame)>,
        origin: Option<Origin<'_>>,
    ) {
        self.push_all(vec![Push {
            frames,
            replies,
            origin,
        }])
        .await;
    }

    /// Several pushes as one: one registry lookup for the users of all of them, one batch per
    /// edge holding each push's items in turn (its replies, then its events), so every user's
    /// frames keep the pushes' order. What a worker's run of envelopes hands over together.
    pub async fn push_all(&self, pushes: Vec<Push<'_>>) {
        // Every user of every push, numbered by first appearance (an index per user: a
        // message to a group of N members is N frames, and a search per frame would cost N²
        // steps), and the number of each frame's user.
        let (user_of, n_users, found) = {
            let mut index: HashMap<&str, usize> = HashMap::new();
            let mut users: Vec<&str> = Vec::new();
            let user_of: Vec<Vec<usize>> = pushes
                .iter()
                .map(|p| {
                    p.frames
                        .iter()
                        .map(|(user, _)| {
                            *index.entry(user.as_str()).or_insert_with(|| {
                                users.push(user);
                                users.len() - 1
                            })
                        })
                        .collect()
                })
                .collect();
            let found = if users.is_empty() {
                Ok(UsersByEdge::default())
            } else {
                self.registry.users_by_edge(&users).await
            };
            (user_of, users.len(), found)
        };
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "registry lookup failed; events wait for sync");
                UsersByEdge::default()
            }
        };
        // The edges (indexes into `found.edges`) of each user.
        let mut edges_of: Vec<Vec<usize>> = vec![Vec::new(); n_users];
        for (slot, (_, users)) in found.edges.iter().enumerate() {
            for &i in users {
                if let Some(e) = edges_of.get_mut(i) {
                    e.push(slot);
                }
            }
        }
        // One batch per edge: the users' edges first (their slots are `found.edges`' indexes),
        // then any other edge a reply goes to.
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut batches: Vec<(String, Vec<ToEdge>)> = Vec::with_capacity(found.edges.len());
        for (slot, (edge, _)) in found.edges.into_iter().enumerate() {
            slot_of.insert(edge.clone(), slot);
            batches.push((edge, Vec::new()));
        }
        for (push, user_of) in pushes.into_iter().zip(user_of) {
            let (origin_ms, origin_edge) = Origin::split(push.origin);
            for (edge, session, frame) in push.replies {
                let slot = *slot_of.entry(edge.clone()).or_insert_with(|| {
                    batches.push((edge, Vec::new()));
                    batches.len() - 1
                });
                batches[slot].1.push(ToEdge::Reply { session, frame });
            }
            // This push's frames by user, in order of first appearance.
            let mut by_user: Vec<(usize, String, Vec<ServerFrame>)> = Vec::new();
            // Where each user (by number) is in `by_user`.
            let mut row_of: HashMap<usize, usize> = HashMap::new();
            for ((user, frame), g) in push.frames.into_iter().zip(user_of) {
                match row_of.get(&g) {
                    Some(&i) => by_user[i].2.push(frame),
                    None => {
                        row_of.insert(g, by_user.len());
                        by_user.push((g, user, vec![frame]));
                    }
                }
            }
            let (fan_of, fanned) = fanned_messages(&by_user);
            // Per edge and fanned message, its users on that edge and their seqs.
            let mut fans: Vec<Vec<Vec<(String, u64)>>> = Vec::new();
            for ((g, user, frames), fan) in by_user.into_iter().zip(fan_of) {
                let edges = edges_of.get(g).map(Vec::as_slice).unwrap_or_default();
                // Cloned for all but the last edge, moved to it (a user is nearly always
                // on one).
                let Some((&last, rest)) = edges.split_last() else {
                    continue;
                };
                if let (Some(m), Some(seq)) = (fan, frames.first().and_then(ServerFrame::seq)) {
                    let mut add = |slot: usize, user: String| {
                        if fans.len() <= slot {
                            fans.resize_with(slot + 1, || vec![Vec::new(); fanned.len()]);
                        }
                        fans[slot][m].push((user, seq));
                    };
                    for &slot in rest {
                        add(slot, user.clone());
                    }
                    add(last, user);
                    continue;
                }
                for &slot in rest {
                    batches[slot].1.push(ToEdge::Events {
                        user: user.clone(),
                        frames: frames.clone(),
                        origin_ms,
                        origin_edge: origin_edge.clone(),
                    });
                }
                batches[last].1.push(ToEdge::Events {
                    user,
                    frames,
                    origin_ms,
                    origin_edge: origin_edge.clone(),
                });
            }
            for (slot, per_message) in fans.into_iter().enumerate() {
                for (message, users) in fanned.iter().zip(per_message) {
                    if !users.is_empty() {
                        batches[slot].1.push(ToEdge::Message {
                            message: message.clone(),
                            users,
                            origin_ms,
                            origin_edge: origin_edge.clone(),
                        });
                    }
                }
            }
        }
        self.deliver_all(batches.into_iter().filter(|(_, b)| !b.is_empty()))
            .await;
    }

    /// Push one frame of a channel (its message, or a change to one) to every edge: each
    /// hands it to the sessions of its users who are members. Best effort, as
    /// [`Delivery::push`]: a member who misses it finds it with `channel.sync`.
    pub async fn broadcast(
        &self,
        conversation: &str,
        frame: ServerFrame,
        origin: Option<Origin<'_>>,
    ) {
        let (origin_ms, origin_edge) = Origin::split(origin);
        let edges = match self.link.edges().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "no edge list; members catch up by channel.sync");
                return;
            }
        };
        self.deliver_all(edges.into_iter().map(|edge| {
            let batch = vec![ToEdge::Channel {
                conversation: conversation.to_owned(),
                frame: frame.clone(),
                origin_ms,
                origin_edge: origin_edge.clone(),
            }];
            (edge, batch)
        }))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_protocol::TypingState;

    /// A delivery over two in-process edges, `e1` and `e2`, with these `(user, session,
    /// edge)` registered; and the edges' inboxes.
    async fn two_edges(
        sessions: &[(&str, &str, &str)],
    ) -> (
        Delivery,
        mpsc::UnboundedReceiver<Vec<ToEdge>>,
        mpsc::UnboundedReceiver<Vec<ToEdge>>,
    ) {
        let registry = Arc::new(LocalRegistry::default());
        let edges = Arc::new(LocalEdges::default());
        let (e1, e2) = (edges.attach("e1"), edges.attach("e2"));
        for (user, session, edge) in sessions {
            registry.register(user, session, edge).await.expect("reg");
        }
        (Delivery::new(registry, edges), e1, e2)
    }

    fn message(id: &str) -> Arc<hubbub_protocol::Message> {
        Arc::new(
            serde_json::from_value(
                serde_json::json!({"id":id,"conversation":"c","sender":"ann",
                "client_msg_id":"k","text":"hi","ts":5}),
            )
            .expect("message"),
        )
    }

    fn typing(user: &str) -> ServerFrame {
        ServerFrame::Typing {
            conversation: "c".into(),
            user: user.into(),
            state: TypingState::Start,
        }
    }

    #[tokio::test]
    async fn the_local_registry_counts_sessions_per_edge() {
        let r = LocalRegistry::default();
        assert!(r.edges().await.expect("edges").is_empty());
        r.register("alice", "s1", "e1").await.expect("reg");
        r.register("alice", "s2", "e2").await.expect("reg");
        r.register("bob", "s3", "e1").await.expect("reg");
        r.unregister("alice", "s2").await.expect("unreg");
        assert_eq!(
            r.edges().await.expect("edges"),
            [EdgeLoad {
                edge: "e1".into(),
                sessions: 2
            }]
        );
    }

    /// A message to several users goes to each edge once, with each user's seq; a user with
    /// other frames in the same push, and a message only one user gets, go as events.
    #[tokio::test]
    async fn a_message_to_several_users_goes_once_per_edge() {
        let (delivery, mut e1, mut e2) = two_edges(&[
            ("ann", "s1", "e1"),
            ("bob", "s2", "e1"),
            ("cat", "s3", "e2"),
            ("dan", "s4", "e1"),
            ("eve", "s5", "e2"),
        ])
        .await;
        let (shared, alone) = (message("m1"), message("m2"));
        let new = |seq: u64, message: &Arc<hubbub_protocol::Message>| ServerFrame::MessageNew {
            seq,
            message: message.clone(),
        };
        delivery
            .push(
                vec![
                    ("ann".into(), new(7, &shared)),
                    ("bob".into(), new(3, &shared)),
                    ("cat".into(), new(9, &shared)),
                    // dan gets the shared message and another frame: his own events.
                    ("dan".into(), new(1, &shared)),
                    ("dan".into(), typing("ann")),
                    ("nobody".into(), new(4, &shared)),
                    ("bob".into(), new(4, &alone)),
                    // Only eve gets m3: her events.
                    ("eve".into(), new(2, &message("m3"))),
                ],
                Vec::new(),
                None,
            )
            .await;
        let b1 = e1.recv().await.expect("e1 batch");
        let b2 = e2.recv().await.expect("e2 batch");
        let users_of = |batch: &[ToEdge]| -> Vec<(String, u64)> {
            batch
                .iter()
                .find_map(|i| match i {
                    ToEdge::Message { message, users, .. } if message.id == "m1" => {
                        Some(users.clone())
                    }
                    _ => None,
                })
                .unwrap_or_default()
        };
        // bob has two frames (m1 and m2): his own events, in order.
        assert_eq!(users_of(&b1), [("ann".to_owned(), 7)]);
        assert_eq!(users_of(&b2), [("cat".to_owned(), 9)]);
        let events: Vec<(&str, Vec<Option<u64>>)> = b1
            .iter()
            .filter_map(|i| match i {
                ToEdge::Events { user, frames, .. } => {
                    Some((user.as_str(), frames.iter().map(ServerFrame::seq).collect()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            events,
            [
                ("bob", vec![Some(3), Some(4)]),
                ("dan", vec![Some(1), None])
            ]
        );
        assert_eq!(b1.len(), 3);
        assert!(
            matches!(&b2[..], [ToEdge::Events { user, .. }, ToEdge::Message { .. }] if user == "eve")
        );
    }

    /// A member with sessions on two edges is among the message's users on both.
    #[tokio::test]
    async fn a_member_on_two_edges_gets_the_message_on_both() {
        let (delivery, mut e1, mut e2) = two_edges(&[
            ("ann", "s1", "e1"),
            ("ann", "s2", "e2"),
            ("bob", "s3", "e1"),
        ])
        .await;
        let m = message("m1");
        let new = |seq: u64| ServerFrame::MessageNew {
            seq,
            message: m.clone(),
        };
        delivery
            .push(
                vec![("ann".into(), new(5)), ("bob".into(), new(6))],
                Vec::new(),
                None,
            )
            .await;
        let users = |batch: Vec<ToEdge>| -> Vec<(String, u64)> {
            match &batch[..] {
                [ToEdge::Message { users, .. }] => users.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            users(e1.recv().await.expect("e1 batch")),
            [("ann".to_owned(), 5), ("bob".to_owned(), 6)]
        );
        assert_eq!(
            users(e2.recv().await.expect("e2 batch")),
            [("ann".to_owned(), 5)]
        );
    }

    /// Several pushes go as one batch per edge, each push's items (its replies, then its
    /// events) after the one before, so a user's frames keep the pushes' order.
    #[tokio::test]
    async fn pushes_together_keep_their_order_per_edge() {
        let (delivery, mut e1, mut e2) = two_edges(&[
            ("ann", "s1", "e1"),
            ("bob", "s2", "e1"),
            ("cat", "s3", "e2"),
        ])
        .await;
        let m = message("m1");
        let new = |seq| ServerFrame::MessageNew {
            seq,
            message: m.clone(),
        };
        let ok = |id: &str| ServerFrame::Ok {
            id: id.into(),
            data: hubbub_protocol::ReplyData::Empty {},
        };
        delivery
            .push_all(vec![
                Push {
                    frames: vec![
                        ("ann".into(), new(1)),
                        ("bob".into(), new(5)),
                        ("cat".into(), new(2)),
                    ],
                    replies: vec![
                        ("e1".into(), "s1".into(), ok("r1")),
                        ("e9".into(), "sx".into(), ok("lost")),
                    ],
                    origin: None,
                },
                Push {
                    frames: vec![
                        ("bob".into(), typing("ann")),
                        ("nobody".into(), typing("ann")),
                    ],
                    replies: vec![("e1".into(), "s1".into(), ok("r2"))],
                    origin: None,
                },
            ])
            .await;
        let b1 = e1.recv().await.expect("e1 batch");
        let shape: Vec<String> = b1
            .iter()
            .map(|i| match i {
                ToEdge::Reply {
                    frame: ServerFrame::Ok { id, .. },
                    ..
                } => format!("reply {id}"),
                ToEdge::Message { users, .. } => format!("message {users:?}"),
                ToEdge::Events { user, .. } => format!("events {user}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "reply r1",
                r#"message [("ann", 1), ("bob", 5)]"#,
                "reply r2",
                "events bob"
            ]
        );
        assert!(
            matches!(&e2.recv().await.expect("e2 batch")[..], [ToEdge::Message { users, .. }] if users == &[("cat".to_owned(), 2)])
        );
        assert!(e1.try_recv().is_err(), "one batch per edge");
    }

    #[tokio::test]
    async fn push_batches_per_edge_and_skips_offline_users() {
        let registry = Arc::new(LocalRegistry::default());
        let edges = Arc::new(LocalEdges::default());
        let mut e1 = edges.attach("e1");
        let mut e2 = edges.attach("e2");
        registry.register("alice", "s1", "e1").await.expect("reg");
        registry.register("alice", "s2", "e2").await.expect("reg");
        registry.register("bob", "s3", "e1").await.expect("reg");
        let delivery = Delivery::new(registry.clone(), edges.clone());
        delivery
            .push(
                vec![
                    ("alice".into(), typing("x")),
                    ("bob".into(), typing("y")),
                    ("carol".into(), typing("z")),
                ],
                vec![(
                    "e2".into(),
                    "s2".into(),
                    ServerFrame::error(
                        Some("r".into()),
                        hubbub_protocol::ErrorCode::Forbidden,
                        "no",
                    ),
                )],
                None,
            )
            .await;
        let b1 = e1.recv().await.expect("e1 batch");
        assert_eq!(b1.len(), 2, "alice and bob on e1 in one batch");
        let b2 = e2.recv().await.expect("e2 batch");
        assert!(matches!(b2[0], ToEdge::Reply { .. }));
        assert!(matches!(&b2[1], ToEdge::Events { user, .. } if user == "alice"));
        registry.unregister("alice", "s1").await.expect("unreg");
        assert_eq!(registry.sessions("alice").await.expect("sessions").len(), 1);
        edges.detach("e2");
        assert!(edges.deliver("e2", vec![]).await.is_err());
    }

    /// A user's frames stay together and in order, users in the order they first appear.
    #[tokio::test]
    async fn push_keeps_each_users_frames_in_order() {
        let registry = Arc::new(LocalRegistry::default());
        let edges = Arc::new(LocalEdges::default());
        let mut e1 = edges.attach("e1");
        registry.register("alice", "s1", "e1").await.expect("reg");
        registry.register("bob", "s2", "e1").await.expect("reg");
        let delivery = Delivery::new(registry.clone(), edges.clone());
        delivery
            .push(
                vec![
                    ("alice".into(), typing("1")),
                    ("bob".into(), typing("2")),
                    ("alice".into(), typing("3")),
                    ("bob".into(), typing("4")),
                ],
                Vec::new(),
                None,
            )
            .await;
        let batch = e1.recv().await.expect("batch");
        let seen: Vec<(String, Vec<String>)> = batch
            .iter()
            .map(|item| match item {
                ToEdge::Events { user, frames, .. } => (
                    user.clone(),
                    frames
                        .iter()
                        .map(|f| match f {
                            ServerFrame::Typing { user, .. } => user.clone(),
                            other => panic!("{other:?}"),
                        })
                        .collect(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("alice".to_owned(), vec!["1".to_owned(), "3".to_owned()]),
                ("bob".to_owned(), vec!["2".to_owned(), "4".to_owned()]),
            ]
        );
    }

    /// A link whose every delivery waits until a delivery to the other edge has begun too:
    /// it completes only if the edges are delivered to at once, not one after the other.
    struct Meeting(tokio::sync::Barrier);

    #[async_trait]
    impl EdgeLink for Meeting {
        async fn deliver(&self, _edge: &str, _batch: Vec<ToEdge>) -> Result<(), RegistryError> {
            self.0.wait().await;
            Ok(())
        }

        async fn edges(&self) -> Result<Vec<String>, RegistryError> {
            Ok(vec!["e1".into(), "e2".into()])
        }
    }

    #[tokio::test]
    async fn every_edge_is_delivered_to_at_once() {
        let registry = Arc::new(LocalRegistry::default());
        registry.register("alice", "s1", "e1").await.expect("reg");
        registry.register("bob", "s2", "e2").await.expect("reg");
        let d = Delivery::new(registry, Arc::new(Meeting(tokio::sync::Barrier::new(2))));
        // Bounded: one edge after the other would wait forever.
        let bound = std::time::Duration::from_secs(30);
        let frames = vec![("alice".into(), typing("x")), ("bob".into(), typing("y"))];
        tokio::time::timeout(bound, d.push(frames, Vec::new(), None))
            .await
            .expect("a push to two edges reaches both at once");
        tokio::time::timeout(bound, d.broadcast("c", typing("z"), None))
            .await
            .expect("a channel's message reaches every edge at once");
        let replies = vec![
            ("e1".into(), "s1".into(), typing("r")),
            ("e2".into(), "s2".into(), typing("r")),
        ];
        tokio::time::timeout(bound, d.push(Vec::new(), replies, None))
            .await
            .expect("replies to two edges reach both at once");
    }
}
