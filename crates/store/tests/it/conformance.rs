//! The store's conformance suite: the behaviour every [`Store`] and [`FeedStore`] must show,
//! written once and run against SQLite (a temporary directory) and PostgreSQL (a fresh
//! database per test on the server `scripts/test` starts, `HUBBUB_TEST_POSTGRES_URL`).

use hubbub_protocol::{Attachment, ConversationKind, NotificationKind, ServerFrame};
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
use hubbub_store::*;
use std::sync::Arc;

pub use crate::moderation::{bans_mutes_and_slow_mode, roles_decide_who_moderates};

pub struct Env {
    pub store: Arc<dyn Store>,
    pub feed: Arc<dyn FeedStore>,
    /// The same store with other note keys (a restart after `hubbub rotate-note-keys`).
    pub with_keys: Box<dyn Fn(NoteKeys) -> Arc<dyn Store> + Send + Sync>,
    pub _guard: Box<dyn std::any::Any + Send>,
}

pub async fn sqlite_env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default())
        .expect("queue");
    let s = SqliteStore::open(queue)
        .await
        .expect("store")
        .with_note_keys(NoteKeys::generate().expect("keys"));
    let again = s.clone();
    Env {
        store: Arc::new(s.clone()),
        feed: Arc::new(s),
        with_keys: Box::new(move |keys| Arc::new(again.clone().with_note_keys(keys))),
        _guard: Box::new(dir),
    }
}

pub fn postgres_url() -> String {
    std::env::var("HUBBUB_TEST_POSTGRES_URL")
        .expect("HUBBUB_TEST_POSTGRES_URL is not set: run scripts/test, which starts PostgreSQL")
}

/// A fresh database on the test server.
pub async fn fresh_database() -> String {
    let url = postgres_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(conn);
    let name = format!("hbt_{:016x}", fastrand::u64(..));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("bad postgres url {url}"),
    }
}

pub async fn postgres_env() -> Env {
    let s = PgStore::connect(&fresh_database().await, 8)
        .await
        .expect("pg store")
        .with_note_keys(NoteKeys::generate().expect("keys"));
    let again = s.clone();
    Env {
        store: Arc::new(s.clone()),
        feed: Arc::new(s),
        with_keys: Box::new(move |keys| Arc::new(again.clone().with_note_keys(keys))),
        _guard: Box::new(()),
    }
}

macro_rules! store_conformance {
    ($make:expr) => {
        store_conformance!(@each $make; users_and_tokens, conversations_and_membership,
            messages_are_idempotent_and_fan_out, reads_and_unread, blocks_hide_and_refuse,
            search_finds_words_of_member_conversations, replay_and_retention,
            ephemeral_conversations_expire, feed_posts_likes_comments_follows,
            refresh_token_reuse_revokes_the_family, revoking_a_users_tokens,
            blocked_users_cannot_add_the_blocker_to_groups, keyed_creates_return_the_first_object,
            timelines_read_candidates_and_what_is_new, concurrent_sends_keep_seqs_gapless,
            large_groups_tell_only_whom_a_change_concerns, channels_number_messages_by_offset,
            api_keys_are_hashed_scoped_revocable, runtime_config_is_compare_and_set_and_long_polled,
            replies_threads_and_mentions, edits_keep_versions_and_deletes_leave_tombstones,
            reactions_keep_a_summary, pins_change_the_conversation,
            channel_changes_are_broadcast, concurrent_changes_keep_summaries_and_seqs,
            a_run_of_sends_commits_in_order_each_on_its_own,
            a_send_the_database_refuses_fails_alone,
            a_run_to_one_group_numbers_each_member_in_order,
            a_stream_from_many_places_replays_in_order,
            a_stream_goes_on_after_everything_is_pruned,
            system_messages_and_server_reads, webhooks_and_announced_presence,
            contacts_are_private_merged_and_evented, contacts_refuse_bad_input,
            rotated_note_keys_still_open_old_notes_and_reseal_them,
            reports_are_stored_once_and_listed_newest_first, a_member_mutes_a_conversation_for_themselves,
            roles_decide_who_moderates, bans_mutes_and_slow_mode,
            erasing_a_user_leaves_tombstones_and_nothing_else);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let env = $make.await;
                crate::conformance::$name(&env).await;
            }
        )*
    };
}
pub(crate) use store_conformance;

async fn user(env: &Env, handle: &str) -> String {
    env.store
        .create_user(handle, "hash", None)
        .await
        .expect("user")
        .id
}

fn group(id: &str, creator: &str, members: &[&str]) -> NewConversation {
    NewConversation {
        id: id.into(),
        creator: creator.into(),
        kind: ConversationKind::Group,
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        title: Some("g".into()),
        ephemeral: false,
        public: false,
        max_members: 3,
    }
}

fn send(sender: &str, conversation: &str, key: &str, text: &str) -> NewMessage {
    NewMessage {
        sender: sender.into(),
        conversation: conversation.into(),
        client_msg_id: key.into(),
        text: text.into(),
        attachments: vec![Attachment { media: "m1".into() }],
        ..NewMessage::default()
    }
}

fn seqs(events: &[Event], user: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.user == user)
        .map(Event::seq)
        .collect()
}

pub async fn users_and_tokens(env: &Env) {
    let s = &env.store;
    let a = s
        .create_user("alice", "h1", Some("a@x.io"))
        .await
        .expect("create");
    let e = s.create_user("alice", "h2", None).await.expect_err("taken");
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let c = s.credentials("alice").await.expect("read").expect("exists");
    assert_eq!(
        (c.user.id.as_str(), c.password_hash.as_deref()),
        (a.id.as_str(), Some("h1"))
    );
    assert!(s.credentials("nobody").await.expect("read").is_none());
    assert_eq!(s.user(&a.id).await.expect("read"), Some(a.clone()));
    let app = s.ensure_user("ext-1", Some("bob")).await.expect("ensure");
    assert_eq!((app.id.as_str(), app.handle.as_str()), ("ext-1", "bob"));
    assert_eq!(
        s.ensure_user("ext-1", Some("other")).await.expect("again"),
        app
    );
    let taken = s.ensure_user("ext-2", Some("alice")).await.expect("ensure");
    assert_ne!(taken.handle, "alice", "a taken handle is not reused");
    s.put_refresh_token("t1", &a.id, "f1", i64::MAX)
        .await
        .expect("put");
    assert_eq!(
        s.take_refresh_token("t1").await.expect("take"),
        RefreshOutcome::Valid {
            user: a.id.clone(),
            family: "f1".into()
        }
    );
    assert_eq!(
        s.take_refresh_token("nope").await.expect("take"),
        RefreshOutcome::Invalid,
        "unknown"
    );
    s.put_refresh_token("t2", &a.id, "f2", 1)
        .await
        .expect("put");
    assert_eq!(
        s.take_refresh_token("t2").await.expect("take"),
        RefreshOutcome::Invalid,
        "expired"
    );
    let e = s
        .put_refresh_token("t3", &app.id, "f1", i64::MAX)
        .await
        .expect_err("another user's family");
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
}

/// A refresh keeps the family; a used token that comes back revokes the family, every token
/// issued from it included.
pub async fn refresh_token_reuse_revokes_the_family(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    // Login: t1 starts family L. Bob's family M is untouched throughout.
    s.put_refresh_token("t1", &a, "L", i64::MAX)
        .await
        .expect("put");
    s.put_refresh_token("m1", &b, "M", i64::MAX)
        .await
        .expect("put");
    let valid = |user: &str, family: &str| RefreshOutcome::Valid {
        user: user.into(),
        family: family.into(),
    };
    // Refresh t1 -> t2, in the family t1 names.
    assert_eq!(
        s.take_refresh_token("t1").await.expect("take"),
        valid(&a, "L")
    );
    s.put_refresh_token("t2", &a, "L", i64::MAX)
        .await
        .expect("put");
    // t1 again: someone kept a copy.
    assert_eq!(
        s.take_refresh_token("t1").await.expect("reuse"),
        RefreshOutcome::Reused {
            user: a.clone(),
            family: "L".into()
        }
    );
    assert_eq!(
        s.take_refresh_token("t2").await.expect("take"),
        RefreshOutcome::Invalid,
        "the token issued from the reused one is revoked with its family"
    );
    assert_eq!(
        s.take_refresh_token("t1").await.expect("take"),
        RefreshOutcome::Invalid,
        "the reused token itself is gone"
    );
    // A refresh under way when the family was revoked: its new token is never valid.
    s.put_refresh_token("t3", &a, "L", i64::MAX)
        .await
        .expect("put");
    assert_eq!(
        s.take_refresh_token("t3").await.expect("take"),
        RefreshOutcome::Invalid
    );
    // A new login starts a new family, which works.
    s.put_refresh_token("t4", &a, "L2", i64::MAX)
        .await
        .expect("put");
    assert_eq!(
        s.take_refresh_token("t4").await.expect("take"),
        valid(&a, "L2")
    );
    assert_eq!(
        s.take_refresh_token("m1").await.expect("take"),
        valid(&b, "M")
    );
}

/// Revoking a user's tokens deletes every refresh token of theirs (and only theirs) and
/// records when, never moving backwards.
pub async fn revoking_a_users_tokens(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    assert_eq!(s.tokens_revoked_ms(&a).await.expect("read"), 0, "never");
    assert_eq!(s.tokens_revoked_ms("ghost").await.expect("read"), 0);
    for (token, family) in [("a1", "fa1"), ("a2", "fa2"), ("a3", "fa3")] {
        s.put_refresh_token(token, &a, family, i64::MAX)
            .await
            .expect("put");
    }
    s.put_refresh_token("b1", &b, "fb", i64::MAX)
        .await
        .expect("put");
    // a3 is being refreshed while the revocation happens.
    assert!(matches!(
        s.take_refresh_token("a3").await.expect("take"),
        RefreshOutcome::Valid { .. }
    ));
    s.revoke_tokens(&a, 5_000).await.expect("revoke");
    assert_eq!(s.tokens_revoked_ms(&a).await.expect("read"), 5_000);
    assert_eq!(s.tokens_revoked_ms(&b).await.expect("read"), 0);
    for token in ["a1", "a2", "a3"] {
        assert_eq!(
            s.take_refresh_token(token).await.expect("take"),
            RefreshOutcome::Invalid,
            "{token} is revoked"
        );
    }
    // The refresh that was under way puts its new token: it is born revoked.
    s.put_refresh_token("a4", &a, "fa3", i64::MAX)
        .await
        .expect("put");
    assert_eq!(
        s.take_refresh_token("a4").await.expect("take"),
        RefreshOutcome::Invalid
    );
    // A login after the revocation works.
    s.put_refresh_token("a5", &a, "fa5", i64::MAX)
        .await
        .expect("put");
    assert!(matches!(
        s.take_refresh_token("a5").await.expect("take"),
        RefreshOutcome::Valid { .. }
    ));
    assert!(matches!(
        s.take_refresh_token("b1").await.expect("take"),
        RefreshOutcome::Valid { .. }
    ));
    s.revoke_tokens(&a, 4_000).await.expect("revoke earlier");
    assert_eq!(
        s.tokens_revoked_ms(&a).await.expect("read"),
        5_000,
        "never moves backwards"
    );
    let e = s.revoke_tokens("ghost", 1).await.expect_err("unknown");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
}

pub async fn conversations_and_membership(env: &Env) {
    let s = &env.store;
    let (a, b, c, d) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "carol").await,
        user(env, "dave").await,
    );
    let w = s
        .create_conversation(group("g1", &a, &[&b]))
        .await
        .expect("create");
    assert_eq!(w.value.members.len(), 2);
    assert_eq!(
        (seqs(&w.events, &a), seqs(&w.events, &b)),
        (vec![1], vec![1])
    );
    let again = s
        .create_conversation(group("g1", &a, &[&b]))
        .await
        .expect("retry");
    assert!(again.events.is_empty(), "a retried create changes nothing");
    let e = s
        .create_conversation(group("g2", &a, &[&b, &c, &d]))
        .await
        .expect_err("too big");
    assert!(matches!(e, StoreError::TooLarge(_)), "{e:?}");
    let e = s
        .create_conversation(group("g3", &a, &["ghost"]))
        .await
        .expect_err("unknown");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let e = s
        .add_member(&b, "g1", &c, 3)
        .await
        .expect_err("not creator");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let w = s.add_member(&a, "g1", &c, 3).await.expect("add");
    assert_eq!(w.events.len(), 3, "every member hears of it");
    assert!(
        s.add_member(&a, "g1", &c, 3)
            .await
            .expect("again")
            .events
            .is_empty()
    );
    let e = s.add_member(&a, "g1", &d, 3).await.expect_err("full");
    assert!(matches!(e, StoreError::TooLarge(_)), "{e:?}");
    let w = s.remove_member(&a, "g1", &c).await.expect("remove");
    assert_eq!(w.events.len(), 3, "the removed member hears of it too");
    assert!(
        s.remove_member(&a, "g1", &c)
            .await
            .expect("no-op")
            .events
            .is_empty()
    );
    let e = s.conversation(&c, "g1").await.expect_err("gone");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    s.leave(&b, "g1").await.expect("leave");
    assert_eq!(
        s.conversation(&a, "g1").await.expect("get").members,
        vec![a.clone()]
    );
    let e = s.conversation(&a, "nope").await.expect_err("unknown");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    // Direct conversations are unique per pair.
    let direct = |id: &str, from: &str, to: &str| NewConversation {
        kind: ConversationKind::Direct,
        ..group(id, from, &[to])
    };
    let d1 = s
        .create_conversation(direct("d1", &a, &b))
        .await
        .expect("direct");
    let d2 = s
        .create_conversation(direct("d2", &b, &a))
        .await
        .expect("direct again");
    assert_eq!(d1.value.id, d2.value.id);
    assert!(d2.events.is_empty());
    let e = s
        .create_conversation(direct("d3", &a, &a))
        .await
        .expect_err("self");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
}

