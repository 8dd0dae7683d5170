//! Uploaded media: where the bytes go ([`MediaStore`]: a local directory, or an S3-compatible
//! bucket) and their metadata rows in the store's database ([`MediaMeta`]).
//!
//! Bytes live in `<data-dir>/media/<id>` (written to a temporary file, fsynced, renamed, so a
//! crash never leaves a half file under a real id), or, with the `s3` feature, in any
//! S3-compatible bucket ([`s3::ObjectMedia`]). Either way the metadata row (owner, content
//! type, size) is written after the bytes, in the store's database ([`MediaMeta`]: SQLite or
//! PostgreSQL), so a media id that exists always has its bytes, and attachment checks never
//! leave the database.

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "s3")]
pub mod s3;
mod sqlite;

use crate::{Result, StoreError, new_id};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;

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

impl MediaInfo {
    /// A new medium of `owner`, under a fresh random id.
    fn fresh(owner: &str, content_type: &str, size: u64) -> Result<Self, StoreError> {
        Ok(MediaInfo {
            id: new_id("md")?,
            owner: owner.to_owned(),
            content_type: content_type.to_owned(),
            size,
        })
    }
}

/// Where uploaded media is kept.
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Store bytes; durable when this returns.
    async fn put(&self, owner: &str, content_type: &str, bytes: Vec<u8>) -> Result<MediaInfo>;
    /// Store the bytes of a file the caller wrote (an upload spooled to disk, so it is never
    /// held whole in memory); the store takes the file (moves or deletes it). Durable when
    /// this returns.
    async fn put_file(
        &self,
        owner: &str,
        content_type: &str,
        file: PathBuf,
        size: u64,
    ) -> Result<MediaInfo>;
    /// The medium and its bytes.
    async fn get(&self, id: &str) -> Result<Option<(MediaInfo, Vec<u8>)>>;
    /// Which of these ids do not exist.
    async fn missing(&self, ids: &[String]) -> Result<Vec<String>>;
    /// Bytes of media `owner` stores, in all (the upload quota).
    async fn usage(&self, owner: &str) -> Result<u64>;
}

/// Where media metadata rows live: the store's database.
#[async_trait]
pub trait MediaMeta: Send + Sync {
    /// Record a stored medium.
    async fn insert_media(&self, info: &MediaInfo) -> Result<()>;
    /// A medium's metadata.
    async fn media(&self, id: &str) -> Result<Option<MediaInfo>>;
    /// Which of these ids do not exist.
    async fn missing_media(&self, ids: &[String]) -> Result<Vec<String>>;
    /// Bytes of media `owner` stores, in all.
    async fn media_usage(&self, owner: &str) -> Result<u64>;
}

/// Media in a local directory, metadata in the store.
#[derive(Clone)]
pub struct LocalMedia {
    dir: PathBuf,
    store: Arc<dyn MediaMeta>,
}

impl std::fmt::Debug for LocalMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMedia")
            .field("dir", &self.dir)
            .finish()
    }
}

impl LocalMedia {
    /// Media under `dir` (created if missing), metadata in `store`.
    pub fn new(dir: PathBuf, store: impl MediaMeta + 'static) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        Ok(LocalMedia {
            dir,
            store: Arc::new(store),
        })
    }
}

/// What the metadata rules need of a transaction; each backend implements it with its SQL.
pub(crate) trait MediaTx {
    /// Record a medium (an id recorded already stays as it is).
    async fn insert_media(&self, info: &MediaInfo, now: i64) -> Result<()>;
    async fn media(&self, id: &str) -> Result<Option<MediaInfo>>;
    /// Those of `ids` that exist, in any order.
    async fn media_found(&self, ids: &[String]) -> Result<Vec<String>>;
    async fn media_usage(&self, owner: &str) -> Result<u64>;
}

/// Which of `ids` do not exist, in the order asked.
pub(crate) async fn missing_media(tx: &impl MediaTx, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found = tx.media_found(ids).await?;
    Ok(ids.iter().filter(|i| !found.contains(i)).cloned().collect())
}

/// [`MediaMeta`] for a backend: each method runs its rule in one of the backend's
/// transactions (see the crate's "How a use case runs").
macro_rules! impl_media_meta {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::media::MediaMeta for $store {
            async fn insert_media(
                &self,
                info: &$crate::MediaInfo,
            ) -> Result<(), $crate::StoreError> {
                let (info, now) = (info.clone(), self.now());
                $crate::run!(self.write, |tx| {
                    $crate::media::MediaTx::insert_media(tx, &info, now)
                })
            }

            async fn media(
                &self,
                id: &str,
            ) -> Result<Option<$crate::MediaInfo>, $crate::StoreError> {
                let id = id.to_owned();
                $crate::run!(self.read, |tx| $crate::media::MediaTx::media(tx, &id))
            }

            async fn missing_media(
                &self,
                ids: &[String],
            ) -> Result<Vec<String>, $crate::StoreError> {
                let ids = ids.to_vec();
                $crate::run!(self.read, |tx| $crate::media::missing_media(tx, &ids))
            }

            async fn media_usage(&self, owner: &str) -> Result<u64, $crate::StoreError> {
                let owner = owner.to_owned();
                $crate::run!(self.read, |tx| $crate::media::MediaTx::media_usage(
                    tx, &owner
                ))
            }
        }
    };
}
pub(crate) use impl_media_meta;

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
        let info = MediaInfo::fresh(owner, content_type, bytes.len() as u64)?;
        let (dir, file_id) = (self.dir.clone(), info.id.clone());
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
        self.store.insert_media(&info).await?;
        Ok(info)
    }

    async fn put_file(
        &self,
        owner: &str,
        content_type: &str,
        file: PathBuf,
        size: u64,
    ) -> Result<MediaInfo, StoreError> {
        let info = MediaInfo::fresh(owner, content_type, size)?;
        let (dir, file_id) = (self.dir.clone(), info.id.clone());
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let target = dir.join(&file_id);
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            // A rename when the spool is on the same file system (it is, in the data
            // directory); a copy otherwise.
            if std::fs::rename(&file, &target).is_err() {
                let tmp = dir.join(format!(".{file_id}.tmp"));
                std::fs::copy(&file, &tmp).map_err(io)?;
                std::fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(io)?;
                std::fs::rename(&tmp, &target).map_err(io)?;
                let _ = std::fs::remove_file(&file);
            }
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))??;
        self.store.insert_media(&info).await?;
        Ok(info)
    }

    async fn get(&self, id: &str) -> Result<Option<(MediaInfo, Vec<u8>)>, StoreError> {
        let Some(info) = self.store.media(id).await? else {
            return Ok(None);
        };
        let bytes = tokio::fs::read(self.dir.join(&info.id)).await.map_err(io)?;
        Ok(Some((info, bytes)))
    }

    async fn missing(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.store.missing_media(ids).await
    }

    async fn usage(&self, owner: &str) -> Result<u64, StoreError> {
        self.store.media_usage(owner).await
    }
}

/// Where an S3-compatible media store is (the `[media.s3]` settings).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region (any value for most S3-compatible servers).
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Allow a plain-HTTP endpoint (for a server on a private network or loopback).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}
