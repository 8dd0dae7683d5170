//! The distributed store: [`Store`], [`FeedStore`] and media metadata on PostgreSQL.
//!
//! The same tables and the same use cases as the SQLite store, so both pass one conformance
//! suite (`tests/it/conformance.rs`). Every write method is one transaction (READ COMMITTED;
//! the per-user `last_seq` counters are row-locked by the `UPDATE ... RETURNING` that takes
//! the next seq, so concurrent writers on several machines still number each user's events
//! without gaps or repeats). Full-text search is PostgreSQL's own (a generated `tsvector`
//! column with a GIN index, the `simple` configuration so no language is assumed).
//!
//! Migrations: `postgres_v1.sql`, then `postgres_v2.sql` (refresh token families), applied
//! under an advisory lock at connect time and recorded in `hubbub_schema`. A lost connection,
//! a refused connection, a deadlock or a serialization failure is `Unavailable` (nothing was
//! committed; the caller retries), except at a write's `COMMIT`: there a lost connection
//! leaves the outcome unknown, which is `Internal` (see `commit_err`).

use crate::feed::{FeedStore, NewComment, NewPost, StoredPost};
use crate::media::MediaInfo;
use crate::sqlite::{new_id, valid_handle};
use crate::*;
use deadpool_postgres::{GenericClient, Pool, Runtime};
use hubbub_protocol::{Comment, ConversationKind, Message, NotificationKind, Post, ServerFrame};
use hubbub_queue::clock::now_ms;
use std::collections::HashMap;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

/// Version 1: chat, the feed, media; version 2: refresh token families and revocation.
const SCHEMA_VERSION: i32 = 2;
/// The schema's steps: version N is the first N of them, applied in order.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    include_str!("postgres_v1.sql"),
    include_str!("postgres_v2.sql"),
];
/// How long a family's row outlives its last token (see `schema_v3.sql`).
const FAMILY_GRACE_MS: i64 = 3_600_000;

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    sends: tokio::sync::mpsc::Sender<SendJob>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
        {
            StoreError::Unavailable(e.to_string())
        }
        Some(c) if *c == SqlState::DISK_FULL => StoreError::Unavailable("storage is full".into()),
        Some(_) => StoreError::Internal(e.to_string()),
        // No SQL state: the connection itself failed.
        None => StoreError::Unavailable(e.to_string()),
    }
}

/// An error of a write transaction's `COMMIT`. The server may have committed before the
/// connection was lost (or the session was terminated) without telling us, so unless the
/// server answered that it rolled back (SQLSTATE class 40: a serialization failure or a
/// deadlock found at commit, which writes nothing), the outcome is unknown: `Internal`, never
/// `Unavailable` ("nothing was accepted"), which would let a client resend a write that
/// landed.
fn commit_err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if c.code().starts_with("40") => pg(e),
        _ => StoreError::Internal(format!("outcome unknown: {e}")),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

async fn exec(c: &impl GenericClient, sql: &str, p: Params<'_>) -> Result<u64, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&st, p).await.map_err(pg)
}

async fn rows(
    c: &impl GenericClient,
    sql: &str,
    p: Params<'_>,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&st, p).await.map_err(pg)
}

async fn opt(
    c: &impl GenericClient,
    sql: &str,
    p: Params<'_>,
) -> Result<Option<tokio_postgres::Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&st, p).await.map_err(pg)
}

async fn one(
    c: &impl GenericClient,
    sql: &str,
    p: Params<'_>,
) -> Result<tokio_postgres::Row, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_one(&st, p).await.map_err(pg)
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("json: {e}"))
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, sender, client_msg_id, text, attachments, ts";

fn to_message(r: &tokio_postgres::Row) -> Result<Message, StoreError> {
    Ok(Message {
        id: r.get::<_, i64>(0).to_string(),
        conversation: r.get(1),
        sender: r.get(2),
        client_msg_id: r.get(3),
        text: r.get(4),
        attachments: serde_json::from_str(r.get::<_, &str>(5)).map_err(json_err)?,
        ts: r.get(6),
    })
}

async fn user_exists(c: &impl GenericClient, id: &str) -> Result<bool, StoreError> {
    Ok(opt(c, "SELECT 1 FROM users WHERE id = $1", &[&id])
        .await?
        .is_some())
}

async fn load_conversation(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    let Some(r) = opt(
        c,
        "SELECT kind, title, created_by, created_ms, ephemeral FROM conversations WHERE id = $1",
        &[&id],
    )
    .await?
    else {
        return Ok(None);
    };
    let members = rows(
        c,
        "SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY joined_ms, user_id",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let kind = if r.get::<_, &str>(0) == "direct" {
        ConversationKind::Direct
    } else {
        ConversationKind::Group
    };
    Ok(Some(Conversation {
        id: id.to_owned(),
        kind,
        title: r.get(1),
        members,
        created_by: r.get(2),
        created_ts: r.get(3),
        ephemeral: r.get(4),
    }))
}

async fn member_view(
    c: &impl GenericClient,
    caller: &str,
    id: &str,
) -> Result<Conversation, StoreError> {
    let conv = load_conversation(c, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no conversation {id}")))?;
    if !conv.members.iter().any(|m| m == caller) {
        return Err(StoreError::Forbidden("not a member".into()));
    }
    Ok(conv)
}

async fn check_member(c: &impl GenericClient, caller: &str, id: &str) -> Result<(), StoreError> {
    let r = one(
        c,
        "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1),
                EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2)",
        &[&id, &caller],
    )
    .await?;
    match (r.get::<_, bool>(0), r.get::<_, bool>(1)) {
        (false, _) => Err(StoreError::NotFound(format!("no conversation {id}"))),
        (true, false) => Err(StoreError::Forbidden("not a member".into())),
        (true, true) => Ok(()),
    }
}

async fn append_event(
    c: &impl GenericClient,
    user: &str,
    now: i64,
    make: impl FnOnce(u64) -> ServerFrame,
) -> Result<Event, StoreError> {
    let seq: i64 = one(
        c,
        "UPDATE users SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        &[&user],
    )
    .await?
    .get(0);
    let frame = make(seq as u64);
    let json = serde_json::to_string(&frame).map_err(json_err)?;
    exec(
        c,
        "INSERT INTO inbox (user_id, seq, ts, frame) VALUES ($1, $2, $3, $4)",
        &[&user, &seq, &now, &json],
    )
    .await?;
    Ok(Event {
        user: user.to_owned(),
        frame,
    })
}

async fn conversation_events(
    c: &impl GenericClient,
    users: &[String],
    conv: &Conversation,
    now: i64,
) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        out.push(
            append_event(c, u, now, |seq| ServerFrame::ConversationUpdated {
                seq,
                conversation: conv.clone(),
            })
            .await?,
        );
    }
    Ok(out)
}

