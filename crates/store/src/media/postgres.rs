//! Media metadata's SQL on PostgreSQL.

use super::{MediaInfo, MediaRow, MediaTx};
use crate::postgres::Tx;
use crate::{PgStore, Result};

super::impl_media_meta!(PgStore);

impl MediaTx for Tx<'_> {
    async fn insert_media(&self, info: &MediaInfo, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO media (id, owner, content_type, size, created_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&info.id, &info.owner, &info.content_type, &(info.size as i64), &now],
        )
        .await?;
        Ok(())
    }

    async fn media(&self, id: &str) -> Result<Option<MediaRow>> {
        Ok(self
            .opt(
                "SELECT id, owner, content_type, size FROM media WHERE id = $1",
                &[&id],
            )
            .await?
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    async fn media_found(&self, ids: &[String]) -> Result<Vec<String>> {
        let rows = self
            .rows("SELECT id FROM media WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn media_bytes(&self, owner: &str) -> Result<i64> {
        Ok(self
            .one(
                "SELECT COALESCE(SUM(size), 0)::BIGINT FROM media WHERE owner = $1",
                &[&owner],
            )
            .await?
            .get(0))
    }

    async fn delete_media_of(&self, owner: &str) -> Result<Vec<String>> {
        Ok(self
            .rows("DELETE FROM media WHERE owner = $1 RETURNING id", &[&owner])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}
