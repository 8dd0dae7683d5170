//! Unit tests of the engagement service: the aggregator, and the service on paused time.

use super::*;

fn user(i: u32) -> UserRef {
    UserRef {
        id: format!("u{i}"),
        handle: format!("user{i}"),
    }
}

fn config() -> EngagementConfig {
    EngagementConfig {
        window_s: 10,
        top_n: 3,
        subscription_ttl: Duration::from_secs(5),
        ..Default::default()
    }
}

fn only(out: &HashMap<String, Vec<ServerFrame>>, edge: &str) -> (u32, u64, Vec<(String, u32)>) {
    let frames = &out[edge];
    assert_eq!(frames.len(), 1);
    match &frames[0] {
        ServerFrame::Engagement {
            writers,
            comments,
            top,
            window_s,
            ..
        } => {
            assert_eq!(*window_s, 10);
            (
                *writers,
                *comments,
                top.iter().map(|t| (t.handle.clone(), t.words)).collect(),
            )
        }
        other => panic!("not engagement: {other:?}"),
    }
}

#[test]
fn window_top_n_and_once_per_second() {
    let mut agg = Aggregator::new(config());
    assert_eq!(agg.typing("p", &user(1), 3, 0), Known::Unknown);
    agg.load("p", Some(7), 0);
    assert!(agg.subscribe("e1", "p", 0));
    for i in 1..=5 {
        assert_eq!(agg.typing("p", &user(i), i * 10, 0), Known::Live);
    }
    let (writers, comments, top) = only(&agg.tick(1000), "e1");
    assert_eq!((writers, comments), (5, 7));
    assert_eq!(
        top,
        vec![
            ("user5".into(), 50),
            ("user4".into(), 40),
            ("user3".into(), 30)
        ]
    );
    // A change within the second waits for the second to pass.
    agg.typing("p", &user(1), 99, 1100);
    assert!(agg.tick(1500).is_empty());
    let (_, _, top) = only(&agg.tick(2000), "e1");
    assert_eq!(top[0], ("user1".into(), 99));
    // Nothing changed: nothing published. The same word count is no change either.
    agg.typing("p", &user(1), 99, 2100);
    assert!(agg.tick(3100).is_empty());
    // Renewed writer 1 stays; the others leave the window at 10 s.
    agg.subscribe("e1", "p", 9000);
    let (writers, _, _) = only(&agg.tick(10_000), "e1");
    assert_eq!(writers, 1);
}

#[test]
fn subscriptions_lapse_unless_renewed_and_gone_edges_are_dropped() {
    let mut agg = Aggregator::new(config());
    agg.load("p", Some(0), 0);
    agg.subscribe("e1", "p", 0);
    agg.subscribe("e2", "p", 0);
    agg.typing("p", &user(1), 1, 0);
    let out = agg.tick(1000);
    assert_eq!(out.len(), 2, "both edges get it");
    // e2 renews, e1 does not (it died): after the TTL only e2 hears.
    agg.subscribe("e2", "p", 4000);
    agg.typing("p", &user(2), 1, 5500);
    let out = agg.tick(6000);
    assert_eq!(out.keys().collect::<Vec<_>>(), vec!["e2"]);
    agg.drop_edge("e2");
    assert!(agg.subscribers("p").is_empty());
    // With no subscriber and no writer left, the post is forgotten.
    agg.tick(20_000);
    assert_eq!(agg.known("p"), Known::Unknown);
}

#[test]
fn a_tick_between_loading_a_post_and_subscribing_to_it_keeps_it() {
    let mut agg = Aggregator::new(config());
    agg.load("p", Some(0), 0);
    // The partition ticks before the caller's subscription arrives.
    assert!(agg.tick(25).is_empty());
    assert!(agg.subscribe("e1", "p", 30), "still known");
    agg.typing("p", &user(1), 1, 40);
    assert_eq!(only(&agg.tick(1000), "e1").0, 1);
    // Loaded and never watched nor written: forgotten once the grace is over.
    agg.load("q", Some(0), 1000);
    agg.tick(1000 + LOAD_GRACE_MS - 1);
    assert_eq!(agg.known("q"), Known::Live);
    agg.tick(1000 + LOAD_GRACE_MS);
    assert_eq!(agg.known("q"), Known::Unknown);
}

