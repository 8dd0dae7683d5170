//! Roles apart: `hubbub edge`, `hubbub router`, `hubbub worker --services ...` and
//! `hubbub scheduler`, on Redis (queues, logs, the session registry, the timeline cache) and
//! PostgreSQL (the store). Any number of each may run at once.
//!
//! - **edge**: the public listener (WebSocket, SSE, HTTP API) and an internal listener
//!   (`cluster.internal_listen`) where services `POST` batches of events for its sessions,
//!   authenticated by `cluster.internal_secret`. Its heartbeat keeps its address in the
//!   registry; when it dies, its sessions expire with it (`server.edge_ttl_s`). Presence is
//!   computed from the registry and Redis (`ClusterSignals`), typing is relayed through the
//!   edge link; engagement signals go over Redis pub/sub to the worker that leads the
//!   `engagement` service.
//! - **router**: `main` → service queues and the `archive` log.
//! - **worker**: the services named by `--services` (`chat`, `feed`, `timeline`,
//!   `engagement`, `notify`).
//! - **scheduler**: the periodic jobs (queue gauges, ephemeral expiry, event retention, the
//!   precompute trigger). Several schedulers only repeat idempotent work.
//!
//! Every role also serves `/healthz`, `/readyz` and `/metrics` (on `listen` for roles other
//! than the edge, which serves them on its public listener).

use crate::config::Config;
use crate::serve::{Scheduled, metrics_handle};
use crate::wiring;
use anyhow::Context;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use hubbub_edge::{Edge, EdgeDeps};
use hubbub_protocol::internal::ToEdge;
use hubbub_queue::{Queue, QueueConfig, RedisConfig, RedisQueue};
use hubbub_registry::Delivery;
use hubbub_registry::distributed::{
    DELIVER_BODY_LIMIT, DELIVER_PATH, HttpEdges, RedisRegistry, SECRET_HEADER,
};
use hubbub_router::{MAIN_QUEUE, Router};
use hubbub_services::engagement::remote::{EngagementWorker, RemoteEngagement};
use hubbub_services::signals::SignalService;
use hubbub_services::signals::remote::ClusterSignals;
use hubbub_services::timeline::{
    RecencyEngagement, RedisTimelineCache, Timeline, TimelineConfig, TimelineReader,
};
use hubbub_store::{FeedStore, InboxStore, PgStore, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A role to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Client connections.
    Edge,
    /// `main` → service queues.
    Router,
    /// These services.
    Worker(Vec<String>),
    /// Periodic jobs.
    Scheduler,
}

/// The services a worker can run.
pub const SERVICES: &[&str] = &["chat", "feed", "timeline", "engagement", "notify"];

/// A started role.
pub struct RoleRunning {
    /// The public (edge) or health (other roles) listener's address.
    pub addr: SocketAddr,
    /// The edge's internal listener, for an edge.
    pub internal_addr: Option<SocketAddr>,
    /// Cancel to stop.
    pub cancel: CancellationToken,
    tracker: TaskTracker,
}

