//! The SQL of every queue and log operation. Each function runs inside the writer's
//! transaction (and the job's savepoint) and sees the clock through [`Ctx::now`].

use super::writer::Ctx;
use crate::types::*;
use crate::{QueueError, ReceiptError};
use rusqlite::{OptionalExtension, params};
use std::path::Path;

/// `visible_ms` of a message that waits behind an earlier message with the same key.
pub(crate) const WAITING_ON_KEY: i64 = i64::MAX;

/// Map a SQLite error to a queue error, naming the file for damage.
pub(crate) fn map_sql(path: &Path, e: rusqlite::Error) -> QueueError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DiskFull) => QueueError::DiskFull,
        Some(C::DatabaseCorrupt) => QueueError::Corrupt {
            path: path.to_owned(),
            reason: format!("database is damaged ({e})"),
        },
        Some(C::NotADatabase) => QueueError::Corrupt {
            path: path.to_owned(),
            reason: "not a hubbub database (not SQLite, or its header is damaged)".into(),
        },
        _ => QueueError::Storage(e.to_string()),
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn bump_counter(ctx: &Ctx<'_>, queue: &str, column: &str) -> Result<(), QueueError> {
    let sql = format!(
        "INSERT INTO q_counters (queue, {column}) VALUES (?1, 1)
         ON CONFLICT (queue) DO UPDATE SET {column} = {column} + 1"
    );
    ctx.conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.execute([queue]))
        .map_err(|e| ctx.sql_err(e))?;
    Ok(())
}

/// Insert one message, waiting on its key if an earlier message holds that key.
fn insert(
    ctx: &mut Ctx<'_>,
    queue: &str,
    body: &[u8],
    key: Option<&str>,
    enqueued_ms: i64,
    ready_ms: i64,
    expires_ms: Option<i64>,
) -> Result<i64, QueueError> {
    let conn = ctx.conn;
    let blocked = match key {
        Some(k) => conn
            .prepare_cached("SELECT 1 FROM q_messages WHERE queue = ?1 AND key = ?2 LIMIT 1")
            .and_then(|mut s| s.exists(params![queue, k]))
            .map_err(|e| ctx.sql_err(e))?,
        None => false,
    };
    let visible_ms = if blocked { WAITING_ON_KEY } else { ready_ms };
    conn.prepare_cached(
        "INSERT INTO q_messages (queue, body, key, enqueued_ms, ready_ms, visible_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            queue,
            body,
            key,
            enqueued_ms,
            ready_ms,
            visible_ms,
            expires_ms
        ])
    })
    .map_err(|e| ctx.sql_err(e))?;
    if !blocked {
        ctx.touched.push(queue.to_owned());
    }
    Ok(conn.last_insert_rowid())
}

