//! The inbox's SQL on PostgreSQL.
//!
//! A group's `message.new` events are kept as runs, as on SQLite (`sqlite.rs`, and
//! `012_inbox_runs.sql` of each backend): a message to a group writes nothing for members
//! whose open run is on it. The rules that write runs are PL/pgSQL functions of that
//! migration (`hubbub_next_seq`, `hubbub_close_run` and the trigger that closes a leaver's
//! run) and of `013_fan_out_arrays.sql` (`hubbub_fan_out_arrays`, which answers a row per
//! message), so a batch's fan-out is one round trip; the 012 migration also says
//! which locks keep a run's end where concurrent writers agree on it. The reads here follow
//! `sqlite.rs` statement for statement.

use super::{InboxRow, InboxTx, RunRead, run_read};

/// A batch's fan-out: a row per message, its recipients and their seqs.
pub(crate) const FAN_OUT: &str =
    "SELECT ord, user_ids, seqs FROM hubbub_fan_out_arrays($1, $2, $3, $4)";
use crate::chat::M_MESSAGE_COLUMNS;
use crate::chat::postgres::message_row;
use crate::chat::stored_message_id;
use crate::postgres::Tx;
use crate::{PgStore, Result, StoreError};
use hubbub_protocol::Message;

super::impl_inbox_store!(PgStore);

/// A group's newest position over `inbox_runs r LEFT JOIN group_positions p` (a run whose
/// group is gone ends before its first position).
macro_rules! last_pos {
    () => {
        "COALESCE(p.last_pos, r.first_pos - 1)"
    };
}

/// A run's length in SQL over `inbox_runs r LEFT JOIN group_positions p`: its count, or, open,
/// up to its group's newest message.
macro_rules! run_len {
    () => {
        concat!("COALESCE(r.count, ", last_pos!(), " - r.first_pos + 1)")
    };
}

/// Whether message `m` is one of run `r`'s (the condition, in SQL).
macro_rules! in_run {
    () => {
        "m.conversation_id = r.conversation_id AND m.pos >= r.first_pos
         AND (r.count IS NULL OR m.pos < r.first_pos + r.count)"
    };
}

/// The effective last seq of the user `users` row in SQL: the end of their open run, if any,
/// else `users.last_seq`.
macro_rules! effective_last_seq {
    () => {
        concat!(
            "COALESCE((SELECT r.first_seq + ",
            last_pos!(),
            " - r.first_pos
                       FROM inbox_runs r
                       LEFT JOIN group_positions p ON p.conversation_id = r.conversation_id
                       WHERE r.user_id = users.id AND r.count IS NULL), users.last_seq)"
        )
    };
}

/// Lock the `users` rows of `$1`, in id order (the order every write takes them in).
const LOCK_USERS: &str = "SELECT 1 FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE";

impl Tx<'_> {
    /// Lock `users`, then the positions of the groups their open runs are on (FOR SHARE:
    /// closing a run reads its group's position), each in id order, the order every write
    /// takes them in (`012_inbox_runs.sql`). Two statements in one round trip (pipelined).
    pub(crate) async fn lock_users_and_runs(&self, users: &[String]) -> Result<()> {
        let p: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&users];
        tokio::try_join!(
            self.exec(LOCK_USERS, &p),
            self.exec(
                "SELECT 1 FROM group_positions WHERE conversation_id IN
                   (SELECT conversation_id FROM inbox_runs
                    WHERE user_id = ANY($1) AND count IS NULL)
                 ORDER BY conversation_id FOR SHARE",
                &p,
            ),
        )?;
        Ok(())
    }
}

