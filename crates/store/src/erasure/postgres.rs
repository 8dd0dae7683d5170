//! Erasure's SQL on PostgreSQL.

use super::ErasureTx;
use crate::postgres::Tx;
use crate::{PgStore, Result};

super::impl_erasure_store!(PgStore);

/// Stage 5 of an erasure, `$1` the user: counts first, then the rows they count.
const ERASE_REST: [&str; 21] = [
    "DELETE FROM contacts WHERE owner = $1 OR user_id = $1",
    "DELETE FROM blocks WHERE blocker = $1 OR blocked = $1",
    "DELETE FROM conversation_mutes WHERE user_id = $1",
    "DELETE FROM conversation_bans WHERE user_id = $1",
    "DELETE FROM reports WHERE reporter = $1",
    // Reactions left on messages that no longer exist (stage 4 took the others).
    "DELETE FROM reactions WHERE user_id = $1",
    "DELETE FROM comments WHERE post IN (SELECT id FROM posts WHERE author = $1)",
    "DELETE FROM likes WHERE post IN (SELECT id FROM posts WHERE author = $1)",
    "DELETE FROM posts WHERE author = $1",
    "UPDATE posts SET likes = GREATEST(likes - 1, 0)
       WHERE id IN (SELECT post FROM likes WHERE user_id = $1)",
    "DELETE FROM likes WHERE user_id = $1",
    "UPDATE posts SET comments = GREATEST(comments -
         (SELECT COUNT(*) FROM comments c WHERE c.post = posts.id AND c.author = $1), 0)
       WHERE id IN (SELECT post FROM comments WHERE author = $1)",
    "DELETE FROM comments WHERE author = $1",
    "DELETE FROM follows WHERE follower = $1 OR followee = $1",
    "DELETE FROM activity WHERE user_id = $1",
    "DELETE FROM webhook_presence WHERE user_id = $1",
    "DELETE FROM refresh_tokens WHERE user_id = $1",
    "DELETE FROM refresh_families WHERE user_id = $1",
    "DELETE FROM inbox WHERE user_id = $1",
    // After `erase_rest` closed the open run: its end is the user's last seq.
    "DELETE FROM inbox_runs WHERE user_id = $1",
    // Everything counts as seen: the notify worker drops the pushes still due to the user.
    "UPDATE users SET acked_seq = last_seq WHERE id = $1",
];

impl ErasureTx for Tx<'_> {
    async fn erase_rest(&self, user: &str) -> Result<()> {
        self.exec("SELECT hubbub_close_run($1)", &[&user]).await?;
        for sql in ERASE_REST {
            self.exec(sql, &[&user]).await?;
        }
        Ok(())
    }
}