/// After the head of `key` left the queue, let the next message of that key become visible.
fn promote(ctx: &mut Ctx<'_>, queue: &str, key: Option<&str>) -> Result<(), QueueError> {
    let Some(key) = key else { return Ok(()) };
    let next: Option<(i64, i64, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, ready_ms, visible_ms FROM q_messages
             WHERE queue = ?1 AND key = ?2 ORDER BY id LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row(params![queue, key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(|e| ctx.sql_err(e))?;
    if let Some((id, ready_ms, WAITING_ON_KEY)) = next {
        ctx.conn
            .prepare_cached("UPDATE q_messages SET visible_ms = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, ready_ms]))
            .map_err(|e| ctx.sql_err(e))?;
        ctx.touched.push(queue.to_owned());
    }
    Ok(())
}

fn delete(ctx: &mut Ctx<'_>, id: i64) -> Result<(), QueueError> {
    ctx.conn
        .prepare_cached("DELETE FROM q_messages WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .map_err(|e| ctx.sql_err(e))?;
    Ok(())
}

pub(crate) fn send_batch(
    ctx: &mut Ctx<'_>,
    queue: &str,
    messages: Vec<Outgoing>,
) -> Result<Vec<SendOutcome>, QueueError> {
    let now = ctx.now();
    let window = ms(ctx.shared.dedupe_window);
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        if let Some(dedupe) = &m.opts.dedupe_id {
            let seen: Option<i64> = ctx
                .conn
                .prepare_cached(
                    "SELECT message_id FROM q_dedupe
                     WHERE queue = ?1 AND dedupe_id = ?2 AND expires_ms > ?3",
                )
                .and_then(|mut s| {
                    s.query_row(params![queue, dedupe, now], |r| r.get(0))
                        .optional()
                })
                .map_err(|e| ctx.sql_err(e))?;
            if let Some(id) = seen {
                out.push(SendOutcome {
                    id: id.to_string(),
                    duplicate: true,
                });
                continue;
            }
        }
        let ready = now.saturating_add(ms(m.opts.delay));
        let expires = m.opts.ttl.map(|t| now.saturating_add(ms(t)));
        let id = insert(
            ctx,
            queue,
            &m.body,
            m.opts.key.as_deref(),
            now,
            ready,
            expires,
        )?;
        if let Some(dedupe) = &m.opts.dedupe_id {
            ctx.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO q_dedupe (queue, dedupe_id, message_id, expires_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![queue, dedupe, id, now.saturating_add(window)]))
                .map_err(|e| ctx.sql_err(e))?;
        }
        out.push(SendOutcome {
            id: id.to_string(),
            duplicate: false,
        });
    }
    Ok(out)
}

struct Candidate {
    id: i64,
    body: Vec<u8>,
    key: Option<String>,
    receive_count: u32,
    enqueued_ms: i64,
    expires_ms: Option<i64>,
}

fn candidate(r: &rusqlite::Row<'_>) -> rusqlite::Result<Candidate> {
    Ok(Candidate {
        id: r.get(0)?,
        body: r.get(1)?,
        key: r.get(2)?,
        receive_count: r.get(3)?,
        enqueued_ms: r.get(4)?,
        expires_ms: r.get(5)?,
    })
}

/// What became of a candidate for receiving.
enum Taken {
    /// Leased: it goes in the batch.
    Leased(Delivery),
    /// Expired or dead-lettered: it left the queue.
    Dropped,
}

/// Lease one candidate, or drop it when it is past its TTL or its receives.
fn take(
    ctx: &mut Ctx<'_>,
    queue: &str,
    c: Candidate,
    now: i64,
    lease_until: i64,
    max_receives: u32,
    head: bool,
) -> Result<Taken, QueueError> {
    if c.expires_ms.is_some_and(|e| e <= now) {
        delete(ctx, c.id)?;
        bump_counter(ctx, queue, "expired")?;
        if head {
            promote(ctx, queue, c.key.as_deref())?;
        }
        return Ok(Taken::Dropped);
    }
    if c.receive_count >= max_receives {
        ctx.conn
            .prepare_cached(
                "UPDATE q_messages SET queue = ?2, dead_key = key, key = NULL,
                 dead_count = receive_count, receive_count = 0, visible_ms = ?3,
                 ready_ms = ?3, token = NULL, expires_ms = NULL WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![c.id, dlq_name(queue), now]))
            .map_err(|e| ctx.sql_err(e))?;
        bump_counter(ctx, queue, "dead_lettered")?;
        tracing::warn!(queue, id = c.id, receives = c.receive_count, "moved to dlq");
        ctx.touched.push(dlq_name(queue));
        if head {
            promote(ctx, queue, c.key.as_deref())?;
        }
        return Ok(Taken::Dropped);
    }
    let token = fastrand::i64(1..i64::MAX);
    ctx.conn
        .prepare_cached(
            "UPDATE q_messages SET visible_ms = ?2, token = ?3,
             receive_count = receive_count + 1 WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![c.id, lease_until, token]))
        .map_err(|e| ctx.sql_err(e))?;
    Ok(Taken::Leased(Delivery {
        id: c.id.to_string(),
        receipt: Receipt(format!("{}.{token:x}", c.id)),
        body: c.body,
        key: c.key,
        receive_count: c.receive_count + 1,
        first_enqueued_ms: c.enqueued_ms,
    }))
}

/// A keyed message that was handed out before (its lease lapsed, or it was given back) while
/// an earlier message of its key is still in the queue: a member of a run whose lease ran
/// out. It goes back to waiting behind that message (true), so the key's order holds.
fn rewait_if_behind(ctx: &mut Ctx<'_>, queue: &str, c: &Candidate) -> Result<bool, QueueError> {
    let Some(key) = c.key.as_deref() else {
        return Ok(false);
    };
    // A message never handed out is only ever made visible as its key's head.
    if c.receive_count == 0 {
        return Ok(false);
    }
    let behind = ctx
        .conn
        .prepare_cached(
            "SELECT 1 FROM q_messages WHERE queue = ?1 AND key = ?2 AND id < ?3 LIMIT 1",
        )
        .and_then(|mut s| s.exists(params![queue, key, c.id]))
        .map_err(|e| ctx.sql_err(e))?;
    if behind {
        ctx.conn
            .prepare_cached("UPDATE q_messages SET visible_ms = ?2, token = NULL WHERE id = ?1")
            .and_then(|mut s| s.execute(params![c.id, WAITING_ON_KEY]))
            .map_err(|e| ctx.sql_err(e))?;
    }
    Ok(behind)
}

/// Receive up to `max` messages, with runs of up to `max_run` consecutive messages of one key
/// (see [`crate::Queue`]); returns them and, when none was found, the next time something in
/// the queue becomes visible (for the long poll to sleep until).
pub(crate) fn receive(
    ctx: &mut Ctx<'_>,
    queue: &str,
    max: usize,
    max_run: usize,
    visibility: std::time::Duration,
) -> Result<(Vec<Delivery>, Option<i64>), QueueError> {
    let now = ctx.now();
    let max_receives = ctx.max_receives(queue);
    let lease_until = now.saturating_add(ms(visibility));
    let mut out: Vec<Delivery> = Vec::new();
    // Ids leased in this call: a run takes messages that may also be among the candidates.
    let mut taken = std::collections::HashSet::new();
    // Dropping expired or dead messages can make room and promote keyed ones: look again, a
    // bounded number of times.
    for _round in 0..4 {
        let want = max - out.len();
        let candidates: Vec<Candidate> = ctx
            .conn
            .prepare_cached(
                "SELECT id, body, key, receive_count, enqueued_ms, expires_ms FROM q_messages
                 WHERE queue = ?1 AND visible_ms <= ?2 ORDER BY visible_ms, id LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![queue, now, want as i64], candidate)?
                    .collect()
            })
            .map_err(|e| ctx.sql_err(e))?;
        if candidates.is_empty() {
            break;
        }
        let mut dropped = false;
        for c in candidates {
            if out.len() >= max {
                break;
            }
            if taken.contains(&c.id) {
                continue;
            }
            if rewait_if_behind(ctx, queue, &c)? {
                dropped = true;
                continue;
            }
            let (id, key) = (c.id, c.key.clone());
            match take(ctx, queue, c, now, lease_until, max_receives, true)? {
                Taken::Dropped => {
                    dropped = true;
                    continue;
                }
                Taken::Leased(d) => {
                    taken.insert(id);
                    out.push(d);
                }
            }
            if let Some(key) = key
                && max_run > 1
            {
                let room = (max_run - 1).min(max - out.len());
                run(
                    ctx,
                    queue,
                    &key,
                    id,
                    room,
                    now,
                    lease_until,
                    max_receives,
                    &mut out,
                    &mut taken,
                )?;
            }
        }
        if out.len() >= max || !dropped {
            break;
        }
    }
    let next = if out.is_empty() {
        ctx.conn
            .prepare_cached(
                "SELECT MIN(visible_ms) FROM q_messages
                 WHERE queue = ?1 AND visible_ms > ?2 AND visible_ms < ?3",
            )
            .and_then(|mut s| s.query_row(params![queue, now, WAITING_ON_KEY], |r| r.get(0)))
            .map_err(|e| ctx.sql_err(e))?
    } else {
        None
    };
    Ok((out, next))
}

