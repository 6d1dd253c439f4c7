//! Object storage: where inputs and outputs live, reachable only through short-lived links.
//!
//! Keys are random UUIDv4s under a fixed prefix (`in/`, `out/`, `rej/`, `rep/`), never a tenant
//! name, file name, date or sequence; the original file name travels only as metadata and in the
//! signed download disposition. Two backends behind one object-safe trait:
//!
//! - [`s3::S3Store`]: any S3-compatible store through `aws-sdk-s3` (production).
//! - [`fs::FsStore`]: a private local directory (the embedded default), with HMAC-signed links
//!   served by `airlock serve`.
//!
//! Backend differences: S3 stores the download name as object metadata and can list by last
//! modification time; the local store keeps no metadata (the name is carried in the signed link).

pub mod fs;
pub mod s3;

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use uuid::Uuid;

/// A job's result a tenant can fetch (`link --artifact`, `GET /v1/jobs/{id}/{artifact}`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Artifact {
    Output,
    Rejects,
    Report,
}

impl Artifact {
    pub const ALL: [Artifact; 3] = [Artifact::Output, Artifact::Rejects, Artifact::Report];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Artifact::Output => "output",
            Artifact::Rejects => "rejects",
            Artifact::Report => "report",
        }
    }

    /// The download name: the upload's stem and this.
    pub fn file_name(self, upload: &str) -> String {
        let stem = std::path::Path::new(upload)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into());
        let suffix = match self {
            Artifact::Output => "clean.csv",
            Artifact::Rejects => "rejects.csv",
            Artifact::Report => "report.json",
        };
        format!("{stem}.{suffix}")
    }

    /// Its key in a job, if the job has it.
    pub fn key_of(self, job: &crate::jobs::JobRecord) -> Option<&str> {
        match self {
            Artifact::Output => job.output_key.as_deref(),
            Artifact::Rejects => job.rejects_key.as_deref(),
            Artifact::Report => job.report_key.as_deref(),
        }
    }
}

impl std::fmt::Display for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which artifact a key holds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Input,
    Output,
    Rejects,
    Report,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Input, Kind::Output, Kind::Rejects, Kind::Report];

    fn prefix(self) -> &'static str {
        match self {
            Kind::Input => "in/",
            Kind::Output => "out/",
            Kind::Rejects => "rej/",
            Kind::Report => "rep/",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Kind::Input => "",
            Kind::Output | Kind::Rejects => ".csv",
            Kind::Report => ".json",
        }
    }

    /// The media type a download of this artifact is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Report => "application/json",
            Kind::Input => "application/octet-stream",
            Kind::Output | Kind::Rejects => "text/csv; charset=utf-8",
        }
    }

    /// The prefixes Airlock owns in a bucket.
    pub fn prefixes() -> [&'static str; 4] {
        Kind::ALL.map(Kind::prefix)
    }
}

/// A validated object key: `<prefix><uuidv4><suffix>` and nothing else.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A fresh random key for `kind`.
    pub fn new(kind: Kind) -> Self {
        ObjectKey(format!(
            "{}{}{}",
            kind.prefix(),
            Uuid::new_v4(),
            kind.suffix()
        ))
    }

    /// Parse a key from storage or the database; anything but the exact shape is refused, so a
    /// key can never name a path outside the store.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let bad = || StorageError::BadKey(s.chars().take(80).collect());
        let kind = Kind::ALL
            .into_iter()
            .find(|k| s.starts_with(k.prefix()))
            .ok_or_else(bad)?;
        let id = s[kind.prefix().len()..]
            .strip_suffix(kind.suffix())
            .ok_or_else(bad)?;
        let uuid = Uuid::try_parse(id).map_err(|_| bad())?;
        if uuid.get_version_num() != 4 || uuid.hyphenated().to_string() != id {
            return Err(bad());
        }
        Ok(ObjectKey(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> Kind {
        Kind::ALL
            .into_iter()
            .find(|k| self.0.starts_with(k.prefix()))
            .unwrap_or(Kind::Input)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an object is stored and later served.
#[derive(Debug, Clone)]
pub struct PutMeta {
    pub content_type: String,
    /// The name a download gets (the original file name); sanitised before use.
    pub download_name: String,
}

/// A presigned upload: `PUT` the bytes to `url` sending exactly `headers` (their values are
/// covered by the signature: the size and the SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedPut {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// A stored object's size and SHA-256 (base64, as in `x-amz-checksum-sha256`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub sha256_b64: String,
}

/// The SHA-256 of everything `r` yields, base64.
pub async fn sha256_b64_of(mut r: impl tokio::io::AsyncRead + Unpin) -> std::io::Result<String> {
    use base64::Engine;
    use sha2::Digest as _;
    use tokio::io::AsyncReadExt;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(hash.finalize()))
}

/// Wait until `size` bytes of a growing file are on disk (`put_growing`).
async fn written_through(
    written: &mut tokio::sync::watch::Receiver<u64>,
    size: u64,
) -> Result<(), StorageError> {
    written
        .wait_for(|n| *n >= size)
        .await
        .map(|_| ())
        .map_err(|_| StorageError::Unavailable("the upload ended early".into()))
}

/// An upload link goes to an input key and lives at most [`UPLOAD_TTL_CAP`].
fn check_upload_link(key: &ObjectKey, ttl: Duration) -> Result<(), StorageError> {
    if key.kind() != Kind::Input || ttl > UPLOAD_TTL_CAP {
        return Err(StorageError::Config(
            "uploads go to input keys, for at most 15 minutes".into(),
        ));
    }
    Ok(())
}

/// The longest an upload link may live.
pub const UPLOAD_TTL_CAP: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    /// Pass back to get the next page; `None` at the end.
    pub next: Option<String>,
}

