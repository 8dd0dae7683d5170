//! Durable, pull-based queues and append-only logs: the transport between every hubbub role.
//!
//! A service takes work from a queue only when it has capacity; backlog waits in the queue
//! where it is visible and measured ([`QueueStats`]). See DESIGN.md, "Queue contract".
//!
//! # Layout
//! - [`Queue`] and [`Log`]: the traits every backend implements, with their option and result
//!   types in [`types`] and the error type [`QueueError`].
//! - [`embedded`]: the default backend, durable in one SQLite file (WAL, `synchronous=FULL`)
//!   with a single writer thread doing group commit. Its module doc is the storage spec.
//! - The distributed backend on Redis (scripted queues, logs on Streams) lives with the rest
//!   of what runs only when roles are apart, in `hubbub-cluster`, and passes the same suite.
//! - [`clock`]: the time source; tests drive a [`ManualClock`] instead of sleeping.
//! - [`conformance`]: the behaviour every backend must show, written once as test functions
//!   and instantiated per backend with [`queue_conformance_tests!`].
//!
//! This crate knows nothing of the protocol or of message contents: bodies are bytes.

pub mod clock;
pub mod conformance;
pub mod embedded;
mod error;
pub mod types;

pub use clock::{Clock, ManualClock, SystemClock};
pub use embedded::{EmbeddedConfig, EmbeddedQueue, Outbox, TransactError};
pub use error::{QueueError, ReceiptError};
pub use types::*;

use async_trait::async_trait;
use std::time::Duration;

