//! The embedded store: SQLite, in the same file as the embedded queue.
//!
//! Writes run in the queue's writer thread through [`EmbeddedQueue::transact`]: one writer
//! for the whole file, so store writes and queue operations share group commits instead of
//! fighting over SQLite's lock. Reads run on a small pool of read-only connections (WAL lets
//! them proceed while the writer commits) in tokio's blocking pool.
//!
//! Every write method is one transaction: its checks, its rows, and the inbox events it
//! produces (each recipient's `last_seq` incremented and the frame stored under that seq).

use crate::*;
use hubbub_protocol::{ConversationKind, Message, ServerFrame};
use hubbub_queue::{Clock, EmbeddedQueue, QueueError, SystemClock, TransactError};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Version 1: chat; version 2: the feed; version 3: refresh token families and revocation.
const SCHEMA_VERSION: i64 = 3;
/// The schema's steps: version N is the first N of them, applied in order.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
];
/// How long a family's row outlives its last token: a refresh racing that token's expiry
/// still finds the family (and whether it was revoked) when it puts the next token.
const FAMILY_GRACE_MS: i64 = 3_600_000;
/// Read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => {
                StoreError::Unavailable("storage is full".into())
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

impl From<QueueError> for StoreError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::DiskFull => StoreError::Unavailable("storage is full".into()),
            QueueError::Closed | QueueError::Unavailable(_) => {
                StoreError::Unavailable(e.to_string())
            }
            other => StoreError::Internal(other.to_string()),
        }
    }
}

pub(crate) fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("json: {e}"))
}

/// A random id: a prefix and 16 hex digits from the OS's random source.
pub fn new_id(prefix: &str) -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Internal(format!("random: {e}")))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// Whether a handle is 3–32 characters of `[a-z0-9_]`.
pub fn valid_handle(handle: &str) -> bool {
    (3..=32).contains(&handle.len())
        && handle
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

/// The embedded [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    queue: EmbeddedQueue,
    readers: Arc<ReadPool>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.queue.path())
            .finish()
    }
}

impl SqliteStore {
    /// The store in the database file of `queue`, created or migrated as needed.
    pub async fn open(queue: EmbeddedQueue) -> Result<Self, StoreError> {
        let readers = Arc::new(ReadPool {
            path: queue.path().to_owned(),
            idle: Mutex::new(Vec::new()),
        });
        let store = SqliteStore {
            queue,
            readers,
            clock: Arc::new(SystemClock),
        };
        store
            .write(|conn| {
                let version: Option<i64> = conn
                    .query_row(
                        "SELECT version FROM hubbub_components WHERE component = 'store'",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?;
                match version {
                    None => {
                        for step in MIGRATIONS {
                            conn.execute_batch(step)?;
                        }
                        conn.execute(
                            "INSERT INTO hubbub_components (component, version) VALUES ('store', ?1)",
                            [SCHEMA_VERSION],
                        )?;
                        Ok(())
                    }
                    Some(SCHEMA_VERSION) => Ok(()),
                    Some(v) if (1..SCHEMA_VERSION).contains(&v) => {
                        // Version v is the first v steps: apply the rest, in this transaction.
                        for step in &MIGRATIONS[v as usize..] {
                            conn.execute_batch(step)?;
                        }
                        conn.execute(
                            "UPDATE hubbub_components SET version = ?1 WHERE component = 'store'",
                            [SCHEMA_VERSION],
                        )?;
                        Ok(())
                    }
                    Some(v) => Err(StoreError::Internal(format!(
                        "the database was written by a newer hubbub (store schema {v}, this build \
                         knows {SCHEMA_VERSION})"
                    ))),
                }
            })
            .await?;
        Ok(store)
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Run a write in the store's transaction path (for other stores sharing the file).
    pub(crate) async fn write_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write(f).await
    }

    /// Run a read on the store's read pool.
    pub(crate) async fn read_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read(f).await
    }

    /// One of a user's counters (0 for an unknown user).
    async fn user_counter(&self, user: &str, sql: &'static str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.read(move |conn| {
            let value: Option<i64> = conn
                .prepare_cached(sql)?
                .query_row([user], |r| r.get(0))
                .optional()?;
            Ok(value.unwrap_or(0) as u64)
        })
        .await
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.queue
            .transact(move |conn, _| f(conn))
            .await
            .map_err(|e| match e {
                TransactError::Caller(e) => e,
                TransactError::Queue(e) => e.into(),
            })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| StoreError::Internal(format!("read task: {e}")))?
    }
}

