//! Frames sent by the server: `hello`, replies (`ok`, `error`) and pushed events.
//!
//! Durable events (`message.new`, `conversation.updated`, `contact.updated`, `receipt.read`,
//! `notification`)
//! carry the user's `seq`; ephemeral ones (`typing`, `presence`, `timeline`, `engagement`, `flags`)
//! do not. Several frames may share one WebSocket text frame, separated by `\n`.

use crate::error::ErrorCode;
use crate::model::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every frame the server sends, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum ServerFrame {
    /// First frame of every connection.
    #[serde(rename = "hello")]
    Hello {
        /// The authenticated user.
        user: UserRef,
        /// This session's id.
        session: String,
        /// Seq of the user's latest durable event (0 if none).
        last_seq: u64,
        /// The server's clock.
        server_ts: i64,
        /// The protocol version the server speaks (`"1.1"`).
        protocol: String,
        /// Every feature flag, evaluated for this user.
        flags: BTreeMap<String, bool>,
    },
    /// A successful reply.
    #[serde(rename = "ok")]
    Ok {
        /// The request's id.
        id: String,
        /// The reply data (its shape depends on the request type).
        data: ReplyData,
    },
    /// An error reply, or an error about a frame without id (`"id":null`).
    #[serde(rename = "error")]
    Error {
        /// The request's id, or null.
        id: Option<String>,
        /// The error code.
        code: ErrorCode,
        /// A message for the client author.
        message: String,
        /// With `rate_limited`: when one more frame will be accepted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A new message in a conversation the user belongs to (durable).
    #[serde(rename = "message.new")]
    MessageNew {
        /// The user's event seq.
        seq: u64,
        /// The message.
        // Shared: a message to a group of N members is N of these frames, one copy of it.
        message: std::sync::Arc<Message>,
    },
    /// A message was edited or deleted, or its `replies` changed (durable).
    #[serde(rename = "message.updated")]
    MessageUpdated {
        /// The user's event seq.
        seq: u64,
        /// The message as it is now.
        message: Message,
    },
    /// A reaction was added to or removed from a message (durable).
    #[serde(rename = "reaction.updated")]
    ReactionUpdated {
        /// The user's event seq.
        seq: u64,
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
        /// Who reacted.
        user: String,
        /// The emoji.
        emoji: String,
        /// Added or removed.
        op: ReactionOp,
        /// The message's reactions now, most first.
        reactions: Vec<ReactionCount>,
    },
    /// A conversation was created, changed membership, or expired (durable).
    #[serde(rename = "conversation.updated")]
    ConversationUpdated {
        /// The user's event seq.
        seq: u64,
        /// The conversation as it is now.
        conversation: Conversation,
    },
    /// One of the user's contacts was set or removed (durable; only the owner's sessions).
    #[serde(rename = "contact.updated")]
    ContactUpdated {
        /// The user's event seq.
        seq: u64,
        /// The contact as it is now (absent when removed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contact: Option<Contact>,
        /// The user removed from the contacts (only when removed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// True when the contact was removed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        removed: bool,
    },
    /// A member read up to a message (durable).
    #[serde(rename = "receipt.read")]
    ReceiptRead {
        /// The user's event seq.
        seq: u64,
        /// Conversation id.
        conversation: String,
        /// The reader.
        user: String,
        /// The message read.
        message: String,
    },
    /// A like, comment, follow, mention or system notice (durable).
    #[serde(rename = "notification")]
    Notification {
        /// The user's event seq.
        seq: u64,
        /// What happened.
        kind: NotificationKind,
        /// Details, by kind.
        data: serde_json::Value,
    },
    /// Someone is typing in a conversation (ephemeral).
    #[serde(rename = "typing")]
    Typing {
        /// Conversation id.
        conversation: String,
        /// Who is typing.
        user: String,
        /// Start or stop.
        state: TypingState,
    },
    /// A watched user's presence changed (ephemeral).
    #[serde(rename = "presence")]
    Presence(Presence),
    /// A message in a channel the user belongs to: durable in the channel's history, numbered
    /// by the channel's `offset` (from 1, without gaps), not an inbox event (no `seq`).
    #[serde(rename = "channel.message")]
    ChannelMessage {
        /// The channel's conversation id.
        conversation: String,
        /// The message's place in the channel.
        offset: u64,
        /// The message.
        message: Message,
    },
    /// A channel's message changed (edited, deleted, reacted to, replied to in a thread): not
    /// an inbox event (no `seq`); `offset` is the changed message's.
    #[serde(rename = "channel.updated")]
    ChannelUpdated {
        /// The channel's conversation id.
        conversation: String,
        /// The changed message's place in the channel.
        offset: u64,
        /// The message as it is now.
        message: Message,
    },
    /// The user's timeline (ephemeral; pushed after `hello`).
    #[serde(rename = "timeline")]
    Timeline {
        /// Posts, ranked.
        items: Vec<Post>,
        /// When the timeline was precomputed.
        computed_ts: i64,
    },
    /// The user's feature flags changed (ephemeral): the whole map.
    #[serde(rename = "flags")]
    Flags {
        /// Every flag, evaluated for this user.
        flags: BTreeMap<String, bool>,
    },
    /// Who is writing a comment on a watched post (ephemeral).
    #[serde(rename = "engagement")]
    Engagement {
        /// Post id.
        post: String,
        /// The sliding window, in seconds.
        window_s: u32,
        /// Distinct writers in the window.
        writers: u32,
        /// The post's comment count.
        comments: u64,
        /// The writers with the most words, most first.
        top: Vec<TopWriter>,
    },
}

impl ServerFrame {
    /// An error reply.
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The `seq` of a durable event, `None` for every other frame.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ServerFrame::MessageNew { seq, .. }
            | ServerFrame::MessageUpdated { seq, .. }
            | ServerFrame::ReactionUpdated { seq, .. }
            | ServerFrame::ConversationUpdated { seq, .. }
            | ServerFrame::ContactUpdated { seq, .. }
            | ServerFrame::ReceiptRead { seq, .. }
            | ServerFrame::Notification { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// This frame's `type` as on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Hello { .. } => "hello",
            ServerFrame::Ok { .. } => "ok",
            ServerFrame::Error { .. } => "error",
            ServerFrame::MessageNew { .. } => "message.new",
            ServerFrame::ChannelMessage { .. } => "channel.message",
            ServerFrame::MessageUpdated { .. } => "message.updated",
            ServerFrame::ReactionUpdated { .. } => "reaction.updated",
            ServerFrame::ChannelUpdated { .. } => "channel.updated",
            ServerFrame::ConversationUpdated { .. } => "conversation.updated",
            ServerFrame::ContactUpdated { .. } => "contact.updated",
            ServerFrame::ReceiptRead { .. } => "receipt.read",
            ServerFrame::Notification { .. } => "notification",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Presence(_) => "presence",
            ServerFrame::Timeline { .. } => "timeline",
            ServerFrame::Engagement { .. } => "engagement",
            ServerFrame::Flags { .. } => "flags",
        }
    }

    /// Serialize to the compact wire form.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The `data` of an `ok` reply. Its shape depends on the request; clients know which request
/// they sent. Variants are tried in order when deserializing, the empty one last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ReplyData {
    /// `conversation.list`.
    Conversations {
        /// Conversations with `last_message` and `unread`.
        conversations: Vec<ConversationSummary>,
    },
    /// `conversation.create`, `conversation.get`.
    Conversation {
        /// The conversation.
        conversation: Conversation,
    },
    /// `message.history`.
    History {
        /// Messages, newest first.
        messages: Vec<Message>,
        /// True iff older messages remain.
        more: bool,
    },
    /// `conversation.members`.
    Members {
        /// Member user ids, in order.
        members: Vec<String>,
        /// True iff more members follow.
        more: bool,
    },
    /// `message.search`, `conversation.pins`.
    Search {
        /// Messages, best first (pins: most recently pinned first).
        messages: Vec<Message>,
    },
    /// `message.send`, `message.edit`.
    Message {
        /// The message (the first one, for a repeated `client_msg_id`).
        message: Message,
    },
    /// `presence.watch`.
    Presence {
        /// Current presence of the watched users.
        presence: Vec<Presence>,
    },
    /// `block.list`.
    Users {
        /// User ids.
        users: Vec<String>,
    },
    /// `contact.set`.
    Contact {
        /// The contact as set.
        contact: Contact,
    },
    /// `contact.list`.
    Contacts {
        /// The caller's contacts, by user id.
        contacts: Vec<Contact>,
    },
    /// `post.create`.
    Post {
        /// The post.
        post: Post,
    },
    /// `comment.create`.
    Comment {
        /// The comment.
        comment: Comment,
    },
    /// `post.like`, `post.unlike`.
    Likes {
        /// The like count.
        likes: u64,
    },
    /// `timeline.get`.
    Timeline {
        /// Posts, ranked.
        items: Vec<Post>,
        /// When the timeline was precomputed.
        computed_ts: i64,
    },
    /// `sync`.
    Sync {
        /// The latest durable seq.
        last_seq: u64,
        /// Present and true when events older than the retention window were needed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// `channel.sync`: the channel's messages up to `last_offset` were written before this
    /// reply; `more` when the page was full (sync again from `last_offset`).
    ChannelSync {
        /// The offset of the last message replayed (`after_offset` when none was).
        last_offset: u64,
        /// Whether later messages remain.
        more: bool,
    },
    /// `auth`: the session now runs on the new token, until it expires.
    Auth {
        /// When the new token expires, ms since the epoch.
        expires_ts: i64,
    },
    /// `message.versions`.
    Versions {
        /// The texts, oldest first, the current one last.
        versions: Vec<MessageVersion>,
    },
    /// `reaction.add`, `reaction.remove`.
    Reactions {
        /// The message's reactions now, most first.
        reactions: Vec<ReactionCount>,
    },
    /// Every request whose reply is `{}`.
    Empty {},
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn round_trip(v: Value) -> ServerFrame {
        let frame: ServerFrame = serde_json::from_value(v.clone()).expect("parses");
        let back: Value = serde_json::from_str(&frame.to_json()).expect("json");
        assert_eq!(back, v, "round trip of {v}");
        frame
    }

    fn conv() -> Value {
        json!({"id":"c1","kind":"group","title":null,"members":["u1","u2"],"member_count":2,
               "created_by":"u1","created_ts":1,"ephemeral":false,"pinned":["m1"],
               "roles":{"u1":"owner"},"slow_mode_s":0})
    }
    fn msg() -> Value {
        json!({"id":"m1","conversation":"c1","sender":"u1","client_msg_id":"k1","text":"hi",
               "attachments":[{"media":"md1"}],"ts":5,"reply_to":null,"thread":"m0",
               "mentions":["u2"],"edited_ts":6,"deleted":false,
               "reactions":[{"emoji":"👍","count":2}],"replies":0})
    }
    fn post() -> Value {
        json!({"id":"p1","author":"u1","text":"x","attachments":[],"ts":3,"likes":2,"comments":1})
    }

    #[test]
    fn every_server_frame_round_trips() {
        let hello = round_trip(json!({"type":"hello","user":{"id":"u1","handle":"alice"},
            "session":"s1","last_seq":42,"server_ts":1700000000000i64,"protocol":"1.1",
            "flags":{"beta":true,"gamma":false}}));
        assert_eq!(hello.seq(), None);
        let flags = round_trip(json!({"type":"flags","flags":{"beta":true}}));
        assert_eq!((flags.seq(), flags.type_name()), (None, "flags"));
        round_trip(json!({"type":"error","id":"r1","code":"forbidden","message":"not a member"}));
        round_trip(json!({"type":"error","id":null,"code":"bad_request","message":"binary"}));
        round_trip(
            json!({"type":"error","id":"r2","code":"rate_limited","message":"slow down",
            "retry_after_ms":50}),
        );
        let m = round_trip(json!({"type":"message.new","seq":7,"message":msg()}));
        assert_eq!((m.seq(), m.type_name()), (Some(7), "message.new"));
        round_trip(json!({"type":"conversation.updated","seq":8,"conversation":conv()}));
        round_trip(json!({"type":"contact.updated","seq":9,
            "contact":{"user":"u2","group":"work","note":null,"ts":5}}));
        round_trip(json!({"type":"contact.updated","seq":10,"user":"u2","removed":true}));
        let u = round_trip(json!({"type":"message.updated","seq":11,"message":msg()}));
        assert_eq!((u.seq(), u.type_name()), (Some(11), "message.updated"));
        let r = round_trip(
            json!({"type":"reaction.updated","seq":12,"conversation":"c1",
            "message":"m1","user":"u2","emoji":"👍","op":"add",
            "reactions":[{"emoji":"👍","count":1}]}),
        );
        assert_eq!((r.seq(), r.type_name()), (Some(12), "reaction.updated"));
        let c = round_trip(
            json!({"type":"channel.updated","conversation":"c1","offset":3,
            "message":msg()}),
        );
        assert_eq!((c.seq(), c.type_name()), (None, "channel.updated"));
        round_trip(
            json!({"type":"receipt.read","seq":9,"conversation":"c1","user":"u2",
            "message":"m1"}),
        );
        round_trip(json!({"type":"notification","seq":10,"kind":"like",
            "data":{"post":"p1","user":"u2"}}));
        round_trip(json!({"type":"typing","conversation":"c1","user":"u2","state":"stop"}));
        round_trip(json!({"type":"presence","user":"u2","status":"away","last_seen_ts":3}));
        round_trip(json!({"type":"timeline","items":[post()],"computed_ts":4}));
        round_trip(
            json!({"type":"engagement","post":"p1","window_s":300,"writers":17,
            "comments":230,"top":[{"user":"u2","handle":"bob","words":48}]}),
        );
    }

    #[test]
    fn every_reply_shape_round_trips_to_its_variant() {
        let cases = [
            (
                json!({"conversations":[{"id":"c1","kind":"group","title":null,"members":["u1"],
                "member_count":1,"created_by":"u1","created_ts":1,"ephemeral":false,
                "pinned":[],"roles":{},"slow_mode_s":0,"last_message":null,"unread":0}]}),
                "Conversations",
            ),
            (json!({"conversation":conv()}), "Conversation"),
            (json!({"messages":[msg()],"more":true}), "History"),
            (json!({"members":["u1","u2"],"more":false}), "Members"),
            (json!({"messages":[msg()]}), "Search"),
            (json!({"message":msg()}), "Message"),
            (
                json!({"presence":[{"user":"u2","status":"offline","last_seen_ts":null}]}),
                "Presence",
            ),
            (json!({"users":["u2"]}), "Users"),
            (json!({"post":post()}), "Post"),
            (
                json!({"comment":{"id":"k","post":"p1","author":"u1","text":"t","ts":1}}),
                "Comment",
            ),
            (json!({"likes":3}), "Likes"),
            (json!({"items":[],"computed_ts":0}), "Timeline"),
            (json!({"last_seq":42}), "Sync"),
            (json!({"last_seq":42,"truncated":true}), "Sync"),
            (json!({"expires_ts":1795307687132_i64}), "Auth"),
            (json!({"versions":[{"text":"a","ts":1}]}), "Versions"),
            (json!({"reactions":[{"emoji":"x","count":1}]}), "Reactions"),
            (json!({}), "Empty"),
        ];
        for (data, variant) in cases {
            let frame = round_trip(json!({"type":"ok","id":"r1","data":data}));
            let ServerFrame::Ok { data, .. } = frame else {
                panic!("not ok")
            };
            let name = format!("{data:?}");
            assert!(name.starts_with(variant), "{name} is not {variant}");
        }
    }
}
