//! PROTOCOL.md 1.1 "Roles and moderation" over real sockets: the owner names an admin, every
//! member hears of role and settings changes as durable events, the admin mutes, bans and
//! unbans, slow mode answers `rate_limited` with `retry_after_ms`, and every refusal has its
//! code and changes nothing (the members' seqs stay gapless).

use crate::support::*;
use hubbub::client::Socket;
use hubbub_protocol::{AssignedRole, ReplyData, Request, Role, ServerFrame};

fn conversation_of(data: ReplyData) -> hubbub_protocol::Conversation {
    match data {
        ReplyData::Conversation { conversation } => conversation,
        other => panic!("not a conversation: {other:?}"),
    }
}

fn role(c: &str, user: &str, role: AssignedRole) -> Request {
    Request::ConversationRole {
        conversation: c.into(),
        user: user.into(),
        role,
    }
}

fn ban(c: &str, user: &str, duration_s: Option<u64>) -> Request {
    Request::ConversationBan {
        conversation: c.into(),
        user: user.into(),
        duration_s,
    }
}

fn mute(c: &str, user: &str, duration_s: u64) -> Request {
    Request::ConversationMuteMember {
        conversation: c.into(),
        user: user.into(),
        duration_s,
    }
}

fn settings(c: &str, title: Option<&str>, slow_mode_s: Option<u64>) -> Request {
    Request::ConversationSettings {
        conversation: c.into(),
        title: title.map(str::to_owned),
        slow_mode_s,
    }
}

