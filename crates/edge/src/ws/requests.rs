//! What a session does with each client frame: the frame and ack limits, parsing errors,
//! the reads the edge serves (from the store), the ephemeral path (presence, typing,
//! engagement), `auth`, `sync`, and forwarding every write to the `main` queue.

use super::{Conn, Flow, MAIN_QUEUE, close, now_ms};
use crate::auth::AuthError;
use hubbub_protocol::internal::Envelope;
use hubbub_protocol::{ClientFrame, ErrorCode, ReplyData, Request, ServerFrame};
use hubbub_queue::{Outgoing, QueueError, SendOptions};
use hubbub_store::StoreError;
use tokio::time::Instant;

const REPLAY_PAGE: usize = 512;
/// Most posts one session watches (PROTOCOL.md).
pub(crate) const MAX_WATCHED_POSTS: usize = 50;
/// The longest post id the engagement path accepts (ours are 17 bytes): longer ones are
/// `bad_request` before anything remembers them.
pub(crate) const MAX_POST_ID_BYTES: usize = 64;

impl Conn {
    /// Count a frame in the current second; far over the limit closes the connection (1008).
    pub(super) fn count_frame(&mut self) -> Option<Flow> {
        let max = self
            .inner
            .runtime()
            .config
            .limits
            .frames_per_s
            .saturating_mul(5)
            .max(1);
        (self.window.count() > max).then(|| close(1008, "too many frames"))
    }

