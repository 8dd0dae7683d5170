//! Frames sent by clients: `{"type":"...","id":"r1", ...fields}`.
//!
//! [`ClientFrame::parse`] is the only way the edge reads a client frame. It parses in two
//! steps (JSON object first, then the request named by `type`) so that every failure maps to
//! the protocol's answer: malformed JSON, a missing or unknown `type`, or invalid fields all
//! give `bad_request`, with the frame's `id` when it could be read.

use crate::error::ErrorCode;
use crate::model::{AssignedRole, Attachment, ConversationKind, SetPresenceStatus, TypingState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A client frame: an optional request id and the request.
///
/// Frames with an `id` get exactly one reply (`ok` or `error`); frames without are
/// fire-and-forget and their errors are sent with `"id":null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClientFrame {
    /// The request id echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The request; its `type` field names the variant.
    #[serde(flatten)]
    pub request: Request,
}

/// Every request a client can send, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum Request {
    /// Replay durable events with seq > `after_seq`, then reply `{"last_seq"}`.
    #[serde(rename = "sync")]
    Sync {
        /// The last seq the client processed (0 replays everything retained).
        #[serde(default)]
        after_seq: u64,
    },
    /// Acknowledge every durable event up to `seq` for this session (no id, no reply).
    #[serde(rename = "ack")]
    Ack {
        /// The highest seq processed.
        seq: u64,
    },
    /// Hand the live session a new access token (or app token) of the same user, before
    /// the one it opened with expires (PROTOCOL.md 1.1).
    #[serde(rename = "auth")]
    Auth {
        /// The new token.
        access_token: String,
    },
    /// Create a conversation (a direct one is returned if it already exists).
    #[serde(rename = "conversation.create")]
    ConversationCreate {
        /// Direct or group.
        kind: ConversationKind,
        /// The other members' user ids (naming the creator too is harmless).
        members: Vec<String>,
        /// Optional title.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        /// Whether the conversation expires 24 hours after its last message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ephemeral: Option<bool>,
        /// The client's key for this create: a retry with the same key returns the first
        /// conversation and creates nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<IdempotencyKey>,
        /// A channel anyone may `channel.subscribe` to (channels only; default false).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public: Option<bool>,
    },
    /// Join a public channel (idempotent).
    #[serde(rename = "channel.subscribe")]
    ChannelSubscribe {
        /// The channel's conversation id.
        conversation: String,
    },
    /// Leave a channel (idempotent).
    #[serde(rename = "channel.unsubscribe")]
    ChannelUnsubscribe {
        /// The channel's conversation id.
        conversation: String,
    },
    /// Replay a channel's messages after an offset as `channel.message` frames.
    #[serde(rename = "channel.sync")]
    ChannelSync {
        /// The channel's conversation id.
        conversation: String,
        /// The last offset the client processed (0: from the first message).
        after_offset: u64,
        /// At most this many (≤ 1,000, default 1,000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// List the caller's conversations with `last_message` and `unread`.
    #[serde(rename = "conversation.list")]
    ConversationList {},
    /// Get one conversation.
    #[serde(rename = "conversation.get")]
    ConversationGet {
        /// Conversation id.
        conversation: String,
    },
    /// Add a member, or several (group creator only).
    #[serde(rename = "conversation.add")]
    ConversationAdd {
        /// Conversation id.
        conversation: String,
        /// The user to add (or `users`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The users to add, at most 1,000 (instead of `user`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        users: Option<Vec<String>>,
    },
    /// A page of a conversation's members, by user id.
    #[serde(rename = "conversation.members")]
    ConversationMembers {
        /// Conversation id.
        conversation: String,
        /// Only members whose id sorts after this one (the last of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many (≤ 1,000, default 500).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Remove a member (group creator only).
    #[serde(rename = "conversation.remove")]
    ConversationRemove {
        /// Conversation id.
        conversation: String,
        /// The user to remove.
        user: String,
    },
    /// Leave a conversation.
    #[serde(rename = "conversation.leave")]
    ConversationLeave {
        /// Conversation id.
        conversation: String,
    },
    /// Send a message; idempotent on (sender, `client_msg_id`).
    #[serde(rename = "message.send")]
    MessageSend {
        /// Conversation id.
        conversation: String,
        /// The sender's idempotency key.
        client_msg_id: String,
        /// The text.
        text: String,
        /// Attached media.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attachments: Option<Vec<Attachment>>,
        /// The message this one replies to (same conversation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        /// The root of the thread this message goes in (same conversation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
        /// Members mentioned (each gets a `mention` notification).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mentions: Option<Vec<String>>,
    },
    /// Edit a message's text (its sender only); earlier texts stay in `message.versions`.
    #[serde(rename = "message.edit")]
    MessageEdit {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
        /// The new text.
        text: String,
    },
    /// A message's texts, oldest first, the current one last.
    #[serde(rename = "message.versions")]
    MessageVersions {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
    },
    /// Delete a message for everyone (its sender, or the conversation's owner), leaving a
    /// tombstone.
    #[serde(rename = "message.delete")]
    MessageDelete {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
    },
    /// Report a message to the app's moderators (PROTOCOL.md 1.1, "Roles and moderation"):
    /// stored, listed by `GET /v1/server/reports`, told by the `message.reported` webhook.
    #[serde(rename = "message.report")]
    MessageReport {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
        /// Why (1 to 500 characters).
        reason: String,
    },
    /// React to a message (idempotent).
    #[serde(rename = "reaction.add")]
    ReactionAdd {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
        /// The emoji, 1 to 32 bytes.
        emoji: String,
    },
    /// Take a reaction back (idempotent).
    #[serde(rename = "reaction.remove")]
    ReactionRemove {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
        /// The emoji, 1 to 32 bytes.
        emoji: String,
    },
    /// Pin a message (any member of a direct conversation; the owner of a group or channel).
    #[serde(rename = "message.pin")]
    MessagePin {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
    },
    /// Unpin a message (as `message.pin`).
    #[serde(rename = "message.unpin")]
    MessageUnpin {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
    },
    /// A conversation's pinned messages, most recently pinned first.
    #[serde(rename = "conversation.pins")]
    ConversationPins {
        /// Conversation id.
        conversation: String,
    },
    /// Mute a conversation for oneself until a time (ms), or lift the mute (`null`): no push
    /// notifications from it meanwhile, except mentions.
    #[serde(rename = "conversation.mute")]
    ConversationMute {
        /// Conversation id.
        conversation: String,
        /// Until when (ms since the epoch); `null` lifts it.
        until_ts: Option<i64>,
    },
    /// Make a member an admin, or an admin a plain member (the owner only).
    #[serde(rename = "conversation.role")]
    ConversationRole {
        /// Conversation id.
        conversation: String,
        /// The member.
        user: String,
        /// `admin` or `member`.
        role: AssignedRole,
    },
    /// Ban a user from a group or channel (owner or admin): removed if a member, and not
    /// added again, nor subscribed, until the ban ends.
    #[serde(rename = "conversation.ban")]
    ConversationBan {
        /// Conversation id.
        conversation: String,
        /// The user.
        user: String,
        /// How long, in seconds; absent: until unbanned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_s: Option<u64>,
    },
    /// Lift a ban (owner or admin; idempotent).
    #[serde(rename = "conversation.unban")]
    ConversationUnban {
        /// Conversation id.
        conversation: String,
        /// The user.
        user: String,
    },
    /// Mute a member (owner or admin): their `message.send` is `forbidden` meanwhile.
    #[serde(rename = "conversation.mute_member")]
    ConversationMuteMember {
        /// Conversation id.
        conversation: String,
        /// The member.
        user: String,
        /// How long, in seconds; 0 lifts the mute.
        duration_s: u64,
    },
    /// Change a group's or channel's title or slow mode (owner or admin).
    #[serde(rename = "conversation.settings")]
    ConversationSettings {
        /// The new title (`""` removes it); absent: unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        /// Conversation id.
        conversation: String,
        /// Slow mode in seconds (0: off); absent: unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slow_mode_s: Option<u64>,
    },
    /// Page through a conversation's messages, newest first.
    #[serde(rename = "message.history")]
    MessageHistory {
        /// Conversation id.
        conversation: String,
        /// Only messages older than this message id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<String>,
        /// At most this many (≤ 100, default 50).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Only the replies in the thread of this root message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<String>,
    },
    /// Full-text search over the caller's conversations, best first.
    #[serde(rename = "message.search")]
    MessageSearch {
        /// The query.
        query: String,
        /// Restrict to one conversation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conversation: Option<String>,
    },
    /// Mark a message read (sends `receipt.read`).
    #[serde(rename = "message.read")]
    MessageRead {
        /// Conversation id.
        conversation: String,
        /// The message read.
        message: String,
    },
    /// Typing start/stop (no id).
    #[serde(rename = "typing")]
    Typing {
        /// Conversation id.
        conversation: String,
        /// Start or stop.
        state: TypingState,
    },
    /// Set the caller's presence status.
    #[serde(rename = "presence.set")]
    PresenceSet {
        /// Online, away or invisible.
        status: SetPresenceStatus,
    },
    /// Watch users' presence; the reply carries their current presence.
    #[serde(rename = "presence.watch")]
    PresenceWatch {
        /// User ids.
        users: Vec<String>,
    },
    /// Stop watching users' presence.
    #[serde(rename = "presence.unwatch")]
    PresenceUnwatch {
        /// User ids.
        users: Vec<String>,
    },
    /// Block a user.
    #[serde(rename = "block.add")]
    BlockAdd {
        /// User id.
        user: String,
    },
    /// Unblock a user.
    #[serde(rename = "block.remove")]
    BlockRemove {
        /// User id.
        user: String,
    },
    /// List blocked users.
    #[serde(rename = "block.list")]
    BlockList {},
    /// Add a user to the caller's contacts, or change their contact. An absent `group` or
    /// `note` keeps the current one; an empty one clears it.
    #[serde(rename = "contact.set")]
    ContactSet {
        /// User id.
        user: String,
        /// A group name (at most 64 characters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// A private note (at most 1,000 characters), encrypted at rest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Remove a user from the caller's contacts (idempotent).
    #[serde(rename = "contact.remove")]
    ContactRemove {
        /// User id.
        user: String,
    },
    /// List the caller's contacts.
    #[serde(rename = "contact.list")]
    ContactList {},
    /// Create a post.
    #[serde(rename = "post.create")]
    PostCreate {
        /// The text.
        text: String,
        /// Attached media.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attachments: Option<Vec<Attachment>>,
        /// The client's key for this create: a retry with the same key returns the first
        /// post and creates nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<IdempotencyKey>,
    },
    /// Delete a post (author only).
    #[serde(rename = "post.delete")]
    PostDelete {
        /// Post id.
        post: String,
    },
    /// Comment on a post.
    #[serde(rename = "comment.create")]
    CommentCreate {
        /// Post id.
        post: String,
        /// The text.
        text: String,
        /// The client's key for this create: a retry with the same key returns the first
        /// comment and creates nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<IdempotencyKey>,
    },
    /// Like a post (idempotent).
    #[serde(rename = "post.like")]
    PostLike {
        /// Post id.
        post: String,
    },
    /// Unlike a post (idempotent).
    #[serde(rename = "post.unlike")]
    PostUnlike {
        /// Post id.
        post: String,
    },
    /// Follow a user.
    #[serde(rename = "follow")]
    Follow {
        /// User id.
        user: String,
    },
    /// Unfollow a user.
    #[serde(rename = "unfollow")]
    Unfollow {
        /// User id.
        user: String,
    },
    /// Read the caller's precomputed timeline.
    #[serde(rename = "timeline.get")]
    TimelineGet {
        /// Only posts older than this post id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<String>,
        /// At most this many (≤ 100, default 50).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Watch posts' engagement (at most 50 per session).
    #[serde(rename = "post.watch")]
    PostWatch {
        /// Post ids.
        posts: Vec<String>,
    },
    /// Stop watching posts' engagement.
    #[serde(rename = "post.unwatch")]
    PostUnwatch {
        /// Post ids.
        posts: Vec<String>,
    },
    /// The caller is writing a comment (no id).
    #[serde(rename = "comment.typing")]
    CommentTyping {
        /// Post id.
        post: String,
        /// Words typed so far.
        words: u32,
    },
}

impl Request {
    /// Every request `type`, as on the wire.
    pub const TYPES: &'static [&'static str] = &[
        "sync",
        "ack",
        "auth",
        "conversation.create",
        "conversation.list",
        "conversation.get",
        "conversation.add",
        "conversation.members",
        "conversation.remove",
        "conversation.leave",
        "channel.subscribe",
        "channel.unsubscribe",
        "channel.sync",
        "message.send",
        "message.history",
        "message.search",
        "message.read",
        "message.edit",
        "message.versions",
        "message.delete",
        "message.report",
        "reaction.add",
        "reaction.remove",
        "message.pin",
        "message.unpin",
        "conversation.pins",
        "conversation.mute",
        "conversation.role",
        "conversation.ban",
        "conversation.unban",
        "conversation.mute_member",
        "conversation.settings",
        "typing",
        "presence.set",
        "presence.watch",
        "presence.unwatch",
        "block.add",
        "block.remove",
        "block.list",
        "contact.set",
        "contact.remove",
        "contact.list",
        "post.create",
        "post.delete",
        "comment.create",
        "post.like",
        "post.unlike",
        "follow",
        "unfollow",
        "timeline.get",
        "post.watch",
        "post.unwatch",
        "comment.typing",
    ];

    /// This request's `type` as on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Sync { .. } => "sync",
            Request::Ack { .. } => "ack",
            Request::Auth { .. } => "auth",
            Request::ConversationCreate { .. } => "conversation.create",
            Request::ChannelSubscribe { .. } => "channel.subscribe",
            Request::ChannelUnsubscribe { .. } => "channel.unsubscribe",
            Request::ChannelSync { .. } => "channel.sync",
            Request::ConversationList {} => "conversation.list",
            Request::ConversationGet { .. } => "conversation.get",
            Request::ConversationAdd { .. } => "conversation.add",
            Request::ConversationMembers { .. } => "conversation.members",
            Request::ConversationRemove { .. } => "conversation.remove",
            Request::ConversationLeave { .. } => "conversation.leave",
            Request::MessageSend { .. } => "message.send",
            Request::MessageHistory { .. } => "message.history",
            Request::MessageSearch { .. } => "message.search",
            Request::MessageRead { .. } => "message.read",
            Request::MessageEdit { .. } => "message.edit",
            Request::MessageVersions { .. } => "message.versions",
            Request::MessageDelete { .. } => "message.delete",
            Request::MessageReport { .. } => "message.report",
            Request::ReactionAdd { .. } => "reaction.add",
            Request::ReactionRemove { .. } => "reaction.remove",
            Request::MessagePin { .. } => "message.pin",
            Request::MessageUnpin { .. } => "message.unpin",
            Request::ConversationPins { .. } => "conversation.pins",
            Request::ConversationMute { .. } => "conversation.mute",
            Request::ConversationRole { .. } => "conversation.role",
            Request::ConversationBan { .. } => "conversation.ban",
            Request::ConversationUnban { .. } => "conversation.unban",
            Request::ConversationMuteMember { .. } => "conversation.mute_member",
            Request::ConversationSettings { .. } => "conversation.settings",
            Request::Typing { .. } => "typing",
            Request::PresenceSet { .. } => "presence.set",
            Request::PresenceWatch { .. } => "presence.watch",
            Request::PresenceUnwatch { .. } => "presence.unwatch",
            Request::BlockAdd { .. } => "block.add",
            Request::BlockRemove { .. } => "block.remove",
            Request::BlockList {} => "block.list",
            Request::ContactSet { .. } => "contact.set",
            Request::ContactRemove { .. } => "contact.remove",
            Request::ContactList {} => "contact.list",
            Request::PostCreate { .. } => "post.create",
            Request::PostDelete { .. } => "post.delete",
            Request::CommentCreate { .. } => "comment.create",
            Request::PostLike { .. } => "post.like",
            Request::PostUnlike { .. } => "post.unlike",
            Request::Follow { .. } => "follow",
            Request::Unfollow { .. } => "unfollow",
            Request::TimelineGet { .. } => "timeline.get",
            Request::PostWatch { .. } => "post.watch",
            Request::PostUnwatch { .. } => "post.unwatch",
            Request::CommentTyping { .. } => "comment.typing",
        }
    }
}

