//! Chat's SQL on SQLite. Search is FTS5 over message text (an external-content index kept by
//! triggers, see `001_chat.sql`).

use super::{
    CONVERSATION_COLUMNS, ChatTx, ConversationRow, Links, M_MESSAGE_COLUMNS, MESSAGE_COLUMNS,
    MemberState, MessageRow, NewConversation, NewMessage, kind_name, message_from_row,
};
use crate::sqlite::Tx;
use crate::{Result, SqliteStore, Written};
use hubbub_protocol::serverapi::Report;
use hubbub_protocol::{Message, MessageVersion, Role};
use hubbub_queue::embedded::exec_cached;
use rusqlite::{OptionalExtension, params};
use std::collections::BTreeMap;

super::impl_chat_store!(SqliteStore);

impl SqliteStore {
    /// `message.send`: the writer thread already commits concurrent sends together.
    async fn send(&self, new: NewMessage) -> Result<Written<Message>> {
        let now = self.now();
        crate::run!(self.write, |tx| super::send_message(tx, new, now))
    }

    /// Several sends in one transaction of the writer, each stored in its own savepoint (one
    /// send's failure leaves the others), then fanned out together ([`super::sends_written`]).
    async fn send_many(&self, news: Vec<NewMessage>) -> Result<Vec<Result<Written<Message>>>> {
        let now = self.now();
        crate::run!(self.write, |tx| async move {
            let mut stored = Vec::with_capacity(news.len());
            for new in &news {
                exec_cached(tx, "SAVEPOINT hubbub_send")?;
                let one = super::store_message(tx, new, now).await;
                if one.is_err() {
                    exec_cached(tx, "ROLLBACK TO hubbub_send")?;
                }
                exec_cached(tx, "RELEASE hubbub_send")?;
                stored.push(one);
            }
            super::sends_written(tx, stored, now).await
        })
    }
}

/// A report from a row of `reports` (id, conversation, message, reporter, reason, ts).
fn report_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Report> {
    Ok(Report {
        id: r.get::<_, i64>(0)?.to_string(),
        conversation: r.get(1)?,
        message: r.get::<_, i64>(2)?.to_string(),
        reporter: r.get(3)?,
        reason: r.get(4)?,
        ts: r.get(5)?,
    })
}

/// A message's columns, from column `from` of a row (in [`MESSAGE_COLUMNS`]' order).
pub(crate) fn message_row(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        id: r.get(from)?,
        conversation: r.get(from + 1)?,
        sender: r.get(from + 2)?,
        client_msg_id: r.get(from + 3)?,
        text: r.get(from + 4)?,
        attachments: r.get(from + 5)?,
        ts: r.get(from + 6)?,
        reply_to: r.get(from + 7)?,
        thread: r.get(from + 8)?,
        mentions: r.get(from + 9)?,
        edited_ms: r.get(from + 10)?,
        deleted: r.get(from + 11)?,
        replies: r.get(from + 12)?,
        reactions: r.get(from + 13)?,
    })
}

/// The messages a statement returns, in [`MESSAGE_COLUMNS`]' order.
fn messages(
    mut st: rusqlite::CachedStatement<'_>,
    p: impl rusqlite::Params,
) -> Result<Vec<Message>> {
    let rows = st
        .query_map(p, |r| message_row(r, 0))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(message_from_row).collect()
}

