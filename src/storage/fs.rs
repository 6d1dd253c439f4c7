//! The local-directory backend (the embedded default). Directories 0700, files 0600, writes go to
//! a temp file and are renamed into place. Links have the same shape as presigned S3 links:
//! expiry, key and download name signed with HMAC-SHA256, checked in constant time by
//! `airlock serve`. The signing key is generated once, stored 0600 and zeroized in memory.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

use super::{
    DeleteOutcome, ListPage, Listed, ObjectKey, ObjectMeta, ObjectStore, PutMeta, StorageError,
};

const KEY_FILE: &str = "signing.key";

/// HMAC key for local links; never printed.
pub struct SigningKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// Load `dir/signing.key`, creating it (0600, 32 random bytes) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(KEY_FILE);
        let io = |source| StorageError::Io {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
            rand::rng().fill_bytes(bytes.as_mut());
            let tmp = dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| std::io::Write::write_all(&mut f, bytes.as_ref()))
                .map_err(io)?;
            // Another process may have won the race; theirs stays.
            if std::fs::hard_link(&tmp, &path).is_err() && !path.exists() {
                return Err(io(std::io::Error::other(
                    "could not install the signing key",
                )));
            }
            let _ = std::fs::remove_file(&tmp);
        }
        let bytes = zeroize::Zeroizing::new(std::fs::read(&path).map_err(io)?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            StorageError::Config(format!("{} is not a 32-byte key", path.display()))
        })?;
        Ok(SigningKey(SecretBox::new(Box::new(key))))
    }

    fn mac(&self, key: &str, expires: u64, name: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.0.expose_secret()).expect("any key length");
        mac.update(format!("GET\n{key}\n{expires}\n{name}").as_bytes());
        mac
    }

    fn put_mac(&self, key: &str, expires: u64, size: u64, sha256_b64: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.0.expose_secret()).expect("any key length");
        mac.update(format!("PUT\n{key}\n{expires}\n{size}\n{sha256_b64}").as_bytes());
        mac
    }

    /// The signature of an upload link: the key, its expiry, the exact size and SHA-256.
    pub fn sign_put(&self, key: &str, expires: u64, size: u64, sha256_b64: &str) -> String {
        hex::encode(
            self.put_mac(key, expires, size, sha256_b64)
                .finalize()
                .into_bytes(),
        )
    }

    /// Constant-time check of an upload link's signature.
    pub fn verify_put(
        &self,
        key: &str,
        expires: u64,
        size: u64,
        sha256_b64: &str,
        sig_hex: &str,
    ) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        sig.len() == 32
            && self
                .put_mac(key, expires, size, sha256_b64)
                .verify_slice(&sig)
                .is_ok()
    }

    pub fn sign(&self, key: &str, expires: u64, name: &str) -> String {
        hex::encode(self.mac(key, expires, name).finalize().into_bytes())
    }

    /// Constant-time check of a hex signature.
    pub fn verify(&self, key: &str, expires: u64, name: &str, sig_hex: &str) -> bool {
        if sig_hex.len() != 64 {
            return false;
        }
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        self.mac(key, expires, name).verify_slice(&sig).is_ok()
    }
}

