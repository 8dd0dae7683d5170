//! Engagement when roles run apart: edges publish, one engagement worker aggregates.
//!
//! - [`RemoteEngagement`] is what an edge (and a feed worker) uses: it checks what it can on
//!   its own (word counts; that the post exists, from the store, remembered for a minute so
//!   a typing signal never waits for a disk twice), then publishes the signal on one Redis
//!   pub/sub channel. Nothing is stored: losing a signal is harmless.
//! - [`EngagementWorker`] runs in the worker that has the `engagement` service. One of them
//!   at a time holds a lease in Redis and feeds the channel into an [`EngagementService`]
//!   (the same partitions as in one process), which publishes `engagement` frames to the
//!   subscribed edges through the HTTP edge link. Others wait to take over the lease.
//!   Subscriptions are leases the edges renew every heartbeat, kept in Redis too (a sorted
//!   set of `edge` + `post` scored by expiry): a new leader (or a restarted one) starts from
//!   that set, and the next heartbeat of each edge confirms it; a dead edge's subscriptions
//!   lapse.

use async_trait::async_trait;
use futures_util::StreamExt;
use hubbub_protocol::{ErrorCode, UserRef};
use hubbub_queue::clock::now_ms;
use hubbub_registry::{EdgeLink, Engagement, SignalError};
use hubbub_services::engagement::{EngagementConfig, EngagementService};
use hubbub_store::FeedStore;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a post's existence is remembered by an edge.
const KNOWN_FOR: Duration = Duration::from_secs(60);
/// Most posts whose existence an edge remembers.
const MAX_KNOWN: usize = 100_000;
/// The leader's lease, and how often it is renewed.
const LEASE: Duration = Duration::from_secs(5);
const RENEW_EVERY: Duration = Duration::from_millis(1500);
/// How soon a renewal that failed is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// A signal on the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Signal {
    Typing {
        user: UserRef,
        post: String,
        words: u32,
    },
    Subscribe {
        edge: String,
        posts: Vec<String>,
    },
    Renew {
        edge: String,
        posts: Vec<String>,
    },
    Unsubscribe {
        edge: String,
        posts: Vec<String>,
    },
    Changed {
        post: String,
        comments: Option<u64>,
    },
}

fn channel(namespace: &str) -> String {
    format!("{namespace}:eng:signals")
}

fn subs_key(namespace: &str) -> String {
    format!("{namespace}:eng:subs")
}

/// The edge's (and feed worker's) side.
#[derive(Clone)]
pub struct RemoteEngagement {
    conn: ConnectionManager,
    channel: String,
    subs: String,
    ttl: Duration,
    store: Arc<dyn FeedStore>,
    max_words: u32,
    /// The runtime config's limits, when followed live (the word cap is `max_text_chars`).
    limits: Option<hubbub_services::LiveLimits>,
    known: Arc<Mutex<HashMap<String, (bool, Instant)>>>,
}

impl RemoteEngagement {
    /// Publish on this connection, under `namespace`; posts are checked in `store`;
    /// subscriptions last `ttl` unless renewed.
    pub fn new(
        conn: ConnectionManager,
        namespace: &str,
        store: Arc<dyn FeedStore>,
        max_words: u32,
        ttl: Duration,
    ) -> Self {
        RemoteEngagement {
            conn,
            channel: channel(namespace),
            subs: subs_key(namespace),
            ttl,
            store,
            max_words,
            limits: None,
            known: Arc::default(),
        }
    }