/// A client's idempotency key for a create (`idempotency_key`): 1 to
/// [`IdempotencyKey::MAX_CHARS`] characters. Created objects' ids derive from (user, request
/// type, key), so a client that retries a create after `internal` or a lost connection gets
/// the first object back instead of a second one. Checked when the frame is parsed: an empty
/// or longer key is `bad_request` naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The most characters a key may have.
    pub const MAX_CHARS: usize = 64;

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = String;

    fn try_from(key: String) -> Result<Self, String> {
        let n = key.chars().count();
        if n == 0 || n > Self::MAX_CHARS {
            return Err(format!(
                "`idempotency_key` must be 1 to {} characters",
                Self::MAX_CHARS
            ));
        }
        Ok(IdempotencyKey(key))
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for IdempotencyKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdempotencyKey".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A client's key for a create: a retry with the same key returns the first object.",
            "type": "string",
            "minLength": 1,
            "maxLength": Self::MAX_CHARS,
        })
    }
}

/// Why a client frame could not be read. Always answered with [`FrameError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// The frame's `id`, when it could be read (the error reply carries it).
    pub id: Option<String>,
    /// The protocol error code (always `bad_request` from the parser).
    pub code: ErrorCode,
    /// A message for the client author.
    pub message: String,
}

impl FrameError {
    fn bad(id: Option<String>, message: impl Into<String>) -> Self {
        FrameError {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

impl ClientFrame {
    /// Parse one client frame (one JSON object) from text.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| FrameError::bad(None, format!("malformed json: {e}")))?;
        Self::from_value(value)
    }

    /// Parse one client frame from an already decoded JSON value.
    pub fn from_value(value: Value) -> Result<ClientFrame, FrameError> {
        let Value::Object(mut map) = value else {
            return Err(FrameError::bad(None, "a frame must be a json object"));
        };
        let id = match map.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(FrameError::bad(None, "`id` must be a string")),
        };
        let ty = match map.get("type") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(FrameError::bad(id, "`type` must be a string")),
            None => return Err(FrameError::bad(id, "missing `type`")),
        };
        if !Request::TYPES.contains(&ty.as_str()) {
            return Err(FrameError::bad(id, format!("unknown type `{ty}`")));
        }
        let value = Value::Object(map);
        if crate::holds_nul(&value) {
            return Err(FrameError::bad(id, crate::NUL_REFUSED));
        }
        match serde_json::from_value::<Request>(value) {
            Ok(request) => Ok(ClientFrame { id, request }),
            Err(e) => Err(FrameError::bad(id, format!("invalid `{ty}`: {e}"))),
        }
    }

