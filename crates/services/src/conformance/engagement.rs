//! The behaviour every [`Engagement`] implementation must show, written once: subscribed
//! edges get `engagement` frames when someone types a comment on the post (and a new
//! subscriber gets the current state), the top writers most words first, unsubscribing
//! stops them, a subscription to a missing post subscribes nothing, comment counts and a
//! deleted post (`post_changed`), subscriptions that lapse unless renewed, and writers who
//! leave the window.
//!
//! A test drives the trait as edges do: an edge subscribes to the posts its sessions watch,
//! renews all of them every heartbeat (several times per `subscription_ttl`) and
//! unsubscribes those no session watches any more. Frames are observed at the test edges
//! ([`TestEdges`]). The publication rate (at most one frame per post per second) means a
//! test waits for the frame showing a state, skipping the ones before it where several
//! changes may be shown at once.
//!
//! Instantiate with [`engagement_conformance_tests!`](crate::engagement_conformance_tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::engagement::EngagementConfig;
use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::{ErrorCode, ServerFrame, UserRef};
use hubbub_registry::conformance::{Inbox, TestEdges};
use hubbub_registry::{Engagement, SignalError};
use hubbub_store::{FeedStore, NewComment, NewPost};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What one engagement conformance test runs against.
pub struct EngagementEnv {
    /// The implementation under test (the edges' side of it).
    pub engagement: Arc<dyn Engagement>,
    /// The edges it publishes to.
    pub edges: Arc<dyn TestEdges>,
    /// The store posts are read from (the suite writes its fixtures there).
    pub store: Arc<dyn FeedStore>,
    /// The settings the implementation runs with (the suite reads `window_s`, `top_n`,
    /// `subscription_ttl`, `max_words`).
    pub config: EngagementConfig,
    /// Whatever must live as long as the test (a temporary directory, tasks).
    pub guard: Box<dyn std::any::Any + Send>,
}

/// Instantiate every engagement conformance test:
/// `engagement_conformance_tests!(make_env());` or, with another test attribute,
/// `engagement_conformance_tests!(#[tokio::test(start_paused = true)] make_env());`, where
/// `make_env()` is an expression of type `impl Future<Output = EngagementEnv>`.
#[macro_export]
macro_rules! engagement_conformance_tests {
    (@each [$attr:meta] $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let env = $make.await;
                $crate::conformance::engagement::$name(&env).await;
            }
        )*
    };
    (#[$attr:meta] $make:expr) => {
        $crate::engagement_conformance_tests!(@each [$attr] $make;
            typing_reaches_subscribed_edges_and_a_new_subscriber_gets_the_state,
            top_writers_most_words_first, unsubscribe_stops_frames,
            a_missing_post_subscribes_nothing, comment_counts_and_a_deleted_post,
            subscriptions_lapse_unless_renewed, writers_leave_after_the_window);
    };
    ($make:expr) => {
        $crate::engagement_conformance_tests!(#[tokio::test] $make);
    };
}

/// An `engagement` frame, in short.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Eng {
    post: String,
    writers: u32,
    comments: u64,
    /// (handle, words), as listed.
    top: Vec<(String, u32)>,
}

/// The frames of one item (panics on anything but `engagement` frames, and on a frame whose
/// window is not the configured one).
fn frames(item: ToEdge, window_s: u32) -> Vec<Eng> {
    match item {
        ToEdge::Engagement { frames } => frames
            .into_iter()
            .map(|f| match f {
                ServerFrame::Engagement {
                    post,
                    window_s: w,
                    writers,
                    comments,
                    top,
                } => {
                    assert_eq!(w, window_s, "the configured window");
                    Eng {
                        post,
                        writers,
                        comments,
                        top: top.into_iter().map(|t| (t.handle, t.words)).collect(),
                    }
                }
                other => panic!("not an engagement frame: {other:?}"),
            })
            .collect(),
        other => panic!("not engagement: {other:?}"),
    }
}

fn user(i: u32) -> UserRef {
    UserRef {
        id: format!("u-{i}"),
        handle: format!("writer{i}"),
    }
}

fn eng(post: &str, writers: u32, comments: u64, top: &[(u32, u32)]) -> Eng {
    Eng {
        post: post.into(),
        writers,
        comments,
        top: top.iter().map(|(u, w)| (user(*u).handle, *w)).collect(),
    }
}

/// The edges of one test, subscribing and renewing as edges do.
struct World<'a> {
    env: &'a EngagementEnv,
    /// edge → the posts it watches (renewed every beat).
    watching: Arc<tokio::sync::Mutex<HashMap<String, Vec<String>>>>,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for World<'_> {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