    /// Take the word cap from the runtime config's limits, as the process applies them.
    pub fn with_live_limits(mut self, limits: hubbub_services::LiveLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    async fn publish(&self, signal: &Signal) -> Result<(), SignalError> {
        let json = serde_json::to_string(signal)
            .map_err(|e| SignalError::new(ErrorCode::Internal, e.to_string()))?;
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .publish(&self.channel, json)
            .await
            .map_err(|e| SignalError::new(ErrorCode::Unavailable, e.to_string()))?;
        Ok(())
    }

    /// Record (or renew) subscriptions in Redis.
    async fn keep(&self, edge: &str, posts: &[String]) -> Result<(), SignalError> {
        if posts.is_empty() {
            return Ok(());
        }
        let until = now_ms() + self.ttl.as_millis() as i64;
        let items: Vec<(i64, String)> = posts
            .iter()
            .map(|p| (until, format!("{edge}\t{p}")))
            .collect();
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .zadd_multiple(&self.subs, &items)
            .await
            .map_err(|e| SignalError::new(ErrorCode::Unavailable, e.to_string()))?;
        Ok(())
    }

    /// Whether a post exists (from memory when checked within a minute).
    async fn exists(&self, post: &str) -> Result<bool, SignalError> {
        if let Some((exists, at)) = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(post)
            && at.elapsed() < KNOWN_FOR
        {
            return Ok(*exists);
        }
        let exists = self
            .store
            .comment_count(post)
            .await
            .map_err(|e| SignalError::from(hubbub_services::Failure::from(e)))?
            .is_some();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() > MAX_KNOWN {
            known.retain(|_, (_, at)| at.elapsed() < KNOWN_FOR);
            // Every entry fresh: made-up ids at a high rate. Forget them all rather than grow;
            // the cost is a store read per post on the next typing.
            if known.len() > MAX_KNOWN {
                known.clear();
            }
        }
        known.insert(post.to_owned(), (exists, Instant::now()));
        Ok(exists)
    }
}

#[async_trait]
impl Engagement for RemoteEngagement {
    async fn subscribe(&self, edge: &str, posts: &[String]) -> Result<(), SignalError> {
        for p in posts {
            if !self.exists(p).await? {
                return Err(SignalError::new(
                    ErrorCode::NotFound,
                    format!("no post {p}"),
                ));
            }
        }
        self.keep(edge, posts).await?;
        self.publish(&Signal::Subscribe {
            edge: edge.to_owned(),
            posts: posts.to_vec(),
        })
        .await
    }

    async fn unsubscribe(&self, edge: &str, posts: &[String]) {
        let members: Vec<String> = posts.iter().map(|p| format!("{edge}\t{p}")).collect();
        let mut conn = self.conn.clone();
        let _: Result<i64, _> = conn.zrem(&self.subs, members).await;
        let _ = self
            .publish(&Signal::Unsubscribe {
                edge: edge.to_owned(),
                posts: posts.to_vec(),
            })
            .await;
    }

    async fn renew(&self, edge: &str, posts: &[String]) {
        if let Err(e) = self.keep(edge, posts).await {
            tracing::debug!(error = %e, "engagement renewal not recorded");
        }
        if let Err(e) = self
            .publish(&Signal::Renew {
                edge: edge.to_owned(),
                posts: posts.to_vec(),
            })
            .await
        {
            tracing::debug!(error = %e, "engagement renewal not published");
        }
    }

    async fn typing(&self, user: &UserRef, post: &str, words: u32) -> Result<(), SignalError> {
        let cap = hubbub_services::LiveLimits::word_cap(self.limits.as_ref(), self.max_words);
        if words > cap {
            return Err(SignalError::new(
                ErrorCode::BadRequest,
                format!("words must be at most {cap}"),
            ));
        }
        if !self.exists(post).await? {
            return Err(SignalError::new(
                ErrorCode::NotFound,
                format!("no post {post}"),
            ));
        }
        self.publish(&Signal::Typing {
            user: user.clone(),
            post: post.to_owned(),
            words,
        })
        .await
    }

    async fn post_changed(&self, post: &str, comments: Option<u64>) {
        if comments.is_none() {
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(post.to_owned(), (false, Instant::now()));
        }
        let _ = self
            .publish(&Signal::Changed {
                post: post.to_owned(),
                comments,
            })
            .await;
    }
}

/// The aggregating side: one leader at a time feeds the channel into an engagement service.
pub struct EngagementWorker {
    url: String,
    namespace: String,
    conn: ConnectionManager,
    store: Arc<dyn FeedStore>,
    link: Arc<dyn EdgeLink>,
    config: EngagementConfig,
    id: String,
}

impl EngagementWorker {
    /// A worker on the Redis at `url` (pub/sub needs its own connection) and `conn`.
    pub fn new(
        url: &str,
        namespace: &str,
        conn: ConnectionManager,
        store: Arc<dyn FeedStore>,
        link: Arc<dyn EdgeLink>,
        config: EngagementConfig,
    ) -> Self {
        EngagementWorker {
            url: url.to_owned(),
            namespace: namespace.to_owned(),
            conn,
            store,
            link,
            config,
            id: format!("{:016x}", fastrand::u64(..)),
        }
    }

    fn lease_key(&self) -> String {
        format!("{}:eng:leader", self.namespace)
    }

    /// Take or keep the lease: true while this worker leads, false while another does; an
    /// error when Redis did not answer (the lease may be either's).
    async fn lead(&self) -> Result<bool, redis::RedisError> {
        let script = redis::Script::new(
            r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1
elseif not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1
end
return 0",
        );
        let mut conn = self.conn.clone();
        let got: i64 = script
            .key(self.lease_key())
            .arg(&self.id)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(got == 1)
    }

