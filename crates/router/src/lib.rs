//! The router role: takes envelopes from the `main` queue and forwards each to the queue(s)
//! of the service(s) that handle its request type, appending every one to the `archive` log.
//!
//! Forwarding is at-least-once and idempotent: each forwarded copy carries the dedupe id
//! `main:<message id>`, so a router that dies after forwarding and before acking forwards
//! again harmlessly. Copies are keyed by user, so one user's requests reach a service in the
//! order the edge accepted them. A request type with no route is answered `bad_request` and
//! dropped (counted), never left to loop.
//!
//! The router reads only each message's routing header (request type and user, see
//! `hubbub_protocol::internal`), never the request itself: it knows queue names and request
//! types, nothing of what services do.

use futures_util::future::try_join_all;
use hubbub_protocol::internal::{Envelope, Route};
use hubbub_protocol::{ErrorCode, ServerFrame};
use hubbub_queue::{Log, Outgoing, Queue, ReceiveOptions, SendOptions};
use hubbub_registry::Delivery;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The queue every edge writes to.
pub const MAIN_QUEUE: &str = "main";
/// The log every routed envelope is appended to.
pub const ARCHIVE_LOG: &str = "archive";

/// Request type → target queues.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    routes: HashMap<&'static str, Vec<&'static str>>,
}

