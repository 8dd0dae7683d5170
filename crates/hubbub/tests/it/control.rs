//! The control plane (PROTOCOL.md 1.1): API keys and the admin API's auth, the runtime config
//! (compare and set, validation naming the field, floors naming the cost, the long poll),
//! feature flags in `hello` and pushed on change, limits applied live, per-session debug
//! logging, and `hubbub apikey create`.

use crate::support::*;
use hubbub_protocol::admin::{Flag, RuntimeConfig};
use hubbub_protocol::{ReplyData, Request, ServerFrame};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The bootstrap key of these tests' servers.
pub const BOOT: &str = "bootstrap-key-bootstrap-key-bootstrap";

pub async fn control_server() -> TestServer {
    server_with(|c| c.api.bootstrap_key = Some(BOOT.into())).await
}

/// An admin API call: the status and the JSON body (null when empty).
pub async fn admin(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", s.base));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = tokio::time::timeout(PATIENCE * 8, req.send())
        .await
        .expect("an answer in time")
        .expect("send");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// PUT a runtime config based on `version`; returns the status and body.
async fn put(s: &TestServer, version: u64, config: Value) -> (u16, Value) {
    admin(
        s,
        reqwest::Method::PUT,
        "/v1/admin/config",
        Some(BOOT),
        Some(json!({"version": version, "config": config})),
    )
    .await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn api_keys_gate_the_admin_api_by_scope_and_revoke_at_once() {
    use reqwest::Method;
    let s = control_server().await;
    let (st, body) = admin(&s, Method::GET, "/v1/admin/config", None, None).await;
    assert_eq!((st, code(&body)), (401, "unauthorized"));
    let (st, _) = admin(&s, Method::GET, "/v1/admin/config", Some("hbk_0000"), None).await;
    assert_eq!(st, 401, "an unknown key");
    // The bootstrap key makes a server key and an admin key.
    let (st, server_key) = admin(
        &s,
        Method::POST,
        "/v1/admin/apikeys",
        Some(BOOT),
        Some(json!({"name": "backend", "scopes": ["server"]})),
    )
    .await;
    assert_eq!(st, 201, "{server_key}");
    let server_key = server_key["key"].as_str().expect("key").to_owned();
    let (st, body) = admin(&s, Method::GET, "/v1/admin/config", Some(&server_key), None).await;
    assert_eq!((st, code(&body)), (403, "forbidden"), "no admin scope");
    // The CLI makes the admin key, through the same API.
    let created = hubbub::client::Client::new(&s.base)
        .create_api_key(BOOT, "ops", &["admin".into()])
        .await
        .expect("create");
    let (st, listed) = admin(
        &s,
        Method::GET,
        "/v1/admin/apikeys",
        Some(&created.key),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["backend", "ops"]);
    assert!(
        !listed.to_string().contains(&server_key),
        "keys are never shown again"
    );
    let (st, body) = admin(
        &s,
        Method::GET,
        "/v1/admin/config",
        Some(&created.key),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let path = format!("/v1/admin/apikeys/{}", created.id);
    let (st, _) = admin(&s, Method::DELETE, &path, Some(BOOT), None).await;
    assert_eq!(st, 204);
    let (st, _) = admin(
        &s,
        Method::GET,
        "/v1/admin/config",
        Some(&created.key),
        None,
    )
    .await;
    assert_eq!(st, 401, "revoked at once");
    let (st, body) = admin(&s, Method::DELETE, &path, Some(BOOT), None).await;
    assert_eq!((st, code(&body)), (404, "not_found"));
    for bad in [
        json!({"name": "x", "scopes": ["root"]}),
        json!({"name": "", "scopes": ["admin"]}),
        json!({"name": "x"}),
    ] {
        let (st, body) = admin(&s, Method::POST, "/v1/admin/apikeys", Some(BOOT), Some(bad)).await;
        assert_eq!((st, code(&body)), (400, "bad_request"), "{body}");
    }
}

#[tokio::test]
async fn the_runtime_config_is_compare_and_set_validated_and_long_polled() {
    let s = control_server().await;
    let client = s.client();
    let now = client.runtime_config(BOOT).await.expect("get");
    assert_eq!(now.version, 0, "nothing stored yet");
    assert_eq!(now.config.limits, s.config.limits, "the file's limits");
    let mut next = now.config.clone();
    next.limits.burst = 70;
    assert_eq!(
        client
            .put_runtime_config(BOOT, 0, &next)
            .await
            .expect("put"),
        1
    );
    let (st, body) = put(&s, 0, json!({})).await;
    assert_eq!((st, code(&body)), (409, "conflict"), "a stale version");
    let got = client.runtime_config(BOOT).await.expect("get");
    assert_eq!((got.version, got.config.limits.burst), (1, 70));
    for (config, field) in [
        (json!({"limits": {"bogus": 1}}), "limits.bogus"),
        (json!({"limits": {"burst": "many"}}), "limits.burst"),
        (json!({"nope": 1}), "nope"),
        (
            json!({"flags": {"beta": {"enabled": true, "percent": 101}}}),
            "flags.beta.percent",
        ),
        (
            json!({"flags": {"beta": {"enabled": true, "percent": -1}}}),
            "flags.beta.percent",
        ),
        (json!({"debug": [{"user": "u"}]}), "debug[0]"),
    ] {
        let (st, body) = put(&s, 1, config.clone()).await;
        assert_eq!((st, code(&body)), (400, "bad_request"), "{config}: {body}");
        assert!(message(&body).starts_with(field), "{config}: {body}");
    }
    let (st, body) = put(&s, 1, json!({"intervals": {"precompute_interval_s": 5}})).await;
    assert_eq!(st, 400);
    assert!(
        message(&body).starts_with("intervals.precompute_interval_s")
            && message(&body).contains("timeline recomputations an hour"),
        "the floor names the cost: {body}"
    );
    let (st, body) = put(&s, 1, json!({"version": 3})).await;
    assert_eq!(st, 400, "a config key that is not one: {body}");
    assert_eq!(client.runtime_config(BOOT).await.expect("get").version, 1);
    // A long poll past the current version answers when the next one commits.
    let poll = {
        let base = s.base.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("{base}/v1/admin/config?after_version=1&wait_s=600"))
                .bearer_auth(BOOT)
                .send()
                .await
                .expect("poll")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    // A poll for a version already passed answers at once (with the current one).
    let (st, body) = admin(
        &s,
        reqwest::Method::GET,
        "/v1/admin/config?after_version=0&wait_s=60",
        Some(BOOT),
        None,
    )
    .await;
    assert_eq!((st, body["version"].as_u64()), (200, Some(1)));
    let (st, _) = put(&s, 1, json!({"limits": {"burst": 80}})).await;
    assert_eq!(st, 200);
    let polled = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("the poll answered")
        .expect("task");
    assert_eq!(polled["version"], 2);
    assert_eq!(polled["config"]["limits"]["burst"], 80);
    assert_eq!(
        polled["config"]["limits"]["frames_per_s"], 20,
        "a missing field takes its default"
    );
    let (st, body) = admin(
        &s,
        reqwest::Method::GET,
        "/v1/admin/config?after_version=x",
        Some(BOOT),
        None,
    )
    .await;
    assert_eq!((st, code(&body)), (400, "bad_request"));
}

fn flags_of(frame: &ServerFrame) -> BTreeMap<String, bool> {
    match frame {
        ServerFrame::Hello { flags, .. } | ServerFrame::Flags { flags } => flags.clone(),
        other => panic!("no flags in {other:?}"),
    }
}

fn flag(enabled: bool, percent: Option<f64>, users: Option<Vec<String>>) -> Flag {
    Flag {
        enabled,
        percent,
        users,
    }
}

/// PUT `config` on top of the current version.
async fn apply(s: &TestServer, config: &RuntimeConfig) -> u64 {
    let client = s.client();
    let now = client.runtime_config(BOOT).await.expect("get");
    client
        .put_runtime_config(BOOT, now.version, config)
        .await
        .expect("put")
}

#[tokio::test]
async fn flags_are_in_hello_and_pushed_to_sessions_whose_evaluation_changed() {
    let s = control_server().await;
    let (alice, at) = s.user("alice").await;
    let (_bob, bt) = s.user("bob").await;
    let (mut a, hello_a) = s.client().connect(&at).await.expect("connect");
    let (mut b, hello_b) = s.client().connect(&bt).await.expect("connect");
    let ServerFrame::Hello { protocol, .. } = &hello_a else {
        panic!("no hello")
    };
    assert_eq!(protocol, "1.1");
    assert!(flags_of(&hello_a).is_empty() && flags_of(&hello_b).is_empty());
    let mut config = s.client().runtime_config(BOOT).await.expect("get").config;
    config.flags.insert(
        "beta".into(),
        flag(true, None, Some(vec![alice.id.clone()])),
    );
    apply(&s, &config).await;
    let pushed = until(&mut a, "flags", |f| matches!(f, ServerFrame::Flags { .. })).await;
    assert_eq!(flags_of(&pushed), BTreeMap::from([("beta".into(), true)]));
    let pushed = until(&mut b, "flags", |f| matches!(f, ServerFrame::Flags { .. })).await;
    assert_eq!(flags_of(&pushed), BTreeMap::from([("beta".into(), false)]));
    // Applied on this edge (it pushed): a new session has it in hello.
    let (_a2, hello) = s.client().connect(&at).await.expect("connect");
    assert_eq!(flags_of(&hello), BTreeMap::from([("beta".into(), true)]));
    // Everyone gets it: only bob's evaluation changes, so only bob is told.
    config.flags.insert("beta".into(), flag(true, None, None));
    apply(&s, &config).await;
    let pushed = until(&mut b, "flags", |f| matches!(f, ServerFrame::Flags { .. })).await;
    assert_eq!(flags_of(&pushed), BTreeMap::from([("beta".into(), true)]));
    // Then a new flag for alice alone: alice's first `flags` frame is this one (she was not
    // told of the change that did not concern her), and bob is told nothing.
    config.flags.insert(
        "gamma".into(),
        flag(true, Some(0.0), Some(vec![alice.id.clone()])),
    );
    apply(&s, &config).await;
    let pushed = until(&mut a, "flags", |f| matches!(f, ServerFrame::Flags { .. })).await;
    assert_eq!(
        flags_of(&pushed),
        BTreeMap::from([("beta".into(), true), ("gamma".into(), true)])
    );
    // Bob: gamma is false for him, a change of his map ({beta} → {beta, gamma:false}), so he
    // gets the whole map too.
    let pushed = until(&mut b, "flags", |f| matches!(f, ServerFrame::Flags { .. })).await;
    assert_eq!(
        flags_of(&pushed),
        BTreeMap::from([("beta".into(), true), ("gamma".into(), false)])
    );
}

#[tokio::test]
async fn limits_apply_live_from_the_next_frame() {
    let s = control_server().await;
    let (alice, at) = s.user("alice").await;
    let (mut a, _) = s.connect(&at).await;
    let big = "x".repeat(2_000);
    let mut config = s.client().runtime_config(BOOT).await.expect("get").config;
    config.limits.max_frame_bytes = 1_000;
    config.limits.max_text_chars = 10;
    // The flag is the marker: once alice is told of it, her edge applies the new limits.
    config.flags.insert(
        "marker".into(),
        flag(true, None, Some(vec![alice.id.clone()])),
    );
    apply(&s, &config).await;
    until(&mut a, "flags", |f| matches!(f, ServerFrame::Flags { .. })).await;
    let frame = json!({"type": "presence.set", "id": "r1", "status": big}).to_string();
    a.send_text(&frame).await.expect("send");
    let e = until(&mut a, "too_large", |f| {
        matches!(f, ServerFrame::Error { .. })
    })
    .await;
    let ServerFrame::Error { code, .. } = e else {
        unreachable!()
    };
    assert_eq!(code, hubbub_protocol::ErrorCode::TooLarge);
    let r = a
        .request(Request::BlockList {})
        .await
        .expect("a small frame still works");
    assert!(matches!(r, ServerFrame::Ok { .. }), "{r:?}");
    // The services follow the runtime limits too (the feed service's text limit); a config
    // applied in this process is applied in all its services, the edge told the client first.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = a
            .request(Request::PostCreate {
                text: "more than ten characters".into(),
                attachments: None,
                idempotency_key: None,
            })
            .await
            .expect("reply");
        if let ServerFrame::Error { code, .. } = &r {
            assert_eq!(*code, hubbub_protocol::ErrorCode::TooLarge);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed service never applied the limit"
        );
    }
    // The engagement aggregator's word cap is the same live limit.
    let ReplyData::Post { post } = ok(
        &mut a,
        Request::PostCreate {
            text: "short".into(),
            attachments: None,
            idempotency_key: None,
        },
    )
    .await
    else {
        panic!("a post")
    };
    let typing = |words: u32| {
        json!({"type": "comment.typing", "id": format!("ct{words}"), "post": post.id, "words": words})
            .to_string()
    };
    a.send_text(&typing(10)).await.expect("send");
    let r = until(
        &mut a,
        "ct10",
        |f| matches!(f, ServerFrame::Ok { id, .. } if id == "ct10"),
    )
    .await;
    assert!(matches!(r, ServerFrame::Ok { .. }));
    a.send_text(&typing(11)).await.expect("send");
    let e = until(
        &mut a,
        "ct11",
        |f| matches!(f, ServerFrame::Error { id: Some(id), .. } if id == "ct11"),
    )
    .await;
    assert!(
        matches!(
            e,
            ServerFrame::Error {
                code: hubbub_protocol::ErrorCode::BadRequest,
                ..
            }
        ),
        "{e:?}"
    );
}

/// What the per-session debug log wrote (target `hubbub_debug`), for the whole test binary.
static DEBUG_LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct DebugLog;

impl std::io::Write for DebugLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        DEBUG_LOG
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture the debug target as the binary's log filter lets it through (the rest of the
/// server at its global level: nothing else here).
fn capture_debug_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                "warn,{}=debug",
                hubbub_edge::DEBUG_TARGET
            )))
            .with_writer(|| DebugLog)
            .with_ansi(false)
            .try_init();
    });
}

