//! The behaviour every [`Queue`] and [`Log`] backend must show, written once.
//!
//! Each public async function here is one test. A backend's test file instantiates them all
//! with [`queue_conformance_tests!`], giving an expression that builds a fresh
//! [`ConformanceEnv`] (an isolated namespace, and a clock tests can move). The embedded
//! backend runs them with a [`ManualClock`]; a networked backend whose server keeps its own
//! time passes a clock that really sleeps and a shorter `unit`.
//!
//! These functions panic on failure: they are test code that lives in the library so other
//! crates' tests can run them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::types::*;
use crate::{Log, ManualClock, Queue, QueueError, ReceiptError};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Moves the backend's notion of time forward.
#[async_trait]
pub trait TestClock: Send + Sync {
    /// Let `by` pass.
    async fn advance(&self, by: Duration);
}

#[async_trait]
impl TestClock for ManualClock {
    async fn advance(&self, by: Duration) {
        ManualClock::advance(self, by);
    }
}

/// A clock that waits for real (for backends that keep their own time).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTime;

#[async_trait]
impl TestClock for RealTime {
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

/// What one conformance test runs against.
pub struct ConformanceEnv {
    /// The queue backend.
    pub queue: Arc<dyn Queue>,
    /// The log backend.
    pub log: Arc<dyn Log>,
    /// The clock the backend reads.
    pub clock: Arc<dyn TestClock>,
    /// The time unit of the tests (visibility timeouts, delays and TTLs are multiples of it).
    pub unit: Duration,
    /// Whatever must live as long as the test (a temporary directory).
    pub guard: Box<dyn std::any::Any + Send>,
}

impl ConformanceEnv {
    fn u(&self, n: u32) -> Duration {
        self.unit * n
    }
    fn recv(&self, max: usize, vis_units: u32) -> ReceiveOptions {
        ReceiveOptions {
            max,
            wait: Duration::ZERO,
            visibility: self.u(vis_units),
            max_run: 1,
        }
    }
    fn runs(&self, max: usize, max_run: usize, vis_units: u32) -> ReceiveOptions {
        ReceiveOptions {
            max_run,
            ..self.recv(max, vis_units)
        }
    }
}

/// Instantiate every conformance test for a backend: `queue_conformance_tests!(make_env());`
/// where `make_env()` is an expression of type `impl Future<Output = ConformanceEnv>`.
#[macro_export]
macro_rules! queue_conformance_tests {
    ($make:expr) => {
        $crate::queue_conformance_tests!(@each $make;
            send_receive_ack, send_batch_is_ordered, dedupe_ignores_repeats,
            delay_hides_until_due, visibility_timeout_redelivers, extend_keeps_invisible,
            nack_returns_message, dead_letter_and_redrive, per_key_fifo, per_key_runs,
            batches_act_as_their_calls_in_order,
            a_lapsed_run_comes_back_in_order, dead_letters_are_purged, ttl_expiry_is_counted,
            stats_count_each_state, bad_input_is_typed, long_poll_wakes_on_send,
            long_poll_times_out_empty, relayed_sends_and_appends, log_append_and_read,
            log_consumer_groups, log_retention, log_bad_input);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let env = $make.await;
                $crate::conformance::$name(&env).await;
            }
        )*
    };
}

fn bodies(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

async fn send(env: &ConformanceEnv, q: &str, body: &str, opts: SendOptions) -> SendOutcome {
    env.queue
        .send(q, body.as_bytes().to_vec(), opts)
        .await
        .expect("send")
}

pub async fn send_receive_ack(env: &ConformanceEnv) {
    let q = "conf-basic";
    for b in ["a", "b", "c"] {
        send(env, q, b, SendOptions::default()).await;
    }
    let got = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["a", "b", "c"]);
    assert!(
        got.iter()
            .all(|m| m.receive_count == 1 && m.first_enqueued_ms > 0)
    );
    assert!(
        env.queue
            .receive(q, env.recv(10, 30))
            .await
            .expect("receive")
            .is_empty()
    );
    let receipts: Vec<Receipt> = got.iter().map(|m| m.receipt.clone()).collect();
    let acks = env.queue.ack_batch(q, &receipts).await.expect("ack");
    assert!(acks.iter().all(Result::is_ok));
    env.clock.advance(env.u(31)).await;
    assert!(
        env.queue
            .receive(q, env.recv(10, 30))
            .await
            .expect("receive")
            .is_empty()
    );
    let st = env.queue.stats(q).await.expect("stats");
    assert_eq!(
        (st.visible, st.in_flight, st.delayed, st.dlq_depth),
        (0, 0, 0, 0)
    );
}

