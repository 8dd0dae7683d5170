//! Channels over real sockets (PROTOCOL.md 1.1, "Channels"): the owner's messages reach every
//! subscriber's sessions as `channel.message` by offset, and a subscriber who was away
//! recovers exactly what it missed with `channel.sync`.

use crate::support::*;
use hubbub_protocol::{ReplyData, Request, ServerFrame};

fn offset_of(f: &ServerFrame) -> Option<(String, u64, String)> {
    match f {
        ServerFrame::ChannelMessage {
            conversation,
            offset,
            message,
        } => Some((conversation.clone(), *offset, message.text.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn channel_messages_are_broadcast_and_recovered_by_offset() {
    let s = server().await;
    let (_, ot) = s.user("ch_owner").await;
    let (_, bt) = s.user("ch_bob").await;
    let (_, ct) = s.user("ch_carol").await;
    let (mut owner, _) = s.connect(&ot).await;
    let id = create_channel(&mut owner, "news", true).await;
    let (mut bob, bob_seq) = s.connect(&bt).await;
    let (mut carol, _) = s.connect(&ct).await;
    for sock in [&mut bob, &mut carol] {
        let sub = Request::ChannelSubscribe {
            conversation: id.clone(),
        };
        assert_eq!(ok(sock, sub.clone()).await, ReplyData::Empty {});
        assert_eq!(ok(sock, sub).await, ReplyData::Empty {}, "idempotent");
    }
    // A subscriber does not send.
    err(&mut bob, send(&id, "b1", "me too"), "forbidden").await;

    ok(&mut owner, send(&id, "m1", "first")).await;
    for sock in [&mut bob, &mut carol] {
        let f = until(sock, "channel.message 1", |f| offset_of(f).is_some()).await;
        assert_eq!(offset_of(&f), Some((id.clone(), 1, "first".into())));
        assert_eq!(f.seq(), None, "a channel message carries no seq");
    }

    // Bob goes away; two more messages; he comes back and syncs from offset 1.
    bob.close().await;
    ok(&mut owner, send(&id, "m2", "second")).await;
    ok(&mut owner, send(&id, "m3", "third")).await;
    for n in [2, 3] {
        let f = until(&mut carol, "a live message", |f| offset_of(f).is_some()).await;
        assert_eq!(offset_of(&f).map(|o| o.1), Some(n), "in order");
    }
    let (mut bob, last_seq) = s.connect(&bt).await;
    assert_eq!(last_seq, bob_seq + 1, "only the subscribe used a seq");
    bob.send_text(&format!(
        r#"{{"type":"channel.sync","id":"cs","conversation":"{id}","after_offset":1}}"#
    ))
    .await
    .expect("send");
    let mut replayed = Vec::new();
    loop {
        match next(&mut bob).await {
            ServerFrame::Ok { id: r, data } if r == "cs" => {
                assert_eq!(
                    data,
                    ReplyData::ChannelSync {
                        last_offset: 3,
                        more: false
                    }
                );
                break;
            }
            f => replayed.extend(offset_of(&f).map(|o| (o.1, o.2))),
        }
    }
    assert_eq!(
        replayed,
        [(2, "second".to_owned()), (3, "third".to_owned())],
        "exactly what was missed, once, in order"
    );

    // The list shows the channel's place; a non-member cannot sync; unsubscribing stops it.
    let ReplyData::Conversations { conversations } =
        ok(&mut bob, Request::ConversationList {}).await
    else {
        panic!("a list")
    };
    let listed = conversations
        .iter()
        .find(|l| l.conversation.id == id)
        .expect("listed");
    assert_eq!((listed.conversation.last_offset, listed.unread), (3, 0));
    ok(
        &mut carol,
        Request::ChannelUnsubscribe {
            conversation: id.clone(),
        },
    )
    .await;
    err(
        &mut carol,
        Request::ChannelSync {
            conversation: id.clone(),
            after_offset: 0,
            limit: None,
        },
        "forbidden",
    )
    .await;
    ok(&mut owner, send(&id, "m4", "fourth")).await;
    let f = until(&mut bob, "channel.message 4", |f| offset_of(f).is_some()).await;
    assert_eq!(offset_of(&f).map(|o| o.1), Some(4));
}

/// Each edge knows which of its users are members of which channels (a channel's message
/// names the channel, not its members): a member added or removed by someone else, and a
/// second session of a member, get exactly the messages of their membership, from the moment
/// they are told of it.
#[tokio::test]
async fn the_edge_follows_membership_changes_made_by_others() {
    let s = server().await;
    let (_, ot) = s.user("chm_owner").await;
    let (dave, dt) = s.user("chm_dave").await;
    let (mut owner, _) = s.connect(&ot).await;
    let id = create_channel(&mut owner, "private", false).await;
    let (mut d1, _) = s.connect(&dt).await;
    let told = |f: &ServerFrame| matches!(f, ServerFrame::ConversationUpdated { conversation, .. } if conversation.id == id);

    // Added by the owner: told, then the channel's messages come.
    ok(
        &mut owner,
        Request::ConversationAdd {
            conversation: id.clone(),
            user: Some(dave.id.clone()),
            users: None,
        },
    )
    .await;
    until(&mut d1, "told of the add", told).await;
    ok(&mut owner, send(&id, "m1", "one")).await;
    let f = until(&mut d1, "channel.message 1", |f| offset_of(f).is_some()).await;
    assert_eq!(offset_of(&f).map(|o| o.1), Some(1));

    // A second session gets them from its hello on.
    let (mut d2, _) = s.connect(&dt).await;
    ok(&mut owner, send(&id, "m2", "two")).await;
    for d in [&mut d1, &mut d2] {
        let f = until(d, "channel.message 2", |f| offset_of(f).is_some()).await;
        assert_eq!(offset_of(&f).map(|o| o.1), Some(2));
    }

    // Removed by the owner: told, then nothing more. The owner's own copy of m3 and Dave's
    // (if he were still a member) leave the edge in one dispatch, so a request Dave sends after
    // the owner has m3 is answered after any copy of it.
    ok(
        &mut owner,
        Request::ConversationRemove {
            conversation: id.clone(),
            user: dave.id.clone(),
        },
    )
    .await;
    for d in [&mut d1, &mut d2] {
        until(d, "told of the removal", told).await;
    }
    ok(&mut owner, send(&id, "m3", "three")).await;
    until(&mut owner, "the owner's m3", |f| {
        offset_of(f).is_some_and(|o| o.1 == 3)
    })
    .await;
    for d in [&mut d1, &mut d2] {
        d.send_text(r#"{"type":"conversation.list","id":"after"}"#)
            .await
            .expect("send");
        loop {
            match next(d).await {
                ServerFrame::Ok { id: r, .. } if r == "after" => break,
                f => assert!(offset_of(&f).is_none(), "a removed member got {f:?}"),
            }
        }
    }
}

/// A busy channel's messages are held a moment by the edge and handed over together (the
/// edge's `batch` module): every subscriber still gets each one once, in offset order.
#[tokio::test]
async fn a_busy_channel_delivers_each_message_once_in_order() {
    let s = server().await;
    let (_, ot) = s.user("chb_owner").await;
    let (_, bt) = s.user("chb_bob").await;
    let (_, ct) = s.user("chb_carol").await;
    let (mut owner, _) = s.connect(&ot).await;
    let id = create_channel(&mut owner, "busy", true).await;
    let (mut bob, _) = s.connect(&bt).await;
    let (mut carol, _) = s.connect(&ct).await;
    for sock in [&mut bob, &mut carol] {
        let sub = Request::ChannelSubscribe {
            conversation: id.clone(),
        };
        ok(sock, sub).await;
    }
    const N: u64 = 40;
    for n in 1..=N {
        ok(&mut owner, send(&id, &format!("b{n}"), &format!("m{n}"))).await;
    }
    for sock in [&mut bob, &mut carol] {
        let mut got = Vec::new();
        while got.last() != Some(&N) {
            let f = until(sock, "a channel message", |f| offset_of(f).is_some()).await;
            let (conversation, offset, text) = offset_of(&f).expect("a channel message");
            assert_eq!(
                (conversation.as_str(), text),
                (id.as_str(), format!("m{offset}"))
            );
            got.push(offset);
        }
        assert_eq!(got, (1..=N).collect::<Vec<_>>(), "each once, in order");
    }
}
