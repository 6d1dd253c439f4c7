//! The service configuration (DESIGN §3.1). It is read once, at the CLI edge: every value is a
//! clap flag with an environment fallback (`--database-url` / `AIRLOCK_DATABASE_URL`,
//! `--storage-url` / `AIRLOCK_STORAGE_URL`, …), and everything below the CLI takes a
//! [`ServiceConfig`]. The AWS SDK reads its own standard variables (`AWS_ENDPOINT_URL`, …).

use std::path::PathBuf;
use std::sync::Arc;

use crate::storage::fs::FsStore;
use crate::storage::s3::S3Store;
use crate::storage::{ObjectStore, StorageError};

pub const DEFAULT_DATA_DIR: &str = "./airlock-data";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./airlock-data/airlock.db";
pub const DEFAULT_STORAGE_URL: &str = "file://./airlock-data/storage";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8787";

/// Everything the service commands need to reach their database and store.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub database_url: String,
    pub storage: StorageUrl,
    /// Base of the local backend's download links.
    pub public_url: String,
    pub s3: S3Options,
}

/// S3 settings beyond the AWS SDK's own configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Options {
    /// Path-style addressing, for self-hosted stores.
    pub path_style: bool,
    /// Request SSE-S3 (AES256) on every put.
    pub encrypt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    File(PathBuf),
    S3 { bucket: String },
}

impl StorageUrl {
    pub fn parse(url: &str) -> Result<Self, StorageError> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(StorageError::Config("file:// needs a path".into()));
            }
            return Ok(StorageUrl::File(PathBuf::from(path)));
        }
        if let Some(bucket) = url.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(StorageError::Config(format!(
                    "{url:?}: use s3://BUCKET (no path)"
                )));
            }
            return Ok(StorageUrl::S3 {
                bucket: bucket.to_string(),
            });
        }
        Err(StorageError::Config(format!(
            "AIRLOCK_STORAGE_URL {url:?} must be s3://BUCKET or file:///path"
        )))
    }
}

/// Open the configured store.
pub async fn open_store(config: &ServiceConfig) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Ok(match &config.storage {
        StorageUrl::File(path) => Arc::new(FsStore::open(path, &config.public_url)?),
        StorageUrl::S3 { bucket } => Arc::new(S3Store::from_env(bucket, config.s3).await),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls() {
        assert_eq!(
            StorageUrl::parse("s3://leads").unwrap(),
            StorageUrl::S3 {
                bucket: "leads".into()
            }
        );
        assert_eq!(
            StorageUrl::parse("file:///var/lib/airlock").unwrap(),
            StorageUrl::File("/var/lib/airlock".into())
        );
        for bad in ["s3://", "s3://a/b", "http://x", "file://"] {
            assert!(StorageUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
