//! Precomputed timelines: the timeline computer, personalization, the cache, and the fetch.
//!
//! # The path of a timeline
//! 1. Something asks for a user's timeline to be recomputed by putting the user's id on the
//!    `precompute` queue: the scheduler, for every recently active user, every
//!    `precompute_interval_s`; the feed service, when a followee posts or deletes a post and
//!    when the user follows or unfollows someone. [`request_precompute`] deduplicates per
//!    user within a short window (and runs at its end), so a burst of posts costs one
//!    computation that sees them all.
//! 2. The **timeline computer** ([`TimelineComputer`]) takes it, gathers the newest posts of
//!    the user's followees (and the user's own) into a chronological list, stores it in the
//!    [`TimelineCache`] with the store's post watermark, and forwards the user to the
//!    `personalize` queue.
//! 3. **Personalization** ([`Personalizer`]) reorders the chronological list with a
//!    [`Ranker`] and stores the result under the user's id.
//! 4. **Fetch** ([`TimelineReader`], the edge's `timeline.get` and the push after `hello`)
//!    reads the ranked list from the cache and applies real-time fixups: posts created after
//!    the watermark by the user's followees go first (one indexed read of what is new, not of
//!    every followee), and the page is read back from the store, so deleted posts are gone
//!    and counts are current. Nothing is computed from scratch on the request path, except
//!    for a user who has no timeline yet (a miss, computed once and counted in
//!    `hubbub_timeline_misses_total`).

use crate::Failure;
use async_trait::async_trait;
use hubbub_protocol::{ErrorCode, Post};
use hubbub_queue::clock::now_ms;
use hubbub_queue::{Outgoing, Queue, ReceiveOptions, SendOptions};
use hubbub_registry::{SignalError, Timelines};
use hubbub_store::{FeedStore, StoredPost};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The queue of users whose timeline should be recomputed.
pub const PRECOMPUTE_QUEUE: &str = "precompute";
/// The queue between the timeline computer and personalization.
pub const PERSONALIZE_QUEUE: &str = "personalize";
/// Most posts a timeline keeps.
pub const DEFAULT_TIMELINE_LEN: usize = 500;
/// Most fresh posts (newer than the precompute) a fetch adds.
const FRESH_LIMIT: usize = 100;

/// One post of a cached timeline: what ranking needs, and the id to read it back by.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelineEntry {
    /// Post id.
    pub id: String,
    /// Author.
    pub author: String,
    /// Creation time.
    pub ts: i64,
    /// Likes when computed.
    pub likes: u64,
    /// Comments when computed.
    pub comments: u64,
}

impl From<&StoredPost> for TimelineEntry {
    fn from(p: &StoredPost) -> Self {
        TimelineEntry {
            id: p.post.id.clone(),
            author: p.post.author.clone(),
            ts: p.post.ts,
            likes: p.post.likes,
            comments: p.post.comments,
        }
    }
}

/// A timeline as stored in the cache.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CachedTimeline {
    /// Posts, in timeline order.
    pub entries: Vec<TimelineEntry>,
    /// When it was computed.
    pub computed_ts: i64,
    /// The highest post counter when it was computed: newer posts are added at fetch.
    pub watermark: u64,
}

/// Which list of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The timeline computer's output, newest first.
    Chronological,
    /// Personalization's output: what users see.
    Ranked,
}

/// Why the cache failed.
#[derive(Debug, thiserror::Error)]
#[error("timeline cache unavailable: {0}")]
pub struct CacheError(pub String);

/// Where precomputed timelines live: in process for `hubbub serve`; `hubbub_cluster` has the
/// Redis one for roles running apart.
#[async_trait]
pub trait TimelineCache: Send + Sync {
    /// Store a user's list, unless the one stored was computed later (a computation that
    /// read before a follow must not replace one that read after it: the two can finish in
    /// either order).
    async fn put(
        &self,
        user: &str,
        stage: Stage,
        timeline: Arc<CachedTimeline>,
    ) -> Result<(), CacheError>;
    /// A user's list, if computed.
    async fn get(
        &self,
        user: &str,
        stage: Stage,
    ) -> Result<Option<Arc<CachedTimeline>>, CacheError>;
}