async fn add_member_row(
    c: &impl GenericClient,
    conversation: &str,
    user: &str,
    now: i64,
) -> Result<(), StoreError> {
    exec(
        c,
        "INSERT INTO members (conversation_id, user_id, joined_ms) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&conversation, &user, &now],
    )
    .await?;
    Ok(())
}

async fn depart(
    c: &impl GenericClient,
    id: &str,
    user: String,
    now: i64,
) -> Result<Vec<Event>, StoreError> {
    exec(
        c,
        "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2",
        &[&id, &user],
    )
    .await?;
    let after = load_conversation(c, id)
        .await?
        .ok_or_else(|| StoreError::Internal("conversation vanished".into()))?;
    let mut told = after.members.clone();
    told.push(user);
    conversation_events(c, &told, &after, now).await
}

async fn creator_view(
    c: &impl GenericClient,
    caller: &str,
    id: &str,
    action: &str,
) -> Result<Conversation, StoreError> {
    let conv = member_view(c, caller, id).await?;
    if conv.kind == ConversationKind::Direct || conv.created_by != caller {
        return Err(StoreError::Forbidden(format!(
            "only the creator of a group may {action} members"
        )));
    }
    Ok(conv)
}

/// `Forbidden` if `user` blocks `caller`: a blocked user cannot put the blocker in a group.
async fn refuse_if_blocked(
    c: &impl GenericClient,
    user: &str,
    caller: &str,
) -> Result<(), StoreError> {
    let blocked = opt(
        c,
        "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2",
        &[&user, &caller],
    )
    .await?
    .is_some();
    if blocked {
        return Err(StoreError::Forbidden("you cannot add this user".into()));
    }
    Ok(())
}

fn parse_message_id(id: &str) -> Result<i64, StoreError> {
    id.parse::<i64>()
        .map_err(|_| StoreError::NotFound(format!("no message {id}")))
}

/// The words of a search, for `plainto_tsquery` (every word must appear).
fn search_text(text: &str) -> Result<String, StoreError> {
    if text.chars().count() > crate::sqlite::MAX_QUERY_CHARS {
        return Err(StoreError::TooLarge(format!(
            "a query is at most {} characters",
            crate::sqlite::MAX_QUERY_CHARS
        )));
    }
    let words: Vec<&str> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Err(StoreError::BadRequest(
            "the query has no words to search for".into(),
        ));
    }
    Ok(words.join(" "))
}

/// Run `$body` in a transaction on a pooled connection, committing on success (an error of
/// the commit itself leaves the outcome unknown: see [`commit_err`]).
macro_rules! in_tx {
    ($self:expr, |$tx:ident| $body:expr) => {{
        let mut client = $self.pool.get().await.map_err(pool_err)?;
        let $tx = client.transaction().await.map_err(pg)?;
        let out = $body;
        match out {
            Ok(v) => {
                $tx.commit().await.map_err(commit_err)?;
                Ok(v)
            }
            Err(e) => Err(e),
        }
    }};
}

impl PgStore {
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// One statement on a pooled connection, outside any transaction.
    async fn run(&self, sql: &str, p: Params<'_>) -> Result<u64, StoreError> {
        exec(&self.client().await?, sql, p).await
    }

    async fn query(
        &self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        rows(&self.client().await?, sql, p).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        opt(&self.client().await?, sql, p).await
    }

    async fn query_one(&self, sql: &str, p: Params<'_>) -> Result<tokio_postgres::Row, StoreError> {
        one(&self.client().await?, sql, p).await
    }

