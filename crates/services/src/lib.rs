//! hubbub's services. Each takes envelopes from its own queue, only as fast as it can handle
//! them (pull), does its work through the store, pushes the resulting events to the edges
//! holding the recipients' sessions, replies to the session that asked, and only then acks.
//!
//! - [`chat`]: conversations, messages, read receipts, blocks (`chat` queue).
//! - [`signals`]: presence and typing, in memory (the ephemeral path, no queue).
//! - [`feed`]: posts, comments, likes, follows (`feed` queue).
//! - [`timeline`]: precomputed timelines: the timeline computer and personalization
//!   (`precompute`, `personalize` queues), the cache, and the fetch with fixups.
//! - [`engagement`]: who is writing a comment, per post, in memory (the ephemeral path).
//! - [`notify`]: push notifications for events no device acknowledged in time (`notify`
//!   queue, webhook provider).
//! - [`webhooks`]: the server API's webhooks: signed, ordered per user, retried and
//!   dead-lettered deliveries, and `user.online` / `user.offline` (`webhooks` queue).
//!
//! Services never call one another; they share nothing but the store and the queues.
//! Their limits are the runtime config's, followed live ([`LiveLimits`]).
//!
//! With the feature `conformance`, [`conformance`] holds the conformance suites of the
//! `Signals` and `Engagement` traits, for the in-process and the distributed implementations.

pub mod chat;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engagement;
pub mod feed;
pub mod notify;
pub mod signals;
pub mod timeline;
pub mod webhooks;

use futures_util::future::join_all;
use hubbub_protocol::internal::Envelope;
use hubbub_protocol::{ErrorCode, ReplyData, ServerFrame};
use hubbub_queue::{Queue, ReceiveOptions};
use hubbub_registry::{Delivery, Origin, Push};
use hubbub_store::{StoreError, Written};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A handler's failure, answered to the client with its protocol code.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The protocol code.
    pub code: ErrorCode,
    /// The message for the client.
    pub message: String,
    /// For `rate_limited`: when the client may try again.
    pub retry_after_ms: Option<u64>,
}

impl Failure {
    /// A failure with this code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

impl From<Failure> for hubbub_registry::SignalError {
    fn from(f: Failure) -> Self {
        hubbub_registry::SignalError::new(f.code, f.message)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        // Internal details stay in the log, not on the wire (`StoreError::for_client`).
        let (code, message) = e.for_client();
        Failure {
            code,
            message,
            retry_after_ms: e.retry_after_ms(),
        }
    }
}

/// Most attachments on a message or a post.
pub const MAX_ATTACHMENTS: usize = 10;

/// Check a message's or a post's text and attachments: text within `max_text_chars`, at
/// most [`MAX_ATTACHMENTS`] attachments, text or an attachment, and every attachment an
/// uploaded medium. Returns the attachments. `what` names the object in errors.
pub(crate) async fn check_content(
    media: &dyn hubbub_store::MediaStore,
    text: &str,
    attachments: &Option<Vec<hubbub_protocol::Attachment>>,
    max_text_chars: usize,
    what: &str,
) -> Result<Vec<hubbub_protocol::Attachment>, Failure> {
    if text.chars().count() > max_text_chars {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!("text is over {max_text_chars} characters"),
        ));
    }
    let attachments = attachments.clone().unwrap_or_default();
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(Failure::new(
            ErrorCode::TooLarge,
            format!("at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    if text.trim().is_empty() && attachments.is_empty() {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!("a {what} needs text or an attachment"),
        ));
    }
    let ids: Vec<String> = attachments.iter().map(|a| a.media.clone()).collect();
    if let Some(id) = media.missing(&ids).await?.first() {
        return Err(Failure::new(ErrorCode::NotFound, format!("no media {id}")));
    }
    Ok(attachments)
}

/// The reply frame for an envelope's outcome, if the request had an id.
pub fn reply_frame(
    envelope: &Envelope,
    outcome: Result<ReplyData, Failure>,
) -> Option<ServerFrame> {
    let id = envelope.request_id.clone()?;
    Some(match outcome {
        Ok(data) => ServerFrame::Ok { id, data },
        Err(f) => ServerFrame::Error {
            id: Some(id),
            code: f.code,
            message: f.message,
            retry_after_ms: f.retry_after_ms,
        },
    })
}

/// A service's handling of one envelope: one store transaction, its reply and its events.
#[async_trait::async_trait]
pub(crate) trait Handler: Send + Sync {
    /// Handle the request. `Unavailable` (nothing written) is answered to the client as such.
    async fn handle(&self, envelope: &Envelope) -> Result<Written<ReplyData>, Failure>;