fn strings(mut st: rusqlite::CachedStatement<'_>, p: impl rusqlite::Params) -> Result<Vec<String>> {
    Ok(st
        .query_map(p, |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?)
}

impl ChatTx for Tx<'_> {
    async fn conversation_row(&self, id: &str) -> Result<Option<ConversationRow>> {
        Ok(self
            .prepare_cached(&format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"
            ))?
            .query_row([id], |r| {
                Ok(ConversationRow {
                    kind: r.get(0)?,
                    title: r.get(1)?,
                    created_by: r.get(2)?,
                    created_ms: r.get(3)?,
                    ephemeral: r.get(4)?,
                    public: r.get(5)?,
                    last_offset: r.get(6)?,
                    slow_mode_s: r.get(7)?,
                })
            })
            .optional()?)
    }

    async fn lock_membership(&self, _id: &str) -> Result<()> {
        // The writer thread is alone: nothing to wait for.
        Ok(())
    }

    async fn roles(&self, id: &str) -> Result<BTreeMap<String, Role>> {
        Ok(self
            .prepare_cached(
                "SELECT user_id, role FROM members WHERE conversation_id = ?1 AND role <> 'member'",
            )?
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Role::from_name(&r.get::<_, String>(1)?),
                ))
            })?
            .collect::<Result<_, _>>()?)
    }

    async fn member_state(&self, id: &str, user: &str) -> Result<Option<MemberState>> {
        Ok(self
            .prepare_cached(
                "SELECT role, muted_until_ms, last_sent_ms FROM members
                 WHERE conversation_id = ?1 AND user_id = ?2",
            )?
            .query_row(params![id, user], |r| {
                Ok(MemberState {
                    role: Role::from_name(&r.get::<_, String>(0)?),
                    muted_until_ms: r.get(1)?,
                    last_sent_ms: r.get(2)?,
                })
            })
            .optional()?)
    }

    async fn set_role(&self, id: &str, user: &str, role: Role) -> Result<()> {
        self.prepare_cached(
            "UPDATE members SET role = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
        )?
        .execute(params![id, user, role.as_str()])?;
        Ok(())
    }

    async fn set_member_mute(&self, id: &str, user: &str, until_ms: Option<i64>) -> Result<()> {
        self.prepare_cached(
            "UPDATE members SET muted_until_ms = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
        )?
        .execute(params![id, user, until_ms])?;
        Ok(())
    }

    async fn set_last_sent(&self, id: &str, user: &str, ms: i64) -> Result<()> {
        self.prepare_cached(
            "UPDATE members SET last_sent_ms = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
        )?
        .execute(params![id, user, ms])?;
        Ok(())
    }

    async fn successor(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .prepare_cached(
                "SELECT user_id FROM members WHERE conversation_id = ?1
                 ORDER BY role = 'admin' DESC, joined_ms, user_id LIMIT 1",
            )?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    async fn set_settings(
        &self,
        id: &str,
        title: Option<Option<&str>>,
        slow_mode_s: Option<i64>,
    ) -> Result<()> {
        if let Some(title) = title {
            self.prepare_cached("UPDATE conversations SET title = ?2 WHERE id = ?1")?
                .execute(params![id, title])?;
        }
        if let Some(slow) = slow_mode_s {
            self.prepare_cached("UPDATE conversations SET slow_mode_s = ?2 WHERE id = ?1")?
                .execute(params![id, slow])?;
        }
        Ok(())
    }

    async fn ban_of(&self, id: &str, user: &str) -> Result<Option<Option<i64>>> {
        Ok(self
            .prepare_cached(
                "SELECT until_ms FROM conversation_bans WHERE conversation_id = ?1 AND user_id = ?2",
            )?
            .query_row(params![id, user], |r| r.get(0))
            .optional()?)
    }

    async fn insert_ban(
        &self,
        id: &str,
        user: &str,
        until_ms: Option<i64>,
        by: &str,
        now: i64,
    ) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO conversation_bans (conversation_id, user_id, until_ms, banned_by, ts)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (conversation_id, user_id)
             DO UPDATE SET until_ms = ?3, banned_by = ?4, ts = ?5",
        )?
        .execute(params![id, user, until_ms, by, now])?;
        Ok(())
    }

    async fn delete_ban(&self, id: &str, user: &str) -> Result<()> {
        self.prepare_cached(
            "DELETE FROM conversation_bans WHERE conversation_id = ?1 AND user_id = ?2",
        )?
        .execute(params![id, user])?;
        Ok(())
    }

    async fn members(&self, id: &str) -> Result<Vec<String>> {
        strings(
            self.prepare_cached(
                "SELECT user_id FROM members WHERE conversation_id = ?1 ORDER BY joined_ms, user_id",
            )?,
            [id],
        )
    }

    async fn members_after(&self, id: &str, after: &str, limit: usize) -> Result<Vec<String>> {
        strings(
            self.prepare_cached(
                "SELECT user_id FROM members WHERE conversation_id = ?1 AND user_id > ?2
                 ORDER BY user_id LIMIT ?3",
            )?,
            params![id, after, limit as i64],
        )
    }

    async fn membership(&self, id: &str, user: &str) -> Result<(bool, bool)> {
        Ok(self
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1),
                        EXISTS (SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2)",
            )?
            .query_row(params![id, user], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    async fn blocks(&self, blocker: &str, blocked: &str) -> Result<bool> {
        Ok(self
            .prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
            .exists(params![blocker, blocked])?)
    }

    async fn insert_conversation(
        &self,
        new: &NewConversation,
        direct_key: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let inserted = self
            .prepare_cached(
                "INSERT INTO conversations
                   (id, kind, title, created_by, created_ms, ephemeral, direct_key, public)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                new.id,
                kind_name(new.kind),
                new.title,
                new.creator,
                now,
                new.ephemeral,
                direct_key,
                new.public
            ])?;
        Ok(inserted > 0)
    }

    async fn direct_conversation(&self, direct_key: &str) -> Result<Option<String>> {
        Ok(self
            .prepare_cached("SELECT id FROM conversations WHERE direct_key = ?1")?
            .query_row([direct_key], |r| r.get(0))
            .optional()?)
    }

    async fn add_member(&self, id: &str, user: &str, now: i64) -> Result<()> {
        self.prepare_cached(
            "INSERT OR IGNORE INTO members (conversation_id, user_id, joined_ms) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![id, user, now])?;
        Ok(())
    }

    async fn remove_member(&self, id: &str, user: &str) -> Result<()> {
        self.prepare_cached("DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2")?
            .execute(params![id, user])?;
        Ok(())
    }

    async fn memberships(&self, user: &str) -> Result<Vec<(String, i64)>> {
        Ok(self
            .prepare_cached("SELECT conversation_id, read_message FROM members WHERE user_id = ?1")?
            .query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    }

    async fn channel_memberships(&self, user: &str) -> Result<Vec<String>> {
        strings(
            self.prepare_cached(
                "SELECT m.conversation_id FROM members m
                 JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.user_id = ?1 AND c.kind = 'channel'",
            )?,
            [user],
        )
    }

    async fn last_message(&self, id: &str, viewer: &str) -> Result<Option<Message>> {
        let st = self.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1
             AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?2 AND blocked = sender)
             ORDER BY id DESC LIMIT 1"
        ))?;
        Ok(messages(st, [id, viewer])?.pop())
    }

    async fn unread(&self, id: &str, read: i64, viewer: &str) -> Result<u64> {
        let n: i64 = self
            .prepare_cached(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = ?1 AND id > ?2
                 AND sender != ?3
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?3 AND blocked = sender)",
            )?
            .query_row(params![id, read, viewer], |r| r.get(0))?;
        Ok(n as u64)
    }

    async fn message_by_key(&self, sender: &str, client_msg_id: &str) -> Result<Option<Message>> {
        let st = self.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND client_msg_id = ?2"
        ))?;
        Ok(messages(st, [sender, client_msg_id])?.pop())
    }

    async fn insert_message(
        &self,
        new: &NewMessage,
        attachments: &str,
        links: &Links,
        now: i64,
    ) -> Result<Option<i64>> {
        Ok(self
            .prepare_cached(
                "INSERT INTO messages (conversation_id, sender, client_msg_id, text, attachments, ts,
                                       reply_to, thread, mentions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (sender, client_msg_id) DO NOTHING RETURNING id",
            )?
            .query_row(
                params![
                    new.conversation,
                    new.sender,
                    new.client_msg_id,
                    new.text,
                    attachments,
                    now,
                    links.reply_to,
                    links.thread,
                    links.mentions
                ],
                |r| r.get(0),
            )
            .optional()?)
    }

    async fn messages_before(
        &self,
        id: &str,
        viewer: &str,
        before: i64,
        limit: usize,
        thread: Option<i64>,
    ) -> Result<Vec<Message>> {
        let Some(thread) = thread else {
            let st = self.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND id < ?2
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?4 AND blocked = sender)
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            return messages(st, params![id, before, limit as i64, viewer]);
        };
        // By the thread's index: a thread's page costs the same in a long conversation.
        let st = self.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread = ?5 AND id < ?2
             AND conversation_id = ?1
             AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?4 AND blocked = sender)
             ORDER BY id DESC LIMIT ?3"
        ))?;
        messages(st, params![id, before, limit as i64, viewer, thread])
    }

    async fn message_of(&self, id: &str, message: i64, _lock: bool) -> Result<Option<Message>> {
        let st = self.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1 AND conversation_id = ?2"
        ))?;
        Ok(messages(st, params![message, id])?.pop())
    }

    async fn offset_of(&self, message: i64) -> Result<Option<u64>> {
        let offset: Option<Option<i64>> = self
            .prepare_cached("SELECT channel_offset FROM messages WHERE id = ?1")?
            .query_row([message], |r| r.get(0))
            .optional()?;
        Ok(offset.flatten().map(|o| o as u64))
    }

    async fn lock_users(&self, _users: &[String]) -> Result<()> {
        // The writer thread is alone: nothing to wait for.
        Ok(())
    }

    async fn audience(&self, id: &str, actor: &str) -> Result<Vec<String>> {
        strings(
            self.prepare_cached(
                "SELECT user_id FROM members WHERE conversation_id = ?1
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = user_id AND blocked = ?2)
                 ORDER BY user_id",
            )?,
            [id, actor],
        )
    }

    async fn add_reply(&self, root: i64) -> Result<()> {
        self.prepare_cached("UPDATE messages SET replies = replies + 1 WHERE id = ?1")?
            .execute([root])?;
        Ok(())
    }

    async fn set_text(&self, message: i64, text: &str, now: i64) -> Result<()> {
        self.prepare_cached("UPDATE messages SET text = ?2, edited_ms = ?3 WHERE id = ?1")?
            .execute(params![message, text, now])?;
        Ok(())
    }

    async fn insert_version(&self, message: i64, text: &str, ts: i64) -> Result<u64> {
        let n: i64 = self
            .prepare_cached(
                "INSERT INTO message_versions (message_id, n, text, ts)
                 VALUES (?1, (SELECT COALESCE(MAX(n), 0) + 1 FROM message_versions
                              WHERE message_id = ?1), ?2, ?3)
                 RETURNING n",
            )?
            .query_row(params![message, text, ts], |r| r.get(0))?;
        Ok(n as u64)
    }

    async fn versions(&self, message: i64) -> Result<Vec<MessageVersion>> {
        Ok(self
            .prepare_cached(
                "SELECT text, ts FROM message_versions WHERE message_id = ?1 ORDER BY n",
            )?
            .query_map([message], |r| {
                Ok(MessageVersion {
                    text: r.get(0)?,
                    ts: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    async fn tombstone(&self, message: i64) -> Result<()> {
        for sql in [
            "UPDATE messages SET text = '', attachments = '[]', mentions = '[]', reactions = '[]',
               deleted = 1 WHERE id = ?1",
            "DELETE FROM message_versions WHERE message_id = ?1",
            "DELETE FROM reactions WHERE message_id = ?1",
        ] {
            self.prepare_cached(sql)?.execute([message])?;
        }
        Ok(())
    }

    async fn insert_reaction(
        &self,
        message: i64,
        user: &str,
        emoji: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .prepare_cached(
                "INSERT OR IGNORE INTO reactions (message_id, user_id, emoji, ts)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![message, user, emoji, now])?;
        Ok(n > 0)
    }

    async fn delete_reaction(&self, message: i64, user: &str, emoji: &str) -> Result<bool> {
        let n = self
            .prepare_cached(
                "DELETE FROM reactions WHERE message_id = ?1 AND user_id = ?2 AND emoji = ?3",
            )?
            .execute(params![message, user, emoji])?;
        Ok(n > 0)
    }

    async fn set_reactions(&self, message: i64, summary: &str) -> Result<()> {
        self.prepare_cached("UPDATE messages SET reactions = ?2 WHERE id = ?1")?
            .execute(params![message, summary])?;
        Ok(())
    }

    async fn my_reactions(&self, user: &str, messages: &[i64]) -> Result<Vec<(i64, String)>> {
        // One lookup by the primary key's prefix per message (a page holds at most 100).
        let mut st = self.prepare_cached(
            "SELECT emoji FROM reactions WHERE message_id = ?1 AND user_id = ?2 ORDER BY ts, emoji",
        )?;
        let mut out = Vec::new();
        for m in messages {
            let emoji = st
                .query_map(params![m, user], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            out.extend(emoji.into_iter().map(|e| (*m, e)));
        }
        Ok(out)
    }

    async fn insert_pin(&self, id: &str, message: i64, user: &str, now: i64) -> Result<bool> {
        let n = self
            .prepare_cached(
                "INSERT OR IGNORE INTO pins (conversation_id, message_id, pinned_ms, pinned_by)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, message, now, user])?;
        Ok(n > 0)
    }

    async fn delete_pin(&self, id: &str, message: i64) -> Result<bool> {
        let n = self
            .prepare_cached("DELETE FROM pins WHERE conversation_id = ?1 AND message_id = ?2")?
            .execute(params![id, message])?;
        Ok(n > 0)
    }

    async fn set_mute(&self, user: &str, id: &str, until_ms: Option<i64>) -> Result<()> {
        match until_ms {
            Some(until) => self
                .prepare_cached(
                    "INSERT INTO conversation_mutes (user_id, conversation_id, until_ms)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, conversation_id) DO UPDATE SET until_ms = ?3",
                )?
                .execute(params![user, id, until])?,
            None => self
                .prepare_cached(
                    "DELETE FROM conversation_mutes WHERE user_id = ?1 AND conversation_id = ?2",
                )?
                .execute(params![user, id])?,
        };
        Ok(())
    }

    async fn mute_until(&self, user: &str, id: &str) -> Result<Option<i64>> {
        Ok(self
            .prepare_cached(
                "SELECT until_ms FROM conversation_mutes WHERE user_id = ?1 AND conversation_id = ?2",
            )?
            .query_row(params![user, id], |r| r.get(0))
            .optional()?)
    }

    async fn insert_report(
        &self,
        id: &str,
        message: i64,
        reporter: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self
            .prepare_cached(
                "INSERT OR IGNORE INTO reports (conversation_id, message_id, reporter, reason, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, message, reporter, reason, now])?;
        Ok(n > 0)
    }

    async fn report_of(&self, id: &str, message: i64, reporter: &str) -> Result<Option<Report>> {
        Ok(self
            .prepare_cached(
                "SELECT id, conversation_id, message_id, reporter, reason, ts FROM reports
                 WHERE reporter = ?1 AND conversation_id = ?2 AND message_id = ?3",
            )?
            .query_row(params![reporter, id, message], report_row)
            .optional()?)
    }

    async fn reports(&self, before: Option<i64>, limit: usize) -> Result<Vec<Report>> {
        Ok(self
            .prepare_cached(
                "SELECT id, conversation_id, message_id, reporter, reason, ts FROM reports
                 WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?
            .query_map(
                params![before.unwrap_or(i64::MAX), limit as i64],
                report_row,
            )?
            .collect::<Result<Vec<_>, _>>()?)
    }

    async fn pinned(&self, id: &str) -> Result<Vec<String>> {
        Ok(self
            .prepare_cached(
                "SELECT message_id FROM pins WHERE conversation_id = ?1
                 ORDER BY pinned_ms DESC, message_id DESC",
            )?
            .query_map([id], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|m| m.to_string()))
            .collect::<Result<_, _>>()?)
    }

    async fn pinned_messages(&self, id: &str) -> Result<Vec<Message>> {
        let st = self.prepare_cached(&format!(
            "SELECT {M_MESSAGE_COLUMNS} FROM pins p JOIN messages m ON m.id = p.message_id
             WHERE p.conversation_id = ?1 ORDER BY p.pinned_ms DESC, p.message_id DESC"
        ))?;
        messages(st, [id])
    }

    async fn message_in(&self, id: &str, message: i64) -> Result<bool> {
        Ok(self
            .prepare_cached("SELECT 1 FROM messages WHERE id = ?1 AND conversation_id = ?2")?
            .exists(params![message, id])?)
    }

    async fn advance_read(&self, id: &str, user: &str, message: i64) -> Result<bool> {
        let moved = self
            .prepare_cached(
                "UPDATE members SET read_message = ?3 WHERE conversation_id = ?1 AND user_id = ?2
                 AND read_message < ?3",
            )?
            .execute(params![id, user, message])?;
        Ok(moved > 0)
    }

    async fn insert_block(&self, blocker: &str, blocked: &str, now: i64) -> Result<()> {
        self.prepare_cached(
            "INSERT OR IGNORE INTO blocks (blocker, blocked, created_ms) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![blocker, blocked, now])?;
        Ok(())
    }

    async fn delete_block(&self, blocker: &str, blocked: &str) -> Result<()> {
        self.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
            .execute(params![blocker, blocked])?;
        Ok(())
    }

    async fn blocked_list(&self, blocker: &str) -> Result<Vec<String>> {
        strings(
            self.prepare_cached(
                "SELECT blocked FROM blocks WHERE blocker = ?1 ORDER BY created_ms, blocked",
            )?,
            [blocker],
        )
    }

    async fn blockers_among(&self, blocked: &str, users: &[String]) -> Result<Vec<String>> {
        // One primary-key lookup per user (there is no index by `blocked`).
        let mut st =
            self.prepare_cached("SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2")?;
        let mut out = Vec::new();
        for u in users {
            if st.exists(params![u, blocked])? {
                out.push(u.clone());
            }
        }
        Ok(out)
    }

    async fn search(
        &self,
        viewer: &str,
        words: &[&str],
        conversation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        // Each word quoted, so FTS5 operators and punctuation in the text are searched for,
        // never interpreted; words side by side must all appear.
        let fts = words
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" ");
        let st = self.prepare_cached(&format!(
            "SELECT {M_MESSAGE_COLUMNS}
             FROM messages_fts f
             JOIN messages m ON m.id = f.rowid
             JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = ?2
             WHERE messages_fts MATCH ?1
               AND (?3 IS NULL OR m.conversation_id = ?3)
               AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?2 AND blocked = m.sender)
             ORDER BY bm25(messages_fts), m.id DESC
             LIMIT ?4"
        ))?;
        messages(st, params![fts, viewer, conversation, limit as i64])
    }

    async fn typing_recipients(&self, id: &str, sender: &str) -> Result<Vec<String>> {
        strings(
            self.prepare_cached(
                "SELECT user_id FROM members WHERE conversation_id = ?1 AND user_id != ?2
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = user_id AND blocked = ?2)",
            )?,
            [id, sender],
        )
    }

    async fn ephemeral_due(&self, before_ms: i64, limit: usize) -> Result<Vec<String>> {
        strings(
            self.prepare_cached(
                "SELECT c.id FROM conversations c WHERE c.ephemeral = 1
                 AND COALESCE((SELECT MAX(ts) FROM messages m WHERE m.conversation_id = c.id),
                              c.created_ms) < ?1
                 LIMIT ?2",
            )?,
            [before_ms, limit as i64],
        )
    }

    async fn member_count(&self, id: &str) -> Result<u64> {
        let n: i64 = self
            .prepare_cached("SELECT COUNT(*) FROM members WHERE conversation_id = ?1")?
            .query_row([id], |r| r.get(0))?;
        Ok(n as u64)
    }

    async fn next_offset(&self, id: &str) -> Result<u64> {
        let offset: i64 = self
            .prepare_cached(
                "UPDATE conversations SET last_offset = last_offset + 1 WHERE id = ?1
                 RETURNING last_offset",
            )?
            .query_row([id], |r| r.get(0))?;
        Ok(offset as u64)
    }

    async fn set_channel_offset(&self, message: i64, offset: u64) -> Result<()> {
        self.prepare_cached("UPDATE messages SET channel_offset = ?2 WHERE id = ?1")?
            .execute(params![message, offset as i64])?;
        Ok(())
    }

    async fn channel_messages(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Message)>> {
        let mut st = self.prepare_cached(&format!(
            "SELECT channel_offset, {MESSAGE_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND channel_offset > ?2
             ORDER BY channel_offset LIMIT ?3"
        ))?;
        let rows = st
            .query_map(params![id, crate::to_i64(after), limit as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, message_row(r, 1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(offset, row)| Ok((offset, message_from_row(row)?)))
            .collect()
    }

    async fn delete_conversation(&self, id: &str) -> Result<()> {
        for sql in [
            "DELETE FROM inbox WHERE message_id IN
               (SELECT id FROM messages WHERE conversation_id = ?1)",
            "DELETE FROM message_versions WHERE message_id IN
               (SELECT id FROM messages WHERE conversation_id = ?1)",
            "DELETE FROM reactions WHERE message_id IN
               (SELECT id FROM messages WHERE conversation_id = ?1)",
            "DELETE FROM pins WHERE conversation_id = ?1",
            "DELETE FROM messages WHERE conversation_id = ?1",
            "DELETE FROM members WHERE conversation_id = ?1",
            // After the members (the trigger closed their runs): a reused id must not find
            // them.
            "DELETE FROM inbox_runs WHERE conversation_id = ?1",
            "DELETE FROM conversation_bans WHERE conversation_id = ?1",
            "DELETE FROM conversation_mutes WHERE conversation_id = ?1",
            "DELETE FROM conversations WHERE id = ?1",
        ] {
            self.prepare_cached(sql)?.execute([id])?;
        }
        Ok(())
    }

    async fn live_messages_of(&self, sender: &str, limit: usize) -> Result<Vec<Message>> {
        let st = self.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND deleted = 0
             AND conversation_id = (SELECT conversation_id FROM messages
                                    WHERE sender = ?1 AND deleted = 0 ORDER BY id LIMIT 1)
             ORDER BY id LIMIT ?2"
        ))?;
        messages(st, params![sender, limit as i64])
    }

    async fn reactions_of(&self, user: &str, limit: usize) -> Result<Vec<(i64, String, String)>> {
        Ok(self
            .prepare_cached(
                "SELECT r.message_id, m.conversation_id, r.emoji FROM reactions r
                 JOIN messages m ON m.id = r.message_id
                 WHERE r.user_id = ?1 ORDER BY r.message_id, r.emoji LIMIT ?2",
            )?
            .query_map(params![user, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?)
    }
}
