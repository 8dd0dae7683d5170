//! The distributed backend: the [`Queue`] and [`Log`] traits on Redis.
//!
//! # Queues
//! Each operation is one Lua script, so it is atomic on the server and a crash of the client
//! at any point leaves a consistent state; with `appendfsync always`, Redis has it on disk
//! before it answers. The layout is described at the top of `scripts.lua`. Why not consumer
//! groups of Redis Streams (XREADGROUP, XAUTOCLAIM) for queues: the contract needs delays,
//! TTLs, per-key FIFO (one message per key in flight, a nacked head keeps its place) and a
//! receive count that decides dead-lettering, and a stream's pending-entries list can express
//! none of the first three; sorted sets scored by visible-at and lease-until, scripted, give
//! all of them with the same guarantees. Logs, which are append-only, do use Streams.
//!
//! Time is the Redis server's clock, so clients on several machines agree on visibility.
//! A long poll that finds nothing waits on the queue's wake-up list (every send pushes a
//! token; a blocking pop on a connection of its own, since a blocking command would hold
//! the shared one) for at most [`WAKE_EVERY`], then looks again (delays and lapsed leases
//! wake no one).
//!
//! # Logs
//! A log is a stream whose entry ids are `0-<offset + 1>`, with a hash of its next offset,
//! first retained offset and retained bytes, and a hash of consumer groups' committed
//! offsets.
//!
//! # Failure
//! The connection manager reconnects by itself. While Redis is unreachable every operation
//! fails fast with [`QueueError::Unavailable`] (connection and response timeouts are short),
//! and nothing of a failed operation was applied (one script, or none).

use crate::types::*;
use crate::{Log, Queue, QueueError, ReceiptError};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use std::sync::Arc;
use std::time::Duration;

/// How long a long poll waits for a wake-up before it looks again anyway.
pub const WAKE_EVERY: Duration = Duration::from_millis(50);
/// How long to wait before looking again when the wake-up list cannot be used.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Every key starts with this (several deployments, or tests, can share a server).
    pub namespace: String,
    /// Largest message body.
    pub max_body_bytes: usize,
    /// Queue settings for queues not declared otherwise.
    pub default_queue: QueueConfig,
    /// How long a dedupe id is remembered.
    pub dedupe_window: Duration,
    /// How long an operation may take before it fails as `Unavailable`.
    pub timeout: Duration,
}

impl RedisConfig {
    /// Defaults for a URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            namespace: "hubbub".into(),
            max_body_bytes: 256 * 1024,
            default_queue: QueueConfig::default(),
            dedupe_window: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
        }
    }
}

struct Scripts {
    send: Script,
    receive: Script,
    ack: Script,
    extend: Script,
    nack: Script,
    stats: Script,
    dlq_list: Script,
    redrive: Script,
    append: Script,
    retention: Script,
}

const HELPERS: &str = include_str!("scripts.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{HELPERS}\n{body}"))
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            // ARGV: prefix, dedupe window ms, then per message: body, key, delay, ttl, dedupe.
            send: script(
                r#"
local p = ARGV[1]; local window = tonumber(ARGV[2])
local now = now_ms(); local out = {}
local i = 3
while i <= #ARGV do
  local body, key, delay, ttl, dd = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), tonumber(ARGV[i+3]), ARGV[i+4]
  i = i + 5
  local id = nil
  if dd ~= '' then id = redis.call('GET', p .. ':dd:' .. dd) end
  if id then
    out[#out+1] = id; out[#out+1] = 1
  else
    local exp = 0
    if ttl > 0 then exp = now + ttl end
    id = enqueue(p, body, key, delay, exp, now, now)
    if dd ~= '' then redis.call('SET', p .. ':dd:' .. dd, id, 'PX', window) end
    out[#out+1] = id; out[#out+1] = 0
  end
end
redis.call('LPUSH', p .. ':wake', 1)
redis.call('LTRIM', p .. ':wake', 0, 0)
return out
"#,
            ),
            // ARGV: prefix, dlq prefix, max, visibility ms, default max receives.
            receive: script(
                r#"
local p, d = ARGV[1], ARGV[2]
local max, vis = tonumber(ARGV[3]), tonumber(ARGV[4])
local maxr = max_receives(p, tonumber(ARGV[5]))
local now = now_ms()
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':inflight', '-inf', now)) do
  redis.call('ZREM', p .. ':inflight', id)
  local f = redis.call('HMGET', p .. ':m:' .. id, 'c', 'lu')
  if tonumber(f[1]) >= maxr then
    dead_letter(p, d, id, now)
  else
    redis.call('HSET', p .. ':m:' .. id, 'l', 0)
    redis.call('ZADD', p .. ':vis', tonumber(f[2]), id)
  end
