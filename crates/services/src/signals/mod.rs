//! The ephemeral path: presence and typing, in memory (DESIGN.md principle 5). Nothing here
//! touches a disk or a durable queue; losing a signal is harmless.
//!
//! Presence: a user is online while any session of theirs is open (on an edge that keeps
//! sending heartbeats: a crashed edge's sessions age out after the edge TTL), with the status they set
//! (`online`, `away`; `invisible` shows as `offline` to everyone). Watchers (sessions) get a
//! `presence` event when what they would see changes: the first session opens, the last one
//! closes, or the visible status changes. `last_seen_ts` is when the user was last visible
//! and online; it lives in memory and starts empty after a restart.
//!
//! Typing: relayed to the conversation's other members, less those who block the sender; a
//! member gets at most one `start` per sender per conversation per second, and a `start` not
//! renewed within 6 s lapses: the server sends the `stop`.
//!
//! Deadlines (typing lapses and throttles, the edge TTL) are on tokio's clock, so tests run
//! them on paused time; `last_seen_ts` goes on the wire and is wall-clock time.
//!
//! When roles run apart, `hubbub_cluster::ClusterSignals` computes presence from what the edges
//! share in Redis instead of one process's memory.

use async_trait::async_trait;
use hubbub_protocol::{
    ErrorCode, Presence, PresenceStatus, ServerFrame, SetPresenceStatus, TypingState,
};
use hubbub_queue::clock::now_ms;
use hubbub_registry::{Delivery, SignalError, Signals};
use hubbub_store::Store;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A `start` not renewed within this lapses.
pub const TYPING_LAPSE: Duration = Duration::from_secs(6);
/// At most one `start` per sender per conversation within this.
pub const TYPING_THROTTLE: Duration = Duration::from_secs(1);
/// Most users one `presence.watch` may name.
pub const MAX_WATCH: usize = 1000;

type SessionKey = (String, String); // (edge, session)

#[derive(Debug)]
struct UserPresence {
    sessions: HashSet<SessionKey>,
    status: SetPresenceStatus,
    last_seen_ts: Option<i64>,
}

#[derive(Debug)]
struct Typing {
    last_start: Instant,
    lapses_at: Instant,
    recipients: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    /// When each edge last said it was alive.
    edges: HashMap<String, Instant>,
    users: HashMap<String, UserPresence>,
    watchers: HashMap<String, HashSet<SessionKey>>,
    watching: HashMap<SessionKey, HashSet<String>>,
    typing: HashMap<(String, String), Typing>, // (conversation, sender)
}

impl State {
    fn visible(&self, user: &str) -> Presence {
        match self.users.get(user) {
            Some(p) => Presence {
                user: user.to_owned(),
                status: match (p.sessions.is_empty(), p.status) {
                    (false, SetPresenceStatus::Online) => PresenceStatus::Online,
                    (false, SetPresenceStatus::Away) => PresenceStatus::Away,
                    _ => PresenceStatus::Offline,
                },
                last_seen_ts: p.last_seen_ts,
            },
            None => Presence {
                user: user.to_owned(),
                status: PresenceStatus::Offline,
                last_seen_ts: None,
            },
        }
    }

