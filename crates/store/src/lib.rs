//! hubbub's durable state: users and credentials, conversations and members, messages, the
//! feed, media metadata, and each user's inbox of durable events numbered by `seq`.
//!
//! # Layout
//! One folder per domain. Its `mod.rs` holds the domain's trait, its types and its rules
//! (validation, ids, events, ordering, limits, the values its rows' columns make), written
//! once; `sqlite.rs` and `postgres.rs` beside it hold only what differs between the backends:
//! the SQL, and the driver calls that run it and read the columns.
//! - [`accounts`]: users, credentials, refresh token families ([`AccountStore`]).
//! - [`chat`]: conversations, members, messages, read markers, blocks, search
//!   ([`ChatStore`]).
//! - [`inbox`]: each user's durable events, which chat and the feed append to
//!   ([`InboxStore`]).
//! - [`control`]: API keys and the versioned runtime config, with a long poll on its version
//!   ([`ControlStore`]).
//! - [`webhooks`]: the producers' side of webhooks: which endpoints want an event (cached),
//!   and the jobs put on the durable `webhooks` queue.
//! - [`feed`]: posts, comments, likes, follows, activity ([`FeedStore`]).
//! - [`erasure`]: erasing a user from every domain, in steps ([`ErasureStore`]).
//! - [`media`]: uploaded media ([`MediaStore`]: its bytes in a directory, `local.rs`, or an
//!   S3-compatible bucket, `s3.rs`) and its metadata rows ([`MediaMeta`]).
//!
//! [`Store`] is the union of the account, chat, contact, inbox, control and erasure traits (what the edge and the chat
//! service hold as `Arc<dyn Store>`). The backends, each owning its connections, its
//! transactions, its error mapping and its numbered migrations (`migrations/<backend>/`):
//! - `sqlite` ([`SqliteStore`]): the embedded store, in the same SQLite file as the embedded
//!   queue. Writes go through the queue's writer thread
//!   ([`hubbub_queue::EmbeddedQueue::transact`]) so they share its group commit; reads use
//!   a pool of read-only connections.
//! - `postgres` ([`PgStore`], cargo feature `postgres`): the distributed store for roles
//!   running apart.
//!
//! Other crates name what this root exports (the backends' stores included: [`SqliteStore`],
//! `PgStore`, and `ObjectMedia` with the `s3` feature), never a backend's module.
//!
//! # How a use case runs
//! A rule is an `async fn` generic over its domain's transaction trait (`chat::ChatTx`, ...:
//! one method a statement or two). A backend runs it inside one of its transactions
//! (`write`, `read` or `snapshot`); the `impl_*_store!` macro of each domain puts every
//! method of the domain's trait on a backend that way, so the trait's methods are written
//! once for both. SQLite's statements never wait, so its rules complete in their first poll
//! on the writer thread (see `sqlite::finish`).
//!
//! This crate knows nothing of sockets, queues' routing or who is online: it stores facts and
//! returns the events a write produced; delivering them is the caller's job.

pub mod accounts;
pub mod chat;
pub mod contacts;
pub mod control;
pub mod erasure;
pub mod feed;
pub mod inbox;
pub mod media;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
pub mod webhooks;

pub use accounts::{AccountStore, Credentials, RefreshOutcome};
pub use chat::{ChatStore, MAX_CHANNEL_SYNC, MAX_QUERY_CHARS, NewConversation, NewMessage};
pub use contacts::{ContactStore, NoteKeys};
pub use control::{ApiKey, ControlStore, StoredConfig, WebhookEndpoint};
pub use erasure::{Erasure, ErasureStore};
pub use feed::{FeedStore, NewComment, NewPost, StoredPost};
pub use inbox::{InboxStore, Replay};
#[cfg(feature = "s3")]
pub use media::s3::ObjectMedia;
pub use media::{LocalMedia, MediaInfo, MediaMeta, MediaStore, S3Config};
#[cfg(feature = "postgres")]
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use hubbub_protocol::{ErrorCode, ServerFrame};

/// Why a store operation failed; each variant is one protocol error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Invalid input.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with existing state (a taken handle).
    #[error("{0}")]
    Conflict(String),
    /// Over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// Too soon (slow mode): the caller may try again after `retry_after_ms`.
    #[error("{message}")]
    RateLimited {
        /// For the client.
        message: String,
        /// How long to wait.
        retry_after_ms: u64,
    },
    /// Storage is down or full; nothing was written.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the outcome is unknown.
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The protocol error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::BadRequest(_) => ErrorCode::BadRequest,
            StoreError::Forbidden(_) => ErrorCode::Forbidden,
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Conflict(_) => ErrorCode::Conflict,
            StoreError::TooLarge(_) => ErrorCode::TooLarge,
            StoreError::RateLimited { .. } => ErrorCode::RateLimited,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// How long the client should wait before trying again, for `rate_limited`.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            StoreError::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The error as a client may see it: its code and a message. This is the one place a
    /// store error becomes client text: the messages of refusals (`forbidden`, `not_found`,
    /// ...) are written for clients; an outage or an internal failure is logged here with its
    /// details and told only by a fixed sentence.
    pub fn for_client(&self) -> (ErrorCode, String) {
        let code = self.code();
        let message = match self {
            StoreError::Internal(_) => {
                tracing::error!(error = %self, "store failure");
                "internal error; the outcome is unknown, retrying with the same client_msg_id \
                 or idempotency key is safe"
                    .to_owned()
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %self, "store unavailable");
                "storage is unavailable; nothing was accepted, retry later".to_owned()
            }
            other => other.to_string(),
        };
        (code, message)
    }
}

