//! The hubbub client protocol, version 1, as Rust types.
//!
//! This crate is the single source of truth for every frame a client sends, every reply and
//! pushed event the server sends, and the bodies of the HTTP API (`../shared/PROTOCOL.md`).
//! The edge parses with it, services build replies with it, tests speak it, and the JSON
//! Schema in `docs/schema/` is generated from it (`hubbub schema`).
//!
//! # Layout
//! - [`admin`]: the admin API: the runtime config (parsing, floors), feature flags and their
//!   evaluation, debug entries, API key bodies.
//! - [`model`]: the shared objects (`C` conversation, `M` message, `P` presence, `T` post ...).
//! - [`client`]: [`ClientFrame`] and [`Request`], one variant per request `type`, and
//!   [`ClientFrame::parse`], which turns any text frame into a request or a protocol error.
//! - [`server`]: [`ServerFrame`] (hello, ok, error, pushed events) and the reply `data` types.
//! - [`serverapi`]: bodies of the server API (`/v1/server`), from which the OpenAPI
//!   document is derived.
//! - [`http`]: request and response bodies of `/v1/auth/*`, `/v1/users/*`, `/v1/media`.
//! - [`error`]: [`ErrorCode`], the protocol's error codes and their HTTP statuses.
//! - [`internal`]: envelopes between roles (edge → services, services → edges); never sent
//!   to clients.
//! - [`limits`]: the size and rate limits, with their defaults.
//! - [`schema`]: generation of the JSON Schema documents.
//!
//! This crate knows nothing of transports, storage or queues: it is pure data and parsing.

pub mod admin;
pub mod client;
pub mod error;
pub mod http;
pub mod internal;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod schema;
pub mod server;
pub mod serverapi;

pub use client::{ClientFrame, FrameError, IdempotencyKey, Request};
pub use error::ErrorCode;
pub use model::*;
pub use server::{ReplyData, ServerFrame};

/// The protocol version this crate implements.
pub const PROTOCOL_VERSION: u32 = 1;

/// The protocol version `hello` announces (PROTOCOL.md 1.1).
pub const PROTOCOL_VERSION_STRING: &str = "1.1";

/// Why a request holding U+0000 in a string is refused (`bad_request`).
pub const NUL_REFUSED: &str = "strings must not contain U+0000 (NUL)";

/// Whether any string (or object key) in `value` holds U+0000. Such a request is refused
/// with `bad_request` wherever it comes in (a frame, a server API body): PostgreSQL cannot
/// store the character, so one backend would answer `internal` where the other stored it.
pub fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether a JSON text holds U+0000 in a string (JSON writes it only as the escape
/// `\u0000`, so a text without that escape is answered without parsing it).
pub fn json_holds_nul(text: &[u8]) -> bool {
    text.windows(6).any(|w| w == br"\u0000")
        && serde_json::from_slice::<serde_json::Value>(text).is_ok_and(|v| holds_nul(&v))
}