impl<'a> World<'a> {
    fn new(env: &'a EngagementEnv) -> Self {
        let watching: Arc<tokio::sync::Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let (engagement, w) = (env.engagement.clone(), watching.clone());
        let every = env.config.subscription_ttl / 4;
        let renew = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let watching = w.lock().await;
                for (edge, posts) in watching.iter() {
                    engagement.renew(edge, posts).await;
                }
            }
        });
        World {
            env,
            watching,
            renew,
        }
    }

    async fn edge(&self, edge: &str) -> Inbox {
        self.env.edges.attach(edge).await
    }

    /// A session of `edge` watches `posts`: subscribed, renewed from now on.
    async fn watch(&self, edge: &str, posts: &[&str]) -> Result<(), SignalError> {
        let posts: Vec<String> = posts.iter().map(|p| (*p).to_owned()).collect();
        let mut watching = self.watching.lock().await;
        self.env.engagement.subscribe(edge, &posts).await?;
        watching.entry(edge.to_owned()).or_default().extend(posts);
        Ok(())
    }

    /// No session of `edge` watches `posts` any more.
    async fn unwatch(&self, edge: &str, posts: &[&str]) {
        let posts: Vec<String> = posts.iter().map(|p| (*p).to_owned()).collect();
        let mut watching = self.watching.lock().await;
        if let Some(w) = watching.get_mut(edge) {
            w.retain(|p| !posts.contains(p));
        }
        self.env.engagement.unsubscribe(edge, &posts).await;
    }

    async fn typing(&self, i: u32, post: &str, words: u32) {
        self.env
            .engagement
            .typing(&user(i), post, words)
            .await
            .expect("typing");
    }

    async fn post(&self, id: &str) -> String {
        self.env
            .store
            .create_post(NewPost {
                id: id.into(),
                author: "u-author".into(),
                text: "a post".into(),
                attachments: vec![],
            })
            .await
            .expect("post")
            .post
            .id
    }

    /// The frames `inbox` gets, up to and including the first for which `last` holds.
    async fn until(&self, inbox: &mut Inbox, what: &str, last: impl Fn(&Eng) -> bool) -> Vec<Eng> {
        let window_s = self.env.config.window_s;
        let deadline = Instant::now() + inbox.patience;
        let mut seen = Vec::new();
        while let Some(item) = inbox.next_until(deadline).await {
            for f in frames(item, window_s) {
                let done = last(&f);
                seen.push(f);
                if done {
                    return seen;
                }
            }
        }
        panic!(
            "waited {:?} for {what}; came instead: {seen:#?}",
            inbox.patience
        );
    }

    /// The frames that have arrived already.
    fn now(&self, inbox: &mut Inbox) -> Vec<Eng> {
        let window_s = self.env.config.window_s;
        inbox
            .drain_now()
            .into_iter()
            .flat_map(|i| frames(i, window_s))
            .collect()
    }
}

/// Someone types on a post: every subscribed edge gets its frame (writers, comment count,
/// top writers); an edge that subscribes later gets the current state first. Too many words
/// is `bad_request`; typing on a post that does not exist is `not_found`.
pub async fn typing_reaches_subscribed_edges_and_a_new_subscriber_gets_the_state(
    env: &EngagementEnv,
) {
    let w = World::new(env);
    let p = w.post("p1").await;
    let (mut e1, mut e2, mut e3) = (w.edge("e1").await, w.edge("e2").await, w.edge("e3").await);
    w.watch("e1", &[&p]).await.expect("subscribe");
    w.watch("e2", &[&p]).await.expect("subscribe");
    w.typing(1, &p, 5).await;
    let want = eng(&p, 1, 0, &[(1, 5)]);
    for e in [&mut e1, &mut e2] {
        assert_eq!(
            w.until(e, "the first frame", |f| f.post == p).await,
            std::slice::from_ref(&want)
        );
    }
    w.watch("e3", &[&p]).await.expect("subscribe");
    assert_eq!(
        w.until(&mut e3, "the state", |f| f.post == p).await,
        [want],
        "the current state"
    );

    let e = env
        .engagement
        .typing(&user(2), &p, env.config.max_words + 1)
        .await
        .expect_err("too many words");
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = env
        .engagement
        .typing(&user(2), "no-such-post", 1)
        .await
        .expect_err("no such post");
    assert_eq!(e.code, ErrorCode::NotFound);
}

