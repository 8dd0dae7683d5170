//! Chat: conversations and their members, messages, read markers, blocks and search, and the
//! rules of each chat use case, written once for every backend.
//!
//! Each write is a whole use case in one transaction: check membership (or creatorship, or a
//! block), write, and append the events it produces to every recipient's inbox
//! ([`crate::inbox`]), returning them for the caller to deliver. Blocks are consulted by the
//! fan-out (no inbox row for a blocker), history, search, typing, and group membership (a
//! blocked user cannot put the blocker in a conversation).

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod sqlite;

use crate::accounts::{AccountTx, user_exists};
use crate::inbox::{InboxTx, append_event, message_events};
use crate::{Broadcast, Event, Result, StoreError, Written, json_err};
use async_trait::async_trait;
use hubbub_protocol::serverapi::Report;
use hubbub_protocol::{
    Attachment, Conversation, ConversationKind, ConversationSummary, LARGE_GROUP, Message,
    MessageVersion, ReactionCount, Role, ServerFrame,
};
use std::collections::{BTreeMap, HashSet};

/// The longest search query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 256;

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
    /// A channel anyone may subscribe to (channels only).
    pub public: bool,
    /// Most members allowed, the creator included.
    pub max_members: usize,
}

/// Parameters of `message.send`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// The message replied to (same conversation).
    pub reply_to: Option<String>,
    /// The thread's root (same conversation; a message in a thread names its root's thread).
    pub thread: Option<String>,
    /// Members mentioned.
    pub mentions: Vec<String>,
    /// A system message posted by the server API: the sender (`"system"`) need not be a
    /// member, and it may post in a channel.
    pub system: bool,
}

/// Conversations, members, messages, read markers, blocks, search.
#[async_trait]
pub trait ChatStore: Send + Sync {
    /// `conversation.create`; a direct conversation that exists, or a group whose id exists
    /// (a retried create, by redelivery or by the client's idempotency key), is returned with
    /// no events; an id that exists with another creator is `Conflict`. Naming a member who
    /// blocks the creator is `Forbidden`.
    async fn create_conversation(&self, new: NewConversation) -> Result<Written<Conversation>>;

    /// `conversation.get` (members only).
    async fn conversation(&self, caller: &str, id: &str) -> Result<Conversation>;

    /// `conversation.list`: the caller's conversations, most recent activity first.
    async fn conversations(&self, caller: &str) -> Result<Vec<ConversationSummary>>;

    /// `conversation.add` (group creator only; adding a member is a no-op). Adding a user who
    /// blocks the caller is `Forbidden`.
    async fn add_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
        max_members: usize,
    ) -> Result<Written<()>>;

    /// `conversation.add` with `users`: every one of them, in one transaction (members
    /// already in are skipped; any unknown user, or one who blocks the caller, refuses the
    /// whole request).
    async fn add_members(
        &self,
        caller: &str,
        conversation: &str,
        users: &[String],
        max_members: usize,
    ) -> Result<Written<()>>;

    /// `conversation.members`: a page of members by id, after `after`, and whether more
    /// follow (members only).
    async fn members_page(
        &self,
        caller: &str,
        conversation: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool)>;

    /// `conversation.remove` (group creator only; removing a non-member is a no-op).
    async fn remove_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
    ) -> Result<Written<()>>;

    /// `conversation.leave`.
    async fn leave(&self, caller: &str, conversation: &str) -> Result<Written<()>>;

    /// `channel.subscribe`: join a public channel (idempotent). Only the subscriber hears of
    /// it (`conversation.updated`).
    async fn subscribe(&self, caller: &str, channel: &str) -> Result<Written<()>>;

    /// `channel.unsubscribe`: leave a channel (idempotent; not its owner).
    async fn unsubscribe(&self, caller: &str, channel: &str) -> Result<Written<()>>;

    /// The channels `user` is a member of: what an edge holding the user's sessions loads to
    /// route channel messages (a channel's [`Broadcast`] names the channel, not its members).
    async fn channels_of(&self, user: &str) -> Result<Vec<String>> {
        let mut lists = self.channels_of_users(&[user.to_owned()]).await?;
        Ok(lists.pop().unwrap_or_default())
    }

    /// [`ChatStore::channels_of`] for many users at once, in the order given (an edge loads
    /// its users' lists in batches: a 100,000-member channel's create tells every member).
    async fn channels_of_users(&self, users: &[String]) -> Result<Vec<Vec<String>>>;

    /// `channel.sync`: the channel's messages with offset above `after`, at most `limit`,
    /// as `channel.message` frames in offset order; the last offset replayed (`after` when
    /// none); whether more remain. Members only.
    async fn channel_messages(
        &self,
        caller: &str,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<ServerFrame>, u64, bool)>;

    /// `message.send`, idempotent on (sender, client_msg_id): a repeat returns the first
    /// message and no events.
    async fn send_message(&self, new: NewMessage) -> Result<Written<Message>>;

    /// Several `message.send`s in this order, committed together: each succeeds or fails on
    /// its own (as [`ChatStore::send_message`] would), and a later one sees the earlier ones
    /// (a run of one sender's messages costs one commit, not one each). An `Err` of the whole
    /// means none was stored.
    async fn send_messages(&self, news: Vec<NewMessage>) -> Result<Vec<Result<Written<Message>>>>;

    /// A conversation by id, whoever asks (the server API), or `None`.
    async fn conversation_by_id(&self, id: &str) -> Result<Option<Conversation>>;

    /// The message `sender` sent with this `client_msg_id`, if any (the server API's
    /// `idempotency_key`).
    async fn message_by_key(&self, sender: &str, client_msg_id: &str) -> Result<Option<Message>>;

    /// `message.history`: newest first, before a message id; and whether older ones remain.
    async fn history(
        &self,
        caller: &str,
        conversation: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool)>;

    /// `message.history` with `thread`: only the replies in that thread, newest first.
    async fn thread_history(
        &self,
        caller: &str,
        conversation: &str,
        thread: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool)>;

    /// `message.edit` (its sender only): the message as edited; the earlier text is kept as
    /// a version. The same text again changes nothing (no event).
    async fn edit_message(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
        text: &str,
    ) -> Result<Written<Message>>;

    /// `message.versions`: the texts, oldest first, the current one last (none for a
    /// deleted message).
    async fn message_versions(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
    ) -> Result<Vec<MessageVersion>>;

    /// `message.delete` (its sender, or the owner of a group or channel): a tombstone stays;
    /// its versions and reactions are erased and it is unpinned. Deleting it again is a no-op.
    async fn delete_message(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
    ) -> Result<Written<()>>;

    /// `reaction.add` (`add`) or `reaction.remove`: idempotent; the message's reactions after.
    async fn react(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
        emoji: &str,
        add: bool,
    ) -> Result<Written<Vec<ReactionCount>>>;

    /// `message.pin` (`pin`) or `message.unpin` (any member of a direct conversation, the
    /// owner of a group or channel); idempotent.
    async fn pin(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
        pin: bool,
    ) -> Result<Written<()>>;

    /// `conversation.mute`: a member mutes the conversation for themselves until `until_ms`,
    /// or lifts the mute (`None`, or a time already past).
    async fn mute_conversation(
        &self,
        user: &str,
        conversation: &str,
        until_ms: Option<i64>,
    ) -> Result<()>;

    /// Whether `user` muted `conversation` at `now` (ms): no push notifications from it then,
    /// except mentions.
    async fn muted(&self, user: &str, conversation: &str, now: i64) -> Result<bool>;

    /// `conversation.role` (the owner only): make a member an admin, or an admin a plain
    /// member. Every member hears of it (`conversation.updated`; in a large group or a
    /// channel only the actor and the member).
    async fn set_role(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
        role: Role,
    ) -> Result<Written<()>>;

    /// `conversation.ban` (owner or admin): the user is removed if a member, and cannot be
    /// added again, nor subscribe, for `duration_s` seconds (`None`: until unbanned).
    async fn ban(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
        duration_s: Option<u64>,
    ) -> Result<Written<()>>;

    /// `conversation.unban` (owner or admin; idempotent).
    async fn unban(&self, caller: &str, conversation: &str, user: &str) -> Result<Written<()>>;

    /// `conversation.mute_member` (owner or admin): the member's sends are refused for
    /// `duration_s` seconds (0 lifts the mute).
    async fn mute_member(
        &self,
        caller: &str,
        conversation: &str,
        user: &str,
        duration_s: u64,
    ) -> Result<Written<()>>;

    /// `conversation.settings` (owner or admin): the title (`""` removes it) and slow mode;
    /// `None` leaves each as it is. The conversation after.
    async fn update_settings(
        &self,
        caller: &str,
        conversation: &str,
        title: Option<&str>,
        slow_mode_s: Option<u64>,
    ) -> Result<Written<Conversation>>;

    /// `message.report`: a member reports a message of the conversation (not deleted); one
    /// report per reporter and message (a repeat returns the first, and false).
    async fn report_message(
        &self,
        reporter: &str,
        conversation: &str,
        message: &str,
        reason: &str,
    ) -> Result<(Report, bool)>;

    /// The reports, newest first: up to `limit` with an id below `before`, and whether older
    /// ones remain (the server API's `GET /v1/server/reports`).
    async fn reports(&self, before: Option<&str>, limit: usize) -> Result<(Vec<Report>, bool)>;

    /// `conversation.pins`: the pinned messages, most recently pinned first, with the
    /// caller's `my_reactions`.
    async fn pins(&self, caller: &str, conversation: &str) -> Result<Vec<Message>>;

    /// `message.read`: moves the caller's read marker forward and tells the others.
    async fn mark_read(
        &self,
        caller: &str,
        conversation: &str,
        message: &str,
    ) -> Result<Written<()>>;

    /// `block.add`: `caller` no longer receives `user`'s messages or typing, and `user` can
    /// neither open a direct conversation with `caller` nor add `caller` to a group (at its
    /// creation or later). Idempotent.
    async fn block(&self, caller: &str, user: &str) -> Result<()>;

    /// `block.remove`. Idempotent.
    async fn unblock(&self, caller: &str, user: &str) -> Result<()>;

    /// `block.list`: the users `caller` blocks.
    async fn blocks(&self, caller: &str) -> Result<Vec<String>>;

    /// Which of `users` block `caller` (for presence: a blocker's presence is hidden from
    /// the users it blocks), in the order asked.
    async fn blocked_by(&self, caller: &str, users: &[String]) -> Result<Vec<String>>;

    /// `message.search`: full-text search over the conversations `caller` is in now (or one of
    /// them), best match first, without messages from users `caller` blocks.
    async fn search(
        &self,
        caller: &str,
        query: &str,
        conversation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>>;

    /// Who should see `sender`'s typing in a conversation: the other members, less those who
    /// block `sender`. `Forbidden` if `sender` is not a member.
    async fn typing_recipients(&self, sender: &str, conversation: &str) -> Result<Vec<String>>;

    /// Delete ephemeral conversations whose last message (or creation, if none) is older than
    /// `before_ms`, with their messages. Each member gets `conversation.updated` with the
    /// conversation as it was but no members (it no longer exists for anyone). Returns the
    /// deleted conversations and the events.
    async fn expire_ephemeral(&self, before_ms: i64) -> Result<Written<Vec<String>>>;
}