impl RoutingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Send requests of `types` to `queue` too (fan-out: a type may go to several queues).
    pub fn route(mut self, types: &[&'static str], queue: &'static str) -> Self {
        for t in types {
            self.routes.entry(t).or_default().push(queue);
        }
        self
    }

    /// The queues for a request type (empty: no service handles it).
    pub fn targets(&self, request_type: &str) -> &[&'static str] {
        self.routes
            .get(request_type)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The router: one loop; run several for more throughput.
pub struct Router {
    queue: Arc<dyn Queue>,
    log: Arc<dyn Log>,
    table: RoutingTable,
    delivery: Delivery,
    batch: usize,
}

impl Router {
    /// A router over these backends.
    pub fn new(
        queue: Arc<dyn Queue>,
        log: Arc<dyn Log>,
        table: RoutingTable,
        delivery: Delivery,
    ) -> Self {
        Router {
            queue,
            log,
            table,
            delivery,
            batch: 256,
        }
    }

    /// Route until cancelled; in-flight work finishes first.
    pub async fn run(self, cancel: CancellationToken) {
        let opts = ReceiveOptions {
            max: self.batch,
            wait: Duration::from_millis(500),
            visibility: Duration::from_secs(30),
            max_run: 1,
        };
        // The forwarded batch's receipts, acked together with the next receive (one round
        // trip of the loop instead of two; on the embedded backend often one commit).
        let mut forwarded: Vec<hubbub_queue::Receipt> = Vec::new();
        while !cancel.is_cancelled() {
            let (_, got) = tokio::join!(self.ack(&mut forwarded), async {
                tokio::select! {
                    got = self.queue.receive(MAIN_QUEUE, opts) => Some(got),
                    _ = cancel.cancelled() => None,
                }
            });
            let Some(got) = got else { break };
            let deliveries = match got {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "router: receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if deliveries.is_empty() {
                continue;
            }
            if let Err(e) = self.forward(&deliveries).await {
                // Not acked: the batch comes back after its visibility timeout.
                tracing::warn!(error = %e, "router: forwarding failed; will retry");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            forwarded = deliveries.into_iter().map(|d| d.receipt).collect();
        }
        self.ack(&mut forwarded).await;
    }

    /// Ack (and forget) forwarded envelopes, if any.
    async fn ack(&self, receipts: &mut Vec<hubbub_queue::Receipt>) {
        if receipts.is_empty() {
            return;
        }
        if let Err(e) = self.queue.ack_batch(MAIN_QUEUE, receipts).await {
            tracing::warn!(error = %e, "router: ack failed; the batch will be forwarded again (deduped)");
        }
        receipts.clear();
    }

    async fn forward(
        &self,
        deliveries: &[hubbub_queue::Delivery],
    ) -> Result<(), hubbub_queue::QueueError> {
        let mut per_queue: HashMap<&'static str, Vec<Outgoing>> = HashMap::new();
        let mut unroutable = Vec::new();
        for d in deliveries {
            // Only the routing header is read; the request is decoded by its service.
            let route = match Route::of(&d.body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(id = %d.id, error = %e, "router: undecodable envelope dropped");
                    metrics::counter!(hubbub_protocol::metrics::ROUTER_DROPPED).increment(1);
                    continue;
                }
            };
            let targets = self.table.targets(&route.request_type);
            if targets.is_empty() {
                unroutable.push(d);
                continue;
            }
            for q in targets {
                per_queue.entry(q).or_default().push(Outgoing {
                    body: d.body.clone(),
                    // Relayed: `main` keeps the envelope until the ack below, so a copy
                    // lost in a power failure is forwarded again (no fsync of its own on the
                    // embedded backend; the service's durable write covers it).
                    opts: SendOptions::default()
                        .dedupe(format!("main:{}", d.id))
                        .key(route.user.as_ref())
                        .relayed(),
                });
            }
        }
        // The archive entries and every service queue's copies are written at once, not one
        // after the other: on the embedded backend they share one commit (one fsync), on
        // Redis the round trips overlap. The batch is acked only after all of them.
        let archived = self.log.append_relayed(
            ARCHIVE_LOG,
            deliveries.iter().map(|d| d.body.clone()).collect(),
        );
        let sent = try_join_all(
            per_queue
                .into_iter()
                .map(|(q, msgs)| self.queue.send_batch(q, msgs)),
        );
        tokio::try_join!(archived, sent)?;
        if !unroutable.is_empty() {
            // Rare (a type no service here takes): the whole envelope is read to answer it.
            let replies = unroutable
                .into_iter()
                .filter_map(|d| Envelope::decode(&d.body).ok())
                .map(|e| {
                    let ty = e.request.type_name();
                    metrics::counter!(hubbub_protocol::metrics::ROUTER_UNROUTABLE).increment(1);
                    let message = format!("`{ty}` is not available on this server");
                    (
                        e.edge,
                        e.session,
                        ServerFrame::error(e.request_id, ErrorCode::BadRequest, message),
                    )
                })
                .collect();
            self.delivery.push(Vec::new(), replies, None).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_protocol::Request;
    use hubbub_protocol::internal::ToEdge;
    use hubbub_queue::{EmbeddedConfig, EmbeddedQueue};
    use hubbub_registry::{LocalEdges, LocalRegistry};

    fn envelope(id: &str, request: Request) -> Vec<u8> {
        let e = Envelope {
            envelope_id: id.into(),
            user: "u1".into(),
            session: "s1".into(),
            edge: "e1".into(),
            request_id: Some(id.into()),
            accepted_ms: 0,
            request,
            server: false,
        };
        e.encode().expect("json")
    }

    #[tokio::test]
    async fn routes_by_type_archives_and_answers_what_has_no_route() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue =
            EmbeddedQueue::open(dir.path().join("q.db"), EmbeddedConfig::default()).expect("queue");
        let edges = Arc::new(LocalEdges::default());
        let mut e1 = edges.attach("e1");
        let delivery = Delivery::new(Arc::new(LocalRegistry::default()), edges.clone());
        let table = RoutingTable::new().route(&["block.list"], "chat");
        let q: Arc<dyn Queue> = Arc::new(queue.clone());
        for (id, request) in [
            ("r1", Request::BlockList {}),
            (
                "r2",
                Request::TimelineGet {
                    before: None,
                    limit: None,
                },
            ),
        ] {
            q.send(MAIN_QUEUE, envelope(id, request), SendOptions::default())
                .await
                .expect("send");
        }
        let cancel = CancellationToken::new();
        let router = Router::new(q.clone(), Arc::new(queue.clone()), table, delivery);
        let task = tokio::spawn(router.run(cancel.clone()));
        // The unroutable one is answered, not dropped.
        let batch = tokio::time::timeout(Duration::from_secs(10), e1.recv())
            .await
            .expect("in time")
            .expect("open");
        match batch.as_slice() {
            [
                ToEdge::Reply {
                    session,
                    frame:
                        ServerFrame::Error {
                            id, code, message, ..
                        },
                },
            ] => {
                assert_eq!(
                    (session.as_str(), id.as_deref(), *code),
                    ("s1", Some("r2"), ErrorCode::BadRequest)
                );
                assert!(message.contains("timeline.get"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // The routable one is on its queue; both are in the archive.
        let got = q
            .receive(
                "chat",
                ReceiveOptions {
                    max: 10,
                    wait: Duration::from_secs(5),
                    visibility: Duration::from_secs(30),
                    max_run: 1,
                },
            )
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(
            queue.read(ARCHIVE_LOG, 0, 10).await.expect("archive").len(),
            2
        );
        cancel.cancel();
        task.await.expect("router stops");
    }
}
