//! The chat service: `conversation.create/add/remove/leave`, `message.send`, `message.read`,
//! `message.edit/delete`, `reaction.add/remove`, `message.pin/unpin`, blocks, contacts
//! (`contact.set/remove`); and, in [`queries`], the chat reads.
//!
//! Reads (`conversation.list/get`, `message.history`, `message.search`, `sync`) are answered
//! by the query side ([`queries::ChatQueries`]), which the edge calls through the registry's
//! `ChatReads` port, straight from the store; only writes come through the `chat` queue. Each write is one store
//! transaction that also appends the resulting events to every recipient's inbox; then the
//! events are pushed live, the reply goes to the asking session, and the envelope is acked.
//! A crash anywhere before the ack redelivers the envelope; every handler is idempotent
//! (`client_msg_id`; the conversation id derived from the client's `idempotency_key`, else
//! from the envelope id; no-op membership changes), so a redelivery changes nothing and only
//! repeats the reply.

pub mod queries;

pub use queries::ChatQueries;

use crate::Failure;
use crate::LiveLimits;
use hubbub_protocol::internal::Envelope;
use hubbub_protocol::{ErrorCode, IdempotencyKey, ReplyData, Request};
use hubbub_queue::Queue;
use hubbub_registry::Delivery;
use hubbub_store::{NewConversation, NewMessage, Store, Written};
use sha2::Digest;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The chat service's queue.
pub const CHAT_QUEUE: &str = "chat";

/// Request types the chat service handles (the router's table uses it).
pub const CHAT_TYPES: &[&str] = &[
    "conversation.create",
    "conversation.add",
    "conversation.remove",
    "conversation.leave",
    "channel.subscribe",
    "channel.unsubscribe",
    "message.send",
    "message.read",
    "message.edit",
    "message.delete",
    "message.report",
    "reaction.add",
    "reaction.remove",
    "message.pin",
    "message.unpin",
    "conversation.mute",
    "conversation.role",
    "conversation.ban",
    "conversation.unban",
    "conversation.mute_member",
    "conversation.settings",
    "block.add",
    "block.remove",
    "contact.set",
    "contact.remove",
];

const MAX_TITLE_CHARS: usize = 256;
/// The longest reason of a `message.report` (PROTOCOL.md 1.1).
const MAX_REPORT_CHARS: usize = 500;
const MAX_CLIENT_MSG_ID: usize = 128;

/// The chat service.
#[derive(Clone)]
pub struct ChatService {
    store: Arc<dyn Store>,
    media: Arc<dyn hubbub_store::MediaStore>,
    queue: Arc<dyn Queue>,
    delivery: Delivery,
    limits: LiveLimits,
    /// Set when a push provider is configured: events then also feed the notify queue.
    notify: Option<crate::notify::NotifyConfig>,
    /// The webhooks' producer side: messages and conversations become webhook events.
    hooks: Option<Arc<hubbub_store::webhooks::Webhooks>>,
}

impl ChatService {
    /// A chat service over these backends.
    pub fn new(
        store: Arc<dyn Store>,
        media: Arc<dyn hubbub_store::MediaStore>,
        queue: Arc<dyn Queue>,
        delivery: Delivery,
        limits: LiveLimits,
    ) -> Self {
        ChatService {
            store,
            media,
            queue,
            delivery,
            limits,
            notify: None,
            hooks: None,
        }
    }