/// The next `conversation.updated` on a socket.
async fn updated(sock: &mut Socket) -> hubbub_protocol::Conversation {
    match until(sock, "conversation.updated", |f| {
        matches!(f, ServerFrame::ConversationUpdated { .. })
    })
    .await
    {
        ServerFrame::ConversationUpdated { conversation, .. } => conversation,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn owners_and_admins_moderate_a_group() {
    let s = server().await;
    let (alice, at) = s.user("mod_alice").await;
    let (bob, bt) = s.user("mod_bob").await;
    let (carol, ct) = s.user("mod_carol").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let (mut c, _) = s.connect(&ct).await;
    let created = conversation_of(ok(&mut a, group(vec![bob.id.clone(), carol.id.clone()])).await);
    let g = created.id.clone();
    assert_eq!(created.roles, [(alice.id.clone(), Role::Owner)].into());
    assert_eq!(created.slow_mode_s, 0);

    // Roles: only the owner; every member hears of the change.
    err(&mut c, role(&g, &bob.id, AssignedRole::Admin), "forbidden").await;
    ok(&mut a, role(&g, &bob.id, AssignedRole::Admin)).await;
    loop {
        let conv = updated(&mut c).await;
        if conv.roles.get(&bob.id) == Some(&Role::Admin) {
            break;
        }
    }
    let bad = r#"{"type":"conversation.role","id":"r-owner","conversation":"x","user":"y","role":"owner"}"#;
    c.send_text(bad).await.expect("send");
    let f = until(
        &mut c,
        "the refusal",
        |f| matches!(f, ServerFrame::Error { id: Some(id), .. } if id == "r-owner"),
    )
    .await;
    let ServerFrame::Error { code, .. } = f else {
        unreachable!()
    };
    assert_eq!(code.as_str(), "bad_request");

    // A muted member cannot send until the mute is lifted.
    err(&mut c, mute(&g, &bob.id, 60), "forbidden").await;
    err(&mut b, mute(&g, &alice.id, 60), "forbidden").await;
    ok(&mut b, mute(&g, &carol.id, 3600)).await;
    err(&mut c, send(&g, "muted", "hello?"), "forbidden").await;
    ok(&mut b, mute(&g, &carol.id, 0)).await;
    ok(&mut c, send(&g, "unmuted", "hello")).await;

    // Slow mode: a plain member's second send is `rate_limited` with `retry_after_ms`.
    let after = conversation_of(ok(&mut b, settings(&g, Some("quiet room"), Some(600))).await);
    assert_eq!(
        (after.title.as_deref(), after.slow_mode_s),
        (Some("quiet room"), 600)
    );
    loop {
        if updated(&mut c).await.slow_mode_s == 600 {
            break;
        }
    }
    err(&mut c, settings(&g, None, Some(0)), "forbidden").await;
    err(&mut b, settings(&g, None, Some(86_401)), "bad_request").await;
    ok(&mut c, send(&g, "slow-1", "one")).await;
    match c.request(send(&g, "slow-2", "two")).await.expect("request") {
        ServerFrame::Error {
            code,
            retry_after_ms,
            ..
        } => {
            assert_eq!(code.as_str(), "rate_limited");
            let wait = retry_after_ms.expect("retry_after_ms");
            assert!(wait > 0 && wait <= 600_000, "{wait}");
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    ok(&mut b, send(&g, "admin-1", "admins")).await;
    ok(&mut b, send(&g, "admin-2", "are not slowed")).await;
    ok(&mut a, settings(&g, None, Some(0))).await;

    // A ban removes the member and keeps them out until lifted.
    err(&mut b, ban(&g, &alice.id, None), "forbidden").await;
    ok(&mut b, ban(&g, &carol.id, None)).await;
    loop {
        let conv = updated(&mut c).await;
        if !conv.members.contains(&carol.id) {
            break;
        }
    }
    err(&mut c, send(&g, "banned", "let me in"), "forbidden").await;
    let add = Request::ConversationAdd {
        conversation: g.clone(),
        user: Some(carol.id.clone()),
        users: None,
    };
    err(&mut a, add.clone(), "forbidden").await;
    ok(
        &mut b,
        Request::ConversationUnban {
            conversation: g.clone(),
            user: carol.id.clone(),
        },
    )
    .await;
    ok(&mut a, add).await;
    ok(&mut c, send(&g, "back", "thanks")).await;

    // What carol saw is gapless, each event once.
    let events = all_events(&s, &ct).await;
    let seqs: Vec<u64> = events.iter().filter_map(ServerFrame::seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let texts: Vec<&str> = events
        .iter()
        .filter_map(|f| match f {
            ServerFrame::MessageNew { message, .. } => Some(message.client_msg_id.as_str()),
            _ => None,
        })
        .collect();
    assert!(!texts.contains(&"muted") && !texts.contains(&"slow-2") && !texts.contains(&"banned"));
}

/// The server API acts in the current owner's name: removing the owner is their leaving (200,
/// ownership passes on), and the next member change is made by the new owner.
#[tokio::test]
async fn the_server_api_removes_the_owner_and_acts_for_the_next() {
    use crate::server_api::{api_server, call};
    use reqwest::Method;
    use serde_json::json;
    let s = api_server().await;
    for id in ["sa_owner", "sa_first", "sa_second", "sa_late"] {
        let (st, body) = call(
            &s,
            Method::POST,
            "/v1/server/users",
            Some(json!({"id": id})),
        )
        .await;
        assert_eq!(st, 201, "{body}");
    }
    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/server/conversations",
        Some(json!({"kind":"group","members":["sa_first","sa_second"],"owner":"sa_owner"})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["conversation"]["roles"], json!({"sa_owner":"owner"}));
    let conv = body["conversation"]["id"].as_str().expect("id").to_owned();
    let members = format!("/v1/server/conversations/{conv}/members");
    let (st, body) = call(&s, Method::DELETE, &format!("{members}/sa_owner"), None).await;
    assert_eq!(st, 200, "removing the owner: {body}");
    let (st, body) = call(
        &s,
        Method::POST,
        &members,
        Some(json!({"users":["sa_late"]})),
    )
    .await;
    assert_eq!(st, 200, "the next owner adds: {body}");
    let (st, body) = call(&s, Method::DELETE, &format!("{members}/sa_late"), None).await;
    assert_eq!(st, 200, "and removes: {body}");
}
