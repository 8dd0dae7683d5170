//! PROTOCOL.md 1.1 messages over real sockets: replies, threads, mentions, edits and
//! versions, deletes, reactions and pins reach every member's sessions as durable events
//! (seqs gapless, each once), channels get `channel.updated`, and every bad input is refused
//! with its code and changes nothing.

use crate::support::*;
use hubbub_protocol::{
    ConversationKind, Message, NotificationKind, ReactionOp, ReplyData, Request, ServerFrame,
};

fn message_of(data: ReplyData) -> Message {
    match data {
        ReplyData::Message { message } => message,
        other => panic!("not a message: {other:?}"),
    }
}

fn conversation_id(data: ReplyData) -> String {
    match data {
        ReplyData::Conversation { conversation } => conversation.id,
        other => panic!("not a conversation: {other:?}"),
    }
}

fn reply(conversation: &str, key: &str, text: &str, to: &str, mentions: &[&str]) -> Request {
    Request::MessageSend {
        conversation: conversation.into(),
        client_msg_id: key.into(),
        text: text.into(),
        attachments: None,
        reply_to: Some(to.into()),
        thread: Some(to.into()),
        mentions: Some(mentions.iter().map(|m| (*m).to_owned()).collect()),
    }
}

fn react(conversation: &str, message: &str, emoji: &str) -> Request {
    Request::ReactionAdd {
        conversation: conversation.into(),
        message: message.into(),
        emoji: emoji.into(),
    }
}

/// Seqs 1..=n, each once, in order.
fn assert_gapless(events: &[ServerFrame], who: &str) {
    let seqs: Vec<u64> = events.iter().filter_map(ServerFrame::seq).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "{who}'s seqs");
}

