//! The behaviour every [`Signals`] implementation must show, written once: presence as
//! watchers see it across sessions opening and closing, statuses (`away`, `invisible`),
//! the watch limit, unwatching, a closed session's watches, an edge that dies; typing
//! relayed to the other members (less those who block the sender), the throttle on
//! renewals, and a `start` that lapses into a `stop`.
//!
//! A test drives the trait as edges do: a session is registered in the session registry and
//! then opened ([`Signals::session_opened`]); it is closed, then unregistered; every live
//! edge beats ([`Signals::heartbeat`]) several times per edge TTL. What the signals produce
//! is observed at the test edges ([`TestEdges`]): presence as `Reply` items to the watching
//! session, typing as `Events` items to the recipients.
//!
//! Instantiate with [`signals_conformance_tests!`](crate::signals_conformance_tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::signals::{MAX_WATCH, TYPING_LAPSE, TYPING_THROTTLE};
use async_trait::async_trait;
use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::{
    ConversationKind, ErrorCode, Presence, PresenceStatus, ServerFrame, SetPresenceStatus,
    TypingState,
};
use hubbub_registry::conformance::{Inbox, TestEdges};
use hubbub_registry::{Registry, SignalError, Signals};
use hubbub_store::{NewConversation, Store};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The [`Signals`] each edge uses: one shared by every edge in one process; one per edge
/// (each edge's own process) when roles run apart.
#[async_trait]
pub trait EdgeSignals: Send + Sync {
    /// The signals of edge `edge`.
    async fn on(&self, edge: &str) -> Arc<dyn Signals>;
}

/// The same [`Signals`] for every edge (one process).
pub struct SharedSignals(pub Arc<dyn Signals>);

#[async_trait]
impl EdgeSignals for SharedSignals {
    async fn on(&self, _edge: &str) -> Arc<dyn Signals> {
        self.0.clone()
    }
}

/// What one signals conformance test runs against.
pub struct SignalsEnv {
    /// The implementation under test, per edge.
    pub signals: Arc<dyn EdgeSignals>,
    /// The session registry the edges register sessions in (and deliveries read).
    pub registry: Arc<dyn Registry>,
    /// The edges the signals reach.
    pub edges: Arc<dyn TestEdges>,
    /// The store the signals read conversations from (the suite writes its fixtures there).
    pub store: Arc<dyn Store>,
    /// How long an edge that stopped beating keeps its sessions.
    pub edge_ttl: Duration,
    /// Whatever must live as long as the test (a temporary directory, tasks).
    pub guard: Box<dyn std::any::Any + Send>,
}

/// Instantiate every signals conformance test: `signals_conformance_tests!(make_env());`
/// or, with another test attribute (paused time, for one process),
/// `signals_conformance_tests!(#[tokio::test(start_paused = true)] make_env());`, where
/// `make_env()` is an expression of type `impl Future<Output = SignalsEnv>`.
#[macro_export]
macro_rules! signals_conformance_tests {
    (@each [$attr:meta] $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let env = $make.await;
                $crate::conformance::signals::$name(&env).await;
            }
        )*
    };
    (#[$attr:meta] $make:expr) => {
        $crate::signals_conformance_tests!(@each [$attr] $make;
            presence_follows_sessions, away_and_invisible_show_as_set,
            watch_is_limited_and_a_refused_watch_watches_nobody, unwatch_stops_events,
            a_closed_session_s_watches_end, a_silent_edge_s_users_go_offline,
            typing_reaches_the_other_members, a_renewal_within_the_throttle_is_not_relayed,
            an_unrenewed_start_lapses_into_a_stop);
    };
    ($make:expr) => {
        $crate::signals_conformance_tests!(#[tokio::test] $make);
    };
}

/// The edges and sessions of one test, driven as edges drive them.
struct World<'a> {
    env: &'a SignalsEnv,
    live: Arc<Mutex<HashSet<String>>>,
    beat: tokio::task::JoinHandle<()>,
}

