//! Roles apart in this process on the real Redis and PostgreSQL: presence, engagement,
//! contacts and erasure across edges.
//! A writer on one edge and a watcher on another see the same `engagement` events, because
//! the signals go to the one worker leading the `engagement` service; when that worker stops
//! and another takes over, the edges' renewals give it the subscriptions back.

use crate::support::{PATIENCE, fresh_database, next, until};
use hubbub::client::{Client, Socket};
use hubbub::config::Config;
use hubbub::roles::{Role, RoleRunning};
use hubbub_protocol::{PresenceStatus, ReplyData, Request, ServerFrame, SetPresenceStatus};

async fn config() -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    config.cluster.redis_url = Some(
        std::env::var("HUBBUB_TEST_REDIS_URL")
            .expect("HUBBUB_TEST_REDIS_URL is not set: run scripts/test"),
    );
    config.cluster.postgres_url = Some(fresh_database().await);
    config.cluster.internal_secret = Some("apart-secret".into());
    config.cluster.namespace = format!("hbapart{:08x}", fastrand::u32(..));
    config.cluster.internal_listen = "127.0.0.1:0".parse().expect("addr");
    config.server.edge_ttl_s = 3;
    config.limits.frames_per_s = 10_000;
    config.limits.burst = 10_000;
    (config, dir)
}

async fn user(base: &str, handle: &str) -> Socket {
    let auth = Client::new(base)
        .signup(handle, "password123")
        .await
        .expect("signup");
    let (mut s, _) = Client::new(base)
        .connect(&auth.access_token)
        .await
        .expect("connect");
    let _timeline = next(&mut s).await;
    s
}

async fn ok(s: &mut Socket, r: Request) -> ReplyData {
    match tokio::time::timeout(PATIENCE, s.request(r))
        .await
        .expect("in time")
        .expect("reply")
    {
        ServerFrame::Ok { data, .. } => data,
        other => panic!("expected ok: {other:?}"),
    }
}

/// Type on `post` until the watcher sees `words` from the writer (bounded): signals are
/// ephemeral, and a new leader may miss the first ones.
async fn typed_and_seen(writer: &mut Socket, watcher: &mut Socket, post: &str, words: u32) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        writer
            .send(Request::CommentTyping {
                post: post.into(),
                words,
            })
            .await
            .expect("send");
        let seen = tokio::time::timeout(std::time::Duration::from_millis(1500), async {
            until(watcher, "engagement", |f| {
                matches!(f, ServerFrame::Engagement { top, .. }
                    if top.first().is_some_and(|t| t.words == words))
            })
            .await
        })
        .await;
        if seen.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {words} words"
        );
    }
}

async fn stop(r: RoleRunning) {
    r.cancel.cancel();
    let _ = tokio::time::timeout(PATIENCE, r.wait()).await;
}

/// Two edges, a router and a chat worker on one config (the tests of chat and the server
/// API across edges).
struct TwoEdges {
    edges: [RoleRunning; 2],
    router: RoleRunning,
    worker: RoleRunning,
    /// The edges' base URLs.
    a: String,
    b: String,
}

impl TwoEdges {
    async fn start(config: &Config) -> Self {
        let edge_a = hubbub::roles::start(Role::Edge, config.clone())
            .await
            .expect("edge a");
        let edge_b = hubbub::roles::start(Role::Edge, config.clone())
            .await
            .expect("edge b");
        let router = hubbub::roles::start(Role::Router, config.clone())
            .await
            .expect("router");
        let worker = hubbub::roles::start(Role::Worker(vec!["chat".into()]), config.clone())
            .await
            .expect("worker");
        TwoEdges {
            a: format!("http://{}", edge_a.addr),
            b: format!("http://{}", edge_b.addr),
            edges: [edge_a, edge_b],
            router,
            worker,
        }
    }

    async fn stop(self) {
        let [edge_a, edge_b] = self.edges;
        for r in [self.worker, self.router, edge_b, edge_a] {
            stop(r).await;
        }
    }
}

