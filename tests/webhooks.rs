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
