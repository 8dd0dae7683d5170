//! Both stores keep a group's `message.new` events as runs, written twice over: SQLite's in
//! Rust for its one writer (`inbox/sqlite.rs`), PostgreSQL's as PL/pgSQL functions that
//! concurrent writers run under row locks (`012_inbox_runs.sql`). Random sequences of sends,
//! runs of sends, blocks, leaves, acks and prunes applied to both must leave every user the
//! same stream (seqs, event types, message texts and senders), the same last seq and the same
//! acked seq; and PostgreSQL's must hold under writers running side by side.

use crate::conformance::{Env, postgres_env, sqlite_env};
use hubbub_protocol::{Attachment, ConversationKind, ServerFrame};
use hubbub_store::*;

const USERS: usize = 5;
const GROUPS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Send(usize, usize),
    SendRun(usize, Vec<usize>),
    Block(usize, usize),
    Unblock(usize, usize),
    Leave(usize, usize),
    Ack(usize, u64),
    Prune,
}

fn ops(rng: &mut fastrand::Rng, n: usize) -> Vec<Op> {
    (0..n)
        .map(|_| match rng.u8(0..20) {
            0..=8 => Op::Send(rng.usize(0..USERS), rng.usize(0..=GROUPS)),
            9..=11 => Op::SendRun(
                rng.usize(0..USERS),
                (0..rng.usize(1..5))
                    .map(|_| rng.usize(0..=GROUPS))
                    .collect(),
            ),
            12 | 13 => Op::Block(rng.usize(0..USERS), rng.usize(0..USERS)),
            14 => Op::Unblock(rng.usize(0..USERS), rng.usize(0..USERS)),
            15 => Op::Leave(rng.usize(1..USERS), rng.usize(0..GROUPS)),
            16..=18 => Op::Ack(rng.usize(0..USERS), rng.u64(0..40)),
            _ => Op::Prune,
        })
        .collect()
}

/// Conversation `c`: groups `g0`.. and, last, the direct conversation of users 0 and 1.
fn conversation(c: usize, direct: &str) -> String {
    if c == GROUPS {
        direct.to_owned()
    } else {
        format!("g{c}")
    }
}

/// A conversation `id` of `kind` that `creator` creates with `members`.
fn new_conversation(
    id: &str,
    kind: ConversationKind,
    creator: &str,
    members: Vec<String>,
) -> NewConversation {
    NewConversation {
        id: id.into(),
        creator: creator.into(),
        kind,
        members,
        title: None,
        ephemeral: false,
        public: false,
        max_members: 100,
    }
}