/// The frame counts every writer in the window and lists the `top_n` with the most words,
/// most first; a writer's new count takes its place in the list.
pub async fn top_writers_most_words_first(env: &EngagementEnv) {
    let w = World::new(env);
    let p = w.post("p1").await;
    let mut e1 = w.edge("e1").await;
    w.watch("e1", &[&p]).await.expect("subscribe");
    let n = env.config.top_n as u32 + 2;
    for i in 1..=n {
        w.typing(i, &p, 10 * i).await;
    }
    let seen = w.until(&mut e1, "every writer", |f| f.writers == n).await;
    for f in &seen {
        assert!(f.top.len() <= env.config.top_n, "at most top_n: {f:?}");
        assert!(
            f.top.windows(2).all(|t| t[0].1 >= t[1].1),
            "most words first: {f:?}"
        );
    }
    let top: Vec<(u32, u32)> = (3..=n).rev().map(|i| (i, 10 * i)).collect();
    assert_eq!(seen.last(), Some(&eng(&p, n, 0, &top)));

    // The fewest words so far become the most.
    let most = (10 * n + 1).min(env.config.max_words);
    w.typing(1, &p, most).await;
    let seen = w
        .until(&mut e1, "writer 1 first", |f| {
            f.top.first() == Some(&(user(1).handle, most))
        })
        .await;
    let last = seen.last().expect("a frame");
    assert_eq!(last.top.len(), env.config.top_n);
    assert_eq!(last.top[1], (user(n).handle, 10 * n), "then the others");
}

/// An edge that unsubscribes gets no more frames of the post; the others still do; it gets
/// the state again once it subscribes again.
pub async fn unsubscribe_stops_frames(env: &EngagementEnv) {
    let w = World::new(env);
    let p = w.post("p1").await;
    let (mut e1, mut e2) = (w.edge("e1").await, w.edge("e2").await);
    w.watch("e1", &[&p]).await.expect("subscribe");
    w.watch("e2", &[&p]).await.expect("subscribe");
    w.typing(1, &p, 1).await;
    for e in [&mut e1, &mut e2] {
        w.until(e, "one writer", |f| f.writers == 1).await;
    }
    w.unwatch("e1", &[&p]).await;
    // Two more frames to e2: the first was published after the unsubscription, and the
    // second only once the publication of the first (to every subscriber) was done.
    w.typing(2, &p, 1).await;
    w.until(&mut e2, "two writers", |f| f.writers == 2).await;
    w.typing(3, &p, 1).await;
    w.until(&mut e2, "three writers", |f| f.writers == 3).await;
    assert_eq!(w.now(&mut e1), [], "nothing after unsubscribing");

    w.watch("e1", &[&p]).await.expect("subscribe again");
    let seen = w.until(&mut e1, "the state", |f| f.post == p).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].writers, 3);
}

/// Subscribing to posts one of which does not exist is `not_found` and subscribes to none
/// of them.
pub async fn a_missing_post_subscribes_nothing(env: &EngagementEnv) {
    let w = World::new(env);
    let p = w.post("p1").await;
    let (mut e1, mut e2) = (w.edge("e1").await, w.edge("e2").await);
    let e = env
        .engagement
        .subscribe("e1", &[p.clone(), "no-such-post".into()])
        .await
        .expect_err("a missing post");
    assert_eq!(e.code, ErrorCode::NotFound);
    w.watch("e2", &[&p]).await.expect("subscribe");
    w.typing(1, &p, 1).await;
    w.until(&mut e2, "one writer", |f| f.writers == 1).await;
    w.typing(2, &p, 2).await;
    w.until(&mut e2, "two writers", |f| f.writers == 2).await;
    // Had e1 been subscribed, the one-writer frame would have reached it first.
    w.watch("e1", &[&p]).await.expect("subscribe");
    let seen = w.until(&mut e1, "the state", |f| f.post == p).await;
    assert_eq!(seen, [eng(&p, 2, 0, &[(2, 2), (1, 1)])]);
}

