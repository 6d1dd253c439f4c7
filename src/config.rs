//! Configuration from the environment (DESIGN §3.1); flags may override.
//!
//! - `AIRLOCK_STORAGE_URL`: `s3://BUCKET` or `file:///path` (default `file://./airlock-data/storage`)
//! - `AIRLOCK_PUBLIC_URL`: base of local download links (default `http://127.0.0.1:8787`)
//! - `AIRLOCK_LISTEN`: where `airlock serve` listens (default `127.0.0.1:8787`)
//! - S3: the standard AWS variables, plus `AIRLOCK_S3_PATH_STYLE=true` for self-hosted stores and
//!   `AIRLOCK_S3_SSE=none` for stores without SSE-S3.

use std::path::PathBuf;
use std::sync::Arc;

use crate::storage::fs::FsStore;
use crate::storage::s3::S3Store;
use crate::storage::{ObjectStore, StorageError};

pub const DEFAULT_DATA_DIR: &str = "./airlock-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

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

    pub fn from_env() -> Result<Self, StorageError> {
        match std::env::var("AIRLOCK_STORAGE_URL") {
            Ok(url) if !url.is_empty() => Self::parse(&url),
            _ => Ok(StorageUrl::File(
                PathBuf::from(DEFAULT_DATA_DIR).join("storage"),
            )),
        }
    }
}

pub fn public_url() -> String {
    std::env::var("AIRLOCK_PUBLIC_URL").unwrap_or_else(|_| format!("http://{DEFAULT_LISTEN}"))
}

/// Open the configured store.
pub async fn open_store(url: &StorageUrl) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Ok(match url {
        StorageUrl::File(path) => Arc::new(FsStore::open(path, &public_url())?),
        StorageUrl::S3 { bucket } => Arc::new(S3Store::from_env(bucket).await),
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
