//! The inbox's SQL on SQLite.
//!
//! A group's `message.new` events are kept as runs (`inbox_runs`, see `012_inbox_runs.sql`):
//! while a member's events all come from one group, their seqs follow the group's message
//! positions, and a message to the group writes nothing per member. Every other event, and a
//! direct conversation's messages, take a row of `inbox` as before. A user's effective last
//! seq is `users.last_seq`, or the end of their open run when they have one.

use super::{InboxRow, InboxTx, RunRead, run_read};
use crate::chat::M_MESSAGE_COLUMNS;
use crate::chat::sqlite::message_row;
use crate::chat::{kind_name, stored_message_id};
use crate::sqlite::Tx;
use crate::{Result, SqliteStore};
use hubbub_protocol::{ConversationKind, Message};
use rusqlite::{OptionalExtension, params};

super::impl_inbox_store!(SqliteStore);

/// A run's length in SQL over `inbox_runs r JOIN conversations c`: its count, or, open, up to
/// its group's newest message.
macro_rules! run_len {
    () => {
        "COALESCE(r.count, c.last_pos - r.first_pos + 1)"
    };
}

/// Whether message `m` is one of run `r`'s (the condition, in SQL).
macro_rules! in_run {
    () => {
        "m.conversation_id = r.conversation_id AND m.pos >= r.first_pos
         AND (r.count IS NULL OR m.pos < r.first_pos + r.count)"
    };
}

/// A user's open run: its first seq and first position, and its group's newest position.
struct OpenRun {
    first_seq: i64,
    first_pos: i64,
    last_pos: i64,
}

impl OpenRun {
    /// The seq of the group's newest message in this run.
    fn last_seq(&self) -> i64 {
        self.first_seq + self.last_pos - self.first_pos
    }
}

