//! Internal envelopes: what travels between roles, never to clients.
//!
//! A client request becomes an [`Envelope`] on the `main` queue; the router forwards it to a
//! service queue; the service answers with [`ToEdge`] items handed to the edge that holds the
//! session (the reply) and to every edge holding a recipient's session (the events).
//!
//! # On the queues
//! An envelope travels as a routing header, one line of JSON naming the request type and
//! the user (`{"t":"message.send","u":"u1"}`), then a newline, then the envelope's JSON
//! ([`Envelope::encode`]). The router reads only the header ([`Route::of`]) to pick the
//! service queue and the per-user FIFO key; it never decodes a request. JSON escapes every
//! newline inside strings, so the first newline always ends the header. A body without a
//! header (written before it existed) still decodes: [`Envelope::decode`] and [`Route::of`]
//! fall back to the envelope itself.

use crate::client::Request;
use crate::server::ServerFrame;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

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
    /// Put on the queue by the server API (an API key of scope `server`), not by a client:
    /// a `message.send` from the user [`SYSTEM_SENDER`](crate::serverapi::SYSTEM_SENDER) is
    /// then a system message, sent without being a member. No client can set it: edges
    /// build envelopes, clients only their `request`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub server: bool,
}

impl Envelope {
    /// The bytes put on a queue: the routing header line, then the envelope.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let route = Route {
            request_type: Cow::Borrowed(self.request.type_name()),
            user: Cow::Borrowed(&self.user),
        };
        let mut body = serde_json::to_vec(&route)?;
        body.push(b'\n');
        serde_json::to_writer(&mut body, self)?;
        Ok(body)
    }

    /// An envelope from the bytes of a queue message (with or without a routing header).
    pub fn decode(body: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(split(body).1)
    }
}

/// The routing header of an envelope on a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route<'a> {
    /// The request's type (`message.send`).
    #[serde(rename = "t", borrow)]
    pub request_type: Cow<'a, str>,
    /// The authenticated user (the per-user FIFO key on the service queues).
    #[serde(rename = "u", borrow)]
    pub user: Cow<'a, str>,
}

impl<'a> Route<'a> {
    /// The routing header of a queue message: read from its first line, or, for a body
    /// written without one, from the envelope itself.
    pub fn of(body: &'a [u8]) -> Result<Route<'a>, serde_json::Error> {
        match split(body) {
            (Some(header), _) => serde_json::from_slice(header),
            (None, envelope) => {
                let e: Envelope = serde_json::from_slice(envelope)?;
                Ok(Route {
                    request_type: Cow::Borrowed(e.request.type_name()),
                    user: Cow::Owned(e.user),
                })
            }
        }
    }
}

/// A message's routing header (when it has one) and the envelope's bytes.
fn split(body: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match body.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&body[..i]), &body[i + 1..]),
        None => (None, body),
    }
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
        /// The edge that accepted the originating request: that edge compares `origin_ms`
        /// with its own clock for admission control (another edge's clock may differ).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin_edge: Option<String>,
    },
    /// One message's `message.new` for several users of this edge, each with its own seq:
    /// what a message to a group is, the message carried (and, over HTTP, encoded and
    /// decoded) once instead of once per member. Equivalent to an [`ToEdge::Events`] of
    /// that one frame per user, in this order.
    Message {
        /// The message.
        message: std::sync::Arc<crate::Message>,
        /// Each user and the seq of the message in its events.
        users: Vec<(String, u64)>,
        /// When the originating request was accepted by its edge, for latency metrics.
        origin_ms: Option<i64>,
        /// The edge that accepted the originating request (as in [`ToEdge::Events`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin_edge: Option<String>,
    },
    /// One frame for every session on this edge of each member of `conversation` (a
    /// channel's message or change): the edge knows its users' channels, so the services
    /// name no member. Serialized once, shared by every session.
    Channel {
        /// The channel.
        conversation: String,
        /// The frame.
        frame: ServerFrame,
        /// When the originating request was accepted by its edge, for latency metrics.
        origin_ms: Option<i64>,
        /// The edge that accepted the originating request: that edge compares `origin_ms`
        /// with its own clock for admission control (another edge's clock may differ).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin_edge: Option<String>,
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

/// Decode a batch of [`ToEdge`] (a JSON array, as services post it to an edge): the same
/// result as `serde_json::from_slice::<Vec<ToEdge>>`, quicker for the item that carries a
/// group's message. serde decodes an internally tagged enum by first copying the item into
/// a buffer of its own (every string of the message and every member's id allocated twice);
/// an item whose `kind` comes first, as the encoder writes it, is read here into its fields
/// at once when it is a `message`. Any other item goes through the derived decoder.
pub fn decode_to_edge_batch(body: &[u8]) -> Result<Vec<ToEdge>, serde_json::Error> {
    let items: Vec<FastToEdge> = serde_json::from_slice(body)?;
    Ok(items.into_iter().map(|i| i.0).collect())
}

/// A [`ToEdge`] decoded as [`decode_to_edge_batch`] says.
struct FastToEdge(ToEdge);

impl<'de> Deserialize<'de> for FastToEdge {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FastToEdgeVisitor)
    }
}

