//! The embedded queue and log: durable in one SQLite file, one writer thread, group commit.
//!
//! # Storage
//! One SQLite database (WAL journal, `synchronous=FULL` but see below, `application_id` 0x48756262 "Hubb"),
//! by default `<data-dir>/hubbub.db`, shared with the store so a service can write its state
//! and its outgoing messages in one transaction. Tables (see `schema_v1.sql`):
//! - `q_messages`: one row per message of every queue. A DLQ is the queue `<name>.dlq`.
//! - `q_dedupe`: dedupe ids seen within the window, with the id of the first message.
//! - `q_counters`: per queue, messages expired past their TTL and moved to the DLQ.
//! - `log_meta`, `log_entries`, `log_groups`: logs, their entries, consumer groups.
//! - `hubbub_components`: the schema version of each component sharing the file.
//!
//! # A message's state
//! Two columns say where a message is; there is no separate state machine to get out of step:
//! - `visible_ms <= now`: can be received (ready, or its lease lapsed).
//! - `visible_ms > now` and `token` set: in flight until `visible_ms`.
//! - `visible_ms > now` and `token` NULL: delayed (send delay or nack delay).
//! - `visible_ms = i64::MAX`: waits behind an earlier message with the same key. When the
//!   key's head leaves (ack, expiry, DLQ), the next one gets `visible_ms = ready_ms`.
//!
//! Receiving takes rows in `(visible_ms, id)` order, drops those past their TTL (counted),
//! moves those received `max_receives` times to the DLQ (counted), and leases the rest: new
//! random `token`, `visible_ms = now + visibility`, `receive_count + 1`. A receipt is
//! `<id>.<token hex>`; it is valid while the token matches and the lease has not lapsed.
//!
//! With `max_run` > 1, leasing a keyed head also leases the key's next messages by id (a run)
//! while they wait on the key (or their lease lapsed) and are due; they stay in flight with the
//! head, and since `promote` only wakes a key's smallest id when it waits, the key's next
//! message becomes visible when the whole run has left. A visible keyed message that was
//! handed out before (`receive_count > 0`) with an earlier message of its key still present is
//! a lapsed run member: receiving sets it back to waiting instead of leasing it.
//!
//! # Durability and recovery
//! Every operation runs in the writer thread inside a transaction that is committed before its
//! caller is answered. After `kill -9` SQLite rolls back any uncommitted transaction on the
//! next open, so: a send that returned is there; an ack that returned is gone for good; a
//! lease is only a time in a row, so an unacked message becomes receivable again when its
//! visibility ends, restart or not. Nothing is kept in memory that recovery would need.
//!
//! Against a power failure (the OS losing written pages), a commit that carries a send, an
//! append, a redrive, a declaration or a caller's [`EmbeddedQueue::transact`] is fsynced
//! (`synchronous=FULL`) before anyone is answered. A commit of only operations whose loss can
//! only bring a message back (receive, ack, extend, nack, a consumer group's offset, log
//! retention) is not fsynced: lost, a message is received again (at-least-once, as after a
//! lapsed lease), never lost, and a receive count may be one lower. Since the WAL is written
//! in order, the next fsynced commit (or a checkpoint) makes it durable with everything
//! before it. The same holds for relayed sends and appends ([`SendOptions::relay`],
//! [`Log::append_relayed`]): their sender holds the message durably elsewhere (the router
//! acks `main` only after its relayed forward), or has answered no one yet (an edge putting
//! a client's write on `main`: the `ok` waits for the service's fsynced store write, which
//! makes everything before it durable too); lost in a power failure, the message is sent
//! again from that copy, or by the client, which had no `ok`. This takes the fsyncs of a
//! chat message's path from seven to one: the service's store write.
//!
//! # Bad files
//! Opening a file that is not SQLite, or a SQLite file of another application, or one written
//! by a newer schema, fails with [`QueueError::Corrupt`] naming the file. A full disk (or the
//! `max_db_bytes` cap) fails the operation with [`QueueError::DiskFull`] and rolls it back.

mod ops;
mod writer;

use crate::types::*;
use crate::{Clock, Log, Queue, QueueError, ReceiptError, SystemClock};
use async_trait::async_trait;
use ops::map_sql;
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};
use std::time::Duration;
use writer::{Ctx, Job, Msg, Parked, Reply, Shared};

