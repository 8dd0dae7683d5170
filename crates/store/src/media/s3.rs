//! Media bytes in any S3-compatible bucket, through the `object_store` crate (the `s3`
//! feature); metadata in the store.

use super::{MediaBytes, MediaMeta, S3Config, io};
use crate::StoreError;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::path::PathBuf;
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

super::impl_media_store!(ObjectMedia);

impl MediaBytes for ObjectMedia {
    fn meta(&self) -> &dyn MediaMeta {
        &*self.store
    }

    async fn write(&self, id: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.objects
            .put(&Path::from(id), bytes.into())
            .await
            .map_err(object_err)?;
        Ok(())
    }

    async fn write_file(&self, id: &str, file: PathBuf) -> Result<(), StoreError> {
        use tokio::io::AsyncReadExt;
        // A multipart upload in parts of a few MiB: the file is never read whole.
        let upload = self
            .objects
            .put_multipart(&Path::from(id))
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
                Ok(())
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    async fn read(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        let got = self
            .objects
            .get(&Path::from(id))
            .await
            .map_err(object_err)?;
        let bytes = got.bytes().await.map_err(object_err)?;
        Ok(bytes.to_vec())
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        match self.objects.delete(&Path::from(id)).await {
            Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(object_err(e)),
        }
    }
}
