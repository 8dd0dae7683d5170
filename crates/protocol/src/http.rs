//! Bodies of the HTTP API: auth, user lookup, media, and the error body.

use crate::error::ErrorCode;
use crate::model::UserRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `POST /v1/auth/signup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct SignupRequest {
    /// 3–32 characters of `[a-z0-9_]`, unique.
    pub handle: String,
    /// At least 8 characters.
    pub password: String,
    /// Optional email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// `POST /v1/auth/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct LoginRequest {
    /// The handle.
    pub handle: String,
    /// The password.
    pub password: String,
}

/// `POST /v1/auth/refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct RefreshRequest {
    /// A refresh token, usable once.
    pub refresh_token: String,
}

/// The answer to signup, login and refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct AuthResponse {
    /// The user.
    pub user: UserRef,
    /// A JWT access token.
    pub access_token: String,
    /// A single-use refresh token.
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// Uploaded media, as returned by `POST /v1/media`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Media {
    /// Media id, used in `attachments`.
    pub id: String,
    /// Where to `GET` the bytes.
    pub url: String,
    /// The content type given at upload.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
}

/// `201` body of `POST /v1/media`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct MediaResponse {
    /// The stored media.
    pub media: Media,
}

/// Body of every HTTP error: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct HttpError {
    /// The error.
    pub error: HttpErrorBody,
}

/// The inside of [`HttpError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct HttpErrorBody {
    /// The error code.
    pub code: ErrorCode,
    /// A message for the client author.
    pub message: String,
    /// With `rate_limited`: when one more attempt will be accepted, milliseconds (also sent
    /// as the `Retry-After` header, in seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl HttpError {
    /// An error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HttpError {
            error: HttpErrorBody {
                code,
                message: message.into(),
                retry_after_ms: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn http_bodies_round_trip() {
        let auth = json!({"user":{"id":"u1","handle":"alice"},"access_token":"a",
            "refresh_token":"r","expires_in":900});
        let parsed: AuthResponse = serde_json::from_value(auth.clone()).expect("auth");
        assert_eq!(serde_json::to_value(&parsed).expect("json"), auth);

        let signup: SignupRequest =
            serde_json::from_value(json!({"handle":"alice","password":"12345678"})).expect("s");
        assert_eq!(signup.email, None);

        let err = HttpError::new(ErrorCode::Conflict, "handle taken");
        let v: Value = serde_json::to_value(&err).expect("json");
        assert_eq!(
            v,
            json!({"error":{"code":"conflict","message":"handle taken"}})
        );

        let media = json!({"media":{"id":"m","url":"/v1/media/m","content_type":"image/png",
            "size":3}});
        let parsed: MediaResponse = serde_json::from_value(media.clone()).expect("media");
        assert_eq!(serde_json::to_value(&parsed).expect("json"), media);
    }
}
