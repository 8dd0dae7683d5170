//! The conformance suites of `Signals` and `Engagement` on the in-process implementations
//! (`SignalService`, `EngagementService`) over the in-process edge link and registry, on
//! paused tokio time: waits for lapses and windows cost no real time.

use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
use hubbub_registry::conformance::LocalTestEdges;
use hubbub_registry::{Delivery, LocalEdges, LocalRegistry};
use hubbub_store::SqliteStore;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Patience, in paused time: a wait for something that never comes ends at once.
const PATIENCE: Duration = Duration::from_secs(30);

async fn store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default())
        .expect("queue");
    (SqliteStore::open(queue).await.expect("store"), dir)
}

fn edges() -> (Arc<LocalEdges>, Arc<LocalTestEdges>) {
    let edges = Arc::new(LocalEdges::default());
    let test = Arc::new(LocalTestEdges {
        edges: edges.clone(),
        patience: PATIENCE,
    });
    (edges, test)
}

mod signals {
    use super::*;
    use hubbub_services::conformance::signals::{SharedSignals, SignalsEnv};
    use hubbub_services::signals::SignalService;

    async fn env() -> SignalsEnv {
        let (store, dir) = store().await;
        let (link, edges) = edges();
        let registry = Arc::new(LocalRegistry::default());
        let edge_ttl = Duration::from_secs(10);
        let signals = SignalService::new(
            Arc::new(store.clone()),
            Delivery::new(registry.clone(), link),
            edge_ttl,
        );
        let cancel = CancellationToken::new();
        tokio::spawn(signals.clone().run_lapses(cancel.clone()));
        SignalsEnv {
            signals: Arc::new(SharedSignals(Arc::new(signals))),
            registry,
            edges,
            store: Arc::new(store),
            edge_ttl,
            guard: Box::new((dir, cancel.drop_guard())),
        }
    }

    hubbub_services::signals_conformance_tests!(
        #[tokio::test(start_paused = true)]
        env()
    );
}

mod engagement {
    use super::*;
    use hubbub_services::conformance::engagement::EngagementEnv;
    use hubbub_services::engagement::{EngagementConfig, EngagementService};
    use tokio_util::task::TaskTracker;

    async fn env() -> EngagementEnv {
        let (store, dir) = store().await;
        let (link, edges) = edges();
        let config = EngagementConfig {
            window_s: 10,
            top_n: 3,
            partitions: 2,
            subscription_ttl: Duration::from_secs(5),
            max_words: 4000,
            limits: None,
        };
        let cancel = CancellationToken::new();
        let service = EngagementService::start(
            Arc::new(store.clone()),
            link,
            config.clone(),
            &TaskTracker::new(),
            cancel.clone(),
        );
        EngagementEnv {
            engagement: Arc::new(service),
            edges,
            store: Arc::new(store),
            config,
            guard: Box::new((dir, cancel.drop_guard())),
        }
    }

    hubbub_services::engagement_conformance_tests!(
        #[tokio::test(start_paused = true)]
        env()
    );
}