impl RoleRunning {
    /// Wait until stopped (after `cancel`).
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// What every role shares: the backends.
struct Backends {
    queue: RedisQueue,
    store: PgStore,
    registry: RedisRegistry,
    link: Arc<HttpEdges>,
    delivery: Delivery,
    timeline: Timeline,
}

async fn backends(config: &Config) -> anyhow::Result<Backends> {
    let c = &config.cluster;
    let redis_url = c
        .redis_url
        .clone()
        .context("roles apart need cluster.redis_url (--redis-url)")?;
    let pg_url = c
        .postgres_url
        .clone()
        .context("roles apart need cluster.postgres_url (--postgres-url)")?;
    let secret = c
        .internal_secret
        .clone()
        .context("roles apart need cluster.internal_secret (HUBBUB_CLUSTER__INTERNAL_SECRET)")?;
    let queue = RedisQueue::connect(RedisConfig {
        url: redis_url,
        namespace: c.namespace.clone(),
        max_body_bytes: config.queue.max_body_bytes,
        default_queue: QueueConfig {
            max_receives: config.queue.max_receives.max(1),
        },
        dedupe_window: Duration::from_secs(config.queue.dedupe_window_s.max(1)),
        timeout: Duration::from_secs(2),
    })?;
    let store = PgStore::connect(&pg_url, c.postgres_max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    let registry = RedisRegistry::new(queue.connection(), &c.namespace);
    let link = Arc::new(HttpEdges::new(registry.clone(), &secret)?);
    let delivery = Delivery::new(Arc::new(registry.clone()), link.clone());
    let cache = RedisTimelineCache::new(
        queue.connection(),
        &c.namespace,
        Duration::from_secs(config.feed.active_window_s.max(3600)),
    );
    let timeline = Timeline::new(
        Arc::new(store.clone()),
        Arc::new(cache),
        Arc::new(RecencyEngagement::default()),
        TimelineConfig {
            len: config.feed.timeline_len.max(1),
        },
    );
    Ok(Backends {
        queue,
        store,
        registry,
        link,
        delivery,
        timeline,
    })
}

/// `/healthz`, `/readyz` (the store and the queue answer) and `/metrics`, for roles other
/// than the edge.
fn health_app(store: PgStore, queue: RedisQueue) -> anyhow::Result<axum::Router> {
    let metrics = metrics_handle()?;
    Ok(axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let (store, queue) = (store.clone(), queue.clone());
                async move {
                    let s = store.ping().await;
                    let q = queue.stats(MAIN_QUEUE).await;
                    match (s, q) {
                        (Ok(()), Ok(_)) => (StatusCode::OK, "ready".to_owned()),
                        (s, q) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("store: {:?}; queue: {:?}", s.err(), q.err()),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        ))
}

/// Serve `app` with the listener limits every HTTP listener has (caps, timeouts).
async fn serve_app(
    config: &Config,
    tracker: &TaskTracker,
    app: axum::Router,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    let limits = crate::wiring::http_limits(config);
    tracker.spawn(async move {
        if let Err(e) = hubbub_edge::listener::serve(listener, app, limits, cancel.clone()).await {
            tracing::error!(error = %e, "listener stopped");
            cancel.cancel();
        }
    });
    Ok(bound)
}

/// Start a role; listeners are bound before this returns.
pub async fn start(role: Role, config: Config) -> anyhow::Result<RoleRunning> {
    let b = backends(&config).await?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let queue: Arc<dyn Queue> = Arc::new(b.queue.clone());
    let store: Arc<dyn Store> = Arc::new(b.store.clone());
    let feed: Arc<dyn FeedStore> = Arc::new(b.store.clone());
    let media = crate::serve::media_store(&config, b.store.clone())?;
    let edge_ttl = wiring::edge_ttl(&config);
    let mut internal_addr = None;
    let addr = match &role {
        Role::Edge => {
            let edge_id = hubbub_store::new_id("edge-")?;
            let (tx, inbox) = mpsc::unbounded_channel::<Vec<ToEdge>>();
            let secret = config.cluster.internal_secret.clone().unwrap_or_default();
            let internal = axum::Router::new()
                .route(
                    DELIVER_PATH,
                    axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                        let (tx, secret) = (tx.clone(), secret.clone());
                        async move { deliver(&headers, &body, &secret, &tx) }
                    }),
                )
                .layer(axum::extract::DefaultBodyLimit::max(DELIVER_BODY_LIMIT));
            let bound = serve_app(
                &config,
                &tracker,
                internal,
                config.cluster.internal_listen,
                cancel.clone(),
            )
            .await?;
            internal_addr = Some(bound);
            let advertise = config
                .cluster
                .internal_advertise
                .clone()
                .unwrap_or_else(|| bound.to_string());
            b.registry
                .edge_alive(&edge_id, &advertise, edge_ttl)
                .await
                .context("registering the edge in Redis")?;
            let beat = (b.registry.clone(), edge_id.clone(), cancel.clone());
            tracker.spawn(async move {
                let (registry, edge, cancel) = beat;
                let mut tick = tokio::time::interval(edge_ttl / 3);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = registry.edge_alive(&edge, &advertise, edge_ttl).await {
                                tracing::warn!(error = %e, "edge heartbeat not recorded");
                            }
                        }
                        _ = cancel.cancelled() => {
                            let _ = registry.edge_gone(&edge).await;
                            break;
                        }
                    }
                }
            });
            let local = SignalService::new(store.clone(), b.delivery.clone(), edge_ttl);
            tracker.spawn(local.clone().run_lapses(cancel.clone()));
            let signals = ClusterSignals::new(
                local,
                Arc::new(b.registry.clone()),
                b.delivery.clone(),
                b.queue.connection(),
                config.cluster.redis_url.as_deref().unwrap_or_default(),
                &config.cluster.namespace,
            );
            tracker.spawn(signals.clone().run(cancel.clone()));
            let engagement = remote_engagement(&config, &b);
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("creating the data directory {}", config.data_dir.display())
            })?;
            let edge = Edge::new(
                wiring::edge_config(&config, edge_id),
                EdgeDeps {
                    store: store.clone(),
                    queue: queue.clone(),
                    registry: Arc::new(b.registry.clone()),
                    media: media.clone(),
                    chat: Arc::new(hubbub_services::chat::ChatQueries::new(store.clone())),
                    signals: Arc::new(signals),
                    timelines: Arc::new(TimelineReader::new(b.timeline.clone())),
                    engagement: Arc::new(engagement),
                    metrics: metrics_handle()?,
                    delivery: b.delivery.clone(),
                },
                inbox,
                cancel.clone(),
            )?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("listening on {}", config.listen))?;
            let addr = listener.local_addr()?;
            wiring::serve_admin(&config, &edge, &tracker, &cancel).await?;
            let stop = cancel.clone();
            tracker.spawn(async move {
                if let Err(e) = edge.serve(listener).await {
                    tracing::error!(error = %e, "edge stopped");
                    stop.cancel();
                }
            });
            addr
        }
        other => {
            match other {
                Role::Router => {
                    let table = wiring::routing_table();
                    for _ in 0..config.server.routers.max(1) {
                        let router = Router::new(
                            queue.clone(),
                            Arc::new(b.queue.clone()),
                            table.clone(),
                            b.delivery.clone(),
                        );
                        tracker.spawn(router.run(cancel.clone()));
                    }
                }
                Role::Worker(services) => {
                    let deps = wiring::ServiceDeps {
                        store: store.clone(),
                        feed: feed.clone(),
                        media: media.clone(),
                        queue: queue.clone(),
                        delivery: b.delivery.clone(),
                        timeline: b.timeline.clone(),
                        engagement: Arc::new(remote_engagement(&config, &b)),
                    };
                    for s in services {
                        if s == "engagement" {
                            tracker.spawn(
                                EngagementWorker::new(
                                    config.cluster.redis_url.as_deref().unwrap_or_default(),
                                    &config.cluster.namespace,
                                    b.queue.connection(),
                                    feed.clone(),
                                    b.link.clone(),
                                    wiring::engagement_config(&config),
                                )
                                .run(cancel.clone()),
                            );
                        } else if SERVICES.contains(&s.as_str()) {
                            wiring::spawn_service(s, &config, &deps, &tracker, &cancel)?;
                        } else {
                            anyhow::bail!(
                                "unknown service {s:?}: choose among {}",
                                SERVICES.join(", ")
                            );
                        }
                    }
                }
                Role::Scheduler => {
                    tracker.spawn(crate::serve::scheduler(
                        Scheduled {
                            store: store.clone(),
                            feed: feed.clone(),
                            queue: queue.clone(),
                            log: Arc::new(b.queue.clone()),
                            delivery: b.delivery.clone(),
                        },
                        config.server.clone(),
                        config.feed.clone(),
                        cancel.clone(),
                    ));
                }
                Role::Edge => {}
            }
            let app = health_app(b.store.clone(), b.queue.clone())?;
            serve_app(&config, &tracker, app, config.listen, cancel.clone()).await?
        }
    };
    tracing::info!(?role, %addr, "hubbub role running");
    Ok(RoleRunning {
        addr,
        internal_addr,
        cancel,
        tracker,
    })
}

fn remote_engagement(config: &Config, b: &Backends) -> RemoteEngagement {
    RemoteEngagement::new(
        b.queue.connection(),
        &config.cluster.namespace,
        Arc::new(b.store.clone()),
        config.limits.max_text_chars as u32,
        wiring::edge_ttl(config),
    )
}

/// The edge's internal endpoint: a batch from a service.
pub(crate) fn deliver(
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
    tx: &mpsc::UnboundedSender<Vec<ToEdge>>,
) -> axum::response::Response {
    let given = headers
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if secret.is_empty() || !constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, "bad internal secret").into_response();
    }
    let batch: Vec<ToEdge> = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad batch: {e}")).into_response(),
    };
    if tx.send(batch).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "edge shutting down").into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