/// What a batched delete did. A key that was already gone counts as deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    pub deleted: Vec<ObjectKey>,
    /// Keys the store refused to delete, with its error code.
    pub failed: Vec<(ObjectKey, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not an Airlock object key: {0:?}")]
    BadKey(String),
    #[error("object is {size} bytes, over the cap of {cap}")]
    TooLarge { size: u64, cap: u64 },
    #[error("object {0} does not exist")]
    NotFound(ObjectKey),
    #[error("a link may live at most {max:?}; {asked:?} was asked for")]
    TtlTooLong { asked: Duration, max: Duration },
    #[error("the store refused our credentials ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy")]
    Credentials { code: String },
    #[error("the store is unreachable or failed: {0}")]
    Unavailable(String),
    #[error("local storage I/O failed at {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage configuration: {0}")]
    Config(String),
}

impl StorageError {
    /// Worth retrying later (an outage), as opposed to a permanent refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Unavailable(_) | StorageError::Io { .. })
    }
}

/// The store behind Airlock's inputs and outputs. Object-safe: held as `Arc<dyn ObjectStore>`.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Upload the file at `path` under `key`, streamed; refuses files over `cap` bytes before
    /// sending anything. Requests server-side encryption where the store supports it.
    async fn put_file(
        &self,
        key: &ObjectKey,
        path: &Path,
        cap: u64,
        meta: &PutMeta,
    ) -> Result<u64, StorageError>;
    /// Download `key` into `dest` (created 0600), streamed; refuses objects over `cap`.
    async fn get_to_file(
        &self,
        key: &ObjectKey,
        dest: &Path,
        cap: u64,
    ) -> Result<u64, StorageError>;
    /// Size and time of `key`, `None` when it does not exist. Reads no content.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError>;
    /// Delete `keys` in batches (at most 1000 per request), reading every per-key error.
    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<DeleteOutcome, StorageError>;
    /// A link that downloads `key` as an attachment named `download_name`, valid for `ttl`.
    async fn presign_get(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        download_name: &str,
    ) -> Result<String, StorageError>;
    /// One page of the objects under `prefix`.
    async fn list(&self, prefix: &str, next: Option<String>) -> Result<ListPage, StorageError>;

    /// Store the file at `path` while it is still being written, `size` bytes in all; `written`
    /// says how many are on disk so far (flushed). Large objects go up part by part as the
    /// parts arrive, so the upload overlaps the writing. A closed `written` before `size` bytes
    /// fails the put and stores nothing.
    async fn put_growing(
        &self,
        key: &ObjectKey,
        path: &Path,
        size: u64,
        meta: &PutMeta,
        written: tokio::sync::watch::Receiver<u64>,
    ) -> Result<u64, StorageError>;

    /// A link that lets a client `PUT` exactly `size` bytes whose SHA-256 is `sha256_b64` to
    /// `key` (an input key) within `ttl` (at most [`UPLOAD_TTL_CAP`]).
    async fn presign_put(
        &self,
        key: &ObjectKey,
        size: u64,
        sha256_b64: &str,
        ttl: Duration,
    ) -> Result<PresignedPut, StorageError>;

    /// The object's size and SHA-256, measured by the store (or, where the store keeps no
    /// checksum, by reading it back); `None` when there is no object. Objects larger than `cap`
    /// are refused without being read.
    async fn digest(&self, key: &ObjectKey, cap: u64) -> Result<Option<Digest>, StorageError>;
}

/// A download name safe for a quoted `filename="…"`: printable ASCII without quotes, backslashes,
/// slashes or control characters, at most 100 characters.
pub fn ascii_filename(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if !matches!(c, '"' | '\\' | '/' | ';' | '%') => c,
            _ => '_',
        })
        .take(100)
        .collect();
    let trimmed = cleaned.trim_matches(|c| c == '.' || c == ' ' || c == '_');
    if trimmed.is_empty() {
        "download.csv".to_string()
    } else {
        cleaned
    }
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266 / RFC 5987).
pub fn content_disposition(name: &str) -> String {
    const ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let clean: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
    let clean = clean.replace(['/', '\\'], "_");
    format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        ascii_filename(&clean),
        percent_encoding::utf8_percent_encode(&clean, ATTR_CHAR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefix_uuid_suffix_only() {
        let k = ObjectKey::new(Kind::Output);
        assert!(k.as_str().starts_with("out/") && k.as_str().ends_with(".csv"));
        assert_eq!(ObjectKey::parse(k.as_str()).unwrap(), k);
        for bad in [
            "in/../etc/passwd",
            "out/x.csv",
            "in/00000000-0000-0000-0000-000000000000",
            "tenant/acme.csv",
            "in/6F9619FF-8B86-4011-B42D-00C04FC964FF",
            "",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disposition_is_sanitised() {
        let cd = content_disposition("evil\"\r\nSet-Cookie: x.csv");
        assert!(!cd.contains('\r') && !cd.contains('\n'));
        assert_eq!(cd.matches('"').count(), 2, "{cd}");
        let cd = content_disposition("Müller leads.csv");
        assert!(cd.contains("filename=\"M_ller leads.csv\""), "{cd}");
        assert!(
            cd.contains("filename*=UTF-8''M%C3%BCller%20leads.csv"),
            "{cd}"
        );
        assert!(content_disposition("../../x").contains("filename=\".._.._x\""));
    }
}
