//! The services every process is made of, written once for the embedded and the cluster
//! backends: the edge, the routers, the chat, feed, timeline and notify workers, the signal
//! lapses and the scheduler ([`crate::scheduler`]). Each is a [`Service`] built from a
//! [`Context`]; `serve.rs` starts them all, `roles.rs` the ones a role names.

use crate::lifecycle::{Context, Service, run_all};
use crate::wiring;
use anyhow::Context as _;
use hubbub_edge::{Edge, EdgeDeps};
use hubbub_queue::Queue;
use hubbub_router::Router;
use hubbub_services::chat::{ChatQueries, ChatService};
use hubbub_services::feed::FeedService;
use hubbub_services::notify::{Notifier, PushProvider, Webhook};
use hubbub_services::signals::SignalService;
use hubbub_services::timeline::{Personalizer, Timeline, TimelineComputer, TimelineReader};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bind a listener, saying which setting named the address when it fails.
pub(crate) async fn bind(addr: std::net::SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} ({setting})"))
}

/// The edge: the public listener (WebSocket, SSE, HTTP API) and, when `admin_listen` is
/// set, the admin listener.
pub(crate) struct EdgeServer {
    edge: Edge,
    public: TcpListener,
    admin: Option<TcpListener>,
}

impl Service for EdgeServer {
    const NAME: &'static str = "edge";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let config = &ctx.config;
        let seat = ctx.take_edge_seat()?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        let edge = Edge::new(
            wiring::edge_config(config, seat.id),
            EdgeDeps {
                store: ctx.store.clone(),
                queue: ctx.queue.clone(),
                registry: ctx.registry.clone(),
                media: ctx.media.clone(),
                chat: Arc::new(ChatQueries::new(ctx.store.clone())),
                signals: ctx.edge_signals.clone(),
                timelines: Arc::new(TimelineReader::new(ctx.timeline.clone())),
                engagement: ctx.engagement.clone(),
                metrics: wiring::metrics_handle()?,
                delivery: ctx.delivery.clone(),
                webhooks: webhooks(ctx),
                runtime: ctx.runtime.subscribe(),
            },
            seat.inbox,
            ctx.cancel.clone(),
        )?;
        let public = bind(config.listen, "listen").await?;
        let admin = match config.admin_listen {
            Some(at) => Some(bind(at, "admin_listen").await?),
            None => None,
        };
        ctx.record(|b| {
            b.public = public.local_addr().ok();
            b.admin = admin.as_ref().and_then(|l| l.local_addr().ok());
        });
        Ok(EdgeServer {
            edge,
            public,
            admin,
        })
    }

    async fn run(self, _cancel: CancellationToken) -> anyhow::Result<()> {
        // The edge was built with the process's token: both listeners stop with it.
        let admin = async {
            match self.admin {
                Some(l) => self.edge.clone().serve_admin(l).await,
                None => Ok(()),
            }
        };
        let (public, admin) = tokio::join!(self.edge.clone().serve(self.public), admin);
        public.context("the public listener")?;
        admin.context("the admin listener")?;
        Ok(())
    }
}

/// The routers: `main` → the service queues and the `archive` log.
pub(crate) struct Routers(Vec<Router>);

impl Service for Routers {
    const NAME: &'static str = "router";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let table = wiring::routing_table();
        Ok(Routers(
            (0..ctx.config.server.routers.max(1))
                .map(|_| {
                    Router::new(
                        ctx.queue.clone(),
                        ctx.log.clone(),
                        table.clone(),
                        ctx.delivery.clone(),
                    )
                })
                .collect(),
        ))
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        run_all(self.0.into_iter().map(|r| r.run(cancel.clone()))).await
    }
}

/// The chat service's workers (writes; its reads are answered by the edge through
/// [`ChatQueries`]).
pub(crate) struct Chat(Vec<ChatService>);

impl Service for Chat {
    const NAME: &'static str = "chat";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let config = &ctx.config;
        Ok(Chat(
            (0..config.server.chat_workers.max(1))
                .map(|_| {
                    let chat = ChatService::new(
                        ctx.store.clone(),
                        ctx.media.clone(),
                        ctx.queue.clone(),
                        ctx.delivery.clone(),
                        hubbub_services::LiveLimits::new(ctx.runtime.subscribe()),
                    );
                    let chat = chat.with_webhooks(webhooks(ctx));
                    match notify_settings(ctx) {
                        Some(n) => chat.with_notify(n),
                        None => chat,
                    }
                })
                .collect(),
        ))
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        run_all(self.0.into_iter().map(|c| c.run(cancel.clone()))).await
    }
}

