//! What the conformance suites of the edge-facing traits need from a cluster: a Redis key
//! namespace of its own per test, a SQLite store where the implementation needs only the
//! store's traits, and test edges that are real edge internal listeners
//! ([`edge_link::receiver`] served on a loopback port) registered in the Redis registry and
//! kept alive by the edge heartbeat ([`edge_link::heartbeat`]), as `hubbub edge` does.

use async_trait::async_trait;
use hubbub_cluster::RedisRegistry;
use hubbub_cluster::edge_link;
use hubbub_registry::conformance::{Inbox, TestEdges};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for what must arrive (real time: delivery is asynchronous).
pub const PATIENCE: Duration = Duration::from_secs(15);
/// The test edges' TTL in the registry (they beat every third of it).
pub const EDGE_TTL: Duration = Duration::from_secs(3);
/// The internal secret of the test edges.
pub const SECRET: &str = "conformance-secret";

/// A connection to the test Redis and a fresh key namespace.
pub fn redis() -> (ConnectionManager, String) {
    let client = redis::Client::open(crate::queue::redis_url()).expect("url");
    let conn = redis::aio::ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new(),
    )
    .expect("connection");
    (conn, format!("hbtest-{:016x}", fastrand::u64(..)))
}

/// A fresh SQLite store in a temporary directory.
pub async fn sqlite() -> (hubbub_store::SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = hubbub_queue::EmbeddedQueue::open(
        dir.path().join("hubbub.db"),
        hubbub_queue::EmbeddedConfig::default(),
    )
    .expect("queue");
    let store = hubbub_store::SqliteStore::open(queue).await.expect("store");
    (store, dir)
}

/// Wait (bounded) until `channel` has at least `n` subscribers: a task that follows a
/// pub/sub channel is ready only once it has subscribed.
pub async fn subscribed(conn: &ConnectionManager, channel: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut c = conn.clone();
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut c)
            .await
            .expect("PUBSUB NUMSUB");
        if count >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody subscribed to {channel}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Running {
    server: CancellationToken,
    served: JoinHandle<()>,
    beat: CancellationToken,
    beating: JoinHandle<()>,
}

/// Edges with real internal listeners, registered in Redis.
pub struct ClusterEdges {
    registry: RedisRegistry,
    running: tokio::sync::Mutex<HashMap<String, Running>>,
}

impl ClusterEdges {
    /// Edges registered in `registry`.
    pub fn new(registry: RedisRegistry) -> Self {
        ClusterEdges {
            registry,
            running: tokio::sync::Mutex::default(),
        }
    }

    /// Stop an edge's listener and heartbeat: saying so (`clean`, its address leaves the
    /// registry) or not (it stays there until its TTL ends).
    async fn stop(&self, edge: &str, clean: bool) {
        let Some(r) = self.running.lock().await.remove(edge) else {
            return;
        };
        if clean {
            r.beat.cancel();
            r.beating.await.expect("heartbeat");
        } else {
            r.beating.abort();
            let _ = r.beating.await;
        }
        r.server.cancel();
        tokio::time::timeout(PATIENCE, r.served)
            .await
            .expect("the listener stops")
            .expect("listener task");
    }
}

#[async_trait]
impl TestEdges for ClusterEdges {
    async fn attach(&self, edge: &str) -> Inbox {
        // A restart: the former process is gone first.
        self.stop(edge, false).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let app = edge_link::receiver(SECRET.into(), tx);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let server = CancellationToken::new();
        let stopped = server.clone().cancelled_owned();
        let served = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
                .expect("serve");
        });
        self.registry
            .edge_alive(edge, &address, EDGE_TTL)
            .await
            .expect("edge alive");
        let beat = CancellationToken::new();
        let beating = tokio::spawn(edge_link::heartbeat(
            self.registry.clone(),
            edge.to_owned(),
            address,
            EDGE_TTL,
            beat.clone(),
        ));
        self.running.lock().await.insert(
            edge.to_owned(),
            Running {
                server,
                served,
                beat,
                beating,
            },
        );
        Inbox::new(rx, PATIENCE)
    }

    async fn detach(&self, edge: &str) {
        self.stop(edge, true).await;
    }

    async fn crash(&self, edge: &str) {
        self.stop(edge, false).await;
    }
}
