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
    env_with(conn.clone(), conn, namespace, ()).await
}

/// The env, with the engagement worker's commands (its lease) on `worker_conn`.
async fn env_with(
    conn: redis::aio::ConnectionManager,
    worker_conn: redis::aio::ConnectionManager,
    namespace: String,
    keep: impl Send + 'static,
) -> EngagementEnv {
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
        worker_conn,
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
        guard: Box::new((dir, cancel.drop_guard(), keep)),
    }
}

hubbub_services::engagement_conformance_tests!(env());

/// A TCP proxy to Redis that the test can cut (connections dropped, new ones refused) and
/// restore.
struct Cut {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Cut {
    async fn start(target: std::net::SocketAddr) -> Cut {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().expect("lock").push(task);
            }
        });
        Cut { addr, up, conns }
    }

    fn set(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            for t in self.conns.lock().expect("lock").drain(..) {
                t.abort();
            }
        }
    }
}

/// The leader's lease renewals fail for a moment (its Redis connection cut for longer than a
/// renewal's interval, shorter than the lease) while a writer is counted: the leader keeps
/// its term, so the writer still leaves after the window. A term ended by the failed renewal
/// started afresh and forgot the writer: no frame ever said they left.
#[tokio::test]
async fn a_lease_renewal_that_fails_for_a_moment_keeps_the_writers() {
    let (conn, namespace) = redis();
    let url = crate::queue::redis_url();
    let target = url
        .split_once("://")
        .map_or(url.as_str(), |(_, r)| r)
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("host:port in the Redis URL");
    let cut = Arc::new(Cut::start(target).await);
    let client = redis::Client::open(format!("redis://{}", cut.addr)).expect("url");
    let worker_conn = redis::aio::ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_millis(300)))
            .set_response_timeout(Some(std::time::Duration::from_millis(300)))
            .set_number_of_retries(1),
    )
    .expect("connection");
    // Cut 1.5 s in (after the typing, inside the 5 s window) for 1.8 s: at least one
    // renewal (every 1.5 s) fails, and the lease (5 s) outlives the cut.
    let flap = {
        let cut = cut.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            cut.set(false);
            tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
            cut.set(true);
        })
    };
    let env = env_with(conn, worker_conn, namespace, cut).await;
    hubbub_services::conformance::engagement::writers_leave_after_the_window(&env).await;
    flap.await.expect("the cut ends");
}
