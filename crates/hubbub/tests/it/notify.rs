//! Push notifications through a real webhook receiver that fails, then recovers.

use crate::support::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hubbub_protocol::{ConversationKind, ReplyData, Request, ServerFrame};
use hubbub_services::notify::{Notification, WebhookConfig, signature};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Receiver {
    /// Every request: (user, seq, answered status).
    requests: Vec<(String, u64, u16)>,
    /// Every request: (user, the event's type).
    kinds: Vec<(String, &'static str)>,
    /// Answer the first this many with 500.
    fail_first: usize,
    /// Users whose notifications are refused for good (400).
    refuse: Vec<String>,
    /// Hang this long before answering.
    hang: Duration,
    /// Woken after every request, for tests waiting on one.
    changed: Arc<tokio::sync::Notify>,
}

async fn receive(
    State(r): State<Arc<Mutex<Receiver>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let ts = headers["x-hubbub-timestamp"]
        .to_str()
        .expect("ts")
        .to_owned();
    assert_eq!(
        headers["x-hubbub-signature"].to_str().expect("sig"),
        signature("webhook-secret", &ts, &body),
        "signed"
    );
    let n: Notification = serde_json::from_slice(&body).expect("notification json");
    assert_eq!(n.event.seq(), Some(n.seq));
    let hang = r.lock().expect("lock").hang;
    tokio::time::sleep(hang).await;
    let mut r = r.lock().expect("lock");
    let status = if r.requests.len() < r.fail_first {
        500
    } else if r.refuse.contains(&n.user) {
        400
    } else {
        200
    };
    r.kinds.push((n.user.clone(), n.event.type_name()));
    r.requests.push((n.user, n.seq, status));
    r.changed.notify_waiters();
    StatusCode::from_u16(status).expect("status")
}

async fn receiver(state: Receiver) -> (String, Arc<Mutex<Receiver>>) {
    let state = Arc::new(Mutex::new(state));
    let app = axum::Router::new()
        .route("/push", axum::routing::post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/push", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

fn notified(r: &Arc<Mutex<Receiver>>) -> Vec<(String, u64)> {
    let r = r.lock().expect("lock");
    let mut ok: Vec<_> = r
        .requests
        .iter()
        .filter(|(_, _, s)| *s == 200)
        .map(|(u, s, _)| (u.clone(), *s))
        .collect();
    ok.sort();
    ok
}

/// Wait (bounded) until `check` holds, re-checking after each request the receiver gets.
async fn eventually(rx: &Arc<Mutex<Receiver>>, what: &str, check: impl Fn() -> bool) {
    let changed = rx.lock().expect("lock").changed.clone();
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if check() {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

fn direct(user: &str) -> Request {
    Request::ConversationCreate {
        kind: ConversationKind::Direct,
        members: vec![user.into()],
        title: None,
        ephemeral: None,
        idempotency_key: None,
        public: None,
    }
}

/// Wait (bounded) until a notification job lands in this server's `notify.dlq`: a long poll
/// on the dead-letter queue, woken when something arrives there.
async fn dead_letter(s: &TestServer, what: &str) {
    let queue = &s.running.as_ref().expect("running").queue;
    let got = hubbub_queue::Queue::receive(
        queue,
        "notify.dlq",
        hubbub_queue::ReceiveOptions {
            max: 1,
            wait: PATIENCE,
            visibility: Duration::from_secs(600),
            max_run: 1,
        },
    )
    .await
    .expect("receive");
    assert!(!got.is_empty(), "{what}");
}

/// A server pushing to the webhook at `url` after 1 s, retrying every 50 ms.
async fn push_server(url: String) -> TestServer {
    server_with(|c| {
        c.notify.delay_s = 1;
        c.notify.backoff_ms = 50;
        c.notify.webhook = Some(WebhookConfig {
            url,
            secret: "webhook-secret".into(),
            rate_per_s: 100,
            burst: 100,
            timeout_ms: 2000,
        });
    })
    .await
}

#[tokio::test]
async fn unacked_events_are_pushed_once_after_failures_and_acked_ones_never() {
    let (url, rx) = receiver(Receiver {
        fail_first: 3,
        ..Default::default()
    })
    .await;
    let s = push_server(url).await;
    let (alice, at) = s.user("alice").await;
    let (bob, _) = s.user("bob").await;
    let (carol, ct) = s.user("carol").await;
    let (mut a, _) = s.connect(&at).await;
    // Bob is offline: his two events (the new conversation, the message) must be pushed.
    let ReplyData::Conversation { conversation: ab } = ok(&mut a, direct(&bob.id)).await else {
        panic!()
    };
    ok(
        &mut a,
        Request::MessageSend {
            conversation: ab.id,
            client_msg_id: "m1".into(),
            text: "ping".into(),
            attachments: None,
            reply_to: None,
            thread: None,
            mentions: None,
        },
    )
    .await;
    eventually(&rx, "bob's two notifications", || notified(&rx).len() >= 2).await;
    // Carol is online and acks at once: nothing is pushed for her.
    let (mut c, _) = s.connect(&ct).await;
    let ReplyData::Conversation { conversation: ac } = ok(&mut a, direct(&carol.id)).await else {
        panic!()
    };
    ok(
        &mut a,
        Request::MessageSend {
            conversation: ac.id,
            client_msg_id: "m2".into(),
            text: "hi carol".into(),
            attachments: None,
            reply_to: None,
            thread: None,
            mentions: None,
        },
    )
    .await;
    let f = until(&mut c, "message", |f| {
        matches!(f, ServerFrame::MessageNew { .. })
    })
    .await;
    c.send(Request::Ack {
        seq: f.seq().expect("seq"),
    })
    .await
    .expect("ack");
    // A later marker: a second offline user; once theirs arrives, carol's job (due earlier)
    // has been handled.
    let (dave, _) = s.user("dave").await;
    ok(&mut a, direct(&dave.id)).await;
    eventually(&rx, "dave's notification", || {
        notified(&rx).iter().any(|(u, _)| *u == dave.id)
    })
    .await;

    let got = notified(&rx);
    assert_eq!(
        got,
        {
            let mut want = vec![
                (bob.id.clone(), 1),
                (bob.id.clone(), 2),
                (dave.id.clone(), 1),
            ];
            want.sort();
            want
        },
        "each unacked event exactly once; nothing for the sender, nothing acked"
    );
    let requests = rx.lock().expect("lock").requests.len();
    assert!(
        requests >= 6,
        "three failures were retried ({requests} requests)"
    );
    assert!(!got.iter().any(|(u, _)| *u == alice.id || *u == carol.id));
}

#[tokio::test]
async fn a_hanging_provider_never_blocks_chat_and_its_jobs_dead_letter() {
    let (url, _rx) = receiver(Receiver {
        hang: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let s = server_with(|c| {
        c.notify.delay_s = 0;
        c.notify.backoff_ms = 50;
        c.notify.max_attempts = 2;
        c.notify.webhook = Some(WebhookConfig {
            url,
            secret: "webhook-secret".into(),
            rate_per_s: 100,
            burst: 100,
            timeout_ms: 200,
        });
    })
    .await;
    let (_, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let ReplyData::Conversation { conversation } = ok(&mut a, direct(&bob.id)).await else {
        panic!()
    };
    // Bob connects later, so there are notifications to send (and time out) meanwhile.
    for i in 0..5 {
        ok(
            &mut a,
            Request::MessageSend {
                conversation: conversation.id.clone(),
                client_msg_id: format!("h{i}"),
                text: format!("while hanging {i}"),
                attachments: None,
                reply_to: None,
                thread: None,
                mentions: None,
            },
        )
        .await;
    }
    let (mut b, _) = s.connect(&bt).await;
    ok(
        &mut a,
        Request::MessageSend {
            conversation: conversation.id.clone(),
            client_msg_id: "live".into(),
            text: "live one".into(),
            attachments: None,
            reply_to: None,
            thread: None,
            mentions: None,
        },
    )
    .await;
    until(
        &mut b,
        "live delivery",
        |f| matches!(f, ServerFrame::MessageNew { message, .. } if message.text == "live one"),
    )
    .await;
    // The timed-out notifications were retried, then dead-lettered (max_attempts = 2).
    dead_letter(&s, "timed-out notifications end in notify.dlq").await;
}

#[tokio::test]
async fn a_refused_notification_goes_to_the_dead_letter_queue_at_once() {
    let (url, rx) = receiver(Receiver::default()).await;
    let s = server_with(|c| {
        c.notify.delay_s = 0;
        c.notify.webhook = Some(WebhookConfig {
            url,
            secret: "webhook-secret".into(),
            rate_per_s: 100,
            burst: 100,
            timeout_ms: 2000,
        });
    })
    .await;
    let (_, at) = s.user("alice").await;
    let (bob, _) = s.user("bob").await;
    rx.lock().expect("lock").refuse.push(bob.id.clone());
    let (mut a, _) = s.connect(&at).await;
    ok(&mut a, direct(&bob.id)).await;
    eventually(&rx, "the refused request", || {
        !rx.lock().expect("lock").requests.is_empty()
    })
    .await;
    // Once it is in the dead-letter queue, nothing can retry it any more.
    dead_letter(&s, "a refused notification is dead-lettered").await;
    let r = rx.lock().expect("lock");
    assert_eq!(r.requests.len(), 1, "a permanent refusal is not retried");
    assert_eq!(r.requests[0].2, 400);
}

/// `conversation.mute`: a muted conversation sends no pushes but mentions; lifted, it does
/// again.
#[tokio::test]
async fn a_muted_conversation_pushes_only_mentions() {
    let (url, rx) = receiver(Receiver::default()).await;
    let s = push_server(url).await;
    let (_, at) = s.user("mu_alice").await;
    let (bob, bt) = s.user("mu_bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let ReplyData::Conversation { conversation: g } = ok(&mut a, group(vec![bob.id.clone()])).await
    else {
        panic!("a group")
    };
    let created = until(&mut b, "the group", |f| {
        matches!(f, ServerFrame::ConversationUpdated { .. })
    })
    .await;
    b.send(Request::Ack {
        seq: created.seq().expect("seq"),
    })
    .await
    .expect("ack");
    let mute = |until_ts| Request::ConversationMute {
        conversation: g.id.clone(),
        until_ts,
    };
    let year = hubbub_queue::clock::now_ms() + 365 * 24 * 3600 * 1000;
    assert_eq!(ok(&mut b, mute(Some(year))).await, ReplyData::Empty {});
    // Not a member: refused.
    let (_, et) = s.user("mu_eve").await;
    let (mut e, _) = s.connect(&et).await;
    err(&mut e, mute(Some(year)), "forbidden").await;
    b.close().await;
    let send = |key: &str, mentions: Option<Vec<String>>| Request::MessageSend {
        conversation: g.id.clone(),
        client_msg_id: key.into(),
        text: format!("text {key}"),
        attachments: None,
        reply_to: None,
        thread: None,
        mentions,
    };
    ok(&mut a, send("m1", None)).await;
    ok(&mut a, send("m2", Some(vec![bob.id.clone()]))).await;
    let bobs = |rx: &Arc<Mutex<Receiver>>| -> Vec<&'static str> {
        rx.lock()
            .expect("lock")
            .kinds
            .iter()
            .filter(|(u, _)| *u == bob.id)
            .map(|(_, k)| *k)
            .collect()
    };
    eventually(&rx, "the mention's push", || {
        bobs(&rx).contains(&"notification")
    })
    .await;
    // A marker: a later push to another offline user means bob's jobs, due earlier, are done.
    let (dave, _) = s.user("mu_dave").await;
    ok(&mut a, direct(&dave.id)).await;
    eventually(&rx, "dave's push", || {
        rx.lock()
            .expect("lock")
            .kinds
            .iter()
            .any(|(u, _)| *u == dave.id)
    })
    .await;
    assert_eq!(
        bobs(&rx),
        ["notification"],
        "only the mention, nothing else of the muted group"
    );

    // Lifted: the next message is pushed.
    let (mut b, _) = s.connect(&bt).await;
    assert_eq!(ok(&mut b, mute(None)).await, ReplyData::Empty {});
    b.close().await;
    ok(&mut a, send("m3", None)).await;
    eventually(&rx, "the push after the mute is lifted", || {
        bobs(&rx).contains(&"message.new")
    })
    .await;
}