    /// Handle a run: one user's requests, in order (see [`Worker::run`]); one outcome each,
    /// in order. By default one after the other; a service may commit several together, as
    /// long as each has the outcome it would have had alone.
    async fn handle_run(&self, envelopes: &[Envelope]) -> Vec<Result<Written<ReplyData>, Failure>> {
        let mut out = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            out.push(self.handle(e).await);
        }
        out
    }
}

/// At most this many consecutive requests of one user in a batch (a run, see
/// [`hubbub_queue::Queue`]): one sender is not held to one request per queue round trip.
const MAX_RUN: usize = 32;

/// Most bytes of requests of a run handled (committed) together; see [`Worker::handle_run`].
const RUN_BYTES: usize = 32 * 1024;

/// Split a batch into runs of one key, in the batch's order; an unkeyed delivery is a run of
/// its own.
/// Where the events of `envelope`'s write come from (its edge compares the time with its own
/// clock).
fn origin(envelope: &Envelope) -> Origin<'_> {
    Origin {
        edge: &envelope.edge,
        accepted_ms: envelope.accepted_ms,
    }
}

fn runs_of(deliveries: &[hubbub_queue::Delivery]) -> Vec<Vec<&hubbub_queue::Delivery>> {
    let mut runs: Vec<Vec<&hubbub_queue::Delivery>> = Vec::new();
    let mut by_key: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for d in deliveries {
        match d.key.as_deref() {
            Some(k) => {
                let i = *by_key.entry(k).or_insert_with(|| {
                    runs.push(Vec::new());
                    runs.len() - 1
                });
                runs[i].push(d);
            }
            None => runs.push(vec![d]),
        }
    }
    runs
}

/// The loop every envelope-driven service runs: pull a batch when there is capacity, handle
/// it, push the events, reply, and only then ack.
pub(crate) struct Worker {
    pub queue: Arc<dyn Queue>,
    pub delivery: Delivery,
    /// Set when a push provider is configured: events then also feed the notify queue.
    pub notify: Option<notify::NotifyConfig>,
    /// The service's queue.
    pub name: &'static str,
    /// The counter of handled envelopes.
    pub metric: &'static str,
}

