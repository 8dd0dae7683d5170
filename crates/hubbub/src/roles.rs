//! Roles apart (feature `cluster`): `hubbub edge`, `hubbub router`, `hubbub worker --services
//! ...` and `hubbub scheduler`, on Redis (queues, logs, the session registry, the timeline
//! cache) and PostgreSQL (the store), all from `hubbub-cluster`. Any number of each may run
//! at once. A role is a list of services ([`crate::parts`]) on the cluster backends, started
//! by the same [`Manager`] as `hubbub serve`; the services only roles apart have are here:
//!
//! - **edge**: the public listener, plus [`EdgeLinkIn`] (the internal listener
//!   `cluster.internal_listen` where services `POST` batches for its sessions, authenticated
//!   by `cluster.internal_secret`, and the heartbeat that keeps its address in the registry;
//!   when it dies, its sessions expire with it, `server.edge_ttl_s`) and [`Presence`]
//!   (presence computed from the registry and Redis; typing is relayed through the edge
//!   link; engagement signals go over Redis pub/sub to the worker that leads the
//!   `engagement` service).
//! - **router**: `main` → service queues and the `archive` log.
//! - **worker**: the services named by `--services` (`chat`, `feed`, `timeline`,
//!   `engagement` ([`EngagementLeader`]), `notify`).
//! - **scheduler**: the periodic jobs. Several schedulers only repeat idempotent work.
//!
//! Every role also serves `/healthz`, `/readyz` and `/metrics` (on `listen` for roles other
//! than the edge ([`Health`]), which serves them on its public listener).

use crate::config::Config;
use crate::lifecycle::{Context, EdgeSeat, Manager, Service};
use crate::parts::{
    Chat, EdgeServer, Feed, Notify, Routers, SignalLapses, Timelines, WebhookDelivery, bind,
};
use crate::scheduler::Scheduler;
use crate::wiring;
use anyhow::Context as _;
use axum::http::StatusCode;
use hubbub_cluster::edge_link;
use hubbub_cluster::{
    ClusterSignals, EngagementWorker, HttpEdges, PgStore, RedisConfig, RedisQueue, RedisRegistry,
    RedisTimelineCache, RemoteEngagement,
};
use hubbub_protocol::internal::ToEdge;
use hubbub_queue::{Queue, QueueConfig};
use hubbub_registry::{Coalescing, Delivery};
use hubbub_router::MAIN_QUEUE;
use hubbub_services::signals::SignalService;
use hubbub_services::timeline::{RecencyEngagement, Timeline, TimelineConfig};
use hubbub_store::InboxStore;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
pub const SERVICES: &[&str] = &[
    "chat",
    "feed",
    "timeline",
    "engagement",
    "notify",
    "webhooks",
];

/// A started role.
pub struct RoleRunning {
    /// The public (edge) or health (other roles) listener's address.
    pub addr: SocketAddr,
    /// The edge's internal listener, for an edge.
    pub internal_addr: Option<SocketAddr>,
    /// Cancel to stop.
    pub cancel: CancellationToken,
    manager: Manager,
}

impl RoleRunning {
    /// Wait until stopped (after `cancel`).
    pub async fn wait(self) {
        self.manager.wait().await;
    }
}

/// `hubbub rotate-note-keys` on PostgreSQL (every node stopped): a new current key in
/// `<data_dir>/note-keys`, then every note re-sealed under it. Returns the new key's id and
/// how many notes were re-sealed.
pub async fn rotate_keys(config: &Config, url: &str) -> anyhow::Result<(String, u64)> {
    let keys = wiring::rotate_note_keys(config)?;
    let current = keys.current().to_owned();
    let store = PgStore::connect(url, 2)
        .await
        .context("connecting to PostgreSQL")?
        .with_note_keys(keys);
    let resealed = wiring::reseal_all(&store).await?;
    Ok((current, resealed))
}

