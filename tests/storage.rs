//! Object storage: one conformance suite run against both backends (the local directory, and a
//! real S3 server started by `.ci/s3-server.sh`), then the link and access checks: against S3
//! directly, and against `airlock serve` for the local backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use airlock::storage::fs::FsStore;
use airlock::storage::s3::{Explicit, S3Store};
use airlock::storage::{Kind, ObjectKey, ObjectStore, PutMeta, StorageError};

/// The S3 server the test script started. A missing server fails the test: it never skips.
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

pub fn s3_env() -> S3Env {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests with `bash .ci/test`, which starts the S3 server (or start it with .ci/s3-server.sh and source its env file)")
        })
    };
    S3Env {
        endpoint: var("AIRLOCK_TEST_S3_ENDPOINT"),
        bucket: var("AIRLOCK_TEST_S3_BUCKET"),
        access_key: var("AIRLOCK_TEST_S3_ACCESS_KEY"),
        secret_key: var("AIRLOCK_TEST_S3_SECRET_KEY"),
    }
}

pub fn s3_store() -> Arc<S3Store> {
    let env = s3_env();
    Arc::new(S3Store::explicit(
        Explicit {
            endpoint: &env.endpoint,
            region: "us-east-1",
            access_key: &env.access_key,
            secret_key: env.secret_key.clone().into(),
        },
        &env.bucket,
    ))
}

/// A raw SDK client on the test server, for what the store does not do (buckets, odd presigns).
pub fn s3_client() -> aws_sdk_s3::Client {
    let env = s3_env();
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&env.endpoint)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &env.access_key,
                &env.secret_key,
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .build(),
    )
}

fn fs_store(dir: &std::path::Path) -> Arc<FsStore> {
    Arc::new(FsStore::open(dir, "http://127.0.0.1:1").unwrap())
}

fn meta() -> PutMeta {
    PutMeta {
        content_type: "text/csv".into(),
        download_name: "Müller \"leads\".csv".into(),
    }
}

fn random_file(dir: &std::path::Path, name: &str, len: usize) -> std::path::PathBuf {
    let mut bytes = vec![0u8; len];
    let mut x: u64 = 0x9E3779B97F4A7C15 ^ len as u64;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

// ---- the conformance suite ----------------------------------------------------------------

async fn round_trip(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "src", 5 * 1024 * 1024 + 17);
    let key = ObjectKey::new(Kind::Input);
    let n = store.put_file(&key, &src, 10 << 20, &meta()).await.unwrap();
    assert_eq!(n, 5 * 1024 * 1024 + 17);
    assert_eq!(store.head(&key).await.unwrap().unwrap().size, n);
    let dest = dir.path().join("dest");
    assert_eq!(store.get_to_file(&key, &dest, 10 << 20).await.unwrap(), n);
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());
    assert!(matches!(
        store
            .get_to_file(&key, &dir.path().join("small"), 1024)
            .await,
        Err(StorageError::TooLarge { .. })
    ));
    let listed = store.list("in/", None).await.unwrap();
    assert!(listed.objects.iter().any(|o| o.key == key.as_str()));
    let out = store.delete_many(std::slice::from_ref(&key)).await.unwrap();
    assert_eq!(out.deleted, vec![key.clone()]);
    assert!(store.head(&key).await.unwrap().is_none());
    assert!(matches!(
        store.get_to_file(&key, &dest, 1 << 30).await,
        Err(StorageError::NotFound(_))
    ));
}

async fn size_cap_on_put(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "src", 4096);
    let key = ObjectKey::new(Kind::Input);
    let err = store.put_file(&key, &src, 4095, &meta()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooLarge {
                size: 4096,
                cap: 4095
            }
        ),
        "{err}"
    );
    assert!(
        store.head(&key).await.unwrap().is_none(),
        "nothing was stored"
    );
}

