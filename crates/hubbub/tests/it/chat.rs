//! Chat over the real protocol: conversations, messages, receipts, history, sync.

use crate::support::*;
use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame};

fn is_message(text: &'static str) -> impl Fn(&ServerFrame) -> bool {
    move |f| matches!(f, ServerFrame::MessageNew { message, .. } if message.text == text)
}

#[tokio::test]
async fn group_chat_reaches_every_session_exactly_once() {
    let s = server().await;
    let (alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (carol, ct) = s.user("carol").await;
    let (mut a1, _) = s.connect(&at).await;
    let (mut a2, _) = s.connect(&at).await; // alice's second device
    let (mut b, _) = s.connect(&bt).await;

    let ReplyData::Conversation { conversation: c } =
        ok(&mut a1, group(vec![bob.id.clone(), alice.id.clone()])).await
    else {
        panic!()
    };
    assert_eq!(c.kind, ConversationKind::Group);
    assert_eq!(c.created_by, alice.id);
    let mut members = c.members.clone();
    members.sort();
    let mut expected = vec![alice.id.clone(), bob.id.clone()];
    expected.sort();
    assert_eq!(
        members, expected,
        "the creator is a member; naming them is harmless"
    );
    let created = until(&mut b, "conversation.updated", |f| {
        matches!(f, ServerFrame::ConversationUpdated { .. })
    })
    .await;
    assert_eq!(created.seq(), Some(1));

    let ReplyData::Message { message: m } = ok(&mut a1, send(&c.id, "k1", "hello")).await else {
        panic!()
    };
    assert_eq!(
        (m.sender.as_str(), m.client_msg_id.as_str(), m.text.as_str()),
        (alice.id.as_str(), "k1", "hello")
    );
    for sock in [&mut a1, &mut a2, &mut b] {
        let f = until(sock, "message.new", is_message("hello")).await;
        let ServerFrame::MessageNew { message, .. } = f else {
            panic!()
        };
        assert_eq!(*message, m);
    }
    // Idempotent: the same client_msg_id returns the first message and delivers nothing.
    let ReplyData::Message { message: again } =
        ok(&mut a1, send(&c.id, "k1", "hello again?")).await
    else {
        panic!()
    };
    assert_eq!(again, m);
    ok(&mut a1, send(&c.id, "k2", "second")).await;
    let f = until(&mut b, "second", is_message("second")).await;
    let seq_second = f.seq().expect("seq");

    // Carol is not a member: every read and write is forbidden.
    let (mut cs, _) = s.connect(&ct).await;
    err(&mut cs, send(&c.id, "c1", "let me in"), "forbidden").await;
    err(
        &mut cs,
        Request::ConversationGet {
            conversation: c.id.clone(),
        },
        "forbidden",
    )
    .await;
    err(
        &mut cs,
        Request::MessageHistory {
            conversation: c.id.clone(),
            before: None,
            limit: None,
            thread: None,
        },
        "forbidden",
    )
    .await;
    err(
        &mut cs,
        Request::MessageRead {
            conversation: c.id.clone(),
            message: m.id.clone(),
        },
        "forbidden",
    )
    .await;
    err(
        &mut cs,
        Request::ConversationGet {
            conversation: "c-nope".into(),
        },
        "not_found",
    )
    .await;
    err(&mut cs, send("c-nope", "c2", "x"), "not_found").await;
    // Only the creator adds and removes.
    err(
        &mut b,
        Request::ConversationAdd {
            conversation: c.id.clone(),
            user: Some(carol.id.clone()),
            users: None,
        },
        "forbidden",
    )
    .await;
    ok(
        &mut a1,
        Request::ConversationAdd {
            conversation: c.id.clone(),
            user: Some(carol.id.clone()),
            users: None,
        },
    )
    .await;
    ok(
        &mut a1,
        Request::ConversationAdd {
            conversation: c.id.clone(),
            user: Some(carol.id.clone()),
            users: None,
        },
    )
    .await; // no-op
    let f = until(&mut cs, "added", |f| {
        matches!(f, ServerFrame::ConversationUpdated { .. })
    })
    .await;
    let ServerFrame::ConversationUpdated { conversation, .. } = f else {
        panic!()
    };
    assert!(conversation.members.contains(&carol.id));
    ok(&mut cs, send(&c.id, "c3", "hi all")).await;
    until(&mut b, "carol's message", is_message("hi all")).await;

    // Bob's history, newest first, paginated.
    let ReplyData::History { messages, more } = ok(
        &mut b,
        Request::MessageHistory {
            conversation: c.id.clone(),
            before: None,
            limit: Some(2),
            thread: None,
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(
        messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["hi all", "second"]
    );
    assert!(more);
    let ReplyData::History { messages, more } = ok(
        &mut b,
        Request::MessageHistory {
            conversation: c.id.clone(),
            before: Some(messages[1].id.clone()),
            limit: Some(2),
            thread: None,
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(
        messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["hello"]
    );
    assert!(!more);

    // Unread counts, reads, receipts.
    let ReplyData::Conversations { conversations } = ok(&mut b, Request::ConversationList {}).await
    else {
        panic!()
    };
    assert_eq!(conversations.len(), 1);
    assert_eq!(conversations[0].unread, 3);
    assert_eq!(
        conversations[0]
            .last_message
            .as_ref()
            .map(|m| m.text.as_str()),
        Some("hi all")
    );
    ok(
        &mut b,
        Request::MessageRead {
            conversation: c.id.clone(),
            message: m.id.clone(),
        },
    )
    .await;
    let r = until(&mut a2, "receipt", |f| {
        matches!(f, ServerFrame::ReceiptRead { .. })
    })
    .await;
    let ServerFrame::ReceiptRead { user, message, .. } = r else {
        panic!()
    };
    assert_eq!((user, message), (bob.id.clone(), m.id.clone()));
    let ReplyData::Conversations { conversations } = ok(&mut b, Request::ConversationList {}).await
    else {
        panic!()
    };
    assert_eq!(conversations[0].unread, 2);
    err(
        &mut b,
        Request::MessageRead {
            conversation: c.id.clone(),
            message: "999999".into(),
        },
        "not_found",
    )
    .await;

    // Remove and leave.
    ok(
        &mut a1,
        Request::ConversationRemove {
            conversation: c.id.clone(),
            user: carol.id.clone(),
        },
    )
    .await;
    err(&mut cs, send(&c.id, "c4", "still here?"), "forbidden").await;
    ok(
        &mut b,
        Request::ConversationLeave {
            conversation: c.id.clone(),
        },
    )
    .await;
    err(
        &mut b,
        Request::ConversationGet {
            conversation: c.id.clone(),
        },
        "forbidden",
    )
    .await;

    // Every event bob ever got, by sync from 0: seqs 1..=n with no gap and no repeat, and
    // each message exactly once.
    let events = all_events(&s, &bt).await;
    let seqs: Vec<u64> = events.iter().filter_map(ServerFrame::seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.contains(&seq_second));
    let texts: Vec<String> = events
        .iter()
        .filter_map(|f| match f {
            ServerFrame::MessageNew { message, .. } => Some(message.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["hello", "second", "hi all"]);
}

#[tokio::test]
async fn direct_conversations_are_unique_per_pair() {
    let s = server().await;
    let (alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let direct = |u: &str| Request::ConversationCreate {
        kind: ConversationKind::Direct,
        members: vec![u.into()],
        title: None,
        ephemeral: None,
        idempotency_key: None,
        public: None,
    };
    let ReplyData::Conversation { conversation: c1 } = ok(&mut a, direct(&bob.id)).await else {
        panic!()
    };
    let ReplyData::Conversation { conversation: c2 } = ok(&mut b, direct(&alice.id)).await else {
        panic!()
    };
    assert_eq!(c1.id, c2.id);
    err(&mut a, direct("u-nobody"), "not_found").await;
    err(
        &mut a,
        Request::ConversationCreate {
            kind: ConversationKind::Direct,
            members: vec![],
            title: None,
            ephemeral: None,
            idempotency_key: None,
            public: None,
        },
        "bad_request",
    )
    .await;
    err(&mut a, direct(&alice.id), "bad_request").await;
}

/// If bob blocks alice, alice can put bob in no group: not when she creates it, not later.
#[tokio::test]
async fn a_blocked_user_cannot_add_the_blocker_to_groups() {
    let s = server().await;
    let (alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (carol, _) = s.user("carol").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    ok(
        &mut b,
        Request::BlockAdd {
            user: alice.id.clone(),
        },
    )
    .await;
    let message = err(
        &mut a,
        group(vec![carol.id.clone(), bob.id.clone()]),
        "forbidden",
    )
    .await;
    assert_eq!(message, "you cannot add this user");
    let ReplyData::Conversation { conversation: c } = ok(&mut a, group(vec![carol.id])).await
    else {
        panic!()
    };
    let add = Request::ConversationAdd {
        conversation: c.id.clone(),
        user: Some(bob.id.clone()),
        users: None,
    };
    let message = err(&mut a, add.clone(), "forbidden").await;
    assert_eq!(message, "you cannot add this user");
    let ReplyData::Conversation { conversation: c } = ok(
        &mut a,
        Request::ConversationGet {
            conversation: c.id.clone(),
        },
    )
    .await
    else {
        panic!()
    };
    assert!(!c.members.contains(&bob.id), "bob was not added");
    // Once bob lifts the block, alice may add him.
    ok(&mut b, Request::BlockRemove { user: alice.id }).await;
    ok(&mut a, add).await;
}

/// `conversation.create` retried with the same `idempotency_key` (a new request, as after
/// `internal`) returns the first conversation and creates nothing.
#[tokio::test]
async fn conversation_create_with_an_idempotency_key_creates_once() {
    let s = server().await;
    let (_alice, at) = s.user("alice").await;
    let (bob, _) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let keyed = |key: &str| Request::ConversationCreate {
        kind: ConversationKind::Group,
        members: vec![bob.id.clone()],
        title: Some("team".into()),
        ephemeral: None,
        idempotency_key: Some(key.to_owned().try_into().expect("key")),
        public: None,
    };
    let ReplyData::Conversation {
        conversation: first,
    } = ok(&mut a, keyed("create-1")).await
    else {
        panic!()
    };
    let ReplyData::Conversation {
        conversation: again,
    } = ok(&mut a, keyed("create-1")).await
    else {
        panic!()
    };
    assert_eq!(again, first, "the first conversation");
    let ReplyData::Conversation {
        conversation: other,
    } = ok(&mut a, keyed("create-2")).await
    else {
        panic!()
    };
    assert_ne!(other.id, first.id, "another key, another conversation");
    let ReplyData::Conversations { conversations } = ok(&mut a, Request::ConversationList {}).await
    else {
        panic!()
    };
    assert_eq!(conversations.len(), 2);
    // One `conversation.updated` per conversation created, none for the repeat.
    let created = all_events(&s, &at)
        .await
        .into_iter()
        .filter(|f| matches!(f, ServerFrame::ConversationUpdated { .. }))
        .count();
    assert_eq!(created, 2);
    let too_long = "k".repeat(65);
    a.send_text(
        &serde_json::json!({"type":"conversation.create","id":"x","kind":"group",
                            "members":[],"idempotency_key":too_long})
        .to_string(),
    )
    .await
    .expect("send");
    let reply = until(&mut a, "the reply", |f| {
        matches!(f, ServerFrame::Error { id: Some(id), .. } if id == "x")
            || matches!(f, ServerFrame::Ok { id, .. } if id == "x")
    })
    .await;
    let ServerFrame::Error { code, message, .. } = reply else {
        panic!("expected an error, got {reply:?}")
    };
    assert_eq!(code.as_str(), "bad_request");
    assert!(message.contains("idempotency_key"), "{message}");
}

#[tokio::test]
async fn group_size_and_text_limits() {
    let s = server_with(|c| {
        c.limits.max_group_members = 3;
        c.limits.max_text_chars = 10;
    })
    .await;
    let mut ids = Vec::new();
    let mut token = String::new();
    for h in ["ann", "ben", "cat", "dan"] {
        let (u, t) = s.user(h).await;
        ids.push(u.id);
        token = t;
    }
    let (mut d, _) = s.connect(&token).await;
    err(&mut d, group(ids[..3].to_vec()), "too_large").await;
    let ReplyData::Conversation { conversation: c } = ok(&mut d, group(ids[..2].to_vec())).await
    else {
        panic!()
    };
    err(
        &mut d,
        Request::ConversationAdd {
            conversation: c.id.clone(),
            user: Some(ids[2].clone()),
            users: None,
        },
        "too_large",
    )
    .await;
    err(
        &mut d,
        send(&c.id, "k", "much too long for the limit"),
        "too_large",
    )
    .await;
    err(&mut d, send(&c.id, "k", "   "), "bad_request").await;
    err(&mut d, send(&c.id, "", "hi"), "bad_request").await;
    ok(&mut d, send(&c.id, "k", "short")).await;
}

#[tokio::test]
async fn reconnect_and_sync_resumes_without_gaps_or_repeats() {
    let s = server().await;
    let (_alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let ReplyData::Conversation { conversation: c } = ok(&mut a, group(vec![bob.id.clone()])).await
    else {
        panic!()
    };
    // Bob is offline while three messages arrive.
    for (k, t) in [("1", "one"), ("2", "two"), ("3", "three")] {
        ok(&mut a, send(&c.id, k, t)).await;
    }
    let (mut b, last_seq) = s.connect(&bt).await;
    assert_eq!(last_seq, 4, "hello names the latest seq");
    // Bob processed up to seq 2 on an earlier connection: sync after 2.
    b.send_text(r#"{"type":"sync","id":"s","after_seq":2}"#)
        .await
        .expect("send");
    let mut got = Vec::new();
    loop {
        match next(&mut b).await {
            ServerFrame::Ok {
                id,
                data:
                    ReplyData::Sync {
                        last_seq,
                        truncated,
                    },
            } if id == "s" => {
                assert_eq!((last_seq, truncated), (4, false));
                break;
            }
            f => got.extend(f.seq()),
        }
    }
    assert_eq!(got, [3, 4]);
    // Live events continue after the replay, with the next seq.
    ok(&mut a, send(&c.id, "4", "four")).await;
    let f = until(&mut b, "four", is_message("four")).await;
    assert_eq!(f.seq(), Some(5));
    b.send_text(r#"{"type":"ack","seq":5}"#).await.expect("ack");
    // A sync from beyond the end is a client bug (a seq from another server or user): it is
    // refused with `bad_request` naming the last seq, never silently wrapped.
    b.send_text(r#"{"type":"sync","id":"t","after_seq":99}"#)
        .await
        .expect("send");
    let f = until(
        &mut b,
        "sync reply",
        |f| matches!(f, ServerFrame::Error { id: Some(id), .. } if id == "t"),
    )
    .await;
    assert!(
        matches!(
            &f,
            ServerFrame::Error { code: hubbub_protocol::ErrorCode::BadRequest, message, .. }
                if message.contains("last seq 5")
        ),
        "{f:?}"
    );
}

/// PROTOCOL.md 1.1: `conversation.add` with `users`, `conversation.members` pages by id,
/// and `C` counts its members.
#[tokio::test]
async fn adding_several_members_and_paging_through_them() {
    let s = server().await;
    let (alice, at) = s.user("alice").await;
    let (bob, _) = s.user("bob").await;
    let (carol, _) = s.user("carol").await;
    let (dave, dt) = s.user("dave").await;
    let (mut a, _) = s.connect(&at).await;
    let ReplyData::Conversation { conversation: c } = ok(&mut a, group(vec![])).await else {
        panic!()
    };
    assert_eq!(c.member_count, 1);
    ok(
        &mut a,
        Request::ConversationAdd {
            conversation: c.id.clone(),
            user: None,
            users: Some(vec![bob.id.clone(), carol.id.clone(), dave.id.clone()]),
        },
    )
    .await;
    err(
        &mut a,
        Request::ConversationAdd {
            conversation: c.id.clone(),
            user: Some(bob.id.clone()),
            users: Some(vec![carol.id.clone()]),
        },
        "bad_request",
    )
    .await;
    let (mut d, _) = s.connect(&dt).await;
    let mut all = vec![
        alice.id.clone(),
        bob.id.clone(),
        carol.id.clone(),
        dave.id.clone(),
    ];
    all.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let ReplyData::Members { members, more } = ok(
            &mut d,
            Request::ConversationMembers {
                conversation: c.id.clone(),
                after: after.clone(),
                limit: Some(3),
            },
        )
        .await
        else {
            panic!()
        };
        after = members.last().cloned();
        seen.extend(members);
        if !more {
            break;
        }
    }
    assert_eq!(seen, all);
    let ReplyData::Conversation { conversation } = ok(
        &mut d,
        Request::ConversationGet {
            conversation: c.id.clone(),
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(conversation.member_count, 4);
}

/// One connection pipelines many sends without waiting for replies: the chat service takes
/// them in runs (several of one sender per batch), and every member still sees them exactly
/// once, in the order they were sent, under consecutive seqs.
#[tokio::test]
async fn one_sender_pipelining_keeps_its_order() {
    const N: usize = 300;
    let s = server_with(|c| {
        c.limits.frames_per_s = 10_000;
        c.limits.burst = 10_000;
    })
    .await;
    let (_, at) = s.user("pipe_alice").await;
    let (bob, bt) = s.user("pipe_bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let ReplyData::Conversation { conversation: c } = ok(&mut a, group(vec![bob.id.clone()])).await
    else {
        panic!("a conversation")
    };
    until(&mut b, "the group", |f| {
        matches!(f, ServerFrame::ConversationUpdated { .. })
    })
    .await;
    for i in 0..N {
        let frame = format!(
            r#"{{"type":"message.send","id":"p{i}","conversation":"{}","client_msg_id":"c{i}","text":"n{i}"}}"#,
            c.id
        );
        a.send_text(&frame).await.expect("send");
    }
    let mut replies = 0;
    while replies < N {
        match next(&mut a).await {
            ServerFrame::Ok { id, .. } if id.starts_with('p') => replies += 1,
            ServerFrame::Error { code, message, .. } => panic!("refused: {code:?} {message}"),
            _ => {}
        }
    }
    let mut seen = Vec::with_capacity(N);
    let mut seqs = Vec::with_capacity(N);
    while seen.len() < N {
        if let ServerFrame::MessageNew { seq, message, .. } = next(&mut b).await {
            seen.push(message.text.clone());
            seqs.push(seq);
        }
    }
    let want: Vec<String> = (0..N).map(|i| format!("n{i}")).collect();
    assert_eq!(seen, want, "in the order sent");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive seqs: {seqs:?}"
    );
}
