//! Where backups live: a local directory or any S3-compatible service, through the
//! `object_store` crate. Objects are written by multipart upload (the object exists only
//! once complete, so a crash never leaves a partial object under a backup's name) and read
//! back as a stream.

use crate::config::BackupStore as StoreConfig;
use crate::error::{Error, Result};
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use std::sync::Arc;

/// A backup store and the key prefix under which this deployment writes.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    part_size: usize,
    /// Parts uploaded at once per object (bounds memory: about part size x this).
    part_concurrency: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner)
    }
}

fn store_error(what: &str, e: object_store::Error) -> Error {
    tracing::warn!(error = %e, "backup store: {what}");
    Error::Unavailable(format!("backup store: cannot {what}"))
}

impl Store {
    /// Opens the configured store (creating a local directory when missing).
    pub fn open(cfg: &StoreConfig) -> Result<Store> {
        let (inner, prefix): (Arc<dyn ObjectStore>, String) =
            match cfg.location.strip_prefix("s3://") {
                Some(rest) => {
                    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    let mut b = object_store::aws::AmazonS3Builder::new()
                        .with_bucket_name(bucket)
                        .with_region(&cfg.s3_region)
                        .with_allow_http(cfg.s3_allow_http);
                    if !cfg.s3_endpoint.is_empty() {
                        b = b
                            .with_endpoint(&cfg.s3_endpoint)
                            .with_virtual_hosted_style_request(false);
                    }
                    if !cfg.s3_access_key_id.is_empty() {
                        b = b
                            .with_access_key_id(&cfg.s3_access_key_id)
                            .with_secret_access_key(&cfg.s3_secret_access_key);
                    }
                    let s3 = b
                        .build()
                        .map_err(|e| Error::InvalidArgument(format!("backup.location: {e}")))?;
                    (Arc::new(s3), prefix.trim_matches('/').to_string())
                }
                None => {
                    // Directories are made as objects are written: nothing is created
                    // until the first backup.
                    let dir = cfg
                        .location
                        .strip_prefix("file://")
                        .unwrap_or(&cfg.location);
                    let dir = std::path::absolute(dir).map_err(|e| {
                        Error::InvalidArgument(format!("backup.location {dir:?}: {e}"))
                    })?;
                    let prefix = dir
                        .to_str()
                        .ok_or_else(|| {
                            Error::InvalidArgument("backup.location must be valid UTF-8".into())
                        })?
                        .trim_matches('/')
                        .to_string();
                    (
                        Arc::new(object_store::local::LocalFileSystem::new()),
                        prefix,
                    )
                }
            };
        Ok(Store {
            inner,
            prefix,
            part_size: cfg.part_size_bytes,
            part_concurrency: 2,
        })
    }

    /// The full object path of `key` (under this deployment's prefix).
    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Starts writing an object.
    pub async fn writer(&self, key: &str) -> Result<Writer> {
        let upload = self
            .inner
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| store_error("start an upload", e))?;
        Ok(Writer {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, self.part_size)),
            concurrency: self.part_concurrency,
            bytes: 0,
        })
    }

    /// Reads an object as a stream of byte chunks.
    pub async fn read(
        &self,
        key: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>>> + use<>> {
        let got = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| store_error("read a backup", e))?;
        Ok(got.into_stream().map(|r| {
            r.map(|b| b.to_vec())
                .map_err(|e| store_error("read a backup", e))
        }))
    }

    /// Writes a small object whole.
    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.inner
            .put(&self.path(key), data.into())
            .await
            .map(|_| ())
            .map_err(|e| store_error("write a backup key", e))
    }

    /// Reads a small object whole.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let got = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| store_error("read a backup key", e))?;
        got.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| store_error("read a backup key", e))
    }

    /// Deletes an object (a missing one is fine).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("delete a backup", e)),
        }
    }

    /// Whether an object exists, and its size.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.inner.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("look up a backup", e)),
        }
    }
}

/// An object being written; it exists only after [`Writer::finish`].
pub struct Writer {
    upload: Option<WriteMultipart>,
    concurrency: usize,
    pub bytes: u64,
}

impl Writer {
    /// Appends bytes, waiting while too many parts are in flight (bounded memory).
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(Error::Internal("backup upload already ended".into()));
        };
        upload
            .wait_for_capacity(self.concurrency)
            .await
            .map_err(|e| store_error("upload a part", e))?;
        upload.write(data);
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Completes the upload: the object appears whole, at once.
    pub async fn finish(mut self) -> Result<()> {
        let Some(upload) = self.upload.take() else {
            return Err(Error::Internal("backup upload already ended".into()));
        };
        upload
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| store_error("complete an upload", e))
    }

    /// Abandons the upload (its parts are discarded; no object appears).
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!(error = %e, "backup store: cannot abort an upload");
            }
        }
    }
}