/// The `application_id` of hubbub database files ("Hubb").
pub const APPLICATION_ID: i32 = 0x4875_6262;
/// The queue component's schema version in this build.
const SCHEMA_VERSION: i64 = 1;
/// How long a long poll sleeps at most before looking again (for visibility lapses).
const MAX_POLL_SLEEP: Duration = Duration::from_millis(250);
/// How often the checkpoint thread copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(1000);

/// Settings of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Largest message body accepted (default 256 KiB).
    pub max_body_bytes: usize,
    /// Settings of queues that were not declared.
    pub default_queue: QueueConfig,
    /// How long a dedupe id is remembered (default 5 minutes).
    pub dedupe_window: Duration,
    /// Cap on the database size; past it writes fail with `DiskFull` (default: none).
    pub max_db_bytes: Option<u64>,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            max_body_bytes: 256 * 1024,
            default_queue: QueueConfig::default(),
            dedupe_window: Duration::from_secs(300),
            max_db_bytes: None,
        }
    }
}

/// The embedded [`Queue`] and [`Log`] backend. Cheap to clone; all clones share one writer.
#[derive(Clone, Debug)]
pub struct EmbeddedQueue {
    jobs: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    max_body_bytes: usize,
}

impl EmbeddedQueue {
    /// Open (or create) the database file at `path` with the system clock.
    pub fn open(path: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self, QueueError> {
        Self::open_with_clock(path, config, Arc::new(SystemClock))
    }

    /// Open (or create) the database file at `path` with the given clock.
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        config: EmbeddedConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_database(&path, &config)?;
        let shared = Arc::new(Shared {
            path,
            clock,
            queue_configs: RwLock::new(HashMap::new()),
            default_queue: config.default_queue,
            dedupe_window: config.dedupe_window,
            fsynced: Default::default(),
        });
        let (tx, rx) = mpsc::channel();
        // Dropped when the writer has closed its connection: tells the checkpointer to stop.
        let (writer_done, writer_gone) = mpsc::channel::<()>();
        let checkpoint_conn =
            Connection::open(&shared.path).map_err(|e| map_sql(&shared.path, e))?;
        std::thread::Builder::new()
            .name("hubbub-queue-checkpoint".into())
            .spawn(move || checkpointer(checkpoint_conn, writer_gone))
            .map_err(|e| QueueError::Storage(format!("cannot start the checkpoint thread: {e}")))?;
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("hubbub-queue-writer".into())
            .spawn(move || {
                writer::run(conn, rx, thread_shared);
                drop(writer_done);
            })
            .map_err(|e| QueueError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedQueue {
            jobs: tx,
            shared,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Commits fsynced since the queue was opened (those someone waited on for durability;
    /// see "Durability and recovery").
    pub fn fsynced_commits(&self) -> u64 {
        self.shared
            .fsynced
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Make every in-flight message receivable now; returns how many were in flight.
    ///
    /// Only for a process that knows it is the sole user of the file (it holds the data
    /// directory's lock): after a crash, the leases of the dead process would otherwise hold
    /// their messages, and every later message with the same key, until their visibility
    /// timeouts end. Receive counts are kept, so a message that crashes its consumer every
    /// time still reaches the dead-letter queue.
    pub async fn release_all_leases(&self) -> Result<u64, QueueError> {
        self.run(|ctx| {
            let now = ctx.now();
            let released = ctx
                .conn
                .prepare_cached(
                    "UPDATE q_messages SET visible_ms = ?1, token = NULL
                     WHERE token IS NOT NULL AND visible_ms > ?1 AND visible_ms < ?2",
                )
                .and_then(|mut s| s.execute(rusqlite::params![now, ops::WAITING_ON_KEY]))
                .map_err(|e| ctx.sql_err(e))?;
            Ok(released as u64)
        })
        .await
    }

    /// Run `f` in the writer thread, inside a transaction; answer once it is committed and
    /// fsynced.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        self.run_as(true, f).await
    }

    /// Run `f` as [`Self::run`] does, but answer once it is committed, fsynced or not: for
    /// operations whose loss in a power failure only brings a message back (leases, acks,
    /// consumer offsets). See "Durability and recovery" above.
    async fn run_lazy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        self.run_as(false, f).await
    }

    async fn run_as<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work = Box::new(move |ctx: &mut Ctx<'_>| -> Reply {
            let result = ctx.atomically(f);
            Box::new(move |commit| {
                let _ = tx.send(match commit {
                    Ok(()) => result,
                    Err(e) => Err(e.to_queue_error()),
                });
            })
        });
        self.jobs
            .send(Msg::Job(Job { work, durable }))
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }
}

/// What a [`EmbeddedQueue::transact`] closure may enqueue, in the same transaction as its own
/// writes (a transactional outbox).
pub struct Outbox<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
    max_body_bytes: usize,
}

