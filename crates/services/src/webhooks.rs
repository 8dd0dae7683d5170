//! The webhook worker (PROTOCOL.md 1.1): takes jobs from the durable `webhooks` queue and
//! POSTs each event to its endpoint, signed; announces `user.online` / `user.offline`.
//!
//! # Delivery
//! A `deliver` job is one event for one endpoint, keyed by endpoint and user, so the queue's
//! per-key FIFO hands a user's events to an endpoint one at a time, in order: a failing
//! event holds the ones after it until it succeeds or is dead-lettered. The body is
//! `{"id","type","ts","data"}` with `X-Hubbub-Timestamp` (ms) and `X-Hubbub-Signature:
//! sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. A 2xx acks the job. Anything else
//! (another status, a timeout, a refused connection) puts it back with an exponential
//! back-off with jitter (`backoff_ms` doubling, capped at 5 min); after `max_attempts` it goes
//! to `webhooks.dlq` (the admin API lists and redrives it), so an event is dead-lettered after
//! a bounded time: at most the sum of the back-offs and timeouts of its attempts. Each
//! endpoint has a token bucket (`rate_per_s`, `burst`) in each worker process, and each
//! job runs on its own task (at most `concurrency`), so a hanging endpoint holds one task
//! until its timeout, never the other endpoints' deliveries. An event's
//! `id` is stable across retries and redeliveries: delivery is at least once.
//!
//! # Presence
//! Edges put a `presence` check on the queue when a session opens (at once) and closes
//! (after `offline_grace_s`), keyed by user (one check of a user at a time). A check compares
//! the registry (does the user have a session on any edge?) with the state last announced
//! (stored), and announces the difference. So a reconnect inside the grace finds the user
//! online, as announced: nothing is sent. An edge that dies closes nothing: every
//! `offline_grace_s` this worker sweeps the users announced online and puts a check (after
//! the grace) for those the registry no longer shows, which it does once the dead edge's
//! sessions expire (the registry TTL): they go offline after the TTL plus the grace (up to
//! one more sweep period).

