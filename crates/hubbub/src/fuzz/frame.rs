//! The `client-frame` target: `ClientFrame::parse`, fed frames built from every request.

use super::*;

pub(super) struct ClientFrameTarget;

pub(super) fn any_attachments(rng: &mut Rng) -> Option<Vec<Attachment>> {
    maybe(rng, |rng| {
        (0..rng.usize(0..6))
            .map(|_| Attachment {
                media: any_string(rng),
            })
            .collect()
    })
}

pub(super) fn any_key(rng: &mut Rng) -> Option<IdempotencyKey> {
    maybe(rng, |rng| IdempotencyKey::try_from(any_string(rng)).ok()).flatten()
}

/// A request of every type, with generated fields.
pub(super) fn any_request(rng: &mut Rng) -> Request {
    let s = any_string;
    match rng.usize(..Request::TYPES.len()) {
        0 => Request::Sync {
            after_seq: any_u64(rng),
        },
        1 => Request::Ack { seq: any_u64(rng) },
        2 => Request::Auth {
            access_token: s(rng),
        },
        3 => Request::ConversationCreate {
            kind: [
                ConversationKind::Direct,
                ConversationKind::Group,
                ConversationKind::Channel,
            ][rng.usize(..3)],
            members: strings(rng),
            title: maybe(rng, s),
            ephemeral: maybe(rng, |r| r.bool()),
            idempotency_key: any_key(rng),
            public: maybe(rng, |r| r.bool()),
        },
        4 => Request::ConversationList {},
        5 => Request::ConversationGet {
            conversation: s(rng),
        },
        6 => Request::ConversationAdd {
            conversation: s(rng),
            user: maybe(rng, s),
            users: maybe(rng, strings),
        },
        7 => Request::ConversationRemove {
            conversation: s(rng),
            user: s(rng),
        },
        8 => Request::ConversationLeave {
            conversation: s(rng),
        },
        9 => Request::MessageSend {
            conversation: s(rng),
            client_msg_id: s(rng),
            text: s(rng),
            attachments: any_attachments(rng),
            reply_to: maybe(rng, s),
            thread: maybe(rng, s),
            mentions: maybe(rng, strings),
        },
        10 => Request::MessageHistory {
            conversation: s(rng),
            before: maybe(rng, s),
            limit: maybe(rng, any_u32),
            thread: maybe(rng, s),
        },
        11 => Request::MessageSearch {
            query: s(rng),
            conversation: maybe(rng, s),
        },
        12 => Request::MessageRead {
            conversation: s(rng),
            message: s(rng),
        },
        13 => Request::Typing {
            conversation: s(rng),
            state: if rng.bool() {
                TypingState::Start
            } else {
                TypingState::Stop
            },
        },
        14 => Request::PresenceSet {
            status: *pick(
                rng,
                &[
                    SetPresenceStatus::Online,
                    SetPresenceStatus::Away,
                    SetPresenceStatus::Invisible,
                ],
            ),
        },
        15 => Request::PresenceWatch {
            users: strings(rng),
        },
        16 => Request::PresenceUnwatch {
            users: strings(rng),
        },
        17 => Request::BlockAdd { user: s(rng) },
        18 => Request::BlockRemove { user: s(rng) },
        19 => Request::BlockList {},
        20 => Request::PostCreate {
            text: s(rng),
            attachments: any_attachments(rng),
            idempotency_key: any_key(rng),
        },
        21 => Request::PostDelete { post: s(rng) },
        22 => Request::CommentCreate {
            post: s(rng),
            text: s(rng),
            idempotency_key: any_key(rng),
        },
        23 => Request::PostLike { post: s(rng) },
        24 => Request::PostUnlike { post: s(rng) },
        25 => Request::Follow { user: s(rng) },
        26 => Request::Unfollow { user: s(rng) },
        27 => Request::TimelineGet {
            before: maybe(rng, s),
            limit: maybe(rng, any_u32),
        },
        28 => Request::PostWatch {
            posts: strings(rng),
        },
        29 => Request::PostUnwatch {
            posts: strings(rng),
        },
        30 => Request::ConversationMembers {
            conversation: s(rng),
            after: maybe(rng, s),
            limit: maybe(rng, any_u32),
        },
        31 => Request::ChannelSubscribe {
            conversation: s(rng),
        },
        32 => Request::ChannelUnsubscribe {
            conversation: s(rng),
        },
        33 => Request::ChannelSync {
            conversation: s(rng),
            after_offset: any_u64(rng),
            limit: maybe(rng, any_u32),
        },
        34 => Request::MessageEdit {
            conversation: s(rng),
            message: s(rng),
            text: s(rng),
        },
        35 => Request::MessageVersions {
            conversation: s(rng),
            message: s(rng),
        },
        36 => Request::MessageDelete {
            conversation: s(rng),
            message: s(rng),
        },
        37 => Request::ReactionAdd {
            conversation: s(rng),
            message: s(rng),
            emoji: s(rng),
        },
        38 => Request::ReactionRemove {
            conversation: s(rng),
            message: s(rng),
            emoji: s(rng),
        },
        39 => Request::MessagePin {
            conversation: s(rng),
            message: s(rng),
        },
        40 => Request::MessageUnpin {
            conversation: s(rng),
            message: s(rng),
        },
        41 => Request::ConversationPins {
            conversation: s(rng),
        },
        42 => Request::MessageReport {
            conversation: s(rng),
            message: s(rng),
            reason: s(rng),
        },
        43 => Request::ContactSet {
            user: s(rng),
            group: maybe(rng, s),
            note: maybe(rng, s),
        },
        44 => Request::ContactRemove { user: s(rng) },
        45 => Request::ContactList {},
        46 => Request::ConversationMute {
            conversation: s(rng),
            until_ts: rng.bool().then(|| i64::from(any_u32(rng)) * 1000 - 1),
        },
        47 => Request::ConversationRole {
            conversation: s(rng),
            user: s(rng),
            role: if rng.bool() {
                hubbub_protocol::AssignedRole::Admin
            } else {
                hubbub_protocol::AssignedRole::Member
            },
        },
        48 => Request::ConversationBan {
            conversation: s(rng),
            user: s(rng),
            duration_s: maybe(rng, any_u64),
        },
        49 => Request::ConversationUnban {
            conversation: s(rng),
            user: s(rng),
        },
        50 => Request::ConversationMuteMember {
            conversation: s(rng),
            user: s(rng),
            duration_s: any_u64(rng),
        },
        51 => Request::ConversationSettings {
            conversation: s(rng),
            title: maybe(rng, any_string),
            slow_mode_s: maybe(rng, any_u64),
        },
        _ => Request::CommentTyping {
            post: s(rng),
            words: any_u32(rng),
        },
    }
}

impl Target for ClientFrameTarget {
    fn structured(&mut self, rng: &mut Rng) -> Input {
        let frame = ClientFrame {
            id: maybe(rng, any_string),
            request: any_request(rng),
        };
        let text = frame.to_json();
        if rng.bool() {
            return Input::one(text);
        }
        let mut doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Input::one(mutate_json(rng, &mut doc))
    }

    fn feed(&mut self, parts: &[Vec<u8>]) -> bool {
        let text = lossy(parts.first().map_or(&[][..], Vec::as_slice));
        match ClientFrame::parse(&text) {
            Ok(frame) => {
                // An accepted frame serializes to a frame that parses back to itself.
                let again = ClientFrame::parse(&frame.to_json());
                assert_eq!(again.as_ref(), Ok(&frame), "frame does not round-trip");
                true
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                false
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// token: Auth::verify.
