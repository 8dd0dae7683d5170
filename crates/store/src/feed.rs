//! The feed's durable state: posts, comments, likes, follows, and when users were last
//! active.
//!
//! [`FeedStore`] is the trait the feed service and the timeline computer use; [`SqliteStore`]
//! implements it in the same file and transaction path as the rest of the store. Like
//! [`Store`](crate::Store), each write is one transaction that also appends the
//! `notification` events it produces (a like, a comment, a follow) to the affected user's
//! inbox. A user never gets a notification about themself, nor from a user they block.
//!
//! Posts carry an internal creation counter (`seq`): a precomputed timeline remembers the
//! highest one it saw (its watermark), so a fetch finds the posts created since with one
//! indexed read, whatever the number of followees.

use crate::sqlite::{append_event, json_err};
use crate::{Event, SqliteStore, StoreError, Written};
use async_trait::async_trait;
use hubbub_protocol::{Attachment, Comment, NotificationKind, Post, ServerFrame};
use rusqlite::{Connection, OptionalExtension, params};

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
    async fn create_post(&self, new: NewPost) -> Result<StoredPost, StoreError>;

    /// `post.delete` (author only), with its comments and likes. Returns the author.
    async fn delete_post(&self, caller: &str, post: &str) -> Result<(), StoreError>;

    /// `comment.create`; notifies the post's author. A retried create returns the first
    /// comment and no events; an id that exists on another post or by another author is
    /// `Conflict`. The value carries the post's comment count after it.
    async fn create_comment(&self, new: NewComment) -> Result<Written<(Comment, u64)>, StoreError>;

    /// `post.like`, idempotent; a new like notifies the author. Returns the like count.
    async fn like(&self, caller: &str, post: &str) -> Result<Written<u64>, StoreError>;

    /// `post.unlike`, idempotent. Returns the like count.
    async fn unlike(&self, caller: &str, post: &str) -> Result<u64, StoreError>;

    /// `follow`, idempotent; a new follow notifies the followed user.
    async fn follow(&self, caller: &str, user: &str) -> Result<Written<()>, StoreError>;

    /// `unfollow`, idempotent.
    async fn unfollow(&self, caller: &str, user: &str) -> Result<(), StoreError>;

    /// Everyone who follows `user`.
    async fn followers(&self, user: &str) -> Result<Vec<String>, StoreError>;

    /// How many accounts `user` follows.
    async fn followee_count(&self, user: &str) -> Result<u64, StoreError>;

    /// The newest `limit` posts of the accounts `user` follows and of `user`, newest first,
    /// and the highest post counter in the store when they were read (the watermark).
    async fn timeline_candidates(
        &self,
        user: &str,
        limit: usize,
    ) -> Result<(Vec<StoredPost>, u64), StoreError>;

    /// Posts of the accounts `user` follows (and of `user`) created after `watermark`, newest
    /// first, at most `limit`. Its cost grows with the posts created since, not with the
    /// number of followees.
    async fn posts_since(
        &self,
        user: &str,
        watermark: u64,
        limit: usize,
    ) -> Result<Vec<StoredPost>, StoreError>;

    /// These posts as they are now, in the order asked; deleted ones are left out.
    async fn posts(&self, ids: &[String]) -> Result<Vec<Post>, StoreError>;

    /// A post's comment count, `None` if there is no such post.
    async fn comment_count(&self, post: &str) -> Result<Option<u64>, StoreError>;

    /// Record that `user` opened a session now.
    async fn touch_active(&self, user: &str) -> Result<(), StoreError>;

    /// Users who opened a session at or after `since_ms`.
    async fn active_users(&self, since_ms: i64) -> Result<Vec<String>, StoreError>;
}

const POST_COLUMNS: &str = "seq, id, author, text, attachments, ts, likes, comments";

