//! Crash test: the real `hubbub serve` process is killed with SIGKILL while two users send
//! messages to a group, react to, edit and delete some of them, three times, and restarted
//! each time. Then every message whose send got `ok` must be in history exactly once and
//! must have reached each member exactly once across `sync` (seqs 1..n, no gap, no repeat);
//! messages whose outcome was unknown are sent again with the same `client_msg_id`, and
//! changes whose outcome was unknown are made again, which must be safe; every change shows
//! in history and reached each member exactly once (one `reaction.updated` or
//! `message.updated` per changed message).

use crate::support::ChildGuard;
use crate::support::PATIENCE;
use hubbub::client::Client;
use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn spawn_server(dir: &std::path::Path, port: u16) -> ChildGuard {
    // The server's log goes to a file beside its data, shown if it does not come up.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("log");
    ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_hubbub"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            .env("HUBBUB_LIMITS__FRAMES_PER_S", "10000")
            .env("HUBBUB_LIMITS__BURST", "10000")
            .env("HUBBUB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn hubbub serve"),
    )
}

/// Wait until the server is up; if it does not come up, show its log.
async fn wait_ready(child: &mut Child, dir: &std::path::Path) {
    let log = dir.join("server.log");
    crate::support::wait_up(child, || std::fs::read_to_string(&log).unwrap_or_default()).await;
}

/// A change made to a sent message (every fourth message has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    React,
    Edit,
    Delete,
}

impl Change {
    /// The change made to message `n` of a sender, if any.
    fn of(n: usize) -> Option<Change> {
        [
            None,
            Some(Change::React),
            Some(Change::Edit),
            Some(Change::Delete),
        ][n % 4]
    }

    fn request(self, conversation: &str, message: &str, key: &str) -> Request {
        let (conversation, message) = (conversation.to_owned(), message.to_owned());
        match self {
            Change::React => Request::ReactionAdd {
                conversation,
                message,
                emoji: "👍".into(),
            },
            Change::Edit => Request::MessageEdit {
                conversation,
                message,
                text: format!("{key} edited"),
            },
            Change::Delete => Request::MessageDelete {
                conversation,
                message,
            },
        }
    }
}

#[derive(Default)]
struct Outcomes {
    acked: BTreeSet<String>,
    unknown: BTreeSet<String>,
    /// The changes tried, by message key: the message's id, the change, whether it got `ok`.
    changes: BTreeMap<String, (String, Change, bool)>,
    /// How many sends were acknowledged so far, for waiting on traffic.
    acked_count: tokio::sync::watch::Sender<usize>,
}

