//! Engagement: who is writing a comment on a post, live.
//!
//! # Shape
//! The service is a set of partitions, each a task that owns the state of the posts whose id
//! hashes to it (one partition holds a post's whole state, so nothing is shared or locked).
//! An [`Aggregator`] is one partition's state: per post, a sliding window (`window_s`) of
//! writers with their word counts, the post's comment count, and the edges subscribed to it.
//! Every [`TICK`] it expires what left the window, and publishes an `engagement` frame for
//! each post that changed, at most once per second per post, as one batch per edge.
//! Partitions keep time on tokio's clock (milliseconds since the service started), so tests
//! run the window, the leases and the publication rate on paused time.
//!
//! # The ephemeral path
//! `comment.typing` never waits for a disk: a partition checks the post against its memory.
//! Only the first time a partition meets a post (or after it forgot an idle one) is the
//! post's comment count read from the store. A full partition inbox drops typing signals
//! (counted in `hubbub_engagement_dropped_total`): losing one is harmless.
//!
//! # Subscriptions are leases
//! An edge subscribes to a post when its first session watches it, and renews every post it
//! watches each heartbeat; a subscription not renewed within `subscription_ttl` lapses. So a
//! restarted engagement service has every subscription back within one heartbeat, and a dead
//! edge's subscriptions lapse with no one telling. A delivery to an edge that is gone drops
//! its subscriptions at once.
//!
//! When roles run apart, `hubbub_cluster::engagement` carries the signals from the edges to the one worker
//! that aggregates them.

use async_trait::async_trait;
use hubbub_protocol::internal::ToEdge;
use hubbub_protocol::{ErrorCode, ServerFrame, TopWriter, UserRef};
use hubbub_registry::{EdgeLink, Engagement, SignalError};
use hubbub_store::FeedStore;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a partition expires and publishes.
pub const TICK: Duration = Duration::from_millis(25);
/// At most one event per post per this long.
const PUBLISH_EVERY_MS: i64 = 1000;
/// How long a loaded post is kept for the request that loaded it. A caller loads a post (one
/// command to the partition), then subscribes or types (another): a tick between the two used
/// to drop the post again, having neither watchers nor writers yet, and the subscription was
/// then refused as unknown and lost (seen under load in CI).
const LOAD_GRACE_MS: i64 = 10_000;
/// How long a partition remembers that a post does not exist.
const TOMBSTONE_MS: i64 = 10 * 60 * 1000;
/// Most tombstones (deleted or unknown posts) one partition keeps: typing on made-up ids
/// must not grow memory. Past it they are all forgotten (the store is asked again).
const MAX_TOMBSTONES: usize = 100_000;
const INBOX: usize = 16 * 1024;

/// Engagement settings.
#[derive(Debug, Clone)]
pub struct EngagementConfig {
    /// The sliding window, in seconds.
    pub window_s: u32,
    /// How many writers `top` lists.
    pub top_n: usize,
    /// Partitions (tasks), each owning a share of the posts.
    pub partitions: usize,
    /// A subscription not renewed within this long lapses.
    pub subscription_ttl: Duration,
    /// The largest word count accepted (when `limits` is not set).
    pub max_words: u32,
    /// The runtime config's limits, followed live: the word cap is their `max_text_chars`.
    pub limits: Option<crate::LiveLimits>,
}

impl EngagementConfig {
    /// The largest word count accepted now.
    pub fn word_cap(&self) -> u32 {
        crate::LiveLimits::word_cap(self.limits.as_ref(), self.max_words)
    }
}