    /// Lead when possible, until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let asked = Instant::now();
            if !matches!(self.lead().await, Ok(true)) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = cancel.cancelled() => break,
                }
            }
            tracing::info!(worker = %self.id, "leading engagement");
            let term = cancel.child_token();
            // The aggregator's partitions of this term: stopped and awaited before the next
            // term (or the end of `run`), so none outlives its lease.
            let partitions = tokio_util::task::TaskTracker::new();
            if let Err(e) = self.serve(&term, &partitions, asked).await {
                tracing::warn!(error = %e, "engagement channel lost; will lead again if possible");
            }
            term.cancel();
            partitions.close();
            partitions.wait().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = cancel.cancelled() => break,
            }
        }
        // Stopping: hand the lease over at once (a crash leaves it to expire).
        let release = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        let mut conn = self.conn.clone();
        let _: Result<i64, _> = release
            .key(self.lease_key())
            .arg(&self.id)
            .invoke_async(&mut conn)
            .await;
    }

    /// Consume the channel while the lease (taken by the call asked at `leased`) holds.
    async fn serve(
        &self,
        term: &CancellationToken,
        partitions: &tokio_util::task::TaskTracker,
        leased: Instant,
    ) -> Result<(), redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel(&self.namespace)).await?;
        let mut messages = pubsub.into_on_message();
        // Fresh state for each term: the edges' renewals rebuild the subscriptions.
        let service = EngagementService::start(
            self.store.clone(),
            self.link.clone(),
            self.config.clone(),
            partitions,
            term.clone(),
        );
        // Start from the subscriptions recorded in Redis (the edges confirm them on their
        // next heartbeat; lapsed ones go).
        let mut conn = self.conn.clone();
        let key = subs_key(&self.namespace);
        let now = now_ms();
        let _: i64 = conn.zrembyscore(&key, "-inf", now).await?;
        let live: Vec<String> = conn.zrangebyscore(&key, now, "+inf").await?;
        let mut by_edge: HashMap<String, Vec<String>> = HashMap::new();
        for m in live {
            if let Some((edge, post)) = m.split_once('\t') {
                by_edge
                    .entry(edge.to_owned())
                    .or_default()
                    .push(post.to_owned());
            }
        }
        for (edge, posts) in by_edge {
            service.renew(&edge, &posts).await;
        }
        let mut renew = tokio::time::interval(RENEW_EVERY);
        // When the last renewal that Redis confirmed was asked for: the lease holds until
        // `LEASE` after it. A renewal Redis does not answer (a slow moment, a dropped
        // connection) is tried again every `RETRY_EVERY` while the lease surely holds past
        // the next try; the term's state (who is writing where) would otherwise be lost to a
        // hiccup, and no frame would tell the watchers that those writers left.
        let mut renewed = leased;
        loop {
            tokio::select! {
                _ = term.cancelled() => return Ok(()),
                _ = renew.tick() => {
                    let asked = Instant::now();
                    match self.lead().await {
                        Ok(true) => renewed = asked,
                        Ok(false) => {
                            tracing::warn!(worker = %self.id, "engagement lease taken by another worker");
                            return Ok(());
                        }
                        Err(e) if renewed.elapsed() + RETRY_EVERY < LEASE => {
                            // Soon: the connection may need a few tries to come back.
                            tracing::debug!(error = %e, "engagement lease not renewed; trying again");
                            renew.reset_after(RETRY_EVERY);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(worker = %self.id, error = %e, "engagement lease lost");
                            return Ok(());
                        }
                    }
                    // Lapsed subscriptions leave the record too.
                    let _: Result<i64, _> = conn.zrembyscore(&key, "-inf", now_ms()).await;
                }
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub closed")));
                    };
                    let Ok(signal) = serde_json::from_slice::<Signal>(msg.get_payload_bytes()) else {
                        tracing::debug!("undecodable engagement signal dropped");
                        continue;
                    };
                    apply(&service, signal).await;
                }
            }
        }
    }
}

async fn apply(service: &EngagementService, signal: Signal) {
    let r = match signal {
        Signal::Typing { user, post, words } => service.typing(&user, &post, words).await,
        Signal::Subscribe { edge, posts } | Signal::Renew { edge, posts } => {
            service.renew(&edge, &posts).await;
            Ok(())
        }
        Signal::Unsubscribe { edge, posts } => {
            service.unsubscribe(&edge, &posts).await;
            Ok(())
        }
        Signal::Changed { post, comments } => {
            service.post_changed(&post, comments).await;
            Ok(())
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "engagement signal refused");
    }
}