/// A stored message's columns, in [`MESSAGE_COLUMNS`]' order.
#[derive(Debug)]
pub(crate) struct MessageRow {
    pub(crate) id: i64,
    pub(crate) conversation: String,
    pub(crate) sender: String,
    pub(crate) client_msg_id: String,
    pub(crate) text: String,
    /// JSON.
    pub(crate) attachments: String,
    pub(crate) ts: i64,
    pub(crate) reply_to: Option<i64>,
    pub(crate) thread: Option<i64>,
    /// JSON.
    pub(crate) mentions: String,
    pub(crate) edited_ms: Option<i64>,
    pub(crate) deleted: bool,
    pub(crate) replies: i64,
    /// JSON: the summary, in wire order.
    pub(crate) reactions: String,
}

/// [`MessageRow`]'s columns, in its order.
pub(crate) const MESSAGE_COLUMNS: &str = "id, conversation_id, sender, client_msg_id, text, \
     attachments, ts, reply_to, thread, mentions, edited_ms, deleted, replies, reactions";

/// [`MESSAGE_COLUMNS`] of a table aliased `m`.
pub(crate) const M_MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.sender, \
     m.client_msg_id, m.text, m.attachments, m.ts, m.reply_to, m.thread, m.mentions, \
     m.edited_ms, m.deleted, m.replies, m.reactions";

/// What a new message links to, as stored.
#[derive(Debug, Default)]
pub(crate) struct Links {
    pub(crate) reply_to: Option<i64>,
    pub(crate) thread: Option<i64>,
    /// JSON array of user ids.
    pub(crate) mentions: String,
}

/// A stored conversation's columns, in [`CONVERSATION_COLUMNS`]' order.
#[derive(Debug, Clone)]
pub(crate) struct ConversationRow {
    pub(crate) kind: String,
    pub(crate) title: Option<String>,
    pub(crate) created_by: String,
    pub(crate) created_ms: i64,
    pub(crate) ephemeral: bool,
    pub(crate) public: bool,
    pub(crate) last_offset: i64,
    pub(crate) slow_mode_s: i64,
}

/// [`ConversationRow`]'s columns, in its order.
pub(crate) const CONVERSATION_COLUMNS: &str =
    "kind, title, created_by, created_ms, ephemeral, public, last_offset, slow_mode_s";

/// What a member's row says of them beyond membership: their role, until when they are
/// muted, and when they last sent (kept only while slow mode is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberState {
    pub(crate) role: Role,
    pub(crate) muted_until_ms: Option<i64>,
    pub(crate) last_sent_ms: Option<i64>,
}

/// The most ephemeral conversations one `expire_ephemeral` deletes.
const EXPIRE_BATCH: usize = 1000;

