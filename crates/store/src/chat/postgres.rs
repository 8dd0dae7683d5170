//! Chat's SQL on PostgreSQL, and the group commit of `message.send`. Search is PostgreSQL's
//! own: a generated `tsvector` column with a GIN index, the `simple` configuration so no
//! language is assumed.

use super::{
    CONVERSATION_COLUMNS, ChatTx, ConversationRow, Links, M_MESSAGE_COLUMNS, MESSAGE_COLUMNS,
    MemberState, MessageRow, NewConversation, NewMessage, SendReads, kind_name, message_from_row,
    sends_written, store_read,
};
use crate::postgres::{Row, Tx, commit_err, pg, pool_err};
use crate::{PgStore, Result, StoreError, Written};
use deadpool_postgres::Pool;
use hubbub_protocol::serverapi::Report;
use hubbub_protocol::{Message, MessageVersion, Role};
use hubbub_queue::clock::now_ms;
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio_postgres::types::ToSql;

super::impl_chat_store!(PgStore);

/// A message's columns, from column `from` of a row (in [`MESSAGE_COLUMNS`]' order).
pub(crate) fn message_row(r: &Row, from: usize) -> MessageRow {
    MessageRow {
        id: r.get(from),
        conversation: r.get(from + 1),
        sender: r.get(from + 2),
        client_msg_id: r.get(from + 3),
        text: r.get(from + 4),
        attachments: r.get(from + 5),
        ts: r.get(from + 6),
        reply_to: r.get(from + 7),
        thread: r.get(from + 8),
        mentions: r.get(from + 9),
        edited_ms: r.get(from + 10),
        deleted: r.get(from + 11),
        replies: r.get(from + 12),
        reactions: r.get(from + 13),
    }
}

/// A conversation's columns, from column `from` of a row (in [`CONVERSATION_COLUMNS`]'
/// order); `None` when its `kind` is NULL (a left join that found no conversation).
fn conversation_at(r: &Row, from: usize) -> Option<ConversationRow> {
    Some(ConversationRow {
        kind: r.get::<_, Option<String>>(from)?,
        title: r.get(from + 1),
        created_by: r.get(from + 2),
        created_ms: r.get(from + 3),
        ephemeral: r.get(from + 4),
        public: r.get(from + 5),
        last_offset: r.get(from + 6),
        slow_mode_s: r.get(from + 7),
    })
}

fn messages(rows: Vec<Row>) -> Result<Vec<Message>> {
    rows.iter()
        .map(|r| message_from_row(message_row(r, 0)))
        .collect()
}

fn strings(rows: Vec<Row>) -> Vec<String> {
    rows.iter().map(|r| r.get(0)).collect()
}

