//! The conformance suite on the Redis backend, against the real server `scripts/test` starts
//! (`HUBBUB_TEST_REDIS_URL`). Each test gets its own key namespace; time is real (the
//! server's clock), in units of 100 ms.

use hubbub_cluster::{RedisConfig, RedisQueue};
use hubbub_queue::conformance::{ConformanceEnv, RealTime};
use hubbub_queue::{Queue, QueueError, SendOptions};
use std::sync::Arc;
use std::time::Duration;

pub fn redis_url() -> String {
    std::env::var("HUBBUB_TEST_REDIS_URL")
        .expect("HUBBUB_TEST_REDIS_URL is not set: run scripts/test, which starts redis-server")
}

fn config(url: String) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.namespace = format!("hbtest-{:016x}", fastrand::u64(..));
    config
}

async fn make_env() -> ConformanceEnv {
    let q = RedisQueue::connect(config(redis_url())).expect("redis backend");
    ConformanceEnv {
        queue: Arc::new(q.clone()),
        log: Arc::new(q),
        clock: Arc::new(RealTime),
        unit: Duration::from_millis(100),
        guard: Box::new(()),
    }
}

hubbub_queue::queue_conformance_tests!(make_env());

/// A Redis that cannot be reached fails fast with `Unavailable`, and nothing is accepted.
#[tokio::test]
async fn an_unreachable_server_is_unavailable_fast() {
    // A loopback port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let q = RedisQueue::connect(config(format!("redis://127.0.0.1:{port}"))).expect("lazy");
    let started = std::time::Instant::now();
    let e = q
        .send("q", b"x".to_vec(), SendOptions::default())
        .await
        .expect_err("down");
    assert!(matches!(e, QueueError::Unavailable(_)), "{e:?}");
    // Bounded, not hung (a guard against hangs, not a timing assertion on speed).
    assert!(started.elapsed() < Duration::from_secs(30));
}
