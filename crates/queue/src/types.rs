//! Options and results of [`crate::Queue`] and [`crate::Log`] operations.

use std::time::Duration;

/// The longest queue or log name.
pub const MAX_NAME_LEN: usize = 128;
/// The most messages one receive may return.
pub const MAX_RECEIVE_BATCH: usize = 10_000;

/// Check a queue, log or group name: 1–128 characters of `[A-Za-z0-9_.:-]`.
pub fn validate_name(name: &str) -> Result<(), crate::QueueError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(crate::QueueError::InvalidName(name.to_owned()))
    }
}

/// Check a `max` argument: 1 to [`MAX_RECEIVE_BATCH`].
pub fn check_max(max: usize) -> Result<(), crate::QueueError> {
    if (1..=MAX_RECEIVE_BATCH).contains(&max) {
        Ok(())
    } else {
        Err(crate::QueueError::InvalidArgument(format!(
            "max must be 1..={MAX_RECEIVE_BATCH}, got {max}"
        )))
    }
}

/// Check a body against a backend's size limit.
pub fn check_body(len: usize, limit: usize) -> Result<(), crate::QueueError> {
    if len > limit {
        return Err(crate::QueueError::TooLarge { size: len, limit });
    }
    Ok(())
}

/// The dead-letter queue of `queue`.
pub fn dlq_name(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// Per-queue settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Deliveries after which an unacked message moves to `<queue>.dlq` (at least 1).
    pub max_receives: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { max_receives: 5 }
    }
}

/// How to send one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// A repeated id within the dedupe window is accepted and ignored.
    pub dedupe_id: Option<String>,
    /// Invisible until this long after the send.
    pub delay: Duration,
    /// Dropped (and counted) if not delivered within this long of the send.
    pub ttl: Option<Duration>,
    /// Messages sharing a key are handed out one at a time, in send order.
    pub key: Option<String>,
    /// A relayed message: its sender can hand it on again if it is lost, because it still
    /// holds it durably elsewhere (a router moving an envelope off `main`, acked only after)
    /// or has told no one of it yet (an edge putting a client's write on `main`: the client's
    /// `ok` comes only from the service's durable write). A backend may then answer before the
    /// message is on stable storage: it survives a crash of any process all the same, and is
    /// durable with the backend's next durable write; only a power failure before that can
    /// lose it, and then its sender's copy (or the client's retry) brings it back. The
    /// embedded backend commits a batch of only relayed sends without an fsync; the others
    /// treat it as any send.
    pub relay: bool,
}

impl SendOptions {
    /// With a dedupe id.
    pub fn dedupe(mut self, id: impl Into<String>) -> Self {
        self.dedupe_id = Some(id.into());
        self
    }
    /// With a delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
    /// With a TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// With an ordering key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Relayed (see [`SendOptions::relay`]).
    pub fn relayed(mut self) -> Self {
        self.relay = true;
        self
    }
}

/// A message to send in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The body.
    pub body: Vec<u8>,
    /// How to send it.
    pub opts: SendOptions,
}

impl Outgoing {
    /// A message with default options.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Outgoing {
            body: body.into(),
            opts: SendOptions::default(),
        }
    }
}

/// What a send did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The message id (for a duplicate, the id of the first send).
    pub id: String,
    /// True when the dedupe id was seen within the window and nothing new was enqueued.
    pub duplicate: bool,
}

/// How to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// At most this many messages (1 to [`MAX_RECEIVE_BATCH`]).
    pub max: usize,
    /// Wait up to this long for a first message (long poll); zero returns at once.
    pub wait: Duration,
    /// Received messages stay invisible this long unless acked, extended or nacked.
    pub visibility: Duration,
    /// At most this many consecutive messages of one key in the batch (a *run*, as in an SQS
    /// FIFO message group); 1, the default, hands out one message per key at a time. A
    /// receiver asking for runs must handle each run in order (one after the other) and ack
    /// them in order; see [`crate::Queue`] for the whole contract.
    pub max_run: usize,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            max: 1,
            wait: Duration::ZERO,
            visibility: Duration::from_secs(30),
            max_run: 1,
        }
    }
}

/// Proof of one delivery; acks, extends and nacks name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message id.
    pub id: String,
    /// This delivery's receipt.
    pub receipt: Receipt,
    /// The body.
    pub body: Vec<u8>,
    /// The ordering key, if any.
    pub key: Option<String>,
    /// How many times the message has been delivered, this time included.
    pub receive_count: u32,
    /// When it was first enqueued (ms since the epoch).
    pub first_enqueued_ms: i64,
}

/// A message in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id in the DLQ.
    pub id: String,
    /// The body.
    pub body: Vec<u8>,
    /// Deliveries before it was dead-lettered.
    pub receive_count: u32,
    /// When it was first enqueued.
    pub first_enqueued_ms: i64,
}

/// Depths and ages of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready to be received now.
    pub visible: u64,
    /// Received, not yet acked, visibility not over.
    pub in_flight: u64,
    /// Waiting for a delay or a nack delay to pass.
    pub delayed: u64,
    /// Waiting behind an earlier message with the same key.
    pub waiting_on_key: u64,
    /// Messages in `<queue>.dlq`.
    pub dlq_depth: u64,
    /// Age of the oldest message in the queue (ms), 0 when empty.
    pub oldest_age_ms: u64,
    /// Messages dropped past their TTL, since the queue was created.
    pub expired_total: u64,
    /// Messages moved to the DLQ, since the queue was created.
    pub dead_lettered_total: u64,
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its offset.
    pub offset: u64,
    /// When it was appended (ms since the epoch).
    pub ts_ms: i64,
    /// The body.
    pub body: Vec<u8>,
}

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At the first retained entry (replay from the start).
    Earliest,
    /// After the last entry (only new entries).
    Latest,
}

/// A log retention policy; entries past either bound are removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove entries older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many bytes of bodies, newest first.
    pub max_bytes: Option<u64>,
}

/// The state of one log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// The first retained offset (equals `next_offset` when empty).
    pub first_offset: u64,
    /// The offset the next append gets.
    pub next_offset: u64,
    /// Bytes of retained bodies.
    pub retained_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["main", "chat", "main.dlq", "a:b-c_d", &"x".repeat(128)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "é", "a/b", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert_eq!(dlq_name("chat"), "chat.dlq");
    }
}
