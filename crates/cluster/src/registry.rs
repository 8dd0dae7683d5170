//! The session registry in Redis: a hash per user (session → edge id), and one key per live
//! edge holding its internal address with a TTL that the edge's heartbeat renews. A session
//! whose edge key has expired belongs to a dead edge: lookups skip it (and drop it), so a
//! crashed edge's sessions vanish within one TTL without anyone cleaning up after it.
//!
//! The edges that ever beat are also members of one set (`reg:edges`), so listing the live
//! edges (every channel message does, [`Registry::edges`]) reads that set and their keys: two
//! round trips whatever the number of users, where a `SCAN` for the edge keys walked every
//! key of the namespace (one round trip per ten keys: ~2 s with 30,000 users online).
//!
//! A push's lookup of many users ([`Registry::users_by_edge`]) reads only which edges are
//! alive and answers that each holds every user: the edges drop what they hold no session
//! for, and a message to a big group costs Redis one script instead of a read per member.

use async_trait::async_trait;
use hubbub_registry::{EdgeLoad, Registry, RegistryError, SessionInfo, UsersByEdge};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Remove an edge (ARGV[1]) from the edges' set (KEYS[2]) only if its address key (KEYS[1])
/// does not exist: atomic, so a heartbeat that renews the key is never undone.
static FORGET_EXPIRED: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end return 0",
    )
});

/// The live edges (ARGV[1] + id is an edge's address key) among the members of the edges'
/// set (KEYS[1]), in one round trip; reads only.
static LIVE_EDGES: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local out = {} \
         for _, e in ipairs(redis.call('SMEMBERS', KEYS[1])) do \
           if redis.call('EXISTS', ARGV[1] .. e) == 1 then out[#out + 1] = e end \
         end \
         return out",
    )
});

