//! Schema migrations: a store written by the previous version opens, and what it held keeps
//! working. Refresh tokens issued before families existed stay valid, each its own family.

use crate::conformance::fresh_database;
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
use hubbub_store::*;

/// What the previous version wrote: a user and one of their refresh tokens.
const OLD_ROWS_SQLITE: &str = "
    INSERT INTO users (id, handle, created_ms) VALUES ('u1', 'alice', 1);
    INSERT INTO refresh_tokens (token_hash, user_id, expires_ms) VALUES ('old', 'u1', 9223372036854775807);";

#[tokio::test]
async fn sqlite_version_2_migrates_and_keeps_refresh_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubbub.db");
    {
        let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("queue");
        queue
            .transact(|conn, _| {
                conn.execute_batch(include_str!("../../migrations/sqlite/001_chat.sql"))?;
                conn.execute_batch(include_str!("../../migrations/sqlite/002_feed.sql"))?;
                conn.execute_batch(
                    "INSERT INTO hubbub_components (component, version) VALUES ('store', 2);",
                )?;
                conn.execute_batch(OLD_ROWS_SQLITE)
            })
            .await
            .expect("a version 2 store");
    }
    let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("queue");
    let store = SqliteStore::open(queue).await.expect("migrated");
    assert_eq!(store.tokens_revoked_ms("u1").await.expect("read"), 0);
    assert_eq!(
        store.take_refresh_token("old").await.expect("take"),
        RefreshOutcome::Valid {
            user: "u1".into(),
            family: "old".into()
        },
        "an old token is a family of its own"
    );
    assert!(matches!(
        store.take_refresh_token("old").await.expect("reuse"),
        RefreshOutcome::Reused { .. }
    ));
}

#[tokio::test]
async fn postgres_version_1_migrates_and_keeps_refresh_tokens() {
    let url = fresh_database().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(include_str!(
            "../../migrations/postgres/001_chat_feed_media.sql"
        ))
        .await
        .expect("version 1");
    client
        .batch_execute(
            "CREATE TABLE hubbub_schema (component TEXT PRIMARY KEY, version INT NOT NULL);
             INSERT INTO hubbub_schema (component, version) VALUES ('store', 1);
             INSERT INTO users (id, handle, created_ms) VALUES ('u1', 'alice', 1);
             INSERT INTO refresh_tokens (token_hash, user_id, expires_ms)
               VALUES ('old', 'u1', 9223372036854775807);",
        )
        .await
        .expect("old rows");
    let store = PgStore::connect(&url, 2).await.expect("migrated");
    PgStore::connect(&url, 1)
        .await
        .expect("a second start: nothing to do");
    let version: i32 = client
        .query_one(
            "SELECT version FROM hubbub_schema WHERE component = 'store'",
            &[],
        )
        .await
        .expect("version")
        .get(0);
    assert_eq!(
        version, 10,
        "every migration applied (5: replies, threads, edits, reactions, pins; 6: webhooks; 7: \
         contacts; 8: reports)"
    );
    assert_eq!(store.tokens_revoked_ms("u1").await.expect("read"), 0);
    assert_eq!(
        store.take_refresh_token("old").await.expect("take"),
        RefreshOutcome::Valid {
            user: "u1".into(),
            family: "old".into()
        },
        "an old token is a family of its own"
    );
}
