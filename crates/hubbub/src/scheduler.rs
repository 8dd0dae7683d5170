//! The scheduler: the periodic jobs of a deployment (queue gauges, expiry of ephemeral
//! conversations, event retention, the `archive` log's retention, the precompute trigger),
//! as a [`Service`]. `hubbub serve` runs one; apart, `hubbub scheduler` runs it, and several
//! schedulers only repeat idempotent work.

use crate::config::{FeedSettings, ServerSettings};
use crate::lifecycle::{Context, Service};
use hubbub_queue::Queue;
use hubbub_queue::clock::now_ms;
use hubbub_registry::Delivery;
use hubbub_router::MAIN_QUEUE;
use hubbub_services::chat::CHAT_QUEUE;
use hubbub_services::feed::FEED_QUEUE;
use hubbub_services::notify::NOTIFY_QUEUE;
use hubbub_services::timeline::{PERSONALIZE_QUEUE, PRECOMPUTE_QUEUE};
use hubbub_store::{FeedStore, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The queues whose stats the scheduler exports (and the admin API shows).
pub(crate) const QUEUES: [&str; 7] = [
    MAIN_QUEUE,
    CHAT_QUEUE,
    FEED_QUEUE,
    PRECOMPUTE_QUEUE,
    PERSONALIZE_QUEUE,
    NOTIFY_QUEUE,
    hubbub_store::webhooks::WEBHOOK_QUEUE,
];

/// The scheduler: periodic jobs, as a service.
pub(crate) struct Scheduler {
    store: Arc<dyn Store>,
    feed: Arc<dyn FeedStore>,
    queue: Arc<dyn Queue>,
    /// The logs (the `archive` of every routed request), for retention.
    log: Arc<dyn hubbub_queue::Log>,
    delivery: Delivery,
    settings: ServerSettings,
    feed_settings: FeedSettings,
    /// The runtime config: its intervals drive the periodic jobs.
    runtime: tokio::sync::watch::Receiver<Arc<hubbub_protocol::admin::VersionedConfig>>,
}

impl Service for Scheduler {
    const NAME: &'static str = "scheduler";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        Ok(Scheduler {
            store: ctx.store.clone(),
            feed: ctx.feed.clone(),
            queue: ctx.queue.clone(),
            log: ctx.log.clone(),
            delivery: ctx.delivery.clone(),
            settings: ctx.config.server.clone(),
            feed_settings: ctx.config.feed.clone(),
            runtime: ctx.runtime.subscribe(),
        })
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        scheduler(self, cancel).await;
        Ok(())
    }
}

/// Periodic jobs: queue gauges (every `intervals.queue_gauges_s` of the runtime config),
/// expiry of ephemeral conversations (every `intervals.ephemeral_sweep_s`), event retention
/// every hour, the `archive` log's retention (by age and size) at start and every 5 minutes,
/// and the precompute trigger: every `intervals.precompute_interval_s`, each recently active
/// user's id on the `precompute` queue. A new runtime config version restarts the timers
/// whose interval changed (their next tick one new interval later).
async fn scheduler(on: Scheduler, cancel: CancellationToken) {
    let Scheduler {
        store,
        feed: feed_store,
        queue,
        log,
        delivery,
        settings,
        feed_settings: feed,
        mut runtime,
    } = on;
    let mut archive = tokio::time::interval(Duration::from_secs(300));
    let archive_retention = hubbub_queue::Retention {
        max_age: Some(Duration::from_secs(
            settings.archive_retention_days.saturating_mul(24 * 3600),
        )),
        max_bytes: Some(settings.archive_max_bytes),
    };
    let mut every = runtime.borrow_and_update().config.intervals.clone();
    let secs = |s: u64| Duration::from_secs(s.max(1));
    let later = |s: u64| tokio::time::interval_at(tokio::time::Instant::now() + secs(s), secs(s));
    let mut precompute = tokio::time::interval(secs(every.precompute_interval_s));
    let dedupe = Duration::from_millis(feed.precompute_dedupe_ms.max(1));
    let mut gauges = tokio::time::interval(secs(every.queue_gauges_s));
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let mut ephemeral = tokio::time::interval(secs(every.ephemeral_sweep_s));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = runtime.changed() => {
                if changed.is_err() {
                    // The process is ending: its watcher is gone.
                    break;
                }
                let next = runtime.borrow_and_update().config.intervals.clone();
                if next.precompute_interval_s != every.precompute_interval_s {
                    precompute = later(next.precompute_interval_s);
                }
                if next.queue_gauges_s != every.queue_gauges_s {
                    gauges = later(next.queue_gauges_s);
                }
                if next.ephemeral_sweep_s != every.ephemeral_sweep_s {
                    ephemeral = later(next.ephemeral_sweep_s);
                }
                every = next;
            }
            _ = gauges.tick() => {
                for q in QUEUES {
                    if let Ok(s) = queue.stats(q).await {
                        metrics::gauge!(hubbub_protocol::metrics::QUEUE_VISIBLE, "queue" => q).set(s.visible as f64);
                        metrics::gauge!(hubbub_protocol::metrics::QUEUE_IN_FLIGHT, "queue" => q).set(s.in_flight as f64);
                        metrics::gauge!(hubbub_protocol::metrics::QUEUE_DLQ_DEPTH, "queue" => q).set(s.dlq_depth as f64);
                        metrics::gauge!(hubbub_protocol::metrics::QUEUE_OLDEST_AGE, "queue" => q).set(s.oldest_age_ms as f64 / 1000.0);
                    }
                }
            }
            _ = ephemeral.tick() => {
                let cutoff = now_ms() - (settings.ephemeral_ttl_s as i64) * 1000;
                match store.expire_ephemeral(cutoff).await {
                    Ok(w) if !w.value.is_empty() => {
                        tracing::info!(expired = w.value.len(), "ephemeral conversations expired");
                        metrics::counter!(hubbub_protocol::metrics::EPHEMERAL_EXPIRED).increment(w.value.len() as u64);
                        let frames = w.events.into_iter().map(|e| (e.user, e.frame)).collect();
                        delivery.push(frames, Vec::new(), None).await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ephemeral expiry failed"),
                }
            }
            _ = precompute.tick() => {
                let since = now_ms() - (feed.active_window_s as i64) * 1000;
                let users = match feed_store.active_users(since).await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(error = %e, "active users not read; no precompute this round");
                        continue;
                    }
                };
                if let Err(e) = hubbub_services::timeline::request_precompute(&*queue, &users, dedupe).await {
                    tracing::warn!(error = %e, "precompute not requested");
                } else if !users.is_empty() {
                    tracing::debug!(users = users.len(), "timelines to precompute");
                }
            }
            _ = archive.tick() => {
                match log.apply_retention(hubbub_router::ARCHIVE_LOG, archive_retention).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "archive entries past retention removed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "archive retention failed"),
                }
            }
            _ = prune.tick() => {
                let cutoff = now_ms() - (settings.event_retention_days as i64) * 24 * 3600 * 1000;
                match store.prune_events(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(pruned = n, "old events pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "event pruning failed"),
                }
            }
        }
    }
}
