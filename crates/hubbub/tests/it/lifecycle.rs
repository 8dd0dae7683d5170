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
    let (mut sock, _) = s.connect(&token).await;
    ok(&mut sock, Request::ConversationList {}).await;
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
    let text = http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "hubbub_connections",
        "hubbub_frames_in_total",
        "hubbub_frames_out_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // Every metric the docs promise is named in docs/protocol.md, and vice versa the
    // server's list is what the docs show.
    let docs = include_str!("../../../../docs/protocol.md");
    for name in hubbub::serve::METRICS {
        assert!(
            docs.contains(name),
            "docs/protocol.md does not document {name}"
        );
    }
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