/// A private local directory of objects.
#[derive(Debug)]
pub struct FsStore {
    objects: PathBuf,
    key: SigningKey,
    base_url: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FsStore {
    /// Open (creating 0700) `root`; objects live under `root/objects`, the key in `root`.
    /// `base_url` is where `airlock serve` answers, e.g. `http://127.0.0.1:8787`.
    pub fn open(root: &Path, base_url: &str) -> Result<Self, StorageError> {
        let objects = root.join("objects");
        for dir in [root, objects.as_path()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StorageError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        Ok(FsStore {
            key: SigningKey::load_or_create(root)?,
            objects,
            base_url: base_url.trim_end_matches('/').to_string(),
        })
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The file behind a validated key.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.objects.join(key.as_str())
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
        move |source| StorageError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Copy `from` to `dest` through a 0600 temp file in the destination directory and rename.
    async fn copy_atomic(from: &Path, dest: &Path, cap: u64) -> Result<u64, StorageError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .await
            .map_err(Self::io(dir))?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let result = async {
            let mut src = tokio::fs::File::open(from).await.map_err(Self::io(from))?;
            let size = src.metadata().await.map_err(Self::io(from))?.len();
            if size > cap {
                return Err(StorageError::TooLarge { size, cap });
            }
            let mut out = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .await
                .map_err(Self::io(&tmp))?;
            let mut limited = tokio::io::AsyncReadExt::take(&mut src, cap + 1);
            let n = tokio::io::copy(&mut limited, &mut out)
                .await
                .map_err(Self::io(&tmp))?;
            if n > cap {
                return Err(StorageError::TooLarge { size: n, cap });
            }
            out.sync_all().await.map_err(Self::io(&tmp))?;
            tokio::fs::rename(&tmp, dest)
                .await
                .map_err(Self::io(dest))?;
            Ok(n)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put_file(
        &self,
        key: &ObjectKey,
        path: &Path,
        cap: u64,
        _meta: &PutMeta,
    ) -> Result<u64, StorageError> {
        Self::copy_atomic(path, &self.path_of(key), cap).await
    }

    async fn get_to_file(
        &self,
        key: &ObjectKey,
        dest: &Path,
        cap: u64,
    ) -> Result<u64, StorageError> {
        let src = self.path_of(key);
        if !tokio::fs::try_exists(&src).await.unwrap_or(false) {
            return Err(StorageError::NotFound(key.clone()));
        }
        Self::copy_atomic(&src, dest, cap).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_of(key);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(ObjectMeta {
                size: m.len(),
                modified: m.modified().ok(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Result<DeleteOutcome, StorageError> {
        let mut outcome = DeleteOutcome::default();
        for key in keys {
            match tokio::fs::remove_file(self.path_of(key)).await {
                Ok(()) => outcome.deleted.push(key.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    outcome.deleted.push(key.clone())
                }
                Err(e) => outcome.failed.push((key.clone(), e.kind().to_string())),
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
        let expires = unix_now() + ttl.as_secs();
        let name = super::ascii_filename(download_name);
        let sig = self.key.sign(key.as_str(), expires, &name);
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Ok(format!(
            "{}/o/{}?exp={expires}&name={}&sig={sig}",
            self.base_url,
            key.as_str(),
            enc(&name)
        ))
    }

    async fn put_growing(
        &self,
        key: &ObjectKey,
        path: &Path,
        size: u64,
        meta: &PutMeta,
        mut written: tokio::sync::watch::Receiver<u64>,
    ) -> Result<u64, StorageError> {
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
        let expires = unix_now() + ttl.as_secs();
        let sig = self.key.sign_put(key.as_str(), expires, size, sha256_b64);
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Ok(super::PresignedPut {
            url: format!(
                "{}/u/{}?exp={expires}&len={size}&sha={}&sig={sig}",
                self.base_url,
                key.as_str(),
                enc(sha256_b64)
            ),
            headers: vec![
                ("content-length".into(), size.to_string()),
                ("x-amz-checksum-sha256".into(), sha256_b64.to_string()),
            ],
        })
    }

    async fn digest(
        &self,
        key: &ObjectKey,
        cap: u64,
    ) -> Result<Option<super::Digest>, StorageError> {
        let path = self.path_of(key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let size = file.metadata().await.map_err(Self::io(&path))?.len();
        if size > cap {
            return Err(StorageError::TooLarge { size, cap });
        }
        let sha256_b64 = super::sha256_b64_of(file).await.map_err(Self::io(&path))?;
        Ok(Some(super::Digest { size, sha256_b64 }))
    }

    async fn list(&self, prefix: &str, next: Option<String>) -> Result<ListPage, StorageError> {
        // One directory per prefix; a page is the whole directory (local stores are small).
        if next.is_some() {
            return Ok(ListPage::default());
        }
        let dir = self.objects.join(prefix.trim_end_matches('/'));
        let mut page = ListPage::default();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(page),
            Err(e) => return Err(Self::io(&dir)(e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(Self::io(&dir))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let meta = entry.metadata().await.map_err(Self::io(&dir))?;
            page.objects.push(Listed {
                key: format!("{}/{name}", prefix.trim_end_matches('/')),
                size: meta.len(),
                modified: meta.modified().ok(),
            });
        }
        Ok(page)
    }
}

/// Whether a local link is valid now: the signature matches and it has not expired.
/// The longest a link may live (DESIGN §5, `policies/storage/presign.toml` refuses more).
pub const LINK_TTL_CAP_SECS: u64 = 300;
/// Clock difference allowed between the host that signed a link and the one serving it.
const CLOCK_SKEW_SECS: u64 = 30;

pub fn check_link(
    key: &SigningKey,
    object: &str,
    expires: u64,
    name: &str,
    sig: &str,
) -> Result<(), LinkError> {
    if !key.verify(object, expires, name, sig) {
        return Err(LinkError::BadSignature);
    }
    let now = unix_now();
    if now > expires {
        return Err(LinkError::Expired);
    }
    // Even correctly signed, a link that outlives the cap was not made by `presign_get`.
    if expires > now + LINK_TTL_CAP_SECS + CLOCK_SKEW_SECS {
        return Err(LinkError::BeyondCap);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    BadSignature,
    Expired,
    /// Signed, but valid for longer than any link may be.
    BeyondCap,
}

/// Check an upload link: signed, unexpired, and not longer-lived than any upload link may be.
pub fn check_put_link(
    key: &SigningKey,
    object: &str,
    expires: u64,
    size: u64,
    sha256_b64: &str,
    sig: &str,
) -> Result<(), LinkError> {
    if !key.verify_put(object, expires, size, sha256_b64, sig) {
        return Err(LinkError::BadSignature);
    }
    let now = unix_now();
    if now > expires {
        return Err(LinkError::Expired);
    }
    if expires > now + super::UPLOAD_TTL_CAP.as_secs() + CLOCK_SKEW_SECS {
        return Err(LinkError::BeyondCap);
    }
    Ok(())
}

/// Store an uploaded body at `key`: streamed through a 0600 temp file beside it, refused unless
/// exactly `size` bytes with SHA-256 `sha256_b64` arrive, and never over an existing object.
pub async fn receive_upload<S, E>(
    store: &FsStore,
    key: &ObjectKey,
    size: u64,
    sha256_b64: &str,
    mut body: S,
    idle: Duration,
) -> Result<(), UploadError>
where
    S: futures_core::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let dest = store.path_of(key);
    let dir = dest.parent().unwrap_or(Path::new("."));
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await
        .map_err(UploadError::Io)?;
    if tokio::fs::symlink_metadata(&dest).await.is_ok() {
        return Err(UploadError::Exists);
    }
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let result = async {
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(UploadError::Io)?;
        let mut hash = Sha256::new();
        let mut received = 0u64;
        loop {
            let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_next(cx));
            let chunk = match tokio::time::timeout(idle, next).await {
                Err(_) => return Err(UploadError::Stalled),
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err(UploadError::Incomplete),
                Ok(Some(Ok(c))) => c,
            };
            received += chunk.len() as u64;
            if received > size {
                return Err(UploadError::Mismatch);
            }
            hash.update(&chunk);
            out.write_all(&chunk).await.map_err(UploadError::Io)?;
        }
        if received != size {
            return Err(UploadError::Incomplete);
        }
        use base64::Engine;
        if base64::engine::general_purpose::STANDARD.encode(hash.finalize()) != sha256_b64 {
            return Err(UploadError::Mismatch);
        }
        out.sync_all().await.map_err(UploadError::Io)?;
        // A hard link never replaces: a second upload to the same key loses.
        tokio::fs::hard_link(&tmp, &dest).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                UploadError::Exists
            } else {
                UploadError::Io(e)
            }
        })
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    result
}

/// Why an upload to the local backend was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the body does not match the signed size and SHA-256")]
    Mismatch,
    #[error("the body ended before the signed size")]
    Incomplete,
    #[error("the upload stalled")]
    Stalled,
    #[error("an object already exists at this key")]
    Exists,
    #[error("storage failed: {0}")]
    Io(std::io::Error),
}

/// Mode bits of a path (for tests and `doctor`).
pub fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[cfg(test)]
mod link_bounds {
    use super::*;

    /// `f(now)`, at a `now` whose second did not end while `f` ran (the checks read the clock
    /// again), so a boundary is tested at the boundary.
    fn within_one_second<T>(f: impl Fn(u64) -> T) -> T {
        loop {
            let now = unix_now();
            let out = f(now);
            if unix_now() == now {
                return out;
            }
        }
    }

    fn key() -> (tempfile::TempDir, SigningKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(dir.path()).unwrap();
        (dir, key)
    }

    #[test]
    fn a_download_link_is_valid_through_its_last_second_and_up_to_the_cap() {
        let (_dir, key) = key();
        let check = |expires: u64| {
            let sig = key.sign("out/x", expires, "x.csv");
            check_link(&key, "out/x", expires, "x.csv", &sig)
        };
        let cap = LINK_TTL_CAP_SECS + CLOCK_SKEW_SECS;
        assert_eq!(within_one_second(check), Ok(()));
        assert_eq!(
            within_one_second(|now| check(now - 1)),
            Err(LinkError::Expired)
        );
        assert_eq!(within_one_second(|now| check(now + cap)), Ok(()));
        assert_eq!(
            within_one_second(|now| check(now + cap + 1)),
            Err(LinkError::BeyondCap)
        );
    }

    #[test]
    fn an_upload_link_is_valid_through_its_last_second_and_up_to_the_cap() {
        let (_dir, key) = key();
        let check = |expires: u64| {
            let sig = key.sign_put("in/x", expires, 10, "c2hh");
            check_put_link(&key, "in/x", expires, 10, "c2hh", &sig)
        };
        let cap = super::super::UPLOAD_TTL_CAP.as_secs() + CLOCK_SKEW_SECS;
        assert_eq!(within_one_second(check), Ok(()));
        assert_eq!(
            within_one_second(|now| check(now - 1)),
            Err(LinkError::Expired)
        );
        assert_eq!(within_one_second(|now| check(now + cap)), Ok(()));
        assert_eq!(
            within_one_second(|now| check(now + cap + 1)),
            Err(LinkError::BeyondCap)
        );
        // Each signed field counts: the size, the checksum, the object.
        let exp = unix_now() + 60;
        let sig = key.sign_put("in/x", exp, 10, "c2hh");
        assert_eq!(check_put_link(&key, "in/x", exp, 10, "c2hh", &sig), Ok(()));
        assert_eq!(
            check_put_link(&key, "in/x", exp, 11, "c2hh", &sig),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            check_put_link(&key, "in/x", exp, 10, "c2hi", &sig),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            check_put_link(&key, "in/y", exp, 10, "c2hh", &sig),
            Err(LinkError::BadSignature)
        );
    }
}
