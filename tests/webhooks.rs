//! Webhook signatures checked by an independent implementation: the `standardwebhooks` package
//! from PyPI (pinned in `.ci/requirements-tests.txt`), not Airlock's own code.

use std::process::Command;

use airlock::webhooks::{signature_header, Secret};

/// Verify with the Python library: prints "ok" or the error.
fn python_verifies(secret: &str, id: &str, timestamp: i64, body: &str, signature: &str) -> String {
    let script = r#"
import sys, json
from standardwebhooks.webhooks import Webhook
secret, id, ts, body, sig = sys.argv[1:6]
try:
    Webhook(secret).verify(body, {"webhook-id": id, "webhook-timestamp": ts, "webhook-signature": sig})
    print("ok")
except Exception as e:
    print(type(e).__name__, e)
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            secret,
            id,
            &timestamp.to_string(),
            body,
            signature,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the standardwebhooks package is required (pip install -r .ci/requirements-tests.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn signatures_verify_with_the_reference_library_across_a_rotation() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let old = Secret::generate();
    let new = Secret::generate();
    let body = r#"{"type":"job.succeeded","timestamp":"2026-11-27T21:00:00Z","data":{"id":"x"}}"#;
    let id = "msg_2b7cbf5e0d5e4c3f8a1b";
    // One secret.
    let one = signature_header(&[&new], id, now, body.as_bytes());
    assert_eq!(python_verifies(&new.expose(), id, now, body, &one), "ok");
    // During the overlap both are sent, and either secret verifies.
    let both = signature_header(&[&new, &old], id, now, body.as_bytes());
    assert_eq!(python_verifies(&new.expose(), id, now, body, &both), "ok");
    assert_eq!(python_verifies(&old.expose(), id, now, body, &both), "ok");
    // After it, only the new one is sent: the old secret no longer verifies.
    assert_ne!(python_verifies(&old.expose(), id, now, body, &one), "ok");
    // Any change to the body, id or timestamp fails.
    assert_ne!(
        python_verifies(&new.expose(), id, now, &body.replace('x', "y"), &one),
        "ok"
    );
    assert_ne!(
        python_verifies(&new.expose(), "msg_other", now, body, &one),
        "ok"
    );
    // A timestamp too far from now is refused by the receiver (replay window).
    let stale = signature_header(&[&new], id, now - 3600, body.as_bytes());
    assert_ne!(
        python_verifies(&new.expose(), id, now - 3600, body, &stale),
        "ok"
    );
}

use crate::common::fixture;
use crate::service::Deployment;

fn kek_file(dir: &std::path::Path) -> std::path::PathBuf {
    use base64::Engine;
    let path = dir.join("webhook.kek");
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode(key) + "\n",
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_and_the_outbox_embedded() {
    endpoints_and_the_outbox(Deployment::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_and_the_outbox_on_postgres() {
    endpoints_and_the_outbox(Deployment::production().await).await;
}

/// `airlock webhook add|list|rotate|remove`, secrets sealed at rest, and the outbox: exactly one
/// event per final state change of a subscribed tenant's job, committed with it, and one
/// delivery per subscribed endpoint; none for a tenant without endpoints.
async fn endpoints_and_the_outbox(d: Deployment) {
    let kek = kek_file(d.dir.path());
    let run = |args: &[&str]| {
        d.cmd()
            .args(args)
            .env("AIRLOCK_WEBHOOK_KEK_FILE", &kek)
            .env("AIRLOCK_WEBHOOK_ALLOW", "127.0.0.1")
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or(
            serde_json::Value::String(String::from_utf8_lossy(&out.stdout).into()),
        )
    };
    ok(&["tenant", "create", "acme"]);
    ok(&["tenant", "create", "globex"]);

    // https only unless allowlisted; no key-encryption key, no secret.
    let out = d
        .cmd()
        .args([
            "webhook",
            "add",
            "--tenant",
            "acme",
            "--url",
            "http://127.0.0.1:9/hook",
        ])
        .env("AIRLOCK_WEBHOOK_KEK_FILE", &kek)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("https only"));
    let out = d
        .cmd()
        .args([
            "webhook",
            "add",
            "--tenant",
            "acme",
            "--url",
            "https://hooks.example/a",
        ])
        .env_remove("AIRLOCK_WEBHOOK_KEK_FILE")
        .env_remove("AIRLOCK_WEBHOOK_KEK")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key-encryption key"));
    let out = run(&[
        "webhook",
        "add",
        "--tenant",
        "acme",
        "--url",
        "https://u:p@hooks.example/a",
    ]);
    assert_eq!(out.status.code(), Some(2), "credentials in the URL");

    let all = ok(&[
        "webhook",
        "add",
        "--tenant",
        "acme",
        "--url",
        "http://127.0.0.1:9/all",
    ]);
    let secret = all["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let rejected_only = ok(&[
        "webhook",
        "add",
        "--tenant",
        "acme",
        "--url",
        "http://127.0.0.1:9/rejected",
        "--events",
        "job.rejected",
    ]);
    let all_id = all["id"].as_str().unwrap().to_string();
    let listed = ok(&["webhook", "list", "--tenant", "acme"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains("whsec_"),
        "never a secret: {listed}"
    );
    assert_eq!(
        ok(&["webhook", "list", "--tenant", "globex"])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // At rest the secret is sealed: the column holds neither it nor its bytes.
    let url = &d
        .vars
        .iter()
        .find(|(k, _)| k == "AIRLOCK_DATABASE_URL")
        .unwrap()
        .1;
    let store = airlock::jobs::open_sql(url, false).await.unwrap();
    use sqlx::Row;
    let sealed: String = sqlx::query("SELECT secret FROM airlock_webhooks WHERE id = $1")
        .bind(&all_id)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert!(!sealed.contains(secret.trim_start_matches("whsec_")));

    // Jobs: acme's end succeeded, rejected and cancelled; globex's succeeded (no endpoints).
    let good = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let bad = d.submit("acme", &fixture("invalid/binary_content.csv"), &[]);
    let theirs = d.submit("globex", &fixture("valid/leads.csv"), &[]);
    let out = d.run(&["supervise", "--until-idle", "-c", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancelled = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    ok(&["cancel", &cancelled]);
    let events = |job: &str| {
        let pool = store.pool().clone();
        let job = job.to_string();
        async move {
            sqlx::query("SELECT id, type, state FROM airlock_webhook_events WHERE job_id = $1 ORDER BY created_at")
                .bind(job)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1), r.get::<String, _>(2)))
                .collect::<Vec<_>>()
        }
    };
    let deliveries = |event: &str| {
        let pool = store.pool().clone();
        let event = event.to_string();
        async move {
            sqlx::query("SELECT endpoint_id FROM airlock_webhook_deliveries WHERE event_id = $1 ORDER BY endpoint_id")
                .bind(event)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect::<Vec<_>>()
        }
    };
    let e = events(&good).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (e[0].1.as_str(), e[0].2.as_str()),
        ("job.succeeded", "succeeded")
    );
    assert!(e[0].0.starts_with("msg_"));
    assert_eq!(
        deliveries(&e[0].0).await,
        vec![all_id.clone()],
        "only the endpoint subscribed"
    );
    let e = events(&bad).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].1, "job.rejected");
    let mut both = vec![
        all_id.clone(),
        rejected_only["id"].as_str().unwrap().to_string(),
    ];
    both.sort();
    assert_eq!(deliveries(&e[0].0).await, both);
    assert_eq!(events(&cancelled).await.len(), 1);
    assert_eq!(events(&cancelled).await[0].1, "job.cancelled");
    assert!(events(&theirs).await.is_empty(), "globex has no endpoint");

    // Erasure: one job.purged event per purged job.
    let out = d.run(&["purge", "--tenant", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = events(&good).await;
    assert_eq!(
        e.iter().map(|x| x.1.as_str()).collect::<Vec<_>>(),
        ["job.succeeded", "job.purged"]
    );

    // Rotation: both secrets sign for 24 h; another tenant can neither rotate nor remove it.
    let rotated = ok(&["webhook", "rotate", &all_id, "--tenant", "acme"]);
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    let now = airlock::jobs::JobStore::now(&*store).await.unwrap();
    let (current, previous) = store
        .webhook_secrets(uuid::Uuid::parse_str(&all_id).unwrap(), now)
        .await
        .unwrap()
        .unwrap();
    let key = airlock::webhooks::Kek::parse(&std::fs::read_to_string(&kek).unwrap()).unwrap();
    let opened = key.open(&current, &all_id).unwrap();
    assert_eq!(*opened.expose(), new_secret);
    assert_eq!(
        *key.open(&previous.unwrap(), &all_id).unwrap().expose(),
        secret
    );
    let (_, after) = store
        .webhook_secrets(
            uuid::Uuid::parse_str(&all_id).unwrap(),
            now + 24 * 3600 * 1000 + 1,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        after.is_none(),
        "the old secret stops signing after the overlap"
    );
    assert_eq!(
        run(&["webhook", "rotate", &all_id, "--tenant", "globex"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        run(&["webhook", "remove", &all_id, "--tenant", "globex"])
            .status
            .code(),
        Some(1)
    );
    ok(&["webhook", "remove", &all_id, "--tenant", "acme"]);
    assert_eq!(
        ok(&["webhook", "list", "--tenant", "acme"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A receiver on loopback that verifies every signature with the `standardwebhooks` package and
/// logs each request as a JSON line (`verified_old` too when the secrets file holds the path's
/// rotated-out secret under `PATH#old`). Its behaviour comes from the path: `/ok` answers 200,
/// `/flaky` 500 twice per webhook-id and then 200, `/gone` 410, `/hang` sleeps 20 s, `/slow`
/// holds its very first request 30 s (then answers 200 to everything), `/busy` answers 503 with
/// `Retry-After: 2` once per webhook-id and then 200, `/moved` a 302 to `/followed`, `/dead` 500.
const RECEIVER: &str = r##"
import json, sys, time, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook
port, secrets_path, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
seen = {}
total = {}
lock = threading.Lock()
def verifies(secret, body, headers):
    if secret is None: return None
    try:
        Webhook(secret).verify(body, headers)
        return True
    except Exception:
        return False
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        with lock:
            open(log_path, "a").write(json.dumps({"path": self.path, "method": "GET"}) + "\n")
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        secrets = json.load(open(secrets_path))
        path = self.path
        headers = {k: self.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
        ok = verifies(secrets.get(path), body, headers)
        old = verifies(secrets.get(path + "#old"), body, headers)
        wid = self.headers["webhook-id"]
        with lock:
            seen[wid] = seen.get(wid, 0) + 1
            total[path] = total.get(path, 0) + 1
            n, first = seen[wid], total[path] == 1
            event = json.loads(body)
            open(log_path, "a").write(json.dumps({"path": path, "id": wid, "n": n, "verified": ok, "verified_old": old, "type": event["type"], "job": event["data"]["job_id"], "body": body}) + "\n")
        if path == "/hang":
            time.sleep(20)
        if path == "/slow" and first:
            time.sleep(30)
        status, extra = 200, {}
        if path == "/flaky" and n <= 2: status = 500
        if path == "/gone": status = 410
        if path == "/busy" and n == 1: status, extra = 503, {"retry-after": "2"}
        if path == "/moved": status, extra = 302, {"location": "/followed"}
        if path == "/dead": status = 500
        self.send_response(status)
        for k, v in extra.items(): self.send_header(k, v)
        self.send_header("content-length", "0"); self.end_headers()
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"##;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        // SIGKILL: nothing of the process gets to finish what it was doing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A deployment set up for webhooks: a key-encryption key, the loopback allowlist, and the
/// verifying [`RECEIVER`] on a free port, whose secrets file `add` keeps up to date.
struct Hooks {
    d: Deployment,
    kek: std::path::PathBuf,
    port: u16,
    secrets: std::path::PathBuf,
    log: std::path::PathBuf,
    _receiver: Kill,
}

impl Hooks {
    fn new(d: Deployment) -> Self {
        let kek = kek_file(d.dir.path());
        let port = crate::common::free_port();
        let secrets = d.dir.path().join("secrets.json");
        let log = d.dir.path().join("received.jsonl");
        std::fs::write(&secrets, "{}").unwrap();
        let receiver = Kill(
            Command::new("python3")
                .args(["-c", RECEIVER, &port.to_string()])
                .arg(&secrets)
                .arg(&log)
                .spawn()
                .unwrap(),
        );
        Hooks {
            d,
            kek,
            port,
            secrets,
            log,
            _receiver: receiver,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = self.d.cmd();
        c.env("AIRLOCK_WEBHOOK_KEK_FILE", &self.kek)
            .env("AIRLOCK_WEBHOOK_ALLOW", "127.0.0.1");
        c
    }

    /// Run a command that must succeed; its JSON output (or null).
    fn ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Point a new endpoint of `tenant` at the receiver's `path`; the receiver learns its secret.
    fn add(&self, tenant: &str, path: &str) -> serde_json::Value {
        let ep = self.ok(&[
            "webhook",
            "add",
            "--tenant",
            tenant,
            "--url",
            &format!("http://127.0.0.1:{}{path}", self.port),
        ]);
        self.set_secret(path, ep["secret"].as_str().unwrap());
        ep
    }

    fn set_secret(&self, path: &str, secret: &str) {
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&self.secrets).unwrap()).unwrap();
        map.insert(path.into(), secret.into());
        std::fs::write(&self.secrets, serde_json::Value::Object(map).to_string()).unwrap();
    }

    /// `serve` with a supervisor and the dispatcher, with test-only settings in `env`.
    fn serve(&self, env: &[(&str, &str)]) -> Kill {
        Kill(
            self.cmd()
                .args([
                    "serve",
                    "--supervise",
                    "2",
                    "--listen",
                    &format!("127.0.0.1:{}", crate::common::free_port()),
                ])
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        log_lines(&self.log)
    }

    /// Wait (up to `secs`) until `done` holds for the receiver's log; the log.
    async fn wait(
        &self,
        secs: u64,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let lines = self.lines();
            if done(&lines) {
                return lines;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} within {secs} s: {lines:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn store(&self) -> std::sync::Arc<airlock::jobs::sql::SqlStore> {
        let url = &self
            .d
            .vars
            .iter()
            .find(|(k, _)| k == "AIRLOCK_DATABASE_URL")
            .unwrap()
            .1;
        airlock::jobs::open_sql(url, false).await.unwrap()
    }
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of<'a>(lines: &'a [serde_json::Value], key: &str, value: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l[key] == value).collect()
}

/// Delivery end to end: `serve` (supervisor and dispatcher in one process) sends each final
/// state to real receivers, signed (verified by the reference library), once per job; a 500
/// twice is retried with the same webhook-id; 410 disables the endpoint after one attempt; a
/// hanging receiver is cut off at 15 s; a 503's `Retry-After` is honoured; a 302 is a failure
/// and is not followed; an endpoint failing for 5 days is disabled; the payload carries no file
/// name or URL.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_to_real_receivers() {
    let h = Hooks::new(Deployment::embedded());
    let mut endpoints = std::collections::HashMap::new();
    for t in ["ok", "flaky", "gone", "hang", "busy", "moved", "dead"] {
        h.ok(&["tenant", "create", t]);
        endpoints.insert(
            t,
            h.add(t, &format!("/{t}"))["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let store = h.store().await;
    use sqlx::Row;
    // /dead has been failing for 5 days, its last failure an hour ago (as the dispatcher
    // records it): its next failure disables it.
    let now = airlock::jobs::JobStore::now(&*store).await.unwrap();
    sqlx::query("UPDATE airlock_webhooks SET failing_since = $2 WHERE id = $1")
        .bind(&endpoints["dead"])
        .bind(now - 5 * 24 * 3600 * 1000 - 1000)
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO airlock_webhook_attempts (endpoint_id, event_id, attempt, at, status, latency_ms, error) VALUES ($1, 'msg_earlier', 8, $2, 500, 3, 'HTTP 500')")
        .bind(&endpoints["dead"])
        .bind(now - 3600 * 1000)
        .execute(store.pool())
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for f in [
        "valid/leads.csv",
        "invalid/binary_content.csv",
        "valid/leads.csv",
    ] {
        jobs.push(h.d.submit("ok", &fixture(f), &[]));
    }
    for t in ["flaky", "gone", "hang", "busy", "moved", "dead"] {
        h.d.submit(t, &fixture("valid/leads.csv"), &[]);
    }
    let _serve = h.serve(&[("AIRLOCK_TEST_WEBHOOK_SCHEDULE_SCALE", "0.001")]);
    h.wait(
        60,
        "3 to /ok, 3 to /flaky, 1 to /gone, 2 to /busy, 2 to /moved, 1 to /dead",
        |l| {
            of(l, "path", "/ok").len() >= 3
                && of(l, "path", "/flaky").len() >= 3
                && !of(l, "path", "/gone").is_empty()
                && of(l, "path", "/busy").len() >= 2
                && of(l, "path", "/moved").len() >= 2
                && !of(l, "path", "/dead").is_empty()
        },
    )
    .await;
    // The hanging receiver's attempt is cut off at 15 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let hang_attempt = loop {
        let row = sqlx::query("SELECT a.error, a.latency_ms FROM airlock_webhook_attempts a JOIN airlock_webhooks w ON w.id = a.endpoint_id WHERE w.tenant = 'hang'")
            .fetch_optional(store.pool())
            .await
            .unwrap();
        if let Some(r) = row {
            break (r.get::<Option<String>, _>(0), r.get::<i64, _>(1));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt on the hanging receiver"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(hang_attempt.0.as_deref(), Some("timed out"));
    assert!(
        (14_500..20_000).contains(&hang_attempt.1),
        "{hang_attempt:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let lines = h.lines();
    // Every request verified with the reference library.
    assert!(lines.iter().all(|l| l["verified"] == true), "{lines:#?}");
    // One event per job to /ok, each a distinct id, types matching the jobs' ends.
    let ok = of(&lines, "path", "/ok");
    assert_eq!(ok.len(), 3, "{ok:#?}");
    let mut got: Vec<(String, String)> = ok
        .iter()
        .map(|l| {
            (
                l["job"].as_str().unwrap().to_string(),
                l["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = vec![
        (jobs[0].clone(), "job.succeeded".into()),
        (jobs[1].clone(), "job.rejected".into()),
        (jobs[2].clone(), "job.succeeded".into()),
    ];
    want.sort();
    assert_eq!(got, want);
    for l in &ok {
        let body = l["body"].as_str().unwrap();
        assert!(
            !body.contains("leads.csv") && !body.contains("http"),
            "thin payload: {body}"
        );
    }
    // 500, 500, 200: three attempts, one webhook-id.
    let flaky = of(&lines, "path", "/flaky");
    assert_eq!(flaky.len(), 3, "{flaky:#?}");
    assert!(flaky.iter().all(|l| l["id"] == flaky[0]["id"]));
    // 410: one attempt, and the endpoint is disabled, visibly.
    assert_eq!(of(&lines, "path", "/gone").len(), 1);
    let listed = h.ok(&["webhook", "list", "--tenant", "gone"]);
    assert!(listed[0]["disabled_at_ms"].is_i64(), "{listed}");
    assert!(listed[0]["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("410"));
    // 503 with Retry-After: 2: the retry waits 2 s, not the (scaled) 5 ms of the schedule.
    let attempts = |endpoint: &str| {
        let pool = store.pool().clone();
        let endpoint = endpoint.to_string();
        async move {
            sqlx::query("SELECT at, status, error FROM airlock_webhook_attempts WHERE endpoint_id = $1 ORDER BY at, attempt")
                .bind(endpoint)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<i64, _>(0), r.get::<Option<i32>, _>(1), r.get::<Option<String>, _>(2)))
                .collect::<Vec<_>>()
        }
    };
    let busy = attempts(&endpoints["busy"]).await;
    assert_eq!(
        busy.iter().map(|a| a.1).collect::<Vec<_>>(),
        [Some(503), Some(200)],
        "{busy:?}"
    );
    assert!(busy[1].0 - busy[0].0 >= 2000, "{busy:?}");
    assert_eq!(of(&lines, "path", "/busy").len(), 2);
    // 302: a failure, retried, never followed.
    let moved = attempts(&endpoints["moved"]).await;
    assert!(
        moved.len() >= 2 && moved.iter().all(|a| a.1 == Some(302)),
        "{moved:?}"
    );
    assert!(of(&h.lines(), "path", "/followed").is_empty());
    // Failing for 5 days: one more failure, then disabled, and the tenant sees why.
    assert_eq!(of(&lines, "path", "/dead").len(), 1);
    let listed = h.ok(&["webhook", "list", "--tenant", "dead"]);
    assert_eq!(
        listed[0]["disabled_reason"], "failing for 5 days",
        "{listed}"
    );
}

/// A dispatcher killed (SIGKILL) while a receiver holds its request: the delivery stays
/// pending, and after a restart, once the lease lapses, it is sent again with the same
/// webhook-id. A restart never resends what was acknowledged. Then rotation on the wire: both
/// secrets verify while the old one overlaps, only the new one after.
#[tokio::test(flavor = "multi_thread")]
async fn killed_dispatcher_retries_and_a_restart_resends_nothing() {
    let h = Hooks::new(Deployment::embedded());
    h.ok(&["tenant", "create", "acme"]);
    let ep = h.add("acme", "/slow");
    let endpoint = ep["id"].as_str().unwrap().to_string();
    let old_secret = ep["secret"].as_str().unwrap().to_string();
    let lease = [("AIRLOCK_TEST_WEBHOOK_LEASE_MS", "3000")];
    let first = h.d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let serve = h.serve(&lease);
    let lines = h.wait(60, "the first request", |l| !l.is_empty()).await;
    let id = lines[0]["id"].as_str().unwrap().to_string();
    assert_eq!(lines[0]["job"], first.as_str());
    drop(serve); // SIGKILL mid-delivery: the receiver is still holding the request.

    let store = h.store().await;
    use sqlx::Row;
    let delivery = |event: String| {
        let pool = store.pool().clone();
        async move {
            let r = sqlx::query(
                "SELECT state, attempts FROM airlock_webhook_deliveries WHERE event_id = $1",
            )
            .bind(event)
            .fetch_one(&pool)
            .await
            .unwrap();
            (r.get::<String, _>(0), r.get::<i32, _>(1))
        }
    };
    assert_eq!(delivery(id.clone()).await, ("pending".into(), 0));

    // Restarted: the lease lapses, and the same event goes again, under the same id.
    let serve = h.serve(&lease);
    let lines = h
        .wait(30, "the retry", |l| of(l, "id", &id).len() >= 2)
        .await;
    assert!(lines.iter().all(|l| l["verified"] == true), "{lines:#?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while delivery(id.clone()).await.0 != "delivered" {
        assert!(std::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(serve);

    // Restarted again: a new job's event arrives; the acknowledged one is not resent, even
    // after a whole lease has passed. A third job submitted once the lease has lapsed proves
    // the dispatcher claimed again after that: its event arriving is the point by which a
    // wrongful resend would have happened.
    let restarted = std::time::Instant::now();
    let _serve = h.serve(&lease);
    let second = h.d.submit("acme", &fixture("valid/leads.csv"), &[]);
    h.wait(60, "the second job's event", |l| {
        !of(l, "job", &second).is_empty()
    })
    .await;
    while restarted.elapsed() < std::time::Duration::from_millis(3500) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let third = h.d.submit("acme", &fixture("valid/leads.csv"), &[]);
    h.wait(60, "the third job's event, after a whole lease", |l| {
        !of(l, "job", &third).is_empty()
    })
    .await;
    let lines = h.lines();
    assert_eq!(of(&lines, "id", &id).len(), 2, "{lines:#?}");
    assert_eq!(of(&lines, "job", &second).len(), 1, "{lines:#?}");
    assert_eq!(of(&lines, "job", &third).len(), 1, "{lines:#?}");

    // Rotation: during the overlap the header carries both signatures, and each secret
    // verifies on its own.
    let rotated = h.ok(&["webhook", "rotate", &endpoint, "--tenant", "acme"]);
    h.set_secret("/slow", rotated["secret"].as_str().unwrap());
    h.set_secret("/slow#old", &old_secret);
    let during = h.d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let lines = h
        .wait(60, "an event during the overlap", |l| {
            !of(l, "job", &during).is_empty()
        })
        .await;
    let l = of(&lines, "job", &during)[0];
    assert_eq!(
        (&l["verified"], &l["verified_old"]),
        (&true.into(), &true.into()),
        "{l}"
    );
    // The overlap ends (as 24 h later): only the new secret signs.
    sqlx::query("UPDATE airlock_webhooks SET previous_until = 0 WHERE id = $1")
        .bind(&endpoint)
        .execute(store.pool())
        .await
        .unwrap();
    let after = h.d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let lines = h
        .wait(60, "an event after the overlap", |l| {
            !of(l, "job", &after).is_empty()
        })
        .await;
    let l = of(&lines, "job", &after)[0];
    assert_eq!(
        (&l["verified"], &l["verified_old"]),
        (&true.into(), &false.into()),
        "{l}"
    );
}

/// SSRF: loopback, private, link-local and metadata destinations are refused unless the
/// operator's allowlist names the host; plain http only for an allowlisted host.
#[tokio::test]
async fn private_destinations_are_refused_without_the_allowlist() {
    use airlock::webhooks::dispatch::resolve;
    use airlock::webhooks::Allowlist;
    let none = Allowlist::default();
    for url in [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[fd00:ec2::254]/hook",
        "https://localhost/hook",
        "https://100.64.0.1/hook",
    ] {
        let u = url::Url::parse(url).unwrap();
        let err = resolve(&u, &none).await.unwrap_err();
        assert!(err.contains("may not reach"), "{url}: {err}");
    }
    let allow = Allowlist::parse("127.0.0.1, [::1]");
    for url in ["http://127.0.0.1:8080/hook", "https://[::1]/hook"] {
        assert!(
            resolve(&url::Url::parse(url).unwrap(), &allow)
                .await
                .is_ok(),
            "{url}"
        );
    }
    // A literal private address is refused when the endpoint is made, not only at delivery.
    for url in [
        "https://169.254.169.254/latest",
        "https://[fd00:ec2::254]/",
        "https://10.0.0.1/",
    ] {
        let err = airlock::webhooks::check_url(url, &none).unwrap_err();
        assert!(err.contains("may not reach"), "{url}: {err}");
    }
    assert!(airlock::webhooks::check_url("https://127.0.0.1/hook", &allow).is_ok());
    // The allowlist names hosts exactly: another loopback name is still refused.
    let err = resolve(&url::Url::parse("https://localhost/hook").unwrap(), &allow)
        .await
        .unwrap_err();
    assert!(err.contains("may not reach"), "{err}");
}

/// Inside a private network and mount namespace: `8.8.8.8` is an address of the loopback
/// device, a DNS server on 127.0.0.1:53 answers `rebind.example` first with 8.8.8.8 and then
/// with 127.0.0.1 (TTL 0), and listeners on 8.8.8.8:443 and 127.0.0.1:443 log every
/// connection. Then it runs the command in argv[2:], killed when this script is.
const REBINDING_NETWORK: &str = r#"
import ctypes, json, os, signal, socket, struct, subprocess, sys, threading
d, cmd = sys.argv[1], sys.argv[2:]
lock = threading.Lock()
def note(**k):
    with lock: open(os.path.join(d, "netns.jsonl"), "a").write(json.dumps(k) + "\n")
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "8.8.8.8/32", "dev", "lo"], check=True)
open(os.path.join(d, "resolv.conf"), "w").write("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
open(os.path.join(d, "hosts"), "w").write("127.0.0.1 localhost\n")
for f in ("resolv.conf", "hosts"):
    subprocess.run(["mount", "--bind", os.path.join(d, f), "/etc/" + f], check=True)
answered = [0]
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); dns.bind(("127.0.0.1", 53))
def serve_dns():
    while True:
        q, peer = dns.recvfrom(512)
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
        qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
        known = ".".join(labels).lower() == "rebind.example"
        answer = b""
        if known and qtype == 1:
            answered[0] += 1
            ip = "8.8.8.8" if answered[0] == 1 else "127.0.0.1"
            note(dns=ip)
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + socket.inet_aton(ip)
        flags = 0x8580 | (0 if known else 3)
        dns.sendto(q[:2] + struct.pack(">HHHHH", flags, 1, 1 if answer else 0, 0, 0) + q[12:i + 5] + answer, peer)
def listener(ip):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((ip, 443)); s.listen(16)
    def run():
        while True:
            c, _ = s.accept(); note(connection=ip); c.close()
    return run
for f in (serve_dns, listener("8.8.8.8"), listener("127.0.0.1")):
    threading.Thread(target=f, daemon=True).start()
libc = ctypes.CDLL(None)
sys.exit(subprocess.Popen(cmd, preexec_fn=lambda: libc.prctl(1, signal.SIGKILL)).wait())
"#;

/// DNS rebinding: a name that resolves to a public address when checked and to loopback a
/// moment later. The connection goes to the address that was checked (pinned), never to the
/// second answer; the next attempt resolves afresh, gets loopback, and is refused before any
/// connection. Real DNS through the C library, in a private network namespace.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_rebinds_to_loopback_is_never_reached() {
    let h = Hooks::new(Deployment::embedded());
    h.ok(&["tenant", "create", "acme"]);
    let ep = h.ok(&[
        "webhook",
        "add",
        "--tenant",
        "acme",
        "--url",
        "https://rebind.example/hook",
    ]);
    h.d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let base = h.cmd();
    let mut c = Command::new("unshare");
    c.args(["--net", "--mount", "--kill-child", "--", "python3", "-c"])
        .arg(REBINDING_NETWORK)
        .arg(h.d.dir.path())
        .arg(env!("CARGO_BIN_EXE_airlock"))
        .arg("supervise")
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("AIRLOCK_WEBHOOK_ALLOW")
        .env("AIRLOCK_TEST_WEBHOOK_SCHEDULE_SCALE", "0.001")
        .current_dir(h.d.dir.path())
        .stdout(std::process::Stdio::null());
    let netns = Kill(c.spawn().expect("unshare (util-linux)"));
    let store = h.store().await;
    use sqlx::Row;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let attempts = loop {
        let rows = sqlx::query(
            "SELECT attempt, error FROM airlock_webhook_attempts WHERE endpoint_id = $1 ORDER BY attempt",
        )
        .bind(ep["id"].as_str().unwrap())
        .fetch_all(store.pool())
        .await
        .unwrap();
        if rows.len() >= 3 {
            break rows
                .iter()
                .map(|r| r.get::<Option<String>, _>(1).unwrap_or_default())
                .collect::<Vec<_>>();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "3 attempts: {:?}",
            std::fs::read_to_string(h.d.dir.path().join("netns.jsonl"))
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    drop(netns);
    let seen = log_lines(&h.d.dir.path().join("netns.jsonl"));
    let answers: Vec<&str> = seen.iter().filter_map(|l| l["dns"].as_str()).collect();
    let connections: Vec<&str> = seen
        .iter()
        .filter_map(|l| l["connection"].as_str())
        .collect();
    assert_eq!(
        answers[..3],
        ["8.8.8.8", "127.0.0.1", "127.0.0.1"],
        "{seen:?}"
    );
    // The first attempt reached the checked address (and failed there: no TLS) ...
    assert_eq!(connections, ["8.8.8.8"], "{seen:?} {attempts:?}");
    assert!(!attempts[0].contains("may not reach"), "{attempts:?}");
    // ... and the later ones were refused on resolving, before connecting.
    for a in &attempts[1..3] {
        assert!(
            a.contains("private or reserved")
                && a.contains("may not reach")
                && !a.contains("127.0.0.1"),
            "{attempts:?}"
        );
    }
}

/// The mixed batch: 100 jobs from 3 tenants, each tenant with an endpoint. Every job's end
/// arrives exactly once, signed; after a purge every erased job's `job.purged` arrives once,
/// after its first event.
#[tokio::test(flavor = "multi_thread")]
async fn one_event_per_final_state_in_order_for_a_100_job_batch() {
    let h = Hooks::new(Deployment::embedded());
    let tenants = ["t0", "t1", "t2"];
    for t in tenants {
        h.ok(&["tenant", "create", t]);
        // Each tenant's receiver path is /ok (the receiver answers 200), its secret by path.
        h.add(t, &format!("/ok?{t}"));
    }
    let files = [
        "valid/leads.csv",
        "invalid/binary_content.csv",
        "invalid/empty.csv",
        "valid/leads.csv",
    ];
    let mut jobs = Vec::new();
    for i in 0..100 {
        let t = tenants[i % 3];
        jobs.push((t, h.d.submit(t, &fixture(files[i % files.len()]), &[])));
    }
    let _serve = h.serve(&[]);
    let wait_for = |n: usize| h.wait(180, "every event", move |l| l.len() >= n);
    wait_for(100).await;
    let purged_jobs: Vec<&String> = jobs
        .iter()
        .filter(|(t, _)| *t == "t0")
        .map(|(_, j)| j)
        .collect();
    h.ok(&["purge", "--tenant", "t0"]);
    wait_for(100 + purged_jobs.len()).await;
    // Every delivery recorded as delivered: nothing is left that could still be sent.
    let store = h.store().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM airlock_webhook_deliveries WHERE state <> 'delivered'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} deliveries never settled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let lines = h.lines();
    assert!(lines.iter().all(|l| l["verified"] == true));
    assert_eq!(
        lines.len(),
        100 + purged_jobs.len(),
        "nothing twice, nothing invented"
    );
    for (t, job) in &jobs {
        let mine: Vec<&str> = lines
            .iter()
            .filter(|l| l["job"] == job.as_str())
            .map(|l| l["type"].as_str().unwrap())
            .collect();
        assert!(
            matches!(mine.first(), Some(&"job.succeeded") | Some(&"job.rejected")),
            "{job}: {mine:?}"
        );
        if *t == "t0" {
            assert_eq!(mine.len(), 2, "{job}: {mine:?}");
            assert_eq!(mine[1], "job.purged", "in order: {mine:?}");
        } else {
            assert_eq!(mine.len(), 1, "{job}: {mine:?}");
        }
    }
    let ids: std::collections::HashSet<&str> =
        lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "one webhook-id per event");
}

/// On PostgreSQL: `supervise --until-idle` runs the dispatcher beside its jobs and drains what
/// they raised before it exits (the claim query with `FOR UPDATE OF d SKIP LOCKED`).
#[tokio::test(flavor = "multi_thread")]
async fn supervise_delivers_on_postgres() {
    let h = Hooks::new(Deployment::production().await);
    h.ok(&["tenant", "create", "acme"]);
    h.add("acme", "/ok");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let a = h.d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let b =
        h.d.submit("acme", &fixture("invalid/binary_content.csv"), &[]);
    h.ok(&["supervise", "--until-idle", "-c", "2"]);
    let lines = h.lines();
    let mut got: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["job"].as_str().unwrap().to_string(),
                l["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (a, "job.succeeded".to_string()),
        (b, "job.rejected".to_string()),
    ];
    want.sort();
    assert_eq!(got, want, "{lines:#?}");
    assert!(lines.iter().all(|l| l["verified"] == true));
}
