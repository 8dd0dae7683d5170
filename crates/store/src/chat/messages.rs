//! The rules of PROTOCOL.md 1.1's message additions, for every backend: replies and threads
//! (links to messages of the same conversation), mentions (of members), edits with their
//! versions, deletes for everyone (tombstones), reactions with a summary kept per message,
//! pins.
//!
//! Every change is told like a new message: `message.updated` / `reaction.updated` to each
//! member who does not block the message's sender (the reactor, for reactions), under their
//! next seq, in the change's transaction; in a channel, `channel.updated` is broadcast to its
//! members instead (no seq). A pin changes the conversation: `conversation.updated`.
//!
//! On PostgreSQL a change locks the users it tells (in id order) before the message's row, as
//! `message.send`'s batch does (its users, then a thread root's row), so two writes never
//! wait on each other in a circle.

use super::*;
use crate::inbox::append_to_all;

/// The most distinct emoji on one message (PROTOCOL.md 1.1).
pub const MAX_EMOJI: usize = 50;
/// The longest emoji, in bytes.
pub const MAX_EMOJI_BYTES: usize = 32;
/// The most members one message mentions.
pub const MAX_MENTIONS: usize = 100;
/// The most pinned messages in one conversation.
pub const MAX_PINS: usize = 50;
/// The most times one message may be edited.
pub const MAX_EDITS: u64 = 100;

/// Message `message` of conversation `id`, or `NotFound`.
async fn find(tx: &impl ChatTx, id: &str, message: i64, lock: bool) -> Result<Message> {
    tx.message_of(id, message, lock)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no message {message} in {id}")))
}

/// Message `message` of conversation `id`, not deleted, or `NotFound`.
async fn live(tx: &impl ChatTx, id: &str, message: i64, lock: bool) -> Result<Message> {
    let m = find(tx, id, message, lock).await?;
    if m.deleted {
        return Err(StoreError::NotFound(format!(
            "message {message} was deleted"
        )));
    }
    Ok(m)
}

/// `conversation.mute`: a member's own mute, set or lifted (a time already past lifts it).
pub(crate) async fn mute(
    tx: &impl ChatTx,
    user: &str,
    id: &str,
    until_ms: Option<i64>,
    now: i64,
) -> Result<()> {
    check_member(tx, user, id).await?;
    tx.set_mute(user, id, until_ms.filter(|u| *u > now)).await
}

/// `message.report`: a member reports a live message of the conversation, once.
pub(crate) async fn report(
    tx: &impl ChatTx,
    reporter: &str,
    id: &str,
    message: &str,
    reason: &str,
    now: i64,
) -> Result<(Report, bool)> {
    let mid = parse_message_id(message)?;
    check_member(tx, reporter, id).await?;
    live(tx, id, mid, false).await?;
    let fresh = tx.insert_report(id, mid, reporter, reason, now).await?;
    let report = tx
        .report_of(id, mid, reporter)
        .await?
        .ok_or_else(|| StoreError::Internal("a report vanished".into()))?;
    Ok((report, fresh))
}

/// The reports, newest first, and whether older ones remain.
pub(crate) async fn reports(
    tx: &impl ChatTx,
    before: Option<&str>,
    limit: usize,
) -> Result<(Vec<Report>, bool)> {
    let before = match before {
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| StoreError::BadRequest(format!("no report {b}")))?,
        ),
        None => None,
    };
    let mut page = tx.reports(before, limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    Ok((page, more))
}

