//! The engagement conformance suite on [`RemoteEngagement`] (the edges' side: signals
//! published on Redis) and one [`EngagementWorker`] leading (aggregating, publishing
//! through the HTTP edge link to real edge internal listeners); the store is SQLite (only
//! its traits are used).

use crate::support::{ClusterEdges, EDGE_TTL, SECRET, redis, sqlite, subscribed};
use hubbub_cluster::{EngagementWorker, HttpEdges, RedisRegistry, RemoteEngagement};
use hubbub_services::conformance::engagement::EngagementEnv;
use hubbub_services::engagement::EngagementConfig;
use hubbub_store::FeedStore;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

async fn env() -> EngagementEnv {
    let (conn, namespace) = redis();
    let registry = RedisRegistry::new(conn.clone(), &namespace);
    let link = Arc::new(HttpEdges::new(registry.clone(), SECRET).expect("link"));
    let (store, dir) = sqlite().await;
    let store: Arc<dyn FeedStore> = Arc::new(store);
    // Real time: a short window, and subscriptions that last an edge TTL (as in roles).
    let config = EngagementConfig {
        window_s: 5,
        top_n: 3,
        partitions: 2,
        subscription_ttl: EDGE_TTL,
        max_words: 4000,
        limits: None,
    };
    let worker = EngagementWorker::new(
        &crate::queue::redis_url(),
        &namespace,
        conn.clone(),
        store.clone(),
        link,
        config.clone(),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(worker.run(cancel.clone()));
    // Leading once it follows the channel.
    subscribed(&conn, &format!("{namespace}:eng:signals"), 1).await;
    let engagement = RemoteEngagement::new(
        conn,
        &namespace,
        store.clone(),
        config.max_words,
        config.subscription_ttl,
    );
    EngagementEnv {
        engagement: Arc::new(engagement),
        edges: Arc::new(ClusterEdges::new(registry)),
        store,
        config,
        guard: Box::new((dir, cancel.drop_guard())),
    }
}

hubbub_services::engagement_conformance_tests!(env());
