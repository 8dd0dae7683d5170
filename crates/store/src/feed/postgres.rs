//! The feed's SQL on PostgreSQL.

use super::{CommentRow, FeedTx, NewComment, NewPost, POST_COLUMNS, StoredPost, post_from_row};
use crate::postgres::{Row, Tx};
use crate::{PgStore, Result};

super::impl_feed_store!(PgStore);

/// The posts of rows in [`POST_COLUMNS`]' order.
fn posts(rows: Vec<Row>) -> Result<Vec<StoredPost>> {
    rows.iter()
        .map(|r| {
            post_from_row((
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            ))
        })
        .collect()
}

fn count(r: Row) -> u64 {
    r.get::<_, i64>(0) as u64
}

impl FeedTx for Tx<'_> {
    async fn post(&self, id: &str) -> Result<Option<StoredPost>> {
        let sql = format!("SELECT {POST_COLUMNS} FROM posts WHERE id = $1");
        Ok(posts(self.rows(&sql, &[&id]).await?)?.pop())
    }

    async fn insert_post(&self, new: &NewPost, attachments: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO posts (id, author, text, attachments, ts) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
            &[&new.id, &new.author, &new.text, &attachments, &now],
        )
        .await?;
        Ok(())
    }

    async fn delete_post(&self, id: &str) -> Result<()> {
        for sql in [
            "DELETE FROM comments WHERE post = $1",
            "DELETE FROM likes WHERE post = $1",
            "DELETE FROM posts WHERE id = $1",
        ] {
            self.exec(sql, &[&id]).await?;
        }
        Ok(())
    }

    async fn comment(&self, id: &str) -> Result<Option<CommentRow>> {
        Ok(self
            .opt(
                "SELECT post, author, text, ts FROM comments WHERE id = $1",
                &[&id],
            )
            .await?
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    async fn insert_comment(&self, new: &NewComment, now: i64) -> Result<bool> {
        let n = self
            .exec(
                "INSERT INTO comments (id, post, author, text, ts) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO NOTHING",
                &[&new.id, &new.post, &new.author, &new.text, &now],
            )
            .await?;
        Ok(n > 0)
    }

    async fn add_comments(&self, post: &str, by: i64) -> Result<u64> {
        let r = self
            .one(
                "UPDATE posts SET comments = comments + $2 WHERE id = $1 RETURNING comments",
                &[&post, &by],
            )
            .await?;
        Ok(count(r))
    }

    async fn insert_like(&self, post: &str, user: &str, now: i64) -> Result<bool> {
        let n = self
            .exec(
                "INSERT INTO likes (post, user_id, ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&post, &user, &now],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_like(&self, post: &str, user: &str) -> Result<bool> {
        let n = self
            .exec(
                "DELETE FROM likes WHERE post = $1 AND user_id = $2",
                &[&post, &user],
            )
            .await?;
        Ok(n > 0)
    }

    async fn add_likes(&self, post: &str, by: i64) -> Result<u64> {
        let r = self
            .one(
                "UPDATE posts SET likes = likes + $2 WHERE id = $1 RETURNING likes",
                &[&post, &by],
            )
            .await?;
        Ok(count(r))
    }

    async fn insert_follow(&self, follower: &str, followee: &str, now: i64) -> Result<bool> {
        let n = self
            .exec(
                "INSERT INTO follows (follower, followee, ts) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&follower, &followee, &now],
            )
            .await?;
        Ok(n > 0)
    }

    async fn delete_follow(&self, follower: &str, followee: &str) -> Result<()> {
        self.exec(
            "DELETE FROM follows WHERE follower = $1 AND followee = $2",
            &[&follower, &followee],
        )
        .await?;
        Ok(())
    }

    async fn followers(&self, user: &str) -> Result<Vec<String>> {
        let rows = self
            .rows("SELECT follower FROM follows WHERE followee = $1", &[&user])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn followee_count(&self, user: &str) -> Result<u64> {
        let r = self
            .one("SELECT COUNT(*) FROM follows WHERE follower = $1", &[&user])
            .await?;
        Ok(count(r))
    }

    async fn post_watermark(&self) -> Result<u64> {
        let r = self
            .one("SELECT COALESCE(MAX(seq), 0) FROM posts", &[])
            .await?;
        Ok(count(r))
    }

    async fn newest_posts(&self, user: &str, limit: usize) -> Result<Vec<StoredPost>> {
        let sql = format!(
            "SELECT {POST_COLUMNS} FROM posts
             WHERE author IN (SELECT followee FROM follows WHERE follower = $1 UNION ALL SELECT $1)
             ORDER BY seq DESC LIMIT $2"
        );
        posts(self.rows(&sql, &[&user, &(limit as i64)]).await?)
    }

    async fn posts_since(&self, user: &str, after: i64, limit: usize) -> Result<Vec<StoredPost>> {
        let sql = format!(
            "SELECT {POST_COLUMNS} FROM posts
             WHERE seq > $2 AND (author = $1 OR EXISTS
               (SELECT 1 FROM follows WHERE follower = $1 AND followee = posts.author))
             ORDER BY seq DESC LIMIT $3"
        );
        posts(self.rows(&sql, &[&user, &after, &(limit as i64)]).await?)
    }

    async fn posts_by_id(&self, ids: &[String]) -> Result<Vec<StoredPost>> {
        let sql = format!("SELECT {POST_COLUMNS} FROM posts WHERE id = ANY($1)");
        posts(self.rows(&sql, &[&ids]).await?)
    }

    async fn comment_count(&self, post: &str) -> Result<Option<u64>> {
        Ok(self
            .opt("SELECT comments FROM posts WHERE id = $1", &[&post])
            .await?
            .map(count))
    }

    async fn touch_active(&self, user: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO activity (user_id, active_ms) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE
               SET active_ms = GREATEST(activity.active_ms, excluded.active_ms)",
            &[&user, &now],
        )
        .await?;
        Ok(())
    }

    async fn active_users(&self, since_ms: i64) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "SELECT user_id FROM activity WHERE active_ms >= $1",
                &[&since_ms],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
