//! The inbox's SQL on PostgreSQL.

use super::{InboxRow, InboxTx};
use crate::chat::M_MESSAGE_COLUMNS;
use crate::chat::postgres::message_row;
use crate::chat::stored_message_id;
use crate::postgres::Tx;
use crate::{PgStore, Result, StoreError};
use hubbub_protocol::Message;

super::impl_inbox_store!(PgStore);

impl InboxTx for Tx<'_> {
    async fn next_seq(&self, user: &str) -> Result<u64> {
        let seq: i64 = self
            .one(
                "UPDATE users SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
                &[&user],
            )
            .await?
            .get(0);
        Ok(seq as u64)
    }

    async fn insert_event(&self, user: &str, seq: u64, now: i64, frame: &str) -> Result<()> {
        self.exec(
            "INSERT INTO inbox (user_id, seq, ts, frame) VALUES ($1, $2, $3, $4)",
            &[&user, &(seq as i64), &now, &frame],
        )
        .await?;
        Ok(())
    }

    async fn next_seqs(&self, users: &[String]) -> Result<Vec<(String, u64)>> {
        // Callers lock these rows in id order first (`ChatTx::lock_users`), so this one
        // statement waits for no one.
        Ok(self
            .rows(
                "UPDATE users SET last_seq = last_seq + 1 WHERE id = ANY($1)
                 RETURNING id, last_seq",
                &[&users],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn insert_events(&self, rows: &[(String, u64, String)], now: i64) -> Result<()> {
        let users: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.1 as i64).collect();
        let frames: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        self.exec(
            "INSERT INTO inbox (user_id, seq, ts, frame)
             SELECT u, s, $3, f FROM UNNEST($1::text[], $2::bigint[], $4::text[]) AS t(u, s, f)",
            &[&users, &seqs, &now, &frames],
        )
        .await?;
        Ok(())
    }

    async fn fan_out(&self, messages: &[&Message], now: i64) -> Result<Vec<(usize, String, u64)>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let ids = messages
            .iter()
            .map(|m| stored_message_id(&m.id))
            .collect::<Result<Vec<i64>, _>>()?;
        let convs: Vec<&str> = messages.iter().map(|m| m.conversation.as_str()).collect();
        let senders: Vec<&str> = messages.iter().map(|m| m.sender.as_str()).collect();
        // Every message's fan-out in one statement: each recipient's seq goes up by the
        // number of messages it gets, and its rows take those seqs in the order given.
        let got = self
            .rows(
                "WITH msgs AS (
                   SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])
                     WITH ORDINALITY AS m(mid, conv, sender, ord)),
                 recips AS (
                   SELECT m.ord, m.mid, mb.user_id FROM msgs m
                   JOIN members mb ON mb.conversation_id = m.conv
                   WHERE NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = mb.user_id AND blocked = m.sender)),
                 counts AS (SELECT user_id, COUNT(*) AS n FROM recips GROUP BY user_id),
                 upd AS (
                   UPDATE users SET last_seq = users.last_seq + counts.n FROM counts
                   WHERE users.id = counts.user_id
                   RETURNING users.id, users.last_seq AS top, counts.n),
                 numbered AS (
                   SELECT r.user_id, r.mid,
                          upd.top - upd.n + ROW_NUMBER() OVER (PARTITION BY r.user_id ORDER BY r.ord) AS seq
                   FROM recips r JOIN upd ON upd.id = r.user_id)
                 INSERT INTO inbox (user_id, seq, ts, message_id)
                 SELECT user_id, seq, $4, mid FROM numbered
                 RETURNING user_id, seq, message_id",
                &[&ids, &convs, &senders, &now],
            )
            .await?;
        got.iter()
            .map(|r| {
                let mid: i64 = r.get(2);
                let i = ids.iter().position(|id| *id == mid).ok_or_else(|| {
                    StoreError::Internal(format!("fan-out of an unknown message {mid}"))
                })?;
                Ok((i, r.get(0), r.get::<_, i64>(1) as u64))
            })
            .collect()
    }

    async fn counters(&self, user: &str) -> Result<Option<(u64, u64)>> {
        Ok(self
            .opt(
                "SELECT last_seq, acked_seq FROM users WHERE id = $1",
                &[&user],
            )
            .await?
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)))
    }

    async fn first_seq(&self, user: &str) -> Result<Option<u64>> {
        let first: Option<i64> = self
            .one("SELECT MIN(seq) FROM inbox WHERE user_id = $1", &[&user])
            .await?
            .get(0);
        Ok(first.map(|f| f as u64))
    }

    async fn inbox_rows(&self, user: &str, after: i64, limit: usize) -> Result<Vec<InboxRow>> {
        let rows = self
            .rows(
                &format!(
                    "SELECT i.seq, i.frame, {M_MESSAGE_COLUMNS}
                 FROM inbox i LEFT JOIN messages m ON m.id = i.message_id
                 WHERE i.user_id = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3"
                ),
                &[&user, &after, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let message = r.get::<_, Option<i64>>(2).map(|_| message_row(r, 2));
                (r.get(0), r.get(1), message)
            })
            .collect())
    }

    async fn raise_acked(&self, user: &str, seq: i64) -> Result<()> {
        self.exec(
            "UPDATE users SET acked_seq = LEAST(GREATEST(acked_seq, $2), last_seq) WHERE id = $1",
            &[&user, &seq],
        )
        .await?;
        Ok(())
    }

    async fn raise_acked_all(&self, acks: &[(&str, i64)]) -> Result<()> {
        if acks.is_empty() {
            return Ok(());
        }
        let users: Vec<&str> = acks.iter().map(|a| a.0).collect();
        let seqs: Vec<i64> = acks.iter().map(|a| a.1).collect();
        // Two round trips for any number of users (one each held every lock taken so far
        // while the next went out, and a send to these users waited for all of them): the
        // rows are locked in id order first, as a send's fan-out takes them, so the two
        // never deadlock; then one statement raises them all.
        self.exec(
            "SELECT 1 FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&users],
        )
        .await?;
        self.exec(
            "UPDATE users SET acked_seq = LEAST(GREATEST(users.acked_seq, t.s), users.last_seq)
             FROM UNNEST($1::text[], $2::bigint[]) AS t(u, s) WHERE users.id = t.u",
            &[&users, &seqs],
        )
        .await?;
        Ok(())
    }

    async fn prune(&self, before_ms: i64) -> Result<u64> {
        self.exec("DELETE FROM inbox WHERE ts < $1", &[&before_ms])
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.one("SELECT 1", &[]).await?;
        Ok(())
    }
}
