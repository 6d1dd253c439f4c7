//! The tamper-evident audit trail: every kind of record lands in its tenant's chain, the
//! triggers refuse UPDATE and DELETE, and `verify` finds each of seven tamperings made directly
//! in SQL (with the triggers out of the way, as a database owner could), on both backends.

use airlock::audit::{AuditKey, Verified};
use airlock::jobs::sql::SqlStore;
use airlock::jobs::{JobStore, NewJob};
use sha2::Digest;
use sqlx::Row;

fn job(tenant: &str) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4(),
        tenant: tenant.into(),
        idempotency_key: None,
        plan: "default".into(),
        input_key: airlock::storage::ObjectKey::new(airlock::storage::Kind::Input).to_string(),
        input_bytes: 10,
        file_name: "leads.csv".into(),
        max_attempts: 3,
        schema: None,
    }
}

enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh store at the latest schema (a temp SQLite file, or a fresh PostgreSQL schema).
async fn fresh(backend: &Backend) -> (SqlStore, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let store = airlock::jobs::sqlite::open(&dir.path().join("a.db"))
                .await
                .unwrap();
            store.migrate().await.unwrap();
            (store, Some(dir))
        }
        Backend::Postgres => {
            let schema = format!("audit_{}", uuid::Uuid::new_v4().simple());
            let store = airlock::jobs::postgres::connect(&crate::jobs::pg_url(), Some(schema))
                .await
                .expect("PostgreSQL at AIRLOCK_TEST_DATABASE_URL");
            store.migrate().await.unwrap();
            (store, None)
        }
    }
}

/// Records of every kind for `acme` (and one for `globex`), then a signed checkpoint.
/// Returns acme's chain length.
async fn populate(store: &SqlStore, key: &AuditKey) -> i64 {
    store.create_tenant("acme", "default", 1).await.unwrap();
    store.create_tenant("globex", "default", 1).await.unwrap();
    let a = store.submit(&job("acme"), 10).await.unwrap().id();
    let b = store.submit(&job("acme"), 11).await.unwrap().id();
    store.submit(&job("globex"), 12).await.unwrap();
    let claimed = store.claim("sup", 30_000, 20).await.unwrap().unwrap();
    assert!(claimed.id == a || claimed.id == b);
    let other = if claimed.id == a { b } else { a };
    store.cancel(other, 30).await.unwrap();
    let (k, _) = store.create_key("acme", "pipeline", 40).await.unwrap();
    store.revoke_key(k.id, 50).await.unwrap();
    let ep = uuid::Uuid::new_v4();
    store
        .add_webhook(
            ep,
            "acme",
            "https://hooks.example/a",
            &airlock::webhooks::EventType::ALL,
            "sealed",
            60,
        )
        .await
        .unwrap();
    store
        .rotate_webhook("acme", ep, "sealed2", 70)
        .await
        .unwrap();
    store.remove_webhook("acme", ep).await.unwrap();
    assert!(airlock::audit::checkpoint(store, key).await.unwrap() >= 2);
    sqlx::query("SELECT seq FROM airlock_audit_heads WHERE tenant = 'acme'")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0)
}

