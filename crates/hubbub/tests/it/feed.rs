//! The feed over the real protocol: posts, likes, comments, follows, notifications, and the
//! precomputed timeline with its real-time fixups.

use crate::support::*;
use hubbub_protocol::{NotificationKind, Post, ReplyData, Request, ServerFrame};

async fn post(sock: &mut hubbub::client::Socket, text: &str) -> Post {
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
        ReplyData::Post { post } => post,
        other => panic!("not a post: {other:?}"),
    }
}

async fn timeline(
    sock: &mut hubbub::client::Socket,
    before: Option<&str>,
    limit: Option<u32>,
) -> Vec<String> {
    match ok(
        sock,
        Request::TimelineGet {
            before: before.map(str::to_owned),
            limit,
        },
    )
    .await
    {
        ReplyData::Timeline { items, .. } => items.into_iter().map(|p| p.id).collect(),
        other => panic!("not a timeline: {other:?}"),
    }
}

async fn likes(sock: &mut hubbub::client::Socket, request: Request) -> u64 {
    match ok(sock, request).await {
        ReplyData::Likes { likes } => likes,
        other => panic!("not likes: {other:?}"),
    }
}

fn notification(f: &ServerFrame) -> Option<(NotificationKind, serde_json::Value)> {
    match f {
        ServerFrame::Notification { kind, data, .. } => Some((*kind, data.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn posts_likes_comments_follows_and_their_notifications() {
    let s = server().await;
    let (alice, at) = s.user("alice").await;
    let (bob, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;

    ok(
        &mut b,
        Request::Follow {
            user: alice.id.clone(),
        },
    )
    .await;
    let f = until(&mut a, "follow notification", |f| notification(f).is_some()).await;
    assert_eq!(
        notification(&f),
        Some((
            NotificationKind::Follow,
            serde_json::json!({"user": bob.id})
        ))
    );
    // Following again is a no-op: no second notification (checked by the seqs below).
    ok(
        &mut b,
        Request::Follow {
            user: alice.id.clone(),
        },
    )
    .await;

    let p = post(&mut a, "hello feed").await;
    assert_eq!(
        (p.author.as_str(), p.likes, p.comments),
        (alice.id.as_str(), 0, 0)
    );
    let like = || Request::PostLike { post: p.id.clone() };
    assert_eq!(likes(&mut b, like()).await, 1);
    assert_eq!(likes(&mut b, like()).await, 1, "likes are idempotent");
    let f = until(&mut a, "like notification", |f| notification(f).is_some()).await;
    assert_eq!(notification(&f).map(|n| n.0), Some(NotificationKind::Like));
    assert_eq!(f.seq(), Some(2), "one follow, one like: no duplicates");

    let comment = match ok(
        &mut b,
        Request::CommentCreate {
            post: p.id.clone(),
            text: "nice".into(),
            idempotency_key: None,
        },
    )
    .await
    {
        ReplyData::Comment { comment } => comment,
        other => panic!("not a comment: {other:?}"),
    };
    assert_eq!(
        (comment.post.as_str(), comment.author.as_str()),
        (p.id.as_str(), bob.id.as_str())
    );
    let f = until(&mut a, "comment notification", |f| {
        notification(f).is_some()
    })
    .await;
    let (kind, data) = notification(&f).expect("notification");
    assert_eq!(kind, NotificationKind::Comment);
    assert_eq!(data["comment"]["text"], "nice");

    let unlike = || Request::PostUnlike { post: p.id.clone() };
    assert_eq!(likes(&mut b, unlike()).await, 0);
    assert_eq!(likes(&mut b, unlike()).await, 0, "unlike is idempotent");
    // The author's own like notifies no one.
    assert_eq!(
        likes(&mut a, Request::PostLike { post: p.id.clone() }).await,
        1
    );

    // Errors: someone else's post, unknown posts and users, yourself, empty comments.
    err(
        &mut b,
        Request::PostDelete { post: p.id.clone() },
        "forbidden",
    )
    .await;
    err(
        &mut b,
        Request::PostLike {
            post: "nope".into(),
        },
        "not_found",
    )
    .await;
    err(
        &mut b,
        Request::CommentCreate {
            post: "nope".into(),
            text: "x".into(),
            idempotency_key: None,
        },
        "not_found",
    )
    .await;
    err(
        &mut b,
        Request::CommentCreate {
            post: p.id.clone(),
            text: "  ".into(),
            idempotency_key: None,
        },
        "bad_request",
    )
    .await;
    err(
        &mut b,
        Request::Follow {
            user: bob.id.clone(),
        },
        "bad_request",
    )
    .await;
    err(
        &mut b,
        Request::Follow {
            user: "ghost".into(),
        },
        "not_found",
    )
    .await;
    err(
        &mut a,
        Request::PostCreate {
            text: "x".repeat(4001),
            attachments: None,
            idempotency_key: None,
        },
        "too_large",
    )
    .await;
    ok(&mut a, Request::PostDelete { post: p.id.clone() }).await;
    err(
        &mut a,
        Request::PostDelete { post: p.id.clone() },
        "not_found",
    )
    .await;

    // Every notification is durable: a sync shows them once each, in order.
    let events = all_events(&s, &at).await;
    let kinds: Vec<_> = events
        .iter()
        .filter_map(notification)
        .map(|n| n.0)
        .collect();
    assert_eq!(
        kinds,
        vec![
            NotificationKind::Follow,
            NotificationKind::Like,
            NotificationKind::Comment
        ]
    );
    ok(
        &mut b,
        Request::Unfollow {
            user: alice.id.clone(),
        },
    )
    .await;
}

#[tokio::test]
async fn the_timeline_is_pushed_after_hello_and_fixed_up_in_real_time() {
    let s = server_with(|c| c.feed.precompute_dedupe_ms = 100).await;
    let (alice, at) = s.user("alice").await;
    let (carol, ct) = s.user("carol").await;
    let (_, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut c, _) = s.connect(&ct).await;
    let (mut b, _) = s.connect(&bt).await;
    let mut posts = Vec::new();
    for i in 0..3 {
        posts.push(post(&mut a, &format!("alice {i}")).await.id);
        posts.push(post(&mut c, &format!("carol {i}")).await.id);
    }
    ok(
        &mut b,
        Request::Follow {
            user: alice.id.clone(),
        },
    )
    .await;
    ok(
        &mut b,
        Request::Follow {
            user: carol.id.clone(),
        },
    )
    .await;

    // Every post, newest first when nobody engaged. A follow reaches the timeline with the
    // precompute it triggers (at most one per `feed.precompute_dedupe_ms` per user, see
    // docs/protocol.md): a precompute that ran between the two follows leaves the second
    // followee's older posts out until the next one, so wait for that one (bounded).
    let mut newest_first = posts.clone();
    newest_first.reverse();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let items = loop {
        let items = timeline(&mut b, None, None).await;
        if items == newest_first || tokio::time::Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(items, newest_first);

    // A new post shows at once; a deleted one is gone at once.
    let fresh = post(&mut a, "fresh").await.id;
    let items = timeline(&mut b, None, None).await;
    assert_eq!(items[0], fresh);
    ok(
        &mut a,
        Request::PostDelete {
            post: posts[0].clone(),
        },
    )
    .await;
    let items = timeline(&mut b, None, None).await;
    assert!(!items.contains(&posts[0]), "deleted posts are removed");
    assert_eq!(items.len(), 6);

    // Pages: `before` continues after a post; an unknown `before` is not_found.
    let first = timeline(&mut b, None, Some(2)).await;
    let second = timeline(&mut b, Some(&first[1]), Some(2)).await;
    assert_eq!([first.clone(), second].concat(), items[..4].to_vec());
    err(
        &mut b,
        Request::TimelineGet {
            before: Some("nope".into()),
            limit: None,
        },
        "not_found",
    )
    .await;

    // A new session gets the timeline unasked, right after hello; its posts are current.
    let (sock, hello) = s.client().connect(&bt).await.expect("connect");
    assert!(matches!(hello, ServerFrame::Hello { .. }));
    let mut sock = sock;
    match next(&mut sock).await {
        ServerFrame::Timeline {
            items: pushed,
            computed_ts,
        } => {
            assert!(computed_ts > 0);
            let ids: Vec<_> = pushed.iter().map(|p| p.id.clone()).collect();
            assert_eq!(ids, items);
        }
        other => panic!("expected the timeline, got {other:?}"),
    }

    // Unfollowing takes carol's posts out once the timeline is recomputed (at once here:
    // the unfollow requests it).
    ok(
        &mut b,
        Request::Unfollow {
            user: carol.id.clone(),
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let items = timeline(&mut b, None, None).await;
        if items.len() == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's posts stayed: {items:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The user's first fetch was a miss, and it was counted.
    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("hubbub_timeline_misses_total"),
        "{metrics}"
    );
    assert!(metrics.contains("hubbub_timeline_computed_total"));
}

#[tokio::test]
async fn likes_and_comments_lift_a_post_in_the_ranked_timeline() {
    let s = server_with(|c| c.feed.precompute_dedupe_ms = 100).await;
    let (alice, at) = s.user("alice").await;
    let (_, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    ok(
        &mut b,
        Request::Follow {
            user: alice.id.clone(),
        },
    )
    .await;
    let old = post(&mut a, "old but loved").await.id;
    let new = post(&mut a, "new and quiet").await.id;
    for i in 0..3 {
        let (_, t) = s.user(&format!("fan{i}")).await;
        let (mut f, _) = s.connect(&t).await;
        ok(&mut f, Request::PostLike { post: old.clone() }).await;
        ok(
            &mut f,
            Request::CommentCreate {
                post: old.clone(),
                text: "yes".into(),
                idempotency_key: None,
            },
        )
        .await;
    }
    // Counts are read at precompute time: a like of the new post, then a follow change,
    // request a recomputation that sees them all.
    ok(&mut a, Request::PostLike { post: new.clone() }).await;
    ok(
        &mut b,
        Request::Unfollow {
            user: alice.id.clone(),
        },
    )
    .await;
    ok(
        &mut b,
        Request::Follow {
            user: alice.id.clone(),
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let items = timeline(&mut b, None, None).await;
        if items == vec![old.clone(), new.clone()] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reranked: {items:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `post.create` and `comment.create` retried with the same `idempotency_key` (new requests,
/// as after `internal`) return the first object and create nothing.
#[tokio::test]
async fn creates_with_an_idempotency_key_create_once() {
    let s = server().await;
    let (_alice, at) = s.user("alice").await;
    let (_bob, bt) = s.user("bob").await;
    let (mut a, _) = s.connect(&at).await;
    let (mut b, _) = s.connect(&bt).await;
    let keyed_post = |key: &str, text: &str| Request::PostCreate {
        text: text.into(),
        attachments: None,
        idempotency_key: Some(key.to_owned().try_into().expect("key")),
    };
    let ReplyData::Post { post: first } = ok(&mut a, keyed_post("p-1", "hello")).await else {
        panic!()
    };
    let ReplyData::Post { post: again } = ok(&mut a, keyed_post("p-1", "hello")).await else {
        panic!()
    };
    assert_eq!(again, first, "the first post");

    let keyed_comment = |key: &str| Request::CommentCreate {
        post: first.id.clone(),
        text: "nice".into(),
        idempotency_key: Some(key.to_owned().try_into().expect("key")),
    };
    let ReplyData::Comment { comment: c1 } = ok(&mut b, keyed_comment("c-1")).await else {
        panic!()
    };
    let ReplyData::Comment { comment: c2 } = ok(&mut b, keyed_comment("c-1")).await else {
        panic!()
    };
    assert_eq!(c2, c1, "the first comment");
    let ReplyData::Post { post: other } = ok(&mut a, keyed_post("p-2", "second")).await else {
        panic!()
    };
    assert_ne!(other.id, first.id, "another key, another post");
    // The author's timeline holds each post once: the repeat made none.
    let mut ids = timeline(&mut a, None, None).await;
    ids.sort();
    let mut expected = vec![first.id.clone(), other.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let ReplyData::Timeline { items, .. } = ok(
        &mut a,
        Request::TimelineGet {
            before: None,
            limit: None,
        },
    )
    .await
    else {
        panic!()
    };
    let comments = items.iter().find(|p| p.id == first.id).map(|p| p.comments);
    assert_eq!(comments, Some(1), "one comment");
    // Alice was notified of one comment, not two.
    let notified = all_events(&s, &at)
        .await
        .iter()
        .filter_map(notification)
        .filter(|(kind, _)| *kind == NotificationKind::Comment)
        .count();
    assert_eq!(notified, 1);
    a.send_text(r#"{"type":"post.create","id":"e","text":"x","idempotency_key":""}"#)
        .await
        .expect("send");
    let reply = until(&mut a, "the reply", |f| {
        matches!(f, ServerFrame::Error { id: Some(id), .. } if id == "e")
            || matches!(f, ServerFrame::Ok { id, .. } if id == "e")
    })
    .await;
    let ServerFrame::Error { code, message, .. } = reply else {
        panic!("expected an error, got {reply:?}")
    };
    assert_eq!(code.as_str(), "bad_request");
    assert!(message.contains("idempotency_key"), "{message}");
}