    /// Connect (a pool of `max_connections`) and migrate.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let mut cfg = deadpool_postgres::Config::new();
        cfg.url = Some(url.to_owned());
        cfg.connect_timeout = Some(std::time::Duration::from_secs(3));
        cfg.pool = Some(deadpool_postgres::PoolConfig {
            max_size: max_connections.max(1),
            timeouts: deadpool_postgres::Timeouts {
                wait: Some(std::time::Duration::from_secs(5)),
                create: Some(std::time::Duration::from_secs(3)),
                recycle: Some(std::time::Duration::from_secs(3)),
            },
            ..Default::default()
        });
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(|e| StoreError::BadRequest(format!("postgres url: {e}")))?;
        let (sends, jobs) = tokio::sync::mpsc::channel(4 * SEND_BATCH);
        tokio::spawn(run_sends(pool.clone(), jobs));
        let store = PgStore { pool, sends };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        in_tx!(self, |tx| {
            // One migrator at a time, across processes.
            exec(&tx, "SELECT pg_advisory_xact_lock(7700)", &[]).await?;
            let fresh: bool = one(&tx, "SELECT to_regclass('hubbub_schema') IS NULL", &[])
                .await?
                .get(0);
            if fresh {
                exec(
                    &tx,
                    "CREATE TABLE hubbub_schema (component TEXT PRIMARY KEY, version INT NOT NULL)",
                    &[],
                )
                .await?;
            }
            let v: Option<i32> = opt(
                &tx,
                "SELECT version FROM hubbub_schema WHERE component = 'store'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
            // Version v is the first v steps: apply the rest, in this transaction.
            let done = match v {
                None => 0,
                Some(v) if (1..=SCHEMA_VERSION).contains(&v) => v as usize,
                Some(v) => {
                    return Err(StoreError::Internal(format!(
                        "the database was written by a newer hubbub (store schema {v}, this build knows {SCHEMA_VERSION})"
                    )));
                }
            };
            for step in &MIGRATIONS[done..] {
                tx.batch_execute(step).await.map_err(pg)?;
            }
            if v.is_none() {
                exec(
                    &tx,
                    "INSERT INTO hubbub_schema (component, version) VALUES ('store', $1)",
                    &[&SCHEMA_VERSION],
                )
                .await?;
            } else if done < MIGRATIONS.len() {
                exec(
                    &tx,
                    "UPDATE hubbub_schema SET version = $1 WHERE component = 'store'",
                    &[&SCHEMA_VERSION],
                )
                .await?;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl crate::media::MediaMeta for PgStore {
    async fn insert_media(&self, info: &MediaInfo) -> Result<(), StoreError> {
        let size = info.size as i64;
        self.run(
            "INSERT INTO media (id, owner, content_type, size, created_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&info.id, &info.owner, &info.content_type, &size, &now_ms()],
        )
        .await
        .map(|_| ())
    }

    async fn media(&self, id: &str) -> Result<Option<MediaInfo>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT id, owner, content_type, size FROM media WHERE id = $1",
                &[&id],
            )
            .await?
            .map(|r| MediaInfo {
                id: r.get(0),
                owner: r.get(1),
                content_type: r.get(2),
                size: r.get::<_, i64>(3) as u64,
            }))
    }

    async fn missing_media(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let found: Vec<String> = rows(&client, "SELECT id FROM media WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(ids.iter().filter(|i| !found.contains(i)).cloned().collect())
    }

    async fn media_usage(&self, owner: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let r = rows(
            &client,
            "SELECT COALESCE(SUM(size), 0)::BIGINT FROM media WHERE owner = $1",
            &[&owner],
        )
        .await?;
        let total: i64 = r.first().map(|r| r.get(0)).unwrap_or(0);
        Ok(total.max(0) as u64)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(
        &self,
        handle: &str,
        password_hash: &str,
        email: Option<&str>,
    ) -> Result<UserRef, StoreError> {
        let id = new_id("u")?;
        let n = self
            .run(
                "INSERT INTO users (id, handle, password_hash, email, created_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (handle) DO NOTHING",
                &[&id, &handle, &password_hash, &email, &now_ms()],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("handle {handle} is taken")));
        }
        Ok(UserRef {
            id,
            handle: handle.to_owned(),
        })
    }

    async fn ensure_user(
        &self,
        id: &str,
        handle_hint: Option<&str>,
    ) -> Result<UserRef, StoreError> {
        if let Some(u) = self.user(id).await? {
            return Ok(u);
        }
        let fallback = new_id("user_")?;
        let handle = match handle_hint {
            Some(h) if valid_handle(h) && self.user_by_handle(h).await?.is_none() => h.to_owned(),
            _ => fallback.clone(),
        };
        for h in [handle, fallback] {
            self.run(
                "INSERT INTO users (id, handle, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&id, &h, &now_ms()],
            )
            .await?;
            if let Some(u) = self.user(id).await? {
                return Ok(u);
            }
        }
        Err(StoreError::Internal(format!("user {id} not created")))
    }

    async fn credentials(&self, handle: &str) -> Result<Option<Credentials>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT id, handle, password_hash FROM users WHERE handle = $1",
                &[&handle],
            )
            .await?
            .map(|r| Credentials {
                user: UserRef {
                    id: r.get(0),
                    handle: r.get(1),
                },
                password_hash: r.get(2),
            }))
    }

    async fn user(&self, id: &str) -> Result<Option<UserRef>, StoreError> {
        Ok(self
            .query_opt("SELECT id, handle FROM users WHERE id = $1", &[&id])
            .await?
            .map(|r| UserRef {
                id: r.get(0),
                handle: r.get(1),
            }))
    }

    async fn user_by_handle(&self, handle: &str) -> Result<Option<UserRef>, StoreError> {
        Ok(self.credentials(handle).await?.map(|c| c.user))
    }

    async fn put_refresh_token(
        &self,
        token_hash: &str,
        user: &str,
        family: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                exec(
                    &tx,
                    "DELETE FROM refresh_tokens WHERE expires_ms <= $1",
                    &[&now],
                )
                .await?;
                exec(
                    &tx,
                    "DELETE FROM refresh_families WHERE expires_ms <= $1",
                    &[&now.saturating_sub(FAMILY_GRACE_MS)],
                )
                .await?;
                // A family revoked meanwhile stays revoked: only its expiry moves.
                let owner: String = one(
                    &tx,
                    "INSERT INTO refresh_families (family, user_id, expires_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (family) DO UPDATE
                       SET expires_ms = GREATEST(refresh_families.expires_ms, excluded.expires_ms)
                     RETURNING user_id",
                    &[&family, &user, &expires_ms],
                )
                .await?
                .get(0);
                if owner != user {
                    return Err(StoreError::Conflict(format!(
                        "refresh token family {family} belongs to another user"
                    )));
                }
                exec(
                    &tx,
                    "INSERT INTO refresh_tokens (token_hash, user_id, family, expires_ms)
                     VALUES ($1, $2, $3, $4)",
                    &[&token_hash, &user, &family, &expires_ms],
                )
                .await
                .map(|_| ())
            }
            .await
        })
    }

    async fn take_refresh_token(&self, token_hash: &str) -> Result<RefreshOutcome, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                // The token's row locked: two uses of one token at once are one use, then a
                // reuse, never two valid uses.
                let Some(r) = opt(
                    &tx,
                    "SELECT t.user_id, t.family, t.expires_ms, t.used_ms,
                            f.family IS NOT NULL, f.revoked_ms
                     FROM refresh_tokens t LEFT JOIN refresh_families f ON f.family = t.family
                     WHERE t.token_hash = $1
                     FOR UPDATE OF t",
                    &[&token_hash],
                )
                .await?
                else {
                    return Ok(RefreshOutcome::Invalid);
                };
                let (user, family): (String, String) = (r.get(0), r.get(1));
                let used = r.get::<_, Option<i64>>(3).is_some();
                let family_live = r.get::<_, bool>(4) && r.get::<_, Option<i64>>(5).is_none();
                match refresh_verdict(r.get(2), used, family_live, now) {
                    Verdict::Invalid => Ok(RefreshOutcome::Invalid),
                    Verdict::Reused => {
                        exec(
                            &tx,
                            "UPDATE refresh_families SET revoked_ms = $2 WHERE family = $1",
                            &[&family, &now],
                        )
                        .await?;
                        exec(
                            &tx,
                            "DELETE FROM refresh_tokens WHERE family = $1",
                            &[&family],
                        )
                        .await?;
                        Ok(RefreshOutcome::Reused { user, family })
                    }
                    Verdict::Valid => {
                        exec(
                            &tx,
                            "UPDATE refresh_tokens SET used_ms = $2 WHERE token_hash = $1",
                            &[&token_hash, &now],
                        )
                        .await?;
                        Ok(RefreshOutcome::Valid { user, family })
                    }
                }
            }
            .await
        })
    }

    async fn revoke_tokens(&self, user: &str, now_ms: i64) -> Result<(), StoreError> {
        in_tx!(self, |tx| {
            async {
                let updated = exec(
                    &tx,
                    "UPDATE users SET tokens_revoked_ms = GREATEST(COALESCE(tokens_revoked_ms, 0), $2)
                     WHERE id = $1",
                    &[&user, &now_ms],
                )
                .await?;
                if updated == 0 {
                    return Err(StoreError::NotFound(format!("no user {user}")));
                }
                exec(
                    &tx,
                    "DELETE FROM refresh_tokens WHERE user_id = $1",
                    &[&user],
                )
                .await?;
                exec(
                    &tx,
                    "UPDATE refresh_families SET revoked_ms = $2
                     WHERE user_id = $1 AND revoked_ms IS NULL",
                    &[&user, &now_ms],
                )
                .await
                .map(|_| ())
            }
            .await
        })
    }

    async fn tokens_revoked_ms(&self, user: &str) -> Result<i64, StoreError> {
        Ok(self
            .query_opt(
                "SELECT tokens_revoked_ms FROM users WHERE id = $1",
                &[&user],
            )
            .await?
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .unwrap_or(0))
    }

    async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<Written<Conversation>, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                let id = new.id.clone();
                if let Some(existing) = load_conversation(&tx, &id).await? {
                    if existing.created_by != new.creator {
                        return Err(StoreError::Conflict(format!("conversation {id} exists")));
                    }
                    return Ok(Written::nothing(existing));
                }
                if !user_exists(&tx, &new.creator).await? {
                    return Err(StoreError::NotFound(format!("no user {}", new.creator)));
                }
                let mut others: Vec<String> = Vec::new();
                for m in &new.members {
                    if *m != new.creator && !others.contains(m) {
                        others.push(m.clone());
                    }
                }
                for m in &others {
                    if !user_exists(&tx, m).await? {
                        return Err(StoreError::NotFound(format!("no user {m}")));
                    }
                }
                match new.kind {
                    ConversationKind::Direct => {
                        let [other] = others.as_slice() else {
                            return Err(StoreError::BadRequest(
                                "a direct conversation has exactly one other member".into(),
                            ));
                        };
                        let blocked = opt(
                            &tx,
                            "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2",
                            &[other, &new.creator],
                        )
                        .await?
                        .is_some();
                        if blocked {
                            return Err(StoreError::Forbidden(
                                "this user does not accept direct conversations from you".into(),
                            ));
                        }
                        let mut pair = [new.creator.clone(), other.clone()];
                        pair.sort();
                        let key = pair.join("|");
                        // Two creates of one pair racing: the unique key decides.
                        let inserted = exec(
                            &tx,
                            "INSERT INTO conversations (id, kind, title, created_by, created_ms, ephemeral, direct_key)
                             VALUES ($1, 'direct', $2, $3, $4, $5, $6) ON CONFLICT (direct_key) DO NOTHING",
                            &[&id, &new.title, &new.creator, &now, &new.ephemeral, &key],
                        )
                        .await?;
                        if inserted == 0 {
                            let existing: String = one(
                                &tx,
                                "SELECT id FROM conversations WHERE direct_key = $1",
                                &[&key],
                            )
                            .await?
                            .get(0);
                            let before = load_conversation(&tx, &existing).await?.ok_or_else(
                                || StoreError::Internal("direct conversation vanished".into()),
                            )?;
                            let missing: Vec<String> = pair
                                .iter()
                                .filter(|u| !before.members.contains(u))
                                .cloned()
                                .collect();
                            if missing.is_empty() {
                                return Ok(Written::nothing(before));
                            }
                            for u in &missing {
                                add_member_row(&tx, &existing, u, now).await?;
                            }
                            let after = load_conversation(&tx, &existing).await?.ok_or_else(
                                || StoreError::Internal("direct conversation vanished".into()),
                            )?;
                            let events =
                                conversation_events(&tx, &after.members, &after, now).await?;
                            return Ok(Written {
                                value: after,
                                events,
                            });
                        }
                    }
                    ConversationKind::Group => {
                        if others.len() + 1 > new.max_members {
                            return Err(StoreError::TooLarge(format!(
                                "a group has at most {} members",
                                new.max_members
                            )));
                        }
                        for m in &others {
                            refuse_if_blocked(&tx, m, &new.creator).await?;
                        }
                        exec(
                            &tx,
                            "INSERT INTO conversations (id, kind, title, created_by, created_ms, ephemeral)
                             VALUES ($1, 'group', $2, $3, $4, $5)",
                            &[&id, &new.title, &new.creator, &now, &new.ephemeral],
                        )
                        .await?;
                    }
                }
                add_member_row(&tx, &id, &new.creator, now).await?;
                for m in &others {
                    add_member_row(&tx, &id, m, now).await?;
                }
                let c = load_conversation(&tx, &id)
                    .await?
                    .ok_or_else(|| StoreError::Internal("conversation vanished".into()))?;
                let events = conversation_events(&tx, &c.members, &c, now).await?;
                Ok(Written { value: c, events })
            }
            .await
        })
    }

    async fn conversation(&self, caller: &str, id: &str) -> Result<Conversation, StoreError> {
        let client = self.client().await?;
        member_view(&client, caller, id).await
    }

    async fn conversations(&self, caller: &str) -> Result<Vec<ConversationSummary>, StoreError> {
        let client = self.client().await?;
        let c = &client;
        let mine = rows(
            c,
            "SELECT conversation_id, read_message FROM members WHERE user_id = $1",
            &[&caller],
        )
        .await?;
        let mut out = Vec::with_capacity(mine.len());
        for r in mine {
            let (id, read): (String, i64) = (r.get(0), r.get(1));
            let Some(conversation) = load_conversation(c, &id).await? else {
                continue;
            };
            let last = opt(
                c,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1
                     AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $2 AND blocked = sender)
                     ORDER BY id DESC LIMIT 1"
                ),
                &[&id, &caller],
            )
            .await?
            .as_ref()
            .map(to_message)
            .transpose()?;
            let unread: i64 = one(
                c,
                "SELECT COUNT(*) FROM messages WHERE conversation_id = $1 AND id > $2
                 AND sender != $3
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $3 AND blocked = sender)",
                &[&id, &read, &caller],
            )
            .await?
            .get(0);
            out.push(ConversationSummary {
                conversation,
                last_message: last,
                unread: unread as u64,
            });
        }
        let activity = |s: &ConversationSummary| {
            s.last_message
                .as_ref()
                .map(|m| m.ts)
                .unwrap_or(s.conversation.created_ts)
        };
        out.sort_by_key(|s| std::cmp::Reverse(activity(s)));
        Ok(out)
    }

    async fn add_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
        max_members: usize,
    ) -> Result<Written<()>, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                let c = creator_view(&tx, caller, conversation, "add").await?;
                if !user_exists(&tx, user).await? {
                    return Err(StoreError::NotFound(format!("no user {user}")));
                }
                if c.members.iter().any(|m| m == user) {
                    return Ok(Written::nothing(()));
                }
                refuse_if_blocked(&tx, user, caller).await?;
                if c.members.len() + 1 > max_members {
                    return Err(StoreError::TooLarge(format!(
                        "a group has at most {max_members} members"
                    )));
                }
                add_member_row(&tx, conversation, user, now).await?;
                let c = member_view(&tx, caller, conversation).await?;
                let events = conversation_events(&tx, &c.members, &c, now).await?;
                Ok(Written { value: (), events })
            }
            .await
        })
    }

    async fn remove_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
    ) -> Result<Written<()>, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                let c = creator_view(&tx, caller, conversation, "remove").await?;
                if !c.members.iter().any(|m| m == user) {
                    return Ok(Written::nothing(()));
                }
                let events = depart(&tx, conversation, user.to_owned(), now).await?;
                Ok(Written { value: (), events })
            }
            .await
        })
    }

    async fn leave(&self, caller: &str, conversation: &str) -> Result<Written<()>, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                member_view(&tx, caller, conversation).await?;
                let events = depart(&tx, conversation, caller.to_owned(), now).await?;
                Ok(Written { value: (), events })
            }
            .await
        })
    }

    async fn send_message(&self, new: NewMessage) -> Result<Written<Message>, StoreError> {
        // Group commit: concurrent sends share one transaction (see `run_sends`).
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sends
            .send((new, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Internal("the send batcher stopped".into()))?
    }

    async fn history(
        &self,
        caller: &str,
        conversation: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let before = match before {
            Some(b) => parse_message_id(b)?,
            None => i64::MAX,
        };
        let client = self.client().await?;
        let c = &client;
        member_view(c, caller, conversation).await?;
        let lim = limit as i64 + 1;
        let got = rows(
            c,
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND id < $2
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $4 AND blocked = sender)
                 ORDER BY id DESC LIMIT $3"
            ),
            &[&conversation, &before, &lim, &caller],
        )
        .await?;
        let more = got.len() > limit;
        let messages = got
            .iter()
            .take(limit)
            .map(to_message)
            .collect::<Result<_, _>>()?;
        Ok((messages, more))
    }

    async fn mark_read(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
    ) -> Result<Written<()>, StoreError> {
        let mid = parse_message_id(message)?;
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                let c = member_view(&tx, caller, conversation).await?;
                let here = opt(
                    &tx,
                    "SELECT 1 FROM messages WHERE id = $1 AND conversation_id = $2",
                    &[&mid, &conversation],
                )
                .await?
                .is_some();
                if !here {
                    return Err(StoreError::NotFound(format!(
                        "no message {message} in {conversation}"
                    )));
                }
                let moved = exec(
                    &tx,
                    "UPDATE members SET read_message = $3 WHERE conversation_id = $1 AND user_id = $2
                     AND read_message < $3",
                    &[&conversation, &caller, &mid],
                )
                .await?;
                if moved == 0 {
                    return Ok(Written::nothing(()));
                }
                let mut events = Vec::new();
                for u in &c.members {
                    events.push(
                        append_event(&tx, u, now, |seq| ServerFrame::ReceiptRead {
                            seq,
                            conversation: conversation.to_owned(),
                            user: caller.to_owned(),
                            message: message.to_owned(),
                        })
                        .await?,
                    );
                }
                Ok(Written { value: (), events })
            }
            .await
        })
    }

    async fn block(&self, caller: &str, user: &str) -> Result<(), StoreError> {
        if caller == user {
            return Err(StoreError::BadRequest("you cannot block yourself".into()));
        }
        let client = self.client().await?;
        if !user_exists(&client, user).await? {
            return Err(StoreError::NotFound(format!("no user {user}")));
        }
        exec(
            &client,
            "INSERT INTO blocks (blocker, blocked, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&caller, &user, &now_ms()],
        )
        .await
        .map(|_| ())
    }

    async fn unblock(&self, caller: &str, user: &str) -> Result<(), StoreError> {
        self.run(
            "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2",
            &[&caller, &user],
        )
        .await
        .map(|_| ())
    }

    async fn blocks(&self, caller: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query(
                "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY created_ms, blocked",
                &[&caller],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn blocked_by(&self, caller: &str, users: &[String]) -> Result<Vec<String>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .query(
                "SELECT blocker FROM blocks WHERE blocked = $1 AND blocker = ANY($2) ORDER BY blocker",
                &[&caller, &users],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn search(
        &self,
        caller: &str,
        query: &str,
        conversation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let text = search_text(query)?;
        let client = self.client().await?;
        let c = &client;
        if let Some(conv) = conversation {
            check_member(c, caller, conv).await?;
        }
        let lim = limit as i64;
        rows(
            c,
            "SELECT m.id, m.conversation_id, m.sender, m.client_msg_id, m.text, m.attachments, m.ts
             FROM messages m
             JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = $2
             WHERE m.tsv @@ plainto_tsquery('simple', $1)
               AND ($3::text IS NULL OR m.conversation_id = $3)
               AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $2 AND blocked = m.sender)
             ORDER BY ts_rank(m.tsv, plainto_tsquery('simple', $1)) DESC, m.id DESC
             LIMIT $4",
            &[&text, &caller, &conversation, &lim],
        )
        .await?
        .iter()
        .map(to_message)
        .collect()
    }

    async fn typing_recipients(
        &self,
        sender: &str,
        conversation: &str,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let c = &client;
        check_member(c, sender, conversation).await?;
        Ok(rows(
            c,
            "SELECT user_id FROM members WHERE conversation_id = $1 AND user_id != $2
             AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = user_id AND blocked = $2)",
            &[&conversation, &sender],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn expire_ephemeral(&self, before_ms: i64) -> Result<Written<Vec<String>>, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                let ids: Vec<String> = rows(
                    &tx,
                    "SELECT c.id FROM conversations c WHERE c.ephemeral
                     AND COALESCE((SELECT MAX(ts) FROM messages m WHERE m.conversation_id = c.id),
                                  c.created_ms) < $1
                     LIMIT 1000 FOR UPDATE SKIP LOCKED",
                    &[&before_ms],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
                let mut events = Vec::new();
                for id in &ids {
                    let Some(mut c) = load_conversation(&tx, id).await? else {
                        continue;
                    };
                    let members = std::mem::take(&mut c.members);
                    events.extend(conversation_events(&tx, &members, &c, now).await?);
                    exec(
                        &tx,
                        "DELETE FROM inbox WHERE message_id IN
                           (SELECT id FROM messages WHERE conversation_id = $1)",
                        &[id],
                    )
                    .await?;
                    exec(
                        &tx,
                        "DELETE FROM messages WHERE conversation_id = $1",
                        &[id],
                    )
                    .await?;
                    exec(&tx, "DELETE FROM members WHERE conversation_id = $1", &[id]).await?;
                    exec(&tx, "DELETE FROM conversations WHERE id = $1", &[id]).await?;
                }
                Ok(Written { value: ids, events })
            }
            .await
        })
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self
            .query_opt("SELECT last_seq FROM users WHERE id = $1", &[&user])
            .await?
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    async fn events_after(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Replay, StoreError> {
        let after = after_seq.min(i64::MAX as u64) as i64;
        let mut client = self.client().await?;
        // One snapshot: the latest seq and the events agree.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let last_seq: i64 = opt(&tx, "SELECT last_seq FROM users WHERE id = $1", &[&user])
            .await?
            .map_or(0, |r| r.get(0));
        let first: Option<i64> = one(
            &tx,
            "SELECT MIN(seq) FROM inbox WHERE user_id = $1",
            &[&user],
        )
        .await?
        .get(0);
        let truncated = last_seq > after && first.is_none_or(|f| f > after + 1);
        let lim = limit as i64;
        let got = rows(
            &tx,
            "SELECT i.seq, i.frame, m.id, m.conversation_id, m.sender, m.client_msg_id,
                    m.text, m.attachments, m.ts
             FROM inbox i LEFT JOIN messages m ON m.id = i.message_id
             WHERE i.user_id = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3",
            &[&user, &after, &lim],
        )
        .await?;
        // Read only: a failed commit lost nothing, so it maps like any read error.
        tx.commit().await.map_err(pg)?;
        let mut frames = Vec::with_capacity(got.len());
        for r in got {
            let seq: i64 = r.get(0);
            let frame: Option<String> = r.get(1);
            let mid: Option<i64> = r.get(2);
            frames.push(match (frame, mid) {
                (_, Some(id)) => ServerFrame::MessageNew {
                    seq: seq as u64,
                    message: Message {
                        id: id.to_string(),
                        conversation: r.get(3),
                        sender: r.get(4),
                        client_msg_id: r.get(5),
                        text: r.get(6),
                        attachments: serde_json::from_str(r.get::<_, &str>(7)).map_err(json_err)?,
                        ts: r.get(8),
                    },
                },
                (Some(json), None) => serde_json::from_str(&json).map_err(json_err)?,
                (None, None) => {
                    return Err(StoreError::Internal(format!(
                        "inbox event {seq} lost its message"
                    )));
                }
            });
        }
        Ok(Replay {
            frames,
            last_seq: last_seq as u64,
            truncated,
        })
    }

    async fn acked_seq(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self
            .query_opt("SELECT acked_seq FROM users WHERE id = $1", &[&user])
            .await?
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    async fn ack(&self, user: &str, seq: u64) -> Result<(), StoreError> {
        let seq = seq.min(i64::MAX as u64) as i64;
        self.run(
            "UPDATE users SET acked_seq = LEAST(GREATEST(acked_seq, $2), last_seq) WHERE id = $1",
            &[&user, &seq],
        )
        .await
        .map(|_| ())
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        exec(&client, "DELETE FROM inbox WHERE ts < $1", &[&before_ms]).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        one(&client, "SELECT 1", &[]).await.map(|_| ())
    }
}

/// The most sends one transaction takes.
const SEND_BATCH: usize = 64;

type SendJob = (
    NewMessage,
    tokio::sync::oneshot::Sender<Result<Written<Message>, StoreError>>,
);

/// Group commit for `message.send`: take whatever sends wait, lock every recipient once (in
/// id order, so two batches never deadlock on each other), run each send in its own savepoint
/// (one send's failure leaves the others), and commit once. Sends to one busy group no longer
/// queue up behind each other's row locks and fsyncs.
async fn run_sends(pool: Pool, mut jobs: tokio::sync::mpsc::Receiver<SendJob>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < SEND_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let (news, replies): (Vec<NewMessage>, Vec<_>) = batch.into_iter().unzip();
        match send_batch(&pool, &news).await {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(match &e {
                        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                        StoreError::Internal(m) => StoreError::Internal(m.clone()),
                        other => StoreError::Internal(other.to_string()),
                    }));
                }
            }
        }
    }
}

