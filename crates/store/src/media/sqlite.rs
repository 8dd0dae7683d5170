//! Media metadata's SQL on SQLite.

use super::{MediaInfo, MediaRow, MediaTx};
use crate::sqlite::Tx;
use crate::{Result, SqliteStore};
use rusqlite::{OptionalExtension, params};

super::impl_media_meta!(SqliteStore);

impl MediaTx for Tx<'_> {
    async fn insert_media(&self, info: &MediaInfo, now: i64) -> Result<()> {
        self.prepare_cached(
            "INSERT INTO media (id, owner, content_type, size, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![info.id, info.owner, info.content_type, info.size as i64, now])?;
        Ok(())
    }

    async fn media(&self, id: &str) -> Result<Option<MediaRow>> {
        Ok(self
            .prepare_cached("SELECT id, owner, content_type, size FROM media WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?)
    }

    async fn media_found(&self, ids: &[String]) -> Result<Vec<String>> {
        // One primary-key lookup per id: attachments are few.
        let mut st = self.prepare_cached("SELECT 1 FROM media WHERE id = ?1")?;
        let mut found = Vec::new();
        for id in ids {
            if st.exists([id])? {
                found.push(id.clone());
            }
        }
        Ok(found)
    }

    async fn media_bytes(&self, owner: &str) -> Result<i64> {
        Ok(self
            .prepare_cached("SELECT COALESCE(SUM(size), 0) FROM media WHERE owner = ?1")?
            .query_row([owner], |r| r.get(0))?)
    }

    async fn delete_media_of(&self, owner: &str) -> Result<Vec<String>> {
        Ok(self
            .prepare_cached("DELETE FROM media WHERE owner = ?1 RETURNING id")?
            .query_map([owner], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }
}
