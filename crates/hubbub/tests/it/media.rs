//! Media upload and download, and attachments that must exist.

use crate::support::*;
use hubbub_protocol::{Attachment, ConversationKind, ReplyData, Request, ServerFrame};
use serde_json::Value;

#[tokio::test]
async fn upload_download_and_attach() {
    let s = server_with(|c| c.limits.max_media_bytes = 64 * 1024).await;
    let (_, token) = s.user("photographer").await;
    let http = reqwest::Client::new();
    let png: Vec<u8> = b"\x89PNG\r\n\x1a\n"
        .iter()
        .copied()
        .chain((0..5000u32).map(|i| (i % 251) as u8))
        .collect();
    let resp = http
        .post(format!("{}/v1/media", s.base))
        .bearer_auth(&token)
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.expect("json");
    let media = &body["media"];
    assert_eq!(
        (media["content_type"].as_str(), media["size"].as_u64()),
        (Some("image/png"), Some(png.len() as u64))
    );
    let (id, url) = (
        media["id"].as_str().expect("id").to_owned(),
        media["url"].as_str().expect("url").to_owned(),
    );

    // Any authenticated user may fetch it; nobody else.
    let (_, other) = s.user("viewer").await;
    let resp = http
        .get(format!("{}{url}", s.base))
        .bearer_auth(&other)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), png);
    assert_eq!(
        http.get(format!("{}{url}", s.base))
            .send()
            .await
            .expect("get")
            .status(),
        401
    );
    let resp = http
        .get(format!("{}/v1/media/md-nope", s.base))
        .bearer_auth(&other)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);

    // Bad uploads get the protocol's errors.
    let post = |ct: &'static str, body: Vec<u8>| {
        http.post(format!("{}/v1/media", s.base))
            .bearer_auth(&token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    for (ct, body, status, code) in [
        ("text/plain", b"hello".to_vec(), 400, "bad_request"),
        ("image/", b"x".to_vec(), 400, "bad_request"),
        ("audio/ogg", Vec::new(), 400, "bad_request"),
        ("video/mp4", vec![0u8; 64 * 1024 + 1], 413, "too_large"),
    ] {
        let resp = post(ct, body).await.expect("post");
        assert_eq!(resp.status(), status, "{ct}");
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["error"]["code"], code, "{ct}");
    }
    let resp = http
        .post(format!("{}/v1/media", s.base))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 401);

    // Attachments must exist.
    let (mut sock, _) = s.connect(&token).await;
    let ReplyData::Conversation { conversation } = ok(
        &mut sock,
        Request::ConversationCreate {
            kind: ConversationKind::Group,
            members: vec![],
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
    let with = |k: &str, media: &str| Request::MessageSend {
        conversation: conversation.id.clone(),
        client_msg_id: k.into(),
        text: String::new(),
        attachments: Some(vec![Attachment {
            media: media.into(),
        }]),
        reply_to: None,
        thread: None,
        mentions: None,
    };
    err(&mut sock, with("a", "md-missing"), "not_found").await;
    let ReplyData::Message { message } = ok(&mut sock, with("b", &id)).await else {
        panic!()
    };
    assert_eq!(message.attachments, [Attachment { media: id.clone() }]);
    let f = until(&mut sock, "message.new", |f| {
        matches!(f, ServerFrame::MessageNew { .. })
    })
    .await;
    assert!(matches!(f, ServerFrame::MessageNew { message, .. } if message.attachments.len() == 1));
}