impl ChatTx for Tx<'_> {
    async fn conversation_row(&self, id: &str) -> Result<Option<ConversationRow>> {
        Ok(self
            .opt(
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1"),
                &[&id],
            )
            .await?
            .and_then(|r| conversation_at(&r, 0)))
    }

    async fn lock_membership(&self, id: &str) -> Result<()> {
        // Two 32-bit keys: a key space of its own (the migrations' lock is a 64-bit key).
        self.exec("SELECT pg_advisory_xact_lock(1, hashtext($1))", &[&id])
            .await?;
        Ok(())
    }

    async fn roles(&self, id: &str) -> Result<BTreeMap<String, Role>> {
        Ok(self
            .rows(
                "SELECT user_id, role FROM members WHERE conversation_id = $1 AND role <> 'member'",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), Role::from_name(r.get(1))))
            .collect())
    }

    async fn member_state(&self, id: &str, user: &str) -> Result<Option<MemberState>> {
        Ok(self
            .opt(
                "SELECT role, muted_until_ms, last_sent_ms FROM members
                 WHERE conversation_id = $1 AND user_id = $2",
                &[&id, &user],
            )
            .await?
            .map(|r| MemberState {
                role: Role::from_name(r.get(0)),
                muted_until_ms: r.get(1),
                last_sent_ms: r.get(2),
            }))
    }

    async fn send_reads(&self, new: &NewMessage) -> Result<SendReads> {
        // One row: each read is a left join that finds at most one row (the conversation by
        // id, the membership by its key, the message by the unique (sender, client_msg_id)).
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let c: Vec<String> = CONVERSATION_COLUMNS
                .split(", ")
                .map(|col| format!("c.{col}"))
                .collect();
            format!(
                "SELECT {}, mb.role, mb.muted_until_ms, mb.last_sent_ms, {M_MESSAGE_COLUMNS}
                 FROM (VALUES (1)) AS one(x)
                 LEFT JOIN conversations c ON c.id = $1
                 LEFT JOIN members mb ON NOT $4 AND mb.conversation_id = $1 AND mb.user_id = $2
                 LEFT JOIN messages m ON m.sender = $2 AND m.client_msg_id = $3",
                c.join(", ")
            )
        });
        let r = self
            .one(
                &SQL,
                &[
                    &new.conversation,
                    &new.sender,
                    &new.client_msg_id,
                    &new.system,
                ],
            )
            .await?;
        let row = conversation_at(&r, 0);
        let state = r.get::<_, Option<&str>>(8).map(|role| MemberState {
            role: Role::from_name(role),
            muted_until_ms: r.get(9),
            last_sent_ms: r.get(10),
        });
        let existing = match r.get::<_, Option<i64>>(11) {
            Some(_) => Some(message_from_row(message_row(&r, 11))?),
            None => None,
        };
        Ok(SendReads {
            existing,
            row,
            state,
        })
    }

    async fn set_role(&self, id: &str, user: &str, role: Role) -> Result<()> {
        self.exec(
            "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
            &[&id, &user, &role.as_str()],
        )
        .await?;
        Ok(())
    }

    async fn set_member_mute(&self, id: &str, user: &str, until_ms: Option<i64>) -> Result<()> {
        self.exec(
            "UPDATE members SET muted_until_ms = $3 WHERE conversation_id = $1 AND user_id = $2",
            &[&id, &user, &until_ms],
        )
        .await?;
        Ok(())
    }

    async fn set_last_sent(&self, id: &str, user: &str, ms: i64) -> Result<()> {
        self.exec(
            "UPDATE members SET last_sent_ms = $3 WHERE conversation_id = $1 AND user_id = $2",
            &[&id, &user, &ms],
        )
        .await?;
        Ok(())
    }

    async fn successor(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .opt(
                "SELECT user_id FROM members WHERE conversation_id = $1
                 ORDER BY role = 'admin' DESC, joined_ms, user_id LIMIT 1",
                &[&id],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn set_settings(
        &self,
        id: &str,
        title: Option<Option<&str>>,
        slow_mode_s: Option<i64>,
    ) -> Result<()> {
        if let Some(title) = title {
            self.exec(
                "UPDATE conversations SET title = $2 WHERE id = $1",
                &[&id, &title],
            )
            .await?;
        }
        if let Some(slow) = slow_mode_s {
            self.exec(
                "UPDATE conversations SET slow_mode_s = $2 WHERE id = $1",
                &[&id, &slow],
            )
            .await?;
        }
        Ok(())
    }

    async fn ban_of(&self, id: &str, user: &str) -> Result<Option<Option<i64>>> {
        Ok(self
            .opt(
                "SELECT until_ms FROM conversation_bans WHERE conversation_id = $1 AND user_id = $2",
                &[&id, &user],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn insert_ban(
        &self,
        id: &str,
        user: &str,
        until_ms: Option<i64>,
        by: &str,
        now: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO conversation_bans (conversation_id, user_id, until_ms, banned_by, ts)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (conversation_id, user_id)
             DO UPDATE SET until_ms = $3, banned_by = $4, ts = $5",
            &[&id, &user, &until_ms, &by, &now],
        )
        .await?;
        Ok(())
    }

    async fn delete_ban(&self, id: &str, user: &str) -> Result<()> {
        self.exec(
            "DELETE FROM conversation_bans WHERE conversation_id = $1 AND user_id = $2",
            &[&id, &user],
        )
        .await?;
        Ok(())
    }

    async fn members(&self, id: &str) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY joined_ms, user_id",
                &[&id],
            )
            .await?;
        Ok(strings(rows))
    }

    async fn members_after(&self, id: &str, after: &str, limit: usize) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "SELECT user_id FROM members WHERE conversation_id = $1 AND user_id > $2
                 ORDER BY user_id LIMIT $3",
                &[&id, &after, &(limit as i64)],
            )
            .await?;
        Ok(strings(rows))
    }

    async fn membership(&self, id: &str, user: &str) -> Result<(bool, bool)> {
        let r = self
            .one(
                "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1),
                        EXISTS (SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2)",
                &[&id, &user],
            )
            .await?;
        Ok((r.get(0), r.get(1)))
    }

    async fn blocks(&self, blocker: &str, blocked: &str) -> Result<bool> {
        self.exists(
            "SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2",
            &[&blocker, &blocked],
        )
        .await
    }

    async fn insert_conversation(
        &self,
        new: &NewConversation,
        direct_key: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let inserted = self
            .exec(
                "INSERT INTO conversations
                   (id, kind, title, created_by, created_ms, ephemeral, direct_key, public)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[
                    &new.id,
                    &kind_name(new.kind),
                    &new.title,
                    &new.creator,
                    &now,
                    &new.ephemeral,
                    &direct_key,
                    &new.public,
                ],
            )
            .await?;
        Ok(inserted > 0)
    }

    async fn direct_conversation(&self, direct_key: &str) -> Result<Option<String>> {
        Ok(self
            .opt(
                "SELECT id FROM conversations WHERE direct_key = $1",
                &[&direct_key],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn add_member(&self, id: &str, user: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO members (conversation_id, user_id, joined_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&id, &user, &now],
        )
        .await?;
        Ok(())
    }

    async fn add_members(&self, id: &str, users: &[String], now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO members (conversation_id, user_id, joined_ms)
             SELECT $1, u, $3 FROM unnest($2::text[]) AS u
             ON CONFLICT DO NOTHING",
            &[&id, &users, &now],
        )
        .await?;
        Ok(())
    }

    async fn remove_member(&self, id: &str, user: &str) -> Result<()> {
        self.exec(
            "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2",
            &[&id, &user],
        )
        .await?;
        Ok(())
    }

    async fn memberships(&self, user: &str) -> Result<Vec<(String, i64)>> {
        Ok(self
            .rows(
                "SELECT conversation_id, read_message FROM members WHERE user_id = $1",
                &[&user],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn channel_memberships(&self, user: &str) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "SELECT m.conversation_id FROM members m
                 JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.user_id = $1 AND c.kind = 'channel'",
                &[&user],
            )
            .await?;
        Ok(strings(rows))
    }

    async fn channel_memberships_of(&self, users: &[String]) -> Result<Vec<Vec<String>>> {
        // One statement for any number of users.
        let rows = self
            .rows(
                "SELECT m.user_id, m.conversation_id FROM members m
                 JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.user_id = ANY($1) AND c.kind = 'channel'",
                &[&users],
            )
            .await?;
        let mut of: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for r in &rows {
            of.entry(r.get(0)).or_default().push(r.get(1));
        }
        Ok(users
            .iter()
            .map(|u| of.get(u).cloned().unwrap_or_default())
            .collect())
    }

    async fn last_message(&self, id: &str, viewer: &str) -> Result<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1
             AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $2 AND blocked = sender)
             ORDER BY id DESC LIMIT 1"
        );
        Ok(messages(self.rows(&sql, &[&id, &viewer]).await?)?.pop())
    }

    async fn unread(&self, id: &str, read: i64, viewer: &str) -> Result<u64> {
        let n: i64 = self
            .one(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = $1 AND id > $2
                 AND sender != $3
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $3 AND blocked = sender)",
                &[&id, &read, &viewer],
            )
            .await?
            .get(0);
        Ok(n as u64)
    }

    async fn message_by_key(&self, sender: &str, client_msg_id: &str) -> Result<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = $1 AND client_msg_id = $2"
        );
        Ok(messages(self.rows(&sql, &[&sender, &client_msg_id]).await?)?.pop())
    }

    async fn insert_message(
        &self,
        new: &NewMessage,
        attachments: &str,
        links: &Links,
        now: i64,
    ) -> Result<Option<i64>> {
        Ok(self
            .opt(
                INSERT_MESSAGE,
                &[
                    &new.conversation,
                    &new.sender,
                    &new.client_msg_id,
                    &new.text,
                    &attachments,
                    &now,
                    &links.reply_to,
                    &links.thread,
                    &links.mentions,
                ],
            )
            .await?
            .map(|r| r.get(0)))
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
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND id < $2
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $4 AND blocked = sender)
                 ORDER BY id DESC LIMIT $3"
            );
            let rows = self
                .rows(&sql, &[&id, &before, &(limit as i64), &viewer])
                .await?;
            return messages(rows);
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread = $5 AND id < $2
             AND conversation_id = $1
             AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $4 AND blocked = sender)
             ORDER BY id DESC LIMIT $3"
        );
        let rows = self
            .rows(&sql, &[&id, &before, &(limit as i64), &viewer, &thread])
            .await?;
        messages(rows)
    }

    async fn message_of(&self, id: &str, message: i64, lock: bool) -> Result<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND conversation_id = $2{}",
            if lock { " FOR UPDATE" } else { "" }
        );
        Ok(messages(self.rows(&sql, &[&message, &id]).await?)?.pop())
    }

    async fn offset_of(&self, message: i64) -> Result<Option<u64>> {
        Ok(self
            .opt(
                "SELECT channel_offset FROM messages WHERE id = $1",
                &[&message],
            )
            .await?
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|o| o as u64))
    }

    async fn lock_users(&self, users: &[String]) -> Result<()> {
        self.lock_users_and_runs(users).await
    }

    async fn audience(&self, id: &str, actor: &str) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "SELECT user_id FROM members WHERE conversation_id = $1
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = user_id AND blocked = $2)
                 ORDER BY user_id",
                &[&id, &actor],
            )
            .await?;
        Ok(strings(rows))
    }

    async fn add_reply(&self, root: i64) -> Result<()> {
        self.exec(
            "UPDATE messages SET replies = replies + 1 WHERE id = $1",
            &[&root],
        )
        .await?;
        Ok(())
    }

    async fn set_text(&self, message: i64, text: &str, now: i64) -> Result<()> {
        self.exec(
            "UPDATE messages SET text = $2, edited_ms = $3 WHERE id = $1",
            &[&message, &text, &now],
        )
        .await?;
        Ok(())
    }

    async fn insert_version(&self, message: i64, text: &str, ts: i64) -> Result<u64> {
        // The message's row is locked by the edit: no other edit numbers a version now.
        let r = self
            .one(
                "INSERT INTO message_versions (message_id, n, text, ts)
                 VALUES ($1, (SELECT COALESCE(MAX(n), 0) + 1 FROM message_versions
                              WHERE message_id = $1), $2, $3)
                 RETURNING n",
                &[&message, &text, &ts],
            )
            .await?;
        Ok(r.get::<_, i64>(0) as u64)
    }

    async fn versions(&self, message: i64) -> Result<Vec<MessageVersion>> {
        Ok(self
            .rows(
                "SELECT text, ts FROM message_versions WHERE message_id = $1 ORDER BY n",
                &[&message],
            )
            .await?
            .iter()
            .map(|r| MessageVersion {
                text: r.get(0),
                ts: r.get(1),
            })
            .collect())
    }

    async fn tombstone(&self, message: i64) -> Result<()> {
        for sql in [
            "UPDATE messages SET text = '', attachments = '[]', mentions = '[]', reactions = '[]',
               deleted = TRUE WHERE id = $1",
            "DELETE FROM message_versions WHERE message_id = $1",
            "DELETE FROM reactions WHERE message_id = $1",
        ] {
            self.exec(sql, &[&message]).await?;
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
            .exec(
                "INSERT INTO reactions (message_id, user_id, emoji, ts) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&message, &user, &emoji, &now],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_reaction(&self, message: i64, user: &str, emoji: &str) -> Result<bool> {
        let n = self
            .exec(
                "DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3",
                &[&message, &user, &emoji],
            )
            .await?;
        Ok(n > 0)
    }

    async fn set_reactions(&self, message: i64, summary: &str) -> Result<()> {
        self.exec(
            "UPDATE messages SET reactions = $2 WHERE id = $1",
            &[&message, &summary],
        )
        .await?;
        Ok(())
    }

    async fn my_reactions(&self, user: &str, messages: &[i64]) -> Result<Vec<(i64, String)>> {
        Ok(self
            .rows(
                "SELECT message_id, emoji FROM reactions
                 WHERE message_id = ANY($1) AND user_id = $2 ORDER BY message_id, ts, emoji",
                &[&messages, &user],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn insert_pin(&self, id: &str, message: i64, user: &str, now: i64) -> Result<bool> {
        let n = self
            .exec(
                "INSERT INTO pins (conversation_id, message_id, pinned_ms, pinned_by)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&id, &message, &now, &user],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_pin(&self, id: &str, message: i64) -> Result<bool> {
        let n = self
            .exec(
                "DELETE FROM pins WHERE conversation_id = $1 AND message_id = $2",
                &[&id, &message],
            )
            .await?;
        Ok(n > 0)
    }

    async fn set_mute(&self, user: &str, id: &str, until_ms: Option<i64>) -> Result<()> {
        match until_ms {
            Some(until) => {
                self.exec(
                    "INSERT INTO conversation_mutes (user_id, conversation_id, until_ms)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, conversation_id) DO UPDATE SET until_ms = $3",
                    &[&user, &id, &until],
                )
                .await?
            }
            None => {
                self.exec(
                    "DELETE FROM conversation_mutes WHERE user_id = $1 AND conversation_id = $2",
                    &[&user, &id],
                )
                .await?
            }
        };
        Ok(())
    }

    async fn mute_until(&self, user: &str, id: &str) -> Result<Option<i64>> {
        Ok(self
            .opt(
                "SELECT until_ms FROM conversation_mutes WHERE user_id = $1 AND conversation_id = $2",
                &[&user, &id],
            )
            .await?
            .map(|r| r.get::<_, i64>(0)))
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
            .exec(
                "INSERT INTO reports (conversation_id, message_id, reporter, reason, ts)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&id, &message, &reporter, &reason, &now],
            )
            .await?;
        Ok(n > 0)
    }

    async fn report_of(&self, id: &str, message: i64, reporter: &str) -> Result<Option<Report>> {
        Ok(self
            .rows(
                "SELECT id, conversation_id, message_id, reporter, reason, ts FROM reports
                 WHERE reporter = $1 AND conversation_id = $2 AND message_id = $3",
                &[&reporter, &id, &message],
            )
            .await?
            .first()
            .map(report_row))
    }

    async fn reports(&self, before: Option<i64>, limit: usize) -> Result<Vec<Report>> {
        let (before, limit) = (before.unwrap_or(i64::MAX), limit as i64);
        Ok(self
            .rows(
                "SELECT id, conversation_id, message_id, reporter, reason, ts FROM reports
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
                &[&before, &limit],
            )
            .await?
            .iter()
            .map(report_row)
            .collect())
    }

    async fn pinned(&self, id: &str) -> Result<Vec<String>> {
        Ok(self
            .rows(
                "SELECT message_id FROM pins WHERE conversation_id = $1
                 ORDER BY pinned_ms DESC, message_id DESC",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, i64>(0).to_string())
            .collect())
    }

    async fn pinned_messages(&self, id: &str) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {M_MESSAGE_COLUMNS} FROM pins p JOIN messages m ON m.id = p.message_id
             WHERE p.conversation_id = $1 ORDER BY p.pinned_ms DESC, p.message_id DESC"
        );
        messages(self.rows(&sql, &[&id]).await?)
    }

    async fn message_in(&self, id: &str, message: i64) -> Result<bool> {
        self.exists(
            "SELECT 1 FROM messages WHERE id = $1 AND conversation_id = $2",
            &[&message, &id],
        )
        .await
    }

    async fn advance_read(&self, id: &str, user: &str, message: i64) -> Result<bool> {
        let moved = self
            .exec(
                "UPDATE members SET read_message = $3 WHERE conversation_id = $1 AND user_id = $2
                 AND read_message < $3",
                &[&id, &user, &message],
            )
            .await?;
        Ok(moved > 0)
    }

    async fn insert_block(&self, blocker: &str, blocked: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO blocks (blocker, blocked, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&blocker, &blocked, &now],
        )
        .await?;
        Ok(())
    }

    async fn delete_block(&self, blocker: &str, blocked: &str) -> Result<()> {
        self.exec(
            "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2",
            &[&blocker, &blocked],
        )
        .await?;
        Ok(())
    }

    async fn blocked_list(&self, blocker: &str) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY created_ms, blocked",
                &[&blocker],
            )
            .await?;
        Ok(strings(rows))
    }

    async fn blockers_among(&self, blocked: &str, users: &[String]) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "SELECT blocker FROM blocks WHERE blocked = $1 AND blocker = ANY($2)",
                &[&blocked, &users],
            )
            .await?;
        Ok(strings(rows))
    }

    async fn search(
        &self,
        viewer: &str,
        words: &[&str],
        conversation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        // `plainto_tsquery` of the words: every one must appear, none is an operator.
        let text = words.join(" ");
        let rows = self
            .rows(
                &format!(
                    "SELECT {M_MESSAGE_COLUMNS}
                 FROM messages m
                 JOIN members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = $2
                 WHERE m.tsv @@ plainto_tsquery('simple', $1)
                   AND ($3::text IS NULL OR m.conversation_id = $3)
                   AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $2 AND blocked = m.sender)
                 ORDER BY ts_rank(m.tsv, plainto_tsquery('simple', $1)) DESC, m.id DESC
                 LIMIT $4"
                ),
                &[&text, &viewer, &conversation, &(limit as i64)],
            )
            .await?;
        messages(rows)
    }

    async fn typing_recipients(&self, id: &str, sender: &str) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "SELECT user_id FROM members WHERE conversation_id = $1 AND user_id != $2
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = user_id AND blocked = $2)",
                &[&id, &sender],
            )
            .await?;
        Ok(strings(rows))
    }

    async fn ephemeral_due(&self, before_ms: i64, limit: usize) -> Result<Vec<String>> {
        // Locked, skipping those another scheduler is expiring now.
        let rows = self
            .rows(
                "SELECT c.id FROM conversations c WHERE c.ephemeral
                 AND COALESCE((SELECT MAX(ts) FROM messages m WHERE m.conversation_id = c.id),
                              c.created_ms) < $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&before_ms, &(limit as i64)],
            )
            .await?;
        Ok(strings(rows))
    }

    async fn member_count(&self, id: &str) -> Result<u64> {
        let r = self
            .one(
                "SELECT COUNT(*) FROM members WHERE conversation_id = $1",
                &[&id],
            )
            .await?;
        Ok(r.get::<_, i64>(0) as u64)
    }

    async fn next_offset(&self, id: &str) -> Result<u64> {
        let r = self
            .one(
                "UPDATE conversations SET last_offset = last_offset + 1 WHERE id = $1
                 RETURNING last_offset",
                &[&id],
            )
            .await?;
        Ok(r.get::<_, i64>(0) as u64)
    }

    async fn set_channel_offset(&self, message: i64, offset: u64) -> Result<()> {
        self.exec(
            "UPDATE messages SET channel_offset = $2 WHERE id = $1",
            &[&message, &crate::to_i64(offset)],
        )
        .await?;
        Ok(())
    }

    async fn channel_messages(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Message)>> {
        let rows = self
            .rows(
                &format!(
                    "SELECT channel_offset, {MESSAGE_COLUMNS} FROM messages
                     WHERE conversation_id = $1 AND channel_offset > $2
                     ORDER BY channel_offset LIMIT $3"
                ),
                &[&id, &crate::to_i64(after), &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.get::<_, i64>(0) as u64,
                    message_from_row(message_row(r, 1))?,
                ))
            })
            .collect()
    }

    async fn delete_conversation(&self, id: &str) -> Result<()> {
        for sql in [
            "DELETE FROM inbox WHERE message_id IN
               (SELECT id FROM messages WHERE conversation_id = $1)",
            "DELETE FROM message_versions WHERE message_id IN
               (SELECT id FROM messages WHERE conversation_id = $1)",
            "DELETE FROM reactions WHERE message_id IN
               (SELECT id FROM messages WHERE conversation_id = $1)",
            "DELETE FROM pins WHERE conversation_id = $1",
            "DELETE FROM messages WHERE conversation_id = $1",
            "DELETE FROM members WHERE conversation_id = $1",
            // After the members (the trigger closed their runs): a reused id must not find
            // them, nor the group's positions.
            "DELETE FROM inbox_runs WHERE conversation_id = $1",
            "DELETE FROM group_positions WHERE conversation_id = $1",
            "DELETE FROM conversation_bans WHERE conversation_id = $1",
            "DELETE FROM conversation_mutes WHERE conversation_id = $1",
            "DELETE FROM conversations WHERE id = $1",
        ] {
            self.exec(sql, &[&id]).await?;
        }
        Ok(())
    }

    async fn live_messages_of(&self, sender: &str, limit: usize) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = $1 AND NOT deleted
             AND conversation_id = (SELECT conversation_id FROM messages
                                    WHERE sender = $1 AND NOT deleted ORDER BY id LIMIT 1)
             ORDER BY id LIMIT $2"
        );
        messages(self.rows(&sql, &[&sender, &(limit as i64)]).await?)
    }

    async fn reactions_of(&self, user: &str, limit: usize) -> Result<Vec<(i64, String, String)>> {
        Ok(self
            .rows(
                "SELECT r.message_id, m.conversation_id, r.emoji FROM reactions r
                 JOIN messages m ON m.id = r.message_id
                 WHERE r.user_id = $1 ORDER BY r.message_id, r.emoji LIMIT $2",
                &[&user, &(limit as i64)],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}

// ---- group commit of message.send ------------------------------------------------------------

/// The most sends one transaction takes.
const SEND_BATCH: usize = 64;

/// How many send batches one process commits at once. A batch spends most of its time
/// waiting on round trips; others overlap it, and they meet only at a group's position (the
/// fan-out and the commit).
const SEND_CONCURRENCY: usize = 3;

/// A run of sends (one user's, in order, or a single send) and where their outcomes go. A
/// run is never split between batches: batches commit concurrently, in any order.
pub(crate) type SendJob = (
    Vec<NewMessage>,
    tokio::sync::oneshot::Sender<Vec<Result<Written<Message>>>>,
);

/// A report from a row of `reports` (id, conversation, message, reporter, reason, ts).
fn report_row(r: &Row) -> Report {
    Report {
        id: r.get::<_, i64>(0).to_string(),
        conversation: r.get(1),
        message: r.get::<_, i64>(2).to_string(),
        reporter: r.get(3),
        reason: r.get(4),
        ts: r.get(5),
    }
}

/// Start the group-commit task of a pool; its jobs go on the returned channel.
pub(crate) fn start_sends(pool: Pool) -> tokio::sync::mpsc::Sender<SendJob> {
    let (sends, jobs) = tokio::sync::mpsc::channel(4 * SEND_BATCH);
    tokio::spawn(run_sends(pool, jobs));
    sends
}

impl PgStore {
    /// `message.send`, through the group commit (see [`run_sends`]).
    async fn send(&self, new: NewMessage) -> Result<Written<Message>> {
        self.send_many(vec![new])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Internal("a send lost its outcome".into())))
    }

    /// Several sends, handed to the group commit as one job: they commit together, in that
    /// order, in one batch.
    async fn send_many(&self, news: Vec<NewMessage>) -> Result<Vec<Result<Written<Message>>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sends
            .send((news, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Internal("the send batcher stopped".into()))
    }
}

