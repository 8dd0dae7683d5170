//! Crash test: the real `hubbub serve` process is killed with SIGKILL while two users send
//! messages to a group, three times, and restarted each time. Then every message whose send
//! got `ok` must be in history exactly once and must have reached each member exactly once
//! across `sync` (seqs 1..n, no gap, no repeat); messages whose outcome was unknown are sent
//! again with the same `client_msg_id`, which must be safe.

use crate::support::PATIENCE;
use hubbub::client::Client;
use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame};
use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn spawn_server(dir: &std::path::Path, port: u16) -> Child {
    // The server's log goes to a file beside its data, shown if it does not come up.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("log");
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
        .expect("spawn hubbub serve")
}

/// Wait until the server is up; if it does not come up, show its log.
async fn wait_ready(child: &mut Child, dir: &std::path::Path) {
    let log = dir.join("server.log");
    crate::support::wait_up(child, || std::fs::read_to_string(&log).unwrap_or_default()).await;
}

#[derive(Default)]
struct Outcomes {
    acked: BTreeSet<String>,
    unknown: BTreeSet<String>,
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
        match socket.request(req).await {
            Ok(ServerFrame::Ok { .. }) => {
                let mut o = out.lock().expect("lock");
                o.unknown.remove(&key);
                o.acked.insert(key);
            }
            // An error reply or a dropped connection: the outcome is unknown.
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_traffic_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
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
        tokio::time::sleep(Duration::from_millis(
            300 + (rng + round as u64 * 7919) % 500,
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
                    keys.push(message.client_msg_id);
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
        s.close().await;
    }
    println!(
        "server crash test: 3 kills; {} sends acked, {} with unknown outcome re-sent; {} stored; delivered exactly once to 3 members; 0 lost, 0 duplicates",
        acked.len(),
        unknown.len(),
        all.len()
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
