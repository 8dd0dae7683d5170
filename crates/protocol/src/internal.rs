//! Internal envelopes: what travels between roles, never to clients.
//!
//! A client request becomes an [`Envelope`] on the `main` queue; the router forwards it to a
//! service queue; the service answers with [`ToEdge`] items handed to the edge that holds the
//! session (the reply) and to every edge holding a recipient's session (the events).

use crate::client::Request;
use crate::server::ServerFrame;
use serde::{Deserialize, Serialize};

/// A client request accepted by an edge, on its way to a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per accepted request; services derive idempotency keys from it.
    pub envelope_id: String,
    /// The authenticated user.
    pub user: String,
    /// The session that sent it (the reply goes there).
    pub session: String,
    /// The edge holding that session.
    pub edge: String,
    /// The client's request id, if any (no id: no `ok` reply).
    pub request_id: Option<String>,
    /// When the edge accepted it (ms since the epoch), for end-to-end latency.
    pub accepted_ms: i64,
    /// The request.
    pub request: Request,
}

/// Something a service hands to an edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToEdge {
    /// A frame for one session: the reply to one of its requests, or an event only it asked
    /// for (presence of a user it watches).
    Reply {
        /// The session.
        session: String,
        /// `ok` or `error`.
        frame: ServerFrame,
    },
    /// Frames for every session of a user on this edge.
    Events {
        /// The user.
        user: String,
        /// The frames, durable ones in seq order.
        frames: Vec<ServerFrame>,
        /// When the originating request was accepted by its edge, for latency metrics.
        origin_ms: Option<i64>,
    },
    /// `engagement` frames for every session of this edge watching their posts (the edge
    /// subscribed to those posts; it knows which of its sessions watch which).
    Engagement {
        /// `engagement` frames, at most one per post.
        frames: Vec<ServerFrame>,
    },
    /// Close every session of a user on this edge (or only `session`) with a close code:
    /// 4001 when the user's tokens were revoked, 4000 for a server-initiated disconnect.
    Close {
        /// The user.
        user: String,
        /// Only this session, when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        /// The WebSocket close code.
        code: u16,
        /// The close reason (at most 123 bytes go on the wire).
        reason: String,
    },
}
