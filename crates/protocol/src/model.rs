//! The objects that frames carry, named as in PROTOCOL.md: `C` ([`Conversation`]), `M`
//! ([`Message`]), `P` ([`Presence`]), `T` ([`Post`]), and their parts.
//!
//! Ids are opaque strings and timestamps are milliseconds since the Unix epoch.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A user as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct UserRef {
    /// The user's id.
    pub id: String,
    /// The user's handle.
    pub handle: String,
}

/// A reference to uploaded media, as used in `attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Attachment {
    /// The media id returned by `POST /v1/media`.
    pub media: String,
}

/// Direct (two people), group, or channel (broadcast: only its owner sends).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Between exactly two users, unique per pair.
    Direct,
    /// Any number of members up to the group limit.
    Group,
    /// A broadcast conversation (PROTOCOL.md 1.1, "Channels"): its owner sends, its members
    /// (subscribers) receive `channel.message` numbered by the channel's offset.
    Channel,
}

/// A member's role in a group or channel (PROTOCOL.md 1.1, "Roles and moderation"). `C`'s
/// `roles` lists owners and admins; members not listed are plain members.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The group's or channel's owner (its creator, or whom ownership passed to).
    Owner,
    /// May add, remove, ban and mute plain members, delete and pin messages, change settings.
    Admin,
    /// A plain member.
    Member,
}

/// The roles `conversation.role` gives: `admin`, or `member` (back to a plain member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssignedRole {
    /// An admin.
    Admin,
    /// A plain member.
    Member,
}

impl From<AssignedRole> for Role {
    fn from(r: AssignedRole) -> Role {
        match r {
            AssignedRole::Admin => Role::Admin,
            AssignedRole::Member => Role::Member,
        }
    }
}

impl Role {
    /// The name it is stored and sent under.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// The role stored under this name (anything unknown is a plain member).
    pub fn from_name(name: &str) -> Role {
        match name {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            _ => Role::Member,
        }
    }

    /// Owner or admin: may moderate.
    pub fn moderates(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

impl ConversationKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
            ConversationKind::Channel => "channel",
        }
    }
}

/// Past this many members a group is large: `C` omits `members`, and a membership change
/// is pushed only to the users added or removed and to the member who made it (PROTOCOL.md
/// 1.1, "Large groups").
pub const LARGE_GROUP: usize = 256;

/// `C`: a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Conversation {
    /// Conversation id.
    pub id: String,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Title, if any.
    pub title: Option<String>,
    /// Member user ids, the creator included. Omitted on the wire for a group of more than
    /// [`LARGE_GROUP`] members (`conversation.members` pages through them); always complete
    /// inside the server.
    #[serde(default)]
    pub members: Vec<String>,
    /// How many members (always present).
    #[serde(default)]
    pub member_count: u64,
    /// Not on the wire: `members` was left out of this copy (a large group's, in an event),
    /// so it is omitted on the wire whatever its length.
    #[serde(skip)]
    #[schemars(skip)]
    pub members_omitted: bool,
    /// The creator's user id.
    pub created_by: String,
    /// Creation time.
    pub created_ts: i64,
    /// Whether the conversation expires 24 hours after its last message.
    pub ephemeral: bool,
    /// A channel anyone may subscribe to (on the wire for channels only).
    #[serde(default)]
    pub public: bool,
    /// A channel's last message offset (on the wire for channels only).
    #[serde(default)]
    pub last_offset: u64,
    /// Pinned message ids, most recently pinned first.
    #[serde(default)]
    pub pinned: Vec<String>,
    /// The owner and the admins, by user id (plain members are not listed; empty for a
    /// direct conversation).
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Role>,
    /// Slow mode: a plain member may send one message per this many seconds (0: off).
    #[serde(default)]
    pub slow_mode_s: u64,
}

/// `C` with the caller's `last_message` and `unread`, as listed by `conversation.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationSummary {
    /// The conversation.
    #[serde(flatten)]
    pub conversation: Conversation,
    /// The newest message, or null.
    pub last_message: Option<Message>,
    /// Messages from others after the caller's last `message.read`.
    pub unread: u64,
}

