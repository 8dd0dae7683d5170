//! The holes found by the security review, each proven closed over real sockets: a real
//! server on 127.0.0.1:0, real HTTP and WebSocket clients.

use crate::support::*;
use futures_util::SinkExt;
use hubbub_protocol::{PresenceStatus, ReplyData, Request, ServerFrame};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn post_json(base: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("post")
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("get")
}

async fn code_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// Critical: a user created by an app token has no password, and the dummy hash used to
/// keep failures constant-time must never log them in.
#[tokio::test]
async fn an_app_token_user_cannot_log_in_with_any_password() {
    let s = server_with(|c| c.auth.app_hmac_secret = Some(APP_SECRET.into())).await;
    let token = app_token("victim", 3600, None);
    let resp = get(&format!("{}/v1/users/victim", s.base), Some(&token)).await;
    assert_eq!(resp.status().as_u16(), 200, "the app user exists now");
    for password in ["not a real password", "password123", ""] {
        let resp = post_json(
            &s.base,
            "/v1/auth/login",
            json!({"handle": "victim", "password": password}),
        )
        .await;
        assert_eq!(
            code_of(resp).await,
            (401, "unauthorized".to_owned()),
            "{password:?}"
        );
    }
}

#[tokio::test]
async fn a_short_or_empty_app_secret_refuses_to_start() {
    for secret in ["", "short", &"x".repeat(31)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = hubbub::config::Config {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..Default::default()
        };
        config.auth.app_hmac_secret = Some(secret.to_owned());
        let e = match hubbub::serve::start(config).await {
            Ok(_) => panic!("started with a {}-byte app secret", secret.len()),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("at least 32"), "{e}");
    }
}

#[tokio::test]
async fn media_types_are_strict_and_media_is_served_inert() {
    let s = server().await;
    let (_, token) = s.user("alice").await;
    let upload = |ty: &'static str| {
        let (base, token) = (s.base.clone(), token.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/media"))
                .bearer_auth(token)
                .header("content-type", ty)
                .body(b"<svg onload=alert(1)>".to_vec())
                .send()
                .await
                .expect("upload")
        }
    };
    for bad in [
        "image/svg+xml",
        "image/png,text/html",
        "text/html",
        "image/png, image/svg+xml",
        "application/octet-stream",
    ] {
        assert_eq!(
            code_of(upload(bad).await).await,
            (400, "bad_request".to_owned()),
            "{bad}"
        );
    }
    let resp = upload("image/png; charset=binary").await;
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["media"]["content_type"], "image/png");
    let url = format!("{}{}", s.base, body["media"]["url"].as_str().expect("url"));
    let resp = get(&url, Some(&token)).await;
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-security-policy"], "default-src 'none'; sandbox");
    let disposition = h["content-disposition"].to_str().expect("ascii");
    assert!(
        disposition.starts_with("inline; filename="),
        "{disposition}"
    );
}