/// What a new message links to, checked: `reply_to` and `thread` name messages of its
/// conversation (else `NotFound`, as for any message id the conversation does not hold), a
/// thread named by one of its replies is the root's, and `mentions` name members (else
/// `BadRequest`).
pub(crate) async fn links(tx: &impl ChatTx, new: &NewMessage) -> Result<Links> {
    let id = new.conversation.as_str();
    let reply_to = match &new.reply_to {
        Some(m) => Some(find(tx, id, parse_message_id(m)?, false).await?.id),
        None => None,
    };
    let thread = match &new.thread {
        Some(m) => {
            let named = find(tx, id, parse_message_id(m)?, false).await?;
            Some(named.thread.unwrap_or(named.id))
        }
        None => None,
    };
    let mut mentions: Vec<&String> = Vec::new();
    for user in &new.mentions {
        if !mentions.contains(&user) {
            mentions.push(user);
        }
    }
    if mentions.len() > MAX_MENTIONS {
        return Err(StoreError::TooLarge(format!(
            "a message mentions at most {MAX_MENTIONS} members"
        )));
    }
    for user in &mentions {
        if !tx.membership(id, user).await?.1 {
            return Err(StoreError::BadRequest(format!(
                "`mentions` names {user}, who is not a member"
            )));
        }
    }
    Ok(Links {
        reply_to: reply_to.as_deref().map(stored_message_id).transpose()?,
        thread: thread.as_deref().map(stored_message_id).transpose()?,
        mentions: serde_json::to_string(&mentions).map_err(json_err)?,
    })
}

/// Whether `id` is a channel.
async fn is_channel(tx: &impl ChatTx, id: &str) -> Result<bool> {
    let row = tx.conversation_row(id).await?;
    Ok(row.is_some_and(|r| r.kind == kind_name(ConversationKind::Channel)))
}

/// Add `frame` to the broadcast of a channel's change (to every member).
fn broadcast(id: &str, written: &mut Option<Broadcast>, frame: ServerFrame) {
    match written {
        Some(b) => b.frames.push(frame),
        None => {
            *written = Some(Broadcast {
                conversation: id.to_owned(),
                frames: vec![frame],
            });
        }
    }
}

/// Tell the members that `message` changed: `message.updated` to each who does not block its
/// sender, or `channel.updated` in a channel.
pub(crate) async fn tell_changed<T>(
    tx: &(impl ChatTx + InboxTx),
    message: &Message,
    written: &mut Written<T>,
    now: i64,
) -> Result<()> {
    let id = message.conversation.as_str();
    if is_channel(tx, id).await? {
        let offset = tx.offset_of(stored_message_id(&message.id)?).await?;
        let frame = ServerFrame::ChannelUpdated {
            conversation: id.to_owned(),
            offset: offset.unwrap_or(0),
            message: message.clone(),
        };
        broadcast(id, &mut written.broadcast, frame);
        return Ok(());
    }
    let users = tx.audience(id, &message.sender).await?;
    let frame = |seq| ServerFrame::MessageUpdated {
        seq,
        message: message.clone(),
    };
    written
        .events
        .extend(append_to_all(tx, &users, now, frame).await?);
    Ok(())
}

/// The messages with the caller's `my_reactions`; only messages with reactions cost a read,
/// and that read is of the caller's rows only (never every reaction).
pub(crate) async fn with_mine(
    tx: &impl ChatTx,
    caller: &str,
    mut page: Vec<Message>,
) -> Result<Vec<Message>> {
    let reacted: Vec<i64> = page
        .iter()
        .filter(|m| !m.reactions.is_empty())
        .filter_map(|m| m.id.parse().ok())
        .collect();
    let mine = if reacted.is_empty() {
        Vec::new()
    } else {
        tx.my_reactions(caller, &reacted).await?
    };
    for m in &mut page {
        let emoji = mine
            .iter()
            .filter(|(id, _)| id.to_string() == m.id)
            .map(|(_, e)| e.clone())
            .collect();
        m.my_reactions = Some(emoji);
    }
    Ok(page)
}

/// Lock the users `actor`'s change to a message of `id` is told to, and return them (none in
/// a channel: its changes are broadcast, no seq is taken).
async fn lock_audience(tx: &impl ChatTx, id: &str, actor: &str) -> Result<Vec<String>> {
    if is_channel(tx, id).await? {
        return Ok(Vec::new());
    }
    let users = tx.audience(id, actor).await?;
    tx.lock_users(&users).await?;
    Ok(users)
}