end
local out = {}; local got = 0
while got < max do
  local ids = redis.call('ZRANGEBYSCORE', p .. ':vis', '-inf', now, 'LIMIT', 0, max - got)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local m = p .. ':m:' .. id
    local f = redis.call('HMGET', m, 'e', 'k', 'b', 'f')
    local e = tonumber(f[1])
    if e > 0 and e <= now then
      redis.call('HINCRBY', p .. ':st', 'expired', 1)
      remove_msg(p, id)
      release_key(p, f[2], now)
    else
      local c = redis.call('HINCRBY', m, 'c', 1)
      local tok = redis.call('INCR', p .. ':lease')
      redis.call('HSET', m, 'l', tok, 'lu', now + vis)
      redis.call('ZREM', p .. ':vis', id)
      redis.call('ZADD', p .. ':inflight', now + vis, id)
      out[#out+1] = id; out[#out+1] = tostring(tok); out[#out+1] = f[3]
      out[#out+1] = f[2]; out[#out+1] = c; out[#out+1] = f[4]
      got = got + 1
    end
  end
end
return out
"#,
            ),
            // ARGV: prefix, then id, token pairs. One code per receipt.
            ack: script(
                r#"
local p = ARGV[1]; local now = now_ms(); local out = {}
local i = 2
while i <= #ARGV do
  local id, tok = ARGV[i], ARGV[i+1]
  i = i + 2
  local code = check(p, id, tok, now)
  if code == 0 then
    local key = redis.call('HGET', p .. ':m:' .. id, 'k')
    remove_msg(p, id)
    release_key(p, key, now)
  end
  out[#out+1] = code
end
return out
"#,
            ),
            // ARGV: prefix, id, token, visibility ms.
            extend: script(
                r#"
local p, id, tok = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local code = check(p, id, tok, now)
if code == 0 then
  local lu = now + tonumber(ARGV[4])
  redis.call('HSET', p .. ':m:' .. id, 'lu', lu)
  redis.call('ZADD', p .. ':inflight', lu, id)
end
return code
"#,
            ),
            // ARGV: prefix, id, token, dlq prefix, delay ms, default max receives.
            nack: script(
                r#"
local p, id, tok, d = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local code = check(p, id, tok, now)
if code == 0 then
  local m = p .. ':m:' .. id
  redis.call('ZREM', p .. ':inflight', id)
  if tonumber(redis.call('HGET', m, 'c')) >= max_receives(p, tonumber(ARGV[6])) then
    dead_letter(p, d, id, now)
  else
    redis.call('HSET', m, 'l', 0, 'lu', 0)
    redis.call('ZADD', p .. ':vis', now + tonumber(ARGV[5]), id)
  end
end
return code
"#,
            ),
            // ARGV: prefix, dlq prefix.
            stats: script(
                r#"
local p, d = ARGV[1], ARGV[2]
local now = now_ms()
local visible = redis.call('ZCOUNT', p .. ':vis', '-inf', now) + redis.call('ZCOUNT', p .. ':inflight', '-inf', now)
local in_flight = redis.call('ZCOUNT', p .. ':inflight', '(' .. now, '+inf')
local delayed = redis.call('ZCOUNT', p .. ':vis', '(' .. now, '+inf')
local st = redis.call('HMGET', p .. ':st', 'waiting', 'expired', 'dead')
local dlq = redis.call('ZCARD', d .. ':all')
local oldest = 0
local first = redis.call('ZRANGE', p .. ':all', 0, 0, 'WITHSCORES')
if #first > 0 then oldest = now - tonumber(first[2]) end
if oldest < 0 then oldest = 0 end
return {visible, in_flight, delayed, tonumber(st[1] or '0'), dlq, oldest,
        tonumber(st[2] or '0'), tonumber(st[3] or '0')}
"#,
            ),
            // ARGV: dlq prefix, max.
            dlq_list: script(
                r#"
local d = ARGV[1]; local out = {}
for _, id in ipairs(redis.call('ZRANGE', d .. ':all', 0, tonumber(ARGV[2]) - 1)) do
  local f = redis.call('HMGET', d .. ':m:' .. id, 'b', 'dc', 'f')
  out[#out+1] = id; out[#out+1] = f[1]; out[#out+1] = f[2] or '0'; out[#out+1] = f[3]
end
return out
"#,
            ),
            // ARGV: prefix, dlq prefix, max.
            redrive: script(
                r#"
local p, d = ARGV[1], ARGV[2]
local now = now_ms(); local moved = 0
for _, id in ipairs(redis.call('ZRANGE', d .. ':all', 0, tonumber(ARGV[3]) - 1)) do
  local f = redis.call('HMGET', d .. ':m:' .. id, 'b', 'ok', 'f')
  enqueue(p, f[1], f[2] or '', 0, 0, tonumber(f[3]), now)
  remove_msg(d, id)
  moved = moved + 1
end
return moved
"#,
            ),
            // KEYS: stream, meta. ARGV: bodies. Returns offsets.
            append: Script::new(
                r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSETNX', KEYS[2], 'first', 0)
local out = {}
for _, b in ipairs(ARGV) do
  local off = redis.call('HINCRBY', KEYS[2], 'next', 1) - 1
  redis.call('XADD', KEYS[1], '0-' .. (off + 1), 'b', b, 't', now)
  redis.call('HINCRBY', KEYS[2], 'bytes', #b)
  out[#out+1] = off
end
return out
"#,
            ),
            // KEYS: stream, meta. ARGV: max age ms (0 none), max bytes (-1 none).
            retention: Script::new(
                r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_age, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local meta = redis.call('HMGET', KEYS[2], 'first', 'next', 'bytes')
local first, bytes = tonumber(meta[1] or '0'), tonumber(meta[3] or '0')
local removed = 0
while true do
  local entries = redis.call('XRANGE', KEYS[1], '0-' .. (first + 1), '+', 'COUNT', 100)
  if #entries == 0 then break end
  local stop = false
  for _, e in ipairs(entries) do
    local fields = e[2]; local body, ts = '', 0
    for j = 1, #fields, 2 do
      if fields[j] == 'b' then body = fields[j+1] elseif fields[j] == 't' then ts = tonumber(fields[j+1]) end
    end
    local old = max_age > 0 and ts < now - max_age
    local big = max_bytes >= 0 and bytes > max_bytes
    if old or big then
      redis.call('XDEL', KEYS[1], e[1])
      bytes = bytes - #body
      first = tonumber(string.match(e[1], '-(%d+)$'))
      removed = removed + 1
    else
      stop = true
      break
    end
  end
  if stop then break end
end
redis.call('HSET', KEYS[2], 'first', first, 'bytes', bytes)
return removed
"#,
            ),
        }
    }
}

/// The Redis [`Queue`] and [`Log`].
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    client: redis::Client,
    /// Connections for blocking pops (one per waiting receiver), reused.
    blocking: Arc<std::sync::Mutex<Vec<redis::aio::MultiplexedConnection>>>,
    config: Arc<RedisConfig>,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("namespace", &self.config.namespace)
            .finish()
    }
}

