//! Bad input gets the error the protocol names, and the connection survives.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use hubbub_protocol::{ErrorCode, Request, ServerFrame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn error_of(f: Option<ServerFrame>) -> (Option<String>, ErrorCode, Option<u64>) {
    match f {
        Some(ServerFrame::Error {
            id,
            code,
            retry_after_ms,
            ..
        }) => (id, code, retry_after_ms),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_unknown_binary_and_oversize_frames() {
    let s = server_with(|c| c.limits.max_frame_bytes = 1024).await;
    let (_, token) = s.user("mallory").await;
    let mut ws = raw(&s, &token).await;

    ws.send(Message::Text("{not json".into()))
        .await
        .expect("send");
    assert_eq!(
        error_of(next_raw(&mut ws).await),
        (None, ErrorCode::BadRequest, None)
    );
    ws.send(Message::Text(r#"{"type":"warp.drive","id":"w1"}"#.into()))
        .await
        .expect("send");
    assert_eq!(
        error_of(next_raw(&mut ws).await),
        (Some("w1".into()), ErrorCode::BadRequest, None)
    );
    ws.send(Message::Text(
        r#"{"type":"message.send","id":"w2","conversation":"c"}"#.into(),
    ))
    .await
    .expect("send");
    assert_eq!(
        error_of(next_raw(&mut ws).await),
        (Some("w2".into()), ErrorCode::BadRequest, None)
    );
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(
        error_of(next_raw(&mut ws).await),
        (None, ErrorCode::BadRequest, None)
    );
    let big = format!(
        r#"{{"type":"sync","id":"big","after_seq":0,"pad":"{}"}}"#,
        "x".repeat(2000)
    );
    ws.send(Message::Text(big.into())).await.expect("send");
    assert_eq!(error_of(next_raw(&mut ws).await).1, ErrorCode::TooLarge);

    // U+0000 in any string (PostgreSQL cannot store it): refused before anything is written;
    // an escaped backslash followed by `u0000` is text like any other.
    ws.send(Message::Text(
        r#"{"type":"message.send","id":"nul","conversation":"c","client_msg_id":"k","text":"a\u0000b"}"#
            .into(),
    ))
    .await
    .expect("send");
    assert_eq!(
        error_of(next_raw(&mut ws).await),
        (Some("nul".into()), ErrorCode::BadRequest, None)
    );
    ws.send(Message::Text(
        r#"{"type":"sync","id":"not-nul","after_seq":0,"x":"\\u0000"}"#.into(),
    ))
    .await
    .expect("send");
    assert!(matches!(next_raw(&mut ws).await, Some(ServerFrame::Ok { id, .. }) if id == "not-nul"));

    // Still open and working after all of that.
    ws.send(Message::Text(
        r#"{"type":"sync","id":"alive","after_seq":0}"#.into(),
    ))
    .await
    .expect("send");
    assert!(matches!(next_raw(&mut ws).await, Some(ServerFrame::Ok { id, .. }) if id == "alive"));

    // Far over the limit: the WebSocket layer refuses it and closes with 1009.
    let huge = "x".repeat(300 * 1024);
    let _ = ws.send(Message::Text(huge.into())).await;
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
}

#[tokio::test]
async fn rate_limits_answer_then_close_a_flood() {
    let s = server_with(|c| {
        c.limits.frames_per_s = 5;
        c.limits.burst = 5;
    })
    .await;
    let (_, token) = s.user("speedy").await;
    let mut ws = raw(&s, &token).await;
    // Six frames at once: five pass (the burst), the sixth is rate limited and says when
    // to retry. Acks and typing over the limit never produce errors.
    let mut batch = String::new();
    for i in 0..6 {
        batch.push_str(&format!(
            "{{\"type\":\"sync\",\"id\":\"q{i}\",\"after_seq\":0}}\n"
        ));
    }
    for _ in 0..10 {
        batch.push_str("{\"type\":\"ack\",\"seq\":0}\n");
    }
    ws.send(Message::Text(batch.into())).await.expect("send");
    let mut limited = Vec::new();
    let mut oks = 0;
    while oks + limited.len() < 6 {
        match next_raw(&mut ws).await {
            Some(ServerFrame::Ok { .. }) => oks += 1,
            Some(ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            }) => {
                assert!(retry_after_ms.is_some_and(|ms| ms > 0));
                limited.push(id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((oks, limited), (5, vec![Some("q5".to_owned())]));
    let typing = r#"{"type":"typing","conversation":"c","state":"start"}"#;
    ws.send(Message::Text(typing.into())).await.expect("send");
    // More than five times the limit within a second closes the connection with 1008. The
    // flood's frames are cheap to refuse (no store read), so even a loaded machine handles
    // more than 25 of them within one second.
    let flood = (0..60)
        .map(|i| format!("{{\"type\":\"no.such.type\",\"id\":\"f{i}\"}}"))
        .collect::<Vec<_>>()
        .join("\n");
    ws.send(Message::Text(flood.into())).await.expect("send");
    let mut code = None;
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Close(f))) => {
                code = f.map(|f| f.code);
                break;
            }
            Some(Ok(Message::Text(t))) => {
                for line in t.lines() {
                    let f: ServerFrame = serde_json::from_str(line).expect("json");
                    // Typing over the throttle is dropped silently: no error about it.
                    assert!(!matches!(&f, ServerFrame::Error { id: None, .. }), "{f:?}");
                }
            }
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert_eq!(code, Some(CloseCode::Policy));
}

/// A client that stops reading is cut off with 1013 once its outgoing buffer is full; the
/// server never buffers for it without bound, and other members are unaffected.
#[tokio::test]
async fn a_slow_reader_is_cut_off_with_1013() {
    slow_reader_is_cut_off(|c| c.limits.max_outgoing_frames = 256).await;
}

/// The bound holds in bytes too: with no practical bound on frames, 256 KiB of waiting
/// events cut the reader off.
#[tokio::test]
async fn a_slow_reader_is_cut_off_by_bytes() {
    slow_reader_is_cut_off(|c| {
        c.limits.max_outgoing_frames = 1_000_000;
        c.limits.max_outgoing_bytes = 256 * 1024;
    })
    .await;
}

async fn slow_reader_is_cut_off(bound: impl FnOnce(&mut hubbub::config::Config)) {
    let s = server_with(|c| {
        bound(c);
        c.limits.frames_per_s = 100_000;
        c.limits.burst = 100_000;
    })
    .await;
    let (slow, slow_token) = s.user("sloth").await;
    let (_, fast_token) = s.user("hare").await;
    let (mut fast, _) = s.connect(&fast_token).await;
    let reply = fast
        .request(Request::ConversationCreate {
            kind: hubbub_protocol::ConversationKind::Group,
            members: vec![slow.id.clone()],
            title: None,
            ephemeral: None,
            idempotency_key: None,
            public: None,
        })
        .await
        .expect("create");
    let ServerFrame::Ok {
        data: hubbub_protocol::ReplyData::Conversation { conversation },
        ..
    } = reply
    else {
        panic!("{reply:?}")
    };
    // The slow client: a tiny receive buffer, and it never reads.
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("tcp");
    let url = format!("ws://{addr}/v1/ws?access_token={slow_token}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    // Megabytes of events for it: 3,000 messages of 4,000 characters, sent in batches of 12
    // (under the 64 KiB frame limit) by a sender that reads its own events as they come and
    // keeps at most a few batches ahead of them (a client with flow control; one that floods
    // faster than it reads is a slow reader too, and the server runs in this test's process).
    let (batches, per_batch) = (250, 12);
    const AHEAD: usize = 4;
    let (progress, mut seen_so_far) = tokio::sync::watch::channel(0usize);
    let text = "z".repeat(4000);
    let url = format!(
        "{}/v1/ws?access_token={fast_token}",
        s.base.replacen("http", "ws", 1)
    );
    let (sender, _) = tokio_tungstenite::connect_async(url).await.expect("sender");
    let (mut sink, mut stream) = sender.split();
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < batches * per_batch {
            match tokio::time::timeout(PATIENCE, stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    seen += t
                        .lines()
                        .filter(|l| l.starts_with(r#"{"type":"message.new""#))
                        .count();
                    progress.send_replace(seen);
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("sender's stream ended after {seen} events: {other:?}"),
            }
        }
    });
    for batch in 0..batches {
        let behind = batch.saturating_sub(AHEAD) * per_batch;
        tokio::time::timeout(PATIENCE, seen_so_far.wait_for(|seen| *seen >= behind))
            .await
            .expect("the sender's own events come back")
            .expect("the reader runs");
        let frames: Vec<String> = (0..per_batch)
            .map(|i| {
                hubbub_protocol::ClientFrame {
                    id: None,
                    request: Request::MessageSend {
                        conversation: conversation.id.clone(),
                        client_msg_id: format!("flood-{batch}-{i}"),
                        text: text.clone(),
                        attachments: None,
                        reply_to: None,
                        thread: None,
                        mentions: None,
                    },
                }
                .to_json()
            })
            .collect();
        sink.send(Message::Text(frames.join("\n").into()))
            .await
            .expect("send");
    }
    // When the sender has all its own messages back, every push was attempted.
    reader.await.expect("sender saw all its messages");
    // Now read what the slow client was sent: its buffered events, then the end.
    let mut code = None;
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the server cut it off in time")
        {
            Some(Ok(Message::Close(f))) => {
                code = f.map(|f| f.code);
                break;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    // The close frame is a courtesy the full socket may not take; the cut-off is the point.
    assert!(code.is_none() || code == Some(CloseCode::Again), "{code:?}");
    // The server still serves everyone else (the first `fast` session, never read during the
    // flood, was rightly cut off too; a new one works).
    drop(fast);
    let (mut again, _) = s.connect(&fast_token).await;
    let reply = again
        .request(Request::ConversationList {})
        .await
        .expect("still served");
    assert!(matches!(reply, ServerFrame::Ok { .. }));
    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("hubbub_slow_consumers_total"),
        "the cut-off is counted"
    );
}

/// A frame under the frame limit whose envelope is over what the `main` queue takes (an
/// operator raised `max_frame_bytes` past `queue.max_body_bytes`) is answered `too_large`,
/// alone: the writes beside it are accepted, and the connection stays.
#[tokio::test]
async fn a_write_bigger_than_the_queue_takes_is_too_large_alone() {
    let s = server_with(|c| c.queue.max_body_bytes = 4 * 1024).await;
    let (_, token) = s.user("wordy").await;
    let (friend, _) = s.user("friend").await;
    let (mut socket, _) = s.connect(&token).await;
    let conversation = match ok(&mut socket, group(vec![friend.id.clone()])).await {
        hubbub_protocol::ReplyData::Conversation { conversation } => conversation.id,
        other => panic!("a conversation, got {other:?}"),
    };
    let mut ws = raw(&s, &token).await;
    // Three writes in one WebSocket frame: the middle one (3,990 characters of text, under
    // `max_text_chars` and the frame limit) does not fit the queue's 4 KiB.
    let frame = |id: &str, text: &str| {
        hubbub_protocol::ClientFrame {
            id: Some(id.into()),
            request: send(&conversation, id, text),
        }
        .to_json()
    };
    let batch = [
        frame("before", "hello"),
        frame("big", &"y".repeat(3990)),
        frame("after", "still here"),
    ]
    .join("\n");
    ws.send(Message::Text(batch.into())).await.expect("send");
    // Replies and events may share a WebSocket message (one frame a line): read every line.
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 3 {
        let text = match tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
            .await
            .expect("answers in time")
        {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        };
        for line in text.lines() {
            match serde_json::from_str::<ServerFrame>(line).expect("a frame") {
                ServerFrame::Ok { id, .. } => {
                    answers.insert(id, "ok".to_owned());
                }
                ServerFrame::Error {
                    id: Some(id), code, ..
                } => {
                    answers.insert(id, code.as_str().to_owned());
                }
                _ => {}
            }
        }
    }
    assert_eq!(answers["before"], "ok");
    assert_eq!(answers["big"], "too_large");
    assert_eq!(answers["after"], "ok");
    // Nothing of the big one was written: the conversation holds the other two.
    let history = ok(
        &mut socket,
        Request::MessageHistory {
            conversation: conversation.clone(),
            before: None,
            limit: Some(10),
            thread: None,
        },
    )
    .await;
    let hubbub_protocol::ReplyData::History { messages, .. } = history else {
        panic!("messages, got {history:?}");
    };
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.contains(&"hello") && texts.contains(&"still here"));
}
