//! The CLI client's commands against a real server: signup, send to @handle, listen, and
//! listen again resuming exactly after the last event it processed; reply, edit, react.

use crate::support::*;

fn last_seq(profile: &std::path::Path) -> u64 {
    let p: hubbub::cli::Profile =
        serde_json::from_str(&std::fs::read_to_string(profile).expect("profile")).expect("json");
    p.last_seq
}

#[tokio::test]
async fn signup_send_listen_and_resume() {
    let s = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = (dir.path().join("alice.json"), dir.path().join("bob.json"));
    hubbub::cli::authenticate(&s.base, &alice, "alice", "password123", true)
        .await
        .expect("signup alice");
    hubbub::cli::authenticate(&s.base, &bob, "bob", "password123", true)
        .await
        .expect("signup bob");
    hubbub::cli::send(&alice, "@bob", "one")
        .await
        .expect("send to @bob");
    // conversation.updated, then message.new.
    tokio::time::timeout(PATIENCE, hubbub::cli::listen(&bob, Some(2)))
        .await
        .expect("in time")
        .expect("listen");
    assert_eq!(last_seq(&bob), 2);
    hubbub::cli::send(&alice, "@bob", "two")
        .await
        .expect("send again");
    tokio::time::timeout(PATIENCE, hubbub::cli::listen(&bob, Some(1)))
        .await
        .expect("in time")
        .expect("listen");
    assert_eq!(
        last_seq(&bob),
        3,
        "resumed after seq 2 and saw only the new message"
    );
    // Logging in again keeps the resume point; a wrong password is refused.
    hubbub::cli::authenticate(&s.base, &bob, "bob", "password123", false)
        .await
        .expect("login");
    assert_eq!(last_seq(&bob), 3);
    assert!(
        hubbub::cli::authenticate(&s.base, &bob, "bob", "wrong-password", false)
            .await
            .is_err()
    );
    assert!(hubbub::cli::send(&alice, "@nobody", "x").await.is_err());
}

#[tokio::test]
async fn reply_edit_and_react() {
    let s = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = (dir.path().join("alice.json"), dir.path().join("bob.json"));
    hubbub::cli::authenticate(&s.base, &alice, "cli_alice", "password123", true)
        .await
        .expect("signup alice");
    hubbub::cli::authenticate(&s.base, &bob, "cli_bob", "password123", true)
        .await
        .expect("signup bob");
    hubbub::cli::send(&alice, "@cli_bob", "first")
        .await
        .expect("send");
    let profile: hubbub::cli::Profile =
        serde_json::from_str(&std::fs::read_to_string(&bob).expect("profile")).expect("json");
    let first = all_events(&s, &profile.access_token)
        .await
        .into_iter()
        .find_map(|f| match f {
            hubbub_protocol::ServerFrame::MessageNew { message, .. } => Some(message),
            _ => None,
        })
        .expect("the first message");
    let (mut b, _) = s.connect(&profile.access_token).await;
    hubbub::cli::reply(&bob, "@cli_alice", &first.id, "a reply", true)
        .await
        .expect("reply");
    hubbub::cli::react(&bob, "@cli_alice", &first.id, "🎉", false)
        .await
        .expect("react");
    hubbub::cli::edit(&alice, "@cli_bob", &first.id, "first, edited")
        .await
        .expect("edit");
    assert!(
        hubbub::cli::edit(&bob, "@cli_alice", &first.id, "not mine")
            .await
            .is_err(),
        "only the sender edits"
    );
    let history = ok(
        &mut b,
        hubbub_protocol::Request::MessageHistory {
            conversation: first.conversation.clone(),
            before: None,
            limit: None,
            thread: None,
        },
    )
    .await;
    let hubbub_protocol::ReplyData::History { messages, .. } = history else {
        panic!("{history:?}")
    };
    let [reply, root] = messages.as_slice() else {
        panic!("{messages:?}")
    };
    assert_eq!(
        (reply.reply_to.as_deref(), reply.thread.as_deref()),
        (Some(first.id.as_str()), Some(first.id.as_str()))
    );
    assert_eq!(root.text, "first, edited");
    assert_eq!(root.replies, 1);
    assert_eq!(root.reactions.len(), 1);
    assert_eq!(root.my_reactions, Some(vec!["🎉".to_owned()]));
}
