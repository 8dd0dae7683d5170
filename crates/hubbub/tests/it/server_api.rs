//! The server API (PROTOCOL.md 1.1, "API keys, the server API and webhooks"): users,
//! conversations, members, idempotent messages (system ones too) that reach members exactly
//! once through the durable path, presence, `disconnect` (4000) and `revoke` (4001), user
//! erasure, its auth by scope, and the OpenAPI document it serves.

use crate::control::{BOOT, admin};
use crate::support::*;
use hubbub_protocol::ServerFrame;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub async fn api_server() -> TestServer {
    server_with(|c| {
        c.api.bootstrap_key = Some(BOOT.into());
        c.auth.app_hmac_secret = Some(APP_SECRET.into());
    })
    .await
}

/// A server API call with the bootstrap key.
pub async fn call(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    admin(s, method, path, Some(BOOT), body).await
}

/// An app token for `sub` issued `ago_s` seconds ago, valid for an hour.
fn older_app_token(sub: &str, ago_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = json!({"sub": sub, "handle": sub, "exp": now + 3600, "iat": now - ago_s});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(APP_SECRET.as_bytes()),
    )
    .expect("sign")
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// `message.new` frames of one message among a user's durable events.
fn copies(events: &[ServerFrame], id: &str) -> usize {
    events
        .iter()
        .filter(|f| matches!(f, ServerFrame::MessageNew { message, .. } if message.id == id))
        .count()
}