struct FastToEdgeVisitor;

impl<'de> serde::de::Visitor<'de> for FastToEdgeVisitor {
    type Value = FastToEdge;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an item for an edge")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastToEdge, A::Error> {
        use serde::de::Error;
        let mut rest = serde_json::Map::new();
        let first: Option<String> = map.next_key()?;
        if let Some(key) = first {
            if key == "kind" {
                let kind: String = map.next_value()?;
                if kind == "message" {
                    return message_fields(map).map(FastToEdge);
                }
                rest.insert("kind".into(), serde_json::Value::String(kind));
            } else {
                rest.insert(key, map.next_value()?);
            }
            while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                rest.insert(k, v);
            }
        }
        serde_json::from_value(serde_json::Value::Object(rest))
            .map(FastToEdge)
            .map_err(A::Error::custom)
    }
}

/// The fields of a [`ToEdge::Message`] after its `kind`, in any order; others are ignored,
/// as the derived decoder does.
fn message_fields<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<ToEdge, A::Error> {
    use serde::de::Error;
    let mut message: Option<std::sync::Arc<crate::Message>> = None;
    let mut users: Option<Vec<(String, u64)>> = None;
    let mut origin_ms: Option<Option<i64>> = None;
    let mut origin_edge: Option<Option<String>> = None;
    while let Some(key) = map.next_key::<String>()? {
        match key.as_str() {
            "message" => message = Some(map.next_value()?),
            "users" => users = Some(map.next_value()?),
            "origin_ms" => origin_ms = Some(map.next_value()?),
            "origin_edge" => origin_edge = Some(map.next_value()?),
            "kind" => return Err(A::Error::duplicate_field("kind")),
            _ => {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
    }
    Ok(ToEdge::Message {
        message: message.ok_or_else(|| A::Error::missing_field("message"))?,
        users: users.ok_or_else(|| A::Error::missing_field("users"))?,
        // As the derived decoder: an `Option` field may be left out.
        origin_ms: origin_ms.flatten(),
        origin_edge: origin_edge.flatten(),
    })
}

/// A job on the `webhooks` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum WebhookJob {
    /// POST one event to one endpoint (key: endpoint and user, so a user's events reach an
    /// endpoint in order).
    Deliver {
        /// The endpoint's id.
        endpoint: String,
        /// The event.
        event: crate::serverapi::WebhookEvent,
    },
    /// Compare a user's presence now (the registry) with the last one announced, and
    /// announce the change (key: the user, so checks of one user run one at a time).
    Presence {
        /// The user.
        user: String,
        /// When the session opened or closed that asked for the check (ms): the offline
        /// event's `last_seen_ts`, and part of the event's id.
        at_ms: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Request;

    fn envelope(user: &str) -> Envelope {
        Envelope {
            envelope_id: "e1".into(),
            user: user.into(),
            session: "s1".into(),
            edge: "edge-1".into(),
            request_id: Some("r1".into()),
            accepted_ms: 7,
            request: Request::Sync { after_seq: 3 },
            server: false,
        }
    }

    #[test]
    fn the_header_names_the_type_and_user_and_the_envelope_comes_back() {
        // A user id with a newline and quotes cannot break the header: JSON escapes them.
        for user in ["u1", "we\"ird\nuser\u{2028}"] {
            let e = envelope(user);
            let body = e.encode().expect("encode");
            let route = Route::of(&body).expect("route");
            assert_eq!(route.request_type, "sync");
            assert_eq!(route.user, user);
            assert_eq!(Envelope::decode(&body).expect("decode"), e);
        }
    }

    #[test]
    fn a_body_without_a_header_still_routes_and_decodes() {
        let e = envelope("u2");
        let old = serde_json::to_vec(&e).expect("json");
        let route = Route::of(&old).expect("route");
        assert_eq!(
            (route.request_type.as_ref(), route.user.as_ref()),
            ("sync", "u2")
        );
        assert_eq!(Envelope::decode(&old).expect("decode"), e);
        assert!(Route::of(b"not json").is_err());
        assert!(Envelope::decode(b"{\"t\":\"sync\",\"u\":\"x\"}\nnot json").is_err());
    }

    #[test]
    fn a_batch_for_an_edge_decodes_as_the_derived_decoder_does() {
        let message: crate::Message = serde_json::from_value(serde_json::json!({
            "id": "m1", "conversation": "g\"1", "sender": "u1", "client_msg_id": "c1",
            "text": "hi \u{2028} there", "ts": 5, "mentions": ["u2"]
        }))
        .expect("a message");
        let frame = ServerFrame::error(Some("r1".into()), crate::ErrorCode::NotFound, "no such");
        let batch = vec![
            ToEdge::Message {
                message: std::sync::Arc::new(message.clone()),
                users: vec![("u1".into(), 3), ("u\n2".into(), u64::MAX)],
                origin_ms: Some(-1),
                origin_edge: Some("e1".into()),
            },
            ToEdge::Message {
                message: std::sync::Arc::new(message),
                users: Vec::new(),
                origin_ms: None,
                origin_edge: None,
            },
            ToEdge::Reply {
                session: "s1".into(),
                frame: frame.clone(),
            },
            ToEdge::Events {
                user: "u1".into(),
                frames: vec![frame.clone(), frame.clone()],
                origin_ms: Some(9),
                origin_edge: None,
            },
            ToEdge::Channel {
                conversation: "c1".into(),
                frame: frame.clone(),
                origin_ms: None,
                origin_edge: Some("e2".into()),
            },
            ToEdge::Engagement {
                frames: vec![frame],
            },
            ToEdge::Close {
                user: "u1".into(),
                session: None,
                code: 4000,
                reason: "bye".into(),
            },
        ];
        let body = serde_json::to_vec(&batch).expect("encode");
        assert_eq!(decode_to_edge_batch(&body).expect("decode"), batch);
        // `kind` elsewhere than first, fields left out or unknown: as the derived decoder.
        let odd = br#"[{"users":[["u1",1]],"kind":"message","message":{"id":"m","conversation":"g",
            "sender":"u","client_msg_id":"c","text":"t","ts":1}},
            {"kind":"message","new":[1,{"a":2}],"message":{"id":"m","conversation":"g",
            "sender":"u","client_msg_id":"c","text":"t","ts":1},"users":[]},
            {"kind":"close","user":"u","code":4001,"reason":""}]"#;
        let derived: Vec<ToEdge> = serde_json::from_slice(odd).expect("derived");
        assert_eq!(decode_to_edge_batch(odd).expect("decode"), derived);
        // What the derived decoder refuses, this refuses too.
        for bad in [
            &br#"[{"kind":"message","users":[]}]"#[..],
            br#"[{"kind":"message","message":{},"users":[]}]"#,
            br#"[{"kind":"nope"}]"#,
            br#"[{"kind":"message","kind":"close"}]"#,
            br#"[{}]"#,
            br#"{"kind":"close"}"#,
            b"not json",
        ] {
            assert!(serde_json::from_slice::<Vec<ToEdge>>(bad).is_err());
            assert!(
                decode_to_edge_batch(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