impl Tx<'_> {
    fn open_run(&self, user: &str) -> Result<Option<OpenRun>> {
        Ok(self
            .prepare_cached(
                "SELECT r.first_seq, r.first_pos, c.last_pos
                 FROM inbox_runs r JOIN conversations c ON c.id = r.conversation_id
                 WHERE r.user_id = ?1 AND r.count IS NULL",
            )?
            .query_row([user], |r| {
                Ok(OpenRun {
                    first_seq: r.get(0)?,
                    first_pos: r.get(1)?,
                    last_pos: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Close `user`'s open run, if any, after its group's newest message: `users.last_seq`
    /// moves to the run's end, which it returns (`None`: no run was open).
    pub(crate) fn close_run(&self, user: &str) -> Result<Option<i64>> {
        let Some(run) = self.open_run(user)? else {
            return Ok(None);
        };
        if run.last_pos < run.first_pos {
            // Empty (pruned whole): nothing to keep; `users.last_seq` is already its end.
            self.prepare_cached("DELETE FROM inbox_runs WHERE user_id = ?1 AND first_seq = ?2")?
                .execute(params![user, run.first_seq])?;
            return Ok(Some(run.last_seq()));
        }
        self.prepare_cached(
            "UPDATE inbox_runs SET count = ?3,
                 ts = COALESCE((SELECT m.ts FROM messages m
                                WHERE m.conversation_id = inbox_runs.conversation_id
                                  AND m.pos = inbox_runs.first_pos + ?3 - 1), ts)
             WHERE user_id = ?1 AND first_seq = ?2",
        )?
        .execute(params![
            user,
            run.first_seq,
            run.last_pos - run.first_pos + 1
        ])?;
        self.prepare_cached("UPDATE users SET last_seq = ?2 WHERE id = ?1")?
            .execute(params![user, run.last_seq()])?;
        Ok(Some(run.last_seq()))
    }

    /// The `message.new` of one message to a group: give it the group's next position, close
    /// the open runs on the group of members who block the sender (they skip it), and give
    /// each other member the seq their run on the group gives it, opening a run for those
    /// whose last event came from elsewhere.
    fn fan_out_group(
        &self,
        i: usize,
        message: &Message,
        now: i64,
        out: &mut Vec<(usize, String, u64)>,
    ) -> Result<()> {
        // Members who block the sender skip the message: their open run on the group (if
        // any) closes before it. Usually none: one index range from the sender.
        let blockers: Vec<(String, bool)> = self
            .prepare_cached(
                "SELECT b.blocker, EXISTS (SELECT 1 FROM inbox_runs r
                                           WHERE r.user_id = b.blocker AND r.count IS NULL
                                             AND r.conversation_id = ?1)
                 FROM blocks b JOIN members m
                   ON m.conversation_id = ?1 AND m.user_id = b.blocker
                 WHERE b.blocked = ?2",
            )?
            .query_map([&message.conversation, &message.sender], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (user, in_run) in &blockers {
            if *in_run {
                self.close_run(user)?;
            }
        }
        let pos: i64 = self
            .prepare_cached(
                "UPDATE conversations SET last_pos = last_pos + 1 WHERE id = ?1
                 RETURNING last_pos",
            )?
            .query_row([&message.conversation], |r| r.get(0))?;
        self.prepare_cached("UPDATE messages SET pos = ?2 WHERE id = ?1")?
            .execute(params![stored_message_id(&message.id)?, pos])?;
        // Members whose open run is on this group: the run reaches the new message (read from
        // `inbox_runs_open_by_conversation` alone).
        let before = out.len();
        let mut in_runs = self.prepare_cached(
            "SELECT user_id, first_seq + ?2 - first_pos FROM inbox_runs
             WHERE conversation_id = ?1 AND count IS NULL",
        )?;
        let mut rows = in_runs.query(params![message.conversation, pos])?;
        while let Some(r) = rows.next()? {
            out.push((i, r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64));
        }
        // Everyone else who does not block the sender: a new run starting at their next seq.
        // In a group whose members all have their run on it (a busy group) there is no one,
        // which counting the members tells without reading them.
        let members: i64 = self
            .prepare_cached("SELECT COUNT(*) FROM members WHERE conversation_id = ?1")?
            .query_row([&message.conversation], |r| r.get(0))?;
        let accounted = (out.len() - before) + blockers.len();
        if usize::try_from(members).is_ok_and(|m| m <= accounted) {
            return Ok(());
        }
        let others: Vec<String> = self
            .prepare_cached(
                "SELECT m.user_id FROM members m
                 WHERE m.conversation_id = ?1
                   AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = m.user_id AND blocked = ?2)
                   AND NOT EXISTS (SELECT 1 FROM inbox_runs r
                                   WHERE r.user_id = m.user_id AND r.count IS NULL
                                     AND r.conversation_id = ?1)",
            )?
            .query_map([&message.conversation, &message.sender], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for user in others {
            let last: i64 = match self.close_run(&user)? {
                Some(last) => last,
                None => self
                    .prepare_cached("SELECT last_seq FROM users WHERE id = ?1")?
                    .query_row([&user], |r| r.get(0))?,
            };
            self.prepare_cached(
                "INSERT INTO inbox_runs (user_id, first_seq, conversation_id, first_pos, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![user, last + 1, message.conversation, pos, now])?;
            out.push((i, user, (last + 1) as u64));
        }
        Ok(())
    }
}

impl InboxTx for Tx<'_> {
    async fn next_seq(&self, user: &str) -> Result<u64> {
        self.close_run(user)?;
        let seq: i64 = self
            .prepare_cached(
                "UPDATE users SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
            )?
            .query_row([user], |r| r.get(0))?;
        Ok(seq as u64)
    }

    async fn insert_event(&self, user: &str, seq: u64, now: i64, frame: &str) -> Result<()> {
        self.prepare_cached("INSERT INTO inbox (user_id, seq, ts, frame) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![user, seq as i64, now, frame])?;
        Ok(())
    }

    async fn fan_out(&self, messages: &[&Message], now: i64) -> Result<Vec<Vec<(String, u64)>>> {
        let mut out = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let kind: Option<String> = self
                .prepare_cached("SELECT kind FROM conversations WHERE id = ?1")?
                .query_row([&message.conversation], |r| r.get(0))
                .optional()?;
            if kind.as_deref() == Some(kind_name(ConversationKind::Group)) {
                self.fan_out_group(i, message, now, &mut out)?;
                continue;
            }
            // A direct conversation: a row per member, each at the member's next seq.
            let users: Vec<String> = self
                .prepare_cached(
                    "SELECT m.user_id FROM members m
                     WHERE m.conversation_id = ?1
                       AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = m.user_id AND blocked = ?2)",
                )?
                .query_map([&message.conversation, &message.sender], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let id = stored_message_id(&message.id)?;
            for user in users {
                let seq = self.next_seq(&user).await?;
                self.prepare_cached(
                    "INSERT INTO inbox (user_id, seq, ts, message_id) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![user, seq as i64, now, id])?;
                out.push((i, user, seq));
            }
        }
        let mut lists: Vec<Vec<(String, u64)>> = messages.iter().map(|_| Vec::new()).collect();
        for (i, user, seq) in out {
            if let Some(list) = lists.get_mut(i) {
                list.push((user, seq));
            }
        }
        Ok(lists)
    }

    async fn counters(&self, user: &str) -> Result<Option<(u64, u64)>> {
        // One statement: a read between a run's close and the next seq sees either both or
        // neither.
        Ok(self
            .prepare_cached(
                "SELECT COALESCE((SELECT r.first_seq + c.last_pos - r.first_pos
                                  FROM inbox_runs r JOIN conversations c ON c.id = r.conversation_id
                                  WHERE r.user_id = u.id AND r.count IS NULL), u.last_seq),
                        u.acked_seq
                 FROM users u WHERE u.id = ?1",
            )?
            .query_row([user], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
    }

    async fn first_seq(&self, user: &str) -> Result<Option<u64>> {
        let row: Option<i64> = self
            .prepare_cached("SELECT MIN(seq) FROM inbox WHERE user_id = ?1")?
            .query_row([user], |r| r.get(0))?;
        // The first run with a message left: the seq of its first one.
        let run: Option<i64> = self
            .prepare_cached(concat!(
                "SELECT s FROM (
                       SELECT r.first_seq - r.first_pos +
                              (SELECT MIN(m.pos) FROM messages m WHERE ",
                in_run!(),
                ") AS s
                       FROM inbox_runs r WHERE r.user_id = ?1 ORDER BY r.first_seq)
                     WHERE s IS NOT NULL LIMIT 1"
            ))?
            .query_row([user], |r| r.get(0))
            .optional()?;
        Ok(match (row, run) {
            (Some(a), Some(b)) => Some(a.min(b) as u64),
            (a, b) => a.or(b).map(|f| f as u64),
        })
    }

    async fn inbox_rows(&self, user: &str, after: i64, limit: usize) -> Result<Vec<InboxRow>> {
        let mut rows: Vec<InboxRow> = self
            .prepare_cached(&format!(
                "SELECT i.seq, i.frame, {M_MESSAGE_COLUMNS}
                 FROM inbox i LEFT JOIN messages m ON m.id = i.message_id
                 WHERE i.user_id = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3"
            ))?
            .query_map(params![user, after, limit as i64], |r| {
                let message = match r.get::<_, Option<i64>>(2)? {
                    Some(_) => Some(message_row(r, 2)?),
                    None => None,
                };
                Ok((r.get(0)?, r.get(1)?, message))
            })?
            .collect::<Result<_, _>>()?;
        // Runs reaching past `after`: the one holding `after + 1`, then those after it in
        // seq order, each read from its group's messages by position, until `limit` events
        // are found and the next run starts past them.
        let runs: Vec<(i64, String, i64, i64)> = self
            .prepare_cached(concat!(
                "SELECT * FROM (
                       SELECT r.first_seq, r.conversation_id, r.first_pos, ",
                run_len!(),
                " FROM inbox_runs r JOIN conversations c ON c.id = r.conversation_id
                       WHERE r.user_id = ?1 AND r.first_seq <= ?2
                       ORDER BY r.first_seq DESC LIMIT 1)
                     UNION ALL
                     SELECT * FROM (
                       SELECT r.first_seq, r.conversation_id, r.first_pos, ",
                run_len!(),
                " FROM inbox_runs r JOIN conversations c ON c.id = r.conversation_id
                       WHERE r.user_id = ?1 AND r.first_seq > ?2
                       ORDER BY r.first_seq LIMIT ?3)"
            ))?
            .query_map(params![user, after, limit as i64], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        for (first_seq, conversation, first_pos, count) in runs {
            let (from, to) = match run_read(&rows, limit, after, (first_seq, first_pos, count)) {
                RunRead::Skip => continue,
                RunRead::Stop => break,
                RunRead::Positions(from, to) => (from, to),
            };
            let found = self
                .prepare_cached(&format!(
                    "SELECT m.pos, {M_MESSAGE_COLUMNS} FROM messages m
                     WHERE m.conversation_id = ?1 AND m.pos BETWEEN ?2 AND ?3
                     ORDER BY m.pos LIMIT ?4"
                ))?
                .query_map(params![conversation, from, to, limit as i64], |r| {
                    let pos: i64 = r.get(0)?;
                    Ok((first_seq + pos - first_pos, None, Some(message_row(r, 1)?)))
                })?
                .collect::<Result<Vec<InboxRow>, _>>()?;
            rows.extend(found);
        }
        rows.sort_by_key(|r| r.0);
        rows.truncate(limit);
        Ok(rows)
    }

    async fn raise_acked(&self, user: &str, seq: i64) -> Result<()> {
        let Some((last, _)) = self.counters(user).await? else {
            return Ok(());
        };
        self.prepare_cached(
            "UPDATE users SET acked_seq = MIN(MAX(acked_seq, ?2), ?3) WHERE id = ?1",
        )?
        .execute(params![user, seq, last as i64])?;
        Ok(())
    }

    async fn prune(&self, before_ms: i64) -> Result<u64> {
        let rows = self
            .prepare_cached("DELETE FROM inbox WHERE ts < ?1")?
            .execute([before_ms])? as u64;
        // Runs whose first message left is older than `before_ms` lose their events before
        // the first newer one (a run left with none goes).
        let runs: Vec<(String, i64, String, i64, i64, bool)> = self
            .prepare_cached(concat!(
                "SELECT r.user_id, r.first_seq, r.conversation_id, r.first_pos, ",
                run_len!(),
                ", r.count IS NULL
                     FROM inbox_runs r JOIN conversations c ON c.id = r.conversation_id
                     WHERE (SELECT m.ts FROM messages m WHERE ",
                in_run!(),
                " ORDER BY m.pos LIMIT 1) < ?1"
            ))?
            .query_map([before_ms], |r| r.try_into())?
            .collect::<Result<_, _>>()?;
        let mut events = 0u64;
        for (user, first_seq, conversation, first_pos, count, open) in runs {
            let end = first_pos + count; // one past the run's last position
            let cut: Option<i64> = self
                .prepare_cached(
                    "SELECT MIN(pos) FROM messages
                     WHERE conversation_id = ?1 AND pos >= ?2 AND pos < ?3 AND ts >= ?4",
                )?
                .query_row(params![conversation, first_pos, end, before_ms], |r| {
                    r.get(0)
                })?;
            let cut = cut.unwrap_or(end);
            let gone: i64 = self
                .prepare_cached(
                    "SELECT COUNT(*) FROM messages
                     WHERE conversation_id = ?1 AND pos >= ?2 AND pos < ?3",
                )?
                .query_row(params![conversation, first_pos, cut], |r| r.get(0))?;
            events += gone as u64;
            if cut == end {
                // Nothing left: the run goes (an open one's end becomes the user's last seq).
                if open {
                    self.prepare_cached("UPDATE users SET last_seq = ?2 WHERE id = ?1")?
                        .execute(params![user, first_seq + count - 1])?;
                }
                self.prepare_cached(
                    "DELETE FROM inbox_runs WHERE user_id = ?1 AND first_seq = ?2",
                )?
                .execute(params![user, first_seq])?;
                continue;
            }
            let skipped = cut - first_pos;
            self.prepare_cached(
                "UPDATE inbox_runs SET first_seq = first_seq + ?3, first_pos = first_pos + ?3,
                                       count = count - ?3
                 WHERE user_id = ?1 AND first_seq = ?2",
            )?
            .execute(params![user, first_seq, skipped])?;
        }
        // Closed runs older than that whose messages are all gone (a deleted group).
        self.prepare_cached(
            "DELETE FROM inbox_runs
             WHERE count IS NOT NULL AND ts < ?1
               AND NOT EXISTS (SELECT 1 FROM messages m
                               WHERE m.conversation_id = inbox_runs.conversation_id
                                 AND m.pos >= inbox_runs.first_pos
                                 AND m.pos < inbox_runs.first_pos + inbox_runs.count)",
        )?
        .execute([before_ms])?;
        Ok(rows + events)
    }

    async fn ping(&self) -> Result<()> {
        self.prepare_cached("SELECT 1")?.query_row([], |_| Ok(()))?;
        Ok(())
    }
}
