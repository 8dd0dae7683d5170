//! hubbub's services. Each takes envelopes from its own queue, only as fast as it can handle
//! them (pull), does its work through the store, pushes the resulting events to the edges
//! holding the recipients' sessions, replies to the session that asked, and only then acks.
//!
//! - [`chat`]: conversations, messages, read receipts, blocks (`chat` queue).
//! - [`signals`]: presence and typing, in memory (the ephemeral path, no queue).
//! - [`notify`]: push notifications for events no device acknowledged in time (`notify`
//!   queue, webhook provider).
//!
//! Services never call one another; they share nothing but the store and the queues.

pub mod chat;
pub mod notify;
pub mod signals;

use hubbub_protocol::internal::Envelope;
use hubbub_protocol::{ErrorCode, ReplyData, ServerFrame};
use hubbub_store::StoreError;

/// A handler's failure, answered to the client with its protocol code.
#[derive(Debug)]
pub struct Failure {
    /// The protocol code.
    pub code: ErrorCode,
    /// The message for the client.
    pub message: String,
}

impl Failure {
    /// A failure with this code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let code = e.code();
        // Internal details stay in the log, not on the wire.
        let message = match code {
            ErrorCode::Internal => {
                tracing::error!(error = %e, "store failure");
                "internal error; the outcome is unknown, retrying with the same client_msg_id is safe".to_owned()
            }
            _ => e.to_string(),
        };
        Failure { code, message }
    }
}

/// The reply frame for an envelope's outcome, if the request had an id.
pub fn reply_frame(
    envelope: &Envelope,
    outcome: Result<ReplyData, Failure>,
) -> Option<ServerFrame> {
    let id = envelope.request_id.clone()?;
    Some(match outcome {
        Ok(data) => ServerFrame::Ok { id, data },
        Err(f) => ServerFrame::error(Some(id), f.code, f.message),
    })
}