/// Start a role; listeners are bound before this returns.
pub async fn start(role: Role, config: Config) -> anyhow::Result<RoleRunning> {
    if let Role::Worker(services) = &role
        && let Some(s) = services.iter().find(|s| !SERVICES.contains(&s.as_str()))
    {
        anyhow::bail!(
            "unknown service {s:?}: choose among {}",
            SERVICES.join(", ")
        );
    }
    let manager = Manager::new();
    // Only edges (which seal notes and serve `contact.list`) and the chat service (which
    // opens them) read the note keys; the others never create a key file of their own.
    let notes = match &role {
        Role::Edge => true,
        Role::Worker(services) => services.iter().any(|s| s == "chat"),
        Role::Router | Role::Scheduler => false,
    };
    let cluster = Cluster::connect(&config, role == Role::Edge, notes).await?;
    let ctx = cluster.context(&config, &manager)?;
    // Every role watches the runtime config; first, so the others start on it.
    manager.start::<crate::control::ConfigWatcher>(&ctx).await?;
    match &role {
        Role::Edge => {
            manager.start::<EdgeLinkIn>(&ctx).await?;
            manager.start::<SignalLapses>(&ctx).await?;
            manager.start::<Presence>(&ctx).await?;
            manager.start::<EdgeServer>(&ctx).await?;
        }
        Role::Router => manager.start::<Routers>(&ctx).await?,
        Role::Scheduler => manager.start::<Scheduler>(&ctx).await?,
        Role::Worker(services) => {
            for s in services {
                match s.as_str() {
                    "chat" => manager.start::<Chat>(&ctx).await?,
                    "feed" => manager.start::<Feed>(&ctx).await?,
                    "timeline" => manager.start::<Timelines>(&ctx).await?,
                    "notify" => manager.start::<Notify>(&ctx).await?,
                    "webhooks" => manager.start::<WebhookDelivery>(&ctx).await?,
                    "engagement" => manager.start::<EngagementLeader>(&ctx).await?,
                    // Checked above.
                    _ => {}
                }
            }
        }
    }
    if role != Role::Edge {
        manager.start::<Health>(&ctx).await?;
    }
    let bound = ctx.bound();
    let addr = bound.public.context("the role bound no listener")?;
    tracing::info!(?role, %addr, "hubbub role running");
    Ok(RoleRunning {
        addr,
        internal_addr: bound.internal,
        cancel: manager.cancel().clone(),
        manager,
    })
}

/// The cluster backends, connected.
struct Cluster {
    queue: RedisQueue,
    store: PgStore,
    registry: RedisRegistry,
    link: Arc<HttpEdges>,
    delivery: Delivery,
    /// An edge's seat and the sending end of its inbox (for its internal listener).
    seat: Option<(EdgeSeat, mpsc::UnboundedSender<Vec<ToEdge>>)>,
    redis_url: String,
    secret: String,
}

