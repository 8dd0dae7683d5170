//! Errors of queue and log operations.

use std::path::PathBuf;

/// Why a receipt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// No such in-flight message: acked already, dead-lettered, or never issued.
    #[error("unknown receipt")]
    Unknown,
    /// The visibility timeout ended; the message may have been delivered again.
    #[error("receipt expired")]
    Expired,
}

/// An error from a queue or log backend.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A queue, log or group name outside `[A-Za-z0-9_.:-]{1,128}`.
    #[error("invalid name {0:?}: use 1-128 characters of [A-Za-z0-9_.:-]")]
    InvalidName(String),
    /// A body over the configured limit.
    #[error("message body of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The body size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An argument out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An ack, extend or nack named a receipt that is not valid now.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// A log consumer group that was never created.
    #[error("unknown consumer group {group:?} on log {log:?}")]
    UnknownGroup {
        /// The log.
        log: String,
        /// The group.
        group: String,
    },
    /// The disk (or the configured size cap) is full; nothing of the operation was written.
    #[error("storage is full: nothing was written")]
    DiskFull,
    /// A file in the data directory is damaged or belongs to something else.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend cannot be reached (a distributed backend that is down).
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// The backend was shut down.
    #[error("queue backend is closed")]
    Closed,
    /// Any other storage failure.
    #[error("queue storage error: {0}")]
    Storage(String),
}
