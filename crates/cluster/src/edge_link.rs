//! The edge link when roles run apart, both ends: services hand a batch to an edge with one
//! `POST /internal/v1/deliver` to the address the registry holds for it, authenticated by a
//! shared secret (`x-hubbub-secret`); the edge's internal listener takes it into the edge's
//! inbox.
//!
//! - [`HttpEdges`] (the sending end, an [`EdgeLink`]): one request in flight per edge, the
//!   batches handed over meanwhile going together in the next, in order; a batch is split
//!   into bodies of at most [`DELIVER_CHUNK_BYTES`], in order. An edge that is gone or does not answer is
//!   `EdgeGone`; an edge that moved is looked up again once.
//! - [`receiver`] and [`accept`] (the receiving end): check the secret in constant time,
//!   decode the batch, hand it on. Nothing else is served on that listener.
//! - [`heartbeat`]: keeps the edge's address in the registry while it runs, and removes it
//!   when it stops, so services stop sending to it.

use crate::registry::RedisRegistry;
use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use hubbub_protocol::internal::ToEdge;
use hubbub_registry::coalesce::Merged;
use hubbub_registry::{EdgeLink, Registry, RegistryError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The header carrying the shared secret on internal requests.
pub const SECRET_HEADER: &str = "x-hubbub-secret";
/// The path edges accept batches on.
pub const DELIVER_PATH: &str = "/internal/v1/deliver";
/// The largest body an edge accepts on [`DELIVER_PATH`]. Senders split batches into bodies
/// of at most [`DELIVER_CHUNK_BYTES`], so only a single item larger than that (none the
/// protocol's limits allow) could come near it.
pub const DELIVER_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// A batch is sent as bodies of about this size at most, in order.
pub const DELIVER_CHUNK_BYTES: usize = 1024 * 1024;

/// Encode a batch as JSON arrays of at most `chunk` bytes each (an item larger than that
/// goes alone), keeping the items' order.
pub fn deliver_bodies(batch: &[ToEdge], chunk: usize) -> Result<Vec<Bytes>, serde_json::Error> {
    let mut bodies = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    for item in batch {
        let encoded = serde_json::to_vec(item)?;
        if !body.is_empty() && body.len() + encoded.len() + 2 > chunk {
            body.push(b']');
            bodies.push(Bytes::from(std::mem::take(&mut body)));
        }
        body.push(if body.is_empty() { b'[' } else { b',' });
        body.extend_from_slice(&encoded);
    }
    if !body.is_empty() {
        body.push(b']');
        bodies.push(Bytes::from(body));
    }
    Ok(bodies)
}

/// Batches to edges over HTTP.
pub struct HttpEdges {
    posts: Arc<Posts>,
    /// Per edge, its batches: those handed over while a request to it is in flight go
    /// together in the next, in order (a worker handing over the events of dozens of
    /// envelopes at once made as many requests to each edge).
    outboxes: Mutex<HashMap<String, Arc<Outbox>>>,
    /// The live edges and when they were read ([`EDGES_FRESH_FOR`]).
    live: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<String>)>>,
}

/// An edge's batches, merged while one is in flight.
type Outbox = Merged<Vec<ToEdge>, Result<(), RegistryError>>;

/// What posting a batch to an edge takes.
struct Posts {
    registry: RedisRegistry,
    client: reqwest::Client,
    secret: String,
    addresses: RwLock<HashMap<String, String>>,
}

/// How long the list of live edges a channel's messages go to is reused: a channel message
/// reaches an edge that started less than this ago by `channel.sync` only.
pub const EDGES_FRESH_FOR: Duration = Duration::from_millis(500);

impl std::fmt::Debug for HttpEdges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpEdges")
    }
}

impl HttpEdges {
    /// A link that finds edges in `registry` and authenticates with `secret`.
    pub fn new(registry: RedisRegistry, secret: &str) -> Result<Self, RegistryError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(HttpEdges {
            posts: Arc::new(Posts {
                registry,
                client,
                secret: secret.to_owned(),
                addresses: RwLock::new(HashMap::new()),
            }),
            outboxes: Mutex::new(HashMap::new()),
            live: tokio::sync::Mutex::new(None),
        })
    }

    /// The outbox of `edge`: its batches, merged while one is in flight.
    fn outbox(&self, edge: &str) -> Arc<Outbox> {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = outboxes.get(edge) {
            return o.clone();
        }
        let (posts, id) = (self.posts.clone(), edge.to_owned());
        let outbox = Merged::new(Arc::new(move |batches: Vec<Vec<ToEdge>>| {
            let (posts, id) = (posts.clone(), id.clone());
            Box::pin(async move {
                let n = batches.len();
                // Moved, not copied: a group's message holds every member.
                let batch: Vec<ToEdge> = batches.into_iter().flatten().collect();
                let result = posts.deliver(&id, batch).await;
                vec![result; n]
            }) as BoxFuture<'static, _>
        }));
        outboxes.insert(edge.to_owned(), outbox.clone());
        outbox
    }
}

impl Posts {
    async fn address(&self, edge: &str, fresh: bool) -> Result<String, RegistryError> {
        if !fresh
            && let Some(a) = self
                .addresses
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(edge)
        {
            return Ok(a.clone());
        }
        let a = self
            .registry
            .edge_address(edge)
            .await?
            .ok_or_else(|| RegistryError::EdgeGone(edge.to_owned()))?;
        self.addresses
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(edge.to_owned(), a.clone());
        Ok(a)
    }

