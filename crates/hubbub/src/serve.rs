//! `hubbub serve`: every service in one process on the embedded backends.
//!
//! One SQLite file holds the queues, the logs and the store; the registry, the edge link and
//! the engagement aggregator are in-process. Every service ([`crate::parts`]) is started by
//! one [`Manager`] and shares its cancellation token: on shutdown the edge stops accepting
//! and closes every socket with 1001, the loops finish the batch in hand, and
//! [`Running::wait`] returns when all of them have.

use crate::config::Config;
use crate::control::ConfigWatcher;
use crate::lifecycle::{Context, EdgeSeat, Manager};
use crate::parts::{
    Chat, EdgeServer, Feed, Notify, Routers, SignalLapses, Timelines, WebhookDelivery,
};
use crate::scheduler::Scheduler;
use crate::wiring;
use anyhow::Context as _;
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue, QueueConfig};
use hubbub_registry::{Delivery, LocalEdges, LocalRegistry};
use hubbub_services::engagement::EngagementService;
use hubbub_services::signals::SignalService;
use hubbub_services::timeline::{LocalTimelineCache, RecencyEngagement, Timeline, TimelineConfig};
use hubbub_store::{FeedStore, SqliteStore, Store};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Worker threads of the message path's runtime (routers, chat, feed, timelines, notify): two, so
/// the path keeps both cores when the sessions are quiet (one made a 1,000-member channel at
/// 100 messages/s lag twice as much).
const CORE_THREADS: usize = 2;

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
    manager: Manager,
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

/// `hubbub rotate-note-keys` on the embedded store (the server stopped: it takes the data
/// directory's lock): a new current key in `<data_dir>/note-keys`, then every note re-sealed
/// under it. Returns the new key's id and how many notes were re-sealed.
pub async fn rotate_keys(config: &Config) -> anyhow::Result<(String, u64)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let keys = wiring::rotate_note_keys(config)?;
    let current = keys.current().to_owned();
    let queue = EmbeddedQueue::open(
        config.data_dir.join("hubbub.db"),
        EmbeddedConfig {
            max_body_bytes: config.queue.max_body_bytes,
            ..EmbeddedConfig::default()
        },
    )?;
    let store = SqliteStore::open(queue).await?.with_note_keys(keys);
    let resealed = wiring::reseal_all(&store).await?;
    Ok((current, resealed))
}

impl Running {
    /// Ask the server to stop and wait until every task has finished.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.wait().await;
    }

    /// Wait until the server has stopped (after `cancel`).
    pub async fn wait(self) {
        self.manager.wait().await;
    }
}

/// Open the data directory and start every service; the listeners are bound before this
/// returns.
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
    // The edge's sessions on the process's runtime; the message path on one of its own.
    let manager = Manager::with_core_runtime(CORE_THREADS)?;
    let ctx = context(&config, &queue, &manager).await?;
    // First: the others start on the stored runtime config.
    manager.start::<ConfigWatcher>(&ctx).await?;
    manager.start::<EdgeServer>(&ctx).await?;
    manager.start::<SignalLapses>(&ctx).await?;
    manager.start_core::<Routers>(&ctx).await?;
    manager.start_core::<Chat>(&ctx).await?;
    manager.start_core::<Feed>(&ctx).await?;
    manager.start_core::<Timelines>(&ctx).await?;
    if config.notify.webhook.is_some() {
        manager.start_core::<Notify>(&ctx).await?;
    }
    manager.start_core::<WebhookDelivery>(&ctx).await?;
    manager.start::<Scheduler>(&ctx).await?;
    let bound = ctx.bound();
    let addr = bound.public.context("the edge bound no listener")?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "hubbub serving");
    Ok(Running {
        addr,
        admin_addr: bound.admin,
        cancel: manager.cancel().clone(),
        queue,
        manager,
        _lock: lock,
    })
}

/// The embedded backends as the services see them: one SQLite file for the queues, the
/// logs and the store; the registry, the edge link, the timeline cache and the engagement
/// aggregator in this process.
async fn context(
    config: &Config,
    queue: &EmbeddedQueue,
    manager: &Manager,
) -> anyhow::Result<Context> {
    let sqlite = SqliteStore::open(queue.clone())
        .await?
        .with_note_keys(wiring::note_keys(config)?);
    let media = wiring::media_store(config, sqlite.clone())?;
    let feed: Arc<dyn FeedStore> = Arc::new(sqlite.clone());
    let store: Arc<dyn Store> = Arc::new(sqlite);
    let registry = Arc::new(LocalRegistry::default());
    let edges = Arc::new(LocalEdges::default());
    let edge_id = hubbub_store::new_id("edge-")?;
    let inbox = edges.attach(&edge_id);
    let delivery = Delivery::new(registry.clone(), edges.clone());
    let signals = SignalService::new(store.clone(), delivery.clone(), wiring::edge_ttl(config));
    let runtime = crate::control::runtime(config);
    // The aggregator's partitions run on the manager's tracker, stopped by its token; its word
    // cap follows the runtime config's limits.
    let engagement = EngagementService::start(
        feed.clone(),
        edges,
        hubbub_services::engagement::EngagementConfig {
            limits: Some(hubbub_services::LiveLimits::new(runtime.subscribe())),
            ..wiring::engagement_config(config)
        },
        manager.tracker(),
        manager.cancel().clone(),
    );
    let timeline = Timeline::new(
        feed.clone(),
        Arc::new(LocalTimelineCache::default()),
        Arc::new(RecencyEngagement::default()),
        TimelineConfig {
            len: config.feed.timeline_len.max(1),
        },
    );
    Ok(Context {
        config: config.clone(),
        store,
        feed,
        media,
        queue: Arc::new(queue.clone()),
        log: Arc::new(queue.clone()),
        registry,
        delivery,
        timeline,
        edge_signals: Arc::new(signals.clone()),
        signals,
        engagement: Arc::new(engagement),
        edge_seat: Mutex::new(Some(EdgeSeat { id: edge_id, inbox })),
        cancel: manager.cancel().clone(),
        bound: Mutex::default(),
        runtime,
        #[cfg(feature = "cluster")]
        cluster: None,
    })
}
