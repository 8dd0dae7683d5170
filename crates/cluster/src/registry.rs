//! The session registry in Redis: a hash per user (session → edge id), and one key per live
//! edge holding its internal address with a TTL that the edge's heartbeat renews. A session
//! whose edge key has expired belongs to a dead edge: lookups skip it (and drop it), so a
//! crashed edge's sessions vanish within one TTL without anyone cleaning up after it.

use async_trait::async_trait;
use hubbub_registry::{EdgeLoad, Registry, RegistryError, SessionInfo};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn unavailable(e: redis::RedisError) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

/// Sessions and live edges in Redis.
#[derive(Clone)]
pub struct RedisRegistry {
    conn: ConnectionManager,
    namespace: String,
    /// Sessions registered through this registry (an edge's, in an edge process): the count
    /// its heartbeat publishes beside its address.
    registered: Arc<AtomicU64>,
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
            registered: Arc::new(AtomicU64::new(0)),
        }
    }

    fn load_key(&self, edge: &str) -> String {
        format!("{}:reg:n:{edge}", self.namespace)
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
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let sessions = self.registered.load(Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .pset_ex(self.edge_key(edge), address, ttl_ms)
            .pset_ex(self.load_key(edge), sessions, ttl_ms)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The edge is shutting down: its sessions go with it at once.
    pub async fn edge_gone(&self, edge: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .del(&[self.edge_key(edge), self.load_key(edge)])
            .await
            .map_err(unavailable)?;
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
        let added: u64 = conn
            .hset(self.user_key(user), session, edge)
            .await
            .map_err(unavailable)?;
        self.registered.fetch_add(added, Ordering::Relaxed);
        Ok(())
    }

    async fn unregister(&self, user: &str, session: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn.clone();
        let removed: u64 = conn
            .hdel(self.user_key(user), session)
            .await
            .map_err(unavailable)?;
        let _ = self
            .registered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(removed))
            });
        Ok(())
    }

    async fn edges(&self) -> Result<Vec<EdgeLoad>, RegistryError> {
        // The live edges are the keys their heartbeats renew; a dashboard's question, so a
        // SCAN over the few edge keys is fine.
        let mut conn = self.conn.clone();
        let prefix = self.edge_key("");
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = conn
                .scan_match(format!("{prefix}*"))
                .await
                .map_err(unavailable)?;
            let mut keys = Vec::new();
            while let Some(k) = iter.next_item().await {
                keys.push(k.map_err(unavailable)?);
            }
            keys
        };
        let mut edges: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        edges.sort();
        if edges.is_empty() {
            return Ok(Vec::new());
        }
        let loads: Vec<String> = edges.iter().map(|e| self.load_key(e)).collect();
        let counts: Vec<Option<u64>> = conn.mget(&loads).await.map_err(unavailable)?;
        Ok(edges
            .into_iter()
            .zip(counts)
            .map(|(edge, sessions)| EdgeLoad {
                edge,
                sessions: sessions.unwrap_or(0),
            })
            .collect())
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
