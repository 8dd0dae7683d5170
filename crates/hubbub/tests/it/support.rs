//! Starting a server and talking to it.

use futures_util::StreamExt;
use hubbub::client::{Client, Socket};
use hubbub::config::Config;
use hubbub::serve::Running;
use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame, UserRef};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A process started by a test, killed (SIGKILL) and reaped when dropped: a test that fails
/// half-way leaves no server running behind it (a failed kill -9 test once left two edges
/// running after the suite).
pub struct ChildGuard(pub std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port for a process started by a test, which it may bind again after being killed:
/// picked below the kernel's ephemeral range (32768 and up), so that no outgoing connection
/// of a test running beside it takes it as its source port in between (a role restarted
/// after `kill -9` once failed to bind its port again for that reason). Ports are handed
/// out in turn from a start that differs per test process, each checked free when picked.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        fastrand::u32(..SPAN),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = u16::try_from(LOW + n % SPAN).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}

/// An app token secret of the length the server requires (32 bytes or more).
pub const APP_SECRET: &str = "app-secret-app-secret-app-secret";

/// An app token for `sub` (also its handle), signed with [`APP_SECRET`], expiring in
/// `exp_in_s` seconds, with an `aud` claim when given.
pub fn app_token(sub: &str, exp_in_s: i64, aud: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut claims =
        serde_json::json!({"sub": sub, "handle": sub, "exp": now + exp_in_s, "iat": now});
    if let Some(aud) = aud {
        claims["aud"] = serde_json::json!(aud);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(APP_SECRET.as_bytes()),
    )
    .expect("sign")
}

/// Guard against a hang; never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub running: Option<Running>,
    pub base: String,
    pub _dir: tempfile::TempDir,
    pub config: Config,
}

pub async fn server() -> TestServer {
    server_with(|_| {}).await
}

pub async fn server_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    // Every test client signs up from 127.0.0.1; the tests of these limits set them low.
    config.auth.attempts_per_ip_per_minute = 100_000;
    config.auth.attempts_per_ip_burst = 100_000;
    // Tests share a loaded 2-core machine, where events half a second late are the machine,
    // not a backlog to shed; `overload.rs` tests that check on its own.
    config.server.admission_delivery_ms = 0;
    adjust(&mut config);
    let running = hubbub::serve::start(config.clone())
        .await
        .expect("server starts");
    let base = format!("http://{}", running.addr);
    TestServer {
        running: Some(running),
        base,
        _dir: dir,
        config,
    }
}

impl TestServer {
    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// Sign up a user; returns the user and an access token.
    pub async fn user(&self, handle: &str) -> (UserRef, String) {
        let auth = self
            .client()
            .signup(handle, "password123")
            .await
            .expect("signup");
        (auth.user, auth.access_token)
    }

    pub async fn connect(&self, token: &str) -> (Socket, u64) {
        let (socket, hello) = self.client().connect(token).await.expect("connect");
        let ServerFrame::Hello { last_seq, .. } = hello else {
            panic!("no hello")
        };
        // The precomputed timeline is pushed right after hello.
        let mut socket = socket;
        let timeline = next(&mut socket).await;
        assert!(
            matches!(timeline, ServerFrame::Timeline { .. }),
            "expected the timeline after hello, got {timeline:?}"
        );
        (socket, last_seq)
    }

    /// Stop the server (graceful) and start it again on the same data directory and port.
    pub async fn restart(&mut self) {
        let running = self.running.take().expect("running");
        let addr = running.addr;
        running.shutdown().await;
        let mut config = self.config.clone();
        config.listen = addr;
        let running = hubbub::serve::start(config).await.expect("restart");
        self.running = Some(running);
    }
}

/// The next frame, within PATIENCE.
pub async fn next(socket: &mut Socket) -> ServerFrame {
    tokio::time::timeout(PATIENCE, socket.next_frame())
        .await
        .expect("a frame in time")
        .expect("read")
        .expect("open")
}

/// Read frames until one matches; returns it (skipping others).
pub async fn until(
    socket: &mut Socket,
    what: &str,
    pred: impl Fn(&ServerFrame) -> bool,
) -> ServerFrame {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let f = tokio::time::timeout_at(deadline, socket.next_frame())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("read")
            .unwrap_or_else(|| panic!("closed while waiting for {what}"));
        if pred(&f) {
            return f;
        }
    }
}

