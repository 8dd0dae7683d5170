//! The [`Log`] trait on Redis Streams: entry ids `0-<offset + 1>`, a hash of the log's next
//! offset, first retained offset and retained bytes, and a hash of consumer groups' committed
//! offsets.

use super::{RedisQueue, unavailable};
use async_trait::async_trait;
use hubbub_queue::types::*;
use hubbub_queue::{Log, QueueError};
use redis::AsyncCommands;

fn entries(reply: redis::streams::StreamRangeReply) -> Result<Vec<LogEntry>, QueueError> {
    reply
        .ids
        .into_iter()
        .map(|e| {
            let offset =
                e.id.rsplit('-')
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .and_then(|n| n.checked_sub(1))
                    .ok_or_else(|| QueueError::Storage(format!("log entry id {}", e.id)))?;
            let body: Vec<u8> = e
                .get("b")
                .ok_or_else(|| QueueError::Storage("log entry without body".into()))?;
            let ts_ms: i64 = e.get("t").unwrap_or(0);
            Ok(LogEntry {
                offset,
                ts_ms,
                body,
            })
        })
        .collect()
}

#[async_trait]
impl Log for RedisQueue {
    async fn append(&self, log: &str, bodies: Vec<Vec<u8>>) -> Result<Vec<u64>, QueueError> {
        validate_name(log)?;
        for b in &bodies {
            self.check_body(b.len())?;
        }
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let (stream, meta, _) = self.log_keys(log);
        let mut inv = self.scripts.append.prepare_invoke();
        inv.key(stream).key(meta);
        for b in &bodies {
            inv.arg(b.as_slice());
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(unavailable)
    }

    async fn read(&self, log: &str, from: u64, max: usize) -> Result<Vec<LogEntry>, QueueError> {
        validate_name(log)?;
        let (stream, _, _) = self.log_keys(log);
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = conn
            .xrange_count(
                stream,
                format!("0-{}", from.saturating_add(1)),
                "+",
                max.max(1),
            )
            .await
            .map_err(unavailable)?;
        entries(reply)
    }

    async fn create_group(
        &self,
        log: &str,
        group: &str,
        start: StartAt,
    ) -> Result<u64, QueueError> {
        validate_name(log)?;
        validate_name(group)?;
        let stats = self.log_stats(log).await?;
        let (_, _, groups) = self.log_keys(log);
        let at = match start {
            StartAt::Earliest => stats.first_offset,
            StartAt::Latest => stats.next_offset,
        };
        let mut conn = self.conn.clone();
        let _: bool = conn
            .hset_nx(&groups, group, at)
            .await
            .map_err(unavailable)?;
        let now: u64 = conn.hget(&groups, group).await.map_err(unavailable)?;
        Ok(now)
    }

    async fn group_read(
        &self,
        log: &str,
        group: &str,
        max: usize,
    ) -> Result<Vec<LogEntry>, QueueError> {
        validate_name(log)?;
        let (_, _, groups) = self.log_keys(log);
        let mut conn = self.conn.clone();
        let at: Option<u64> = conn.hget(&groups, group).await.map_err(unavailable)?;
        let at = at.ok_or_else(|| QueueError::UnknownGroup {
            log: log.to_owned(),
            group: group.to_owned(),
        })?;
        self.read(log, at, max).await
    }

    async fn commit(&self, log: &str, group: &str, next: u64) -> Result<(), QueueError> {
        validate_name(log)?;
        let (_, _, groups) = self.log_keys(log);
        let mut conn = self.conn.clone();
        let at: Option<u64> = conn.hget(&groups, group).await.map_err(unavailable)?;
        let at = at.ok_or_else(|| QueueError::UnknownGroup {
            log: log.to_owned(),
            group: group.to_owned(),
        })?;
        let stats = self.log_stats(log).await?;
        if next > stats.next_offset {
            return Err(QueueError::InvalidArgument(format!(
                "offset {next} is past the end of the log ({})",
                stats.next_offset
            )));
        }
        if next > at {
            // Commits come from the group's one consumer; a racing lower commit is harmless
            // because a later commit moves it forward again.
            let _: () = conn.hset(&groups, group, next).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn apply_retention(&self, log: &str, retention: Retention) -> Result<u64, QueueError> {
        validate_name(log)?;
        let (stream, meta, _) = self.log_keys(log);
        let mut conn = self.conn.clone();
        self.scripts
            .retention
            .key(stream)
            .key(meta)
            .arg(retention.max_age.map_or(0, |a| a.as_millis().max(1) as u64))
            .arg(
                retention
                    .max_bytes
                    .map_or(-1, |b| b.min(i64::MAX as u64) as i64),
            )
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn log_stats(&self, log: &str) -> Result<LogStats, QueueError> {
        validate_name(log)?;
        let (_, meta, _) = self.log_keys(log);
        let mut conn = self.conn.clone();
        let (first, next, bytes): (Option<u64>, Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(&meta)
            .arg("first")
            .arg("next")
            .arg("bytes")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let next = next.unwrap_or(0);
        Ok(LogStats {
            first_offset: first.unwrap_or(next).min(next),
            next_offset: next,
            retained_bytes: bytes.unwrap_or(0),
        })
    }
}