async fn delete_many_is_idempotent(store: Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "src", 100);
    let mut keys = Vec::new();
    for _ in 0..5 {
        let key = ObjectKey::new(Kind::Output);
        store.put_file(&key, &src, 1000, &meta()).await.unwrap();
        keys.push(key);
    }
    keys.push(ObjectKey::new(Kind::Report)); // never existed
    let first = store.delete_many(&keys).await.unwrap();
    assert_eq!(first.deleted.len(), 6, "{first:?}");
    assert!(first.failed.is_empty());
    let second = store.delete_many(&keys).await.unwrap();
    assert_eq!(second.deleted.len(), 6);
    assert!(second.failed.is_empty());
    for key in &keys {
        assert!(store.head(key).await.unwrap().is_none());
    }
}

#[test]
fn a_thousand_keys_are_unique_uuidv4_and_nothing_else() {
    let mut seen = HashSet::new();
    for i in 0..1000 {
        let kind = [Kind::Input, Kind::Output, Kind::Rejects, Kind::Report][i % 4];
        let key = ObjectKey::new(kind);
        let s = key.as_str().to_string();
        let (prefix, rest) = s.split_once('/').unwrap();
        assert!(["in", "out", "rej", "rep"].contains(&prefix));
        let id = rest.trim_end_matches(".csv").trim_end_matches(".json");
        let uuid = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_eq!(s.len(), prefix.len() + 1 + 36 + (rest.len() - id.len()));
        assert!(seen.insert(s));
    }
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn round_trip_multi_mb() {
                let dir = tempfile::tempdir().unwrap();
                let _ = &dir;
                round_trip($make(dir.path())).await;
            }

            #[tokio::test]
            async fn size_cap() {
                let dir = tempfile::tempdir().unwrap();
                size_cap_on_put($make(dir.path())).await;
            }

            #[tokio::test]
            async fn delete_idempotent() {
                let dir = tempfile::tempdir().unwrap();
                delete_many_is_idempotent($make(dir.path())).await;
            }
        }
    };
}

conformance!(fs, |dir: &std::path::Path| -> Arc<dyn ObjectStore> {
    fs_store(dir)
});
conformance!(s3, |_dir: &std::path::Path| -> Arc<dyn ObjectStore> {
    s3_store()
});

// ---- local backend specifics --------------------------------------------------------------

#[tokio::test]
async fn local_store_is_private() {
    use airlock::storage::fs::mode_of;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = fs_store(&root);
    let src = random_file(dir.path(), "src", 10);
    let key = ObjectKey::new(Kind::Input);
    store.put_file(&key, &src, 100, &meta()).await.unwrap();
    assert_eq!(mode_of(&root).unwrap(), 0o700);
    assert_eq!(mode_of(&root.join("objects")).unwrap(), 0o700);
    assert_eq!(mode_of(&root.join("objects/in")).unwrap(), 0o700);
    assert_eq!(mode_of(&store.path_of(&key)).unwrap(), 0o600);
    assert_eq!(mode_of(&root.join("signing.key")).unwrap(), 0o600);
    assert!(
        !format!("{store:?}").contains(&hex_of(&std::fs::read(root.join("signing.key")).unwrap()))
    );
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(root.join("objects/in"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn serve_local(root: &std::path::Path) -> (Arc<FsStore>, String) {
    serve_local_with(root, airlock::serve::Limits::default()).await
}

/// `airlock serve`'s own accept loop, in this process, on a free port.
async fn serve_local_with(
    root: &std::path::Path,
    limits: airlock::serve::Limits,
) -> (Arc<FsStore>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let store = Arc::new(FsStore::open(root, &base).unwrap());
    let served = store.clone();
    tokio::spawn(async move {
        airlock::serve::serve_on(listener, served, limits, std::future::pending())
            .await
            .unwrap()
    });
    (store, base)
}

/// Send `request` as raw bytes (no client normalises the path) and read the whole answer.
async fn raw_http(base: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Seconds until the server closes `conn`, reading (and discarding) anything it sends.
async fn seconds_until_closed(conn: &mut tokio::net::TcpStream) -> f64 {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed().as_secs_f64(),
            Ok(Ok(_)) => {}
            Err(_) => return f64::INFINITY,
        }
    }
}

#[tokio::test]
async fn serve_times_out_slow_headers_and_idle_connections() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let limits = airlock::serve::Limits {
        header_timeout: Duration::from_secs(1),
        ..airlock::serve::Limits::default()
    };
    let (_store, base) = serve_local_with(&dir.path().join("store"), limits).await;
    let addr = base.trim_start_matches("http://").to_string();
    // Slowloris: a header line trickling in, one byte every 200 ms, is cut off at the timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in b"GET /o/x HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                return (slow, true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (slow, false)
    });
    let (mut slow, cut_off) = trickle.await.unwrap();
    let closed = seconds_until_closed(&mut slow).await;
    assert!(cut_off || closed < 3.0, "slow headers kept the connection");
    // Idle: connected, sends nothing.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let secs = seconds_until_closed(&mut idle).await;
    assert!(secs < 3.0, "an idle connection stayed open {secs}s");
    // Keep-alive: one request answered, then nothing more.
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /o/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let secs = seconds_until_closed(&mut kept).await;
    assert!(
        secs < 3.0,
        "an idle keep-alive connection stayed open {secs}s"
    );
}

