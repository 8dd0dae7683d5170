//! Presence when roles run apart: what a watcher sees is computed from what every edge
//! shares in Redis, not from one process's memory.
//!
//! A user's presence is a function of the session registry (is any session of theirs open on
//! a live edge?) and two Redis hashes: the status they set (`online`, `away`, `invisible`)
//! and when they were last seen. Each edge keeps only its own watchers. When something that
//! may change a user's presence happens on any edge (a session opens or closes, a status is
//! set), that edge publishes the user's id on a pub/sub channel; every edge with watchers of
//! that user recomputes it and tells them if what they see changed. Every few seconds each
//! edge also recomputes everyone its sessions watch, which is how the users of an edge that
//! died go offline for watchers elsewhere (its registry entry expires; nobody publishes).
//!
//! Typing is unchanged (the local [`SignalService`] relays it through the registry and the
//! edge link, which reach every edge).

use async_trait::async_trait;
use futures_util::StreamExt;
use hubbub_protocol::{
    ErrorCode, Presence, PresenceStatus, ServerFrame, SetPresenceStatus, TypingState,
};
use hubbub_queue::clock::now_ms;
use hubbub_registry::{Delivery, Registry, SignalError, Signals};
use hubbub_services::signals::{MAX_WATCH, SignalService};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an edge recomputes the presence of everyone its sessions watch.
pub const REEVALUATE_EVERY: Duration = Duration::from_secs(2);

type SessionKey = (String, String);

#[derive(Default)]
struct Watches {
    watchers: HashMap<String, HashSet<SessionKey>>,
    watching: HashMap<SessionKey, HashSet<String>>,
    /// What this edge's watchers of each user were last told.
    last_sent: HashMap<String, Presence>,
}

/// The [`Signals`] of an edge when roles run apart.
#[derive(Clone)]
pub struct ClusterSignals {
    local: SignalService,
    registry: Arc<dyn Registry>,
    delivery: Delivery,
    conn: ConnectionManager,
    url: String,
    namespace: String,
    watches: Arc<Mutex<Watches>>,
}

fn parse_status(s: Option<String>) -> SetPresenceStatus {
    match s.as_deref() {
        Some("away") => SetPresenceStatus::Away,
        Some("invisible") => SetPresenceStatus::Invisible,
        _ => SetPresenceStatus::Online,
    }
}

fn status_name(s: SetPresenceStatus) -> &'static str {
    match s {
        SetPresenceStatus::Online => "online",
        SetPresenceStatus::Away => "away",
        SetPresenceStatus::Invisible => "invisible",
    }
}

impl ClusterSignals {
    /// Presence over `registry` and the Redis at `url`/`conn` (keys under `namespace`);
    /// typing through `local`.
    pub fn new(
        local: SignalService,
        registry: Arc<dyn Registry>,
        delivery: Delivery,
        conn: ConnectionManager,
        url: &str,
        namespace: &str,
    ) -> Self {
        ClusterSignals {
            local,
            registry,
            delivery,
            conn,
            url: url.to_owned(),
            namespace: namespace.to_owned(),
            watches: Arc::default(),
        }
    }

    fn key(&self, what: &str) -> String {
        format!("{}:pres:{what}", self.namespace)
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The presence of these users now.
    async fn evaluate(&self, users: &[String]) -> Result<Vec<Presence>, SignalError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let down = |e: String| SignalError::new(ErrorCode::Unavailable, e);
        let sessions = self
            .registry
            .sessions_of(users)
            .await
            .map_err(|e| down(e.to_string()))?;
        let mut conn = self.conn.clone();
        let (statuses, seen): (Vec<Option<String>>, Vec<Option<i64>>) = redis::pipe()
            .cmd("HMGET")
            .arg(self.key("status"))
            .arg(users)
            .cmd("HMGET")
            .arg(self.key("seen"))
            .arg(users)
            .query_async(&mut conn)
            .await
            .map_err(|e| down(e.to_string()))?;
        Ok(users
            .iter()
            .zip(sessions)
            .zip(statuses.into_iter().zip(seen))
            .map(|((u, s), (st, seen))| Presence {
                user: u.clone(),
                status: match (s.is_empty(), parse_status(st)) {
                    (false, SetPresenceStatus::Online) => PresenceStatus::Online,
                    (false, SetPresenceStatus::Away) => PresenceStatus::Away,
                    _ => PresenceStatus::Offline,
                },
                last_seen_ts: seen,
            })
            .collect())
    }

    async fn status(&self, user: &str) -> SetPresenceStatus {
        let mut conn = self.conn.clone();
        let s: Option<String> = conn.hget(self.key("status"), user).await.unwrap_or(None);
        parse_status(s)
    }

    async fn mark_seen(&self, user: &str) {
        let mut conn = self.conn.clone();
        let _: Result<(), _> = conn.hset(self.key("seen"), user, now_ms()).await;
    }

    /// Tell every edge that `user`'s presence may have changed.
    async fn publish(&self, user: &str) {
        let mut conn = self.conn.clone();
        if let Err(e) = conn.publish::<_, _, i64>(self.key("changes"), user).await {
            tracing::debug!(error = %e, "presence change not published");
        }
    }

