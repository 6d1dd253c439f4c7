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
    /// The deployment's own bucket, on the production deployment.
    pub bucket: Option<String>,
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
        let d = Deployment {
            vars,
            dir,
            bucket: None,
        };
        // As the README says: `airlock migrate` once, before anything else.
        let out = d.run(&["migrate"]);
        assert!(
            out.status.success(),
            "airlock migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
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
        // A bucket of its own, so a test can see every object the deployment stored.
        let bucket = format!("svc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        crate::storage::s3_client()
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        let vars = vec![
            (
                "AIRLOCK_DATABASE_URL".into(),
                format!("{}{sep}options=-c%20search_path%3D{schema}", pg_url()),
            ),
            ("AIRLOCK_STORAGE_URL".into(), format!("s3://{bucket}")),
            ("AWS_ENDPOINT_URL".into(), env.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), env.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), env.secret_key.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AIRLOCK_S3_PATH_STYLE".into(), "true".into()),
        ];
        Deployment {
            vars,
            dir,
            bucket: Some(bucket),
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

    /// A supervisor with extra environment, e.g. the hostile-worker seam's `slow-MS` mode.
    pub fn spawn_supervisor_with(&self, env: &[(&str, &str)], extra: &[&str]) -> Child {
        self.cmd()
            .envs(env.iter().copied())
            .arg("supervise")
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Every key stored under Airlock's prefixes.
    pub async fn stored_keys(&self) -> Vec<String> {
        let store = self.store().await;
        let mut keys = Vec::new();
        for prefix in airlock::storage::Kind::prefixes() {
            let mut next = None;
            loop {
                let page = store.list(prefix, next).await.unwrap();
                keys.extend(page.objects.iter().map(|o| o.key.to_string()));
                next = page.next;
                if next.is_none() {
                    break;
                }
            }
        }
        keys.sort();
        keys
    }

    pub async fn jobs(&self) -> Arc<dyn JobStore> {
        airlock::jobs::open(&self.vars[0].1, false).await.unwrap()
    }

    pub async fn store(&self) -> Arc<dyn ObjectStore> {
        if let Some(bucket) = &self.bucket {
            let env = s3_env();
            Arc::new(airlock::storage::s3::S3Store::explicit(
                airlock::storage::s3::Explicit {
                    endpoint: &env.endpoint,
                    region: "us-east-1",
                    access_key: &env.access_key,
                    secret_key: env.secret_key.clone().into(),
                },
                bucket,
            ))
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

/// The hostile-worker seam's variable (the `test-seam` feature).
const SEAM: &str = "AIRLOCK_TEST_HOSTILE_WORKER";

/// The worker processes `pid` (a multi-threaded supervisor) has started and not yet reaped.
fn worker_pids(pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let children = task.map(|t| t.path().join("children")).ok();
        let text = children
            .and_then(|c| std::fs::read_to_string(c).ok())
            .unwrap_or_default();
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

/// Poll `probe` until it gives a value, or fail after `within`.
fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait for `child` to exit, failing after `within`.
fn exit_within(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    wait_for("the supervisor to exit", within, || {
        child.try_wait().unwrap()
    })
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
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
    // The audit trail of the whole batch verifies, and holds every job's every transition.
    let out = d.run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chains"], 3, "{v}");
    assert!(v["records"].as_u64().unwrap() >= 300, "{v}");
}

async fn crash_recovery(d: Deployment) {
    let input = fixture("valid/leads.csv");
    let id = d.submit("acme", &input, &[]);
    // The first supervisor's worker waits 30 s before working, so the kill lands mid-job.
    let mut first = d.spawn_supervisor_with(
        &[(SEAM, "slow-30000")],
        &["--lease-seconds", "3", "-c", "1"],
    );
    let worker = wait_for("a worker running the job", Duration::from_secs(30), || {
        worker_pids(first.id()).first().copied()
    });
    assert_eq!(d.status(&id)["state"], "running");
    first.kill().unwrap(); // SIGKILL: no cleanup, no release
    first.wait().unwrap();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(worker as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
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
        Some(out),
        reference(&input).1,
        "one complete output is recorded"
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
    // Another tenant's job looks exactly like no job at all.
    let missing = uuid::Uuid::new_v4().to_string();
    for verb in ["status", "link", "cancel"] {
        let theirs = d.run(&[verb, &a, "--tenant", "globex"]);
        let none = d.run(&[verb, &missing, "--tenant", "globex"]);
        assert_eq!(theirs.status.code(), Some(1), "{verb}");
        assert_eq!(theirs.status.code(), none.status.code(), "{verb}");
        assert_eq!(theirs.stdout, none.stdout, "{verb}");
        assert_eq!(
            String::from_utf8_lossy(&theirs.stderr).replace(&a, "ID"),
            String::from_utf8_lossy(&none.stderr).replace(&missing, "ID"),
            "{verb}"
        );
    }
    let out = d.run(&["link", &a]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no link before the job finished"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("only for finished jobs"));
    // A link may live 300 s at most: asking for 301 is a usage error.
    let out = d.run(&["link", &a, "--ttl", "301"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let too_big = d.dir.path().join("big.csv");
    std::fs::File::create(&too_big)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let stored = d.stored_keys().await;
    let out = d
        .cmd()
        .args(["submit", "--tenant", "acme"])
        .arg(&too_big)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too_large"));
    assert_eq!(d.stored_keys().await, stored, "nothing was uploaded");
    // A symlinked upload is refused (it could point at any file root can read), unless asked for.
    let link = d.dir.path().join("upload.csv");
    std::os::unix::fs::symlink(fixture("valid/leads.csv"), &link).unwrap();
    let out = d
        .cmd()
        .args(["submit", "--tenant", "acme"])
        .arg(&link)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    assert_eq!(d.stored_keys().await, stored, "nothing was uploaded");
    d.submit("acme", &link, &["--follow-symlinks"]);
}

async fn sigterm_loses_nothing(d: Deployment) {
    let running = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let mut sup = d.spawn_supervisor_with(&[(SEAM, "slow-2000")], &["-c", "1"]);
    wait_for("a worker running the job", Duration::from_secs(30), || {
        worker_pids(sup.id()).first().copied()
    });
    assert_eq!(
        d.status(&running)["state"],
        "running",
        "in flight when signalled"
    );
    let waiting = d.submit("globex", &fixture("valid/leads.csv"), &[]);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sup.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = exit_within(&mut sup, Duration::from_secs(30));
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

/// A job still running when the grace period ends: its worker is killed, the job goes back to the
/// queue without spending an attempt (audited), and nothing it made is left stored.
async fn sigterm_beyond_grace_gives_the_job_back(d: Deployment) {
    let id = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let before = d.stored_keys().await;
    let mut sup = d.spawn_supervisor_with(
        &[(SEAM, "slow-120000")],
        &["-c", "1", "--grace-seconds", "1"],
    );
    let worker = wait_for("a worker running the job", Duration::from_secs(30), || {
        worker_pids(sup.id()).first().copied()
    });
    assert_eq!(d.status(&id)["state"], "running");
    let signalled = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sup.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = exit_within(&mut sup, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "the supervisor took {:?} to stop with a 1 s grace",
        signalled.elapsed()
    );
    let s = d.status(&id);
    assert_eq!(s["state"], "queued", "{s}");
    assert_eq!(s["attempts"], 0, "the attempt is not counted: {s}");
    let audit = d
        .jobs()
        .await
        .audit(uuid::Uuid::parse_str(&id).unwrap())
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|(from, to, why)| from.as_deref() == Some("running")
                && to == "queued"
                && why.as_deref() == Some("released at shutdown")),
        "{audit:?}"
    );
    wait_for("the worker to be gone", Duration::from_secs(5), || {
        (!process_exists(worker)).then_some(())
    });
    assert_eq!(d.stored_keys().await, before, "nothing new is stored");
}

/// The lease is stolen while the worker runs: the first supervisor records nothing and deletes
/// everything it uploaded.
async fn lost_lease_mid_job_records_nothing(d: Deployment) {
    let id = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let before = d.stored_keys().await;
    // The worker would take 20 s; heartbeats come every second (lease 3 s).
    let mut sup = d.spawn_supervisor_with(
        &[(SEAM, "slow-20000")],
        &["-c", "1", "--lease-seconds", "3"],
    );
    let worker = wait_for("a worker running the job", Duration::from_secs(30), || {
        worker_pids(sup.id()).first().copied()
    });
    // Steal it: by a clock an hour ahead the lease has expired; the reaper requeues the job and
    // another supervisor claims it, which bumps the fencing token.
    let jobs = d.jobs().await;
    let ahead = airlock::jobs::now_ms() + 3_600_000;
    jobs.reap(ahead).await.unwrap();
    let thief = jobs
        .claim("thief", 600_000, ahead + 600_000)
        .await
        .unwrap()
        .expect("the requeued job");
    assert_eq!(thief.id, uuid);
    // The next heartbeat finds the lease gone and the supervisor kills its worker at once.
    wait_for(
        "the stale supervisor to kill its worker",
        Duration::from_secs(6),
        || (!process_exists(worker)).then_some(()),
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(sup.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(exit_within(&mut sup, Duration::from_secs(60)).success());
    let rec = jobs.get(uuid).await.unwrap().unwrap();
    assert_eq!(rec.state, airlock::jobs::JobState::Running, "{rec:?}");
    assert_eq!(
        (rec.output_key, rec.report_key, rec.result_code),
        (None, None, None),
        "the stale supervisor recorded nothing"
    );
    assert_eq!(
        d.stored_keys().await,
        before,
        "the stale supervisor deleted what it uploaded"
    );
}

/// At debug level, nothing a cell holds reaches the logs of submit, supervise, status or link:
/// valid cells, a ragged row's cells, formula cells and a worker's forged diagnostics alike.
async fn logs_carry_no_cell_contents(d: Deployment) {
    const MARK: &str = "cellsecret";
    let input = d.dir.path().join("marked.csv");
    let mut body = String::from("email,name,note\n");
    for i in 0..50 {
        body.push_str(&format!(
            "{MARK}{i}@x.io,{MARK}-name-{i},\"{MARK}, quoted {i}\"\n"
        ));
    }
    body.push_str(&format!("{MARK}-ragged-only\n"));
    body.push_str(&format!("=HYPERLINK(\"{MARK}\"),+{MARK},@{MARK}\n"));
    std::fs::write(&input, body).unwrap();
    let debug = |args: &[&str]| {
        let out = d
            .cmd()
            .env("AIRLOCK_LOG", "debug")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (id, mut logs) = debug(&["submit", "--tenant", "acme", input.to_str().unwrap()]);
    let id = id.trim().to_string();
    logs += &debug(&["supervise", "--until-idle", "-c", "1"]).1;
    let (status, more) = debug(&["status", &id]);
    logs += &more;
    assert!(status.contains("succeeded"), "{status}");
    logs += &debug(&["link", &id, "--artifact", "rejects"]).1;
    assert!(
        logs.len() > 1000,
        "debug logging produced almost nothing:\n{logs}"
    );
    assert!(
        !logs.contains(MARK),
        "cell contents in the logs:\n{}",
        logs.lines()
            .filter(|l| l.contains(MARK))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `sweep` exits 1 when the store refuses to delete some keys (an immutable directory on the
/// local backend: even root cannot unlink there), marks nothing purged and writes no receipt;
/// the next run, once the store lets go, purges the job and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sweep_exits_1_when_the_store_refuses_deletes() {
    let d = Deployment::embedded();
    let id = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    d.supervise(&[]);
    assert_eq!(d.status(&id)["state"], "succeeded");
    // Age the job past retention: 31 days.
    let pool = sqlx::SqlitePool::connect(&d.vars[0].1).await.unwrap();
    sqlx::query("UPDATE airlock_jobs SET finished_at = finished_at - 31 * 86400000")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let outputs = d.dir.path().join("storage/objects/out");
    let chattr = |flag: &str| {
        let ok = Command::new("chattr")
            .arg(flag)
            .arg(&outputs)
            .status()
            .unwrap();
        assert!(ok.success(), "chattr {flag} (needs root and ext4)");
    };
    chattr("+i");
    let out = d.run(&["sweep"]);
    chattr("-i");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["jobs_purged"], 0, "{summary}");
    assert!(
        !summary["failures"].as_object().unwrap().is_empty(),
        "{summary}"
    );
    assert_eq!(d.status(&id)["state"], "succeeded");
    assert_eq!(d.run(&["receipts", "--tenant", "acme"]).stdout, b"[]\n");
    let out = d.run(&["sweep"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.status(&id)["state"], "purged");
}

/// A worker never outlives its supervisor: killed with SIGKILL (no cleanup at all), the
/// supervisor takes its locked-down worker with it within a second (PR_SET_PDEATHSIG).
#[test]
fn a_worker_dies_within_a_second_of_its_supervisors_sigkill() {
    let d = Deployment::embedded();
    d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let mut sup = d.spawn_supervisor_with(&[(SEAM, "cpu-spin")], &["-c", "1"]);
    let worker = wait_for("a locked-down worker", Duration::from_secs(30), || {
        worker_pids(sup.id()).into_iter().find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .is_ok_and(|s| s.lines().any(|l| l == "Seccomp:\t2"))
        })
    });
    sup.kill().unwrap();
    sup.wait().unwrap();
    let killed = Instant::now();
    wait_for(
        "the worker to die with its supervisor",
        Duration::from_secs(1),
        || {
            // Gone, or a zombie waiting to be reaped: either way it runs no more.
            let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).ok();
            stat.is_none_or(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|t| t.trim_start().starts_with('Z'))
            })
            .then_some(())
        },
    );
    assert!(killed.elapsed() < Duration::from_secs(1));
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
            #[tokio::test(flavor = "multi_thread")]
            async fn debug_logs_carry_no_cell_contents() {
                logs_carry_no_cell_contents($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_lease_lost_mid_job_records_nothing_and_leaves_nothing_stored() {
                lost_lease_mid_job_records_nothing($make).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn sigterm_beyond_grace_kills_the_worker_and_gives_the_job_back() {
                sigterm_beyond_grace_gives_the_job_back($make).await;
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
    // The attempt fails on storage and is queued again, its attempt given back; the supervisor
    // stays up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.status(&id);
        if s["state"] == "queued" && s["result_code"] == "storage_unavailable" {
            assert_eq!(s["attempts"], 0, "an outage spends no attempt: {s}");
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
    assert_eq!(s["attempts"], 1, "only the attempt that ran counts: {s}");
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

/// libfaketime's preload library, from the Debian `faketime` package (`.ci/test` installs it).
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is required (apt-get install faketime); looked in {candidates:?}")
        })
}

/// Two supervisors whose hosts' clocks are 5 minutes apart share a queue with 3 s leases. Every
/// lease, backoff and reaper decision uses the database's clock, so neither reaps the other's
/// live jobs: every job succeeds on its first attempt. (With host clocks, the one 5 minutes
/// ahead sees every lease the other takes as long expired.)
#[tokio::test(flavor = "multi_thread")]
async fn supervisors_with_clocks_5_minutes_apart_waste_no_attempts() {
    let d = Deployment::production().await;
    let ids: Vec<String> = (0..12)
        .map(|_| d.submit("acme", &fixture("valid/leads.csv"), &[]))
        .collect();
    // Each job takes 4 s (longer than a lease), so both supervisors hold live leases while the
    // other reaps.
    let slow = ("AIRLOCK_TEST_HOSTILE_WORKER", "slow-4000");
    let faketime = libfaketime();
    let ahead = [
        slow,
        ("LD_PRELOAD", faketime.to_str().unwrap()),
        ("FAKETIME", "+300"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    let args = ["--until-idle", "-c", "2", "--lease-seconds", "3"];
    let mut a = d.spawn_supervisor_with(&[slow], &args);
    // The supervisor ahead logs (JSON, timestamped by its own clock) to a file, so the test can
    // see the clock that process read.
    let log = d.dir.path().join("ahead.jsonl");
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut b = d
        .cmd()
        .envs(ahead.iter().copied())
        .env("AIRLOCK_LOG", "info")
        .arg("supervise")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for child in [&mut a, &mut b] {
        let status = exit_within(child, Duration::from_secs(180));
        assert!(status.success());
    }
    // The faked clock was in effect in the supervisor itself: its first log line is stamped
    // 5 minutes ahead of the time it was started.
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .expect("the supervisor logged"),
    )
    .unwrap();
    let stamp = first["timestamp"].as_str().expect("a timestamp");
    let out = Command::new("date")
        .args(["-d", stamp, "+%s"])
        .output()
        .unwrap();
    let faked: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{stamp}: {e}"));
    assert!(
        (faked - real - 300).abs() <= 10,
        "faketime was not in effect in the supervisor: it logged {stamp} ({faked}), started at {real}"
    );
    let jobs = d.jobs().await;
    for id in &ids {
        let s = d.status(id);
        assert_eq!(s["state"], "succeeded", "{s}");
        assert_eq!(s["attempts"], 1, "an attempt was wasted: {s}");
        let audit = jobs
            .audit(uuid::Uuid::parse_str(id).unwrap())
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .all(|(_, _, detail)| detail.as_deref() != Some("lease expired")),
            "reaped: {audit:?}"
        );
    }
}

/// An erasure while a job runs: the running job is cancelled with the queued one, its worker is
/// stopped at the next heartbeat, nothing it made is recorded or left in storage, and no
/// supervisor runs it again. Both deployments.
async fn purge_while_running(d: Deployment) {
    let running = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let mut sup = d.spawn_supervisor_with(
        &[("AIRLOCK_TEST_HOSTILE_WORKER", "slow-6000")],
        &["--until-idle", "-c", "1", "--lease-seconds", "3"],
    );
    wait_for("the job to run", Duration::from_secs(30), || {
        (d.status(&running)["state"] == "running").then_some(())
    });
    let queued = d.submit("acme", &fixture("valid/leads.csv"), &[]);
    let other = d.submit("globex", &fixture("valid/leads.csv"), &[]);
    let worker = wait_for("the worker", Duration::from_secs(10), || {
        worker_pids(sup.id()).first().copied()
    });
    let out = d.run(&["purge", "--tenant", "acme"]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The running job is cancelled at once, but erased only once its old lease has run out (its
    // attempt may still upload until its supervisor notices): exit 1, run it again.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{summary} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary["erasure"]["cancelled_running"], 1, "{summary}");
    assert_eq!(summary["erasure"]["cancelled_queued"], 1, "{summary}");
    assert_eq!(summary["erasure"]["still_active"], 1, "{summary}");
    assert_eq!(summary["jobs_purged"], 1, "{summary}");
    // The worker is stopped at the next heartbeat (every second with 3 s leases).
    wait_for("the worker to be killed", Duration::from_secs(5), || {
        (!process_exists(worker)).then_some(())
    });
    let summary = wait_for("the erasure to finish", Duration::from_secs(30), || {
        let out = d.run(&["purge", "--tenant", "acme"]);
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        out.status.success().then_some(summary)
    });
    assert_eq!(summary["erasure"]["still_active"], 0, "{summary}");
    assert_eq!(summary["jobs_purged"], 1, "{summary}");
    let status = exit_within(&mut sup, Duration::from_secs(120));
    assert!(status.success());
    for id in [&running, &queued] {
        let s = d.status(id);
        assert_eq!(s["state"], "purged", "{s}");
        assert_eq!(s["artifacts"], serde_json::json!([]), "{s}");
    }
    assert_eq!(d.status(&other)["state"], "succeeded");
    // Only the other tenant's objects remain: nothing the cancelled attempt made was kept.
    let jobs = d.jobs().await;
    let rec = jobs
        .get(uuid::Uuid::parse_str(&other).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut expected: Vec<String> = [
        Some(rec.input_key.clone()),
        rec.output_key.clone(),
        rec.rejects_key.clone(),
        rec.report_key.clone(),
    ]
    .into_iter()
    .flatten()
    .collect();
    expected.sort();
    let mut stored = d.stored_keys().await;
    stored.sort();
    assert_eq!(stored, expected);
    // A second erasure finds nothing left.
    let out = d.run(&["purge", "--tenant", "acme"]);
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["jobs_purged"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_purge_while_a_job_runs_cancels_it_and_keeps_nothing() {
    purge_while_running(Deployment::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn production_purge_while_a_job_runs_cancels_it_and_keeps_nothing() {
    purge_while_running(Deployment::production().await).await;
}