#[tokio::test]
async fn engagement_reaches_watchers_on_other_edges_and_survives_a_new_leader() {
    let (config, _dir) = config().await;
    let edge_a = hubbub::roles::start(Role::Edge, config.clone())
        .await
        .expect("edge a");
    let edge_b = hubbub::roles::start(Role::Edge, config.clone())
        .await
        .expect("edge b");
    let router = hubbub::roles::start(Role::Router, config.clone())
        .await
        .expect("router");
    let services = vec!["chat".into(), "feed".into(), "engagement".into()];
    let worker1 = hubbub::roles::start(Role::Worker(services.clone()), config.clone())
        .await
        .expect("worker");
    let (a, b) = (
        format!("http://{}", edge_a.addr),
        format!("http://{}", edge_b.addr),
    );
    let mut author = user(&a, "author").await;
    let mut writer = user(&a, "writer").await;
    let mut watcher = user(&b, "watcher").await;
    let post = match ok(
        &mut author,
        Request::PostCreate {
            text: "across edges".into(),
            attachments: None,
            idempotency_key: None,
        },
    )
    .await
    {
        ReplyData::Post { post } => post.id,
        other => panic!("post: {other:?}"),
    };
    ok(
        &mut watcher,
        Request::PostWatch {
            posts: vec![post.clone()],
        },
    )
    .await;
    typed_and_seen(&mut writer, &mut watcher, &post, 7).await;

    // The leader stops; another worker takes over and learns the watch from edge B's renewal.
    stop(worker1).await;
    let worker2 = hubbub::roles::start(Role::Worker(services), config.clone())
        .await
        .expect("worker 2");
    typed_and_seen(&mut writer, &mut watcher, &post, 9).await;

    // A comment (handled by the feed service on a worker) reaches the count watchers see.
    ok(
        &mut writer,
        Request::CommentCreate {
            post: post.clone(),
            text: "done".into(),
            idempotency_key: None,
        },
    )
    .await;
    until(&mut watcher, "comment count", |f| {
        matches!(f, ServerFrame::Engagement { comments: 1, .. })
    })
    .await;
    for r in [edge_a, edge_b, router, worker2] {
        stop(r).await;
    }
}

/// The next presence event for `user` with this status (bounded).
async fn presence(watcher: &mut Socket, user: &str, status: PresenceStatus) {
    until(
        watcher,
        "presence",
        |f| matches!(f, ServerFrame::Presence(p) if p.user == user && p.status == status),
    )
    .await;
}

#[tokio::test]
async fn presence_is_seen_from_another_edge() {
    let (config, _dir) = config().await;
    let edge_a = hubbub::roles::start(Role::Edge, config.clone())
        .await
        .expect("edge a");
    let edge_b = hubbub::roles::start(Role::Edge, config.clone())
        .await
        .expect("edge b");
    let (a, b) = (
        format!("http://{}", edge_a.addr),
        format!("http://{}", edge_b.addr),
    );
    let auth = Client::new(&a)
        .signup("roamer", "password123")
        .await
        .expect("signup");
    let mut watcher = user(&b, "watcher").await;
    let r = ok(
        &mut watcher,
        Request::PresenceWatch {
            users: vec![auth.user.id.clone()],
        },
    )
    .await;
    match r {
        ReplyData::Presence { presence } => {
            assert_eq!(presence[0].status, PresenceStatus::Offline)
        }
        other => panic!("watch: {other:?}"),
    }
    // The user connects to the other edge: online; sets away; leaves: offline.
    let (mut s, _) = Client::new(&a)
        .connect(&auth.access_token)
        .await
        .expect("connect");
    presence(&mut watcher, &auth.user.id, PresenceStatus::Online).await;
    ok(
        &mut s,
        Request::PresenceSet {
            status: SetPresenceStatus::Away,
        },
    )
    .await;
    presence(&mut watcher, &auth.user.id, PresenceStatus::Away).await;
    s.close().await;
    presence(&mut watcher, &auth.user.id, PresenceStatus::Offline).await;
    // A late watcher on the first edge sees what the other edge set.
    let mut late = user(&a, "latecomer").await;
    match ok(
        &mut late,
        Request::PresenceWatch {
            users: vec![auth.user.id.clone()],
        },
    )
    .await
    {
        ReplyData::Presence { presence } => {
            assert_eq!(presence[0].status, PresenceStatus::Offline);
            assert!(presence[0].last_seen_ts.is_some(), "seen while online");
        }
        other => panic!("watch: {other:?}"),
    }
    for r in [edge_a, edge_b] {
        stop(r).await;
    }
}