    /// Recompute these users and tell this edge's watchers what changed.
    async fn refresh(&self, users: &[String]) {
        let watched: Vec<String> = {
            let w = self.watches();
            users
                .iter()
                .filter(|u| w.watchers.contains_key(*u))
                .cloned()
                .collect()
        };
        let Ok(now) = self.evaluate(&watched).await else {
            return;
        };
        let mut replies = Vec::new();
        {
            let mut w = self.watches();
            for p in now {
                let old = w.last_sent.get(&p.user);
                if old.is_some_and(|o| o.status == p.status) {
                    continue;
                }
                for (edge, session) in w.watchers.get(&p.user).into_iter().flatten() {
                    replies.push((
                        edge.clone(),
                        session.clone(),
                        ServerFrame::Presence(p.clone()),
                    ));
                }
                w.last_sent.insert(p.user.clone(), p);
            }
        }
        if !replies.is_empty() {
            self.delivery.push(Vec::new(), replies, None).await;
        }
    }

    /// Follow the channel and re-evaluate periodically, until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            if let Err(e) = self.follow(&cancel).await {
                tracing::warn!(error = %e, "presence channel lost; reconnecting");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = cancel.cancelled() => break,
            }
        }
    }

    async fn follow(&self, cancel: &CancellationToken) -> Result<(), redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(self.key("changes")).await?;
        let mut messages = pubsub.into_on_message();
        let mut tick = tokio::time::interval(REEVALUATE_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let all: Vec<String> = self.watches().watchers.keys().cloned().collect();
                    self.refresh(&all).await;
                }
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub closed")));
                    };
                    if let Ok(user) = std::str::from_utf8(msg.get_payload_bytes()) {
                        self.refresh(&[user.to_owned()]).await;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Signals for ClusterSignals {
    async fn session_opened(&self, user: &str, edge: &str, _session: &str) {
        self.local.heartbeat(edge).await;
        let status = self.status(user).await;
        if status == SetPresenceStatus::Away {
            // A user coming back is online again (invisible stays invisible).
            let only = self
                .registry
                .sessions(user)
                .await
                .map(|s| s.len() <= 1)
                .unwrap_or(false);
            if only {
                let mut conn = self.conn.clone();
                let _: Result<(), _> = conn.hdel(self.key("status"), user).await;
            }
        }
        if status != SetPresenceStatus::Invisible {
            self.mark_seen(user).await;
        }
        self.publish(user).await;
    }

    async fn session_closed(&self, user: &str, edge: &str, session: &str) {
        let key = (edge.to_owned(), session.to_owned());
        {
            let mut w = self.watches();
            if let Some(watched) = w.watching.remove(&key) {
                for u in watched {
                    if let Some(set) = w.watchers.get_mut(&u) {
                        set.remove(&key);
                        if set.is_empty() {
                            w.watchers.remove(&u);
                            w.last_sent.remove(&u);
                        }
                    }
                }
            }
        }
        // The edge unregisters the session right after; do it first so the change is seen.
        let _ = self.registry.unregister(user, session).await;
        if self.status(user).await != SetPresenceStatus::Invisible {
            self.mark_seen(user).await;
        }
        self.publish(user).await;
    }

    async fn set_status(&self, user: &str, status: SetPresenceStatus) {
        if self.status(user).await != SetPresenceStatus::Invisible {
            self.mark_seen(user).await;
        }
        let mut conn = self.conn.clone();
        let _: Result<(), _> = conn
            .hset(self.key("status"), user, status_name(status))
            .await;
        self.publish(user).await;
    }

    async fn watch(
        &self,
        edge: &str,
        session: &str,
        users: &[String],
    ) -> Result<Vec<Presence>, SignalError> {
        if users.len() > MAX_WATCH {
            return Err(SignalError::new(
                ErrorCode::TooLarge,
                format!("watch at most {MAX_WATCH} users at once"),
            ));
        }
        let now = self.evaluate(users).await?;
        let key = (edge.to_owned(), session.to_owned());
        let mut w = self.watches();
        for p in &now {
            w.watchers
                .entry(p.user.clone())
                .or_default()
                .insert(key.clone());
            w.watching
                .entry(key.clone())
                .or_default()
                .insert(p.user.clone());
            w.last_sent.insert(p.user.clone(), p.clone());
        }
        Ok(now)
    }

    async fn unwatch(&self, edge: &str, session: &str, users: &[String]) {
        let key = (edge.to_owned(), session.to_owned());
        let mut w = self.watches();
        for u in users {
            if let Some(set) = w.watchers.get_mut(u) {
                set.remove(&key);
                if set.is_empty() {
                    w.watchers.remove(u);
                    w.last_sent.remove(u);
                }
            }
            if let Some(set) = w.watching.get_mut(&key) {
                set.remove(u);
            }
        }
    }

    async fn typing(
        &self,
        user: &str,
        conversation: &str,
        state: TypingState,
    ) -> Result<(), SignalError> {
        self.local.typing(user, conversation, state).await
    }

    async fn heartbeat(&self, edge: &str) {
        self.local.heartbeat(edge).await;
    }
}