/// Group commit for `message.send`: take whatever sends wait (whole runs, up to
/// [`SEND_BATCH`] sends unless one run is longer), lock the recipients it may write (in id
/// order, so two batches never deadlock on each other), run each send in its own savepoint
/// (one send's failure leaves the others), lock the groups' positions, fan them all out in one
/// statement, and commit once. Up to [`SEND_CONCURRENCY`] batches run at once; while all are
/// busy, sends wait and the next batch is bigger.
async fn run_sends(pool: Pool, mut jobs: tokio::sync::mpsc::Receiver<SendJob>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(SEND_CONCURRENCY));
    while let Some(first) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let mut sends = batch[0].0.len();
        while sends < SEND_BATCH {
            match jobs.try_recv() {
                Ok(j) => {
                    sends += j.0.len();
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut runs = Vec::with_capacity(batch.len());
            let mut news = Vec::with_capacity(sends);
            for (run, reply) in batch {
                runs.push((run.len(), reply));
                news.extend(run);
            }
            let mut results = match send_batch(&pool, &news).await {
                Ok(results) => results.into_iter(),
                Err(e) => {
                    let failed = |_| {
                        Err(match &e {
                            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                            StoreError::Internal(m) => StoreError::Internal(m.clone()),
                            other => StoreError::Internal(other.to_string()),
                        })
                    };
                    (0..news.len()).map(failed).collect::<Vec<_>>().into_iter()
                }
            };
            for (n, reply) in runs {
                let _ = reply.send(results.by_ref().take(n).collect());
            }
        });
    }
}