#[tokio::test]
async fn message_changes_reach_every_session_as_durable_events() {
    let s = server().await;
    let (alice, at) = s.user("msg_alice").await;
    let (bob, bt) = s.user("msg_bob").await;
    let (mut a1, _) = s.connect(&at).await;
    let (mut a2, _) = s.connect(&at).await; // alice's second device
    let (mut b, _) = s.connect(&bt).await;
    let c = conversation_id(ok(&mut a1, group(vec![bob.id.clone()])).await);
    let root = message_of(ok(&mut a1, send(&c, "root", "the plan")).await);

    // A thread reply that mentions alice: the reply, the root's new count, the mention.
    let r = message_of(ok(&mut b, reply(&c, "r1", "agreed", &root.id, &[&alice.id])).await);
    assert_eq!(r.thread.as_deref(), Some(root.id.as_str()));
    assert_eq!(r.mentions, std::slice::from_ref(&alice.id));
    for sock in [&mut a1, &mut a2] {
        let f = until(
            sock,
            "the root's update",
            |f| matches!(f, ServerFrame::MessageUpdated { message, .. } if message.id == root.id),
        )
        .await;
        let ServerFrame::MessageUpdated { message, .. } = f else {
            panic!()
        };
        assert_eq!(message.replies, 1);
        let f = until(sock, "the mention", |f| {
            matches!(f, ServerFrame::Notification { .. })
        })
        .await;
        let ServerFrame::Notification { kind, data, .. } = f else {
            panic!()
        };
        assert_eq!(kind, NotificationKind::Mention);
        assert_eq!(
            (data["conversation"].as_str(), data["message"].as_str()),
            (Some(c.as_str()), Some(r.id.as_str()))
        );
    }
    let thread = ok(
        &mut a1,
        Request::MessageHistory {
            conversation: c.clone(),
            before: None,
            limit: None,
            thread: Some(root.id.clone()),
        },
    )
    .await;
    let ReplyData::History { messages, more } = thread else {
        panic!("{thread:?}")
    };
    assert_eq!((messages.len(), more), (1, false));
    assert_eq!(messages[0].id, r.id);

    // An edit: every session sees it; the versions keep the first text.
    let edited = message_of(
        ok(
            &mut a1,
            Request::MessageEdit {
                conversation: c.clone(),
                message: root.id.clone(),
                text: "the better plan".into(),
            },
        )
        .await,
    );
    assert!(edited.edited_ts.is_some());
    for sock in [&mut a2, &mut b] {
        until(sock, "the edit", |f| {
            matches!(f, ServerFrame::MessageUpdated { message, .. } if message.text == "the better plan")
        })
        .await;
    }
    let versions = ok(
        &mut b,
        Request::MessageVersions {
            conversation: c.clone(),
            message: root.id.clone(),
        },
    )
    .await;
    let ReplyData::Versions { versions } = versions else {
        panic!("{versions:?}")
    };
    let texts: Vec<&str> = versions.iter().map(|v| v.text.as_str()).collect();
    assert_eq!(texts, ["the plan", "the better plan"]);

    // A reaction: the reply's summary, and reaction.updated to every session.
    let ReplyData::Reactions { reactions } = ok(&mut b, react(&c, &root.id, "👍")).await else {
        panic!()
    };
    assert_eq!((reactions[0].emoji.as_str(), reactions[0].count), ("👍", 1));
    for sock in [&mut a1, &mut a2] {
        let f = until(sock, "the reaction", |f| {
            matches!(f, ServerFrame::ReactionUpdated { .. })
        })
        .await;
        let ServerFrame::ReactionUpdated { user, op, .. } = f else {
            panic!()
        };
        assert_eq!((user.as_str(), op), (bob.id.as_str(), ReactionOp::Add));
    }
    let history = ok(
        &mut b,
        Request::MessageHistory {
            conversation: c.clone(),
            before: None,
            limit: None,
            thread: None,
        },
    )
    .await;
    let ReplyData::History { messages, .. } = history else {
        panic!()
    };
    let root_now = messages.iter().find(|m| m.id == root.id).expect("root");
    assert_eq!(root_now.my_reactions, Some(vec!["👍".to_owned()]));

    // A pin (the group's owner): C gains `pinned`, every member hears of it.
    ok(
        &mut a1,
        Request::MessagePin {
            conversation: c.clone(),
            message: root.id.clone(),
        },
    )
    .await;
    let f = until(&mut b, "the pin", |f| {
        matches!(f, ServerFrame::ConversationUpdated { conversation, .. } if !conversation.pinned.is_empty())
    })
    .await;
    let ServerFrame::ConversationUpdated { conversation, .. } = f else {
        panic!()
    };
    assert_eq!(conversation.pinned, std::slice::from_ref(&root.id));
    let pins = ok(
        &mut b,
        Request::ConversationPins {
            conversation: c.clone(),
        },
    )
    .await;
    let ReplyData::Search { messages } = pins else {
        panic!("{pins:?}")
    };
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].my_reactions, Some(vec!["👍".to_owned()]));

    // The owner deletes bob's reply: a tombstone everywhere, search no longer finds it.
    ok(
        &mut a1,
        Request::MessageDelete {
            conversation: c.clone(),
            message: r.id.clone(),
        },
    )
    .await;
    let f = until(
        &mut b,
        "the delete",
        |f| matches!(f, ServerFrame::MessageUpdated { message, .. } if message.deleted),
    )
    .await;
    let ServerFrame::MessageUpdated { message, .. } = f else {
        panic!()
    };
    assert_eq!(
        (message.id.as_str(), message.text.as_str()),
        (r.id.as_str(), "")
    );
    let found = ok(
        &mut b,
        Request::MessageSearch {
            query: "agreed".into(),
            conversation: Some(c.clone()),
        },
    )
    .await;
    assert_eq!(found, ReplyData::Search { messages: vec![] });

    // Every durable event once, seqs without gaps, on a fresh sync.
    for (who, token) in [("alice", &at), ("bob", &bt)] {
        let events = all_events(&s, token).await;
        assert_gapless(&events, who);
        let types: Vec<&str> = events.iter().map(ServerFrame::type_name).collect();
        assert!(types.contains(&"reaction.updated"), "{who}: {types:?}");
        assert!(types.contains(&"message.updated"), "{who}: {types:?}");
    }
}

