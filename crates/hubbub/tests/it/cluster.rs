//! Roles apart, surviving kill -9: two edges, one router, two workers (real `hubbub`
//! processes) on the Redis and PostgreSQL servers `scripts/test` starts. Clients on both
//! edges chat in two groups while one worker, then one edge, then the router are killed with
//! SIGKILL and restarted after a pause. Afterwards every message that got `ok` is stored
//! exactly once and reached every member exactly once across `sync`; the clients of the
//! killed edge reconnect to the other one and resume with no gap and no duplicate.

use crate::support::ChildGuard;
use crate::support::{PATIENCE, create_channel, ok, send, until};
use hubbub::client::{Client, Socket};
use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SECRET: &str = "cluster-test-secret";

struct Cluster {
    dir: tempfile::TempDir,
    redis: String,
    postgres: String,
    namespace: String,
}

impl Cluster {
    fn spawn(&self, name: &str, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log");
        Command::new(env!("CARGO_BIN_EXE_hubbub"))
            .args(args)
            .args(["--redis-url", &self.redis, "--postgres-url", &self.postgres])
            .arg("--data-dir")
            .arg(self.dir.path().join("edge-data"))
            .env("HUBBUB_CLUSTER__INTERNAL_SECRET", SECRET)
            .env("HUBBUB_CLUSTER__NAMESPACE", &self.namespace)
            .env("HUBBUB_SERVER__EDGE_TTL_S", "3")
            .env("HUBBUB_LIMITS__FRAMES_PER_S", "10000")
            .env("HUBBUB_LIMITS__BURST", "10000")
            // This test is about kill -9: while the router is dead, requests must wait in
            // `main`. Admission control (tested in overload.rs) would refuse them instead
            // once replies had been slow, which the kills before make them.
            .env("HUBBUB_SERVER__ADMISSION_WAIT_MS", "600000")
            .env("HUBBUB_SERVER__ADMISSION_DELIVERY_MS", "0")
            .env("HUBBUB_LOG", "warn")
            // For the webhook test (harmless to the others): the server API's key, app
            // tokens, a short offline grace.
            .env("HUBBUB_API__BOOTSTRAP_KEY", crate::control::BOOT)
            .env("HUBBUB_AUTH__APP_HMAC_SECRET", crate::support::APP_SECRET)
            .env("HUBBUB_WEBHOOKS__OFFLINE_GRACE_S", "2")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn hubbub")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Start a role and wait until it is up.
    async fn start(&self, name: &str, args: &[&str]) -> ChildGuard {
        let mut child = ChildGuard(self.spawn(name, args));
        crate::support::wait_up(&mut child, || self.log(name)).await;
        child
    }
}

/// What the clients have done so far, for the test to wait on.
#[derive(Clone)]
struct Progress {
    acked: tokio::sync::watch::Sender<usize>,
    reconnects: tokio::sync::watch::Sender<usize>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            acked: tokio::sync::watch::channel(0).0,
            reconnects: tokio::sync::watch::channel(0).0,
        }
    }

    /// Wait (bounded) until `counter` reaches at least `more` above its value now.
    async fn at_least(counter: &tokio::sync::watch::Sender<usize>, more: usize, what: &str) {
        let target = *counter.borrow() + more;
        let mut rx = counter.subscribe();
        tokio::time::timeout(PATIENCE * 3, rx.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("{what}: never reached {target}"))
            .expect("progress");
    }

    /// Traffic went on: `more` further sends were acknowledged.
    async fn acked(&self, more: usize) {
        Self::at_least(&self.acked, more, "acknowledged sends").await;
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn kill9(child: &mut Child) {
    // SIGKILL: no shutdown code runs.
    let _ = child.kill();
    let _ = child.wait();
}

#[derive(Debug, Default)]
struct Stats {
    acked: Vec<(String, String)>,
    reconnects: u32,
    duplicates: u32,
    live_messages: usize,
}

/// The seqs a client has processed. Events may arrive out of order around a reconnect (one
/// pushed live right after `hello`, before the `sync` replay of older ones); a seq seen twice
/// is a duplicate, and `sync` resumes after the last seq with none missing below it.
#[derive(Default)]
struct Seen {
    seqs: BTreeSet<u64>,
    last: u64,
}

impl Seen {
    fn process(&mut self, f: &ServerFrame, stats: &mut Stats) {
        let Some(seq) = f.seq() else { return };
        if !self.seqs.insert(seq) {
            stats.duplicates += 1;
            return;
        }
        while self.seqs.contains(&(self.last + 1)) {
            self.last += 1;
        }
        if matches!(f, ServerFrame::MessageNew { .. }) {
            stats.live_messages += 1;
        }
    }
}

async fn drain(socket: &mut Socket, seen: &mut Seen, stats: &mut Stats) -> bool {
    loop {
        match tokio::time::timeout(Duration::ZERO, socket.next_frame()).await {
            Ok(Ok(Some(f))) => seen.process(&f, stats),
            Ok(Ok(None)) | Ok(Err(_)) => return false,
            Err(_) => return true,
        }
    }
}

/// Connect to the first edge that accepts, starting with `edges[first]`, and sync from the
/// last seq processed.
async fn reconnect(
    edges: &[String],
    first: usize,
    token: &str,
    seen: &mut Seen,
    stats: &mut Stats,
) -> Socket {
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    let mut i = first;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no edge accepted a connection"
        );
        let base = &edges[i % edges.len()];
        i += 1;
        let Ok(Ok((mut socket, _))) =
            tokio::time::timeout(PATIENCE, Client::new(base).connect(token)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let sync = Request::Sync {
            after_seq: seen.last,
        };
        match tokio::time::timeout(PATIENCE, socket.request(sync)).await {
            Ok(Ok(ServerFrame::Ok { .. })) if drain(&mut socket, seen, stats).await => {
                return socket;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One user: send to its groups in turn until `stop`, each message until it gets `ok`
/// (a lost connection or an unknown outcome is retried with the same client_msg_id,
/// reconnecting to whichever edge is up), and count what arrives.
async fn client(
    name: String,
    token: String,
    groups: Vec<String>,
    edges: Vec<String>,
    home: usize,
    stop: Arc<AtomicBool>,
    progress: Progress,
) -> Stats {
    let mut stats = Stats::default();
    let mut seen = Seen::default();
    let mut socket = reconnect(&edges, home, &token, &mut seen, &mut stats).await;
    let mut k = 0usize;
    let mut edge = home;
    loop {
        let cid = format!("{name}-{k}");
        let conversation = groups[k % groups.len()].clone();
        let send = Request::MessageSend {
            conversation: conversation.clone(),
            client_msg_id: cid.clone(),
            text: format!("{name} says {k}"),
            attachments: None,
            reply_to: None,
            thread: None,
            mentions: None,
        };
        let outcome = tokio::time::timeout(PATIENCE * 2, socket.request(send)).await;
        // A send whose outcome is unknown is retried before stopping: it may be stored.
        let settled = matches!(outcome, Ok(Ok(ServerFrame::Ok { .. })));
        let alive = match outcome {
            Ok(Ok(ServerFrame::Ok { .. })) => {
                stats.acked.push((conversation, cid));
                progress.acked.send_modify(|n| *n += 1);
                k += 1;
                true
            }
            // Outcome unknown or not accepted: the same client_msg_id again.
            Ok(Ok(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                true
            }
            Ok(Err(_)) | Err(_) => false,
        };
        let alive = alive && drain(&mut socket, &mut seen, &mut stats).await;
        if !alive {
            stats.reconnects += 1;
            progress.reconnects.send_modify(|n| *n += 1);
            edge += 1;
            socket = reconnect(&edges, edge, &token, &mut seen, &mut stats).await;
            continue;
        }
        if settled && stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stats
}

#[tokio::test]
async fn roles_apart_survive_kill_9_of_a_worker_an_edge_and_the_router() {
    let cluster = Cluster {
        dir: tempfile::tempdir().expect("tempdir"),
        redis: std::env::var("HUBBUB_TEST_REDIS_URL")
            .expect("HUBBUB_TEST_REDIS_URL is not set: run scripts/test"),
        postgres: crate::support::fresh_database().await,
        namespace: format!("hbcluster{:08x}", fastrand::u32(..)),
    };
    let ports: Vec<u16> = (0..9).map(|_| crate::support::free_port()).collect();
    let listen = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let edge_args = |i: usize| {
        vec![
            "edge".to_owned(),
            "--listen".to_owned(),
            listen(i),
            "--internal-listen".to_owned(),
            listen(i + 2),
        ]
    };
    let e1a = edge_args(0);
    let e2a = edge_args(1);
    let ra = vec!["router".to_owned(), "--listen".to_owned(), listen(4)];
    let w1a = vec![
        "worker".to_owned(),
        "--services".to_owned(),
        "chat,feed,timeline".to_owned(),
        "--listen".to_owned(),
        listen(5),
    ];
    let w2a = vec![
        "worker".to_owned(),
        "--services".to_owned(),
        "chat,feed,timeline".to_owned(),
        "--listen".to_owned(),
        listen(6),
    ];
    // The first edge creates the signing keys the second one shares.
    let mut edge1 = cluster.start("edge1", &strs(&e1a)).await;
    let edge2 = cluster.start("edge2", &strs(&e2a)).await;
    let mut router = cluster.start("router", &strs(&ra)).await;
    let mut worker1 = cluster.start("worker1", &strs(&w1a)).await;
    let worker2 = cluster.start("worker2", &strs(&w2a)).await;
    let edges = vec![
        format!("http://{}", listen(0)),
        format!("http://{}", listen(1)),
    ];

    // Six users, alternately on each edge; two groups that mix both edges.
    let mut users = Vec::new();
    for i in 0..6 {
        let auth = Client::new(&edges[i % 2])
            .signup(&format!("member{i}"), "password123")
            .await
            .expect("signup");
        users.push((auth.user.id, auth.access_token));
    }
    let mut groups = Vec::new();
    for (creator, members) in [(0usize, [1usize, 2, 3]), (4, [5, 2, 3])] {
        let (mut s, _) = Client::new(&edges[creator % 2])
            .connect(&users[creator].1)
            .await
            .expect("connect");
        let request = Request::ConversationCreate {
            kind: ConversationKind::Group,
            members: members.iter().map(|m| users[*m].0.clone()).collect(),
            title: None,
            ephemeral: None,
            idempotency_key: None,
            public: None,
        };
        match tokio::time::timeout(PATIENCE, s.request(request))
            .await
            .expect("in time")
            .expect("reply")
        {
            ServerFrame::Ok {
                data: ReplyData::Conversation { conversation },
                ..
            } => groups.push((conversation.id, conversation.members)),
            other => panic!("group not created: {other:?}"),
        }
        s.close().await;
    }

    // A channel across edges: its message names the channel, and the other edge finds its
    // subscriber (it loaded the subscriber's channels when the subscription was answered).
    {
        let (mut owner, _) = Client::new(&edges[0])
            .connect(&users[0].1)
            .await
            .expect("connect");
        let (mut sub, _) = Client::new(&edges[1])
            .connect(&users[1].1)
            .await
            .expect("connect");
        let channel = create_channel(&mut owner, "across", true).await;
        let subscribe = Request::ChannelSubscribe {
            conversation: channel.clone(),
        };
        assert_eq!(ok(&mut sub, subscribe).await, ReplyData::Empty {});
        ok(&mut owner, send(&channel, "x1", "hi")).await;
        let f = until(&mut sub, "the channel's message on the other edge", |f| {
            matches!(f, ServerFrame::ChannelMessage { .. })
        })
        .await;
        let ServerFrame::ChannelMessage {
            conversation,
            offset,
            ..
        } = f
        else {
            panic!("{f:?}")
        };
        assert_eq!((conversation.as_str(), offset), (channel.as_str(), 1));
        owner.close().await;
        sub.close().await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Progress::new();
    let mut tasks = Vec::new();
    for (i, (id, token)) in users.iter().enumerate() {
        let mine: Vec<String> = groups
            .iter()
            .filter(|(_, m)| m.contains(id))
            .map(|(g, _)| g.clone())
            .collect();
        tasks.push(tokio::spawn(client(
            format!("member{i}"),
            token.clone(),
            mine,
            edges.clone(),
            i % 2,
            stop.clone(),
            progress.clone(),
        )));
    }

    // Steady traffic, then each kill -9 and, once the others carried traffic on (or, for the
    // router, once requests are waiting for it), its restart.
    let step = 60;
    progress.acked(step).await;
    kill9(&mut worker1);
    progress.acked(step).await; // the other worker carries on
    worker1 = cluster.start("worker1", &strs(&w1a)).await;
    progress.acked(step).await;
    kill9(&mut edge1);
    // Its three clients move to the other edge, and their traffic resumes there.
    Progress::at_least(&progress.reconnects, 3, "reconnects").await;
    progress.acked(step).await;
    edge1 = cluster.start("edge1", &strs(&e1a)).await;
    progress.acked(step).await;
    kill9(&mut router);
    // Nothing is routed now: wait until requests pile up in `main` for the restarted one.
    let main = hubbub_cluster::RedisQueue::connect({
        let mut c = hubbub_cluster::RedisConfig::new(cluster.redis.clone());
        c.namespace = cluster.namespace.clone();
        c
    })
    .expect("redis");
    // Every client's next request: ready in `main`, or leased by the router that died with
    // it unrouted (it comes back when its visibility ends), so `in_flight` counts too (CI
    // once saw five ready and the sixth leased).
    let mut backlog = 0;
    for _ in 0..100 {
        let stats = hubbub_queue::Queue::stats(&main, "main")
            .await
            .expect("stats");
        backlog = stats.visible + stats.in_flight;
        if backlog >= 6 {
            break;
        }
        let mut rx = progress.acked.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
    assert!(
        backlog >= 6,
        "requests wait for the router in main ({backlog})"
    );
    router = cluster.start("router", &strs(&ra)).await;
    progress.acked(step).await;
    stop.store(true, Ordering::Relaxed);
    let mut stats = Vec::new();
    for t in tasks {
        stats.push(
            tokio::time::timeout(PATIENCE * 6, t)
                .await
                .expect("clients finish")
                .expect("client"),
        );
    }

    // Every acked message, by conversation.
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &stats {
        for (c, cid) in &s.acked {
            acked.entry(c.clone()).or_default().insert(cid.clone());
        }
    }
    let sent: usize = stats.iter().map(|s| s.acked.len()).sum();
    // Stored exactly once: each conversation's history holds each acked id once, nothing else.
    let (mut reader, _) = Client::new(&edges[1])
        .connect(&users[2].1)
        .await
        .expect("connect");
    for (g, _) in &groups {
        let mut ids = Vec::new();
        let mut before = None;
        loop {
            let h = Request::MessageHistory {
                conversation: g.clone(),
                before: before.clone(),
                limit: Some(100),
                thread: None,
            };
            let (messages, more) = match tokio::time::timeout(PATIENCE, reader.request(h))
                .await
                .expect("in time")
                .expect("reply")
            {
                ServerFrame::Ok {
                    data: ReplyData::History { messages, more },
                    ..
                } => (messages, more),
                other => panic!("history: {other:?}"),
            };
            before = messages.last().map(|m| m.id.clone());
            ids.extend(messages.into_iter().map(|m| m.client_msg_id));
            if !more {
                break;
            }
        }
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(unique.len(), ids.len(), "a message stored twice in {g}");
        assert_eq!(
            &unique,
            acked.get(g).unwrap_or(&BTreeSet::new()),
            "stored = acked in {g}"
        );
    }
    // Delivered exactly once to every member: a sync from 0 holds each message of the
    // member's groups once, with gapless seqs.
    let mut delivered = 0usize;
    let mut duplicates: u32 = stats.iter().map(|s| s.duplicates).sum();
    let mut lost = 0usize;
    for (id, token) in &users {
        let (mut s, _) = Client::new(&edges[0])
            .connect(token)
            .await
            .expect("connect");
        s.send_text(r#"{"type":"sync","id":"all","after_seq":0}"#)
            .await
            .expect("send");
        let mut seqs = Vec::new();
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        loop {
            let f = crate::support::next(&mut s).await;
            match &f {
                ServerFrame::Ok { id, .. } if id == "all" => break,
                ServerFrame::MessageNew { seq, message } => {
                    seqs.push(*seq);
                    got.entry(message.conversation.clone())
                        .or_default()
                        .push(message.client_msg_id.clone());
                }
                f => {
                    if let Some(seq) = f.seq() {
                        seqs.push(seq);
                    }
                }
            }
        }
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "gapless, no repeat, for {id}");
        for (g, members) in &groups {
            if !members.contains(id) {
                continue;
            }
            let list = got.remove(g).unwrap_or_default();
            let set: BTreeSet<String> = list.iter().cloned().collect();
            duplicates += (list.len() - set.len()) as u32;
            let want = acked.get(g).cloned().unwrap_or_default();
            lost += want.difference(&set).count();
            delivered += list.len();
        }
        s.close().await;
    }
    let reconnects: u32 = stats.iter().map(|s| s.reconnects).sum();
    println!(
        "cluster: sent {sent}, acked {sent}, delivered {delivered}, duplicates {duplicates}, lost {lost} (reconnects {reconnects})"
    );
    assert!(sent > 0 && reconnects > 0, "traffic ran through the kills");
    assert_eq!((duplicates, lost), (0, 0));
    for mut c in [edge1, edge2, router, worker1, worker2] {
        kill9(&mut c);
    }
}

/// A server API POST with the bootstrap key to `base`: status and JSON body.
async fn server_post(base: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = tokio::time::timeout(
        PATIENCE,
        reqwest::Client::new()
            .post(format!("{base}{path}"))
            .bearer_auth(crate::control::BOOT)
            .json(&body)
            .send(),
    )
    .await
    .expect("in time")
    .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Presence webhooks with roles apart: a user online on two edges who closes one session
/// stays online (nothing is sent); when the other edge is killed with SIGKILL (closing
/// nothing), the user goes offline once its sessions expire from the registry and the
/// grace has passed.
#[tokio::test]
async fn presence_webhooks_follow_sessions_across_edges_and_an_edge_killed() {
    let cluster = Cluster {
        dir: tempfile::tempdir().expect("tempdir"),
        redis: std::env::var("HUBBUB_TEST_REDIS_URL")
            .expect("HUBBUB_TEST_REDIS_URL is not set: run scripts/test"),
        postgres: crate::support::fresh_database().await,
        namespace: format!("hbhooks{:08x}", fastrand::u32(..)),
    };
    let ports: Vec<u16> = (0..5).map(|_| crate::support::free_port()).collect();
    let listen = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let e1 = [
        "edge",
        "--listen",
        &listen(0),
        "--internal-listen",
        &listen(2),
    ]
    .map(str::to_owned);
    let e2 = [
        "edge",
        "--listen",
        &listen(1),
        "--internal-listen",
        &listen(3),
    ]
    .map(str::to_owned);
    let w = ["worker", "--services", "webhooks", "--listen", &listen(4)].map(str::to_owned);
    let mut edge1 = cluster.start("edge1", &strs(&e1)).await;
    let mut edge2 = cluster.start("edge2", &strs(&e2)).await;
    let mut worker = cluster.start("worker", &strs(&w)).await;
    let (a, b) = (
        format!("http://{}", listen(0)),
        format!("http://{}", listen(1)),
    );

    let mut r = crate::webhooks::receiver(crate::webhooks::Script::Ok).await;
    let (st, hook) = server_post(
        &a,
        "/v1/server/webhooks",
        serde_json::json!({"url": r.url, "events": ["user.online", "user.offline"]}),
    )
    .await;
    assert_eq!(st, 201, "{hook}");
    let secret = hook["secret"].as_str().expect("secret").to_owned();
    let (st, _) = server_post(&a, "/v1/server/users", serde_json::json!({"id":"walker"})).await;
    assert_eq!(st, 201);
    // The producers' list of endpoints is at most a second old.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let token = crate::support::app_token("walker", 3600, None);
    let ws = |base: &str| {
        let url = format!(
            "{}/v1/ws?access_token={token}",
            base.replacen("http", "ws", 1)
        );
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            assert!(matches!(
                crate::support::next_raw(&mut ws).await,
                Some(ServerFrame::Hello { .. })
            ));
            ws
        }
    };
    let mut on_a = ws(&a).await;
    let mut seen = Vec::new();
    r.until_accepted("user.online", &mut seen).await;
    let _on_b = ws(&b).await;
    on_a.close(None).await.expect("close");
    drop(on_a);
    // Longer than the grace: the close on edge 1 announces nothing (the user is on edge 2).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        r.got.try_recv().is_err(),
        "nothing while a session stays open elsewhere"
    );

    // Edge 2 dies: no close, no unregister. Its sessions expire (TTL 3 s), the sweep finds
    // the user announced online and no longer in the registry, and after the grace: offline.
    kill9(&mut edge2);
    r.until_accepted("user.offline", &mut seen).await;
    let kinds: Vec<&str> = seen
        .iter()
        .map(|g| g.body["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["user.online", "user.offline"]);
    for g in &seen {
        crate::webhooks::verify(&secret, g);
        assert_eq!(g.body["data"]["user"], "walker");
    }
    for child in [&mut edge1, &mut worker] {
        kill9(child);
    }
}
