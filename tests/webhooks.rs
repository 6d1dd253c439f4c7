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
