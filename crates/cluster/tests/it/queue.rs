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

/// On Redis the acks run first, in the same script as the receive: a key whose run is acked
/// is received by that very call (and a call whose acks all fail still receives); a Redis
/// that is down fails both halves with `Unavailable`.
#[tokio::test]
async fn ack_and_receive_acks_first_in_one_call() {
    let q = RedisQueue::connect(config(redis_url())).expect("redis backend");
    let opts = hubbub_queue::ReceiveOptions {
        max: 10,
        wait: Duration::ZERO,
        visibility: Duration::from_secs(30),
        max_run: 1,
    };
    let k = || SendOptions::default().key("k");
    for body in ["k1", "k2", "k3"] {
        q.send("aq", body.as_bytes().to_vec(), k())
            .await
            .expect("send");
    }
    let mut receipt = {
        let got = q.receive("aq", opts).await.expect("receive");
        assert_eq!(got.len(), 1);
        got[0].receipt.clone()
    };
    for want in ["k2", "k3"] {
        let (acks, got) = q.ack_and_receive("aq", &[receipt], opts).await;
        assert!(acks.expect("acks")[0].is_ok());
        let got = got.expect("receive");
        assert_eq!(
            got.iter().map(|d| d.body.as_slice()).collect::<Vec<_>>(),
            [want.as_bytes()],
            "the acked key's next message, in the same call"
        );
        receipt = got[0].receipt.clone();
    }
    let (acks, got) = q.ack_and_receive("aq", &[receipt.clone()], opts).await;
    assert!(acks.expect("acks")[0].is_ok());
    assert!(got.expect("receive").is_empty());
    let (acks, _) = q.ack_and_receive("aq", &[receipt], opts).await;
    assert_eq!(
        acks.expect("acks")[0],
        Err(hubbub_queue::ReceiptError::Unknown),
        "acked already"
    );

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let down = RedisQueue::connect(config(format!("redis://127.0.0.1:{port}"))).expect("lazy");
    let r = hubbub_queue::Receipt("0000000000000001.1".into());
    let (acks, got) = down.ack_and_receive("aq", &[r], opts).await;
    assert!(matches!(acks, Err(QueueError::Unavailable(_))), "{acks:?}");
    assert!(matches!(got, Err(QueueError::Unavailable(_))), "{got:?}");
}
