//! The S3 backend, through `aws-sdk-s3`: any S3-compatible store. Credentials and endpoint come
//! from the standard AWS chain (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …, profiles,
//! web identity, container and instance metadata); `AIRLOCK_S3_PATH_STYLE=true` switches to
//! path-style addressing for self-hosted stores. The SDK's credential types redact themselves in
//! `Debug`; this type never holds a secret of its own.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption,
};
use aws_sdk_s3::Client;
use tokio::io::AsyncWriteExt;

use super::{
    DeleteOutcome, ListPage, Listed, ObjectKey, ObjectMeta, ObjectStore, PutMeta, StorageError,
};

/// Objects above this go up in parts.
const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;
const PART_SIZE: u64 = 16 * 1024 * 1024;
/// S3's limit per DeleteObjects request.
const DELETE_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Request SSE-S3 (AES256) on every put.
    encrypt: bool,
}

/// How to reach the store when not using the ambient AWS configuration (tests, tools).
#[derive(Debug)]
pub struct Explicit<'a> {
    pub endpoint: &'a str,
    pub region: &'a str,
    pub access_key: &'a str,
    pub secret_key: secrecy::SecretString,
}

impl S3Store {
    /// From the standard AWS configuration chain.
    pub async fn from_env(bucket: &str, options: crate::config::S3Options) -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.path_style)
            .build();
        S3Store::with_client(Client::from_conf(config), bucket, options.encrypt)
    }

    /// With explicit endpoint and credentials (path-style).
    pub fn explicit(e: Explicit<'_>, bucket: &str) -> Self {
        use secrecy::ExposeSecret;
        let creds = aws_sdk_s3::config::Credentials::new(
            e.access_key,
            e.secret_key.expose_secret(),
            None,
            None,
            "airlock-explicit",
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(e.endpoint)
            .region(aws_sdk_s3::config::Region::new(e.region.to_string()))
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        S3Store::with_client(Client::from_conf(config), bucket, true)
    }

    fn with_client(client: Client, bucket: &str, encrypt: bool) -> Self {
        S3Store {
            client,
            bucket: bucket.to_string(),
            encrypt,
        }
    }

    async fn put_multipart(
        &self,
        key: &ObjectKey,
        path: &Path,
        size: u64,
        meta: &PutMeta,
        mut written: Option<tokio::sync::watch::Receiver<u64>>,
    ) -> Result<(), StorageError> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(&meta.content_type)
            .content_disposition(super::content_disposition(&meta.download_name))
            .metadata("download-name", super::ascii_filename(&meta.download_name));
        if self.encrypt {
            create = create.server_side_encryption(ServerSideEncryption::Aes256);
        }
        let upload = create.send().await.map_err(map_err)?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0;
            let mut number = 1;
            while offset < size {
                let len = PART_SIZE.min(size - offset);
                // A file still being written: each part goes up as soon as it is on disk.
                if let Some(w) = written.as_mut() {
                    w.wait_for(|n| *n >= offset + len).await.map_err(|_| {
                        StorageError::Unavailable("the upload ended before its last part".into())
                    })?;
                }
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| {
                        StorageError::Unavailable(format!("reading {}: {e}", path.display()))
                    })?;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(body)
                    .send()
                    .await
                    .map_err(map_err)?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(String::from))
                        .build(),
                );
                offset += len;
                number += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key.as_str())
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(map_err)?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Best effort; the lifecycle rule aborts whatever is left after a day.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key.as_str())
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

/// Map an SDK error to ours: refused credentials are permanent and say what to check; anything
/// that did not reach the store, or a 5xx, is an outage worth retrying.
fn map_err<E, R>(err: SdkError<E, R>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().map(str::to_string);
    match (&err, code.as_deref()) {
        (
            _,
            Some(
                c @ ("InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "ExpiredToken"
                | "InvalidToken"),
            ),
        ) => StorageError::Credentials {
            code: c.to_string(),
        },
        (SdkError::ServiceError(_), Some(c)) => {
            StorageError::Unavailable(format!("store error {c}"))
        }
        _ => StorageError::Unavailable(aws_smithy_error_chain(&err)),
    }
}

