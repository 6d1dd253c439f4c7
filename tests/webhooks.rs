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
/// logs each request as a JSON line. Its behaviour comes from the path: `/ok` answers 200,
/// `/flaky` 500 twice per webhook-id and then 200, `/gone` 410, `/hang` sleeps 20 s.
const RECEIVER: &str = r#"
import json, sys, time, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook
port, secrets_path, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
seen = {}
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        secrets = json.load(open(secrets_path))
        path = self.path
        try:
            Webhook(secrets[path]).verify(body, {k: self.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")})
            ok = True
        except Exception as e:
            ok = False
        wid = self.headers["webhook-id"]
        with lock:
            seen[wid] = seen.get(wid, 0) + 1
            n = seen[wid]
            event = json.loads(body)
            open(log_path, "a").write(json.dumps({"path": path, "id": wid, "n": n, "verified": ok, "type": event["type"], "job": event["data"]["job_id"], "body": body}) + "\n")
        if path == "/hang":
            time.sleep(20)
        status = 200
        if path == "/flaky" and n <= 2: status = 500
        if path == "/gone": status = 410
        self.send_response(status); self.send_header("content-length", "0"); self.end_headers()
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Delivery end to end: `serve` (supervisor and dispatcher in one process) sends each final
/// state to real receivers, signed (verified by the reference library), once per job; a 500
/// twice is retried with the same webhook-id; 410 disables the endpoint after one attempt; a
/// hanging receiver is cut off at 15 s; the payload carries no file name or URL.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_to_real_receivers() {
    let d = Deployment::embedded();
    let kek = kek_file(d.dir.path());
    let port = crate::common::free_port();
    let secrets = d.dir.path().join("secrets.json");
    std::fs::write(&secrets, "{}").unwrap();
    let log = d.dir.path().join("received.jsonl");
    let _receiver = Kill(
        Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string()])
            .arg(&secrets)
            .arg(&log)
            .spawn()
            .unwrap(),
    );
    let run = |args: &[&str]| {
        let out = d
            .cmd()
            .args(args)
            .env("AIRLOCK_WEBHOOK_KEK_FILE", &kek)
            .env("AIRLOCK_WEBHOOK_ALLOW", "127.0.0.1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let mut map = serde_json::Map::new();
    for t in ["ok", "flaky", "gone", "hang"] {
        run(&["tenant", "create", t]);
        let ep = run(&[
            "webhook",
            "add",
            "--tenant",
            t,
            "--url",
            &format!("http://127.0.0.1:{port}/{t}"),
        ]);
        map.insert(format!("/{t}"), ep["secret"].clone());
    }
    std::fs::write(&secrets, serde_json::Value::Object(map).to_string()).unwrap();
    let mut jobs = Vec::new();
    for f in [
        "valid/leads.csv",
        "invalid/binary_content.csv",
        "valid/leads.csv",
    ] {
        jobs.push(d.submit("ok", &fixture(f), &[]));
    }
    d.submit("flaky", &fixture("valid/leads.csv"), &[]);
    d.submit("gone", &fixture("valid/leads.csv"), &[]);
    d.submit("hang", &fixture("valid/leads.csv"), &[]);
    let api_port = crate::common::free_port();
    let _serve = Kill(
        d.cmd()
            .args([
                "serve",
                "--supervise",
                "2",
                "--listen",
                &format!("127.0.0.1:{api_port}"),
            ])
            .env("AIRLOCK_WEBHOOK_KEK_FILE", &kek)
            .env("AIRLOCK_WEBHOOK_ALLOW", "127.0.0.1")
            .env("AIRLOCK_TEST_WEBHOOK_SCHEDULE_SCALE", "0.001")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = |lines: &[serde_json::Value]| {
        let ok = lines.iter().filter(|l| l["path"] == "/ok").count();
        let flaky = lines.iter().filter(|l| l["path"] == "/flaky").count();
        let gone = lines.iter().filter(|l| l["path"] == "/gone").count();
        ok >= 3 && flaky >= 3 && gone >= 1
    };
    while !done(&log_lines(&log)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            log_lines(&log)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The hanging receiver's attempt is cut off at 15 s.
    let url = &d
        .vars
        .iter()
        .find(|(k, _)| k == "AIRLOCK_DATABASE_URL")
        .unwrap()
        .1;
    let store = airlock::jobs::open_sql(url, false).await.unwrap();
    use sqlx::Row;
    let hang_attempt = loop {
        let row = sqlx::query("SELECT a.error, a.latency_ms FROM airlock_webhook_attempts a JOIN airlock_webhooks w ON w.id = a.endpoint_id WHERE w.tenant = 'hang'")
            .fetch_optional(store.pool())
            .await
            .unwrap();
        if let Some(r) = row {
            break (r.get::<Option<String>, _>(0), r.get::<i64, _>(1));
        }
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(20),
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
    let lines = log_lines(&log);
    // Every request verified with the reference library.
    assert!(lines.iter().all(|l| l["verified"] == true), "{lines:#?}");
    // One event per job to /ok, each a distinct id, types matching the jobs' ends.
    let ok: Vec<_> = lines.iter().filter(|l| l["path"] == "/ok").collect();
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
    let flaky: Vec<_> = lines.iter().filter(|l| l["path"] == "/flaky").collect();
    assert_eq!(flaky.len(), 3, "{flaky:#?}");
    assert!(flaky.iter().all(|l| l["id"] == flaky[0]["id"]));
    // 410: one attempt, and the endpoint is disabled, visibly.
    assert_eq!(lines.iter().filter(|l| l["path"] == "/gone").count(), 1);
    let listed = run(&["webhook", "list", "--tenant", "gone"]);
    assert!(listed[0]["disabled_at_ms"].is_i64(), "{listed}");
    assert!(listed[0]["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("410"));
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
    // The allowlist names hosts exactly: another loopback name is still refused.
    let err = resolve(&url::Url::parse("https://localhost/hook").unwrap(), &allow)
        .await
        .unwrap_err();
    assert!(err.contains("may not reach"), "{err}");
}

/// The mixed batch: 100 jobs from 3 tenants, each tenant with an endpoint. Every job's end
/// arrives exactly once, signed; after a purge every erased job's `job.purged` arrives once,
/// after its first event.
#[tokio::test(flavor = "multi_thread")]
async fn one_event_per_final_state_in_order_for_a_100_job_batch() {
    let d = Deployment::embedded();
    let kek = kek_file(d.dir.path());
    let port = crate::common::free_port();
    let secrets = d.dir.path().join("secrets.json");
    let log = d.dir.path().join("received.jsonl");
    let run = |args: &[&str]| {
        let out = d
            .cmd()
            .args(args)
            .env("AIRLOCK_WEBHOOK_KEK_FILE", &kek)
            .env("AIRLOCK_WEBHOOK_ALLOW", "127.0.0.1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let tenants = ["t0", "t1", "t2"];
    let mut map = serde_json::Map::new();
    for t in tenants {
        run(&["tenant", "create", t]);
        // Each tenant's receiver path is /ok (the receiver answers 200), its secret by path.
        let ep = run(&[
            "webhook",
            "add",
            "--tenant",
            t,
            "--url",
            &format!("http://127.0.0.1:{port}/ok?{t}"),
        ]);
        map.insert(format!("/ok?{t}"), ep["secret"].clone());
    }
    std::fs::write(&secrets, serde_json::Value::Object(map).to_string()).unwrap();
    let _receiver = Kill(
        Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string()])
            .arg(&secrets)
            .arg(&log)
            .spawn()
            .unwrap(),
    );
    let files = [
        "valid/leads.csv",
        "invalid/binary_content.csv",
        "invalid/empty.csv",
        "valid/leads.csv",
    ];
    let mut jobs = Vec::new();
    for i in 0..100 {
        let t = tenants[i % 3];
        jobs.push((t, d.submit(t, &fixture(files[i % files.len()]), &[])));
    }
    let api_port = crate::common::free_port();
    let _serve = Kill(
        d.cmd()
            .args([
                "serve",
                "--supervise",
                "2",
                "--listen",
                &format!("127.0.0.1:{api_port}"),
            ])
            .env("AIRLOCK_WEBHOOK_KEK_FILE", &kek)
            .env("AIRLOCK_WEBHOOK_ALLOW", "127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wait_for = |n: usize| {
        let log = log.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
            loop {
                let lines = log_lines(&log);
                if lines.len() >= n {
                    return lines;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} of {n} events",
                    lines.len()
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    wait_for(100).await;
    let purged_jobs: Vec<&String> = jobs
        .iter()
        .filter(|(t, _)| *t == "t0")
        .map(|(_, j)| j)
        .collect();
    run(&["purge", "--tenant", "t0"]);
    wait_for(100 + purged_jobs.len()).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let lines = log_lines(&log);
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
    let d = Deployment::production().await;
    let kek = kek_file(d.dir.path());
    let port = crate::common::free_port();
    let secrets = d.dir.path().join("secrets.json");
    let log = d.dir.path().join("received.jsonl");
    let env = |c: &mut std::process::Command| {
        c.env("AIRLOCK_WEBHOOK_KEK_FILE", &kek)
            .env("AIRLOCK_WEBHOOK_ALLOW", "127.0.0.1");
    };
    let run = |args: &[&str]| {
        let mut c = d.cmd();
        env(&mut c);
        let out = c.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    run(&["tenant", "create", "acme"]);
    let ep = run(&[
        "webhook",
        "add",
        "--tenant",
        "acme",
        "--url",
        &format!("http://127.0.0.1:{port}/ok"),
    ]);
    std::fs::write(
        &secrets,
        serde_json::json!({"/ok": ep["secret"]}).to_string(),
    )
    .unwrap();
    let _receiver = Kill(
        Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string()])
            .arg(&secrets)
            .arg(&log)
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let a = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let b = d.submit("acme", &fixture("invalid/binary_content.csv"), &[]);
    run(&["supervise", "--until-idle", "-c", "2"]);
    let lines = log_lines(&log);
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