    /// Frames for the watchers of `user`, addressed to their sessions.
    fn to_watchers(&self, presence: &Presence) -> Vec<(String, String, ServerFrame)> {
        self.watchers
            .get(&presence.user)
            .map(|set| {
                set.iter()
                    .map(|(edge, session)| {
                        (
                            edge.clone(),
                            session.clone(),
                            ServerFrame::Presence(presence.clone()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Presence and typing.
#[derive(Clone)]
pub struct SignalService {
    state: Arc<Mutex<State>>,
    edge_ttl: Duration,
    store: Arc<dyn Store>,
    delivery: Delivery,
}

impl std::fmt::Debug for SignalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalService")
    }
}

impl SignalService {
    /// A signal service; run [`SignalService::run_lapses`] beside it.
    /// Sessions of an edge that sends no heartbeat for `edge_ttl` are dropped.
    pub fn new(store: Arc<dyn Store>, delivery: Delivery, edge_ttl: Duration) -> Self {
        SignalService {
            state: Arc::new(Mutex::new(State::default())),
            edge_ttl,
            store,
            delivery,
        }
    }

    /// Drop the sessions of edges silent past the TTL, as if each had closed.
    async fn expire_edges(&self) {
        let now = Instant::now();
        let dead: Vec<(String, String, String)> = {
            let mut st = self.state();
            let gone: Vec<String> = st
                .edges
                .iter()
                .filter(|(_, t)| now.duration_since(**t) > self.edge_ttl)
                .map(|(e, _)| e.clone())
                .collect();
            for e in &gone {
                st.edges.remove(e);
            }
            st.users
                .iter()
                .flat_map(|(user, p)| {
                    p.sessions
                        .iter()
                        .filter(|(edge, _)| gone.contains(edge))
                        .map(|(edge, session)| (user.clone(), edge.clone(), session.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (user, edge, session) in dead {
            tracing::warn!(%edge, %user, "edge silent past its TTL: its session is dropped");
            self.session_closed(&user, &edge, &session).await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send `stop` for typing that lapsed, until cancelled.
    pub async fn run_lapses(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.expire_edges().await;
            let now = Instant::now();
            let lapsed: Vec<((String, String), Typing)> = {
                let mut st = self.state();
                let keys: Vec<_> = st
                    .typing
                    .iter()
                    .filter(|(_, t)| t.lapses_at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                keys.into_iter()
                    .filter_map(|k| st.typing.remove(&k).map(|t| (k, t)))
                    .collect()
            };
            for ((conversation, sender), t) in lapsed {
                self.send_typing(&conversation, &sender, TypingState::Stop, &t.recipients)
                    .await;
            }
        }
    }

    async fn send_typing(
        &self,
        conversation: &str,
        sender: &str,
        state: TypingState,
        recipients: &[String],
    ) {
        let frame = ServerFrame::Typing {
            conversation: conversation.to_owned(),
            user: sender.to_owned(),
            state,
        };
        let frames = recipients
            .iter()
            .map(|u| (u.clone(), frame.clone()))
            .collect();
        self.delivery.push(frames, Vec::new(), None).await;
    }

    async fn announce(&self, before: Presence, after: Presence) {
        if before.status == after.status {
            return;
        }
        let frames = self.state().to_watchers(&after);
        if !frames.is_empty() {
            self.delivery.push(Vec::new(), frames, None).await;
        }
    }
}

#[async_trait]
impl Signals for SignalService {
    async fn session_opened(&self, user: &str, edge: &str, session: &str) {
        let (before, after) = {
            let mut st = self.state();
            st.edges.entry(edge.to_owned()).or_insert_with(Instant::now);
            let before = st.visible(user);
            let p = st.users.entry(user.to_owned()).or_insert(UserPresence {
                sessions: HashSet::new(),
                status: SetPresenceStatus::Online,
                last_seen_ts: None,
            });
            if p.sessions.is_empty() && p.status == SetPresenceStatus::Away {
                // A user coming back is online again; invisible stays invisible.
                p.status = SetPresenceStatus::Online;
            }
            p.sessions.insert((edge.to_owned(), session.to_owned()));
            if p.status != SetPresenceStatus::Invisible {
                p.last_seen_ts = Some(now_ms());
            }
            (before, st.visible(user))
        };
        self.announce(before, after).await;
    }

    async fn session_closed(&self, user: &str, edge: &str, session: &str) {
        let key = (edge.to_owned(), session.to_owned());
        let (before, after) = {
            let mut st = self.state();
            if let Some(watched) = st.watching.remove(&key) {
                for w in watched {
                    if let Some(set) = st.watchers.get_mut(&w) {
                        set.remove(&key);
                        if set.is_empty() {
                            st.watchers.remove(&w);
                        }
                    }
                }
            }
            let before = st.visible(user);
            if let Some(p) = st.users.get_mut(user) {
                p.sessions.remove(&key);
                if p.sessions.is_empty() && p.status != SetPresenceStatus::Invisible {
                    p.last_seen_ts = Some(now_ms());
                }
            }
            (before, st.visible(user))
        };
        self.announce(before, after).await;
    }

    async fn set_status(&self, user: &str, status: SetPresenceStatus) {
        let (before, after) = {
            let mut st = self.state();
            let before = st.visible(user);
            let p = st.users.entry(user.to_owned()).or_insert(UserPresence {
                sessions: HashSet::new(),
                status,
                last_seen_ts: None,
            });
            if p.status != SetPresenceStatus::Invisible && !p.sessions.is_empty() {
                p.last_seen_ts = Some(now_ms());
            }
            p.status = status;
            (before, st.visible(user))
        };
        self.announce(before, after).await;
    }

    async fn watch(
        &self,
        edge: &str,
        session: &str,
        users: &[String],
    ) -> Result<Vec<Presence>, SignalError> {
        if users.len() > MAX_WATCH {
            return Err(SignalError {
                code: ErrorCode::TooLarge,
                message: format!("watch at most {MAX_WATCH} users at once"),
            });
        }
        let key = (edge.to_owned(), session.to_owned());
        let mut st = self.state();
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            st.watchers
                .entry(u.clone())
                .or_default()
                .insert(key.clone());
            st.watching
                .entry(key.clone())
                .or_default()
                .insert(u.clone());
            out.push(st.visible(u));
        }
        Ok(out)
    }

    async fn unwatch(&self, edge: &str, session: &str, users: &[String]) {
        let key = (edge.to_owned(), session.to_owned());
        let mut st = self.state();
        for u in users {
            if let Some(set) = st.watchers.get_mut(u) {
                set.remove(&key);
                if set.is_empty() {
                    st.watchers.remove(u);
                }
            }
            if let Some(set) = st.watching.get_mut(&key) {
                set.remove(u);
            }
        }
    }

    async fn heartbeat(&self, edge: &str) {
        self.state().edges.insert(edge.to_owned(), Instant::now());
    }

    async fn typing(
        &self,
        user: &str,
        conversation: &str,
        state: TypingState,
    ) -> Result<(), SignalError> {
        let key = (conversation.to_owned(), user.to_owned());
        let now = Instant::now();
        match state {
            TypingState::Start => {
                // A renewal inside the throttle window only pushes the lapse back.
                {
                    let mut st = self.state();
                    if let Some(t) = st.typing.get_mut(&key)
                        && now.duration_since(t.last_start) < TYPING_THROTTLE
                    {
                        t.lapses_at = now + TYPING_LAPSE;
                        return Ok(());
                    }
                }
                let recipients = self
                    .store
                    .typing_recipients(user, conversation)
                    .await
                    .map_err(|e| SignalError {
                        code: e.code(),
                        message: e.to_string(),
                    })?;
                self.state().typing.insert(
                    key,
                    Typing {
                        last_start: now,
                        lapses_at: now + TYPING_LAPSE,
                        recipients: recipients.clone(),
                    },
                );
                self.send_typing(conversation, user, TypingState::Start, &recipients)
                    .await;
            }
            TypingState::Stop => {
                let was = self.state().typing.remove(&key);
                if let Some(t) = was {
                    self.send_typing(conversation, user, TypingState::Stop, &t.recipients)
                        .await;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! On paused tokio time: `advance` jumps the clock, and waiting on a channel with a
    //! `timeout` lets the runtime move it from timer to timer (no real time passes).
    use super::*;
    use hubbub_protocol::ConversationKind;
    use hubbub_protocol::internal::ToEdge;
    use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
    use hubbub_registry::{LocalEdges, LocalRegistry, Registry};
    use hubbub_store::{AccountStore, ChatStore, NewConversation};
    use tokio::sync::mpsc::UnboundedReceiver;
    use tokio::time::advance;

    type Inbox = UnboundedReceiver<Vec<ToEdge>>;

    struct Setup {
        signals: SignalService,
        edges: Arc<LocalEdges>,
        _dir: tempfile::TempDir,
    }

    /// A signal service on a fresh store where alice and bob share conversation `c`, with
    /// bob's session `s-bob` registered on edge `e-bob`; `run_lapses` runs until the test
    /// ends.
    async fn setup(edge_ttl: Duration) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default())
            .expect("queue");
        let sqlite = hubbub_store::SqliteStore::open(queue).await.expect("store");
        for u in ["alice", "bob"] {
            sqlite.ensure_user(u, Some(u)).await.expect("user");
        }
        sqlite
            .create_conversation(NewConversation {
                id: "c".into(),
                creator: "alice".into(),
                kind: ConversationKind::Group,
                members: vec!["bob".into()],
                title: None,
                ephemeral: false,
                public: false,
                max_members: 10,
            })
            .await
            .expect("conversation");
        let registry = Arc::new(LocalRegistry::default());
        registry
            .register("bob", "s-bob", "e-bob")
            .await
            .expect("register");
        let edges = Arc::new(LocalEdges::default());
        let delivery = Delivery::new(registry, edges.clone());
        let signals = SignalService::new(Arc::new(sqlite), delivery, edge_ttl);
        // Runs until the runtime ends with the test.
        tokio::spawn(signals.clone().run_lapses(CancellationToken::new()));
        Setup {
            signals,
            edges,
            _dir: dir,
        }
    }

    /// The typing states in the batches an edge has now.
    fn typing_now(inbox: &mut Inbox) -> Vec<TypingState> {
        let mut out = Vec::new();
        while let Ok(batch) = inbox.try_recv() {
            out.extend(typing_states(batch));
        }
        out
    }

    fn typing_states(batch: Vec<ToEdge>) -> Vec<TypingState> {
        batch
            .into_iter()
            .flat_map(|item| match item {
                ToEdge::Events { frames, .. } => frames,
                other => panic!("not events: {other:?}"),
            })
            .map(|f| match f {
                ServerFrame::Typing {
                    conversation,
                    user,
                    state,
                } => {
                    assert_eq!((conversation.as_str(), user.as_str()), ("c", "alice"));
                    state
                }
                other => panic!("not typing: {other:?}"),
            })
            .collect()
    }

    /// The next batch, within `within` of (paused) time.
    async fn next_within(inbox: &mut Inbox, within: Duration) -> Vec<ToEdge> {
        tokio::time::timeout(within, inbox.recv())
            .await
            .expect("a batch in time")
            .expect("open")
    }

    /// Nothing reaches the edge for `d` of (paused) time.
    async fn quiet_for(inbox: &mut Inbox, d: Duration) {
        if let Ok(batch) = tokio::time::timeout(d, inbox.recv()).await {
            panic!("unexpected batch {batch:?}");
        }
    }

    async fn typing(signals: &SignalService, state: TypingState) {
        signals
            .typing("alice", "c", state)
            .await
            .expect("typing accepted");
    }

    /// A `start` that is not renewed becomes a `stop` from the server once `TYPING_LAPSE`
    /// has passed, not before, and only once.
    #[tokio::test(start_paused = true)]
    async fn an_unrenewed_start_lapses_into_a_stop() {
        let Setup {
            signals,
            edges,
            _dir,
        } = setup(Duration::from_secs(60)).await;
        let mut bob = edges.attach("e-bob");
        typing(&signals, TypingState::Start).await;
        assert_eq!(typing_now(&mut bob), [TypingState::Start]);
        advance(TYPING_LAPSE - Duration::from_millis(500)).await;
        quiet_for(&mut bob, Duration::from_millis(400)).await;
        // The lapse is due 100 ms from now; `run_lapses` looks every 250 ms.
        let stop = next_within(&mut bob, Duration::from_millis(400)).await;
        assert_eq!(typing_states(stop), [TypingState::Stop]);
        quiet_for(&mut bob, TYPING_LAPSE * 2).await;
    }

    /// A `start` renewed within `TYPING_THROTTLE` is not relayed but pushes the lapse back;
    /// one renewed after it is relayed again; an explicit `stop` leaves nothing to lapse.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_is_throttled_and_pushes_the_lapse_back() {
        let Setup {
            signals,
            edges,
            _dir,
        } = setup(Duration::from_secs(60)).await;
        let mut bob = edges.attach("e-bob");
        typing(&signals, TypingState::Start).await;
        assert_eq!(typing_now(&mut bob), [TypingState::Start]);
        advance(Duration::from_millis(500)).await;
        typing(&signals, TypingState::Start).await;
        assert_eq!(typing_now(&mut bob), [], "throttled");
        // Past the first start's lapse, not yet past the renewal's.
        advance(TYPING_LAPSE - Duration::from_millis(400)).await;
        quiet_for(&mut bob, Duration::from_millis(200)).await;
        let stop = next_within(&mut bob, Duration::from_millis(400)).await;
        assert_eq!(typing_states(stop), [TypingState::Stop]);

        typing(&signals, TypingState::Start).await;
        assert_eq!(typing_now(&mut bob), [TypingState::Start]);
        advance(TYPING_THROTTLE + Duration::from_millis(100)).await;
        typing(&signals, TypingState::Start).await;
        assert_eq!(
            typing_now(&mut bob),
            [TypingState::Start],
            "past the throttle"
        );
        typing(&signals, TypingState::Stop).await;
        assert_eq!(typing_now(&mut bob), [TypingState::Stop]);
        quiet_for(&mut bob, TYPING_LAPSE * 2).await;
    }

    fn presence(batch: Vec<ToEdge>) -> Vec<(String, PresenceStatus)> {
        batch
            .into_iter()
            .map(|item| match item {
                ToEdge::Reply {
                    session,
                    frame: ServerFrame::Presence(p),
                } => {
                    assert_eq!(session, "s-watch");
                    (p.user, p.status)
                }
                other => panic!("not presence: {other:?}"),
            })
            .collect()
    }

    /// A user whose edge stops sending heartbeats (it crashed) goes offline for watchers once
    /// the edge has been silent for more than the edge TTL; heartbeats keep an edge's users
    /// online however long they stay.
    #[tokio::test(start_paused = true)]
    async fn a_silent_edge_s_sessions_age_out() {
        let ttl = Duration::from_secs(10);
        let Setup {
            signals,
            edges,
            _dir,
        } = setup(ttl).await;
        let mut watcher = edges.attach("e-live");
        let status = |users: Vec<Presence>| users[0].status;
        signals.session_opened("watcher", "e-live", "s-watch").await;
        let now = signals
            .watch("e-live", "s-watch", &["target".to_owned()])
            .await
            .expect("watch");
        assert_eq!(status(now), PresenceStatus::Offline);
        signals.session_opened("target", "e-dead", "s-target").await;
        let online = next_within(&mut watcher, Duration::ZERO).await;
        assert_eq!(
            presence(online),
            [("target".into(), PresenceStatus::Online)]
        );

        // Both edges beat within the TTL: nothing changes.
        advance(ttl - Duration::from_secs(1)).await;
        quiet_for(&mut watcher, Duration::from_millis(500)).await;
        signals.heartbeat("e-live").await;
        signals.heartbeat("e-dead").await;
        advance(ttl - Duration::from_secs(1)).await;
        quiet_for(&mut watcher, Duration::from_millis(500)).await;
        // Now e-dead goes silent: 9.5 s since its beat, so 0.5 s of TTL left.
        signals.heartbeat("e-live").await;
        quiet_for(&mut watcher, Duration::from_millis(400)).await;
        let offline = next_within(&mut watcher, Duration::from_millis(500)).await;
        assert_eq!(
            presence(offline),
            [("target".into(), PresenceStatus::Offline)]
        );
        let target = signals
            .watch("e-live", "s-watch", &["target".to_owned()])
            .await
            .expect("watch");
        assert_eq!(status(target), PresenceStatus::Offline);
        // The watcher, on a live edge, is still online.
        let w = signals
            .watch("e-live", "s-watch", &["watcher".to_owned()])
            .await
            .expect("watch");
        assert_eq!(status(w), PresenceStatus::Online);
    }
}