impl Cluster {
    async fn connect(config: &Config, edge: bool, notes: bool) -> anyhow::Result<Self> {
        let c = &config.cluster;
        let redis_url = c
            .redis_url
            .clone()
            .context("roles apart need cluster.redis_url (--redis-url)")?;
        let pg_url = c
            .postgres_url
            .clone()
            .context("roles apart need cluster.postgres_url (--postgres-url)")?;
        let secret = c.internal_secret.clone().context(
            "roles apart need cluster.internal_secret (HUBBUB_CLUSTER__INTERNAL_SECRET)",
        )?;
        let queue = RedisQueue::connect(RedisConfig {
            url: redis_url.clone(),
            namespace: c.namespace.clone(),
            max_body_bytes: config.queue.max_body_bytes,
            default_queue: QueueConfig {
                max_receives: config.queue.max_receives.max(1),
            },
            dedupe_window: Duration::from_secs(config.queue.dedupe_window_s.max(1)),
            timeout: Duration::from_secs(2),
            wake_every: hubbub_cluster::queue::WAKE_EVERY,
        })?;
        let mut store = PgStore::connect(&pg_url, c.postgres_max_connections)
            .await
            .context("connecting to PostgreSQL")?;
        if notes {
            store = store.with_note_keys(wiring::note_keys(config)?);
        }
        let registry = RedisRegistry::new(queue.connection(), &c.namespace);
        let link = Arc::new(HttpEdges::new(registry.clone(), &secret)?);
        // A worker pushes dozens of envelopes' events at once, mostly to the same members:
        // their lookups go to Redis merged (one `HGETALL` per distinct user per round trip).
        let delivery = Delivery::new(
            Arc::new(Coalescing::new(Arc::new(registry.clone()))),
            link.clone(),
        );
        let seat = if edge {
            let (tx, inbox) = mpsc::unbounded_channel();
            let id = hubbub_store::new_id("edge-")?;
            Some((EdgeSeat { id, inbox }, tx))
        } else {
            None
        };
        Ok(Cluster {
            queue,
            store,
            registry,
            link,
            delivery,
            seat,
            redis_url,
            secret,
        })
    }

    /// What the services are built from.
    fn context(self, config: &Config, manager: &Manager) -> anyhow::Result<Context> {
        let c = &config.cluster;
        let store = Arc::new(self.store.clone());
        let timeline = Timeline::new(
            store.clone(),
            Arc::new(RedisTimelineCache::new(
                self.queue.connection(),
                &c.namespace,
                Duration::from_secs(config.feed.active_window_s.max(3600)),
            )),
            Arc::new(RecencyEngagement::default()),
            TimelineConfig {
                len: config.feed.timeline_len.max(1),
            },
        );
        let signals = SignalService::new(
            store.clone(),
            self.delivery.clone(),
            wiring::edge_ttl(config),
        );
        let presence = ClusterSignals::new(
            signals.clone(),
            Arc::new(self.registry.clone()),
            self.delivery.clone(),
            self.queue.connection(),
            &self.redis_url,
            &c.namespace,
        );
        let runtime = crate::control::runtime(config);
        // The word cap follows the runtime config's limits.
        let engagement = RemoteEngagement::new(
            self.queue.connection(),
            &c.namespace,
            store.clone(),
            config.limits.max_text_chars as u32,
            wiring::edge_ttl(config),
        )
        .with_live_limits(hubbub_services::LiveLimits::new(runtime.subscribe()));
        let (seat, inbox_tx) = match self.seat {
            Some((seat, tx)) => (Some(seat), Some(tx)),
            None => (None, None),
        };
        Ok(Context {
            config: config.clone(),
            store: store.clone(),
            feed: store.clone(),
            media: wiring::media_store(config, self.store.clone())?,
            queue: Arc::new(self.queue.clone()),
            log: Arc::new(self.queue.clone()),
            registry: Arc::new(self.registry.clone()),
            delivery: self.delivery.clone(),
            timeline,
            signals,
            edge_signals: Arc::new(presence.clone()),
            engagement: Arc::new(engagement),
            edge_seat: Mutex::new(seat),
            cancel: manager.cancel().clone(),
            bound: Mutex::default(),
            runtime,
            cluster: Some(ClusterParts {
                queue: self.queue,
                store: self.store,
                registry: self.registry,
                link: self.link,
                presence,
                inbox_tx: Mutex::new(inbox_tx),
                redis_url: self.redis_url,
                secret: self.secret,
            }),
        })
    }
}

/// What only the cluster's own services need, beside the shared [`Context`].
pub(crate) struct ClusterParts {
    queue: RedisQueue,
    store: PgStore,
    registry: RedisRegistry,
    link: Arc<HttpEdges>,
    presence: ClusterSignals,
    /// The sending end of the edge's inbox, taken by its internal listener.
    inbox_tx: Mutex<Option<mpsc::UnboundedSender<Vec<ToEdge>>>>,
    redis_url: String,
    secret: String,
}