fn session_of(hello: &ServerFrame) -> String {
    match hello {
        ServerFrame::Hello { session, .. } => session.clone(),
        other => panic!("no hello: {other:?}"),
    }
}

/// One request with a known id, and its reply.
async fn ask(socket: &mut hubbub::client::Socket, id: &str) {
    let frame = json!({"type": "block.list", "id": id}).to_string();
    socket.send_text(&frame).await.expect("send");
    until(
        socket,
        id,
        |f| matches!(f, ServerFrame::Ok { id: i, .. } if i == id),
    )
    .await;
}

#[tokio::test]
async fn a_debug_entry_logs_only_its_session_s_frames() {
    capture_debug_log();
    let s = control_server().await;
    let (dave, dt) = s.user("dave").await;
    let (olga, ot) = s.user("olga").await;
    let mut others = Vec::new();
    for i in 0..5 {
        let (_, t) = s.user(&format!("other{i}")).await;
        let (sock, hello) = s.client().connect(&t).await.expect("connect");
        others.push((sock, session_of(&hello)));
    }
    let (mut d1, hello) = s.client().connect(&dt).await.expect("connect");
    let s1 = session_of(&hello);
    let (mut d2, hello) = s.client().connect(&dt).await.expect("connect");
    let s2 = session_of(&hello);
    let (mut o, hello) = s.client().connect(&ot).await.expect("connect");
    let so = session_of(&hello);
    let now = hubbub_queue::clock::now_ms();
    let mut config = s.client().runtime_config(BOOT).await.expect("get").config;
    config.debug = vec![
        hubbub_protocol::admin::DebugEntry {
            user: dave.id.clone(),
            session: Some(s1.clone()),
            until_ts: now + 600_000,
        },
        // Lapsed: olga is not logged.
        hubbub_protocol::admin::DebugEntry {
            user: olga.id.clone(),
            session: None,
            until_ts: now - 1,
        },
    ];
    // The marker: once dave's sessions are told of it, the edge applies the entries.
    config.flags.insert(
        "debugged".into(),
        flag(true, None, Some(vec![dave.id.clone()])),
    );
    apply(&s, &config).await;
    for d in [&mut d1, &mut d2] {
        until(d, "flags", |f| matches!(f, ServerFrame::Flags { .. })).await;
    }
    ask(&mut d1, "dbg-in-s1").await;
    ask(&mut d2, "dbg-in-s2").await;
    ask(&mut o, "dbg-in-olga").await;
    for (sock, session) in &mut others {
        ask(sock, &format!("dbg-in-{session}")).await;
    }
    let log =
        String::from_utf8_lossy(&DEBUG_LOG.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let mine: Vec<&str> = log.lines().filter(|l| l.contains(&dave.id)).collect();
    assert!(
        mine.iter()
            .any(|l| l.contains("frame in") && l.contains("dbg-in-s1") && l.contains(&s1)),
        "the debugged session's frame in is logged with user and session:\n{log}"
    );
    assert!(
        mine.iter()
            .any(|l| l.contains("frame out") && l.contains("dbg-in-s1") && l.contains(&s1)),
        "and its reply out:\n{log}"
    );
    assert!(
        mine.iter().all(|l| l.contains(&format!("session={s1}"))),
        "only that session of the user:\n{log}"
    );
    for quiet in [&s2, &so].into_iter().chain(others.iter().map(|(_, s)| s)) {
        assert!(
            !log.contains(quiet.as_str()),
            "session {quiet} was logged:\n{log}"
        );
    }
    assert!(!log.contains(&olga.id), "a lapsed entry logs nothing");
}

/// `hubbub apikey create`, the real binary, against a running server.
#[tokio::test]
async fn the_cli_creates_api_keys() {
    let s = control_server().await;
    let run = |key: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_hubbub"))
            .args([
                "apikey",
                "create",
                "--name",
                "from-cli",
                "--scopes",
                "admin,server",
            ])
            .args(["--server", &s.base])
            .env("HUBBUB_API_KEY", key)
            .output()
    };
    let out = tokio::time::timeout(PATIENCE, run(BOOT))
        .await
        .expect("in time")
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("json");
    let key = created["key"].as_str().expect("key");
    let (st, _) = admin(
        &s,
        reqwest::Method::GET,
        "/v1/admin/config",
        Some(key),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let out = tokio::time::timeout(PATIENCE, run("not-a-key"))
        .await
        .expect("in time")
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

/// `GET /v1/admin/edges`: the deployment's edges with their open sessions (one edge in
/// `serve`), admin scope only.
#[tokio::test]
async fn the_admin_api_lists_each_edge_with_its_sessions() {
    let s = control_server().await;
    let (_, t1) = s.user("edge_one").await;
    let (_, t2) = s.user("edge_two").await;
    let (a, _) = s.connect(&t1).await;
    let (b, _) = s.connect(&t2).await;
    let (c, _) = s.connect(&t2).await;
    let (status, body) = admin(
        &s,
        reqwest::Method::GET,
        "/v1/admin/edges",
        Some(BOOT),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let edges = body["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1, "{body}");
    assert_eq!(edges[0]["sessions"], 3, "{body}");
    assert!(edges[0]["edge"].as_str().is_some_and(|e| !e.is_empty()));
    drop((a, b, c));
    let (status, _) = admin(&s, reqwest::Method::GET, "/v1/admin/edges", None, None).await;
    assert_eq!(status, 401);
}
