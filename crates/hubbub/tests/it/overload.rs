//! Admission control: past an edge's capacity a write is refused at once with
//! `rate_limited` and `retry_after_ms`, nothing of it stored, and what was accepted is
//! stored exactly once; no request is left to time out into `internal`.

use crate::support::*;
use hubbub::client::Socket;
use hubbub_protocol::{ErrorCode, ReplyData, Request, ServerFrame};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn a_burst_past_capacity_is_refused_fast_and_what_was_accepted_is_stored() {
    // One write in flight at a time on this edge: a burst sent without waiting for replies
    // finds the edge at capacity.
    let s = server_with(|c| c.server.max_inflight_writes = 1).await;
    let (alice, at) = s.user("alice").await;
    let (bob, _) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let ReplyData::Conversation { conversation: c } =
        ok(&mut a, group(vec![bob.id.clone(), alice.id.clone()])).await
    else {
        panic!()
    };

    const BURST: usize = 40;
    let mut burst = String::new();
    for i in 0..BURST {
        let frame = hubbub_protocol::ClientFrame {
            id: Some(format!("b{i}")),
            request: send(&c.id, &format!("k{i}"), &format!("m{i}")),
        };
        burst.push_str(&frame.to_json());
        burst.push('\n');
    }
    // One WebSocket message per frame, written back to back.
    for line in burst.lines() {
        a.send_text(line).await.expect("send");
    }
    let (mut accepted, mut refused) = (BTreeSet::new(), 0);
    while accepted.len() + refused < BURST {
        match next(&mut a).await {
            ServerFrame::Ok { id, .. } if id.starts_with('b') => {
                accepted.insert(id[1..].parse::<usize>().expect("index"));
            }
            ServerFrame::Error {
                id: Some(id),
                code,
                retry_after_ms,
                message,
            } if id.starts_with('b') => {
                assert_eq!(code, ErrorCode::RateLimited, "{message}");
                assert!(retry_after_ms.is_some_and(|ms| ms > 0), "{message}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(
        refused > 0,
        "a burst past one write in flight was refused in part"
    );
    assert!(
        !accepted.is_empty(),
        "the first write of the burst was accepted"
    );

    // Exactly the accepted ones are stored, once each.
    let ReplyData::History { messages, .. } = ok(
        &mut a,
        Request::MessageHistory {
            conversation: c.id.clone(),
            before: None,
            limit: Some(100),
            thread: None,
        },
    )
    .await
    else {
        panic!()
    };
    let stored: Vec<usize> = messages
        .iter()
        .map(|m| m.text[1..].parse::<usize>().expect("index"))
        .collect();
    let stored_set: BTreeSet<usize> = stored.iter().copied().collect();
    assert_eq!(stored.len(), stored_set.len(), "stored once each");
    assert_eq!(stored_set, accepted);

    // Once the edge has caught up, writes are accepted again.
    ok(&mut a, send(&c.id, "after", "after the burst")).await;
}

/// A write: `Ok` when accepted, `Err(retry_after_ms)` when refused by admission control
/// (any other reply fails the test).
async fn attempt(socket: &mut Socket, request: Request) -> Result<ReplyData, u64> {
    let reply = tokio::time::timeout(PATIENCE, socket.request(request))
        .await
        .expect("reply in time")
        .expect("request");
    match reply {
        ServerFrame::Ok { data, .. } => Ok(data),
        ServerFrame::Error {
            code,
            retry_after_ms,
            message,
            ..
        } => {
            assert_eq!(code, ErrorCode::RateLimited, "{message}");
            Err(retry_after_ms.expect("refusals say when to retry"))
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test]
async fn late_delivery_to_most_sessions_refuses_writes_until_it_clears() {
    // Every event reaching a socket more than 1 ms after its write was accepted is late
    // (the path through two queues and the store takes longer): after each message, most of
    // the edge's sessions are late, and the next write is refused until a window passes.
    let s = server_with(|c| c.server.admission_delivery_ms = 1).await;
    let (_, at) = s.user("alice").await;
    let mut others = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let (u, t) = s.user(name).await;
        let (socket, _) = s.connect(&t).await;
        others.push((u, socket));
    }
    let (mut a, _) = s.connect(&at).await;
    let members: Vec<String> = others.iter().map(|(u, _)| u.id.clone()).collect();
    let conversation = loop {
        match attempt(&mut a, group(members.clone())).await {
            Ok(ReplyData::Conversation { conversation: c }) => break c.id,
            Ok(other) => panic!("{other:?}"),
            Err(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    };

    const MESSAGES: usize = 5;
    let mut refusals = Vec::new();
    for i in 0..MESSAGES {
        // The same client_msg_id on every retry, as a client does after `rate_limited`.
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries <= 20, "message {i} never admitted");
            let request = send(&conversation, &format!("k{i}"), &format!("m{i}"));
            match attempt(&mut a, request).await {
                Ok(_) => break,
                Err(ms) => {
                    refusals.push(ms);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
        }
    }
    assert!(
        !refusals.is_empty(),
        "late delivery to every session refused some write"
    );
    assert!(
        refusals.iter().all(|&ms| (100..=1_000).contains(&ms)),
        "retry within the window and the next: {refusals:?}"
    );

    // Every member got each message exactly once, in order; history holds each once.
    for (_, socket) in &mut others {
        let mut got = Vec::new();
        while got.len() < MESSAGES {
            if let ServerFrame::MessageNew { message, .. } = next(socket).await {
                got.push(message.text.clone());
            }
        }
        let want: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want);
    }
    let ReplyData::History { messages, .. } = ok(
        &mut a,
        Request::MessageHistory {
            conversation,
            before: None,
            limit: Some(100),
            thread: None,
        },
    )
    .await
    else {
        panic!("history")
    };
    assert_eq!(
        messages.len(),
        MESSAGES,
        "each accepted message stored once"
    );
}