pub async fn send_batch_is_ordered(env: &ConformanceEnv) {
    let q = "conf-batch";
    let batch: Vec<Outgoing> = (0..250).map(|i| Outgoing::new(format!("m{i}"))).collect();
    let out = env.queue.send_batch(q, batch).await.expect("send batch");
    assert_eq!(out.len(), 250);
    let mut ids = std::collections::HashSet::new();
    assert!(
        out.iter().all(|o| !o.duplicate && ids.insert(o.id.clone())),
        "ids are unique"
    );
    let mut seen = Vec::new();
    loop {
        let got = env
            .queue
            .receive(q, env.recv(100, 30))
            .await
            .expect("receive");
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 100);
        seen.extend(bodies(&got));
    }
    let expected: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected);
}

pub async fn dedupe_ignores_repeats(env: &ConformanceEnv) {
    let q = "conf-dedupe";
    let first = send(env, q, "one", SendOptions::default().dedupe("d1")).await;
    let again = send(env, q, "one again", SendOptions::default().dedupe("d1")).await;
    let other = send(env, q, "two", SendOptions::default().dedupe("d2")).await;
    assert!(!first.duplicate && again.duplicate && !other.duplicate);
    assert_eq!(first.id, again.id);
    let got = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["one", "two"]);
    // Still a duplicate after the first copy was acked: the window, not the message, decides.
    env.queue.ack(q, &got[0].receipt).await.expect("ack");
    assert!(
        send(env, q, "one", SendOptions::default().dedupe("d1"))
            .await
            .duplicate
    );
}

pub async fn delay_hides_until_due(env: &ConformanceEnv) {
    let q = "conf-delay";
    send(env, q, "later", SendOptions::default().delay(env.u(10))).await;
    send(env, q, "now", SendOptions::default()).await;
    assert_eq!(
        bodies(&env.queue.receive(q, env.recv(10, 30)).await.expect("r")),
        ["now"]
    );
    assert_eq!(env.queue.stats(q).await.expect("stats").delayed, 1);
    env.clock.advance(env.u(11)).await;
    assert_eq!(
        bodies(&env.queue.receive(q, env.recv(10, 30)).await.expect("r")),
        ["later"]
    );
}

pub async fn visibility_timeout_redelivers(env: &ConformanceEnv) {
    let q = "conf-vis";
    send(env, q, "x", SendOptions::default()).await;
    let first = env.queue.receive(q, env.recv(1, 5)).await.expect("receive");
    assert_eq!(first.len(), 1);
    assert!(
        env.queue
            .receive(q, env.recv(1, 5))
            .await
            .expect("receive")
            .is_empty()
    );
    env.clock.advance(env.u(6)).await;
    let second = env.queue.receive(q, env.recv(1, 5)).await.expect("receive");
    assert_eq!(bodies(&second), ["x"]);
    assert_eq!(second[0].receive_count, 2);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].first_enqueued_ms, first[0].first_enqueued_ms);
    // The first receipt no longer holds the message.
    let stale = env
        .queue
        .ack(q, &first[0].receipt)
        .await
        .expect_err("stale receipt");
    assert!(
        matches!(stale, QueueError::Receipt(ReceiptError::Expired)),
        "{stale:?}"
    );
    env.queue.ack(q, &second[0].receipt).await.expect("ack");
}