/// What a user's stream shows, independent of the backend's ids: per event its seq, type,
/// and for a message its text and sender (as an index).
type Stream = Vec<(u64, &'static str, Option<(String, usize)>)>;

struct World {
    env: Env,
    users: Vec<String>,
    direct: String,
    sent: usize,
}

impl World {
    async fn new(env: Env) -> World {
        let mut users = Vec::new();
        for i in 0..USERS {
            users.push(
                env.store
                    .create_user(&format!("u{i}"), "hash", None)
                    .await
                    .expect("user")
                    .id,
            );
        }
        for g in 0..GROUPS {
            // Group g holds user 0 and every user i with (i + g) odd or i == g + 1.
            let members: Vec<String> = (1..USERS)
                .filter(|i| (i + g) % 2 == 1 || *i == g + 1)
                .map(|i| users[i].clone())
                .collect();
            env.store
                .create_conversation(new_conversation(
                    &format!("g{g}"),
                    ConversationKind::Group,
                    &users[0],
                    members,
                ))
                .await
                .expect("group");
        }
        let direct = env
            .store
            .create_conversation(new_conversation(
                "d",
                ConversationKind::Direct,
                &users[0],
                vec![users[1].clone()],
            ))
            .await
            .expect("direct")
            .value
            .id;
        World {
            env,
            users,
            direct,
            sent: 0,
        }
    }

    fn message(&mut self, sender: usize, c: usize) -> NewMessage {
        self.sent += 1;
        NewMessage {
            sender: self.users[sender].clone(),
            conversation: conversation(c, &self.direct),
            client_msg_id: format!("k{}", self.sent),
            text: format!("t{}", self.sent),
            attachments: vec![Attachment { media: "m1".into() }],
            ..NewMessage::default()
        }
    }

    /// Apply one op; what it answered, reduced to whether it was accepted.
    async fn apply(&mut self, op: &Op) -> bool {
        let s = self.env.store.clone();
        match op {
            Op::Send(u, c) => s.send_message(self.message(*u, *c)).await.is_ok(),
            Op::SendRun(u, cs) => {
                let news = cs.iter().map(|c| self.message(*u, *c)).collect();
                let out = s.send_messages(news).await.expect("a run");
                out.iter().all(Result::is_ok)
            }
            Op::Block(a, b) => s.block(&self.users[*a], &self.users[*b]).await.is_ok(),
            Op::Unblock(a, b) => s.unblock(&self.users[*a], &self.users[*b]).await.is_ok(),
            Op::Leave(u, g) => s.leave(&self.users[*u], &format!("g{g}")).await.is_ok(),
            Op::Ack(u, seq) => s.ack(&self.users[*u], *seq).await.is_ok(),
            Op::Prune => s.prune_events(i64::MAX).await.is_ok(),
        }
    }

    async fn stream(&self, u: usize, after: u64) -> (Stream, u64, bool) {
        let r = self
            .env
            .store
            .events_after(&self.users[u], after, 1000)
            .await
            .expect("replay");
        let stream = r
            .frames
            .iter()
            .map(|f| {
                let message = match f {
                    ServerFrame::MessageNew { message, .. } => Some((
                        message.text.clone(),
                        self.users
                            .iter()
                            .position(|id| *id == message.sender)
                            .unwrap_or(usize::MAX),
                    )),
                    _ => None,
                };
                (f.seq().unwrap_or(0), f.type_name(), message)
            })
            .collect();
        (stream, r.last_seq, r.truncated)
    }
}

#[tokio::test]
async fn runs_on_sqlite_show_what_runs_on_postgres_show() {
    for seed in 0..12u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let ops = ops(&mut rng, 40);
        let mut lite = World::new(sqlite_env().await).await;
        let mut pg = World::new(postgres_env().await).await;
        for (i, op) in ops.iter().enumerate() {
            let (a, b) = (lite.apply(op).await, pg.apply(op).await);
            assert_eq!(
                a, b,
                "seed {seed}, op {i} {op:?}: accepted on one backend only"
            );
            for u in 0..USERS {
                let (l, p) = (
                    lite.env.store.last_seq(&lite.users[u]).await.expect("last"),
                    pg.env.store.last_seq(&pg.users[u]).await.expect("last"),
                );
                assert_eq!(l, p, "seed {seed}, op {i} {op:?}: user {u}'s last seq");
            }
        }
        for u in 0..USERS {
            for after in [0, 3, 7] {
                assert_eq!(
                    lite.stream(u, after).await,
                    pg.stream(u, after).await,
                    "seed {seed}: user {u}'s stream after {after} ({ops:?})"
                );
            }
            let (l, p) = (
                lite.env
                    .store
                    .acked_seq(&lite.users[u])
                    .await
                    .expect("acked"),
                pg.env.store.acked_seq(&pg.users[u]).await.expect("acked"),
            );
            assert_eq!(l, p, "seed {seed}: user {u}'s acked seq");
        }
    }
}