/// `M`: a chat message.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub struct Message {
    /// Message id.
    pub id: String,
    /// Conversation id.
    pub conversation: String,
    /// Sender's user id.
    pub sender: String,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// The text.
    pub text: String,
    /// Attached media.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Time the server accepted it.
    pub ts: i64,
    /// The message this one replies to (same conversation), or null.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The root of the thread this message is in (same conversation), or null.
    #[serde(default)]
    pub thread: Option<String>,
    /// Members mentioned.
    #[serde(default)]
    pub mentions: Vec<String>,
    /// When the text was last edited, or null.
    #[serde(default)]
    pub edited_ts: Option<i64>,
    /// Deleted for everyone: a tombstone (`text` empty, no attachments).
    #[serde(default)]
    pub deleted: bool,
    /// Reactions by emoji, most first (ties: the emoji first reacted with first).
    #[serde(default)]
    pub reactions: Vec<ReactionCount>,
    /// How many messages have this one as their `thread`.
    #[serde(default)]
    pub replies: u64,
    /// The caller's own reactions: only in replies to reads (`message.history`,
    /// `message.search`, `conversation.pins`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub my_reactions: Option<Vec<String>>,
}

/// One emoji's count in a message's `reactions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ReactionCount {
    /// The emoji (1 to 32 bytes).
    pub emoji: String,
    /// How many users reacted with it.
    pub count: u64,
}

/// Whether a `reaction.updated` added or removed a reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReactionOp {
    /// A reaction was added.
    Add,
    /// A reaction was removed.
    Remove,
}

/// One text of an edited message, in `message.versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessageVersion {
    /// The text.
    pub text: String,
    /// When it was written (the send, or the edit that wrote it).
    pub ts: i64,
}

/// One of a user's contacts (`contact.set`, `contact.list`, `contact.updated`): private to
/// its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Contact {
    /// The contact's user id.
    pub user: String,
    /// The owner's group for this contact, if any.
    pub group: Option<String>,
    /// The owner's private note, if any.
    pub note: Option<String>,
    /// When the contact was last set (ms since the epoch).
    pub ts: i64,
}

/// A presence status as reported to watchers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one session open, status online.
    Online,
    /// At least one session open, status away.
    Away,
    /// No session open, or invisible.
    Offline,
}

/// A presence status a user may set for themself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SetPresenceStatus {
    /// Seen as online.
    Online,
    /// Seen as away.
    Away,
    /// Seen as offline by everyone.
    Invisible,
}

/// `P`: a user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Presence {
    /// The user id.
    pub user: String,
    /// Online, away or offline.
    pub status: PresenceStatus,
    /// When the user was last seen online (null if never).
    pub last_seen_ts: Option<i64>,
}

/// Typing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    /// Started (lapses after 6 s without renewal).
    Start,
    /// Stopped.
    Stop,
}

/// `T`: a feed post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Post {
    /// Post id.
    pub id: String,
    /// Author's user id.
    pub author: String,
    /// The text.
    pub text: String,
    /// Attached media.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Creation time.
    pub ts: i64,
    /// Like count.
    pub likes: u64,
    /// Comment count.
    pub comments: u64,
}

/// A comment on a post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Comment {
    /// Comment id.
    pub id: String,
    /// The post commented on.
    pub post: String,
    /// Author's user id.
    pub author: String,
    /// The text.
    pub text: String,
    /// Creation time.
    pub ts: i64,
}

/// The kind of a `notification` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// Someone liked your post.
    Like,
    /// Someone commented on your post.
    Comment,
    /// Someone followed you.
    Follow,
    /// Someone mentioned you.
    Mention,
    /// A message from the system.
    System,
}

/// One entry of an engagement event's `top` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TopWriter {
    /// The writer's user id.
    pub user: String,
    /// The writer's handle.
    pub handle: String,
    /// Words typed so far.
    pub words: u32,
}