fn aws_smithy_error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_file(
        &self,
        key: &ObjectKey,
        path: &Path,
        cap: u64,
        meta: &PutMeta,
    ) -> Result<u64, StorageError> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|source| StorageError::Io {
                path: path.display().to_string(),
                source,
            })?
            .len();
        if size > cap {
            return Err(StorageError::TooLarge { size, cap });
        }
        if size > MULTIPART_THRESHOLD {
            self.put_multipart(key, path, size, meta, None).await?;
            return Ok(size);
        }
        let body = ByteStream::read_from()
            .path(path)
            .length(Length::Exact(size))
            .build()
            .await
            .map_err(|e| StorageError::Unavailable(format!("reading {}: {e}", path.display())))?;
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_length(size as i64)
            .content_type(&meta.content_type)
            .content_disposition(super::content_disposition(&meta.download_name))
            .metadata("download-name", super::ascii_filename(&meta.download_name))
            .body(body);
        if self.encrypt {
            put = put.server_side_encryption(ServerSideEncryption::Aes256);
        }
        put.send().await.map_err(map_err)?;
        Ok(size)
    }

    async fn get_to_file(
        &self,
        key: &ObjectKey,
        dest: &Path,
        cap: u64,
    ) -> Result<u64, StorageError> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await;
        let got = match got {
            Ok(g) => g,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(StorageError::NotFound(key.clone()))
            }
            Err(e) => return Err(map_err(e)),
        };
        let declared = got.content_length().unwrap_or(0).max(0) as u64;
        if declared > cap {
            return Err(StorageError::TooLarge {
                size: declared,
                cap,
            });
        }
        let io = |source| StorageError::Io {
            path: dest.display().to_string(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dest)
            .await
            .map_err(io)?;
        let mut body = got.body;
        let mut total = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StorageError::Unavailable(format!("download of {key} broke off: {e}")))?
        {
            total += chunk.len() as u64;
            if total > cap {
                return Err(StorageError::TooLarge { size: total, cap });
            }
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        Ok(total)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
        {
            Ok(h) => Ok(Some(ObjectMeta {
                size: h.content_length().unwrap_or(0).max(0) as u64,
                modified: h
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<DeleteOutcome, StorageError> {
        let mut outcome = DeleteOutcome::default();
        for batch in keys.chunks(DELETE_BATCH) {
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k.as_str()).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::Config(e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Config(e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(map_err)?;
            let mut failed = std::collections::BTreeMap::new();
            for err in out.errors() {
                let code = err.code().unwrap_or("Unknown");
                if code == "NoSuchKey" {
                    continue;
                }
                if let Some(k) = err.key() {
                    failed.insert(k.to_string(), code.to_string());
                }
            }
            for key in batch {
                match failed.remove(key.as_str()) {
                    Some(code) => outcome.failed.push((key.clone(), code)),
                    None => outcome.deleted.push(key.clone()),
                }
            }
        }
        Ok(outcome)
    }

    async fn presign_get(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        download_name: &str,
    ) -> Result<String, StorageError> {
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| StorageError::Config(e.to_string()))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .response_content_disposition(super::content_disposition(download_name))
            .response_content_type(key.kind().content_type())
            .presigned(config)
            .await
            .map_err(map_err)?;
        Ok(req.uri().to_string())
    }

    async fn put_growing(
        &self,
        key: &ObjectKey,
        path: &Path,
        size: u64,
        meta: &PutMeta,
        mut written: tokio::sync::watch::Receiver<u64>,
    ) -> Result<u64, StorageError> {
        if size > MULTIPART_THRESHOLD {
            self.put_multipart(key, path, size, meta, Some(written))
                .await?;
            return Ok(size);
        }
        super::written_through(&mut written, size).await?;
        self.put_file(key, path, size, meta).await
    }

    async fn presign_put(
        &self,
        key: &ObjectKey,
        size: u64,
        sha256_b64: &str,
        ttl: Duration,
    ) -> Result<super::PresignedPut, StorageError> {
        super::check_upload_link(key, ttl)?;
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| StorageError::Config(e.to_string()))?;
        // Every header set here is signed (the SDK hoists none into the query), so the client
        // must send exactly these: the size and the checksum, which S3 verifies on the PUT.
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_length(size as i64)
            .checksum_sha256(sha256_b64);
        if self.encrypt {
            put = put.server_side_encryption(ServerSideEncryption::Aes256);
        }
        let req = put.presigned(config).await.map_err(map_err)?;
        Ok(super::PresignedPut {
            url: req.uri().to_string(),
            headers: req
                .headers()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        })
    }

    async fn digest(
        &self,
        key: &ObjectKey,
        cap: u64,
    ) -> Result<Option<super::Digest>, StorageError> {
        let head = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(h) => h,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(None),
            Err(e) => return Err(map_err(e)),
        };
        let size = head.content_length().unwrap_or(0).max(0) as u64;
        if size > cap {
            return Err(StorageError::TooLarge { size, cap });
        }
        // A whole-object SHA-256 the store verified on the PUT. Without one (a multipart object,
        // or a store that keeps no checksums), read it back and hash it here.
        let whole = head
            .checksum_sha256()
            .filter(|c| !c.contains('-'))
            .map(str::to_string);
        let sha256_b64 = match whole {
            Some(c) => c,
            None => {
                let got = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(key.as_str())
                    .send()
                    .await
                    .map_err(map_err)?;
                super::sha256_b64_of(got.body.into_async_read())
                    .await
                    .map_err(|source| StorageError::Io {
                        path: key.to_string(),
                        source,
                    })?
            }
        };
        Ok(Some(super::Digest { size, sha256_b64 }))
    }

    async fn list(&self, prefix: &str, next: Option<String>) -> Result<ListPage, StorageError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1000)
            .set_continuation_token(next)
            .send()
            .await
            .map_err(map_err)?;
        Ok(ListPage {
            objects: out
                .contents()
                .iter()
                .map(|o| Listed {
                    key: o.key().unwrap_or_default().to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                })
                .collect(),
            next: out.next_continuation_token().map(String::from),
        })
    }
}
