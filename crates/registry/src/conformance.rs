//! The behaviour every [`EdgeLink`] must show, written once, and the test edges the
//! conformance suites of the edge-facing traits share (feature `conformance`).
//!
//! It lives here, beside the trait and [`LocalEdges`], because the edge link is this crate's
//! own trait and needs nothing but it: the in-process link is checked in this crate's tests,
//! the HTTP one in `hubbub-cluster`'s (which depends on this crate already), and the suites of
//! `Signals` and `Engagement` (in `hubbub-services`, feature `conformance`) observe what
//! reaches an edge through the same [`TestEdges`] and [`Inbox`]. The feature only adds this
//! module; other crates turn it on from their dev-dependencies.
//!
//! Each public async function of [`edge_link`] is one test; a backend's test file
//! instantiates them all with [`edge_link_conformance_tests!`], given an expression that
//! builds a fresh [`EdgeLinkEnv`] (its own edges and, for a networked link, its own key
//! namespace).
//!
//! A networked link delivers on its own time: the suites never assert on timing. They wait
//! for what must arrive, up to the environment's `patience`, and show that something did
//! *not* arrive by ordering: what a sender hands to an edge arrives in the order it was
//! handed over, so a later marker ("sentinel") arriving first proves the absence.
//!
//! These functions panic on failure: they are test code that lives in the library so other
//! crates' tests can run them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::{EdgeLink, RegistryError};
use async_trait::async_trait;
use hubbub_protocol::internal::ToEdge;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Edges a test starts and stops, as the processes holding sessions would.
#[async_trait]
pub trait TestEdges: Send + Sync {
    /// Start edge `edge`, or restart it (elsewhere, for a networked link): from now on the
    /// link reaches it, and what reaches it comes out of the returned inbox. A restarted
    /// edge's former inbox gets nothing more.
    async fn attach(&self, edge: &str) -> Inbox;
    /// Stop `edge` cleanly: it says it is going (for the registry, its sessions go with it).
    async fn detach(&self, edge: &str);
    /// `edge` dies without a word: it stops answering and stops telling that it is alive;
    /// it is known dead once its liveness lapses (the edge TTL).
    async fn crash(&self, edge: &str);
}

/// What reaches one test edge: the batches, flattened into items, in order of arrival.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Vec<ToEdge>>,
    pending: VecDeque<ToEdge>,
    /// How long a wait for an item lasts at most.
    pub patience: Duration,
}

impl Inbox {
    /// An inbox reading batches from `rx`, waiting at most `patience` for each item.
    pub fn new(rx: mpsc::UnboundedReceiver<Vec<ToEdge>>, patience: Duration) -> Self {
        Inbox {
            rx,
            pending: VecDeque::new(),
            patience,
        }
    }

    /// The next item, waiting until `deadline` at most; `None` when the deadline passed or
    /// the edge's inbox closed with nothing left.
    pub async fn next_until(&mut self, deadline: Instant) -> Option<ToEdge> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(batch)) => self.pending.extend(batch),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next item, within the patience; panics (naming `what`) if none comes.
    pub async fn next(&mut self, what: &str) -> ToEdge {
        let deadline = Instant::now() + self.patience;
        match self.next_until(deadline).await {
            Some(item) => item,
            None => panic!("waited {:?} for {what}; nothing came", self.patience),
        }
    }

    /// The next `n` items, within the patience (each).
    pub async fn take(&mut self, n: usize, what: &str) -> Vec<ToEdge> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(
                self.next(&format!("{what} ({} of {n} so far)", out.len()))
                    .await,
            );
        }
        out
    }

    /// Every item up to and including the first one `last` accepts, waiting for it within
    /// the patience (measured from now); panics with what came if it does not come.
    pub async fn until(&mut self, what: &str, last: impl Fn(&ToEdge) -> bool) -> Vec<ToEdge> {
        let deadline = Instant::now() + self.patience;
        let mut seen = Vec::new();
        loop {
            match self.next_until(deadline).await {
                Some(item) => {
                    let done = last(&item);
                    seen.push(item);
                    if done {
                        return seen;
                    }
                }
                None => panic!(
                    "waited {:?} for {what}; came instead: {seen:#?}",
                    self.patience
                ),
            }
        }
    }

    /// The items that have arrived already, without waiting.
    pub fn drain_now(&mut self) -> Vec<ToEdge> {
        while let Ok(batch) = self.rx.try_recv() {
            self.pending.extend(batch);
        }
        self.pending.drain(..).collect()
    }
}

/// The in-process edges: [`LocalEdges`](crate::LocalEdges) attached and detached.
#[derive(Debug)]
pub struct LocalTestEdges {
    /// The link.
    pub edges: Arc<crate::LocalEdges>,
    /// The patience of the inboxes handed out.
    pub patience: Duration,
}

#[async_trait]
impl TestEdges for LocalTestEdges {
    async fn attach(&self, edge: &str) -> Inbox {
        Inbox::new(self.edges.attach(edge), self.patience)
    }