/// A request that must succeed; returns its data.
pub async fn ok(socket: &mut Socket, request: Request) -> ReplyData {
    match tokio::time::timeout(PATIENCE, socket.request(request))
        .await
        .expect("reply in time")
        .expect("request")
    {
        ServerFrame::Ok { data, .. } => data,
        other => panic!("expected ok, got {other:?}"),
    }
}

/// Create a channel (its creator owns it); returns its id.
pub async fn create_channel(socket: &mut Socket, title: &str, public: bool) -> String {
    let request = Request::ConversationCreate {
        kind: ConversationKind::Channel,
        members: vec![],
        title: Some(title.into()),
        ephemeral: None,
        idempotency_key: None,
        public: Some(public),
    };
    match ok(socket, request).await {
        ReplyData::Conversation { conversation } => {
            assert_eq!(conversation.kind, ConversationKind::Channel);
            conversation.id
        }
        other => panic!("a conversation, got {other:?}"),
    }
}

/// A request that must fail with `code`; returns the message.
pub async fn err(socket: &mut Socket, request: Request, code: &str) -> String {
    match tokio::time::timeout(PATIENCE, socket.request(request))
        .await
        .expect("reply in time")
        .expect("request")
    {
        ServerFrame::Error {
            code: c, message, ..
        } => {
            assert_eq!(c.as_str(), code, "{message}");
            message
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

/// Every durable event of a user from seq 1, read with sync on a fresh connection.
pub async fn all_events(server: &TestServer, token: &str) -> Vec<ServerFrame> {
    let (mut s, _) = server.connect(token).await;
    s.send_text(r#"{"type":"sync","id":"all","after_seq":0}"#)
        .await
        .expect("send");
    let mut events = Vec::new();
    loop {
        let f = next(&mut s).await;
        match f {
            ServerFrame::Ok { ref id, .. } if id == "all" => break,
            f if f.seq().is_some() => events.push(f),
            _ => {}
        }
    }
    s.close().await;
    events
}

/// `message.send` with no attachments.
pub fn send(conversation: &str, key: &str, text: &str) -> Request {
    Request::MessageSend {
        conversation: conversation.into(),
        client_msg_id: key.into(),
        text: text.into(),
        attachments: None,
        reply_to: None,
        thread: None,
        mentions: None,
    }
}

/// `conversation.create` of a group with these other members.
pub fn group(members: Vec<String>) -> Request {
    Request::ConversationCreate {
        kind: ConversationKind::Group,
        members,
        title: Some("team".into()),
        ephemeral: None,
        idempotency_key: None,
        public: None,
    }
}

/// A fresh database on the PostgreSQL server `scripts/test` starts.
#[cfg(feature = "cluster")]
pub async fn fresh_database() -> String {
    let url = std::env::var("HUBBUB_TEST_POSTGRES_URL")
        .expect("HUBBUB_TEST_POSTGRES_URL is not set: run scripts/test, which starts PostgreSQL");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(conn);
    let name = format!("hbt_{:016x}", fastrand::u64(..));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("bad postgres url {url}"),
    }
}

/// Wait until a `hubbub` process (spawned with a piped stdout) prints the line with its
/// address, which it does once its listeners are bound and its storage is open; bounded by a
/// minute (a loaded two-core machine replaying a large WAL). `log` says why it did not.
pub async fn wait_up(child: &mut std::process::Child, log: impl Fn() -> String) {
    let stdout = child.stdout.take().expect("a piped stdout");
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Read the first line, then keep draining until the process ends.
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    match tokio::time::timeout(PATIENCE * 6, rx).await {
        Ok(Ok(line)) if line.contains("http://") => {}
        Ok(other) => panic!("the process did not come up ({other:?}):\n{}", log()),
        Err(_) => panic!("the process was not up within a minute:\n{}", log()),
    }
}

pub type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn raw(s: &TestServer, token: &str) -> Raw {
    let url = format!(
        "{}/v1/ws?access_token={token}",
        s.base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let hello = next_raw(&mut ws).await;
    assert!(matches!(hello, Some(ServerFrame::Hello { .. })));
    let timeline = next_raw(&mut ws).await;
    assert!(matches!(timeline, Some(ServerFrame::Timeline { .. })));
    ws
}

/// The next frame, or None when the server closed; the close code is returned by `closed`.
pub async fn next_raw(ws: &mut Raw) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(t.lines().next().expect("line")).expect("json"));
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Read until the server closes; its close code.
pub async fn close_code(ws: &mut Raw) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}