    /// Also turn messages and conversation changes into webhook events.
    pub fn with_webhooks(mut self, hooks: Arc<hubbub_store::webhooks::Webhooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// The webhook events of a handled write, put on the `webhooks` queue before the
    /// envelope is acked. A redelivered envelope produces them again with the same ids (a
    /// repeated send or create returns the first message or conversation), so an event is
    /// lost by no crash; the queue's dedupe window drops the repeat.
    async fn webhook_events(
        &self,
        hooks: &hubbub_store::webhooks::Webhooks,
        e: &Envelope,
        reply: &ReplyData,
    ) -> Result<(), Failure> {
        let (kind, user, id, data) = match (&e.request, reply) {
            (Request::MessageSend { .. }, ReplyData::Message { message }) => (
                "message.created",
                message.sender.clone(),
                format!("message.created/{}", message.id),
                serde_json::json!({ "message": message }),
            ),
            (Request::ConversationCreate { .. }, ReplyData::Conversation { conversation }) => (
                "conversation.created",
                e.user.clone(),
                format!("conversation.created/{}", conversation.id),
                serde_json::json!({ "conversation": conversation }),
            ),
            (
                Request::ConversationAdd { conversation, .. }
                | Request::ConversationRemove { conversation, .. }
                | Request::ConversationLeave { conversation }
                | Request::ChannelSubscribe { conversation }
                | Request::ChannelUnsubscribe { conversation }
                | Request::ConversationRole { conversation, .. }
                | Request::ConversationBan { conversation, .. }
                | Request::ConversationSettings { conversation, .. },
                _,
            ) => {
                if !hooks.wants("conversation.updated").await {
                    return Ok(());
                }
                let Some(c) = self.store.conversation_by_id(conversation).await? else {
                    return Ok(());
                };
                (
                    "conversation.updated",
                    e.user.clone(),
                    format!("conversation.updated/{}", e.envelope_id),
                    serde_json::json!({ "conversation": c }),
                )
            }
            _ => return Ok(()),
        };
        if !hooks.wants(kind).await {
            return Ok(());
        }
        hooks
            .emit(kind, &user, &id, data)
            .await
            .map_err(|err| Failure::new(ErrorCode::Internal, err.to_string()))
    }

    /// Also turn unacknowledged events into push notifications (see [`crate::notify`]).
    pub fn with_notify(mut self, config: crate::notify::NotifyConfig) -> Self {
        self.notify = Some(config);
        self
    }

    /// Take work from the `chat` queue until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let worker = crate::Worker {
            queue: self.queue.clone(),
            delivery: self.delivery.clone(),
            notify: self.notify.clone(),
            name: CHAT_QUEUE,
            metric: hubbub_protocol::metrics::CHAT_HANDLED,
        };
        worker.run(&self, cancel).await
    }
}

impl ChatService {
    /// A `message.send`'s checks before the store, and the message to store.
    async fn new_message(&self, e: &Envelope) -> Option<Result<NewMessage, Failure>> {
        let Request::MessageSend {
            conversation,
            client_msg_id,
            text,
            attachments,
            reply_to,
            thread,
            mentions,
        } = &e.request
        else {
            return None;
        };
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID {
            return Some(Err(Failure::new(
                ErrorCode::BadRequest,
                format!("client_msg_id must be 1 to {MAX_CLIENT_MSG_ID} bytes"),
            )));
        }
        let limits = self.limits.now();
        let attachments = match crate::check_content(
            &*self.media,
            text,
            attachments,
            limits.max_text_chars,
            "message",
        )
        .await
        {
            Ok(a) => a,
            Err(f) => return Some(Err(f)),
        };
        Some(Ok(NewMessage {
            sender: e.user.clone(),
            conversation: conversation.clone(),
            client_msg_id: client_msg_id.clone(),
            text: text.clone(),
            attachments,
            reply_to: reply_to.clone(),
            thread: thread.clone(),
            mentions: mentions.clone().unwrap_or_default(),
            // Only the server API's envelopes carry `server`; a client whose id happens to
            // be "system" sends as itself, a member like others.
            system: e.server && e.user == hubbub_protocol::serverapi::SYSTEM_SENDER,
        }))
    }