    /// An `ack`: its own limit and cut-off, then coalesced.
    async fn on_ack_frame(&mut self, id: Option<String>, seq: u64) -> Flow {
        let per_s = self.inner.runtime().config.limits.acks_per_s.max(1);
        if self.acks.window.count() > per_s.saturating_mul(5) {
            return close(1008, "too many acks");
        }
        if let Err(retry_after_ms) = self.acks.bucket.take() {
            metrics::counter!(hubbub_protocol::metrics::RATE_LIMITED).increment(1);
            // Without an id there is no one to tell: the ack is dropped (a later one covers
            // it).
            if id.is_none() {
                return Flow::Continue;
            }
            let e = ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: "over the ack rate limit; this ack was not recorded".into(),
                retry_after_ms: Some(retry_after_ms),
            };
            return self.written(&[e]).await;
        }
        self.metrics
            .count(hubbub_protocol::metrics::FRAMES_IN, "ack", 1);
        self.acks.record(seq, Instant::now());
        self.reply(id, Ok(ReplyData::Empty {})).await
    }

    pub(super) async fn on_line(&mut self, line: &str) -> Flow {
        let parsed = ClientFrame::parse(line);
        if let Ok(ClientFrame {
            id,
            request: Request::Ack { seq },
        }) = parsed
        {
            return self.on_ack_frame(id, seq).await;
        }
        if let Some(flow) = self.count_frame() {
            return flow;
        }
        if let Err(retry_after_ms) = self.bucket.take() {
            let silent = matches!(
                &parsed,
                Ok(ClientFrame {
                    request: Request::Typing { .. } | Request::CommentTyping { .. },
                    ..
                })
            );
            if silent {
                return Flow::Continue;
            }
            let id = match &parsed {
                Ok(f) => f.id.clone(),
                Err(e) => e.id.clone(),
            };
            metrics::counter!(hubbub_protocol::metrics::RATE_LIMITED).increment(1);
            let e = ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: "over the rate limit; this frame was not processed".into(),
                retry_after_ms: Some(retry_after_ms),
            };
            return self.written(&[e]).await;
        }
        let frame = match parsed {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!(hubbub_protocol::metrics::FRAMES_IN, "type" => "invalid")
                    .increment(1);
                return self
                    .written(&[ServerFrame::error(e.id, e.code, e.message)])
                    .await;
            }
        };
        self.metrics.count(
            hubbub_protocol::metrics::FRAMES_IN,
            frame.request.type_name(),
            1,
        );
        self.on_request(frame).await
    }

    /// `auth`: a new token of the same user moves the session's expiry.
    async fn on_auth(&mut self, id: Option<String>, token: &str) -> Flow {
        match self.inner.auth.authenticate(token).await {
            Ok(a) if a.user.id == self.user.id => {
                self.set_expiry(a.expires_ms);
                self.reply(
                    id,
                    Ok(ReplyData::Auth {
                        expires_ts: a.expires_ms,
                    }),
                )
                .await
            }
            Ok(_) => {
                let e = ServerFrame::error(
                    id,
                    ErrorCode::Forbidden,
                    "the token is another user's; a session keeps its user",
                );
                self.written(&[e]).await
            }
            Err(AuthError::Unauthorized(m)) => {
                self.written(&[ServerFrame::error(id, ErrorCode::Unauthorized, m)])
                    .await
            }
            Err(AuthError::Store(e)) => self.reply(id, Err(e)).await,
            Err(e) => {
                tracing::error!(error = %e, "auth frame failed");
                self.written(&[ServerFrame::error(
                    id,
                    ErrorCode::Internal,
                    "internal error",
                )])
                .await
            }
        }
    }

    /// `presence.watch`: at most `limits.max_presence_watches` users per session in all. A
    /// user who blocks the caller is reported offline and not watched.
    async fn watch_presence(&mut self, id: Option<String>, mut users: Vec<String>) -> Flow {
        let max = self.inner.runtime().config.limits.max_presence_watches;
        if users.len() > max {
            let e = ServerFrame::error(
                id,
                ErrorCode::TooLarge,
                format!("watch at most {max} users at once"),
            );
            return self.written(&[e]).await;
        }
        users.sort_unstable();
        users.dedup();
        let new = users.iter().filter(|u| !self.presence.contains(*u)).count();
        if self.presence.len() + new > max {
            let e = ServerFrame::error(
                id,
                ErrorCode::TooLarge,
                format!("a session watches the presence of at most {max} users"),
            );
            return self.written(&[e]).await;
        }
        let blockers = match self
            .inner
            .deps
            .store
            .blocked_by(&self.user.id, &users)
            .await
        {
            Ok(b) => b,
            Err(e) => return self.reply(id, Err(e)).await,
        };
        let (hidden, watch): (Vec<String>, Vec<String>) =
            users.into_iter().partition(|u| blockers.contains(u));
        let edge = self.inner.config.edge_id.clone();
        let r = self
            .inner
            .deps
            .signals
            .watch(&edge, &self.session, &watch)
            .await;
        // Hidden users count against the bound too: the client sees one rule.
        self.presence.extend(hidden.iter().cloned());
        let r = r.map(|mut presence| {
            self.presence.extend(watch);
            presence.extend(hidden.into_iter().map(|user| hubbub_protocol::Presence {
                user,
                status: hubbub_protocol::PresenceStatus::Offline,
                last_seen_ts: None,
            }));
            ReplyData::Presence { presence }
        });
        self.signal_reply(id, r).await
    }

    async fn reply(&mut self, id: Option<String>, result: Result<ReplyData, StoreError>) -> Flow {
        let frame = match (id, result) {
            (Some(id), Ok(data)) => ServerFrame::Ok { id, data },
            (None, Ok(_)) => return Flow::Continue,
            (id, Err(e)) => {
                let (code, message) = e.for_client();
                ServerFrame::error(id, code, message)
            }
        };
        self.written(&[frame]).await
    }

    async fn signal_reply(
        &mut self,
        id: Option<String>,
        result: Result<ReplyData, hubbub_registry::SignalError>,
    ) -> Flow {
        match result {
            Ok(data) => self.reply(id, Ok(data)).await,
            Err(e) => {
                self.written(&[ServerFrame::error(id, e.code, e.message)])
                    .await
            }
        }
    }

    async fn on_request(&mut self, frame: ClientFrame) -> Flow {
        let chat = self.inner.deps.chat.clone();
        let user = self.user.id.clone();
        match frame.request {
            Request::Ack { seq } => self.on_ack_frame(frame.id, seq).await,
            Request::Auth { access_token } => self.on_auth(frame.id, &access_token).await,
            Request::Sync { after_seq } => self.sync(frame.id, after_seq).await,
            // The chat reads: the chat service's query side, straight from the store.
            Request::ConversationList {} => {
                let r = chat
                    .conversations(&user)
                    .await
                    .map(|conversations| ReplyData::Conversations { conversations });
                self.signal_reply(frame.id, r).await
            }
            Request::ConversationGet { conversation } => {
                let r = chat
                    .conversation(&user, &conversation)
                    .await
                    .map(|conversation| ReplyData::Conversation { conversation });
                self.signal_reply(frame.id, r).await
            }
            Request::ConversationMembers {
                conversation,
                after,
                limit,
            } => {
                let r = chat
                    .members(&user, &conversation, after.as_deref(), limit)
                    .await
                    .map(|(members, more)| ReplyData::Members { members, more });
                self.signal_reply(frame.id, r).await
            }
            Request::ChannelSync {
                conversation,
                after_offset,
                limit,
            } => match chat
                .channel_sync(&user, &conversation, after_offset, limit)
                .await
            {
                // The replayed messages, then the reply that ends them.
                Ok((frames, last_offset, more)) => match self.written(&frames).await {
                    Flow::Continue => {
                        let data = ReplyData::ChannelSync { last_offset, more };
                        self.signal_reply(frame.id, Ok(data)).await
                    }
                    other => other,
                },
                Err(e) => self.signal_reply(frame.id, Err(e)).await,
            },
            Request::MessageHistory {
                conversation,
                before,
                limit,
                thread,
            } => {
                let r = chat
                    .history(
                        &user,
                        &conversation,
                        thread.as_deref(),
                        before.as_deref(),
                        limit,
                    )
                    .await
                    .map(|(messages, more)| ReplyData::History { messages, more });
                self.signal_reply(frame.id, r).await
            }
            Request::MessageVersions {
                conversation,
                message,
            } => {
                let r = chat
                    .versions(&user, &conversation, &message)
                    .await
                    .map(|versions| ReplyData::Versions { versions });
                self.signal_reply(frame.id, r).await
            }
            Request::ConversationPins { conversation } => {
                let r = chat
                    .pins(&user, &conversation)
                    .await
                    .map(|messages| ReplyData::Search { messages });
                self.signal_reply(frame.id, r).await
            }
            Request::BlockList {} => {
                let r = chat
                    .blocks(&user)
                    .await
                    .map(|users| ReplyData::Users { users });
                self.signal_reply(frame.id, r).await
            }
            Request::ContactList {} => {
                let r = chat
                    .contacts(&user)
                    .await
                    .map(|contacts| ReplyData::Contacts { contacts });
                self.signal_reply(frame.id, r).await
            }
            Request::MessageSearch {
                query,
                conversation,
            } => {
                let r = chat
                    .search(&user, &query, conversation.as_deref())
                    .await
                    .map(|messages| ReplyData::Search { messages });
                self.signal_reply(frame.id, r).await
            }
            // The ephemeral path: presence and typing never touch a queue or a disk.
            Request::Typing {
                conversation,
                state,
            } => {
                let r = self
                    .inner
                    .deps
                    .signals
                    .typing(&user, &conversation, state)
                    .await;
                self.signal_reply(frame.id, r.map(|()| ReplyData::Empty {}))
                    .await
            }
            Request::PresenceSet { status } => {
                self.inner.deps.signals.set_status(&user, status).await;
                self.reply(frame.id, Ok(ReplyData::Empty {})).await
            }
            Request::PresenceWatch { users } => self.watch_presence(frame.id, users).await,
            Request::PresenceUnwatch { users } => {
                for u in &users {
                    self.presence.remove(u);
                }
                let edge = self.inner.config.edge_id.clone();
                self.inner
                    .deps
                    .signals
                    .unwatch(&edge, &self.session, &users)
                    .await;
                self.reply(frame.id, Ok(ReplyData::Empty {})).await
            }
            Request::TimelineGet { before, limit } => {
                let limit = limit.unwrap_or(50).clamp(1, 100) as usize;
                let r = self
                    .inner
                    .deps
                    .timelines
                    .timeline(&user, before.as_deref(), limit)
                    .await
                    .map(|(items, computed_ts)| ReplyData::Timeline { items, computed_ts });
                self.signal_reply(frame.id, r).await
            }
            Request::PostWatch { posts } => self.watch_posts(frame.id, posts).await,
            Request::PostUnwatch { posts } => {
                let edge = self.inner.config.edge_id.clone();
                let gone = self.inner.unwatch_posts(&self.session, &posts);
                if !gone.is_empty() {
                    self.inner.deps.engagement.unsubscribe(&edge, &gone).await;
                }
                self.reply(frame.id, Ok(ReplyData::Empty {})).await
            }
            Request::CommentTyping { post, .. } if post.len() > MAX_POST_ID_BYTES => {
                let e = ServerFrame::error(
                    frame.id,
                    ErrorCode::BadRequest,
                    "no such post id: too long",
                );
                self.written(&[e]).await
            }
            Request::CommentTyping { post, words } => {
                let r = self
                    .inner
                    .deps
                    .engagement
                    .typing(&self.user, &post, words)
                    .await;
                self.signal_reply(frame.id, r.map(|()| ReplyData::Empty {}))
                    .await
            }
            request => self.forward(frame.id, request).await,
        }
    }

    /// `post.watch`: at most [`MAX_WATCHED_POSTS`] per session; an unknown post refuses the
    /// whole request. The edge's latest frame of each post follows the `ok`.
    async fn watch_posts(&mut self, id: Option<String>, mut posts: Vec<String>) -> Flow {
        if posts.iter().any(|p| p.len() > MAX_POST_ID_BYTES) {
            let e = ServerFrame::error(id, ErrorCode::BadRequest, "no such post id: too long");
            return self.written(&[e]).await;
        }
        posts.sort_unstable();
        posts.dedup();
        if !self
            .inner
            .can_watch(&self.session, &posts, MAX_WATCHED_POSTS)
        {
            let e = ServerFrame::error(
                id,
                ErrorCode::TooLarge,
                format!("a session watches at most {MAX_WATCHED_POSTS} posts"),
            );
            return self.written(&[e]).await;
        }
        let edge = self.inner.config.edge_id.clone();
        if let Err(e) = self.inner.deps.engagement.subscribe(&edge, &posts).await {
            return self
                .written(&[ServerFrame::error(id, e.code, e.message)])
                .await;
        }
        match self
            .inner
            .watch_posts(&self.session, &posts, MAX_WATCHED_POSTS)
        {
            Ok(latest) => {
                if let Flow::Gone = self.reply(id, Ok(ReplyData::Empty {})).await {
                    return Flow::Gone;
                }
                self.write_raw(&[], &latest).await
            }
            // Another watch raced this one to the limit (not possible from one connection).
            Err(crate::TooManyPosts) => {
                let e = ServerFrame::error(
                    id,
                    ErrorCode::TooLarge,
                    format!("a session watches at most {MAX_WATCHED_POSTS} posts"),
                );
                self.written(&[e]).await
            }
        }
    }

    /// A `contact.set`'s note sealed for the queue, so it is never on disk in clear text (see
    /// `hubbub_store::contacts`); a note that starts as a sealed one does is refused.
    fn seal_note(&self, request: Request) -> Result<Request, (ErrorCode, String)> {
        let Request::ContactSet {
            user,
            group,
            note: Some(note),
        } = request
        else {
            return Ok(request);
        };
        if note.starts_with('\u{1}') {
            return Err((
                ErrorCode::BadRequest,
                "a note may not start with U+0001".into(),
            ));
        }
        let note = match &self.inner.config.note_keys {
            Some(keys) => {
                hubbub_store::contacts::seal_for_transit(keys, &self.user.id, &user, &note)
                    .map_err(|e| (ErrorCode::Internal, e.to_string()))?
            }
            None => note,
        };
        Ok(Request::ContactSet {
            user,
            group,
            note: Some(note),
        })
    }

    /// Put a write on the `main` queue; the reply comes back through the dispatcher.
    async fn forward(&mut self, id: Option<String>, request: Request) -> Flow {
        if let Err(retry) = self.inner.admission.admit(std::time::Instant::now()) {
            metrics::counter!(hubbub_protocol::metrics::WRITES_SHED).increment(1);
            let e = ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: "the server is at capacity; nothing was accepted, retry later".into(),
                retry_after_ms: Some(retry.as_millis().min(u128::from(u64::MAX)) as u64),
            };
            return self.written(&[e]).await;
        }
        if !self
            .inner
            .store_ok
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let e = ServerFrame::error(
                id,
                ErrorCode::Unavailable,
                "storage is unavailable; nothing was accepted, retry later",
            );
            return self.written(&[e]).await;
        }
        let request = match self.seal_note(request) {
            Ok(r) => r,
            Err(e) => return self.written(&[ServerFrame::error(id, e.0, e.1)]).await,
        };
        // The user's own requests that may change their channels.
        let changes_channels = matches!(
            request,
            Request::ChannelSubscribe { .. }
                | Request::ChannelUnsubscribe { .. }
                | Request::ConversationLeave { .. }
                | Request::ConversationCreate {
                    kind: hubbub_protocol::ConversationKind::Channel,
                    ..
                }
        );
        let envelope_id = match hubbub_store::new_id("e") {
            Ok(e) => e,
            Err(e) => return self.reply(id, Err(e)).await,
        };
        let envelope = Envelope {
            envelope_id,
            user: self.user.id.clone(),
            session: self.session.clone(),
            edge: self.inner.config.edge_id.clone(),
            request_id: id.clone(),
            accepted_ms: now_ms(),
            request,
            server: false,
        };
        let body = match envelope.encode() {
            Ok(b) => b,
            Err(e) => {
                return self
                    .reply(id, Err(StoreError::Internal(e.to_string())))
                    .await;
            }
        };
        if let Some(e) = crate::too_large_for_queue(body.len(), &self.inner.config) {
            return self.written(&[ServerFrame::error(id, e.0, e.1)]).await;
        }
        // Awaited from now (a reply cannot come before the write is on the queue, and the
        // write counts against admission from when it is read).
        if let Some(id) = &id {
            self.pending.forwarded(id.clone(), Instant::now());
            if changes_channels {
                if self.channel_ops.len() >= super::MAX_CHANNEL_OPS {
                    self.channel_ops.remove(0);
                }
                self.channel_ops.push(id.clone());
            }
        }
        self.accepted.push((id, body));
        self.start_commit();
        Flow::Continue
    }

    /// Start putting the accepted writes on the `main` queue, in one commit and in order, if
    /// none is under way (one at a time per session keeps them in order); the session goes on
    /// serving its events meanwhile, and takes the outcome in [`Conn::committed`].
    pub(super) fn start_commit(&mut self) {
        if self.committing.is_some() || self.accepted.is_empty() {
            return;
        }
        let accepted = std::mem::take(&mut self.accepted);
        let (ids, messages): (Vec<_>, Vec<_>) = accepted
            .into_iter()
            .map(|(id, body)| {
                // Relayed: the client hears nothing of it before the service's durable
                // write (its `ok`), so one lost in a power failure is re-sent by the client,
                // and the embedded backend answers without an fsync of its own.
                let out = Outgoing {
                    body,
                    opts: SendOptions::default().relayed(),
                };
                (id, out)
            })
            .unzip();
        let queue = self.inner.deps.queue.clone();
        self.committing = Some(Box::pin(async move {
            let sent = queue.send_batch(MAIN_QUEUE, messages).await;
            (ids, sent.err())
        }));
    }

    /// A commit of accepted writes ended. If the queue refused them, each is answered
    /// `unavailable` (nothing was accepted). Then the next accepted ones start.
    pub(super) async fn committed(
        &mut self,
        ids: Vec<Option<String>>,
        refused: Option<QueueError>,
    ) -> Flow {
        self.committing = None;
        let flow = match refused {
            None => Flow::Continue,
            Some(e) => {
                tracing::warn!(error = %e, "could not accept requests");
                let errors: Vec<ServerFrame> = ids
                    .into_iter()
                    .map(|id| {
                        if let Some(id) = &id {
                            self.pending.withdraw(id);
                        }
                        ServerFrame::error(
                            id,
                            ErrorCode::Unavailable,
                            "could not accept the request; nothing was accepted, retry later",
                        )
                    })
                    .collect();
                self.written(&errors).await
            }
        };
        self.start_commit();
        flow
    }

    /// At the session's end: the writes it read are committed all the same (their replies
    /// have nowhere to go).
    pub(super) async fn commit_the_rest(&mut self) {
        for _ in 0..2 {
            if let Some(commit) = self.committing.take() {
                let (_, refused) = commit.await;
                if let Some(e) = refused {
                    tracing::warn!(error = %e, "could not accept requests of a closed session");
                }
            }
            self.start_commit();
        }
    }

    pub(super) async fn expire_pending(&mut self) -> Flow {
        let overdue = self.pending.overdue(Instant::now());
        if overdue.is_empty() {
            return Flow::Continue;
        }
        let frames: Vec<ServerFrame> = overdue
            .into_iter()
            .map(|id| {
                ServerFrame::error(Some(id), ErrorCode::Internal, "no reply in time; the outcome is unknown, retrying with the same client_msg_id is safe")
            })
            .collect();
        self.written(&frames).await
    }

    async fn sync(&mut self, id: Option<String>, after_seq: u64) -> Flow {
        let chat = self.inner.deps.chat.clone();
        let mut cursor = after_seq;
        let mut truncated = None;
        // Events this session already wrote (pushed live after `hello`, before this sync)
        // are not written again: each durable event reaches a session once.
        let written = self.seq.written();
        loop {
            let replay = match chat.events_after(&self.user.id, cursor, REPLAY_PAGE).await {
                Ok(r) => r,
                Err(e) => return self.signal_reply(id, Err(e)).await,
            };
            if truncated.is_none() {
                if after_seq > replay.last_seq {
                    let e = ServerFrame::error(
                        id,
                        ErrorCode::BadRequest,
                        format!(
                            "after_seq {after_seq} is beyond the last seq {}",
                            replay.last_seq
                        ),
                    );
                    return self.written(&[e]).await;
                }
                truncated = Some(replay.truncated);
            }
            let page = replay.frames.len();
            if let Some(last) = replay.frames.last().and_then(ServerFrame::seq) {
                cursor = last;
            }
            let fresh: Vec<ServerFrame> = replay
                .frames
                .into_iter()
                .filter(|f| f.seq().is_none_or(|s| !written.contains(&s)))
                .collect();
            if !self.write_frames(&fresh).await {
                return Flow::Gone;
            }
            if page < REPLAY_PAGE {
                // Events gone to retention cannot be replayed; the client reloads state.
                cursor = cursor.max(replay.last_seq);
                break;
            }
        }
        self.seq.synced(after_seq, cursor);
        let data = ReplyData::Sync {
            last_seq: cursor,
            truncated: truncated.unwrap_or(false),
        };
        match self.reply(id, Ok(data)).await {
            Flow::Continue => {
                // Events held past a gap the replay closed follow the reply.
                let released = self.held.release(&mut self.seq, Instant::now());
                self.write_raw(&released, &[]).await
            }
            other => other,
        }
    }
}