/// Lease up to `room` messages of `key` that follow the just leased `head`, in send order:
/// those waiting on the key (or whose lease lapsed) and due. Stops at the first one that is
/// in flight or not yet due.
#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &mut Ctx<'_>,
    queue: &str,
    key: &str,
    head: i64,
    room: usize,
    now: i64,
    lease_until: i64,
    max_receives: u32,
    out: &mut Vec<Delivery>,
    taken: &mut std::collections::HashSet<i64>,
) -> Result<(), QueueError> {
    if room == 0 {
        return Ok(());
    }
    // Read a little more than the room at a time: expired and dead ones are dropped on the way.
    let chunk = room + 8;
    let mut after = head;
    let mut leased = 0;
    loop {
        let rows: Vec<(Candidate, i64, i64)> = ctx
            .conn
            .prepare_cached(
                "SELECT id, body, key, receive_count, enqueued_ms, expires_ms, visible_ms, ready_ms
                 FROM q_messages WHERE queue = ?1 AND key = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
            )
            .and_then(|mut s| {
                s.query_map(params![queue, key, after, chunk as i64], |r| {
                    Ok((candidate(r)?, r.get(6)?, r.get(7)?))
                })?
                .collect()
            })
            .map_err(|e| ctx.sql_err(e))?;
        let full = rows.len() == chunk;
        for (c, visible_ms, ready_ms) in rows {
            if leased >= room {
                return Ok(());
            }
            let free = visible_ms == WAITING_ON_KEY || visible_ms <= now;
            if !free || ready_ms > now {
                return Ok(());
            }
            let id = c.id;
            after = id;
            if let Taken::Leased(d) = take(ctx, queue, c, now, lease_until, max_receives, false)? {
                taken.insert(id);
                out.push(d);
                leased += 1;
            }
        }
        if !full || leased >= room {
            return Ok(());
        }
    }
}

