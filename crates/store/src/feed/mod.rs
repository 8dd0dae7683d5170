//! The feed: posts, comments, likes, follows, and when users were last active; the rules
//! of each, written once.
//!
//! [`FeedStore`] is the trait the feed service and the timeline computer use. Like
//! [`ChatStore`](crate::ChatStore), each write is one transaction that also appends the
//! `notification` events it produces (a like, a comment, a follow) to the affected user's
//! inbox. A user never gets a notification about themself, nor from a user they block.
//!
//! Posts carry an internal creation counter (`seq`): a precomputed timeline remembers the
//! highest one it saw (its watermark), so a fetch finds the posts created since with one
//! indexed read, whatever the number of followees.

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use crate::accounts::{AccountTx, user_exists};
use crate::chat::ChatTx;
use crate::inbox::{InboxTx, append_event};
use crate::{Event, Result, StoreError, Written, json_err, to_i64};
use async_trait::async_trait;
use hubbub_protocol::{Attachment, Comment, NotificationKind, Post, ServerFrame};

/// Parameters of `post.create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPost {
    /// The post's id (derived from the request, so a retried create finds the first post).
    pub id: String,
    /// The author.
    pub author: String,
    /// The text.
    pub text: String,
    /// Attachments.
    pub attachments: Vec<Attachment>,
}

/// Parameters of `comment.create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewComment {
    /// The comment's id (derived from the request).
    pub id: String,
    /// The post.
    pub post: String,
    /// The author of the comment.
    pub author: String,
    /// The text.
    pub text: String,
}

/// A post with its creation counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPost {
    /// The post.
    pub post: Post,
    /// Creation order (higher is newer), for watermarks.
    pub seq: u64,
}

/// The feed's durable state.
#[async_trait]
pub trait FeedStore: Send + Sync {
    /// `post.create`; a post whose id exists (a retried create, by redelivery or by the
    /// client's idempotency key) is returned as it is, with no new effect; an id that exists
    /// with another author is `Conflict`.
    async fn create_post(&self, new: NewPost) -> Result<StoredPost>;

    /// `post.delete` (author only), with its comments and likes. Returns the author.
    async fn delete_post(&self, caller: &str, post: &str) -> Result<()>;

    /// `comment.create`; notifies the post's author. A retried create returns the first
    /// comment and no events; an id that exists on another post or by another author is
    /// `Conflict`. The value carries the post's comment count after it.
    async fn create_comment(&self, new: NewComment) -> Result<Written<(Comment, u64)>>;

    /// `post.like`, idempotent; a new like notifies the author. Returns the like count.
    async fn like(&self, caller: &str, post: &str) -> Result<Written<u64>>;

    /// `post.unlike`, idempotent. Returns the like count.
    async fn unlike(&self, caller: &str, post: &str) -> Result<u64>;

    /// `follow`, idempotent; a new follow notifies the followed user.
    async fn follow(&self, caller: &str, user: &str) -> Result<Written<()>>;

    /// `unfollow`, idempotent.
    async fn unfollow(&self, caller: &str, user: &str) -> Result<()>;

    /// Everyone who follows `user`.
    async fn followers(&self, user: &str) -> Result<Vec<String>>;

    /// How many accounts `user` follows.
    async fn followee_count(&self, user: &str) -> Result<u64>;

    /// The newest `limit` posts of the accounts `user` follows and of `user`, newest first,
    /// and the highest post counter in the store when they were read (the watermark).
    async fn timeline_candidates(&self, user: &str, limit: usize)
    -> Result<(Vec<StoredPost>, u64)>;

    /// Posts of the accounts `user` follows (and of `user`) created after `watermark`, newest
    /// first, at most `limit`. Its cost grows with the posts created since, not with the
    /// number of followees.
    async fn posts_since(
        &self,
        user: &str,
        watermark: u64,
        limit: usize,
    ) -> Result<Vec<StoredPost>>;

    /// These posts as they are now, in the order asked; deleted ones are left out.
    async fn posts(&self, ids: &[String]) -> Result<Vec<Post>>;

    /// A post's comment count, `None` if there is no such post.
    async fn comment_count(&self, post: &str) -> Result<Option<u64>>;

    /// Record that `user` opened a session now.
    async fn touch_active(&self, user: &str) -> Result<()>;

    /// Users who opened a session at or after `since_ms`.
    async fn active_users(&self, since_ms: i64) -> Result<Vec<String>>;
}

/// A stored post's columns: seq, id, author, text, attachments (JSON), ts, likes, comments.
pub(crate) type PostRow = (i64, String, String, String, String, i64, i64, i64);

/// [`PostRow`]'s columns, in its order.
pub(crate) const POST_COLUMNS: &str = "seq, id, author, text, attachments, ts, likes, comments";