impl Drop for World<'_> {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

impl<'a> World<'a> {
    /// Every live edge beats four times per edge TTL, as edges do.
    fn new(env: &'a SignalsEnv) -> Self {
        let live: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (signals, beating, every) = (env.signals.clone(), live.clone(), env.edge_ttl / 4);
        let beat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let edges: Vec<String> = beating.lock().unwrap().iter().cloned().collect();
                for e in edges {
                    signals.on(&e).await.heartbeat(&e).await;
                }
            }
        });
        World { env, live, beat }
    }

    async fn on(&self, edge: &str) -> Arc<dyn Signals> {
        self.env.signals.on(edge).await
    }

    /// Start an edge; it beats from now on.
    async fn edge(&self, edge: &str) -> Inbox {
        let inbox = self.env.edges.attach(edge).await;
        self.on(edge).await.heartbeat(edge).await;
        self.live.lock().unwrap().insert(edge.to_owned());
        inbox
    }

    /// The edge dies: no more beats, no more answers.
    async fn crash(&self, edge: &str) {
        self.live.lock().unwrap().remove(edge);
        self.env.edges.crash(edge).await;
    }

    async fn open(&self, user: &str, edge: &str, session: &str) {
        self.env
            .registry
            .register(user, session, edge)
            .await
            .expect("register");
        self.on(edge)
            .await
            .session_opened(user, edge, session)
            .await;
    }

    async fn close(&self, user: &str, edge: &str, session: &str) {
        self.on(edge)
            .await
            .session_closed(user, edge, session)
            .await;
        self.env
            .registry
            .unregister(user, session)
            .await
            .expect("unregister");
    }

    async fn watch(&self, edge: &str, session: &str, users: &[&str]) -> Vec<Presence> {
        let users: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
        self.on(edge)
            .await
            .watch(edge, session, &users)
            .await
            .expect("watch")
    }

    async fn set(&self, user: &str, edge: &str, status: SetPresenceStatus) {
        self.on(edge).await.set_status(user, status).await;
    }

    async fn typing(
        &self,
        user: &str,
        edge: &str,
        conversation: &str,
        state: TypingState,
    ) -> Result<(), SignalError> {
        self.on(edge).await.typing(user, conversation, state).await
    }

    /// Users, and conversation `c` of `creator` with `members`.
    async fn conversation(&self, id: &str, creator: &str, members: &[&str]) {
        let store = &self.env.store;
        for u in std::iter::once(&creator).chain(members) {
            store.ensure_user(u, Some(u)).await.expect("user");
        }
        store
            .create_conversation(NewConversation {
                id: id.into(),
                creator: creator.into(),
                kind: ConversationKind::Group,
                members: members.iter().map(|m| (*m).to_owned()).collect(),
                title: None,
                ephemeral: false,
                public: false,
                max_members: 16,
            })
            .await
            .expect("conversation");
    }
}