impl Outbox<'_, '_> {
    /// Send messages to a queue; they become visible only if the whole transaction commits.
    pub fn send(
        &mut self,
        queue: &str,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<SendOutcome>, QueueError> {
        validate_name(queue)?;
        for m in &messages {
            check_body(m.body.len(), self.max_body_bytes)?;
        }
        ops::send_batch(self.ctx, queue, messages)
    }

    /// Append entries to a log, in the same transaction.
    pub fn append(&mut self, log: &str, bodies: Vec<Vec<u8>>) -> Result<Vec<u64>, QueueError> {
        validate_name(log)?;
        ops::log_append(self.ctx, log, bodies)
    }
}

/// Why a [`EmbeddedQueue::transact`] failed: the caller's own error, or the queue's.
#[derive(Debug, thiserror::Error)]
pub enum TransactError<E> {
    /// The closure returned an error; nothing it wrote or sent was kept.
    #[error(transparent)]
    Caller(E),
    /// The queue failed (including the commit); nothing was kept.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl EmbeddedQueue {
    /// Run `f` in the writer thread, in one transaction with everything it sends through the
    /// [`Outbox`]: the caller's rows and its outgoing messages commit together, or not at all.
    /// This is how a service on the embedded backend writes state and events atomically.
    /// `f` must be quick: every other queue operation waits behind it.
    pub async fn transact<T, E>(
        &self,
        f: impl FnOnce(&Connection, &mut Outbox<'_, '_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, TransactError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.transact_as(true, f).await
    }

    /// [`Self::transact`], answered once committed, fsynced or not: for writes whose loss in
    /// a power failure costs nothing a client was promised (a session's acks, whose loss at
    /// worst sends a push notification for an event already seen). A crash of the process
    /// loses nothing either way, and a later fsynced commit makes it durable with the rest
    /// of the WAL (see "Durability and recovery").
    pub async fn transact_lazy<T, E>(
        &self,
        f: impl FnOnce(&Connection, &mut Outbox<'_, '_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, TransactError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.transact_as(false, f).await
    }

    async fn transact_as<T, E>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection, &mut Outbox<'_, '_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, TransactError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let max_body_bytes = self.max_body_bytes;
        // The caller's error must roll its savepoint back, so the job fails with a queue error
        // and the caller's own error travels back beside it, in this slot.
        let slot: Arc<std::sync::Mutex<Option<E>>> = Arc::new(std::sync::Mutex::new(None));
        let job_slot = slot.clone();
        let result = self
            .run_as(durable, move |ctx| {
                let conn = ctx.conn;
                let mut outbox = Outbox {
                    ctx,
                    max_body_bytes,
                };
                f(conn, &mut outbox).map_err(|e| {
                    *job_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    QueueError::InvalidArgument("transaction aborted by its caller".into())
                })
            })
            .await;
        let caller_err = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (result, caller_err) {
            (_, Some(e)) => Err(TransactError::Caller(e)),
            (Ok(v), None) => Ok(v),
            (Err(e), None) => Err(TransactError::Queue(e)),
        }
    }
}

/// Prepared statements kept per connection: more than the queue and the store use together.
pub const STATEMENT_CACHE: usize = 512;

/// Set a connection up to run the same statements over and over, as the writer and the
/// store's readers do:
/// - a statement cache larger than the statements the queue and the store use together
///   (rusqlite's default of 16 re-parsed SQL on most statements);
/// - the query planner stability guarantee (QPSG): without it, SQLite re-prepares a statement
///   whenever a new value is bound to a parameter its plan looked at, which this SQLite does
///   for every `LIMIT ?` (a receive's batch size differs between receivers). Measured: 18% of
///   the writer thread was spent re-preparing statements.
pub fn for_prepared_statements(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Run one statement that returns no rows (`BEGIN`, `SAVEPOINT x`, `COMMIT` ...) through the
/// connection's statement cache: `execute_batch` would parse it again on every call.
pub fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn open_database(path: &PathBuf, config: &EmbeddedConfig) -> Result<Connection, QueueError> {
    let storage = |e: rusqlite::Error| map_sql(path, e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            QueueError::Storage(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let conn = Connection::open(path).map_err(storage)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(storage)?;
    // The first read of the header: fails with NotADatabase for a foreign or damaged file.
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(storage)?;
    let objects: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(storage)?;
    if app_id != APPLICATION_ID && (app_id != 0 || objects > 0) {
        return Err(QueueError::Corrupt {
            path: path.clone(),
            reason: format!(
                "a SQLite database of another application (application_id {app_id:#x}); \
                 point hubbub at its own data directory"
            ),
        });
    }
    for_prepared_statements(&conn).map_err(storage)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -65536;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA application_id = {APPLICATION_ID};"
    ))
    .map_err(storage)?;
    if let Some(max) = config.max_db_bytes {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(storage)?;
        let pages = (max / page.max(512) as u64).max(1);
        let _: i64 = conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })
            .map_err(storage)?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS hubbub_components (
            component TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID",
    )
    .map_err(storage)?;
    let version: Option<i64> = conn
        .query_row(
            "SELECT version FROM hubbub_components WHERE component = 'queue'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage)?;
    match version {
        None => {
            let tx = conn.unchecked_transaction().map_err(storage)?;
            tx.execute_batch(include_str!("schema_v1.sql"))
                .map_err(storage)?;
            tx.execute(
                "INSERT INTO hubbub_components (component, version) VALUES ('queue', ?1)",
                [SCHEMA_VERSION],
            )
            .map_err(storage)?;
            tx.commit().map_err(storage)?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(QueueError::Corrupt {
                path: path.clone(),
                reason: format!(
                    "written by a newer hubbub (queue schema {v}, this build knows {SCHEMA_VERSION})"
                ),
            });
        }
    }
    Ok(conn)
}

/// Copy committed WAL pages back into the database file, off the writer thread.
///
/// The writer connection has automatic checkpoints turned off: done there, each one would stall
/// every commit behind it while pages are copied and the database file is fsynced. Passive
/// checkpoints never block the writer; when one has copied everything, the next commit starts
/// the WAL over from its beginning, so it does not grow without bound. The thread ends as soon
/// as the writer has closed; closing last, its connection folds the WAL into the database file
/// and removes it, as SQLite does for the last connection.
fn checkpointer(conn: Connection, writer_gone: mpsc::Receiver<()>) {
    if let Err(e) = conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 1000;") {
        tracing::warn!(error = %e, "checkpoint connection setup failed");
    }
    // Until the writer is gone (or says so), checkpoint every interval.
    while let Err(mpsc::RecvTimeoutError::Timeout) = writer_gone.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn declare(&self, queue: &str, config: QueueConfig) -> Result<(), QueueError> {
        validate_name(queue)?;
        if config.max_receives == 0 {
            return Err(QueueError::InvalidArgument(
                "max_receives must be at least 1".into(),
            ));
        }
        let mut map = self
            .shared
            .queue_configs
            .write()
            .unwrap_or_else(|p| p.into_inner());
        map.insert(queue.to_owned(), config);
        Ok(())
    }

    async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<SendOutcome>, QueueError> {
        validate_name(queue)?;
        for m in &messages {
            check_body(m.body.len(), self.max_body_bytes)?;
            if let Some(key) = &m.opts.key {
                validate_name(key)
                    .map_err(|_| QueueError::InvalidArgument(format!("invalid key {key:?}")))?;
            }
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // A batch of only relayed messages needs no fsync: see "Durability and recovery".
        let durable = messages.iter().any(|m| !m.opts.relay);
        let queue = queue.to_owned();
        self.run_as(durable, move |ctx| ops::send_batch(ctx, &queue, messages))
            .await
    }

    async fn receive(
        &self,
        queue: &str,
        opts: ReceiveOptions,
    ) -> Result<Vec<Delivery>, QueueError> {
        validate_name(queue)?;
        check_max(opts.max)?;
        let deadline = std::time::Instant::now() + opts.wait;
        loop {
            // The receive waits in the writer (see `writer`): a commit that makes messages of
            // the queue visible answers it, and it looks again at least every MAX_POLL_SLEEP
            // (for lapsed leases) or when a delayed message is due.
            let now = std::time::Instant::now();
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.jobs
                .send(Msg::Park(Parked {
                    queue: queue.to_owned(),
                    max: opts.max,
                    max_run: opts.max_run,
                    visibility: opts.visibility,
                    until: now + deadline.saturating_duration_since(now).min(MAX_POLL_SLEEP),
                    reply: tx,
                }))
                .map_err(|_| QueueError::Closed)?;
            let found = rx.await.map_err(|_| QueueError::Closed)??;
            if !found.is_empty() || std::time::Instant::now() >= deadline {
                return Ok(found);
            }
        }
    }

    async fn ack_batch(
        &self,
        queue: &str,
        receipts: &[Receipt],
    ) -> Result<Vec<Result<(), ReceiptError>>, QueueError> {
        validate_name(queue)?;
        let queue = queue.to_owned();
        let receipts = receipts.to_vec();
        self.run_lazy(move |ctx| ops::ack_batch(ctx, &queue, &receipts))
            .await
    }

    async fn extend(
        &self,
        queue: &str,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        validate_name(queue)?;
        let (queue, receipt) = (queue.to_owned(), receipt.clone());
        self.run_lazy(move |ctx| ops::set_visibility(ctx, &queue, &receipt, visibility, false))
            .await
    }

    async fn nack(
        &self,
        queue: &str,
        receipt: &Receipt,
        delay: Duration,
    ) -> Result<(), QueueError> {
        validate_name(queue)?;
        let (queue, receipt) = (queue.to_owned(), receipt.clone());
        self.run_lazy(move |ctx| ops::set_visibility(ctx, &queue, &receipt, delay, true))
            .await
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        validate_name(queue)?;
        let queue = queue.to_owned();
        self.run(move |ctx| ops::stats(ctx, &queue)).await
    }

    async fn dlq_list(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        validate_name(queue)?;
        check_max(max)?;
        let queue = queue.to_owned();
        self.run(move |ctx| ops::dlq_list(ctx, &queue, max)).await
    }

    async fn redrive(&self, queue: &str, max: usize) -> Result<usize, QueueError> {
        validate_name(queue)?;
        check_max(max)?;
        let queue = queue.to_owned();
        self.run(move |ctx| ops::redrive(ctx, &queue, max)).await
    }
}

impl EmbeddedQueue {
    /// Append, fsynced before the answer or not (relayed; see "Durability and recovery").
    async fn append_as(
        &self,
        durable: bool,
        log: &str,
        bodies: Vec<Vec<u8>>,
    ) -> Result<Vec<u64>, QueueError> {
        validate_name(log)?;
        for b in &bodies {
            check_body(b.len(), self.max_body_bytes)?;
        }
        let log = log.to_owned();
        self.run_as(durable, move |ctx| ops::log_append(ctx, &log, bodies))
            .await
    }
}

#[async_trait]
impl Log for EmbeddedQueue {
    async fn append(&self, log: &str, bodies: Vec<Vec<u8>>) -> Result<Vec<u64>, QueueError> {
        self.append_as(true, log, bodies).await
    }

    async fn append_relayed(
        &self,
        log: &str,
        bodies: Vec<Vec<u8>>,
    ) -> Result<Vec<u64>, QueueError> {
        self.append_as(false, log, bodies).await
    }

    async fn read(&self, log: &str, from: u64, max: usize) -> Result<Vec<LogEntry>, QueueError> {
        validate_name(log)?;
        check_max(max)?;
        let log = log.to_owned();
        self.run(move |ctx| ops::log_read(ctx, &log, from, max))
            .await
    }

    async fn create_group(
        &self,
        log: &str,
        group: &str,
        start: StartAt,
    ) -> Result<u64, QueueError> {
        validate_name(log)?;
        validate_name(group)?;
        let (log, group) = (log.to_owned(), group.to_owned());
        self.run(move |ctx| ops::create_group(ctx, &log, &group, start))
            .await
    }

    async fn group_read(
        &self,
        log: &str,
        group: &str,
        max: usize,
    ) -> Result<Vec<LogEntry>, QueueError> {
        validate_name(log)?;
        validate_name(group)?;
        check_max(max)?;
        let (log, group) = (log.to_owned(), group.to_owned());
        self.run(move |ctx| ops::group_read(ctx, &log, &group, max))
            .await
    }

    async fn commit(&self, log: &str, group: &str, next: u64) -> Result<(), QueueError> {
        validate_name(log)?;
        validate_name(group)?;
        let (log, group) = (log.to_owned(), group.to_owned());
        self.run_lazy(move |ctx| ops::commit(ctx, &log, &group, next))
            .await
    }

    async fn apply_retention(&self, log: &str, retention: Retention) -> Result<u64, QueueError> {
        validate_name(log)?;
        let log = log.to_owned();
        self.run_lazy(move |ctx| ops::apply_retention(ctx, &log, retention))
            .await
    }

    async fn log_stats(&self, log: &str) -> Result<LogStats, QueueError> {
        validate_name(log)?;
        let log = log.to_owned();
        self.run(move |ctx| ops::log_stats(ctx, &log)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `PRAGMA synchronous` says inside a job (2 = FULL, 1 = NORMAL).
    fn synchronous(ctx: &mut Ctx<'_>) -> Result<i64, QueueError> {
        ctx.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(|e| ctx.sql_err(e))
    }

    /// How often a `LIMIT ?` statement was re-prepared over binds of different limits.
    fn reprepares(conn: &Connection) -> i32 {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        )
        .expect("table");
        let mut stmt = conn
            .prepare_cached("SELECT id FROM t ORDER BY id LIMIT ?1")
            .expect("prepare");
        for limit in [1, 2, 1, 2] {
            let ids: Vec<i64> = stmt
                .query_map([limit], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            assert_eq!(ids.len(), limit as usize);
        }
        stmt.get_status(rusqlite::StatementStatus::RePrepare)
    }

    #[test]
    fn statements_are_not_prepared_again_for_each_limit() {
        let plain = Connection::open_in_memory().expect("open");
        assert!(
            reprepares(&plain) > 0,
            "this SQLite re-prepares on a new LIMIT"
        );
        let tuned = Connection::open_in_memory().expect("open");
        for_prepared_statements(&tuned).expect("tune");
        assert_eq!(reprepares(&tuned), 0);
    }

    #[tokio::test]
    async fn only_a_commit_someone_waits_on_for_durability_is_fsynced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let q =
            EmbeddedQueue::open(dir.path().join("q.db"), EmbeddedConfig::default()).expect("open");
        assert_eq!(q.run(synchronous).await.expect("durable job"), 2);
        assert_eq!(q.run_lazy(synchronous).await.expect("lazy job"), 1);
        assert_eq!(q.run(synchronous).await.expect("durable again"), 2);
        // A lazy job sharing a commit with a durable one gets the fsync too.
        let (lazy, durable) = tokio::join!(q.run_lazy(synchronous), q.run(synchronous));
        let (lazy, durable) = (lazy.expect("lazy"), durable.expect("durable"));
        assert!(durable == 2 && (lazy == 1 || lazy == 2));
        // A lazy operation's work is committed all the same: an acked message is gone.
        q.send("jobs", b"x".to_vec(), SendOptions::default())
            .await
            .expect("send");
        let got = q
            .receive(
                "jobs",
                ReceiveOptions {
                    max: 1,
                    wait: Duration::ZERO,
                    visibility: Duration::from_secs(30),
                    max_run: 1,
                },
            )
            .await
            .expect("receive");
        q.ack("jobs", &got[0].receipt).await.expect("ack");
        drop(q);
        let q = EmbeddedQueue::open(dir.path().join("q.db"), EmbeddedConfig::default())
            .expect("reopen");
        assert_eq!(q.stats("jobs").await.expect("stats").visible, 0);
    }

    fn long_poll(max: usize) -> ReceiveOptions {
        ReceiveOptions {
            max,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(30),
            max_run: 1,
        }
    }

    #[tokio::test]
    async fn parked_receives_are_handed_a_send_in_the_order_they_came() {
        let dir = tempfile::tempdir().expect("temp dir");
        let q =
            EmbeddedQueue::open(dir.path().join("q.db"), EmbeddedConfig::default()).expect("open");
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let q = q.clone();
            waiters.push(tokio::spawn(async move {
                q.receive("work", long_poll(1)).await
            }));
        }
        // Let every receive reach the writer and find the queue empty.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let batch = (0..3)
            .map(|i| Outgoing {
                body: format!("m{i}").into_bytes(),
                opts: SendOptions::default(),
            })
            .collect();
        q.send_batch("work", batch).await.expect("send");
        let mut got = Vec::new();
        for w in waiters {
            let d = w.await.expect("join").expect("receive");
            got.extend(
                d.into_iter()
                    .map(|d| String::from_utf8_lossy(&d.body).into_owned()),
            );
        }
        // Every message to exactly one receiver, in one commit.
        got.sort();
        assert_eq!(got, ["m0", "m1", "m2"]);
        assert_eq!(q.stats("work").await.expect("stats").in_flight, 3);
    }

    #[tokio::test]
    async fn a_cancelled_receive_leases_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let q =
            EmbeddedQueue::open(dir.path().join("q.db"), EmbeddedConfig::default()).expect("open");
        let parked = {
            let q = q.clone();
            tokio::spawn(async move { q.receive("work", long_poll(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        parked.abort();
        let _ = parked.await;
        q.send("work", b"x".to_vec(), SendOptions::default())
            .await
            .expect("send");
        let st = q.stats("work").await.expect("stats");
        assert_eq!((st.visible, st.in_flight), (1, 0));
        let got = q
            .receive(
                "work",
                ReceiveOptions {
                    wait: Duration::ZERO,
                    ..long_poll(10)
                },
            )
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn relayed_sends_and_appends_are_committed_without_an_fsync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let q = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("open");
        let relayed = || Outgoing {
            body: b"r".to_vec(),
            opts: SendOptions::default().relayed(),
        };
        let before = q.fsynced_commits();
        q.send_batch("jobs", vec![relayed(), relayed()])
            .await
            .expect("relayed send");
        q.append_relayed("archive", vec![b"a".to_vec()])
            .await
            .expect("relayed append");
        assert_eq!(q.fsynced_commits(), before, "nothing waited on an fsync");
        // One plain message in the batch: the batch is fsynced.
        let plain = Outgoing {
            body: b"p".to_vec(),
            opts: SendOptions::default(),
        };
        q.send_batch("jobs", vec![relayed(), plain])
            .await
            .expect("mixed send");
        assert_eq!(q.fsynced_commits(), before + 1);
        q.append("archive", vec![b"b".to_vec()])
            .await
            .expect("append");
        assert_eq!(q.fsynced_commits(), before + 2);
        // Committed all the same: a crash of the process (the file reopened) keeps them.
        drop(q);
        let q = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("reopen");
        assert_eq!(q.stats("jobs").await.expect("stats").visible, 4);
        assert_eq!(q.read("archive", 0, 10).await.expect("read").len(), 2);
    }

    #[tokio::test]
    async fn a_lazy_transaction_is_committed_without_an_fsync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let q = EmbeddedQueue::open(&path, EmbeddedConfig::default()).expect("open");
        let write = |sql: &'static str| {
            move |conn: &Connection, _: &mut Outbox<'_, '_>| conn.execute_batch(sql)
        };
        q.transact(write("CREATE TABLE t (v INTEGER)"))
            .await
            .expect("create");
        let before = q.fsynced_commits();
        q.transact_lazy(write("INSERT INTO t VALUES (1)"))
            .await
            .expect("lazy insert");
        assert_eq!(q.fsynced_commits(), before, "nothing waited on an fsync");
        q.transact(write("INSERT INTO t VALUES (2)"))
            .await
            .expect("insert");
        assert_eq!(q.fsynced_commits(), before + 1);
        // A caller's error keeps nothing, lazy or not.
        let failed = q
            .transact_lazy(|conn: &Connection, _: &mut Outbox<'_, '_>| {
                conn.execute_batch("INSERT INTO t VALUES (3)")?;
                Err::<(), _>(rusqlite::Error::InvalidQuery)
            })
            .await;
        assert!(matches!(failed, Err(TransactError::Caller(_))));
        drop(q);
        let conn = Connection::open(&path).expect("reopen");
        let rows: Vec<i64> = conn
            .prepare("SELECT v FROM t ORDER BY v")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(rows, vec![1, 2]);
    }
}