/// Parse a receipt into (message id, token).
fn parse_receipt(receipt: &Receipt) -> Option<(i64, i64)> {
    let (id, token) = receipt.0.split_once('.')?;
    Some((id.parse().ok()?, i64::from_str_radix(token, 16).ok()?))
}

/// Find the in-flight message a receipt names: (id, key).
fn leased(
    ctx: &Ctx<'_>,
    queue: &str,
    receipt: &Receipt,
    now: i64,
) -> Result<Result<(i64, Option<String>), ReceiptError>, QueueError> {
    let Some((id, token)) = parse_receipt(receipt) else {
        return Ok(Err(ReceiptError::Unknown));
    };
    let row: Option<(String, Option<i64>, i64, Option<String>)> = ctx
        .conn
        .prepare_cached("SELECT queue, token, visible_ms, key FROM q_messages WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()
        })
        .map_err(|e| ctx.sql_err(e))?;
    Ok(match row {
        Some((q, Some(t), visible_ms, key)) if q == queue => {
            if t == token && visible_ms > now {
                Ok((id, key))
            } else {
                Err(ReceiptError::Expired)
            }
        }
        _ => Err(ReceiptError::Unknown),
    })
}

pub(crate) fn ack_batch(
    ctx: &mut Ctx<'_>,
    queue: &str,
    receipts: &[Receipt],
) -> Result<Vec<Result<(), ReceiptError>>, QueueError> {
    let now = ctx.now();
    let mut out = Vec::with_capacity(receipts.len());
    for receipt in receipts {
        match leased(ctx, queue, receipt, now)? {
            Ok((id, key)) => {
                delete(ctx, id)?;
                promote(ctx, queue, key.as_deref())?;
                out.push(Ok(()));
            }
            Err(e) => out.push(Err(e)),
        }
    }
    Ok(out)
}

/// Extend (`release = false`) or give back (`release = true`) a received message.
pub(crate) fn set_visibility(
    ctx: &mut Ctx<'_>,
    queue: &str,
    receipt: &Receipt,
    after: std::time::Duration,
    release: bool,
) -> Result<(), QueueError> {
    let now = ctx.now();
    let (id, _) = leased(ctx, queue, receipt, now)??;
    let visible = now.saturating_add(ms(after));
    let sql = if release {
        "UPDATE q_messages SET visible_ms = ?2, token = NULL WHERE id = ?1"
    } else {
        "UPDATE q_messages SET visible_ms = ?2 WHERE id = ?1"
    };
    ctx.conn
        .prepare_cached(sql)
        .and_then(|mut s| s.execute(params![id, visible]))
        .map_err(|e| ctx.sql_err(e))?;
    if release && after.is_zero() {
        ctx.touched.push(queue.to_owned());
    }
    Ok(())
}

