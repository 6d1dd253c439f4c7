//! The tenant API's three performance goals (issue: tenant API), each as a ratio to a reference
//! measured in the same run, on PostgreSQL (a fresh schema in the machine's `test` database) and
//! a private SeaweedFS:
//!
//! 1. **Upload**: a SIZE_MB file through `POST /v1/jobs` (streamed to a staging file, then stored
//!    in S3, then queued) against a direct S3 PUT of the same file (a presigned PUT), both sent by
//!    `curl -T`, ROUNDS interleaved rounds, medians; and `serve`'s peak RSS (VmHWM) after them.
//! 2. **Requests**: authenticated `GET /v1/jobs/{id}` (key lookup + job lookup) against
//!    `/healthz` on the same server, `wrk -t2 -c64 -dSECSs --latency`, requests/s and p50/p99.
//! 3. **Small jobs end to end**: JOBS 10 KB files submitted over the API (one keep-alive client,
//!    one request after another) and drained by `airlock supervise -c 2` with the sandbox on,
//!    against the same files submitted with the CLI (`airlock submit` per file) and drained the
//!    same way: jobs/s from the first submit to the last job's end.
//!
//! 4. **Webhook delay**: during phase 3 the tenant has a webhook endpoint on a receiver in this
//!    process (loopback, allowlisted), and both `serve` and the draining `supervise` run the
//!    dispatcher: the delay from each job's final state (the event's `created_at`, the
//!    database's clock) to the event's arrival at the receiver (this host's clock), p50/p99/max.
//!
//! `cargo bench --bench api -- [SIZE_MB] [JOBS] [SECS] [ROUNDS]` (default 200 100 10 3).
//! Goals (BENCHMARKS.md §8): upload ≥ 0.7× and RSS ≤ 64 MiB; GET ≥ 0.5× healthz; API jobs/s ≥
//! 0.9× CLI; webhook p99 delay ≤ 1 s (BENCHMARKS.md §9).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock::storage::{Kind, ObjectKey, ObjectStore};
use common::{free_port, run, BIN, ROOT, S3};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// requests/s, p50 and p99 (ms) from wrk's output.
fn wrk(url: &str, key: Option<&str>, secs: u64) -> (f64, f64, f64) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", &format!("-d{secs}s"), "--latency"]);
    if let Some(k) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {k}")]);
    }
    let out = run(cmd.arg(url));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("Non-2xx"), "errors under load: {text}");
    let ms = |s: &str| -> f64 {
        let s = s.trim();
        if let Some(v) = s.strip_suffix("us") {
            v.parse::<f64>().unwrap() / 1000.0
        } else if let Some(v) = s.strip_suffix("ms") {
            v.parse().unwrap()
        } else if let Some(v) = s.strip_suffix('s') {
            v.parse::<f64>().unwrap() * 1000.0
        } else {
            panic!("latency {s:?}")
        }
    };
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
    };
    let rps: f64 = field("Requests/sec:").trim().parse().unwrap();
    (rps, ms(&field("50%")), ms(&field("99%")))
}

