//! hubbub's durable state: users and credentials, conversations and members, messages, and
//! each user's inbox of durable events numbered by `seq`.
//!
//! # Layout
//! - [`Store`]: the trait services and the edge use. Its write methods are whole use cases
//!   (check membership, write, append the resulting events to every recipient's inbox) done
//!   in one transaction, so a crash never leaves a message without its events or the reverse.
//! - [`sqlite`]: the embedded implementation, in the same SQLite file as the embedded queue.
//!   Its writes go through the queue's writer thread ([`hubbub_queue::EmbeddedQueue::transact`])
//!   so they share its group commit; reads use a pool of read-only connections.
//! - [`feed`]: posts, comments, likes, follows ([`FeedStore`]).
//! - [`postgres`]: the distributed implementation ([`PgStore`]) for roles running apart.
//! - [`media`]: uploaded media ([`MediaStore`]; bytes in a directory, metadata in the store).
//! - [`StoreError`]: one variant per protocol error code it can cause.
//!
//! This crate knows nothing of sockets, queues' routing or who is online: it stores facts and
//! returns the events a write produced; delivering them is the caller's job.

pub mod feed;
pub mod media;
pub mod postgres;
pub mod sqlite;

pub use feed::{FeedStore, NewComment, NewPost, StoredPost};
pub use media::{LocalMedia, MediaInfo, MediaMeta, MediaStore, S3Config};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use hubbub_protocol::{
    Attachment, Conversation, ConversationKind, ConversationSummary, ErrorCode, Message,
    ServerFrame, UserRef,
};

/// Why a store operation failed; each variant is one protocol error code.
#[derive(Debug, thiserror::Error)]
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
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Internal(_) => ErrorCode::Internal,
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

/// What a write produced: its result and the events to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Written<T> {
    /// The result (the conversation, the message ...).
    pub value: T,
    /// Events appended to inboxes, in seq order per user.
    pub events: Vec<Event>,
}

impl<T> Written<T> {
    /// A result that produced no events (a no-op, or a repeat of an idempotent write).
    pub fn nothing(value: T) -> Self {
        Written {
            value,
            events: Vec::new(),
        }
    }
}

/// A user with the secret needed to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: UserRef,
    /// The argon2id hash, if the user has a password.
    pub password_hash: Option<String>,
}

/// Parameters of `conversation.create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConversation {
    /// The id a group gets (chosen by the caller, so a retried create finds the first one;
    /// a direct conversation that already exists keeps its own id).
    pub id: String,
    /// The creator.
    pub creator: String,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Other members (the creator may be named too).
    pub members: Vec<String>,
    /// Title.
    pub title: Option<String>,
    /// Ephemeral.
    pub ephemeral: bool,
    /// Most members allowed, the creator included.
    pub max_members: usize,
}

/// Parameters of `message.send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The sender.
    pub sender: String,
    /// The conversation.
    pub conversation: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// The text.
    pub text: String,
    /// Attachments.
    pub attachments: Vec<Attachment>,
}

/// A `sync` replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Events with seq > `after_seq`, in order (at most the requested number).
    pub frames: Vec<ServerFrame>,
    /// The user's latest seq.
    pub last_seq: u64,
    /// Events the client needed are gone (older than the retention window).
    pub truncated: bool,
}

/// What [`Store::take_refresh_token`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was valid; it is used now. Issue the next one in the same family.
    Valid {
        /// The token's user.
        user: String,
        /// The token's family.
        family: String,
    },
    /// A used token came back: someone holds a copy. The whole family (every token issued
    /// from it too) is revoked now.
    Reused {
        /// The token's user.
        user: String,
        /// The family, now revoked.
        family: String,
    },
    /// Unknown, expired, or of a revoked family.
    Invalid,
}

/// What a refresh token is worth, from its row (both backends decide alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Valid,
    Reused,
    Invalid,
}

/// Expired, or of a revoked (or vanished) family: invalid. Used already: reused, unless it
/// expired (a used token is kept only until its expiry). Else valid.
pub(crate) fn refresh_verdict(expires_ms: i64, used: bool, family_live: bool, now: i64) -> Verdict {
    if expires_ms <= now || !family_live {
        Verdict::Invalid
    } else if used {
        Verdict::Reused
    } else {
        Verdict::Valid
    }
}

/// The durable state hubbub keeps.
#[async_trait]
pub trait Store: Send + Sync {
    /// Create a user with a password hash. A taken handle is `Conflict`.
    async fn create_user(
        &self,
        handle: &str,
        password_hash: &str,
        email: Option<&str>,
    ) -> Result<UserRef, StoreError>;

    /// The user with this exact id, creating it if missing (app tokens). The handle is
    /// `handle_hint` when valid and free, else generated.
    async fn ensure_user(&self, id: &str, handle_hint: Option<&str>)
    -> Result<UserRef, StoreError>;

    /// A user and their password hash, by handle.
    async fn credentials(&self, handle: &str) -> Result<Option<Credentials>, StoreError>;

    /// A user by id.
    async fn user(&self, id: &str) -> Result<Option<UserRef>, StoreError>;

    /// A user by handle.
    async fn user_by_handle(&self, handle: &str) -> Result<Option<UserRef>, StoreError>;