pub async fn messages_are_idempotent_and_fan_out(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    s.create_conversation(group("g", &a, &[&b]))
        .await
        .expect("create");
    let w = s
        .send_message(send(&a, "g", "k1", "hello"))
        .await
        .expect("send");
    assert_eq!(
        (seqs(&w.events, &a), seqs(&w.events, &b)),
        (vec![2], vec![2])
    );
    assert_eq!(w.value.attachments.len(), 1);
    let again = s
        .send_message(send(&a, "g", "k1", "hello?"))
        .await
        .expect("repeat");
    assert_eq!(again.value, w.value, "the first message is returned");
    assert!(again.events.is_empty());
    for i in 0..5 {
        s.send_message(send(&b, "g", &format!("b{i}"), &format!("m{i}")))
            .await
            .expect("send");
    }
    let (page, more) = s.history(&a, "g", None, 4).await.expect("history");
    assert_eq!(
        page.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["m4", "m3", "m2", "m1"]
    );
    assert!(more);
    let (rest, more) = s
        .history(&a, "g", Some(&page[3].id), 10)
        .await
        .expect("history");
    assert_eq!(
        rest.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["m0", "hello"]
    );
    assert!(!more);
    let outsider = user(env, "eve").await;
    let e = s
        .send_message(send(&outsider, "g", "x", "hi"))
        .await
        .expect_err("outsider");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let e = s
        .history(&outsider, "g", None, 10)
        .await
        .expect_err("outsider");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    assert_eq!(s.last_seq(&a).await.expect("seq"), 7);
}

/// `send_messages`: one sender's run, in order, in one commit; each send succeeds or fails on
/// its own, and a later one sees the earlier ones (a repeated key returns the first message).
pub async fn a_run_of_sends_commits_in_order_each_on_its_own(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    s.create_conversation(group("g", &a, &[&b]))
        .await
        .expect("create");
    s.create_conversation(group("h", &b, &[]))
        .await
        .expect("create");
    let out = s
        .send_messages(vec![
            send(&a, "g", "k1", "r1"),
            send(&a, "h", "k2", "not a member"),
            send(&a, "g", "k3", "r2"),
            send(&a, "g", "k1", "r1 again"),
        ])
        .await
        .expect("a run");
    assert_eq!(out.len(), 4);
    let first = out[0].as_ref().expect("r1");
    // Bob's seqs 1 and 2 are the two groups' creations.
    assert_eq!(
        (seqs(&first.events, &a), seqs(&first.events, &b)),
        (vec![2], vec![3])
    );
    assert!(
        matches!(out[1], Err(StoreError::Forbidden(_))),
        "{:?}",
        out[1]
    );
    let second = out[2].as_ref().expect("r2");
    assert_eq!(
        seqs(&second.events, &b),
        vec![4],
        "the failed send took no seq"
    );
    let repeat = out[3].as_ref().expect("repeat");
    assert_eq!(
        repeat.value, first.value,
        "the run's own first message is returned"
    );
    assert!(repeat.events.is_empty());
    let (page, _) = s.history(&b, "g", None, 10).await.expect("history");
    assert_eq!(
        page.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["r2", "r1"]
    );
    assert!(
        s.history(&b, "h", None, 10)
            .await
            .expect("history")
            .0
            .is_empty(),
        "nothing of the refused send"
    );
    assert_eq!(s.last_seq(&b).await.expect("seq"), 4);
}

/// `send_messages`: a send the database itself refuses (PostgreSQL takes no NUL in text;
/// SQLite does) fails on its own, and the sends around it are stored, in order, with their
/// seqs (a failed statement would abort the others' transaction: on PostgreSQL the batch's
/// inserts, sent together, are then tried again one by one, each in a savepoint of its own).
pub async fn a_send_the_database_refuses_fails_alone(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    s.create_conversation(group("g", &a, &[&b]))
        .await
        .expect("create");
    let before = s.last_seq(&b).await.expect("seq");
    let out = s
        .send_messages(vec![
            send(&a, "g", "k1", "one"),
            send(&a, "g", "k2", "two"),
            send(&a, "g", "k3", "bad\u{0}text"),
            send(&a, "g", "k4", "four"),
        ])
        .await
        .expect("a run");
    assert_eq!(out.len(), 4);
    let refused = out[2].is_err();
    if let Err(e) = &out[2] {
        assert!(matches!(e, StoreError::Internal(_)), "{e:?}");
    }
    let mut want = vec!["one", "two", "bad\u{0}text", "four"];
    if refused {
        want.remove(2);
    }
    let bobs: Vec<u64> = out
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(|w| seqs(&w.events, &b))
        .collect();
    assert_eq!(
        bobs,
        (before + 1..=before + want.len() as u64).collect::<Vec<_>>()
    );
    let (page, _) = s.history(&b, "g", None, 10).await.expect("history");
    let mut got: Vec<&str> = page.iter().map(|m| m.text.as_str()).collect();
    got.reverse();
    assert_eq!(got, want);
    // Alone in its batch, a refused send fails the same way and leaves nothing behind: the
    // next send numbers on without a gap.
    let seq = s.last_seq(&b).await.expect("seq");
    let refused = alone(env, send(&a, "g", "k5", "bad\u{0}again")).await;
    if let Err(e) = &refused {
        assert!(matches!(e, StoreError::Internal(_)), "{e:?}");
    }
    let stored = u64::from(refused.is_ok());
    let six = alone(env, send(&a, "g", "k6", "six")).await.expect("six");
    assert_eq!(seqs(&six.events, &b), [seq + 1 + stored]);
    let outsider = user(env, "carol").await;
    let forbidden = alone(env, send(&outsider, "g", "k7", "not a member")).await;
    assert!(
        matches!(forbidden, Err(StoreError::Forbidden(_))),
        "{forbidden:?}"
    );
    let eight = alone(env, send(&a, "g", "k8", "eight"))
        .await
        .expect("eight");
    assert_eq!(seqs(&eight.events, &b), [seq + 2 + stored]);
}

/// One send, alone in its batch.
async fn alone(
    env: &Env,
    new: NewMessage,
) -> Result<Written<hubbub_protocol::Message>, StoreError> {
    let mut out = env
        .store
        .send_messages(vec![new])
        .await
        .expect("a batch of one");
    out.remove(0)
}

/// `send_messages` with runs to one group between sends elsewhere: every member's seqs follow
/// the messages' order without gaps, replay finds each message under its seq, and a member
/// who blocks the sender gets none of them.
pub async fn a_run_to_one_group_numbers_each_member_in_order(env: &Env) {
    let s = &env.store;
    let (a, b, d) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "dave").await,
    );
    s.create_conversation(group("g", &a, &[&b, &d]))
        .await
        .expect("create");
    s.create_conversation(group("h", &a, &[&b]))
        .await
        .expect("create");
    s.block(&d, &a).await.expect("block");
    let before = s.last_seq(&b).await.expect("seq");
    let texts = ["g1", "g2", "g3", "h1", "g4", "g5"];
    let out = s
        .send_messages(
            texts
                .iter()
                .map(|t| send(&a, &t[..1], &format!("k{t}"), t))
                .collect(),
        )
        .await
        .expect("runs");
    let written: Vec<_> = out.into_iter().map(|r| r.expect("sent")).collect();
    // Bob is in both groups: one seq per message, in the order sent.
    let bobs: Vec<u64> = written.iter().flat_map(|w| seqs(&w.events, &b)).collect();
    assert_eq!(bobs, (before + 1..=before + 6).collect::<Vec<_>>());
    // Alice herself: five in g, one in h, in order; Dave blocks Alice: none.
    let alices: Vec<u64> = written.iter().flat_map(|w| seqs(&w.events, &a)).collect();
    assert_eq!(alices.len(), 6);
    assert!(alices.windows(2).all(|p| p[1] == p[0] + 1), "{alices:?}");
    assert!(written.iter().all(|w| seqs(&w.events, &d).is_empty()));
    // Replay: each seq holds its own message.
    let alice_before = alices[0] - 1;
    for (who, after) in [(&b, before), (&a, alice_before)] {
        let r = s.events_after(who, after, 100).await.expect("replay");
        let got: Vec<String> = r
            .frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::MessageNew { message, .. } => Some(message.text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(got, texts, "{who}'s replay");
        assert_eq!(r.last_seq, s.last_seq(who).await.expect("seq"));
    }
    let dave = s.events_after(&d, 0, 100).await.expect("replay");
    assert!(
        !dave
            .frames
            .iter()
            .any(|f| matches!(f, ServerFrame::MessageNew { .. })),
        "the blocker got no message"
    );
}

/// A member's stream switching between groups, a direct conversation and other events,
/// skipping a blocked sender's messages and ending in a group they left: every event once,
/// seqs gapless, replay from any point the same suffix, acks clamped to the last seq.
pub async fn a_stream_from_many_places_replays_in_order(env: &Env) {
    let s = &env.store;
    let (a, b, c) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "carol").await,
    );
    s.create_conversation(group("g1", &a, &[&b, &c]))
        .await
        .expect("create");
    s.create_conversation(group("g2", &a, &[&b]))
        .await
        .expect("create");
    let d = s
        .create_conversation(NewConversation {
            kind: ConversationKind::Direct,
            ..group("d", &a, &[&b])
        })
        .await
        .expect("direct")
        .value
        .id;
    let say = |from: &str, to: &str, text: &str| send(from, to, &format!("k-{text}"), text);
    for (from, to, text) in [
        (&a, "g1", "m1"),
        (&a, "g1", "m2"),
        (&a, "g2", "n1"),
        (&a, "g1", "m3"),
        (&a, d.as_str(), "x1"),
        (&a, "g1", "m4"),
        (&c, "g1", "k1"),
    ] {
        s.send_message(say(from, to, text)).await.expect("send");
    }
    s.block(&b, &c).await.expect("block");
    s.send_message(say(&c, "g1", "k2")).await.expect("send");
    s.send_message(say(&a, "g1", "m5")).await.expect("send");
    s.leave(&b, "g1").await.expect("leave");
    s.send_message(say(&a, "g1", "m6")).await.expect("send");
    s.send_message(say(&a, "g2", "n2")).await.expect("send");

    let all = s.events_after(&b, 0, 1000).await.expect("replay");
    let seqs: Vec<u64> = all.frames.iter().filter_map(ServerFrame::seq).collect();
    assert_eq!(seqs, (1..=all.last_seq).collect::<Vec<_>>(), "gapless");
    assert_eq!(all.last_seq, s.last_seq(&b).await.expect("last"));
    let texts = |frames: &[ServerFrame]| -> Vec<String> {
        frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::MessageNew { message, .. } => Some(message.text.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        texts(&all.frames),
        ["m1", "m2", "n1", "m3", "x1", "m4", "k1", "m5", "n2"]
    );
    // From every point, and in pages of two, the same suffix.
    for after in 0..all.last_seq {
        let r = s.events_after(&b, after, 1000).await.expect("replay");
        assert_eq!(r.frames, all.frames[after as usize..], "after {after}");
        let page = s.events_after(&b, after, 2).await.expect("page");
        let end = (after as usize + 2).min(all.frames.len());
        assert_eq!(
            page.frames,
            all.frames[after as usize..end],
            "page after {after}"
        );
    }
    s.ack(&b, all.last_seq + 5).await.expect("ack");
    assert_eq!(s.acked_seq(&b).await.expect("acked"), all.last_seq);
    // Alice got all she sent, and Carol's, in order, gapless.
    let alice = s.events_after(&a, 0, 1000).await.expect("replay");
    let seqs: Vec<u64> = alice.frames.iter().filter_map(ServerFrame::seq).collect();
    assert_eq!(seqs, (1..=alice.last_seq).collect::<Vec<_>>());
    assert_eq!(
        texts(&alice.frames),
        [
            "m1", "m2", "n1", "m3", "x1", "m4", "k1", "k2", "m5", "m6", "n2"
        ]
    );
}