/// Send numbered messages until the connection breaks; record each outcome.
async fn sender(
    base: String,
    token: String,
    conversation: String,
    who: &'static str,
    start: usize,
    out: Arc<Mutex<Outcomes>>,
) {
    let Ok((mut socket, _)) = Client::new(&base).connect(&token).await else {
        return;
    };
    for n in start.. {
        let key = format!("{who}-{n}");
        out.lock().expect("lock").unknown.insert(key.clone());
        let req = Request::MessageSend {
            conversation: conversation.clone(),
            client_msg_id: key.clone(),
            text: key.clone(),
            attachments: None,
            reply_to: None,
            thread: None,
            mentions: None,
        };
        let id = match socket.request(req).await {
            Ok(ServerFrame::Ok {
                data: ReplyData::Message { message },
                ..
            }) => {
                let mut o = out.lock().expect("lock");
                o.unknown.remove(&key);
                o.acked.insert(key.clone());
                o.acked_count.send_replace(o.acked.len());
                message.id
            }
            // An error reply or a dropped connection: the outcome is unknown.
            _ => return,
        };
        let Some(change) = Change::of(n) else {
            continue;
        };
        out.lock()
            .expect("lock")
            .changes
            .insert(key.clone(), (id.clone(), change, false));
        match socket
            .request(change.request(&conversation, &id, &key))
            .await
        {
            Ok(ServerFrame::Ok { .. }) => {
                if let Some(c) = out.lock().expect("lock").changes.get_mut(&key) {
                    c.2 = true;
                }
            }
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_traffic_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_server(dir.path(), port);
    wait_ready(&mut child, dir.path()).await;
    let client = Client::new(&base);
    let mut tokens = HashMap::new();
    let mut ids = Vec::new();
    for h in ["alice", "bob", "carol"] {
        let auth = client.signup(h, "password123").await.expect("signup");
        ids.push(auth.user.id.clone());
        tokens.insert(h, auth.access_token);
    }
    let (mut a, _) = client.connect(&tokens["alice"]).await.expect("connect");
    let reply = a
        .request(Request::ConversationCreate {
            kind: ConversationKind::Group,
            members: ids[1..].to_vec(),
            title: None,
            ephemeral: None,
            idempotency_key: None,
            public: None,
        })
        .await
        .expect("create");
    let ServerFrame::Ok {
        data: ReplyData::Conversation { conversation },
        ..
    } = reply
    else {
        panic!("{reply:?}")
    };
    let conversation = conversation.id;
    a.close().await;

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let rng = fastrand_seed();
    for round in 0..3 {
        let senders: Vec<_> = [("alice", 0), ("bob", 1)]
            .into_iter()
            .map(|(who, i)| {
                let start = (round * 2 + i) * 1_000_000;
                tokio::spawn(sender(
                    base.clone(),
                    tokens[who].clone(),
                    conversation.clone(),
                    who,
                    start,
                    outcomes.clone(),
                ))
            })
            .collect();
        // Kill once this round's traffic flows (some sends acknowledged, however slow the
        // machine), at a random moment after that.
        let mut acked = outcomes.lock().expect("lock").acked_count.subscribe();
        let before = *acked.borrow();
        let _ = tokio::time::timeout(PATIENCE, acked.wait_for(|n| *n >= before + 10)).await;
        tokio::time::sleep(Duration::from_millis(
            100 + (rng + round as u64 * 7919) % 500,
        ))
        .await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        for s in senders {
            let _ = tokio::time::timeout(PATIENCE, s).await;
        }
        child = spawn_server(dir.path(), port);
        wait_ready(&mut child, dir.path()).await;
    }

    // Outcome unknown: send again with the same client_msg_id.
    let (acked, unknown) = {
        let o = outcomes.lock().expect("lock");
        (o.acked.clone(), o.unknown.clone())
    };
    assert!(acked.len() > 20, "traffic flowed ({} acked)", acked.len());
    for key in &unknown {
        let who = if key.starts_with("alice") {
            "alice"
        } else {
            "bob"
        };
        let (mut s, _) = client.connect(&tokens[who]).await.expect("connect");
        let req = Request::MessageSend {
            conversation: conversation.clone(),
            client_msg_id: key.clone(),
            text: key.clone(),
            attachments: None,
            reply_to: None,
            thread: None,
            mentions: None,
        };
        let reply = s.request(req).await.expect("retry");
        assert!(
            matches!(reply, ServerFrame::Ok { .. }),
            "retrying {key}: {reply:?}"
        );
        s.close().await;
    }
    let all: BTreeSet<String> = acked.union(&unknown).cloned().collect();
    // Changes whose outcome is unknown: made again (each is idempotent).
    let changes = outcomes.lock().expect("lock").changes.clone();
    assert!(
        changes.values().filter(|c| c.2).count() > 5,
        "changes flowed"
    );
    for (key, (id, change, done)) in &changes {
        if *done {
            continue;
        }
        let who = if key.starts_with("alice") {
            "alice"
        } else {
            "bob"
        };
        let (mut s, _) = client.connect(&tokens[who]).await.expect("connect");
        let reply = s
            .request(change.request(&conversation, id, key))
            .await
            .expect("retry");
        assert!(
            matches!(reply, ServerFrame::Ok { .. }),
            "retrying {change:?} of {key}: {reply:?}"
        );
        s.close().await;
    }

    // History: every message exactly once.
    let (mut s, _) = client.connect(&tokens["carol"]).await.expect("connect");
    let mut seen: Vec<String> = Vec::new();
    let mut before = None;
    loop {
        let reply = s
            .request(Request::MessageHistory {
                conversation: conversation.clone(),
                before: before.clone(),
                limit: Some(100),
                thread: None,
            })
            .await
            .expect("history");
        let ServerFrame::Ok {
            data: ReplyData::History { messages, more },
            ..
        } = reply
        else {
            panic!("{reply:?}")
        };
        before = messages.last().map(|m| m.id.clone());
        for m in &messages {
            // Every change shows, once.
            let change = changes.get(&m.client_msg_id).map(|c| c.1);
            let edited = format!("{} edited", m.client_msg_id);
            match change {
                Some(Change::React) => {
                    assert_eq!(m.reactions.len(), 1, "{m:?}");
                    assert_eq!(m.reactions[0].count, 1, "{m:?}");
                }
                Some(Change::Edit) => assert_eq!(m.text, edited, "{m:?}"),
                Some(Change::Delete) => assert!(m.deleted && m.text.is_empty(), "{m:?}"),
                None => assert!(
                    m.text == m.client_msg_id && m.reactions.is_empty() && !m.deleted,
                    "{m:?}"
                ),
            }
        }
        seen.extend(messages.into_iter().map(|m| m.client_msg_id));
        if !more {
            break;
        }
    }
    s.close().await;
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no message stored twice");
    assert_eq!(unique, all, "every sent message stored");

    // Every member got every message exactly once across sync, with gapless seqs.
    for who in ["alice", "bob", "carol"] {
        let (mut s, hello) = client.connect(&tokens[who]).await.expect("connect");
        let ServerFrame::Hello { last_seq, .. } = hello else {
            panic!("hello")
        };
        s.send_text(r#"{"type":"sync","id":"all","after_seq":0}"#)
            .await
            .expect("sync");
        let mut seqs = Vec::new();
        let mut keys = Vec::new();
        // Message id → how many `reaction.updated` / `message.updated` events.
        let mut told: BTreeMap<(String, &str), usize> = BTreeMap::new();
        loop {
            let f = tokio::time::timeout(PATIENCE, s.next_frame())
                .await
                .expect("in time")
                .expect("read")
                .expect("open");
            match f {
                ServerFrame::Ok { id, .. } if id == "all" => break,
                ServerFrame::MessageNew { seq, message } => {
                    seqs.push(seq);
                    keys.push(message.client_msg_id.clone());
                }
                ServerFrame::ReactionUpdated { seq, message, .. } => {
                    seqs.push(seq);
                    *told.entry((message, "reaction")).or_default() += 1;
                }
                ServerFrame::MessageUpdated { seq, message } => {
                    seqs.push(seq);
                    *told.entry((message.id, "update")).or_default() += 1;
                }
                f => seqs.extend(f.seq()),
            }
        }
        assert_eq!(
            seqs,
            (1..=last_seq).collect::<Vec<_>>(),
            "{who}: seqs 1..=last_seq"
        );
        let got: BTreeSet<String> = keys.iter().cloned().collect();
        assert_eq!(got.len(), keys.len(), "{who}: no message delivered twice");
        assert_eq!(got, all, "{who}: every message delivered");
        let want: BTreeMap<(String, &str), usize> = changes
            .values()
            .map(|(id, change, _)| {
                let kind = if *change == Change::React {
                    "reaction"
                } else {
                    "update"
                };
                ((id.clone(), kind), 1)
            })
            .collect();
        assert_eq!(told, want, "{who}: each change told once");
        s.close().await;
    }
    println!(
        "server crash test: 3 kills; {} sends acked, {} with unknown outcome re-sent; {} stored; {} reactions, edits and deletes ({} made again); delivered exactly once to 3 members; 0 lost, 0 duplicates",
        acked.len(),
        unknown.len(),
        all.len(),
        changes.len(),
        changes.values().filter(|c| !c.2).count()
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn fastrand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(7)
}
