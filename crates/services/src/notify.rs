//! The notify role: durable events that no device of the user acknowledged in time become
//! push notifications, sent through pluggable providers.
//!
//! A service that appends events enqueues one [`NotifyJob`] on the `notify` queue with a delay
//! (30 s by default) and a dedupe id tied to the request, so a retried request does not notify
//! twice. When the job comes due, the worker drops every recipient whose `acked_seq` reached
//! the event's seq (a device saw it), and sends the rest through each provider, waiting on the
//! provider's token bucket. Recipients that fail with a retryable error go back on the queue
//! as a new job holding only them, after an exponential back-off with jitter, so a partial
//! failure never sends anyone a duplicate. After `max_attempts`, or at once for a permanent
//! error, the job goes to `notify.dlq` (listable and redrivable); past its TTL (2 h) it is
//! dropped and counted. Nothing here sits on the path of live delivery: a provider that hangs
//! only holds this worker, and every request has a timeout.

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use hubbub_protocol::ServerFrame;
use hubbub_queue::clock::now_ms;
use hubbub_queue::{Outgoing, Queue, ReceiveOptions, SendOptions, dlq_name};
use hubbub_store::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The notify queue.
pub const NOTIFY_QUEUE: &str = "notify";

/// Settings of the notify role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Events not acknowledged by any device within this become notifications, seconds.
    pub delay_s: u64,
    /// A notification not delivered within this of its event is dropped (counted), seconds.
    pub ttl_s: u64,
    /// Attempts per recipient before the job goes to the dead-letter queue.
    pub max_attempts: u32,
    /// First retry back-off, milliseconds (doubling each attempt, with jitter, capped at 5 min).
    pub backoff_ms: u64,
    /// The webhook provider (none configured: no push notifications).
    pub webhook: Option<WebhookConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            delay_s: 30,
            ttl_s: 2 * 3600,
            max_attempts: 8,
            backoff_ms: 1000,
            webhook: None,
        }
    }
}

/// A webhook provider: an HTTP POST of a JSON body, signed with HMAC-SHA256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// The HMAC key; the signature is `X-Hubbub-Signature: sha256=<hex>` of
    /// `<X-Hubbub-Timestamp>.<body>`.
    pub secret: String,
    /// Requests per second (token bucket rate).
    #[serde(default = "default_rate")]
    pub rate_per_s: u32,
    /// Token bucket burst.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Per-request timeout, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_rate() -> u32 {
    50
}
fn default_burst() -> u32 {
    100
}
fn default_timeout() -> u64 {
    5000
}

/// One notification, as providers receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The recipient.
    pub user: String,
    /// The event's seq in the recipient's inbox.
    pub seq: u64,
    /// The event itself, as the client would receive it.
    pub event: ServerFrame,
}

/// A notify job: events for some recipients, and how far their delivery got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyJob {
    /// The notifications still to send.
    pub notifications: Vec<Notification>,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the events happened (ms since the epoch), for the TTL.
    pub created_ms: i64,
}

/// Why a provider did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Try again later (timeouts, 5xx, 429).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Trying again will not help (4xx).
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A push provider (webhook today; APNs and FCM fit the same trait).
#[async_trait]
pub trait PushProvider: Send + Sync {
    /// Its name, for metrics and logs.
    fn name(&self) -> &str;
    /// Deliver one notification.
    async fn send(&self, notification: &Notification) -> Result<(), PushError>;
}

/// A token bucket that waits for its token, on tokio's clock (the clock of the wait).
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Bucket {
            tokens: burst.max(1) as f64,
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            last: Instant::now(),
        }
    }
    /// How long to wait before a token is there (zero: taken).
    pub(crate) fn take(&mut self) -> Duration {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

/// The webhook provider.
pub struct Webhook {
    config: WebhookConfig,
    http: reqwest::Client,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.config.url)
            .finish()
    }
}

impl Webhook {
    /// A webhook provider.
    pub fn new(config: WebhookConfig) -> Result<Self, PushError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .build()
            .map_err(|e| PushError::Permanent(e.to_string()))?;
        Ok(Webhook { config, http })
    }
}

/// `sha256=<hex>` of `<timestamp>.<body>` under `secret`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` only fails for fixed-size-key MACs.
    match <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::from("sha256="),
    }
}

#[async_trait]
impl PushProvider for Webhook {
    fn name(&self) -> &str {
        "webhook"
    }