fn unavailable(e: redis::RedisError) -> QueueError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        QueueError::Unavailable(e.to_string())
    } else {
        QueueError::Storage(e.to_string())
    }
}

/// Parse a receipt `<id>.<token>`; `None` for anything else.
fn parse_receipt(r: &Receipt) -> Option<(String, String)> {
    let (id, tok) = r.0.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(id) && digits(tok)).then(|| (id.to_owned(), tok.to_owned()))
}

fn receipt_code(code: i64) -> Result<(), ReceiptError> {
    match code {
        0 => Ok(()),
        2 => Err(ReceiptError::Expired),
        _ => Err(ReceiptError::Unknown),
    }
}

impl RedisQueue {
    /// A backend for this server; connects lazily (a Redis that is down makes operations fail
    /// with `Unavailable` until it is back).
    pub fn connect(config: RedisConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| QueueError::InvalidArgument(format!("redis url: {e}")))?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(unavailable)?;
        Ok(RedisQueue {
            conn,
            client,
            blocking: Arc::default(),
            config: Arc::new(config),
            scripts: Arc::new(Scripts::new()),
        })
    }

    /// A connection (cheap clone of the multiplexed one), for other Redis-backed components
    /// sharing this server.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    fn prefix(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.config.namespace)
    }

    fn log_keys(&self, log: &str) -> (String, String, String) {
        let base = format!("{}:l:{log}", self.config.namespace);
        (
            base.clone(),
            format!("{base}:meta"),
            format!("{base}:groups"),
        )
    }

    fn check_body(&self, len: usize) -> Result<(), QueueError> {
        check_body(len, self.config.max_body_bytes)
    }

    /// Run a script that takes (prefix, id, token, ...) and answers a receipt code.
    async fn on_receipt(
        &self,
        script: &Script,
        queue: &str,
        receipt: &Receipt,
        more: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<(), QueueError> {
        validate_name(queue)?;
        let (id, tok) = parse_receipt(receipt).ok_or(ReceiptError::Unknown)?;
        let mut inv = script.prepare_invoke();
        inv.arg(self.prefix(queue)).arg(id).arg(tok);
        more(&mut inv);
        let mut conn = self.conn.clone();
        let code: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(receipt_code(code)?)
    }

    /// Wait up to `max` for a send to `queue` (best effort: on any trouble, a short sleep).
    async fn wait_for_send(&self, queue: &str, max: Duration) {
        let pooled = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let conn = match pooled {
            Some(c) => Some(c),
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.config.timeout))
                    .set_response_timeout(Some(WAKE_EVERY + self.config.timeout));
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .ok()
            }
        };
        let Some(mut conn) = conn else {
            tokio::time::sleep(POLL_EVERY.min(max)).await;
            return;
        };
        let wait = max.min(WAKE_EVERY).as_secs_f64().max(0.001);
        let popped: Result<Option<(String, String)>, _> = redis::cmd("BLPOP")
            .arg(format!("{}:wake", self.prefix(queue)))
            .arg(wait)
            .query_async(&mut conn)
            .await;
        match popped {
            Ok(_) => self
                .blocking
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn),
            // A broken connection is dropped; the next wait opens another.
            Err(_) => tokio::time::sleep(POLL_EVERY.min(max)).await,
        }
    }

    async fn receive_once(
        &self,
        queue: &str,
        opts: ReceiveOptions,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = self
            .scripts
            .receive
            .arg(self.prefix(queue))
            .arg(self.prefix(&dlq_name(queue)))
            .arg(opts.max)
            .arg(opts.visibility.as_millis() as u64)
            .arg(self.config.default_queue.max_receives)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(raw.len() / 6);
        for chunk in raw.chunks_exact(6) {
            let s = |v: &redis::Value| -> Result<String, QueueError> {
                redis::from_redis_value_ref::<String>(v)
                    .map_err(|e| QueueError::Storage(e.to_string()))
            };
            let id = s(&chunk[0])?;
            let token = s(&chunk[1])?;
            let body: Vec<u8> = redis::from_redis_value_ref(&chunk[2])
                .map_err(|e| QueueError::Storage(e.to_string()))?;
            let key = s(&chunk[3])?;
            let count: u32 = redis::from_redis_value_ref(&chunk[4])
                .map_err(|e| QueueError::Storage(e.to_string()))?;
            let first: i64 = s(&chunk[5])?
                .parse()
                .map_err(|_| QueueError::Storage("first enqueued time".into()))?;
            out.push(Delivery {
                receipt: Receipt(format!("{id}.{token}")),
                id,
                body,
                key: (!key.is_empty()).then_some(key),
                receive_count: count,
                first_enqueued_ms: first,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn declare(&self, queue: &str, config: QueueConfig) -> Result<(), QueueError> {
        validate_name(queue)?;
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset(
                format!("{}:cfg", self.prefix(queue)),
                "maxr",
                config.max_receives.max(1),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<SendOutcome>, QueueError> {
        validate_name(queue)?;
        for m in &messages {
            self.check_body(m.body.len())?;
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.send.prepare_invoke();
        inv.arg(self.prefix(queue))
            .arg(self.config.dedupe_window.as_millis().max(1) as u64);
        for m in &messages {
            inv.arg(m.body.as_slice())
                .arg(m.opts.key.as_deref().unwrap_or(""))
                .arg(m.opts.delay.as_millis() as u64)
                .arg(m.opts.ttl.map_or(0, |t| t.as_millis().max(1) as u64))
                .arg(m.opts.dedupe_id.as_deref().unwrap_or(""));
        }
        let mut conn = self.conn.clone();
        let raw: Vec<(String, i64)> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .map(|(id, dup)| SendOutcome {
                id,
                duplicate: dup == 1,
            })
            .collect())
    }

    async fn receive(
        &self,
        queue: &str,
        opts: ReceiveOptions,
    ) -> Result<Vec<Delivery>, QueueError> {
        validate_name(queue)?;
        check_max(opts.max)?;
        let deadline = tokio::time::Instant::now() + opts.wait;
        loop {
            let got = self.receive_once(queue, opts).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            self.wait_for_send(queue, deadline - tokio::time::Instant::now())
                .await;
        }
    }

    async fn ack_batch(
        &self,
        queue: &str,
        receipts: &[Receipt],
    ) -> Result<Vec<Result<(), ReceiptError>>, QueueError> {
        validate_name(queue)?;
        let parsed: Vec<Option<(String, String)>> = receipts.iter().map(parse_receipt).collect();
        let mut inv = self.scripts.ack.prepare_invoke();
        inv.arg(self.prefix(queue));
        let mut any = false;
        for (id, tok) in parsed.iter().flatten() {
            inv.arg(id).arg(tok);
            any = true;
        }
        let codes: Vec<i64> = if any {
            let mut conn = self.conn.clone();
            inv.invoke_async(&mut conn).await.map_err(unavailable)?
        } else {
            Vec::new()
        };
        let mut codes = codes.into_iter();
        Ok(parsed
            .iter()
            .map(|p| match p {
                Some(_) => receipt_code(codes.next().unwrap_or(1)),
                None => Err(ReceiptError::Unknown),
            })
            .collect())
    }

    async fn extend(
        &self,
        queue: &str,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        let visibility = visibility.as_millis() as u64;
        self.on_receipt(&self.scripts.extend, queue, receipt, |inv| {
            inv.arg(visibility);
        })
        .await
    }

    async fn nack(
        &self,
        queue: &str,
        receipt: &Receipt,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let dlq = self.prefix(&dlq_name(queue));
        let max_receives = self.config.default_queue.max_receives;
        self.on_receipt(&self.scripts.nack, queue, receipt, |inv| {
            inv.arg(&dlq)
                .arg(delay.as_millis() as u64)
                .arg(max_receives);
        })
        .await
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        validate_name(queue)?;
        let mut conn = self.conn.clone();
        let v: Vec<i64> = self
            .scripts
            .stats
            .arg(self.prefix(queue))
            .arg(self.prefix(&dlq_name(queue)))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let g = |i: usize| v.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(QueueStats {
            visible: g(0),
            in_flight: g(1),
            delayed: g(2),
            waiting_on_key: g(3),
            dlq_depth: g(4),
            oldest_age_ms: g(5),
            expired_total: g(6),
            dead_lettered_total: g(7),
        })
    }

    async fn dlq_list(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        validate_name(queue)?;
        let mut conn = self.conn.clone();
        let raw: Vec<(String, Vec<u8>, u32, i64)> = self
            .scripts
            .dlq_list
            .arg(self.prefix(&dlq_name(queue)))
            .arg(max.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .map(|(id, body, receive_count, first_enqueued_ms)| DeadLetter {
                id,
                body,
                receive_count,
                first_enqueued_ms,
            })
            .collect())
    }

    async fn redrive(&self, queue: &str, max: usize) -> Result<usize, QueueError> {
        validate_name(queue)?;
        let mut conn = self.conn.clone();
        let moved: usize = self
            .scripts
            .redrive
            .arg(self.prefix(queue))
            .arg(self.prefix(&dlq_name(queue)))
            .arg(max.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(moved)
    }
}

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