#[tokio::test]
async fn serve_caps_connections_and_idle_ones_make_room_for_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let limits = airlock::serve::Limits {
        max_connections: 8,
        header_timeout: Duration::from_secs(1),
        ..airlock::serve::Limits::default()
    };
    let (store, base) = serve_local_with(&dir.path().join("store"), limits).await;
    let addr = base.trim_start_matches("http://").to_string();
    let src = random_file(dir.path(), "src", 1000);
    let key = ObjectKey::new(Kind::Output);
    store.put_file(&key, &src, 10_000, &meta()).await.unwrap();
    let url = store
        .presign_get(&key, Duration::from_secs(60), "x.csv")
        .await
        .unwrap();
    // 40 idle sockets: five times the cap.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), reqwest::get(&url))
        .await
        .expect("the download is served once idle connections time out")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 1000);
    // The cap held: 40 sockets over 8 slots at 1 s each take a while to drain; the download
    // waited its turn rather than being refused.
    assert!(started.elapsed() >= Duration::from_millis(900));
    drop(idle);
}

#[tokio::test]
async fn serve_gives_each_artifact_its_media_type_and_a_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _base) = serve_local(&dir.path().join("store")).await;
    let src = random_file(dir.path(), "src", 100);
    for (kind, want) in [
        (Kind::Report, "application/json"),
        (Kind::Output, "text/csv; charset=utf-8"),
        (Kind::Rejects, "text/csv; charset=utf-8"),
    ] {
        let key = ObjectKey::new(kind);
        store.put_file(&key, &src, 10_000, &meta()).await.unwrap();
        let url = store
            .presign_get(&key, Duration::from_secs(60), "x")
            .await
            .unwrap();
        let resp = reqwest::Client::new()
            .get(&url)
            .header("x-request-id", "client-chosen")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], want, "{kind:?}");
        // A plain client id is honoured; anything else is replaced by a new UUID.
        assert_eq!(resp.headers()["x-request-id"], "client-chosen");
        let resp = reqwest::Client::new()
            .get(&url)
            .header("x-request-id", "two words")
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
}