/// Everything pruned, then messages in another group and the first: the stream goes on
/// from where it was, gapless, and replays them.
pub async fn a_stream_goes_on_after_everything_is_pruned(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    for g in ["g1", "g2"] {
        s.create_conversation(group(g, &a, &[&b]))
            .await
            .expect("create");
    }
    s.send_message(send(&a, "g1", "1", "m1"))
        .await
        .expect("send");
    let last = s.last_seq(&b).await.expect("last");
    s.prune_events(i64::MAX).await.expect("prune");
    assert_eq!(s.last_seq(&b).await.expect("last"), last);
    s.send_message(send(&a, "g2", "2", "n1"))
        .await
        .expect("a send to the other group");
    s.send_message(send(&a, "g1", "3", "m2"))
        .await
        .expect("a send to the first");
    let r = s.events_after(&b, last, 100).await.expect("replay");
    let got: Vec<(u64, String)> = r
        .frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::MessageNew { seq, message } => Some((*seq, message.text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(got, [(last + 1, "n1".into()), (last + 2, "m2".into())]);
    assert_eq!((r.last_seq, r.truncated), (last + 2, false));
}

pub async fn reads_and_unread(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    s.create_conversation(group("g", &a, &[&b]))
        .await
        .expect("create");
    let m1 = s
        .send_message(send(&a, "g", "1", "one"))
        .await
        .expect("send")
        .value;
    let m2 = s
        .send_message(send(&a, "g", "2", "two"))
        .await
        .expect("send")
        .value;
    let list = s.conversations(&b).await.expect("list");
    assert_eq!(
        (
            list[0].unread,
            list[0].last_message.as_ref().map(|m| m.id.clone())
        ),
        (2, Some(m2.id.clone()))
    );
    let w = s.mark_read(&b, "g", &m1.id).await.expect("read");
    assert_eq!(w.events.len(), 2, "every member, the reader included");
    assert!(matches!(
        &w.events[0].frame,
        ServerFrame::ReceiptRead { .. }
    ));
    assert_eq!(s.conversations(&b).await.expect("list")[0].unread, 1);
    assert!(
        s.mark_read(&b, "g", &m1.id)
            .await
            .expect("again")
            .events
            .is_empty()
    );
    let e = s
        .mark_read(&b, "g", "999999")
        .await
        .expect_err("no such message");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
}

pub async fn blocks_hide_and_refuse(env: &Env) {
    let s = &env.store;
    let (a, b, c) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "carol").await,
    );
    s.create_conversation(group("g", &a, &[&b, &c]))
        .await
        .expect("create");
    s.block(&b, &a).await.expect("block");
    s.block(&b, &a).await.expect("idempotent");
    assert_eq!(s.blocks(&b).await.expect("list"), vec![a.clone()]);
    let w = s
        .send_message(send(&a, "g", "1", "hi"))
        .await
        .expect("send");
    assert!(seqs(&w.events, &b).is_empty(), "no event for the blocker");
    assert_eq!(seqs(&w.events, &c).len(), 1);
    assert!(
        s.history(&b, "g", None, 10)
            .await
            .expect("history")
            .0
            .is_empty()
    );
    assert_eq!(
        s.typing_recipients(&a, "g").await.expect("typing"),
        vec![c.clone()]
    );
    let e = s
        .create_conversation(NewConversation {
            kind: ConversationKind::Direct,
            ..group("d", &a, &[&b])
        })
        .await
        .expect_err("blocked");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let e = s.block(&a, &a).await.expect_err("self");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    s.unblock(&b, &a).await.expect("unblock");
    assert!(s.blocks(&b).await.expect("list").is_empty());
}

/// If B blocks A, A can put B in no group: neither at its creation nor later.
pub async fn blocked_users_cannot_add_the_blocker_to_groups(env: &Env) {
    let s = &env.store;
    let (a, b, c) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "carol").await,
    );
    s.create_conversation(group("before", &a, &[&b]))
        .await
        .expect("create before the block");
    s.block(&b, &a).await.expect("block");
    let e = s
        .create_conversation(group("g", &a, &[&c, &b]))
        .await
        .expect_err("names the blocker");
    assert!(
        matches!(&e, StoreError::Forbidden(m) if m == "you cannot add this user"),
        "{e:?}"
    );
    let e = s.conversation(&a, "g").await.expect_err("not created");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    s.create_conversation(group("g", &a, &[&c]))
        .await
        .expect("without the blocker");
    let e = s
        .add_member(&a, "g", &b, 3)
        .await
        .expect_err("add the blocker");
    assert!(
        matches!(&e, StoreError::Forbidden(m) if m == "you cannot add this user"),
        "{e:?}"
    );
    assert_eq!(
        s.conversation(&a, "g").await.expect("get").members.len(),
        2,
        "the blocker was not added"
    );
    assert!(
        s.add_member(&a, "before", &b, 3)
            .await
            .expect("already a member: a no-op")
            .events
            .is_empty()
    );
    // The blocker may still add the blocked user, and others may add the blocker.
    s.create_conversation(group("h", &b, &[&a]))
        .await
        .expect("the blocker adds");
    s.create_conversation(group("k", &c, &[&b]))
        .await
        .expect("a third user adds the blocker");
    s.unblock(&b, &a).await.expect("unblock");
    s.add_member(&a, "g", &b, 3).await.expect("after unblock");
}

pub async fn search_finds_words_of_member_conversations(env: &Env) {
    let s = &env.store;
    let (a, b, c) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "carol").await,
    );
    s.create_conversation(group("g1", &a, &[&b]))
        .await
        .expect("create");
    s.create_conversation(group("g2", &c, &[]))
        .await
        .expect("create");
    s.send_message(send(&a, "g1", "1", "the quick brown fox"))
        .await
        .expect("send");
    s.send_message(send(&b, "g1", "2", "lazy dogs sleep"))
        .await
        .expect("send");
    s.send_message(send(&c, "g2", "3", "a quick note"))
        .await
        .expect("send");
    let found = s.search(&a, "quick", None, 10).await.expect("search");
    assert_eq!(
        found.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["the quick brown fox"]
    );
    assert_eq!(
        s.search(&a, "quick fox", Some("g1"), 10)
            .await
            .expect("search")
            .len(),
        1
    );
    assert!(
        s.search(&a, "quick cat", None, 10)
            .await
            .expect("search")
            .is_empty()
    );
    let e = s.search(&a, "  !! ", None, 10).await.expect_err("no words");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    let e = s
        .search(&a, "quick", Some("g2"), 10)
        .await
        .expect_err("not a member");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    // Operators in the text are searched for, never interpreted.
    assert!(s.search(&a, "fox OR \"dogs\" -(x)", None, 10).await.is_ok());
}

pub async fn replay_and_retention(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    s.create_conversation(group("g", &a, &[&b]))
        .await
        .expect("create");
    s.send_message(send(&a, "g", "1", "one"))
        .await
        .expect("send");
    s.send_message(send(&a, "g", "2", "two"))
        .await
        .expect("send");
    let r = s.events_after(&b, 0, 100).await.expect("replay");
    assert_eq!(
        r.frames
            .iter()
            .filter_map(ServerFrame::seq)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!((r.last_seq, r.truncated), (3, false));
    let r = s.events_after(&b, 1, 1).await.expect("replay");
    assert_eq!(
        r.frames
            .iter()
            .filter_map(ServerFrame::seq)
            .collect::<Vec<_>>(),
        [2]
    );
    s.ack(&b, 2).await.expect("ack");
    s.ack(&b, 1).await.expect("ack backwards");
    s.ack(&b, 99).await.expect("ack past the end");
    assert_eq!(
        s.acked_seq(&b).await.expect("acked"),
        3,
        "clamped, never backwards"
    );
    // Several users' acks in one write (an edge's batch): each user's highest, clamped, never
    // backwards; an unknown user changes nothing.
    let a_last = s.last_seq(&a).await.expect("last");
    s.acks(&[
        (a.clone(), 1),
        (b.clone(), 1),
        (a.clone(), 2),
        ("nobody".to_owned(), 5),
    ])
    .await
    .expect("acks");
    assert_eq!(s.acked_seq(&b).await.expect("acked"), 3);
    assert_eq!(s.acked_seq(&a).await.expect("acked"), 2.min(a_last));
    assert_eq!(s.prune_events(i64::MAX).await.expect("prune"), 6);
    let r = s.events_after(&b, 0, 100).await.expect("replay");
    assert!(r.frames.is_empty() && r.truncated && r.last_seq == 3);
    assert!(!s.events_after(&b, 3, 100).await.expect("replay").truncated);
    // After everything was pruned, the stream goes on from where it was.
    s.send_message(send(&a, "g", "3", "three"))
        .await
        .expect("send after prune");
    s.send_message(send(&a, "g", "4", "four"))
        .await
        .expect("send after prune");
    let r = s.events_after(&b, 3, 100).await.expect("replay");
    assert_eq!(
        r.frames
            .iter()
            .filter_map(ServerFrame::seq)
            .collect::<Vec<_>>(),
        [4, 5]
    );
    assert_eq!((r.last_seq, r.truncated), (5, false));
}

pub async fn ephemeral_conversations_expire(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    s.create_conversation(NewConversation {
        ephemeral: true,
        public: false,
        ..group("e", &a, &[&b])
    })
    .await
    .expect("create");
    s.create_conversation(group("keep", &a, &[&b]))
        .await
        .expect("create");
    s.send_message(send(&a, "e", "1", "gone soon"))
        .await
        .expect("send");
    let w = s.expire_ephemeral(i64::MAX).await.expect("expire");
    assert_eq!(w.value, vec!["e".to_owned()]);
    assert_eq!(w.events.len(), 2);
    assert!(
        matches!(&w.events[0].frame, ServerFrame::ConversationUpdated { conversation, .. } if conversation.members.is_empty())
    );
    let e = s.conversation(&a, "e").await.expect_err("deleted");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    assert!(
        s.expire_ephemeral(i64::MAX)
            .await
            .expect("again")
            .value
            .is_empty()
    );
    // The id made again, without Bob: nothing of the new group reaches Bob's stream, and his
    // replay is what it was.
    let bob_before = s.events_after(&b, 0, 1000).await.expect("replay");
    let c = user(env, "carol").await;
    s.create_conversation(group("e", &a, &[&c]))
        .await
        .expect("the id again");
    s.send_message(send(&a, "e", "2", "new group"))
        .await
        .expect("send");
    s.send_message(send(&a, "e", "3", "new group again"))
        .await
        .expect("send");
    let bob_after = s.events_after(&b, 0, 1000).await.expect("replay");
    assert_eq!(bob_after.frames, bob_before.frames);
    assert_eq!(bob_after.last_seq, bob_before.last_seq);
}

fn notification_kind(e: &Event) -> Option<NotificationKind> {
    match &e.frame {
        ServerFrame::Notification { kind, .. } => Some(*kind),
        _ => None,
    }
}

pub async fn feed_posts_likes_comments_follows(env: &Env) {
    let (s, f) = (&env.store, &env.feed);
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    let new = |id: &str| NewPost {
        id: id.into(),
        author: a.clone(),
        text: "post".into(),
        attachments: vec![],
    };
    let p = f.create_post(new("p1")).await.expect("post");
    assert_eq!(
        f.create_post(new("p1")).await.expect("retry"),
        p,
        "idempotent on id"
    );
    let w = f.like(&b, "p1").await.expect("like");
    assert_eq!(w.value, 1);
    assert_eq!(
        w.events
            .iter()
            .filter_map(notification_kind)
            .collect::<Vec<_>>(),
        [NotificationKind::Like]
    );
    let w = f.like(&b, "p1").await.expect("again");
    assert_eq!((w.value, w.events.len()), (1, 0));
    assert!(
        f.like(&a, "p1").await.expect("own").events.is_empty(),
        "no self-notification"
    );
    assert_eq!(f.unlike(&b, "p1").await.expect("unlike"), 1);
    assert_eq!(f.unlike(&b, "p1").await.expect("again"), 1);
    let comment = |id: &str| NewComment {
        id: id.into(),
        post: "p1".into(),
        author: b.clone(),
        text: "nice".into(),
    };
    let w = f.create_comment(comment("k1")).await.expect("comment");
    assert_eq!(w.value.1, 1);
    assert_eq!(
        w.events
            .iter()
            .filter_map(notification_kind)
            .collect::<Vec<_>>(),
        [NotificationKind::Comment]
    );
    let w = f.create_comment(comment("k1")).await.expect("retry");
    assert_eq!((w.value.1, w.events.len()), (1, 0));
    assert_eq!(f.comment_count("p1").await.expect("count"), Some(1));
    let w = f.follow(&b, &a).await.expect("follow");
    assert_eq!(
        w.events
            .iter()
            .filter_map(notification_kind)
            .collect::<Vec<_>>(),
        [NotificationKind::Follow]
    );
    assert!(f.follow(&b, &a).await.expect("again").events.is_empty());
    assert_eq!(f.followers(&a).await.expect("followers"), vec![b.clone()]);
    assert_eq!(f.followee_count(&b).await.expect("count"), 1);
    let e = f.follow(&b, &b).await.expect_err("self");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    let e = f.follow(&b, "ghost").await.expect_err("unknown");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let e = f.delete_post(&b, "p1").await.expect_err("not the author");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    f.delete_post(&a, "p1").await.expect("delete");
    assert_eq!(f.comment_count("p1").await.expect("count"), None);
    let e = f.like(&b, "p1").await.expect_err("deleted");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    // Notifications are durable inbox events of the author, in order.
    let r = s.events_after(&a, 0, 100).await.expect("replay");
    assert_eq!(r.frames.len(), 3);
    f.unfollow(&b, &a).await.expect("unfollow");
    assert!(f.followers(&a).await.expect("followers").is_empty());
}

/// A create repeated with the id of the first (a redelivery, or a client retry with the same
/// idempotency key) returns the first object and changes nothing; the id under another
/// author (or a comment's under another post) is a conflict.
pub async fn keyed_creates_return_the_first_object(env: &Env) {
    let (s, f) = (&env.store, &env.feed);
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    let first = s
        .create_conversation(group("c1", &a, &[&b]))
        .await
        .expect("create");
    let again = s
        .create_conversation(NewConversation {
            title: Some("other".into()),
            ..group("c1", &a, &[])
        })
        .await
        .expect("repeat");
    assert_eq!(again.value, first.value, "the first conversation");
    assert!(again.events.is_empty(), "no new events");
    assert_eq!(s.last_seq(&b).await.expect("seq"), 1);
    let e = s
        .create_conversation(group("c1", &b, &[&a]))
        .await
        .expect_err("another creator");
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    // The same create twice at once (a redelivery while the first still runs): both answer
    // the one conversation, whichever inserts it, and its events are written once.
    for round in 0..10 {
        let id = format!("race{round}");
        let (x, y) = tokio::join!(
            s.create_conversation(group(&id, &a, &[&b])),
            s.create_conversation(group(&id, &a, &[&b]))
        );
        let (x, y) = (x.expect("first"), y.expect("second"));
        assert_eq!(x.value.id, y.value.id);
        assert_eq!(x.value.members, y.value.members);
        assert_eq!(
            x.events.is_empty(),
            !y.events.is_empty(),
            "one of them made it"
        );
    }
    assert_eq!(
        s.last_seq(&b).await.expect("seq"),
        11,
        "one event per create"
    );

    let post = |author: &str, text: &str| NewPost {
        id: "p1".into(),
        author: author.into(),
        text: text.into(),
        attachments: vec![],
    };
    let p = f.create_post(post(&a, "first")).await.expect("post");
    let again = f.create_post(post(&a, "second")).await.expect("repeat");
    assert_eq!(again, p, "the first post");
    let (cands, _) = f.timeline_candidates(&a, 10).await.expect("posts");
    assert_eq!(cands.len(), 1, "one post");
    let e = f
        .create_post(post(&b, "x"))
        .await
        .expect_err("another author");
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");

    let p2 = f
        .create_post(NewPost {
            id: "p2".into(),
            ..post(&a, "two")
        })
        .await
        .expect("post");
    let comment = |post: &str, author: &str| NewComment {
        id: "k1".into(),
        post: post.into(),
        author: author.into(),
        text: "nice".into(),
    };
    let w = f.create_comment(comment("p1", &b)).await.expect("comment");
    assert_eq!(w.events.len(), 1);
    let again = f.create_comment(comment("p1", &b)).await.expect("repeat");
    assert_eq!(again.value, w.value, "the first comment, the same count");
    assert!(again.events.is_empty(), "no new notification");
    let e = f
        .create_comment(comment(&p2.post.id, &b))
        .await
        .expect_err("the id on another post");
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let e = f
        .create_comment(comment("p1", &a))
        .await
        .expect_err("the id by another author");
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert_eq!(f.comment_count("p1").await.expect("count"), Some(1));
    assert_eq!(f.comment_count(&p2.post.id).await.expect("count"), Some(0));
}

pub async fn timelines_read_candidates_and_what_is_new(env: &Env) {
    let f = &env.feed;
    let (a, b, c) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "carol").await,
    );
    let post = |id: &str, author: &str| NewPost {
        id: id.into(),
        author: author.into(),
        text: id.into(),
        attachments: vec![],
    };
    f.create_post(post("a1", &a)).await.expect("post");
    f.create_post(post("c1", &c)).await.expect("post");
    f.create_post(post("b1", &b)).await.expect("post");
    f.follow(&b, &a).await.expect("follow");
    let (cands, watermark) = f.timeline_candidates(&b, 10).await.expect("candidates");
    assert_eq!(
        cands.iter().map(|p| p.post.id.as_str()).collect::<Vec<_>>(),
        ["b1", "a1"],
        "followees and own, newest first"
    );
    assert!(watermark >= cands[0].seq);
    f.create_post(post("a2", &a)).await.expect("post");
    f.create_post(post("c2", &c)).await.expect("post");
    let fresh = f.posts_since(&b, watermark, 10).await.expect("since");
    assert_eq!(
        fresh.iter().map(|p| p.post.id.as_str()).collect::<Vec<_>>(),
        ["a2"]
    );
    let got = f
        .posts(&["a2".into(), "gone".into(), "a1".into()])
        .await
        .expect("posts");
    assert_eq!(
        got.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["a2", "a1"],
        "in the order asked, missing ones left out"
    );
    f.touch_active(&b).await.expect("touch");
    assert_eq!(f.active_users(0).await.expect("active"), vec![b.clone()]);
    assert!(f.active_users(i64::MAX).await.expect("active").is_empty());
}

