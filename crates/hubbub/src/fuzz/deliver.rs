//! The `deliver-body` target: the edge's internal delivery handler (secret, JSON batch).

use super::frame::any_attachments;
use super::*;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use hubbub_cluster::edge_link::SECRET_HEADER;
use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::{
    Comment, Conversation, ConversationSummary, Message, MessageVersion, NotificationKind, Post,
    Presence, PresenceStatus, ReactionCount, ReactionOp, ReplyData, ServerFrame, TopWriter,
    UserRef,
};
use tokio::sync::mpsc;

pub(super) const INTERNAL_SECRET: &str = "fuzz-internal-secret-0123456789";

pub(super) struct DeliverTarget {
    tx: mpsc::UnboundedSender<Vec<ToEdge>>,
    rx: mpsc::UnboundedReceiver<Vec<ToEdge>>,
}

impl DeliverTarget {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        DeliverTarget { tx, rx }
    }

    fn message(rng: &mut Rng) -> Message {
        Message {
            id: any_string(rng),
            conversation: any_string(rng),
            sender: any_string(rng),
            client_msg_id: any_string(rng),
            text: any_string(rng),
            attachments: any_attachments(rng).unwrap_or_default(),
            ts: any_i64(rng),
            reply_to: maybe(rng, any_string),
            thread: maybe(rng, any_string),
            mentions: strings(rng),
            edited_ts: maybe(rng, any_i64),
            deleted: rng.bool(),
            reactions: Self::reactions(rng),
            replies: any_u64(rng),
            my_reactions: maybe(rng, strings),
        }
    }

    fn conversation(rng: &mut Rng) -> Conversation {
        Conversation {
            id: any_string(rng),
            kind: [
                ConversationKind::Direct,
                ConversationKind::Group,
                ConversationKind::Channel,
            ][rng.usize(..3)],
            title: maybe(rng, any_string),
            members: strings(rng),
            member_count: any_u64(rng),
            members_omitted: rng.bool(),
            created_by: any_string(rng),
            created_ts: any_i64(rng),
            ephemeral: rng.bool(),
            public: rng.bool(),
            last_offset: any_u64(rng),
            pinned: strings(rng),
            roles: strings(rng)
                .into_iter()
                .map(|u| (u, hubbub_protocol::Role::Admin))
                .collect(),
            slow_mode_s: any_u64(rng),
        }
    }

    fn reactions(rng: &mut Rng) -> Vec<ReactionCount> {
        (0..rng.usize(0..3))
            .map(|_| ReactionCount {
                emoji: any_string(rng),
                count: any_u64(rng),
            })
            .collect()
    }

    fn post(rng: &mut Rng) -> Post {
        Post {
            id: any_string(rng),
            author: any_string(rng),
            text: any_string(rng),
            attachments: any_attachments(rng).unwrap_or_default(),
            ts: any_i64(rng),
            likes: any_u64(rng),
            comments: any_u64(rng),
        }
    }

    fn presence(rng: &mut Rng) -> Presence {
        Presence {
            user: any_string(rng),
            status: *pick(
                rng,
                &[
                    PresenceStatus::Online,
                    PresenceStatus::Away,
                    PresenceStatus::Offline,
                ],
            ),
            last_seen_ts: maybe(rng, any_i64),
        }
    }

    fn reply_data(rng: &mut Rng) -> ReplyData {
        match rng.u8(0..17) {
            13 => ReplyData::Versions {
                versions: (0..rng.usize(0..3))
                    .map(|_| MessageVersion {
                        text: any_string(rng),
                        ts: any_i64(rng),
                    })
                    .collect(),
            },
            14 => ReplyData::Reactions {
                reactions: Self::reactions(rng),
            },
            0 => ReplyData::Conversations {
                conversations: (0..rng.usize(0..3))
                    .map(|_| ConversationSummary {
                        conversation: Self::conversation(rng),
                        last_message: maybe(rng, Self::message),
                        unread: any_u64(rng),
                    })
                    .collect(),
            },
            1 => ReplyData::Conversation {
                conversation: Self::conversation(rng),
            },
            2 => ReplyData::History {
                messages: (0..rng.usize(0..3)).map(|_| Self::message(rng)).collect(),
                more: rng.bool(),
            },
            3 => ReplyData::Search {
                messages: (0..rng.usize(0..3)).map(|_| Self::message(rng)).collect(),
            },
            4 => ReplyData::Message {
                message: Self::message(rng),
            },
            5 => ReplyData::Presence {
                presence: (0..rng.usize(0..3)).map(|_| Self::presence(rng)).collect(),
            },
            6 => ReplyData::Users {
                users: strings(rng),
            },
            7 => ReplyData::Post {
                post: Self::post(rng),
            },
            8 => ReplyData::Comment {
                comment: Comment {
                    id: any_string(rng),
                    post: any_string(rng),
                    author: any_string(rng),
                    text: any_string(rng),
                    ts: any_i64(rng),
                },
            },
            9 => ReplyData::Likes {
                likes: any_u64(rng),
            },
            10 => ReplyData::Timeline {
                items: (0..rng.usize(0..3)).map(|_| Self::post(rng)).collect(),
                computed_ts: any_i64(rng),
            },
            11 => ReplyData::Sync {
                last_seq: any_u64(rng),
                truncated: rng.bool(),
            },
            12 => ReplyData::Auth {
                expires_ts: any_i64(rng),
            },
            _ => ReplyData::Empty {},
        }
    }

    fn frame(rng: &mut Rng) -> ServerFrame {
        match rng.u8(0..14) {
            10 => ServerFrame::MessageUpdated {
                seq: any_u64(rng),
                message: Self::message(rng),
            },
            11 => ServerFrame::ReactionUpdated {
                seq: any_u64(rng),
                conversation: any_string(rng),
                message: any_string(rng),
                user: any_string(rng),
                emoji: any_string(rng),
                op: if rng.bool() {
                    ReactionOp::Add
                } else {
                    ReactionOp::Remove
                },
                reactions: Self::reactions(rng),
            },
            12 => ServerFrame::ChannelUpdated {
                conversation: any_string(rng),
                offset: any_u64(rng),
                message: Self::message(rng),
            },
            0 => ServerFrame::Hello {
                user: UserRef {
                    id: any_string(rng),
                    handle: any_string(rng),
                },
                session: any_string(rng),
                last_seq: any_u64(rng),
                server_ts: any_i64(rng),
                protocol: any_string(rng),
                flags: [(any_string(rng), rng.bool())].into_iter().collect(),
            },
            1 => ServerFrame::Ok {
                id: any_string(rng),
                data: Self::reply_data(rng),
            },
            2 => ServerFrame::Error {
                id: maybe(rng, any_string),
                code: *pick(
                    rng,
                    &[
                        ErrorCode::BadRequest,
                        ErrorCode::Unauthorized,
                        ErrorCode::Forbidden,
                        ErrorCode::NotFound,
                        ErrorCode::Conflict,
                        ErrorCode::TooLarge,
                        ErrorCode::RateLimited,
                        ErrorCode::Internal,
                        ErrorCode::Unavailable,
                    ],
                ),
                message: any_string(rng),
                retry_after_ms: maybe(rng, any_u64),
            },
            3 => ServerFrame::MessageNew {
                seq: any_u64(rng),
                message: Self::message(rng).into(),
            },
            4 => ServerFrame::ConversationUpdated {
                seq: any_u64(rng),
                conversation: Self::conversation(rng),
            },
            5 => ServerFrame::ReceiptRead {
                seq: any_u64(rng),
                conversation: any_string(rng),
                user: any_string(rng),
                message: any_string(rng),
            },
            6 => ServerFrame::Notification {
                seq: any_u64(rng),
                kind: *pick(
                    rng,
                    &[
                        NotificationKind::Like,
                        NotificationKind::Comment,
                        NotificationKind::Follow,
                        NotificationKind::Mention,
                        NotificationKind::System,
                    ],
                ),
                data: any_json(rng, 4),
            },
            7 => ServerFrame::Typing {
                conversation: any_string(rng),
                user: any_string(rng),
                state: if rng.bool() {
                    TypingState::Start
                } else {
                    TypingState::Stop
                },
            },
            8 => ServerFrame::Presence(Self::presence(rng)),
            9 => ServerFrame::Timeline {
                items: (0..rng.usize(0..3)).map(|_| Self::post(rng)).collect(),
                computed_ts: any_i64(rng),
            },
            _ => ServerFrame::Engagement {
                post: any_string(rng),
                window_s: any_u32(rng),
                writers: any_u32(rng),
                comments: any_u64(rng),
                top: (0..rng.usize(0..4))
                    .map(|_| TopWriter {
                        user: any_string(rng),
                        handle: any_string(rng),
                        words: any_u32(rng),
                    })
                    .collect(),
            },
        }
    }

    fn frames(rng: &mut Rng) -> Vec<ServerFrame> {
        (0..rng.usize(0..4)).map(|_| Self::frame(rng)).collect()
    }

    fn to_edge(rng: &mut Rng) -> ToEdge {
        match rng.u8(0..5) {
            0 => ToEdge::Reply {
                session: any_string(rng),
                frame: Self::frame(rng),
            },
            1 => ToEdge::Events {
                user: any_string(rng),
                frames: Self::frames(rng),
                origin_ms: maybe(rng, any_i64),
                origin_edge: maybe(rng, any_string),
            },
            2 => ToEdge::Engagement {
                frames: Self::frames(rng),
            },
            3 => ToEdge::Message {
                message: Self::message(rng).into(),
                users: (0..rng.usize(0..4))
                    .map(|_| (any_string(rng), any_u64(rng)))
                    .collect(),
                origin_ms: maybe(rng, any_i64),
                origin_edge: maybe(rng, any_string),
            },
            _ => ToEdge::Close {
                user: any_string(rng),
                session: maybe(rng, any_string),
                code: rng.u16(..),
                reason: any_string(rng),
            },
        }
    }

    fn secret_header(rng: &mut Rng) -> Vec<u8> {
        match rng.u8(0..12) {
            0 => b"wrong".to_vec(),
            1 => INTERNAL_SECRET[..rng.usize(..INTERNAL_SECRET.len())].into(),
            2 => format!("{INTERNAL_SECRET}x").into_bytes(),
            3 => b"fuzz-internal-secret-\xff\xfe".to_vec(),
            4 => any_string(rng).into_bytes(),
            _ => INTERNAL_SECRET.as_bytes().to_vec(),
        }
    }
}