/// The result of a store operation.
pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored JSON column that does not parse, or a frame that does not serialize.
pub(crate) fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("json: {e}"))
}

/// A durable event appended to a user's inbox: deliver `frame` to every session of `user`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The recipient.
    pub user: String,
    /// The frame, with its `seq` set.
    pub frame: ServerFrame,
}

impl Event {
    /// The event's seq.
    pub fn seq(&self) -> u64 {
        self.frame.seq().unwrap_or(0)
    }
}

/// Frames for every session of a channel's members that are in no inbox: a channel's message,
/// or a change to one, which clients recover by the channel's offset (`channel.sync`,
/// history), not by their seq. It names the channel, not its members: each edge knows which
/// of its users are members (a message to 10,000 subscribers reads no member list).
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// The channel.
    pub conversation: String,
    /// The frames (`channel.message`, `channel.updated`), in order.
    pub frames: Vec<ServerFrame>,
}

/// What a write produced: its result and the events to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Written<T> {
    /// The result (the conversation, the message ...).
    pub value: T,
    /// Events appended to inboxes, in seq order per user.
    pub events: Vec<Event>,
    /// A channel message to push to its members.
    pub broadcast: Option<Broadcast>,
}

impl<T> Written<T> {
    /// A result that produced no events (a no-op, or a repeat of an idempotent write).
    pub fn nothing(value: T) -> Self {
        Written::new(value, Vec::new())
    }

    /// A result and the inbox events it produced.
    pub fn new(value: T, events: Vec<Event>) -> Self {
        Written {
            value,
            events,
            broadcast: None,
        }
    }

    /// The same events and broadcast with another value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Written<U> {
        Written {
            value: f(self.value),
            events: self.events,
            broadcast: self.broadcast,
        }
    }
}

/// The durable state the edge and the chat service use: accounts, chat, inboxes and the
/// control plane, contacts, erasure. Every backend that implements the six traits is a
/// `Store`.
pub trait Store:
    AccountStore + ChatStore + ContactStore + InboxStore + ControlStore + ErasureStore
{
}

impl<T: AccountStore + ChatStore + ContactStore + InboxStore + ControlStore + ErasureStore + ?Sized>
    Store for T
{
}

/// Run a rule in one of a backend's transactions: `run!(self.write, |tx| rule(tx, &a))` (or
/// `self.read`, `self.snapshot`). The captured values must be owned (`to_owned` them first):
/// the SQLite backend runs the rule on another thread.
macro_rules! run {
    ($store:ident . $how:ident, |$tx:ident| $rule:expr) => {
        $store
            .$how(move |$tx| ::std::boxed::Box::pin(async move { $rule.await }))
            .await
    };
}
pub(crate) use run;

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

/// The migration steps a store at schema `found` still needs, of `steps` (version N is the
/// first N steps, applied in order; `None` is an empty database). A database written by a
/// newer build is refused rather than guessed at.
pub(crate) fn pending_migrations<'s>(
    found: Option<i64>,
    steps: &'s [&'s str],
) -> Result<&'s [&'s str], StoreError> {
    let known = steps.len() as i64;
    match found {
        None => Ok(steps),
        Some(v) if (1..=known).contains(&v) => Ok(&steps[v as usize..]),
        Some(v) => Err(StoreError::Internal(format!(
            "the database was written by a newer hubbub (store schema {v}, this build knows \
             {known})"
        ))),
    }
}

/// Clamp a client's `u64` (a seq, a watermark) to the `i64` columns hold.
pub(crate) fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_migration_steps() {
        assert!(valid_handle("alice_1"));
        assert!(!valid_handle("Al"));
        assert!(!valid_handle("al ice"));
        let steps = ["a", "b", "c"];
        assert_eq!(pending_migrations(None, &steps).ok(), Some(&steps[..]));
        assert_eq!(pending_migrations(Some(1), &steps).ok(), Some(&steps[1..]));
        assert_eq!(pending_migrations(Some(3), &steps).ok(), Some(&steps[3..]));
        assert!(pending_migrations(Some(4), &steps).is_err());
        assert!(pending_migrations(Some(0), &steps).is_err());
    }
}
