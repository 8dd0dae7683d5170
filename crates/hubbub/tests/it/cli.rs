//! The CLI client's commands against a real server: signup, send to @handle, listen, and
//! listen again resuming exactly after the last event it processed.

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
