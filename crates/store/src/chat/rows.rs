//! Values from the chat tables' rows, and the checks on ids and search text that come with
//! them: the same for both backends.

use super::*;

pub(crate) fn message_from_row(r: MessageRow) -> Result<Message> {
    Ok(Message {
        id: r.id.to_string(),
        conversation: r.conversation,
        sender: r.sender,
        client_msg_id: r.client_msg_id,
        text: r.text,
        attachments: serde_json::from_str(&r.attachments).map_err(json_err)?,
        ts: r.ts,
        reply_to: r.reply_to.map(|id| id.to_string()),
        thread: r.thread.map(|id| id.to_string()),
        mentions: serde_json::from_str(&r.mentions).map_err(json_err)?,
        edited_ts: r.edited_ms,
        deleted: r.deleted,
        reactions: serde_json::from_str(&r.reactions).map_err(json_err)?,
        replies: u64::try_from(r.replies).unwrap_or(0),
        my_reactions: None,
    })
}

/// How a conversation's kind is stored.
pub(crate) fn kind_name(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
        ConversationKind::Channel => "channel",
    }
}

/// A stored kind name's kind.
pub(crate) fn kind_of(name: &str) -> ConversationKind {
    [ConversationKind::Direct, ConversationKind::Channel]
        .into_iter()
        .find(|k| kind_name(*k) == name)
        .unwrap_or(ConversationKind::Group)
}

pub(crate) fn conversation_from_row(
    id: &str,
    row: ConversationRow,
    members: Vec<String>,
) -> Conversation {
    Conversation {
        id: id.to_owned(),
        kind: kind_of(&row.kind),
        title: row.title,
        member_count: members.len() as u64,
        members_omitted: false,
        members,
        created_by: row.created_by,
        created_ts: row.created_ms,
        ephemeral: row.ephemeral,
        public: row.public,
        last_offset: u64::try_from(row.last_offset).unwrap_or(0),
        pinned: Vec::new(),
        roles: BTreeMap::new(),
        slow_mode_s: u64::try_from(row.slow_mode_s).unwrap_or(0),
    }
}

/// A message id named by a client: one that cannot be stored names no message.
pub(crate) fn parse_message_id(id: &str) -> Result<i64> {
    id.parse::<i64>()
        .map_err(|_| StoreError::NotFound(format!("no message {id}")))
}

/// The row id of a message the store built.
pub(crate) fn stored_message_id(id: &str) -> Result<i64> {
    id.parse::<i64>()
        .map_err(|_| StoreError::Internal(format!("message id {id}")))
}

/// The words of a search: every one must appear. Punctuation around words is dropped, so
/// no backend's query operators come from the text.
pub(crate) fn search_words(text: &str) -> Result<Vec<&str>> {
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(StoreError::TooLarge(format!(
            "a query is at most {MAX_QUERY_CHARS} characters"
        )));
    }
    let words: Vec<&str> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Err(StoreError::BadRequest(
            "the query has no words to search for".into(),
        ));
    }
    Ok(words)
}
