//! The embedded backend: SQLite, in the same file as the embedded queue. This module owns the
//! connections, the transactions, the migrations and the error mapping; the SQL of each
//! domain is in that domain's `sqlite.rs`.
//!
//! Writes run in the queue's writer thread through [`EmbeddedQueue::transact`]: one writer
//! for the whole file, so store writes and queue operations share group commits instead of
//! fighting over SQLite's lock. Reads run on a small pool of read-only connections (WAL lets
//! them proceed while the writer commits) in tokio's blocking pool.
//!
//! Every write is one transaction: its checks, its rows, and the inbox events it produces
//! (each recipient's `last_seq` incremented and the frame stored under that seq).

use crate::{Result, StoreError, pending_migrations};
use hubbub_queue::embedded::exec_cached;
use hubbub_queue::{Clock, EmbeddedQueue, QueueError, SystemClock, TransactError};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The schema's steps: version N is the first N of them, applied in order. Version 1: chat;
/// version 2: the feed; version 3: refresh token families and revocation; version 4: channels;
/// version 5: API keys and the runtime config; version 6: replies, threads, edits, deletes,
/// reactions and pins; version 7: webhooks and the server API; version 8: contacts; version 9:
/// reports.
const MIGRATIONS: [&str; 13] = [
    include_str!("../migrations/sqlite/001_chat.sql"),
    include_str!("../migrations/sqlite/002_feed.sql"),
    include_str!("../migrations/sqlite/003_refresh_token_families.sql"),
    include_str!("../migrations/sqlite/004_channels.sql"),
    include_str!("../migrations/sqlite/005_control.sql"),
    include_str!("../migrations/sqlite/006_messages.sql"),
    include_str!("../migrations/sqlite/007_server.sql"),
    include_str!("../migrations/sqlite/008_contacts.sql"),
    include_str!("../migrations/sqlite/009_reports.sql"),
    include_str!("../migrations/sqlite/010_mutes.sql"),
    include_str!("../migrations/sqlite/011_moderation.sql"),
    include_str!("../migrations/sqlite/012_inbox_runs.sql"),
    include_str!("../migrations/sqlite/013_fan_out_indexes.sql"),
];
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

/// A transaction (or a read) on one connection: what the domains' `*Tx` traits are
/// implemented on. It derefs to the connection.
pub(crate) struct Tx<'c> {
    conn: &'c Connection,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// A rule running on a [`Tx`]. Not `Send`: it runs where the connection is.
pub(crate) type Fut<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + 'c>>;

/// Run a rule to its end now. Every statement of a [`Tx`] is synchronous, so a rule that
/// awaits only its transaction is ready at its first poll; one that is not (it awaited
/// something else) is a bug, reported rather than blocked on inside the writer thread.
fn finish<T>(mut rule: Fut<'_, T>) -> Result<T> {
    match rule.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => Err(StoreError::Internal(
            "a store rule waited on something other than SQLite".into(),
        )),
    }
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                hubbub_queue::embedded::for_prepared_statements(&c)?;
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

/// The embedded store: [`Store`](crate::Store), [`FeedStore`](crate::FeedStore) and media
/// metadata on SQLite.
#[derive(Clone)]
pub struct SqliteStore {
    queue: EmbeddedQueue,
    readers: Arc<ReadPool>,
    clock: Arc<dyn Clock>,
    /// The latest runtime config version (see `control`).
    pub(crate) config_version: Arc<tokio::sync::watch::Sender<u64>>,
    /// The keys that seal contact notes (none: a note is refused).
    pub(crate) note_keys: Option<Arc<crate::contacts::NoteKeys>>,
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
    pub async fn open(queue: EmbeddedQueue) -> Result<Self> {
        let readers = Arc::new(ReadPool {
            path: queue.path().to_owned(),
            idle: Mutex::new(Vec::new()),
        });
        let store = SqliteStore {
            queue,
            readers,
            clock: Arc::new(SystemClock),
            config_version: Arc::new(tokio::sync::watch::Sender::new(0)),
            note_keys: None,
        };
        store.transact(migrate).await?;
        let version = crate::control::ControlStore::runtime_config(&store)
            .await?
            .version;
        store.config_version.send_replace(version);
        Ok(store)
    }

    /// Seal contact notes with these keys (without, a note is refused).
    pub fn with_note_keys(mut self, keys: crate::contacts::NoteKeys) -> Self {
        self.note_keys = Some(Arc::new(keys));
        self
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Run `rule` in a write transaction (in the writer thread, committed with its group).
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send + 'static,
    ) -> Result<T> {
        self.transact(move |conn| finish(rule(&Tx { conn }))).await
    }

    /// [`Self::write`], answered once committed without waiting for an fsync: for writes a
    /// power failure may lose at no cost to a promise made to a client (a session's acks).
    pub(crate) async fn write_lazy<T: Send + 'static>(
        &self,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send + 'static,
    ) -> Result<T> {
        self.transact_as(false, move |conn| finish(rule(&Tx { conn })))
            .await
    }

    /// Run `rule` on a read connection; each statement sees the latest commit.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.with(|conn| finish(rule(&Tx { conn }))))
            .await
            .map_err(|e| StoreError::Internal(format!("read task: {e}")))?
    }

    /// Run `rule` on a read connection in one read transaction: its statements agree.
    pub(crate) async fn snapshot<T: Send + 'static>(
        &self,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            pool.with(|conn| {
                exec_cached(conn, "BEGIN")?;
                let out = finish(rule(&Tx { conn }));
                // A read transaction wrote nothing: ending it is all COMMIT does here.
                exec_cached(conn, "COMMIT")?;
                out
            })
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task: {e}")))?
    }

    async fn transact<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.transact_as(true, f).await
    }

    /// Run `f` in the writer thread, answered once committed and, if `durable`, fsynced.
    async fn transact_as<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let f = move |conn: &Connection, _: &mut hubbub_queue::Outbox<'_, '_>| f(conn);
        let done = if durable {
            self.queue.transact(f).await
        } else {
            self.queue.transact_lazy(f).await
        };
        done.map_err(|e| match e {
            TransactError::Caller(e) => e,
            TransactError::Queue(e) => e.into(),
        })
    }
}

/// Bring the store's schema to this build's version, in the opening transaction.
fn migrate(conn: &Connection) -> Result<()> {
    let found: Option<i64> = conn
        .query_row(
            "SELECT version FROM hubbub_components WHERE component = 'store'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let pending = pending_migrations(found, &MIGRATIONS)?;
    if pending.is_empty() {
        return Ok(());
    }
    for step in pending {
        conn.execute_batch(step)?;
    }
    let sql = match found {
        None => "INSERT INTO hubbub_components (component, version) VALUES ('store', ?1)",
        Some(_) => "UPDATE hubbub_components SET version = ?1 WHERE component = 'store'",
    };
    conn.execute(sql, [MIGRATIONS.len() as i64])?;
    Ok(())
}