#[tokio::test]
async fn the_server_api_creates_users_conversations_and_posts_messages_once() {
    let s = api_server().await;
    // Auth: no key, an unknown key, a key without the scope.
    let (st, body) = admin(
        &s,
        Method::POST,
        "/v1/server/users",
        None,
        Some(json!({"id":"x"})),
    )
    .await;
    assert_eq!((st, code(&body)), (401, "unauthorized"));
    let (st, key) = admin(
        &s,
        Method::POST,
        "/v1/admin/apikeys",
        Some(BOOT),
        Some(json!({"name":"ops","scopes":["admin"]})),
    )
    .await;
    assert_eq!(st, 201, "{key}");
    let admin_only = key["key"].as_str().expect("key").to_owned();
    let (st, body) = admin(
        &s,
        Method::POST,
        "/v1/server/users",
        Some(&admin_only),
        Some(json!({"id":"x"})),
    )
    .await;
    assert_eq!((st, code(&body)), (403, "forbidden"));

    // Users: 201, then 200 for the same id; a bad id is 400.
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/users",
        Some(json!({"id":"alice","handle":"alice"})),
    )
    .await;
    assert_eq!(
        (st, body["user"]["id"].as_str()),
        (201, Some("alice")),
        "{body}"
    );
    let (st, _) = call(
        &s,
        Method::POST,
        "/v1/server/users",
        Some(json!({"id":"alice"})),
    )
    .await;
    assert_eq!(st, 200);
    for id in ["bob", "carol"] {
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
        "/v1/server/users",
        Some(json!({"id":"no spaces"})),
    )
    .await;
    assert_eq!((st, code(&body)), (400, "bad_request"));
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/users",
        Some(json!({"id":"a","extra":1})),
    )
    .await;
    assert_eq!(
        (st, code(&body)),
        (400, "bad_request"),
        "unknown fields are refused"
    );

    let alice_token = app_token("alice", 3600, None);
    let (mut alice, _) = s.connect(&alice_token).await;

    // A group owned by its first member, through the chat service.
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/conversations",
        Some(json!({"kind":"group","members":["alice","bob"],"title":"team"})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let conv = body["conversation"]["id"].as_str().expect("id").to_owned();
    assert_eq!(body["conversation"]["created_by"], "alice");
    let updated = until(&mut alice, "the new group", |f| {
        matches!(f, ServerFrame::ConversationUpdated { conversation, .. } if conversation.id == conv)
    })
    .await;
    assert!(updated.seq().is_some());

    // A system message: 201, pushed to the member's session; its repeat is 200, the same
    // message, and no second event.
    let path = format!("/v1/server/conversations/{conv}/messages");
    let (st, first) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"text":"welcome","idempotency_key":"w1"})),
    )
    .await;
    assert_eq!(st, 201, "{first}");
    assert_eq!(first["message"]["sender"], "system");
    let id = first["message"]["id"].as_str().expect("id").to_owned();
    let pushed = until(
        &mut alice,
        "the system message",
        |f| matches!(f, ServerFrame::MessageNew { message, .. } if message.id == id),
    )
    .await;
    let ServerFrame::MessageNew { message, .. } = pushed else {
        unreachable!()
    };
    assert_eq!(
        (message.sender.as_str(), message.text.as_str()),
        ("system", "welcome")
    );
    let (st, again) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"text":"welcome","idempotency_key":"w1"})),
    )
    .await;
    assert_eq!((st, &again["message"]), (200, &first["message"]));

    // As a member: 201; as a non-member: 403; into no conversation: 404.
    let (st, body) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"sender":"bob","text":"hi","idempotency_key":"b1"})),
    )
    .await;
    assert_eq!(
        (st, body["message"]["sender"].as_str()),
        (201, Some("bob")),
        "{body}"
    );
    let bobs = body["message"]["id"].as_str().expect("id").to_owned();
    let (st, body) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"sender":"carol","text":"hi","idempotency_key":"c1"})),
    )
    .await;
    assert_eq!((st, code(&body)), (403, "forbidden"));
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/conversations/nope/messages",
        Some(json!({"text":"x","idempotency_key":"n1"})),
    )
    .await;
    assert_eq!((st, code(&body)), (404, "not_found"));
    // U+0000 in a string: 400 before anything is written (as on the socket).
    let (st, body) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"text":"a\u{0}b","idempotency_key":"z1"})),
    )
    .await;
    assert_eq!((st, code(&body)), (400, "bad_request"));
    // A key a sender used in another conversation is a conflict, not a silent repeat.
    let (st, other) = call(
        &s,
        Method::POST,
        "/v1/server/conversations",
        Some(json!({"kind":"group","members":["bob"],"owner":"carol"})),
    )
    .await;
    assert_eq!(
        (st, other["conversation"]["created_by"].as_str()),
        (201, Some("carol"))
    );
    let other = other["conversation"]["id"].as_str().expect("id").to_owned();
    let (st, body) = call(
        &s,
        Method::POST,
        &format!("/v1/server/conversations/{other}/messages"),
        Some(json!({"text":"again","idempotency_key":"w1"})),
    )
    .await;
    assert_eq!((st, code(&body)), (409, "conflict"));

    // Members: carol added, then removed.
    let (st, body) = call(
        &s,
        Method::POST,
        &format!("/v1/server/conversations/{conv}/members"),
        Some(json!({"users":["carol"]})),
    )
    .await;
    assert_eq!((st, &body), (200, &json!({})));
    let (st, body) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"sender":"carol","text":"hello","idempotency_key":"c2"})),
    )
    .await;
    assert_eq!(st, 201, "carol is a member now: {body}");
    let (st, _) = call(
        &s,
        Method::DELETE,
        &format!("/v1/server/conversations/{conv}/members/carol"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (st, body) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"sender":"carol","text":"again","idempotency_key":"c3"})),
    )
    .await;
    assert_eq!((st, code(&body)), (403, "forbidden"), "carol was removed");

    // Exactly once: each message is one durable event of alice's.
    alice.close().await;
    let events = all_events(&s, &alice_token).await;
    assert_eq!((copies(&events, &id), copies(&events, &bobs)), (1, 1));

    // Presence, at most 1,000 users.
    let (_keep, _) = s.connect(&alice_token).await;
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/presence",
        Some(json!({"users":["alice","bob"]})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["presence"][0]["user"], "alice");
    assert_eq!(body["presence"][0]["status"], "online");
    assert_eq!(body["presence"][1]["status"], "offline");
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/presence",
        Some(json!({"users": many})),
    )
    .await;
    assert_eq!((st, code(&body)), (413, "too_large"));
}