impl Target for DeliverTarget {
    fn random(&mut self, rng: &mut Rng) -> Input {
        let header = Self::secret_header(rng);
        Input {
            parts: vec![header, random_bytes(rng, JSON_ALPHABET)],
        }
    }

    fn structured(&mut self, rng: &mut Rng) -> Input {
        let batch: Vec<ToEdge> = (0..rng.usize(0..6)).map(|_| Self::to_edge(rng)).collect();
        let body = serde_json::to_string(&batch).unwrap_or_default();
        let body = if rng.bool() {
            body
        } else {
            let mut doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            mutate_json(rng, &mut doc)
        };
        let mut parts = vec![body.into_bytes()];
        // No header at all, now and then.
        if rng.u8(0..16) != 0 {
            parts.insert(0, Self::secret_header(rng));
        }
        Input { parts }
    }

    /// With two parts, the secret header's value then the body; with one, only the body.
    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let (header, body) = match parts {
            [] => (None, &[][..]),
            [body] => (None, body.as_slice()),
            [header, body, ..] => (Some(header), body.as_slice()),
        };
        let mut headers = HeaderMap::new();
        // Bytes no HTTP/1 parser lets through a header are not tried.
        let sent = header.and_then(|h| HeaderValue::from_bytes(h).ok());
        let authorized = sent
            .as_ref()
            .is_some_and(|v| v.as_bytes() == INTERNAL_SECRET.as_bytes());
        if let Some(v) = sent {
            headers.insert(SECRET_HEADER, v);
        }
        let response = hubbub_cluster::edge_link::accept(&headers, body, INTERNAL_SECRET, &self.tx);
        let delivered = std::iter::from_fn(|| self.rx.try_recv().ok()).count();
        let status = response.status();
        match status {
            StatusCode::NO_CONTENT => {
                assert!(authorized, "a batch accepted without the secret");
                assert_eq!(delivered, 1, "an accepted batch was not handed on once");
                true
            }
            StatusCode::UNAUTHORIZED => {
                assert!(!authorized, "the right secret refused");
                assert_eq!(delivered, 0);
                false
            }
            StatusCode::BAD_REQUEST => {
                assert!(authorized, "a body parsed before the secret was checked");
                assert_eq!(delivered, 0);
                false
            }
            other => panic!("unexpected status {other}"),
        }
    }
}