pub async fn concurrent_sends_keep_seqs_gapless(env: &Env) {
    let s = &env.store;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(user(env, &format!("member{i}")).await);
    }
    let outsider = user(env, "outsider").await;
    let others: Vec<&str> = ids[1..].iter().map(String::as_str).collect();
    s.create_conversation(NewConversation {
        max_members: 10,
        ..group("g", &ids[0], &others)
    })
    .await
    .expect("create");
    // Many sends at once (the PostgreSQL store commits them together), a repeat among them,
    // and one refused send that must not disturb the others.
    let mut sends = Vec::new();
    for k in 0..24 {
        // Sends 2j and 2j + 1 are one message sent twice (same sender, same client_msg_id).
        let sender = ids[(k / 2) % ids.len()].clone();
        sends.push(send(
            &sender,
            "g",
            &format!("k{}", k / 2),
            &format!("m{}", k / 2),
        ));
    }
    sends.push(send(&outsider, "g", "x", "not a member"));
    let results = futures_util::future::join_all(sends.into_iter().map(|n| {
        let store = s.clone();
        async move { store.send_message(n).await }
    }))
    .await;
    assert!(matches!(
        results.last(),
        Some(Err(StoreError::Forbidden(_)))
    ));
    let written: Vec<&Written<hubbub_protocol::Message>> =
        results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let new: Vec<_> = written.iter().filter(|w| !w.events.is_empty()).collect();
    let unique: std::collections::BTreeSet<_> =
        written.iter().map(|w| w.value.id.clone()).collect();
    assert_eq!(
        (new.len(), unique.len()),
        (12, 12),
        "each message fanned out once"
    );
    for w in &new {
        assert_eq!(w.events.len(), 4, "every member");
    }
    for u in &ids {
        let r = s.events_after(u, 0, 1000).await.expect("replay");
        let seqs: Vec<u64> = r.frames.iter().filter_map(ServerFrame::seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "gapless for {u}");
        assert_eq!(
            seqs.len(),
            1 + unique.len(),
            "creation plus each message once"
        );
    }
}

mod sqlite {
    super::store_conformance!(super::sqlite_env());
}

mod postgres {
    super::store_conformance!(super::postgres_env());
}

/// PROTOCOL.md 1.1, "Large groups": past 256 members a membership change is pushed only to
/// the users added or removed and to the member who made it; `C` omits `members` on the
/// wire but counts them; `conversation.members` pages through them by id.
pub async fn large_groups_tell_only_whom_a_change_concerns(env: &Env) {
    let s = &env.store;
    let a = user(env, "lg-owner").await;
    let mut others = Vec::new();
    for i in 0..259 {
        others.push(user(env, &format!("lg-{i:03}")).await);
    }
    let (x, y) = (others[257].clone(), others[258].clone());
    let first: Vec<&str> = others[..257].iter().map(String::as_str).collect();
    let mut new = group("lg", &a, &first);
    new.max_members = 1000;
    let created = s.create_conversation(new).await.expect("create");
    assert_eq!(created.value.member_count, 258);
    assert_eq!(created.events.len(), 258, "creation tells every member");
    let wire = serde_json::to_value(&created.value).expect("json");
    assert!(
        wire.get("members").is_none(),
        "a large group's C omits members"
    );
    assert_eq!(wire["member_count"], 258);

    // Adding two: only they and the one who added them hear of it.
    let added = s
        .add_members(&a, "lg", &[x.clone(), y.clone(), x.clone()], 1000)
        .await
        .expect("add");
    let mut told: Vec<&str> = added.events.iter().map(|e| e.user.as_str()).collect();
    told.sort();
    let mut expected = vec![a.as_str(), x.as_str(), y.as_str()];
    expected.sort();
    assert_eq!(told, expected);
    assert!(
        s.add_members(&a, "lg", std::slice::from_ref(&x), 1000)
            .await
            .expect("again")
            .events
            .is_empty(),
        "adding a member is a no-op"
    );
    let e = s.add_members(&a, "lg", &[], 1000).await.expect_err("empty");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    let e = s
        .add_members(&a, "lg", &["ghost".to_owned()], 1000)
        .await
        .expect_err("unknown");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let e = s
        .add_members(&a, "lg", &[user(env, "lg-late").await], 260)
        .await
        .expect_err("full");
    assert!(matches!(e, StoreError::TooLarge(_)), "{e:?}");

    // Paging through the members by id: every one once, in order.
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = s
            .members_page(&x, "lg", after.as_deref(), 100)
            .await
            .expect("page");
        assert!(page.len() <= 100);
        seen.extend(page.iter().cloned());
        after = page.last().cloned();
        if !more {
            break;
        }
    }
    let mut all = others.clone();
    all.push(a.clone());
    all.sort();
    assert_eq!(seen, all);
    let e = s
        .members_page(&user(env, "lg-outsider").await, "lg", None, 10)
        .await
        .expect_err("not a member");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");

    // Removing one: they and the remover; leaving: the one who left.
    let removed = s.remove_member(&a, "lg", &x).await.expect("remove");
    let mut told: Vec<&str> = removed.events.iter().map(|e| e.user.as_str()).collect();
    told.sort();
    let mut expected = vec![a.as_str(), x.as_str()];
    expected.sort();
    assert_eq!(told, expected);
    let left = s.leave(&y, "lg").await.expect("leave");
    assert_eq!(
        left.events
            .iter()
            .map(|e| e.user.as_str())
            .collect::<Vec<_>>(),
        [y.as_str()]
    );
    let c = s.conversation(&a, "lg").await.expect("get");
    assert_eq!(c.member_count, 258);
}