/// The cluster parts of a context built by [`Cluster::context`].
fn cluster(ctx: &Context) -> anyhow::Result<&ClusterParts> {
    ctx.cluster
        .as_ref()
        .context("this service runs only when roles run apart")
}

/// The edge's end of the edge link: the internal listener services deliver batches to, and
/// the heartbeat that keeps the edge's address in the registry.
pub(crate) struct EdgeLinkIn {
    listener: TcpListener,
    app: axum::Router,
    registry: RedisRegistry,
    edge: String,
    advertise: String,
    ttl: Duration,
    limits: hubbub_edge::listener::HttpLimits,
}

impl Service for EdgeLinkIn {
    const NAME: &'static str = "edge-link";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let c = cluster(ctx)?;
        let config = &ctx.config;
        let inbox = c
            .inbox_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .context("this process is not an edge")?;
        let edge = ctx
            .edge_seat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.id.clone())
            .context("this process is not an edge")?;
        let listener = bind(config.cluster.internal_listen, "cluster.internal_listen").await?;
        let bound = listener.local_addr()?;
        ctx.record(|b| b.internal = Some(bound));
        let advertise = config
            .cluster
            .internal_advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let ttl = wiring::edge_ttl(config);
        // Registered once now, so that an edge without Redis fails to start.
        c.registry
            .edge_alive(&edge, &advertise, ttl)
            .await
            .context("registering the edge in Redis")?;
        Ok(EdgeLinkIn {
            listener,
            app: edge_link::receiver(c.secret.clone(), inbox),
            registry: c.registry.clone(),
            edge,
            advertise,
            ttl,
            limits: wiring::http_limits(config),
        })
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let beat = edge_link::heartbeat(
            self.registry,
            self.edge,
            self.advertise,
            self.ttl,
            cancel.clone(),
        );
        let serve = hubbub_edge::listener::serve(self.listener, self.app, self.limits, cancel);
        let ((), served) = tokio::join!(beat, serve);
        served.context("the internal listener")
    }
}

/// Presence across edges: this edge's watchers told of changes published by any edge.
pub(crate) struct Presence(ClusterSignals);

impl Service for Presence {
    const NAME: &'static str = "presence";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        Ok(Presence(cluster(ctx)?.presence.clone()))
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        self.0.run(cancel).await;
        Ok(())
    }
}

/// The `engagement` service of a worker: while it holds the lease, it aggregates every
/// edge's signals and publishes `engagement` frames through the edge link.
pub(crate) struct EngagementLeader(EngagementWorker);

impl Service for EngagementLeader {
    const NAME: &'static str = "engagement";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let c = cluster(ctx)?;
        Ok(EngagementLeader(EngagementWorker::new(
            &c.redis_url,
            &ctx.config.cluster.namespace,
            c.queue.connection(),
            ctx.feed.clone(),
            c.link.clone(),
            wiring::engagement_config(&ctx.config),
        )))
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        self.0.run(cancel).await;
        Ok(())
    }
}

/// `/healthz`, `/readyz` (the store and the queue answer) and `/metrics`, on `listen`, for
/// roles other than the edge.
pub(crate) struct Health {
    listener: TcpListener,
    app: axum::Router,
    limits: hubbub_edge::listener::HttpLimits,
}

impl Service for Health {
    const NAME: &'static str = "health";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let c = cluster(ctx)?;
        let metrics = wiring::metrics_handle()?;
        let (store, queue) = (c.store.clone(), c.queue.clone());
        let app = axum::Router::new()
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
            );
        let listener = bind(ctx.config.listen, "listen").await?;
        ctx.record(|b| b.public = listener.local_addr().ok());
        Ok(Health {
            listener,
            app,
            limits: wiring::http_limits(&ctx.config),
        })
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        hubbub_edge::listener::serve(self.listener, self.app, self.limits, cancel)
            .await
            .context("the health listener")
    }
}