async fn send_batch(
    pool: &Pool,
    news: &[NewMessage],
) -> Result<Vec<Result<Written<Message>, StoreError>>, StoreError> {
    let mut client = pool.get().await.map_err(pool_err)?;
    let mut tx = client.transaction().await.map_err(pg)?;
    let conversations: Vec<&str> = news.iter().map(|n| n.conversation.as_str()).collect();
    exec(
        &tx,
        "SELECT 1 FROM users WHERE id IN
           (SELECT user_id FROM members WHERE conversation_id = ANY($1))
         ORDER BY id FOR UPDATE",
        &[&conversations],
    )
    .await?;
    let now = now_ms();
    let mut inserted = Vec::with_capacity(news.len());
    for new in news {
        let sp = tx.transaction().await.map_err(pg)?;
        match insert_one(&sp, new, now).await {
            Ok(sent) => {
                // Releasing a savepoint commits nothing yet: a lost connection here is plain.
                sp.commit().await.map_err(pg)?;
                inserted.push(Ok(sent));
            }
            Err(e) => {
                sp.rollback().await.map_err(pg)?;
                inserted.push(Err(e));
            }
        }
    }
    // The whole batch's fan-out in one statement: each recipient's seq goes up by the
    // number of new messages it gets, and its inbox rows take those seqs in send order.
    let fresh: Vec<&Message> = inserted
        .iter()
        .filter_map(|r| match r {
            Ok((m, true)) => Some(m),
            _ => None,
        })
        .collect();
    let mut events: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    if !fresh.is_empty() {
        let ids: Vec<i64> = fresh
            .iter()
            .map(|m| m.id.parse::<i64>().unwrap_or_default())
            .collect();
        let convs: Vec<&str> = fresh.iter().map(|m| m.conversation.as_str()).collect();
        let senders: Vec<&str> = fresh.iter().map(|m| m.sender.as_str()).collect();
        let got = rows(
            &tx,
            "WITH msgs AS (
               SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])
                 WITH ORDINALITY AS m(mid, conv, sender, ord)),
             recips AS (
               SELECT m.ord, m.mid, mb.user_id FROM msgs m
               JOIN members mb ON mb.conversation_id = m.conv
               WHERE NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = mb.user_id AND blocked = m.sender)),
             counts AS (SELECT user_id, COUNT(*) AS n FROM recips GROUP BY user_id),
             upd AS (
               UPDATE users SET last_seq = users.last_seq + counts.n FROM counts
               WHERE users.id = counts.user_id
               RETURNING users.id, users.last_seq AS top, counts.n),
             numbered AS (
               SELECT r.user_id, r.mid,
                      upd.top - upd.n + ROW_NUMBER() OVER (PARTITION BY r.user_id ORDER BY r.ord) AS seq
               FROM recips r JOIN upd ON upd.id = r.user_id)
             INSERT INTO inbox (user_id, seq, ts, message_id)
             SELECT user_id, seq, $4, mid FROM numbered
             RETURNING user_id, seq, message_id",
            &[&ids, &convs, &senders, &now],
        )
        .await?;
        for r in got {
            let mid: i64 = r.get(2);
            events
                .entry(mid.to_string())
                .or_default()
                .push((r.get(0), r.get(1)));
        }
    }
    tx.commit().await.map_err(commit_err)?;
    Ok(inserted
        .into_iter()
        .map(|r| {
            r.map(|(message, new)| {
                if !new {
                    return Written::nothing(message);
                }
                let mut mine = events.remove(&message.id).unwrap_or_default();
                mine.sort_by(|a, b| a.0.cmp(&b.0));
                let events = mine
                    .into_iter()
                    .map(|(user, seq)| Event {
                        user,
                        frame: ServerFrame::MessageNew {
                            seq: seq as u64,
                            message: message.clone(),
                        },
                    })
                    .collect();
                Written {
                    value: message,
                    events,
                }
            })
        })
        .collect())
}

