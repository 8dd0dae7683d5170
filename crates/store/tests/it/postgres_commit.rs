//! PostgreSQL: a write whose `COMMIT` gets no answer has an unknown outcome (the server may
//! have committed), so the store reports `Internal`, never `Unavailable` ("nothing was
//! accepted", which invites a resend of a write that may have landed).
//!
//! Two ways to lose the answer, both on a real server and without any timing: the session is
//! terminated while it runs its `COMMIT` (a deferred constraint trigger terminates its own
//! backend, so the error carries SQLSTATE 57P01), and the TCP connection is cut right after
//! the `COMMIT` was sent (a proxy; the error carries no SQLSTATE at all).

use crate::conformance::fresh_database;
use hubbub_protocol::{ConversationKind, Message};
use hubbub_store::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn group(id: &str, creator: &str, members: &[&str]) -> NewConversation {
    NewConversation {
        id: id.into(),
        creator: creator.into(),
        kind: ConversationKind::Group,
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        title: None,
        ephemeral: false,
        public: false,
        max_members: 10,
    }
}

fn message(sender: &str, conversation: &str, key: &str) -> NewMessage {
    NewMessage {
        sender: sender.into(),
        conversation: conversation.into(),
        client_msg_id: key.into(),
        text: "hello".into(),
        attachments: vec![],
        ..NewMessage::default()
    }
}

fn post(id: &str, author: &str) -> NewPost {
    NewPost {
        id: id.into(),
        author: author.into(),
        text: "post".into(),
        attachments: vec![],
    }
}

fn assert_outcome_unknown<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Internal(m)) => assert!(m.starts_with("outcome unknown"), "{what}: {m}"),
        other => panic!("{what}: expected Internal (outcome unknown), got {other:?}"),
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn a_session_terminated_in_commit_is_internal_not_unavailable() {
    let url = fresh_database().await;
    let store = PgStore::connect(&url, 4).await.expect("pg store");
    let a = store
        .create_user("alice", "h", None)
        .await
        .expect("user")
        .id;
    let b = store.create_user("bob", "h", None).await.expect("user").id;
    store
        .create_conversation(group("g", &a, &[&b]))
        .await
        .expect("create");
    // From now on, every transaction that wrote an inbox row or opened a run (a group's
    // first message to a member) terminates its own session while it commits (test-only: the trigger lives in this throwaway database).
    admin(&url)
        .await
        .batch_execute(
            "CREATE FUNCTION hubbub_test_die() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER die_in_commit AFTER INSERT ON inbox
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hubbub_test_die();
             CREATE CONSTRAINT TRIGGER die_in_commit AFTER INSERT ON inbox_runs
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hubbub_test_die();
             CREATE CONSTRAINT TRIGGER die_in_commit AFTER INSERT ON posts
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hubbub_test_die();",
        )
        .await
        .expect("install the trigger");
    // Each write on a store of its own: the terminated session's error reaches the caller
    // before its connection is seen closed, and a pool handing that connection out again
    // would fail the next write early (rightly `Unavailable`: nothing was sent).
    let fresh = || async { PgStore::connect(&url, 1).await.expect("pg store") };
    assert_outcome_unknown(
        "message.send (group commit)",
        fresh().await.send_message(message(&a, "g", "k1")).await,
    );
    assert_outcome_unknown(
        "conversation.create (a transaction)",
        fresh()
            .await
            .create_conversation(group("g2", &a, &[&b]))
            .await,
    );
    assert_outcome_unknown(
        "post.create",
        fresh().await.create_post(post("p1", &a)).await,
    );
    // A write that does not go through the trigger still commits.
    fresh().await.block(&b, &a).await.expect("a write");
}

/// A TCP proxy to PostgreSQL that, once armed, forwards the next `COMMIT` it sees from a
/// client and then cuts that connection before any answer comes back.
struct CutAtCommit {
    addr: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
}

impl CutAtCommit {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let armed = Arc::new(AtomicBool::new(false));
        let flag = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, flag.clone()));
            }
        });
        CutAtCommit { addr, armed }
    }
}

async fn relay(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to_server.write_all(&buf[..n]).await.is_err() {
            break;
        }
        // The simple query tokio-postgres sends to commit: 'Q', length, "COMMIT\0".
        let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
        if commit && armed.swap(false, Ordering::SeqCst) {
            // The server has the COMMIT; its answer never reaches the client.
            back.abort();
            return;
        }
    }
    back.abort();
}

#[tokio::test]
async fn a_connection_lost_at_commit_is_internal_not_unavailable() {
    let url = fresh_database().await;
    let (prefix, rest) = url.split_once('@').expect("user@host in the url");
    let (upstream, db) = rest.split_once('/').expect("host/db in the url");
    let proxy = CutAtCommit::start(upstream.to_owned()).await;
    let store = PgStore::connect(&format!("{prefix}@{}/{db}", proxy.addr), 4)
        .await
        .expect("pg store through the proxy");
    let a = store
        .create_user("alice", "h", None)
        .await
        .expect("user")
        .id;
    let b = store.create_user("bob", "h", None).await.expect("user").id;
    store
        .create_conversation(group("g", &a, &[&b]))
        .await
        .expect("create");

    proxy.armed.store(true, Ordering::SeqCst);
    let sent: Result<Written<Message>, _> = store.send_message(message(&a, "g", "k1")).await;
    assert_outcome_unknown("message.send (group commit)", sent);

    proxy.armed.store(true, Ordering::SeqCst);
    assert_outcome_unknown(
        "conversation.create (a transaction)",
        store.create_conversation(group("g2", &a, &[&b])).await,
    );

    proxy.armed.store(true, Ordering::SeqCst);
    assert_outcome_unknown("post.create", store.create_post(post("p1", &a)).await);

    // The outcome was unknown, not failed: the client's retry (same client_msg_id) is safe
    // and finds the message if the commit landed, or sends it now.
    let retry = store
        .send_message(message(&a, "g", "k1"))
        .await
        .expect("retry on a fresh connection");
    assert_eq!(retry.value.client_msg_id, "k1");
}
