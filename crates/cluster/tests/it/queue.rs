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

/// Whatever makes a message receivable wakes a long poll or is foreseen by it, so none waits
/// for the poll's safety net (raised here to a minute, the poll's own wait to 30 s): a send, a
/// delay coming due, a lease lapsing, an ack that frees a key's next message, a nack, a
/// redrive. The bound of 10 s guards against a missed wake-up; it is not a measure of speed.
#[tokio::test]
async fn a_long_poll_is_woken_by_whatever_makes_a_message_receivable() {
    let mut c = config(redis_url());
    c.wake_every = Duration::from_secs(60);
    let q = RedisQueue::connect(c).expect("redis backend");
    let opts = |wait: Duration, visibility: Duration| hubbub_queue::ReceiveOptions {
        max: 10,
        wait,
        visibility,
        max_run: 1,
    };
    let long = opts(Duration::from_secs(30), Duration::from_secs(30));
    let body = |d: &[hubbub_queue::Delivery]| -> Vec<String> {
        d.iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    };
    // Clients blocked in `BLPOP` on the server (long polls waiting for a wake-up).
    async fn blocked(admin: &mut redis::aio::MultiplexedConnection) -> usize {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(admin)
            .await
            .expect("client list");
        // `flags` holds `b` while a client is blocked (`cmd` is only its last command).
        list.lines()
            .filter(|l| {
                l.contains(" cmd=blpop ")
                    && l.split(' ')
                        .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('b')))
            })
            .count()
    }
    // A long poll started now and, once it waits for a wake-up, `act`; the poll's answer.
    // (Other tests' polls on the same server may be counted too: then `act` may come before
    // this poll blocks, and the case shows less, never a false failure.)
    async fn polled<F: std::future::Future<Output = ()>>(
        q: &RedisQueue,
        queue: &str,
        opts: hubbub_queue::ReceiveOptions,
        act: Option<F>,
    ) -> Vec<hubbub_queue::Delivery> {
        let mut admin = redis::Client::open(redis_url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection");
        let before = blocked(&mut admin).await;
        let poll = {
            let (q, queue) = (q.clone(), queue.to_owned());
            tokio::spawn(async move { q.receive(&queue, opts).await })
        };
        if let Some(act) = act {
            for _ in 0..500 {
                if blocked(&mut admin).await > before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            act.await;
        }
        tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .expect("woken long before the poll's wait or its safety net")
            .expect("task")
            .expect("receive")
    }
    let send = |queue: &'static str, b: &'static str, o: SendOptions| {
        let q = q.clone();
        async move {
            q.send(queue, b.as_bytes().to_vec(), o).await.expect("send");
        }
    };

    // A send.
    let got = polled(
        &q,
        "w-send",
        long,
        Some(send("w-send", "s", SendOptions::default())),
    )
    .await;
    assert_eq!(body(&got), ["s"]);
    // A delay coming due (sent before the poll: nothing wakes it but its own foresight).
    send(
        "w-delay",
        "d",
        SendOptions::default().delay(Duration::from_millis(500)),
    )
    .await;
    let got = polled(&q, "w-delay", long, None::<std::future::Ready<()>>).await;
    assert_eq!(body(&got), ["d"]);
    // A lease lapsing.
    send("w-lapse", "l", SendOptions::default()).await;
    let leased = q
        .receive("w-lapse", opts(Duration::ZERO, Duration::from_millis(500)))
        .await
        .expect("receive");
    assert_eq!(body(&leased), ["l"]);
    let got = polled(&q, "w-lapse", long, None::<std::future::Ready<()>>).await;
    assert_eq!(body(&got), ["l"], "back after its lease lapsed");
    // An ack that frees a key's next message.
    send("w-key", "k1", SendOptions::default().key("k")).await;
    send("w-key", "k2", SendOptions::default().key("k")).await;
    let first = q.receive("w-key", long).await.expect("receive");
    assert_eq!(body(&first), ["k1"]);
    let receipt = first[0].receipt.clone();
    let got = polled(
        &q,
        "w-key",
        long,
        Some(async {
            q.ack("w-key", &receipt).await.expect("ack");
        }),
    )
    .await;
    assert_eq!(body(&got), ["k2"]);
    // A nack.
    send("w-nack", "n", SendOptions::default()).await;
    let leased = q.receive("w-nack", long).await.expect("receive");
    let receipt = leased[0].receipt.clone();
    let got = polled(
        &q,
        "w-nack",
        long,
        Some(async {
            q.nack("w-nack", &receipt, Duration::ZERO)
                .await
                .expect("nack");
        }),
    )
    .await;
    assert_eq!(body(&got), ["n"]);
    // A redrive out of the dead-letter queue.
    q.declare("w-dlq", hubbub_queue::QueueConfig { max_receives: 1 })
        .await
        .expect("declare");
    send("w-dlq", "r", SendOptions::default()).await;
    let leased = q.receive("w-dlq", long).await.expect("receive");
    q.nack("w-dlq", &leased[0].receipt, Duration::ZERO)
        .await
        .expect("nack: dead-lettered");
    let got = polled(
        &q,
        "w-dlq",
        long,
        Some(async {
            assert_eq!(q.redrive("w-dlq", 10).await.expect("redrive"), 1);
        }),
    )
    .await;
    assert_eq!(body(&got), ["r"]);
}
