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
//!
//! Receives wait here too ([`Parked`]): a receive looks at once, in the next transaction, and
//! if it finds nothing it stays with the writer, which looks for it again in every transaction
//! that made messages of its queue visible (a send, a nack, a promoted key), in the order the
//! receivers came, and answers it with that commit. A long poll thus costs no round trip of its
//! own after a send: the send's commit hands its messages over. A parked receive is answered
//! empty at its time (the receiver's wait, or a moment to look again for leases that lapsed);
//! one whose receiver went away is dropped, and what was leased to a receiver that went away
//! meanwhile is given back in the next transaction.

use super::exec_cached;
use super::ops::{self, map_sql};
use crate::{Clock, Delivery, QueueConfig, QueueError, Receipt};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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

/// What the writer is handed.
pub(crate) enum Msg {
    /// Work for the next transaction.
    Job(Job),
    /// A receive: answered with the first transaction that finds messages, or at its time.
    Park(Parked),
}

/// What a receive finds.
pub(crate) type Found = Result<Vec<Delivery>, QueueError>;

/// A receive waiting in the writer (see the module doc).
pub(crate) struct Parked {
    pub(crate) queue: String,
    pub(crate) max: usize,
    pub(crate) max_run: usize,
    pub(crate) visibility: Duration,
    /// Answered by then even if nothing came; brought forward to when a delayed message of
    /// its queue is due.
    pub(crate) until: Instant,
    pub(crate) reply: tokio::sync::oneshot::Sender<Found>,
}

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

/// What the writer shares with the async handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) queue_configs: RwLock<HashMap<String, QueueConfig>>,
    pub(crate) default_queue: QueueConfig,
    pub(crate) dedupe_window: Duration,
    /// Commits fsynced so far.
    pub(crate) fsynced: std::sync::atomic::AtomicU64,
}

/// What a job sees: the connection inside the open transaction, and the time.
pub(crate) struct Ctx<'c> {
    pub(crate) conn: &'c Connection,
    pub(crate) shared: &'c Shared,
    /// Queues that got new visible messages in this transaction (their parked receives look
    /// again before the commit).
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
pub(crate) fn run(conn: Connection, jobs: Receiver<Msg>, shared: Arc<Shared>) {
    let mut last_sweep = Instant::now();
    // The connection opens with `synchronous=FULL`.
    let mut synced = true;
    // Receives waiting for messages, in the order they came.
    let mut parked: Vec<Parked> = Vec::new();
    // Leases whose receiver went away before it was answered: given back next time.
    let mut unclaimed: Vec<(String, Vec<Receipt>)> = Vec::new();
    loop {
        // Wait for work, or for the first parked receive's time.
        let first = if !unclaimed.is_empty() {
            jobs.try_recv().ok()
        } else if let Some(at) = parked.iter().map(|p| p.until).min() {
            match jobs.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match jobs.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        };
        let mut batch = Vec::with_capacity(16);
        let mut arrived = Vec::new();
        let mut next = first;
        while let Some(m) = next {
            match m {
                Msg::Job(j) => batch.push(j),
                Msg::Park(p) => arrived.push(p),
            }
            next = if batch.len() + arrived.len() < MAX_JOBS_PER_COMMIT {
                jobs.try_recv().ok()
            } else {
                None
            };
        }
        // Nobody waits for these any more (the receive was cancelled).
        parked.retain(|p| !p.reply.is_closed());
        arrived.retain(|p| !p.reply.is_closed());
        let now = Instant::now();
        if batch.is_empty()
            && arrived.is_empty()
            && unclaimed.is_empty()
            && !parked.iter().any(|p| p.until <= now)
        {
            continue;
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
        for (queue, receipts) in std::mem::take(&mut unclaimed) {
            for r in &receipts {
                // A lease lost in a failed release only lapses later, as any lease does.
                let _ =
                    ctx.atomically(|ctx| ops::set_visibility(ctx, &queue, r, Duration::ZERO, true));
            }
        }
        let replies: Vec<Reply> = batch.into_iter().map(|job| (job.work)(&mut ctx)).collect();
        // Receives: those that just came, those whose queue got messages, those whose time
        // is up; the rest wait on.
        let mut answers: Vec<(Parked, Found)> = Vec::new();
        let mut waiting = Vec::with_capacity(parked.len());
        let arrived_from = parked.len();
        for (i, mut p) in parked.drain(..).chain(arrived).enumerate() {
            let due = p.until <= now;
            if i < arrived_from && !due && !ctx.touched.contains(&p.queue) {
                waiting.push(p);
                continue;
            }
            let found =
                ctx.atomically(|ctx| ops::receive(ctx, &p.queue, p.max, p.max_run, p.visibility));
            match found {
                Ok((d, next_visible)) if d.is_empty() && !due => {
                    if let Some(at) = next_visible {
                        let due_in = Duration::from_millis((at - ctx.now()).max(1) as u64);
                        p.until = p.until.min(Instant::now() + due_in);
                    }
                    waiting.push(p);
                }
                found => answers.push((p, found.map(|(d, _)| d))),
            }
        }
        parked = waiting;
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
        match &outcome {
            Ok(()) if durable => {
                shared
                    .fsynced
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(()) => {}
            Err(e) => tracing::error!(error = ?e, "queue commit failed"),
        }
        for reply in replies {
            reply(outcome.as_ref().map(|_| ()));
        }
        for (p, found) in answers {
            let found = match &outcome {
                Ok(()) => found,
                Err(e) => Err(e.to_queue_error()),
            };
            if let Err(Ok(leased)) = p.reply.send(found)
                && !leased.is_empty()
            {
                unclaimed.push((p.queue, leased.into_iter().map(|d| d.receipt).collect()));
            }
        }
    }
}