fn row_to_post(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Post, String)> {
    Ok((
        r.get(0)?,
        Post {
            id: r.get(1)?,
            author: r.get(2)?,
            text: r.get(3)?,
            attachments: Vec::new(),
            ts: r.get(5)?,
            likes: r.get::<_, i64>(6)? as u64,
            comments: r.get::<_, i64>(7)? as u64,
        },
        r.get(4)?,
    ))
}

fn to_stored((seq, mut post, attachments): (i64, Post, String)) -> Result<StoredPost, StoreError> {
    post.attachments = serde_json::from_str(&attachments).map_err(json_err)?;
    Ok(StoredPost {
        post,
        seq: seq as u64,
    })
}

fn load_post(conn: &Connection, id: &str) -> Result<Option<StoredPost>, StoreError> {
    conn.prepare_cached(&format!("SELECT {POST_COLUMNS} FROM posts WHERE id = ?1"))?
        .query_row([id], row_to_post)
        .optional()?
        .map(to_stored)
        .transpose()
}

fn existing_post(conn: &Connection, id: &str) -> Result<StoredPost, StoreError> {
    load_post(conn, id)?.ok_or_else(|| StoreError::NotFound(format!("no post {id}")))
}

/// Notify `to` of something `from` did, unless it is about themself or `to` blocks `from`.
fn notify(
    conn: &Connection,
    to: &str,
    from: &str,
    kind: NotificationKind,
    data: serde_json::Value,
    now: i64,
) -> Result<Vec<Event>, StoreError> {
    if to == from {
        return Ok(Vec::new());
    }
    let blocked: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2)")?
        .query_row(params![to, from], |r| r.get(0))?;
    if blocked {
        return Ok(Vec::new());
    }
    Ok(vec![append_event(conn, to, now, |seq| {
        ServerFrame::Notification { seq, kind, data }
    })?])
}

/// A repeated `post.create` (same id) returns the first post; the id is derived from the
/// author, so another author's post under it is a conflict, never returned.
pub(crate) fn same_author(existing: StoredPost, new: &NewPost) -> Result<StoredPost, StoreError> {
    if existing.post.author != new.author {
        return Err(StoreError::Conflict(format!("post {} exists", new.id)));
    }
    Ok(existing)
}

/// A repeated `comment.create` (same id) must name the same post and author: its key used
/// for another post is a conflict (returning the first comment would report the wrong
/// post's count).
pub(crate) fn comment_conflict(id: &str) -> StoreError {
    StoreError::Conflict(format!("comment {id} exists on another post"))
}

fn like_count(conn: &Connection, post: &str) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT likes FROM posts WHERE id = ?1")?
        .query_row([post], |r| r.get::<_, i64>(0))? as u64)
}

fn collect_posts(
    rows: impl Iterator<Item = rusqlite::Result<(i64, Post, String)>>,
) -> Result<Vec<StoredPost>, StoreError> {
    rows.map(|r| to_stored(r?)).collect()
}