/// Channels (PROTOCOL.md 1.1): the owner sends, members receive `channel.message` by offset
/// (a broadcast, no inbox rows), `channel.sync` replays by offset, public ones are open to
/// subscribe, and membership changes are told only to whom they concern.
pub async fn channels_number_messages_by_offset(env: &Env) {
    let s = &env.store;
    let owner = user(env, "ch-owner").await;
    let bob = user(env, "ch-bob").await;
    let carol = user(env, "ch-carol").await;
    let mut new = group("ch", &owner, &[]);
    new.kind = ConversationKind::Channel;
    new.public = true;
    let created = s.create_conversation(new).await.expect("create");
    assert_eq!(created.value.kind, ConversationKind::Channel);
    assert!(created.value.public);
    let wire = serde_json::to_value(&created.value).expect("json");
    assert_eq!(wire["last_offset"], 0);
    assert_eq!(wire["public"], true);

    // Anyone subscribes to a public channel, once; only the subscriber hears of it.
    let sub = s.subscribe(&bob, "ch").await.expect("subscribe");
    assert_eq!(
        sub.events
            .iter()
            .map(|e| e.user.as_str())
            .collect::<Vec<_>>(),
        [bob.as_str()]
    );
    assert!(
        s.subscribe(&bob, "ch")
            .await
            .expect("again")
            .events
            .is_empty()
    );
    let bob_seq = s.last_seq(&bob).await.expect("seq");

    // Only the owner sends; a message is broadcast to every member with the next offset.
    let e = s
        .send_message(send(&bob, "ch", "b1", "hi"))
        .await
        .expect_err("a member does not send");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let mut offsets = Vec::new();
    for k in ["m1", "m2", "m3"] {
        let w = s
            .send_message(send(&owner, "ch", k, &format!("news {k}")))
            .await
            .expect("send");
        assert!(w.events.is_empty(), "a channel message is no inbox event");
        let b = w.broadcast.expect("a broadcast");
        // It names the channel; its members are whoever `channels_of` names it for.
        assert_eq!(b.conversation, "ch");
        assert_eq!(
            s.channels_of_users(&[bob.clone(), "nobody".into(), owner.clone()])
                .await
                .expect("channels"),
            [vec!["ch".to_owned()], vec![], vec!["ch".to_owned()]],
            "in the order asked, none for a user in no channel"
        );
        for u in [&owner, &bob] {
            assert_eq!(s.channels_of(u).await.expect("channels"), ["ch"], "{u}");
        }
        let [
            ServerFrame::ChannelMessage {
                offset, message, ..
            },
        ] = b.frames.as_slice()
        else {
            panic!("{:?}", b.frames)
        };
        let (offset, message) = (*offset, message.clone());
        assert_eq!(message, w.value);
        offsets.push(offset);
    }
    assert_eq!(offsets, [1, 2, 3], "offsets count from 1 without gaps");
    let again = s
        .send_message(send(&owner, "ch", "m2", "news m2"))
        .await
        .expect("repeat");
    assert!(again.broadcast.is_none() && again.events.is_empty());
    assert_eq!(s.last_seq(&bob).await.expect("seq"), bob_seq, "no seq used");

    // channel.sync: in offset order, paged.
    let (frames, last, more) = s.channel_messages(&bob, "ch", 0, 2).await.expect("sync");
    let got: Vec<u64> = frames
        .iter()
        .map(|f| match f {
            ServerFrame::ChannelMessage { offset, .. } => *offset,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!((got, last, more), (vec![1, 2], 2, true));
    let (frames, last, more) = s.channel_messages(&bob, "ch", 2, 1000).await.expect("rest");
    assert_eq!((frames.len(), last, more), (1, 3, false));
    let (frames, last, more) = s.channel_messages(&bob, "ch", 3, 1000).await.expect("none");
    assert_eq!((frames.len(), last, more), (0, 3, false));
    let e = s
        .channel_messages(&carol, "ch", 0, 10)
        .await
        .expect_err("not a member");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");

    // In the list: last_offset, no unread; no receipts in a channel.
    let list = s.conversations(&bob).await.expect("list");
    let c = list
        .iter()
        .find(|c| c.conversation.id == "ch")
        .expect("listed");
    assert_eq!((c.conversation.last_offset, c.unread), (3, 0));
    let e = s
        .mark_read(&bob, "ch", &c.last_message.as_ref().expect("last").id)
        .await
        .expect_err("no receipts");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");

    // Private channels are joined by invitation; groups are not channels; the owner stays.
    let mut private = group("ch-private", &owner, &[]);
    private.kind = ConversationKind::Channel;
    s.create_conversation(private).await.expect("private");
    let e = s
        .subscribe(&carol, "ch-private")
        .await
        .expect_err("private");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    s.add_member(&owner, "ch-private", &carol, 10)
        .await
        .expect("invite");
    let e = s.subscribe(&carol, "ch-nope").await.expect_err("unknown");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    s.create_conversation(group("ch-group", &owner, &[&carol]))
        .await
        .expect("group");
    let e = s.subscribe(&carol, "ch-group").await.expect_err("a group");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    let mut public_group = group("ch-pg", &owner, &[]);
    public_group.public = true;
    let e = s
        .create_conversation(public_group)
        .await
        .expect_err("only channels are public");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    let e = s.unsubscribe(&owner, "ch").await.expect_err("the owner");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");

    // Unsubscribing: told to the subscriber only; then no more broadcasts to them.
    let left = s.unsubscribe(&bob, "ch").await.expect("unsubscribe");
    assert_eq!(
        left.events
            .iter()
            .map(|e| e.user.as_str())
            .collect::<Vec<_>>(),
        [bob.as_str()]
    );
    assert!(
        s.unsubscribe(&bob, "ch")
            .await
            .expect("again")
            .events
            .is_empty()
    );
    let w = s
        .send_message(send(&owner, "ch", "m4", "after"))
        .await
        .expect("send");
    assert_eq!(w.broadcast.expect("broadcast").conversation, "ch");
    let of = |u: &str| {
        let u = u.to_owned();
        async move { s.channels_of(&u).await.expect("channels") }
    };
    assert!(of(&owner).await.contains(&"ch".to_owned()));
    assert!(!of(&bob).await.contains(&"ch".to_owned()));
}

/// API keys: shown once, found by the key, scoped, listed without the key, revoked at once.
pub async fn api_keys_are_hashed_scoped_revocable(env: &Env) {
    let s = &env.store;
    let (info, key) = s
        .create_api_key("ci", &["admin".into(), "server".into(), "admin".into()])
        .await
        .expect("create");
    assert!(key.starts_with("hbk_") && key.len() == 68, "{key}");
    assert_eq!(info.scopes, ["server", "admin"], "deduplicated, in order");
    let found = s.api_key(&key).await.expect("find").expect("live");
    assert_eq!(found, info);
    assert!(found.has("admin") && found.has("server"));
    assert_eq!(s.api_key("hbk_nope").await.expect("find"), None);
    let (other, other_key) = s
        .create_api_key("ops", &["server".into()])
        .await
        .expect("create");
    assert!(!other.has("admin"));
    assert_ne!(key, other_key);
    let listed = s.api_keys().await.expect("list");
    assert_eq!(
        listed.iter().map(|k| &k.id).collect::<Vec<_>>(),
        [&info.id, &other.id]
    );
    for bad in [
        s.create_api_key("", &["admin".into()]).await,
        s.create_api_key("x", &[]).await,
        s.create_api_key("x", &["root".into()]).await,
    ] {
        assert!(matches!(bad, Err(StoreError::BadRequest(_))), "{bad:?}");
    }
    s.revoke_api_key(&info.id).await.expect("revoke");
    assert_eq!(
        s.api_key(&key).await.expect("find"),
        None,
        "revoked at once"
    );
    assert!(matches!(
        s.revoke_api_key(&info.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.api_keys().await.expect("list").len(), 1);
}

/// The runtime config: version 0 until stored, compare and set, and a long poll that answers
/// when a newer version commits (or with the current one when it times out).
pub async fn runtime_config_is_compare_and_set_and_long_polled(env: &Env) {
    use std::time::Duration;
    let s = env.store.clone();
    let c = s.runtime_config().await.expect("read");
    assert_eq!((c.version, c.body.as_str()), (0, "{}"));
    assert_eq!(
        s.wait_runtime_config(5, Duration::from_millis(10)).await,
        0,
        "a timed out poll answers with the current version"
    );
    assert_eq!(s.put_runtime_config(0, r#"{"a":1}"#).await.expect("cas"), 1);
    assert!(matches!(
        s.put_runtime_config(0, r#"{"a":2}"#).await,
        Err(StoreError::Conflict(_))
    ));
    let c = s.runtime_config().await.expect("read");
    assert_eq!((c.version, c.body.as_str()), (1, r#"{"a":1}"#));
    // A poll waiting for a version after 1 answers once version 2 commits.
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_runtime_config(1, Duration::from_secs(60)).await })
    };
    // Give the poll time to start waiting; the test holds either way (a late poll finds 2).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.put_runtime_config(1, r#"{"a":3}"#).await.expect("cas"), 2);
    assert_eq!(waiter.await.expect("poll"), 2);
    assert_eq!(s.wait_runtime_config(1, Duration::from_secs(60)).await, 2);
    // Two writers from the same version: exactly one wins.
    let (x, y) = tokio::join!(
        s.put_runtime_config(2, r#"{"x":1}"#),
        s.put_runtime_config(2, r#"{"y":1}"#)
    );
    assert_eq!(x.is_ok() as u8 + y.is_ok() as u8, 1, "{x:?} {y:?}");
    assert_eq!(s.runtime_config().await.expect("read").version, 3);
    assert_eq!(s.active_user_count(0).await.expect("count"), 0);
}

// ---- PROTOCOL.md 1.1 messages: replies, threads, mentions, edits, deletes, reactions, pins

/// Each user's seqs among `events`, which must count up by one.
fn assert_gapless(events: &[Event], user: &str) {
    let got = seqs(events, user);
    let from = got.first().copied().unwrap_or(0);
    let want: Vec<u64> = (from..from + got.len() as u64).collect();
    assert_eq!(got, want, "{user}'s seqs");
}

fn frame_types(events: &[Event], user: &str) -> Vec<&'static str> {
    events
        .iter()
        .filter(|e| e.user == user)
        .map(|e| e.frame.type_name())
        .collect()
}

/// A group of `members` created by `creator`, with room for a few more.
async fn room(env: &Env, id: &str, creator: &str, members: &[&str]) {
    let mut new = group(id, creator, members);
    new.max_members = 10;
    env.store.create_conversation(new).await.expect("group");
}

/// Replies and threads link messages of the same conversation; a thread reply grows its
/// root's `replies` and tells every member (`message.updated`); a mention is a `mention`
/// notification; a bad link or mention is refused and changes nothing.
pub async fn replies_threads_and_mentions(env: &Env) {
    let s = &env.store;
    let a = user(env, "rt-alice").await;
    let b = user(env, "rt-bob").await;
    let c = user(env, "rt-carol").await;
    room(env, "rt", &a, &[&b]).await;
    room(env, "rt-other", &a, &[&c]).await;
    let root = s
        .send_message(send(&a, "rt", "root", "a root"))
        .await
        .expect("root")
        .value;
    let elsewhere = s
        .send_message(send(&a, "rt-other", "x", "elsewhere"))
        .await
        .expect("elsewhere")
        .value;

    let mut first = send(&b, "rt", "r1", "first reply");
    first.reply_to = Some(root.id.clone());
    first.thread = Some(root.id.clone());
    first.mentions = vec![a.clone(), a.clone()];
    let w = s.send_message(first).await.expect("reply");
    assert_eq!(w.value.reply_to.as_deref(), Some(root.id.as_str()));
    assert_eq!(w.value.thread.as_deref(), Some(root.id.as_str()));
    assert_eq!(
        w.value.mentions,
        std::slice::from_ref(&a),
        "mentions named once"
    );
    assert_eq!(
        frame_types(&w.events, &a),
        ["message.new", "message.updated", "notification"]
    );
    assert_eq!(
        frame_types(&w.events, &b),
        ["message.new", "message.updated"]
    );
    assert_gapless(&w.events, &a);
    assert_gapless(&w.events, &b);
    let updated = w
        .events
        .iter()
        .find_map(|e| match &e.frame {
            ServerFrame::MessageUpdated { message, .. } => Some(message.clone()),
            _ => None,
        })
        .expect("the root's update");
    assert_eq!(
        (updated.id.as_str(), updated.replies),
        (root.id.as_str(), 1)
    );
    let mention = w
        .events
        .iter()
        .find_map(|e| match &e.frame {
            ServerFrame::Notification { kind, data, .. } => Some((*kind, data.clone())),
            _ => None,
        })
        .expect("a mention");
    assert_eq!(mention.0, NotificationKind::Mention);
    assert_eq!(mention.1["conversation"], "rt");
    assert_eq!(mention.1["message"], w.value.id.as_str());

    // Naming a reply as the thread puts the message in its root's thread.
    let mut second = send(&a, "rt", "r2", "second reply");
    second.thread = Some(w.value.id.clone());
    let second = s.send_message(second).await.expect("second").value;
    assert_eq!(second.thread.as_deref(), Some(root.id.as_str()));

    // Bad links and mentions: refused, nothing written, no seq taken.
    let (a_seq, b_seq) = (
        s.last_seq(&a).await.expect("seq"),
        s.last_seq(&b).await.expect("seq"),
    );
    let mut bad = send(&a, "rt", "bad1", "x");
    bad.reply_to = Some(elsewhere.id.clone());
    let e = s
        .send_message(bad)
        .await
        .expect_err("another conversation's");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let mut bad = send(&a, "rt", "bad2", "x");
    bad.thread = Some(elsewhere.id.clone());
    let e = s
        .send_message(bad)
        .await
        .expect_err("another conversation's");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let mut bad = send(&a, "rt", "bad3", "x");
    bad.thread = Some("not-an-id".into());
    let e = s.send_message(bad).await.expect_err("no such message");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let mut bad = send(&a, "rt", "bad4", "x");
    bad.mentions = vec![c.clone()];
    let e = s.send_message(bad).await.expect_err("not a member");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    assert_eq!(s.last_seq(&a).await.expect("seq"), a_seq);
    assert_eq!(s.last_seq(&b).await.expect("seq"), b_seq);
    let (all, _) = s.history(&a, "rt", None, 50).await.expect("history");
    assert_eq!(all.len(), 3, "only the root and its two replies");

    // The thread's history: its replies only, newest first; the root counts them.
    let (thread, more) = s
        .thread_history(&b, "rt", &root.id, None, 10)
        .await
        .expect("thread");
    let ids: Vec<&str> = thread.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [second.id.as_str(), w.value.id.as_str()]);
    assert!(!more);
    let (page, more) = s
        .thread_history(&b, "rt", &root.id, Some(&second.id), 10)
        .await
        .expect("older");
    assert_eq!((page.len(), more), (1, false));
    let root_now = all.iter().find(|m| m.id == root.id).expect("root");
    assert_eq!(root_now.replies, 2);
    assert_eq!(root_now.my_reactions.as_deref(), Some(&[][..]));
    let e = s
        .thread_history(&c, "rt", &root.id, None, 10)
        .await
        .expect_err("not a member");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");

    // A replay rebuilds the same events.
    let replay = s.events_after(&a, a_seq - 5, 10).await.expect("replay");
    let types: Vec<&str> = replay.frames.iter().map(ServerFrame::type_name).collect();
    assert_eq!(
        types,
        [
            "message.new",
            "message.updated",
            "notification",
            "message.new",
            "message.updated"
        ]
    );
}

/// Edits (sender only) keep versions; deletes (the sender, or a group's owner) leave a
/// tombstone that search no longer finds, erasing its versions; both tell every member.
pub async fn edits_keep_versions_and_deletes_leave_tombstones(env: &Env) {
    let s = &env.store;
    let a = user(env, "ed-alice").await;
    let b = user(env, "ed-bob").await;
    room(env, "ed", &a, &[&b]).await;
    let m = s
        .send_message(send(&a, "ed", "m", "hello world"))
        .await
        .expect("send")
        .value;
    let by_b = s
        .send_message(send(&b, "ed", "mb", "bob speaks"))
        .await
        .expect("send")
        .value;
    let a_seq = s.last_seq(&a).await.expect("seq");

    let e = s
        .edit_message(&b, "ed", &m.id, "mine now")
        .await
        .expect_err("another's");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let e = s
        .edit_message(&a, "ed", "999999", "x")
        .await
        .expect_err("no such message");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    assert_eq!(s.last_seq(&a).await.expect("seq"), a_seq, "nothing changed");

    let w = s
        .edit_message(&a, "ed", &m.id, "hello there")
        .await
        .expect("edit");
    assert_eq!(w.value.text, "hello there");
    assert!(w.value.edited_ts.is_some());
    assert_eq!(frame_types(&w.events, &a), ["message.updated"]);
    assert_eq!(frame_types(&w.events, &b), ["message.updated"]);
    let again = s
        .edit_message(&a, "ed", &m.id, "hello there")
        .await
        .expect("the same text");
    assert!(again.events.is_empty(), "the same text changes nothing");
    let versions = s.message_versions(&b, "ed", &m.id).await.expect("versions");
    let texts: Vec<&str> = versions.iter().map(|v| v.text.as_str()).collect();
    assert_eq!(texts, ["hello world", "hello there"]);
    assert_eq!(versions[0].ts, m.ts);

    // Search follows the edit.
    let found = s.search(&b, "there", Some("ed"), 10).await.expect("search");
    assert_eq!(found.len(), 1);
    assert!(found[0].my_reactions.is_some());
    assert!(
        s.search(&b, "world", Some("ed"), 10)
            .await
            .expect("search")
            .is_empty()
    );

    // Deleting: not another's (b is no owner); the owner may.
    let e = s
        .delete_message(&b, "ed", &m.id)
        .await
        .expect_err("another's");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let w = s
        .delete_message(&a, "ed", &by_b.id)
        .await
        .expect("the owner deletes");
    assert_eq!(frame_types(&w.events, &b), ["message.updated"]);
    let w = s.delete_message(&a, "ed", &m.id).await.expect("delete");
    let ServerFrame::MessageUpdated { message: gone, .. } = &w.events[0].frame else {
        panic!("{:?}", w.events[0].frame)
    };
    assert!(gone.deleted);
    let wire = serde_json::to_value(gone).expect("json");
    assert_eq!(
        (&wire["deleted"], &wire["text"], &wire["attachments"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(""),
            &serde_json::json!([])
        )
    );
    assert_eq!((gone.sender.as_str(), gone.ts), (a.as_str(), m.ts));
    assert!(
        s.delete_message(&a, "ed", &m.id)
            .await
            .expect("again")
            .events
            .is_empty()
    );
    assert!(
        s.message_versions(&a, "ed", &m.id)
            .await
            .expect("versions")
            .is_empty(),
        "versions are erased"
    );
    assert!(
        s.search(&b, "there", Some("ed"), 10)
            .await
            .expect("search")
            .is_empty()
    );
    let (history, _) = s.history(&b, "ed", None, 10).await.expect("history");
    assert!(history.iter().all(|m| m.deleted), "tombstones stay");
    assert_eq!(history.len(), 2);
    let e = s
        .edit_message(&a, "ed", &m.id, "back")
        .await
        .expect_err("deleted");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");

    // In a direct conversation only the sender deletes, whoever created it.
    let direct = s
        .create_conversation(NewConversation {
            id: "ed-direct".into(),
            kind: ConversationKind::Direct,
            members: vec![b.clone()],
            ..group("ed-direct", &a, &[])
        })
        .await
        .expect("direct")
        .value;
    let mine = s
        .send_message(send(&b, &direct.id, "d1", "mine"))
        .await
        .expect("send")
        .value;
    let e = s
        .delete_message(&a, &direct.id, &mine.id)
        .await
        .expect_err("not the sender");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
}

/// Reactions: idempotent, members only, at most 50 distinct emoji of 1 to 32 bytes, a
/// summary most first, `reaction.updated` to every member, `my_reactions` in reads.
pub async fn reactions_keep_a_summary(env: &Env) {
    let s = &env.store;
    let a = user(env, "re-alice").await;
    let b = user(env, "re-bob").await;
    let c = user(env, "re-carol").await;
    room(env, "re", &a, &[&b]).await;
    let m = s
        .send_message(send(&a, "re", "m", "react to me"))
        .await
        .expect("send")
        .value;

    let w = s.react(&a, "re", &m.id, "👍", true).await.expect("add");
    assert_eq!(frame_types(&w.events, &b), ["reaction.updated"]);
    let w = s.react(&b, "re", &m.id, "👍", true).await.expect("add");
    let ServerFrame::ReactionUpdated {
        user: who,
        emoji,
        op,
        reactions,
        ..
    } = &w.events[0].frame
    else {
        panic!("{:?}", w.events[0].frame)
    };
    assert_eq!(
        (who.as_str(), emoji.as_str(), *op),
        (b.as_str(), "👍", hubbub_protocol::ReactionOp::Add)
    );
    assert_eq!(reactions, &w.value);
    assert_eq!((w.value[0].emoji.as_str(), w.value[0].count), ("👍", 2));
    let again = s.react(&a, "re", &m.id, "👍", true).await.expect("again");
    assert!(again.events.is_empty(), "idempotent");
    assert_eq!(again.value[0].count, 2);

    // Refused, changing nothing.
    let seq = s.last_seq(&a).await.expect("seq");
    let e = s
        .react(&c, "re", &m.id, "👍", true)
        .await
        .expect_err("not a member");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let e = s
        .react(&a, "re", &m.id, &"x".repeat(33), true)
        .await
        .expect_err("too long");
    assert!(matches!(e, StoreError::TooLarge(_)), "{e:?}");
    let e = s.react(&a, "re", &m.id, "", true).await.expect_err("empty");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    assert_eq!(s.last_seq(&a).await.expect("seq"), seq);

    // At most 50 distinct emoji.
    for i in 1..50 {
        s.react(&a, "re", &m.id, &format!("e{i}"), true)
            .await
            .expect("under the cap");
    }
    let e = s
        .react(&b, "re", &m.id, "e50", true)
        .await
        .expect_err("the 51st");
    assert!(matches!(e, StoreError::TooLarge(_)), "{e:?}");
    let w = s
        .react(&b, "re", &m.id, "e7", true)
        .await
        .expect("one of the 50");
    assert_eq!(w.value.len(), 50);
    assert_eq!(
        w.value
            .iter()
            .take(2)
            .map(|r| (r.emoji.as_str(), r.count))
            .collect::<Vec<_>>(),
        [("👍", 2), ("e7", 2)],
        "most first"
    );

    // Removing: idempotent too; a count of 0 leaves the summary.
    let w = s.react(&a, "re", &m.id, "e3", false).await.expect("remove");
    assert_eq!(w.value.len(), 49);
    assert!(matches!(
        &w.events[0].frame,
        ServerFrame::ReactionUpdated {
            op: hubbub_protocol::ReactionOp::Remove,
            ..
        }
    ));
    assert!(
        s.react(&a, "re", &m.id, "e3", false)
            .await
            .expect("again")
            .events
            .is_empty()
    );

    // Reads carry the summary and the caller's own reactions.
    let (page, _) = s.history(&b, "re", None, 10).await.expect("history");
    assert_eq!(page[0].reactions.len(), 49);
    assert_eq!(page[0].my_reactions, Some(vec!["👍".into(), "e7".into()]));
    let (page, _) = s.history(&a, "re", None, 10).await.expect("history");
    let mine = page[0].my_reactions.clone().expect("mine");
    assert_eq!(mine.len(), 49, "👍 and e1..e49 less e3");
    assert!(!mine.contains(&"e3".to_owned()));
}

/// Pins: any member of a direct conversation, the owner of a group; `pinned` in C and
/// `conversation.updated` to every member; `conversation.pins` most recently pinned first.
pub async fn pins_change_the_conversation(env: &Env) {
    let s = &env.store;
    let a = user(env, "pn-alice").await;
    let b = user(env, "pn-bob").await;
    room(env, "pn", &a, &[&b]).await;
    room(env, "pn-other", &a, &[]).await;
    let m1 = s
        .send_message(send(&b, "pn", "m1", "one"))
        .await
        .expect("send")
        .value;
    let m2 = s
        .send_message(send(&b, "pn", "m2", "two"))
        .await
        .expect("send")
        .value;
    let other = s
        .send_message(send(&a, "pn-other", "o", "other"))
        .await
        .expect("send")
        .value;

    let e = s
        .pin(&b, "pn", &m1.id, true)
        .await
        .expect_err("not the owner");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let e = s
        .pin(&a, "pn", &other.id, true)
        .await
        .expect_err("another conversation's");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let w = s.pin(&a, "pn", &m1.id, true).await.expect("pin");
    assert_eq!(frame_types(&w.events, &b), ["conversation.updated"]);
    let ServerFrame::ConversationUpdated { conversation, .. } = &w.events[0].frame else {
        panic!("{:?}", w.events[0].frame)
    };
    assert_eq!(conversation.pinned, std::slice::from_ref(&m1.id));
    assert!(
        s.pin(&a, "pn", &m1.id, true)
            .await
            .expect("again")
            .events
            .is_empty()
    );
    s.pin(&a, "pn", &m2.id, true).await.expect("pin");
    let c = s.conversation(&b, "pn").await.expect("get");
    assert_eq!(c.pinned, [m2.id.clone(), m1.id.clone()]);
    let pins = s.pins(&b, "pn").await.expect("pins");
    let ids: Vec<&str> = pins.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [m2.id.as_str(), m1.id.as_str()]);
    assert!(pins.iter().all(|m| m.my_reactions.is_some()));

    let w = s.pin(&a, "pn", &m1.id, false).await.expect("unpin");
    assert_eq!(frame_types(&w.events, &a), ["conversation.updated"]);
    assert!(
        s.pin(&a, "pn", &m1.id, false)
            .await
            .expect("again")
            .events
            .is_empty()
    );
    // Deleting a pinned message unpins it.
    let w = s.delete_message(&b, "pn", &m2.id).await.expect("delete");
    assert_eq!(
        frame_types(&w.events, &a),
        ["message.updated", "conversation.updated"]
    );
    assert!(
        s.conversation(&a, "pn")
            .await
            .expect("get")
            .pinned
            .is_empty()
    );

    // In a direct conversation, either member pins.
    let direct = s
        .create_conversation(NewConversation {
            kind: ConversationKind::Direct,
            members: vec![b.clone()],
            ..group("pn-direct", &a, &[])
        })
        .await
        .expect("direct")
        .value;
    let d = s
        .send_message(send(&a, &direct.id, "d", "pin me"))
        .await
        .expect("send")
        .value;
    s.pin(&b, &direct.id, &d.id, true).await.expect("b pins");
}

/// In a channel, changes to a message are broadcast as `channel.updated` with its offset,
/// never inbox events.
pub async fn channel_changes_are_broadcast(env: &Env) {
    let s = &env.store;
    let owner = user(env, "cu-owner").await;
    let bob = user(env, "cu-bob").await;
    let mut new = group("cu", &owner, &[]);
    new.kind = ConversationKind::Channel;
    new.public = true;
    s.create_conversation(new).await.expect("channel");
    s.subscribe(&bob, "cu").await.expect("subscribe");
    s.send_message(send(&owner, "cu", "m0", "zero"))
        .await
        .expect("send");
    let m = s
        .send_message(send(&owner, "cu", "m1", "news"))
        .await
        .expect("send")
        .value;
    let bob_seq = s.last_seq(&bob).await.expect("seq");
    let offset_of = |b: Option<Broadcast>| match b.expect("broadcast").frames.as_slice() {
        [
            ServerFrame::ChannelUpdated {
                offset, message, ..
            },
        ] => (*offset, message.clone()),
        other => panic!("{other:?}"),
    };

    let w = s.react(&bob, "cu", &m.id, "🎉", true).await.expect("react");
    assert!(w.events.is_empty());
    let (offset, changed) = offset_of(w.broadcast);
    assert_eq!((offset, changed.reactions.len()), (2, 1));
    let w = s
        .edit_message(&owner, "cu", &m.id, "news, fixed")
        .await
        .expect("edit");
    assert!(w.events.is_empty());
    let (offset, changed) = offset_of(w.broadcast);
    assert_eq!((offset, changed.text.as_str()), (2, "news, fixed"));
    let mut reply = send(&owner, "cu", "m2", "more");
    reply.thread = Some(m.id.clone());
    let w = s.send_message(reply).await.expect("thread reply");
    let frames = w.broadcast.expect("broadcast").frames;
    assert!(matches!(
        frames.as_slice(),
        [
            ServerFrame::ChannelMessage { offset: 3, .. },
            ServerFrame::ChannelUpdated { offset: 2, .. }
        ]
    ));
    let e = s
        .pin(&bob, "cu", &m.id, true)
        .await
        .expect_err("only the owner pins in a channel");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    assert_eq!(s.last_seq(&bob).await.expect("seq"), bob_seq, "no seq used");
}

/// Reactions, edits and thread replies on one message at once (on PostgreSQL, concurrent
/// transactions and the send batch lock the same users and the same row): no update is lost,
/// nothing waits in a circle, and every member's seqs stay gapless.
pub async fn concurrent_changes_keep_summaries_and_seqs(env: &Env) {
    let s = &env.store;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(user(env, &format!("cc{i}")).await);
    }
    let others: Vec<&str> = ids[1..].iter().map(String::as_str).collect();
    room(env, "cc", &ids[0], &others).await;
    let root = s
        .send_message(send(&ids[0], "cc", "root", "root"))
        .await
        .expect("root")
        .value;
    let mut reactions = Vec::new();
    for u in &ids {
        for e in 0..8 {
            let (store, u, id) = (s.clone(), u.clone(), root.id.clone());
            reactions.push(async move {
                store
                    .react(&u, "cc", &id, &format!("e{e}"), true)
                    .await
                    .map(|_| ())
            });
        }
    }
    let mut replies = Vec::new();
    for k in 0..12 {
        let mut reply = send(&ids[k % 3], "cc", &format!("r{k}"), "in the thread");
        reply.thread = Some(root.id.clone());
        let store = s.clone();
        replies.push(async move { store.send_message(reply).await.map(|_| ()) });
    }
    let edits = (0..4).map(|k| {
        let (store, u, id) = (s.clone(), ids[0].clone(), root.id.clone());
        async move {
            store
                .edit_message(&u, "cc", &id, &format!("root v{k}"))
                .await
                .map(|_| ())
        }
    });
    let (r, t, e) = tokio::join!(
        futures_util::future::join_all(reactions),
        futures_util::future::join_all(replies),
        futures_util::future::join_all(edits)
    );
    for result in r.into_iter().chain(t).chain(e) {
        result.expect("every change goes through");
    }
    let (page, _) = s.history(&ids[1], "cc", None, 100).await.expect("history");
    let now = page.iter().find(|m| m.id == root.id).expect("root");
    assert_eq!(now.replies, 12, "no reply count lost");
    assert_eq!(now.reactions.len(), 8);
    assert!(
        now.reactions.iter().all(|r| r.count == 3),
        "{:?}",
        now.reactions
    );
    assert_eq!(
        s.message_versions(&ids[1], "cc", &root.id)
            .await
            .expect("versions")
            .len(),
        5,
        "the first text and four edits"
    );
    for u in &ids {
        let r = s.events_after(u, 0, 1000).await.expect("replay");
        let seqs: Vec<u64> = r.frames.iter().filter_map(ServerFrame::seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "gapless for {u}");
        // Creation, the root, 24 reactions, 12 replies with 12 root updates, 4 edits.
        assert_eq!(seqs.len(), 1 + 1 + 24 + 24 + 4, "each change once");
    }
}

/// The server API's system messages (no membership needed, fanned out like any message) and
/// its reads: a conversation by id, a message by its key.
pub async fn system_messages_and_server_reads(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    s.create_conversation(group("g", &a, &[&b]))
        .await
        .expect("create");
    let as_system = |key: &str, system: bool| NewMessage {
        system,
        ..send("system", "g", key, "welcome")
    };
    assert!(
        matches!(
            s.send_message(as_system("w0", false)).await,
            Err(StoreError::Forbidden(_))
        ),
        "\"system\" is no member without the flag"
    );
    let w = s.send_message(as_system("w1", true)).await.expect("system");
    assert_eq!(w.value.sender, "system");
    assert_eq!(
        (seqs(&w.events, &a).len(), seqs(&w.events, &b).len()),
        (1, 1),
        "every member gets it once"
    );
    let again = s.send_message(as_system("w1", true)).await.expect("repeat");
    assert_eq!((again.value, again.events.len()), (w.value.clone(), 0));
    assert_eq!(
        s.message_by_key("system", "w1").await.expect("read"),
        Some(w.value.clone())
    );
    assert_eq!(
        s.message_by_key("system", "nope").await.expect("read"),
        None
    );
    assert!(matches!(
        s.send_message(NewMessage {
            conversation: "nowhere".into(),
            ..as_system("w2", true)
        })
        .await,
        Err(StoreError::NotFound(_))
    ));
    let c = s
        .conversation_by_id("g")
        .await
        .expect("read")
        .expect("found");
    assert_eq!((c.created_by.as_str(), c.members.len()), (a.as_str(), 2));
    assert_eq!(s.conversation_by_id("nowhere").await.expect("read"), None);
}

/// Webhook endpoints (created with a secret, listed, deleted) and the presence announced.
pub async fn webhooks_and_announced_presence(env: &Env) {
    let s = &env.store;
    let w = s
        .create_webhook(
            "http://127.0.0.1:9/h",
            &["user.online".into(), "message.created".into()],
        )
        .await
        .expect("create");
    assert!(w.secret.starts_with("whsec_") && w.secret.len() == 70);
    assert!(w.wants("message.created") && !w.wants("user.offline"));
    let other = s
        .create_webhook("http://127.0.0.1:9/g", &["user.offline".into()])
        .await
        .expect("create");
    // Oldest first; two made in the same millisecond come in id order.
    let mut made = vec![w.clone(), other.clone()];
    if w.created_ms == other.created_ms {
        made.sort_by(|a, b| a.id.cmp(&b.id));
    }
    assert_eq!(s.webhooks().await.expect("list"), made);
    s.delete_webhook(&w.id).await.expect("delete");
    assert!(matches!(
        s.delete_webhook(&w.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.webhooks().await.expect("list"), [other]);

    assert_eq!(s.announced_presence("u1").await.expect("read"), None);
    for u in ["u1", "u2", "u3"] {
        s.set_announced_presence(u, true).await.expect("set");
    }
    s.set_announced_presence("u2", false).await.expect("set");
    assert_eq!(s.announced_presence("u2").await.expect("read"), Some(false));
    assert_eq!(s.announced_online("", 1).await.expect("page"), ["u1"]);
    assert_eq!(s.announced_online("u1", 10).await.expect("page"), ["u3"]);
}

fn contact_frames(frames: &[ServerFrame]) -> Vec<ServerFrame> {
    frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::ContactUpdated { .. }))
        .cloned()
        .collect()
}

/// PROTOCOL.md 1.1, "Contacts": `contact.set` merges (absent keeps, empty clears), each change
/// is one `contact.updated` for the owner only (replayed with its note), a set that changes
/// nothing writes no event, `contact.remove` is idempotent, and contacts are private.
pub async fn contacts_are_private_merged_and_evented(env: &Env) {
    let s = &env.store;
    let (a, b, c) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "carol").await,
    );
    let w = s
        .set_contact(&a, &b, Some("work"), Some("owes me lunch"))
        .await
        .expect("set");
    assert_eq!(
        (
            w.value.user.as_str(),
            w.value.group.as_deref(),
            w.value.note.as_deref()
        ),
        (b.as_str(), Some("work"), Some("owes me lunch"))
    );
    assert_eq!(w.events.len(), 1);
    assert_eq!(w.events[0].user, a);
    assert!(matches!(
        &w.events[0].frame,
        ServerFrame::ContactUpdated { seq: 1, contact: Some(k), removed: false, .. } if *k == w.value
    ));
    // The same again: nothing changes, no event.
    let again = s
        .set_contact(&a, &b, Some("work"), Some("owes me lunch"))
        .await
        .expect("repeat");
    assert!(again.events.is_empty());
    // Only the group: the note stays. An empty note clears it.
    let g = s
        .set_contact(&a, &b, Some("friends"), None)
        .await
        .expect("group");
    assert_eq!(g.value.note.as_deref(), Some("owes me lunch"));
    assert_eq!(g.value.group.as_deref(), Some("friends"));
    s.set_contact(&a, &c, None, Some("n")).await.expect("carol");
    let cleared = s.set_contact(&a, &c, None, Some("")).await.expect("clear");
    assert_eq!((cleared.value.group, cleared.value.note), (None, None));
    let list = s.contacts(&a).await.expect("list");
    let users: Vec<&str> = list.iter().map(|k| k.user.as_str()).collect();
    let mut want = vec![b.as_str(), c.as_str()];
    want.sort();
    assert_eq!(users, want, "by user id");
    // Private: bob and carol see none of it, and got no event.
    assert!(s.contacts(&b).await.expect("bob").is_empty());
    assert!(contact_frames(&s.events_after(&b, 0, 100).await.expect("bob").frames).is_empty());
    // Removal: one event; again, none.
    let r = s.remove_contact(&a, &c).await.expect("remove");
    assert!(matches!(
        &r.events[..],
        [Event { frame: ServerFrame::ContactUpdated { contact: None, user: Some(u), removed: true, .. }, .. }] if *u == c
    ));
    assert!(
        s.remove_contact(&a, &c)
            .await
            .expect("again")
            .events
            .is_empty()
    );
    assert_eq!(s.contacts(&a).await.expect("list").len(), 1);
    // The replay: every change in order, notes included (sealed in the inbox, opened here).
    let frames = contact_frames(&s.events_after(&a, 0, 100).await.expect("replay").frames);
    assert_eq!(frames.len(), 5, "{frames:?}");
    assert!(matches!(
        &frames[0],
        ServerFrame::ContactUpdated { seq: 1, contact: Some(k), .. } if k.note.as_deref() == Some("owes me lunch")
    ));
    assert!(matches!(
        &frames[1],
        ServerFrame::ContactUpdated { seq: 2, contact: Some(k), .. } if k.group.as_deref() == Some("friends")
    ));
}

/// A group over 64 characters, a note over 1,000, an unknown user, oneself: refused, and
/// nothing changes.
pub async fn contacts_refuse_bad_input(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "alice").await, user(env, "bob").await);
    s.set_contact(&a, &b, Some("g"), Some("n"))
        .await
        .expect("set");
    let long_group = "g".repeat(65);
    let long_note = "é".repeat(1001);
    let e = s
        .set_contact(&a, &b, Some(&long_group), None)
        .await
        .expect_err("group");
    assert!(matches!(e, StoreError::TooLarge(_)), "{e:?}");
    let e = s
        .set_contact(&a, &b, None, Some(&long_note))
        .await
        .expect_err("note");
    assert!(matches!(e, StoreError::TooLarge(_)), "{e:?}");
    let e = s
        .set_contact(&a, "nobody", None, None)
        .await
        .expect_err("unknown");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let e = s.set_contact(&a, &a, None, None).await.expect_err("self");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
    // At the limits exactly: accepted.
    s.set_contact(&a, &b, Some(&"g".repeat(64)), Some(&"é".repeat(1000)))
        .await
        .expect("at the limits");
    let list = s.contacts(&a).await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].note.as_deref().map(|n| n.chars().count()),
        Some(1000)
    );
    assert_eq!(
        s.last_seq(&a).await.expect("seq"),
        2,
        "two changes, no more"
    );
}

