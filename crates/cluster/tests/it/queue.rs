//! The conformance suite on the Redis backend, against the real server `scripts/test` starts
//! (`HUBBUB_TEST_REDIS_URL`). Each test gets its own key namespace; time is real (the
//! server's clock), in units of 100 ms.

use hubbub_cluster::{RedisConfig, RedisQueue};
use hubbub_queue::conformance::{ConformanceEnv, RealTime};
use hubbub_queue::{Queue, QueueConfig, QueueError, ReceiveOptions, SendOptions};
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

/// Messages of `queue` dead-lettered: `max_receives` 1, received once and let go.
async fn dead_lettered(q: &dyn Queue, queue: &str, n: usize) {
    q.declare(queue, QueueConfig { max_receives: 1 })
        .await
        .expect("declare");
    for i in 0..n {
        q.send(queue, format!("m{i}").into_bytes(), SendOptions::default())
            .await
            .expect("send");
    }
    for _ in 0..20 {
        if q.stats(queue).await.expect("stats").dlq_depth as usize == n {
            return;
        }
        let got = q
            .receive(
                queue,
                ReceiveOptions {
                    max: n,
                    ..Default::default()
                },
            )
            .await
            .expect("receive");
        for d in got {
            q.nack(queue, &d.receipt, Duration::ZERO)
                .await
                .expect("nack");
        }
    }
    panic!("the messages were never dead-lettered");
}

/// `purge_dlq` deletes a DLQ's messages, at most `max` at a time, and nothing else.
#[tokio::test]
async fn dead_letters_are_purged() {
    let env = make_env().await;
    let q = &*env.queue;
    dead_lettered(q, "purged", 3).await;
    assert_eq!(q.purge_dlq("purged", 2).await.expect("purge"), 2);
    assert_eq!(q.stats("purged").await.expect("stats").dlq_depth, 1);
    assert_eq!(q.purge_dlq("purged", 100).await.expect("purge"), 1);
    assert_eq!(q.purge_dlq("purged", 100).await.expect("purge"), 0);
    let st = q.stats("purged").await.expect("stats");
    assert_eq!((st.dlq_depth, st.visible, st.in_flight), (0, 0, 0));
}