    /// Serialize to the compact wire form.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// U+0000 anywhere in a frame's strings is `bad_request` with the frame's id; the
    /// six characters `\u0000` written with an escaped backslash are plain text.
    #[test]
    fn a_nul_in_any_string_is_refused() {
        let nul = r#"{"type":"message.send","id":"n","conversation":"c","client_msg_id":"k","text":"a\u0000"}"#;
        let e = ClientFrame::parse(nul).expect_err("refused");
        assert_eq!(
            (e.id.as_deref(), e.code),
            (Some("n"), crate::ErrorCode::BadRequest)
        );
        let in_a_list =
            r#"{"type":"conversation.create","id":"g","kind":"group","members":["a","b\u0000"]}"#;
        assert!(ClientFrame::parse(in_a_list).is_err());
        let text = r#"{"type":"message.send","id":"t","conversation":"c","client_msg_id":"k","text":"a\\u0000"}"#;
        match ClientFrame::parse(text).expect("parses").request {
            Request::MessageSend { text, .. } => assert_eq!(text, "a\\u0000"),
            other => panic!("{other:?}"),
        }
        assert!(crate::json_holds_nul(nul.as_bytes()));
        assert!(!crate::json_holds_nul(text.as_bytes()));
        assert!(!crate::json_holds_nul(b"{not json \\u0000"));
    }

