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
use std::time::{Duration, Instant};
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
    use super::*;
    use hubbub_protocol::internal::ToEdge;
    use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
    use hubbub_registry::{LocalEdges, LocalRegistry};

    /// A user whose edge stops sending heartbeats (it crashed) goes offline for watchers.
    #[tokio::test]
    async fn a_silent_edge_s_sessions_age_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default())
            .expect("queue");
        let store: Arc<dyn Store> =
            Arc::new(hubbub_store::SqliteStore::open(queue).await.expect("store"));
        let edges = Arc::new(LocalEdges::default());
        let mut watcher_inbox = edges.attach("live-edge");
        let delivery = Delivery::new(Arc::new(LocalRegistry::default()), edges.clone());
        let signals = SignalService::new(store, delivery, Duration::from_millis(300));
        let cancel = CancellationToken::new();
        tokio::spawn(signals.clone().run_lapses(cancel.clone()));
        // The live edge keeps beating; the other one never does after opening a session.
        let beating = signals.clone();
        let stop = cancel.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                beating.heartbeat("live-edge").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        signals
            .session_opened("watcher", "live-edge", "s-watch")
            .await;
        let now = signals
            .watch("live-edge", "s-watch", &["target".to_owned()])
            .await
            .expect("watch");
        assert_eq!(now[0].status, PresenceStatus::Offline);
        signals
            .session_opened("target", "dead-edge", "s-target")
            .await;
        let mut seen = Vec::new();
        while seen.last() != Some(&PresenceStatus::Offline) {
            let batch = tokio::time::timeout(Duration::from_secs(10), watcher_inbox.recv())
                .await
                .expect("in time")
                .expect("open");
            for item in batch {
                if let ToEdge::Reply {
                    frame: ServerFrame::Presence(p),
                    ..
                } = item
                {
                    seen.push(p.status);
                }
            }
        }
        assert_eq!(seen, [PresenceStatus::Online, PresenceStatus::Offline]);
        // The watcher, on a live edge, is still online.
        let w = signals
            .watch("live-edge", "s-watch", &["watcher".to_owned()])
            .await
            .expect("watch");
        assert_eq!(w[0].status, PresenceStatus::Online);
        cancel.cancel();
    }
}