pub(crate) fn post_from_row(
    (seq, id, author, text, attachments, ts, likes, comments): PostRow,
) -> Result<StoredPost> {
    Ok(StoredPost {
        seq: seq as u64,
        post: Post {
            id,
            author,
            text,
            attachments: serde_json::from_str(&attachments).map_err(json_err)?,
            ts,
            likes: likes as u64,
            comments: comments as u64,
        },
    })
}

/// A stored comment's columns (its id aside): post, author, text, ts.
pub(crate) type CommentRow = (String, String, String, i64);

pub(crate) fn comment_from_row(id: &str, (post, author, text, ts): CommentRow) -> Comment {
    Comment {
        id: id.to_owned(),
        post,
        author,
        text,
        ts,
    }
}

/// What the feed rules need of a transaction; each backend implements it with its SQL.
pub(crate) trait FeedTx {
    async fn post(&self, id: &str) -> Result<Option<StoredPost>>;
    /// Insert a post unless its id exists.
    async fn insert_post(&self, new: &NewPost, attachments: &str, now: i64) -> Result<()>;
    /// Delete a post with its comments and likes.
    async fn delete_post(&self, id: &str) -> Result<()>;
    async fn comment(&self, id: &str) -> Result<Option<CommentRow>>;
    /// Insert a comment unless its id exists; whether it was inserted.
    async fn insert_comment(&self, new: &NewComment, now: i64) -> Result<bool>;
    /// Add `by` to a post's comment count; the count after.
    async fn add_comments(&self, post: &str, by: i64) -> Result<u64>;
    /// Whether the like was new.
    async fn insert_like(&self, post: &str, user: &str, now: i64) -> Result<bool>;
    /// Whether there was a like.
    async fn delete_like(&self, post: &str, user: &str) -> Result<bool>;
    /// Add `by` to a post's like count; the count after.
    async fn add_likes(&self, post: &str, by: i64) -> Result<u64>;
    /// Whether the follow was new.
    async fn insert_follow(&self, follower: &str, followee: &str, now: i64) -> Result<bool>;
    async fn delete_follow(&self, follower: &str, followee: &str) -> Result<()>;
    async fn followers(&self, user: &str) -> Result<Vec<String>>;
    async fn followee_count(&self, user: &str) -> Result<u64>;
    /// The highest post counter.
    async fn post_watermark(&self) -> Result<u64>;
    /// The newest posts of `user` and of the accounts `user` follows, newest first, at most
    /// `limit`.
    async fn newest_posts(&self, user: &str, limit: usize) -> Result<Vec<StoredPost>>;
    /// [`newest_posts`](FeedTx::newest_posts) whose counter is above `after`: a range read by
    /// counter, whatever the number of followees.
    async fn posts_since(&self, user: &str, after: i64, limit: usize) -> Result<Vec<StoredPost>>;
    /// The posts of these ids that exist, in any order.
    async fn posts_by_id(&self, ids: &[String]) -> Result<Vec<StoredPost>>;
    async fn comment_count(&self, post: &str) -> Result<Option<u64>>;
    /// `user` opened a session at `now` (never moves back).
    async fn touch_active(&self, user: &str, now: i64) -> Result<()>;
    async fn active_users(&self, since_ms: i64) -> Result<Vec<String>>;
}