use crate::notify::{Bucket, backoff, signature};
use hubbub_protocol::internal::WebhookJob;
use hubbub_protocol::serverapi::WebhookEvent;
use hubbub_queue::clock::now_ms;
use hubbub_queue::{Delivery as Received, Outgoing, Queue, QueueConfig, ReceiveOptions, dlq_name};
use hubbub_registry::Registry;
use hubbub_store::webhooks::{WEBHOOK_QUEUE, Webhooks};
use hubbub_store::{Store, WebhookEndpoint};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The `[webhooks]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// A user whose last session closed is announced offline after this, unless a session
    /// opened meanwhile, seconds.
    pub offline_grace_s: u64,
    /// One POST's timeout, milliseconds.
    pub timeout_ms: u64,
    /// Attempts of an event before it goes to `webhooks.dlq`.
    pub max_attempts: u32,
    /// First retry back-off, milliseconds (doubling each attempt, with jitter, capped at
    /// 5 min).
    pub backoff_ms: u64,
    /// Events per second to one endpoint (per worker process).
    pub rate_per_s: u32,
    /// Burst of events to one endpoint.
    pub burst: u32,
    /// Events in flight at once per worker (each to a different endpoint or user).
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            offline_grace_s: 10,
            timeout_ms: 5000,
            max_attempts: 10,
            backoff_ms: 1000,
            rate_per_s: 50,
            burst: 100,
            concurrency: 16,
        }
    }
}

/// Most users one sweep looks at (pages of a thousand).
const MAX_SWEPT: usize = 100_000;

/// What became of one job.
enum Outcome {
    /// Done (delivered, nothing to do, or undecodable): ack.
    Done,
    /// Try again after this.
    Retry(Duration),
    /// Its last attempt failed: to the dead-letter queue.
    Dead,
}

/// The webhook worker.
pub struct WebhookWorker {
    hooks: Arc<Webhooks>,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    registry: Arc<dyn Registry>,
    config: WebhookConfig,
    http: reqwest::Client,
    buckets: std::sync::Mutex<HashMap<String, Arc<Mutex<Bucket>>>>,
}

impl std::fmt::Debug for WebhookWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookWorker")
            .field("config", &self.config)
            .finish()
    }
}

impl WebhookWorker {
    /// A worker over these backends.
    pub fn new(
        hooks: Arc<Webhooks>,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        registry: Arc<dyn Registry>,
        config: WebhookConfig,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(WebhookWorker {
            hooks,
            store,
            queue,
            registry,
            config,
            http,
            buckets: Default::default(),
        })
    }

    /// Work the `webhooks` queue (and sweep presence) until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        // The worker dead-letters after `max_attempts` itself; the queue's own bound is a
        // step further, for a job whose worker dies on it every time.
        let max_receives = self.config.max_attempts.max(1).saturating_add(1);
        if let Err(e) = self
            .queue
            .declare(WEBHOOK_QUEUE, QueueConfig { max_receives })
            .await
        {
            tracing::warn!(error = %e, "webhooks: could not declare the queue");
        }
        let this = Arc::new(self);
        let sweeper = this.clone();
        let sweep_cancel = cancel.clone();
        let sweep = async move {
            let every = Duration::from_secs(sweeper.config.offline_grace_s.max(1));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => sweeper.sweep().await,
                    _ = sweep_cancel.cancelled() => break,
                }
            }
        };
        let work = this.work(cancel.clone());
        tokio::join!(sweep, work);
    }

    async fn work(self: &Arc<Self>, cancel: CancellationToken) {
        let concurrency = self.config.concurrency.max(1);
        // Each job runs on its own task holding a permit: a hanging endpoint holds one
        // permit until its timeout, never the other endpoints' deliveries.
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let tasks = tokio_util::task::TaskTracker::new();
        while !cancel.is_cancelled() {
            let first = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = cancel.cancelled() => break,
            };
            let opts = ReceiveOptions {
                max: 1 + permits.available_permits(),
                wait: Duration::from_millis(500),
                // A POST, its rate-limit wait and the ack fit well inside.
                visibility: Duration::from_millis(self.config.timeout_ms.saturating_mul(2))
                    + Duration::from_secs(30),
                // One event per (endpoint, user) at a time: deliveries run concurrently.
                max_run: 1,
            };
            let got = tokio::select! {
                got = self.queue.receive(WEBHOOK_QUEUE, opts) => got,
                _ = cancel.cancelled() => break,
            };
            let jobs = match got {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: receive failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut first = Some(first);
            for d in jobs {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let this = self.clone();
                tasks.spawn(async move {
                    this.settle(d).await;
                    drop(permit);
                });
            }
        }
        // Shutdown: the jobs under way finish (each bounded by the POST's timeout); what was
        // not received stays on the queue.
        tasks.close();
        tasks.wait().await;
    }

    /// Handle one job and ack, retry or dead-letter it.
    async fn settle(&self, d: Received) {
        let outcome = match serde_json::from_slice::<WebhookJob>(&d.body) {
            Ok(WebhookJob::Deliver { endpoint, event }) => {
                self.deliver(&endpoint, &event, d.receive_count).await
            }
            Ok(WebhookJob::Presence { user, at_ms }) => self.presence(&user, at_ms).await,
            Err(e) => {
                tracing::error!(error = %e, "webhooks: undecodable job dropped");
                Outcome::Done
            }
        };
        let result = match outcome {
            Outcome::Done => self.queue.ack(WEBHOOK_QUEUE, &d.receipt).await,
            Outcome::Retry(delay) => self.queue.nack(WEBHOOK_QUEUE, &d.receipt, delay).await,
            Outcome::Dead => {
                metrics::counter!(hubbub_protocol::metrics::WEBHOOK_DEAD_LETTERED).increment(1);
                let mut out = Outgoing::new(d.body.clone());
                if let Some(key) = d.key.clone() {
                    out.opts = out.opts.key(key);
                }
                match self
                    .queue
                    .send_batch(&dlq_name(WEBHOOK_QUEUE), vec![out])
                    .await
                {
                    Ok(_) => self.queue.ack(WEBHOOK_QUEUE, &d.receipt).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "webhooks: ack failed; the job may run again");
        }
    }

    /// The bucket of an endpoint.
    fn bucket(&self, endpoint: &str) -> Arc<Mutex<Bucket>> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Bucket::new(
                    self.config.rate_per_s,
                    self.config.burst,
                )))
            })
            .clone()
    }

    async fn deliver(&self, endpoint: &str, event: &WebhookEvent, attempt: u32) -> Outcome {
        let ep = match self.hooks.endpoint(endpoint).await {
            Ok(Some(ep)) => ep,
            // Deleted: its events go nowhere.
            Ok(None) => return Outcome::Done,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: endpoints unreadable");
                return Outcome::Retry(Duration::from_secs(1));
            }
        };
        let bucket = self.bucket(endpoint);
        // Bounded: each wait is what the bucket asks for; a long queue of waiters on one
        // endpoint gives up and comes back later without spending an attempt's back-off.
        let mut waited = false;
        for _ in 0..50 {
            let wait = bucket.lock().await.take();
            if wait.is_zero() {
                waited = false;
                break;
            }
            waited = true;
            tokio::time::sleep(wait).await;
        }
        if waited {
            return Outcome::Retry(Duration::from_secs(1));
        }
        match self.post(&ep, event).await {
            Ok(()) => {
                metrics::counter!(hubbub_protocol::metrics::WEBHOOK_DELIVERED).increment(1);
                Outcome::Done
            }
            Err(why) => {
                metrics::counter!(hubbub_protocol::metrics::WEBHOOK_FAILED).increment(1);
                tracing::debug!(endpoint, id = %event.id, attempt, %why, "webhooks: delivery failed");
                if attempt >= self.config.max_attempts.max(1) {
                    tracing::warn!(endpoint, id = %event.id, attempt, %why, "webhooks: event dead-lettered");
                    Outcome::Dead
                } else {
                    Outcome::Retry(backoff(self.config.backoff_ms, attempt))
                }
            }
        }
    }

    /// POST one event; why it failed.
    async fn post(&self, ep: &WebhookEndpoint, event: &WebhookEvent) -> Result<(), String> {
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let ts = now_ms().to_string();
        let resp = self
            .http
            .post(&ep.url)
            .header("content-type", "application/json")
            .header("x-hubbub-timestamp", &ts)
            .header("x-hubbub-signature", signature(&ep.secret, &ts, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status()))
        }
    }

    /// Announce the change of `user`'s presence since the last announcement, if any.
    async fn presence(&self, user: &str, at_ms: i64) -> Outcome {
        let online = match self.registry.sessions(user).await {
            Ok(s) => !s.is_empty(),
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: registry unavailable");
                return Outcome::Retry(Duration::from_secs(1));
            }
        };
        let announced = match self.store.announced_presence(user).await {
            Ok(a) => a.unwrap_or(false),
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: store unavailable");
                return Outcome::Retry(Duration::from_secs(1));
            }
        };
        if online == announced {
            return Outcome::Done;
        }
        let (kind, data) = if online {
            ("user.online", serde_json::json!({ "user": user }))
        } else {
            (
                "user.offline",
                serde_json::json!({ "user": user, "last_seen_ts": at_ms }),
            )
        };
        // Stable: a redelivered check (the state not yet written) makes the same event.
        let id = format!("{kind}/{user}/{at_ms}");
        if let Err(e) = self.hooks.emit(kind, user, &id, data).await {
            tracing::warn!(error = %e, "webhooks: presence event not queued");
            return Outcome::Retry(Duration::from_secs(1));
        }
        match self.store.set_announced_presence(user, online).await {
            Ok(()) => Outcome::Done,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: store unavailable");
                Outcome::Retry(Duration::from_secs(1))
            }
        }
    }

    /// Check, after the grace, every user announced online whom the registry no longer
    /// shows (their edge died, or this process restarted).
    async fn sweep(&self) {
        if !self.hooks.wants_presence().await {
            return;
        }
        let grace = self.hooks.offline_grace();
        let now = now_ms();
        let window = now / i64::try_from(grace.as_millis().max(1)).unwrap_or(i64::MAX);
        let mut after = String::new();
        let mut seen = 0;
        while seen < MAX_SWEPT {
            let page = match self.store.announced_online(&after, 1000).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: sweep: store unavailable");
                    return;
                }
            };
            let Some(last) = page.last().cloned() else {
                return;
            };
            seen += page.len();
            let sessions = match self.registry.sessions_of(&page).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: sweep: registry unavailable");
                    return;
                }
            };
            for (user, s) in page.iter().zip(sessions) {
                if s.is_empty() {
                    let dedupe = Some(format!("sweep/{user}/{window}"));
                    if let Err(e) = self.hooks.presence_job(user, now, grace, dedupe).await {
                        tracing::warn!(error = %e, "webhooks: sweep: check not queued");
                    }
                }
            }
            after = last;
        }
    }
}