#[tokio::test]
async fn local_links_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (store, base) = serve_local(&dir.path().join("store")).await;
    let src = random_file(dir.path(), "src", 1000);
    let key = ObjectKey::new(Kind::Output);
    store.put_file(&key, &src, 10_000, &meta()).await.unwrap();
    let other = ObjectKey::new(Kind::Output);
    store.put_file(&other, &src, 10_000, &meta()).await.unwrap();
    let http = reqwest::Client::new();

    let url = store
        .presign_get(&key, Duration::from_secs(60), "Müller \"leads\".csv")
        .await
        .unwrap();
    assert!(url.starts_with(&base));
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cd = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cd.starts_with("attachment; filename=\"M_ller _leads_.csv\""),
        "{cd}"
    );
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        std::fs::read(&src).unwrap()
    );

    for method in [
        reqwest::Method::HEAD,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let resp = http.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{method}");
    }
    let tampered = format!(
        "{}{}",
        &url[..url.len() - 1],
        if url.ends_with('0') { '1' } else { '0' }
    );
    // Each refused with the stable code, not merely some 4xx.
    let refused = |url: String| {
        let http = http.clone();
        async move {
            let resp = http.get(&url).send().await.unwrap();
            let status = resp.status().as_u16();
            let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap())
                .unwrap_or(serde_json::Value::Null);
            (
                status,
                v["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    let invalid = (403, "link_invalid".to_string());
    assert_eq!(refused(tampered).await, invalid, "tampered signature");
    let moved = url.replace(key.as_str(), other.as_str());
    assert_eq!(refused(moved).await, invalid, "moved to another object");
    let renamed = url.replace("name=M", "name=X");
    assert_ne!(renamed, url);
    assert_eq!(refused(renamed).await, invalid, "renamed download");
    let unsigned = format!("{base}/o/{}", key.as_str());
    assert_eq!(refused(unsigned).await, invalid, "no signature");
    // Path traversal, sent raw so no client normalises it away: it must reach the handler, which
    // refuses the key (link_invalid), never a file outside the store.
    let key_hex = hex_of(&std::fs::read(dir.path().join("store/signing.key")).unwrap());
    for path in [
        "/o/in/../../signing.key",
        "/o/in/%2e%2e/%2e%2e/signing.key",
        "/o/in%2f..%2f..%2fsigning.key",
        "/o/..%2f..%2fsigning.key",
    ] {
        let answer = raw_http(
            &base,
            &format!("GET {path}?exp=9999999999&name=x&sig=00 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
        assert!(answer.contains("link_invalid"), "{path}: {answer}");
        assert!(!answer.contains(&key_hex));
    }

    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 10;
    let sig = store.signing_key().sign(key.as_str(), past, "x.csv");
    let expired = format!("{base}/o/{}?exp={past}&name=x.csv&sig={sig}", key.as_str());
    let resp = http.get(&expired).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("link_expired"));
    // Correctly signed but valid for an hour: beyond the 300 s cap, refused.
    let far = past + 10 + 3_600;
    let sig = store.signing_key().sign(key.as_str(), far, "x.csv");
    let long = format!("{base}/o/{}?exp={far}&name=x.csv&sig={sig}", key.as_str());
    let resp = http.get(&long).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("link_invalid"));
    // At the cap: served.
    let edge = past + 10 + 300;
    let sig = store.signing_key().sign(key.as_str(), edge, "x.csv");
    let ok = format!("{base}/o/{}?exp={edge}&name=x.csv&sig={sig}", key.as_str());
    assert_eq!(http.get(&ok).send().await.unwrap().status(), 200);
}

// ---- S3 specifics -------------------------------------------------------------------------

#[tokio::test]
async fn s3_multipart_upload_of_a_large_object() {
    let store = s3_store();
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "big", 70 * 1024 * 1024);
    let key = ObjectKey::new(Kind::Input);
    store
        .put_file(&key, &src, 100 << 20, &meta())
        .await
        .unwrap();
    assert_eq!(
        store.head(&key).await.unwrap().unwrap().size,
        70 * 1024 * 1024
    );
    let dest = dir.path().join("back");
    store.get_to_file(&key, &dest, 100 << 20).await.unwrap();
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&src).unwrap());
    assert_eq!(stored_encryption(&key).await.as_deref(), Some("AES256"));
    store.delete_many(&[key]).await.unwrap();
}

/// The server-side encryption S3 reports for the stored object at `key`.
async fn stored_encryption(key: &ObjectKey) -> Option<String> {
    let head = s3_client()
        .head_object()
        .bucket(s3_env().bucket)
        .key(key.as_str())
        .send()
        .await
        .unwrap();
    head.server_side_encryption()
        .map(|e| e.as_str().to_string())
}

