//! The chaos suite: many jobs through three supervisors that are killed with SIGKILL and
//! restarted at random, across a storage outage and a database outage, then a drain.
//!
//! It starts its own PostgreSQL cluster (`initdb` and `pg_ctl` from `pg_config --bindir`, run as
//! the `postgres` user) and its own SeaweedFS (`.ci/s3-server.sh`), so it can stop and start
//! both. Files: every fixture whose `airlock process` result is accepted or rejected (valid,
//! invalid, hostile) plus generated large lead lists, spread over 3 tenants. The reference for
//! each file is `airlock process` on it, run first.
//!
//! Passes when every job ends in the state `airlock process` gives its file, no job fails, every
//! clean output and rejects file is byte-identical to `airlock process` output, every object a
//! job references exists, and no worker outlives its supervisor by more than a second.
//!
//! `cargo bench --features test-seam --bench chaos -- [JOBS] [OUTAGE_SECONDS]` (default 300
//! jobs, 45 s outages, each at least that long, while jobs run). With the `test-seam` feature
//! every worker first waits 300 ms (the honest `slow-300` stand-in: same results), so that
//! kills land while workers run; without it most workers finish before a kill can catch them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock::jobs::JobState;
use airlock::storage::{ObjectKey, ObjectStore};
use rand::Rng;

mod common;

use common::{free_port, run, BIN, ROOT, S3};

/// A private PostgreSQL cluster the suite can stop and start.
struct Postgres {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Postgres {
    fn as_postgres(&self, program: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(self.bindir.join(program));
        c
    }

    fn create(base: &Path) -> Self {
        let out = run(Command::new("pg_config").arg("--bindir"));
        let bindir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let data = base.join("pg");
        std::fs::create_dir_all(&data).unwrap();
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data));
        let port = free_port();
        let pg = Postgres { bindir, data, port };
        run(pg
            .as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&pg.data));
        pg
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on",
            self.port,
            self.data.display()
        );
        run(self
            .as_postgres("pg_ctl")
            .args(["-w", "-D"])
            .arg(&self.data)
            .args(["-l"])
            .arg(self.data.join("log"))
            .args(["-o", &opts, "start"]));
    }

    /// An outage: the server stops at once, dropping every connection.
    fn stop(&self) {
        run(self
            .as_postgres("pg_ctl")
            .args(["-w", "-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"]));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A private SeaweedFS.
/// What `airlock process` makes of one file.
struct Reference {
    path: PathBuf,
    state: JobState,
    output: Option<Vec<u8>>,
    rejects: Option<Vec<u8>>,
}

fn reference(path: &Path, scratch: &Path) -> Option<Reference> {
    let (out, rej, rep) = (
        scratch.join("out.csv"),
        scratch.join("rej.csv"),
        scratch.join("rep.json"),
    );
    for f in [&out, &rej, &rep] {
        let _ = std::fs::remove_file(f);
    }
    let status = Command::new(BIN)
        .arg("process")
        .arg(path)
        .arg("--output")
        .arg(&out)
        .arg("--rejects")
        .arg(&rej)
        .arg("--report")
        .arg(&rep)
        .output()
        .unwrap()
        .status;
    let state = match status.code() {
        Some(0) => JobState::Succeeded,
        Some(1) => JobState::Rejected,
        _ => return None,
    };
    Some(Reference {
        path: path.to_path_buf(),
        state,
        output: std::fs::read(&out)
            .ok()
            .filter(|_| state == JobState::Succeeded),
        rejects: std::fs::read(&rej).ok().filter(|b| !b.is_empty()),
    })
}

/// Every input: the fixtures whose result is not `failed`, and generated large files.
fn inputs(base: &Path) -> (Vec<Reference>, usize) {
    let mut files = Vec::new();
    for dir in ["valid", "invalid", "hostile"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("fixtures").join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        files.extend(names);
    }
    for (i, mb) in [4.0, 8.0, 24.0].into_iter().enumerate() {
        let p = base.join(format!("large-{i}.csv"));
        run(Command::new("python3")
            .arg(Path::new(ROOT).join("benches/gen_leads.py"))
            .arg(&p)
            .arg(format!("{mb}")));
        files.push(p);
    }
    let scratch = base.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let all = files.len();
    let refs: Vec<Reference> = files
        .iter()
        .filter_map(|f| reference(f, &scratch))
        .collect();
    let skipped = all - refs.len();
    (refs, skipped)
}

/// The worker processes of a supervisor (its direct children).
fn children(pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
            state.is_some_and(|c| c != 'Z' && c != 'X')
        }
        Err(_) => false,
    }
}

