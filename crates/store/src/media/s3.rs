//! Media bytes in any S3-compatible bucket, through the `object_store` crate (the `s3`
//! feature); metadata in the store.

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
        let info = MediaInfo::fresh(owner, content_type, bytes.len() as u64)?;
        self.objects
            .put(&Path::from(info.id.as_str()), bytes.into())
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
        let info = MediaInfo::fresh(owner, content_type, size)?;
        // A multipart upload in parts of a few MiB: the file is never read whole.
        let upload = self
            .objects
            .put_multipart(&Path::from(info.id.as_str()))
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
