//! The precomputed-timeline cache in Redis, for roles running apart: one JSON value per user
//! and stage, expiring after a TTL (the scheduler recomputes active users' timelines well
//! before).

use async_trait::async_trait;
use hubbub_services::timeline::{CacheError, CachedTimeline, Stage, TimelineCache};
use std::sync::Arc;
use std::time::Duration;

/// `SET key json PX ttl` unless the stored value's `computed_ts` is later than ARGV[2].
const PUT_IF_NOT_OLDER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' and tonumber(old.computed_ts) and tonumber(old.computed_ts) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

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
        let json = serde_json::to_string(&*timeline).map_err(|e| CacheError(e.to_string()))?;
        let mut conn = self.conn.clone();
        // Set unless the stored one was computed later (compared inside Redis, atomically).
        let _: i64 = redis::Script::new(PUT_IF_NOT_OLDER)
            .key(self.key(user, stage))
            .arg(json)
            .arg(timeline.computed_ts)
            .arg(self.ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
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