    async fn detach(&self, edge: &str) {
        self.edges.detach(edge);
    }

    async fn crash(&self, edge: &str) {
        // In one process a dead edge is one that is no longer attached.
        self.edges.detach(edge);
    }
}

/// What one edge link conformance test runs against.
pub struct EdgeLinkEnv {
    /// The link under test.
    pub link: Arc<dyn EdgeLink>,
    /// The edges it reaches.
    pub edges: Arc<dyn TestEdges>,
    /// Whatever must live as long as the test (servers, a runtime's tasks).
    pub guard: Box<dyn std::any::Any + Send>,
}

/// Instantiate every edge link conformance test for a link:
/// `edge_link_conformance_tests!(make_env());` where `make_env()` is an expression of type
/// `impl Future<Output = EdgeLinkEnv>`.
#[macro_export]
macro_rules! edge_link_conformance_tests {
    ($make:expr) => {
        $crate::edge_link_conformance_tests!(@each $make;
            delivers_in_order_and_intact, each_edge_gets_only_its_batches,
            an_unknown_edge_is_gone, a_stopped_or_dead_edge_is_gone,
            a_large_batch_arrives_whole_and_in_order, a_restarted_edge_is_reached_again,
            concurrent_senders_lose_nothing_and_keep_their_order);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let env = $make.await;
                $crate::conformance::edge_link::$name(&env).await;
            }
        )*
    };
}

/// The cases of the edge link suite.
pub mod edge_link {
    use super::*;
    use hubbub_protocol::{ServerFrame, TypingState};

    /// A small item naming its sender and number.
    pub fn item(from: &str, n: usize) -> ToEdge {
        ToEdge::Close {
            user: format!("{from}-{n}"),
            session: None,
            code: 4000,
            reason: String::new(),
        }
    }

    fn gone(r: Result<(), RegistryError>, edge: &str) {
        match r {
            Err(RegistryError::EdgeGone(e)) => assert_eq!(e, edge, "EdgeGone names the edge"),
            other => panic!("delivering to {edge}: expected EdgeGone, got {other:?}"),
        }
    }

    /// Batches to one edge arrive in the order they were delivered, each in its own order,
    /// with every kind of item intact.
    pub async fn delivers_in_order_and_intact(env: &EdgeLinkEnv) {
        let mut e1 = env.edges.attach("e1").await;
        let typing = ServerFrame::Typing {
            conversation: "c1".into(),
            user: "alice".into(),
            state: TypingState::Start,
        };
        let first = vec![
            ToEdge::Reply {
                session: "s1".into(),
                frame: ServerFrame::error(
                    Some("r1".into()),
                    hubbub_protocol::ErrorCode::Forbidden,
                    "not yours",
                ),
            },
            ToEdge::Events {
                user: "bob".into(),
                frames: vec![typing.clone(), typing.clone()],
                origin_ms: Some(1_700_000_000_123),
                origin_edge: Some("e0".into()),
            },
            ToEdge::Events {
                user: "bob".into(),
                frames: vec![typing],
                origin_ms: None,
                origin_edge: None,
            },
        ];
        let second = vec![
            ToEdge::Engagement {
                frames: vec![ServerFrame::Engagement {
                    post: "p1".into(),
                    window_s: 300,
                    writers: 1,
                    comments: 2,
                    top: vec![],
                }],
            },
            ToEdge::Close {
                user: "carol".into(),
                session: Some("s9".into()),
                code: 4001,
                reason: "tokens revoked".into(),
            },
        ];
        let third: Vec<ToEdge> = (0..5).map(|i| item("third", i)).collect();
        for batch in [&first, &second, &third] {
            env.link
                .deliver("e1", batch.clone())
                .await
                .expect("deliver to a live edge");
        }
        let expected: Vec<ToEdge> = [first, second, third].concat();
        let got = e1.take(expected.len(), "the three batches").await;
        assert_eq!(got, expected);
    }

    /// Batches to several edges: each edge gets its own, and only its own.
    pub async fn each_edge_gets_only_its_batches(env: &EdgeLinkEnv) {
        let names = ["e1", "e2", "e3"];
        let mut inboxes = Vec::new();
        for e in names {
            inboxes.push(env.edges.attach(e).await);
        }
        // Interleaved: e1, e2, e3, e1, e2, e3, ...; then a last marker to each.
        for round in 0..4 {
            for e in names {
                let batch = vec![item(e, round * 2), item(e, round * 2 + 1)];
                env.link.deliver(e, batch).await.expect("deliver");
            }
        }
        for e in names {
            env.link
                .deliver(e, vec![item(e, 1000)])
                .await
                .expect("deliver");
        }
        for (e, inbox) in names.iter().zip(&mut inboxes) {
            let got = inbox
                .until(&format!("the last item to {e}"), |i| *i == item(e, 1000))
                .await;
            let mut want: Vec<ToEdge> = (0..8).map(|n| item(e, n)).collect();
            want.push(item(e, 1000));
            assert_eq!(got, want, "{e} gets exactly its items, in order");
        }
    }

