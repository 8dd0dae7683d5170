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
        version, 13,
        "every migration applied (5: replies, threads, edits, reactions, pins; 6: webhooks; 7: \
         contacts; 8: reports; 9: mutes; 10: moderation; 11: API keys' creation order; 12: inbox \
         runs; 13: the fan-out's answer as arrays)"
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

/// Conversations as the version before roles left them: a group with its creator, a group its
/// creator had left (`b` joined before `a`), and a direct conversation.
const BEFORE_ROLES: &str = "
    INSERT INTO users (id, handle, created_ms) VALUES ('o', 'owner', 1), ('a', 'ann', 1), ('b', 'bea', 1);
    INSERT INTO conversations (id, kind, title, created_by, created_ms, ephemeral, direct_key)
      VALUES ('g1', 'group', NULL, 'o', 1, false, NULL),
             ('g2', 'group', NULL, 'o', 1, false, NULL),
             ('d1', 'direct', NULL, 'o', 1, false, 'a|o');
    INSERT INTO members (conversation_id, user_id, joined_ms)
      VALUES ('g1', 'o', 1), ('g1', 'a', 2), ('g2', 'a', 5), ('g2', 'b', 3),
             ('d1', 'o', 1), ('d1', 'a', 1);";

/// After the roles migration every group has an owner: its creator, or, when the creator had
/// left, its longest-standing member; a direct conversation has no roles.
async fn roles_were_given(store: &dyn Store) {
    use hubbub_protocol::Role;
    let roles = |id: &'static str| async move {
        store
            .conversation_by_id(id)
            .await
            .expect("read")
            .expect("exists")
            .roles
    };
    assert_eq!(roles("g1").await, [("o".to_owned(), Role::Owner)].into());
    assert_eq!(roles("g2").await, [("b".to_owned(), Role::Owner)].into());
    assert!(roles("d1").await.is_empty());
}

#[tokio::test]
async fn sqlite_roles_migration_gives_every_group_an_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hubbub.db");
    {
        let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("queue");
        queue
            .transact(|conn, _| {
                for sql in [
                    include_str!("../../migrations/sqlite/001_chat.sql"),
                    include_str!("../../migrations/sqlite/002_feed.sql"),
                    include_str!("../../migrations/sqlite/003_refresh_token_families.sql"),
                    include_str!("../../migrations/sqlite/004_channels.sql"),
                    include_str!("../../migrations/sqlite/005_control.sql"),
                    include_str!("../../migrations/sqlite/006_messages.sql"),
                    include_str!("../../migrations/sqlite/007_server.sql"),
                    include_str!("../../migrations/sqlite/008_contacts.sql"),
                    include_str!("../../migrations/sqlite/009_reports.sql"),
                    include_str!("../../migrations/sqlite/010_mutes.sql"),
                ] {
                    conn.execute_batch(sql)?;
                }
                conn.execute_batch(
                    "INSERT INTO hubbub_components (component, version) VALUES ('store', 10);",
                )?;
                conn.execute_batch(BEFORE_ROLES)
            })
            .await
            .expect("a version 10 store");
    }
    let queue = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("queue");
    let store = SqliteStore::open(queue).await.expect("migrated");
    roles_were_given(&store).await;
}

#[tokio::test]
async fn postgres_roles_migration_gives_every_group_an_owner() {
    let url = fresh_database().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    for sql in [
        include_str!("../../migrations/postgres/001_chat_feed_media.sql"),
        include_str!("../../migrations/postgres/002_refresh_token_families.sql"),
        include_str!("../../migrations/postgres/003_channels.sql"),
        include_str!("../../migrations/postgres/004_control.sql"),
        include_str!("../../migrations/postgres/005_messages.sql"),
        include_str!("../../migrations/postgres/006_server.sql"),
        include_str!("../../migrations/postgres/007_contacts.sql"),
        include_str!("../../migrations/postgres/008_reports.sql"),
        include_str!("../../migrations/postgres/009_mutes.sql"),
    ] {
        client
            .batch_execute(sql)
            .await
            .expect("an earlier migration");
    }
    client
        .batch_execute(
            "CREATE TABLE hubbub_schema (component TEXT PRIMARY KEY, version INT NOT NULL);
             INSERT INTO hubbub_schema (component, version) VALUES ('store', 9);",
        )
        .await
        .expect("version 9");
    client.batch_execute(BEFORE_ROLES).await.expect("old rows");
    let store = PgStore::connect(&url, 2).await.expect("migrated");
    roles_were_given(&store).await;
}

/// A process of the version before `013_fan_out_arrays.sql` still calls `hubbub_fan_out`,
/// which answers a row per recipient, now from `hubbub_fan_out_arrays`: the same recipients
/// and seqs, and the same writes (the second message takes the members' next seqs).
#[tokio::test]
async fn postgres_the_older_fan_out_answers_a_row_per_recipient() {
    let url = fresh_database().await;
    PgStore::connect(&url, 1).await.expect("migrated");
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(
            "INSERT INTO users (id, handle, created_ms) VALUES ('o', 'o', 1), ('a', 'a', 1), ('b', 'b', 1);
             INSERT INTO conversations (id, kind, created_by, created_ms) VALUES ('g', 'group', 'o', 1);
             INSERT INTO members (conversation_id, user_id, joined_ms)
               VALUES ('g', 'o', 1), ('g', 'a', 1), ('g', 'b', 1);
             INSERT INTO messages (conversation_id, sender, client_msg_id, text, ts)
               VALUES ('g', 'o', 'c1', 'one', 1), ('g', 'o', 'c2', 'two', 2);",
        )
        .await
        .expect("a group and two messages");
    let ids: Vec<i64> = client
        .query("SELECT id FROM messages ORDER BY id", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tx = client.transaction().await.expect("begin");
    let convs = vec!["g"; 2];
    let senders = vec!["o"; 2];
    tx.execute(
        "SELECT hubbub_lock_positions($1, $2)",
        &[&convs, &vec!["a", "b", "o"]],
    )
    .await
    .expect("locks");
    let mut old: Vec<(i32, String, i64)> = tx
        .query(
            "SELECT ord, user_id, seq FROM hubbub_fan_out($1, $2, $3, $4)",
            &[&ids, &convs, &senders, &3i64],
        )
        .await
        .expect("the older fan-out")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    old.sort();
    let expected: Vec<(i32, String, i64)> = [1, 2]
        .into_iter()
        .flat_map(|ord| ["a", "b", "o"].map(|u| (ord, u.to_owned(), i64::from(ord))))
        .collect();
    assert_eq!(old, expected);
    tx.commit().await.expect("commit");
}
