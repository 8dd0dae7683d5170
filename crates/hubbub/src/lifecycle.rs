//! One lifecycle for every long-running part of a process.
//!
//! A [`Service`] has a name, is built from the process's [`Context`] (its configuration and
//! its backends, whichever they are) and runs until the process's cancellation token fires.
//! The [`Manager`] builds services, runs each on a task it tracks, logs when each starts and
//! stops, and turns a service's failure into a shutdown of the whole process: the others
//! finish the batch in hand and stop, and [`Manager::wait`] returns when every task has.
//!
//! `hubbub serve` is "every service on the embedded backends" (`serve.rs`); a role apart is
//! "these services on the cluster backends" (`roles.rs`): both hand a list to a manager. A
//! service that runs several workers (chat, feed, routers) owns them in a [`JoinSet`] it
//! awaits, so nothing a service starts outlives it.

use crate::config::Config;
use hubbub_protocol::internal::ToEdge;
use hubbub_queue::{Log, Queue};
use hubbub_registry::{Delivery, Engagement, Registry, Signals};
use hubbub_services::signals::SignalService;
use hubbub_services::timeline::Timeline;
use hubbub_store::{FeedStore, MediaStore, Store};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A long-running part of a process.
pub(crate) trait Service: Send + Sized + 'static {
    /// Its name, in logs.
    const NAME: &'static str;
    /// Build it from what the process runs on. Listeners are bound here, so that an address
    /// in use fails the start rather than a background task.
    fn build(ctx: &Context) -> impl Future<Output = anyhow::Result<Self>> + Send;
    /// Run until `cancel` fires, then finish what is in hand and return. An error stops the
    /// process.
    fn run(self, cancel: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What services are built from: the configuration and the backends, as trait objects, so
/// that a service is written once for the embedded and the cluster backends.
pub(crate) struct Context {
    pub(crate) config: Config,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) feed: Arc<dyn FeedStore>,
    pub(crate) media: Arc<dyn MediaStore>,
    pub(crate) queue: Arc<dyn Queue>,
    /// The logs (the router's `archive`).
    pub(crate) log: Arc<dyn Log>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) delivery: Delivery,
    pub(crate) timeline: Timeline,
    /// Presence and typing in this process (its lapses run as the `signals` service).
    pub(crate) signals: SignalService,
    /// Presence and typing as the edge asks for them: `signals` itself in one process, the
    /// Redis-backed view when roles run apart.
    pub(crate) edge_signals: Arc<dyn Signals>,
    /// Where engagement signals go, and who is told of comment counts and deleted posts.
    pub(crate) engagement: Arc<dyn Engagement>,
    /// The edge's id and the inbox its batches arrive on, taken by the edge service.
    pub(crate) edge_seat: Mutex<Option<EdgeSeat>>,
    /// The process's shutdown token (the manager's), for parts built with one.
    pub(crate) cancel: CancellationToken,
    /// Where listeners record the addresses they are bound to.
    pub(crate) bound: Mutex<Bound>,
    /// The runtime config this process applies (published by the `config` service).
    pub(crate) runtime: crate::control::Runtime,
    /// What only the services of roles apart need (none in `hubbub serve`).
    #[cfg(feature = "cluster")]
    pub(crate) cluster: Option<crate::roles::ClusterParts>,
}

