//! The producer's side of webhooks (PROTOCOL.md 1.1): which endpoints want which events (a
//! cache of the `webhooks` table, at most [`REFRESH`] old), and putting jobs on the durable
//! `webhooks` queue. The services crate's webhook worker delivers them.
//!
//! Every producer (the chat service for messages and conversations, the edge for sessions
//! opening and closing) asks [`Webhooks::wants`] first: with no endpoint subscribed, an event
//! costs a look at the cache and nothing on any queue. An event is fanned out to one
//! `deliver` job per endpoint, keyed by endpoint and user (per-key FIFO: a user's events reach
//! an endpoint in order) and deduplicated by event id and endpoint (a producer that repeats
//! an event after a crash puts it on the queue once within the queue's dedupe window).

use crate::{Store, StoreError, WebhookEndpoint};
use hubbub_protocol::internal::WebhookJob;
use hubbub_protocol::serverapi::WebhookEvent;
use hubbub_queue::{Outgoing, Queue, SendOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The webhook queue.
pub const WEBHOOK_QUEUE: &str = "webhooks";

/// How old the cached list of endpoints may be: a new endpoint receives events from at most
/// this long after its creation, a deleted one stops at most this long after.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Why an event could not be put on the queue.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The endpoints could not be read.
    #[error("webhooks: {0}")]
    Store(#[from] StoreError),
    /// The queue refused the jobs.
    #[error("webhooks: {0}")]
    Queue(#[from] hubbub_queue::QueueError),
    /// A job could not be encoded.
    #[error("webhooks: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The endpoints and the queue, for producers.
pub struct Webhooks {
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    offline_grace: Duration,
    cache: Mutex<Option<(Instant, Arc<Vec<WebhookEndpoint>>)>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("offline_grace", &self.offline_grace)
            .finish()
    }
}

impl Webhooks {
    /// Producers over this store and queue; `offline_grace` is `webhooks.offline_grace_s`.
    pub fn new(store: Arc<dyn Store>, queue: Arc<dyn Queue>, offline_grace: Duration) -> Self {
        Webhooks {
            store,
            queue,
            offline_grace,
            cache: Mutex::new(None),
        }
    }

    /// The grace before a user whose last session closed is announced offline.
    pub fn offline_grace(&self) -> Duration {
        self.offline_grace
    }

    /// Every endpoint, at most [`REFRESH`] old (a store that cannot be read gives the last
    /// list known, else none: producers never fail a write for a webhook).
    pub async fn endpoints(&self) -> Arc<Vec<WebhookEndpoint>> {
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((at, list)) = &cached
            && at.elapsed() < REFRESH
        {
            return list.clone();
        }
        match self.store.webhooks().await {
            Ok(list) => {
                let list = Arc::new(list);
                *self.cache.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), list.clone()));
                list
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: endpoints unreadable");
                cached.map(|(_, l)| l).unwrap_or_default()
            }
        }
    }

    /// The endpoint with this id, read afresh when the cache does not have it.
    pub async fn endpoint(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
        if let Some(e) = self.endpoints().await.iter().find(|e| e.id == id) {
            return Ok(Some(e.clone()));
        }
        Ok(self
            .store
            .webhooks()
            .await?
            .into_iter()
            .find(|e| e.id == id))
    }

    /// Whether any endpoint receives events of type `kind`.
    pub async fn wants(&self, kind: &str) -> bool {
        self.endpoints().await.iter().any(|e| e.wants(kind))
    }

    /// Whether any endpoint receives `user.online` or `user.offline`.
    pub async fn wants_presence(&self) -> bool {
        self.endpoints()
            .await
            .iter()
            .any(|e| e.wants("user.online") || e.wants("user.offline"))
    }

    /// Put an event on the queue for every endpoint that receives its type, in the order of
    /// `user`'s events. `id` must be the same whenever the same event is produced again.
    pub async fn emit(
        &self,
        kind: &str,
        user: &str,
        id: &str,
        data: serde_json::Value,
    ) -> Result<(), WebhookError> {
        let endpoints = self.endpoints().await;
        let event = WebhookEvent {
            id: id.to_owned(),
            kind: kind.to_owned(),
            ts: hubbub_queue::clock::now_ms(),
            data,
        };
        let mut jobs = Vec::new();
        for e in endpoints.iter().filter(|e| e.wants(kind)) {
            let job = WebhookJob::Deliver {
                endpoint: e.id.clone(),
                event: event.clone(),
            };
            jobs.push(Outgoing {
                body: serde_json::to_vec(&job)?,
                opts: SendOptions::default()
                    .key(format!("{}:{user}", e.id))
                    .dedupe(format!("{id}:{}", e.id)),
            });
        }
        if !jobs.is_empty() {
            self.queue.send_batch(WEBHOOK_QUEUE, jobs).await?;
        }
        Ok(())
    }

    /// A session of `user` opened (`closed`: closed): check, now or after the grace, whether
    /// the user's presence changed (only when some endpoint receives presence events).
    pub async fn presence_check(&self, user: &str, closed: bool) -> Result<(), WebhookError> {
        if !self.wants_presence().await {
            return Ok(());
        }
        let delay = if closed {
            self.offline_grace
        } else {
            Duration::ZERO
        };
        self.presence_job(user, hubbub_queue::clock::now_ms(), delay, None)
            .await
    }

    /// Put a presence check of `user` on the queue after `delay`.
    pub async fn presence_job(
        &self,
        user: &str,
        at_ms: i64,
        delay: Duration,
        dedupe: Option<String>,
    ) -> Result<(), WebhookError> {
        let job = WebhookJob::Presence {
            user: user.to_owned(),
            at_ms,
        };
        let mut opts = SendOptions::default()
            .key(format!("presence:{user}"))
            .delay(delay);
        if let Some(d) = dedupe {
            opts = opts.dedupe(d);
        }
        self.queue
            .send(WEBHOOK_QUEUE, serde_json::to_vec(&job)?, opts)
            .await?;
        Ok(())
    }
}