#[async_trait]
impl FeedStore for SqliteStore {
    async fn create_post(&self, new: NewPost) -> Result<StoredPost, StoreError> {
        let now = self.now();
        self.write_with(move |conn| {
            if let Some(p) = load_post(conn, &new.id)? {
                return same_author(p, &new);
            }
            let attachments = serde_json::to_string(&new.attachments).map_err(json_err)?;
            conn.prepare_cached(
                "INSERT INTO posts (id, author, text, attachments, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![new.id, new.author, new.text, attachments, now])?;
            existing_post(conn, &new.id)
        })
        .await
    }

    async fn delete_post(&self, caller: &str, post: &str) -> Result<(), StoreError> {
        let (caller, post) = (caller.to_owned(), post.to_owned());
        self.write_with(move |conn| {
            let p = existing_post(conn, &post)?;
            if p.post.author != caller {
                return Err(StoreError::Forbidden(
                    "only the author may delete a post".into(),
                ));
            }
            conn.prepare_cached("DELETE FROM comments WHERE post = ?1")?
                .execute([&post])?;
            conn.prepare_cached("DELETE FROM likes WHERE post = ?1")?
                .execute([&post])?;
            conn.prepare_cached("DELETE FROM posts WHERE id = ?1")?
                .execute([&post])?;
            Ok(())
        })
        .await
    }

    async fn create_comment(&self, new: NewComment) -> Result<Written<(Comment, u64)>, StoreError> {
        let now = self.now();
        self.write_with(move |conn| {
            let post = existing_post(conn, &new.post)?;
            let existing: Option<(String, String, String, i64)> = conn
                .prepare_cached("SELECT post, author, text, ts FROM comments WHERE id = ?1")?
                .query_row([&new.id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            if let Some((post_id, author, text, ts)) = existing {
                if post_id != new.post || author != new.author {
                    return Err(comment_conflict(&new.id));
                }
                let comment = Comment {
                    id: new.id,
                    post: post_id,
                    author,
                    text,
                    ts,
                };
                return Ok(Written::nothing((comment, post.post.comments)));
            }
            conn.prepare_cached(
                "INSERT INTO comments (id, post, author, text, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![new.id, new.post, new.author, new.text, now])?;
            let count: i64 = conn
                .prepare_cached(
                    "UPDATE posts SET comments = comments + 1 WHERE id = ?1 RETURNING comments",
                )?
                .query_row([&new.post], |r| r.get(0))?;
            let comment = Comment {
                id: new.id,
                post: new.post,
                author: new.author,
                text: new.text,
                ts: now,
            };
            let data = serde_json::json!({"post": comment.post, "user": comment.author,
                                          "comment": comment});
            let events = notify(
                conn,
                &post.post.author,
                &comment.author,
                NotificationKind::Comment,
                data,
                now,
            )?;
            Ok(Written {
                value: (comment, count as u64),
                events,
            })
        })
        .await
    }

    async fn like(&self, caller: &str, post: &str) -> Result<Written<u64>, StoreError> {
        let (caller, post, now) = (caller.to_owned(), post.to_owned(), self.now());
        self.write_with(move |conn| {
            let p = existing_post(conn, &post)?;
            let added = conn
                .prepare_cached(
                    "INSERT INTO likes (post, user_id, ts) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![post, caller, now])?;
            if added == 0 {
                return Ok(Written::nothing(p.post.likes));
            }
            conn.prepare_cached("UPDATE posts SET likes = likes + 1 WHERE id = ?1")?
                .execute([&post])?;
            let data = serde_json::json!({"post": post, "user": caller});
            let events = notify(
                conn,
                &p.post.author,
                &caller,
                NotificationKind::Like,
                data,
                now,
            )?;
            Ok(Written {
                value: like_count(conn, &post)?,
                events,
            })
        })
        .await
    }

    async fn unlike(&self, caller: &str, post: &str) -> Result<u64, StoreError> {
        let (caller, post) = (caller.to_owned(), post.to_owned());
        self.write_with(move |conn| {
            existing_post(conn, &post)?;
            let removed = conn
                .prepare_cached("DELETE FROM likes WHERE post = ?1 AND user_id = ?2")?
                .execute(params![post, caller])?;
            if removed > 0 {
                conn.prepare_cached("UPDATE posts SET likes = likes - 1 WHERE id = ?1")?
                    .execute([&post])?;
            }
            like_count(conn, &post)
        })
        .await
    }

    async fn follow(&self, caller: &str, user: &str) -> Result<Written<()>, StoreError> {
        let (caller, user, now) = (caller.to_owned(), user.to_owned(), self.now());
        self.write_with(move |conn| {
            if caller == user {
                return Err(StoreError::BadRequest("you cannot follow yourself".into()));
            }
            let exists: bool = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")?
                .query_row([&user], |r| r.get(0))?;
            if !exists {
                return Err(StoreError::NotFound(format!("no user {user}")));
            }
            let added = conn
                .prepare_cached(
                    "INSERT INTO follows (follower, followee, ts) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![caller, user, now])?;
            if added == 0 {
                return Ok(Written::nothing(()));
            }
            let data = serde_json::json!({"user": caller});
            let events = notify(conn, &user, &caller, NotificationKind::Follow, data, now)?;
            Ok(Written { value: (), events })
        })
        .await
    }

    async fn unfollow(&self, caller: &str, user: &str) -> Result<(), StoreError> {
        let (caller, user) = (caller.to_owned(), user.to_owned());
        self.write_with(move |conn| {
            conn.prepare_cached("DELETE FROM follows WHERE follower = ?1 AND followee = ?2")?
                .execute(params![caller, user])?;
            Ok(())
        })
        .await
    }

    async fn followers(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let user = user.to_owned();
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached("SELECT follower FROM follows WHERE followee = ?1")?
                .query_map([user], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn followee_count(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached("SELECT COUNT(*) FROM follows WHERE follower = ?1")?
                .query_row([user], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    async fn timeline_candidates(
        &self,
        user: &str,
        limit: usize,
    ) -> Result<(Vec<StoredPost>, u64), StoreError> {
        let user = user.to_owned();
        self.read_with(move |conn| {
            // One read transaction: the watermark and the posts agree.
            conn.execute_batch("BEGIN")?;
            let result = (|| {
                let watermark: i64 = conn
                    .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM posts")?
                    .query_row([], |r| r.get(0))?;
                let posts = collect_posts(
                    conn.prepare_cached(&format!(
                        "SELECT {POST_COLUMNS} FROM posts
                         WHERE author IN (SELECT followee FROM follows WHERE follower = ?1
                                          UNION ALL SELECT ?1)
                         ORDER BY seq DESC LIMIT ?2"
                    ))?
                    .query_map(params![user, limit as i64], row_to_post)?,
                )?;
                Ok((posts, watermark as u64))
            })();
            conn.execute_batch("COMMIT")?;
            result
        })
        .await
    }

    async fn posts_since(
        &self,
        user: &str,
        watermark: u64,
        limit: usize,
    ) -> Result<Vec<StoredPost>, StoreError> {
        let user = user.to_owned();
        let watermark = watermark.min(i64::MAX as u64) as i64;
        self.read_with(move |conn| {
            collect_posts(
                conn.prepare_cached(&format!(
                    "SELECT {POST_COLUMNS} FROM posts
                     WHERE seq > ?2 AND (author = ?1 OR EXISTS
                       (SELECT 1 FROM follows WHERE follower = ?1 AND followee = posts.author))
                     ORDER BY seq DESC LIMIT ?3"
                ))?
                .query_map(params![user, watermark, limit as i64], row_to_post)?,
            )
        })
        .await
    }

    async fn posts(&self, ids: &[String]) -> Result<Vec<Post>, StoreError> {
        let ids = ids.to_vec();
        self.read_with(move |conn| {
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(p) = load_post(conn, id)? {
                    out.push(p.post);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn comment_count(&self, post: &str) -> Result<Option<u64>, StoreError> {
        let post = post.to_owned();
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached("SELECT comments FROM posts WHERE id = ?1")?
                .query_row([post], |r| r.get::<_, i64>(0))
                .optional()?
                .map(|c| c as u64))
        })
        .await
    }

    async fn touch_active(&self, user: &str) -> Result<(), StoreError> {
        let (user, now) = (user.to_owned(), self.now());
        self.write_with(move |conn| {
            conn.prepare_cached(
                "INSERT INTO activity (user_id, active_ms) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE SET active_ms = MAX(active_ms, excluded.active_ms)",
            )?
            .execute(params![user, now])?;
            Ok(())
        })
        .await
    }

    async fn active_users(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached("SELECT user_id FROM activity WHERE active_ms >= ?1")?
                .query_map([since_ms], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }
}