impl InboxTx for Tx<'_> {
    async fn next_seq(&self, user: &str) -> Result<u64> {
        let seq: Option<i64> = self
            .one("SELECT hubbub_next_seq($1)", &[&user])
            .await?
            .get(0);
        seq.map(|s| s as u64)
            .ok_or_else(|| StoreError::NotFound(format!("no user {user}")))
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
        // Callers lock these users and their runs' positions first (`ChatTx::lock_users`), so
        // this one statement waits for no one. An unknown user takes no seq.
        Ok(self
            .rows(
                "SELECT u, s FROM (SELECT u, hubbub_next_seq(u) AS s
                                   FROM UNNEST($1::text[]) AS t(u)) n
                 WHERE s IS NOT NULL",
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

    async fn fan_out(&self, messages: &[&Message], now: i64) -> Result<Vec<Vec<(String, u64)>>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let ids = messages
            .iter()
            .map(|m| stored_message_id(&m.id))
            .collect::<Result<Vec<i64>, _>>()?;
        let convs: Vec<&str> = messages.iter().map(|m| m.conversation.as_str()).collect();
        let senders: Vec<&str> = messages.iter().map(|m| m.sender.as_str()).collect();
        // Every message's fan-out in one round trip (`hubbub_fan_out_arrays`): a row per
        // message, in the order given, its recipients and their seqs side by side.
        let got = self.rows(FAN_OUT, &[&ids, &convs, &senders, &now]).await?;
        let mut lists: Vec<Vec<(String, u64)>> = messages.iter().map(|_| Vec::new()).collect();
        for r in &got {
            let ord: i32 = r.get(0);
            let list = usize::try_from(ord - 1)
                .ok()
                .and_then(|i| lists.get_mut(i))
                .ok_or_else(|| {
                    StoreError::Internal(format!("fan-out of an unknown message {ord}"))
                })?;
            let users: Vec<String> = r.get(1);
            let seqs: Vec<i64> = r.get(2);
            if users.len() != seqs.len() {
                return Err(StoreError::Internal(format!(
                    "fan-out of message {ord}: {} recipients, {} seqs",
                    users.len(),
                    seqs.len()
                )));
            }
            list.extend(users.into_iter().zip(seqs.into_iter().map(|s| s as u64)));
        }
        Ok(lists)
    }

    async fn counters(&self, user: &str) -> Result<Option<(u64, u64)>> {
        // One statement: a read between a run's close and the next seq sees either both or
        // neither.
        Ok(self
            .opt(
                concat!(
                    "SELECT ",
                    effective_last_seq!(),
                    ", users.acked_seq FROM users WHERE users.id = $1"
                ),
                &[&user],
            )
            .await?
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)))
    }

    async fn first_seq(&self, user: &str) -> Result<Option<u64>> {
        let row: Option<i64> = self
            .one("SELECT MIN(seq) FROM inbox WHERE user_id = $1", &[&user])
            .await?
            .get(0);
        // The first run with a message left: the seq of its first one.
        let run: Option<i64> = self
            .opt(
                concat!(
                    "SELECT s FROM (
                       SELECT r.first_seq, r.first_seq - r.first_pos +
                              (SELECT MIN(m.pos) FROM messages m WHERE ",
                    in_run!(),
                    ") AS s
                       FROM inbox_runs r WHERE r.user_id = $1) x
                     WHERE s IS NOT NULL ORDER BY first_seq LIMIT 1"
                ),
                &[&user],
            )
            .await?
            .map(|r| r.get(0));
        Ok(match (row, run) {
            (Some(a), Some(b)) => Some(a.min(b) as u64),
            (a, b) => a.or(b).map(|f| f as u64),
        })
    }

    async fn inbox_rows(&self, user: &str, after: i64, limit: usize) -> Result<Vec<InboxRow>> {
        let limit_i = limit as i64;
        let mut rows: Vec<InboxRow> = self
            .rows(
                &format!(
                    "SELECT i.seq, i.frame, {M_MESSAGE_COLUMNS}
                     FROM inbox i LEFT JOIN messages m ON m.id = i.message_id
                     WHERE i.user_id = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3"
                ),
                &[&user, &after, &limit_i],
            )
            .await?
            .iter()
            .map(|r| {
                let message = r.get::<_, Option<i64>>(2).map(|_| message_row(r, 2));
                (r.get(0), r.get(1), message)
            })
            .collect();
        // Runs reaching past `after`: the one holding `after + 1`, then those after it in
        // seq order, each read from its group's messages by position, until `limit` events
        // are found and the next run starts past them.
        let runs: Vec<(i64, String, i64, i64)> = self
            .rows(
                concat!(
                    "(SELECT r.first_seq, r.conversation_id, r.first_pos, ",
                    run_len!(),
                    " FROM inbox_runs r
                       LEFT JOIN group_positions p ON p.conversation_id = r.conversation_id
                       WHERE r.user_id = $1 AND r.first_seq <= $2
                       ORDER BY r.first_seq DESC LIMIT 1)
                     UNION ALL
                     (SELECT r.first_seq, r.conversation_id, r.first_pos, ",
                    run_len!(),
                    " FROM inbox_runs r
                       LEFT JOIN group_positions p ON p.conversation_id = r.conversation_id
                       WHERE r.user_id = $1 AND r.first_seq > $2
                       ORDER BY r.first_seq LIMIT $3)"
                ),
                &[&user, &after, &limit_i],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        for (first_seq, conversation, first_pos, count) in runs {
            let (from, to) = match run_read(&rows, limit, after, (first_seq, first_pos, count)) {
                RunRead::Skip => continue,
                RunRead::Stop => break,
                RunRead::Positions(from, to) => (from, to),
            };
            let found = self
                .rows(
                    &format!(
                        "SELECT m.pos, {M_MESSAGE_COLUMNS} FROM messages m
                         WHERE m.conversation_id = $1 AND m.pos BETWEEN $2 AND $3
                         ORDER BY m.pos LIMIT $4"
                    ),
                    &[&conversation, &from, &to, &limit_i],
                )
                .await?;
            rows.extend(found.iter().map(|r| {
                let pos: i64 = r.get(0);
                (first_seq + pos - first_pos, None, Some(message_row(r, 1)))
            }));
        }
        rows.sort_by_key(|r| r.0);
        rows.truncate(limit);
        Ok(rows)
    }

    async fn raise_acked(&self, user: &str, seq: i64) -> Result<()> {
        self.raise_acked_all(&[(user, seq)]).await
    }

    async fn raise_acked_all(&self, acks: &[(&str, i64)]) -> Result<()> {
        if acks.is_empty() {
            return Ok(());
        }
        let users: Vec<&str> = acks.iter().map(|a| a.0).collect();
        let seqs: Vec<i64> = acks.iter().map(|a| a.1).collect();
        // Two round trips for any number of users: the rows are locked in id order first,
        // as every write takes them (the two never deadlock), then one statement raises them
        // all, each up to their last seq as committed (a send in flight is not yet theirs).
        self.exec(LOCK_USERS, &[&users]).await?;
        self.exec(
            concat!(
                "UPDATE users SET acked_seq = LEAST(GREATEST(users.acked_seq, t.s), ",
                effective_last_seq!(),
                ") FROM UNNEST($1::text[], $2::bigint[]) AS t(u, s) WHERE users.id = t.u"
            ),
            &[&users, &seqs],
        )
        .await?;
        Ok(())
    }

    async fn prune(&self, before_ms: i64) -> Result<u64> {
        let rows = self
            .exec("DELETE FROM inbox WHERE ts < $1", &[&before_ms])
            .await?;
        // Runs whose first message left is older than `before_ms` lose their events before
        // the first newer one (a run left with none goes). Their users and their groups'
        // positions are locked first, so an open run's end stays put; the runs are read
        // again after.
        let stale = concat!(
            "FROM inbox_runs r
             LEFT JOIN group_positions p ON p.conversation_id = r.conversation_id
             WHERE (SELECT m.ts FROM messages m WHERE ",
            in_run!(),
            " ORDER BY m.pos LIMIT 1) < $1"
        );
        let users: Vec<String> = self
            .rows(&format!("SELECT DISTINCT r.user_id {stale}"), &[&before_ms])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !users.is_empty() {
            self.lock_users_and_runs(&users).await?;
        }
        let runs: Vec<(String, i64, String, i64, i64, bool)> = self
            .rows(
                &format!(
                    concat!(
                        "SELECT r.user_id, r.first_seq, r.conversation_id, r.first_pos, ",
                        run_len!(),
                        ", r.count IS NULL {}"
                    ),
                    stale
                ),
                &[&before_ms],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect();
        let mut events = 0u64;
        for (user, first_seq, conversation, first_pos, count, open) in runs {
            let end = first_pos + count; // one past the run's last position
            let cut: Option<i64> = self
                .one(
                    "SELECT MIN(pos) FROM messages
                     WHERE conversation_id = $1 AND pos >= $2 AND pos < $3 AND ts >= $4",
                    &[&conversation, &first_pos, &end, &before_ms],
                )
                .await?
                .get(0);
            let cut = cut.unwrap_or(end);
            let gone: i64 = self
                .one(
                    "SELECT COUNT(*) FROM messages
                     WHERE conversation_id = $1 AND pos >= $2 AND pos < $3",
                    &[&conversation, &first_pos, &cut],
                )
                .await?
                .get(0);
            events += gone as u64;
            if cut == end {
                // Nothing left: the run goes (an open one's end becomes the user's last seq).
                if open {
                    self.exec(
                        "UPDATE users SET last_seq = $2 WHERE id = $1",
                        &[&user, &(first_seq + count - 1)],
                    )
                    .await?;
                }
                self.exec(
                    "DELETE FROM inbox_runs WHERE user_id = $1 AND first_seq = $2",
                    &[&user, &first_seq],
                )
                .await?;
                continue;
            }
            let skipped = cut - first_pos;
            self.exec(
                "UPDATE inbox_runs SET first_seq = first_seq + $3, first_pos = first_pos + $3,
                                       count = count - $3
                 WHERE user_id = $1 AND first_seq = $2",
                &[&user, &first_seq, &skipped],
            )
            .await?;
        }
        // Closed runs older than that whose messages are all gone (a deleted group).
        self.exec(
            "DELETE FROM inbox_runs
             WHERE count IS NOT NULL AND ts < $1
               AND NOT EXISTS (SELECT 1 FROM messages m
                               WHERE m.conversation_id = inbox_runs.conversation_id
                                 AND m.pos >= inbox_runs.first_pos
                                 AND m.pos < inbox_runs.first_pos + inbox_runs.count)",
            &[&before_ms],
        )
        .await?;
        Ok(rows + events)
    }

    async fn ping(&self) -> Result<()> {
        self.one("SELECT 1", &[]).await?;
        Ok(())
    }
}