#[tokio::test]
async fn disconnect_closes_with_4000_and_revoke_with_4001_and_refuses_old_tokens() {
    let s = api_server().await;
    let (st, _) = call(
        &s,
        Method::POST,
        "/v1/server/users",
        Some(json!({"id":"dave"})),
    )
    .await;
    assert_eq!(st, 201);
    // Issued a few seconds ago: an app token's `iat` is in seconds and counts as the end of
    // its second, so a revocation in that same second would not refuse it.
    let token = older_app_token("dave", 5);
    let mut one = raw(&s, &token).await;
    let mut two = raw(&s, &token).await;
    let (st, body) = call(&s, Method::POST, "/v1/server/users/dave/disconnect", None).await;
    assert_eq!((st, &body), (200, &json!({"sessions": 2})));
    assert_eq!(close_code(&mut one).await, Some(CloseCode::Library(4000)));
    assert_eq!(close_code(&mut two).await, Some(CloseCode::Library(4000)));
    let (st, body) = call(&s, Method::POST, "/v1/server/users/nobody/disconnect", None).await;
    assert_eq!((st, &body), (200, &json!({"sessions": 0})));

    // A disconnect does not revoke: the same token connects again.
    let mut three = raw(&s, &token).await;
    let (st, body) = call(&s, Method::POST, "/v1/server/users/dave/revoke", None).await;
    assert_eq!((st, &body), (200, &json!({})));
    assert_eq!(close_code(&mut three).await, Some(CloseCode::Library(4001)));
    let url = format!(
        "{}/v1/ws?access_token={token}",
        s.base.replacen("http", "ws", 1)
    );
    let refused = tokio_tungstenite::connect_async(url).await;
    assert!(
        refused.is_err(),
        "a token issued before the revocation is refused"
    );
    let (st, body) = call(&s, Method::POST, "/v1/server/users/nobody/revoke", None).await;
    assert_eq!((st, code(&body)), (404, "not_found"));
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let s = api_server().await;
    let text = reqwest::get(format!("{}/v1/server/openapi.json", s.base))
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .expect("docs/openapi.json");
    assert_eq!(text, committed);
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // Every route it names is served (none answers "no such endpoint").
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("ops").keys() {
            let concrete = path.replace("{id}", "x").replace("{user}", "y");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (st, body) = admin(&s, method.clone(), &concrete, None, None).await;
            assert!(
                !(st == 404 && body["error"]["message"] == "no such endpoint") && st != 405,
                "{method} {path}: {st} {body}"
            );
        }
    }
}

