//! Signup, login, refresh, user lookup, and token checks on the WebSocket.

use crate::support::*;
use serde_json::{Value, json};

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn signup_login_refresh_and_lookup() {
    let s = server().await;
    let (status, body) = post(
        &s.base,
        "/v1/auth/signup",
        json!({"handle":"alice","password":"password123","email":"a@x.io"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["handle"], "alice");
    assert_eq!(body["expires_in"], 900);
    let refresh = body["refresh_token"].as_str().expect("refresh").to_owned();

    let (status, body) = post(
        &s.base,
        "/v1/auth/signup",
        json!({"handle":"alice","password":"password456"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    for (handle, password) in [
        ("Al", "password123"),
        ("has space", "password123"),
        ("bob", "short"),
    ] {
        let (status, body) = post(
            &s.base,
            "/v1/auth/signup",
            json!({"handle":handle,"password":password}),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{handle}"
        );
    }
    let (status, body) = post(&s.base, "/v1/auth/signup", json!({"handle":"x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "missing password"
    );

    let (status, body) = post(
        &s.base,
        "/v1/auth/login",
        json!({"handle":"alice","password":"password123"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().expect("token").to_owned();
    let (s1, wrong_pw) = post(
        &s.base,
        "/v1/auth/login",
        json!({"handle":"alice","password":"nope-nope"}),
    )
    .await;
    let (s2, no_user) = post(
        &s.base,
        "/v1/auth/login",
        json!({"handle":"nobody","password":"nope-nope"}),
    )
    .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(
        wrong_pw, no_user,
        "the same answer whether the handle exists or not"
    );

    let (status, body) = post(
        &s.base,
        "/v1/auth/refresh",
        json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["refresh_token"].as_str(), Some(refresh.as_str()));
    let (status, body) = post(
        &s.base,
        "/v1/auth/refresh",
        json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "a used refresh token"
    );
    let (status, _) = post(
        &s.base,
        "/v1/auth/refresh",
        json!({"refresh_token": "made-up"}),
    )
    .await;
    assert_eq!(status, 401);

    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/v1/users/alice", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    let user: Value = resp.json().await.expect("json");
    assert_eq!(user["handle"], "alice");
    let resp = http
        .get(format!("{}/v1/users/alice", s.base))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 401);
    let resp = http
        .get(format!("{}/v1/users/nobody", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
}

/// A refresh token used twice means someone holds a copy: the reuse is refused, and so is
/// every token issued from the reused one, whoever holds it. A new login still works.
#[tokio::test]
async fn reusing_a_refresh_token_revokes_the_tokens_issued_from_it() {
    let s = server().await;
    let (status, body) = post(
        &s.base,
        "/v1/auth/signup",
        json!({"handle":"alice","password":"password123"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let t1 = body["refresh_token"].as_str().expect("refresh").to_owned();
    let refresh = |token: String| {
        let base = s.base.clone();
        async move { post(&base, "/v1/auth/refresh", json!({"refresh_token": token})).await }
    };
    let (status, body) = refresh(t1.clone()).await;
    assert_eq!(status, 200, "{body}");
    let t2 = body["refresh_token"].as_str().expect("refresh").to_owned();

    let (status, reused) = refresh(t1).await;
    assert_eq!(
        (status, reused["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "the reuse"
    );
    let (status, body) = refresh(t2).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "the token issued from the reused one: {body}"
    );
    let (_, made_up) = refresh("made-up".into()).await;
    assert_eq!(
        reused["error"]["message"], made_up["error"]["message"],
        "a reuse is answered like any bad token"
    );

    let (status, body) = post(
        &s.base,
        "/v1/auth/login",
        json!({"handle":"alice","password":"password123"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let t3 = body["refresh_token"].as_str().expect("refresh").to_owned();
    let (status, body) = refresh(t3).await;
    assert_eq!(status, 200, "a new login starts a new family: {body}");
}

#[tokio::test]
async fn websocket_refuses_bad_tokens_before_the_upgrade() {
    let s = server().await;
    let (_, token) = s.user("wsuser").await;
    let ws = s.base.replacen("http", "ws", 1);
    for url in [
        format!("{ws}/v1/ws"),
        format!("{ws}/v1/ws?access_token=garbage"),
        format!("{ws}/v1/ws?access_token={token}x"),
    ] {
        match tokio_tungstenite::connect_async(url.clone()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{url}")
            }
            other => panic!("{url}: expected 401, got {:?}", other.map(|_| ())),
        }
    }
    // The query parameter works as well as the header.
    let (ws, _) = tokio_tungstenite::connect_async(format!("{ws}/v1/ws?access_token={token}"))
        .await
        .expect("query token");
    drop(ws);
}

#[tokio::test]
async fn app_tokens_create_users_on_first_use() {
    let s = server_with(|c| c.auth.app_hmac_secret = Some(APP_SECRET.into())).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 600;
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(APP_SECRET.as_bytes()),
        )
        .expect("sign")
    };
    let token = sign(json!({"sub":"app-user-1","exp":exp,"handle":"appy"}));
    let (_, hello) = s
        .client()
        .connect(&token)
        .await
        .expect("app token accepted");
    let hubbub_protocol::ServerFrame::Hello { user, .. } = hello else {
        panic!("hello")
    };
    assert_eq!(
        (user.id.as_str(), user.handle.as_str()),
        ("app-user-1", "appy")
    );
    // A second user whose handle claim is taken gets a generated one.
    let token2 = sign(json!({"sub":"app-user-2","exp":exp,"handle":"appy"}));
    let (_, hello) = s.client().connect(&token2).await.expect("second app user");
    let hubbub_protocol::ServerFrame::Hello { user, .. } = hello else {
        panic!("hello")
    };
    assert_eq!(user.id, "app-user-2");
    assert_ne!(user.handle, "appy");
    // A bad sub, a wrong secret, or no exp are refused.
    for claims in [json!({"sub":"bad sub!","exp":exp}), json!({"sub":"x"})] {
        assert!(s.client().connect(&sign(claims)).await.is_err());
    }
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"x","exp":exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"other"),
    )
    .expect("sign");
    assert!(s.client().connect(&forged).await.is_err());
}