impl Context {
    /// Take the edge's seat (once: there is one edge per process).
    pub(crate) fn take_edge_seat(&self) -> anyhow::Result<EdgeSeat> {
        self.edge_seat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("this process has no edge seat (or used it)"))
    }

    /// Record a bound address.
    pub(crate) fn record(&self, f: impl FnOnce(&mut Bound)) {
        f(&mut self.bound.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The addresses bound so far.
    pub(crate) fn bound(&self) -> Bound {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The edge of this process: its id, and the batches services hand to it.
pub(crate) struct EdgeSeat {
    pub(crate) id: String,
    pub(crate) inbox: mpsc::UnboundedReceiver<Vec<ToEdge>>,
}

/// The addresses a process's listeners are bound to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bound {
    /// The public listener (the edge), or the health listener of another role.
    pub(crate) public: Option<SocketAddr>,
    /// The admin listener, when `admin_listen` is set.
    pub(crate) admin: Option<SocketAddr>,
    /// The edge's internal listener, when roles run apart.
    #[cfg(feature = "cluster")]
    pub(crate) internal: Option<SocketAddr>,
}

/// Starts services and waits for them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Manager {
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The runtime of the message path's services, when it has its own (see
    /// [`Manager::with_core_runtime`]).
    core: Option<Arc<CoreRuntime>>,
}

/// A runtime of its own for the services on the message path (router, chat, feed ...), so
/// that their next step does not wait in the same run queue as ten thousand sessions each
/// writing to its socket: with one sender and a big channel, a message's trip through the
/// queues took a sweep of every busy session per hop (8 messages a second at 10,000
/// subscribers). The operating system shares the cores between the two runtimes' threads.
#[derive(Debug)]
struct CoreRuntime(Option<tokio::runtime::Runtime>);

impl Drop for CoreRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids; the tasks on it have
        // all returned by now (the manager waited for them).
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Manager {
    /// A manager with nothing running, every service on the process's runtime (the roles
    /// apart: a role runs either sessions or the message path, not both).
    #[cfg_attr(not(any(test, feature = "cluster")), allow(dead_code))]
    pub(crate) fn new() -> Self {
        Manager::default()
    }

    /// A manager whose [`Manager::start_core`] services run on a runtime of their own, with
    /// `threads` worker threads.
    pub(crate) fn with_core_runtime(threads: usize) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("hubbub-core")
            .enable_all()
            .build()?;
        Ok(Manager {
            core: Some(Arc::new(CoreRuntime(Some(rt)))),
            ..Manager::default()
        })
    }

    /// The token that stops every service.
    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The tracker every task of the process runs on (for parts that start their own
    /// workers while being built: the in-process engagement partitions).
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Build `S` from `ctx` and run it on a tracked task.
    pub(crate) async fn start<S: Service>(&self, ctx: &Context) -> anyhow::Result<()> {
        let service = S::build(ctx)
            .await
            .map_err(|e| e.context(format!("starting the {} service", S::NAME)))?;
        self.spawn(service);
        Ok(())
    }

    /// Build `S` and run it on the message path's runtime (the process's own when there is
    /// none).
    pub(crate) async fn start_core<S: Service>(&self, ctx: &Context) -> anyhow::Result<()> {
        let service = S::build(ctx)
            .await
            .map_err(|e| e.context(format!("starting the {} service", S::NAME)))?;
        match self.core.as_ref().and_then(|c| c.0.as_ref()) {
            Some(rt) => {
                let handle = rt.handle().clone();
                self.tracker
                    .spawn_on(Self::supervised(service, self.cancel.clone()), &handle);
            }
            None => self.spawn(service),
        }
        Ok(())
    }

    /// Run a built service on a tracked task; its failure cancels the others.
    pub(crate) fn spawn<S: Service>(&self, service: S) {
        self.tracker
            .spawn(Self::supervised(service, self.cancel.clone()));
    }

    /// A service's run, logged, its failure cancelling the others.
    async fn supervised<S: Service>(service: S, cancel: CancellationToken) {
        tracing::debug!(service = S::NAME, "service started");
        match service.run(cancel.clone()).await {
            Ok(()) => tracing::debug!(service = S::NAME, "service stopped"),
            Err(e) => {
                tracing::error!(service = S::NAME, error = %e, "service failed; stopping");
                cancel.cancel();
            }
        }
    }

    /// Wait until every service has stopped (after `cancel`, or a failure).
    pub(crate) async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Run `workers` at once until all have returned (each stops when `cancel` fires).
pub(crate) async fn run_all<F>(workers: impl IntoIterator<Item = F>) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut set = JoinSet::new();
    for w in workers {
        set.spawn(w);
    }
    while let Some(done) = set.join_next().await {
        done.map_err(|e| anyhow::anyhow!("a worker panicked: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Fails;
    impl Service for Fails {
        const NAME: &'static str = "fails";
        async fn build(_: &Context) -> anyhow::Result<Self> {
            Ok(Fails)
        }
        async fn run(self, _: CancellationToken) -> anyhow::Result<()> {
            anyhow::bail!("broken")
        }
    }

    struct UntilCancelled;
    impl Service for UntilCancelled {
        const NAME: &'static str = "until-cancelled";
        async fn build(_: &Context) -> anyhow::Result<Self> {
            Ok(UntilCancelled)
        }
        async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
            run_all([async move { cancel.cancelled().await }]).await
        }
    }

    #[tokio::test]
    async fn a_failing_service_stops_the_others() {
        let m = Manager::new();
        m.spawn(UntilCancelled);
        m.spawn(Fails);
        // A bound on a hang, not a timing assertion.
        tokio::time::timeout(Duration::from_secs(30), m.clone().wait())
            .await
            .expect("every service stopped");
        assert!(m.cancel().is_cancelled());
    }

    #[tokio::test]
    async fn a_panicking_worker_is_an_error() {
        assert!(run_all((0..2).map(|_| async {})).await.is_ok());
        let boom: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(async { panic!("boom") });
        assert!(run_all([boom]).await.is_err());
    }
}