/// How many times a batch is tried (see [`send_batch`]).
const SEND_TRIES: usize = 4;

/// [`send_locked`], and again, up to [`SEND_TRIES`] in all, while nothing was written for a
/// reason that another try may not meet (a deadlock, a serialization failure such as a lock
/// the fan-out would have waited for out of order, a lost connection). Every try after the
/// first locks every member of every conversation of the batch first.
async fn send_batch(
    pool: &Pool,
    news: &[NewMessage],
) -> Result<Vec<Result<Written<Message>, StoreError>>> {
    let mut tried = 0;
    loop {
        tried += 1;
        match send_locked(pool, news, tried > 1).await {
            Err(StoreError::Unavailable(_)) if tried < SEND_TRIES => continue,
            other => return other,
        }
    }
}

/// The users a batch's fan-out may write, locked in id order ([`send_locked`] says which).
const LOCK_USERS: &str = "SELECT id FROM users WHERE id IN
   (SELECT mb.user_id FROM members mb JOIN conversations c ON c.id = mb.conversation_id
    WHERE mb.conversation_id = ANY($1) AND c.kind <> 'channel'
      AND (c.kind <> 'group' OR mb.conversation_id = ANY($2)
           OR NOT EXISTS (SELECT 1 FROM inbox_runs r
                          WHERE r.user_id = mb.user_id AND r.count IS NULL
                            AND r.conversation_id = mb.conversation_id)
           OR EXISTS (SELECT 1 FROM blocks b
                      WHERE b.blocker = mb.user_id AND b.blocked = ANY($3))))
 ORDER BY id FOR UPDATE";