fn status_name(s: PresenceStatus) -> &'static str {
    match s {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

/// An item as a line: `session: user status` for presence, `recipient: sender state in
/// conversation` for typing.
fn line(item: &ToEdge) -> String {
    match item {
        ToEdge::Reply {
            session,
            frame: ServerFrame::Presence(p),
        } => format!("{session}: {} {}", p.user, status_name(p.status)),
        ToEdge::Events { user, frames, .. } => frames
            .iter()
            .map(|f| match f {
                ServerFrame::Typing {
                    conversation,
                    user: from,
                    state,
                } => {
                    let state = match state {
                        TypingState::Start => "start",
                        TypingState::Stop => "stop",
                    };
                    format!("{user}: {from} {state} in {conversation}")
                }
                other => format!("{user}: {other:?}"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => format!("{other:?}"),
    }
}

fn lines(items: &[ToEdge]) -> Vec<String> {
    items.iter().map(line).collect()
}

/// Everything up to and including `want` (as [`line`]s).
async fn until(inbox: &mut Inbox, want: &str) -> Vec<String> {
    lines(&inbox.until(want, |i| line(i) == want).await)
}

/// Everything until each of `wants` came (in any order), sorted.
async fn until_all(inbox: &mut Inbox, wants: &[&str]) -> Vec<String> {
    let mut missing: Vec<&str> = wants.to_vec();
    let mut seen = Vec::new();
    while !missing.is_empty() {
        let got = line(&inbox.next(&format!("{missing:?}; so far {seen:?}")).await);
        missing.retain(|w| *w != got);
        seen.push(got);
    }
    seen.sort();
    seen
}

fn sorted(wants: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = wants.iter().map(|w| (*w).to_owned()).collect();
    v.sort();
    v
}

/// The presence a `Reply` item carries.
fn presence(item: &ToEdge) -> &Presence {
    match item {
        ToEdge::Reply {
            frame: ServerFrame::Presence(p),
            ..
        } => p,
        other => panic!("not presence: {other:?}"),
    }
}

/// A watcher sees a user come online when their first session opens, and go offline when
/// their last one closes (not while another stays open), with when they were last seen;
/// watchers on several edges see the same.
pub async fn presence_follows_sessions(env: &SignalsEnv) {
    let w = World::new(env);
    let mut e1 = w.edge("e1").await;
    let _e2 = w.edge("e2").await;
    let mut e3 = w.edge("e3").await;
    w.open("watcher", "e1", "s-w").await;
    w.open("watcher2", "e3", "s-w2").await;
    let now = w.watch("e1", "s-w", &["bob"]).await;
    assert_eq!(
        now,
        [Presence {
            user: "bob".into(),
            status: PresenceStatus::Offline,
            last_seen_ts: None,
        }],
        "never seen"
    );
    w.watch("e3", "s-w2", &["bob"]).await;
    w.open("bob", "e2", "b1").await;
    assert_eq!(until(&mut e1, "s-w: bob online").await, ["s-w: bob online"]);
    assert_eq!(
        until(&mut e3, "s-w2: bob online").await,
        ["s-w2: bob online"]
    );

    // A second session (on the watcher's edge), then the first one closes: still online.
    w.open("bob", "e1", "b2").await;
    w.close("bob", "e2", "b1").await;
    w.close("bob", "e1", "b2").await;
    let got = e1
        .until("bob offline", |i| line(i) == "s-w: bob offline")
        .await;
    assert_eq!(
        lines(&got),
        ["s-w: bob offline"],
        "nothing while a session stayed open"
    );
    let last_seen = presence(&got[0]).last_seen_ts;
    assert!(
        last_seen.is_some(),
        "last seen when the last session closed"
    );
    assert_eq!(
        until(&mut e3, "s-w2: bob offline").await,
        ["s-w2: bob offline"]
    );
    let again = w.watch("e1", "s-w", &["bob"]).await;
    assert_eq!(
        (again[0].status, again[0].last_seen_ts),
        (PresenceStatus::Offline, last_seen)
    );
}

/// `away` shows as away; `invisible` as offline to everyone, while sessions come and go
/// unseen and `last_seen_ts` stays when the user hid; `online` shows again. A user who was
/// away and comes back (their first session opens) is online again.
pub async fn away_and_invisible_show_as_set(env: &SignalsEnv) {
    let w = World::new(env);
    let mut e1 = w.edge("e1").await;
    let _e2 = w.edge("e2").await;
    w.open("watcher", "e1", "s-w").await;
    w.watch("e1", "s-w", &["bob"]).await;
    w.open("bob", "e2", "b1").await;
    until(&mut e1, "s-w: bob online").await;

    w.set("bob", "e2", SetPresenceStatus::Away).await;
    assert_eq!(until(&mut e1, "s-w: bob away").await, ["s-w: bob away"]);
    w.set("bob", "e2", SetPresenceStatus::Invisible).await;
    let got = e1
        .until("bob offline", |i| line(i) == "s-w: bob offline")
        .await;
    assert_eq!(lines(&got), ["s-w: bob offline"]);
    let hid_at = presence(&got[0]).last_seen_ts;
    assert!(hid_at.is_some(), "last seen when hiding");

    // Invisible: a session closing and another opening show nothing.
    w.close("bob", "e2", "b1").await;
    w.open("bob", "e2", "b2").await;
    let now = w.watch("e1", "s-w", &["bob"]).await;
    assert_eq!(
        (now[0].status, now[0].last_seen_ts),
        (PresenceStatus::Offline, hid_at),
        "offline to everyone, last seen when hiding"
    );
    w.set("bob", "e2", SetPresenceStatus::Online).await;
    assert_eq!(
        until(&mut e1, "s-w: bob online").await,
        ["s-w: bob online"],
        "nothing seen while invisible"
    );

    // Away, gone, back: online again.
    w.set("bob", "e2", SetPresenceStatus::Away).await;
    assert_eq!(until(&mut e1, "s-w: bob away").await, ["s-w: bob away"]);
    w.close("bob", "e2", "b2").await;
    assert_eq!(
        until(&mut e1, "s-w: bob offline").await,
        ["s-w: bob offline"]
    );
    w.open("bob", "e2", "b3").await;
    assert_eq!(until(&mut e1, "s-w: bob online").await, ["s-w: bob online"]);
}

/// One `presence.watch` names at most [`MAX_WATCH`] users: more is `too_large`, and watches
/// none of them; up to it, the presence of each, in order.
pub async fn watch_is_limited_and_a_refused_watch_watches_nobody(env: &SignalsEnv) {
    let w = World::new(env);
    let mut e1 = w.edge("e1").await;
    let _e2 = w.edge("e2").await;
    w.open("watcher", "e1", "s-w").await;
    let users: Vec<String> = (0..=MAX_WATCH).map(|i| format!("u{i}")).collect();
    let signals = w.on("e1").await;
    let e = signals
        .watch("e1", "s-w", &users)
        .await
        .expect_err("one user too many");
    assert_eq!(e.code, ErrorCode::TooLarge);
    let now = signals
        .watch("e1", "s-w", &users[..MAX_WATCH])
        .await
        .expect("as many as allowed");
    assert_eq!(
        now.iter().map(|p| p.user.as_str()).collect::<Vec<_>>(),
        users[..MAX_WATCH]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "in order"
    );
    assert!(now.iter().all(|p| p.status == PresenceStatus::Offline));
    assert_eq!(signals.watch("e1", "s-w", &[]).await.expect("none"), []);

    // The last user was only in the refused watch: nothing is seen of them.
    let last = format!("u{MAX_WATCH}");
    w.open(&last, "e2", "s-last").await;
    w.open("u0", "e2", "s-0").await;
    assert_eq!(until(&mut e1, "s-w: u0 online").await, ["s-w: u0 online"]);
}

/// After `presence.unwatch`, no more events for those users (unwatching a user not watched
/// is harmless); watching again gives the presence now, and events again.
pub async fn unwatch_stops_events(env: &SignalsEnv) {
    let w = World::new(env);
    let mut e1 = w.edge("e1").await;
    let _e2 = w.edge("e2").await;
    w.open("watcher", "e1", "s-w").await;
    w.watch("e1", "s-w", &["bob", "carol"]).await;
    let unwatch = ["bob".to_owned(), "nobody".to_owned()];
    w.on("e1").await.unwatch("e1", "s-w", &unwatch).await;
    w.open("bob", "e2", "b1").await;
    w.open("carol", "e2", "c1").await;
    assert_eq!(
        until(&mut e1, "s-w: carol online").await,
        ["s-w: carol online"],
        "nothing of bob"
    );
    let now = w.watch("e1", "s-w", &["bob"]).await;
    assert_eq!(now[0].status, PresenceStatus::Online);
    w.close("bob", "e2", "b1").await;
    assert_eq!(
        until(&mut e1, "s-w: bob offline").await,
        ["s-w: bob offline"]
    );
}

/// A session's watches end when it closes; the user's other sessions keep theirs.
pub async fn a_closed_session_s_watches_end(env: &SignalsEnv) {
    let w = World::new(env);
    let mut e1 = w.edge("e1").await;
    let _e2 = w.edge("e2").await;
    w.open("watcher", "e1", "s-w1").await;
    w.open("watcher", "e1", "s-w2").await;
    w.watch("e1", "s-w1", &["bob"]).await;
    w.watch("e1", "s-w2", &["bob"]).await;
    w.close("watcher", "e1", "s-w1").await;
    w.open("bob", "e2", "b1").await;
    assert_eq!(
        until(&mut e1, "s-w2: bob online").await,
        ["s-w2: bob online"]
    );
    w.close("bob", "e2", "b1").await;
    assert_eq!(
        until(&mut e1, "s-w2: bob offline").await,
        ["s-w2: bob offline"],
        "nothing for the closed session"
    );
}

/// An edge that dies (stops beating, without closing its sessions) takes its users offline
/// for watchers elsewhere once the edge TTL has passed; edges that beat keep theirs.
pub async fn a_silent_edge_s_users_go_offline(env: &SignalsEnv) {
    let w = World::new(env);
    let mut e1 = w.edge("e1").await;
    let _e2 = w.edge("e2").await;
    w.open("watcher", "e1", "s-w").await;
    w.watch("e1", "s-w", &["bob"]).await;
    w.open("bob", "e2", "b1").await;
    until(&mut e1, "s-w: bob online").await;
    w.crash("e2").await;
    e1.patience += env.edge_ttl * 2;
    assert_eq!(
        until(&mut e1, "s-w: bob offline").await,
        ["s-w: bob offline"]
    );
    let me = w.watch("e1", "s-w", &["watcher"]).await;
    assert_eq!(
        me[0].status,
        PresenceStatus::Online,
        "a beating edge's user"
    );
}

/// `typing` reaches every other member of the conversation on whatever edge, once per user
/// and edge, and not the sender, nor a member who blocks the sender; `stop` too. A
/// non-member is refused (`forbidden`), an unknown conversation is `not_found`.
pub async fn typing_reaches_the_other_members(env: &SignalsEnv) {
    let w = World::new(env);
    w.conversation("c", "alice", &["bob", "carol", "dave"])
        .await;
    env.store
        .ensure_user("eve", Some("eve"))
        .await
        .expect("eve");
    env.store.block("dave", "alice").await.expect("block");
    let mut e1 = w.edge("e1").await;
    let mut e2 = w.edge("e2").await;
    w.open("alice", "e1", "a1").await;
    w.open("carol", "e1", "c1").await;
    w.open("eve", "e1", "v1").await;
    w.open("bob", "e2", "b1").await;
    w.open("bob", "e2", "b2").await;
    w.open("dave", "e2", "d1").await;

    w.typing("alice", "e1", "c", TypingState::Start)
        .await
        .expect("typing");
    let start = ["carol: alice start in c"];
    assert_eq!(until_all(&mut e1, &start).await, sorted(&start));
    let start = ["bob: alice start in c"];
    assert_eq!(until_all(&mut e2, &start).await, sorted(&start));
    w.typing("alice", "e1", "c", TypingState::Stop)
        .await
        .expect("typing");
    let stop = ["carol: alice stop in c"];
    assert_eq!(until_all(&mut e1, &stop).await, sorted(&stop));
    let stop = ["bob: alice stop in c"];
    assert_eq!(until_all(&mut e2, &stop).await, sorted(&stop));

    // Carol types: alice and dave (who blocks only alice) hear it, carol does not.
    w.typing("carol", "e1", "c", TypingState::Start)
        .await
        .expect("typing");
    let on_e1 = ["alice: carol start in c"];
    assert_eq!(until_all(&mut e1, &on_e1).await, sorted(&on_e1));
    let on_e2 = ["bob: carol start in c", "dave: carol start in c"];
    assert_eq!(until_all(&mut e2, &on_e2).await, sorted(&on_e2));
    // Her stop, after anything more of her start (nothing) on each edge.
    w.typing("carol", "e1", "c", TypingState::Stop)
        .await
        .expect("typing");
    let on_e1 = ["alice: carol stop in c"];
    assert_eq!(until_all(&mut e1, &on_e1).await, sorted(&on_e1));
    let on_e2 = ["bob: carol stop in c", "dave: carol stop in c"];
    assert_eq!(until_all(&mut e2, &on_e2).await, sorted(&on_e2));

    let e = w
        .typing("eve", "e1", "c", TypingState::Start)
        .await
        .expect_err("not a member");
    assert_eq!(e.code, ErrorCode::Forbidden);
    let e = w
        .typing("alice", "e1", "nowhere", TypingState::Start)
        .await
        .expect_err("no such conversation");
    assert_eq!(e.code, ErrorCode::NotFound);
}

/// A `start` renewed within [`TYPING_THROTTLE`] of the last one relayed is not relayed
/// again (when the renewal came later than that, relaying it is right too).
pub async fn a_renewal_within_the_throttle_is_not_relayed(env: &SignalsEnv) {
    let w = World::new(env);
    w.conversation("c", "alice", &["bob"]).await;
    let _e1 = w.edge("e1").await;
    let mut e2 = w.edge("e2").await;
    w.open("alice", "e1", "a1").await;
    w.open("bob", "e2", "b1").await;
    let t0 = Instant::now();
    for _ in 0..2 {
        w.typing("alice", "e1", "c", TypingState::Start)
            .await
            .expect("typing");
    }
    let within = t0.elapsed() < TYPING_THROTTLE;
    w.typing("alice", "e1", "c", TypingState::Stop)
        .await
        .expect("typing");
    let got = until(&mut e2, "bob: alice stop in c").await;
    let once = ["bob: alice start in c", "bob: alice stop in c"];
    if within {
        assert_eq!(got, once, "the renewal is throttled");
    } else {
        let twice = [once[0], once[0], once[1]];
        assert!(got == once || got == twice, "{got:?}");
    }
}

/// A `start` not renewed becomes a `stop` from the server once it lapses
/// ([`TYPING_LAPSE`]), once; a `stop` with nothing started relays nothing.
pub async fn an_unrenewed_start_lapses_into_a_stop(env: &SignalsEnv) {
    let w = World::new(env);
    w.conversation("c", "alice", &["bob"]).await;
    let _e1 = w.edge("e1").await;
    let mut e2 = w.edge("e2").await;
    w.open("alice", "e1", "a1").await;
    w.open("bob", "e2", "b1").await;
    w.typing("alice", "e1", "c", TypingState::Start)
        .await
        .expect("typing");
    assert_eq!(
        until(&mut e2, "bob: alice start in c").await,
        ["bob: alice start in c"]
    );
    let patience = e2.patience;
    e2.patience += TYPING_LAPSE;
    assert_eq!(
        until(&mut e2, "bob: alice stop in c").await,
        ["bob: alice stop in c"]
    );
    e2.patience = patience;
    // Nothing left to stop; the next start is relayed, and nothing came between.
    w.typing("alice", "e1", "c", TypingState::Stop)
        .await
        .expect("typing");
    w.typing("alice", "e1", "c", TypingState::Start)
        .await
        .expect("typing");
    assert_eq!(
        until(&mut e2, "bob: alice start in c").await,
        ["bob: alice start in c"],
        "one stop only"
    );
}