/// A big message to a big online group makes a delivery batch of megabytes for one edge:
/// it arrives whole (split into bodies the edge accepts), and the sender gets its `ok`.
#[tokio::test]
async fn a_large_message_reaches_a_large_group_on_another_edge() {
    let (mut config, _dir) = config().await;
    config.limits.max_text_chars = 16_000;
    config.limits.max_frame_bytes = 64 * 1024;
    config.auth.app_hmac_secret = Some(crate::support::APP_SECRET.into());
    let roles = TwoEdges::start(&config).await;
    let (a, b) = (roles.a.clone(), roles.b.clone());
    // 150 members online on edge b: 150 events of 16 KB, about 2.5 MB for that edge.
    let mut members = Vec::new();
    for i in 0..150 {
        let (mut s, _) = Client::new(&b)
            .connect(&crate::support::app_token(&format!("big{i}"), 3600, None))
            .await
            .expect("connect");
        let _timeline = next(&mut s).await;
        members.push(s);
    }
    let (mut sender, _) = Client::new(&a)
        .connect(&crate::support::app_token("sender", 3600, None))
        .await
        .expect("connect");
    let _timeline = next(&mut sender).await;
    let ids: Vec<String> = (0..150).map(|i| format!("big{i}")).collect();
    let conversation = match ok(&mut sender, crate::support::group(ids)).await {
        ReplyData::Conversation { conversation } => conversation.id,
        other => panic!("{other:?}"),
    };
    let text = "x".repeat(16_000);
    ok(
        &mut sender,
        crate::support::send(&conversation, "big-1", &text),
    )
    .await;
    for m in &mut members {
        until(m, "the large message", |f| {
            matches!(f, ServerFrame::MessageNew { message, .. } if message.text.len() == 16_000)
        })
        .await;
    }
    roles.stop().await;
}