impl Default for EngagementConfig {
    fn default() -> Self {
        EngagementConfig {
            window_s: 300,
            top_n: 10,
            partitions: 2,
            subscription_ttl: Duration::from_secs(30),
            max_words: 4000,
            limits: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Writer {
    handle: String,
    words: u32,
    last_ms: i64,
}

#[derive(Debug, Default)]
struct PostState {
    writers: HashMap<String, Writer>,
    comments: u64,
    /// edge → when its subscription lapses.
    subs: HashMap<String, i64>,
    dirty: bool,
    /// When its last event was published; `None`: never.
    last_published: Option<i64>,
    /// When it was last loaded from the store: kept at least [`LOAD_GRACE_MS`] after, with no
    /// one watching and no one writing, for the subscription or typing that loaded it.
    loaded_ms: i64,
}

/// What a partition knows of a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// It exists.
    Live,
    /// It was deleted, or never existed.
    Gone,
    /// Not in memory: ask the store.
    Unknown,
}

/// One partition's state. Every method takes the time, so it is tested without a clock: a
/// time is milliseconds on any clock that never goes back (the service's counts from its
/// start).
#[derive(Debug)]
pub struct Aggregator {
    config: EngagementConfig,
    posts: HashMap<String, PostState>,
    gone: HashMap<String, i64>,
}

impl Aggregator {
    /// An empty partition.
    pub fn new(config: EngagementConfig) -> Self {
        Aggregator {
            config,
            posts: HashMap::new(),
            gone: HashMap::new(),
        }
    }

    /// What this partition knows of `post`.
    pub fn known(&self, post: &str) -> Known {
        if self.posts.contains_key(post) {
            Known::Live
        } else if self.gone.contains_key(post) {
            Known::Gone
        } else {
            Known::Unknown
        }
    }

    /// The store says `post` exists with this many comments (`None`: it does not).
    pub fn load(&mut self, post: &str, comments: Option<u64>, now: i64) {
        match comments {
            Some(c) => {
                self.gone.remove(post);
                let state = self.posts.entry(post.to_owned()).or_default();
                state.comments = c;
                state.loaded_ms = now;
            }
            None => {
                self.posts.remove(post);
                if self.gone.len() >= MAX_TOMBSTONES {
                    self.gone.retain(|_, at| now - *at < TOMBSTONE_MS);
                    if self.gone.len() >= MAX_TOMBSTONES {
                        self.gone.clear();
                    }
                }
                self.gone.insert(post.to_owned(), now);
            }
        }
    }

    /// A comment was added (the new count) or the post deleted (`None`).
    pub fn post_changed(&mut self, post: &str, comments: Option<u64>, now: i64) {
        match (comments, self.posts.get_mut(post)) {
            (Some(c), Some(state)) => {
                if state.comments != c {
                    state.comments = c;
                    state.dirty = true;
                }
            }
            (Some(_), None) => {} // not watched or written here: nothing to keep
            (None, _) => self.load(post, None, now),
        }
    }

    /// `user` has typed `words` words of a comment on `post`. Returns what was known of the
    /// post: only `Live` applied it.
    pub fn typing(&mut self, post: &str, user: &UserRef, words: u32, now: i64) -> Known {
        let known = self.known(post);
        if let Some(state) = self.posts.get_mut(post) {
            match state.writers.get_mut(&user.id) {
                Some(w) => {
                    if w.words != words {
                        w.words = words;
                        state.dirty = true;
                    }
                    w.last_ms = now;
                }
                None => {
                    state.writers.insert(
                        user.id.clone(),
                        Writer {
                            handle: user.handle.clone(),
                            words,
                            last_ms: now,
                        },
                    );
                    state.dirty = true;
                }
            }
        }
        known
    }

    /// Subscribe (or renew) `edge` to `post`, which must be loaded. Returns false if the post
    /// is not in memory (load it first).
    pub fn subscribe(&mut self, edge: &str, post: &str, now: i64) -> bool {
        let ttl = self.config.subscription_ttl.as_millis() as i64;
        let Some(state) = self.posts.get_mut(post) else {
            return false;
        };
        let new = state.subs.insert(edge.to_owned(), now + ttl).is_none();
        // A new edge gets the current state at the next publication.
        if new && (!state.writers.is_empty() || state.comments > 0) {
            state.dirty = true;
        }
        true
    }

    /// `edge` no longer watches `post`.
    pub fn unsubscribe(&mut self, edge: &str, post: &str) {
        if let Some(state) = self.posts.get_mut(post) {
            state.subs.remove(edge);
        }
    }

    /// `edge` is gone: drop all its subscriptions.
    pub fn drop_edge(&mut self, edge: &str) {
        for state in self.posts.values_mut() {
            state.subs.remove(edge);
        }
    }

    /// Edges subscribed to `post`.
    pub fn subscribers(&self, post: &str) -> Vec<String> {
        self.posts
            .get(post)
            .map(|s| s.subs.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Expire writers and subscriptions, forget idle posts, and return the frames to publish
    /// now, per edge.
    pub fn tick(&mut self, now: i64) -> HashMap<String, Vec<ServerFrame>> {
        let window_ms = self.config.window_s as i64 * 1000;
        let mut out: HashMap<String, Vec<ServerFrame>> = HashMap::new();
        self.gone.retain(|_, at| now - *at < TOMBSTONE_MS);
        self.posts.retain(|post, state| {
            let before = state.writers.len();
            state.writers.retain(|_, w| now - w.last_ms < window_ms);
            if state.writers.len() != before {
                state.dirty = true;
            }
            state.subs.retain(|_, until| *until > now);
            if state.subs.is_empty() {
                // No one to tell; keep the window only while it has writers (or was just
                // loaded for someone about to subscribe or type).
                state.dirty = false;
                return !state.writers.is_empty() || now - state.loaded_ms < LOAD_GRACE_MS;
            }
            let due = state
                .last_published
                .is_none_or(|at| now - at >= PUBLISH_EVERY_MS);
            if state.dirty && due {
                state.dirty = false;
                state.last_published = Some(now);
                let frame = frame(post, state, &self.config);
                for edge in state.subs.keys() {
                    out.entry(edge.clone()).or_default().push(frame.clone());
                }
            }
            true
        });
        out
    }
}

/// The `engagement` frame of a post's state.
fn frame(post: &str, state: &PostState, config: &EngagementConfig) -> ServerFrame {
    let mut top: Vec<(&String, &Writer)> = state.writers.iter().collect();
    let n = config.top_n.min(top.len());
    let order = |a: &(&String, &Writer), b: &(&String, &Writer)| {
        b.1.words
            .cmp(&a.1.words)
            .then(b.1.last_ms.cmp(&a.1.last_ms))
            .then(a.0.cmp(b.0))
    };
    if n > 0 && n < top.len() {
        top.select_nth_unstable_by(n - 1, order);
        top.truncate(n);
    }
    top.sort_by(order);
    ServerFrame::Engagement {
        post: post.to_owned(),
        window_s: config.window_s,
        writers: state.writers.len() as u32,
        comments: state.comments,
        top: top
            .into_iter()
            .map(|(user, w)| TopWriter {
                user: user.clone(),
                handle: w.handle.clone(),
                words: w.words,
            })
            .collect(),
    }
}

enum Cmd {
    Typing {
        post: String,
        user: UserRef,
        words: u32,
        reply: Option<oneshot::Sender<Known>>,
    },
    Load {
        post: String,
        comments: Option<u64>,
    },
    Subscribe {
        edge: String,
        posts: Vec<String>,
        /// The posts not in memory (to be loaded, then subscribed again).
        reply: oneshot::Sender<Vec<String>>,
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

/// The engagement service: partitions, and the [`Engagement`] interface edges use.
#[derive(Clone)]
pub struct EngagementService {
    partitions: Arc<Vec<mpsc::Sender<Cmd>>>,
    store: Arc<dyn FeedStore>,
    config: EngagementConfig,
}

impl EngagementService {
    /// Start the partitions, as tasks of `tracker`; they publish through `link` until
    /// `cancel`.
    pub fn start(
        store: Arc<dyn FeedStore>,
        link: Arc<dyn EdgeLink>,
        config: EngagementConfig,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let origin = Instant::now();
        let partitions = (0..config.partitions.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(INBOX);
                tracker.spawn(run_partition(
                    Aggregator::new(config.clone()),
                    rx,
                    link.clone(),
                    origin,
                    cancel.clone(),
                ));
                tx
            })
            .collect();
        EngagementService {
            partitions: Arc::new(partitions),
            store,
            config,
        }
    }

    fn partition(&self, post: &str) -> &mpsc::Sender<Cmd> {
        // SipHash with fixed keys: every process maps a post to the same partition.
        let mut h = std::hash::DefaultHasher::new();
        post.hash(&mut h);
        &self.partitions[(h.finish() % self.partitions.len() as u64) as usize]
    }

    /// Posts grouped by partition.
    fn by_partition(&self, posts: &[String]) -> HashMap<usize, Vec<String>> {
        let mut out: HashMap<usize, Vec<String>> = HashMap::new();
        for p in posts {
            let tx = self.partition(p);
            let i = self
                .partitions
                .iter()
                .position(|t| t.same_channel(tx))
                .unwrap_or(0);
            out.entry(i).or_default().push(p.clone());
        }
        out
    }

    async fn send(&self, post: &str, cmd: Cmd) {
        if self.partition(post).send(cmd).await.is_err() {
            tracing::debug!("engagement partition stopped");
        }
    }

    /// Read posts' comment counts and hand them to their partitions; the missing ones.
    async fn load(&self, posts: &[String]) -> Result<Vec<String>, SignalError> {
        let mut missing = Vec::new();
        for post in posts {
            let comments = self
                .store
                .comment_count(post)
                .await
                .map_err(|e| SignalError::from(crate::Failure::from(e)))?;
            if comments.is_none() {
                missing.push(post.clone());
            }
            self.send(
                post,
                Cmd::Load {
                    post: post.clone(),
                    comments,
                },
            )
            .await;
        }
        Ok(missing)
    }

    /// Subscribe; the posts that were not in memory.
    async fn subscribe_loaded(&self, edge: &str, posts: &[String]) -> Vec<String> {
        let mut unknown = Vec::new();
        for (i, posts) in self.by_partition(posts) {
            let (tx, rx) = oneshot::channel();
            let cmd = Cmd::Subscribe {
                edge: edge.to_owned(),
                posts,
                reply: tx,
            };
            if self.partitions[i].send(cmd).await.is_ok()
                && let Ok(u) = rx.await
            {
                unknown.extend(u);
            }
        }
        unknown
    }

    async fn subscribe_all(&self, edge: &str, posts: &[String]) -> Result<(), SignalError> {
        let unknown = self.subscribe_loaded(edge, posts).await;
        if unknown.is_empty() {
            return Ok(());
        }
        let missing = self.load(&unknown).await?;
        let present: Vec<String> = unknown
            .into_iter()
            .filter(|p| !missing.contains(p))
            .collect();
        self.subscribe_loaded(edge, &present).await;
        match missing.first() {
            Some(p) => Err(SignalError::new(
                ErrorCode::NotFound,
                format!("no post {p}"),
            )),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Engagement for EngagementService {
    async fn subscribe(&self, edge: &str, posts: &[String]) -> Result<(), SignalError> {
        // Check first, so that a bad id subscribes nothing.
        let mut missing = Vec::new();
        for post in posts {
            match self.store.comment_count(post).await {
                Ok(Some(_)) => {}
                Ok(None) => missing.push(post.clone()),
                Err(e) => {
                    return Err(crate::Failure::from(e).into());
                }
            }
        }
        if let Some(p) = missing.first() {
            return Err(SignalError::new(
                ErrorCode::NotFound,
                format!("no post {p}"),
            ));
        }
        self.subscribe_all(edge, posts).await
    }

    async fn unsubscribe(&self, edge: &str, posts: &[String]) {
        for (i, posts) in self.by_partition(posts) {
            let cmd = Cmd::Unsubscribe {
                edge: edge.to_owned(),
                posts,
            };
            let _ = self.partitions[i].send(cmd).await;
        }
    }

    async fn renew(&self, edge: &str, posts: &[String]) {
        // Posts deleted meanwhile simply stay unsubscribed.
        if let Err(e) = self.subscribe_all(edge, posts).await
            && e.code != ErrorCode::NotFound
        {
            tracing::debug!(error = %e, "engagement renewal incomplete");
        }
    }

    async fn typing(&self, user: &UserRef, post: &str, words: u32) -> Result<(), SignalError> {
        let cap = self.config.word_cap();
        if words > cap {
            return Err(SignalError::new(
                ErrorCode::BadRequest,
                format!("words must be at most {cap}"),
            ));
        }
        for attempt in 0..2 {
            let (tx, rx) = oneshot::channel();
            let cmd = Cmd::Typing {
                post: post.to_owned(),
                user: user.clone(),
                words,
                reply: Some(tx),
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = self.partition(post).try_send(cmd) {
                metrics::counter!(hubbub_protocol::metrics::ENGAGEMENT_DROPPED).increment(1);
                return Ok(());
            }
            match rx.await {
                Ok(Known::Live) | Err(_) => return Ok(()),
                Ok(Known::Gone) => break,
                Ok(Known::Unknown) if attempt == 0 => {
                    self.load(&[post.to_owned()]).await?;
                }
                Ok(Known::Unknown) => break,
            }
        }
        Err(SignalError::new(
            ErrorCode::NotFound,
            format!("no post {post}"),
        ))
    }

    async fn post_changed(&self, post: &str, comments: Option<u64>) {
        self.send(
            post,
            Cmd::Changed {
                post: post.to_owned(),
                comments,
            },
        )
        .await;
    }
}

/// Milliseconds since `origin`: a partition's clock.
fn since(origin: Instant) -> i64 {
    i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX)
}

async fn run_partition(
    mut agg: Aggregator,
    mut rx: mpsc::Receiver<Cmd>,
    link: Arc<dyn EdgeLink>,
    origin: Instant,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            cmd = rx.recv() => match cmd {
                Some(cmd) => apply(&mut agg, cmd, since(origin)),
                None => break,
            },
            _ = tick.tick() => {
                let batches = agg.tick(since(origin));
                for (edge, frames) in batches {
                    let n = frames.len() as u64;
                    match link.deliver(&edge, vec![ToEdge::Engagement { frames }]).await {
                        Ok(()) => metrics::counter!(hubbub_protocol::metrics::ENGAGEMENT_PUBLISHED).increment(n),
                        Err(e) => {
                            tracing::debug!(%edge, error = %e, "engagement edge gone; its subscriptions dropped");
                            agg.drop_edge(&edge);
                        }
                    }
                }
            }
        }
    }
}

fn apply(agg: &mut Aggregator, cmd: Cmd, now: i64) {
    match cmd {
        Cmd::Typing {
            post,
            user,
            words,
            reply,
        } => {
            let known = agg.typing(&post, &user, words, now);
            if let Some(reply) = reply {
                let _ = reply.send(known);
            }
        }
        Cmd::Load { post, comments } => agg.load(&post, comments, now),
        Cmd::Subscribe { edge, posts, reply } => {
            let unknown = posts
                .into_iter()
                .filter(|p| !agg.subscribe(&edge, p, now))
                .collect();
            let _ = reply.send(unknown);
        }
        Cmd::Unsubscribe { edge, posts } => {
            for p in &posts {
                agg.unsubscribe(&edge, p);
            }
        }
        Cmd::Changed { post, comments } => agg.post_changed(&post, comments, now),
    }
}

#[cfg(test)]
mod tests;