    /// Delivering to an edge that never existed is `EdgeGone`, and harms no other edge.
    pub async fn an_unknown_edge_is_gone(env: &EdgeLinkEnv) {
        let mut e1 = env.edges.attach("e1").await;
        gone(
            env.link.deliver("nowhere", vec![item("x", 0)]).await,
            "nowhere",
        );
        env.link
            .deliver("e1", vec![item("e1", 0)])
            .await
            .expect("the live edge is still reached");
        assert_eq!(e1.next("the item to e1").await, item("e1", 0));
    }

    /// An edge that stopped (it said so) or died (it did not) is `EdgeGone`: at once for
    /// the first, at the latest once its liveness lapses for the second. Other edges are
    /// still reached.
    pub async fn a_stopped_or_dead_edge_is_gone(env: &EdgeLinkEnv) {
        let _stopping = env.edges.attach("stopping").await;
        let _dying = env.edges.attach("dying").await;
        let mut live = env.edges.attach("live").await;
        // Known to the link first (a networked link may remember its address).
        env.link
            .deliver("stopping", vec![item("s", 0)])
            .await
            .expect("deliver");
        env.link
            .deliver("dying", vec![item("d", 0)])
            .await
            .expect("deliver");
        env.edges.detach("stopping").await;
        gone(
            env.link.deliver("stopping", vec![item("s", 1)]).await,
            "stopping",
        );
        env.edges.crash("dying").await;
        gone(env.link.deliver("dying", vec![item("d", 1)]).await, "dying");
        env.link
            .deliver("live", vec![item("l", 0)])
            .await
            .expect("deliver");
        assert_eq!(live.next("the item to the live edge").await, item("l", 0));
    }

    /// A batch far larger than any single request a networked link would send (several
    /// megabytes) arrives whole, in order.
    pub async fn a_large_batch_arrives_whole_and_in_order(env: &EdgeLinkEnv) {
        let mut e1 = env.edges.attach("e1").await;
        let text = "x".repeat(2000);
        let batch: Vec<ToEdge> = (0..2500)
            .map(|i| ToEdge::Events {
                user: format!("u{i}"),
                frames: vec![ServerFrame::Typing {
                    conversation: text.clone(),
                    user: format!("w{i}"),
                    state: TypingState::Stop,
                }],
                origin_ms: Some(i),
                origin_edge: None,
            })
            .collect();
        env.link
            .deliver("e1", batch.clone())
            .await
            .expect("deliver a large batch");
        env.link
            .deliver("e1", vec![item("after", 0)])
            .await
            .expect("deliver after it");
        let got = e1.take(batch.len() + 1, "the large batch").await;
        assert!(got[..batch.len()] == batch[..], "the large batch, in order");
        assert_eq!(got[batch.len()], item("after", 0), "then what came after");
    }

    /// An edge that restarts (elsewhere, for a networked link) is reached again under its
    /// id, once it runs; its former inbox gets nothing more.
    pub async fn a_restarted_edge_is_reached_again(env: &EdgeLinkEnv) {
        let mut before = env.edges.attach("e1").await;
        env.link
            .deliver("e1", vec![item("before", 0)])
            .await
            .expect("deliver");
        assert_eq!(before.next("the first item").await, item("before", 0));
        let mut after = env.edges.attach("e1").await;
        env.link
            .deliver("e1", vec![item("after", 0)])
            .await
            .expect("deliver to the restarted edge");
        assert_eq!(
            after.next("the item to the restarted edge").await,
            item("after", 0)
        );
        assert_eq!(before.drain_now(), [], "the former inbox gets nothing");
    }

    /// Many senders at once: nothing is lost, and each sender's items keep their order.
    pub async fn concurrent_senders_lose_nothing_and_keep_their_order(env: &EdgeLinkEnv) {
        let mut e1 = env.edges.attach("e1").await;
        let (senders, each) = (8, 25);
        let mut tasks = Vec::new();
        for s in 0..senders {
            let link = env.link.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..each {
                    let from = format!("s{s}");
                    link.deliver("e1", vec![item(&from, 2 * n), item(&from, 2 * n + 1)])
                        .await
                        .expect("deliver");
                }
            }));
        }
        for t in tasks {
            t.await.expect("sender");
        }
        let got = e1.take(senders * each * 2, "every sender's items").await;
        for s in 0..senders {
            let from = format!("s{s}-");
            let mine: Vec<&ToEdge> = got
                .iter()
                .filter(|i| matches!(i, ToEdge::Close { user, .. } if user.starts_with(&from)))
                .collect();
            let want: Vec<ToEdge> = (0..each * 2).map(|n| item(&format!("s{s}"), n)).collect();
            assert_eq!(
                mine,
                want.iter().collect::<Vec<_>>(),
                "sender {s}'s items, in order"
            );
        }
    }
}
