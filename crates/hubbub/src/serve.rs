//! `hubbub serve`: every role in one process on the embedded backends.
//!
//! One SQLite file holds the queues, the logs and the store; the registry and the edge link
//! are in-process. The edge, the router loops, the chat service loops and the scheduler run
//! as tasks sharing one [`CancellationToken`]: on shutdown the edge stops accepting and
//! closes every socket with 1001, the loops finish the batch in hand, and [`Running::wait`]
//! returns when all of them have.

use crate::config::Config;
use crate::wiring;
use anyhow::Context;
use hubbub_edge::{Edge, EdgeDeps, PrometheusHandle};
use hubbub_queue::clock::now_ms;
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue, Queue, QueueConfig};
use hubbub_registry::{Delivery, LocalEdges, LocalRegistry};
use hubbub_router::{MAIN_QUEUE, Router};
use hubbub_services::chat::CHAT_QUEUE;
use hubbub_services::engagement::EngagementService;
use hubbub_services::feed::FEED_QUEUE;
use hubbub_services::notify::NOTIFY_QUEUE;
use hubbub_services::signals::SignalService;
use hubbub_services::timeline::{
    LocalTimelineCache, PERSONALIZE_QUEUE, PRECOMPUTE_QUEUE, RecencyEngagement, Timeline,
    TimelineConfig, TimelineReader,
};
use hubbub_store::{FeedStore, LocalMedia, MediaStore, SqliteStore, Store};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The process-wide Prometheus recorder (installed once; servers in one process share it).
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    // Servers starting at once in one process (tests): one installs, the others wait for it.
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let buckets = [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                hubbub_protocol::metrics::DELIVERY_LATENCY.into(),
            ),
            &buckets,
        )?
        .build_recorder();
    let handle = recorder.handle();
    // Only the first server of the process installs it; later ones reuse the handle.
    if metrics::set_global_recorder(recorder).is_ok() {
        // Every unlabelled counter and gauge of the registry shows from the start (at 0), so
        // dashboards and alerts see it before the first event.
        for m in hubbub_protocol::metrics::ALL
            .iter()
            .filter(|m| m.labels.is_empty())
        {
            match m.kind {
                hubbub_protocol::metrics::Kind::Counter => metrics::counter!(m.name).absolute(0),
                hubbub_protocol::metrics::Kind::Gauge => metrics::gauge!(m.name).set(0.0),
                hubbub_protocol::metrics::Kind::Histogram => {}
            }
        }
        let _ = HANDLE.set(handle);
    }
    HANDLE.get().cloned().context("metrics recorder")
}

/// A started server.
pub struct Running {
    /// The address the listener is bound to.
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Cancel to shut down.
    pub cancel: CancellationToken,
    /// The embedded queue (and store file), for tools that load data in bulk (benchmarks).
    pub queue: EmbeddedQueue,
    tracker: TaskTracker,
    /// The data directory's lock, held while the server runs.
    _lock: std::fs::File,
}

/// Take the data directory's lock: one process per data directory, so that at startup every
/// lease in the queue belongs to a dead process and can be released.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("hubbub.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!(
                "another hubbub process is using the data directory {}",
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