#[tokio::test]
async fn bad_message_input_is_refused_and_changes_nothing() {
    // Many requests back to back: the frame rate limit is not what this test is about.
    let s = server_with(|c| {
        c.limits.frames_per_s = 10_000;
        c.limits.burst = 10_000;
    })
    .await;
    let (alice, at) = s.user("bad_alice").await;
    let (bob, bt) = s.user("bad_bob").await;
    let (_, ct) = s.user("bad_carol").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let (mut carol, _) = s.connect(&ct).await;
    let c = conversation_id(ok(&mut a, group(vec![bob.id.clone()])).await);
    let other = conversation_id(ok(&mut a, group(vec![])).await);
    let m = message_of(ok(&mut a, send(&c, "m", "original")).await);
    let elsewhere = message_of(ok(&mut a, send(&other, "x", "elsewhere")).await);
    for i in 1..=50 {
        ok(&mut a, react(&c, &m.id, &format!("e{i}"))).await;
    }
    let before_a = all_events(&s, &at).await.len();
    let before_b = all_events(&s, &bt).await.len();

    let edit = |text: String| Request::MessageEdit {
        conversation: c.clone(),
        message: m.id.clone(),
        text,
    };
    err(&mut b, edit("mine now".into()), "forbidden").await;
    err(&mut a, edit("x".repeat(4001)), "too_large").await;
    err(
        &mut b,
        Request::MessageDelete {
            conversation: c.clone(),
            message: m.id.clone(),
        },
        "forbidden",
    )
    .await;
    err(&mut carol, react(&c, &m.id, "👍"), "forbidden").await;
    err(&mut b, react(&c, &m.id, &"x".repeat(33)), "too_large").await;
    err(&mut b, react(&c, &m.id, ""), "bad_request").await;
    err(&mut b, react(&c, &m.id, "e51"), "too_large").await; // the 51st emoji
    err(
        &mut b,
        Request::MessagePin {
            conversation: c.clone(),
            message: m.id.clone(),
        },
        "forbidden",
    )
    .await;
    err(
        &mut a,
        reply(&c, "bad-reply", "re", &elsewhere.id, &[]),
        "not_found",
    )
    .await;
    let mut stranger = reply(&c, "bad-mention", "hey", &m.id, &[]);
    if let Request::MessageSend {
        mentions,
        reply_to,
        thread,
        ..
    } = &mut stranger
    {
        *mentions = Some(vec![alice.id.clone(), "nobody-here".into()]);
        *reply_to = None;
        *thread = None;
    }
    err(&mut a, stranger, "bad_request").await;
    err(
        &mut carol,
        Request::MessageVersions {
            conversation: c.clone(),
            message: m.id.clone(),
        },
        "forbidden",
    )
    .await;

    assert_eq!(
        all_events(&s, &at).await.len(),
        before_a,
        "no event for alice"
    );
    assert_eq!(
        all_events(&s, &bt).await.len(),
        before_b,
        "no event for bob"
    );
    let history = ok(
        &mut a,
        Request::MessageHistory {
            conversation: c.clone(),
            before: None,
            limit: None,
            thread: None,
        },
    )
    .await;
    let ReplyData::History { messages, .. } = history else {
        panic!()
    };
    assert_eq!(messages.len(), 1, "no message was sent");
    assert_eq!(messages[0].text, "original");
    assert_eq!(messages[0].reactions.len(), 50);
    assert_eq!(messages[0].edited_ts, None);
}

#[tokio::test]
async fn channel_message_changes_are_channel_updated() {
    let s = server().await;
    let (_, ot) = s.user("chu_owner").await;
    let (_, bt) = s.user("chu_bob").await;
    let (mut owner, _) = s.connect(&ot).await;
    let id = conversation_id(
        ok(
            &mut owner,
            Request::ConversationCreate {
                kind: ConversationKind::Channel,
                members: vec![],
                title: Some("news".into()),
                ephemeral: None,
                idempotency_key: None,
                public: Some(true),
            },
        )
        .await,
    );
    let (mut bob, _) = s.connect(&bt).await;
    ok(
        &mut bob,
        Request::ChannelSubscribe {
            conversation: id.clone(),
        },
    )
    .await;
    let m = message_of(ok(&mut owner, send(&id, "m1", "headline")).await);
    let (mut bob, bob_seq) = {
        bob.close().await;
        s.connect(&bt).await
    };
    ok(&mut bob, react(&id, &m.id, "🎉")).await;
    let f = until(&mut owner, "channel.updated", |f| {
        matches!(f, ServerFrame::ChannelUpdated { .. })
    })
    .await;
    let ServerFrame::ChannelUpdated {
        offset, message, ..
    } = &f
    else {
        panic!()
    };
    assert_eq!((*offset, message.reactions.len()), (1, 1));
    assert_eq!(f.seq(), None);
    ok(
        &mut owner,
        Request::MessageEdit {
            conversation: id.clone(),
            message: m.id.clone(),
            text: "headline, corrected".into(),
        },
    )
    .await;
    until(
        &mut bob,
        "the edit",
        |f| matches!(f, ServerFrame::ChannelUpdated { message, .. } if message.edited_ts.is_some()),
    )
    .await;
    let (_, last) = s.connect(&bt).await;
    assert_eq!(last, bob_seq, "no seq for channel changes");
}
