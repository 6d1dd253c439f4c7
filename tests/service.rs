//! The service end to end through the real CLI: submit, supervise (real sandboxed workers), status
//! and the stored results, on both deployments — embedded (SQLite + local directory) and
//! production (PostgreSQL + the real S3 server).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock::jobs::JobStore;
use airlock::storage::{ObjectKey, ObjectStore};
use serde_json::Value;

use crate::common::{airlock, fixture};
use crate::jobs::pg_url;
use crate::storage::s3_env;

/// One isolated deployment: its own database (file or schema) and storage (directory or bucket).
pub struct Deployment {
    pub vars: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub postgres: bool,
}

impl Deployment {
    pub fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vars = vec![
            (
                "AIRLOCK_DATABASE_URL".into(),
                format!("sqlite://{}/airlock.db", dir.path().display()),
            ),
            (
                "AIRLOCK_STORAGE_URL".into(),
                format!("file://{}/storage", dir.path().display()),
            ),
        ];
        Deployment {
            vars,
            dir,
            postgres: false,
        }
    }

    pub async fn production() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        // Creates the schema; the CLI then works inside it through the URL's search_path.
        airlock::jobs::postgres::connect(&pg_url(), Some(schema.clone()))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", pg_url()))
            .migrate()
            .await
            .unwrap();
        let sep = if pg_url().contains('?') { '&' } else { '?' };
        let env = s3_env();
        let vars = vec![
            (
                "AIRLOCK_DATABASE_URL".into(),
                format!("{}{sep}options=-c%20search_path%3D{schema}", pg_url()),
            ),
            ("AIRLOCK_STORAGE_URL".into(), format!("s3://{}", env.bucket)),
            ("AWS_ENDPOINT_URL".into(), env.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), env.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), env.secret_key.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AIRLOCK_S3_PATH_STYLE".into(), "true".into()),
        ];
        Deployment {
            vars,
            dir,
            postgres: true,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = airlock();
        for key in [
            "AIRLOCK_DATABASE_URL",
            "AIRLOCK_STORAGE_URL",
            "AWS_PROFILE",
            "AWS_CONFIG_FILE",
        ] {
            c.env_remove(key);
        }
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c.env("AIRLOCK_LOG", "warn");
        c.current_dir(self.dir.path());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn submit(&self, tenant: &str, file: &Path, extra: &[&str]) -> String {
        let mut args = vec!["submit", "--tenant", tenant];
        args.extend_from_slice(extra);
        let out = self.cmd().args(&args).arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "submit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn status(&self, id: &str) -> Value {
        let out = self.run(&["status", id]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn supervise(&self, extra: &[&str]) -> Output {
        let mut args = vec!["supervise", "--until-idle", "-c", "2"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "supervise: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn spawn_supervisor(&self, extra: &[&str]) -> Child {
        self.cmd()
            .arg("supervise")
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    pub async fn jobs(&self) -> Arc<dyn JobStore> {
        airlock::jobs::open(&self.vars[0].1).await.unwrap()
    }

    pub async fn store(&self) -> Arc<dyn ObjectStore> {
        if self.postgres {
            crate::storage::s3_store()
        } else {
            Arc::new(
                airlock::storage::fs::FsStore::open(
                    &self.dir.path().join("storage"),
                    "http://127.0.0.1:1",
                )
                .unwrap(),
            )
        }
    }

    /// The bytes of a stored object.
    pub async fn fetch(&self, key: &str) -> Vec<u8> {
        let store = self.store().await;
        let dest = self
            .dir
            .path()
            .join(format!("fetched-{}", uuid::Uuid::new_v4()));
        store
            .get_to_file(&ObjectKey::parse(key).unwrap(), &dest, 1 << 30)
            .await
            .unwrap();
        std::fs::read(dest).unwrap()
    }
}

/// What `airlock process` says about a file: exit status and clean output.
fn reference(path: &Path) -> (i32, Option<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.csv");
    let status = airlock()
        .arg("process")
        .arg(path)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap()
        .status
        .code()
        .unwrap();
    (status, std::fs::read(&out).ok())
}

fn mixed_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["valid", "invalid", "rows", "hostile"] {
        for e in std::fs::read_dir(fixture(dir)).unwrap() {
            let p = e.unwrap().path();
            if !p.to_string_lossy().contains("legacy-excel") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

async fn mixed_batch(d: Deployment) {
    let files = mixed_files();
    let refs: HashMap<PathBuf, (i32, Option<Vec<u8>>)> =
        files.iter().map(|f| (f.clone(), reference(f))).collect();
    let tenants = ["acme", "globex", "initech"];
    let mut submitted = Vec::new();
    for i in 0..100 {
        let file = &files[i % files.len()];
        submitted.push((d.submit(tenants[i % 3], file, &[]), file.clone()));
    }
    d.supervise(&[]);
    for (id, file) in &submitted {
        let s = d.status(id);
        let (code, out) = &refs[file];
        let want = match code {
            0 => "succeeded",
            1 => "rejected",
            _ => "failed",
        };
        assert_eq!(s["state"], want, "{}: {s}", file.display());
        assert_eq!(s["attempts"], 1, "bad input is never retried: {s}");
        if *code == 0 {
            let rec = d
                .jobs()
                .await
                .get(uuid::Uuid::parse_str(id).unwrap())
                .await
                .unwrap()
                .unwrap();
            let got = d.fetch(rec.output_key.as_deref().unwrap()).await;
            assert_eq!(&got, out.as_ref().unwrap(), "{}", file.display());
        }
    }
}

async fn crash_recovery(d: Deployment) {
    let big = d.dir.path().join("big.csv");
    let mut body = b"id,name\n".to_vec();
    for i in 0..2_000_000 {
        body.extend_from_slice(format!("{i},name {i}\n").as_bytes());
    }
    std::fs::write(&big, &body).unwrap();
    let id = d.submit("acme", &big, &[]);
    let mut first = d.spawn_supervisor(&["--lease-seconds", "3", "-c", "1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.status(&id)["state"] != "running" {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    first.kill().unwrap(); // SIGKILL: no cleanup, no release
    first.wait().unwrap();
    d.supervise(&["--lease-seconds", "3"]);
    let s = d.status(&id);
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(s["attempts"], 2, "{s}");
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let audit = d.jobs().await.audit(uuid).await.unwrap();
    let trail: Vec<&str> = audit.iter().map(|(_, to, _)| to.as_str()).collect();
    assert_eq!(
        trail,
        ["queued", "running", "queued", "running", "succeeded"],
        "{audit:?}"
    );
    assert!(audit
        .iter()
        .any(|(_, _, d)| d.as_deref() == Some("lease expired")));
    let rec = d.jobs().await.get(uuid).await.unwrap().unwrap();
    let out = d.fetch(rec.output_key.as_deref().unwrap()).await;
    assert_eq!(
        out.len(),
        body.len(),
        "exactly one complete output is recorded"
    );
}

async fn permanent_failures_and_idempotency(d: Deployment) {
    // A sandbox violation (the allowlist without `write`) is final: one attempt.
    let policy = tempfile::tempdir().unwrap();
    let mut seccomp: Value =
        serde_json::from_str(airlock_sandbox::policy::BUILT_IN_SECCOMP).unwrap();
    seccomp["filter"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["syscall"] != "write");
    std::fs::write(policy.path().join("seccomp.json"), seccomp.to_string()).unwrap();
    let violation = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    d.supervise(&["--policy-dir", policy.path().to_str().unwrap()]);
    let s = d.status(&violation);
    assert_eq!(
        (s["state"].as_str(), s["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{s}"
    );
    assert_eq!(s["result_code"], "sandbox_violation");

    let a = d.submit(
        "acme",
        &fixture("valid/leads.csv"),
        &["--idempotency-key", "upload-1"],
    );
    let b = d.submit(
        "acme",
        &fixture("valid/leads.csv"),
        &["--idempotency-key", "upload-1"],
    );
    let c = d.submit(
        "globex",
        &fixture("valid/leads.csv"),
        &["--idempotency-key", "upload-1"],
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Another tenant's job looks like no job at all.
    let out = d.run(&["status", &a, "--tenant", "globex"]);
    assert_eq!(out.status.code(), Some(1));
    let out = d.run(&["link", &a]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no link before the job finished"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("only for finished jobs"));
    let too_big = d.dir.path().join("big.csv");
    std::fs::File::create(&too_big)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let out = d
        .cmd()
        .args(["submit", "--tenant", "acme"])
        .arg(&too_big)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too_large"));
}

async fn sigterm_loses_nothing(d: Deployment) {
    let big = d.dir.path().join("big.csv");
    let mut body = b"id,name\n".to_vec();
    for i in 0..2_000_000 {
        body.extend_from_slice(format!("{i},name {i}\n").as_bytes());
    }
    std::fs::write(&big, &body).unwrap();
    let running = d.submit("acme", &big, &[]);
    let mut sup = d.spawn_supervisor(&["-c", "1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.status(&running)["state"] != "running" {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiting = d.submit("globex", &fixture("valid/leads.csv"), &[]);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sup.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = sup.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        d.status(&running)["state"],
        "succeeded",
        "the in-flight job finished"
    );
    assert_eq!(
        d.status(&waiting)["state"],
        "queued",
        "nothing new was claimed, nothing lost"
    );
}

macro_rules! service_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn mixed_batch_of_100_jobs_from_3_tenants() {
                mixed_batch($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn kill_9_mid_job_then_a_second_supervisor_finishes_it() {
                crash_recovery($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn permanent_failures_idempotency_and_isolation() {
                permanent_failures_and_idempotency($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn sigterm_finishes_in_flight_work_and_loses_nothing() {
                sigterm_loses_nothing($make).await;
            }
        }
    };
}

service_suite!(embedded, Deployment::embedded());
service_suite!(production, Deployment::production().await);

/// A private S3 server for a test that stops and restarts it (the shared one keeps running).
struct OwnS3 {
    dir: tempfile::TempDir,
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        // Also on a failed assertion: never leave a server behind.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/s3-server.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

impl OwnS3 {
    fn script(&self, cmd: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/s3-server.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(cmd)
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "s3-server.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn var(&self, name: &str) -> String {
        let env = std::fs::read_to_string(self.dir.path().join("env")).unwrap();
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")).map(String::from))
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_outage_is_retried_until_the_store_returns() {
    let s3 = OwnS3 {
        dir: tempfile::tempdir().unwrap(),
    };
    s3.script("start");
    let mut d = Deployment::production().await;
    for (k, v) in d.vars.iter_mut() {
        match k.as_str() {
            "AWS_ENDPOINT_URL" => *v = s3.var("AIRLOCK_TEST_S3_ENDPOINT"),
            "AWS_ACCESS_KEY_ID" => *v = s3.var("AIRLOCK_TEST_S3_ACCESS_KEY"),
            "AWS_SECRET_ACCESS_KEY" => *v = s3.var("AIRLOCK_TEST_S3_SECRET_KEY"),
            _ => {}
        }
    }
    let id = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    s3.script("stop");
    let mut sup = d
        .cmd()
        .args(["supervise", "--until-idle", "-c", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The attempt fails on storage and is queued again with backoff; the supervisor stays up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.status(&id);
        if s["attempts"].as_i64() >= Some(1) && s["state"] == "queued" {
            assert!(
                s["result_code"]
                    .as_str()
                    .unwrap()
                    .starts_with("storage_unavailable"),
                "{s}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no retry was scheduled: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sup.try_wait().unwrap().is_none(),
        "the supervisor did not crash"
    );
    s3.script("start");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = sup.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not finish after S3 returned"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let s = d.status(&id);
    assert_eq!(s["state"], "succeeded", "{s}");
    assert!(s["attempts"].as_i64().unwrap() >= 2, "{s}");
    s3.script("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_purge_status_says_when_and_link_refuses() {
    let d = Deployment::embedded();
    let id = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let other = d.submit("globex", &fixture("valid/leads.csv"), &[]);
    d.supervise(&[]);
    let out = d.run(&["link", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.run(&["purge", "--tenant", "acme", "--dry-run"]);
    assert!(out.status.success());
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (dry["candidates"].as_i64(), dry["jobs_purged"].as_i64()),
        (Some(1), Some(0))
    );
    let out = d.run(&["purge", "--tenant", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["jobs_purged"], 1);
    let s = d.status(&id);
    assert_eq!(s["state"], "purged");
    assert!(s["purged_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(s["artifacts"], serde_json::json!([]));
    let out = d.run(&["link", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("was purged"));
    assert_eq!(d.status(&other)["state"], "succeeded");
    let out = d.run(&["receipts", "--tenant", "acme"]);
    let receipts: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipts.as_array().unwrap().len(), 1);
    assert_eq!(receipts[0]["job_id"], id.as_str());
    // A nightly sweep with nothing due is quiet and succeeds.
    let out = d.run(&["sweep"]);
    assert!(out.status.success());
    let sweep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sweep["jobs_purged"], 0);
}
