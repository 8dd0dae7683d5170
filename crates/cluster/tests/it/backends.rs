//! The session registry and the timeline cache: one behaviour, checked on the in-process
//! implementations and on the Redis ones (against the server `scripts/test` starts,
//! `HUBBUB_TEST_REDIS_URL`, each test in its own key namespace).

use hubbub_cluster::{RedisRegistry, RedisTimelineCache};
use hubbub_registry::{LocalRegistry, Registry};
use hubbub_services::timeline::{
    CachedTimeline, LocalTimelineCache, Stage, TimelineCache, TimelineEntry,
};
use std::sync::Arc;
use std::time::Duration;

fn redis() -> (redis::aio::ConnectionManager, String) {
    let url = std::env::var("HUBBUB_TEST_REDIS_URL")
        .expect("HUBBUB_TEST_REDIS_URL is not set: run scripts/test, which starts redis-server");
    let client = redis::Client::open(url).expect("url");
    let conn = redis::aio::ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new(),
    )
    .expect("connection");
    (conn, format!("hbtest-{:016x}", fastrand::u64(..)))
}

async fn registry_contract(r: &dyn Registry) {
    r.register("alice", "s1", "e1").await.expect("register");
    r.register("alice", "s2", "e2").await.expect("register");
    r.register("bob", "s3", "e1").await.expect("register");
    let s = r.sessions("alice").await.expect("sessions");
    let mut pairs: Vec<(String, String)> = s.into_iter().map(|s| (s.session, s.edge)).collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [("s1".into(), "e1".into()), ("s2".into(), "e2".into())]
    );
    let many = r
        .sessions_of(&["bob".into(), "nobody".into(), "alice".into()])
        .await
        .expect("many");
    assert_eq!(
        many.iter().map(Vec::len).collect::<Vec<_>>(),
        [1, 0, 2],
        "in order"
    );
    // Per edge, the users it holds (by index), each once however many sessions.
    r.register("bob", "s4", "e1").await.expect("register");
    let mut by_edge = r
        .users_by_edge(&["bob", "nobody", "alice"])
        .await
        .expect("by edge")
        .edges;
    by_edge.sort();
    assert_eq!(
        by_edge,
        [("e1".to_owned(), vec![0, 2]), ("e2".to_owned(), vec![2])]
    );
    r.unregister("bob", "s4").await.expect("unregister");
    r.unregister("alice", "s1").await.expect("unregister");
    r.unregister("alice", "s1").await.expect("twice is fine");
    assert_eq!(r.sessions("alice").await.expect("sessions").len(), 1);
    assert!(r.sessions("nobody").await.expect("sessions").is_empty());
}

#[tokio::test]
async fn local_registry_keeps_the_contract() {
    registry_contract(&LocalRegistry::default()).await;
}

/// Whether `edge` is among the live edges `r` lists.
async fn listed(r: &RedisRegistry, edge: &str) -> bool {
    r.edges()
        .await
        .expect("edges")
        .iter()
        .any(|l| l.edge == edge)
}

#[tokio::test]
async fn redis_registry_keeps_the_contract_and_forgets_dead_edges() {
    let (conn, ns) = redis();
    let r = RedisRegistry::new(conn, &ns);
    for e in ["e1", "e2"] {
        r.edge_alive(e, "127.0.0.1:1", Duration::from_secs(60))
            .await
            .expect("alive");
    }
    registry_contract(&r).await;
    assert_eq!(
        r.edge_address("e1").await.expect("address").as_deref(),
        Some("127.0.0.1:1")
    );
    // An edge that stops renewing: its sessions are gone once its key expires.
    r.edge_alive("short", "127.0.0.1:2", Duration::from_millis(200))
        .await
        .expect("alive");
    r.register("carol", "s9", "short").await.expect("register");
    assert_eq!(r.sessions("carol").await.expect("sessions").len(), 1);
    assert!(listed(&r, "short").await);
    r.register("carol", "s10", "e1").await.expect("register");
    assert_eq!(
        r.users_by_edge(&["carol"])
            .await
            .expect("by edge")
            .edges
            .len(),
        2
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        r.users_by_edge(&["carol"]).await.expect("by edge").edges,
        [("e1".to_owned(), vec![0])],
        "a dead edge holds no one"
    );
    r.unregister("carol", "s10").await.expect("unregister");
    assert!(r.sessions("carol").await.expect("sessions").is_empty());
    assert!(
        !listed(&r, "short").await,
        "an edge whose key expired is not listed"
    );
    // Forgotten from the set by that listing; its next heartbeat brings it back.
    r.edge_alive("short", "127.0.0.1:2", Duration::from_secs(60))
        .await
        .expect("alive");
    assert!(listed(&r, "short").await);
    // An edge shutting down says so: its sessions go at once.
    r.register("dave", "s10", "e2").await.expect("register");
    r.edge_gone("e2").await.expect("gone");
    assert!(r.sessions("dave").await.expect("sessions").is_empty());
}