// ---- helpers that run inside a transaction or a read ----------------------------------------

fn user_exists(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
        .exists([id])?)
}

fn load_conversation(conn: &Connection, id: &str) -> Result<Option<Conversation>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT kind, title, created_by, created_ms, ephemeral FROM conversations WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, bool>(4)?,
            ))
        })
        .optional()?;
    let Some((kind, title, created_by, created_ts, ephemeral)) = row else {
        return Ok(None);
    };
    let members = conn
        .prepare_cached(
            "SELECT user_id FROM members WHERE conversation_id = ?1 ORDER BY joined_ms, user_id",
        )?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    let kind = if kind == "direct" {
        ConversationKind::Direct
    } else {
        ConversationKind::Group
    };
    Ok(Some(Conversation {
        id: id.to_owned(),
        kind,
        title,
        members,
        created_by,
        created_ts,
        ephemeral,
    }))
}

/// The conversation, if it exists and `caller` is a member.
fn member_view(conn: &Connection, caller: &str, id: &str) -> Result<Conversation, StoreError> {
    let c = load_conversation(conn, id)?
        .ok_or_else(|| StoreError::NotFound(format!("no conversation {id}")))?;
    if !c.members.iter().any(|m| m == caller) {
        return Err(StoreError::Forbidden("not a member".into()));
    }
    Ok(c)
}

/// Take `user` out of a conversation; the remaining members and `user` get the conversation
/// as it is now.
fn depart(conn: &Connection, id: &str, user: String, now: i64) -> Result<Vec<Event>, StoreError> {
    conn.prepare_cached("DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2")?
        .execute(params![id, user])?;
    let after = load_conversation(conn, id)?
        .ok_or_else(|| StoreError::Internal("conversation vanished".into()))?;
    let mut told = after.members.clone();
    told.push(user);
    conversation_events(conn, &told, &after, now)
}

/// The group, if `caller` created it (only the creator adds and removes members).
fn creator_view(
    conn: &Connection,
    caller: &str,
    id: &str,
    action: &str,
) -> Result<Conversation, StoreError> {
    let c = member_view(conn, caller, id)?;
    if c.kind == ConversationKind::Direct || c.created_by != caller {
        return Err(StoreError::Forbidden(format!(
            "only the creator of a group may {action} members"
        )));
    }
    Ok(c)
}

/// `Forbidden` if `user` blocks `caller`: a blocked user cannot put the blocker in a group
/// (the message names no one, so it tells the caller no more than that they may not).
fn refuse_if_blocked(conn: &Connection, user: &str, caller: &str) -> Result<(), StoreError> {
    let blocked = conn
        .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
        .exists(params![user, caller])?;
    if blocked {
        return Err(StoreError::Forbidden("you cannot add this user".into()));
    }
    Ok(())
}

/// Fail unless the conversation exists and `caller` is in it (two index lookups).
fn check_member(conn: &Connection, caller: &str, id: &str) -> Result<(), StoreError> {
    let (exists, member): (bool, bool) = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1),
                    EXISTS (SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2)",
        )?
        .query_row(params![id, caller], |r| Ok((r.get(0)?, r.get(1)?)))?;
    match (exists, member) {
        (false, _) => Err(StoreError::NotFound(format!("no conversation {id}"))),
        (true, false) => Err(StoreError::Forbidden("not a member".into())),
        (true, true) => Ok(()),
    }
}

