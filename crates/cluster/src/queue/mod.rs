//! The distributed backend: the [`Queue`] and [`Log`] traits on Redis.
//!
//! # Queues
//! Each operation is one Lua script, so it is atomic on the server and a crash of the client
//! at any point leaves a consistent state; with `appendfsync always`, Redis has it on disk
//! before it answers. The layout is described at the top of `scripts.lua`. Why not consumer
//! groups of Redis Streams (XREADGROUP, XAUTOCLAIM) for queues: the contract needs delays,
//! TTLs, per-key FIFO (one message per key in flight, or one run of them; a nacked head keeps
//! its place) and a
//! receive count that decides dead-lettering, and a stream's pending-entries list can express
//! none of the first three; sorted sets scored by visible-at and lease-until, scripted, give
//! all of them with the same guarantees. Logs, which are append-only, do use Streams.
//!
//! Time is the Redis server's clock, so clients on several machines agree on visibility.
//! A long poll that finds nothing waits on the queue's wake-up list (a blocking pop on a
//! connection of its own, since a blocking command would hold the shared one). A token is
//! pushed whenever a message becomes visible that no clock foresaw: a send, an ack that frees
//! a key's next message, a nack, a redrive, a dead letter (on the DLQ). What a clock decides
//! (a delay coming due, a lease lapsing) wakes no one, so the receive that found nothing
//! says when the first of those is, and the poll waits at most until then, and never longer
//! than [`WAKE_EVERY`] (a safety net: an idle queue's consumers look twice a second, not
//! twenty times).
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

mod log;
mod scripts;

use async_trait::async_trait;
use hubbub_queue::types::*;
use hubbub_queue::{Queue, QueueError, ReceiptError};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use scripts::Scripts;
use std::sync::Arc;
use std::time::Duration;

/// How long a long poll waits for a wake-up before it looks again anyway.
pub const WAKE_EVERY: Duration = Duration::from_millis(500);
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
    /// The longest a long poll waits before it looks again without being woken
    /// ([`WAKE_EVERY`]; tests raise it to show that every wake-up comes).
    pub wake_every: Duration,
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
            wake_every: WAKE_EVERY,
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
                    .set_response_timeout(Some(self.config.wake_every + self.config.timeout));
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
        let wait = max.as_secs_f64().max(0.001);
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

    /// One look: the messages leased, or with none, how soon something may be due (a delayed
    /// message, a lease that lapses; `None`: nothing is scheduled).
    async fn receive_once(
        &self,
        queue: &str,
        opts: ReceiveOptions,
    ) -> Result<(Vec<Delivery>, Option<Duration>), QueueError> {
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = self
            .scripts
            .receive
            .arg(self.prefix(queue))
            .arg(self.prefix(&dlq_name(queue)))
            .arg(opts.max)
            .arg(opts.visibility.as_millis() as u64)
            .arg(self.config.default_queue.max_receives)
            .arg(opts.max_run.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if let [due] = raw.as_slice() {
            let ms: i64 =
                redis::from_redis_value_ref(due).map_err(|e| QueueError::Storage(e.to_string()))?;
            return Ok((
                Vec::new(),
                u64::try_from(ms).ok().map(Duration::from_millis),
            ));
        }
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
        Ok((out, None))
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
            let (got, due_in) = self.receive_once(queue, opts).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let wait = (deadline - now).min(self.config.wake_every);
            self.wait_for_send(queue, due_in.map_or(wait, |d| wait.min(d)))
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