    /// The `message.reported` webhook event of a new report. A report is stored once per
    /// reporter and message, so a redelivered envelope finds it not fresh and tells nothing
    /// again; an event the queue refused is logged (the report itself stands).
    async fn report_hook(&self, report: &hubbub_protocol::serverapi::Report) {
        let Some(hooks) = &self.hooks else { return };
        if !hooks.wants("message.reported").await {
            return;
        }
        let data = match serde_json::to_value(report) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "report not encoded for its webhook");
                return;
            }
        };
        let id = format!("message.reported/{}", report.id);
        if let Err(e) = hooks
            .emit("message.reported", &report.reporter, &id, data)
            .await
        {
            tracing::warn!(error = %e, "message.reported webhook event not queued");
        }
    }

    /// The webhook events of a handled write (see [`ChatService::webhook_events`]).
    async fn hook(&self, e: &Envelope, reply: &ReplyData) {
        if let Some(hooks) = &self.hooks
            && let Err(f) = self.webhook_events(hooks, e, reply).await
        {
            // The write and its events stand; only the webhook event is missing. The queue
            // it goes on is the one this envelope came from: when it refuses, the ack below
            // fails too, and the redelivered envelope produces the event again.
            tracing::warn!(message = %f.message, "webhook events not queued");
        }
    }

    /// Store the checked sends of a run together; their outcomes go in their slots.
    async fn send_together(
        &self,
        sends: &mut Vec<(usize, NewMessage)>,
        out: &mut [Option<Result<Written<ReplyData>, Failure>>],
    ) {
        if sends.is_empty() {
            return;
        }
        let (slots, news): (Vec<usize>, Vec<NewMessage>) =
            std::mem::take(sends).into_iter().unzip();
        match self.store.send_messages(news).await {
            Ok(sent) => {
                for (slot, r) in slots.into_iter().zip(sent) {
                    out[slot] = Some(
                        r.map(|w| w.map(|message| ReplyData::Message { message }))
                            .map_err(Failure::from),
                    );
                }
            }
            Err(e) => {
                let f = Failure::from(e);
                for slot in slots {
                    out[slot] = Some(Err(f.clone()));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::Handler for ChatService {
    /// A run of one user's requests: consecutive sends are stored in one commit (the store
    /// keeps each send's own outcome); anything else is handled alone, in its place.
    async fn handle_run(&self, envelopes: &[Envelope]) -> Vec<Result<Written<ReplyData>, Failure>> {
        let mut out: Vec<Option<Result<Written<ReplyData>, Failure>>> =
            (0..envelopes.len()).map(|_| None).collect();
        let mut sends = Vec::new();
        for (i, e) in envelopes.iter().enumerate() {
            match self.new_message(e).await {
                Some(Ok(new)) => sends.push((i, new)),
                // A send refused before the store changes nothing: it keeps its place.
                Some(Err(f)) => out[i] = Some(Err(f)),
                None => {
                    self.send_together(&mut sends, &mut out).await;
                    out[i] = Some(self.handle(e).await);
                }
            }
        }
        self.send_together(&mut sends, &mut out).await;
        // The batched sends' webhook events (the others had theirs in `handle`).
        for (e, o) in envelopes.iter().zip(&out) {
            if let (Request::MessageSend { .. }, Some(Ok(w))) = (&e.request, o) {
                self.hook(e, &w.value).await;
            }
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(Failure::new(
                        ErrorCode::Internal,
                        "a request was not handled",
                    ))
                })
            })
            .collect()
    }

    async fn handle(&self, e: &Envelope) -> Result<Written<ReplyData>, Failure> {
        let written = self.write(e).await?;
        self.hook(e, &written.value).await;
        Ok(written)
    }
}

impl ChatService {
    /// The write itself.
    async fn write(&self, e: &Envelope) -> Result<Written<ReplyData>, Failure> {
        let limits = self.limits.now();
        let user = e.user.as_str();
        let empty = |w: Written<()>| w.map(|()| ReplyData::Empty {});
        match &e.request {
            Request::ConversationCreate {
                kind,
                members,
                title,
                ephemeral,
                idempotency_key,
                public,
            } => {
                if title
                    .as_ref()
                    .is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS)
                {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!("title is over {MAX_TITLE_CHARS} characters"),
                    ));
                }
                if members.len() > limits.max_group_members {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!("a group has at most {} members", limits.max_group_members),
                    ));
                }
                let w = self
                    .store
                    .create_conversation(NewConversation {
                        id: created_id("c", e, idempotency_key.as_ref()),
                        creator: user.to_owned(),
                        kind: *kind,
                        members: members.clone(),
                        title: title.clone(),
                        ephemeral: ephemeral.unwrap_or(false),
                        public: public.unwrap_or(false),
                        max_members: limits.max_group_members,
                    })
                    .await?;
                Ok(w.map(|conversation| ReplyData::Conversation { conversation }))
            }
            Request::ConversationAdd {
                conversation,
                user: one,
                users,
            } => {
                let users = match (one, users) {
                    (Some(one), None) => vec![one.clone()],
                    (None, Some(users)) => users.clone(),
                    _ => {
                        return Err(Failure::new(
                            ErrorCode::BadRequest,
                            "`conversation.add` takes one of `user` and `users`",
                        ));
                    }
                };
                Ok(empty(
                    self.store
                        .add_members(user, conversation, &users, limits.max_group_members)
                        .await?,
                ))
            }
            Request::ConversationRemove {
                conversation,
                user: other,
            } => Ok(empty(
                self.store.remove_member(user, conversation, other).await?,
            )),
            Request::ConversationLeave { conversation } => {
                Ok(empty(self.store.leave(user, conversation).await?))
            }
            Request::ChannelSubscribe { conversation } => {
                Ok(empty(self.store.subscribe(user, conversation).await?))
            }
            Request::ChannelUnsubscribe { conversation } => {
                Ok(empty(self.store.unsubscribe(user, conversation).await?))
            }
            Request::MessageSend { .. } => {
                let Some(checked) = self.new_message(e).await else {
                    return Err(Failure::new(ErrorCode::Internal, "not a message.send"));
                };
                let new = checked?;
                let w = self.store.send_message(new).await?;
                Ok(w.map(|message| ReplyData::Message { message }))
            }
            Request::MessageEdit {
                conversation,
                message,
                text,
            } => {
                if text.chars().count() > limits.max_text_chars {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!("text is over {} characters", limits.max_text_chars),
                    ));
                }
                let w = self
                    .store
                    .edit_message(user, conversation, message, text)
                    .await?;
                Ok(w.map(|message| ReplyData::Message { message }))
            }
            Request::ConversationMute {
                conversation,
                until_ts,
            } => {
                self.store
                    .mute_conversation(user, conversation, *until_ts)
                    .await?;
                Ok(Written::nothing(ReplyData::Empty {}))
            }
            Request::ConversationRole {
                conversation,
                user: member,
                role,
            } => Ok(empty(
                self.store
                    .set_role(user, conversation, member, (*role).into())
                    .await?,
            )),
            Request::ConversationBan {
                conversation,
                user: banned,
                duration_s,
            } => Ok(empty(
                self.store
                    .ban(user, conversation, banned, *duration_s)
                    .await?,
            )),
            Request::ConversationUnban {
                conversation,
                user: banned,
            } => Ok(empty(self.store.unban(user, conversation, banned).await?)),
            Request::ConversationMuteMember {
                conversation,
                user: member,
                duration_s,
            } => Ok(empty(
                self.store
                    .mute_member(user, conversation, member, *duration_s)
                    .await?,
            )),
            Request::ConversationSettings {
                conversation,
                title,
                slow_mode_s,
            } => {
                if title
                    .as_ref()
                    .is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS)
                {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!("title is over {MAX_TITLE_CHARS} characters"),
                    ));
                }
                let w = self
                    .store
                    .update_settings(user, conversation, title.as_deref(), *slow_mode_s)
                    .await?;
                Ok(w.map(|conversation| ReplyData::Conversation { conversation }))
            }
            Request::MessageReport {
                conversation,
                message,
                reason,
            } => {
                let chars = reason.chars().count();
                if reason.trim().is_empty() {
                    return Err(Failure::new(
                        ErrorCode::BadRequest,
                        "a report needs a reason",
                    ));
                }
                if chars > MAX_REPORT_CHARS {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!("reason is over {MAX_REPORT_CHARS} characters"),
                    ));
                }
                let (report, fresh) = self
                    .store
                    .report_message(user, conversation, message, reason)
                    .await?;
                if fresh {
                    self.report_hook(&report).await;
                }
                Ok(Written::nothing(ReplyData::Empty {}))
            }
            Request::MessageDelete {
                conversation,
                message,
            } => Ok(empty(
                self.store
                    .delete_message(user, conversation, message)
                    .await?,
            )),
            Request::ReactionAdd {
                conversation,
                message,
                emoji,
            }
            | Request::ReactionRemove {
                conversation,
                message,
                emoji,
            } => {
                let add = matches!(e.request, Request::ReactionAdd { .. });
                let w = self
                    .store
                    .react(user, conversation, message, emoji, add)
                    .await?;
                Ok(w.map(|reactions| ReplyData::Reactions { reactions }))
            }
            Request::MessagePin {
                conversation,
                message,
            }
            | Request::MessageUnpin {
                conversation,
                message,
            } => {
                let pin = matches!(e.request, Request::MessagePin { .. });
                Ok(empty(
                    self.store.pin(user, conversation, message, pin).await?,
                ))
            }
            Request::MessageRead {
                conversation,
                message,
            } => Ok(empty(
                self.store.mark_read(user, conversation, message).await?,
            )),
            Request::BlockAdd { user: other } => {
                self.store.block(user, other).await?;
                Ok(Written::nothing(ReplyData::Empty {}))
            }
            Request::BlockRemove { user: other } => {
                self.store.unblock(user, other).await?;
                Ok(Written::nothing(ReplyData::Empty {}))
            }
            Request::ContactSet {
                user: other,
                group,
                note,
            } => {
                let w = self
                    .store
                    .set_contact(user, other, group.as_deref(), note.as_deref())
                    .await?;
                Ok(w.map(|contact| ReplyData::Contact { contact }))
            }
            Request::ContactRemove { user: other } => {
                Ok(empty(self.store.remove_contact(user, other).await?))
            }
            other => Err(Failure::new(
                ErrorCode::BadRequest,
                format!("`{}` is not a chat request", other.type_name()),
            )),
        }
    }
}