/// Drop messages past their TTL that are not leased; returns how many.
fn sweep_expired(ctx: &mut Ctx<'_>, queue: &str, now: i64) -> Result<u64, QueueError> {
    let expired: Vec<(i64, Option<String>)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, key FROM q_messages WHERE queue = ?1 AND expires_ms <= ?2
             AND visible_ms <= ?2 LIMIT 10000",
        )
        .and_then(|mut s| {
            s.query_map(params![queue, now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(|e| ctx.sql_err(e))?;
    for (id, key) in &expired {
        delete(ctx, *id)?;
        bump_counter(ctx, queue, "expired")?;
        promote(ctx, queue, key.as_deref())?;
    }
    Ok(expired.len() as u64)
}

pub(crate) fn stats(ctx: &mut Ctx<'_>, queue: &str) -> Result<QueueStats, QueueError> {
    let now = ctx.now();
    sweep_expired(ctx, queue, now)?;
    let conn = ctx.conn;
    let mut st = conn
        .prepare_cached(
            "SELECT
               COALESCE(SUM(visible_ms <= ?2), 0),
               COALESCE(SUM(visible_ms > ?2 AND visible_ms < ?3 AND token IS NOT NULL), 0),
               COALESCE(SUM(visible_ms > ?2 AND visible_ms < ?3 AND token IS NULL), 0),
               COALESCE(SUM(visible_ms = ?3), 0),
               MIN(enqueued_ms)
             FROM q_messages WHERE queue = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![queue, now, WAITING_ON_KEY], |r| {
                let oldest: Option<i64> = r.get(4)?;
                Ok(QueueStats {
                    visible: r.get::<_, i64>(0)? as u64,
                    in_flight: r.get::<_, i64>(1)? as u64,
                    delayed: r.get::<_, i64>(2)? as u64,
                    waiting_on_key: r.get::<_, i64>(3)? as u64,
                    oldest_age_ms: oldest.map(|o| (now - o).max(0) as u64).unwrap_or(0),
                    ..QueueStats::default()
                })
            })
        })
        .map_err(|e| ctx.sql_err(e))?;
    st.dlq_depth = conn
        .prepare_cached("SELECT COUNT(*) FROM q_messages WHERE queue = ?1")
        .and_then(|mut s| s.query_row([dlq_name(queue)], |r| r.get::<_, i64>(0)))
        .map_err(|e| ctx.sql_err(e))? as u64;
    if let Some((expired, dead)) = conn
        .prepare_cached("SELECT expired, dead_lettered FROM q_counters WHERE queue = ?1")
        .and_then(|mut s| {
            s.query_row([queue], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .optional()
        })
        .map_err(|e| ctx.sql_err(e))?
    {
        st.expired_total = expired as u64;
        st.dead_lettered_total = dead as u64;
    }
    Ok(st)
}

pub(crate) fn dlq_list(
    ctx: &mut Ctx<'_>,
    queue: &str,
    max: usize,
) -> Result<Vec<DeadLetter>, QueueError> {
    ctx.conn
        .prepare_cached(
            "SELECT id, body, dead_count, enqueued_ms FROM q_messages
             WHERE queue = ?1 ORDER BY id LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![dlq_name(queue), max as i64], |r| {
                Ok(DeadLetter {
                    id: r.get::<_, i64>(0)?.to_string(),
                    body: r.get(1)?,
                    receive_count: r.get(2)?,
                    first_enqueued_ms: r.get(3)?,
                })
            })?
            .collect()
        })
        .map_err(|e| ctx.sql_err(e))
}