    async fn post(&self, address: &str, body: &Bytes) -> Result<(), RegistryError> {
        let resp = self
            .client
            .post(format!("http://{address}{DELIVER_PATH}"))
            .header(SECRET_HEADER, &self.secret)
            .header("content-type", "application/json")
            // Shared with the request (a second try posts the same bytes), not copied.
            .body(body.clone())
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(RegistryError::Unavailable(format!(
                "edge answered {}",
                resp.status()
            )))
        }
    }

    /// Post a batch to `edge`, as bodies under the edge's limit, in order.
    async fn deliver(&self, edge: &str, batch: Vec<ToEdge>) -> Result<(), RegistryError> {
        // A big message to a big online group makes a big batch: it goes as several bodies
        // under the edge's limit, in order, rather than one the edge would refuse.
        let bodies = deliver_bodies(&batch, DELIVER_CHUNK_BYTES)
            .map_err(|e| RegistryError::Unavailable(format!("encoding a batch: {e}")))?;
        drop(batch);
        let mut address = self.address(edge, false).await?;
        let mut looked_again = false;
        for body in &bodies {
            if self.post(&address, body).await.is_ok() {
                continue;
            }
            if looked_again {
                return Err(RegistryError::EdgeGone(edge.to_owned()));
            }
            // The edge may have restarted elsewhere: look it up again, once.
            looked_again = true;
            address = self.address(edge, true).await?;
            self.post(&address, body)
                .await
                .map_err(|_| RegistryError::EdgeGone(edge.to_owned()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl EdgeLink for HttpEdges {
    async fn deliver(&self, edge: &str, batch: Vec<ToEdge>) -> Result<(), RegistryError> {
        let result = self
            .outbox(edge)
            .call(batch)
            .await
            .unwrap_or_else(|| Err(RegistryError::EdgeGone(edge.to_owned())));
        if let Err(RegistryError::EdgeGone(_)) = &result {
            // Edges get a new id each start: a gone one's outbox and address are dropped (a
            // later batch for it makes them again), so a long-lived worker does not keep one
            // of each for every edge that ever ran.
            self.outboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(edge);
            self.posts
                .addresses
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(edge);
        }
        result
    }

    async fn edges(&self) -> Result<Vec<String>, RegistryError> {
        // One lookup at a time refreshes the list; the others wait for it and reuse it.
        let mut live = self.live.lock().await;
        if let Some((at, edges)) = live.as_ref()
            && at.elapsed() < EDGES_FRESH_FOR
        {
            return Ok(edges.clone());
        }
        let edges: Vec<String> = self
            .posts
            .registry
            .edges()
            .await?
            .into_iter()
            .map(|l| l.edge)
            .collect();
        *live = Some((tokio::time::Instant::now(), edges.clone()));
        Ok(edges)
    }
}

/// The receiving end: the edge's internal listener, which takes batches into `inbox`.
pub fn receiver(secret: String, inbox: mpsc::UnboundedSender<Vec<ToEdge>>) -> axum::Router {
    axum::Router::new()
        .route(
            DELIVER_PATH,
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (inbox, secret) = (inbox.clone(), secret.clone());
                async move { accept(&headers, &body, &secret, &inbox) }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(DELIVER_BODY_LIMIT))
}

/// One delivery request: `401` without the right secret, `400` for a body that is not a
/// batch, `503` when the edge is shutting down, `204` when the batch was handed on.
pub fn accept(
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
    inbox: &mpsc::UnboundedSender<Vec<ToEdge>>,
) -> Response {
    let given = headers
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if secret.is_empty() || !constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, "bad internal secret").into_response();
    }
    let batch = match hubbub_protocol::internal::decode_to_edge_batch(body) {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad batch: {e}")).into_response(),
    };
    if inbox.send(batch).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "edge shutting down").into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Keep `edge`'s internal address in the registry (renewed every `ttl / 3`) until
/// cancelled, then remove it. Call [`RedisRegistry::edge_alive`] once before, so that a
/// start without Redis fails at once rather than in the background.
pub async fn heartbeat(
    registry: RedisRegistry,
    edge: String,
    advertise: String,
    ttl: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = registry.edge_alive(&edge, &advertise, ttl).await {
                    tracing::warn!(error = %e, "edge heartbeat not recorded");
                }
            }
            _ = cancel.cancelled() => {
                let _ = registry.edge_gone(&edge).await;
                break;
            }
        }
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn batches_split_in_order_under_the_chunk() {
        let batch: Vec<ToEdge> = (0..100)
            .map(|i| ToEdge::Close {
                user: format!("u{i}"),
                session: None,
                code: 4000,
                reason: "x".repeat(500),
            })
            .collect();
        let bodies = deliver_bodies(&batch, 4096).expect("encode");
        assert!(bodies.len() > 10);
        let mut back = Vec::new();
        for b in &bodies {
            assert!(b.len() <= 4096, "{}", b.len());
            back.extend(serde_json::from_slice::<Vec<ToEdge>>(b).expect("a JSON array"));
        }
        assert_eq!(back, batch);
        let one = deliver_bodies(&batch[..1], 10).expect("encode");
        assert_eq!(one.len(), 1, "an item over the chunk goes alone");
        assert!(deliver_bodies(&[], 10).expect("encode").is_empty());
    }
}
