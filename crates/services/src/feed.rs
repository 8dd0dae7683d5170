//! The feed service: `post.create`, `post.delete`, `comment.create`, `post.like`,
//! `post.unlike`, `follow`, `unfollow` (the `feed` queue).
//!
//! Each write is one store transaction with the `notification` events it produces (to the
//! post's author for likes and comments, to the followed user for follows). Then, best
//! effort, it tells the rest of the system: the timelines a change affects are put on the
//! `precompute` queue (a post or a deletion: the author's followers and the author; a follow
//! or unfollow: the follower), and the engagement service learns of new comment counts and
//! deleted posts. Ids of created objects derive from the client's `idempotency_key` when it
//! sends one (so its retry finds the first object), else from the envelope id (so a
//! redelivered envelope changes nothing).

use crate::Failure;
use crate::LiveLimits;
use crate::chat::created_id;
use crate::timeline::request_precompute;
use hubbub_protocol::internal::Envelope;
use hubbub_protocol::{ErrorCode, ReplyData, Request};
use hubbub_queue::Queue;
use hubbub_registry::{Delivery, Engagement};
use hubbub_store::{FeedStore, MediaStore, NewComment, NewPost, Written};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The feed service's queue.
pub const FEED_QUEUE: &str = "feed";

/// Request types the feed service handles (the router's table uses it).
pub const FEED_TYPES: &[&str] = &[
    "post.create",
    "post.delete",
    "comment.create",
    "post.like",
    "post.unlike",
    "follow",
    "unfollow",
];

/// The feed service.
#[derive(Clone)]
pub struct FeedService {
    store: Arc<dyn FeedStore>,
    media: Arc<dyn MediaStore>,
    queue: Arc<dyn Queue>,
    delivery: Delivery,
    limits: LiveLimits,
    engagement: Option<Arc<dyn Engagement>>,
    precompute_window: Duration,
    notify: Option<crate::notify::NotifyConfig>,
}

impl FeedService {
    /// A feed service over these backends. `precompute_window` is how long repeated changes
    /// to one user's timeline share one recomputation.
    pub fn new(
        store: Arc<dyn FeedStore>,
        media: Arc<dyn MediaStore>,
        queue: Arc<dyn Queue>,
        delivery: Delivery,
        limits: LiveLimits,
        precompute_window: Duration,
    ) -> Self {
        FeedService {
            store,
            media,
            queue,
            delivery,
            limits,
            engagement: None,
            precompute_window,
            notify: None,
        }
    }

    /// Tell this engagement service about comments and deletions.
    pub fn with_engagement(mut self, engagement: Arc<dyn Engagement>) -> Self {
        self.engagement = Some(engagement);
        self
    }

    /// Also turn unacknowledged notifications into push notifications.
    pub fn with_notify(mut self, config: crate::notify::NotifyConfig) -> Self {
        self.notify = Some(config);
        self
    }

    /// Take work from the `feed` queue until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let worker = crate::Worker {
            queue: self.queue.clone(),
            delivery: self.delivery.clone(),
            notify: self.notify.clone(),
            name: FEED_QUEUE,
            metric: hubbub_protocol::metrics::FEED_HANDLED,
        };
        worker.run(&self, cancel).await
    }

    /// Recompute the timelines of `author`'s followers and of `author` (best effort).
    async fn followers_changed(&self, author: &str) {
        let mut users = match self.store.followers(author).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "followers not read; timelines catch up on schedule");
                Vec::new()
            }
        };
        users.push(author.to_owned());
        self.precompute(&users).await;
    }

    async fn precompute(&self, users: &[String]) {
        if let Err(e) = request_precompute(&*self.queue, users, self.precompute_window).await {
            tracing::warn!(error = %e, "precompute not requested; timelines catch up on schedule");
        }
    }

    fn check_comment(&self, text: &str) -> Result<(), Failure> {
        let limits = self.limits.now();
        if text.chars().count() > limits.max_text_chars {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!("text is over {} characters", limits.max_text_chars),
            ));
        }
        if text.trim().is_empty() {
            return Err(Failure::new(ErrorCode::BadRequest, "a comment needs text"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::Handler for FeedService {
    async fn handle(&self, e: &Envelope) -> Result<Written<ReplyData>, Failure> {
        let limits = self.limits.now();
        let user = e.user.as_str();
        match &e.request {
            Request::PostCreate {
                text,
                attachments,
                idempotency_key,
            } => {
                let attachments = crate::check_content(
                    &*self.media,
                    text,
                    attachments,
                    limits.max_text_chars,
                    "post",
                )
                .await?;
                let post = self
                    .store
                    .create_post(NewPost {
                        id: created_id("p", e, idempotency_key.as_ref()),
                        author: user.to_owned(),
                        text: text.clone(),
                        attachments,
                    })
                    .await?;
                self.followers_changed(user).await;
                Ok(Written::nothing(ReplyData::Post { post: post.post }))
            }
            Request::PostDelete { post } => {
                self.store.delete_post(user, post).await?;
                if let Some(engagement) = &self.engagement {
                    engagement.post_changed(post, None).await;
                }
                self.followers_changed(user).await;
                Ok(Written::nothing(ReplyData::Empty {}))
            }
            Request::CommentCreate {
                post,
                text,
                idempotency_key,
            } => {
                self.check_comment(text)?;
                let w = self
                    .store
                    .create_comment(NewComment {
                        id: created_id("k", e, idempotency_key.as_ref()),
                        post: post.clone(),
                        author: user.to_owned(),
                        text: text.clone(),
                    })
                    .await?;
                let count = w.value.1;
                if let Some(engagement) = &self.engagement {
                    engagement.post_changed(post, Some(count)).await;
                }
                Ok(w.map(|(comment, _)| ReplyData::Comment { comment }))
            }
            Request::PostLike { post } => {
                let w = self.store.like(user, post).await?;
                Ok(w.map(|likes| ReplyData::Likes { likes }))
            }
            Request::PostUnlike { post } => {
                let likes = self.store.unlike(user, post).await?;
                Ok(Written::nothing(ReplyData::Likes { likes }))
            }
            Request::Follow { user: other } => {
                let w = self.store.follow(user, other).await?;
                self.precompute(&[user.to_owned()]).await;
                Ok(w.map(|_| ReplyData::Empty {}))
            }
            Request::Unfollow { user: other } => {
                self.store.unfollow(user, other).await?;
                self.precompute(&[user.to_owned()]).await;
                Ok(Written::nothing(ReplyData::Empty {}))
            }
            other => Err(Failure::new(
                ErrorCode::BadRequest,
                format!("`{}` is not a feed request", other.type_name()),
            )),
        }
    }
}