/// The owner named in a conversation's `roles`, if any.
pub fn owner_of(roles: &std::collections::BTreeMap<String, Role>) -> Option<&str> {
    roles
        .iter()
        .find(|(_, r)| **r == Role::Owner)
        .map(|(u, _)| u.as_str())
}

impl Conversation {
    /// Its owner: the creator, unless ownership passed on (the creator when no one owns it).
    pub fn owner(&self) -> &str {
        owner_of(&self.roles).unwrap_or(&self.created_by)
    }

    /// This conversation as it goes to clients in events: a large group's copy leaves the
    /// member list out (it would not be serialized anyway), so that N events for N members
    /// do not hold N copies of N ids.
    pub fn for_event(&self) -> Conversation {
        if self.members.len() > LARGE_GROUP {
            let mut c = self.clone_without_members();
            c.members_omitted = true;
            c
        } else {
            self.clone()
        }
    }

    fn clone_without_members(&self) -> Conversation {
        Conversation {
            id: self.id.clone(),
            kind: self.kind,
            title: self.title.clone(),
            members: Vec::new(),
            member_count: self.member_count,
            members_omitted: self.members_omitted,
            created_by: self.created_by.clone(),
            created_ts: self.created_ts,
            ephemeral: self.ephemeral,
            public: self.public,
            last_offset: self.last_offset,
            pinned: self.pinned.clone(),
            roles: self.roles.clone(),
            slow_mode_s: self.slow_mode_s,
        }
    }
}

impl Serialize for Conversation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let omit = self.members_omitted || self.members.len() > LARGE_GROUP;
        let channel = self.kind == ConversationKind::Channel;
        let fields = 10 + usize::from(!omit) + 2 * usize::from(channel);
        let mut st = s.serialize_struct("Conversation", fields)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("title", &self.title)?;
        if omit {
            st.skip_field("members")?;
        } else {
            st.serialize_field("members", &self.members)?;
        }
        st.serialize_field("member_count", &self.member_count)?;
        st.serialize_field("created_by", &self.created_by)?;
        st.serialize_field("created_ts", &self.created_ts)?;
        st.serialize_field("ephemeral", &self.ephemeral)?;
        if channel {
            st.serialize_field("public", &self.public)?;
            st.serialize_field("last_offset", &self.last_offset)?;
        } else {
            st.skip_field("public")?;
            st.skip_field("last_offset")?;
        }
        st.serialize_field("pinned", &self.pinned)?;
        st.serialize_field("roles", &self.roles)?;
        st.serialize_field("slow_mode_s", &self.slow_mode_s)?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: usize) -> Conversation {
        Conversation {
            id: "c1".into(),
            kind: ConversationKind::Group,
            title: None,
            members: (0..n).map(|i| format!("u{i}")).collect(),
            member_count: n as u64,
            members_omitted: false,
            created_by: "u0".into(),
            created_ts: 1,
            ephemeral: false,
            public: false,
            last_offset: 0,
            pinned: Vec::new(),
            roles: [("u0".to_owned(), Role::Owner)].into(),
            slow_mode_s: 0,
        }
    }

    #[test]
    fn a_large_group_goes_without_its_member_list() {
        let small = serde_json::to_value(group(LARGE_GROUP)).expect("json");
        assert_eq!(small["members"].as_array().map(Vec::len), Some(LARGE_GROUP));
        let large = group(LARGE_GROUP + 1);
        let wire = serde_json::to_value(&large).expect("json");
        assert!(wire.get("members").is_none());
        assert_eq!(wire["member_count"], LARGE_GROUP as u64 + 1);
        let event = large.for_event();
        assert!(event.members.is_empty(), "the event's copy holds no ids");
        assert_eq!(serde_json::to_value(&event).expect("json"), wire);
        assert_eq!(group(3).for_event(), group(3));
        // An emptied conversation (expired) still says so.
        let empty = serde_json::to_value(group(0)).expect("json");
        assert_eq!(empty["members"], serde_json::json!([]));
    }
}