/// The in-process cache.
#[derive(Debug, Default)]
pub struct LocalTimelineCache {
    map: RwLock<HashMap<(String, Stage), Arc<CachedTimeline>>>,
}

#[async_trait]
impl TimelineCache for LocalTimelineCache {
    async fn put(
        &self,
        user: &str,
        stage: Stage,
        timeline: Arc<CachedTimeline>,
    ) -> Result<(), CacheError> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let key = (user.to_owned(), stage);
        if map
            .get(&key)
            .is_none_or(|old| old.computed_ts <= timeline.computed_ts)
        {
            map.insert(key, timeline);
        }
        Ok(())
    }

    async fn get(
        &self,
        user: &str,
        stage: Stage,
    ) -> Result<Option<Arc<CachedTimeline>>, CacheError> {
        Ok(self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(user.to_owned(), stage))
            .cloned())
    }
}

/// Orders a user's candidate posts. Pluggable: personalization takes any ranker.
pub trait Ranker: Send + Sync {
    /// Reorder `entries` (newest first on input) for `user`, as of `now_ms`.
    fn rank(&self, user: &str, now_ms: i64, entries: &mut [TimelineEntry]);
}

/// The default ranker: recency blended with engagement, as Hacker News does it:
/// `score = (1 + likes + 2·comments) / (age_hours + 2)^gravity`, highest first, newer first
/// on ties. With the default gravity 1.5, a post needs about 2.8× the engagement of one
/// posted an hour later (at two hours of age) to stay above it.
#[derive(Debug, Clone, Copy)]
pub struct RecencyEngagement {
    /// How fast age wins over engagement.
    pub gravity: f64,
}

impl Default for RecencyEngagement {
    fn default() -> Self {
        RecencyEngagement { gravity: 1.5 }
    }
}

impl RecencyEngagement {
    /// One post's score.
    pub fn score(&self, now_ms: i64, e: &TimelineEntry) -> f64 {
        let age_h = ((now_ms - e.ts).max(0) as f64) / 3_600_000.0;
        (1.0 + e.likes as f64 + 2.0 * e.comments as f64) / (age_h + 2.0).powf(self.gravity)
    }
}

impl Ranker for RecencyEngagement {
    fn rank(&self, _user: &str, now_ms: i64, entries: &mut [TimelineEntry]) {
        entries.sort_by(|a, b| {
            self.score(now_ms, b)
                .total_cmp(&self.score(now_ms, a))
                .then(b.ts.cmp(&a.ts))
        });
    }
}

/// Put users on the `precompute` queue, once per user per `window`: time is cut into
/// windows, the first change of a window enqueues the user with a delay to the window's end
/// and later ones are deduplicated, so a burst of changes costs one computation that runs
/// after all of them (at most one window late).
pub async fn request_precompute(
    queue: &dyn Queue,
    users: &[String],
    window: Duration,
) -> Result<(), hubbub_queue::QueueError> {
    let window_ms = window.as_millis().max(1) as i64;
    let now = now_ms();
    let bucket = now / window_ms;
    let delay = Duration::from_millis(((bucket + 1) * window_ms - now).max(0) as u64);
    for chunk in users.chunks(500) {
        let batch = chunk
            .iter()
            .map(|u| Outgoing {
                body: u.as_bytes().to_vec(),
                opts: SendOptions::default()
                    .dedupe(format!("precompute:{u}:{bucket}"))
                    .delay(delay)
                    .key(u.clone()),
            })
            .collect();
        queue.send_batch(PRECOMPUTE_QUEUE, batch).await?;
    }
    Ok(())
}

/// Timeline settings.
#[derive(Debug, Clone)]
pub struct TimelineConfig {
    /// Most posts a timeline keeps.
    pub len: usize,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        TimelineConfig {
            len: DEFAULT_TIMELINE_LEN,
        }
    }
}

/// Computing timelines: the two stages, shared by the workers and by a fetch that misses.
#[derive(Clone)]
pub struct Timeline {
    store: Arc<dyn FeedStore>,
    cache: Arc<dyn TimelineCache>,
    ranker: Arc<dyn Ranker>,
    config: TimelineConfig,
}