fn curl_upload(args: &[&str]) -> f64 {
    let t = Instant::now();
    let out = run(Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args));
    let code = String::from_utf8_lossy(&out.stdout);
    assert!(code.starts_with('2'), "{args:?}: {code}");
    t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (size_mb, jobs, secs, rounds) = (arg(0, 200), arg(1, 100), arg(2, 10), arg(3, 3).max(1));
    let work = tempfile::tempdir().unwrap();
    let s3 = S3::start(&work.path().join("s3"));
    let schema = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    run(Command::new("psql").args([
        "-q",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "test",
        "-c",
        &format!("CREATE SCHEMA {schema}"),
    ]));
    let mut env = s3.airlock_env();
    env.push((
        "AIRLOCK_DATABASE_URL".into(),
        format!("postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}"),
    ));
    env.push(("AIRLOCK_LOG".into(), "warn".into()));
    let kek = work.path().join("webhook.kek");
    let mut kek_bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut kek_bytes);
    std::fs::write(
        &kek,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, kek_bytes),
    )
    .unwrap();
    env.push(("AIRLOCK_WEBHOOK_KEK_FILE".into(), kek.display().to_string()));
    env.push(("AIRLOCK_WEBHOOK_ALLOW".into(), "127.0.0.1".into()));
    let airlock = || {
        let mut c = Command::new(BIN);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        c
    };
    run(airlock().arg("migrate"));
    run(airlock().args(["tenant", "create", "acme"]));
    let created: serde_json::Value =
        serde_json::from_slice(&run(airlock().args(["key", "create", "--tenant", "acme"])).stdout)
            .unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let serve = Serve(
        airlock()
            .args([
                "serve",
                "--supervise",
                "0",
                "--rate-per-key",
                "0",
                "--rate-per-ip",
                "0",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--work-dir"])
            .arg(work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let ready = async {
        for _ in 0..400 {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    };
    assert!(ready.await, "serve never answered");
    println!(
        "{} cores; PostgreSQL schema {schema}; SeaweedFS {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s3.var("AIRLOCK_TEST_S3_ENDPOINT")
    );

    // 1. Upload.
    let big = work.path().join("big.csv");
    run(Command::new("python3")
        .arg(Path::new(ROOT).join("benches/gen_leads.py"))
        .arg(&big)
        .arg(size_mb.to_string()));
    let size = std::fs::metadata(&big).unwrap().len();
    let sha = airlock::storage::sha256_b64_of(tokio::fs::File::open(&big).await.unwrap())
        .await
        .unwrap();
    let store = s3.store();
    let (mut direct, mut api) = (Vec::new(), Vec::new());
    let mut posted = Vec::new();
    for _ in 0..rounds {
        let put = store
            .presign_put(
                &ObjectKey::new(Kind::Input),
                size,
                &sha,
                Duration::from_secs(600),
            )
            .await
            .unwrap();
        let mut a: Vec<String> = vec!["-T".into(), big.display().to_string()];
        for (k, v) in put.headers.iter().filter(|(k, _)| k != "content-length") {
            a.extend(["-H".into(), format!("{k}: {v}")]);
        }
        a.push(put.url.clone());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        direct.push(size as f64 / curl_upload(&refs) / 1e6);
        let t = Instant::now();
        let out = run(Command::new("curl")
            .args(["-sS", "-X", "POST", "-T"])
            .arg(&big)
            .args([
                "-H",
                &format!("Authorization: Bearer {key}"),
                "-H",
                "Content-Type: text/csv",
                &format!("{base}/v1/jobs"),
            ]));
        api.push(size as f64 / t.elapsed().as_secs_f64() / 1e6);
        let job: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        posted.push(job["id"].as_str().unwrap().to_string());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", serve.0.id())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let (d, a) = (median(direct.clone()), median(api.clone()));
    println!("upload {size} bytes x{rounds}: direct S3 PUT {direct:.0?} MB/s, POST /v1/jobs {api:.0?} MB/s");
    println!("  medians: direct {d:.1} MB/s, API {a:.1} MB/s, ratio {:.2} (goal >= 0.7); serve peak RSS {:.1} MiB (goal <= 64)", a / d, hwm_kib as f64 / 1024.0);

    // 2. Requests.
    let job = &posted[0];
    let (h_rps, h50, h99) = wrk(&format!("{base}/healthz"), None, secs);
    let (j_rps, j50, j99) = wrk(&format!("{base}/v1/jobs/{job}"), Some(&key), secs);
    let (h2_rps, _, _) = wrk(&format!("{base}/healthz"), None, secs);
    let h_mean = (h_rps + h2_rps) / 2.0;
    println!("wrk -t2 -c64 -d{secs}s: /healthz {h_rps:.0} and {h2_rps:.0} req/s (p50 {h50:.2} ms, p99 {h99:.2} ms); GET /v1/jobs/{{id}} {j_rps:.0} req/s (p50 {j50:.2} ms, p99 {j99:.2} ms)");
    println!(
        "  ratio {:.2} of the healthz mean (goal >= 0.5)",
        j_rps / h_mean
    );

    // The big jobs are not part of phase 3: erase them.
    for id in &posted {
        let r = client
            .delete(format!("{base}/v1/jobs/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // 4 (during 3). A webhook receiver: each event's id and when it arrived.
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, i64)>::new()));
    let hook_port = free_port();
    let app = {
        let arrivals = arrivals.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let arrivals = arrivals.clone();
                async move {
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as i64;
                    let id = headers["webhook-id"].to_str().unwrap().to_string();
                    arrivals.lock().unwrap().push((id, at));
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", hook_port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    run(airlock().args([
        "webhook",
        "add",
        "--tenant",
        "acme",
        "--url",
        &format!("http://127.0.0.1:{hook_port}/hook"),
    ]));

    // 3. Small jobs end to end.
    let small = work.path().join("small.csv");
    run(Command::new("python3")
        .arg(Path::new(ROOT).join("benches/gen_leads.py"))
        .arg(&small)
        .arg("0.0095"));
    let body = std::fs::read(&small).unwrap();
    let drain = || run(airlock().args(["supervise", "--until-idle", "-c", "2"]));
    let t = Instant::now();
    for _ in 0..jobs {
        run(airlock().args(["submit", "--tenant", "acme"]).arg(&small));
    }
    drain();
    let cli = jobs as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..jobs {
        let r = client
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(&key)
            .header("content-type", "text/csv")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    drain();
    let over_api = jobs as f64 / t.elapsed().as_secs_f64();
    println!("{jobs} jobs of {} bytes, submit + drain (supervise -c 2): CLI {cli:.1} jobs/s, API {over_api:.1} jobs/s, ratio {:.2} (goal >= 0.9)", body.len(), over_api / cli);

    // 4. Webhook delays: every event of phase 3 (its final state) to its arrival.
    let db = airlock::jobs::open_sql(
        &env.iter()
            .find(|(k, _)| k == "AIRLOCK_DATABASE_URL")
            .unwrap()
            .1,
        false,
    )
    .await
    .unwrap();
    let events: std::collections::HashMap<String, i64> = {
        use sqlx::Row;
        sqlx::query("SELECT id, created_at FROM airlock_webhook_events WHERE type <> 'job.purged'")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect()
    };
    let arrived = arrivals.lock().unwrap().clone();
    let mut delays: Vec<f64> = arrived
        .iter()
        .filter_map(|(id, at)| events.get(id).map(|c| (at - c) as f64))
        .collect();
    let unique: std::collections::HashSet<&String> = arrived.iter().map(|(id, _)| id).collect();
    assert_eq!(
        unique.len(),
        2 * jobs as usize,
        "one event per job of phase 3, each delivered"
    );
    delays.sort_by(f64::total_cmp);
    let pct =
        |p: f64| delays[((delays.len() as f64 * p).ceil() as usize).clamp(1, delays.len()) - 1];
    println!(
        "webhooks: {} events at the small-job rate, final state to arrival: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (goal p99 <= 1000 ms); {} requests",
        delays.len(),
        pct(0.5),
        pct(0.99),
        delays[delays.len() - 1],
        arrived.len()
    );
    drop(serve);
    run(Command::new("psql").args([
        "-q",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "test",
        "-c",
        &format!("SET client_min_messages = warning; DROP SCHEMA {schema} CASCADE"),
    ]));
}
