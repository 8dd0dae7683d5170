//! The engagement service with the real store and the real in-process edge link: the
//! lease protocol between edges and a restarted service, and an edge that is gone.

use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::{ServerFrame, UserRef};
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
use hubbub_registry::{Engagement, LocalEdges};
use hubbub_services::engagement::{EngagementConfig, EngagementService};
use hubbub_store::{FeedStore, NewPost, SqliteStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn user(handle: &str) -> UserRef {
    UserRef {
        id: format!("u-{handle}"),
        handle: handle.into(),
    }
}

/// The next engagement frame an edge receives: (writers, top handles).
async fn next(rx: &mut UnboundedReceiver<Vec<ToEdge>>) -> (u32, Vec<String>) {
    let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a batch in time")
        .expect("link open");
    match batch.as_slice() {
        [ToEdge::Engagement { frames }] => match frames.as_slice() {
            [ServerFrame::Engagement { writers, top, .. }] => {
                (*writers, top.iter().map(|t| t.handle.clone()).collect())
            }
            other => panic!("unexpected frames {other:?}"),
        },
        other => panic!("unexpected batch {other:?}"),
    }
}

#[tokio::test]
async fn a_restarted_service_learns_subscriptions_from_renewals_and_drops_gone_edges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default())
        .expect("queue");
    let store: Arc<dyn FeedStore> = Arc::new(SqliteStore::open(queue).await.expect("store"));
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
    let mut e1 = edges.attach("e1");
    let config = EngagementConfig::default();

    let tracker = TaskTracker::new();
    let first = CancellationToken::new();
    let service = EngagementService::start(
        store.clone(),
        edges.clone(),
        config.clone(),
        &tracker,
        first.clone(),
    );
    service
        .subscribe("e1", std::slice::from_ref(&post))
        .await
        .expect("subscribe");
    service
        .typing(&user("bob"), &post, 5)
        .await
        .expect("typing");
    assert_eq!(next(&mut e1).await, (1, vec!["bob".to_owned()]));

    // The service dies, its memory with it; a new one starts knowing nothing.
    // Its partitions are tasks of the tracker: they end when cancelled.
    first.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("the partitions end");
    let tracker = TaskTracker::new();
    let second = CancellationToken::new();
    let service = EngagementService::start(
        store.clone(),
        edges.clone(),
        config,
        &tracker,
        second.clone(),
    );
    // The edge's next heartbeat renews what it watches: that is the resubscription.
    service.renew("e1", std::slice::from_ref(&post)).await;
    service
        .typing(&user("carol"), &post, 9)
        .await
        .expect("typing");
    assert_eq!(next(&mut e1).await, (1, vec!["carol".to_owned()]));

    // An edge that is gone: the first delivery to it fails and drops its subscriptions,
    // while the other edges keep theirs.
    let mut e2 = edges.attach("e2");
    service
        .subscribe("e2", std::slice::from_ref(&post))
        .await
        .expect("subscribe");
    edges.detach("e1");
    drop(e1);
    service
        .typing(&user("dave"), &post, 1)
        .await
        .expect("typing");
    let (writers, _) = next(&mut e2).await;
    assert!(writers >= 2, "carol and dave are in the window");

    // A renewal naming a post deleted meanwhile is not an error; typing on it is.
    store.delete_post("u-alice", &post).await.expect("delete");
    service.post_changed(&post, None).await;
    service.renew("e2", std::slice::from_ref(&post)).await;
    let e = service
        .typing(&user("erin"), &post, 1)
        .await
        .expect_err("deleted");
    assert_eq!(e.code, hubbub_protocol::ErrorCode::NotFound);
    second.cancel();
    tracker.close();
    tracker.wait().await;
}