/// The feed service's workers.
pub(crate) struct Feed(Vec<FeedService>);

impl Service for Feed {
    const NAME: &'static str = "feed";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let config = &ctx.config;
        Ok(Feed(
            (0..config.feed.workers.max(1))
                .map(|_| {
                    let feed = FeedService::new(
                        ctx.feed.clone(),
                        ctx.media.clone(),
                        ctx.queue.clone(),
                        ctx.delivery.clone(),
                        hubbub_services::LiveLimits::new(ctx.runtime.subscribe()),
                        Duration::from_millis(config.feed.precompute_dedupe_ms.max(1)),
                    )
                    .with_engagement(ctx.engagement.clone());
                    match notify_settings(ctx) {
                        Some(n) => feed.with_notify(n),
                        None => feed,
                    }
                })
                .collect(),
        ))
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        run_all(self.0.into_iter().map(|f| f.run(cancel.clone()))).await
    }
}

/// The notify settings, when a push provider is configured (then chat and feed put
/// notifications on the `notify` queue).
fn notify_settings(ctx: &Context) -> Option<hubbub_services::notify::NotifyConfig> {
    ctx.config
        .notify
        .webhook
        .as_ref()
        .map(|_| ctx.config.notify.clone())
}

/// The timeline workers: precompute (fan-out on read of the follow graph) and
/// personalization.
pub(crate) struct Timelines {
    timeline: Timeline,
    queue: Arc<dyn Queue>,
    workers: usize,
}

impl Service for Timelines {
    const NAME: &'static str = "timeline";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        Ok(Timelines {
            timeline: ctx.timeline.clone(),
            queue: ctx.queue.clone(),
            workers: ctx.config.feed.timeline_workers.max(1),
        })
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut workers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
        for _ in 0..self.workers {
            workers.push(Box::pin(TimelineComputer::run(
                self.timeline.clone(),
                self.queue.clone(),
                cancel.clone(),
            )));
            workers.push(Box::pin(Personalizer::run(
                self.timeline.clone(),
                self.queue.clone(),
                cancel.clone(),
            )));
        }
        run_all(workers).await
    }
}

/// The notify service: the `notify` queue to the push providers.
pub(crate) struct Notify(Notifier);

impl Service for Notify {
    const NAME: &'static str = "notify";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        let config = &ctx.config;
        let Some(webhook) = &config.notify.webhook else {
            anyhow::bail!("the notify service needs [notify.webhook]");
        };
        let provider =
            Webhook::new(webhook.clone()).map_err(|e| anyhow::anyhow!("notify.webhook: {e}"))?;
        let providers: Vec<(Arc<dyn PushProvider>, u32, u32)> =
            vec![(Arc::new(provider), webhook.rate_per_s, webhook.burst)];
        Ok(Notify(Notifier::new(
            ctx.store.clone(),
            ctx.queue.clone(),
            providers,
            config.notify.clone(),
        )))
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        self.0.run(cancel).await;
        Ok(())
    }
}

/// The producers' side of webhooks over this process's store and queue.
pub(crate) fn webhooks(ctx: &Context) -> Arc<hubbub_store::webhooks::Webhooks> {
    Arc::new(hubbub_store::webhooks::Webhooks::new(
        ctx.store.clone(),
        ctx.queue.clone(),
        Duration::from_secs(ctx.config.webhooks.offline_grace_s),
    ))
}

/// The webhook worker: the `webhooks` queue to the app's endpoints, and presence
/// announcements.
pub(crate) struct WebhookDelivery(hubbub_services::webhooks::WebhookWorker);

impl Service for WebhookDelivery {
    const NAME: &'static str = "webhooks";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        Ok(WebhookDelivery(
            hubbub_services::webhooks::WebhookWorker::new(
                webhooks(ctx),
                ctx.store.clone(),
                ctx.queue.clone(),
                ctx.registry.clone(),
                ctx.config.webhooks.clone(),
            )
            .context("the webhooks' HTTP client")?,
        ))
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        self.0.run(cancel).await;
        Ok(())
    }
}

/// The lapses of this process's signals: typing that stops by itself, presence of sessions
/// whose edge went silent.
pub(crate) struct SignalLapses(SignalService);

impl Service for SignalLapses {
    const NAME: &'static str = "signals";

    async fn build(ctx: &Context) -> anyhow::Result<Self> {
        Ok(SignalLapses(ctx.signals.clone()))
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        self.0.run_lapses(cancel).await;
        Ok(())
    }
}