/// A post's comment count, from the store when first subscribed, then from `post_changed`,
/// is in its frames. A deleted post (`post_changed(post, None)`, after the store deleted it)
/// takes no more typing nor subscriptions (`not_found`); renewing it is no error, and other
/// posts go on.
pub async fn comment_counts_and_a_deleted_post(env: &EngagementEnv) {
    let w = World::new(env);
    let p = w.post("p1").await;
    let q = w.post("p2").await;
    let mut count = 0;
    for c in 0..2 {
        count = env
            .store
            .create_comment(NewComment {
                id: format!("c{c}"),
                post: p.clone(),
                // The author comments (no notification: the suite creates no users).
                author: "u-author".into(),
                text: "nice".into(),
            })
            .await
            .expect("comment")
            .value
            .1;
    }
    assert_eq!(count, 2);
    let mut e1 = w.edge("e1").await;
    w.watch("e1", &[&p, &q]).await.expect("subscribe");
    assert_eq!(
        w.until(&mut e1, "the count", |f| f.post == p).await,
        [eng(&p, 0, 2, &[])],
        "the count from the store"
    );
    env.engagement.post_changed(&p, Some(3)).await;
    assert_eq!(
        w.until(&mut e1, "the new count", |f| f.post == p).await,
        [eng(&p, 0, 3, &[])]
    );
    w.typing(1, &p, 4).await;
    assert_eq!(
        w.until(&mut e1, "a writer", |f| f.post == p).await,
        [eng(&p, 1, 3, &[(1, 4)])]
    );

    env.store.delete_post("u-author", &p).await.expect("delete");
    env.engagement.post_changed(&p, None).await;
    let e = env
        .engagement
        .typing(&user(2), &p, 1)
        .await
        .expect_err("deleted");
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = env
        .engagement
        .subscribe("e1", std::slice::from_ref(&p))
        .await
        .expect_err("deleted");
    assert_eq!(e.code, ErrorCode::NotFound);
    env.engagement.renew("e1", &[p.clone(), q.clone()]).await;
    w.typing(2, &q, 7).await;
    // (Frames of the two posts may come in any order: they are published apart.)
    let seen = w.until(&mut e1, "the other post", |f| f.post == q).await;
    assert_eq!(seen.last(), Some(&eng(&q, 1, 0, &[(2, 7)])));
}

/// A subscription renewed every heartbeat lasts; one not renewed within
/// `subscription_ttl` lapses (its edge hears nothing more of the post) and a renewal
/// brings it back, with the current state.
pub async fn subscriptions_lapse_unless_renewed(env: &EngagementEnv) {
    let w = World::new(env);
    let p = w.post("p1").await;
    let (mut kept, mut lapsing) = (w.edge("kept").await, w.edge("lapsing").await);
    w.watch("kept", &[&p]).await.expect("subscribe");
    // Subscribed once, never renewed.
    env.engagement
        .subscribe("lapsing", std::slice::from_ref(&p))
        .await
        .expect("subscribe");
    // Type until a frame reaches the renewed edge and not the other. One publication
    // delivers to its edges one after the other: only once the renewed edge has the next
    // frame is it certain that the other had all it was sent of the one before.
    let deadline = Instant::now() + env.config.subscription_ttl + kept.patience;
    let mut lapsing_had = 0;
    let mut words = 0;
    loop {
        words += 1;
        w.typing(1, &p, words).await;
        w.until(&mut kept, "the renewed edge's frame", |f| {
            f.top.first().is_some_and(|t| t.1 == words)
        })
        .await;
        for f in w.now(&mut lapsing) {
            lapsing_had = lapsing_had.max(f.top.first().map_or(0, |t| t.1));
        }
        if words >= 2 && lapsing_had < words - 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an unrenewed subscription did not lapse"
        );
    }
    // Lapsed for good: two more frames to the other edge, none to this one.
    w.typing(2, &p, 1).await;
    w.until(&mut kept, "two writers", |f| f.writers == 2).await;
    w.typing(3, &p, 1).await;
    w.until(&mut kept, "three writers", |f| f.writers == 3)
        .await;
    assert_eq!(
        w.now(&mut lapsing),
        [],
        "a lapsed subscription stays lapsed"
    );
    env.engagement
        .renew("lapsing", std::slice::from_ref(&p))
        .await;
    let seen = w.until(&mut lapsing, "the state", |f| f.post == p).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].writers, 3, "the current state");
}

/// A writer counts for `window_s` after their last typing; then a frame shows them gone.
pub async fn writers_leave_after_the_window(env: &EngagementEnv) {
    let w = World::new(env);
    let p = w.post("p1").await;
    let mut e1 = w.edge("e1").await;
    w.watch("e1", &[&p]).await.expect("subscribe");
    w.typing(1, &p, 3).await;
    assert_eq!(
        w.until(&mut e1, "a writer", |f| f.post == p).await,
        [eng(&p, 1, 0, &[(1, 3)])]
    );
    e1.patience += Duration::from_secs(env.config.window_s.into());
    assert_eq!(
        w.until(&mut e1, "no writer", |f| f.post == p).await,
        [eng(&p, 0, 0, &[])],
        "gone after the window"
    );
}
