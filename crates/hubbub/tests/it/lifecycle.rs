//! Health, readiness, metrics, restarts, graceful shutdown.

use crate::support::*;
use futures_util::StreamExt;
use hubbub_protocol::{ConversationKind, ReplyData, Request};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn health_readiness_and_documented_metrics() {
    let s = server().await;
    let (_, token) = s.user("observer").await;
    let (other, _) = s.user("observed").await;
    let (mut sock, _) = s.connect(&token).await;
    ok(&mut sock, Request::ConversationList {}).await;
    // A small load that touches the chat and feed paths (and their metrics).
    let ReplyData::Conversation { conversation } = ok(&mut sock, group(vec![other.id])).await
    else {
        panic!("not a conversation")
    };
    ok(&mut sock, send(&conversation.id, "m1", "hello")).await;
    until(&mut sock, "own message", |f| {
        matches!(f, hubbub_protocol::ServerFrame::MessageNew { .. })
    })
    .await;
    ok(
        &mut sock,
        Request::PostCreate {
            text: "a post".into(),
            attachments: None,
            idempotency_key: None,
        },
    )
    .await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{}/healthz", s.base))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/readyz", s.base))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    // The admin API answers without a key (and counts the answer).
    assert_eq!(
        http.get(format!("{}/v1/admin/config", s.base))
            .send()
            .await
            .expect("admin")
            .status(),
        401
    );
    let text = http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // The frames written and read are counted by type (each session keeps its handles on
    // the counters), and the deliveries' latency recorded.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} on /metrics"))
    };
    assert!(value("hubbub_frames_out_total{type=\"message.new\"}") >= 1.0);
    assert!(value("hubbub_frames_out_total{type=\"ok\"}") >= 4.0);
    assert!(value("hubbub_frames_in_total{type=\"message.send\"}") >= 1.0);
    assert!(
        text.lines()
            .any(|l| l.starts_with("hubbub_delivery_latency_seconds"))
    );
    // Every series on /metrics belongs to a registered metric.
    use hubbub_protocol::metrics::{ALL, Kind, of_series};
    let mut emitted = std::collections::BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.split(['{', ' ']).next().unwrap_or_default();
        if !series.starts_with("hubbub_") {
            continue;
        }
        let metric = of_series(series)
            .unwrap_or_else(|| panic!("{series} is on /metrics but not in the registry"));
        emitted.insert(metric.name);
    }
    // Every registered metric is emitted under this small load, but for those that only a
    // failure or a configured provider produces (a refused connection, a store outage, a
    // push webhook): other tests trigger those (security, outage, notify).
    let only_on_failure = [
        hubbub_protocol::metrics::CONNECTIONS_REFUSED,
        hubbub_protocol::metrics::WRITES_REFUSED,
        hubbub_protocol::metrics::NOTIFY_SENT,
        hubbub_protocol::metrics::NOTIFY_FAILED,
        hubbub_protocol::metrics::ROUTER_UNROUTABLE,
        hubbub_protocol::metrics::ERROR_REPLIES,
    ];
    for m in ALL {
        if only_on_failure.contains(&m.name) || (m.labels.is_empty() && m.kind != Kind::Histogram) {
            // Unlabelled counters and gauges show from the start; check they do.
            if m.labels.is_empty() && m.kind != Kind::Histogram {
                assert!(emitted.contains(m.name), "{} is not on /metrics", m.name);
            }
            continue;
        }
        assert!(
            emitted.contains(m.name),
            "{} is registered but not emitted under the test's load",
            m.name
        );
    }
    // The docs' metrics table is the registry, both ways.
    let docs = include_str!("../../../../docs/protocol.md");
    let table = docs
        .split("## Metrics (`GET /metrics`)")
        .nth(1)
        .expect("a metrics section");
    let documented: std::collections::BTreeSet<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split(['`', '{']).next())
        .filter(|n| n.starts_with("hubbub_"))
        .collect();
    let registered: std::collections::BTreeSet<&str> = ALL.iter().map(|m| m.name).collect();
    assert_eq!(
        documented, registered,
        "docs/protocol.md's table and the registry differ"
    );
    let resp = http
        .get(format!("{}/v1/nope", s.base))
        .send()
        .await
        .expect("404");
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn data_and_tokens_survive_a_restart() {
    let mut s = server().await;
    let (bob, bt) = s.user("bob").await;
    let (_, at) = s.user("alice").await;
    let (mut a, _) = s.connect(&at).await;
    let ReplyData::Conversation { conversation: c } = ok(
        &mut a,
        Request::ConversationCreate {
            kind: ConversationKind::Direct,
            members: vec![bob.id.clone()],
            title: None,
            ephemeral: None,
            idempotency_key: None,
            public: None,
        },
    )
    .await
    else {
        panic!()
    };
    let send = |k: &str| Request::MessageSend {
        conversation: c.id.clone(),
        client_msg_id: k.into(),
        text: format!("msg {k}"),
        attachments: None,
        reply_to: None,
        thread: None,
        mentions: None,
    };
    let ReplyData::Message { message: before } = ok(&mut a, send("k1")).await else {
        panic!()
    };
    a.close().await;
    s.restart().await;
    // The same access token still works (signing keys are on disk); the message is there and
    // client_msg_id is still remembered.
    let (mut a, last_seq) = s.connect(&at).await;
    assert_eq!(last_seq, 2);
    let ReplyData::Message { message: after } = ok(&mut a, send("k1")).await else {
        panic!()
    };
    assert_eq!(after, before);
    let events = all_events(&s, &bt).await;
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let mut s = server().await;
    let (_, token) = s.user("leaver").await;
    let url = format!(
        "{}/v1/ws?access_token={token}",
        s.base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let _hello = ws.next().await;
    let running = s.running.take().expect("running");
    let stop = tokio::spawn(running.shutdown());
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(PATIENCE, ws.next()).await {
        if let Ok(Message::Close(f)) = msg {
            code = f.map(|f| f.code);
            break;
        }
    }
    assert_eq!(code, Some(CloseCode::Away));
    tokio::time::timeout(PATIENCE, stop)
        .await
        .expect("shutdown finishes")
        .expect("join");
}

#[tokio::test]
async fn one_server_per_data_directory() {
    let s = server().await;
    let mut config = s.config.clone();
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let e = hubbub::serve::start(config)
        .await
        .err()
        .expect("second server refused");
    assert!(e.to_string().contains("another hubbub process"), "{e}");
}
