//! Admission control: past an edge's capacity a write is refused at once with
//! `rate_limited` and `retry_after_ms`, nothing of it stored, and what was accepted is
//! stored exactly once; no request is left to time out into `internal`.

use crate::support::*;
use hubbub_protocol::{ErrorCode, ReplyData, Request, ServerFrame};
use std::collections::BTreeSet;

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