/// Store one `message.send` inside a transaction: the message, and whether it is new (a
/// repeated `client_msg_id` returns the first message, not new). Its events are written by
/// the caller, for the whole batch at once.
async fn insert_one(
    tx: &impl GenericClient,
    new: &NewMessage,
    now: i64,
) -> Result<(Message, bool), StoreError> {
    let attachments = serde_json::to_string(&new.attachments).map_err(json_err)?;
    let select =
        format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = $1 AND client_msg_id = $2");
    if let Some(r) = opt(tx, &select, &[&new.sender, &new.client_msg_id]).await? {
        return Ok((to_message(&r)?, false));
    }
    check_member(tx, &new.sender, &new.conversation).await?;
    // A concurrent send of the same client_msg_id: the unique key decides, and the loser
    // returns the winner's message.
    let inserted = opt(
        tx,
        "INSERT INTO messages (conversation_id, sender, client_msg_id, text, attachments, ts)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sender, client_msg_id) DO NOTHING
         RETURNING id",
        &[
            &new.conversation,
            &new.sender,
            &new.client_msg_id,
            &new.text,
            &attachments,
            &now,
        ],
    )
    .await?;
    let Some(row) = inserted else {
        let r = one(tx, &select, &[&new.sender, &new.client_msg_id]).await?;
        return Ok((to_message(&r)?, false));
    };
    let id: i64 = row.get(0);
    Ok((
        Message {
            id: id.to_string(),
            conversation: new.conversation.clone(),
            sender: new.sender.clone(),
            client_msg_id: new.client_msg_id.clone(),
            text: new.text.clone(),
            attachments: new.attachments.clone(),
            ts: now,
        },
        true,
    ))
}

