//! Engagement over the real protocol: `post.watch`, `comment.typing`, the `engagement`
//! events, their limits and errors, and the same events over SSE.

use crate::support::*;
use hubbub_protocol::{ErrorCode, ReplyData, Request, ServerFrame};

async fn new_post(sock: &mut hubbub::client::Socket, text: &str) -> String {
    match ok(
        sock,
        Request::PostCreate {
            text: text.into(),
            attachments: None,
            idempotency_key: None,
        },
    )
    .await
    {
        ReplyData::Post { post } => post.id,
        other => panic!("not a post: {other:?}"),
    }
}

fn watch(posts: &[&str]) -> Request {
    Request::PostWatch {
        posts: posts.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn typing(post: &str, words: u32) -> Request {
    Request::CommentTyping {
        post: post.into(),
        words,
    }
}

/// The next engagement event for `post` that satisfies `pred`.
async fn engagement(
    sock: &mut hubbub::client::Socket,
    post: &str,
    pred: impl Fn(u32, u64, &[(String, u32)]) -> bool,
) -> (u32, u64, Vec<(String, u32)>) {
    let f = until(sock, "engagement", |f| match f {
        ServerFrame::Engagement {
            post: p,
            writers,
            comments,
            top,
            ..
        } if p == post => {
            let top: Vec<_> = top.iter().map(|t| (t.handle.clone(), t.words)).collect();
            pred(*writers, *comments, &top)
        }
        _ => false,
    })
    .await;
    match f {
        ServerFrame::Engagement {
            writers,
            comments,
            top,
            window_s,
            ..
        } => {
            assert_eq!(window_s, 300);
            (
                writers,
                comments,
                top.into_iter().map(|t| (t.handle, t.words)).collect(),
            )
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn watchers_see_who_is_writing_and_the_comment_count() {
    let s = server().await;
    let (_, at) = s.user("alice").await;
    let (_, bt) = s.user("bob").await;
    let (_, ct) = s.user("carol").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let (mut c, _) = s.connect(&ct).await;
    let p = new_post(&mut a, "what do you think?").await;
    ok(&mut a, watch(&[&p])).await;
    ok(&mut b, watch(&[&p])).await;

    b.send(typing(&p, 3)).await.expect("send");
    c.send(typing(&p, 12)).await.expect("send");
    let (writers, comments, top) = engagement(&mut a, &p, |w, _, _| w == 2).await;
    assert_eq!((writers, comments), (2, 0));
    assert_eq!(top, vec![("carol".into(), 12), ("bob".into(), 3)]);
    engagement(&mut b, &p, |w, _, _| w == 2).await;

    // A comment changes the count; watchers hear it.
    ok(
        &mut c,
        Request::CommentCreate {
            post: p.clone(),
            text: "twelve words or so".into(),
            idempotency_key: None,
        },
    )
    .await;
    engagement(&mut a, &p, |_, c, _| c == 1).await;

    // A session that starts watching later gets the current state at once.
    let (mut late, _) = s.connect(&ct).await;
    ok(&mut late, watch(&[&p])).await;
    engagement(&mut late, &p, |w, c, _| w == 2 && c == 1).await;

    // Unwatching stops the events: after it, a change to another watched post arrives with
    // nothing for the unwatched one before it.
    let q = new_post(&mut a, "another").await;
    ok(&mut b, watch(&[&q])).await;
    ok(
        &mut b,
        Request::PostUnwatch {
            posts: vec![p.clone()],
        },
    )
    .await;
    c.send(typing(&p, 40)).await.expect("send");
    engagement(&mut a, &p, |_, _, top| {
        top.first() == Some(&("carol".into(), 40))
    })
    .await;
    c.send(typing(&q, 1)).await.expect("send");
    // Events of `p` from before the unwatch may still be buffered; none may show the
    // typing that came after it.
    let f = until(&mut b, "engagement", |f| match f {
        ServerFrame::Engagement { post, top, .. } if *post == p => {
            assert!(
                top.first().is_none_or(|t| t.words != 40),
                "an unwatched post's event arrived: {f:?}"
            );
            false
        }
        ServerFrame::Engagement { post, .. } => *post == q,
        _ => false,
    })
    .await;
    assert!(matches!(f, ServerFrame::Engagement { .. }));
}

#[tokio::test]
async fn bad_engagement_requests_get_protocol_errors() {
    let s = server_with(|c| c.limits.burst = 1000).await;
    let (_, at) = s.user("alice").await;
    let (mut a, _) = s.connect(&at).await;
    let p = new_post(&mut a, "post").await;

    // Unknown posts: not_found, and nothing of the request is subscribed.
    err(&mut a, watch(&[&p, "nope"]), "not_found").await;
    // More than 50 posts per session: too_large (the limit counts posts already watched).
    let many: Vec<String> = (0..51).map(|i| format!("p{i}")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    err(&mut a, watch(&many_refs), "too_large").await;
    let mut real = Vec::new();
    for i in 0..50 {
        real.push(new_post(&mut a, &format!("p{i}")).await);
    }
    let refs: Vec<&str> = real.iter().map(String::as_str).collect();
    ok(&mut a, watch(&refs)).await;
    ok(&mut a, watch(&refs[..3])).await; // watching again is no change
    err(&mut a, watch(&[&p]), "too_large").await;

    // comment.typing has no id: its errors come with "id": null.
    expect_error(
        &mut a,
        r#"{"type":"comment.typing","post":"nope","words":1}"#,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        &mut a,
        &format!(r#"{{"type":"comment.typing","post":"{p}","words":-4}}"#),
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        &mut a,
        &format!(r#"{{"type":"comment.typing","post":"{p}","words":4000000000}}"#),
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        &mut a,
        &format!(r#"{{"type":"comment.typing","post":"{p}","words":"many"}}"#),
        ErrorCode::BadRequest,
    )
    .await;
    expect_error(
        &mut a,
        r#"{"type":"post.watch","id":null,"posts":"p"}"#,
        ErrorCode::BadRequest,
    )
    .await;
    // Typing on a deleted post.
    ok(&mut a, Request::PostDelete { post: p.clone() }).await;
    expect_error(
        &mut a,
        &format!(r#"{{"type":"comment.typing","post":"{p}","words":2}}"#),
        ErrorCode::NotFound,
    )
    .await;
    // The connection survived all of it.
    ok(&mut a, Request::BlockList {}).await;
}

/// Send a frame without id; its error must come back with `"id": null` and `code`.
async fn expect_error(sock: &mut hubbub::client::Socket, text: &str, code: ErrorCode) {
    sock.send_text(text).await.expect("send");
    let f = until(sock, "error", |f| matches!(f, ServerFrame::Error { .. })).await;
    match f {
        ServerFrame::Error { id, code: c, .. } => assert_eq!((id, c), (None, code), "{text}"),
        _ => unreachable!(),
    }
}

/// Reads SSE events (`event:` + `data:` blocks) from a response body.
struct SseReader {
    body: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn next_event(&mut self) -> (String, serde_json::Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if event.is_empty() {
                    continue; // a keep-alive comment
                }
                return (event, serde_json::from_str(&data).expect("json data"));
            }
            let chunk = tokio::time::timeout(PATIENCE, self.body.chunk())
                .await
                .expect("an event in time")
                .expect("read")
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn sse_streams_engagement_and_refuses_bad_requests() {
    let s = server().await;
    let (_, at) = s.user("alice").await;
    let (mut a, _) = s.connect(&at).await;
    let p = new_post(&mut a, "live").await;
    let http = reqwest::Client::new();
    let url = |q: &str| format!("{}/v1/sse?{q}", s.base);

    let status = |r: reqwest::Response| r.status().as_u16();
    let r = http
        .get(url(&format!("streams=post:{p}")))
        .send()
        .await
        .expect("get");
    assert_eq!(status(r), 401, "the token is required");
    let r = http
        .get(url("streams=post:nope"))
        .bearer_auth(&at)
        .send()
        .await
        .expect("get");
    assert_eq!(status(r), 404);
    let r = http
        .get(url("streams=chat:x"))
        .bearer_auth(&at)
        .send()
        .await
        .expect("get");
    assert_eq!(status(r), 400);

    let r = http
        .get(url(&format!("streams=post:{p}&access_token={at}")))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let mut sse = SseReader {
        body: r,
        buf: String::new(),
    };
    a.send(typing(&p, 7)).await.expect("send");
    let (event, data) = sse.next_event().await;
    assert_eq!(event, "engagement");
    assert_eq!(data["type"], "engagement");
    assert_eq!(data["post"], p.as_str());
    assert_eq!(data["writers"], 1);
    assert_eq!(data["top"][0]["handle"], "alice");
    assert_eq!(data["top"][0]["words"], 7);
}
