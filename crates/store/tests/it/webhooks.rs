//! The producers' side of webhooks on the embedded backends: an event becomes one job per
//! subscribed endpoint, keyed by endpoint and user (a valid queue key for every app user id),
//! deduplicated by event id; presence checks are queued only while some endpoint wants them,
//! after the grace when a session closed.

use hubbub_protocol::internal::WebhookJob;
use hubbub_queue::{EmbeddedConfig, EmbeddedQueue, Queue, ReceiveOptions};
use hubbub_store::webhooks::{WEBHOOK_QUEUE, Webhooks};
use hubbub_store::*;
use std::sync::Arc;
use std::time::Duration;

async fn setup() -> (Webhooks, Arc<dyn Store>, Arc<dyn Queue>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = EmbeddedQueue::open(dir.path().join("hubbub.db"), EmbeddedConfig::default())
        .expect("queue");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(queue.clone()).await.expect("store"));
    let queue: Arc<dyn Queue> = Arc::new(queue);
    let hooks = Webhooks::new(store.clone(), queue.clone(), Duration::from_secs(10));
    (hooks, store, queue, dir)
}

async fn take_all(queue: &dyn Queue) -> Vec<hubbub_queue::Delivery> {
    queue
        .receive(
            WEBHOOK_QUEUE,
            ReceiveOptions {
                max: 100,
                ..Default::default()
            },
        )
        .await
        .expect("receive")
}

#[tokio::test]
async fn an_event_is_one_job_per_subscribed_endpoint_keyed_by_user_and_deduplicated() {
    let (hooks, store, queue, _dir) = setup().await;
    let a = store
        .create_webhook("http://127.0.0.1:9/a", &["message.created".into()])
        .await
        .expect("a");
    store
        .create_webhook("http://127.0.0.1:9/b", &["user.online".into()])
        .await
        .expect("b");
    assert!(hooks.wants("message.created").await && !hooks.wants("user.offline").await);
    // Every character an app user id may hold makes a valid key.
    let user = "App.User-1_x";
    for _ in 0..2 {
        hooks
            .emit(
                "message.created",
                user,
                "message.created/7",
                serde_json::json!({"n": 1}),
            )
            .await
            .expect("emit");
    }
    let jobs = take_all(&*queue).await;
    assert_eq!(
        jobs.len(),
        1,
        "one endpoint wants it, and the repeat is deduplicated"
    );
    assert_eq!(
        jobs[0].key.as_deref(),
        Some(format!("{}:{user}", a.id).as_str())
    );
    match serde_json::from_slice::<WebhookJob>(&jobs[0].body).expect("job") {
        WebhookJob::Deliver { endpoint, event } => {
            assert_eq!(
                (endpoint, event.id, event.kind),
                (
                    a.id.clone(),
                    "message.created/7".into(),
                    "message.created".into()
                )
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn presence_checks_wait_for_an_endpoint_and_the_grace() {
    let (hooks, store, queue, _dir) = setup().await;
    hooks.presence_check("u1", false).await.expect("check");
    assert!(
        take_all(&*queue).await.is_empty(),
        "no endpoint wants presence"
    );
    store
        .create_webhook("http://127.0.0.1:9/p", &["user.offline".into()])
        .await
        .expect("create");
    // A fresh producer: the first one's list is cached for a second.
    let hooks = Webhooks::new(store.clone(), queue.clone(), Duration::from_secs(10));
    hooks.presence_check("u1", true).await.expect("closed");
    assert!(
        take_all(&*queue).await.is_empty(),
        "a close is checked after the grace"
    );
    assert_eq!(queue.stats(WEBHOOK_QUEUE).await.expect("stats").delayed, 1);
    hooks.presence_check("u1", false).await.expect("opened");
    let stats = queue.stats(WEBHOOK_QUEUE).await.expect("stats");
    assert_eq!(stats.delayed + stats.waiting_on_key + stats.visible, 2);
}