impl Running {
    /// Ask the server to stop and wait until every task has finished.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.wait().await;
    }

    /// Wait until the server has stopped (after `cancel`).
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Open the data directory and start every role; the listener is bound before this returns.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let lock = lock_data_dir(&config.data_dir)?;
    let queue = EmbeddedQueue::open(
        config.data_dir.join("hubbub.db"),
        EmbeddedConfig {
            max_body_bytes: config.queue.max_body_bytes,
            default_queue: QueueConfig {
                max_receives: config.queue.max_receives.max(1),
            },
            dedupe_window: Duration::from_secs(config.queue.dedupe_window_s),
            max_db_bytes: None,
        },
    )?;
    // Whatever was in flight belonged to a previous run of this server, now gone.
    let released = queue.release_all_leases().await?;
    if released > 0 {
        tracing::info!(released, "released the leases of the previous run");
    }
    let sqlite = SqliteStore::open(queue.clone()).await?;
    let media = media_store(&config, sqlite.clone())?;
    let feed_store: Arc<dyn FeedStore> = Arc::new(sqlite.clone());
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let queue_dyn: Arc<dyn Queue> = Arc::new(queue.clone());
    let registry = Arc::new(LocalRegistry::default());
    let edges = Arc::new(LocalEdges::default());
    let edge_id = hubbub_store::new_id("edge-")?;
    let inbox = edges.attach(&edge_id);
    let delivery = Delivery::new(registry.clone(), edges.clone());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let edge_ttl = wiring::edge_ttl(&config);
    let signals = SignalService::new(store.clone(), delivery.clone(), edge_ttl);
    tracker.spawn(signals.clone().run_lapses(cancel.clone()));
    let engagement = EngagementService::start(
        feed_store.clone(),
        edges.clone(),
        wiring::engagement_config(&config),
        cancel.clone(),
    );
    let timeline = Timeline::new(
        feed_store.clone(),
        Arc::new(LocalTimelineCache::default()),
        Arc::new(RecencyEngagement::default()),
        TimelineConfig {
            len: config.feed.timeline_len.max(1),
        },
    );

    let edge = Edge::new(
        wiring::edge_config(&config, edge_id),
        EdgeDeps {
            store: store.clone(),
            queue: queue_dyn.clone(),
            registry,
            media: media.clone(),
            chat: Arc::new(hubbub_services::chat::ChatQueries::new(store.clone())),
            signals: Arc::new(signals),
            timelines: Arc::new(TimelineReader::new(timeline.clone())),
            engagement: Arc::new(engagement.clone()),
            metrics: metrics_handle()?,
            delivery: delivery.clone(),
        },
        inbox,
        cancel.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = wiring::serve_admin(&config, &edge, &tracker, &cancel).await?;

    let table = wiring::routing_table();
    for _ in 0..config.server.routers.max(1) {
        let router = Router::new(
            queue_dyn.clone(),
            Arc::new(queue.clone()),
            table.clone(),
            delivery.clone(),
        );
        tracker.spawn(router.run(cancel.clone()));
    }
    let deps = wiring::ServiceDeps {
        store: store.clone(),
        feed: feed_store.clone(),
        media: media.clone(),
        queue: queue_dyn.clone(),
        delivery: delivery.clone(),
        timeline,
        engagement: Arc::new(engagement),
    };
    let mut services = vec!["chat", "feed", "timeline"];
    if config.notify.webhook.is_some() {
        services.push("notify");
    }
    for s in services {
        wiring::spawn_service(s, &config, &deps, &tracker, &cancel)?;
    }
    tracker.spawn(scheduler(
        Scheduled {
            store,
            feed: feed_store,
            queue: queue_dyn,
            log: Arc::new(queue.clone()),
            delivery: delivery.clone(),
        },
        config.server.clone(),
        config.feed.clone(),
        cancel.clone(),
    ));
    let serve_cancel = cancel.clone();
    tracker.spawn(async move {
        if let Err(e) = edge.serve(listener).await {
            tracing::error!(error = %e, "edge stopped");
            serve_cancel.cancel();
        }
    });
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "hubbub serving");
    Ok(Running {
        addr,
        admin_addr,
        cancel,
        queue: queue.clone(),
        tracker,
        _lock: lock,
    })
}

/// The media store the configuration names.
pub(crate) fn media_store(
    config: &Config,
    sqlite: impl hubbub_store::MediaMeta + Clone + 'static,
) -> anyhow::Result<Arc<dyn MediaStore>> {
    use crate::config::MediaBackend;
    match config.media.backend {
        MediaBackend::Local => Ok(Arc::new(LocalMedia::new(
            config.data_dir.join("media"),
            sqlite,
        )?)),
        #[cfg(feature = "s3")]
        MediaBackend::S3 => {
            let s3 = config
                .media
                .s3
                .as_ref()
                .context("media.backend = \"s3\" needs a [media.s3] section")?;
            Ok(Arc::new(hubbub_store::ObjectMedia::s3(s3, sqlite)?))
        }
        #[cfg(not(feature = "s3"))]
        MediaBackend::S3 => anyhow::bail!("this build has no S3 support: build with --features s3"),
    }
}

/// What the scheduler works on.
pub(crate) struct Scheduled {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) feed: Arc<dyn FeedStore>,
    pub(crate) queue: Arc<dyn Queue>,
    /// The logs (the `archive` of every routed request), for retention.
    pub(crate) log: Arc<dyn hubbub_queue::Log>,
    pub(crate) delivery: Delivery,
}

/// Periodic jobs: queue gauges every 5 s, expiry of ephemeral conversations (every minute,
/// or faster for short TTLs), event retention every hour, the `archive` log's retention (by
/// age and size) at start and every 5 minutes, and the precompute trigger: every
/// `precompute_interval_s`, each recently active user's id on the `precompute` queue.
pub(crate) async fn scheduler(
    on: Scheduled,
    settings: crate::config::ServerSettings,
    feed: crate::config::FeedSettings,
    cancel: CancellationToken,
) {
    let Scheduled {
        store,
        feed: feed_store,
        queue,
        log,
        delivery,
    } = on;
    let mut archive = tokio::time::interval(Duration::from_secs(300));
    let archive_retention = hubbub_queue::Retention {
        max_age: Some(Duration::from_secs(
            settings.archive_retention_days.saturating_mul(24 * 3600),
        )),
        max_bytes: Some(settings.archive_max_bytes),
    };
    let mut precompute =
        tokio::time::interval(Duration::from_secs(feed.precompute_interval_s.max(1)));
    let dedupe = Duration::from_millis(feed.precompute_dedupe_ms.max(1));
    let mut gauges = tokio::time::interval(Duration::from_secs(5));
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let sweep_every = Duration::from_secs((settings.ephemeral_ttl_s / 2).clamp(1, 60));
    let mut ephemeral = tokio::time::interval(sweep_every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = gauges.tick() => {
                for q in [MAIN_QUEUE, CHAT_QUEUE, FEED_QUEUE, PRECOMPUTE_QUEUE, PERSONALIZE_QUEUE, NOTIFY_QUEUE] {
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