/// Any process still running the worker.
fn workers_anywhere() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    c.split(|b| *b == 0)
                        .any(|a| a == airlock::worker::ARG.as_bytes())
                })
                .unwrap_or(false)
                && alive(*pid)
        })
        .collect()
}

struct Supervisors {
    children: Vec<Child>,
    env: Vec<(String, String)>,
    base: PathBuf,
    kills: u32,
    workers_killed_with_them: u32,
    outlived: u32,
    next: u32,
}

impl Supervisors {
    fn spawn(&mut self) -> Child {
        self.next += 1;
        let work = self.base.join(format!("work-{}", self.next));
        std::fs::create_dir_all(&work).unwrap();
        let log =
            std::fs::File::create(self.base.join(format!("supervisor-{}.log", self.next))).unwrap();
        Command::new(BIN)
            .args([
                "supervise",
                "-c",
                "2",
                "--lease-seconds",
                "5",
                "--grace-seconds",
                "5",
            ])
            .arg("--work-dir")
            .arg(&work)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILL supervisor `i`, check its workers die within a second, start a new one.
    fn kill_and_restart(&mut self, i: usize) {
        let pid = self.children[i].id();
        let workers = children(pid);
        self.children[i].kill().unwrap();
        self.children[i].wait().unwrap();
        self.kills += 1;
        self.workers_killed_with_them += workers.len() as u32;
        let deadline = Instant::now() + Duration::from_secs(1);
        for w in workers {
            while alive(w) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if alive(w) {
                self.outlived += 1;
                eprintln!("chaos: worker {w} outlived its supervisor {pid}");
            }
        }
        self.children[i] = self.spawn();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let jobs_wanted: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(300);
    let outage = Duration::from_secs(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(45));
    let started = Instant::now();

    let base = tempfile::Builder::new()
        .prefix("airlock-chaos-")
        .tempdir()
        .unwrap();
    // initdb runs as postgres: it must be able to reach its directory.
    run(Command::new("chmod").arg("755").arg(base.path()));
    let pg = Postgres::create(base.path());
    pg.start();
    let s3dir = base.path().join("s3");
    let s3 = S3::start(&s3dir);

    let (refs, skipped) = inputs(base.path());
    println!(
        "chaos: {} distinct files ({} succeed, {} are rejected; {skipped} fixtures whose reference is `failed` left out)",
        refs.len(),
        refs.iter().filter(|r| r.state == JobState::Succeeded).count(),
        refs.iter().filter(|r| r.state == JobState::Rejected).count(),
    );

    let db_url = pg.url();
    run(Command::new(BIN)
        .arg("migrate")
        .env("AIRLOCK_DATABASE_URL", &db_url));
    let jobs = airlock::jobs::open(&db_url, false).await.unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(s3.store());
    let policies = airlock::policy::Policies::load(None).unwrap();
    let mut submitted = Vec::new();
    for i in 0..jobs_wanted {
        let r = &refs[i % refs.len()];
        let tenant = format!("tenant-{}", i % 3);
        let id = airlock::service::submit_to(
            &jobs,
            &store,
            &policies,
            airlock::service::SubmitArgs {
                tenant: &tenant,
                idempotency_key: None,
                plan: "default",
                file: &r.path,
                follow_symlinks: false,
                file_name: None,
                schema: None,
            },
        )
        .await
        .unwrap();
        submitted.push((id, i % refs.len()));
    }
    println!("chaos: {} jobs submitted from 3 tenants", submitted.len());

    // Supervisors sign audit checkpoints (every minute, and when stopped cleanly).
    let audit_key = airlock::audit::AuditKey::generate();
    let audit_key_file = base.path().join("audit.key");
    std::fs::write(&audit_key_file, audit_key.to_file_text().as_bytes()).unwrap();
    let env = vec![
        (
            "AIRLOCK_AUDIT_KEY_FILE".to_string(),
            audit_key_file.display().to_string(),
        ),
        ("AIRLOCK_DATABASE_URL".to_string(), db_url.clone()),
        (
            "AIRLOCK_STORAGE_URL".into(),
            format!("s3://{}", s3.var("AIRLOCK_TEST_S3_BUCKET")),
        ),
        (
            "AWS_ENDPOINT_URL".into(),
            s3.var("AIRLOCK_TEST_S3_ENDPOINT").into(),
        ),
        (
            "AWS_ACCESS_KEY_ID".into(),
            s3.var("AIRLOCK_TEST_S3_ACCESS_KEY").into(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            s3.var("AIRLOCK_TEST_S3_SECRET_KEY").into(),
        ),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AIRLOCK_S3_PATH_STYLE".into(), "true".into()),
        ("AIRLOCK_LOG".into(), "warn".into()),
        // Honest workers that start 300 ms late (test-seam builds), so kills land mid-job.
        ("AIRLOCK_TEST_HOSTILE_WORKER".into(), "slow-300".into()),
    ];
    let mut sups = Supervisors {
        children: Vec::new(),
        env,
        base: base.path().to_path_buf(),
        kills: 0,
        workers_killed_with_them: 0,
        outlived: 0,
        next: 0,
    };
    for _ in 0..3 {
        let c = sups.spawn();
        sups.children.push(c);
    }
    let run_started = Instant::now();
    let mut rng = rand::rng();
    let mut next_kill = Instant::now() + Duration::from_millis(rng.random_range(2_000..6_000));
    // Phases: storage outage, then database outage, then drain with kills going on.
    let s3_down_at = Instant::now() + Duration::from_secs(5);
    let mut s3_outage: Option<(Instant, Option<Duration>)> = None;
    let mut pg_outage: Option<(Instant, Option<Duration>)> = None;
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        assert!(
            Instant::now() < deadline,
            "chaos: no drain within 30 minutes"
        );
        let now = Instant::now();
        match s3_outage {
            None if now >= s3_down_at => {
                S3::script(&s3dir, "stop");
                println!(
                    "chaos: S3 down at {:.0} s",
                    run_started.elapsed().as_secs_f64()
                );
                s3_outage = Some((now, None));
            }
            Some((at, None)) if now >= at + outage => {
                S3::script(&s3dir, "start");
                let took = at.elapsed();
                println!("chaos: S3 back after {:.1} s", took.as_secs_f64());
                s3_outage = Some((at, Some(took)));
            }
            _ => {}
        }
        match (s3_outage, pg_outage) {
            (Some((_, Some(_))), None) => {
                // Once storage is back and jobs run again.
                tokio::time::sleep(Duration::from_secs(5)).await;
                pg.stop();
                println!(
                    "chaos: PostgreSQL down at {:.0} s",
                    run_started.elapsed().as_secs_f64()
                );
                pg_outage = Some((Instant::now(), None));
            }
            (_, Some((at, None))) if now >= at + outage => {
                pg.start();
                let took = at.elapsed();
                println!("chaos: PostgreSQL back after {:.1} s", took.as_secs_f64());
                pg_outage = Some((at, Some(took)));
            }
            _ => {}
        }
        if now >= next_kill {
            // Prefer a supervisor with a worker running (up to 3 s late), so kills land mid-job.
            let busy: Vec<usize> = (0..sups.children.len())
                .filter(|i| !children(sups.children[*i].id()).is_empty())
                .collect();
            if !busy.is_empty() || now >= next_kill + Duration::from_secs(3) {
                let i = if busy.is_empty() {
                    rng.random_range(0..sups.children.len())
                } else {
                    busy[rng.random_range(0..busy.len())]
                };
                sups.kill_and_restart(i);
                next_kill = now + Duration::from_millis(rng.random_range(3_000..9_000));
            }
        }
        if let (Some((_, Some(_))), Some((_, Some(_)))) = (s3_outage, pg_outage) {
            if let Ok(c) = jobs.counts().await {
                let active =
                    c.get("queued").copied().unwrap_or(0) + c.get("running").copied().unwrap_or(0);
                if active == 0 {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_after = run_started.elapsed();
    for c in &mut sups.children {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
    }
    for c in &mut sups.children {
        let _ = c.wait();
    }
    let leftover_workers = workers_anywhere();

    // Verify every job against its reference.
    let mut problems = Vec::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempts: BTreeMap<i32, usize> = BTreeMap::new();
    let scratch = base.path().join("fetched");
    for (id, r) in &submitted {
        let reference = &refs[*r];
        let rec = jobs.get(*id).await.unwrap().unwrap();
        *states.entry(rec.state.to_string()).or_default() += 1;
        *attempts.entry(rec.attempts).or_default() += 1;
        if rec.state != reference.state {
            problems.push(format!(
                "{id} ({}): {} but `airlock process` says {} (code {:?})",
                reference.path.display(),
                rec.state,
                reference.state,
                rec.result_code
            ));
            continue;
        }
        let keys = [
            Some(rec.input_key.clone()),
            rec.output_key.clone(),
            rec.rejects_key.clone(),
            rec.report_key.clone(),
        ];
        for key in keys.iter().flatten() {
            let k = ObjectKey::parse(key).unwrap();
            if store.head(&k).await.unwrap().is_none() {
                problems.push(format!("{id}: {key} is referenced but missing"));
            }
        }
        for (key, want, what) in [
            (&rec.output_key, &reference.output, "output"),
            (&rec.rejects_key, &reference.rejects, "rejects"),
        ] {
            let got = match key {
                Some(k) => {
                    let dest = scratch.join(format!("{id}.{what}"));
                    std::fs::create_dir_all(&scratch).unwrap();
                    store
                        .get_to_file(&ObjectKey::parse(k).unwrap(), &dest, 1 << 32)
                        .await
                        .unwrap();
                    Some(std::fs::read(&dest).unwrap())
                }
                None => None,
            };
            let got = got.filter(|b| !b.is_empty());
            if &got != want {
                problems.push(format!(
                    "{id} ({}): {what} differs from `airlock process` ({:?} vs {:?} bytes)",
                    reference.path.display(),
                    got.as_ref().map(Vec::len),
                    want.as_ref().map(Vec::len)
                ));
            }
        }
    }
    // The audit trail survived the kills and outages: every chain verifies, checkpoints too.
    let registry = airlock::jobs::open_sql(&db_url, false).await.unwrap();
    let audit = airlock::audit::verify(&registry, None, Some(&audit_key.public()))
        .await
        .unwrap();
    println!(
        "chaos: audit verify: {} chains, {} records, {} checkpoints, {} problems",
        audit.chains,
        audit.records,
        audit.checkpoints,
        audit.problems.len()
    );
    for p in audit.problems.iter().take(10) {
        problems.push(format!("audit: {p:?}"));
    }
    let failed = states.get("failed").copied().unwrap_or(0);
    println!(
        "chaos: {} jobs, {} supervisor kills (SIGKILL, {} workers killed with them, {} outlived), S3 outage {:.1} s, PostgreSQL outage {:.1} s, drained {:.0} s after the supervisors started, {:.0} s in all",
        submitted.len(),
        sups.kills,
        sups.workers_killed_with_them,
        sups.outlived,
        s3_outage.and_then(|o| o.1).unwrap_or_default().as_secs_f64(),
        pg_outage.and_then(|o| o.1).unwrap_or_default().as_secs_f64(),
        drained_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    println!("chaos: states {states:?}; attempts per job {attempts:?}; workers left running {leftover_workers:?}");
    for p in problems.iter().take(20) {
        eprintln!("chaos: {p}");
    }
    assert_eq!(failed, 0, "jobs failed");
    assert!(problems.is_empty(), "{} problems", problems.len());
    assert_eq!(sups.outlived, 0, "workers outlived their supervisor");
    assert!(leftover_workers.is_empty(), "workers left running");
    println!("chaos: passed");
}
