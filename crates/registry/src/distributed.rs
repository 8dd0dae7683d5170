//! The registry and the edge link when roles run apart: sessions in Redis, batches to edges
//! over HTTP.
//!
//! - [`RedisRegistry`]: a hash per user (session → edge id), and one key per live edge
//!   holding its internal address with a TTL that the edge's heartbeat renews. A session
//!   whose edge key has expired belongs to a dead edge: lookups skip it (and drop it), so a
//!   crashed edge's sessions vanish within one TTL without anyone cleaning up after it.
//! - [`HttpEdges`]: hands a batch to an edge with one `POST /internal/v1/deliver` to the
//!   address the registry holds for it, authenticated by a shared secret
//!   (`x-hubbub-secret`). An edge that is gone or does not answer is `EdgeGone`.

use crate::{EdgeLink, Registry, RegistryError, SessionInfo};
use async_trait::async_trait;
use hubbub_protocol::internal::ToEdge;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

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
pub fn deliver_bodies(batch: &[ToEdge], chunk: usize) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    let mut bodies = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    for item in batch {
        let encoded = serde_json::to_vec(item)?;
        if !body.is_empty() && body.len() + encoded.len() + 2 > chunk {
            body.push(b']');
            bodies.push(std::mem::take(&mut body));
        }
        body.push(if body.is_empty() { b'[' } else { b',' });
        body.extend_from_slice(&encoded);
    }
    if !body.is_empty() {
        body.push(b']');
        bodies.push(body);
    }
    Ok(bodies)
}

fn unavailable(e: redis::RedisError) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

/// Sessions and live edges in Redis.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: ConnectionManager,
    namespace: String,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl RedisRegistry {
    /// A registry on this connection, keys under `namespace`.
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        RedisRegistry {
            conn,
            namespace: namespace.to_owned(),
        }
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}:reg:u:{user}", self.namespace)
    }

    fn edge_key(&self, edge: &str) -> String {
        format!("{}:reg:e:{edge}", self.namespace)
    }

    /// The edge is alive at `address` for the next `ttl` (its heartbeat).
    pub async fn edge_alive(
        &self,
        edge: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .pset_ex(self.edge_key(edge), address, ttl.as_millis().max(1) as u64)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The edge is shutting down: its sessions go with it at once.
    pub async fn edge_gone(&self, edge: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn.clone();
        let _: () = conn.del(self.edge_key(edge)).await.map_err(unavailable)?;
        Ok(())
    }

    /// The internal address of a live edge.
    pub async fn edge_address(&self, edge: &str) -> Result<Option<String>, RegistryError> {
        let mut conn = self.conn.clone();
        conn.get(self.edge_key(edge)).await.map_err(unavailable)
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn register(&self, user: &str, session: &str, edge: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset(self.user_key(user), session, edge)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn unregister(&self, user: &str, session: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hdel(self.user_key(user), session)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn sessions(&self, user: &str) -> Result<Vec<SessionInfo>, RegistryError> {
        let mut conn = self.conn.clone();
        let all: HashMap<String, String> = conn
            .hgetall(self.user_key(user))
            .await
            .map_err(unavailable)?;
        self.live_sessions(user, all).await
    }

    async fn sessions_of(&self, users: &[String]) -> Result<Vec<Vec<SessionInfo>>, RegistryError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // One pipeline for every user's sessions, one MGET for every edge's liveness.
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hgetall(self.user_key(u));
        }
        let mut conn = self.conn.clone();
        let all: Vec<HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut edges: Vec<String> = all.iter().flat_map(|m| m.values().cloned()).collect();
        edges.sort_unstable();
        edges.dedup();
        let live: Vec<String> = if edges.is_empty() {
            Vec::new()
        } else {
            let keys: Vec<String> = edges.iter().map(|e| self.edge_key(e)).collect();
            let alive: Vec<Option<String>> = conn.mget(&keys).await.map_err(unavailable)?;
            edges
                .into_iter()
                .zip(alive)
                .filter(|(_, a)| a.is_some())
                .map(|(e, _)| e)
                .collect()
        };
        Ok(all
            .into_iter()
            .map(|m| {
                let mut s: Vec<SessionInfo> = m
                    .into_iter()
                    .filter(|(_, e)| live.contains(e))
                    .map(|(session, edge)| SessionInfo { session, edge })
                    .collect();
                s.sort_by(|a, b| a.session.cmp(&b.session));
                s
            })
            .collect())
    }
}

impl RedisRegistry {
    /// The sessions whose edge is alive; the others are forgotten (best effort).
    async fn live_sessions(
        &self,
        user: &str,
        all: HashMap<String, String>,
    ) -> Result<Vec<SessionInfo>, RegistryError> {
        let mut conn = self.conn.clone();
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let mut edges: Vec<&String> = all.values().collect();
        edges.sort_unstable();
        edges.dedup();
        let keys: Vec<String> = edges.iter().map(|e| self.edge_key(e)).collect();
        let alive: Vec<Option<String>> = conn.mget(&keys).await.map_err(unavailable)?;
        let live: Vec<&String> = edges
            .iter()
            .zip(alive)
            .filter(|(_, a)| a.is_some())
            .map(|(e, _)| *e)
            .collect();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for (session, edge) in &all {
            if live.contains(&edge) {
                out.push(SessionInfo {
                    session: session.clone(),
                    edge: edge.clone(),
                });
            } else {
                dead.push(session.clone());
            }
        }
        if !dead.is_empty() {
            // A dead edge's sessions: forget them (best effort).
            let _: Result<(), _> = conn.hdel(self.user_key(user), dead).await;
        }
        out.sort_by(|a, b| a.session.cmp(&b.session));
        Ok(out)
    }
}

/// Batches to edges over HTTP.
pub struct HttpEdges {
    registry: RedisRegistry,
    client: reqwest::Client,
    secret: String,
    addresses: RwLock<HashMap<String, String>>,
}

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
            registry,
            client,
            secret: secret.to_owned(),
            addresses: RwLock::new(HashMap::new()),
        })
    }

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

    async fn post(&self, address: &str, body: &[u8]) -> Result<(), RegistryError> {
        let resp = self
            .client
            .post(format!("http://{address}{DELIVER_PATH}"))
            .header(SECRET_HEADER, &self.secret)
            .header("content-type", "application/json")
            .body(body.to_vec())
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
}

#[async_trait]
impl EdgeLink for HttpEdges {
    async fn deliver(&self, edge: &str, batch: Vec<ToEdge>) -> Result<(), RegistryError> {
        // A big message to a big online group makes a big batch: it goes as several bodies
        // under the edge's limit, in order, rather than one the edge would refuse.
        let bodies = deliver_bodies(&batch, DELIVER_CHUNK_BYTES)
            .map_err(|e| RegistryError::Unavailable(format!("encoding a batch: {e}")))?;
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
