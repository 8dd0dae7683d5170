//! The inbox's SQL on SQLite.

use super::{InboxRow, InboxTx};
use crate::chat::M_MESSAGE_COLUMNS;
use crate::chat::sqlite::message_row;
use crate::chat::stored_message_id;
use crate::sqlite::Tx;
use crate::{Result, SqliteStore};
use hubbub_protocol::Message;
use rusqlite::{OptionalExtension, params};

super::impl_inbox_store!(SqliteStore);

impl InboxTx for Tx<'_> {
    async fn next_seq(&self, user: &str) -> Result<u64> {
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

    async fn fan_out(&self, messages: &[&Message], now: i64) -> Result<Vec<(usize, String, u64)>> {
        let mut out = Vec::new();
        // Consecutive messages of one sender to one conversation (a run of sends) have the
        // same recipients: one statement takes each recipient's next k seqs, one more writes
        // their k rows, a recipient's side by side in the inbox's key order (one visit to the
        // page where they go, not k). The order is the members index's own (no sort); within
        // a recipient, json_each's (placement is by key either way).
        let mut start = 0;
        while let Some(first) = messages.get(start) {
            let k = messages[start..]
                .iter()
                .take_while(|m| m.conversation == first.conversation && m.sender == first.sender)
                .count();
            let ids = messages[start..start + k]
                .iter()
                .map(|m| stored_message_id(&m.id))
                .collect::<Result<Vec<i64>>>()?;
            let ids = serde_json::to_string(&ids).map_err(crate::json_err)?;
            let k64 = k as i64;
            let lasts = self
                .prepare_cached(
                    "UPDATE users SET last_seq = last_seq + ?3
                     WHERE id IN (SELECT user_id FROM members WHERE conversation_id = ?1)
                       AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = users.id AND blocked = ?2)
                     RETURNING id, last_seq",
                )?
                .query_map(params![first.conversation, first.sender, k64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            self.prepare_cached(
                "INSERT INTO inbox (user_id, seq, ts, message_id)
                 SELECT u.id, u.last_seq - ?5 + 1 + j.key, ?2, j.value
                 FROM members m JOIN users u ON u.id = m.user_id, json_each(?3) j
                 WHERE m.conversation_id = ?1
                   AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = m.user_id AND blocked = ?4)
                 ORDER BY m.user_id",
            )?
            .execute(params![first.conversation, now, ids, first.sender, k64])?;
            for (user, last) in lasts {
                for j in 0..k {
                    let seq = (last - k64 + 1 + j as i64) as u64;
                    out.push((start + j, user.clone(), seq));
                }
            }
            start += k;
        }
        Ok(out)
    }

    async fn counters(&self, user: &str) -> Result<Option<(u64, u64)>> {
        Ok(self
            .prepare_cached("SELECT last_seq, acked_seq FROM users WHERE id = ?1")?
            .query_row([user], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
    }

    async fn first_seq(&self, user: &str) -> Result<Option<u64>> {
        let first: Option<i64> = self
            .prepare_cached("SELECT MIN(seq) FROM inbox WHERE user_id = ?1")?
            .query_row([user], |r| r.get(0))?;
        Ok(first.map(|f| f as u64))
    }

    async fn inbox_rows(&self, user: &str, after: i64, limit: usize) -> Result<Vec<InboxRow>> {
        Ok(self
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
            .collect::<Result<_, _>>()?)
    }

    async fn raise_acked(&self, user: &str, seq: i64) -> Result<()> {
        self.prepare_cached(
            "UPDATE users SET acked_seq = MIN(MAX(acked_seq, ?2), last_seq) WHERE id = ?1",
        )?
        .execute(params![user, seq])?;
        Ok(())
    }

    async fn prune(&self, before_ms: i64) -> Result<u64> {
        Ok(self
            .prepare_cached("DELETE FROM inbox WHERE ts < ?1")?
            .execute([before_ms])? as u64)
    }

    async fn ping(&self) -> Result<()> {
        self.prepare_cached("SELECT 1")?.query_row([], |_| Ok(()))?;
        Ok(())
    }
}