pub async fn extend_keeps_invisible(env: &ConformanceEnv) {
    let q = "conf-extend";
    send(env, q, "x", SendOptions::default()).await;
    let got = env.queue.receive(q, env.recv(1, 5)).await.expect("receive");
    env.queue
        .extend(q, &got[0].receipt, env.u(20))
        .await
        .expect("extend");
    env.clock.advance(env.u(8)).await;
    assert!(
        env.queue
            .receive(q, env.recv(1, 5))
            .await
            .expect("receive")
            .is_empty()
    );
    env.queue
        .ack(q, &got[0].receipt)
        .await
        .expect("ack after extend");
}

pub async fn nack_returns_message(env: &ConformanceEnv) {
    let q = "conf-nack";
    send(env, q, "x", SendOptions::default()).await;
    let got = env
        .queue
        .receive(q, env.recv(1, 30))
        .await
        .expect("receive");
    env.queue
        .nack(q, &got[0].receipt, env.u(5))
        .await
        .expect("nack");
    assert!(
        env.queue
            .receive(q, env.recv(1, 30))
            .await
            .expect("receive")
            .is_empty()
    );
    let e = env
        .queue
        .ack(q, &got[0].receipt)
        .await
        .expect_err("nacked receipt");
    assert!(matches!(e, QueueError::Receipt(_)), "{e:?}");
    env.clock.advance(env.u(6)).await;
    let again = env
        .queue
        .receive(q, env.recv(1, 30))
        .await
        .expect("receive");
    assert_eq!(
        (bodies(&again), again[0].receive_count),
        (vec!["x".to_owned()], 2)
    );
    env.queue
        .nack(q, &again[0].receipt, Duration::ZERO)
        .await
        .expect("nack now");
    assert_eq!(
        env.queue
            .receive(q, env.recv(1, 30))
            .await
            .expect("receive")
            .len(),
        1
    );
}

pub async fn dead_letter_and_redrive(env: &ConformanceEnv) {
    let q = "conf-dlq";
    env.queue
        .declare(q, QueueConfig { max_receives: 3 })
        .await
        .expect("declare");
    send(env, q, "poison", SendOptions::default()).await;
    send(env, q, "fine", SendOptions::default()).await;
    for round in 1..=3 {
        let got = env
            .queue
            .receive(q, env.recv(10, 5))
            .await
            .expect("receive");
        let poison = got
            .iter()
            .find(|m| m.body == b"poison")
            .expect("poison delivered");
        assert_eq!(poison.receive_count, round);
        for m in got.iter().filter(|m| m.body == b"fine") {
            env.queue.ack(q, &m.receipt).await.expect("ack fine");
        }
        env.clock.advance(env.u(6)).await;
    }
    assert!(
        env.queue
            .receive(q, env.recv(10, 5))
            .await
            .expect("receive")
            .is_empty()
    );
    let st = env.queue.stats(q).await.expect("stats");
    assert_eq!(
        (st.dlq_depth, st.dead_lettered_total, st.visible),
        (1, 1, 0)
    );
    let dead = env.queue.dlq_list(q, 10).await.expect("dlq list");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].body.as_slice(), dead[0].receive_count),
        (&b"poison"[..], 3)
    );
    // The DLQ is itself a queue.
    assert_eq!(
        env.queue
            .stats(&dlq_name(q))
            .await
            .expect("dlq stats")
            .visible,
        1
    );
    assert_eq!(env.queue.redrive(q, 10).await.expect("redrive"), 1);
    assert_eq!(env.queue.stats(q).await.expect("stats").dlq_depth, 0);
    let back = env
        .queue
        .receive(q, env.recv(10, 5))
        .await
        .expect("receive");
    assert_eq!(
        (bodies(&back), back[0].receive_count),
        (vec!["poison".to_owned()], 1)
    );
}