#[test]
fn comments_and_deletion() {
    let mut agg = Aggregator::new(config());
    agg.load("p", Some(1), 0);
    agg.subscribe("e1", "p", 0);
    agg.post_changed("p", Some(2), 100);
    let (_, comments, _) = only(&agg.tick(1000), "e1");
    assert_eq!(comments, 2);
    agg.post_changed("p", None, 1100);
    assert_eq!(agg.known("p"), Known::Gone);
    assert_eq!(agg.typing("p", &user(1), 1, 1200), Known::Gone);
    assert!(!agg.subscribe("e1", "p", 1200));
    // Made-up ids cannot grow the tombstones past their bound.
    for i in 0..(MAX_TOMBSTONES + 10) {
        agg.load(&format!("made-up-{i}"), None, 7000);
        assert!(agg.gone.len() <= MAX_TOMBSTONES);
    }
}

/// The in-process service on paused tokio time: `advance` jumps the clock, and waiting on
/// a channel with a `timeout` lets the runtime move it from timer to timer.
mod service {
    use super::*;
    use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
    use hubbub_registry::LocalEdges;
    use hubbub_store::{NewPost, SqliteStore};
    use tokio::sync::mpsc::UnboundedReceiver;
    use tokio::time::advance;

    type Inbox = UnboundedReceiver<Vec<ToEdge>>;

    struct Setup {
        service: EngagementService,
        post: String,
        e1: Inbox,
        _dir: tempfile::TempDir,
    }

