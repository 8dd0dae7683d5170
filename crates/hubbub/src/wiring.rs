//! What `hubbub serve` and the roles apart build the same way, whatever the backends: the
//! edge's settings, the routing table, the engagement settings, and the service loops.

use crate::config::Config;
use hubbub_edge::EdgeConfig;
use hubbub_queue::Queue;
use hubbub_registry::{Delivery, Engagement};
use hubbub_router::RoutingTable;
use hubbub_services::chat::{CHAT_QUEUE, CHAT_TYPES, ChatService};
use hubbub_services::engagement::EngagementConfig;
use hubbub_services::feed::{FEED_QUEUE, FEED_TYPES, FeedService};
use hubbub_services::notify::{Notifier, PushProvider, Webhook};
use hubbub_services::timeline::{Personalizer, Timeline, TimelineComputer};
use hubbub_store::{FeedStore, MediaStore, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an edge may stay silent before its sessions are dropped.
pub(crate) fn edge_ttl(config: &Config) -> Duration {
    Duration::from_secs(config.server.edge_ttl_s.max(1))
}

/// An edge's settings.
pub(crate) fn edge_config(config: &Config, edge_id: String) -> EdgeConfig {
    EdgeConfig {
        edge_id,
        limits: config.limits.clone(),
        auth: config.auth.clone(),
        key_file: config.data_dir.join("keys.json"),
        spool_dir: config.data_dir.join("spool"),
        request_timeout: Duration::from_millis(config.server.request_timeout_ms.max(1)),
        ping_interval: Duration::from_secs(config.server.ping_interval_s.max(1)),
        heartbeat_interval: edge_ttl(config) / 3,
        http: http_limits(config),
        max_sessions_per_user: config.server.max_sessions_per_user.max(1),
        operational_on_public: config.admin_listen.is_none(),
        client_ip_header: config.server.client_ip_header.clone(),
    }
}

/// The public listener's connection caps and timeouts.
pub(crate) fn http_limits(config: &Config) -> hubbub_edge::listener::HttpLimits {
    let ceiling = hubbub_edge::listener::connection_ceiling();
    let max_connections = match config.server.max_connections {
        0 => ceiling,
        n => n.min(ceiling),
    };
    hubbub_edge::listener::HttpLimits {
        max_connections,
        max_per_ip: config.server.max_connections_per_ip.max(1),
        header_timeout: Duration::from_millis(config.server.header_timeout_ms.max(100)),
        body_timeout: Duration::from_millis(config.server.body_timeout_ms.max(100)),
    }
}

/// Which queue each write goes to.
pub(crate) fn routing_table() -> RoutingTable {
    RoutingTable::new()
        .route(CHAT_TYPES, CHAT_QUEUE)
        .route(FEED_TYPES, FEED_QUEUE)
}

/// The engagement aggregators' settings.
pub(crate) fn engagement_config(config: &Config) -> EngagementConfig {
    EngagementConfig {
        window_s: config.engagement.window_s.max(1),
        top_n: config.engagement.top_n,
        partitions: config.engagement.partitions.max(1),
        subscription_ttl: edge_ttl(config),
        max_words: config.limits.max_text_chars as u32,
    }
}

/// What the service loops run on.
pub(crate) struct ServiceDeps {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) feed: Arc<dyn FeedStore>,
    pub(crate) media: Arc<dyn MediaStore>,
    pub(crate) queue: Arc<dyn Queue>,
    pub(crate) delivery: Delivery,
    pub(crate) timeline: Timeline,
    /// Told of new comment counts and deleted posts.
    pub(crate) engagement: Arc<dyn Engagement>,
}

/// Start the loops of one service: `chat`, `feed`, `timeline` or `notify`.
pub(crate) fn spawn_service(
    name: &str,
    config: &Config,
    d: &ServiceDeps,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let notify = config
        .notify
        .webhook
        .as_ref()
        .map(|_| config.notify.clone());
    match name {
        "chat" => {
            for _ in 0..config.server.chat_workers.max(1) {
                let chat = ChatService::new(
                    d.store.clone(),
                    d.media.clone(),
                    d.queue.clone(),
                    d.delivery.clone(),
                    config.limits.clone(),
                );
                let chat = match &notify {
                    Some(n) => chat.with_notify(n.clone()),
                    None => chat,
                };
                tracker.spawn(chat.run(cancel.clone()));
            }
        }
        "feed" => {
            for _ in 0..config.feed.workers.max(1) {
                let feed = FeedService::new(
                    d.feed.clone(),
                    d.media.clone(),
                    d.queue.clone(),
                    d.delivery.clone(),
                    config.limits.clone(),
                    Duration::from_millis(config.feed.precompute_dedupe_ms.max(1)),
                )
                .with_engagement(d.engagement.clone());
                let feed = match &notify {
                    Some(n) => feed.with_notify(n.clone()),
                    None => feed,
                };
                tracker.spawn(feed.run(cancel.clone()));
            }
        }
        "timeline" => {
            for _ in 0..config.feed.timeline_workers.max(1) {
                tracker.spawn(TimelineComputer::run(
                    d.timeline.clone(),
                    d.queue.clone(),
                    cancel.clone(),
                ));
                tracker.spawn(Personalizer::run(
                    d.timeline.clone(),
                    d.queue.clone(),
                    cancel.clone(),
                ));
            }
        }
        "notify" => {
            let Some(webhook) = &config.notify.webhook else {
                anyhow::bail!("the notify service needs [notify.webhook]");
            };
            let provider = Webhook::new(webhook.clone())
                .map_err(|e| anyhow::anyhow!("notify.webhook: {e}"))?;
            let providers: Vec<(Arc<dyn PushProvider>, u32, u32)> =
                vec![(Arc::new(provider), webhook.rate_per_s, webhook.burst)];
            let notifier = Notifier::new(
                d.store.clone(),
                d.queue.clone(),
                providers,
                config.notify.clone(),
            );
            tracker.spawn(notifier.run(cancel.clone()));
        }
        other => anyhow::bail!("unknown service {other:?}"),
    }
    Ok(())
}

/// Bind and serve the admin listener when `admin_listen` is set; its bound address.
pub(crate) async fn serve_admin(
    config: &Config,
    edge: &hubbub_edge::Edge,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    use anyhow::Context;
    let Some(at) = config.admin_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .with_context(|| format!("listening on {at} (admin_listen)"))?;
    let addr = listener.local_addr()?;
    let (edge, stop) = (edge.clone(), cancel.clone());
    tracker.spawn(async move {
        if let Err(e) = edge.serve_admin(listener).await {
            tracing::error!(error = %e, "admin listener stopped");
            stop.cancel();
        }
    });
    Ok(Some(addr))
}