pub async fn per_key_fifo(env: &ConformanceEnv) {
    let q = "conf-fifo";
    let k = |key: &str| SendOptions::default().key(key);
    send(env, q, "a1", k("a")).await;
    send(env, q, "a2", k("a")).await;
    send(env, q, "b1", k("b")).await;
    send(env, q, "free", SendOptions::default()).await;
    send(env, q, "a3", k("a")).await;
    let got = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["a1", "b1", "free"], "one per key in flight");
    // A nacked head keeps its place: a2 must not overtake a1.
    env.queue
        .nack(q, &got[0].receipt, Duration::ZERO)
        .await
        .expect("nack a1");
    let again = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&again), ["a1"]);
    env.queue.ack(q, &again[0].receipt).await.expect("ack a1");
    let next = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&next), ["a2"]);
    // A lapsed lease also keeps the order.
    env.clock.advance(env.u(31)).await;
    let lapsed = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    let mut names = bodies(&lapsed);
    names.sort();
    assert_eq!(names, ["a2", "b1", "free"]);
    for m in &lapsed {
        env.queue.ack(q, &m.receipt).await.expect("ack");
    }
    assert_eq!(
        bodies(&env.queue.receive(q, env.recv(10, 30)).await.expect("r")),
        ["a3"]
    );
    let st = env.queue.stats(q).await.expect("stats");
    assert_eq!((st.in_flight, st.waiting_on_key, st.visible), (1, 0, 0));
}

pub async fn per_key_runs(env: &ConformanceEnv) {
    let q = "conf-runs";
    let k = |key: &str| SendOptions::default().key(key);
    for (body, opts) in [
        ("a1", k("a")),
        ("a2", k("a")),
        ("a3", k("a")),
        ("free", SendOptions::default()),
        ("b1", k("b")),
        ("a4", k("a").delay(env.u(2))),
        ("a5", k("a")),
    ] {
        send(env, q, body, opts).await;
    }
    // A run: the key's first message and those after it, in order, in one batch; it stops at
    // a message not yet due (a4), and a5 stays behind a4.
    let got = env
        .queue
        .receive(q, env.runs(10, 10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["a1", "a2", "a3", "free", "b1"]);
    let st = env.queue.stats(q).await.expect("stats");
    assert_eq!((st.in_flight, st.waiting_on_key), (5, 2));
    // Nothing more of `a` while any of its run is in flight.
    env.clock.advance(env.u(3)).await;
    env.queue
        .ack_batch(q, &[got[0].receipt.clone(), got[1].receipt.clone()])
        .await
        .expect("ack a1 a2");
    assert!(
        env.queue
            .receive(q, env.runs(10, 10, 30))
            .await
            .expect("receive")
            .is_empty(),
        "a3 is still in flight"
    );
    env.queue.ack(q, &got[2].receipt).await.expect("ack a3");
    let rest = env
        .queue
        .receive(q, env.runs(10, 10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&rest), ["a4", "a5"]);
    for m in got.iter().skip(3).chain(&rest) {
        env.queue.ack(q, &m.receipt).await.expect("ack");
    }
    // `max_run` and `max` both bound a run; without `max_run` a key gives one at a time.
    for i in 1..=5 {
        send(env, q, &format!("c{i}"), k("c")).await;
    }
    let two = env
        .queue
        .receive(q, env.runs(10, 2, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&two), ["c1", "c2"]);
    for m in &two {
        env.queue.ack(q, &m.receipt).await.expect("ack");
    }
    let one = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&one), ["c3"]);
    env.queue.ack(q, &one[0].receipt).await.expect("ack");
    let capped = env
        .queue
        .receive(q, env.runs(1, 10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&capped), ["c4"]);
}

