//! Uploaded media: where the bytes go ([`MediaStore`]: a local directory, or an S3-compatible
//! bucket) and their metadata rows in the store's database ([`MediaMeta`]); the rules of
//! each, written once.
//!
//! Bytes live in `<data-dir>/media/<id>` ([`LocalMedia`]: written to a temporary file,
//! fsynced, renamed, so a crash never leaves a half file under a real id), or, with the `s3`
//! feature, in any S3-compatible bucket (`ObjectMedia`). Each of those only keeps bytes under
//! an id (`MediaBytes`); [`MediaStore`] is put on both by `impl_media_store!`: the metadata row
//! (owner, content type, size) is written after the bytes, in the store's database
//! ([`MediaMeta`]: SQLite or PostgreSQL, `sqlite.rs` and `postgres.rs` holding the SQL), so a
//! media id that exists always has its bytes, and attachment checks never leave the database.

mod local;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "s3")]
pub(crate) mod s3;
mod sqlite;

use crate::{Result, StoreError, new_id};
use async_trait::async_trait;
pub use local::LocalMedia;
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
    /// Erase every medium `owner` uploaded (user erasure): the metadata rows first, so no
    /// id is found whose bytes are gone, then the bytes (a crash between leaves only
    /// unreachable bytes). How many were erased.
    async fn erase_owner(&self, owner: &str) -> Result<u64>;
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
    /// Delete the rows of every medium of `owner`; their ids.
    async fn delete_media_of(&self, owner: &str) -> Result<Vec<String>>;
}

/// Where a medium's bytes are kept, under its id: all that differs between a directory and a
/// bucket. `impl_media_store!` puts [`MediaStore`] on it.
pub(crate) trait MediaBytes {
    /// The metadata rows.
    fn meta(&self) -> &dyn MediaMeta;
    /// Keep `bytes` under `id`; durable when this returns.
    async fn write(&self, id: &str, bytes: Vec<u8>) -> Result<()>;
    /// Keep the bytes of `file` under `id`, taking the file (moved or deleted); durable when
    /// this returns.
    async fn write_file(&self, id: &str, file: PathBuf) -> Result<()>;
    /// The bytes kept under `id` (its metadata row exists, so they do).
    async fn read(&self, id: &str) -> Result<Vec<u8>>;
    /// Forget the bytes kept under `id` (none kept is no error).
    async fn remove(&self, id: &str) -> Result<()>;
}

/// [`MediaStore`] for a [`MediaBytes`]: a new medium gets a fresh id, its bytes are kept
/// first and its metadata row is written after them; a read starts at the metadata.
macro_rules! impl_media_store {
    ($media:ty) => {
        #[async_trait::async_trait]
        impl $crate::media::MediaStore for $media {
            async fn put(
                &self,
                owner: &str,
                content_type: &str,
                bytes: Vec<u8>,
            ) -> Result<$crate::MediaInfo, $crate::StoreError> {
                let info = $crate::MediaInfo::fresh(owner, content_type, bytes.len() as u64)?;
                $crate::media::MediaBytes::write(self, &info.id, bytes).await?;
                $crate::media::MediaBytes::meta(self)
                    .insert_media(&info)
                    .await?;
                Ok(info)
            }

            async fn put_file(
                &self,
                owner: &str,
                content_type: &str,
                file: std::path::PathBuf,
                size: u64,
            ) -> Result<$crate::MediaInfo, $crate::StoreError> {
                let info = $crate::MediaInfo::fresh(owner, content_type, size)?;
                $crate::media::MediaBytes::write_file(self, &info.id, file).await?;
                $crate::media::MediaBytes::meta(self)
                    .insert_media(&info)
                    .await?;
                Ok(info)
            }

            async fn get(
                &self,
                id: &str,
            ) -> Result<Option<($crate::MediaInfo, Vec<u8>)>, $crate::StoreError> {
                let Some(info) = $crate::media::MediaBytes::meta(self).media(id).await? else {
                    return Ok(None);
                };
                let bytes = $crate::media::MediaBytes::read(self, &info.id).await?;
                Ok(Some((info, bytes)))
            }

            async fn missing(&self, ids: &[String]) -> Result<Vec<String>, $crate::StoreError> {
                $crate::media::MediaBytes::meta(self)
                    .missing_media(ids)
                    .await
            }

            async fn usage(&self, owner: &str) -> Result<u64, $crate::StoreError> {
                $crate::media::MediaBytes::meta(self)
                    .media_usage(owner)
                    .await
            }

            async fn erase_owner(&self, owner: &str) -> Result<u64, $crate::StoreError> {
                let ids = $crate::media::MediaBytes::meta(self)
                    .delete_media_of(owner)
                    .await?;
                for id in &ids {
                    $crate::media::MediaBytes::remove(self, id).await?;
                }
                Ok(ids.len() as u64)
            }
        }
    };
}
pub(crate) use impl_media_store;

/// A metadata row's columns: id, owner, content_type, size.
pub(crate) type MediaRow = (String, String, String, i64);

pub(crate) fn media_from_row((id, owner, content_type, size): MediaRow) -> MediaInfo {
    MediaInfo {
        id,
        owner,
        content_type,
        size: size as u64,
    }
}

/// What the metadata rules need of a transaction; each backend implements it with its SQL.
pub(crate) trait MediaTx {
    /// Record a medium (an id recorded already stays as it is).
    async fn insert_media(&self, info: &MediaInfo, now: i64) -> Result<()>;
    async fn media(&self, id: &str) -> Result<Option<MediaRow>>;
    /// Those of `ids` that exist, in any order.
    async fn media_found(&self, ids: &[String]) -> Result<Vec<String>>;
    /// The sum of `owner`'s media sizes (0 when none).
    async fn media_bytes(&self, owner: &str) -> Result<i64>;
    /// Delete `owner`'s rows; their ids.
    async fn delete_media_of(&self, owner: &str) -> Result<Vec<String>>;
}

pub(crate) async fn media(tx: &impl MediaTx, id: &str) -> Result<Option<MediaInfo>> {
    Ok(tx.media(id).await?.map(media_from_row))
}

pub(crate) async fn media_usage(tx: &impl MediaTx, owner: &str) -> Result<u64> {
    Ok(tx.media_bytes(owner).await?.max(0) as u64)
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
                $crate::run!(self.read, |tx| $crate::media::media(tx, &id))
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
                $crate::run!(self.read, |tx| $crate::media::media_usage(tx, &owner))
            }

            async fn delete_media_of(
                &self,
                owner: &str,
            ) -> Result<Vec<String>, $crate::StoreError> {
                let owner = owner.to_owned();
                $crate::run!(self.write, |tx| {
                    $crate::media::MediaTx::delete_media_of(tx, &owner)
                })
            }
        }
    };
}
pub(crate) use impl_media_meta;

/// A file-system error: a full disk is `Unavailable`.
fn io(e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(28) {
        StoreError::Unavailable("storage is full".into())
    } else {
        StoreError::Internal(e.to_string())
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