/// `message.report` over the socket (a member, once per message; bad input refused and
/// storing nothing), and `GET /v1/server/reports` listing them newest first, paged.
#[tokio::test]
async fn reported_messages_are_listed_to_the_server_api() {
    use hubbub_protocol::{ReplyData, Request};
    let s = api_server().await;
    let (_, at) = s.user("rp_alice").await;
    let (bob, bt) = s.user("rp_bob").await;
    let (_, et) = s.user("rp_eve").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let (mut e, _) = s.connect(&et).await;
    let ReplyData::Conversation { conversation: c } = ok(&mut a, group(vec![bob.id.clone()])).await
    else {
        panic!("a conversation")
    };
    let ReplyData::Message { message: m1 } = ok(&mut a, send(&c.id, "k1", "one")).await else {
        panic!("a message")
    };
    let ReplyData::Message { message: m2 } = ok(&mut a, send(&c.id, "k2", "two")).await else {
        panic!("a message")
    };
    let report = |message: &str, reason: &str| Request::MessageReport {
        conversation: c.id.clone(),
        message: message.into(),
        reason: reason.into(),
    };
    assert_eq!(
        ok(&mut b, report(&m1.id, "spam")).await,
        ReplyData::Empty {}
    );
    assert_eq!(
        ok(&mut b, report(&m1.id, "spam again")).await,
        ReplyData::Empty {},
        "a repeat is harmless"
    );
    assert_eq!(
        ok(&mut a, report(&m2.id, "mine, by mistake")).await,
        ReplyData::Empty {}
    );
    err(&mut e, report(&m1.id, "not a member"), "forbidden").await;
    err(&mut b, report(&m1.id, &"x".repeat(501)), "too_large").await;
    err(&mut b, report(&m1.id, "  "), "bad_request").await;
    err(&mut b, report("424242", "no such message"), "not_found").await;

    let (st, body) = call(&s, Method::GET, "/v1/server/reports", None).await;
    assert_eq!(st, 200, "{body}");
    let reports = body["reports"].as_array().expect("reports");
    let summary: Vec<(&str, &str, &str)> = reports
        .iter()
        .map(|r| {
            (
                r["message"].as_str().unwrap_or(""),
                r["reporter"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (m2.id.as_str(), c.created_by.as_str(), "mine, by mistake"),
            (m1.id.as_str(), bob.id.as_str(), "spam")
        ],
        "newest first, once each, nothing of the refused ones"
    );
    assert_eq!(body["more"], json!(false));
    let newest = reports[0]["id"].as_str().expect("id").to_owned();
    let (st, page) = call(
        &s,
        Method::GET,
        &format!("/v1/server/reports?limit=1&before={newest}"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["reports"][0]["message"], json!(m1.id));
    assert_eq!(page["more"], json!(false));
    // A key without the `server` scope may not read them.
    let (st, _) = admin(&s, Method::GET, "/v1/server/reports", Some("nope"), None).await;
    assert_eq!(st, 401);
}

/// Erasure: the user's sessions close with 4001, their messages become tombstones that members
/// are told of and search no longer finds, their posts leave timelines, their media answers
/// 404, their contacts and their place in others' contacts go, their login fails; a repeat,
/// and an unknown user, are 204.
#[tokio::test]
async fn erasing_a_user_tombstones_their_messages_and_removes_the_rest() {
    use hubbub_protocol::{ConversationKind, ReplyData, Request};
    let s = api_server().await;
    let (erin, erin_token) = s.user("erin").await;
    let (finn, finn_token) = s.user("finn").await;
    let (gail, _) = s.user("gail").await;
    let (mut e, _) = s.connect(&erin_token).await;
    let (mut f, _) = s.connect(&finn_token).await;
    let mut erin_raw = raw(&s, &erin_token).await;

    let ReplyData::Conversation { conversation: g } =
        ok(&mut e, group(vec![finn.id.clone(), gail.id.clone()])).await
    else {
        panic!("no group")
    };
    let ReplyData::Conversation { conversation: d } = ok(
        &mut e,
        Request::ConversationCreate {
            kind: ConversationKind::Direct,
            members: vec![finn.id.clone()],
            title: None,
            ephemeral: None,
            idempotency_key: None,
            public: None,
        },
    )
    .await
    else {
        panic!("no direct conversation")
    };
    let mut sent = Vec::new();
    for (conversation, key, text) in [
        (&g.id, "g1", "kumquat in the group"),
        (&g.id, "g2", "another kumquat"),
        (&d.id, "d1", "a direct kumquat"),
    ] {
        let ReplyData::Message { message } = ok(&mut e, send(conversation, key, text)).await else {
            panic!("not sent")
        };
        sent.push(message.id);
    }
    ok(&mut f, send(&g.id, "f1", "finn stays")).await;
    ok(
        &mut e,
        Request::ContactSet {
            user: finn.id.clone(),
            group: Some("work".into()),
            note: None,
        },
    )
    .await;
    ok(
        &mut f,
        Request::ContactSet {
            user: erin.id.clone(),
            group: None,
            note: None,
        },
    )
    .await;
    ok(
        &mut f,
        Request::Follow {
            user: erin.id.clone(),
        },
    )
    .await;
    let ReplyData::Post { post } = ok(
        &mut e,
        Request::PostCreate {
            text: "erin posts".into(),
            attachments: None,
            idempotency_key: None,
        },
    )
    .await
    else {
        panic!("no post")
    };
    let timeline = |items: ReplyData| match items {
        ReplyData::Timeline { items, .. } => items.into_iter().map(|p| p.id).collect::<Vec<_>>(),
        other => panic!("not a timeline: {other:?}"),
    };
    let get = || Request::TimelineGet {
        before: None,
        limit: None,
    };
    assert_eq!(
        timeline(ok(&mut f, get()).await),
        std::slice::from_ref(&post.id)
    );
    let http = reqwest::Client::new();
    let upload = http
        .post(format!("{}/v1/media", s.base))
        .bearer_auth(&erin_token)
        .header("content-type", "image/png")
        .body(b"\x89PNG\r\n\x1a\nbytes".to_vec())
        .send()
        .await
        .expect("upload");
    assert_eq!(upload.status(), 201);
    let upload: Value = upload.json().await.expect("json");
    let media_url = format!(
        "{}{}",
        s.base,
        upload["media"]["url"].as_str().expect("url")
    );
    let path = format!("/v1/server/users/{}", erin.id);

    // Auth: no key, a key without the scope.
    let (st, body) = admin(&s, Method::DELETE, &path, Some("nope"), None).await;
    assert_eq!((st, code(&body)), (401, "unauthorized"));
    let (st, key) = admin(
        &s,
        Method::POST,
        "/v1/admin/apikeys",
        Some(BOOT),
        Some(json!({"name":"ops","scopes":["admin"]})),
    )
    .await;
    assert_eq!(st, 201, "{key}");
    let admin_only = key["key"].as_str().expect("key").to_owned();
    let (st, body) = admin(&s, Method::DELETE, &path, Some(&admin_only), None).await;
    assert_eq!((st, code(&body)), (403, "forbidden"));
    let resp = http
        .get(&media_url)
        .bearer_auth(&finn_token)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200, "nothing was erased yet");

    let (st, body) = call(&s, Method::DELETE, &path, None).await;
    assert_eq!((st, &body), (204, &Value::Null));
    assert_eq!(
        close_code(&mut erin_raw).await,
        Some(CloseCode::Library(4001))
    );

    // Finn is told of each tombstone, live.
    for id in &sent {
        until(&mut f, "a tombstone", |frame| {
            matches!(frame, ServerFrame::MessageUpdated { message, .. }
                if &message.id == id && message.deleted && message.text.is_empty())
        })
        .await;
    }
    // History shows tombstones; search finds none of the text.
    for c in [&g.id, &d.id] {
        let ReplyData::History { messages, .. } = ok(
            &mut f,
            Request::MessageHistory {
                conversation: c.clone(),
                before: None,
                limit: None,
                thread: None,
            },
        )
        .await
        else {
            panic!("no history")
        };
        for m in messages.iter().filter(|m| m.sender == erin.id) {
            assert!(
                m.deleted && m.text.is_empty() && m.attachments.is_empty(),
                "{m:?}"
            );
        }
        assert!(messages.iter().any(|m| sent.contains(&m.id)));
    }
    let found = ok(
        &mut f,
        Request::MessageSearch {
            query: "kumquat".into(),
            conversation: None,
        },
    )
    .await;
    assert_eq!(found, ReplyData::Search { messages: vec![] });
    // Erin is in no contact list, and no longer a member.
    let ReplyData::Contacts { contacts } = ok(&mut f, Request::ContactList {}).await else {
        panic!("no contacts")
    };
    assert!(contacts.is_empty(), "{contacts:?}");
    let ReplyData::Conversation { conversation } = ok(
        &mut f,
        Request::ConversationGet {
            conversation: g.id.clone(),
        },
    )
    .await
    else {
        panic!("no conversation")
    };
    assert!(!conversation.members.contains(&erin.id), "{conversation:?}");
    assert!(
        !conversation.roles.contains_key(&erin.id)
            && conversation
                .roles
                .values()
                .any(|r| *r == hubbub_protocol::Role::Owner),
        "the group passed on: {conversation:?}"
    );

    // Erin's post is gone from finn's timeline.
    assert_eq!(timeline(ok(&mut f, get()).await), Vec::<String>::new());

    // The media is gone; the account cannot log in, its token is refused, its handle is
    // free but its id is not given again.
    let resp = http
        .get(&media_url)
        .bearer_auth(&finn_token)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    let login = http
        .post(format!("{}/v1/auth/login", s.base))
        .json(&json!({"handle":"erin","password":"password123"}))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 401);
    let url = format!(
        "{}/v1/ws?access_token={erin_token}",
        s.base.replacen("http", "ws", 1)
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/users",
        Some(json!({"id": erin.id})),
    )
    .await;
    assert_eq!((st, code(&body)), (409, "conflict"));

    // Again, and an unknown user: 204.
    let (st, _) = call(&s, Method::DELETE, &path, None).await;
    assert_eq!(st, 204);
    let (st, _) = call(&s, Method::DELETE, "/v1/server/users/nobody", None).await;
    assert_eq!(st, 204);
}