/// One batch of sends and one batch of acks hold what separate calls would: a dedupe id
/// repeated in the batch is a duplicate of its first use; a run acked out of order in one
/// batch frees its key for the next message; a receipt given twice in one batch acks once
/// (the second finds no message); a stale receipt beside valid ones fails alone.
pub async fn batches_act_as_their_calls_in_order(env: &ConformanceEnv) {
    let q = "conf-batches";
    let k = |key: &str| SendOptions::default().key(key);
    let out = |body: &str, opts: SendOptions| Outgoing {
        body: body.into(),
        opts,
    };
    let sent = env
        .queue
        .send_batch(
            q,
            vec![
                out("r1", k("r").dedupe("x")),
                out("r1 again", k("r").dedupe("x")),
                out("r2", k("r")),
                Outgoing::new("free"),
                out("r3", k("r")),
            ],
        )
        .await
        .expect("send batch");
    let dup: Vec<bool> = sent.iter().map(|s| s.duplicate).collect();
    assert_eq!(dup, [false, true, false, false, false]);
    assert_eq!(sent[0].id, sent[1].id);
    let got = env
        .queue
        .receive(q, env.runs(10, 10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["r1", "r2", "r3", "free"]);
    send(env, q, "r4", k("r")).await;
    let stale = Receipt(format!("{}x", got[3].receipt.0));
    let acks = env
        .queue
        .ack_batch(
            q,
            &[
                got[2].receipt.clone(),
                got[0].receipt.clone(),
                got[0].receipt.clone(),
                stale,
                got[1].receipt.clone(),
            ],
        )
        .await
        .expect("ack batch");
    assert!(
        acks[0].is_ok() && acks[1].is_ok() && acks[4].is_ok(),
        "{acks:?}"
    );
    assert_eq!(
        acks[2],
        Err(ReceiptError::Unknown),
        "a repeat finds no message"
    );
    assert!(acks[3].is_err(), "a stale receipt fails");
    let next = env
        .queue
        .receive(q, env.runs(10, 10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&next), ["r4"], "the run's key is free");
    let st = env.queue.stats(q).await.expect("stats");
    assert_eq!((st.in_flight, st.waiting_on_key), (2, 0));
}

pub async fn a_lapsed_run_comes_back_in_order(env: &ConformanceEnv) {
    let q = "conf-run-lapse";
    for body in ["r1", "r2", "r3"] {
        send(env, q, body, SendOptions::default().key("r")).await;
    }
    let run = env
        .queue
        .receive(q, env.runs(10, 10, 5))
        .await
        .expect("receive");
    assert_eq!(bodies(&run), ["r1", "r2", "r3"]);
    // The whole run's lease lapses: a receiver of single messages gets r1 alone, then r2,
    // then r3, never two of the key at once.
    env.clock.advance(env.u(6)).await;
    for (i, want) in ["r1", "r2", "r3"].into_iter().enumerate() {
        let got = env
            .queue
            .receive(q, env.recv(10, 30))
            .await
            .expect("receive");
        assert_eq!(
            (bodies(&got), got.first().map(|d| d.receive_count)),
            (vec![want.to_owned()], Some(2))
        );
        assert!(
            env.queue.ack(q, &run[i].receipt).await.is_err(),
            "the lapsed lease's receipt is refused"
        );
        env.queue.ack(q, &got[0].receipt).await.expect("ack");
    }
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
pub async fn dead_letters_are_purged(env: &ConformanceEnv) {
    let q = &*env.queue;
    dead_lettered(q, "purged", 3).await;
    assert_eq!(q.purge_dlq("purged", 2).await.expect("purge"), 2);
    assert_eq!(q.stats("purged").await.expect("stats").dlq_depth, 1);
    assert_eq!(q.purge_dlq("purged", 100).await.expect("purge"), 1);
    assert_eq!(q.purge_dlq("purged", 100).await.expect("purge"), 0);
    let st = q.stats("purged").await.expect("stats");
    assert_eq!((st.dlq_depth, st.visible, st.in_flight), (0, 0, 0));
}

pub async fn ttl_expiry_is_counted(env: &ConformanceEnv) {
    let q = "conf-ttl";
    send(env, q, "short", SendOptions::default().ttl(env.u(10))).await;
    send(env, q, "long", SendOptions::default().ttl(env.u(100))).await;
    send(
        env,
        q,
        "keyed-short",
        SendOptions::default().ttl(env.u(10)).key("k"),
    )
    .await;
    send(env, q, "keyed-next", SendOptions::default().key("k")).await;
    env.clock.advance(env.u(11)).await;
    let got = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    let mut names = bodies(&got);
    names.sort();
    assert_eq!(
        names,
        ["keyed-next", "long"],
        "expired ones dropped, key released"
    );
    assert_eq!(env.queue.stats(q).await.expect("stats").expired_total, 2);
}

pub async fn stats_count_each_state(env: &ConformanceEnv) {
    let q = "conf-stats";
    send(env, q, "v1", SendOptions::default()).await;
    send(env, q, "v2", SendOptions::default()).await;
    send(env, q, "d", SendOptions::default().delay(env.u(50))).await;
    send(
        env,
        q,
        "k1",
        SendOptions::default().key("k").delay(env.u(50)),
    )
    .await;
    send(env, q, "k2", SendOptions::default().key("k")).await;
    let got = env
        .queue
        .receive(q, env.recv(1, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["v1"]);
    env.clock.advance(env.u(2)).await;
    let st = env.queue.stats(q).await.expect("stats");
    assert_eq!(
        (
            st.visible,
            st.in_flight,
            st.delayed,
            st.waiting_on_key,
            st.dlq_depth
        ),
        (1, 1, 2, 1, 0)
    );
    assert!(st.oldest_age_ms >= env.u(2).as_millis() as u64, "{st:?}");
    let empty = env.queue.stats("conf-stats-empty").await.expect("stats");
    assert_eq!(empty, QueueStats::default());
}

pub async fn bad_input_is_typed(env: &ConformanceEnv) {
    let q = "conf-bad";
    let e = env
        .queue
        .send("bad name!", b"x".to_vec(), SendOptions::default())
        .await;
    assert!(matches!(e, Err(QueueError::InvalidName(_))), "{e:?}");
    let e = env
        .queue
        .send(q, vec![0; 256 * 1024 + 1], SendOptions::default())
        .await;
    assert!(matches!(e, Err(QueueError::TooLarge { .. })), "{e:?}");
    let e = env
        .queue
        .receive(
            q,
            ReceiveOptions {
                max: 0,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(e, Err(QueueError::InvalidArgument(_))), "{e:?}");
    for garbage in ["", "nonsense", "1.zz", "999999.1", "-1.-1"] {
        let e = env
            .queue
            .ack(q, &Receipt(garbage.into()))
            .await
            .expect_err(garbage);
        assert!(
            matches!(e, QueueError::Receipt(ReceiptError::Unknown)),
            "{garbage}: {e:?}"
        );
    }
    send(env, q, "x", SendOptions::default()).await;
    let got = env
        .queue
        .receive(q, env.recv(1, 30))
        .await
        .expect("receive");
    env.queue.ack(q, &got[0].receipt).await.expect("first ack");
    let e = env
        .queue
        .ack(q, &got[0].receipt)
        .await
        .expect_err("second ack");
    assert!(
        matches!(e, QueueError::Receipt(ReceiptError::Unknown)),
        "{e:?}"
    );
    let e = env
        .queue
        .extend(q, &got[0].receipt, env.u(5))
        .await
        .expect_err("extend acked");
    assert!(matches!(e, QueueError::Receipt(_)), "{e:?}");
    // A receipt of one queue is unknown to another.
    send(env, q, "y", SendOptions::default()).await;
    let got = env
        .queue
        .receive(q, env.recv(1, 30))
        .await
        .expect("receive");
    let e = env
        .queue
        .ack("conf-bad-other", &got[0].receipt)
        .await
        .expect_err("other queue");
    assert!(
        matches!(e, QueueError::Receipt(ReceiptError::Unknown)),
        "{e:?}"
    );
    // A failed batch send writes nothing.
    let batch = vec![Outgoing::new("ok"), Outgoing::new(vec![0u8; 300 * 1024])];
    assert!(env.queue.send_batch("conf-bad-batch", batch).await.is_err());
    assert_eq!(
        env.queue
            .stats("conf-bad-batch")
            .await
            .expect("stats")
            .visible,
        0
    );
}

pub async fn long_poll_wakes_on_send(env: &ConformanceEnv) {
    let q = "conf-longpoll";
    let queue = env.queue.clone();
    let waiter = tokio::spawn(async move {
        let opts = ReceiveOptions {
            max: 5,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(30),
            max_run: 1,
        };
        queue.receive(q, opts).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(env, q, "wake", SendOptions::default()).await;
    let got = waiter.await.expect("join").expect("receive");
    assert_eq!(bodies(&got), ["wake"]);
}

pub async fn long_poll_times_out_empty(env: &ConformanceEnv) {
    let opts = ReceiveOptions {
        max: 5,
        wait: Duration::from_millis(60),
        visibility: Duration::from_secs(30),
        max_run: 1,
    };
    assert!(
        env.queue
            .receive("conf-longpoll-empty", opts)
            .await
            .expect("receive")
            .is_empty()
    );
}

fn log_bodies(entries: &[LogEntry]) -> Vec<(u64, String)> {
    entries
        .iter()
        .map(|e| (e.offset, String::from_utf8_lossy(&e.body).into_owned()))
        .collect()
}

/// A relayed send is a send in every way a receiver sees (order, dedupe, keys), and a
/// relayed append an append; only when the backend answers may differ.
pub async fn relayed_sends_and_appends(env: &ConformanceEnv) {
    let q = "conf-relayed";
    let relayed = |body: &str, dedupe: &str| Outgoing {
        body: body.as_bytes().to_vec(),
        opts: SendOptions::default().dedupe(dedupe).key("k").relayed(),
    };
    let out = env
        .queue
        .send_batch(q, vec![relayed("a", "d1"), relayed("b", "d2")])
        .await
        .expect("relayed send");
    let again = env
        .queue
        .send_batch(q, vec![relayed("a again", "d1")])
        .await
        .expect("relayed repeat");
    assert!(!out[0].duplicate && !out[1].duplicate && again[0].duplicate);
    assert_eq!(again[0].id, out[0].id);
    let got = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    // One key: one at a time, in order.
    assert_eq!(bodies(&got), ["a"]);
    env.queue.ack(q, &got[0].receipt).await.expect("ack");
    let got = env
        .queue
        .receive(q, env.recv(10, 30))
        .await
        .expect("receive");
    assert_eq!(bodies(&got), ["b"]);
    let l = "conf-relayed-log";
    let offs = env
        .log
        .append_relayed(l, vec![b"x".to_vec(), b"y".to_vec()])
        .await
        .expect("relayed append");
    assert_eq!(offs, [0, 1]);
    assert_eq!(
        env.log
            .append(l, vec![b"z".to_vec()])
            .await
            .expect("append"),
        [2]
    );
    assert_eq!(
        log_bodies(&env.log.read(l, 0, 10).await.expect("read")),
        [(0, "x".into()), (1, "y".into()), (2, "z".into())]
    );
}

pub async fn log_append_and_read(env: &ConformanceEnv) {
    let l = "conf-log";
    let offs = env
        .log
        .append(l, vec![b"a".to_vec(), b"b".to_vec()])
        .await
        .expect("append");
    assert_eq!(offs, [0, 1]);
    assert_eq!(
        env.log
            .append(l, vec![b"c".to_vec()])
            .await
            .expect("append"),
        [2]
    );
    let all = env.log.read(l, 0, 100).await.expect("read");
    assert_eq!(
        log_bodies(&all),
        [(0, "a".into()), (1, "b".into()), (2, "c".into())]
    );
    assert_eq!(
        log_bodies(&env.log.read(l, 1, 1).await.expect("read")),
        [(1, "b".into())]
    );
    assert!(env.log.read(l, 3, 10).await.expect("read").is_empty());
    let st = env.log.log_stats(l).await.expect("stats");
    assert_eq!(
        (st.first_offset, st.next_offset, st.retained_bytes),
        (0, 3, 3)
    );
    assert_eq!(
        env.log.log_stats("conf-log-none").await.expect("stats"),
        LogStats::default()
    );
}

pub async fn log_consumer_groups(env: &ConformanceEnv) {
    let l = "conf-groups";
    env.log
        .append(l, (0..5).map(|i| format!("e{i}").into_bytes()).collect())
        .await
        .expect("a");
    assert_eq!(
        env.log
            .create_group(l, "g1", StartAt::Earliest)
            .await
            .expect("create"),
        0
    );
    assert_eq!(
        env.log
            .create_group(l, "late", StartAt::Latest)
            .await
            .expect("create"),
        5
    );
    let got = env.log.group_read(l, "g1", 2).await.expect("read");
    assert_eq!(log_bodies(&got), [(0, "e0".into()), (1, "e1".into())]);
    // Not committed: read again from the same place.
    assert_eq!(
        env.log.group_read(l, "g1", 2).await.expect("read")[0].offset,
        0
    );
    env.log.commit(l, "g1", 2).await.expect("commit");
    assert_eq!(
        env.log.group_read(l, "g1", 10).await.expect("read")[0].offset,
        2
    );
    // Commits never move backwards; creating an existing group keeps its offset.
    env.log.commit(l, "g1", 1).await.expect("commit");
    assert_eq!(
        env.log
            .create_group(l, "g1", StartAt::Latest)
            .await
            .expect("create"),
        2
    );
    assert!(
        env.log
            .group_read(l, "late", 10)
            .await
            .expect("read")
            .is_empty()
    );
    env.log
        .append(l, vec![b"e5".to_vec()])
        .await
        .expect("append");
    assert_eq!(
        log_bodies(&env.log.group_read(l, "late", 10).await.expect("r")),
        [(5, "e5".into())]
    );
    // A new group replays from the start.
    assert_eq!(
        env.log.group_read(l, "g1", 10).await.expect("read").len(),
        4
    );
    env.log
        .create_group(l, "replay", StartAt::Earliest)
        .await
        .expect("create");
    assert_eq!(
        env.log
            .group_read(l, "replay", 10)
            .await
            .expect("read")
            .len(),
        6
    );
}

pub async fn log_retention(env: &ConformanceEnv) {
    let l = "conf-retention";
    env.log
        .append(l, vec![vec![b'x'; 100]; 3])
        .await
        .expect("append");
    env.clock.advance(env.u(10)).await;
    env.log
        .append(l, vec![vec![b'y'; 100]; 3])
        .await
        .expect("append");
    let by_age = Retention {
        max_age: Some(env.u(5)),
        max_bytes: None,
    };
    assert_eq!(env.log.apply_retention(l, by_age).await.expect("retain"), 3);
    let st = env.log.log_stats(l).await.expect("stats");
    assert_eq!(
        (st.first_offset, st.next_offset, st.retained_bytes),
        (3, 6, 300)
    );
    let by_size = Retention {
        max_age: None,
        max_bytes: Some(150),
    };
    assert_eq!(
        env.log.apply_retention(l, by_size).await.expect("retain"),
        2
    );
    let st = env.log.log_stats(l).await.expect("stats");
    assert_eq!((st.first_offset, st.retained_bytes), (5, 100));
    // A new group starts at the first retained entry; offsets never restart.
    assert_eq!(
        env.log
            .create_group(l, "g", StartAt::Earliest)
            .await
            .expect("create"),
        5
    );
    assert_eq!(
        env.log
            .append(l, vec![b"z".to_vec()])
            .await
            .expect("append"),
        [6]
    );
}

pub async fn log_bad_input(env: &ConformanceEnv) {
    let e = env.log.append("no spaces", vec![b"x".to_vec()]).await;
    assert!(matches!(e, Err(QueueError::InvalidName(_))), "{e:?}");
    let e = env.log.group_read("conf-log-bad", "nobody", 10).await;
    assert!(matches!(e, Err(QueueError::UnknownGroup { .. })), "{e:?}");
    let e = env.log.commit("conf-log-bad", "nobody", 0).await;
    assert!(matches!(e, Err(QueueError::UnknownGroup { .. })), "{e:?}");
    env.log
        .create_group("conf-log-bad", "g", StartAt::Earliest)
        .await
        .expect("create");
    let e = env.log.commit("conf-log-bad", "g", 99).await;
    assert!(matches!(e, Err(QueueError::InvalidArgument(_))), "{e:?}");
    let e = env
        .log
        .append("conf-log-bad", vec![vec![0; 256 * 1024 + 1]])
        .await;
    assert!(matches!(e, Err(QueueError::TooLarge { .. })), "{e:?}");
}
