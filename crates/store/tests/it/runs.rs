//! SQLite keeps a group's `message.new` events as runs (`inbox/sqlite.rs`), PostgreSQL as a
//! row per event: random sequences of sends, runs of sends, blocks, leaves, acks and prunes
//! applied to both must leave every user the same stream (seqs, event types, message texts
//! and senders), the same last seq and the same acked seq.

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
                .create_conversation(NewConversation {
                    id: format!("g{g}"),
                    creator: users[0].clone(),
                    kind: ConversationKind::Group,
                    members,
                    title: None,
                    ephemeral: false,
                    public: false,
                    max_members: 100,
                })
                .await
                .expect("group");
        }
        let direct = env
            .store
            .create_conversation(NewConversation {
                id: "d".into(),
                creator: users[0].clone(),
                kind: ConversationKind::Direct,
                members: vec![users[1].clone()],
                title: None,
                ephemeral: false,
                public: false,
                max_members: 100,
            })
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
async fn runs_on_sqlite_show_what_rows_on_postgres_show() {
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