const POST_COLUMNS: &str = "seq, id, author, text, attachments, ts, likes, comments";

fn to_post(r: &tokio_postgres::Row) -> Result<StoredPost, StoreError> {
    Ok(StoredPost {
        seq: r.get::<_, i64>(0) as u64,
        post: Post {
            id: r.get(1),
            author: r.get(2),
            text: r.get(3),
            attachments: serde_json::from_str(r.get::<_, &str>(4)).map_err(json_err)?,
            ts: r.get(5),
            likes: r.get::<_, i64>(6) as u64,
            comments: r.get::<_, i64>(7) as u64,
        },
    })
}

async fn load_post(c: &impl GenericClient, id: &str) -> Result<Option<StoredPost>, StoreError> {
    opt(
        c,
        &format!("SELECT {POST_COLUMNS} FROM posts WHERE id = $1"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(to_post)
    .transpose()
}

async fn existing_post(c: &impl GenericClient, id: &str) -> Result<StoredPost, StoreError> {
    load_post(c, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no post {id}")))
}

async fn notify(
    c: &impl GenericClient,
    to: &str,
    from: &str,
    kind: NotificationKind,
    data: serde_json::Value,
    now: i64,
) -> Result<Vec<Event>, StoreError> {
    if to == from {
        return Ok(Vec::new());
    }
    let blocked = opt(
        c,
        "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2",
        &[&to, &from],
    )
    .await?
    .is_some();
    if blocked {
        return Ok(Vec::new());
    }
    Ok(vec![
        append_event(c, to, now, |seq| ServerFrame::Notification {
            seq,
            kind,
            data,
        })
        .await?,
    ])
}

#[async_trait]
impl FeedStore for PgStore {
    async fn create_post(&self, new: NewPost) -> Result<StoredPost, StoreError> {
        let attachments = serde_json::to_string(&new.attachments).map_err(json_err)?;
        let now = now_ms();
        // A transaction, not a lone INSERT: a connection lost at its COMMIT is then known to
        // leave the outcome unknown (`Internal`), not taken for "nothing was written".
        let post = in_tx!(self, |tx| {
            async {
                exec(
                    &tx,
                    "INSERT INTO posts (id, author, text, attachments, ts) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO NOTHING",
                    &[&new.id, &new.author, &new.text, &attachments, &now],
                )
                .await?;
                existing_post(&tx, &new.id).await
            }
            .await
        })?;
        crate::feed::same_author(post, &new)
    }

    async fn delete_post(&self, caller: &str, post: &str) -> Result<(), StoreError> {
        in_tx!(self, |tx| {
            async {
                let p = existing_post(&tx, post).await?;
                if p.post.author != caller {
                    return Err(StoreError::Forbidden(
                        "only the author may delete a post".into(),
                    ));
                }
                exec(&tx, "DELETE FROM comments WHERE post = $1", &[&post]).await?;
                exec(&tx, "DELETE FROM likes WHERE post = $1", &[&post]).await?;
                exec(&tx, "DELETE FROM posts WHERE id = $1", &[&post]).await?;
                Ok(())
            }
            .await
        })
    }

    async fn create_comment(&self, new: NewComment) -> Result<Written<(Comment, u64)>, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                let post = existing_post(&tx, &new.post).await?;
                let inserted = exec(
                    &tx,
                    "INSERT INTO comments (id, post, author, text, ts) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO NOTHING",
                    &[&new.id, &new.post, &new.author, &new.text, &now],
                )
                .await?;
                if inserted == 0 {
                    let r = one(
                        &tx,
                        "SELECT post, author, text, ts FROM comments WHERE id = $1",
                        &[&new.id],
                    )
                    .await?;
                    if r.get::<_, &str>(0) != new.post || r.get::<_, &str>(1) != new.author {
                        return Err(crate::feed::comment_conflict(&new.id));
                    }
                    let comment = Comment {
                        id: new.id.clone(),
                        post: r.get(0),
                        author: r.get(1),
                        text: r.get(2),
                        ts: r.get(3),
                    };
                    return Ok(Written::nothing((comment, post.post.comments)));
                }
                let count: i64 = one(
                    &tx,
                    "UPDATE posts SET comments = comments + 1 WHERE id = $1 RETURNING comments",
                    &[&new.post],
                )
                .await?
                .get(0);
                let comment = Comment {
                    id: new.id.clone(),
                    post: new.post.clone(),
                    author: new.author.clone(),
                    text: new.text.clone(),
                    ts: now,
                };
                let data = serde_json::json!({"post": comment.post, "user": comment.author,
                                              "comment": comment});
                let events = notify(
                    &tx,
                    &post.post.author,
                    &comment.author,
                    NotificationKind::Comment,
                    data,
                    now,
                )
                .await?;
                Ok(Written {
                    value: (comment, count as u64),
                    events,
                })
            }
            .await
        })
    }

    async fn like(&self, caller: &str, post: &str) -> Result<Written<u64>, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                let p = existing_post(&tx, post).await?;
                let added = exec(
                    &tx,
                    "INSERT INTO likes (post, user_id, ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&post, &caller, &now],
                )
                .await?;
                if added == 0 {
                    return Ok(Written::nothing(p.post.likes));
                }
                let likes: i64 = one(
                    &tx,
                    "UPDATE posts SET likes = likes + 1 WHERE id = $1 RETURNING likes",
                    &[&post],
                )
                .await?
                .get(0);
                let data = serde_json::json!({"post": post, "user": caller});
                let events =
                    notify(&tx, &p.post.author, caller, NotificationKind::Like, data, now).await?;
                Ok(Written {
                    value: likes as u64,
                    events,
                })
            }
            .await
        })
    }

    async fn unlike(&self, caller: &str, post: &str) -> Result<u64, StoreError> {
        in_tx!(self, |tx| {
            async {
                let p = existing_post(&tx, post).await?;
                let removed = exec(
                    &tx,
                    "DELETE FROM likes WHERE post = $1 AND user_id = $2",
                    &[&post, &caller],
                )
                .await?;
                if removed == 0 {
                    return Ok(p.post.likes);
                }
                let likes: i64 = one(
                    &tx,
                    "UPDATE posts SET likes = likes - 1 WHERE id = $1 RETURNING likes",
                    &[&post],
                )
                .await?
                .get(0);
                Ok(likes as u64)
            }
            .await
        })
    }

    async fn follow(&self, caller: &str, user: &str) -> Result<Written<()>, StoreError> {
        if caller == user {
            return Err(StoreError::BadRequest("you cannot follow yourself".into()));
        }
        let now = now_ms();
        in_tx!(self, |tx| {
            async {
                if !user_exists(&tx, user).await? {
                    return Err(StoreError::NotFound(format!("no user {user}")));
                }
                let added = exec(
                    &tx,
                    "INSERT INTO follows (follower, followee, ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&caller, &user, &now],
                )
                .await?;
                if added == 0 {
                    return Ok(Written::nothing(()));
                }
                let data = serde_json::json!({"user": caller});
                let events =
                    notify(&tx, user, caller, NotificationKind::Follow, data, now).await?;
                Ok(Written { value: (), events })
            }
            .await
        })
    }

    async fn unfollow(&self, caller: &str, user: &str) -> Result<(), StoreError> {
        self.run(
            "DELETE FROM follows WHERE follower = $1 AND followee = $2",
            &[&caller, &user],
        )
        .await
        .map(|_| ())
    }

    async fn followers(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query("SELECT follower FROM follows WHERE followee = $1", &[&user])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn followee_count(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self
            .query_one("SELECT COUNT(*) FROM follows WHERE follower = $1", &[&user])
            .await?
            .get::<_, i64>(0) as u64)
    }

    async fn timeline_candidates(
        &self,
        user: &str,
        limit: usize,
    ) -> Result<(Vec<StoredPost>, u64), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let watermark: i64 = one(&tx, "SELECT COALESCE(MAX(seq), 0) FROM posts", &[])
            .await?
            .get(0);
        let lim = limit as i64;
        let posts = rows(
            &tx,
            &format!(
                "SELECT {POST_COLUMNS} FROM posts
                 WHERE author IN (SELECT followee FROM follows WHERE follower = $1 UNION ALL SELECT $1)
                 ORDER BY seq DESC LIMIT $2"
            ),
            &[&user, &lim],
        )
        .await?
        .iter()
        .map(to_post)
        .collect::<Result<Vec<_>, _>>()?;
        // Read only: a failed commit lost nothing, so it maps like any read error.
        tx.commit().await.map_err(pg)?;
        Ok((posts, watermark as u64))
    }

    async fn posts_since(
        &self,
        user: &str,
        watermark: u64,
        limit: usize,
    ) -> Result<Vec<StoredPost>, StoreError> {
        let (w, lim) = (watermark.min(i64::MAX as u64) as i64, limit as i64);
        self.query(
            &format!(
                "SELECT {POST_COLUMNS} FROM posts
                 WHERE seq > $2 AND (author = $1 OR EXISTS
                   (SELECT 1 FROM follows WHERE follower = $1 AND followee = posts.author))
                 ORDER BY seq DESC LIMIT $3"
            ),
            &[&user, &w, &lim],
        )
        .await?
        .iter()
        .map(to_post)
        .collect()
    }

    async fn posts(&self, ids: &[String]) -> Result<Vec<Post>, StoreError> {
        let found: Vec<StoredPost> = self
            .query(
                &format!("SELECT {POST_COLUMNS} FROM posts WHERE id = ANY($1)"),
                &[&ids],
            )
            .await?
            .iter()
            .map(to_post)
            .collect::<Result<_, _>>()?;
        Ok(ids
            .iter()
            .filter_map(|id| {
                found
                    .iter()
                    .find(|p| p.post.id == *id)
                    .map(|p| p.post.clone())
            })
            .collect())
    }

    async fn comment_count(&self, post: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .query_opt("SELECT comments FROM posts WHERE id = $1", &[&post])
            .await?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn touch_active(&self, user: &str) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO activity (user_id, active_ms) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET active_ms = GREATEST(activity.active_ms, excluded.active_ms)",
            &[&user, &now_ms()],
        )
        .await
        .map(|_| ())
    }

    async fn active_users(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query(
                "SELECT user_id FROM activity WHERE active_ms >= $1",
                &[&since_ms],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}
