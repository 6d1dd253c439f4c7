//! The README's API walk-through, run as written: every ```sh block that follows a
//! `<!-- readme-test: api -->` line runs in bash, in order, against `airlock serve` started as
//! the quickstart says (an empty directory, no configuration), with the key it printed.

use std::io::BufRead;
use std::time::Duration;

use crate::common::airlock;

fn tested_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- readme-test: api -->" {
            continue;
        }
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "a tested block is ```sh"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

#[test]
fn the_api_walk_through_runs_as_written() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    assert!(
        readme.contains("cargo run --release -- serve\n"),
        "the quickstart is one command"
    );
    let blocks = tested_blocks(&readme);
    assert_eq!(
        blocks.len(),
        3,
        "submit-poll-download, the direct upload, and a stored schema"
    );

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // A free port can be taken by another test between asking and binding: then serve exits,
    // and the quickstart is started afresh (a new directory, a new port), up to three times.
    let mut started = None;
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(repo.join("fixtures"), dir.path().join("fixtures")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = airlock()
            .arg("serve")
            .current_dir(dir.path())
            .env_remove("AIRLOCK_DATABASE_URL")
            .env_remove("AIRLOCK_STORAGE_URL")
            .env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
            .env("AIRLOCK_PUBLIC_URL", &base)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut serve = Kill(child);
        // The key is printed before the server listens.
        let key = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("al_live_"))
                    .map(String::from)
            })
            .expect("the first start prints a key");
        let ready = (0..2400).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                || matches!(serve.0.try_wait(), Ok(Some(_)))
        });
        if ready && matches!(serve.0.try_wait(), Ok(None)) {
            started = Some((dir, base, key, serve));
            break;
        }
    }
    let (dir, base, key, serve) = started.expect("serve never listened");

    let run = |block: &str| {
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .current_dir(dir.path())
            .env("AIRLOCK_URL", &base)
            .env("KEY", &key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{block}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = run(&blocks[0]);
    assert!(shown.contains("\"state\": \"succeeded\""), "{shown}");
    let clean = std::fs::read_to_string(dir.path().join("leads.clean.csv")).unwrap();
    assert_eq!(
        Some(clean),
        crate::common::process(&repo.join("fixtures/valid/leads.csv"), &[]).output()
    );
    let state = run(&blocks[1]);
    assert_eq!(state.trim(), "\"queued\"");
    let shown = run(&blocks[2]);
    let expected = blocks[2]
        .lines()
        .find_map(|l| l.strip_prefix("# {\"schema_id\""))
        .expect("the block shows its answer");
    assert!(
        shown.contains(&format!("{{\"schema_id\"{expected}")),
        "{shown}"
    );
    assert!(
        shown.contains("\"default\":true") && shown.contains("unique_error"),
        "{shown}"
    );
    drop(serve);
}

/// The README's webhook receiver, run as written (its secret and port filled in): a signed event
/// is accepted and printed; an unsigned one is not.
#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_receiver_example_verifies() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let start = readme
        .find("A receiver, verifying with the `standardwebhooks` package")
        .expect("the receiver example");
    let block = &readme[start..];
    let code = block
        .split("```python\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a python block");
    assert!(code.lines().count() <= 12, "a short example");
    let secret = airlock::webhooks::Secret::generate();
    let port = crate::common::free_port();
    let code = code
        .replace("whsec_…", &secret.expose())
        .replace("8000", &port.to_string());
    let mut child = std::process::Command::new("python3")
        .args(["-u", "-c", &code])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let body = r#"{"type":"job.succeeded","timestamp":"2026-11-27T21:00:00.000Z","data":{"job_id":"j-1","state":"succeeded"}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let send = |id: &str, sig: String| {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/"))
            .header("webhook-id", id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
    };
    let mut status = None;
    for _ in 0..100 {
        if let Ok(r) = send(
            "msg_readme",
            secret.sign("msg_readme", now, body.as_bytes()),
        )
        .await
        {
            status = Some(r.status().as_u16());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(200));
    // A forged signature: the receiver raises, so the request gets no 200 (the example's
    // server drops the connection) ...
    let forged = send(
        "msg_forged",
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
    )
    .await;
    assert!(
        forged.as_ref().map_or(true, |r| r.status() != 200),
        "a bad signature is accepted: {forged:?}"
    );
    // ... from a receiver that is still up and verifying: the next signed event is accepted.
    let after = send("msg_after", secret.sign("msg_after", now, body.as_bytes()))
        .await
        .expect("the receiver still answers after refusing the forgery");
    assert_eq!(after.status(), 200);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("msg_readme job.succeeded j-1")
            && printed.contains("msg_after job.succeeded j-1"),
        "{printed}"
    );
    assert!(
        !printed.contains("msg_forged"),
        "the forged event was handled: {printed}"
    );
}
