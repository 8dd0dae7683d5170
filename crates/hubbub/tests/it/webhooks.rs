//! Webhooks (PROTOCOL.md 1.1) against a real HTTP receiver: an axum server in the test on an
//! ephemeral loopback port that fails, hangs and recovers. Events arrive signed, with stable
//! ids across retries, in order per user; a reconnect inside the offline grace sends
//! nothing; an endpoint that keeps failing gets its event dead-lettered, listed by the admin
//! API and redriven.

use crate::control::{BOOT, admin};
use crate::server_api::call;
use crate::support::*;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the receiver answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    /// 500 to requests 1 and 2, hang (past the server's timeout) on 3, then 200.
    FailHangRecover,
    /// 500 until switched to `Ok`.
    AlwaysFail,
    /// 200.
    Ok,
}

/// One request the receiver got.
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) body: Value,
    timestamp: String,
    signature: String,
    raw: Vec<u8>,
    /// Answered 200 (not failed nor hung).
    pub(crate) accepted: bool,
}

pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) got: mpsc::UnboundedReceiver<Got>,
    script: Arc<std::sync::Mutex<Script>>,
}

pub(crate) async fn receiver(script: Script) -> Receiver {
    let (tx, got) = mpsc::unbounded_channel();
    let script = Arc::new(std::sync::Mutex::new(script));
    let count = Arc::new(AtomicUsize::new(0));
    let (s, c) = (script.clone(), count.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (tx, script, count) = (tx.clone(), s.clone(), c.clone());
                async move {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    let mode = *script.lock().expect("script");
                    let (status, hang) = match mode {
                        Script::FailHangRecover if n <= 2 => (500, false),
                        Script::FailHangRecover if n == 3 => (200, true),
                        Script::AlwaysFail => (500, false),
                        _ => (200, false),
                    };
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let _ = tx.send(Got {
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        timestamp: header("x-hubbub-timestamp"),
                        signature: header("x-hubbub-signature"),
                        raw: body.to_vec(),
                        accepted: status == 200 && !hang,
                    });
                    if hang {
                        // Past the server's timeout: it gives up and retries.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    axum::http::StatusCode::from_u16(status).expect("status")
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver { url, got, script }
}

impl Receiver {
    /// The next request, within the patience.
    async fn next(&mut self) -> Got {
        tokio::time::timeout(PATIENCE * 3, self.got.recv())
            .await
            .expect("a webhook request in time")
            .expect("receiver running")
    }

    /// Requests until one accepted with an event of type `kind`; every request seen.
    pub(crate) async fn until_accepted(&mut self, kind: &str, seen: &mut Vec<Got>) {
        // Bounded: each request comes within the patience or the test fails.
        for _ in 0..200 {
            let g = self.next().await;
            let done = g.accepted && g.body["type"] == kind;
            seen.push(g);
            if done {
                return;
            }
        }
        panic!("no accepted {kind}");
    }
}

pub(crate) fn verify(secret: &str, g: &Got) {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(g.timestamp.as_bytes());
    mac.update(b".");
    mac.update(&g.raw);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(g.signature, want, "the signature of {}", g.body);
    assert!(g.timestamp.parse::<i64>().is_ok(), "a ms timestamp");
    for field in ["id", "type", "ts", "data"] {
        assert!(!g.body[field].is_null(), "{field} in {}", g.body);
    }
}

async fn hook_server(grace_s: u64, max_attempts: u32) -> TestServer {
    server_with(|c| {
        c.api.bootstrap_key = Some(BOOT.into());
        c.auth.app_hmac_secret = Some(APP_SECRET.into());
        c.webhooks.offline_grace_s = grace_s;
        c.webhooks.backoff_ms = 50;
        c.webhooks.timeout_ms = 500;
        c.webhooks.max_attempts = max_attempts;
    })
    .await
}

/// Create a webhook; its id and secret.
async fn subscribe(s: &TestServer, url: &str, events: &[&str]) -> (String, String) {
    let (st, body) = call(
        s,
        Method::POST,
        "/v1/server/webhooks",
        Some(json!({"url": url, "events": events})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    (
        body["id"].as_str().expect("id").to_owned(),
        body["secret"].as_str().expect("secret").to_owned(),
    )
}

#[tokio::test]
async fn webhooks_are_signed_retried_in_order_and_presence_has_a_grace() {
    let s = hook_server(3, 8).await;
    let mut r = receiver(Script::FailHangRecover).await;
    // Bad bodies first.
    let (st, _) = call(
        &s,
        Method::POST,
        "/v1/server/webhooks",
        Some(json!({"url":"ftp://x","events":["user.online"]})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = call(
        &s,
        Method::POST,
        "/v1/server/webhooks",
        Some(json!({"url": r.url,"events":["user.gone"]})),
    )
    .await;
    assert_eq!(st, 400);
    let (_, secret) = subscribe(
        &s,
        &r.url,
        &[
            "conversation.created",
            "conversation.updated",
            "message.created",
            "user.online",
            "user.offline",
        ],
    )
    .await;
    for id in ["alice", "bob"] {
        let (st, _) = call(
            &s,
            Method::POST,
            "/v1/server/users",
            Some(json!({"id": id})),
        )
        .await;
        assert_eq!(st, 201);
    }

    // A conversation and three messages of alice's: her events, in order, through a
    // receiver that fails twice and hangs once first.
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/conversations",
        Some(json!({"kind":"group","members":["alice","bob"]})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let conv = body["conversation"]["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/server/conversations/{conv}/messages");
    let mut ids = Vec::new();
    for i in 0..3 {
        let (st, m) = call(&s, Method::POST, &path, Some(json!({"sender":"alice","text": format!("m{i}"),"idempotency_key": format!("k{i}")}))).await;
        assert_eq!(st, 201, "{m}");
        ids.push(m["message"]["id"].as_str().expect("id").to_owned());
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        r.until_accepted("message.created", &mut seen).await;
    }
    for g in &seen {
        verify(&secret, g);
    }
    assert!(
        !seen[0].accepted && !seen[1].accepted && !seen[2].accepted,
        "failed, failed, hung"
    );
    let first_id = &seen[0].body["id"];
    assert_eq!(seen[0].body["type"], "conversation.created");
    assert!(
        seen[..4].iter().all(|g| &g.body["id"] == first_id),
        "the same event, with the same id, on every attempt"
    );
    // What the receiver accepted, deduplicated by id (at least once), is in order.
    let mut accepted: Vec<(String, String)> = Vec::new();
    for g in seen.iter().filter(|g| g.accepted) {
        let key = (
            g.body["type"].as_str().unwrap_or_default().to_owned(),
            g.body["id"].as_str().unwrap_or_default().to_owned(),
        );
        if !accepted.contains(&key) {
            accepted.push(key);
        }
    }
    let kinds: Vec<&str> = accepted.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "conversation.created",
            "message.created",
            "message.created",
            "message.created"
        ]
    );
    let messages: Vec<String> = seen
        .iter()
        .filter(|g| g.accepted && g.body["type"] == "message.created")
        .map(|g| {
            g.body["data"]["message"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .fold(Vec::new(), |mut v, id| {
            if !v.contains(&id) {
                v.push(id);
            }
            v
        });
    assert_eq!(messages, ids, "alice's messages in the order she sent them");

    // A member added through the server API (in the creator's name): conversation.updated
    // with the conversation as it is now.
    let (st, _) = call(
        &s,
        Method::POST,
        "/v1/server/users",
        Some(json!({"id":"carol"})),
    )
    .await;
    assert_eq!(st, 201);
    let (st, _) = call(
        &s,
        Method::POST,
        &format!("/v1/server/conversations/{conv}/members"),
        Some(json!({"users":["carol"]})),
    )
    .await;
    assert_eq!(st, 200);
    let mut updated = Vec::new();
    r.until_accepted("conversation.updated", &mut updated).await;
    let last = updated.last().expect("updated");
    verify(&secret, last);
    assert_eq!(last.body["data"]["conversation"]["id"], conv.as_str());
    assert!(
        last.body["data"]["conversation"]["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|u| u == "carol")),
        "{}",
        last.body
    );

    // Presence: online; a close and a reconnect inside the grace send nothing; a close for
    // good sends offline after the grace.
    let token = app_token("alice", 3600, None);
    let first = raw(&s, &token).await;
    let mut presence = Vec::new();
    r.until_accepted("user.online", &mut presence).await;
    drop(first);
    // Wait (bounded) until the server has seen the close: alice offline in the registry.
    for _ in 0..100 {
        let (_, p) = call(
            &s,
            Method::POST,
            "/v1/server/presence",
            Some(json!({"users":["alice"]})),
        )
        .await;
        if p["presence"][0]["status"] == "offline" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut second = raw(&s, &token).await;
    // Long enough for the grace of the first close to pass while `second` is open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    second.close(None).await.expect("close");
    r.until_accepted("user.offline", &mut presence).await;
    let kinds: Vec<(String, bool)> = presence
        .iter()
        .filter(|g| g.accepted)
        .map(|g| {
            (
                g.body["type"].as_str().unwrap_or_default().to_owned(),
                g.body["data"]["user"] == "alice",
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("user.online".to_owned(), true),
            ("user.offline".to_owned(), true)
        ],
        "no offline for the reconnect inside the grace"
    );
    let offline = presence.last().expect("offline");
    verify(&secret, offline);
    assert!(offline.body["data"]["last_seen_ts"].is_i64());
}

#[tokio::test]
async fn a_failing_endpoint_dead_letters_and_the_admin_api_redrives() {
    let s = hook_server(10, 2).await;
    let mut r = receiver(Script::AlwaysFail).await;
    let (id, secret) = subscribe(&s, &r.url, &["message.created"]).await;
    for u in ["carol", "dan"] {
        let (st, _) = call(&s, Method::POST, "/v1/server/users", Some(json!({"id": u}))).await;
        assert_eq!(st, 201);
    }
    let (_, body) = call(
        &s,
        Method::POST,
        "/v1/server/conversations",
        Some(json!({"kind":"direct","members":["carol","dan"]})),
    )
    .await;
    let conv = body["conversation"]["id"].as_str().expect("id").to_owned();
    let (st, m) = call(
        &s,
        Method::POST,
        &format!("/v1/server/conversations/{conv}/messages"),
        Some(json!({"text":"ping","idempotency_key":"p1"})),
    )
    .await;
    assert_eq!(st, 201);
    // Two failed attempts, then the dead-letter queue (listed by the admin API).
    let a = r.next().await;
    let b = r.next().await;
    assert_eq!(a.body["id"], b.body["id"]);
    verify(&secret, &b);
    let mut listed = Value::Null;
    for _ in 0..200 {
        let (st, body) = admin(
            &s,
            Method::GET,
            "/v1/admin/queues/webhooks/dlq",
            Some(BOOT),
            None,
        )
        .await;
        assert_eq!(st, 200, "{body}");
        if body["messages"].as_array().is_some_and(|l| !l.is_empty()) {
            listed = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let dead = listed["messages"][0]["body"]
        .as_str()
        .expect("a dead letter");
    assert!(
        dead.contains(m["message"]["id"].as_str().expect("id")),
        "{dead}"
    );
    let (_, queues) = admin(&s, Method::GET, "/v1/admin/queues", Some(BOOT), None).await;
    let webhooks = queues["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == "webhooks")
        .expect("the webhooks queue is shown");
    assert_eq!(webhooks["dlq_depth"], 1);

    // The endpoint recovers; the redriven event arrives with its id.
    *r.script.lock().expect("script") = Script::Ok;
    let (st, body) = admin(
        &s,
        Method::POST,
        "/v1/admin/queues/webhooks/dlq/redrive",
        Some(BOOT),
        Some(json!({})),
    )
    .await;
    assert_eq!((st, &body["redriven"]), (200, &json!(1)), "{body}");
    let mut got = Vec::new();
    r.until_accepted("message.created", &mut got).await;
    let last = got.last().expect("event");
    assert_eq!(last.body["id"], a.body["id"]);
    verify(&secret, last);

    // Listed without its secret.
    let (st, list) = call(&s, Method::GET, "/v1/server/webhooks", None).await;
    assert_eq!(
        (st, &list["webhooks"][0]["id"]),
        (200, &json!(id)),
        "{list}"
    );
    assert_eq!(list["webhooks"][0]["events"], json!(["message.created"]));
    assert!(!list.to_string().contains(&secret), "no secret in the list");
    // Deleted: 204, then 404.
    let (st, _) = call(
        &s,
        Method::DELETE,
        &format!("/v1/server/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = call(
        &s,
        Method::DELETE,
        &format!("/v1/server/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 404);
}

/// A member's `message.report` reaches endpoints subscribed to `message.reported`, signed,
/// with the report as stored.
#[tokio::test]
async fn a_report_is_told_by_the_message_reported_webhook() {
    use hubbub_protocol::{ReplyData, Request};
    let s = hook_server(3, 8).await;
    let mut r = receiver(Script::Ok).await;
    let (_, secret) = subscribe(&s, &r.url, &["message.reported"]).await;
    for id in ["ra", "rb"] {
        let (st, _) = call(
            &s,
            Method::POST,
            "/v1/server/users",
            Some(json!({"id": id})),
        )
        .await;
        assert_eq!(st, 201);
    }
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/conversations",
        Some(json!({"kind":"group","members":["ra","rb"]})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let conv = body["conversation"]["id"].as_str().expect("id").to_owned();
    let (st, m) = call(
        &s,
        Method::POST,
        &format!("/v1/server/conversations/{conv}/messages"),
        Some(json!({"sender":"ra","text":"buy now","idempotency_key":"k1"})),
    )
    .await;
    assert_eq!(st, 201, "{m}");
    let message = m["message"]["id"].as_str().expect("id").to_owned();
    let (mut b, _) = s.connect(&app_token("rb", 3600, None)).await;
    let report = Request::MessageReport {
        conversation: conv.clone(),
        message: message.clone(),
        reason: "spam".into(),
    };
    assert_eq!(ok(&mut b, report).await, ReplyData::Empty {});
    let mut seen = Vec::new();
    r.until_accepted("message.reported", &mut seen).await;
    let g = seen.last().expect("the event");
    verify(&secret, g);
    let data = &g.body["data"];
    assert_eq!(
        (
            data["conversation"].as_str(),
            data["message"].as_str(),
            data["reporter"].as_str(),
            data["reason"].as_str()
        ),
        (
            Some(conv.as_str()),
            Some(message.as_str()),
            Some("rb"),
            Some("spam")
        )
    );
    assert_eq!(
        g.body["id"].as_str(),
        Some(format!("message.reported/{}", data["id"].as_str().unwrap_or("")).as_str()),
        "a stable id: the report's"
    );
}