    async fn send(&self, n: &Notification) -> Result<(), PushError> {
        let body = serde_json::to_vec(n).map_err(|e| PushError::Permanent(e.to_string()))?;
        let ts = now_ms().to_string();
        let resp = self
            .http
            .post(&self.config.url)
            .header("content-type", "application/json")
            .header("x-hubbub-timestamp", &ts)
            .header(
                "x-hubbub-signature",
                signature(&self.config.secret, &ts, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| PushError::Retryable(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(PushError::Retryable(format!("HTTP {status}")))
        } else {
            Err(PushError::Permanent(format!("HTTP {status}")))
        }
    }
}

/// Enqueue the notify job for a write's events (all but the actor's own), deduplicated by
/// the request that caused them.
pub async fn enqueue(
    queue: &dyn Queue,
    config: &NotifyConfig,
    dedupe: &str,
    actor: &str,
    events: &[(String, ServerFrame)],
) -> Result<(), hubbub_queue::QueueError> {
    let notifications: Vec<Notification> = events
        .iter()
        .filter(|(user, _)| user != actor)
        .filter_map(|(user, frame)| {
            frame.seq().map(|seq| Notification {
                user: user.clone(),
                seq,
                event: frame.clone(),
            })
        })
        .collect();
    if notifications.is_empty() {
        return Ok(());
    }
    let job = NotifyJob {
        notifications,
        attempts: 0,
        created_ms: now_ms(),
    };
    let body =
        serde_json::to_vec(&job).map_err(|e| hubbub_queue::QueueError::Storage(e.to_string()))?;
    let opts = SendOptions::default()
        .dedupe(format!("notify:{dedupe}"))
        .delay(Duration::from_secs(config.delay_s))
        .ttl(Duration::from_secs(config.delay_s + config.ttl_s));
    queue.send(NOTIFY_QUEUE, body, opts).await.map(|_| ())
}

/// The conversation a durable event comes from, for the recipient's mute; `None` for events of
/// no conversation and for `notification`s (mentions reach a muted conversation's members).
fn conversation_of(event: &ServerFrame) -> Option<&str> {
    match event {
        ServerFrame::MessageNew { message, .. } => Some(&message.conversation),
        ServerFrame::MessageUpdated { message, .. } => Some(&message.conversation),
        ServerFrame::ReactionUpdated { conversation, .. }
        | ServerFrame::ReceiptRead { conversation, .. } => Some(conversation),
        ServerFrame::ConversationUpdated { conversation, .. } => Some(&conversation.id),
        _ => None,
    }
}

/// A provider and its token bucket.
type RateLimited = (Arc<dyn PushProvider>, Arc<Mutex<Bucket>>);

/// The notify worker.
pub struct Notifier {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    providers: Vec<RateLimited>,
    config: NotifyConfig,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("providers", &self.providers.len())
            .finish()
    }
}

impl Notifier {
    /// A worker sending through `providers`, each with its own rate limit.
    pub fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        providers: Vec<(Arc<dyn PushProvider>, u32, u32)>,
        config: NotifyConfig,
    ) -> Self {
        let providers = providers
            .into_iter()
            .map(|(p, rate, burst)| (p, Arc::new(Mutex::new(Bucket::new(rate, burst)))))
            .collect();
        Notifier {
            store,
            queue,
            providers,
            config,
        }
    }