async fn existing_post(tx: &impl FeedTx, id: &str) -> Result<StoredPost> {
    tx.post(id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no post {id}")))
}

/// Notify `to` of something `from` did, unless it is about themself or `to` blocks `from`.
async fn notify(
    tx: &(impl InboxTx + ChatTx),
    to: &str,
    from: &str,
    kind: NotificationKind,
    data: serde_json::Value,
    now: i64,
) -> Result<Vec<Event>> {
    if to == from || tx.blocks(to, from).await? {
        return Ok(Vec::new());
    }
    let frame = |seq| ServerFrame::Notification { seq, kind, data };
    Ok(vec![append_event(tx, to, now, frame).await?])
}

/// A repeated `post.create` (same id) returns the first post; the id is derived from the
/// author, so another author's post under it is a conflict, never returned.
fn same_author(existing: StoredPost, new: &NewPost) -> Result<StoredPost> {
    if existing.post.author != new.author {
        return Err(StoreError::Conflict(format!("post {} exists", new.id)));
    }
    Ok(existing)
}

/// A repeated `comment.create` (same id) must name the same post and author: its key used
/// for another post is a conflict (returning the first comment would report the wrong
/// post's count).
fn same_comment(existing: Comment, new: &NewComment) -> Result<Comment> {
    if existing.post != new.post || existing.author != new.author {
        return Err(StoreError::Conflict(format!(
            "comment {} exists on another post",
            new.id
        )));
    }
    Ok(existing)
}

pub(crate) async fn create_post(tx: &impl FeedTx, new: NewPost, now: i64) -> Result<StoredPost> {
    if let Some(p) = tx.post(&new.id).await? {
        return same_author(p, &new);
    }
    let attachments = serde_json::to_string(&new.attachments).map_err(json_err)?;
    // A concurrent create of the same id (on another machine) inserts nothing here.
    tx.insert_post(&new, &attachments, now).await?;
    same_author(existing_post(tx, &new.id).await?, &new)
}

pub(crate) async fn delete_post(tx: &impl FeedTx, caller: &str, post: &str) -> Result<()> {
    let p = existing_post(tx, post).await?;
    if p.post.author != caller {
        return Err(StoreError::Forbidden(
            "only the author may delete a post".into(),
        ));
    }
    tx.delete_post(post).await
}

/// The comment, if it exists.
async fn comment(tx: &impl FeedTx, id: &str) -> Result<Option<Comment>> {
    Ok(tx.comment(id).await?.map(|row| comment_from_row(id, row)))
}

pub(crate) async fn create_comment(
    tx: &(impl FeedTx + InboxTx + ChatTx),
    new: NewComment,
    now: i64,
) -> Result<Written<(Comment, u64)>> {
    let post = existing_post(tx, &new.post).await?;
    let repeat = match comment(tx, &new.id).await? {
        Some(c) => Some(c),
        None if tx.insert_comment(&new, now).await? => None,
        // A concurrent create of the same id (on another machine): the first one stands.
        None => Some(
            comment(tx, &new.id)
                .await?
                .ok_or_else(|| StoreError::Internal(format!("comment {} vanished", new.id)))?,
        ),
    };
    if let Some(c) = repeat {
        let c = same_comment(c, &new)?;
        return Ok(Written::nothing((c, post.post.comments)));
    }
    let count = tx.add_comments(&new.post, 1).await?;
    let comment = Comment {
        id: new.id,
        post: new.post,
        author: new.author,
        text: new.text,
        ts: now,
    };
    let data = serde_json::json!({"post": comment.post, "user": comment.author,
                                  "comment": comment});
    let kind = NotificationKind::Comment;
    let events = notify(tx, &post.post.author, &comment.author, kind, data, now).await?;
    Ok(Written::new((comment, count), events))
}

pub(crate) async fn like(
    tx: &(impl FeedTx + InboxTx + ChatTx),
    caller: &str,
    post: &str,
    now: i64,
) -> Result<Written<u64>> {
    let p = existing_post(tx, post).await?;
    if !tx.insert_like(post, caller, now).await? {
        return Ok(Written::nothing(p.post.likes));
    }
    let likes = tx.add_likes(post, 1).await?;
    let data = serde_json::json!({"post": post, "user": caller});
    let kind = NotificationKind::Like;
    let events = notify(tx, &p.post.author, caller, kind, data, now).await?;
    Ok(Written::new(likes, events))
}

pub(crate) async fn unlike(tx: &impl FeedTx, caller: &str, post: &str) -> Result<u64> {
    let p = existing_post(tx, post).await?;
    if !tx.delete_like(post, caller).await? {
        return Ok(p.post.likes);
    }
    tx.add_likes(post, -1).await
}

pub(crate) async fn follow(
    tx: &(impl FeedTx + InboxTx + ChatTx + AccountTx),
    caller: &str,
    user: &str,
    now: i64,
) -> Result<Written<()>> {
    if caller == user {
        return Err(StoreError::BadRequest("you cannot follow yourself".into()));
    }
    if !user_exists(tx, user).await? {
        return Err(StoreError::NotFound(format!("no user {user}")));
    }
    if !tx.insert_follow(caller, user, now).await? {
        return Ok(Written::nothing(()));
    }
    let data = serde_json::json!({"user": caller});
    let events = notify(tx, user, caller, NotificationKind::Follow, data, now).await?;
    Ok(Written::new((), events))
}

/// The candidates and the watermark, read in one snapshot so they agree.
pub(crate) async fn timeline_candidates(
    tx: &impl FeedTx,
    user: &str,
    limit: usize,
) -> Result<(Vec<StoredPost>, u64)> {
    let watermark = tx.post_watermark().await?;
    let posts = tx.newest_posts(user, limit).await?;
    Ok((posts, watermark))
}

/// The posts created after `watermark` (a client's `u64`, clamped to the column's range).
pub(crate) async fn posts_since(
    tx: &impl FeedTx,
    user: &str,
    watermark: u64,
    limit: usize,
) -> Result<Vec<StoredPost>> {
    tx.posts_since(user, to_i64(watermark), limit).await
}

/// These posts as they are now, in the order asked; deleted ones are left out.
pub(crate) async fn posts(tx: &impl FeedTx, ids: &[String]) -> Result<Vec<Post>> {
    let mut found = tx.posts_by_id(ids).await?;
    let mut out = Vec::with_capacity(found.len());
    for id in ids {
        if let Some(i) = found.iter().position(|p| p.post.id == *id) {
            out.push(found.swap_remove(i).post);
        }
    }
    Ok(out)
}

/// [`FeedStore`] for a backend: each method runs its rule in one of the backend's
/// transactions (see the crate's "How a use case runs").
macro_rules! impl_feed_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::feed::FeedStore for $store {
            async fn create_post(
                &self,
                new: $crate::NewPost,
            ) -> Result<$crate::StoredPost, $crate::StoreError> {
                let now = self.now();
                $crate::run!(self.write, |tx| $crate::feed::create_post(tx, new, now))
            }

            async fn delete_post(
                &self,
                caller: &str,
                post: &str,
            ) -> Result<(), $crate::StoreError> {
                let (caller, post) = (caller.to_owned(), post.to_owned());
                $crate::run!(self.write, |tx| $crate::feed::delete_post(
                    tx, &caller, &post
                ))
            }

            async fn create_comment(
                &self,
                new: $crate::NewComment,
            ) -> Result<$crate::Written<(hubbub_protocol::Comment, u64)>, $crate::StoreError> {
                let now = self.now();
                $crate::run!(self.write, |tx| $crate::feed::create_comment(tx, new, now))
            }

            async fn like(
                &self,
                caller: &str,
                post: &str,
            ) -> Result<$crate::Written<u64>, $crate::StoreError> {
                let (caller, post, now) = (caller.to_owned(), post.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::feed::like(tx, &caller, &post, now))
            }

            async fn unlike(&self, caller: &str, post: &str) -> Result<u64, $crate::StoreError> {
                let (caller, post) = (caller.to_owned(), post.to_owned());
                $crate::run!(self.write, |tx| $crate::feed::unlike(tx, &caller, &post))
            }

            async fn follow(
                &self,
                caller: &str,
                user: &str,
            ) -> Result<$crate::Written<()>, $crate::StoreError> {
                let (caller, user, now) = (caller.to_owned(), user.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::feed::follow(
                    tx, &caller, &user, now
                ))
            }

            async fn unfollow(&self, caller: &str, user: &str) -> Result<(), $crate::StoreError> {
                let (caller, user) = (caller.to_owned(), user.to_owned());
                $crate::run!(self.write, |tx| {
                    $crate::feed::FeedTx::delete_follow(tx, &caller, &user)
                })
            }

            async fn followers(&self, user: &str) -> Result<Vec<String>, $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.read, |tx| $crate::feed::FeedTx::followers(tx, &user))
            }

            async fn followee_count(&self, user: &str) -> Result<u64, $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.read, |tx| $crate::feed::FeedTx::followee_count(
                    tx, &user
                ))
            }

            async fn timeline_candidates(
                &self,
                user: &str,
                limit: usize,
            ) -> Result<(Vec<$crate::StoredPost>, u64), $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.snapshot, |tx| {
                    $crate::feed::timeline_candidates(tx, &user, limit)
                })
            }

            async fn posts_since(
                &self,
                user: &str,
                watermark: u64,
                limit: usize,
            ) -> Result<Vec<$crate::StoredPost>, $crate::StoreError> {
                let user = user.to_owned();
                $crate::run!(self.read, |tx| {
                    $crate::feed::posts_since(tx, &user, watermark, limit)
                })
            }

            async fn posts(
                &self,
                ids: &[String],
            ) -> Result<Vec<hubbub_protocol::Post>, $crate::StoreError> {
                let ids = ids.to_vec();
                $crate::run!(self.read, |tx| $crate::feed::posts(tx, &ids))
            }

            async fn comment_count(&self, post: &str) -> Result<Option<u64>, $crate::StoreError> {
                let post = post.to_owned();
                $crate::run!(self.read, |tx| $crate::feed::FeedTx::comment_count(
                    tx, &post
                ))
            }

            async fn touch_active(&self, user: &str) -> Result<(), $crate::StoreError> {
                let (user, now) = (user.to_owned(), self.now());
                $crate::run!(self.write, |tx| $crate::feed::FeedTx::touch_active(
                    tx, &user, now
                ))
            }

            async fn active_users(&self, since_ms: i64) -> Result<Vec<String>, $crate::StoreError> {
                $crate::run!(self.read, |tx| $crate::feed::FeedTx::active_users(
                    tx, since_ms
                ))
            }
        }
    };
}
pub(crate) use impl_feed_store;