/// What a concurrent write said it appended: (user, seq, type, message id if a
/// `message.new`).
type Told = Vec<(String, u64, &'static str, Option<String>)>;

fn told(events: &[Event]) -> Told {
    events
        .iter()
        .map(|e| {
            let id = match &e.frame {
                ServerFrame::MessageNew { message, .. } => Some(message.id.clone()),
                _ => None,
            };
            (
                e.user.clone(),
                e.frame.seq().unwrap_or(0),
                e.frame.type_name(),
                id,
            )
        })
        .collect()
}

/// PostgreSQL runs under concurrent writers (two stores, as two worker processes, each with
/// its own group commit; a third changing a group's membership, reacting and acking): every
/// user's stream is gapless, holds each group message once, and says at each seq what the
/// write that took the seq said it was. A run closed while a send to its group is in flight
/// would hand one seq to two events, or skip one.
#[tokio::test]
async fn runs_on_postgres_agree_under_concurrent_writers() {
    let url = crate::conformance::fresh_database().await;
    let stores: Vec<PgStore> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(PgStore::connect(&url, 4).await.expect("pg store"));
        }
        v
    };
    let s = &stores[0];
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(
            s.create_user(&format!("c{i}"), "h", None)
                .await
                .expect("user")
                .id,
        );
    }
    // g0: everyone; g1: users 0..6; g2: users 3..8. User 7 leaves g0 and is added back.
    let groups: [(&str, std::ops::Range<usize>); 3] = [("g0", 0..8), ("g1", 0..6), ("g2", 3..8)];
    for (id, range) in &groups {
        s.create_conversation(new_conversation(
            id,
            ConversationKind::Group,
            &users[range.start],
            users[range.start + 1..range.end].to_vec(),
        ))
        .await
        .expect("group");
    }
    let direct = s
        .create_conversation(new_conversation(
            "d",
            ConversationKind::Direct,
            &users[0],
            vec![users[3].clone()],
        ))
        .await
        .expect("direct")
        .value
        .id;
    let all_told = std::sync::Arc::new(std::sync::Mutex::new(Told::new()));
    // Each sender sends only where it stays a member (users 0..7; user 7 churns).
    let targets: Vec<(usize, String)> = {
        let mut t = Vec::new();
        for (id, range) in &groups {
            for u in range.clone().filter(|u| *u != 7) {
                t.push((u, (*id).to_owned()));
            }
        }
        t.push((0, direct.clone()));
        t.push((3, direct.clone()));
        t
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (w, store) in stores.iter().take(2).enumerate() {
        let (store, users, targets, all_told) = (
            store.clone(),
            users.clone(),
            targets.clone(),
            all_told.clone(),
        );
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(w as u64);
            for n in 0..80 {
                let news: Vec<NewMessage> = (0..rng.usize(1..5))
                    .map(|k| {
                        let (u, c) = &targets[rng.usize(0..targets.len())];
                        NewMessage {
                            sender: users[*u].clone(),
                            conversation: c.clone(),
                            client_msg_id: format!("w{w}-{n}-{k}"),
                            text: "hi".into(),
                            ..NewMessage::default()
                        }
                    })
                    .collect();
                for r in store.send_messages(news).await.expect("a batch") {
                    let written = r.expect("a send of a member");
                    all_told.lock().unwrap().extend(told(&written.events));
                }
            }
        });
    }
    {
        let (store, users, all_told) = (stores[2].clone(), users.clone(), all_told.clone());
        tasks.spawn(async move {
            for n in 0..30 {
                let w = store.leave(&users[7], "g0").await.expect("leave");
                all_told.lock().unwrap().extend(told(&w.events));
                let w = store
                    .add_members(&users[0], "g0", &[users[7].clone()], 100)
                    .await
                    .expect("add back");
                all_told.lock().unwrap().extend(told(&w.events));
                // A reaction tells every member of g1 (a seq each, closing their runs).
                let m = store
                    .send_message(NewMessage {
                        sender: users[1].clone(),
                        conversation: "g1".into(),
                        client_msg_id: format!("r{n}"),
                        text: "react to me".into(),
                        ..NewMessage::default()
                    })
                    .await
                    .expect("send");
                all_told.lock().unwrap().extend(told(&m.events));
                let w = store
                    .react(&users[2], "g1", &m.value.id, "👍", true)
                    .await
                    .expect("react");
                all_told.lock().unwrap().extend(told(&w.events));
                for u in &users {
                    store.ack(u, 1 + n as u64 * 3).await.expect("ack");
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a writer");
    }
    let all_told = all_told.lock().unwrap().clone();
    for u in &users {
        let r = s.events_after(u, 0, 100_000).await.expect("replay");
        let seqs: Vec<u64> = r.frames.iter().filter_map(ServerFrame::seq).collect();
        assert_eq!(
            seqs,
            (1..=r.last_seq).collect::<Vec<_>>(),
            "{u}'s stream is gapless and ends at its last seq"
        );
        let mut ids = std::collections::HashSet::new();
        for f in &r.frames {
            if let ServerFrame::MessageNew { message, .. } = f {
                assert!(
                    ids.insert(message.id.clone()),
                    "{u} got {} twice",
                    message.id
                );
            }
        }
        for (_, seq, kind, id) in all_told.iter().filter(|t| t.0 == *u) {
            let f = &r.frames[(*seq - 1) as usize];
            let at = match f {
                ServerFrame::MessageNew { message, .. } => Some(message.id.clone()),
                _ => None,
            };
            assert_eq!(
                (f.type_name(), at),
                (*kind, id.clone()),
                "{u}'s seq {seq} is what the write said"
            );
        }
        assert!(s.acked_seq(u).await.expect("acked") <= r.last_seq);
    }
    // Every user but the one who churned got every message of their groups once.
    let sent: Vec<(String, String)> = all_told
        .iter()
        .filter_map(|t| t.3.clone().map(|id| (t.0.clone(), id)))
        .collect();
    for (id, range) in &groups {
        let mut messages = Vec::new();
        loop {
            let before = messages
                .last()
                .map(|m: &hubbub_protocol::Message| m.id.clone());
            let (page, more) = s
                .history(&users[range.start], id, before.as_deref(), 50)
                .await
                .expect("history");
            messages.extend(page);
            if !more {
                break;
            }
        }
        assert!(messages.len() > 20, "{id} got messages");
        for u in range.clone().filter(|u| *u != 7) {
            for m in &messages {
                assert!(
                    sent.contains(&(users[u].clone(), m.id.clone())),
                    "user {u} was told of {id}'s message {}",
                    m.id
                );
            }
        }
    }
}