/// `hubbub rotate-note-keys`: a ring with a new current key still opens the notes and events
/// sealed under the old one, new notes use the new key, and `reseal_notes` moves every note
/// to it (after which the old key is no longer needed for them).
pub async fn rotated_note_keys_still_open_old_notes_and_reseal_them(env: &Env) {
    let (a, b, c) = (
        user(env, "alice").await,
        user(env, "bob").await,
        user(env, "carol").await,
    );
    let old = NoteKeys::generate().expect("keys");
    let before = (env.with_keys)(old.clone());
    before
        .set_contact(&a, &b, None, Some("sealed under k1"))
        .await
        .expect("set");
    let rotated = old.rotated().expect("rotate");
    assert_eq!(rotated.current(), "k2");
    let after = (env.with_keys)(rotated.clone());
    assert_eq!(
        after.contacts(&a).await.expect("list")[0].note.as_deref(),
        Some("sealed under k1")
    );
    after
        .set_contact(&a, &c, None, Some("sealed under k2"))
        .await
        .expect("set");
    assert_eq!(
        after.reseal_notes().await.expect("reseal"),
        1,
        "only bob's note"
    );
    assert_eq!(
        after.reseal_notes().await.expect("reseal"),
        1,
        "then only the event of bob's note"
    );
    assert_eq!(after.reseal_notes().await.expect("reseal"), 0);
    // Without k1, every note still opens: each is under k2 now.
    let text: String = rotated
        .to_text()
        .lines()
        .filter(|l| !l.starts_with("k1 "))
        .map(|l| format!("{l}\n"))
        .collect();
    let only_new = (env.with_keys)(NoteKeys::parse(&text).expect("k2 alone"));
    let notes: Vec<Option<String>> = only_new
        .contacts(&a)
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.note)
        .collect();
    assert_eq!(notes.len(), 2, "both contacts listed without the old key");
    assert!(notes.contains(&Some("sealed under k1".to_owned())));
    // The events too: every one opens without k1.
    let frames = contact_frames(
        &only_new
            .events_after(&a, 0, 100)
            .await
            .expect("replay")
            .frames,
    );
    assert_eq!(frames.len(), 2);
    assert!(matches!(
        &frames[0],
        ServerFrame::ContactUpdated { contact: Some(k), .. } if k.note.as_deref() == Some("sealed under k1")
    ));
}

