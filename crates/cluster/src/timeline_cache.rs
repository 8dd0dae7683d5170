//! The precomputed-timeline cache in Redis, for roles running apart: one JSON value per user
//! and stage, expiring after a TTL (the scheduler recomputes active users' timelines well
//! before).

use async_trait::async_trait;
use hubbub_services::timeline::{CacheError, CachedTimeline, Stage, TimelineCache};
use std::sync::Arc;
use std::time::Duration;

/// The cache in Redis (roles running apart): one JSON value per user and stage, expiring
/// after `ttl` (the scheduler recomputes active users' timelines well before).
#[derive(Clone)]
pub struct RedisTimelineCache {
    conn: redis::aio::ConnectionManager,
    namespace: String,
    ttl: Duration,
}

impl RedisTimelineCache {
    /// A cache on this connection, keys under `namespace`.
    pub fn new(conn: redis::aio::ConnectionManager, namespace: &str, ttl: Duration) -> Self {
        RedisTimelineCache {
            conn,
            namespace: namespace.to_owned(),
            ttl,
        }
    }

    fn key(&self, user: &str, stage: Stage) -> String {
        let s = match stage {
            Stage::Chronological => "c",
            Stage::Ranked => "r",
        };
        format!("{}:tl:{s}:{user}", self.namespace)
    }
}

#[async_trait]
impl TimelineCache for RedisTimelineCache {
    async fn put(
        &self,
        user: &str,
        stage: Stage,
        timeline: Arc<CachedTimeline>,
    ) -> Result<(), CacheError> {
        use redis::AsyncCommands;
        let json = serde_json::to_string(&*timeline).map_err(|e| CacheError(e.to_string()))?;
        let mut conn = self.conn.clone();
        let _: () = conn
            .pset_ex(
                self.key(user, stage),
                json,
                self.ttl.as_millis().max(1) as u64,
            )
            .await
            .map_err(|e| CacheError(e.to_string()))?;
        Ok(())
    }

    async fn get(
        &self,
        user: &str,
        stage: Stage,
    ) -> Result<Option<Arc<CachedTimeline>>, CacheError> {
        use redis::AsyncCommands;
        let mut conn = self.conn.clone();
        let json: Option<String> = conn
            .get(self.key(user, stage))
            .await
            .map_err(|e| CacheError(e.to_string()))?;
        json.map(|j| serde_json::from_str(&j).map(Arc::new))
            .transpose()
            .map_err(|e| CacheError(e.to_string()))
    }
}