impl Timeline {
    /// Timelines over this store and cache, ranked by `ranker`.
    pub fn new(
        store: Arc<dyn FeedStore>,
        cache: Arc<dyn TimelineCache>,
        ranker: Arc<dyn Ranker>,
        config: TimelineConfig,
    ) -> Self {
        Timeline {
            store,
            cache,
            ranker,
            config,
        }
    }

    /// The timeline computer's step: the chronological list, stored.
    pub async fn compute(&self, user: &str) -> Result<Arc<CachedTimeline>, Failure> {
        let computed_ts = now_ms();
        let (posts, watermark) = self
            .store
            .timeline_candidates(user, self.config.len)
            .await?;
        let timeline = Arc::new(CachedTimeline {
            entries: posts.iter().map(TimelineEntry::from).collect(),
            computed_ts,
            watermark,
        });
        self.cache
            .put(user, Stage::Chronological, timeline.clone())
            .await?;
        metrics::counter!(hubbub_protocol::metrics::TIMELINE_COMPUTED).increment(1);
        Ok(timeline)
    }

    /// Personalization's step: rank the chronological list and store it.
    pub async fn personalize(
        &self,
        user: &str,
        chronological: Option<Arc<CachedTimeline>>,
    ) -> Result<Arc<CachedTimeline>, Failure> {
        let chronological = match chronological {
            Some(c) => c,
            None => match self.cache.get(user, Stage::Chronological).await? {
                Some(c) => c,
                None => self.compute(user).await?,
            },
        };
        let mut ranked = (*chronological).clone();
        self.ranker.rank(user, now_ms(), &mut ranked.entries);
        let ranked = Arc::new(ranked);
        self.cache.put(user, Stage::Ranked, ranked.clone()).await?;
        Ok(ranked)
    }

    /// Fetch with fixups (see the module docs).
    pub async fn fetch(
        &self,
        user: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Post>, i64), Failure> {
        let cached = match self.cache.get(user, Stage::Ranked).await? {
            Some(t) => t,
            None => {
                metrics::counter!(hubbub_protocol::metrics::TIMELINE_MISSES).increment(1);
                let chronological = self.compute(user).await?;
                self.personalize(user, Some(chronological)).await?
            }
        };
        let fresh = self
            .store
            .posts_since(user, cached.watermark, FRESH_LIMIT)
            .await?;
        let mut seen = HashSet::new();
        let ids: Vec<&str> = fresh
            .iter()
            .map(|p| p.post.id.as_str())
            .chain(cached.entries.iter().map(|e| e.id.as_str()))
            .filter(|id| seen.insert(*id))
            .collect();
        let start = match before {
            None => 0,
            Some(b) => match ids.iter().position(|id| *id == b) {
                Some(i) => i + 1,
                None => {
                    return Err(Failure::new(
                        ErrorCode::NotFound,
                        format!("post {b} is not in the timeline"),
                    ));
                }
            },
        };
        let mut items = Vec::with_capacity(limit);
        let mut rest = &ids[start.min(ids.len())..];
        while items.len() < limit && !rest.is_empty() {
            // Read a little more than needed: some may have been deleted.
            let take = (limit - items.len() + 8).min(rest.len());
            let chunk: Vec<String> = rest[..take].iter().map(|s| (*s).to_owned()).collect();
            rest = &rest[take..];
            items.extend(self.store.posts(&chunk).await?);
        }
        items.truncate(limit);
        Ok((items, cached.computed_ts))
    }
}

impl From<CacheError> for Failure {
    fn from(e: CacheError) -> Self {
        tracing::warn!(error = %e, "timeline cache");
        Failure::new(ErrorCode::Unavailable, e.to_string())
    }
}

/// The edge's view of timelines ([`Timelines`]).
#[derive(Clone)]
pub struct TimelineReader {
    timeline: Timeline,
}

impl TimelineReader {
    /// A reader over these timelines.
    pub fn new(timeline: Timeline) -> Self {
        TimelineReader { timeline }
    }
}

/// The first page pushed after `hello`.
const WELCOME_PAGE: usize = 50;

#[async_trait]
impl Timelines for TimelineReader {
    async fn timeline(
        &self,
        user: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Post>, i64), SignalError> {
        self.timeline
            .fetch(user, before, limit)
            .await
            .map_err(SignalError::from)
    }