/// `message.report`: a member reports a live message of the conversation once (a repeat
/// returns the first report, not fresh); the list is newest first, paged by `before`.
pub async fn reports_are_stored_once_and_listed_newest_first(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "rep-alice").await, user(env, "rep-bob").await);
    let eve = user(env, "rep-eve").await;
    s.create_conversation(group("rep", &a, &[&b]))
        .await
        .expect("create");
    let m1 = s
        .send_message(send(&a, "rep", "r1", "one"))
        .await
        .expect("send")
        .value;
    let m2 = s
        .send_message(send(&a, "rep", "r2", "two"))
        .await
        .expect("send")
        .value;
    let (first, fresh) = s
        .report_message(&b, "rep", &m1.id, "spam")
        .await
        .expect("report");
    assert!(fresh);
    assert_eq!(
        (
            first.conversation.as_str(),
            first.message.as_str(),
            first.reporter.as_str()
        ),
        ("rep", m1.id.as_str(), b.as_str())
    );
    let (again, fresh) = s
        .report_message(&b, "rep", &m1.id, "spam, really")
        .await
        .expect("repeat");
    assert!(!fresh, "one report per reporter and message");
    assert_eq!(again, first);
    let (second, _) = s
        .report_message(&a, "rep", &m2.id, "oops")
        .await
        .expect("report");
    let e = s
        .report_message(&eve, "rep", &m1.id, "not a member")
        .await
        .expect_err("outsider");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    let e = s
        .report_message(&b, "rep", "999999", "no such message")
        .await
        .expect_err("unknown");
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let (all, more) = s.reports(None, 10).await.expect("list");
    assert_eq!(all, vec![second.clone(), first.clone()], "newest first");
    assert!(!more);
    let (page, more) = s.reports(None, 1).await.expect("page");
    assert_eq!((page, more), (vec![second.clone()], true));
    let (rest, more) = s.reports(Some(&second.id), 1).await.expect("next page");
    assert_eq!((rest, more), (vec![first], false));
    let e = s.reports(Some("x"), 1).await.expect_err("bad cursor");
    assert!(matches!(e, StoreError::BadRequest(_)), "{e:?}");
}

