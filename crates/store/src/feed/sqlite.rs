//! The feed's SQL on SQLite.

use super::{
    CommentRow, FeedTx, NewComment, NewPost, POST_COLUMNS, PostRow, StoredPost, post_from_row,
};
use crate::sqlite::Tx;
use crate::{Result, SqliteStore};
use rusqlite::{OptionalExtension, params};

super::impl_feed_store!(SqliteStore);

/// The posts a statement returns, in [`POST_COLUMNS`]' order.
fn posts(
    mut st: rusqlite::CachedStatement<'_>,
    p: impl rusqlite::Params,
) -> Result<Vec<StoredPost>> {
    let rows = st
        .query_map(p, |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?
        .collect::<Result<Vec<PostRow>, _>>()?;
    rows.into_iter().map(post_from_row).collect()
}

fn changed(n: usize) -> bool {
    n > 0
}

impl FeedTx for Tx<'_> {
    async fn post(&self, id: &str) -> Result<Option<StoredPost>> {
        let st = self.prepare_cached(&format!("SELECT {POST_COLUMNS} FROM posts WHERE id = ?1"))?;
        Ok(posts(st, [id])?.pop())
    }

    async fn insert_post(&self, new: &NewPost, attachments: &str, now: i64) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO posts (id, author, text, attachments, ts) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![new.id, new.author, new.text, attachments, now])?;
        Ok(())
    }

    async fn delete_post(&self, id: &str) -> Result<()> {
        for sql in [
            "DELETE FROM comments WHERE post = ?1",
            "DELETE FROM likes WHERE post = ?1",
            "DELETE FROM posts WHERE id = ?1",
        ] {
            self.prepare_cached(sql)?.execute([id])?;
        }
        Ok(())
    }

    async fn comment(&self, id: &str) -> Result<Option<CommentRow>> {
        Ok(self
            .prepare_cached("SELECT post, author, text, ts FROM comments WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?)
    }

    async fn insert_comment(&self, new: &NewComment, now: i64) -> Result<bool> {
        Ok(changed(
            self.prepare_cached(
                "INSERT INTO comments (id, post, author, text, ts) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![new.id, new.post, new.author, new.text, now])?,
        ))
    }

    async fn add_comments(&self, post: &str, by: i64) -> Result<u64> {
        let n: i64 = self
            .prepare_cached(
                "UPDATE posts SET comments = comments + ?2 WHERE id = ?1 RETURNING comments",
            )?
            .query_row(params![post, by], |r| r.get(0))?;
        Ok(n as u64)
    }

    async fn insert_like(&self, post: &str, user: &str, now: i64) -> Result<bool> {
        Ok(changed(
            self.prepare_cached(
                "INSERT INTO likes (post, user_id, ts) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![post, user, now])?,
        ))
    }

    async fn delete_like(&self, post: &str, user: &str) -> Result<bool> {
        Ok(changed(
            self.prepare_cached("DELETE FROM likes WHERE post = ?1 AND user_id = ?2")?
                .execute(params![post, user])?,
        ))
    }

    async fn add_likes(&self, post: &str, by: i64) -> Result<u64> {
        let n: i64 = self
            .prepare_cached("UPDATE posts SET likes = likes + ?2 WHERE id = ?1 RETURNING likes")?
            .query_row(params![post, by], |r| r.get(0))?;
        Ok(n as u64)
    }

    async fn insert_follow(&self, follower: &str, followee: &str, now: i64) -> Result<bool> {
        Ok(changed(
            self.prepare_cached(
                "INSERT INTO follows (follower, followee, ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![follower, followee, now])?,
        ))
    }

    async fn delete_follow(&self, follower: &str, followee: &str) -> Result<()> {
        self.prepare_cached("DELETE FROM follows WHERE follower = ?1 AND followee = ?2")?
            .execute(params![follower, followee])?;
        Ok(())
    }

    async fn followers(&self, user: &str) -> Result<Vec<String>> {
        Ok(self
            .prepare_cached("SELECT follower FROM follows WHERE followee = ?1")?
            .query_map([user], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?)
    }

    async fn followee_count(&self, user: &str) -> Result<u64> {
        let n: i64 = self
            .prepare_cached("SELECT COUNT(*) FROM follows WHERE follower = ?1")?
            .query_row([user], |r| r.get(0))?;
        Ok(n as u64)
    }

    async fn post_watermark(&self) -> Result<u64> {
        let w: i64 = self
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM posts")?
            .query_row([], |r| r.get(0))?;
        Ok(w as u64)
    }

    async fn newest_posts(&self, user: &str, limit: usize) -> Result<Vec<StoredPost>> {
        let st = self.prepare_cached(&format!(
            "SELECT {POST_COLUMNS} FROM posts
             WHERE author IN (SELECT followee FROM follows WHERE follower = ?1 UNION ALL SELECT ?1)
             ORDER BY seq DESC LIMIT ?2"
        ))?;
        posts(st, params![user, limit as i64])
    }

    async fn posts_since(&self, user: &str, after: i64, limit: usize) -> Result<Vec<StoredPost>> {
        let st = self.prepare_cached(&format!(
            "SELECT {POST_COLUMNS} FROM posts
             WHERE seq > ?2 AND (author = ?1 OR EXISTS
               (SELECT 1 FROM follows WHERE follower = ?1 AND followee = posts.author))
             ORDER BY seq DESC LIMIT ?3"
        ))?;
        posts(st, params![user, after, limit as i64])
    }

    async fn posts_by_id(&self, ids: &[String]) -> Result<Vec<StoredPost>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.post(id).await?);
        }
        Ok(out)
    }

    async fn comment_count(&self, post: &str) -> Result<Option<u64>> {
        let n: Option<i64> = self
            .prepare_cached("SELECT comments FROM posts WHERE id = ?1")?
            .query_row([post], |r| r.get(0))
            .optional()?;
        Ok(n.map(|n| n as u64))
    }

    async fn touch_active(&self, user: &str, now: i64) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO activity (user_id, active_ms) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET active_ms = MAX(active_ms, excluded.active_ms)",
        )?
        .execute(params![user, now])?;
        Ok(())
    }

    async fn active_users(&self, since_ms: i64) -> Result<Vec<String>> {
        Ok(self
            .prepare_cached("SELECT user_id FROM activity WHERE active_ms >= ?1")?
            .query_map([since_ms], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?)
    }
}
