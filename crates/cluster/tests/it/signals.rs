//! The signals conformance suite on [`ClusterSignals`]: one per edge, as each `hubbub edge`
//! has its own, presence computed from the Redis registry and shared over Redis pub/sub,
//! typing relayed through the HTTP edge link; the store is SQLite (only its traits are
//! used).

use crate::support::{ClusterEdges, EDGE_TTL, SECRET, redis, sqlite, subscribed};
use async_trait::async_trait;
use hubbub_cluster::{ClusterSignals, HttpEdges, RedisRegistry};
use hubbub_registry::conformance::{Inbox, TestEdges};
use hubbub_registry::{Delivery, Signals};
use hubbub_services::conformance::signals::{EdgeSignals, SignalsEnv};
use hubbub_services::signals::SignalService;
use hubbub_store::Store;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Test edges, each with its own [`ClusterSignals`] running while the edge runs.
struct Edges {
    edges: ClusterEdges,
    store: Arc<dyn Store>,
    registry: RedisRegistry,
    delivery: Delivery,
    conn: ConnectionManager,
    namespace: String,
    signals: tokio::sync::Mutex<HashMap<String, (Arc<ClusterSignals>, CancellationToken)>>,
}

impl Edges {
    async fn stop_signals(&self, edge: &str) {
        if let Some((_, cancel)) = self.signals.lock().await.remove(edge) {
            cancel.cancel();
        }
    }
}

#[async_trait]
impl EdgeSignals for Edges {
    async fn on(&self, edge: &str) -> Arc<dyn Signals> {
        let mut all = self.signals.lock().await;
        if let Some((s, _)) = all.get(edge) {
            return s.clone();
        }
        let cancel = CancellationToken::new();
        let local = SignalService::new(self.store.clone(), self.delivery.clone(), EDGE_TTL);
        tokio::spawn(local.clone().run_lapses(cancel.clone()));
        let signals = ClusterSignals::new(
            local,
            Arc::new(self.registry.clone()),
            self.delivery.clone(),
            self.conn.clone(),
            &crate::queue::redis_url(),
            &self.namespace,
        );
        tokio::spawn(signals.clone().run(cancel.clone()));
        let channel = format!("{}:pres:changes", self.namespace);
        subscribed(&self.conn, &channel, all.len() as i64 + 1).await;
        let signals = Arc::new(signals);
        all.insert(edge.to_owned(), (signals.clone(), cancel));
        signals
    }
}

#[async_trait]
impl TestEdges for Edges {
    async fn attach(&self, edge: &str) -> Inbox {
        self.edges.attach(edge).await
    }

    async fn detach(&self, edge: &str) {
        self.stop_signals(edge).await;
        self.edges.detach(edge).await;
    }

    async fn crash(&self, edge: &str) {
        self.stop_signals(edge).await;
        self.edges.crash(edge).await;
    }
}

async fn env() -> SignalsEnv {
    let (conn, namespace) = redis();
    let registry = RedisRegistry::new(conn.clone(), &namespace);
    let link = Arc::new(HttpEdges::new(registry.clone(), SECRET).expect("link"));
    let delivery = Delivery::new(Arc::new(registry.clone()), link);
    let (store, dir) = sqlite().await;
    let store: Arc<dyn Store> = Arc::new(store);
    let edges = Arc::new(Edges {
        edges: ClusterEdges::new(registry.clone()),
        store: store.clone(),
        registry: registry.clone(),
        delivery,
        conn,
        namespace,
        signals: tokio::sync::Mutex::default(),
    });
    SignalsEnv {
        signals: edges.clone(),
        registry: Arc::new(registry),
        edges,
        store,
        edge_ttl: EDGE_TTL,
        guard: Box::new(dir),
    }
}

hubbub_services::signals_conformance_tests!(env());