/// A push's lookup of at least this many users, and at least twice as many as the edges
/// last seen alive, is answered with every live edge holding every user (one read of the
/// edges, not one per user): the edges drop what they hold no session for. A message to a
/// 100-member group was 100 `HVALS` and an `MGET`; with two edges it is one script reading
/// two keys, and the edges get the whole member list instead of their half of it.
const EVERY_EDGE_FROM: usize = 16;

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
    /// How many edges were alive when last listed (what a lookup's choice of how to read
    /// is made on; stale only makes that choice costlier, never an answer wrong).
    edges_seen: Arc<AtomicUsize>,
    /// From how many users a lookup may list every live edge ([`EVERY_EDGE_FROM`]).
    every_edge_from: usize,
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
            edges_seen: Arc::new(AtomicUsize::new(0)),
            every_edge_from: EVERY_EDGE_FROM,
        }
    }

    /// The same registry, answering lookups of at least `users` users (and twice the edges)
    /// with every live edge: tests lower it to reach that path with few users.
    pub fn every_edge_from(mut self, users: usize) -> Self {
        self.every_edge_from = users.max(1);
        self
    }

    /// The live edges, in one round trip (their number is remembered for
    /// [`Registry::users_by_edge`]'s choice).
    async fn live_edges(&self, conn: &mut ConnectionManager) -> Result<Vec<String>, RegistryError> {
        let mut live: Vec<String> = LIVE_EDGES
            .key(self.edges_key())
            .arg(self.edge_key_prefix())
            .invoke_async(conn)
            .await
            .map_err(unavailable)?;
        live.sort_unstable();
        self.edges_seen.store(live.len(), Ordering::Relaxed);
        Ok(live)
    }

    fn load_key(&self, edge: &str) -> String {
        format!("{}:reg:n:{edge}", self.namespace)
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}:reg:u:{user}", self.namespace)
    }

    fn edge_key(&self, edge: &str) -> String {
        format!("{}{edge}", self.edge_key_prefix())
    }

    /// What an edge's address key is its id prefixed with.
    fn edge_key_prefix(&self) -> String {
        format!("{}:reg:e:", self.namespace)
    }

    /// The set of every edge that beat and has not said it is gone (some may have expired).
    fn edges_key(&self) -> String {
        format!("{}:reg:edges", self.namespace)
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
            .sadd(self.edges_key(), edge)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The edge is shutting down: its sessions go with it at once.
    pub async fn edge_gone(&self, edge: &str) -> Result<(), RegistryError> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .del(&[self.edge_key(edge), self.load_key(edge)])
            .ignore()
            .srem(self.edges_key(), edge)
            .ignore()
            .query_async(&mut conn)
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
        // The edges that beat, then which of them are still alive (their key has not
        // expired) and their session counts, in one MGET.
        let mut conn = self.conn.clone();
        let mut edges: Vec<String> = conn.smembers(self.edges_key()).await.map_err(unavailable)?;
        if edges.is_empty() {
            return Ok(Vec::new());
        }
        edges.sort();
        let keys: Vec<String> = edges
            .iter()
            .flat_map(|e| [self.edge_key(e), self.load_key(e)])
            .collect();
        let values: Vec<Option<String>> = conn.mget(&keys).await.map_err(unavailable)?;
        let mut live = Vec::with_capacity(edges.len());
        let mut dead = Vec::new();
        for (edge, pair) in edges.into_iter().zip(values.chunks(2)) {
            match pair {
                [Some(_), load] => live.push(EdgeLoad {
                    edge,
                    sessions: load.as_deref().and_then(|n| n.parse().ok()).unwrap_or(0),
                }),
                _ => dead.push(edge),
            }
        }
        for edge in dead {
            // Expired without saying so (crashed): forgotten (best effort), unless its key
            // is back by now (a heartbeat between the MGET and here, which added it again).
            let _: Result<i64, _> = FORGET_EXPIRED
                .key(self.edge_key(&edge))
                .key(self.edges_key())
                .arg(&edge)
                .invoke_async(&mut conn)
                .await;
        }
        self.edges_seen.store(live.len(), Ordering::Relaxed);
        Ok(live)
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
        let edges: Vec<&str> = all
            .iter()
            .flat_map(|m| m.values())
            .map(String::as_str)
            .collect();
        let live: HashSet<String> = self
            .alive(&mut conn, edges)
            .await?
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(all
            .into_iter()
            .map(|m| {
                let mut s: Vec<SessionInfo> = m
                    .into_iter()
                    .filter(|(_, e)| live.contains(e.as_str()))
                    .map(|(session, edge)| SessionInfo { session, edge })
                    .collect();
                s.sort_by(|a, b| a.session.cmp(&b.session));
                s
            })
            .collect())
    }

    /// Only the edges of each user's sessions (`HVALS`, not the session ids beside them),
    /// and no list of sessions per user: a worker asks this for every member of every
    /// message it pushes.
    async fn users_by_edge(&self, users: &[&str]) -> Result<UsersByEdge, RegistryError> {
        if users.is_empty() {
            return Ok(UsersByEdge::default());
        }
        let mut conn = self.conn.clone();
        let seen = self.edges_seen.load(Ordering::Relaxed);
        if users.len() >= self.every_edge_from.max(2 * seen) {
            let live = self.live_edges(&mut conn).await?;
            return Ok(UsersByEdge::every_user_on(live, users.len()));
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hvals(self.user_key(u));
        }
        let all: Vec<Vec<String>> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let live = self
            .alive(
                &mut conn,
                all.iter().flatten().map(String::as_str).collect(),
            )
            .await?;
        let mut out = UsersByEdge::default();
        for (i, edges) in all.iter().enumerate() {
            for edge in edges {
                if live.contains(edge.as_str()) {
                    out.add(edge, i);
                }
            }
        }
        Ok(out)
    }
}

impl RedisRegistry {
    /// Which of `edges` (repeats allowed) are alive: their address key has not expired
    /// (one `MGET`).
    async fn alive<'a>(
        &self,
        conn: &mut ConnectionManager,
        mut edges: Vec<&'a str>,
    ) -> Result<HashSet<&'a str>, RegistryError> {
        edges.sort_unstable();
        edges.dedup();
        if edges.is_empty() {
            return Ok(HashSet::new());
        }
        let keys: Vec<String> = edges.iter().map(|e| self.edge_key(e)).collect();
        let alive: Vec<Option<String>> = conn.mget(&keys).await.map_err(unavailable)?;
        Ok(edges
            .into_iter()
            .zip(alive)
            .filter(|(_, a)| a.is_some())
            .map(|(e, _)| e)
            .collect())
    }

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
