//! The distributed backend: PostgreSQL through a `deadpool-postgres` pool. This module owns
//! the pool, the transactions, the migrations and the error mapping; the SQL of each domain
//! is in that domain's `postgres.rs`.
//!
//! The same tables and the same rules as the SQLite store, so both pass one conformance suite
//! (`tests/it/conformance.rs`). Every write is one transaction (READ COMMITTED; the per-user
//! `last_seq` counters are row-locked by the `UPDATE ... RETURNING` that takes the next seq,
//! so concurrent writers on several machines still number each user's events without gaps or
//! repeats).
//!
//! Migrations (`migrations/postgres/NNN_*.sql`) are applied under an advisory lock at connect
//! time and recorded in `hubbub_schema`. A lost connection, a refused connection, a deadlock
//! or a serialization failure is `Unavailable` (nothing was committed; the caller retries),
//! except at a write's `COMMIT`: there a lost connection leaves the outcome unknown, which is
//! `Internal` (see [`commit_err`]).

use crate::{StoreError, pending_migrations};
use deadpool_postgres::{GenericClient, Pool, Runtime};
use hubbub_queue::clock::now_ms;
use std::future::Future;
use std::pin::Pin;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

/// The schema's steps: version N is the first N of them, applied in order. Version 1: chat,
/// the feed, media; version 2: refresh token families and revocation; version 3: channels;
/// version 4: API keys and the runtime config; version 5: replies, threads, edits, deletes,
/// reactions and pins; version 6: webhooks and the server API (`006_server.sql`); version 7:
/// contacts; version 8: reports; version 9: mutes; version 10: moderation; version 11: API
/// keys listed in creation order; version 12: a group's `message.new` events as runs; version
/// 13: the fan-out's answer as a row per message.
const MIGRATIONS: [&str; 13] = [
    include_str!("../migrations/postgres/001_chat_feed_media.sql"),
    include_str!("../migrations/postgres/002_refresh_token_families.sql"),
    include_str!("../migrations/postgres/003_channels.sql"),
    include_str!("../migrations/postgres/004_control.sql"),
    include_str!("../migrations/postgres/005_messages.sql"),
    include_str!("../migrations/postgres/006_server.sql"),
    include_str!("../migrations/postgres/007_contacts.sql"),
    include_str!("../migrations/postgres/008_reports.sql"),
    include_str!("../migrations/postgres/009_mutes.sql"),
    include_str!("../migrations/postgres/010_moderation.sql"),
    include_str!("../migrations/postgres/011_api_key_order.sql"),
    include_str!("../migrations/postgres/012_inbox_runs.sql"),
    include_str!("../migrations/postgres/013_fan_out_arrays.sql"),
];

/// The PostgreSQL store: [`Store`](crate::Store), [`FeedStore`](crate::FeedStore) and media
/// metadata.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// `message.send` jobs for the group-commit task (see `chat::postgres`).
    pub(crate) sends: tokio::sync::mpsc::Sender<crate::chat::postgres::SendJob>,
    /// The runtime config versions this process knows (see `control`).
    pub(crate) config_watch: std::sync::Arc<crate::control::postgres::ConfigWatch>,
    /// The keys that seal contact notes (none: a note is refused).
    pub(crate) note_keys: Option<std::sync::Arc<crate::contacts::NoteKeys>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
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
pub(crate) fn commit_err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if c.code().starts_with("40") => pg(e),
        _ => StoreError::Internal(format!("outcome unknown: {e}")),
    }
}

pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];
pub(crate) type Row = tokio_postgres::Row;

/// Where a rule's statements go: a pooled connection outside any transaction (reads), or a
/// transaction (writes, snapshots, a savepoint of a batch). What the domains' `*Tx` traits
/// are implemented on.
pub(crate) enum Tx<'c> {
    Client(&'c deadpool_postgres::Client),
    Tx(&'c deadpool_postgres::Transaction<'c>),
}

/// One prepared (and cached) statement on either kind of [`Tx`].
macro_rules! on_tx {
    ($tx:expr, $method:ident, $sql:expr, $p:expr) => {{
        match $tx {
            Tx::Client(c) => {
                let st = c.prepare_cached($sql).await.map_err(pg)?;
                c.$method(&st, $p).await.map_err(pg)
            }
            Tx::Tx(t) => {
                let st = t.prepare_cached($sql).await.map_err(pg)?;
                t.$method(&st, $p).await.map_err(pg)
            }
        }
    }};
}