/// A durable queue service holding many named queues.
///
/// Delivery is at-least-once: a received message stays invisible until it is acked or its
/// visibility timeout ends, then it is delivered again; after `max_receives` deliveries it
/// moves to `<queue>.dlq`.
///
/// # Keys and runs
/// Messages sharing a `key` are handed out in send order, and never to two receivers at once:
/// while any message of a key is in flight, no later message of that key is handed out.
/// By default (`ReceiveOptions::max_run` = 1) a key has one message in flight at a time. A
/// receive with `max_run` = n > 1 may hand out a *run*: the key's first message and up to
/// n − 1 messages that follow it, in send order, in the same batch and with the same lease.
/// A run stops at the first message that is not yet due (delayed). The key's next message
/// becomes receivable once every message of the run has left (acked, expired or
/// dead-lettered). A run member whose lease lapses while an earlier message of its key is
/// still in the queue goes back to waiting behind it, so a lapsed run comes back in order, from
/// its first message. A receiver of runs handles a run's messages one after the other and, if
/// one fails, gives back (or lets lapse) the rest of the run with it.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Set a queue's options (`max_receives`). Queues that were never declared use defaults.
    async fn declare(&self, queue: &str, config: QueueConfig) -> Result<(), QueueError>;

    /// Send one message. Durable when this returns.
    async fn send(
        &self,
        queue: &str,
        body: Vec<u8>,
        opts: SendOptions,
    ) -> Result<SendOutcome, QueueError> {
        let mut out = self
            .send_batch(queue, vec![Outgoing { body, opts }])
            .await?;
        out.pop()
            .ok_or_else(|| QueueError::Storage("send returned no outcome".into()))
    }

    /// Send several messages atomically (all durable, or none). Outcomes are in input order.
    async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<SendOutcome>, QueueError>;

    /// Receive up to `opts.max` messages, waiting up to `opts.wait` for the first one.
    async fn receive(&self, queue: &str, opts: ReceiveOptions)
    -> Result<Vec<Delivery>, QueueError>;

    /// Acknowledge (delete) a received message.
    async fn ack(&self, queue: &str, receipt: &Receipt) -> Result<(), QueueError> {
        let mut out = self.ack_batch(queue, std::slice::from_ref(receipt)).await?;
        match out.pop() {
            Some(result) => result.map_err(QueueError::Receipt),
            None => Err(QueueError::Storage("ack returned no outcome".into())),
        }
    }

    /// Acknowledge several messages in one commit; one result per receipt, in order.
    async fn ack_batch(
        &self,
        queue: &str,
        receipts: &[Receipt],
    ) -> Result<Vec<Result<(), ReceiptError>>, QueueError>;

    /// Extend a received message's invisibility to `visibility` from now.
    async fn extend(
        &self,
        queue: &str,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError>;

    /// Give a received message back, visible again after `delay`.
    async fn nack(&self, queue: &str, receipt: &Receipt, delay: Duration)
    -> Result<(), QueueError>;

    /// Depths and ages of a queue.
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError>;

    /// Look at up to `max` messages of `<queue>.dlq` without receiving them, oldest first.
    async fn dlq_list(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Move up to `max` messages from `<queue>.dlq` back to `queue`, with their receive count
    /// reset; returns how many moved.
    async fn redrive(&self, queue: &str, max: usize) -> Result<usize, QueueError>;

    /// Delete up to `max` messages of `<queue>.dlq`, oldest first; returns how many. Written
    /// once for every backend: the DLQ is itself a queue, so its messages are received and
    /// acked (one being looked at by another receiver is left alone).
    async fn purge_dlq(&self, queue: &str, max: usize) -> Result<usize, QueueError> {
        const BATCH: usize = 100;
        let dlq = dlq_name(queue);
        let mut purged = 0;
        while purged < max {
            let got = self
                .receive(
                    &dlq,
                    ReceiveOptions {
                        max: BATCH.min(max - purged),
                        wait: Duration::ZERO,
                        visibility: Duration::from_secs(60),
                        max_run: 1,
                    },
                )
                .await?;
            if got.is_empty() {
                break;
            }
            let receipts: Vec<Receipt> = got.into_iter().map(|d| d.receipt).collect();
            let acked = self.ack_batch(&dlq, &receipts).await?;
            purged += acked.iter().filter(|r| r.is_ok()).count();
            if receipts.len() < BATCH {
                break;
            }
        }
        Ok(purged)
    }
}

/// A durable append-only log with consumer groups (the `archive` of every routed message).
///
/// Offsets start at 0 and grow by one per entry. A group's committed offset is the next
/// offset it will read: committing `n` means every entry below `n` is processed.
#[async_trait]
pub trait Log: Send + Sync {
    /// Append entries atomically; returns the offset of each.
    async fn append(&self, log: &str, bodies: Vec<Vec<u8>>) -> Result<Vec<u64>, QueueError>;

    /// Append entries its caller can append again if they are lost (a router archiving the
    /// envelopes it acks on `main` only after): as [`SendOptions::relay`], a backend may
    /// answer before they are on stable storage. By default, [`Log::append`].
    async fn append_relayed(
        &self,
        log: &str,
        bodies: Vec<Vec<u8>>,
    ) -> Result<Vec<u64>, QueueError> {
        self.append(log, bodies).await
    }

    /// Read up to `max` entries with offset ≥ `from` (entries removed by retention are skipped).
    async fn read(&self, log: &str, from: u64, max: usize) -> Result<Vec<LogEntry>, QueueError>;

    /// Create a consumer group if it does not exist; returns its committed offset.
    async fn create_group(&self, log: &str, group: &str, start: StartAt)
    -> Result<u64, QueueError>;

    /// Read up to `max` entries from the group's committed offset (the group must exist).
    async fn group_read(
        &self,
        log: &str,
        group: &str,
        max: usize,
    ) -> Result<Vec<LogEntry>, QueueError>;

    /// Commit a group's offset: entries below `next` are processed. Never moves backwards.
    async fn commit(&self, log: &str, group: &str, next: u64) -> Result<(), QueueError>;

    /// Remove entries older than `max_age` or beyond the newest `max_bytes`; returns how many.
    async fn apply_retention(&self, log: &str, retention: Retention) -> Result<u64, QueueError>;

    /// First retained offset, next offset, retained bytes.
    async fn log_stats(&self, log: &str) -> Result<LogStats, QueueError>;
}