pub(crate) fn redrive(ctx: &mut Ctx<'_>, queue: &str, max: usize) -> Result<usize, QueueError> {
    let now = ctx.now();
    let rows: Vec<(i64, Vec<u8>, Option<String>, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT id, body, dead_key, enqueued_ms FROM q_messages
             WHERE queue = ?1 ORDER BY id LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![dlq_name(queue), max as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
        .map_err(|e| ctx.sql_err(e))?;
    for (id, body, key, enqueued_ms) in &rows {
        delete(ctx, *id)?;
        insert(ctx, queue, body, key.as_deref(), *enqueued_ms, now, None)?;
    }
    Ok(rows.len())
}

// ---- logs -------------------------------------------------------------------------------

fn log_meta(ctx: &Ctx<'_>, log: &str) -> Result<(u64, u64), QueueError> {
    let row: Option<(i64, i64)> = ctx
        .conn
        .prepare_cached("SELECT next_pos, total_bytes FROM log_meta WHERE log = ?1")
        .and_then(|mut s| {
            s.query_row([log], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| ctx.sql_err(e))?;
    Ok(row.map(|(n, b)| (n as u64, b as u64)).unwrap_or((0, 0)))
}

pub(crate) fn log_append(
    ctx: &mut Ctx<'_>,
    log: &str,
    bodies: Vec<Vec<u8>>,
) -> Result<Vec<u64>, QueueError> {
    let now = ctx.now();
    let (mut next, mut total) = log_meta(ctx, log)?;
    let mut offsets = Vec::with_capacity(bodies.len());
    {
        let mut insert = ctx
            .conn
            .prepare_cached(
                "INSERT INTO log_entries (log, pos, ts_ms, end_bytes, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(|e| ctx.sql_err(e))?;
        for body in &bodies {
            total += body.len() as u64;
            insert
                .execute(params![log, next as i64, now, total as i64, body])
                .map_err(|e| ctx.sql_err(e))?;
            offsets.push(next);
            next += 1;
        }
    }
    ctx.conn
        .prepare_cached(
            "INSERT INTO log_meta (log, next_pos, total_bytes) VALUES (?1, ?2, ?3)
             ON CONFLICT (log) DO UPDATE SET next_pos = ?2, total_bytes = ?3",
        )
        .and_then(|mut s| s.execute(params![log, next as i64, total as i64]))
        .map_err(|e| ctx.sql_err(e))?;
    Ok(offsets)
}

pub(crate) fn log_read(
    ctx: &mut Ctx<'_>,
    log: &str,
    from: u64,
    max: usize,
) -> Result<Vec<LogEntry>, QueueError> {
    ctx.conn
        .prepare_cached(
            "SELECT pos, ts_ms, body FROM log_entries WHERE log = ?1 AND pos >= ?2
             ORDER BY pos LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(
                params![log, from.min(i64::MAX as u64) as i64, max as i64],
                |r| {
                    Ok(LogEntry {
                        offset: r.get::<_, i64>(0)? as u64,
                        ts_ms: r.get(1)?,
                        body: r.get(2)?,
                    })
                },
            )?
            .collect()
        })
        .map_err(|e| ctx.sql_err(e))
}

fn first_pos(ctx: &Ctx<'_>, log: &str) -> Result<Option<u64>, QueueError> {
    let first: Option<i64> = ctx
        .conn
        .prepare_cached("SELECT MIN(pos) FROM log_entries WHERE log = ?1")
        .and_then(|mut s| s.query_row([log], |r| r.get(0)))
        .map_err(|e| ctx.sql_err(e))?;
    Ok(first.map(|f| f as u64))
}

fn group_pos(ctx: &Ctx<'_>, log: &str, group: &str) -> Result<Option<u64>, QueueError> {
    let pos: Option<i64> = ctx
        .conn
        .prepare_cached("SELECT next_pos FROM log_groups WHERE log = ?1 AND grp = ?2")
        .and_then(|mut s| s.query_row([log, group], |r| r.get(0)).optional())
        .map_err(|e| ctx.sql_err(e))?;
    Ok(pos.map(|p| p as u64))
}

fn unknown_group(log: &str, group: &str) -> QueueError {
    QueueError::UnknownGroup {
        log: log.to_owned(),
        group: group.to_owned(),
    }
}

pub(crate) fn create_group(
    ctx: &mut Ctx<'_>,
    log: &str,
    group: &str,
    start: StartAt,
) -> Result<u64, QueueError> {
    if let Some(pos) = group_pos(ctx, log, group)? {
        return Ok(pos);
    }
    let (next, _) = log_meta(ctx, log)?;
    let pos = match start {
        StartAt::Earliest => first_pos(ctx, log)?.unwrap_or(next),
        StartAt::Latest => next,
    };
    ctx.conn
        .prepare_cached("INSERT INTO log_groups (log, grp, next_pos) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![log, group, pos as i64]))
        .map_err(|e| ctx.sql_err(e))?;
    Ok(pos)
}

pub(crate) fn group_read(
    ctx: &mut Ctx<'_>,
    log: &str,
    group: &str,
    max: usize,
) -> Result<Vec<LogEntry>, QueueError> {
    let pos = group_pos(ctx, log, group)?.ok_or_else(|| unknown_group(log, group))?;
    log_read(ctx, log, pos, max)
}

pub(crate) fn commit(
    ctx: &mut Ctx<'_>,
    log: &str,
    group: &str,
    next: u64,
) -> Result<(), QueueError> {
    let (end, _) = log_meta(ctx, log)?;
    if next > end {
        return Err(QueueError::InvalidArgument(format!(
            "commit offset {next} is past the end of log {log} ({end})"
        )));
    }
    let changed = ctx
        .conn
        .prepare_cached(
            "UPDATE log_groups SET next_pos = MAX(next_pos, ?3) WHERE log = ?1 AND grp = ?2",
        )
        .and_then(|mut s| s.execute(params![log, group, next as i64]))
        .map_err(|e| ctx.sql_err(e))?;
    if changed == 0 {
        Err(unknown_group(log, group))
    } else {
        Ok(())
    }
}

pub(crate) fn apply_retention(
    ctx: &mut Ctx<'_>,
    log: &str,
    retention: Retention,
) -> Result<u64, QueueError> {
    let now = ctx.now();
    let (next, total) = log_meta(ctx, log)?;
    // Entries are ordered by both time and size: find the first entry to keep, delete the rest.
    // By size, an entry is kept only if it and everything after it fit in `max_bytes`.
    let mut keep_from: u64 = 0;
    if let Some(age) = retention.max_age {
        let cutoff = now.saturating_sub(ms(age));
        let first_young: Option<i64> = ctx
            .conn
            .prepare_cached(
                "SELECT pos FROM log_entries WHERE log = ?1 AND ts_ms >= ?2 ORDER BY pos LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![log, cutoff], |r| r.get(0)).optional())
            .map_err(|e| ctx.sql_err(e))?;
        keep_from = keep_from.max(first_young.map(|p| p as u64).unwrap_or(next));
    }
    if let Some(max_bytes) = retention.max_bytes {
        let threshold = total.saturating_sub(max_bytes) as i64;
        let first_small: Option<i64> = ctx
            .conn
            .prepare_cached(
                "SELECT pos FROM log_entries WHERE log = ?1 AND end_bytes - length(body) >= ?2
                 ORDER BY pos LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![log, threshold], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| ctx.sql_err(e))?;
        keep_from = keep_from.max(first_small.map(|p| p as u64).unwrap_or(next));
    }
    let removed = ctx
        .conn
        .prepare_cached("DELETE FROM log_entries WHERE log = ?1 AND pos < ?2")
        .and_then(|mut s| s.execute(params![log, keep_from as i64]))
        .map_err(|e| ctx.sql_err(e))?;
    Ok(removed as u64)
}

pub(crate) fn log_stats(ctx: &mut Ctx<'_>, log: &str) -> Result<LogStats, QueueError> {
    let (next, total) = log_meta(ctx, log)?;
    let first: Option<(i64, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT pos, end_bytes - length(body) FROM log_entries WHERE log = ?1
             ORDER BY pos LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row([log], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| ctx.sql_err(e))?;
    Ok(match first {
        Some((pos, start_bytes)) => LogStats {
            first_offset: pos as u64,
            next_offset: next,
            retained_bytes: total - start_bytes as u64,
        },
        None => LogStats {
            first_offset: next,
            next_offset: next,
            retained_bytes: 0,
        },
    })
}