pub(crate) async fn edit(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    message: &str,
    text: &str,
    now: i64,
) -> Result<Written<Message>> {
    let mid = parse_message_id(message)?;
    check_member(tx, caller, id).await?;
    lock_audience(tx, id, caller).await?;
    let m = live(tx, id, mid, true).await?;
    if m.sender != caller {
        return Err(StoreError::Forbidden(
            "only its sender may edit a message".into(),
        ));
    }
    if m.text == text {
        // Nothing changes (a redelivered edit among others): no version, no event.
        return Ok(Written::nothing(m));
    }
    let kept = tx
        .insert_version(mid, &m.text, m.edited_ts.unwrap_or(m.ts))
        .await?;
    if kept > MAX_EDITS {
        return Err(StoreError::TooLarge(format!(
            "a message may be edited at most {MAX_EDITS} times"
        )));
    }
    tx.set_text(mid, text, now).await?;
    let edited = find(tx, id, mid, false).await?;
    let mut written = Written::nothing(edited.clone());
    tell_changed(tx, &edited, &mut written, now).await?;
    Ok(written)
}

pub(crate) async fn versions(
    tx: &impl ChatTx,
    caller: &str,
    id: &str,
    message: &str,
) -> Result<Vec<MessageVersion>> {
    let mid = parse_message_id(message)?;
    check_member(tx, caller, id).await?;
    let m = find(tx, id, mid, false).await?;
    if m.deleted {
        return Ok(Vec::new());
    }
    let mut all = tx.versions(mid).await?;
    all.push(MessageVersion {
        text: m.text,
        ts: m.edited_ts.unwrap_or(m.ts),
    });
    Ok(all)
}

/// Whether `caller`, a member, moderates conversation `id` (its owner or an admin: only they
/// delete others' messages and pin in a group or channel); and the conversation's kind.
async fn moderates(tx: &impl ChatTx, caller: &str, id: &str) -> Result<(bool, ConversationKind)> {
    let (row, state) = member_row(tx, caller, id).await?;
    Ok((state.role.moderates(), kind_of(&row.kind)))
}

pub(crate) async fn delete(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    message: &str,
    now: i64,
) -> Result<Written<()>> {
    let mid = parse_message_id(message)?;
    let (moderator, kind) = moderates(tx, caller, id).await?;
    let first = find(tx, id, mid, false).await?;
    if first.sender != caller && !(moderator && kind != ConversationKind::Direct) {
        return Err(StoreError::Forbidden(
            "only its sender, or the owner or an admin of a group or channel, may delete a \
             message"
                .into(),
        ));
    }
    lock_audience(tx, id, &first.sender).await?;
    let m = find(tx, id, mid, true).await?;
    if m.deleted {
        return Ok(Written::nothing(()));
    }
    tx.tombstone(mid).await?;
    let gone = find(tx, id, mid, false).await?;
    let mut written = Written::nothing(());
    tell_changed(tx, &gone, &mut written, now).await?;
    if tx.delete_pin(id, mid).await? {
        pins_changed(tx, id, &mut written, now).await?;
    }
    Ok(written)
}

/// Tombstone messages of an erased sender, all of conversation `id`, as `message.delete`
/// does each (the sender is no longer a member: the audience is the members who do not
/// block them).
pub(crate) async fn erase_messages(
    tx: &(impl ChatTx + InboxTx),
    id: &str,
    sender: &str,
    messages: &[Message],
    now: i64,
) -> Result<Written<()>> {
    lock_audience(tx, id, sender).await?;
    let mut written = Written::nothing(());
    let mut unpinned = false;
    for m in messages {
        let mid = stored_message_id(&m.id)?;
        if find(tx, id, mid, true).await?.deleted {
            continue;
        }
        tx.tombstone(mid).await?;
        let gone = find(tx, id, mid, false).await?;
        tell_changed(tx, &gone, &mut written, now).await?;
        unpinned |= tx.delete_pin(id, mid).await?;
    }
    if unpinned {
        pins_changed(tx, id, &mut written, now).await?;
    }
    Ok(written)
}