/// `conversation.mute`: a member's own mute, until a time; lifted by `None` or a past time;
/// others' mutes are their own; a non-member may not.
pub async fn a_member_mutes_a_conversation_for_themselves(env: &Env) {
    let s = &env.store;
    let (a, b) = (user(env, "mute-alice").await, user(env, "mute-bob").await);
    let eve = user(env, "mute-eve").await;
    s.create_conversation(group("mute", &a, &[&b]))
        .await
        .expect("create");
    let now = hubbub_queue::clock::now_ms();
    assert!(!s.muted(&b, "mute", now).await.expect("read"));
    s.mute_conversation(&b, "mute", Some(now + 60_000))
        .await
        .expect("mute");
    assert!(s.muted(&b, "mute", now).await.expect("read"));
    assert!(
        !s.muted(&b, "mute", now + 60_001).await.expect("read"),
        "until then"
    );
    assert!(
        !s.muted(&a, "mute", now).await.expect("read"),
        "bob's alone"
    );
    s.mute_conversation(&b, "mute", None).await.expect("lift");
    assert!(!s.muted(&b, "mute", now).await.expect("read"));
    s.mute_conversation(&b, "mute", Some(now + 60_000))
        .await
        .expect("mute");
    s.mute_conversation(&b, "mute", Some(1))
        .await
        .expect("a past time");
    assert!(
        !s.muted(&b, "mute", now).await.expect("read"),
        "a past time lifts it"
    );
    let e = s
        .mute_conversation(&eve, "mute", Some(now + 60_000))
        .await
        .expect_err("outsider");
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
}

/// Erase `user` step by step until done; the events of every step, and its broadcasts.
async fn erase(env: &Env, user: &str) -> (Erasure, Vec<Event>, Vec<Broadcast>) {
    let (mut events, mut broadcasts) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        // A batch of 2: the steps and their resumption are exercised.
        let w = env.store.erase_user(user, 2).await.expect("erase step");
        events.extend(w.events);
        broadcasts.extend(w.broadcast);
        if w.value != Erasure::More {
            return (w.value, events, broadcasts);
        }
    }
    panic!("the erasure of {user} does not end");
}

/// Erasure: the account stays as an erased row (no read finds it, its handle is free, its id
/// is never given again, every token is refused); its memberships go (an owned group passes
/// to its longest-standing member, one left empty is deleted); every message it sent becomes
/// a tombstone that members are told of and search no longer finds; its reactions leave the
/// summaries; its contacts, the contacts naming it, blocks, mutes, reports it made, posts,
/// comments, likes, follows and inbox go. Unknown and repeated erasures do nothing.
pub async fn erasing_a_user_leaves_tombstones_and_nothing_else(env: &Env) {
    let (s, f) = (&env.store, &env.feed);
    let a = user(env, "er-alice").await;
    let b = user(env, "er-bob").await;
    let c = user(env, "er-carol").await;
    room(env, "er-g", &a, &[&b, &c]).await;
    room(env, "er-alone", &a, &[]).await;
    let direct = s
        .create_conversation(NewConversation {
            id: "er-d".into(),
            creator: b.clone(),
            kind: ConversationKind::Direct,
            members: vec![a.clone()],
            title: None,
            ephemeral: false,
            public: false,
            max_members: 2,
        })
        .await
        .expect("direct")
        .value
        .id;
    let mut channel = group("er-ch", &a, &[]);
    channel.kind = ConversationKind::Channel;
    channel.public = true;
    s.create_conversation(channel).await.expect("channel");
    s.subscribe(&c, "er-ch").await.expect("subscribe");
    s.subscribe(&b, "er-ch").await.expect("subscribe");
    let in_channel = s
        .send_message(send(&a, "er-ch", "c0", "zebra channel"))
        .await
        .expect("send")
        .value;
    let mut sent = Vec::new();
    for (i, text) in ["zebra one", "zebra two", "zebra three"].iter().enumerate() {
        let m = s
            .send_message(send(&a, "er-g", &format!("g{i}"), text))
            .await
            .expect("send");
        sent.push(m.value);
    }
    let in_direct = s
        .send_message(send(&a, &direct, "d0", "zebra direct"))
        .await
        .expect("send")
        .value;
    let by_b = s
        .send_message(send(&b, "er-g", "b0", "bob stays"))
        .await
        .expect("send")
        .value;
    s.react(&a, "er-g", &by_b.id, "👍", true)
        .await
        .expect("react");
    s.react(&c, "er-g", &by_b.id, "👍", true)
        .await
        .expect("react");
    s.react(&a, "er-g", &by_b.id, "🎉", true)
        .await
        .expect("react");
    s.pin(&a, "er-g", &sent[0].id, true).await.expect("pin");
    s.set_contact(&a, &b, Some("work"), None)
        .await
        .expect("contact");
    s.set_contact(&b, &a, Some("friends"), None)
        .await
        .expect("contact");
    s.set_contact(&b, &c, None, None).await.expect("contact");
    s.block(&a, &c).await.expect("block");
    s.report_message(&a, "er-g", &by_b.id, "spam")
        .await
        .expect("report");
    s.report_message(&b, "er-g", &sent[1].id, "rude")
        .await
        .expect("report");
    s.revoke_tokens(&a, 1).await.expect("a revocation");
    f.create_post(NewPost {
        id: "er-p-a".into(),
        author: a.clone(),
        text: "alice posts".into(),
        attachments: vec![],
    })
    .await
    .expect("post");
    f.create_post(NewPost {
        id: "er-p-b".into(),
        author: b.clone(),
        text: "bob posts".into(),
        attachments: vec![],
    })
    .await
    .expect("post");
    f.like(&a, "er-p-b").await.expect("like");
    f.like(&c, "er-p-b").await.expect("like");
    f.like(&b, "er-p-a").await.expect("like");
    for id in ["er-c1", "er-c2"] {
        f.create_comment(NewComment {
            id: id.into(),
            post: "er-p-b".into(),
            author: a.clone(),
            text: "nice".into(),
        })
        .await
        .expect("comment");
    }
    f.follow(&b, &a).await.expect("follow");
    f.follow(&a, &c).await.expect("follow");

    let b_seq = s.last_seq(&b).await.expect("seq");
    let (done, events, broadcasts) = erase(env, &a).await;
    assert_eq!(done, Erasure::Done);

    // The account: no read finds it, every token is refused, the handle is free, the id is
    // not given again.
    assert_eq!(s.user(&a).await.expect("user"), None);
    assert_eq!(s.user_by_handle("er-alice").await.expect("handle"), None);
    assert_eq!(s.credentials("er-alice").await.expect("credentials"), None);
    assert_eq!(s.tokens_revoked_ms(&a).await.expect("revoked"), i64::MAX);
    let e = s
        .ensure_user(&a, Some("again"))
        .await
        .expect_err("an erased id");
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let again = s
        .create_user("er-alice", "hash", None)
        .await
        .expect("the handle is free");
    assert_ne!(again.id, a);

    // Memberships: the group passes to its longest-standing member; a group left empty is
    // gone; the direct conversation keeps bob.
    let g = s.conversation(&b, "er-g").await.expect("group");
    // Bob and carol joined together: either is the longest-standing, and owns it now.
    let owner = |c: &hubbub_protocol::Conversation| {
        c.roles
            .iter()
            .find(|(_, r)| **r == hubbub_protocol::Role::Owner)
            .map(|(u, _)| u.clone())
    };
    let heir = owner(&g).expect("an owner");
    assert!(g.members.contains(&heir) && heir != a, "{g:?}");
    assert!(!g.members.contains(&a));
    assert!(
        s.conversation_by_id("er-alone")
            .await
            .expect("read")
            .is_none()
    );
    let d = s.conversation(&b, &direct).await.expect("direct");
    assert_eq!(d.members, std::slice::from_ref(&b));

    // Messages: tombstones, told to the members; search finds none of them.
    let (history, _) = s.history(&b, "er-g", None, 50).await.expect("history");
    for m in &sent {
        let h = history.iter().find(|h| h.id == m.id).expect("in history");
        assert!(
            h.deleted && h.text.is_empty() && h.attachments.is_empty(),
            "{h:?}"
        );
    }
    let (history, _) = s.history(&b, &direct, None, 50).await.expect("history");
    assert!(history.iter().all(|m| m.deleted), "{history:?}");
    let told: Vec<&str> = events
        .iter()
        .filter(|e| e.user == c)
        .filter_map(|e| match &e.frame {
            ServerFrame::MessageUpdated { message, .. } if message.deleted => {
                Some(message.id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(told.len(), 3, "carol is told of each tombstone: {told:?}");
    assert!(
        events.iter().any(|e| e.user == b
            && matches!(&e.frame, ServerFrame::MessageUpdated { message, .. } if message.id == in_direct.id)),
        "bob is told in the direct conversation"
    );
    assert_gapless(&events, &b);
    assert!(
        events.iter().all(|e| e.user != a),
        "nothing for the erased user"
    );
    assert!(s.last_seq(&b).await.expect("seq") > b_seq);
    assert!(
        s.search(&b, "zebra", None, 10)
            .await
            .expect("search")
            .is_empty()
    );
    // In the channel: the tombstone is broadcast to its members; it passed to its
    // longest-standing subscriber (carol and bob may have joined in the same millisecond:
    // either), who alone is told, a channel's membership changes being told to no one else.
    let [told] = &broadcasts[..] else {
        panic!("{broadcasts:?}")
    };
    assert_eq!(told.conversation, "er-ch", "{told:?}");
    for u in [&b, &c] {
        assert_eq!(s.channels_of(u).await.expect("channels"), ["er-ch"], "{u}");
    }
    assert!(
        matches!(&told.frames[..], [ServerFrame::ChannelUpdated { message, .. }]
        if message.id == in_channel.id && message.deleted)
    );
    let heir = owner(&s.conversation(&c, "er-ch").await.expect("channel")).expect("an owner");
    let other = if heir == c { &b } else { &c };
    assert!(heir == b || heir == c, "{heir}");
    assert!(events.iter().any(|e| e.user == heir
        && matches!(&e.frame, ServerFrame::ConversationUpdated { conversation, .. }
            if conversation.id == "er-ch" && owner(conversation).as_ref() == Some(&heir))));
    assert!(!events.iter().any(|e| &e.user == other
        && matches!(&e.frame, ServerFrame::ConversationUpdated { conversation, .. }
            if conversation.id == "er-ch")));
    assert!(s.pins(&b, "er-g").await.expect("pins").is_empty());

    // Reactions: the summary loses the erased user's.
    let (history, _) = s.history(&b, "er-g", None, 50).await.expect("history");
    let kept = history.iter().find(|m| m.id == by_b.id).expect("bob's");
    assert!(!kept.deleted);
    let summary: Vec<(&str, u64)> = kept
        .reactions
        .iter()
        .map(|r| (r.emoji.as_str(), r.count))
        .collect();
    assert_eq!(summary, [("👍", 1)]);

    // Contacts, reports, the feed.
    let contacts: Vec<String> = s
        .contacts(&b)
        .await
        .expect("contacts")
        .into_iter()
        .map(|c| c.user)
        .collect();
    assert_eq!(contacts, std::slice::from_ref(&c));
    assert!(s.contacts(&a).await.expect("contacts").is_empty());
    let (reports, _) = s.reports(None, 10).await.expect("reports");
    let reporters: Vec<&str> = reports.iter().map(|r| r.reporter.as_str()).collect();
    assert_eq!(reporters, [b.as_str()], "the reports of others stay");
    let posts = f
        .posts(&["er-p-a".to_owned(), "er-p-b".to_owned()])
        .await
        .expect("posts");
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!((posts[0].likes, posts[0].comments), (1, 0));
    assert_eq!(
        f.followers(&a).await.expect("followers"),
        Vec::<String>::new()
    );
    assert_eq!(
        f.followers(&c).await.expect("followers"),
        Vec::<String>::new()
    );
    assert_eq!(s.blocks(&a).await.expect("blocks"), Vec::<String>::new());
    let replay = s.events_after(&a, 0, 100).await.expect("inbox");
    assert!(replay.frames.is_empty(), "{:?}", replay.frames);

    // Again, and an unknown user: nothing to do.
    let (done, events, broadcasts) = erase(env, &a).await;
    assert_eq!(
        (done, events.len(), broadcasts.len()),
        (Erasure::Done, 0, 0)
    );
    let (done, _, _) = erase(env, "er-nobody").await;
    assert_eq!(done, Erasure::Unknown);
}
