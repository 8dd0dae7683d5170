//! A dependency that goes down: Redis, then PostgreSQL, each reached through a TCP proxy the
//! test can cut (every open connection dropped, new ones refused), with the roles running
//! apart in this process. Writes fail fast with `unavailable` and nothing of them is
//! accepted; reads that do not need the missing dependency are still served; and service
//! resumes by itself when it returns.

use crate::support::{PATIENCE, fresh_database, next};
use hubbub::client::{Client, Socket};
use hubbub::config::Config;
use hubbub::roles::{Role, RoleRunning};
use hubbub_protocol::{ConversationKind, ErrorCode, ReplyData, Request, ServerFrame};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// A TCP proxy to a real server, which the test can take down and bring back.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the dependency is down
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().expect("lock").push(task);
            }
        });
        Proxy { addr, up, conns }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.conns.lock().expect("lock").drain(..) {
            t.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// host:port of a URL like `scheme://[user@]host:port[/path]`.
fn host_port(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hp = rest.split('/').next().unwrap_or(rest);
    hp.parse()
        .unwrap_or_else(|_| panic!("no host:port in {url}"))
}

struct Apart {
    edge: RoleRunning,
    others: Vec<RoleRunning>,
    redis: Proxy,
    pg: Proxy,
    /// The database, not through the proxy.
    pg_direct: String,
    _dir: tempfile::TempDir,
}

async fn apart() -> Apart {
    let redis_url = std::env::var("HUBBUB_TEST_REDIS_URL")
        .expect("HUBBUB_TEST_REDIS_URL is not set: run scripts/test");
    let pg_url = fresh_database().await;
    let redis = Proxy::start(host_port(&redis_url)).await;
    let pg = Proxy::start(host_port(&pg_url)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    config.cluster.redis_url = Some(format!("redis://{}", redis.addr));
    config.cluster.postgres_url =
        Some(pg_url.replace(&host_port(&pg_url).to_string(), &pg.addr.to_string()));
    config.cluster.internal_secret = Some("outage-secret".into());
    config.cluster.namespace = format!("hboutage{:08x}", fastrand::u32(..));
    config.cluster.internal_listen = "127.0.0.1:0".parse().expect("addr");
    config.limits.frames_per_s = 10_000;
    config.limits.burst = 10_000;
    config.api.bootstrap_key = Some(crate::control::BOOT.into());
    let edge = hubbub::roles::start(Role::Edge, config.clone())
        .await
        .expect("edge");
    let mut others = Vec::new();
    for role in [Role::Router, Role::Worker(vec!["chat".into()])] {
        others.push(
            hubbub::roles::start(role, config.clone())
                .await
                .expect("role"),
        );
    }
    Apart {
        edge,
        others,
        redis,
        pg,
        pg_direct: pg_url,
        _dir: dir,
    }
}

fn send(conversation: &str, cid: &str) -> Request {
    Request::MessageSend {
        conversation: conversation.into(),
        client_msg_id: cid.into(),
        text: format!("text of {cid}"),
        attachments: None,
        reply_to: None,
        thread: None,
        mentions: None,
    }
}

/// Send until the answer has `code` (bounded); returns how many tries it took.
async fn until_code(socket: &mut Socket, conversation: &str, cid: &str, code: ErrorCode) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let f = tokio::time::timeout(PATIENCE * 2, socket.request(send(conversation, cid)))
            .await
            .expect("an answer in time")
            .expect("the connection survives");
        if let ServerFrame::Error { code: c, .. } = &f
            && *c == code
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never answered {code:?}; last: {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Send with the same client_msg_id until it is accepted (bounded).
async fn until_ok(socket: &mut Socket, conversation: &str, cid: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        let f = tokio::time::timeout(PATIENCE * 2, socket.request(send(conversation, cid)))
            .await
            .expect("an answer in time")
            .expect("the connection survives");
        if matches!(f, ServerFrame::Ok { .. }) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never accepted: {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn history_ids(socket: &mut Socket, conversation: &str) -> Vec<String> {
    let h = Request::MessageHistory {
        conversation: conversation.into(),
        before: None,
        limit: Some(100),
        thread: None,
    };
    match tokio::time::timeout(PATIENCE, socket.request(h))
        .await
        .expect("in time")
        .expect("reply")
    {
        ServerFrame::Ok {
            data: ReplyData::History { messages, .. },
            ..
        } => messages.into_iter().map(|m| m.client_msg_id).collect(),
        other => panic!("history: {other:?}"),
    }
}

async fn setup(a: &Apart) -> (Socket, String) {
    let base = format!("http://{}", a.edge.addr);
    let auth = Client::new(&base)
        .signup("outage", "password123")
        .await
        .expect("signup");
    let (mut socket, _) = Client::new(&base)
        .connect(&auth.access_token)
        .await
        .expect("connect");
    let _timeline = next(&mut socket).await;
    let c = Request::ConversationCreate {
        kind: ConversationKind::Group,
        members: vec![],
        title: Some("outage".into()),
        ephemeral: None,
        idempotency_key: None,
        public: None,
    };
    let conversation = match tokio::time::timeout(PATIENCE, socket.request(c))
        .await
        .expect("in time")
        .expect("reply")
    {
        ServerFrame::Ok {
            data: ReplyData::Conversation { conversation },
            ..
        } => conversation.id,
        other => panic!("create: {other:?}"),
    };
    until_ok(&mut socket, &conversation, "before").await;
    (socket, conversation)
}

async fn stop(a: Apart) {
    for r in std::iter::once(a.edge).chain(a.others) {
        r.cancel.cancel();
        let _ = tokio::time::timeout(PATIENCE, r.wait()).await;
    }
}

#[tokio::test]
async fn redis_down_refuses_writes_serves_store_reads_and_recovers() {
    let a = apart().await;
    let (mut socket, conversation) = setup(&a).await;
    a.redis.down();
    // Writes need the queue: refused at once, nothing accepted.
    until_code(
        &mut socket,
        &conversation,
        "refused",
        ErrorCode::Unavailable,
    )
    .await;
    // Reads come from PostgreSQL: still served.
    assert_eq!(history_ids(&mut socket, &conversation).await, ["before"]);
    a.redis.up();
    until_ok(&mut socket, &conversation, "after").await;
    let ids = history_ids(&mut socket, &conversation).await;
    assert_eq!(
        ids,
        ["after", "before"],
        "the refused write was never accepted"
    );
    stop(a).await;
}

#[tokio::test]
async fn postgres_down_refuses_writes_and_recovers() {
    let a = apart().await;
    let (mut socket, conversation) = setup(&a).await;
    let http = reqwest::Client::new();
    let ready = format!("http://{}/readyz", a.edge.addr);
    a.pg.down();
    // The edge's store probe notices within a second; then writes are refused at once.
    until_code(
        &mut socket,
        &conversation,
        "refused",
        ErrorCode::Unavailable,
    )
    .await;
    let r = http.get(&ready).send().await.expect("readyz");
    assert_eq!(r.status(), 503, "not ready without the store");
    let h = http
        .get(format!("http://{}/healthz", a.edge.addr))
        .send()
        .await
        .expect("healthz");
    assert_eq!(h.status(), 200, "alive all the same");
    a.pg.up();
    until_ok(&mut socket, &conversation, "after").await;
    let ids = history_ids(&mut socket, &conversation).await;
    assert_eq!(
        ids,
        ["after", "before"],
        "the refused write was never accepted"
    );
    stop(a).await;
}

/// Store a runtime config straight in the database (as another deployment's process would,
/// or a bad migration), announcing it like the store does.
async fn store_config_directly(url: &str, body: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "UPDATE runtime_config SET version = version + 1, body = $1 WHERE id = 1
             RETURNING version",
            &[&body],
        )
        .await
        .expect("update");
    let version: i64 = row.get(0);
    client
        .execute(
            "SELECT pg_notify('hubbub_config', $1)",
            &[&version.to_string()],
        )
        .await
        .expect("notify");
}

/// A process whose config watcher loses PostgreSQL keeps its last config, and catches up with
/// what changed meanwhile when PostgreSQL returns; a stored config that does not parse is
/// counted and skipped, the process serving on, and the next good one applies.
#[tokio::test]
async fn the_config_watcher_catches_up_after_an_outage_and_survives_a_bad_config() {
    use hubbub_protocol::admin::{Flag, RuntimeConfig};
    let a = apart().await;
    let base = format!("http://{}", a.edge.addr);
    let auth = Client::new(&base)
        .signup("watched", "password123")
        .await
        .expect("signup");
    let (mut socket, _) = Client::new(&base)
        .connect(&auth.access_token)
        .await
        .expect("connect");
    let _timeline = next(&mut socket).await;
    let flagged = |name: &str| {
        let mut c = RuntimeConfig::default();
        c.flags.insert(
            name.into(),
            Flag {
                enabled: true,
                percent: None,
                users: None,
            },
        );
        c
    };
    // Applied over the long poll (the marker: a `flags` push).
    let v = Client::new(&base)
        .put_runtime_config(crate::control::BOOT, 0, &flagged("one"))
        .await
        .expect("put");
    assert_eq!(v, 1);
    crate::support::until(
        &mut socket,
        "flags one",
        |f| matches!(f, ServerFrame::Flags { flags } if flags.contains_key("one")),
    )
    .await;
    // PostgreSQL goes away; meanwhile the config changes (straight in the database).
    a.pg.down();
    let body = serde_json::to_string(&flagged("two")).expect("json");
    store_config_directly(&a.pg_direct, &body).await;
    a.pg.up();
    // Back: the watcher reconnects, reads the current version, applies it.
    crate::support::until(
        &mut socket,
        "flags two",
        |f| matches!(f, ServerFrame::Flags { flags } if flags.contains_key("two")),
    )
    .await;
    // A stored config that does not parse: reported, skipped, the process serves on.
    store_config_directly(&a.pg_direct, r#"{"limits":{"bogus":1}}"#).await;
    let client = Client::new(&base);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let failures = text
            .lines()
            .find_map(|l| l.strip_prefix("hubbub_config_apply_failures_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if failures >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bad config was never reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = client
        .runtime_config(crate::control::BOOT)
        .await
        .expect_err("the edge cannot show a stored config that does not parse");
    assert!(now.to_string().contains("500"), "{now}");
    let v = client
        .put_runtime_config(crate::control::BOOT, 3, &flagged("three"))
        .await
        .expect("put over the bad one");
    assert_eq!(v, 4);
    crate::support::until(
        &mut socket,
        "flags three",
        |f| matches!(f, ServerFrame::Flags { flags } if flags.contains_key("three")),
    )
    .await;
    stop(a).await;
}