    async fn welcome(&self, user: &str) -> Result<(Vec<Post>, i64), SignalError> {
        if let Err(e) = self.timeline.store.touch_active(user).await {
            tracing::debug!(error = %e, "activity not recorded");
        }
        self.timeline(user, None, WELCOME_PAGE).await
    }
}

/// Which stage a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Compute,
    Personalize,
}

async fn run_stage(
    timeline: Timeline,
    queue: Arc<dyn Queue>,
    step: Step,
    cancel: CancellationToken,
) {
    let from = match step {
        Step::Compute => PRECOMPUTE_QUEUE,
        Step::Personalize => PERSONALIZE_QUEUE,
    };
    let opts = ReceiveOptions {
        max: 32,
        wait: Duration::from_millis(500),
        visibility: Duration::from_secs(60),
        max_run: 1,
    };
    while !cancel.is_cancelled() {
        let got = tokio::select! {
            got = queue.receive(from, opts) => got,
            _ = cancel.cancelled() => break,
        };
        let deliveries = match got {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, queue = from, "receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut done = Vec::with_capacity(deliveries.len());
        for d in &deliveries {
            let Ok(user) = std::str::from_utf8(&d.body) else {
                tracing::error!(queue = from, "undecodable user id dropped");
                done.push(d.receipt.clone());
                continue;
            };
            let ok = match step {
                Step::Compute => match timeline.compute(user).await {
                    Ok(_) => queue
                        .send(
                            PERSONALIZE_QUEUE,
                            d.body.clone(),
                            SendOptions::default().key(user.to_owned()),
                        )
                        .await
                        .map_err(|e| tracing::warn!(error = %e, "personalize not enqueued"))
                        .is_ok(),
                    Err(f) => {
                        tracing::warn!(error = %f.message, %user, "timeline not computed");
                        false
                    }
                },
                Step::Personalize => match timeline.personalize(user, None).await {
                    Ok(_) => true,
                    Err(f) => {
                        tracing::warn!(error = %f.message, %user, "timeline not ranked");
                        false
                    }
                },
            };
            // Failures stay in the queue, to be retried after the visibility timeout.
            if ok {
                done.push(d.receipt.clone());
            }
        }
        if let Err(e) = queue.ack_batch(from, &done).await {
            tracing::warn!(error = %e, queue = from, "ack failed; the work will be repeated");
        }
    }
}

/// The timeline computer: `precompute` → chronological list → `personalize`.
pub struct TimelineComputer;

impl TimelineComputer {
    /// Take work from `precompute` until cancelled.
    pub async fn run(timeline: Timeline, queue: Arc<dyn Queue>, cancel: CancellationToken) {
        run_stage(timeline, queue, Step::Compute, cancel).await
    }
}

/// Personalization: `personalize` → ranked list in the cache.
pub struct Personalizer;

impl Personalizer {
    /// Take work from `personalize` until cancelled.
    pub async fn run(timeline: Timeline, queue: Arc<dyn Queue>, cancel: CancellationToken) {
        run_stage(timeline, queue, Step::Personalize, cancel).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, age_h: i64, likes: u64, comments: u64) -> TimelineEntry {
        TimelineEntry {
            id: id.into(),
            author: "a".into(),
            ts: 100 * 3_600_000 - age_h * 3_600_000,
            likes,
            comments,
        }
    }

    #[test]
    fn recency_wins_without_engagement_and_engagement_lifts_older_posts() {
        let now = 100 * 3_600_000;
        let ranker = RecencyEngagement::default();
        let mut plain = vec![entry("old", 5, 0, 0), entry("new", 1, 0, 0)];
        ranker.rank("u", now, &mut plain);
        assert_eq!(plain[0].id, "new");
        let mut liked = vec![entry("new", 1, 0, 0), entry("old", 5, 10, 5)];
        ranker.rank("u", now, &mut liked);
        assert_eq!(liked[0].id, "old", "20 points of engagement beat 4 hours");
        let mut tie = vec![entry("a", 2, 0, 0), entry("b", 2, 0, 0)];
        tie[1].ts += 1;
        ranker.rank("u", now, &mut tie);
        assert_eq!(tie[0].id, "b", "newer first on equal scores");
    }
}