/// Acks have a limit of their own: a flood far over it closes the connection with 1008; an
/// ack with an id gets a reply, and the highest ack is what the store records.
#[tokio::test]
async fn acks_have_their_own_limit_and_get_replies() {
    let s = server_with(|c| c.limits.acks_per_s = 20).await;
    let (_, token) = s.user("acker").await;
    let mut ws = raw(&s, &token).await;
    ws.send(Message::Text(r#"{"type":"ack","id":"a1","seq":0}"#.into()))
        .await
        .expect("send");
    match next_raw(&mut ws).await {
        Some(ServerFrame::Ok { id, data }) => {
            assert_eq!(id, "a1");
            assert!(matches!(data, ReplyData::Empty {}));
        }
        other => panic!("expected ok to the ack, got {other:?}"),
    }
    // 101 acks in one frame: more than five times 20 within a second.
    let flood: Vec<String> = (1..=101)
        .map(|i| format!(r#"{{"type":"ack","seq":{i}}}"#))
        .collect();
    ws.send(Message::Text(flood.join("\n").into()))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    // The server stays up for everyone else.
    let (_, other) = s.user("bystander").await;
    let (mut b, _) = s.connect(&other).await;
    ok(&mut b, Request::ConversationList {}).await;
}

#[tokio::test]
async fn a_user_holds_at_most_the_session_cap() {
    let s = server_with(|c| c.server.max_sessions_per_user = 2).await;
    let (_, token) = s.user("many").await;
    let mut first = raw(&s, &token).await;
    let (mut second, _) = s.connect(&token).await;
    let (mut third, _) = s.connect(&token).await;
    // The oldest session is closed with 4000; the newer ones keep working.
    assert_eq!(close_code(&mut first).await, Some(CloseCode::from(4000)));
    ok(&mut second, Request::ConversationList {}).await;
    ok(&mut third, Request::ConversationList {}).await;
}

#[tokio::test]
async fn connections_past_the_per_ip_cap_are_refused_with_429() {
    let s = server_with(|c| c.server.max_connections_per_ip = 3).await;
    let addr = s.running.as_ref().expect("running").addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // Wait until the server has counted them: a fourth is refused.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, code) = code_of(get(&format!("{}/healthz", s.base), None).await).await;
        if status == 429 {
            assert_eq!(code, "rate_limited");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(held);
    wait_healthy(&s.base).await;
}

#[tokio::test]
async fn connections_past_the_server_cap_get_503_and_health_recovers() {
    let s = server_with(|c| {
        c.server.max_connections = 4;
        c.server.header_timeout_ms = 60_000;
    })
    .await;
    let addr = s.running.as_ref().expect("running").addr;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, code) = code_of(get(&format!("{}/healthz", s.base), None).await).await;
        if status == 503 {
            assert_eq!(code, "unavailable");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(held);
    wait_healthy(&s.base).await;
}

async fn wait_healthy(base: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
            && r.status().as_u16() == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never healthy again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A client that sends half a request head is disconnected after the header timeout,
/// instead of holding its connection for ever.
#[tokio::test]
async fn half_sent_requests_are_cut_off() {
    let s = server_with(|c| c.server.header_timeout_ms = 300).await;
    let addr = s.running.as_ref().expect("running").addr;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut buf))
        .await
        .expect("the server closed the connection in time");
    assert!(read.is_ok() || !buf.is_empty());
}

#[tokio::test]
async fn login_and_signup_are_rate_limited_per_handle_and_ip() {
    let s = server_with(|c| {
        c.auth.attempts_per_handle_per_minute = 1;
        c.auth.attempts_per_handle_burst = 3;
        c.auth.attempts_per_ip_per_minute = 1;
        c.auth.attempts_per_ip_burst = 6;
    })
    .await;
    s.user("target").await; // one signup attempt from this IP
    for _ in 0..3 {
        let resp = post_json(
            &s.base,
            "/v1/auth/login",
            json!({"handle":"target","password":"guess-guess"}),
        )
        .await;
        assert_eq!(code_of(resp).await.0, 401);
    }
    let resp = post_json(
        &s.base,
        "/v1/auth/login",
        json!({"handle":"target","password":"guess-guess"}),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["retry_after_ms"].as_u64().is_some());
    // Another handle is not limited by the first one's bucket, until the IP's runs out.
    let resp = post_json(
        &s.base,
        "/v1/auth/login",
        json!({"handle":"other","password":"guess-guess"}),
    )
    .await;
    assert_eq!(code_of(resp).await.0, 401);
    let resp = post_json(
        &s.base,
        "/v1/auth/signup",
        json!({"handle":"newcomer","password":"password123"}),
    )
    .await;
    assert_eq!(code_of(resp).await, (429, "rate_limited".to_owned()));
}

#[tokio::test]
async fn presence_watches_are_bounded_and_a_blocker_is_hidden() {
    let s = server_with(|c| c.limits.max_presence_watches = 3).await;
    let (a, at) = s.user("watcher").await;
    let (b, bt) = s.user("blocker").await;
    let (c, ct) = s.user("friend").await;
    let (d, _) = s.user("fourth").await;
    let (e, _) = s.user("fifth").await;
    let (mut bs, _) = s.connect(&bt).await;
    ok(&mut bs, Request::BlockAdd { user: a.id.clone() }).await;
    let (mut ws, _) = s.connect(&at).await;
    let data = ok(
        &mut ws,
        Request::PresenceWatch {
            users: vec![b.id.clone(), c.id.clone()],
        },
    )
    .await;
    let ReplyData::Presence { presence } = data else {
        panic!("{data:?}")
    };
    let of_b = presence.iter().find(|p| p.user == b.id).expect("b listed");
    assert_eq!(
        (of_b.status, of_b.last_seen_ts),
        (PresenceStatus::Offline, None),
        "the blocker is online, but hidden from the user it blocks"
    );
    err(
        &mut ws,
        Request::PresenceWatch {
            users: vec![d.id.clone(), e.id.clone()],
        },
        "too_large",
    )
    .await;
    ok(
        &mut ws,
        Request::PresenceUnwatch {
            users: vec![c.id.clone()],
        },
    )
    .await;
    ok(
        &mut ws,
        Request::PresenceWatch {
            users: vec![d.id.clone()],
        },
    )
    .await;
    // The blocker's status changes reach no one it blocks; a friend's do.
    ok(
        &mut bs,
        Request::PresenceSet {
            status: hubbub_protocol::SetPresenceStatus::Away,
        },
    )
    .await;
    ok(
        &mut ws,
        Request::PresenceWatch {
            users: vec![c.id.clone()],
        },
    )
    .await;
    let (_cs, _) = s.connect(&ct).await;
    let f = until(&mut ws, "presence", |f| {
        matches!(f, ServerFrame::Presence { .. })
    })
    .await;
    let ServerFrame::Presence(p) = f else {
        unreachable!()
    };
    assert_eq!(
        p.user, c.id,
        "the first presence event is the friend's, not the blocker's"
    );
}

#[tokio::test]
async fn the_auth_frame_keeps_a_session_past_its_first_token() {
    let s = server_with(|c| {
        c.auth.app_hmac_secret = Some(APP_SECRET.into());
        c.auth.expiry_grace_s = 0;
    })
    .await;
    let short = app_token("renewer", 3, None);
    let (_, other) = s.user("someone").await;
    let (mut renewed, _) = s.connect(&short).await;
    let (mut lapsing, _) = s.connect(&app_token("lapser", 3, None)).await;
    // Renewed first, well within the first token's three seconds.
    let data = ok(
        &mut renewed,
        Request::Auth {
            access_token: app_token("renewer", 3600, None),
        },
    )
    .await;
    let ReplyData::Auth { expires_ts } = data else {
        panic!("{data:?}")
    };
    assert!(expires_ts > 0);
    // Another user's token, or a bad one, changes nothing.
    err(
        &mut renewed,
        Request::Auth {
            access_token: other,
        },
        "forbidden",
    )
    .await;
    err(
        &mut renewed,
        Request::Auth {
            access_token: "not a token".into(),
        },
        "unauthorized",
    )
    .await;
    // The session that sent no `auth` is closed with 4001 once its token lapsed; the one that
    // did keeps working after that.
    while let Ok(Some(_)) = tokio::time::timeout(PATIENCE, lapsing.next_frame())
        .await
        .expect("closed in time")
    {}
    assert_eq!(lapsing.close_code(), Some(4001));
    ok(&mut renewed, Request::ConversationList {}).await;
}

#[tokio::test]
async fn app_token_audience_is_enforced() {
    let s = server_with(|c| {
        c.auth.app_hmac_secret = Some(APP_SECRET.into());
        c.auth.app_audience = Some("my-app".into());
    })
    .await;
    let url = format!("{}/v1/users/aud_user", s.base);
    let good = app_token("aud_user", 600, Some("my-app"));
    assert_eq!(get(&url, Some(&good)).await.status().as_u16(), 200);
    for bad in [
        app_token("aud_user", 600, Some("another-app")),
        app_token("aud_user", 600, None),
    ] {
        assert_eq!(code_of(get(&url, Some(&bad)).await).await.0, 401);
    }
    let plain = server_with(|c| c.auth.app_hmac_secret = Some(APP_SECRET.into())).await;
    let url = format!("{}/v1/users/aud_user", plain.base);
    let with_aud = app_token("aud_user", 600, Some("my-app"));
    assert_eq!(code_of(get(&url, Some(&with_aud)).await).await.0, 401);
}

#[tokio::test]
async fn operational_endpoints_move_to_the_admin_listener() {
    let s = server_with(|c| c.admin_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let admin = s
        .running
        .as_ref()
        .and_then(|r| r.admin_addr)
        .expect("admin listener bound");
    for path in ["/metrics", "/readyz"] {
        assert_eq!(
            code_of(get(&format!("{}{path}", s.base), None).await).await,
            (404, "not_found".to_owned()),
            "{path} on the public listener"
        );
        assert_eq!(
            get(&format!("http://{admin}{path}"), None)
                .await
                .status()
                .as_u16(),
            200,
            "{path} on the admin listener"
        );
    }
    for base in [s.base.clone(), format!("http://{admin}")] {
        assert_eq!(
            get(&format!("{base}/healthz"), None)
                .await
                .status()
                .as_u16(),
            200
        );
    }
}

/// A peer that completes the upgrade and then never reads nor answers pings is dropped after
/// the idle timeout: the server closes the TCP connection.
#[tokio::test]
async fn a_peer_that_never_answers_pings_is_dropped() {
    let s = server_with(|c| c.server.ping_interval_s = 1).await;
    let (_, token) = s.user("silent").await;
    let addr = s.running.as_ref().expect("running").addr;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /v1/ws?access_token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut buf)).await;
    assert!(
        ended.is_ok(),
        "the server never closed the silent connection"
    );
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf[..buf.len().min(80)])
    );
}

/// Revoking a user's tokens closes every open session of the user with 4001 at once, and
/// every token issued before is refused; a new login works.
#[tokio::test]
async fn revoking_closes_sessions_and_refuses_old_tokens() {
    let s = server().await;
    let (_, token) = s.user("revoked").await;
    let (mut one, _) = s.connect(&token).await;
    let (mut two, _) = s.connect(&token).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/auth/revoke", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status().as_u16(), 200);
    for socket in [&mut one, &mut two] {
        while let Ok(Some(_)) = tokio::time::timeout(PATIENCE, socket.next_frame())
            .await
            .expect("closed in time")
        {}
        assert_eq!(socket.close_code(), Some(4001));
    }
    let url = format!("{}/v1/users/revoked", s.base);
    assert_eq!(
        code_of(get(&url, Some(&token)).await).await,
        (401, "unauthorized".to_owned())
    );
    assert!(
        s.client().connect(&token).await.is_err(),
        "the old token opens no session"
    );
    let fresh = s
        .client()
        .login("revoked", "password123")
        .await
        .expect("login again");
    assert_eq!(
        get(&url, Some(&fresh.access_token)).await.status().as_u16(),
        200
    );
}

/// Post ids past any real id's length are refused before the engagement path remembers
/// them (typing on made-up ids must not grow memory).
#[tokio::test]
async fn made_up_post_ids_are_refused_on_the_engagement_path() {
    let s = server().await;
    let (_, token) = s.user("typist").await;
    let (mut ws, _) = s.connect(&token).await;
    let long = "p".repeat(65);
    err(
        &mut ws,
        Request::CommentTyping {
            post: long.clone(),
            words: 3,
        },
        "bad_request",
    )
    .await;
    err(
        &mut ws,
        Request::PostWatch { posts: vec![long] },
        "bad_request",
    )
    .await;
    let resp = get(
        &format!("{}/v1/sse?streams=post:{}", s.base, "q".repeat(65)),
        Some(&token),
    )
    .await;
    assert_eq!(code_of(resp).await, (400, "bad_request".to_owned()));
}

/// The `archive` log of every routed request is pruned by size (and age), so accepted and
/// refused writes alike cannot fill the disk.
#[tokio::test]
async fn the_archive_log_is_pruned() {
    use hubbub_queue::Log;
    let mut s = server_with(|c| c.server.archive_max_bytes = 1).await;
    let (b, _) = s.user("archived_b").await;
    let (_, at) = s.user("archived_a").await;
    let (mut a, _) = s.connect(&at).await;
    let conv = match ok(&mut a, group(vec![b.id.clone()])).await {
        ReplyData::Conversation { conversation } => conversation.id,
        other => panic!("{other:?}"),
    };
    for i in 0..5 {
        ok(&mut a, send(&conv, &format!("k{i}"), "kept for a while")).await;
    }
    let before = {
        let q = &s.running.as_ref().expect("running").queue;
        q.log_stats(hubbub_router::ARCHIVE_LOG)
            .await
            .expect("stats")
    };
    assert!(before.next_offset >= 6, "{before:?}");
    a.close().await;
    // Retention runs when the scheduler starts, and every 5 minutes after.
    s.restart().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let q = &s.running.as_ref().expect("running").queue;
        let stats = q
            .log_stats(hubbub_router::ARCHIVE_LOG)
            .await
            .expect("stats");
        if stats.first_offset >= before.next_offset - 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never pruned: {stats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Uploads count against a per-user quota, and what was spooled for a refused upload is
/// removed.
#[tokio::test]
async fn media_uploads_have_a_quota() {
    let s = server_with(|c| c.limits.media_quota_bytes = 100).await;
    let (_, token) = s.user("uploader").await;
    let upload = |n: usize| {
        let (base, token) = (s.base.clone(), token.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/media"))
                .bearer_auth(token)
                .header("content-type", "image/png")
                .body(vec![7u8; n])
                .send()
                .await
                .expect("upload")
        }
    };
    assert_eq!(upload(60).await.status().as_u16(), 201);
    let (status, code) = code_of(upload(60).await).await;
    assert_eq!((status, code.as_str()), (413, "too_large"));
    assert_eq!(
        upload(40).await.status().as_u16(),
        201,
        "what fits still goes in"
    );
    let spool = s.config.data_dir.join("spool");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .map(|d| d.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spooled files left: {left:?}");
}