/// A message's insert (a repeated `client_msg_id` inserts nothing).
const INSERT_MESSAGE: &str =
    "INSERT INTO messages (conversation_id, sender, client_msg_id, text, attachments, ts,
                           reply_to, thread, mentions)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (sender, client_msg_id) DO NOTHING
     RETURNING id";

/// The positions of a batch's groups, locked after its sends are stored.
const LOCK_POSITIONS: &str = "SELECT hubbub_lock_positions($1, $2)";

/// A send batch's transaction, on a pooled connection of its own. Not tokio-postgres's
/// `Transaction`, which commits only by value (so no COMMIT can go out behind statements
/// still borrowing it) and, ended by a COMMIT of one's own, would send a ROLLBACK when
/// dropped. Taken by [`BatchTx::take`], begun by the `BEGIN` that [`send_in`] sends with
/// its first statements; whoever sends the COMMIT or ROLLBACK that ends it calls
/// [`BatchTx::ended`]. Dropped before that (a failed round trip, the batch's future dropped
/// midway), its connection leaves the pool and is closed: the server rolls the transaction
/// back, and no one is handed a connection with a transaction open.
struct BatchTx {
    client: Option<deadpool_postgres::Client>,
    ended: std::sync::atomic::AtomicBool,
}

impl BatchTx {
    /// A pooled connection for a batch, its transaction not begun yet.
    async fn take(pool: &Pool) -> Result<BatchTx> {
        Ok(BatchTx {
            client: Some(pool.get().await.map_err(pool_err)?),
            ended: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn client(&self) -> Result<&deadpool_postgres::Client> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Internal("a send batch's connection is gone".into()))
    }

    /// The transaction ended (committed or rolled back): the connection goes back to the
    /// pool.
    fn ended(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for BatchTx {
    fn drop(&mut self) {
        if !self.is_ended()
            && let Some(client) = self.client.take()
        {
            // Out of the pool and dropped: the connection closes.
            drop(deadpool_postgres::Client::take(client));
        }
    }
}

/// One try of a batch. Its locks (`012_inbox_runs.sql` says why these suffice): first the
/// users its fan-out may write, in id order: every member of a direct conversation, of a
/// group where a send starts a thread reply or mentions someone (those tell members outside
/// the fan-out), and, of the other groups, only members without an open run on the group and
/// members who block a sender; with `every`, every member. Then, after the sends are stored,
/// the groups' positions (`hubbub_lock_positions`). Whoever the fan-out must write that the
/// first lock did not foresee (a run closed, a member joined, in between) it locks without
/// waiting, or fails the try (`hubbub_lock_now`). A busy group's members all have their run
/// on it, so its sends lock one row, not one per member. A try whose inserts went out
/// together and failed ([`send_in`]) is rolled back and made again with each send in a
/// savepoint of its own.
async fn send_locked(
    pool: &Pool,
    news: &[NewMessage],
    every: bool,
) -> Result<Vec<Result<Written<Message>, StoreError>>> {
    if let Some(written) = send_try(pool, news, every, true).await? {
        return Ok(written);
    }
    // Tried again, each send in a savepoint of its own: the one that failed is refused
    // alone.
    tracing::debug!(sends = news.len(), "a batch's inserts failed together");
    send_try(pool, news, every, false)
        .await?
        .ok_or_else(|| StoreError::Internal("a batch sent one by one asked to be again".into()))
}

/// One try of [`send_locked`] on a connection of its own ([`send_in`] says what `together`
/// does and what `None` means).
async fn send_try(
    pool: &Pool,
    news: &[NewMessage],
    every: bool,
    together: bool,
) -> Result<Option<Vec<Result<Written<Message>, StoreError>>>> {
    let batch = BatchTx::take(pool).await?;
    let sent = send_in(&batch, news, every, together).await;
    // What did not end the transaction (an error on the way, a single send refused, the
    // inserts sent together failing) leaves it to be rolled back here (a ROLLBACK before the
    // BEGIN went out only warns); if even that fails, dropping the batch closes the
    // connection.
    if !batch.is_ended() && batch.client()?.batch_execute("ROLLBACK").await.is_ok() {
        batch.ended();
    }
    sent
}

/// The body of [`send_locked`]: begins `batch`'s transaction, and ends it when it commits.
/// With `together`, a batch of sends that each write one row and cannot be refused
/// ([`super::one_insert`]) sends their inserts together; if one fails, `None` asks the caller
/// to roll back and try again without `together`.
async fn send_in(
    batch: &BatchTx,
    news: &[NewMessage],
    every: bool,
    together: bool,
) -> Result<Option<Vec<Result<Written<Message>, StoreError>>>> {
    let tx = batch.client()?;
    let conversations: Vec<&str> = news.iter().map(|n| n.conversation.as_str()).collect();
    let senders: Vec<&str> = news.iter().map(|n| n.sender.as_str()).collect();
    let whole: Vec<&str> = news
        .iter()
        .filter(|n| every || n.thread.is_some() || !n.mentions.is_empty())
        .map(|n| n.conversation.as_str())
        .collect();
    // The BEGIN, the users' lock and every send's reads go out together, pipelined on the
    // connection (one round trip for the batch, where the BEGIN, the lock and then the reads
    // were three): the BEGIN is a simple query and the lock's statement is prepared first,
    // so both requests are sent at the first poll, in that order, before any read's; the
    // server runs the lock and the reads in the transaction, the reads after the lock is
    // held, as before. A BEGIN that fails fails the batch (and what ran after it ran outside
    // any transaction: a lock released at once, reads); so does a read that fails (nothing
    // of the batch is written). Every round trip from here to the
    // commit is taken holding the locks. What a send of the batch changes that a later one's
    // reads cannot see is carried over here: its message (a repeat of its `client_msg_id`
    // later in the batch returns it before any check, as the read would have) and its
    // sender's slow-mode time.
    let lock_users = tx.prepare_cached(LOCK_USERS).await.map_err(pg)?;
    let on = Tx::Client(tx);
    let params: [&(dyn ToSql + Sync); 3] = [&conversations, &whole, &senders];
    let (begun, locked, reads) = tokio::join!(
        tx.batch_execute("BEGIN"),
        tx.query(&lock_users, &params),
        futures_util::future::join_all(news.iter().map(|n| on.send_reads(n)))
    );
    begun.map_err(pg)?;
    let locked: Vec<String> = locked.map_err(pg)?.iter().map(|r| r.get(0)).collect();
    let reads = reads.into_iter().collect::<Result<Vec<_>>>()?;
    let now = now_ms();
    let mut stored = Vec::with_capacity(news.len());
    // Who sent in which conversation so far in this batch (at the batch's `now`).
    let mut sent_in: HashSet<(&str, &str)> = HashSet::new();
    let mut sent_by_key: HashMap<(&str, &str), Message> = HashMap::new();
    // Each send in a savepoint of its own, all named alike: setting the next releases the
    // one before in the same round trip (releasing commits nothing yet), and the last is
    // released by the commit. A batch of one takes none: if its send fails, the transaction
    // holds nothing else and is rolled back whole (a savepoint is a statement, a reply and
    // a subtransaction on the server).
    let single = news.len() == 1;
    // Sends that each write one row (a plain message, no repeat: their checks pass on these
    // reads) go out together: every insert in one round trip, in the batch's order (their
    // statement is prepared first, so each request is written at its future's first poll,
    // and ids follow that order), with no savepoints. Two sends under one `client_msg_id`
    // go one by one (the second returns the first's message). Should an insert fail on the
    // server, the transaction is aborted: the batch is rolled back and tried again one send
    // at a time, so that only the failing send is refused.
    let mut keys = HashSet::new();
    let together = together
        && !single
        && news.iter().zip(&reads).all(|(n, r)| {
            super::one_insert(n, r, now) && keys.insert((&n.sender, &n.client_msg_id))
        });
    let reads = if together {
        tx.prepare_cached(INSERT_MESSAGE).await.map_err(pg)?;
        let sent = futures_util::future::join_all(
            news.iter()
                .zip(reads)
                .map(|(new, reads)| store_read(&on, new, reads, now)),
        )
        .await;
        if sent.iter().any(Result::is_err) {
            return Ok(None);
        }
        stored = sent;
        Vec::new()
    } else {
        reads
    };
    let mut savepoint = "SAVEPOINT send";
    for (new, mut reads) in news.iter().zip(reads) {
        let key = (new.conversation.as_str(), new.sender.as_str());
        let id_key = (new.sender.as_str(), new.client_msg_id.as_str());
        if reads.existing.is_none() {
            reads.existing = sent_by_key.get(&id_key).cloned();
        }
        if let Some(state) = reads.state.as_mut()
            && sent_in.contains(&key)
        {
            state.last_sent_ms = Some(now);
        }
        let sent = if single {
            store_read(&on, new, reads, now).await
        } else {
            // The savepoint and the send's statements go out together (pipelined, in order
            // on the connection): one round trip for a plain send, not two.
            let (set, sent) = tokio::join!(
                tx.batch_execute(savepoint),
                store_read(&on, new, reads, now)
            );
            set.map_err(pg)?;
            savepoint = "RELEASE SAVEPOINT send; SAVEPOINT send";
            sent
        };
        match sent {
            Ok(sent) => {
                if sent.fresh {
                    sent_in.insert(key);
                    sent_by_key.insert(id_key, sent.message.clone());
                }
                stored.push(Ok(sent));
            }
            // Rolled back by the caller: the transaction holds nothing else.
            Err(e) if single => return Ok(Some(vec![Err(e)])),
            Err(e) => {
                // The savepoint stays (ROLLBACK TO keeps it); the next send releases it.
                tx.batch_execute("ROLLBACK TO SAVEPOINT send")
                    .await
                    .map_err(pg)?;
                stored.push(Err(e));
            }
        }
    }
    // The groups' positions are locked and the fan-out runs in one round trip: the lock's
    // request goes first (its statement prepared before), so the server holds the lock
    // before the fan-out's first statement runs; if the lock fails, so does the fan-out
    // after it (the transaction is aborted), and the lock's error is the one returned.
    // When nothing follows the fan-out (no thread reply, no mention: `after_send` has
    // nothing to write), the COMMIT goes out right behind it, in the same round trip: the
    // group's position is then held for the fan-out and the commit's flush only, not also
    // while the answer travels to this process and the COMMIT back. The fan-out's statement
    // is prepared first for that, so its request is written at the first poll, before the
    // COMMIT's. If the lock or the fan-out fails, the transaction is aborted and the COMMIT
    // rolls it back; their error is returned.
    let lock_positions = tx.prepare_cached(LOCK_POSITIONS).await.map_err(pg)?;
    // Nothing may fail in this process once the COMMIT is on its way, or the COMMIT would
    // keep what the fan-out never wrote: the one thing the fan-out checks before its
    // request goes out, the messages' ids, is checked here.
    let commit_behind = stored.iter().all(|r| match r {
        Ok(s) => {
            !s.fresh
                || (s.root.is_none()
                    && s.message.mentions.is_empty()
                    && super::stored_message_id(&s.message.id).is_ok())
        }
        Err(_) => true,
    });
    if commit_behind {
        tx.prepare_cached(crate::inbox::postgres::FAN_OUT)
            .await
            .map_err(pg)?;
    }
    let params: [&(dyn ToSql + Sync); 2] = [&conversations, &locked];
    let (positions, written, committed) = tokio::join!(
        tx.execute(&lock_positions, &params),
        sends_written(&on, stored, now),
        async {
            if commit_behind {
                Some(tx.batch_execute("COMMIT").await)
            } else {
                None
            }
        }
    );
    match committed {
        // Over however it ended: a COMMIT after a failed statement rolls back, and their
        // error is the one returned below.
        Some(Ok(())) => batch.ended(),
        // The COMMIT went out behind the statements, so its failure decides: with the
        // connection lost, the server may have committed whatever they answered (outcome
        // unknown, never `Unavailable`); a statement that failed on the server would have
        // left the COMMIT nothing to fail on.
        Some(Err(e)) => return Err(commit_err(e)),
        None => {}
    }
    positions.map_err(pg)?;
    let written = written?;
    if !commit_behind {
        tx.batch_execute("COMMIT").await.map_err(commit_err)?;
        batch.ended();
    }
    Ok(Some(written))
}
