//! Blocks, search, typing and presence over the real protocol.

use crate::support::*;
use hubbub_protocol::{
    ConversationKind, PresenceStatus, ReplyData, Request, ServerFrame, SetPresenceStatus,
    TypingState,
};

fn text_of(f: &ServerFrame) -> Option<&str> {
    match f {
        ServerFrame::MessageNew { message, .. } => Some(message.text.as_str()),
        _ => None,
    }
}

#[tokio::test]
async fn blocks_hide_messages_typing_and_direct_conversations() {
    let s = server().await;
    let (alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (carol, ct) = s.user("carol").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let (mut c, _) = s.connect(&ct).await;
    let ReplyData::Conversation { conversation: g } =
        ok(&mut a, group(vec![bob.id.clone(), carol.id.clone()])).await
    else {
        panic!()
    };

    ok(
        &mut b,
        Request::BlockAdd {
            user: alice.id.clone(),
        },
    )
    .await;
    ok(
        &mut b,
        Request::BlockAdd {
            user: alice.id.clone(),
        },
    )
    .await; // idempotent
    err(
        &mut b,
        Request::BlockAdd {
            user: bob.id.clone(),
        },
        "bad_request",
    )
    .await;
    err(
        &mut b,
        Request::BlockAdd {
            user: "u-nobody".into(),
        },
        "not_found",
    )
    .await;
    let ReplyData::Users { users } = ok(&mut b, Request::BlockList {}).await else {
        panic!()
    };
    assert_eq!(users, std::slice::from_ref(&alice.id));

    // Alice's message and typing reach carol, not bob; carol's message reaches both.
    a.send(Request::Typing {
        conversation: g.id.clone(),
        state: TypingState::Start,
    })
    .await
    .expect("typing");
    until(
        &mut c,
        "alice typing",
        |f| matches!(f, ServerFrame::Typing { user, .. } if *user == alice.id),
    )
    .await;
    ok(&mut a, send(&g.id, "a1", "from alice")).await;
    until(&mut c, "alice's message", |f| {
        text_of(f) == Some("from alice")
    })
    .await;
    ok(&mut c, send(&g.id, "c1", "from carol")).await;
    let first = until(&mut b, "a message", |f| {
        matches!(
            f,
            ServerFrame::MessageNew { .. } | ServerFrame::Typing { .. }
        )
    })
    .await;
    assert_eq!(
        text_of(&first),
        Some("from carol"),
        "bob saw nothing of alice first: {first:?}"
    );
    let ReplyData::History { messages, .. } = ok(
        &mut b,
        Request::MessageHistory {
            conversation: g.id.clone(),
            before: None,
            limit: None,
            thread: None,
        },
    )
    .await
    else {
        panic!()
    };
    assert!(
        messages.iter().all(|m| m.sender != alice.id),
        "hidden from the blocker's history"
    );
    let ReplyData::History { messages, .. } = ok(
        &mut c,
        Request::MessageHistory {
            conversation: g.id.clone(),
            before: None,
            limit: None,
            thread: None,
        },
    )
    .await
    else {
        panic!()
    };
    assert!(
        messages.iter().any(|m| m.sender == alice.id),
        "still stored for the others"
    );

    // The blocked user cannot open a direct conversation with the blocker; the blocker can.
    let direct = |u: &str| Request::ConversationCreate {
        kind: ConversationKind::Direct,
        members: vec![u.into()],
        title: None,
        ephemeral: None,
        idempotency_key: None,
        public: None,
    };
    err(&mut a, direct(&bob.id), "forbidden").await;
    ok(&mut b, direct(&alice.id)).await;

    ok(
        &mut b,
        Request::BlockRemove {
            user: alice.id.clone(),
        },
    )
    .await;
    ok(&mut a, send(&g.id, "a2", "after unblock")).await;
    until(&mut b, "unblocked message", |f| {
        text_of(f) == Some("after unblock")
    })
    .await;
}

#[tokio::test]
async fn search_finds_members_messages_best_first() {
    let s = server().await;
    let (_alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let ReplyData::Conversation { conversation: g } = ok(&mut a, group(vec![bob.id.clone()])).await
    else {
        panic!()
    };
    let ReplyData::Conversation { conversation: solo } = ok(&mut a, group(vec![])).await else {
        panic!()
    };
    ok(&mut a, send(&g.id, "1", "the quick brown fox")).await;
    ok(&mut a, send(&g.id, "2", "a lazy dog sleeps")).await;
    ok(&mut a, send(&g.id, "3", "quick quick quick thinking")).await;
    ok(&mut a, send(&solo.id, "4", "quick note to self")).await;
    let search = |q: &str, c: Option<&str>| Request::MessageSearch {
        query: q.into(),
        conversation: c.map(str::to_owned),
    };

    let ReplyData::Search { messages } = ok(&mut b, search("quick", None)).await else {
        panic!()
    };
    let texts: Vec<_> = messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        ["quick quick quick thinking", "the quick brown fox"],
        "best first, only bob's conversations"
    );
    let ReplyData::Search { messages } = ok(&mut a, search("QUICK", None)).await else {
        panic!()
    };
    assert_eq!(
        messages.len(),
        3,
        "case-insensitive, across alice's conversations"
    );
    let ReplyData::Search { messages } = ok(&mut a, search("quick fox", Some(&g.id))).await else {
        panic!()
    };
    assert_eq!(messages.len(), 1, "every word must appear");
    // FTS operators and punctuation in the text are searched, never interpreted.
    let ReplyData::Search { messages } = ok(&mut a, search("quick\" OR NOT (dog", None)).await
    else {
        panic!()
    };
    assert!(messages.is_empty());
    err(&mut a, search("  !! ", None), "bad_request").await;
    err(&mut a, search(&"x".repeat(300), None), "too_large").await;
    err(&mut b, search("quick", Some(&solo.id)), "forbidden").await;
    // After leaving, bob no longer finds the group's messages.
    ok(
        &mut b,
        Request::ConversationLeave {
            conversation: g.id.clone(),
        },
    )
    .await;
    let ReplyData::Search { messages } = ok(&mut b, search("quick", None)).await else {
        panic!()
    };
    assert!(messages.is_empty());
}

#[tokio::test]
async fn typing_is_relayed_throttled_and_lapses() {
    let s = server().await;
    let (alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (_, ct) = s.user("carol").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let (mut c, _) = s.connect(&ct).await;
    let ReplyData::Conversation { conversation: g } = ok(&mut a, group(vec![bob.id.clone()])).await
    else {
        panic!()
    };
    let typing = |state| Request::Typing {
        conversation: g.id.clone(),
        state,
    };
    // Two starts within a second: bob gets one start; then the explicit stop.
    a.send(typing(TypingState::Start)).await.expect("start");
    a.send(typing(TypingState::Start))
        .await
        .expect("start again");
    a.send(typing(TypingState::Stop)).await.expect("stop");
    let is_typing = |f: &ServerFrame| matches!(f, ServerFrame::Typing { .. });
    let f1 = until(&mut b, "start", is_typing).await;
    let f2 = until(&mut b, "stop", is_typing).await;
    let states: Vec<_> = [f1, f2]
        .into_iter()
        .map(|f| match f {
            ServerFrame::Typing { user, state, .. } => {
                assert_eq!(user, alice.id);
                state
            }
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(states, [TypingState::Start, TypingState::Stop]);
    // A start that is not renewed lapses: the server sends the stop (after about 6 s).
    a.send(typing(TypingState::Start)).await.expect("start");
    until(&mut b, "start", is_typing).await;
    let lapse = until(&mut b, "lapsed stop", is_typing).await;
    assert!(
        matches!(
            lapse,
            ServerFrame::Typing {
                state: TypingState::Stop,
                ..
            }
        ),
        "{lapse:?}"
    );
    // A non-member's typing is refused (id null: typing has no id).
    c.send(Request::Typing {
        conversation: g.id.clone(),
        state: TypingState::Start,
    })
    .await
    .expect("send");
    let e = until(&mut c, "error", |f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(
        matches!(
            e,
            ServerFrame::Error {
                id: None,
                code: hubbub_protocol::ErrorCode::Forbidden,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn presence_follows_sessions_and_status() {
    let s = server().await;
    let (alice, at) = s.user("alice").await;
    let (_, bt) = s.user("bob").await;
    let (mut b, _) = s.connect(&bt).await;
    let ReplyData::Presence { presence } = ok(
        &mut b,
        Request::PresenceWatch {
            users: vec![alice.id.clone()],
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(
        (presence[0].status, presence[0].last_seen_ts),
        (PresenceStatus::Offline, None)
    );
    let next_presence = |expected: PresenceStatus| move |f: &ServerFrame| matches!(f, ServerFrame::Presence(p) if p.status == expected);
    let (mut a, _) = s.connect(&at).await;
    until(&mut b, "online", next_presence(PresenceStatus::Online)).await;
    // A second session of alice changes nothing for watchers.
    let (a2, _) = s.connect(&at).await;
    ok(
        &mut a,
        Request::PresenceSet {
            status: SetPresenceStatus::Away,
        },
    )
    .await;
    until(&mut b, "away", next_presence(PresenceStatus::Away)).await;
    ok(
        &mut a,
        Request::PresenceSet {
            status: SetPresenceStatus::Invisible,
        },
    )
    .await;
    until(
        &mut b,
        "invisible shows offline",
        next_presence(PresenceStatus::Offline),
    )
    .await;
    ok(
        &mut a,
        Request::PresenceSet {
            status: SetPresenceStatus::Online,
        },
    )
    .await;
    until(
        &mut b,
        "online again",
        next_presence(PresenceStatus::Online),
    )
    .await;
    a2.close().await;
    a.close().await;
    let last = until(&mut b, "offline", next_presence(PresenceStatus::Offline)).await;
    let ServerFrame::Presence(p) = last else {
        unreachable!()
    };
    assert!(p.last_seen_ts.is_some_and(|t| t > 0), "{p:?}");
    // After unwatch, no more events; the watch reply reflects the state now.
    ok(
        &mut b,
        Request::PresenceUnwatch {
            users: vec![alice.id.clone()],
        },
    )
    .await;
    let (_a3, _) = s.connect(&at).await;
    let ReplyData::Presence { presence } = ok(
        &mut b,
        Request::PresenceWatch {
            users: vec![alice.id.clone()],
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(presence[0].status, PresenceStatus::Online);
    err(
        &mut b,
        Request::PresenceWatch {
            users: vec!["x".into(); 1001],
        },
        "too_large",
    )
    .await;
}

#[tokio::test]
async fn ephemeral_conversations_expire_after_their_last_message() {
    let s = server_with(|c| c.server.ephemeral_ttl_s = 1).await;
    let (_, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let create = Request::ConversationCreate {
        kind: ConversationKind::Group,
        members: vec![bob.id.clone()],
        title: None,
        ephemeral: Some(true),
        idempotency_key: None,
        public: None,
    };
    let ReplyData::Conversation { conversation: e } = ok(&mut a, create).await else {
        panic!()
    };
    assert!(e.ephemeral);
    let ReplyData::Conversation { conversation: kept } =
        ok(&mut a, group(vec![bob.id.clone()])).await
    else {
        panic!()
    };
    ok(&mut a, send(&e.id, "e1", "this will vanish")).await;
    ok(&mut a, send(&kept.id, "k1", "this will vanish not")).await;
    // Within a couple of seconds the scheduler expires it: members are told, it is gone.
    let gone = until(&mut b, "expiry", |f| matches!(f, ServerFrame::ConversationUpdated { conversation, .. } if conversation.id == e.id && conversation.members.is_empty())).await;
    assert!(gone.seq().is_some());
    err(
        &mut b,
        Request::MessageHistory {
            conversation: e.id.clone(),
            before: None,
            limit: None,
            thread: None,
        },
        "not_found",
    )
    .await;
    err(&mut a, send(&e.id, "e2", "too late"), "not_found").await;
    let ReplyData::Search { messages } = ok(
        &mut b,
        Request::MessageSearch {
            query: "vanish".into(),
            conversation: None,
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(
        messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["this will vanish not"]
    );
    let ReplyData::Conversations { conversations } = ok(&mut b, Request::ConversationList {}).await
    else {
        panic!()
    };
    assert_eq!(conversations.len(), 1);
    // A replay from the start skips the deleted message and still works.
    let events = all_events(&s, &bt).await;
    assert!(events.iter().all(
        |f| !matches!(f, ServerFrame::MessageNew { message, .. } if message.conversation == e.id)
    ));
}