/// Append one durable event to `user`'s inbox under their next seq.
pub(crate) fn append_event(
    conn: &Connection,
    user: &str,
    now: i64,
    make: impl FnOnce(u64) -> ServerFrame,
) -> Result<Event, StoreError> {
    let seq: i64 = conn
        .prepare_cached(
            "UPDATE users SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
        )?
        .query_row([user], |r| r.get(0))?;
    let frame = make(seq as u64);
    let json = serde_json::to_string(&frame).map_err(json_err)?;
    conn.prepare_cached("INSERT INTO inbox (user_id, seq, ts, frame) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![user, seq, now, json])?;
    Ok(Event {
        user: user.to_owned(),
        frame,
    })
}

/// `message.new` to every member of the message's conversation except those who block the
/// sender (the message is still stored for the others): one statement takes the next seq of
/// every recipient, one more writes their inbox rows (pointing at the message).
fn fan_out_message(
    conn: &Connection,
    message: &Message,
    now: i64,
) -> Result<Vec<Event>, StoreError> {
    let id: i64 = message
        .id
        .parse()
        .map_err(|_| StoreError::Internal("message id".into()))?;
    let seqs: Vec<(String, i64)> = conn
        .prepare_cached(
            "UPDATE users SET last_seq = last_seq + 1
             WHERE id IN (SELECT user_id FROM members WHERE conversation_id = ?1)
               AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = users.id AND blocked = ?2)
             RETURNING id, last_seq",
        )?
        .query_map([&message.conversation, &message.sender], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    conn.prepare_cached(
        "INSERT INTO inbox (user_id, seq, ts, message_id)
         SELECT u.id, u.last_seq, ?2, ?3 FROM members m JOIN users u ON u.id = m.user_id
         WHERE m.conversation_id = ?1
           AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = m.user_id AND blocked = ?4)",
    )?
    .execute(params![message.conversation, now, id, message.sender])?;
    Ok(seqs
        .into_iter()
        .map(|(user, seq)| Event {
            user,
            frame: ServerFrame::MessageNew {
                seq: seq as u64,
                message: message.clone(),
            },
        })
        .collect())
}

/// `conversation.updated` to each of `users`.
fn conversation_events(
    conn: &Connection,
    users: &[String],
    c: &Conversation,
    now: i64,
) -> Result<Vec<Event>, StoreError> {
    users
        .iter()
        .map(|u| {
            append_event(conn, u, now, |seq| ServerFrame::ConversationUpdated {
                seq,
                conversation: c.clone(),
            })
        })
        .collect()
}