impl Worker {
    pub(crate) async fn run<H: Handler>(&self, handler: &H, cancel: CancellationToken) {
        let opts = ReceiveOptions {
            max: 64,
            wait: Duration::from_millis(500),
            visibility: Duration::from_secs(30),
            max_run: MAX_RUN,
        };
        // The handled batch's receipts, acked together with the next receive (one round trip
        // of the loop instead of two; on the embedded backend often one commit).
        let mut handled: Vec<hubbub_queue::Receipt> = Vec::new();
        while !cancel.is_cancelled() {
            let (_, got) = tokio::join!(self.ack(&mut handled), async {
                tokio::select! {
                    got = self.queue.receive(self.name, opts) => Some(got),
                    _ = cancel.cancelled() => None,
                }
            });
            let Some(got) = got else { break };
            let deliveries = match got {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, queue = self.name, "receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // The batch holds runs: one key's (a user's) consecutive requests, in order
            // (`max_run`). Runs are handled concurrently, each run in order (the handler may
            // commit a run's writes together), so no one's requests are reordered.
            // A batch that takes longer than its visibility (a channel made with 100,000
            // members takes tens of seconds) keeps its leases: another loop would otherwise
            // receive the same envelopes and handle them a second time, concurrently.
            let done = keep_leased(
                self.queue.as_ref(),
                self.name,
                &deliveries,
                opts.visibility,
                join_all(
                    runs_of(&deliveries)
                        .into_iter()
                        .map(|run| self.handle_run(handler, run)),
                ),
            )
            .await;
            handled = done.into_iter().flatten().collect();
        }
        self.ack(&mut handled).await;
    }

    /// Ack (and forget) handled envelopes, if any.
    async fn ack(&self, receipts: &mut Vec<hubbub_queue::Receipt>) {
        if receipts.is_empty() {
            return;
        }
        if let Err(e) = self.queue.ack_batch(self.name, receipts).await {
            tracing::warn!(error = %e, queue = self.name, "ack failed; the envelopes will be handled again");
        }
        receipts.clear();
    }

    /// Handle a run of deliveries; returns the receipts of those done with (to ack): all of
    /// them, undecodable ones included (dropped).
    async fn handle_run<H: Handler>(
        &self,
        handler: &H,
        run: Vec<&hubbub_queue::Delivery>,
    ) -> Vec<hubbub_queue::Receipt> {
        let mut envelopes = Vec::with_capacity(run.len());
        let mut sizes = Vec::with_capacity(run.len());
        for d in &run {
            match Envelope::decode(&d.body) {
                Ok(e) => {
                    envelopes.push(e);
                    sizes.push(d.body.len());
                }
                Err(e) => {
                    tracing::error!(error = %e, queue = self.name, "undecodable envelope dropped");
                }
            }
        }
        // In pieces of at most RUN_BYTES of requests (one at least), each finished (its
        // events pushed) before the next: what one commit sends a session stays well under
        // its outgoing bound, however large the messages.
        let mut start = 0;
        while start < envelopes.len() {
            let mut end = start + 1;
            let mut bytes = sizes[start];
            while end < envelopes.len() && bytes + sizes[end] <= RUN_BYTES {
                bytes += sizes[end];
                end += 1;
            }
            let piece = &envelopes[start..end];
            let outcomes = if piece.len() == 1 {
                vec![handler.handle(&piece[0]).await]
            } else {
                handler.handle_run(piece).await
            };
            // The piece's events and replies go out together (one registry lookup, one
            // batch per edge), each envelope's after the one before.
            let mut pushes = Vec::with_capacity(piece.len());
            for (envelope, outcome) in piece.iter().zip(outcomes) {
                self.finish(envelope, outcome, &mut pushes).await;
            }
            self.delivery.push_all(pushes).await;
            start = end;
        }
        run.into_iter().map(|d| d.receipt.clone()).collect()
    }

    /// After an envelope's outcome: the broadcast, the notify jobs, and its events and reply
    /// added to `pushes` (pushed with the rest of its piece; a broadcast first pushes those
    /// already there, so what came before it arrives before it).
    async fn finish<'e>(
        &self,
        envelope: &'e Envelope,
        outcome: Result<Written<ReplyData>, Failure>,
        pushes: &mut Vec<Push<'e>>,
    ) {
        let (data, events) = match outcome {
            Ok(Written {
                value,
                events,
                broadcast,
            }) => {
                // A channel's message (or change) reaches its members' sessions before the
                // sender's reply.
                if let Some(b) = broadcast {
                    if !pushes.is_empty() {
                        self.delivery.push_all(std::mem::take(pushes)).await;
                    }
                    for frame in b.frames {
                        self.delivery
                            .broadcast(&b.conversation, frame, Some(origin(envelope)))
                            .await;
                    }
                }
                (Ok(value), events)
            }
            Err(f) if f.code == ErrorCode::Unavailable => {
                // Nothing was written: the client is told so (`unavailable` means nothing was
                // accepted, retry later) and the envelope is dropped, so a write refused now
                // never lands later behind the client's back.
                tracing::warn!(message = %f.message, queue = self.name, "storage unavailable; write refused");
                metrics::counter!(hubbub_protocol::metrics::WRITES_REFUSED, "queue" => self.name)
                    .increment(1);
                (
                    Err(Failure::new(
                        ErrorCode::Unavailable,
                        "storage is unavailable; nothing was accepted, retry later",
                    )),
                    Vec::new(),
                )
            }
            Err(f) => (Err(f), Vec::new()),
        };
        metrics::counter!(self.metric, "type" => envelope.request.type_name()).increment(1);
        let replies = reply_frame(envelope, data)
            .map(|frame| vec![(envelope.edge.clone(), envelope.session.clone(), frame)])
            .unwrap_or_default();
        let frames: Vec<_> = events.into_iter().map(|e| (e.user, e.frame)).collect();
        if let Some(config) = &self.notify
            && !frames.is_empty()
        {
            // Best effort: the events are committed either way and stay in the inboxes.
            let enqueued = notify::enqueue(
                &*self.queue,
                config,
                &envelope.envelope_id,
                &envelope.user,
                &frames,
            )
            .await;
            if let Err(e) = enqueued {
                tracing::warn!(error = %e, "notify job not enqueued");
            }
        }
        pushes.push(Push {
            frames,
            replies,
            origin: Some(origin(envelope)),
        });
    }
}

/// The limits a service checks, as the process applies them now: the runtime config's, which
/// the process's watcher publishes on a `watch` channel (a new version holds from the next
/// request).
#[derive(Debug, Clone)]
pub struct LiveLimits(
    tokio::sync::watch::Receiver<std::sync::Arc<hubbub_protocol::admin::VersionedConfig>>,
);

impl LiveLimits {
    /// Limits that follow the runtime config published on `rx`.
    pub fn new(
        rx: tokio::sync::watch::Receiver<std::sync::Arc<hubbub_protocol::admin::VersionedConfig>>,
    ) -> Self {
        LiveLimits(rx)
    }

