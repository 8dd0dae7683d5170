//! The single writer thread: it owns the SQLite connection and runs every operation, many per
//! transaction (group commit).
//!
//! Callers send a [`Job`] down a channel. The thread takes the first job, drains whatever else
//! is waiting (up to [`MAX_JOBS_PER_COMMIT`]), runs each inside its own savepoint (so a job that
//! fails is rolled back alone), commits once, and only then answers each caller. A caller is
//! therefore never told "done" before its change is on disk, and one fsync serves everyone who
//! arrived while the previous commit was running. A commit of only non-durable jobs (leases,
//! acks) is not fsynced (`synchronous=NORMAL` for that commit): the next fsynced commit, or a
//! checkpoint, makes it durable with everything before it, since the WAL is written in order.

use super::exec_cached;
use super::ops::map_sql;
use crate::{Clock, QueueConfig, QueueError};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The most jobs one transaction takes; bounds the latency one commit adds.
pub(crate) const MAX_JOBS_PER_COMMIT: usize = 1024;
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Work for the writer: runs in the transaction, returns what to do once the commit is known.
pub(crate) struct Job {
    pub(crate) work: Box<dyn FnOnce(&mut Ctx<'_>) -> Reply + Send>,
    /// Whether its caller must not be answered before the commit is fsynced. A job whose
    /// loss in a power failure can only bring a message back (a lease, an ack) is not: see
    /// the module doc of `embedded` ("Durability and recovery").
    pub(crate) durable: bool,
}
/// Called after the commit with its outcome.
pub(crate) type Reply = Box<dyn FnOnce(Result<(), &CommitError>) + Send>;

/// Why a commit (or the transaction's start) failed; every job of it gets this error.
#[derive(Debug, Clone)]
pub(crate) enum CommitError {
    DiskFull,
    Corrupt(PathBuf, String),
    Other(String),
}

impl CommitError {
    fn from_queue_error(e: QueueError) -> Self {
        match e {
            QueueError::DiskFull => CommitError::DiskFull,
            QueueError::Corrupt { path, reason } => CommitError::Corrupt(path, reason),
            other => CommitError::Other(other.to_string()),
        }
    }
    pub(crate) fn to_queue_error(&self) -> QueueError {
        match self {
            CommitError::DiskFull => QueueError::DiskFull,
            CommitError::Corrupt(path, reason) => QueueError::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            },
            CommitError::Other(m) => QueueError::Storage(m.clone()),
        }
    }
}

/// Long-poll wake-ups: one [`Notify`] per queue that someone waits on.
#[derive(Debug, Default)]
pub(crate) struct Notifiers(Mutex<HashMap<String, Arc<Notify>>>);

impl Notifiers {
    pub(crate) fn get(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }
    fn wake(&self, queues: &[String]) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for q in queues {
            if let Some(n) = map.get(q) {
                n.notify_waiters();
            }
        }
    }
}

/// What the writer shares with the async handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) notifiers: Notifiers,
    pub(crate) queue_configs: RwLock<HashMap<String, QueueConfig>>,
    pub(crate) default_queue: QueueConfig,
    pub(crate) dedupe_window: Duration,
}

/// What a job sees: the connection inside the open transaction, and the time.
pub(crate) struct Ctx<'c> {
    pub(crate) conn: &'c Connection,
    pub(crate) shared: &'c Shared,
    /// Queues that got new visible messages in this transaction (woken after the commit).
    pub(crate) touched: Vec<String>,
    /// Set when the transaction could not start: every job fails with it.
    broken: Option<CommitError>,
}