impl Tx<'_> {
    /// Run a statement; how many rows it changed.
    pub(crate) async fn exec(&self, sql: &str, p: Params<'_>) -> Result<u64, StoreError> {
        on_tx!(self, execute, sql, p)
    }

    /// Every row of a query.
    pub(crate) async fn rows(&self, sql: &str, p: Params<'_>) -> Result<Vec<Row>, StoreError> {
        on_tx!(self, query, sql, p)
    }

    /// The row of a query that returns at most one.
    pub(crate) async fn opt(&self, sql: &str, p: Params<'_>) -> Result<Option<Row>, StoreError> {
        on_tx!(self, query_opt, sql, p)
    }

    /// The row of a query that returns exactly one.
    pub(crate) async fn one(&self, sql: &str, p: Params<'_>) -> Result<Row, StoreError> {
        on_tx!(self, query_one, sql, p)
    }

    /// Whether a query returns a row.
    pub(crate) async fn exists(&self, sql: &str, p: Params<'_>) -> Result<bool, StoreError> {
        Ok(self.opt(sql, p).await?.is_some())
    }
}

/// A rule running on a [`Tx`].
pub(crate) type Fut<'c, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>>;

impl PgStore {
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    pub(crate) fn now(&self) -> i64 {
        now_ms()
    }

    /// Run `rule` in a transaction, committing on success (an error of the commit itself
    /// leaves the outcome unknown: see [`commit_err`]).
    pub(crate) async fn write<T>(
        &self,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send,
    ) -> Result<T, StoreError> {
        self.write_as(true, rule).await
    }

    /// [`Self::write`] without waiting for the WAL to reach the disk
    /// (`synchronous_commit = off` for this transaction): for writes a crash of the database
    /// may lose at no cost to a promise made to a client (a session's acks).
    pub(crate) async fn write_lazy<T>(
        &self,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send,
    ) -> Result<T, StoreError> {
        self.write_as(false, rule).await
    }

    async fn write_as<T>(
        &self,
        synchronous: bool,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        if !synchronous {
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await
                .map_err(pg)?;
        }
        let value = rule(&Tx::Tx(&tx)).await?;
        tx.commit().await.map_err(commit_err)?;
        Ok(value)
    }

    /// Run `rule` on a pooled connection, each statement on its own.
    pub(crate) async fn read<T>(
        &self,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send,
    ) -> Result<T, StoreError> {
        let client = self.client().await?;
        rule(&Tx::Client(&client)).await
    }

    /// Run `rule` in one read-only snapshot (REPEATABLE READ): its statements agree.
    pub(crate) async fn snapshot<T>(
        &self,
        rule: impl for<'c> FnOnce(&'c Tx<'c>) -> Fut<'c, T> + Send,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let value = rule(&Tx::Tx(&tx)).await?;
        // Read only: a failed commit lost nothing, so it maps like any read error.
        tx.commit().await.map_err(pg)?;
        Ok(value)
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
        let sends = crate::chat::postgres::start_sends(pool.clone());
        let config_watch = std::sync::Arc::new(crate::control::postgres::ConfigWatch::new(url));
        let store = PgStore {
            pool,
            sends,
            config_watch,
            note_keys: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Seal contact notes with these keys (without, a note is refused).
    pub fn with_note_keys(mut self, keys: crate::contacts::NoteKeys) -> Self {
        self.note_keys = Some(std::sync::Arc::new(keys));
        self
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let t = Tx::Tx(&tx);
        // One migrator at a time, across processes.
        t.exec("SELECT pg_advisory_xact_lock(7700)", &[]).await?;
        let fresh: bool = t
            .one("SELECT to_regclass('hubbub_schema') IS NULL", &[])
            .await?
            .get(0);
        if fresh {
            t.exec(
                "CREATE TABLE hubbub_schema (component TEXT PRIMARY KEY, version INT NOT NULL)",
                &[],
            )
            .await?;
        }
        let found: Option<i32> = t
            .opt(
                "SELECT version FROM hubbub_schema WHERE component = 'store'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        let pending = pending_migrations(found.map(i64::from), &MIGRATIONS)?;
        if pending.is_empty() {
            return Ok(());
        }
        for step in pending {
            tx.batch_execute(step).await.map_err(pg)?;
        }
        let sql = match found {
            None => "INSERT INTO hubbub_schema (component, version) VALUES ('store', $1)",
            Some(_) => "UPDATE hubbub_schema SET version = $1 WHERE component = 'store'",
        };
        t.exec(sql, &[&(MIGRATIONS.len() as i32)]).await?;
        tx.commit().await.map_err(commit_err)?;
        Ok(())
    }
}
