//! Uploaded media: a [`MediaStore`] trait and the local-directory implementation.
//!
//! Bytes live in `<data-dir>/media/<id>` (written to a temporary file, fsynced, renamed, so a
//! crash never leaves a half file under a real id); the metadata row (owner, content type,
//! size) is written after the bytes, in the store's database, so a media id that exists
//! always has its bytes. An S3-compatible implementation of the same trait is future work.

use crate::StoreError;
use crate::sqlite::{SqliteStore, new_id};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use std::path::PathBuf;

/// What is known of a stored medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// Its id.
    pub id: String,
    /// Who uploaded it.
    pub owner: String,
    /// The content type given at upload.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
}

/// Where uploaded media is kept.
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Store bytes; durable when this returns.
    async fn put(
        &self,
        owner: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<MediaInfo, StoreError>;
    /// The medium and its bytes.
    async fn get(&self, id: &str) -> Result<Option<(MediaInfo, Vec<u8>)>, StoreError>;
    /// Which of these ids do not exist.
    async fn missing(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
}

/// Media in a local directory, metadata in the SQLite store.
#[derive(Debug, Clone)]
pub struct LocalMedia {
    dir: PathBuf,
    store: SqliteStore,
}

impl LocalMedia {
    /// Media under `dir` (created if missing).
    pub fn new(dir: PathBuf, store: SqliteStore) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        Ok(LocalMedia { dir, store })
    }
}

fn io(e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(28) {
        StoreError::Unavailable("storage is full".into())
    } else {
        StoreError::Internal(e.to_string())
    }
}

#[async_trait]
impl MediaStore for LocalMedia {
    async fn put(
        &self,
        owner: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<MediaInfo, StoreError> {
        let id = new_id("md")?;
        let info = MediaInfo {
            id: id.clone(),
            owner: owner.to_owned(),
            content_type: content_type.to_owned(),
            size: bytes.len() as u64,
        };
        let (dir, file_id) = (self.dir.clone(), id.clone());
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            use std::io::Write;
            let tmp = dir.join(format!(".{file_id}.tmp"));
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, dir.join(&file_id)).map_err(io)?;
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))??;
        let row = info.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.store
            .write_with(move |conn| {
                conn.prepare_cached("INSERT INTO media (id, owner, content_type, size, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![row.id, row.owner, row.content_type, row.size as i64, now])?;
                Ok(())
            })
            .await?;
        Ok(info)
    }

    async fn get(&self, id: &str) -> Result<Option<(MediaInfo, Vec<u8>)>, StoreError> {
        let key = id.to_owned();
        let info = self
            .store
            .read_with(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT id, owner, content_type, size FROM media WHERE id = ?1",
                    )?
                    .query_row([key], |r| {
                        Ok(MediaInfo {
                            id: r.get(0)?,
                            owner: r.get(1)?,
                            content_type: r.get(2)?,
                            size: r.get::<_, i64>(3)? as u64,
                        })
                    })
                    .optional()?)
            })
            .await?;
        let Some(info) = info else { return Ok(None) };
        let bytes = tokio::fs::read(self.dir.join(&info.id)).await.map_err(io)?;
        Ok(Some((info, bytes)))
    }

    async fn missing(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids = ids.to_vec();
        self.store
            .read_with(move |conn| {
                let mut missing = Vec::new();
                for id in ids {
                    if !conn
                        .prepare_cached("SELECT 1 FROM media WHERE id = ?1")?
                        .exists([&id])?
                    {
                        missing.push(id);
                    }
                }
                Ok(missing)
            })
            .await
    }
}