/// The id of the object a create makes (`prefix`: `c` conversation, `p` post, `k` comment).
///
/// With the client's idempotency key it derives from (user, request type, key): a client
/// retrying after `internal` or a lost connection sends a new envelope, and its repeat finds
/// the first object (the stores return an existing id as it is, with no events). Without a
/// key it derives from the envelope id, so only a redelivery inside the server finds the
/// first object.
pub(crate) fn created_id(prefix: &str, e: &Envelope, key: Option<&IdempotencyKey>) -> String {
    match key {
        // NUL separates the parts: no user id or request type contains one, so two
        // different (user, type, key) never hash the same input.
        Some(key) => derived_id(
            prefix,
            &format!("key\0{}\0{}\0{}", e.user, e.request.type_name(), key),
        ),
        None => derived_id(prefix, &e.envelope_id),
    }
}

/// An id derived from a string (an envelope id, or a client's key): the same input makes
/// the same id again.
fn derived_id(prefix: &str, input: &str) -> String {
    let digest = sha2::Sha256::digest(input.as_bytes());
    format!("{prefix}{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_protocol::ConversationKind;

    fn envelope(id: &str, user: &str, request: Request) -> Envelope {
        Envelope {
            envelope_id: id.into(),
            user: user.into(),
            session: "s".into(),
            edge: "e".into(),
            request_id: None,
            accepted_ms: 0,
            request,
            server: false,
        }
    }

    fn post() -> Request {
        Request::PostCreate {
            text: "t".into(),
            attachments: None,
            idempotency_key: None,
        }
    }

    fn key(k: &str) -> IdempotencyKey {
        IdempotencyKey::try_from(k.to_owned()).expect("key")
    }

    #[test]
    fn created_ids_follow_the_key_else_the_envelope() {
        let (e1, e2) = (envelope("1", "u1", post()), envelope("2", "u1", post()));
        assert_ne!(created_id("p", &e1, None), created_id("p", &e2, None));
        assert_eq!(
            created_id("p", &e1, None),
            created_id("p", &e1, None),
            "a redelivery"
        );
        let k = key("k");
        assert_eq!(
            created_id("p", &e1, Some(&k)),
            created_id("p", &e2, Some(&k)),
            "a retry (a new envelope) with the same key"
        );
        let other_user = envelope("3", "u2", post());
        assert_ne!(
            created_id("p", &e1, Some(&k)),
            created_id("p", &other_user, Some(&k)),
            "the user is part of it"
        );
        let group = envelope(
            "4",
            "u1",
            Request::ConversationCreate {
                kind: ConversationKind::Group,
                members: vec![],
                title: None,
                ephemeral: None,
                idempotency_key: None,
                public: None,
            },
        );
        assert_ne!(
            created_id("x", &e1, Some(&k)),
            created_id("x", &group, Some(&k)),
            "the request type is part of it"
        );
        assert_ne!(
            created_id("p", &e1, Some(&k)),
            created_id("p", &e1, Some(&key("k2")))
        );
    }
}