impl Ctx<'_> {
    pub(crate) fn now(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    pub(crate) fn max_receives(&self, queue: &str) -> u32 {
        let map = self
            .shared
            .queue_configs
            .read()
            .unwrap_or_else(|p| p.into_inner());
        map.get(queue)
            .unwrap_or(&self.shared.default_queue)
            .max_receives
    }

    pub(crate) fn sql_err(&self, e: rusqlite::Error) -> QueueError {
        map_sql(&self.shared.path, e)
    }

    /// Run `f` in a savepoint: all of its writes, or none of them.
    pub(crate) fn atomically<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        if let Some(e) = &self.broken {
            return Err(e.to_queue_error());
        }
        if let Err(e) = exec_cached(self.conn, "SAVEPOINT job") {
            return Err(self.sql_err(e));
        }
        let touched = self.touched.len();
        let result = f(self);
        if result.is_err() {
            self.touched.truncate(touched);
        }
        let ended = if result.is_ok() {
            exec_cached(self.conn, "RELEASE job")
        } else {
            exec_cached(self.conn, "ROLLBACK TO job")
                .and_then(|()| exec_cached(self.conn, "RELEASE job"))
        };
        if self.conn.is_autocommit() {
            // SQLite rolled back the whole transaction by itself (it does so on a full disk):
            // the work of every job before this one is gone too, so all of them must fail.
            let cause = match result {
                Err(e @ (QueueError::DiskFull | QueueError::Corrupt { .. })) => e,
                Err(e) => QueueError::Storage(format!("transaction rolled back: {e}")),
                Ok(_) => QueueError::Storage("transaction rolled back".into()),
            };
            self.touched.clear();
            self.broken = Some(CommitError::from_queue_error(cause));
            return Err(self
                .broken
                .as_ref()
                .map(CommitError::to_queue_error)
                .unwrap_or(QueueError::Closed));
        }
        match ended {
            Ok(()) => result,
            Err(e) => {
                // A savepoint that cannot be ended leaves the transaction unusable: fail it.
                self.touched.truncate(touched);
                self.broken = Some(CommitError::from_queue_error(self.sql_err(e)));
                Err(self
                    .broken
                    .as_ref()
                    .map(CommitError::to_queue_error)
                    .unwrap_or(QueueError::Closed))
            }
        }
    }
}

/// Make the next commit fsync (`FULL`) or not (`NORMAL`: in WAL mode the log is still synced
/// before each checkpoint), if it is not so already.
fn set_sync(conn: &Connection, synced: &mut bool, durable: bool) -> rusqlite::Result<()> {
    if *synced != durable {
        let sql = if durable {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        exec_cached(conn, sql)?;
        *synced = durable;
    }
    Ok(())
}

/// The writer thread's loop; returns when every handle is dropped.
pub(crate) fn run(conn: Connection, jobs: Receiver<Job>, shared: Arc<Shared>) {
    let mut last_sweep = Instant::now();
    // The connection opens with `synchronous=FULL`.
    let mut synced = true;
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // One fsync for the commit if any caller needs it, none otherwise; switched only
        // between transactions, where SQLite allows it.
        let durable = batch.iter().any(|j| j.durable);
        let begun = set_sync(&conn, &mut synced, durable)
            .and_then(|()| exec_cached(&conn, "BEGIN IMMEDIATE"));
        let mut ctx = Ctx {
            conn: &conn,
            shared: &shared,
            touched: Vec::new(),
            broken: begun
                .err()
                .map(|e| CommitError::from_queue_error(map_sql(&shared.path, e))),
        };
        if ctx.broken.is_none() && last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            let now = ctx.now();
            // Housekeeping rides along with real work; a failure here is not fatal.
            if let Err(e) = conn.execute("DELETE FROM q_dedupe WHERE expires_ms <= ?1", [now]) {
                tracing::warn!(error = %e, "dedupe sweep failed");
            }
        }
        let replies: Vec<Reply> = batch.into_iter().map(|job| (job.work)(&mut ctx)).collect();
        let outcome = match ctx.broken.take() {
            Some(e) => {
                if !conn.is_autocommit() {
                    let _ = exec_cached(&conn, "ROLLBACK");
                }
                Err(e)
            }
            None => match exec_cached(&conn, "COMMIT") {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = exec_cached(&conn, "ROLLBACK");
                    Err(CommitError::from_queue_error(map_sql(&shared.path, e)))
                }
            },
        };
        if outcome.is_ok() {
            shared.notifiers.wake(&ctx.touched);
        } else if let Err(e) = &outcome {
            tracing::error!(error = ?e, "queue commit failed");
        }
        for reply in replies {
            reply(outcome.as_ref().map(|_| ()));
        }
    }
}