/// Take an erased user's reactions off their messages: each summary loses them, silently
/// (no `reaction.updated`; a history read shows the counts as they are).
pub(crate) async fn erase_reactions(
    tx: &impl ChatTx,
    user: &str,
    reactions: &[(i64, String, String)],
) -> Result<()> {
    for (mid, id, emoji) in reactions {
        // Locked, then re-read for each: a message may carry several of them.
        let Some(m) = tx.message_of(id, *mid, true).await? else {
            tx.delete_reaction(*mid, user, emoji).await?;
            continue;
        };
        if tx.delete_reaction(*mid, user, emoji).await? {
            let summary = counted(m.reactions, emoji, false);
            tx.set_reactions(*mid, &serde_json::to_string(&summary).map_err(json_err)?)
                .await?;
        }
    }
    Ok(())
}

/// Check an emoji: 1 to [`MAX_EMOJI_BYTES`] bytes, no control characters.
pub fn check_emoji(emoji: &str) -> Result<()> {
    if emoji.is_empty() || emoji.chars().any(char::is_control) {
        return Err(StoreError::BadRequest(
            "`emoji` must be 1 to 32 bytes of printable text".into(),
        ));
    }
    if emoji.len() > MAX_EMOJI_BYTES {
        return Err(StoreError::TooLarge(format!(
            "an emoji is at most {MAX_EMOJI_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The summary after one reaction more (`add`) or less: most first, ties keeping
/// their order (a new emoji goes after the others of its count).
pub(crate) fn counted(
    mut summary: Vec<ReactionCount>,
    emoji: &str,
    add: bool,
) -> Vec<ReactionCount> {
    match summary.iter_mut().find(|r| r.emoji == emoji) {
        Some(r) if add => r.count += 1,
        Some(r) => r.count = r.count.saturating_sub(1),
        None if add => summary.push(ReactionCount {
            emoji: emoji.to_owned(),
            count: 1,
        }),
        None => {}
    }
    summary.retain(|r| r.count > 0);
    // A stable sort: equal counts keep their order.
    summary.sort_by_key(|r| std::cmp::Reverse(r.count));
    summary
}

pub(crate) async fn react(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    message: &str,
    emoji: &str,
    add: bool,
    now: i64,
) -> Result<Written<Vec<ReactionCount>>> {
    check_emoji(emoji)?;
    let mid = parse_message_id(message)?;
    check_member(tx, caller, id).await?;
    let users = lock_audience(tx, id, caller).await?;
    let m = live(tx, id, mid, true).await?;
    if add && !m.reactions.iter().any(|r| r.emoji == emoji) && m.reactions.len() >= MAX_EMOJI {
        return Err(StoreError::TooLarge(format!(
            "a message carries at most {MAX_EMOJI} distinct emoji"
        )));
    }
    let changed = if add {
        tx.insert_reaction(mid, caller, emoji, now).await?
    } else {
        tx.delete_reaction(mid, caller, emoji).await?
    };
    if !changed {
        return Ok(Written::nothing(m.reactions));
    }
    let summary = counted(m.reactions.clone(), emoji, add);
    tx.set_reactions(mid, &serde_json::to_string(&summary).map_err(json_err)?)
        .await?;
    let mut written = Written::nothing(summary.clone());
    if is_channel(tx, id).await? {
        let changed = Message {
            reactions: summary,
            ..m
        };
        tell_changed(tx, &changed, &mut written, now).await?;
        return Ok(written);
    }
    let op = if add {
        hubbub_protocol::ReactionOp::Add
    } else {
        hubbub_protocol::ReactionOp::Remove
    };
    let frame = |seq| ServerFrame::ReactionUpdated {
        seq,
        conversation: id.to_owned(),
        message: m.id.clone(),
        user: caller.to_owned(),
        emoji: emoji.to_owned(),
        op,
        reactions: summary.clone(),
    };
    written
        .events
        .extend(append_to_all(tx, &users, now, frame).await?);
    Ok(written)
}

/// `conversation.updated` to every member after a pin or unpin (a large group's copy
/// without its member list).
async fn pins_changed<T>(
    tx: &(impl ChatTx + InboxTx),
    id: &str,
    written: &mut Written<T>,
    now: i64,
) -> Result<()> {
    let row = tx
        .conversation_row(id)
        .await?
        .ok_or_else(|| StoreError::Internal(format!("conversation {id} vanished")))?;
    let users = tx.members_after(id, "", i64::MAX as usize).await?;
    let c = if row.kind == kind_name(ConversationKind::Channel) || users.len() > LARGE_GROUP {
        brief(tx, id, row).await?
    } else {
        existing(tx, id).await?
    };
    written
        .events
        .extend(conversation_events(tx, &users, &c, now).await?);
    Ok(())
}

pub(crate) async fn pin(
    tx: &(impl ChatTx + InboxTx),
    caller: &str,
    id: &str,
    message: &str,
    pin: bool,
    now: i64,
) -> Result<Written<()>> {
    let mid = parse_message_id(message)?;
    let (moderator, kind) = moderates(tx, caller, id).await?;
    if kind != ConversationKind::Direct && !moderator {
        return Err(StoreError::Forbidden(
            "only the owner or an admin of a group or channel may pin messages".into(),
        ));
    }
    let users = tx.members_after(id, "", i64::MAX as usize).await?;
    tx.lock_users(&users).await?;
    let changed = if pin {
        live(tx, id, mid, false).await?;
        let pinned = tx.pinned(id).await?;
        if pinned.iter().any(|p| *p == mid.to_string()) {
            return Ok(Written::nothing(()));
        }
        if pinned.len() >= MAX_PINS {
            return Err(StoreError::TooLarge(format!(
                "a conversation has at most {MAX_PINS} pinned messages"
            )));
        }
        tx.insert_pin(id, mid, caller, now).await?
    } else {
        tx.delete_pin(id, mid).await?
    };
    let mut written = Written::nothing(());
    if changed {
        pins_changed(tx, id, &mut written, now).await?;
    }
    Ok(written)
}

pub(crate) async fn pins(tx: &impl ChatTx, caller: &str, id: &str) -> Result<Vec<Message>> {
    check_member(tx, caller, id).await?;
    let pinned = tx.pinned_messages(id).await?;
    with_mine(tx, caller, pinned).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, u64)]) -> Vec<ReactionCount> {
        pairs
            .iter()
            .map(|(e, c)| ReactionCount {
                emoji: (*e).to_owned(),
                count: *c,
            })
            .collect()
    }

    #[test]
    fn summaries_are_most_first_and_ties_keep_their_order() {
        let one = counted(Vec::new(), "a", true);
        assert_eq!(one, s(&[("a", 1)]));
        let two = counted(one, "b", true);
        assert_eq!(two, s(&[("a", 1), ("b", 1)]), "a new emoji goes last");
        let b_up = counted(two, "b", true);
        assert_eq!(b_up, s(&[("b", 2), ("a", 1)]));
        let a_gone = counted(b_up, "a", false);
        assert_eq!(a_gone, s(&[("b", 2)]), "a count of 0 leaves the summary");
        assert_eq!(counted(a_gone.clone(), "zz", false), a_gone);
    }

    #[test]
    fn emoji_are_1_to_32_bytes_of_printable_text() {
        assert!(check_emoji("👍").is_ok());
        assert!(check_emoji(&"x".repeat(MAX_EMOJI_BYTES)).is_ok());
        assert!(matches!(check_emoji(""), Err(StoreError::BadRequest(_))));
        assert!(matches!(
            check_emoji("a\nb"),
            Err(StoreError::BadRequest(_))
        ));
        assert!(matches!(
            check_emoji(&"x".repeat(MAX_EMOJI_BYTES + 1)),
            Err(StoreError::TooLarge(_))
        ));
    }
}