    /// Remember a refresh token (by its hash) of `family` until `expires_ms`. A login starts a
    /// family (a fresh random id); a refresh puts its new token in the family of the token it
    /// used. A token put in a family that was revoked meanwhile (a reuse was detected, or the
    /// user's tokens were revoked, while this refresh was under way) is stored but never valid.
    async fn put_refresh_token(
        &self,
        token_hash: &str,
        user: &str,
        family: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError>;

    /// Use up a refresh token. A valid token is marked used (and kept until it expires, so a
    /// second use is recognised); a used token that comes back revokes its whole family.
    async fn take_refresh_token(&self, token_hash: &str) -> Result<RefreshOutcome, StoreError>;

    /// Revoke everything issued to `user` until `now_ms`: every refresh token of the user is
    /// deleted (their families revoked, so a refresh under way cannot issue a live one), and
    /// the user's `tokens_revoked_ms` becomes `now_ms` (never earlier than it was). An unknown
    /// user is `NotFound`.
    async fn revoke_tokens(&self, user: &str, now_ms: i64) -> Result<(), StoreError>;

    /// When `user`'s tokens were last revoked (ms since the epoch); 0 when never (or for an
    /// unknown user). Access tokens issued before it are refused by the edge.
    async fn tokens_revoked_ms(&self, user: &str) -> Result<i64, StoreError>;

    /// `conversation.create`; a direct conversation that exists, or a group whose id exists
    /// (a retried create, by redelivery or by the client's idempotency key), is returned with
    /// no events; an id that exists with another creator is `Conflict`. Naming a member who
    /// blocks the creator is `Forbidden`.
    async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<Written<Conversation>, StoreError>;

    /// `conversation.get` (members only).
    async fn conversation(&self, caller: &str, id: &str) -> Result<Conversation, StoreError>;

    /// `conversation.list`: the caller's conversations, most recent activity first.
    async fn conversations(&self, caller: &str) -> Result<Vec<ConversationSummary>, StoreError>;

    /// `conversation.add` (group creator only; adding a member is a no-op). Adding a user who
    /// blocks the caller is `Forbidden`.
    async fn add_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
        max_members: usize,
    ) -> Result<Written<()>, StoreError>;

    /// `conversation.remove` (group creator only; removing a non-member is a no-op).
    async fn remove_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
    ) -> Result<Written<()>, StoreError>;

    /// `conversation.leave`.
    async fn leave(&self, caller: &str, conversation: &str) -> Result<Written<()>, StoreError>;

    /// `message.send`, idempotent on (sender, client_msg_id): a repeat returns the first
    /// message and no events.
    async fn send_message(&self, new: NewMessage) -> Result<Written<Message>, StoreError>;

    /// `message.history`: newest first, before a message id; and whether older ones remain.
    async fn history(
        &self,
        caller: &str,
        conversation: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError>;

    /// `message.read`: moves the caller's read marker forward and tells the others.
    async fn mark_read(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
    ) -> Result<Written<()>, StoreError>;

    /// `block.add`: `caller` no longer receives `user`'s messages or typing, and `user` can
    /// neither open a direct conversation with `caller` nor add `caller` to a group (at its
    /// creation or later). Idempotent.
    async fn block(&self, caller: &str, user: &str) -> Result<(), StoreError>;

    /// `block.remove`. Idempotent.
    async fn unblock(&self, caller: &str, user: &str) -> Result<(), StoreError>;

    /// `block.list`: the users `caller` blocks.
    async fn blocks(&self, caller: &str) -> Result<Vec<String>, StoreError>;

    /// Which of `users` block `caller` (for presence: a blocker's presence is hidden from
    /// the users it blocks).
    async fn blocked_by(&self, caller: &str, users: &[String]) -> Result<Vec<String>, StoreError>;

    /// `message.search`: full-text search over the conversations `caller` is in now (or one of
    /// them), best match first, without messages from users `caller` blocks.
    async fn search(
        &self,
        caller: &str,
        query: &str,
        conversation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Who should see `sender`'s typing in a conversation: the other members, less those who
    /// block `sender`. `Forbidden` if `sender` is not a member.
    async fn typing_recipients(
        &self,
        sender: &str,
        conversation: &str,
    ) -> Result<Vec<String>, StoreError>;

    /// Delete ephemeral conversations whose last message (or creation, if none) is older than
    /// `before_ms`, with their messages. Each member gets `conversation.updated` with the
    /// conversation as it was but no members (it no longer exists for anyone). Returns the
    /// deleted conversations and the events.
    async fn expire_ephemeral(&self, before_ms: i64) -> Result<Written<Vec<String>>, StoreError>;

    /// The user's latest seq.
    async fn last_seq(&self, user: &str) -> Result<u64, StoreError>;

    /// Durable events with seq > `after_seq`, at most `limit`.
    async fn events_after(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Replay, StoreError>;

    /// The highest seq any device of the user acknowledged.
    async fn acked_seq(&self, user: &str) -> Result<u64, StoreError>;

    /// Record that a device of the user processed everything up to `seq`.
    async fn ack(&self, user: &str, seq: u64) -> Result<(), StoreError>;

    /// Delete inbox events older than `before_ms`; returns how many.
    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// Whether the store answers now (readiness, and the edge's gate on writes).
    async fn ping(&self) -> Result<(), StoreError> {
        self.last_seq("health-probe").await.map(|_| ())
    }
}
