//! Bodies of the server API (`/v1/server`, PROTOCOL.md 1.1 "API keys, the server API and
//! webhooks"): what an app's backend sends with an API key of scope `server`, and what it
//! gets back. The OpenAPI document (`docs/openapi.json`) is derived from these types.
//!
//! Request bodies refuse unknown fields: a misspelt field is a `400` naming it, not a
//! silently ignored option.

use crate::model::{Attachment, Conversation, ConversationKind, Message, Presence, UserRef};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most users one `POST /v1/server/presence` asks about.
pub const MAX_PRESENCE_USERS: usize = 1000;

/// The sender of a message posted by the server API without `sender`.
pub const SYSTEM_SENDER: &str = "system";

/// `POST /v1/server/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// The app's user id: 1–64 characters of `[A-Za-z0-9_.-]` (as an app token's `sub`).
    pub id: String,
    /// A handle (3–32 characters of `[a-z0-9_]`); a generated one when absent, taken or
    /// invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

/// The answer to `POST /v1/server/users`: `201` when created, `200` when it existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserResponse {
    /// The user.
    pub user: UserRef,
}

/// `POST /v1/server/conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// `direct`, `group` or `channel`.
    pub kind: ConversationKind,
    /// The members (user ids). Without `owner`, the first of them is the creator.
    pub members: Vec<String>,
    /// A title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The creator and owner (a member; added when not listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A public channel (channels only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// Makes the create idempotent: a repeat with the same key (and owner) returns the
    /// first conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `{"conversation":C}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationResponse {
    /// The conversation.
    pub conversation: Conversation,
}

/// `POST /v1/server/conversations/{id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// The users to add (at most 1,000; members already in are skipped).
    pub users: Vec<String>,
}

/// `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Empty {}

/// `POST /v1/server/conversations/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// Send as this user (a member); without it the message is a system message whose
    /// `sender` is `"system"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The text.
    pub text: String,
    /// Attached media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Attachment>>,
    /// 1–128 bytes; a repeat with the same key (and sender) returns the first message with
    /// `200`. It becomes the message's `client_msg_id`.
    pub idempotency_key: String,
}

/// `{"message":M}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageResponse {
    /// The message.
    pub message: Message,
}

/// `POST /v1/server/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    /// At most 1,000 user ids.
    pub users: Vec<String>,
}

/// `{"presence":[P]}`, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PresenceResponse {
    /// Each user's presence.
    pub presence: Vec<Presence>,
}

/// The answer to `POST /v1/server/users/{id}/disconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DisconnectResponse {
    /// The open sessions of the user that were told to close (with 4000), on every edge.
    pub sessions: u64,
}

/// The event types a webhook may subscribe to.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "user.online",
    "user.offline",
    "message.created",
    "conversation.created",
    "conversation.updated",
    "message.reported",
];

/// Longest webhook URL, bytes.
pub const MAX_WEBHOOK_URL: usize = 2048;

/// `POST /v1/server/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// The event types to receive (at least one): `user.online`, `user.offline`,
    /// `message.created`, `conversation.created`, `conversation.updated`.
    pub events: Vec<String>,
}

impl CreateWebhook {
    /// Why the body is refused, if it is: a URL that is not http(s) or too long, an unknown
    /// or no event type.
    pub fn check(&self) -> Result<(), String> {
        let scheme_ok = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !scheme_ok
            || self.url.len() > MAX_WEBHOOK_URL
            || self.url.chars().any(char::is_whitespace)
        {
            return Err(format!(
                "url: an http:// or https:// URL of at most {MAX_WEBHOOK_URL} bytes"
            ));
        }
        if self.events.is_empty() {
            return Err("events: at least one event type".into());
        }
        if let Some(bad) = self
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err(format!(
                "events: unknown event type {bad:?} ({})",
                WEBHOOK_EVENTS.join(", ")
            ));
        }
        Ok(())
    }
}

/// The answer to `POST /v1/server/webhooks` (`201`): the secret is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    /// The endpoint's id (`DELETE /v1/server/webhooks/{id}`).
    pub id: String,
    /// The signing secret: `X-Hubbub-Signature` is `sha256=` and the hex HMAC-SHA256 of
    /// `"<X-Hubbub-Timestamp>.<body>"` under it.
    pub secret: String,
}

/// A webhook endpoint as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookInfo {
    /// Its id.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// When it was created (ms).
    pub created_ts: i64,
}

/// The answer to `GET /v1/server/webhooks`: every endpoint, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhooksResponse {
    /// The endpoints.
    pub webhooks: Vec<WebhookInfo>,
}

/// A message reported by a member (`message.report`), as the server API lists it and the
/// `message.reported` webhook tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// Its id.
    pub id: String,
    /// The conversation.
    pub conversation: String,
    /// The message reported.
    pub message: String,
    /// Who reported it.
    pub reporter: String,
    /// Why.
    pub reason: String,
    /// When (ms).
    pub ts: i64,
}

/// The answer to `GET /v1/server/reports`: the newest reports first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReportsResponse {
    /// The reports.
    pub reports: Vec<Report>,
    /// Whether older ones remain (ask again with `before` = the last id).
    pub more: bool,
}

/// What a webhook endpoint receives: one event per POST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Stable across retries and redeliveries: receivers deduplicate by it.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event happened (ms).
    pub ts: i64,
    /// `{"user"}` (`user.online`), `{"user","last_seen_ts"}` (`user.offline`),
    /// `{"message":M}`, `{"conversation":C}`.
    pub data: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_parse_and_refuse_unknown_fields() {
        let m: PostMessage =
            serde_json::from_value(json!({"text":"hi","idempotency_key":"k1"})).expect("post");
        assert_eq!((m.sender, m.text.as_str()), (None, "hi"));
        let bad = serde_json::from_value::<PostMessage>(
            json!({"text":"hi","idempotency_key":"k","sendr":"x"}),
        );
        assert!(bad.expect_err("unknown").to_string().contains("sendr"));
        let c: CreateConversation =
            serde_json::from_value(json!({"kind":"group","members":["a","b"],"owner":"a"}))
                .expect("conversation");
        assert_eq!(c.owner.as_deref(), Some("a"));
    }

    #[test]
    fn webhook_bodies_are_checked() {
        let ok = CreateWebhook {
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["user.offline".into()],
        };
        assert_eq!(ok.check(), Ok(()));
        let bad_url = CreateWebhook {
            url: "ftp://x".into(),
            ..ok.clone()
        };
        assert!(bad_url.check().is_err());
        let bad_event = CreateWebhook {
            events: vec!["user.gone".into()],
            ..ok.clone()
        };
        assert!(
            bad_event
                .check()
                .expect_err("unknown")
                .contains("user.gone")
        );
        let none = CreateWebhook {
            events: vec![],
            ..ok
        };
        assert!(none.check().is_err());
    }
}
