//! Conformance of roles and moderation (PROTOCOL.md 1.1, "Roles and moderation"), run on
//! every backend by `store_conformance!`: who may change roles, add, remove, delete, pin and
//! change settings; bans that outlive membership; muted members; slow mode; ownership passing
//! on when the owner leaves.

use crate::conformance::Env;
use hubbub_protocol::{ConversationKind, Role, ServerFrame};
use hubbub_store::*;

async fn user(env: &Env, handle: &str) -> String {
    env.store
        .create_user(handle, "hash", None)
        .await
        .expect("user")
        .id
}

fn room(id: &str, creator: &str, members: &[&str]) -> NewConversation {
    NewConversation {
        id: id.into(),
        creator: creator.into(),
        kind: ConversationKind::Group,
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        title: Some("room".into()),
        ephemeral: false,
        public: false,
        max_members: 10,
    }
}

fn send(sender: &str, conversation: &str, key: &str) -> NewMessage {
    NewMessage {
        sender: sender.into(),
        conversation: conversation.into(),
        client_msg_id: key.into(),
        text: format!("{key} text"),
        ..NewMessage::default()
    }
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    let e = r.expect_err("refused");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
}

fn bad<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    let e = r.expect_err("refused");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
}

/// The `conversation.updated` frames of these events, by recipient.
fn updated(events: &[Event]) -> Vec<(String, hubbub_protocol::Conversation)> {
    events
        .iter()
        .filter_map(|e| match &e.frame {
            ServerFrame::ConversationUpdated { conversation, .. } => {
                Some((e.user.clone(), conversation.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The owner names admins; owners and admins add, remove, delete others' messages, pin and
/// change settings, each change told to every member; plain members may do none of it; an
/// admin cannot act on another admin or the owner; when the owner leaves, the admin owns.
pub async fn roles_decide_who_moderates(env: &Env) {
    let s = &env.store;
    let o = user(env, "ro-owner").await;
    let a = user(env, "ro-admin").await;
    let m = user(env, "ro-member").await;
    let x = user(env, "ro-other").await;
    let out = user(env, "ro-outsider").await;
    s.create_conversation(room("ro", &o, &[&a, &m, &x]))
        .await
        .expect("create");
    let c = s.conversation(&m, "ro").await.expect("read");
    assert_eq!(
        c.roles,
        [(o.clone(), Role::Owner)].into(),
        "the creator owns it"
    );
    assert_eq!(c.slow_mode_s, 0);

    // Only the owner changes roles.
    forbidden(s.set_role(&m, "ro", &a, Role::Admin).await);
    let w = s.set_role(&o, "ro", &a, Role::Admin).await.expect("admin");
    let told = updated(&w.events);
    assert_eq!(told.len(), 4, "every member hears of it: {told:?}");
    for (_, c) in &told {
        assert_eq!(c.roles.get(&a), Some(&Role::Admin));
    }
    let again = s.set_role(&o, "ro", &a, Role::Admin).await.expect("again");
    assert!(again.events.is_empty(), "no change, no event");
    forbidden(s.set_role(&a, "ro", &m, Role::Admin).await);
    bad(s.set_role(&o, "ro", &o, Role::Member).await);
    bad(s.set_role(&o, "ro", &o, Role::Owner).await);
    let e = s
        .set_role(&o, "ro", &out, Role::Admin)
        .await
        .expect_err("not a member");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");

    // Admins add and remove plain members; plain members do not; nobody removes the owner.
    forbidden(s.add_member(&m, "ro", &out, 10).await);
    s.add_member(&a, "ro", &out, 10).await.expect("admin adds");
    forbidden(s.remove_member(&m, "ro", &out).await);
    s.remove_member(&a, "ro", &out)
        .await
        .expect("admin removes");
    forbidden(s.remove_member(&a, "ro", &o).await);
    forbidden(s.remove_member(&o, "ro", &o).await);
    s.set_role(&o, "ro", &x, Role::Admin)
        .await
        .expect("x admin");
    forbidden(s.remove_member(&a, "ro", &x).await);
    s.set_role(&o, "ro", &x, Role::Member)
        .await
        .expect("x plain again");

    // Admins delete others' messages and pin; plain members do neither.
    let by_m = s
        .send_message(send(&m, "ro", "m1"))
        .await
        .expect("m1")
        .value;
    let by_a = s
        .send_message(send(&a, "ro", "a1"))
        .await
        .expect("a1")
        .value;
    forbidden(s.delete_message(&m, "ro", &by_a.id).await);
    forbidden(s.pin(&m, "ro", &by_a.id, true).await);
    s.pin(&a, "ro", &by_a.id, true).await.expect("admin pins");
    s.delete_message(&a, "ro", &by_m.id)
        .await
        .expect("admin deletes");
    let (page, _) = s.history(&x, "ro", None, 10).await.expect("history");
    assert!(page.iter().any(|msg| msg.id == by_m.id && msg.deleted));

    // Settings: owners and admins; told to every member; `""` removes the title.
    forbidden(s.update_settings(&m, "ro", Some("no"), None).await);
    let w = s
        .update_settings(&a, "ro", Some("renamed"), Some(30))
        .await
        .expect("settings");
    assert_eq!(w.value.title.as_deref(), Some("renamed"));
    assert_eq!(w.value.slow_mode_s, 30);
    assert_eq!(updated(&w.events).len(), 4);
    let w = s
        .update_settings(&a, "ro", Some("renamed"), Some(30))
        .await
        .expect("same");
    assert!(w.events.is_empty(), "no change, no event");
    let w = s
        .update_settings(&o, "ro", Some(""), None)
        .await
        .expect("untitled");
    assert_eq!((w.value.title, w.value.slow_mode_s), (None, 30));
    bad(s.update_settings(&o, "ro", None, Some(86_401)).await);
    let direct = NewConversation {
        kind: ConversationKind::Direct,
        ..room("ro-direct", &m, &[&x])
    };
    let direct = s.create_conversation(direct).await.expect("direct").value;
    assert!(
        direct.roles.is_empty(),
        "a direct conversation has no roles"
    );
    bad(s.update_settings(&m, &direct.id, Some("t"), None).await);
    bad(s.ban(&m, &direct.id, &x, None).await);
    let by_x = s
        .send_message(send(&x, &direct.id, "dx"))
        .await
        .expect("dx")
        .value;
    forbidden(s.delete_message(&m, &direct.id, &by_x.id).await);

    // The owner leaves: the admin owns the group, and is told.
    let w = s.leave(&o, "ro").await.expect("leave");
    let c = s.conversation(&a, "ro").await.expect("read");
    assert_eq!(c.roles, [(a.clone(), Role::Owner)].into());
    assert!(
        updated(&w.events)
            .iter()
            .any(|(u, c)| *u == a && c.roles.get(&a) == Some(&Role::Owner))
    );
    s.set_role(&a, "ro", &m, Role::Admin)
        .await
        .expect("the new owner names admins");

    // The creator who left sees nothing of it by creating it again.
    forbidden(s.create_conversation(room("ro", &o, &[&a])).await);

    // No admin left: the longest-standing member owns it when the owner leaves (m and x
    // joined at the creation, in the same millisecond: then the lower id).
    s.set_role(&a, "ro", &m, Role::Member).await.expect("plain");
    s.leave(&a, "ro").await.expect("owner leaves");
    let c = s.conversation(&m, "ro").await.expect("read");
    let heir = m.clone().min(x.clone());
    assert_eq!(c.roles, [(heir, Role::Owner)].into(), "{c:?}");
}

/// A ban removes the user and keeps them out (added or subscribing) until lifted; admins
/// ban plain members only; a muted member cannot send until the mute is lifted; slow mode
/// spaces a plain member's sends (a repeat of a sent message is not a new send) and not the
/// moderators'; in a channel, admins send too.
pub async fn bans_mutes_and_slow_mode(env: &Env) {
    let s = &env.store;
    let o = user(env, "bm-owner").await;
    let a = user(env, "bm-admin").await;
    let m = user(env, "bm-member").await;
    let x = user(env, "bm-other").await;
    s.create_conversation(room("bm", &o, &[&a, &m, &x]))
        .await
        .expect("create");
    s.set_role(&o, "bm", &a, Role::Admin).await.expect("admin");

    // Bans.
    forbidden(s.ban(&m, "bm", &x, None).await);
    forbidden(s.ban(&a, "bm", &o, None).await);
    bad(s.ban(&a, "bm", &a, None).await);
    bad(s.ban(&a, "bm", &m, Some(0)).await);
    let w = s.ban(&a, "bm", &m, None).await.expect("ban");
    assert!(
        updated(&w.events).iter().any(|(u, _)| *u == m),
        "the banned member hears they are out"
    );
    forbidden(s.conversation(&m, "bm").await);
    forbidden(s.add_member(&o, "bm", &m, 10).await);
    let w = s.ban(&a, "bm", &m, None).await.expect("again");
    assert!(w.events.is_empty());
    s.unban(&a, "bm", &m).await.expect("unban");
    s.unban(&a, "bm", &m).await.expect("unban is idempotent");
    s.add_member(&o, "bm", &m, 10).await.expect("back in");
    s.ban(&o, "bm", &x, Some(3600)).await.expect("timed ban");
    forbidden(s.add_member(&o, "bm", &x, 10).await);
    s.unban(&o, "bm", &x).await.expect("unban");
    s.add_member(&o, "bm", &x, 10).await.expect("x back");
    s.set_role(&o, "bm", &x, Role::Admin)
        .await
        .expect("x admin");
    forbidden(s.ban(&a, "bm", &x, None).await);
    s.set_role(&o, "bm", &x, Role::Member)
        .await
        .expect("x plain");

    // Mutes.
    forbidden(s.mute_member(&m, "bm", &x, 60).await);
    forbidden(s.mute_member(&a, "bm", &o, 60).await);
    let e = s
        .mute_member(&a, "bm", "bm-nobody", 60)
        .await
        .expect_err("not a member");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    s.mute_member(&a, "bm", &m, 3600).await.expect("mute");
    forbidden(s.send_message(send(&m, "bm", "muted")).await);
    s.send_message(send(&x, "bm", "x-not-muted"))
        .await
        .expect("others send");
    s.mute_member(&a, "bm", &m, 0).await.expect("lift");
    s.send_message(send(&m, "bm", "unmuted"))
        .await
        .expect("sends again");

    // Slow mode.
    s.update_settings(&o, "bm", None, Some(3600))
        .await
        .expect("slow");
    let first = s
        .send_message(send(&x, "bm", "slow-1"))
        .await
        .expect("first");
    let e = s
        .send_message(send(&x, "bm", "slow-2"))
        .await
        .expect_err("too soon");
    match e {
        StoreError::RateLimited { retry_after_ms, .. } => {
            assert!(
                retry_after_ms > 0 && retry_after_ms <= 3_600_000,
                "{retry_after_ms}"
            );
        }
        other => panic!("{other:?}"),
    }
    let repeat = s
        .send_message(send(&x, "bm", "slow-1"))
        .await
        .expect("a repeat is not a new send");
    assert_eq!(repeat.value.id, first.value.id);
    for key in ["a-1", "a-2"] {
        s.send_message(send(&a, "bm", key))
            .await
            .expect("admins are not slowed");
    }
    // The same within one batch of sends (on PostgreSQL one group commit, which reads for
    // every send before writing any): a repeat in the batch is the batch's own first message,
    // and a second new send is too soon.
    let out = s
        .send_messages(vec![
            send(&m, "bm", "batch-1"),
            send(&m, "bm", "batch-1"),
            send(&m, "bm", "batch-2"),
        ])
        .await
        .expect("a batch");
    let first = out[0].as_ref().expect("the batch's first send");
    let again = out[1].as_ref().expect("a repeat is not a new send");
    assert_eq!(again.value.id, first.value.id);
    assert!(again.events.is_empty());
    assert!(
        matches!(out[2], Err(StoreError::RateLimited { .. })),
        "{:?}",
        out[2]
    );
    s.update_settings(&o, "bm", None, Some(0))
        .await
        .expect("off");
    s.send_message(send(&x, "bm", "slow-2"))
        .await
        .expect("slow mode off");
    let (page, _) = s.history(&o, "bm", None, 50).await.expect("history");
    assert!(!page.iter().any(|msg| msg.client_msg_id == "muted"));

    // Channels: admins send; a banned subscriber cannot subscribe again.
    let mut channel = room("bm-ch", &o, &[]);
    channel.kind = ConversationKind::Channel;
    channel.public = true;
    s.create_conversation(channel).await.expect("channel");
    s.subscribe(&a, "bm-ch").await.expect("a subscribes");
    s.subscribe(&m, "bm-ch").await.expect("m subscribes");
    forbidden(s.send_message(send(&a, "bm-ch", "ch-a0")).await);
    s.set_role(&o, "bm-ch", &a, Role::Admin)
        .await
        .expect("channel admin");
    s.send_message(send(&a, "bm-ch", "ch-a1"))
        .await
        .expect("admins send in a channel");
    forbidden(s.send_message(send(&m, "bm-ch", "ch-m1")).await);
    s.ban(&a, "bm-ch", &m, None).await.expect("ban subscriber");
    forbidden(s.subscribe(&m, "bm-ch").await);
    forbidden(s.unsubscribe(&o, "bm-ch").await);
    forbidden(s.leave(&o, "bm-ch").await);
}