/// A server API call to `base` with the bootstrap key: status and JSON body.
async fn server_api(
    base: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(crate::control::BOOT);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("in time")
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// The WebSocket close code a raw connection gets next (frames before it are skipped).
async fn close_code(ws: &mut crate::support::Raw) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
            None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// The server API on roles apart: a system message posted through one edge reaches a
/// member's session on the other exactly once (router, chat worker, PostgreSQL), and
/// `disconnect` and `revoke` sent to one edge close the user's sessions on both.
#[tokio::test]
async fn the_server_api_reaches_sessions_on_every_edge() {
    let (mut config, _dir) = config().await;
    config.auth.app_hmac_secret = Some(crate::support::APP_SECRET.into());
    config.api.bootstrap_key = Some(crate::control::BOOT.into());
    let roles = TwoEdges::start(&config).await;
    let (a, b) = (roles.a.clone(), roles.b.clone());
    for id in ["ann", "ben"] {
        let (st, _) = server_api(&a, "/v1/server/users", Some(serde_json::json!({"id": id}))).await;
        assert_eq!(st, 201);
    }
    let token = crate::support::app_token("ann", 3600, None);
    let (mut on_b, _) = Client::new(&b).connect(&token).await.expect("connect");
    let _timeline = next(&mut on_b).await;
    let (st, body) = server_api(
        &a,
        "/v1/server/conversations",
        Some(serde_json::json!({"kind":"group","members":["ann","ben"]})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let conv = body["conversation"]["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/server/conversations/{conv}/messages");
    let (st, first) = server_api(
        &a,
        &path,
        Some(serde_json::json!({"text":"hi all","idempotency_key":"s1"})),
    )
    .await;
    assert_eq!(st, 201, "{first}");
    let id = first["message"]["id"].as_str().expect("id").to_owned();
    until(&mut on_b, "the system message on the other edge", |f| {
        matches!(f, ServerFrame::MessageNew { message, .. } if message.id == id && message.sender == "system")
    })
    .await;
    let (st, again) = server_api(
        &b,
        &path,
        Some(serde_json::json!({"text":"hi all","idempotency_key":"s1"})),
    )
    .await;
    assert_eq!(
        (st, &again["message"]["id"]),
        (200, &first["message"]["id"])
    );
    on_b.close().await;

    // One raw session on each edge; disconnect through edge b closes both with 4000.
    let raw = |base: &str| {
        let url = format!(
            "{}/v1/ws?access_token={token}",
            base.replacen("http", "ws", 1)
        );
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .expect("connect")
                .0
        }
    };
    let (mut one, mut two) = (raw(&a).await, raw(&b).await);
    // Both sessions are registered once each has its hello.
    for ws in [&mut one, &mut two] {
        assert!(matches!(
            crate::support::next_raw(ws).await,
            Some(ServerFrame::Hello { .. })
        ));
    }
    let (st, body) = server_api(&b, "/v1/server/users/ann/disconnect", None).await;
    assert_eq!((st, &body), (200, &serde_json::json!({"sessions": 2})));
    assert_eq!(close_code(&mut one).await, Some(4000));
    assert_eq!(close_code(&mut two).await, Some(4000));
    // Revoke through edge a closes a session on edge b with 4001.
    let mut three = raw(&b).await;
    assert!(matches!(
        crate::support::next_raw(&mut three).await,
        Some(ServerFrame::Hello { .. })
    ));
    let (st, _) = server_api(&a, "/v1/server/users/ann/revoke", None).await;
    assert_eq!(st, 200);
    assert_eq!(close_code(&mut three).await, Some(4001));
    roles.stop().await;
}

/// Erasure on roles apart (PostgreSQL, Redis): `DELETE /v1/server/users/{id}` sent to one edge
/// closes the user's session on the other with 4001, and a member connected to the other edge
/// is told of the tombstone there; history and search on PostgreSQL show it erased.
#[tokio::test]
async fn erasure_reaches_every_edge() {
    let (mut config, _dir) = config().await;
    config.auth.app_hmac_secret = Some(crate::support::APP_SECRET.into());
    config.api.bootstrap_key = Some(crate::control::BOOT.into());
    let roles = TwoEdges::start(&config).await;
    let (a, b) = (roles.a.clone(), roles.b.clone());
    for id in ["ida", "jon"] {
        let (st, _) = server_api(&a, "/v1/server/users", Some(serde_json::json!({"id": id}))).await;
        assert_eq!(st, 201);
    }
    let (st, body) = server_api(
        &a,
        "/v1/server/conversations",
        Some(serde_json::json!({"kind":"group","members":["ida","jon"]})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let conv = body["conversation"]["id"].as_str().expect("id").to_owned();
    let (st, sent) = server_api(
        &a,
        &format!("/v1/server/conversations/{conv}/messages"),
        Some(serde_json::json!({"sender":"ida","text":"quince jam","idempotency_key":"q1"})),
    )
    .await;
    assert_eq!(st, 201, "{sent}");
    let id = sent["message"]["id"].as_str().expect("id").to_owned();

    let jon = crate::support::app_token("jon", 3600, None);
    let (mut on_b, _) = Client::new(&b).connect(&jon).await.expect("connect");
    let _timeline = next(&mut on_b).await;
    let ida = crate::support::app_token("ida", 3600, None);
    let url = format!("{}/v1/ws?access_token={ida}", b.replacen("http", "ws", 1));
    let mut ida_on_b = tokio_tungstenite::connect_async(url.clone())
        .await
        .expect("connect")
        .0;
    assert!(matches!(
        crate::support::next_raw(&mut ida_on_b).await,
        Some(ServerFrame::Hello { .. })
    ));

    let erase = || async {
        let resp = reqwest::Client::new()
            .delete(format!("{a}/v1/server/users/ida"))
            .bearer_auth(crate::control::BOOT)
            .send()
            .await
            .expect("send");
        resp.status().as_u16()
    };
    assert_eq!(erase().await, 204);
    assert_eq!(close_code(&mut ida_on_b).await, Some(4001));
    until(&mut on_b, "the tombstone on the other edge", |f| {
        matches!(f, ServerFrame::MessageUpdated { message, .. }
            if message.id == id && message.deleted && message.text.is_empty())
    })
    .await;
    let ReplyData::History { messages, .. } = ok(
        &mut on_b,
        Request::MessageHistory {
            conversation: conv.clone(),
            before: None,
            limit: None,
            thread: None,
        },
    )
    .await
    else {
        panic!("no history")
    };
    let gone = messages.iter().find(|m| m.id == id).expect("in history");
    assert!(gone.deleted && gone.text.is_empty(), "{gone:?}");
    let found = ok(
        &mut on_b,
        Request::MessageSearch {
            query: "quince".into(),
            conversation: None,
        },
    )
    .await;
    assert_eq!(found, ReplyData::Search { messages: vec![] });
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "the erased user's token is refused on every edge"
    );
    assert_eq!(erase().await, 204, "again");
    on_b.close().await;
    roles.stop().await;
}

/// Contacts on roles apart (PostgreSQL, Redis): a note set through one edge reaches the
/// owner's session on another edge as `contact.updated` and lists there; the edges seal it for
/// the queue and the chat worker opens it, all reading the shared `<data_dir>/note-keys`; no
/// row of PostgreSQL holds the note in clear text.
#[tokio::test]
async fn contacts_work_across_edges_with_notes_sealed_in_postgres() {
    let (config, _dir) = config().await;
    let roles = TwoEdges::start(&config).await;
    let (a, b) = (roles.a.clone(), roles.b.clone());
    let auth = Client::new(&a)
        .signup("ct_owner", "password123")
        .await
        .expect("signup");
    let friend = Client::new(&a)
        .signup("ct_friend", "password123")
        .await
        .expect("signup");
    let (mut on_a, _) = Client::new(&a)
        .connect(&auth.access_token)
        .await
        .expect("connect a");
    let _timeline = next(&mut on_a).await;
    let (mut on_b, _) = Client::new(&b)
        .connect(&auth.access_token)
        .await
        .expect("connect b");
    let _timeline = next(&mut on_b).await;
    let secret = "quokka umbrella seventy";
    let set = Request::ContactSet {
        user: friend.user.id.clone(),
        group: Some("close".into()),
        note: Some(secret.into()),
    };
    match ok(&mut on_a, set).await {
        ReplyData::Contact { contact } => assert_eq!(contact.note.as_deref(), Some(secret)),
        other => panic!("set: {other:?}"),
    }
    let f = until(&mut on_b, "contact.updated on the other edge", |f| {
        matches!(f, ServerFrame::ContactUpdated { .. })
    })
    .await;
    assert!(
        matches!(&f, ServerFrame::ContactUpdated { contact: Some(c), .. } if c.note.as_deref() == Some(secret)),
        "{f:?}"
    );
    match ok(&mut on_b, Request::ContactList {}).await {
        ReplyData::Contacts { contacts } => {
            assert_eq!(contacts.len(), 1);
            assert_eq!(contacts[0].note.as_deref(), Some(secret));
        }
        other => panic!("list: {other:?}"),
    }
    // PostgreSQL holds no note in clear text: neither the contact nor the inbox row.
    let url = config.cluster.postgres_url.clone().expect("url");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT note, note_key FROM contacts WHERE owner = $1",
            &[&auth.user.id],
        )
        .await
        .expect("contact row");
    let (note, key): (Vec<u8>, String) = (row.get(0), row.get(1));
    assert_eq!(key, "k1");
    assert!(!note.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let frames: Vec<String> = client
        .query(
            "SELECT frame FROM inbox WHERE user_id = $1 AND frame IS NOT NULL",
            &[&auth.user.id],
        )
        .await
        .expect("inbox")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!frames.is_empty());
    assert!(frames.iter().all(|f| !f.contains(secret)), "{frames:?}");
    roles.stop().await;
}