    /// Limits that never change.
    pub fn fixed(limits: hubbub_protocol::limits::Limits) -> Self {
        let config = hubbub_protocol::admin::RuntimeConfig {
            limits,
            ..Default::default()
        };
        let (_, rx) = tokio::sync::watch::channel(std::sync::Arc::new(
            hubbub_protocol::admin::VersionedConfig { version: 0, config },
        ));
        LiveLimits(rx)
    }

    /// The limits now.
    pub fn now(&self) -> hubbub_protocol::limits::Limits {
        self.0.borrow().config.limits.clone()
    }

    /// The largest `comment.typing` word count now (`max_text_chars`), or `fixed` when no
    /// live limits are followed.
    pub fn word_cap(limits: Option<&LiveLimits>, fixed: u32) -> u32 {
        limits.map_or(fixed, |l| {
            u32::try_from(l.0.borrow().config.limits.max_text_chars).unwrap_or(u32::MAX)
        })
    }
}

/// Run `work` on received `deliveries`, extending their leases by `visibility` every third
/// of it while `work` runs, so that none becomes visible (and is handled again elsewhere)
/// before `work` is done with it. A failed extension is logged: the worst it brings is the
/// redelivery the queue promises anyway.
pub(crate) async fn keep_leased<T>(
    queue: &dyn Queue,
    name: &str,
    deliveries: &[hubbub_queue::Delivery],
    visibility: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = (visibility / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                let extended = join_all(
                    deliveries
                        .iter()
                        .map(|d| queue.extend(name, &d.receipt, visibility)),
                )
                .await;
                if let Some(Err(e)) = extended.into_iter().find(Result::is_err) {
                    tracing::warn!(error = %e, queue = name, "could not extend a lease; its envelope may be handled again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::runs_of;
    use hubbub_queue::{Delivery, Receipt};

    fn d(id: &str, key: Option<&str>) -> Delivery {
        Delivery {
            id: id.into(),
            receipt: Receipt(id.into()),
            body: Vec::new(),
            key: key.map(Into::into),
            receive_count: 1,
            first_enqueued_ms: 0,
        }
    }

    #[test]
    fn a_batch_splits_into_runs_of_one_key_in_order() {
        let batch = [
            d("a1", Some("a")),
            d("a2", Some("a")),
            d("x", None),
            d("b1", Some("b")),
            d("a3", Some("a")),
            d("y", None),
        ];
        let runs: Vec<Vec<&str>> = runs_of(&batch)
            .into_iter()
            .map(|r| r.into_iter().map(|d| d.id.as_str()).collect())
            .collect();
        assert_eq!(
            runs,
            [vec!["a1", "a2", "a3"], vec!["x"], vec!["b1"], vec!["y"]]
        );
    }

    /// Work that outlasts the visibility several times over keeps its deliveries invisible
    /// to every other receiver until it is done (and without the leases kept, they would
    /// come back after the first visibility: checked first, so the test can fail). The queue
    /// runs on a manual clock and the ticks on tokio's paused one: nothing waits on real time.
    #[tokio::test(start_paused = true)]
    async fn work_longer_than_the_visibility_keeps_its_leases() {
        use hubbub_queue::clock::ManualClock;
        use hubbub_queue::embedded::{EmbeddedConfig, EmbeddedQueue};
        use hubbub_queue::{Queue, ReceiveOptions, SendOptions};
        use std::sync::Arc;
        use std::time::Duration;
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(1_000_000);
        let queue = EmbeddedQueue::open_with_clock(
            dir.path().join("q.db"),
            EmbeddedConfig::default(),
            Arc::new(clock.clone()),
        )
        .expect("queue");
        let visibility = Duration::from_secs(2);
        let opts = ReceiveOptions {
            max: 10,
            visibility,
            ..ReceiveOptions::default()
        };
        for body in [b"a", b"b"] {
            queue
                .send("work", body.to_vec(), SendOptions::default())
                .await
                .expect("send");
        }
        // Unkept: back once the visibility ends.
        let got = queue.receive("work", opts).await.expect("receive");
        assert_eq!(got.len(), 2);
        clock.advance(visibility + Duration::from_millis(1));
        let again = queue.receive("work", opts).await.expect("receive");
        assert_eq!(again.len(), 2, "the unkept leases ended");
        // Kept through 2.5 visibilities of work (the queue's clock moving with tokio's):
        // nobody else gets them meanwhile.
        let work = async {
            let mut seen = 0;
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                clock.advance(Duration::from_secs(1));
                seen += queue.receive("work", opts).await.expect("receive").len();
            }
            seen
        };
        let seen = super::keep_leased(&queue, "work", &again, visibility, work).await;
        assert_eq!(seen, 0, "a kept delivery was handed out again");
        for d in &again {
            queue
                .ack("work", &d.receipt)
                .await
                .expect("ack of a kept lease");
        }
    }
}