fn row_to_message(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(i64, String, String, String, String, String, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn to_message(
    (id, conversation, sender, client_msg_id, text, attachments, ts): (
        i64,
        String,
        String,
        String,
        String,
        String,
        i64,
    ),
) -> Result<Message, StoreError> {
    Ok(Message {
        id: id.to_string(),
        conversation,
        sender,
        client_msg_id,
        text,
        attachments: serde_json::from_str(&attachments).map_err(json_err)?,
        ts,
    })
}

/// The longest search query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 256;

/// Turn a user's search text into an FTS5 query: every word must appear (each word quoted,
/// so FTS5 operators and punctuation in the text are searched for, never interpreted).
fn fts_query(text: &str) -> Result<String, StoreError> {
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(StoreError::TooLarge(format!(
            "a query is at most {MAX_QUERY_CHARS} characters"
        )));
    }
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        return Err(StoreError::BadRequest(
            "the query has no words to search for".into(),
        ));
    }
    Ok(words.join(" "))
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, sender, client_msg_id, text, attachments, ts";

fn parse_message_id(id: &str) -> Result<i64, StoreError> {
    id.parse::<i64>()
        .map_err(|_| StoreError::NotFound(format!("no message {id}")))
}

fn add_member_row(
    conn: &Connection,
    conversation: &str,
    user: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO members (conversation_id, user_id, joined_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![conversation, user, now])?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(
        &self,
        handle: &str,
        password_hash: &str,
        email: Option<&str>,
    ) -> Result<UserRef, StoreError> {
        let id = new_id("u")?;
        let (handle, hash, email, now) = (
            handle.to_owned(),
            password_hash.to_owned(),
            email.map(str::to_owned),
            self.now(),
        );
        self.write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO users (id, handle, password_hash, email, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (handle) DO NOTHING",
                )?
                .execute(params![id, handle, hash, email, now])?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("handle {handle} is taken")));
            }
            Ok(UserRef { id, handle })
        })
        .await
    }

    async fn ensure_user(
        &self,
        id: &str,
        handle_hint: Option<&str>,
    ) -> Result<UserRef, StoreError> {
        if let Some(u) = self.user(id).await? {
            return Ok(u);
        }
        let (id, hint, now) = (id.to_owned(), handle_hint.map(str::to_owned), self.now());
        let fallback = new_id("user_")?;
        self.write(move |conn| {
            // Another request may have created it meanwhile: this transaction decides.
            if let Some(handle) = conn
                .prepare_cached("SELECT handle FROM users WHERE id = ?1")?
                .query_row([&id], |r| r.get::<_, String>(0))
                .optional()?
            {
                return Ok(UserRef { id, handle });
            }
            let free = |h: &str| -> Result<bool, StoreError> {
                Ok(!conn
                    .prepare_cached("SELECT 1 FROM users WHERE handle = ?1")?
                    .exists([h])?)
            };
            let handle = match hint {
                Some(h) if valid_handle(&h) && free(&h)? => h,
                _ => fallback,
            };
            conn.prepare_cached("INSERT INTO users (id, handle, created_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![id, handle, now])?;
            Ok(UserRef { id, handle })
        })
        .await
    }

    async fn credentials(&self, handle: &str) -> Result<Option<Credentials>, StoreError> {
        let handle = handle.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, handle, password_hash FROM users WHERE handle = ?1")?
                .query_row([handle], |r| {
                    Ok(Credentials {
                        user: UserRef {
                            id: r.get(0)?,
                            handle: r.get(1)?,
                        },
                        password_hash: r.get(2)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn user(&self, id: &str) -> Result<Option<UserRef>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, handle FROM users WHERE id = ?1")?
                .query_row([id], |r| {
                    Ok(UserRef {
                        id: r.get(0)?,
                        handle: r.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
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
        let (hash, user, family, now) = (
            token_hash.to_owned(),
            user.to_owned(),
            family.to_owned(),
            self.now(),
        );
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM refresh_tokens WHERE expires_ms <= ?1")?
                .execute([now])?;
            conn.prepare_cached("DELETE FROM refresh_families WHERE expires_ms <= ?1")?
                .execute([now.saturating_sub(FAMILY_GRACE_MS)])?;
            // A family revoked meanwhile stays revoked: only its expiry moves.
            let owner: String = conn
                .prepare_cached(
                    "INSERT INTO refresh_families (family, user_id, expires_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (family) DO UPDATE SET expires_ms = MAX(expires_ms, excluded.expires_ms)
                     RETURNING user_id",
                )?
                .query_row(params![family, user, expires_ms], |r| r.get(0))?;
            if owner != user {
                return Err(StoreError::Conflict(format!(
                    "refresh token family {family} belongs to another user"
                )));
            }
            conn.prepare_cached(
                "INSERT INTO refresh_tokens (token_hash, user_id, family, expires_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![hash, user, family, expires_ms])?;
            Ok(())
        })
        .await
    }

    async fn take_refresh_token(&self, token_hash: &str) -> Result<RefreshOutcome, StoreError> {
        let (hash, now) = (token_hash.to_owned(), self.now());
        self.write(move |conn| {
            let row: Option<(String, String, i64, Option<i64>, bool, Option<i64>)> = conn
                .prepare_cached(
                    "SELECT t.user_id, t.family, t.expires_ms, t.used_ms,
                            f.family IS NOT NULL, f.revoked_ms
                     FROM refresh_tokens t LEFT JOIN refresh_families f ON f.family = t.family
                     WHERE t.token_hash = ?1",
                )?
                .query_row([&hash], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .optional()?;
            let Some((user, family, expires_ms, used_ms, family_found, family_revoked)) = row
            else {
                return Ok(RefreshOutcome::Invalid);
            };
            let family_live = family_found && family_revoked.is_none();
            match refresh_verdict(expires_ms, used_ms.is_some(), family_live, now) {
                Verdict::Invalid => Ok(RefreshOutcome::Invalid),
                Verdict::Reused => {
                    conn.prepare_cached(
                        "UPDATE refresh_families SET revoked_ms = ?2 WHERE family = ?1",
                    )?
                    .execute(params![family, now])?;
                    conn.prepare_cached("DELETE FROM refresh_tokens WHERE family = ?1")?
                        .execute([&family])?;
                    Ok(RefreshOutcome::Reused { user, family })
                }
                Verdict::Valid => {
                    conn.prepare_cached(
                        "UPDATE refresh_tokens SET used_ms = ?2 WHERE token_hash = ?1",
                    )?
                    .execute(params![hash, now])?;
                    Ok(RefreshOutcome::Valid { user, family })
                }
            }
        })
        .await
    }

    async fn revoke_tokens(&self, user: &str, now_ms: i64) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.write(move |conn| {
            let updated = conn
                .prepare_cached(
                    "UPDATE users SET tokens_revoked_ms = MAX(COALESCE(tokens_revoked_ms, 0), ?2)
                     WHERE id = ?1",
                )?
                .execute(params![user, now_ms])?;
            if updated == 0 {
                return Err(StoreError::NotFound(format!("no user {user}")));
            }
            conn.prepare_cached("DELETE FROM refresh_tokens WHERE user_id = ?1")?
                .execute([&user])?;
            conn.prepare_cached(
                "UPDATE refresh_families SET revoked_ms = ?2 WHERE user_id = ?1 AND revoked_ms IS NULL",
            )?
            .execute(params![user, now_ms])?;
            Ok(())
        })
        .await
    }

    async fn tokens_revoked_ms(&self, user: &str) -> Result<i64, StoreError> {
        let user = user.to_owned();
        self.read(move |conn| {
            let at: Option<Option<i64>> = conn
                .prepare_cached("SELECT tokens_revoked_ms FROM users WHERE id = ?1")?
                .query_row([user], |r| r.get(0))
                .optional()?;
            Ok(at.flatten().unwrap_or(0))
        })
        .await
    }

    async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<Written<Conversation>, StoreError> {
        let now = self.now();
        self.write(move |conn| {
            let id = new.id.clone();
            if let Some(existing) = load_conversation(conn, &id)? {
                if existing.created_by != new.creator {
                    return Err(StoreError::Conflict(format!("conversation {id} exists")));
                }
                return Ok(Written::nothing(existing));
            }
            if !user_exists(conn, &new.creator)? {
                return Err(StoreError::NotFound(format!("no user {}", new.creator)));
            }
            let mut others: Vec<String> = Vec::new();
            for m in &new.members {
                if *m != new.creator && !others.contains(m) {
                    others.push(m.clone());
                }
            }
            for m in &others {
                if !user_exists(conn, m)? {
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
                    let blocked = conn
                        .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
                        .exists(params![other, new.creator])?;
                    if blocked {
                        return Err(StoreError::Forbidden("this user does not accept direct conversations from you".into()));
                    }
                    let mut pair = [new.creator.clone(), other.clone()];
                    pair.sort();
                    let key = pair.join("|");
                    let existing: Option<String> = conn
                        .prepare_cached("SELECT id FROM conversations WHERE direct_key = ?1")?
                        .query_row([&key], |r| r.get(0))
                        .optional()?;
                    if let Some(existing) = existing {
                        // Unique per pair: return it, bringing back whoever had left it.
                        let before = load_conversation(conn, &existing)?
                            .ok_or_else(|| StoreError::Internal("direct conversation vanished".into()))?;
                        let missing: Vec<String> =
                            pair.iter().filter(|u| !before.members.contains(u)).cloned().collect();
                        if missing.is_empty() {
                            return Ok(Written::nothing(before));
                        }
                        for u in &missing {
                            add_member_row(conn, &existing, u, now)?;
                        }
                        let after = load_conversation(conn, &existing)?
                            .ok_or_else(|| StoreError::Internal("direct conversation vanished".into()))?;
                        let events = conversation_events(conn, &after.members, &after, now)?;
                        return Ok(Written { value: after, events });
                    }
                    conn.prepare_cached(
                        "INSERT INTO conversations (id, kind, title, created_by, created_ms, ephemeral, direct_key)
                         VALUES (?1, 'direct', ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![id, new.title, new.creator, now, new.ephemeral, key])?;
                }
                ConversationKind::Group => {
                    if others.len() + 1 > new.max_members {
                        return Err(StoreError::TooLarge(format!(
                            "a group has at most {} members",
                            new.max_members
                        )));
                    }
                    for m in &others {
                        refuse_if_blocked(conn, m, &new.creator)?;
                    }
                    conn.prepare_cached(
                        "INSERT INTO conversations (id, kind, title, created_by, created_ms, ephemeral)
                         VALUES (?1, 'group', ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![id, new.title, new.creator, now, new.ephemeral])?;
                }
            }
            add_member_row(conn, &id, &new.creator, now)?;
            for m in &others {
                add_member_row(conn, &id, m, now)?;
            }
            let c = load_conversation(conn, &id)?
                .ok_or_else(|| StoreError::Internal("conversation vanished".into()))?;
            let events = conversation_events(conn, &c.members, &c, now)?;
            Ok(Written { value: c, events })
        })
        .await
    }

    async fn conversation(&self, caller: &str, id: &str) -> Result<Conversation, StoreError> {
        let (caller, id) = (caller.to_owned(), id.to_owned());
        self.read(move |conn| member_view(conn, &caller, &id)).await
    }

    async fn conversations(&self, caller: &str) -> Result<Vec<ConversationSummary>, StoreError> {
        let caller = caller.to_owned();
        self.read(move |conn| {
            let rows: Vec<(String, i64)> = conn
                .prepare_cached(
                    "SELECT conversation_id, read_message FROM members WHERE user_id = ?1",
                )?
                .query_map([&caller], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, read) in rows {
                let Some(conversation) = load_conversation(conn, &id)? else {
                    continue;
                };
                let last = conn
                    .prepare_cached(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1
                         AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?2 AND blocked = sender)
                         ORDER BY id DESC LIMIT 1"
                    ))?
                    .query_row([&id, &caller], row_to_message)
                    .optional()?
                    .map(to_message)
                    .transpose()?;
                let unread: i64 = conn
                    .prepare_cached(
                        "SELECT COUNT(*) FROM messages WHERE conversation_id = ?1 AND id > ?2
                         AND sender != ?3
                         AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?3 AND blocked = sender)",
                    )?
                    .query_row(params![id, read, caller], |r| r.get(0))?;
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
        })
        .await
    }

    async fn add_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
        max_members: usize,
    ) -> Result<Written<()>, StoreError> {
        let (caller, id, user, now) = (
            caller.to_owned(),
            conversation.to_owned(),
            user.to_owned(),
            self.now(),
        );
        self.write(move |conn| {
            let c = creator_view(conn, &caller, &id, "add")?;
            if !user_exists(conn, &user)? {
                return Err(StoreError::NotFound(format!("no user {user}")));
            }
            if c.members.contains(&user) {
                return Ok(Written::nothing(()));
            }
            refuse_if_blocked(conn, &user, &caller)?;
            if c.members.len() + 1 > max_members {
                return Err(StoreError::TooLarge(format!(
                    "a group has at most {max_members} members"
                )));
            }
            add_member_row(conn, &id, &user, now)?;
            let c = member_view(conn, &caller, &id)?;
            let events = conversation_events(conn, &c.members, &c, now)?;
            Ok(Written { value: (), events })
        })
        .await
    }

    async fn remove_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
    ) -> Result<Written<()>, StoreError> {
        let (caller, id, user, now) = (
            caller.to_owned(),
            conversation.to_owned(),
            user.to_owned(),
            self.now(),
        );
        self.write(move |conn| {
            let c = creator_view(conn, &caller, &id, "remove")?;
            if !c.members.contains(&user) {
                return Ok(Written::nothing(()));
            }
            let events = depart(conn, &id, user, now)?;
            Ok(Written { value: (), events })
        })
        .await
    }

    async fn leave(&self, caller: &str, conversation: &str) -> Result<Written<()>, StoreError> {
        let (caller, id, now) = (caller.to_owned(), conversation.to_owned(), self.now());
        self.write(move |conn| {
            member_view(conn, &caller, &id)?;
            let events = depart(conn, &id, caller, now)?;
            Ok(Written { value: (), events })
        })
        .await
    }

    async fn send_message(&self, new: NewMessage) -> Result<Written<Message>, StoreError> {
        let now = self.now();
        let attachments = serde_json::to_string(&new.attachments).map_err(json_err)?;
        self.write(move |conn| {
            let existing = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND client_msg_id = ?2"
                ))?
                .query_row(params![new.sender, new.client_msg_id], row_to_message)
                .optional()?;
            if let Some(row) = existing {
                return Ok(Written { value: to_message(row)?, events: Vec::new() });
            }
            check_member(conn, &new.sender, &new.conversation)?;
            conn.prepare_cached(
                "INSERT INTO messages (conversation_id, sender, client_msg_id, text, attachments, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![new.conversation, new.sender, new.client_msg_id, new.text, attachments, now])?;
            let message = Message {
                id: conn.last_insert_rowid().to_string(),
                conversation: new.conversation,
                sender: new.sender,
                client_msg_id: new.client_msg_id,
                text: new.text,
                attachments: new.attachments,
                ts: now,
            };
            let events = fan_out_message(conn, &message, now)?;
            Ok(Written { value: message, events })
        })
        .await
    }

    async fn history(
        &self,
        caller: &str,
        conversation: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let (caller, id) = (caller.to_owned(), conversation.to_owned());
        let before = match before {
            Some(b) => parse_message_id(b)?,
            None => i64::MAX,
        };
        self.read(move |conn| {
            member_view(conn, &caller, &id)?;
            let mut rows = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND id < ?2
                     AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?4 AND blocked = sender)
                     ORDER BY id DESC LIMIT ?3"
                ))?
                .query_map(
                    params![id, before, limit as i64 + 1, caller],
                    row_to_message,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let messages = rows.into_iter().map(to_message).collect::<Result<_, _>>()?;
            Ok((messages, more))
        })
        .await
    }

    async fn mark_read(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
    ) -> Result<Written<()>, StoreError> {
        let (caller, id, message_id, now) = (
            caller.to_owned(),
            conversation.to_owned(),
            message.to_owned(),
            self.now(),
        );
        let mid = parse_message_id(message)?;
        self.write(move |conn| {
            let c = member_view(conn, &caller, &id)?;
            let in_conversation = conn
                .prepare_cached("SELECT 1 FROM messages WHERE id = ?1 AND conversation_id = ?2")?
                .exists(params![mid, id])?;
            if !in_conversation {
                return Err(StoreError::NotFound(format!("no message {message_id} in {id}")));
            }
            let moved = conn
                .prepare_cached(
                    "UPDATE members SET read_message = ?3 WHERE conversation_id = ?1 AND user_id = ?2
                     AND read_message < ?3",
                )?
                .execute(params![id, caller, mid])?;
            if moved == 0 {
                // Already read this far: nothing new to tell anyone.
                return Ok(Written { value: (), events: Vec::new() });
            }
            // Every member, the reader included, so each of the reader's sessions sees it
            // too and seqs stay gapless.
            let events = c
                .members
                .iter()
                .map(|u| {
                    append_event(conn, u, now, |seq| ServerFrame::ReceiptRead {
                        seq,
                        conversation: id.clone(),
                        user: caller.clone(),
                        message: message_id.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Written { value: (), events })
        })
        .await
    }

    async fn block(&self, caller: &str, user: &str) -> Result<(), StoreError> {
        if caller == user {
            return Err(StoreError::BadRequest("you cannot block yourself".into()));
        }
        let (caller, user, now) = (caller.to_owned(), user.to_owned(), self.now());
        self.write(move |conn| {
            if !user_exists(conn, &user)? {
                return Err(StoreError::NotFound(format!("no user {user}")));
            }
            conn.prepare_cached(
                "INSERT OR IGNORE INTO blocks (blocker, blocked, created_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![caller, user, now])?;
            Ok(())
        })
        .await
    }

    async fn unblock(&self, caller: &str, user: &str) -> Result<(), StoreError> {
        let (caller, user) = (caller.to_owned(), user.to_owned());
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
                .execute(params![caller, user])?;
            Ok(())
        })
        .await
    }

    async fn blocks(&self, caller: &str) -> Result<Vec<String>, StoreError> {
        let caller = caller.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT blocked FROM blocks WHERE blocker = ?1 ORDER BY created_ms, blocked",
                )?
                .query_map([caller], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn blocked_by(&self, caller: &str, users: &[String]) -> Result<Vec<String>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let (caller, users) = (caller.to_owned(), users.to_vec());
        self.read(move |conn| {
            // One primary-key lookup per user (there is no index by `blocked`).
            let mut stmt =
                conn.prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?;
            let mut out = Vec::new();
            for u in users {
                if stmt.exists(params![u, caller])? {
                    out.push(u);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn search(
        &self,
        caller: &str,
        query: &str,
        conversation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let fts = fts_query(query)?;
        let (caller, conversation) = (caller.to_owned(), conversation.map(str::to_owned));
        self.read(move |conn| {
            if let Some(c) = &conversation {
                check_member(conn, &caller, c)?;
            }
            let rows = conn
                .prepare_cached(
                    "SELECT m.id, m.conversation_id, m.sender, m.client_msg_id, m.text,
                            m.attachments, m.ts
                     FROM messages_fts f
                     JOIN messages m ON m.id = f.rowid
                     JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = ?2
                     WHERE messages_fts MATCH ?1
                       AND (?3 IS NULL OR m.conversation_id = ?3)
                       AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?2 AND blocked = m.sender)
                     ORDER BY bm25(messages_fts), m.id DESC
                     LIMIT ?4",
                )?
                .query_map(params![fts, caller, conversation, limit as i64], row_to_message)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_message).collect()
        })
        .await
    }

    async fn typing_recipients(
        &self,
        sender: &str,
        conversation: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (sender, id) = (sender.to_owned(), conversation.to_owned());
        self.read(move |conn| {
            check_member(conn, &sender, &id)?;
            Ok(conn
                .prepare_cached(
                    "SELECT user_id FROM members WHERE conversation_id = ?1 AND user_id != ?2
                     AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = user_id AND blocked = ?2)",
                )?
                .query_map(params![id, sender], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn expire_ephemeral(&self, before_ms: i64) -> Result<Written<Vec<String>>, StoreError> {
        let now = self.now();
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "SELECT c.id FROM conversations c WHERE c.ephemeral = 1
                     AND COALESCE((SELECT MAX(ts) FROM messages m WHERE m.conversation_id = c.id),
                                  c.created_ms) < ?1
                     LIMIT 1000",
                )?
                .query_map([before_ms], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut events = Vec::new();
            for id in &ids {
                let Some(mut c) = load_conversation(conn, id)? else {
                    continue;
                };
                let members = std::mem::take(&mut c.members);
                events.extend(conversation_events(conn, &members, &c, now)?);
                // Their message events go too: a replay skips what no longer exists.
                conn.prepare_cached(
                    "DELETE FROM inbox WHERE message_id IN
                       (SELECT id FROM messages WHERE conversation_id = ?1)",
                )?
                .execute([id])?;
                conn.prepare_cached("DELETE FROM messages WHERE conversation_id = ?1")?
                    .execute([id])?;
                conn.prepare_cached("DELETE FROM members WHERE conversation_id = ?1")?
                    .execute([id])?;
                conn.prepare_cached("DELETE FROM conversations WHERE id = ?1")?
                    .execute([id])?;
            }
            Ok(Written { value: ids, events })
        })
        .await
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        self.user_counter(user, "SELECT last_seq FROM users WHERE id = ?1")
            .await
    }

    async fn events_after(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Replay, StoreError> {
        let user = user.to_owned();
        let after = after_seq.min(i64::MAX as u64) as i64;
        self.read(move |conn| {
            let last_seq: i64 = conn
                .prepare_cached("SELECT last_seq FROM users WHERE id = ?1")?
                .query_row([&user], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let first: Option<i64> = conn
                .prepare_cached("SELECT MIN(seq) FROM inbox WHERE user_id = ?1")?
                .query_row([&user], |r| r.get(0))?;
            let truncated = last_seq > after && first.is_none_or(|f| f > after + 1);
            let rows: Vec<(
                i64,
                Option<String>,
                Option<(i64, String, String, String, String, String, i64)>,
            )> = conn
                .prepare_cached(
                    "SELECT i.seq, i.frame, m.id, m.conversation_id, m.sender, m.client_msg_id,
                            m.text, m.attachments, m.ts
                     FROM inbox i LEFT JOIN messages m ON m.id = i.message_id
                     WHERE i.user_id = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3",
                )?
                .query_map(params![user, after, limit as i64], |r| {
                    let message = match r.get::<_, Option<i64>>(2)? {
                        Some(id) => Some((
                            id,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                        )),
                        None => None,
                    };
                    Ok((r.get(0)?, r.get(1)?, message))
                })?
                .collect::<Result<_, _>>()?;
            let frames = rows
                .into_iter()
                .map(|(seq, frame, message)| match (frame, message) {
                    (_, Some(m)) => Ok(ServerFrame::MessageNew {
                        seq: seq as u64,
                        message: to_message(m)?,
                    }),
                    (Some(json), None) => {
                        serde_json::from_str::<ServerFrame>(&json).map_err(json_err)
                    }
                    (None, None) => Err(StoreError::Internal(format!(
                        "inbox event {seq} lost its message"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Replay {
                frames,
                last_seq: last_seq as u64,
                truncated,
            })
        })
        .await
    }

    async fn acked_seq(&self, user: &str) -> Result<u64, StoreError> {
        self.user_counter(user, "SELECT acked_seq FROM users WHERE id = ?1")
            .await
    }

    async fn ack(&self, user: &str, seq: u64) -> Result<(), StoreError> {
        let (user, seq) = (user.to_owned(), seq.min(i64::MAX as u64) as i64);
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE users SET acked_seq = MIN(MAX(acked_seq, ?2), last_seq) WHERE id = ?1",
            )?
            .execute(params![user, seq])?;
            Ok(())
        })
        .await
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM inbox WHERE ts < ?1")?
                .execute([before_ms])? as u64)
        })
        .await
    }
}