async fn untrigger(store: &SqlStore, backend: &Backend) {
    let statements: &[&str] = match backend {
        Backend::Sqlite => &[
            "DROP TRIGGER airlock_audit_no_update",
            "DROP TRIGGER airlock_audit_no_delete",
            "DROP TRIGGER airlock_audit_checkpoints_no_update",
            "DROP TRIGGER airlock_audit_checkpoints_no_delete",
        ],
        // As the tables' owner (the pool works as `airlock_service`, which may not alter them).
        Backend::Postgres => &[
            "SET LOCAL ROLE NONE",
            "ALTER TABLE airlock_audit DISABLE TRIGGER USER",
            "ALTER TABLE airlock_audit_checkpoints DISABLE TRIGGER USER",
        ],
    };
    let mut tx = store.pool().begin().await.unwrap();
    for s in statements {
        sqlx::query(s).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// A fresh, populated store with its append-only triggers out of the way, ready to tamper
/// with; acme's chain length.
async fn to_tamper(
    backend: &Backend,
    key: &AuditKey,
) -> (SqlStore, Option<tempfile::TempDir>, i64) {
    let (store, dir) = fresh(backend).await;
    let n = populate(&store, key).await;
    untrigger(&store, backend).await;
    (store, dir, n)
}

async fn exec(store: &SqlStore, sql: &str) {
    sqlx::query(sql).execute(store.pool()).await.unwrap();
}

async fn row(store: &SqlStore, seq: i64) -> (String, String, String) {
    let r = sqlx::query(
        "SELECT body, prev_hash, hash FROM airlock_audit WHERE tenant = 'acme' AND seq = $1",
    )
    .bind(seq)
    .fetch_one(store.pool())
    .await
    .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// SHA-256(prev || body), computed here, independently of the code under test.
fn rehash(prev: &str, body: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(hex::decode(prev).unwrap());
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

async fn set_row(store: &SqlStore, seq: i64, body: &str, prev: &str, hash: &str) {
    sqlx::query(
        "UPDATE airlock_audit SET body = $2, prev_hash = $3, hash = $4 WHERE tenant = 'acme' AND seq = $1",
    )
    .bind(seq)
    .bind(body)
    .bind(prev)
    .bind(hash)
    .execute(store.pool())
    .await
    .unwrap();
}

/// A change to a record's body that still parses as a record: its actor.
fn edited(body: &str) -> String {
    assert!(body.contains("\"actor\":\""), "{body}");
    body.replacen("\"actor\":\"", "\"actor\":\"x", 1)
}

fn found(v: &Verified, seq: Option<i64>, words: &str) -> bool {
    v.problems
        .iter()
        .any(|p| p.tenant == "acme" && p.seq == seq && p.what.contains(words))
}

async fn tamperings(backend: Backend) {
    let key = AuditKey::generate();
    let public = key.public();
    // The untouched trail verifies; the triggers refuse changes.
    let (store, _dir) = fresh(&backend).await;
    let n = populate(&store, &key).await;
    assert!(n >= 8, "{n}");
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert!(v.ok(), "{v:#?}");
    assert_eq!(v.chains, 2);
    assert!(v.checkpoints >= 2 && v.checkpoints_checked);
    for sql in [
        "UPDATE airlock_audit SET detail = 'x' WHERE tenant = 'acme'",
        "DELETE FROM airlock_audit WHERE tenant = 'acme'",
        "UPDATE airlock_audit_checkpoints SET seq = 1",
        "DELETE FROM airlock_audit_checkpoints",
    ] {
        let err = sqlx::query(sql)
            .execute(store.pool())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    if let Backend::Postgres = backend {
        // The service role may not truncate at all; the owner is stopped by the trigger.
        let err = sqlx::query("TRUNCATE airlock_audit")
            .execute(store.pool())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("permission denied"), "{err}");
        let mut tx = store.pool().begin().await.unwrap();
        sqlx::query("SET LOCAL ROLE NONE")
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = sqlx::query("TRUNCATE airlock_audit")
            .execute(&mut *tx)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("append-only"), "{err}");
    }

    // 1. An edited body.
    let (store, _dir, _) = to_tamper(&backend, &key).await;
    let (body, _, _) = row(&store, 3).await;
    sqlx::query("UPDATE airlock_audit SET body = $1 WHERE tenant = 'acme' AND seq = 3")
        .bind(edited(&body))
        .execute(store.pool())
        .await
        .unwrap();
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert!(found(&v, Some(3), "hash does not match its body"), "{v:#?}");

    // 2. A deleted record.
    let (store, _dir, _) = to_tamper(&backend, &key).await;
    exec(
        &store,
        "DELETE FROM airlock_audit WHERE tenant = 'acme' AND seq = 3",
    )
    .await;
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert!(found(&v, Some(3), "record 3 is missing"), "{v:#?}");

    // 3. Two records swapped.
    let (store, _dir, _) = to_tamper(&backend, &key).await;
    exec(
        &store,
        "UPDATE airlock_audit SET seq = -3 WHERE tenant = 'acme' AND seq = 3",
    )
    .await;
    exec(
        &store,
        "UPDATE airlock_audit SET seq = 3 WHERE tenant = 'acme' AND seq = 4",
    )
    .await;
    exec(
        &store,
        "UPDATE airlock_audit SET seq = 4 WHERE tenant = 'acme' AND seq = -3",
    )
    .await;
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert!(found(&v, Some(3), "prev_hash is not the hash"), "{v:#?}");
    assert!(found(&v, Some(4), "prev_hash is not the hash"), "{v:#?}");

    // 4. The tail cut off, and the head row made to match: only the checkpoint knows.
    let (store, _dir, n) = to_tamper(&backend, &key).await;
    let (_, _, hash) = row(&store, n - 1).await;
    sqlx::query("DELETE FROM airlock_audit WHERE tenant = 'acme' AND seq = $1")
        .bind(n)
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE airlock_audit_heads SET seq = $1, hash = $2 WHERE tenant = 'acme'")
        .bind(n - 1)
        .bind(&hash)
        .execute(store.pool())
        .await
        .unwrap();
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert_eq!(v.problems.len(), 1, "{v:#?}");
    assert!(found(&v, Some(n), "truncated"), "{v:#?}");

    // 5. A forged checkpoint: signed with another key, and an edited genuine one.
    let (store, _dir, _) = to_tamper(&backend, &key).await;
    let forger = AuditKey::generate();
    store.submit(&job("acme"), 80).await.unwrap();
    assert_eq!(
        airlock::audit::checkpoint(&store, &forger).await.unwrap(),
        1
    );
    let signed: (String, String) = {
        let r = sqlx::query("SELECT body, signature FROM airlock_audit_checkpoints WHERE tenant = 'acme' ORDER BY id DESC LIMIT 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let forged = signed.0.replacen("\"seq\":", "\"seq\":1", 1);
    sqlx::query("INSERT INTO airlock_audit_checkpoints (tenant, at, seq, body, signature) VALUES ('acme', 1, 1, $1, $2)")
        .bind(&forged)
        .bind(&signed.1)
        .execute(store.pool())
        .await
        .unwrap();
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert!(found(&v, None, "signature does not verify"), "{v:#?}");
    // The same trail, checked with the forger's key, fails on the genuine checkpoints too.
    let v = airlock::audit::verify(&store, None, Some(&forger.public()))
        .await
        .unwrap();
    assert!(found(&v, None, "signature does not verify"), "{v:#?}");

    // 6. An edited record whose hash was recomputed: the next record no longer links.
    let (store, _dir, _) = to_tamper(&backend, &key).await;
    let (body, prev, _) = row(&store, 3).await;
    let body = edited(&body);
    set_row(&store, 3, &body, &prev, &rehash(&prev, &body)).await;
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert!(found(&v, Some(4), "prev_hash"), "{v:#?}");
    assert!(!found(&v, Some(3), "hash does not match"), "{v:#?}");

    // 7. The whole chain rewritten from record 3 on, head included: every hash links, and
    // only the signed checkpoint shows it.
    let (store, _dir, n) = to_tamper(&backend, &key).await;
    let (_, mut prev, _) = row(&store, 3).await;
    for seq in 3..=n {
        let (body, _, _) = row(&store, seq).await;
        let body = if seq == 3 { edited(&body) } else { body };
        let hash = rehash(&prev, &body);
        set_row(&store, seq, &body, &prev, &hash).await;
        prev = hash;
    }
    // The column the body's edit changed, too, so nothing disagrees with the bodies.
    exec(
        &store,
        "UPDATE airlock_audit SET actor = 'x' || actor WHERE tenant = 'acme' AND seq = 3",
    )
    .await;
    sqlx::query("UPDATE airlock_audit_heads SET hash = $1 WHERE tenant = 'acme'")
        .bind(&prev)
        .execute(store.pool())
        .await
        .unwrap();
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert_eq!(v.problems.len(), 1, "{v:#?}");
    assert!(found(&v, Some(n), "chain was rewritten"), "{v:#?}");
    // globex's chain is untouched throughout and never reported.
    assert!(v.problems.iter().all(|p| p.tenant == "acme"));

    // 8. Another tenant's record moved into acme's chain, linked and rehashed, head included:
    // every hash links and no checkpoint covers it; only the tenant inside the body shows it.
    let (store, _dir, n) = to_tamper(&backend, &key).await;
    let (_, _, head) = row(&store, n).await;
    let moved: String =
        sqlx::query("SELECT body FROM airlock_audit WHERE tenant = 'globex' AND seq = 1")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get(0);
    assert!(moved.contains("\"globex\""), "{moved}");
    let hash = rehash(&head, &moved);
    sqlx::query(
        "INSERT INTO airlock_audit (job_id, tenant, at, actor, request_id, from_state, to_state, detail, body, prev_hash, hash, seq)
         SELECT job_id, 'acme', at, actor, request_id, from_state, to_state, detail, body, $1, $2, $3
         FROM airlock_audit WHERE tenant = 'globex' AND seq = 1",
    )
    .bind(&head)
    .bind(&hash)
    .bind(n + 1)
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "UPDATE airlock_audit_heads SET seq = $1, prev_hash = $2, hash = $3 WHERE tenant = 'acme'",
    )
    .bind(n + 1)
    .bind(&head)
    .bind(&hash)
    .execute(store.pool())
    .await
    .unwrap();
    let v = airlock::audit::verify(&store, Some("acme"), Some(&public))
        .await
        .unwrap();
    assert_eq!(v.problems.len(), 1, "{v:#?}");
    assert!(found(&v, Some(n + 1), "moved"), "{v:#?}");

    // And four more, each of a part verify also checks.
    let (store, _dir, _) = to_tamper(&backend, &key).await;
    // A genuine checkpoint copied with a huge seq column (which would stop new checkpoints).
    exec(&store, "INSERT INTO airlock_audit_checkpoints (tenant, at, seq, body, signature) SELECT tenant, at, 9000000000, body, signature FROM airlock_audit_checkpoints WHERE tenant = 'acme'").await;
    // The head row deleted (appends to the chain would fail).
    exec(
        &store,
        "DELETE FROM airlock_audit_heads WHERE tenant = 'acme'",
    )
    .await;
    // A record slipped in outside the chain, after it began.
    exec(&store, "INSERT INTO airlock_audit (job_id, tenant, at, from_state, to_state) VALUES ('j', 'acme', 1, NULL, 'succeeded')").await;
    // A column the history is read from, edited without touching the body.
    exec(
        &store,
        "UPDATE airlock_audit SET detail = 'edited' WHERE tenant = 'acme' AND seq = 2",
    )
    .await;
    let v = airlock::audit::verify(&store, None, Some(&public))
        .await
        .unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.what.contains("its seq column says 9000000000")),
        "{v:#?}"
    );
    assert!(found(&v, None, "no head row"), "{v:#?}");
    assert!(found(&v, None, "outside the chain"), "{v:#?}");
    assert!(found(&v, Some(2), "columns"), "{v:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn seven_tamperings_are_found_on_sqlite() {
    tamperings(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seven_tamperings_are_found_on_postgres() {
    tamperings(Backend::Postgres).await;
}

/// The README's offline checker for an export, as written.
fn readme_checker() -> String {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let start = readme
        .find("An export can be checked offline")
        .expect("the README's export checker");
    readme[start..]
        .split("```python\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a python block")
        .to_string()
}

fn check_offline(export: &std::path::Path, public: &str) -> std::process::Output {
    std::process::Command::new("python3")
        .args(["-c", &readme_checker()])
        .arg(export)
        .arg(public)
        .output()
        .unwrap()
}

/// Through the binary: `serve` with a checkpoint key records each API action with its key and
/// request id, the CLI's with the operator; `audit verify` passes; `audit export` and
/// `GET /v1/audit` hold the caller's chain only, and the README's checker verifies an export
/// with the public key alone (and refuses an altered one).
#[tokio::test(flavor = "multi_thread")]
async fn the_trail_through_the_cli_and_the_api() {
    let d = crate::service::Deployment::embedded();
    let key_file = d.dir.path().join("audit.key");
    let out = d
        .cmd()
        .args(["audit", "keygen"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let again = d
        .cmd()
        .args(["audit", "keygen"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing key file is never replaced"
    );
    let ok = |args: &[&str]| {
        let out = d.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    ok(&["tenant", "create", "acme"]);
    ok(&["tenant", "create", "globex"]);
    let key = |tenant: &str| -> serde_json::Value {
        serde_json::from_slice(&ok(&["key", "create", "--tenant", tenant])).unwrap()
    };
    let (first, acme, globex) = (key("acme"), key("acme"), key("globex"));
    let port = crate::common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut serve = d
        .cmd()
        .args([
            "serve",
            "--supervise",
            "1",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("AIRLOCK_AUDIT_KEY_FILE", &key_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "serve never answered");
    let bearer = |k: &serde_json::Value| format!("Bearer {}", k["key"].as_str().unwrap());
    let r = client
        .post(format!("{base}/v1/jobs"))
        .header("authorization", bearer(&first))
        .header("x-request-id", "audit-submit-1")
        .header("content-type", "text/csv")
        .body(std::fs::read(crate::common::fixture("valid/leads.csv")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v: serde_json::Value = client
            .get(format!("{base}/v1/jobs/{job}"))
            .header("authorization", bearer(&first))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["state"] == "succeeded" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = client
        .get(format!("{base}/v1/jobs/{job}/output"))
        .header("authorization", bearer(&first))
        .header("x-request-id", "audit-link-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    ok(&["link", &job]);
    ok(&["key", "revoke", first["id"].as_str().unwrap()]);
    // SIGTERM: serve stops and signs the heads a last time.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(serve.wait().unwrap().success());

    let out = d.run(&["audit", "verify", "--public-key", &public]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["checkpoints_checked"], true);
    assert!(v["checkpoints"].as_u64().unwrap() >= 2, "{v}");

    // The export: acme's records only, each the way it was done.
    let export = d.dir.path().join("acme.jsonl");
    std::fs::write(&export, ok(&["audit", "export", "--tenant", "acme"])).unwrap();
    let text = std::fs::read_to_string(&export).unwrap();
    let bodies: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|l| l["body"].as_str().map(|b| serde_json::from_str(b).unwrap()))
        .collect();
    assert!(bodies.iter().all(|b| b["tenant"] == "acme"), "{bodies:#?}");
    let one = |action: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        let found: Vec<&serde_json::Value> = bodies
            .iter()
            .filter(|b| b["action"] == action && pred(b))
            .collect();
        assert_eq!(found.len(), 1, "{action}: {bodies:#?}");
        found[0].clone()
    };
    let api_actor = format!("key:{}", first["id"].as_str().unwrap());
    let queued = one("job.state", &|b| b["to"] == "queued");
    assert_eq!(
        (&queued["actor"], &queued["request_id"]),
        (&api_actor.clone().into(), &"audit-submit-1".into())
    );
    let running = one("job.state", &|b| b["to"] == "running");
    assert!(
        running["actor"].as_str().unwrap().starts_with("serve:"),
        "{running}"
    );
    let api_link = one("link.issued", &|b| b["request_id"] == "audit-link-1");
    assert_eq!(api_link["actor"], api_actor.as_str());
    let cli_link = one("link.issued", &|b| b["request_id"].is_null());
    assert!(
        cli_link["actor"].as_str().unwrap().starts_with("operator:"),
        "{cli_link}"
    );
    assert_eq!(cli_link["artifact"], "output");
    one("key.created", &|b| b["key_id"] == first["id"]);
    let revoked = one("key.revoked", &|b| b["key_id"] == first["id"]);
    assert!(revoked["actor"].as_str().unwrap().starts_with("operator:"));
    // The README's checker, with the public key alone.
    let checked = check_offline(&export, &public);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(String::from_utf8_lossy(&checked.stdout).starts_with("ok: "));
    let altered = d.dir.path().join("altered.jsonl");
    std::fs::write(&altered, text.replacen("audit-link-1", "audit-link-2", 1)).unwrap();
    assert!(!check_offline(&altered, &public).status.success());

    // GET /v1/audit: the caller's chain, paged; never another tenant's.
    let serve_again = d
        .cmd()
        .args([
            "serve",
            "--supervise",
            "0",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _serve = Stop(serve_again);
    let page = |k: serde_json::Value, query: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            for _ in 0..200 {
                if let Ok(r) = client
                    .get(format!("{base}/v1/audit{query}"))
                    .header("authorization", bearer(&k))
                    .send()
                    .await
                {
                    assert_eq!(r.status(), 200);
                    return r.json::<serde_json::Value>().await.unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("serve never answered");
        }
    };
    let all = page(acme.clone(), "?limit=1000").await;
    let records = all["records"].as_array().unwrap();
    assert_eq!(records.len(), bodies.len());
    assert!(all["next_after"].is_null());
    assert!(all["checkpoint"]["signature"].is_string());
    let two = page(acme.clone(), "?limit=2&after=1").await;
    let seqs: Vec<i64> = two["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!((seqs, two["next_after"].as_i64()), (vec![2, 3], Some(3)));
    let theirs = page(globex.clone(), "?limit=1000").await;
    let text = theirs.to_string();
    assert!(!text.contains("acme") && !text.contains(&job), "{text}");
    assert_eq!(theirs["records"].as_array().unwrap().len(), 1, "{text}");
}

/// The tables that hold a tenant's data, and how a row names its tenant.
const TENANT_TABLES: [(&str, &str); 13] = [
    ("airlock_jobs", "tenant"),
    ("airlock_schemas", "tenant"),
    ("airlock_tenants", "tenant"),
    ("airlock_receipts", "tenant"),
    ("airlock_audit", "tenant"),
    ("airlock_audit_heads", "tenant"),
    ("airlock_audit_checkpoints", "tenant"),
    ("airlock_api_keys", "tenant"),
    ("airlock_uploads", "tenant"),
    ("airlock_webhooks", "tenant"),
    ("airlock_webhook_events", "tenant"),
    (
        "airlock_webhook_deliveries",
        "(SELECT w.tenant FROM airlock_webhooks w WHERE w.id = endpoint_id)",
    ),
    (
        "airlock_webhook_attempts",
        "(SELECT w.tenant FROM airlock_webhooks w WHERE w.id = endpoint_id)",
    ),
];

/// PostgreSQL row-level security, by raw SQL through the tenant role with the application's
/// `WHERE tenant = …` deliberately left out: with no tenant set a query sees no rows of any
/// tenant table; with globex set it sees globex's rows only, cannot write a row of acme's, and
/// cannot change acme's; the service role sees both.
#[tokio::test(flavor = "multi_thread")]
async fn row_level_security_on_postgres() {
    let (store, _) = fresh(&Backend::Postgres).await;
    let key = AuditKey::generate();
    populate(&store, &key).await;
    // Rows of both tenants in every table: an upload, endpoints, events, deliveries, attempts.
    let mut endpoints = Vec::new();
    for (i, tenant) in ["acme", "globex"].iter().enumerate() {
        store.create_key(tenant, "pipeline", 90).await.unwrap();
        let ep = uuid::Uuid::new_v4();
        endpoints.push(ep);
        store
            .add_webhook(
                ep,
                tenant,
                "https://hooks.example/x",
                &airlock::webhooks::EventType::ALL,
                "sealed",
                90,
            )
            .await
            .unwrap();
        let event = format!("msg_{tenant}");
        sqlx::query("INSERT INTO airlock_webhook_events (id, tenant, job_id, type, created_at, state) VALUES ($1, $2, 'j', 'job.succeeded', 1, 'succeeded')")
            .bind(&event).bind(tenant).execute(store.pool()).await.unwrap();
        sqlx::query("INSERT INTO airlock_webhook_deliveries (event_id, endpoint_id, state, attempts, next_at) VALUES ($1, $2, 'pending', 0, 1)")
            .bind(&event).bind(ep.to_string()).execute(store.pool()).await.unwrap();
        sqlx::query("INSERT INTO airlock_webhook_attempts (endpoint_id, event_id, attempt, at, status, latency_ms) VALUES ($1, $2, 1, 1, 500, 3)")
            .bind(ep.to_string()).bind(&event).execute(store.pool()).await.unwrap();
        sqlx::query("INSERT INTO airlock_uploads (id, tenant, object_key, bytes, sha256, file_name, plan, created_at, expires_at) VALUES ($1, $2, $3, 1, 'x', 'f.csv', 'default', 1, 2)")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(tenant)
            .bind(format!("in/{i}"))
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query("INSERT INTO airlock_receipts (id, job_id, tenant, run_id, reason, at, body) VALUES ($1, 'j', $2, 'r', 'erasure', 1, '{}')")
            .bind(uuid::Uuid::new_v4().to_string()).bind(tenant).execute(store.pool()).await.unwrap();
        let schema =
            airlock::schema::JobSchema::parse(r#"{"fields": [{"name": "email"}]}"#).unwrap();
        store
            .put_schema(tenant, "leads", &schema, true)
            .await
            .unwrap();
    }
    airlock::audit::checkpoint(&store, &key).await.unwrap();
    let count = |sql: String| {
        let pool = store.pool().clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let n = async {
                for s in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    let rows = sqlx::query(s).fetch_all(&mut *tx).await?;
                    if let Some(r) = rows.first() {
                        if let Ok(n) = r.try_get::<i64, _>(0) {
                            return Ok(n);
                        }
                    }
                }
                Ok::<i64, sqlx::Error>(-1)
            }
            .await;
            tx.rollback().await.unwrap();
            n
        }
    };
    for (table, tenant) in TENANT_TABLES {
        // The owner (as migrate ran) sees both tenants: the rows exist.
        for t in ["acme", "globex"] {
            let n = count(format!(
                "SELECT count(*) FROM {table} WHERE {tenant} = '{t}'"
            ))
            .await
            .unwrap();
            assert!(n > 0, "{table} has rows of {t}");
        }
        // The tenant role with no tenant set: nothing.
        let n = count(format!(
            "SET LOCAL ROLE airlock_tenant; SELECT count(*) FROM {table}"
        ))
        .await
        .unwrap();
        assert_eq!(n, 0, "{table} with no tenant set");
        // With globex set, no WHERE: globex's rows, never acme's.
        let scoped =
            "SET LOCAL ROLE airlock_tenant; SELECT set_config('airlock.tenant', 'globex', true);";
        let theirs = count(format!(
            "{scoped} SELECT count(*) FROM {table} WHERE {tenant} IS DISTINCT FROM 'globex'"
        ))
        .await
        .unwrap();
        assert_eq!(theirs, 0, "{table}: globex sees another tenant's rows");
        let own = count(format!("{scoped} SELECT count(*) FROM {table}"))
            .await
            .unwrap();
        assert!(own > 0, "{table}: globex sees its own rows");
        // The service role sees every tenant.
        let all = count(format!(
            "SET LOCAL ROLE airlock_service; SELECT count(*) FROM {table} WHERE {tenant} = 'acme'"
        ))
        .await
        .unwrap();
        assert!(all > 0, "{table}: the service role sees acme");
    }
    // The store itself: its pool works as the service role, and inside a tenant scope (an API
    // request, a tenant-scoped command) as the tenant role, so methods that take no tenant at
    // all (`get`) see that tenant's rows only.
    let user: String = sqlx::query("SELECT CAST(current_user AS TEXT) AS u")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("u");
    assert_eq!(user, "airlock_service");
    let acme_job: String = sqlx::query("SELECT id FROM airlock_jobs WHERE tenant = 'acme' LIMIT 1")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("id");
    let acme_job = uuid::Uuid::parse_str(&acme_job).unwrap();
    assert!(store.get(acme_job).await.unwrap().is_some());
    let as_globex = airlock::jobs::request::as_tenant("globex".into(), store.get(acme_job));
    assert!(as_globex.await.unwrap().is_none(), "globex read acme's job");
    let as_acme = airlock::jobs::request::as_tenant("acme".into(), store.get(acme_job));
    assert!(as_acme.await.unwrap().is_some());
    // Writes: globex can neither add a row of acme's nor change acme's.
    let scoped =
        "SET LOCAL ROLE airlock_tenant; SELECT set_config('airlock.tenant', 'globex', true);";
    let err = count(format!("{scoped} INSERT INTO airlock_api_keys (id, tenant, name, prefix, sha256, created_at) VALUES ('k', 'acme', 'n', 'p', 's', 1)")).await.unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    let changed = count(format!("{scoped} WITH u AS (UPDATE airlock_jobs SET plan = 'x' WHERE tenant = 'acme' RETURNING 1) SELECT count(*) FROM u")).await.unwrap();
    assert_eq!(changed, 0);
    // Nor route acme's event to its own endpoint.
    let err = count(format!("{scoped} INSERT INTO airlock_webhook_deliveries (event_id, endpoint_id, state, attempts, next_at) SELECT 'msg_acme', w.id, 'pending', 0, 1 FROM airlock_webhooks w LIMIT 1")).await.unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");

    // What the tenant role may not do at all: read the migrations table, or change or delete
    // audit records (before any trigger is reached); the service role may only read it.
    for sql in [
        "SELECT count(*) FROM _sqlx_migrations",
        "WITH d AS (DELETE FROM airlock_audit RETURNING 1) SELECT count(*) FROM d",
        "WITH u AS (UPDATE airlock_audit_checkpoints SET seq = 1 RETURNING 1) SELECT count(*) FROM u",
    ] {
        let err = count(format!("{scoped} {sql}")).await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{sql}: {err}");
    }
    let err = count("DELETE FROM _sqlx_migrations".into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    // The queue front, read through the definer function, cannot be fed a temporary table.
    let front = count(format!("{scoped} SELECT airlock_queue_front()"))
        .await
        .unwrap();
    let spoofed = count(format!(
        "{scoped} CREATE TEMP TABLE airlock_jobs (vseq BIGINT, state TEXT); \
         INSERT INTO airlock_jobs VALUES (-999999, 'queued'); SELECT airlock_queue_front()"
    ))
    .await
    .unwrap();
    assert_eq!(spoofed, front);
    // Removing an endpoint as its tenant also removes its pending deliveries (they are
    // deleted while the endpoint, which their policy goes through, still exists).
    let globex_ep = endpoints[1];
    let removed = airlock::jobs::request::as_tenant(
        "globex".into(),
        store.remove_webhook("globex", globex_ep),
    );
    assert!(removed.await.unwrap());
    let left = count(format!(
        "SELECT count(*) FROM airlock_webhook_deliveries WHERE endpoint_id = '{globex_ep}' AND state = 'pending'"
    ))
    .await
    .unwrap();
    assert_eq!(left, 0, "the removed endpoint's pending deliveries");

    // A database login that may not take both roles is refused, saying what to grant, rather
    // than left working as itself.
    let outsider = "airlock_outsider";
    let schema: String = sqlx::query("SELECT CAST(current_schema() AS TEXT) AS s")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("s");
    let mut tx = store.pool().begin().await.unwrap();
    for sql in [
        "SET LOCAL ROLE NONE".to_string(),
        format!("DO $$ BEGIN CREATE ROLE {outsider} LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"),
        format!("DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO {outsider}', current_database()); END $$"),
        format!("GRANT USAGE ON SCHEMA \"{schema}\" TO {outsider}"),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let url = crate::jobs::pg_url().replacen("postgres@", &format!("{outsider}@"), 1);
    let err = format!(
        "{:?}",
        airlock::jobs::postgres::connect(&url, Some(schema))
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("is not a member of airlock_service and airlock_tenant"),
        "{err}"
    );
}