    /// Work the `notify` queue until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let opts = ReceiveOptions {
            max: 16,
            wait: Duration::from_millis(500),
            visibility: Duration::from_secs(120),
            max_run: 1,
        };
        while !cancel.is_cancelled() {
            let got = tokio::select! {
                got = self.queue.receive(NOTIFY_QUEUE, opts) => got,
                _ = cancel.cancelled() => break,
            };
            let deliveries = match got {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "notify: receive failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for d in deliveries {
                let done = match serde_json::from_slice::<NotifyJob>(&d.body) {
                    Ok(job) => self.handle(job).await,
                    Err(e) => {
                        tracing::error!(error = %e, "notify: undecodable job dropped");
                        true
                    }
                };
                let result = if done {
                    self.queue.ack(NOTIFY_QUEUE, &d.receipt).await
                } else {
                    // The store could not be read: try the whole job again shortly.
                    self.queue
                        .nack(NOTIFY_QUEUE, &d.receipt, Duration::from_secs(1))
                        .await
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "notify: ack failed; the job may run again");
                }
            }
        }
    }

    /// Handle one job; false when it must be retried whole (storage unavailable).
    async fn handle(&self, job: NotifyJob) -> bool {
        if now_ms() - job.created_ms > ((self.config.delay_s + self.config.ttl_s) * 1000) as i64 {
            metrics::counter!(hubbub_protocol::metrics::NOTIFY_EXPIRED)
                .increment(job.notifications.len() as u64);
            return true;
        }
        let mut retry = Vec::new();
        let mut dead = Vec::new();
        for n in job.notifications {
            match self.store.acked_seq(&n.user).await {
                Ok(acked) if acked >= n.seq => {
                    metrics::counter!(hubbub_protocol::metrics::NOTIFY_SUPPRESSED).increment(1);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "notify: cannot read acks");
                    return false;
                }
            }
            // A conversation the user muted sends no push (mentions are `notification`s of
            // their own, never muted).
            if let Some(conversation) = conversation_of(&n.event) {
                match self.store.muted(&n.user, conversation, now_ms()).await {
                    Ok(true) => {
                        metrics::counter!(hubbub_protocol::metrics::NOTIFY_SUPPRESSED).increment(1);
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "notify: cannot read mutes");
                        return false;
                    }
                }
            }
            let mut failed = None;
            for (provider, bucket) in &self.providers {
                let wait = bucket.lock().await.take();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                match provider.send(&n).await {
                    Ok(()) => metrics::counter!(hubbub_protocol::metrics::NOTIFY_SENT, "provider" => provider.name().to_owned()).increment(1),
                    Err(e) => {
                        metrics::counter!(hubbub_protocol::metrics::NOTIFY_FAILED, "provider" => provider.name().to_owned()).increment(1);
                        tracing::debug!(provider = provider.name(), error = %e, "notify: send failed");
                        failed = Some(e);
                    }
                }
            }
            match failed {
                None => {}
                Some(PushError::Retryable(_)) if job.attempts + 1 < self.config.max_attempts => {
                    retry.push(n)
                }
                Some(_) => dead.push(n),
            }
        }
        let attempts = job.attempts + 1;
        if !retry.is_empty() {
            let delay = backoff(self.config.backoff_ms, attempts);
            let job = NotifyJob {
                notifications: retry,
                attempts,
                created_ms: job.created_ms,
            };
            if let Err(e) = self.requeue(NOTIFY_QUEUE, &job, delay).await {
                tracing::warn!(error = %e, "notify: cannot requeue; retrying the whole job");
                return false;
            }
        }
        if !dead.is_empty() {
            metrics::counter!(hubbub_protocol::metrics::NOTIFY_DEAD_LETTERED)
                .increment(dead.len() as u64);
            let job = NotifyJob {
                notifications: dead,
                attempts,
                created_ms: job.created_ms,
            };
            if let Err(e) = self
                .requeue(&dlq_name(NOTIFY_QUEUE), &job, Duration::ZERO)
                .await
            {
                tracing::warn!(error = %e, "notify: cannot dead-letter; retrying the whole job");
                return false;
            }
        }
        true
    }

    async fn requeue(
        &self,
        queue: &str,
        job: &NotifyJob,
        delay: Duration,
    ) -> Result<(), hubbub_queue::QueueError> {
        let body = serde_json::to_vec(job)
            .map_err(|e| hubbub_queue::QueueError::Storage(e.to_string()))?;
        self.queue
            .send_batch(
                queue,
                vec![Outgoing {
                    body,
                    opts: SendOptions::default().delay(delay),
                }],
            )
            .await
            .map(|_| ())
    }
}

/// Exponential back-off with full jitter: a random delay up to `base * 2^(attempt-1)`, capped
/// at five minutes (never zero).
pub fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let cap = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .clamp(1, 300_000);
    Duration::from_millis(fastrand::u64(cap / 2..=cap).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for attempt in 1..30 {
            let d = backoff(100, attempt).as_millis() as u64;
            let cap = (100u64 << (attempt - 1).min(20)).min(300_000);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {attempt}: {d} not in [{}, {cap}]",
                cap / 2
            );
        }
    }

    /// Past the burst, a take says how long until the next token, and after that wait
    /// (on paused time) the token is there.
    #[tokio::test(start_paused = true)]
    async fn bucket_limits_the_rate() {
        let mut b = Bucket::new(10, 2);
        assert!(b.take().is_zero());
        assert!(b.take().is_zero());
        assert_eq!(b.take(), Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(b.take(), Duration::from_millis(50));
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(b.take().is_zero());
        // Idle for long, it saves up its burst and no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(b.take().is_zero());
        assert!(b.take().is_zero());
        assert!(!b.take().is_zero());
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // RFC 4231 test case 2 key and data, arranged as timestamp "what do ya want " + "." + body.
        let sig = signature("Jefe", "what do ya want for nothing?", b"");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert_ne!(sig, signature("Jefe", "what do ya want for nothing?", b"x"));
    }
}