/// Every way Airlock writes to S3 asks for server-side encryption, read back from the stored
/// object: a single PUT, a multipart upload (above), and a client's PUT through a presigned
/// upload link. An object PUT without it is the control: the server reports none.
#[tokio::test]
async fn s3_every_put_asks_for_server_side_encryption() {
    use base64::Engine;
    use sha2::Digest;
    let store = s3_store();
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "small", 3000);
    let single = ObjectKey::new(Kind::Output);
    store
        .put_file(&single, &src, 10_000, &meta())
        .await
        .unwrap();
    assert_eq!(stored_encryption(&single).await.as_deref(), Some("AES256"));

    let bytes = std::fs::read(&src).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes));
    let uploaded = ObjectKey::new(Kind::Input);
    let link = store
        .presign_put(
            &uploaded,
            bytes.len() as u64,
            &b64,
            std::time::Duration::from_secs(300),
        )
        .await
        .unwrap();
    let mut req = reqwest::Client::new().put(&link.url).body(bytes.clone());
    for (k, v) in &link.headers {
        if k != "content-length" && k != "host" {
            req = req.header(k, v);
        }
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(
        stored_encryption(&uploaded).await.as_deref(),
        Some("AES256")
    );

    // Control: the same bytes put without asking are stored without it, so the reads above
    // show what Airlock asked for, not a server default.
    let plain = ObjectKey::new(Kind::Output);
    s3_client()
        .put_object()
        .bucket(s3_env().bucket)
        .key(plain.as_str())
        .body(bytes.into())
        .send()
        .await
        .unwrap();
    assert_eq!(stored_encryption(&plain).await, None);
    store.delete_many(&[single, uploaded, plain]).await.unwrap();
}