/// What the chat rules need of a transaction; each backend implements it with its SQL.
pub(crate) trait ChatTx {
    /// The conversation's row, if it exists.
    async fn conversation_row(&self, id: &str) -> Result<Option<ConversationRow>>;
    /// The conversation's members, in joining order.
    async fn members(&self, id: &str) -> Result<Vec<String>>;
    /// At most `limit` members whose id sorts after `after` ("" for the first), by id.
    async fn members_after(&self, id: &str, after: &str, limit: usize) -> Result<Vec<String>>;
    /// The conversation with its members (in joining order), if it exists.
    async fn conversation(&self, id: &str) -> Result<Option<Conversation>> {
        let Some(row) = self.conversation_row(id).await? else {
            return Ok(None);
        };
        let members = self.members(id).await?;
        let mut c = conversation_from_row(id, row, members);
        c.pinned = self.pinned(id).await?;
        c.roles = self.roles(id).await?;
        Ok(Some(c))
    }
    /// Hold conversation `id`'s membership until the commit: every write that changes who is
    /// in it, or who owns it, or reads a ban to let someone in, takes it first, so two such
    /// writes never decide on the same stale view (PostgreSQL: a transaction-scoped advisory
    /// lock, which sends do not take, so it waits on nothing a send holds; a no-op on SQLite,
    /// whose writer is alone).
    async fn lock_membership(&self, id: &str) -> Result<()>;
    /// The owner and admins, by user id.
    async fn roles(&self, id: &str) -> Result<BTreeMap<String, Role>>;
    /// A member's role, mute and last send; `None` if not a member.
    async fn member_state(&self, id: &str, user: &str) -> Result<Option<MemberState>>;
    /// What a send reads before it writes ([`SendReads`]): the sender's message under the
    /// same `client_msg_id`, the conversation, and (not for a system message) the sender's
    /// membership. They do not depend on each other: by default they are asked together (on
    /// PostgreSQL one statement answers all three: one reply instead of three, and a batch
    /// asks every send's at once).
    async fn send_reads(&self, new: &NewMessage) -> Result<SendReads> {
        let member = async {
            match new.system {
                true => Ok(None),
                false => self.member_state(&new.conversation, &new.sender).await,
            }
        };
        let (existing, row, state) = tokio::try_join!(
            self.message_by_key(&new.sender, &new.client_msg_id),
            self.conversation_row(&new.conversation),
            member,
        )?;
        Ok(SendReads {
            existing,
            row,
            state,
        })
    }
    /// Set a member's role.
    async fn set_role(&self, id: &str, user: &str, role: Role) -> Result<()>;
    /// Mute a member until `until_ms`, or lift it (`None`).
    async fn set_member_mute(&self, id: &str, user: &str, until_ms: Option<i64>) -> Result<()>;
    /// Note when a member sent (slow mode).
    async fn set_last_sent(&self, id: &str, user: &str, ms: i64) -> Result<()>;
    /// The member ownership passes to when the owner leaves: the longest-standing admin, or
    /// else the longest-standing member.
    async fn successor(&self, id: &str) -> Result<Option<String>>;
    /// Change the title (`Some`) and the slow mode (`Some`); `None` leaves each as it is.
    async fn set_settings(
        &self,
        id: &str,
        title: Option<Option<&str>>,
        slow_mode_s: Option<i64>,
    ) -> Result<()>;
    /// A user's ban: `None` if not banned, `Some(None)` until unbanned, `Some(Some(ms))`
    /// until then.
    async fn ban_of(&self, id: &str, user: &str) -> Result<Option<Option<i64>>>;
    /// Ban a user (a ban again replaces the first).
    async fn insert_ban(
        &self,
        id: &str,
        user: &str,
        until_ms: Option<i64>,
        by: &str,
        now: i64,
    ) -> Result<()>;
    /// Lift a user's ban.
    async fn delete_ban(&self, id: &str, user: &str) -> Result<()>;
    /// Whether the conversation exists, and whether `user` is in it.
    async fn membership(&self, id: &str, user: &str) -> Result<(bool, bool)>;
    /// Whether `blocker` blocks `blocked`.
    async fn blocks(&self, blocker: &str, blocked: &str) -> Result<bool>;
    /// Insert the conversation's row (`direct_key` set for a direct one), unless its id or
    /// its `direct_key` is taken (by a concurrent create of the same id, or the pair's direct
    /// conversation); whether it was inserted.
    async fn insert_conversation(
        &self,
        new: &NewConversation,
        direct_key: Option<&str>,
        now: i64,
    ) -> Result<bool>;
    /// The direct conversation of a pair, by its `direct_key`.
    async fn direct_conversation(&self, direct_key: &str) -> Result<Option<String>>;
    /// Add a member (a member already is one).
    async fn add_member(&self, id: &str, user: &str, now: i64) -> Result<()>;
    /// Add each of `users` as [`ChatTx::add_member`] does.
    async fn add_members(&self, id: &str, users: &[String], now: i64) -> Result<()> {
        for u in users {
            self.add_member(id, u, now).await?;
        }
        Ok(())
    }
    async fn remove_member(&self, id: &str, user: &str) -> Result<()>;
    /// The conversations `user` is in, with the id of the last message they read.
    async fn memberships(&self, user: &str) -> Result<Vec<(String, i64)>>;
    /// The channels `user` is a member of.
    async fn channel_memberships(&self, user: &str) -> Result<Vec<String>>;
    /// The channels each of `users` is a member of, in the order given.
    async fn channel_memberships_of(&self, users: &[String]) -> Result<Vec<Vec<String>>> {
        let mut all = Vec::with_capacity(users.len());
        for u in users {
            all.push(self.channel_memberships(u).await?);
        }
        Ok(all)
    }
    /// The conversation's newest message `viewer` sees (none from users `viewer` blocks).
    async fn last_message(&self, id: &str, viewer: &str) -> Result<Option<Message>>;
    /// Messages after `read` that `viewer` did not send and sees.
    async fn unread(&self, id: &str, read: i64, viewer: &str) -> Result<u64>;
    async fn message_by_key(&self, sender: &str, client_msg_id: &str) -> Result<Option<Message>>;
    /// Insert a message unless its (sender, client_msg_id) exists; its id when inserted.
    async fn insert_message(
        &self,
        new: &NewMessage,
        attachments: &str,
        links: &Links,
        now: i64,
    ) -> Result<Option<i64>>;
    /// Newest first, ids below `before`, at most `limit`, none from users `viewer` blocks;
    /// with `thread`, only the messages in that thread.
    async fn messages_before(
        &self,
        id: &str,
        viewer: &str,
        before: i64,
        limit: usize,
        thread: Option<i64>,
    ) -> Result<Vec<Message>>;
    /// Message `message` if it is in conversation `id`; with `lock`, its row stays locked
    /// until the commit (PostgreSQL; SQLite's writer is alone anyway).
    async fn message_of(&self, id: &str, message: i64, lock: bool) -> Result<Option<Message>>;
    /// A channel message's offset.
    async fn offset_of(&self, message: i64) -> Result<Option<u64>>;
    /// Lock these users' counter rows, in id order, then the positions of the groups their
    /// open runs are on (PostgreSQL: every write that appends events and changes a message
    /// takes the users first, then the message, so two such writes never wait on each other
    /// in a circle; `012_inbox_runs.sql` says why the positions; a no-op on SQLite).
    async fn lock_users(&self, users: &[String]) -> Result<()>;
    /// The members less those who block `actor`, by id (`actor` included when a member).
    async fn audience(&self, id: &str, actor: &str) -> Result<Vec<String>>;
    /// One more reply in the thread of `root`.
    async fn add_reply(&self, root: i64) -> Result<()>;
    /// Replace a message's text, as edited at `now`.
    async fn set_text(&self, message: i64, text: &str, now: i64) -> Result<()>;
    /// Keep an earlier text of a message; how many versions it has now.
    async fn insert_version(&self, message: i64, text: &str, ts: i64) -> Result<u64>;
    /// The kept texts of a message, oldest first.
    async fn versions(&self, message: i64) -> Result<Vec<MessageVersion>>;
    /// Make a message a tombstone: no text, attachments, mentions, reactions, versions.
    async fn tombstone(&self, message: i64) -> Result<()>;
    /// Add `user`'s reaction; whether it is new.
    async fn insert_reaction(
        &self,
        message: i64,
        user: &str,
        emoji: &str,
        now: i64,
    ) -> Result<bool>;
    /// Remove `user`'s reaction; whether there was one.
    async fn delete_reaction(&self, message: i64, user: &str, emoji: &str) -> Result<bool>;
    /// Store a message's reaction summary (JSON).
    async fn set_reactions(&self, message: i64, summary: &str) -> Result<()>;
    /// `user`'s reactions to these messages: (message, emoji), oldest first per message.
    async fn my_reactions(&self, user: &str, messages: &[i64]) -> Result<Vec<(i64, String)>>;
    /// Pin a message; whether it was not pinned yet.
    async fn insert_pin(&self, id: &str, message: i64, user: &str, now: i64) -> Result<bool>;
    /// Unpin a message; whether it was pinned.
    async fn delete_pin(&self, id: &str, message: i64) -> Result<bool>;
    /// The pinned message ids, most recently pinned first.
    async fn pinned(&self, id: &str) -> Result<Vec<String>>;
    /// Set (`Some`) or lift (`None`) a user's mute of a conversation.
    async fn set_mute(&self, user: &str, id: &str, until_ms: Option<i64>) -> Result<()>;
    /// Until when a user muted a conversation, if they did.
    async fn mute_until(&self, user: &str, id: &str) -> Result<Option<i64>>;
    /// Store a report; false when this reporter reported this message before.
    async fn insert_report(
        &self,
        id: &str,
        message: i64,
        reporter: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool>;
    /// This reporter's report of this message.
    async fn report_of(&self, id: &str, message: i64, reporter: &str) -> Result<Option<Report>>;
    /// Reports with an id below `before` (all when `None`), newest first, at most `limit`.
    async fn reports(&self, before: Option<i64>, limit: usize) -> Result<Vec<Report>>;
    /// The pinned messages, most recently pinned first.
    async fn pinned_messages(&self, id: &str) -> Result<Vec<Message>>;
    /// Whether message `message` is in conversation `id`.
    async fn message_in(&self, id: &str, message: i64) -> Result<bool>;
    /// Move `user`'s read marker forward to `message`; whether it moved.
    async fn advance_read(&self, id: &str, user: &str, message: i64) -> Result<bool>;
    async fn insert_block(&self, blocker: &str, blocked: &str, now: i64) -> Result<()>;
    async fn delete_block(&self, blocker: &str, blocked: &str) -> Result<()>;
    /// The users `blocker` blocks, oldest block first.
    async fn blocked_list(&self, blocker: &str) -> Result<Vec<String>>;
    /// Those of `users` who block `blocked`, in any order.
    async fn blockers_among(&self, blocked: &str, users: &[String]) -> Result<Vec<String>>;
    /// Messages with every one of `words`, in the conversations `viewer` is in (or the one
    /// named), none from users `viewer` blocks, best match first.
    async fn search(
        &self,
        viewer: &str,
        words: &[&str],
        conversation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>>;
    /// The members but `sender`, less those who block `sender`.
    async fn typing_recipients(&self, id: &str, sender: &str) -> Result<Vec<String>>;
    /// Ephemeral conversations with no activity since `before_ms`, at most `limit`.
    async fn ephemeral_due(&self, before_ms: i64, limit: usize) -> Result<Vec<String>>;
    /// Delete a conversation, its members, its messages and their inbox rows (a replay skips
    /// what no longer exists).
    async fn delete_conversation(&self, id: &str) -> Result<()>;
    /// How many members.
    async fn member_count(&self, id: &str) -> Result<u64>;
    /// Take a channel's next message offset (the channel's row stays locked until the
    /// commit).
    async fn next_offset(&self, id: &str) -> Result<u64>;
    /// Number a stored message in its channel.
    async fn set_channel_offset(&self, message: i64, offset: u64) -> Result<()>;
    /// A channel's messages with offset above `after`, in offset order, at most `limit`.
    async fn channel_messages(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Message)>>;
    /// Up to `limit` messages `sender` sent that are not deleted, all of one conversation
    /// (the one of the oldest such message), oldest first.
    async fn live_messages_of(&self, sender: &str, limit: usize) -> Result<Vec<Message>>;
    /// Up to `limit` of `user`'s reactions, as (message, its conversation, emoji), in
    /// message order.
    async fn reactions_of(&self, user: &str, limit: usize) -> Result<Vec<(i64, String, String)>>;
}

// ---- member checks ------------------------------------------------------------------------

/// The conversation, which must exist.
async fn existing(tx: &impl ChatTx, id: &str) -> Result<Conversation> {
    tx.conversation(id)
        .await?
        .ok_or_else(|| StoreError::Internal(format!("conversation {id} vanished")))
}

/// The conversation, if it exists and `caller` is a member.
pub(crate) async fn member_view(tx: &impl ChatTx, caller: &str, id: &str) -> Result<Conversation> {
    let c = tx
        .conversation(id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no conversation {id}")))?;
    if !c.members.iter().any(|m| m == caller) {
        return Err(StoreError::Forbidden("not a member".into()));
    }
    Ok(c)
}

/// Fail unless the conversation exists and `caller` is in it (without loading it).
pub(crate) async fn check_member(tx: &impl ChatTx, caller: &str, id: &str) -> Result<()> {
    match tx.membership(id, caller).await? {
        (false, _) => Err(StoreError::NotFound(format!("no conversation {id}"))),
        (true, false) => Err(StoreError::Forbidden("not a member".into())),
        (true, true) => Ok(()),
    }
}

/// The conversation's row and what the caller's membership says (role, mute, last send), if
/// the conversation exists (`NotFound`) and `caller` is in it (`Forbidden`).
pub(crate) async fn member_row(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
) -> Result<(ConversationRow, MemberState)> {
    let row = tx
        .conversation_row(id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no conversation {id}")))?;
    let state = tx
        .member_state(id, caller)
        .await?
        .ok_or_else(|| StoreError::Forbidden("not a member".into()))?;
    Ok((row, state))
}

/// The group, and the caller's role, if `caller` moderates it (owners and admins add and
/// remove members).
async fn moderator_view(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
    action: &str,
) -> Result<(Conversation, Role)> {
    let (_, role) = moderation::moderator(
        tx,
        caller,
        id,
        &format!("{action} members"),
        StoreError::Forbidden,
    )
    .await?;
    Ok((existing(tx, id).await?, role))
}

/// `Forbidden` if `user` blocks `caller`: a blocked user cannot put the blocker in a group
/// (the message names no one, so it tells the caller no more than that they may not).
async fn refuse_if_blocked(tx: &impl ChatTx, user: &str, caller: &str) -> Result<()> {
    if tx.blocks(user, caller).await? {
        return Err(StoreError::Forbidden("you cannot add this user".into()));
    }
    Ok(())
}

async fn require_user(tx: &impl AccountTx, id: &str) -> Result<()> {
    if !user_exists(tx, id).await? {
        return Err(StoreError::NotFound(format!("no user {id}")));
    }
    Ok(())
}

// ---- events -------------------------------------------------------------------------------

/// `conversation.updated` to each of `users` (ids once each; locked first, in id order: see
/// [`ChatTx::lock_users`]), in two statements for all of them where the backend can.
async fn conversation_events(
    tx: &(impl ChatTx + InboxTx),
    users: &[String],
    c: &Conversation,
    now: i64,
) -> Result<Vec<Event>> {
    tx.lock_users(users).await?;
    // A large group's member list is not on the wire: its events do not carry it either.
    let c = c.for_event();
    crate::inbox::append_to_all(tx, users, now, |seq| ServerFrame::ConversationUpdated {
        seq,
        conversation: c.clone(),
    })
    .await
}

/// Take `user` out of a conversation (`actor` removes them, or is them, leaving): the
/// remaining members and `user` get the conversation as it is now; in a large group only
/// `user` and `actor` do.
async fn depart(
    tx: &(impl ChatTx + InboxTx),
    id: &str,
    user: &str,
    actor: &str,
    now: i64,
) -> Result<Vec<Event>> {
    // Everyone who may hear of it is locked before the leaver's run closes (which locks the
    // leaver), all in id order.
    let members = tx.members(id).await?;
    tx.lock_users(&members).await?;
    let before = members.len();
    let was = tx.member_state(id, user).await?;
    tx.remove_member(id, user).await?;
    let mut changed = vec![user.to_owned()];
    changed.extend(moderation::pass_ownership(tx, id, was).await?);
    let after = existing(tx, id).await?;
    let told = told_of_change(&after, before, &changed, actor);
    conversation_events(tx, &told, &after, now).await
}

/// Who hears of a membership change: every member (and those who left), or, when the group
/// is large before or after it, only the users `changed` and the `actor` (PROTOCOL.md 1.1,
/// "Large groups": building a group of N costs O(N) events, not O(N²)).
fn told_of_change(
    after: &Conversation,
    before: usize,
    changed: &[String],
    actor: &str,
) -> Vec<String> {
    // A channel follows the large-group rule at any size (PROTOCOL.md 1.1, "Channels").
    let mut told = if after.kind == ConversationKind::Channel
        || before.max(after.members.len()) > LARGE_GROUP
    {
        vec![actor.to_owned()]
    } else {
        after.members.clone()
    };
    for u in changed {
        if !told.contains(u) {
            told.push(u.clone());
        }
    }
    if !told.iter().any(|u| u == actor) && after.members.iter().any(|u| u == actor) {
        told.push(actor.to_owned());
    }
    told
}

// ---- the use cases --------------------------------------------------------------------------

pub(crate) async fn create_conversation(
    tx: &(impl ChatTx + InboxTx + AccountTx),
    new: NewConversation,
    now: i64,
) -> Result<Written<Conversation>> {
    let id = new.id.as_str();
    if let Some(c) = tx.conversation(id).await? {
        return created_before(c, &new);
    }
    require_user(tx, &new.creator).await?;
    // Each check and write below is one statement for all the members, not one per member
    // (a channel may be made with 100,000).
    let mut seen = HashSet::new();
    let others: Vec<String> = new
        .members
        .iter()
        .filter(|m| **m != new.creator && seen.insert(m.as_str()))
        .cloned()
        .collect();
    if let Some(m) = tx.missing_users(&others).await?.first() {
        return Err(StoreError::NotFound(format!("no user {m}")));
    }
    if new.public && new.kind != ConversationKind::Channel {
        return Err(StoreError::BadRequest(
            "only a channel can be public".into(),
        ));
    }
    let pair = match new.kind {
        ConversationKind::Direct => {
            let [other] = others.as_slice() else {
                return Err(StoreError::BadRequest(
                    "a direct conversation has exactly one other member".into(),
                ));
            };
            if tx.blocks(other, &new.creator).await? {
                return Err(StoreError::Forbidden(
                    "this user does not accept direct conversations from you".into(),
                ));
            }
            let mut pair = [new.creator.clone(), other.clone()];
            pair.sort();
            Some(pair)
        }
        ConversationKind::Group | ConversationKind::Channel => {
            if others.len() + 1 > new.max_members {
                return Err(StoreError::TooLarge(format!(
                    "a group has at most {} members",
                    new.max_members
                )));
            }
            if !tx.blockers_among(&new.creator, &others).await?.is_empty() {
                return Err(StoreError::Forbidden("you cannot add this user".into()));
            }
            None
        }
    };
    // Not inserted: a direct conversation is unique per pair, whatever id the caller chose,
    // so the pair's existing one (made earlier, or by a concurrent create on another machine:
    // the unique key decides) is returned instead; and the same create handled twice at once
    // (a redelivery while the first still ran) meets the first one's row and answers as a
    // repeat would, not with the key's violation.
    let key = pair.as_ref().map(|p| p.join("|"));
    if !tx.insert_conversation(&new, key.as_deref(), now).await? {
        if let (Some(key), Some(pair)) = (&key, &pair)
            && let Some(found) = tx.direct_conversation(key).await?
        {
            return rejoin(tx, &found, pair, now).await;
        }
        return match tx.conversation(id).await? {
            Some(c) => created_before(c, &new),
            None => Err(StoreError::Internal(format!(
                "conversation {id} not created"
            ))),
        };
    }
    tx.add_member(id, &new.creator, now).await?;
    if new.kind != ConversationKind::Direct {
        tx.set_role(id, &new.creator, Role::Owner).await?;
    }
    tx.add_members(id, &others, now).await?;
    let c = existing(tx, id).await?;
    let events = conversation_events(tx, &c.members, &c, now).await?;
    Ok(Written::new(c, events))
}

/// A create whose id is taken: the same creator's repeat gets the conversation as it is (no
/// events); anyone else's is a conflict, and a creator who has since left a group sees
/// nothing of it.
fn created_before(c: Conversation, new: &NewConversation) -> Result<Written<Conversation>> {
    if c.created_by != new.creator {
        return Err(StoreError::Conflict(format!(
            "conversation {} exists",
            c.id
        )));
    }
    if c.kind != ConversationKind::Direct && !c.members.contains(&new.creator) {
        return Err(StoreError::Forbidden("not a member".into()));
    }
    Ok(Written::nothing(c))
}

/// A direct conversation asked for again: it is returned, bringing back whichever of the
/// pair had left it.
async fn rejoin(
    tx: &(impl ChatTx + InboxTx),
    id: &str,
    pair: &[String],
    now: i64,
) -> Result<Written<Conversation>> {
    let before = existing(tx, id).await?;
    let missing: Vec<&String> = pair
        .iter()
        .filter(|u| !before.members.contains(u))
        .collect();
    if missing.is_empty() {
        return Ok(Written::nothing(before));
    }
    for u in missing {
        tx.add_member(id, u, now).await?;
    }
    let after = existing(tx, id).await?;
    let events = conversation_events(tx, &after.members, &after, now).await?;
    Ok(Written::new(after, events))
}

pub(crate) async fn conversations(
    tx: &impl ChatTx,
    caller: &str,
) -> Result<Vec<ConversationSummary>> {
    let mine = tx.memberships(caller).await?;
    let mut out = Vec::with_capacity(mine.len());
    for (id, read) in mine {
        let Some(conversation) = tx.conversation(&id).await? else {
            continue;
        };
        // Channels have no unread (PROTOCOL.md 1.1): their place is `last_offset`.
        let unread = if conversation.kind == ConversationKind::Channel {
            0
        } else {
            tx.unread(&id, read, caller).await?
        };
        out.push(ConversationSummary {
            conversation,
            last_message: tx.last_message(&id, caller).await?,
            unread,
        });
    }
    let activity = |s: &ConversationSummary| {
        s.last_message
            .as_ref()
            .map(|m| m.ts)
            .unwrap_or(s.conversation.created_ts)
    };
    out.sort_by_key(|s| std::cmp::Reverse(activity(s)));
    Ok(out)
}

/// The most users one `conversation.add` names.
pub const MAX_ADD: usize = 1000;

pub(crate) async fn add_members(
    tx: &(impl ChatTx + InboxTx + AccountTx),
    caller: &str,
    id: &str,
    users: &[String],
    max_members: usize,
    now: i64,
) -> Result<Written<()>> {
    if users.is_empty() || users.len() > MAX_ADD {
        return Err(StoreError::BadRequest(format!(
            "`users` names 1 to {MAX_ADD} users"
        )));
    }
    tx.lock_membership(id).await?;
    let (c, _) = moderator_view(tx, caller, id, "add").await?;
    let mut new: Vec<String> = Vec::new();
    for user in users {
        require_user(tx, user).await?;
        if c.members.iter().any(|m| m == user) || new.contains(user) {
            continue;
        }
        refuse_if_blocked(tx, user, caller).await?;
        moderation::refuse_if_banned(tx, id, user, now).await?;
        new.push(user.clone());
    }
    if new.is_empty() {
        return Ok(Written::nothing(()));
    }
    if c.members.len() + new.len() > max_members {
        return Err(StoreError::TooLarge(format!(
            "a group has at most {max_members} members"
        )));
    }
    for user in &new {
        tx.add_member(id, user, now).await?;
    }
    let after = existing(tx, id).await?;
    let told = told_of_change(&after, c.members.len(), &new, caller);
    let events = conversation_events(tx, &told, &after, now).await?;
    Ok(Written::new((), events))
}

pub(crate) async fn members_page(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, bool)> {
    check_member(tx, caller, id).await?;
    let limit = limit.clamp(1, MAX_ADD);
    let mut page = tx.members_after(id, after.unwrap_or(""), limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    Ok((page, more))
}

pub(crate) async fn remove_member(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    user: &str,
    now: i64,
) -> Result<Written<()>> {
    tx.lock_membership(id).await?;
    let (c, mine) = moderator_view(tx, caller, id, "remove").await?;
    if !c.members.iter().any(|m| m == user) {
        return Ok(Written::nothing(()));
    }
    let theirs = c.roles.get(user).copied().unwrap_or(Role::Member);
    moderation::may_act_on(mine, theirs, "removed")?;
    let events = depart(tx, id, user, caller, now).await?;
    Ok(Written::new((), events))
}

/// Take an erased user out of conversation `id`, as if they left: ownership passes as when an
/// owner leaves ([`moderation::pass_ownership`]: the longest-standing admin, else member), and
/// the remaining members hear of it as of a removal (`conversation.updated`; in a large group
/// or a channel only a new owner does, as no actor is left to tell). A conversation left with
/// no member is deleted with its messages.
pub(crate) async fn erase_membership(
    tx: &(impl ChatTx + InboxTx),
    id: &str,
    user: &str,
    now: i64,
) -> Result<Vec<Event>> {
    tx.lock_membership(id).await?;
    if tx.conversation_row(id).await?.is_none() {
        // A membership row without its conversation: nothing to tell.
        tx.remove_member(id, user).await?;
        return Ok(Vec::new());
    }
    // As in `depart`: everyone who may hear of it first, in id order.
    let members = tx.members(id).await?;
    tx.lock_users(&members).await?;
    let before = members.len();
    let was = tx.member_state(id, user).await?;
    tx.remove_member(id, user).await?;
    if tx.members(id).await?.is_empty() {
        tx.delete_conversation(id).await?;
        return Ok(Vec::new());
    }
    let heir = moderation::pass_ownership(tx, id, was).await?;
    let after = existing(tx, id).await?;
    let mut changed = vec![user.to_owned()];
    changed.extend(heir);
    let mut told = told_of_change(&after, before, &changed, user);
    told.retain(|u| u != user);
    conversation_events(tx, &told, &after, now).await
}

pub(crate) async fn leave(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    now: i64,
) -> Result<Written<()>> {
    tx.lock_membership(id).await?;
    let (row, state) = member_row(tx, caller, id).await?;
    // A channel's owner stays, as `channel.unsubscribe` says (a group's passes ownership on).
    if state.role == Role::Owner && kind_of(&row.kind) == ConversationKind::Channel {
        return Err(StoreError::Forbidden(
            "the owner of a channel cannot leave it".into(),
        ));
    }
    let events = depart(tx, id, caller, caller, now).await?;
    Ok(Written::new((), events))
}

/// The channel's row, which must exist and be a channel.
async fn channel_row(tx: &impl ChatTx, id: &str) -> Result<ConversationRow> {
    let row = tx
        .conversation_row(id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no conversation {id}")))?;
    if row.kind != kind_name(ConversationKind::Channel) {
        return Err(StoreError::BadRequest(format!("{id} is not a channel")));
    }
    Ok(row)
}

/// The conversation without its member list, with its member count: what a channel's events
/// carry (reading every member of a big channel for each subscribe would cost O(N²) to build).
async fn brief(tx: &impl ChatTx, id: &str, row: ConversationRow) -> Result<Conversation> {
    let mut c = conversation_from_row(id, row, Vec::new());
    c.member_count = tx.member_count(id).await?;
    c.pinned = tx.pinned(id).await?;
    c.roles = tx.roles(id).await?;
    c.members_omitted = true;
    Ok(c)
}

pub(crate) async fn subscribe(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    now: i64,
) -> Result<Written<()>> {
    tx.lock_membership(id).await?;
    let row = channel_row(tx, id).await?;
    if tx.membership(id, caller).await?.1 {
        return Ok(Written::nothing(()));
    }
    if !row.public {
        return Err(StoreError::Forbidden(
            "a private channel is joined by invitation (`conversation.add`)".into(),
        ));
    }
    moderation::refuse_if_banned(tx, id, caller, now).await?;
    // The owner now (the creator, unless ownership passed on) may block the subscriber.
    let roles = tx.roles(id).await?;
    let owner = hubbub_protocol::owner_of(&roles).unwrap_or(&row.created_by);
    refuse_if_blocked(tx, owner, caller).await?;
    tx.add_member(id, caller, now).await?;
    let c = brief(tx, id, row).await?;
    let events = conversation_events(tx, &[caller.to_owned()], &c, now).await?;
    Ok(Written::new((), events))
}

pub(crate) async fn unsubscribe(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    now: i64,
) -> Result<Written<()>> {
    tx.lock_membership(id).await?;
    let row = channel_row(tx, id).await?;
    let Some(state) = tx.member_state(id, caller).await? else {
        return Ok(Written::nothing(()));
    };
    if state.role == Role::Owner {
        return Err(StoreError::Forbidden(
            "the owner of a channel cannot unsubscribe from it".into(),
        ));
    }
    tx.remove_member(id, caller).await?;
    let c = brief(tx, id, row).await?;
    let events = conversation_events(tx, &[caller.to_owned()], &c, now).await?;
    Ok(Written::new((), events))
}

/// The most `channel.sync` replays in one reply.
pub const MAX_CHANNEL_SYNC: usize = 1000;

pub(crate) async fn channel_sync(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
    after: u64,
    limit: usize,
) -> Result<(Vec<ServerFrame>, u64, bool)> {
    channel_row(tx, id).await?;
    check_member(tx, caller, id).await?;
    let limit = limit.clamp(1, MAX_CHANNEL_SYNC);
    let mut page = tx.channel_messages(id, after, limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let last = page.last().map_or(after, |(offset, _)| *offset);
    let frames = page
        .into_iter()
        .map(|(offset, message)| ServerFrame::ChannelMessage {
            conversation: id.to_owned(),
            offset,
            message,
        })
        .collect();
    Ok((frames, last, more))
}

/// A message `message.send` stored.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) message: Message,
    /// Whether it is new (a repeated `client_msg_id` returns the first message).
    pub(crate) fresh: bool,
    /// A new channel message's offset (it gets no inbox events: it is broadcast).
    pub(crate) offset: Option<u64>,
    /// A new thread reply's root, as it is now (its `replies` grew).
    pub(crate) root: Option<Message>,
}

/// What a `message.send` reads before it writes: the sender's earlier message under the same
/// `client_msg_id`, the conversation, and the sender's membership (`None` for a system
/// message, which needs none).
#[derive(Debug)]
pub(crate) struct SendReads {
    pub(crate) existing: Option<Message>,
    pub(crate) row: Option<ConversationRow>,
    pub(crate) state: Option<MemberState>,
}

/// Store one `message.send`. A new message's inbox events are the caller's to write
/// ([`message_events`], none for a channel's, then [`after_send`]), so a backend may fan out
/// a batch of sends at once.
pub(crate) async fn store_message(tx: &impl ChatTx, new: &NewMessage, now: i64) -> Result<Stored> {
    let reads = tx.send_reads(new).await?;
    store_read(tx, new, reads, now).await
}

/// Whether [`store_read`] of `new` will pass every check and write with one statement, its
/// insert (no repeat, no reply or thread to look up, no mention, not a channel, no slow-mode
/// time to set), so a backend may send the inserts of a batch of such sends together.
#[cfg(feature = "postgres")]
pub(crate) fn one_insert(new: &NewMessage, reads: &SendReads, now: i64) -> bool {
    let Some(row) = &reads.row else {
        return false;
    };
    reads.existing.is_none()
        && new.reply_to.is_none()
        && new.thread.is_none()
        && new.mentions.is_empty()
        && row.kind != kind_name(ConversationKind::Channel)
        && (new.system
            || reads
                .state
                .as_ref()
                .is_some_and(|state| matches!(moderation::check_send(row, state, now), Ok(false))))
}

/// [`store_message`] with its reads done. A batch that read before its earlier sends were
/// written gives the reads as they would be now: an earlier send's message as `existing`
/// for a repeat of its `client_msg_id`, and the sender's slow-mode time
/// ([`MemberState::last_sent_ms`]). A repeat sent concurrently elsewhere is still answered
/// by the unique key (below).
pub(crate) async fn store_read(
    tx: &impl ChatTx,
    new: &NewMessage,
    reads: SendReads,
    now: i64,
) -> Result<Stored> {
    let repeat = |message| Stored {
        message,
        fresh: false,
        offset: None,
        root: None,
    };
    let SendReads {
        existing,
        row,
        state,
    } = reads;
    if let Some(m) = existing {
        return Ok(repeat(m));
    }
    let row =
        row.ok_or_else(|| StoreError::NotFound(format!("no conversation {}", new.conversation)))?;
    let channel = row.kind == kind_name(ConversationKind::Channel);
    // Whether this send starts the sender's slow-mode wait.
    let mut slow = false;
    if !new.system {
        let state = state.ok_or_else(|| StoreError::Forbidden("not a member".into()))?;
        slow = moderation::check_send(&row, &state, now)?;
    }
    let links = messages::links(tx, new).await?;
    let attachments = serde_json::to_string(&new.attachments).map_err(json_err)?;
    // A concurrent send of the same client_msg_id (on another machine): the unique key
    // decides, and the loser returns the winner's message.
    let Some(id) = tx.insert_message(new, &attachments, &links, now).await? else {
        let m = tx.message_by_key(&new.sender, &new.client_msg_id).await?;
        let m = m.ok_or_else(|| StoreError::Internal("a sent message vanished".into()))?;
        return Ok(repeat(m));
    };
    if slow {
        tx.set_last_sent(&new.conversation, &new.sender, now)
            .await?;
    }
    let offset = if channel {
        let offset = tx.next_offset(&new.conversation).await?;
        tx.set_channel_offset(id, offset).await?;
        Some(offset)
    } else {
        None
    };
    let root = match links.thread {
        Some(root) => {
            tx.add_reply(root).await?;
            tx.message_of(&new.conversation, root, false).await?
        }
        None => None,
    };
    let message = Message {
        id: id.to_string(),
        conversation: new.conversation.clone(),
        sender: new.sender.clone(),
        client_msg_id: new.client_msg_id.clone(),
        text: new.text.clone(),
        attachments: new.attachments.clone(),
        ts: now,
        reply_to: links.reply_to.map(|m| m.to_string()),
        thread: links.thread.map(|m| m.to_string()),
        mentions: serde_json::from_str(&links.mentions).map_err(json_err)?,
        ..Message::default()
    };
    Ok(Stored {
        message,
        fresh: true,
        offset,
        root,
    })
}

/// The broadcast of a new channel message: `channel.message` to every member.
pub(crate) fn channel_broadcast(message: &Message, offset: u64) -> Broadcast {
    Broadcast {
        conversation: message.conversation.clone(),
        frames: vec![ServerFrame::ChannelMessage {
            conversation: message.conversation.clone(),
            offset,
            message: message.clone(),
        }],
    }
}

/// `message.send` on its own: the message, its `message.new` events (or its broadcast in a
/// channel), then what [`after_send`] adds.
pub(crate) async fn send_message(
    tx: &(impl ChatTx + InboxTx),
    new: NewMessage,
    now: i64,
) -> Result<Written<Message>> {
    let stored = store_message(tx, &new, now).await?;
    if !stored.fresh {
        return Ok(Written::nothing(stored.message));
    }
    let mut written = match stored.offset {
        Some(offset) => Written {
            value: stored.message.clone(),
            events: Vec::new(),
            broadcast: Some(channel_broadcast(&stored.message, offset)),
        },
        None => {
            let events = message_events(tx, &[&stored.message], now).await?;
            Written::new(
                stored.message.clone(),
                events.into_iter().flatten().collect(),
            )
        }
    };
    after_send(tx, &stored, &mut written, now).await?;
    Ok(written)
}

/// The outcome of a batch of sends stored one by one ([`store_message`], each in its own
/// savepoint): the new messages' `message.new` events written together (one fan-out for the
/// batch, so a run of sends to one group writes each member's rows side by side), then each
/// channel message's broadcast and what [`after_send`] adds, after every message's own events.
pub(crate) async fn sends_written(
    tx: &(impl ChatTx + InboxTx),
    stored: Vec<Result<Stored>>,
    now: i64,
) -> Result<Vec<Result<Written<Message>>>> {
    let fresh: Vec<&Message> = stored
        .iter()
        .filter_map(|r| match r {
            Ok(s) if s.fresh && s.offset.is_none() => Some(&s.message),
            _ => None,
        })
        .collect();
    let mut events = message_events(tx, &fresh, now).await?.into_iter();
    let mut written = Vec::with_capacity(stored.len());
    for r in stored {
        let s = match r {
            Ok(s) if !s.fresh => {
                written.push(Ok(Written::nothing(s.message)));
                continue;
            }
            Ok(s) => s,
            Err(e) => {
                written.push(Err(e));
                continue;
            }
        };
        let mut w = match s.offset {
            Some(offset) => Written {
                value: s.message.clone(),
                events: Vec::new(),
                broadcast: Some(channel_broadcast(&s.message, offset)),
            },
            None => Written::new(s.message.clone(), events.next().unwrap_or_default()),
        };
        after_send(tx, &s, &mut w, now).await?;
        written.push(Ok(w));
    }
    Ok(written)
}

/// What a new message adds after its own events: the thread root's `message.updated` (its
/// `replies` grew; `channel.updated` in a channel) and a `mention` notification to each
/// member mentioned.
pub(crate) async fn after_send<T>(
    tx: &(impl ChatTx + InboxTx),
    stored: &Stored,
    written: &mut Written<T>,
    now: i64,
) -> Result<()> {
    if let Some(root) = &stored.root {
        messages::tell_changed(tx, root, written, now).await?;
    }
    let m = &stored.message;
    for user in &m.mentions {
        if *user == m.sender || tx.blocks(user, &m.sender).await? {
            continue;
        }
        let data = serde_json::json!({
            "conversation": m.conversation, "message": m.id, "user": m.sender,
        });
        let frame = |seq| ServerFrame::Notification {
            seq,
            kind: hubbub_protocol::NotificationKind::Mention,
            data,
        };
        written
            .events
            .push(append_event(tx, user, now, frame).await?);
    }
    Ok(())
}

pub(crate) async fn history(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
    thread: Option<&str>,
    before: Option<&str>,
    limit: usize,
) -> Result<(Vec<Message>, bool)> {
    let before = before.map_or(Ok(i64::MAX), parse_message_id)?;
    let thread = thread.map(parse_message_id).transpose()?;
    check_member(tx, caller, id).await?;
    // One more than asked: whether older ones remain.
    let mut page = tx
        .messages_before(id, caller, before, limit + 1, thread)
        .await?;
    let more = page.len() > limit;
    page.truncate(limit);
    Ok((messages::with_mine(tx, caller, page).await?, more))
}

pub(crate) async fn mark_read(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    message: &str,
    now: i64,
) -> Result<Written<()>> {
    let mid = parse_message_id(message)?;
    let c = member_view(tx, caller, id).await?;
    if c.kind == ConversationKind::Channel {
        return Err(StoreError::BadRequest("a channel has no receipts".into()));
    }
    if !tx.message_in(id, mid).await? {
        return Err(StoreError::NotFound(format!(
            "no message {message} in {id}"
        )));
    }
    if !tx.advance_read(id, caller, mid).await? {
        // Already read this far: nothing new to tell anyone.
        return Ok(Written::nothing(()));
    }
    // Every member, the reader included, so each of the reader's sessions sees it too and
    // seqs stay gapless.
    tx.lock_users(&c.members).await?;
    let mut events = Vec::with_capacity(c.members.len());
    for u in &c.members {
        let frame = |seq| ServerFrame::ReceiptRead {
            seq,
            conversation: id.to_owned(),
            user: caller.to_owned(),
            message: message.to_owned(),
        };
        events.push(append_event(tx, u, now, frame).await?);
    }
    Ok(Written::new((), events))
}

pub(crate) async fn block(
    tx: &(impl ChatTx + AccountTx),
    caller: &str,
    user: &str,
    now: i64,
) -> Result<()> {
    if caller == user {
        return Err(StoreError::BadRequest("you cannot block yourself".into()));
    }
    require_user(tx, user).await?;
    tx.insert_block(caller, user, now).await
}

pub(crate) async fn blocked_by(
    tx: &impl ChatTx,
    caller: &str,
    users: &[String],
) -> Result<Vec<String>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let blockers = tx.blockers_among(caller, users).await?;
    Ok(users
        .iter()
        .filter(|u| blockers.contains(u))
        .cloned()
        .collect())
}

pub(crate) async fn search(
    tx: &impl ChatTx,
    caller: &str,
    query: &str,
    conversation: Option<&str>,
    limit: usize,
) -> Result<Vec<Message>> {
    let words = search_words(query)?;
    if let Some(c) = conversation {
        check_member(tx, caller, c).await?;
    }
    let found = tx.search(caller, &words, conversation, limit).await?;
    messages::with_mine(tx, caller, found).await
}

pub(crate) async fn typing_recipients(
    tx: &impl ChatTx,
    sender: &str,
    id: &str,
) -> Result<Vec<String>> {
    check_member(tx, sender, id).await?;
    tx.typing_recipients(id, sender).await
}

pub(crate) async fn expire_ephemeral(
    tx: &(impl ChatTx + InboxTx),
    before_ms: i64,
    now: i64,
) -> Result<Written<Vec<String>>> {
    let ids = tx.ephemeral_due(before_ms, EXPIRE_BATCH).await?;
    let mut events = Vec::new();
    for id in &ids {
        let Some(mut c) = tx.conversation(id).await? else {
            continue;
        };
        let members = std::mem::take(&mut c.members);
        events.extend(conversation_events(tx, &members, &c, now).await?);
        tx.delete_conversation(id).await?;
    }
    Ok(Written::new(ids, events))
}

pub(crate) mod messages;
pub(crate) mod moderation;
mod rows;
pub(crate) use rows::*;
mod store;
pub(crate) use store::impl_chat_store;
