//! Uploaded media: a [`MediaStore`] trait and the local-directory implementation.
//!
//! Bytes live in `<data-dir>/media/<id>` (written to a temporary file, fsynced, renamed, so a
//! crash never leaves a half file under a real id), or, with the `s3` feature, in any
//! S3-compatible bucket ([`s3::ObjectMedia`]). Either way the metadata row (owner, content
//! type, size) is written after the bytes, in the store's database ([`MediaMeta`]: SQLite or
//! PostgreSQL), so a media id that exists always has its bytes, and attachment checks never
//! leave the database.

use crate::StoreError;
use crate::sqlite::{SqliteStore, new_id};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
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
    /// Store the bytes of a file the caller wrote (an upload spooled to disk, so it is never
    /// held whole in memory); the store takes the file (moves or deletes it). Durable when
    /// this returns.
    async fn put_file(
        &self,
        owner: &str,
        content_type: &str,
        file: PathBuf,
        size: u64,
    ) -> Result<MediaInfo, StoreError>;
    /// The medium and its bytes.
    async fn get(&self, id: &str) -> Result<Option<(MediaInfo, Vec<u8>)>, StoreError>;
    /// Which of these ids do not exist.
    async fn missing(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// Bytes of media `owner` stores, in all (the upload quota).
    async fn usage(&self, owner: &str) -> Result<u64, StoreError>;
}

/// Where media metadata rows live: the store's database.
#[async_trait]
pub trait MediaMeta: Send + Sync {
    /// Record a stored medium.
    async fn insert_media(&self, info: &MediaInfo) -> Result<(), StoreError>;
    /// A medium's metadata.
    async fn media(&self, id: &str) -> Result<Option<MediaInfo>, StoreError>;
    /// Which of these ids do not exist.
    async fn missing_media(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// Bytes of media `owner` stores, in all.
    async fn media_usage(&self, owner: &str) -> Result<u64, StoreError>;
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
    pub fn new(dir: PathBuf, store: impl MediaMeta + 'static) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        Ok(LocalMedia {
            dir,
            store: Arc::new(store),
        })
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
impl MediaMeta for SqliteStore {
    async fn insert_media(&self, info: &MediaInfo) -> Result<(), StoreError> {
        let info = info.clone();
        let now = self.now();
        self.write_with(move |conn| {
            conn.prepare_cached(
                "INSERT INTO media (id, owner, content_type, size, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![info.id, info.owner, info.content_type, info.size as i64, now])?;
            Ok(())
        })
        .await
    }

    async fn media(&self, id: &str) -> Result<Option<MediaInfo>, StoreError> {
        let key = id.to_owned();
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, owner, content_type, size FROM media WHERE id = ?1")?
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
        .await
    }

    async fn missing_media(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids = ids.to_vec();
        self.read_with(move |conn| {
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

    async fn media_usage(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_owned();
        self.read_with(move |conn| {
            let total: i64 = conn
                .prepare_cached("SELECT COALESCE(SUM(size), 0) FROM media WHERE owner = ?1")?
                .query_row([owner], |r| r.get(0))?;
            Ok(total.max(0) as u64)
        })
        .await
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
        let id = new_id("md")?;
        let info = MediaInfo {
            id: id.clone(),
            owner: owner.to_owned(),
            content_type: content_type.to_owned(),
            size,
        };
        let (dir, file_id) = (self.dir.clone(), id.clone());
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

#[cfg(feature = "s3")]
pub mod s3 {
    //! Media in any S3-compatible bucket, through the `object_store` crate.

    use super::*;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt};
    use std::sync::Arc;

    /// Media bytes in an object store, metadata in the store.
    #[derive(Clone)]
    pub struct ObjectMedia {
        objects: Arc<dyn ObjectStore>,
        store: Arc<dyn MediaMeta>,
    }

    impl std::fmt::Debug for ObjectMedia {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ObjectMedia")
        }
    }

    fn object_err(e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => {
                StoreError::Internal(format!("media bytes missing: {e}"))
            }
            other => StoreError::Unavailable(format!("object store: {other}")),
        }
    }

    impl ObjectMedia {
        /// Media in the S3-compatible bucket of `config`.
        pub fn s3(config: &S3Config, store: impl MediaMeta + 'static) -> Result<Self, StoreError> {
            let objects = object_store::aws::AmazonS3Builder::new()
                .with_endpoint(&config.endpoint)
                .with_bucket_name(&config.bucket)
                .with_region(&config.region)
                .with_access_key_id(&config.access_key_id)
                .with_secret_access_key(&config.secret_access_key)
                .with_allow_http(config.allow_http)
                .with_virtual_hosted_style_request(false)
                .build()
                .map_err(|e| StoreError::Internal(format!("media.s3: {e}")))?;
            Ok(ObjectMedia {
                objects: Arc::new(objects),
                store: Arc::new(store),
            })
        }
    }

    #[async_trait]
    impl MediaStore for ObjectMedia {
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
            self.objects
                .put(&Path::from(id.as_str()), bytes.into())
                .await
                .map_err(object_err)?;
            self.store.insert_media(&info).await?;
            Ok(info)
        }

        async fn put_file(
            &self,
            owner: &str,
            content_type: &str,
            file: std::path::PathBuf,
            size: u64,
        ) -> Result<MediaInfo, StoreError> {
            use tokio::io::AsyncReadExt;
            let id = new_id("md")?;
            let info = MediaInfo {
                id: id.clone(),
                owner: owner.to_owned(),
                content_type: content_type.to_owned(),
                size,
            };
            // A multipart upload in parts of a few MiB: the file is never read whole.
            let upload = self
                .objects
                .put_multipart(&Path::from(id.as_str()))
                .await
                .map_err(object_err)?;
            let mut writer = object_store::WriteMultipart::new(upload);
            let result: Result<(), StoreError> = async {
                let mut f = tokio::fs::File::open(&file).await.map_err(io)?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = f.read(&mut buf).await.map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    writer.wait_for_capacity(4).await.map_err(object_err)?;
                    writer.write(&buf[..n]);
                }
                Ok(())
            }
            .await;
            let _ = tokio::fs::remove_file(&file).await;
            match result {
                Ok(()) => {
                    writer.finish().await.map_err(object_err)?;
                }
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            }
            self.store.insert_media(&info).await?;
            Ok(info)
        }

        async fn usage(&self, owner: &str) -> Result<u64, StoreError> {
            self.store.media_usage(owner).await
        }

        async fn get(&self, id: &str) -> Result<Option<(MediaInfo, Vec<u8>)>, StoreError> {
            let Some(info) = self.store.media(id).await? else {
                return Ok(None);
            };
            let got = self
                .objects
                .get(&Path::from(info.id.as_str()))
                .await
                .map_err(object_err)?;
            let bytes = got.bytes().await.map_err(object_err)?;
            Ok(Some((info, bytes.to_vec())))
        }

        async fn missing(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
            self.store.missing_media(ids).await
        }
    }
}