    /// Every example request of PROTOCOL.md parses, names its type, and serializes back to
    /// the same JSON.
    #[test]
    fn protocol_examples_round_trip() {
        let examples = [
            json!({"type":"sync","id":"r2","after_seq":37}),
            json!({"type":"ack","seq":42}),
            json!({"type":"auth","id":"r9","access_token":"eyJ..."}),
            json!({"type":"conversation.create","id":"r1","kind":"group","members":["u2","u3"],"title":"t","ephemeral":true}),
            json!({"type":"conversation.create","id":"r1","kind":"direct","members":["u2"]}),
            json!({"type":"conversation.list","id":"r1"}),
            json!({"type":"conversation.get","id":"r1","conversation":"c1"}),
            json!({"type":"conversation.add","id":"r1","conversation":"c1","user":"u4"}),
            json!({"type":"conversation.add","id":"r1","conversation":"c1","users":["u4","u5"]}),
            json!({"type":"conversation.members","id":"r1","conversation":"c1"}),
            json!({"type":"conversation.members","id":"r1","conversation":"c1","after":"u4","limit":2}),
            json!({"type":"conversation.remove","id":"r1","conversation":"c1","user":"u4"}),
            json!({"type":"conversation.leave","id":"r1","conversation":"c1"}),
            json!({"type":"message.send","id":"r1","conversation":"c1","client_msg_id":"m1","text":"hi"}),
            json!({"type":"message.send","id":"r1","conversation":"c1","client_msg_id":"m1","text":"hi","attachments":[{"media":"md1"}]}),
            json!({"type":"message.history","id":"r1","conversation":"c1","before":"m9","limit":20}),
            json!({"type":"message.search","id":"r1","query":"hello","conversation":"c1"}),
            json!({"type":"message.read","id":"r1","conversation":"c1","message":"m1"}),
            json!({"type":"typing","conversation":"c1","state":"start"}),
            json!({"type":"presence.set","id":"r1","status":"invisible"}),
            json!({"type":"presence.watch","id":"r1","users":["u2"]}),
            json!({"type":"presence.unwatch","id":"r1","users":["u2"]}),
            json!({"type":"block.add","id":"r1","user":"u2"}),
            json!({"type":"block.remove","id":"r1","user":"u2"}),
            json!({"type":"block.list","id":"r1"}),
            json!({"type":"contact.set","id":"r1","user":"u2","group":"work","note":"n"}),
            json!({"type":"contact.set","id":"r1","user":"u2"}),
            json!({"type":"contact.remove","id":"r1","user":"u2"}),
            json!({"type":"contact.list","id":"r1"}),
            json!({"type":"post.create","id":"r1","text":"hello world"}),
            json!({"type":"post.create","id":"r1","text":"hi","idempotency_key":"k-1"}),
            json!({"type":"comment.create","id":"r1","post":"p1","text":"nice","idempotency_key":"k-2"}),
            json!({"type":"conversation.create","id":"r1","kind":"group","members":["u2"],"idempotency_key":"k-3"}),
            json!({"type":"post.delete","id":"r1","post":"p1"}),
            json!({"type":"comment.create","id":"r1","post":"p1","text":"nice"}),
            json!({"type":"post.like","id":"r1","post":"p1"}),
            json!({"type":"post.unlike","id":"r1","post":"p1"}),
            json!({"type":"follow","id":"r1","user":"u2"}),
            json!({"type":"unfollow","id":"r1","user":"u2"}),
            json!({"type":"timeline.get","id":"r1","before":"p9","limit":10}),
            json!({"type":"post.watch","id":"r1","posts":["p1","p2"]}),
            json!({"type":"post.unwatch","id":"r1","posts":["p1"]}),
            json!({"type":"comment.typing","post":"p1","words":12}),
            json!({"type":"conversation.create","id":"r1","kind":"channel","members":[],"title":"news","public":true}),
            json!({"type":"channel.subscribe","id":"r1","conversation":"c1"}),
            json!({"type":"channel.unsubscribe","id":"r1","conversation":"c1"}),
            json!({"type":"channel.sync","id":"r1","conversation":"c1","after_offset":41,"limit":100}),
            json!({"type":"message.send","id":"r1","conversation":"c1","client_msg_id":"m2","text":"re","reply_to":"7","thread":"5","mentions":["u2"]}),
            json!({"type":"message.history","id":"r1","conversation":"c1","thread":"5"}),
            json!({"type":"message.edit","id":"r1","conversation":"c1","message":"7","text":"fixed"}),
            json!({"type":"message.versions","id":"r1","conversation":"c1","message":"7"}),
            json!({"type":"message.delete","id":"r1","conversation":"c1","message":"7"}),
            json!({"type":"message.report","id":"r1","conversation":"c1","message":"7","reason":"spam"}),
            json!({"type":"conversation.mute","id":"r1","conversation":"c1","until_ts":1}),
            json!({"type":"conversation.mute","id":"r1","conversation":"c1","until_ts":null}),
            json!({"type":"conversation.role","id":"r1","conversation":"c1","user":"u2","role":"admin"}),
            json!({"type":"conversation.role","id":"r1","conversation":"c1","user":"u2","role":"member"}),
            json!({"type":"conversation.ban","id":"r1","conversation":"c1","user":"u2","duration_s":60}),
            json!({"type":"conversation.ban","id":"r1","conversation":"c1","user":"u2"}),
            json!({"type":"conversation.unban","id":"r1","conversation":"c1","user":"u2"}),
            json!({"type":"conversation.mute_member","id":"r1","conversation":"c1","user":"u2","duration_s":0}),
            json!({"type":"conversation.settings","id":"r1","conversation":"c1","title":"t","slow_mode_s":10}),
            json!({"type":"conversation.settings","id":"r1","conversation":"c1"}),
            json!({"type":"reaction.add","id":"r1","conversation":"c1","message":"7","emoji":"👍"}),
            json!({"type":"reaction.remove","id":"r1","conversation":"c1","message":"7","emoji":"👍"}),
            json!({"type":"message.pin","id":"r1","conversation":"c1","message":"7"}),
            json!({"type":"message.unpin","id":"r1","conversation":"c1","message":"7"}),
            json!({"type":"conversation.pins","id":"r1","conversation":"c1"}),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for example in examples {
            let frame = ClientFrame::parse(&example.to_string()).expect("example parses");
            assert_eq!(
                frame.request.type_name(),
                example["type"].as_str().expect("type")
            );
            seen.insert(frame.request.type_name());
            let back: Value = serde_json::from_str(&frame.to_json()).expect("json");
            assert_eq!(back, example);
        }
        let all: std::collections::BTreeSet<_> = Request::TYPES.iter().copied().collect();
        assert_eq!(seen, all, "every request type has an example");
    }

    #[test]
    fn bad_frames_are_bad_request_with_id_when_readable() {
        let e = ClientFrame::parse("{not json").expect_err("malformed");
        assert_eq!((e.code, e.id.as_deref()), (ErrorCode::BadRequest, None));
        assert!(e.message.starts_with("malformed json"));

        let e = ClientFrame::parse("[1,2]").expect_err("not an object");
        assert_eq!(e.code, ErrorCode::BadRequest);

        let e = ClientFrame::parse(r#"{"type":"nope","id":"r7"}"#).expect_err("unknown");
        assert_eq!(e.id.as_deref(), Some("r7"));
        assert_eq!(e.message, "unknown type `nope`");

        let e = ClientFrame::parse(r#"{"id":"r8"}"#).expect_err("missing type");
        assert_eq!(
            (e.id.as_deref(), e.message.as_str()),
            (Some("r8"), "missing `type`")
        );

        let e = ClientFrame::parse(r#"{"type":"message.send","id":"r9","conversation":"c"}"#)
            .expect_err("missing fields");
        assert_eq!(e.id.as_deref(), Some("r9"));
        assert!(e.message.contains("client_msg_id"), "{}", e.message);

        let e = ClientFrame::parse(r#"{"type":"comment.typing","post":"p","words":-3}"#)
            .expect_err("negative words");
        assert_eq!(e.code, ErrorCode::BadRequest);

        let e = ClientFrame::parse(r#"{"type":"sync","id":5}"#).expect_err("numeric id");
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn idempotency_keys_are_1_to_64_characters() {
        let frame = |key: &str| {
            json!({"type":"post.create","id":"r1","text":"hi","idempotency_key":key}).to_string()
        };
        let longest = "é".repeat(IdempotencyKey::MAX_CHARS);
        match ClientFrame::parse(&frame(&longest))
            .expect("64 characters")
            .request
        {
            Request::PostCreate {
                idempotency_key: Some(k),
                ..
            } => assert_eq!(k.as_str(), longest),
            other => panic!("{other:?}"),
        }
        for bad in [String::new(), "x".repeat(IdempotencyKey::MAX_CHARS + 1)] {
            let e = ClientFrame::parse(&frame(&bad)).expect_err("refused");
            assert_eq!(
                (e.code, e.id.as_deref()),
                (ErrorCode::BadRequest, Some("r1"))
            );
            assert!(e.message.contains("idempotency_key"), "{}", e.message);
        }
        let e = ClientFrame::parse(
            r#"{"type":"comment.create","id":"r2","post":"p","text":"t","idempotency_key":7}"#,
        )
        .expect_err("not a string");
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn unknown_fields_are_ignored_and_sync_defaults_to_zero() {
        let f = ClientFrame::parse(r#"{"type":"sync","id":"a","future_field":1}"#).expect("ok");
        assert_eq!(f.request, Request::Sync { after_seq: 0 });
    }
}
