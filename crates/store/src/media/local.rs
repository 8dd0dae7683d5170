//! Media bytes in a local directory: `<dir>/<id>`, written as a temporary file, fsynced and
//! renamed (so a crash never leaves a half file under a real id), the directory fsynced after.

use super::{MediaBytes, MediaMeta, io};
use crate::{Result, StoreError};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

super::impl_media_store!(LocalMedia);

impl MediaBytes for LocalMedia {
    fn meta(&self) -> &dyn MediaMeta {
        &*self.store
    }

    async fn write(&self, id: &str, bytes: Vec<u8>) -> Result<()> {
        let (dir, id) = (self.dir.clone(), id.to_owned());
        blocking(move || {
            write_new(&dir, &id, |tmp| std::fs::write(tmp, &bytes))?;
            sync(&dir)
        })
        .await
    }

    async fn write_file(&self, id: &str, file: PathBuf) -> Result<()> {
        let (dir, id) = (self.dir.clone(), id.to_owned());
        blocking(move || {
            sync(&file)?;
            // A rename when the spool is on the same file system (it is, in the data
            // directory); a copy otherwise.
            if std::fs::rename(&file, dir.join(&id)).is_err() {
                write_new(&dir, &id, |tmp| std::fs::copy(&file, tmp).map(drop))?;
                let _ = std::fs::remove_file(&file);
            }
            sync(&dir)
        })
        .await
    }

    async fn read(&self, id: &str) -> Result<Vec<u8>> {
        tokio::fs::read(self.dir.join(id)).await.map_err(io)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        match tokio::fs::remove_file(self.dir.join(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }
}

/// Run file-system work on tokio's blocking pool.
async fn blocking(work: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
}

/// Put `<dir>/<id>` in place: `fill` writes `<dir>/.<id>.tmp`, which is fsynced and renamed.
fn write_new(dir: &Path, id: &str, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let tmp = dir.join(format!(".{id}.tmp"));
    fill(&tmp).map_err(io)?;
    sync(&tmp)?;
    std::fs::rename(&tmp, dir.join(id)).map_err(io)
}

/// fsync a file, or a directory (its entries: a rename in it).
fn sync(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io)
}