#[tokio::test]
async fn s3_refuses_anonymous_access_and_serves_only_presigned_gets() {
    let env = s3_env();
    let store = s3_store();
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "src", 2000);
    let key = ObjectKey::new(Kind::Output);
    store.put_file(&key, &src, 10_000, &meta()).await.unwrap();
    let other = ObjectKey::new(Kind::Output);
    store.put_file(&other, &src, 10_000, &meta()).await.unwrap();
    let http = reqwest::Client::new();
    let object_url = format!("{}/{}/{}", env.endpoint, env.bucket, key.as_str());

    // Anonymous requests are refused and change nothing. Note what this shows: the test server
    // refuses them because its identity file (`.ci/s3-server.sh`) grants nothing to anonymous
    // callers. Airlock's own `policies/storage/bucket-policy.json` is NOT applied here; it is
    // validated as a file (`policy::storage` tests) and applied by the operator (README,
    // "Hardening the bucket").
    assert_eq!(http.get(&object_url).send().await.unwrap().status(), 403);
    assert_eq!(
        http.put(&object_url)
            .body("overwritten")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(http.delete(&object_url).send().await.unwrap().status(), 403);
    let list = format!("{}/{}?list-type=2", env.endpoint, env.bucket);
    assert_eq!(http.get(&list).send().await.unwrap().status(), 403);
    assert_eq!(
        store.head(&key).await.unwrap().unwrap().size,
        2000,
        "the object survives"
    );

    // A presigned GET works, as an attachment.
    let url = store
        .presign_get(&key, Duration::from_secs(60), "Müller \"leads\".csv")
        .await
        .unwrap();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cd = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cd.starts_with("attachment;"), "{cd}");
    assert!(cd.contains("filename*=UTF-8''M%C3%BCller"), "{cd}");
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        std::fs::read(&src).unwrap()
    );
    // A report's link says it is JSON.
    let report = ObjectKey::new(Kind::Report);
    store
        .put_file(&report, &src, 10_000, &meta())
        .await
        .unwrap();
    let report_url = store
        .presign_get(&report, Duration::from_secs(60), "r.json")
        .await
        .unwrap();
    let resp = http.get(&report_url).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");

    // The same URL for anything but GET is refused.
    assert_eq!(http.head(&url).send().await.unwrap().status(), 403);
    assert_eq!(http.put(&url).body("x").send().await.unwrap().status(), 403);
    assert_eq!(store.head(&key).await.unwrap().unwrap().size, 2000);

    // Tampered signature, or the signature moved to another key: refused.
    let (before, sig) = url.split_once("X-Amz-Signature=").unwrap();
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == 'a' {
                    'b'
                } else {
                    'a'
                }
            } else {
                c
            }
        })
        .collect();
    assert_eq!(
        http.get(format!("{before}X-Amz-Signature={flipped}"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let moved = url.replace(key.as_str(), other.as_str());
    assert_ne!(moved, url);
    assert_eq!(http.get(&moved).send().await.unwrap().status(), 403);

    store.delete_many(&[key, other]).await.unwrap();
}

#[tokio::test]
async fn s3_expired_links_are_refused() {
    let env = s3_env();
    let store = s3_store();
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "src", 10);
    let key = ObjectKey::new(Kind::Output);
    store.put_file(&key, &src, 100, &meta()).await.unwrap();
    // Signed with a 1-second lifetime, ten minutes ago: expired without waiting.
    let client = s3_client();
    let config = aws_sdk_s3::presigning::PresigningConfig::builder()
        .start_time(std::time::SystemTime::now() - Duration::from_secs(600))
        .expires_in(Duration::from_secs(1))
        .build()
        .unwrap();
    let req = client
        .get_object()
        .bucket(&env.bucket)
        .key(key.as_str())
        .presigned(config)
        .await
        .unwrap();
    let status = reqwest::get(req.uri()).await.unwrap().status();
    assert_eq!(status, 403);
    store.delete_many(&[key]).await.unwrap();
}

#[tokio::test]
async fn s3_wrong_credentials_give_a_clear_error() {
    let env = s3_env();
    let store = S3Store::explicit(
        Explicit {
            endpoint: &env.endpoint,
            region: "us-east-1",
            access_key: &env.access_key,
            secret_key: "not-the-secret".to_string().into(),
        },
        &env.bucket,
    );
    let dir = tempfile::tempdir().unwrap();
    let src = random_file(dir.path(), "src", 10);
    let err = store
        .put_file(&ObjectKey::new(Kind::Input), &src, 100, &meta())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Credentials { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("AWS_SECRET_ACCESS_KEY"), "{message}");
    assert!(!message.contains("not-the-secret"));
    assert!(!format!("{store:?}").contains("not-the-secret"));
}

/// The real `airlock serve`: one access-log line per request with method, route, status,
/// duration and request id, never the link's signature; SIGTERM ends it cleanly.
#[test]
fn serve_writes_access_logs_without_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let store = FsStore::open(&root, &base).unwrap();
    let src = random_file(dir.path(), "src", 500);
    let key = ObjectKey::new(Kind::Output);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(async {
        store.put_file(&key, &src, 10_000, &meta()).await.unwrap();
        store
            .presign_get(&key, Duration::from_secs(60), "x.csv")
            .await
            .unwrap()
    });
    // `serve` also answers the tenant API, so it needs a migrated job store.
    let db = format!("sqlite://{}/airlock.db", dir.path().display());
    let migrated = crate::common::airlock()
        .arg("migrate")
        .env("AIRLOCK_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(migrated.status.success());
    let serve = crate::common::airlock()
        .arg("serve")
        .env("AIRLOCK_DATABASE_URL", &db)
        .env("AIRLOCK_STORAGE_URL", format!("file://{}", root.display()))
        .env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
        .env("AIRLOCK_PUBLIC_URL", &base)
        .env("AIRLOCK_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let resp = rt.block_on(async {
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(&url).await {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("serve never answered");
    });
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&serve),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = serve.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    let sig = url.split("sig=").nth(1).unwrap();
    assert!(!log.contains(sig), "the signature reached the log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("\"served\""))
        .unwrap_or_else(|| panic!("no access-log line:\n{log}"));
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["fields"]["status"], 200);
    assert!(entry["fields"]["millis"].is_u64());
    assert_eq!(entry["span"]["method"], "GET");
    assert_eq!(entry["span"]["route"], "/o/{*key}");
    assert_eq!(entry["span"]["request_id"], id.as_str());
}