/// A lookup of many users (here from 3, and twice the edges last seen) lists every live
/// edge holding every user, never a dead edge; a smaller one reads each user.
#[tokio::test]
async fn redis_registry_answers_a_big_lookup_with_every_live_edge() {
    let (conn, ns) = redis();
    let r = RedisRegistry::new(conn, &ns).every_edge_from(3);
    for (e, ttl) in [("e1", 60_000), ("e2", 60_000), ("dead", 100)] {
        r.edge_alive(e, "127.0.0.1:1", Duration::from_millis(ttl))
            .await
            .expect("alive");
    }
    r.register("ann", "s1", "e1").await.expect("register");
    r.register("cat", "s2", "dead").await.expect("register");
    // Until the dead edge's key has expired (bounded: its TTL is 100 ms).
    for _ in 0..500 {
        if r.edge_address("dead").await.expect("address").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.edge_address("dead").await.expect("address"), None);
    let by_edge = |u: &[&str]| {
        let r = r.clone();
        let u: Vec<String> = u.iter().map(|u| (*u).to_owned()).collect();
        async move {
            let u: Vec<&str> = u.iter().map(String::as_str).collect();
            let mut e = r.users_by_edge(&u).await.expect("by edge").edges;
            e.sort();
            e
        }
    };
    // No edge seen yet: three users are enough.
    assert_eq!(
        by_edge(&["ann", "bob", "cat"]).await,
        [
            ("e1".to_owned(), vec![0, 1, 2]),
            ("e2".to_owned(), vec![0, 1, 2])
        ],
        "every live edge, every user; the dead edge left out"
    );
    // Two edges seen: three users are now read one by one (exactly where they are).
    assert_eq!(
        by_edge(&["ann", "bob", "cat"]).await,
        [("e1".to_owned(), vec![0])]
    );
    assert_eq!(by_edge(&["ann", "bob", "cat", "dan"]).await.len(), 2);
    // A listing that finds fewer edges lowers the bar again.
    r.edge_gone("e2").await.expect("gone");
    r.edges().await.expect("edges");
    assert_eq!(
        by_edge(&["ann", "bob"]).await,
        [("e1".to_owned(), vec![0])],
        "below the floor of three: read one by one"
    );
    assert_eq!(
        by_edge(&["ann", "bob", "cat"]).await,
        [("e1".to_owned(), vec![0, 1, 2])]
    );
}

/// Each edge's heartbeat publishes how many sessions it registered; `edges` lists the live
/// edges with those counts, and forgets an edge that says it is gone.
#[tokio::test]
async fn redis_registry_lists_live_edges_with_their_sessions() {
    let (conn, ns) = redis();
    let (a, b) = (
        RedisRegistry::new(conn.clone(), &ns),
        RedisRegistry::new(conn, &ns),
    );
    a.register("u1", "s1", "ea").await.expect("register");
    a.register("u2", "s2", "ea").await.expect("register");
    a.register("u2", "s2", "ea")
        .await
        .expect("again: counted once");
    b.register("u3", "s3", "eb").await.expect("register");
    let ttl = Duration::from_secs(60);
    a.edge_alive("ea", "127.0.0.1:1", ttl).await.expect("alive");
    b.edge_alive("eb", "127.0.0.1:2", ttl).await.expect("alive");
    let load = |e: &str, n: u64| hubbub_registry::EdgeLoad {
        edge: e.into(),
        sessions: n,
    };
    assert_eq!(
        a.edges().await.expect("edges"),
        [load("ea", 2), load("eb", 1)]
    );
    a.unregister("u1", "s1").await.expect("unregister");
    a.unregister("u1", "s1").await.expect("twice: counted once");
    a.edge_alive("ea", "127.0.0.1:1", ttl).await.expect("alive");
    b.edge_gone("eb").await.expect("gone");
    assert_eq!(b.edges().await.expect("edges"), [load("ea", 1)]);
}

fn timeline(ids: &[&str], watermark: u64) -> Arc<CachedTimeline> {
    Arc::new(CachedTimeline {
        entries: ids
            .iter()
            .enumerate()
            .map(|(i, id)| TimelineEntry {
                id: (*id).into(),
                author: "a".into(),
                ts: i as i64,
                likes: 1,
                comments: 2,
            })
            .collect(),
        computed_ts: 42,
        watermark,
    })
}

async fn cache_contract(c: &dyn TimelineCache) {
    assert!(c.get("u", Stage::Ranked).await.expect("get").is_none());
    c.put("u", Stage::Chronological, timeline(&["p2", "p1"], 7))
        .await
        .expect("put");
    assert!(
        c.get("u", Stage::Ranked).await.expect("get").is_none(),
        "stages apart"
    );
    c.put("u", Stage::Ranked, timeline(&["p1", "p2"], 7))
        .await
        .expect("put");
    let got = c.get("u", Stage::Ranked).await.expect("get").expect("some");
    assert_eq!(got, timeline(&["p1", "p2"], 7));
    c.put("u", Stage::Ranked, timeline(&["p3"], 9))
        .await
        .expect("put");
    let got = c.get("u", Stage::Ranked).await.expect("get").expect("some");
    assert_eq!((got.entries.len(), got.watermark), (1, 9), "replaced");
    // A list computed earlier (a computation that read before a later one) does not replace it.
    let mut older = (*timeline(&["p0"], 3)).clone();
    older.computed_ts = 41;
    c.put("u", Stage::Ranked, Arc::new(older))
        .await
        .expect("put");
    let got = c.get("u", Stage::Ranked).await.expect("get").expect("some");
    assert_eq!(got.watermark, 9, "the later computation stays");
    assert!(
        c.get("v", Stage::Ranked).await.expect("get").is_none(),
        "per user"
    );
}

#[tokio::test]
async fn local_timeline_cache_keeps_the_contract() {
    cache_contract(&LocalTimelineCache::default()).await;
}

#[tokio::test]
async fn redis_timeline_cache_keeps_the_contract() {
    let (conn, ns) = redis();
    cache_contract(&RedisTimelineCache::new(conn, &ns, Duration::from_secs(60))).await;
}