    /// A service of one partition on a fresh store holding one post, with edge `e1`
    /// attached (not subscribed).
    async fn setup(config: EngagementConfig) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default())
            .expect("queue");
        let store = SqliteStore::open(queue).await.expect("store");
        let post = store
            .create_post(NewPost {
                id: "p1".into(),
                author: "u-alice".into(),
                text: "hi".into(),
                attachments: vec![],
            })
            .await
            .expect("post")
            .post
            .id;
        let edges = Arc::new(LocalEdges::default());
        let e1 = edges.attach("e1");
        let config = EngagementConfig {
            partitions: 1,
            ..config
        };
        let tracker = TaskTracker::new();
        let service = EngagementService::start(
            Arc::new(store),
            edges,
            config,
            &tracker,
            CancellationToken::new(),
        );
        Setup {
            service,
            post,
            e1,
            _dir: dir,
        }
    }

    /// Move the clock forward to `at`.
    async fn advance_to(at: Instant) {
        let now = Instant::now();
        assert!(at >= now, "the clock is already past the step");
        advance(at - now).await;
    }

    /// The next engagement event within `within`: (writers, top as (handle, words)).
    async fn next_within(e1: &mut Inbox, within: Duration) -> (u32, Vec<(String, u32)>) {
        let batch = tokio::time::timeout(within, e1.recv())
            .await
            .expect("an event in time")
            .expect("open");
        match batch.as_slice() {
            [ToEdge::Engagement { frames }] => match frames.as_slice() {
                [ServerFrame::Engagement { writers, top, .. }] => (
                    *writers,
                    top.iter().map(|t| (t.handle.clone(), t.words)).collect(),
                ),
                other => panic!("unexpected frames {other:?}"),
            },
            other => panic!("unexpected batch {other:?}"),
        }
    }

    /// No event for `d`.
    async fn quiet_for(e1: &mut Inbox, d: Duration) {
        if let Ok(batch) = tokio::time::timeout(d, e1.recv()).await {
            panic!("unexpected batch {batch:?}");
        }
    }

    fn top(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(h, w)| ((*h).to_owned(), *w)).collect()
    }

    /// A writer counts for `window_s` after their last `comment.typing` and is gone
    /// after it; a post's events come at most once a second.
    #[tokio::test(start_paused = true)]
    async fn writers_count_within_the_window_and_are_gone_after_it() {
        let Setup {
            service,
            post,
            mut e1,
            _dir,
        } = setup(EngagementConfig {
            window_s: 10,
            subscription_ttl: Duration::from_secs(60),
            ..Default::default()
        })
        .await;
        let ms = |ms: u64| Duration::from_millis(ms);
        let posts = std::slice::from_ref(&post);
        service.subscribe("e1", posts).await.expect("subscribe");
        let t0 = Instant::now();
        service.typing(&user(1), &post, 5).await.expect("typing");
        assert_eq!(
            next_within(&mut e1, ms(100)).await,
            (1, top(&[("user1", 5)]))
        );

        advance_to(t0 + ms(5000)).await;
        service.typing(&user(2), &post, 9).await.expect("typing");
        let both = top(&[("user2", 9), ("user1", 5)]);
        assert_eq!(next_within(&mut e1, ms(100)).await, (2, both));
        // A change within the second waits for the second to end.
        advance_to(t0 + ms(5500)).await;
        service.typing(&user(2), &post, 12).await.expect("typing");
        quiet_for(&mut e1, ms(400)).await;
        let both = top(&[("user2", 12), ("user1", 5)]);
        assert_eq!(next_within(&mut e1, ms(300)).await, (2, both));

        // user1 leaves the window 10 s after typing, not before.
        advance_to(t0 + ms(9800)).await;
        quiet_for(&mut e1, ms(150)).await;
        let one = top(&[("user2", 12)]);
        assert_eq!(next_within(&mut e1, ms(200)).await, (1, one));
        // user2 typed last at 5.5 s.
        advance_to(t0 + ms(15_300)).await;
        quiet_for(&mut e1, ms(150)).await;
        assert_eq!(next_within(&mut e1, ms(200)).await, (0, vec![]));
        quiet_for(&mut e1, Duration::from_secs(60)).await;
    }

    /// A subscription not renewed within `subscription_ttl` lapses (the edge hears
    /// nothing more); a renewal brings it back with the current state.
    #[tokio::test(start_paused = true)]
    async fn a_subscription_not_renewed_lapses() {
        let Setup {
            service,
            post,
            mut e1,
            _dir,
        } = setup(EngagementConfig {
            window_s: 60,
            subscription_ttl: Duration::from_secs(5),
            ..Default::default()
        })
        .await;
        let ms = |ms: u64| Duration::from_millis(ms);
        let posts = std::slice::from_ref(&post);
        let t0 = Instant::now();
        service.subscribe("e1", posts).await.expect("subscribe");
        service.typing(&user(1), &post, 1).await.expect("typing");
        assert_eq!(next_within(&mut e1, ms(100)).await.0, 1);

        advance_to(t0 + ms(4000)).await;
        service.renew("e1", posts).await;
        service.typing(&user(2), &post, 1).await.expect("typing");
        assert_eq!(next_within(&mut e1, ms(100)).await.0, 2);
        // Renewed at 4 s: still subscribed at 8.5 s.
        advance_to(t0 + ms(8500)).await;
        service.typing(&user(3), &post, 1).await.expect("typing");
        assert_eq!(next_within(&mut e1, ms(100)).await.0, 3);
        // Lapsed at 9 s.
        advance_to(t0 + ms(9500)).await;
        service.typing(&user(4), &post, 1).await.expect("typing");
        quiet_for(&mut e1, Duration::from_secs(2)).await;

        service.renew("e1", posts).await;
        assert_eq!(next_within(&mut e1, ms(100)).await.0, 4);
    }
}
