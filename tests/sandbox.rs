//! The real worker under the real lockdown: what an outside observer sees, that every allowlisted
//! syscall is needed, that results are the same as the engine's in-process, and that a host or
//! policy that cannot provide a layer refuses to run jobs.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use airlock_sandbox::policy::{SandboxPolicy, BUILT_IN_SANDBOX, BUILT_IN_SECCOMP};
use serde_json::json;

use crate::common::{airlock, fixture, process};

fn policy_dir_with(seccomp: &str, sandbox: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("seccomp.json"), seccomp).unwrap();
    std::fs::write(dir.path().join("sandbox.toml"), sandbox).unwrap();
    dir
}

/// The allowlist with one entry taken out. Done on the parsed policy so it cannot silently miss.
fn seccomp_without(syscall: &str) -> String {
    seccomp_without_entry(syscall, None)
}

/// The allowlist without `syscall`'s entry whose second argument must equal `arg1` (all of the
/// call's entries when `None`).
fn seccomp_without_entry(syscall: &str, arg1: Option<u64>) -> String {
    let mut value: serde_json::Value = serde_json::from_str(BUILT_IN_SECCOMP).unwrap();
    let filter = value["filter"].as_array_mut().unwrap();
    let before = filter.len();
    let listed = filter.iter().filter(|r| r["syscall"] == syscall).count();
    filter.retain(|r| {
        r["syscall"] != syscall
            || arg1.is_some_and(|v| {
                !r["args"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|c| c["index"] == 1 && c["val"] == v))
            })
    });
    let want = if arg1.is_some() { 1 } else { listed };
    assert!(listed > 0, "{syscall} is in the allowlist");
    assert_eq!(filter.len(), before - want, "{syscall} {arg1:?}");
    value.to_string()
}

#[test]
fn every_allowlisted_syscall_on_the_normal_path_is_needed() {
    // The abort path (rt_sigprocmask, getpid, gettid, tgkill) is shown needed by the escape suite
    // in src/sandbox/tests/escape.rs, with a memory bomb.
    let abort_path = ["rt_sigprocmask", "getpid", "gettid", "tgkill"];
    // futex is for the schema helper: shown needed below, per operation.
    let policy = SandboxPolicy::built_in().unwrap();
    let normal: Vec<&str> = policy
        .seccomp
        .rules
        .iter()
        .map(|r| r.syscall.as_str())
        .filter(|s| !abort_path.contains(s) && *s != "futex")
        .collect();
    assert!(normal.len() >= 7, "{normal:?}");
    let input = fixture("rows/ragged_row.csv");
    let baseline = process(&input, &[]);
    assert_eq!(baseline.code, 0, "{}", baseline.report);
    for syscall in normal {
        let dir = policy_dir_with(&seccomp_without(syscall), BUILT_IN_SANDBOX);
        let p = process(&input, &["--policy-dir", dir.path().to_str().unwrap()]);
        assert_eq!(p.code, 70, "without {syscall}: {}", p.report);
        assert_eq!(
            p.rejection_code(),
            Some("sandbox_violation"),
            "without {syscall}"
        );
        assert!(
            p.output().is_none() && p.rejects().is_none(),
            "a killed worker publishes nothing"
        );
        assert!(p.leftovers().is_empty(), "{:?}", p.leftovers());
    }
}

/// A lead list of `rows` rows and the schema that checks it (unique emails): enough rows for
/// many batches to pass between the worker's two threads.
fn schema_job(dir: &std::path::Path, rows: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let csv = dir.join("leads.csv");
    let mut text = String::from("email,employees\n");
    for i in 0..rows {
        text.push_str(&format!("lead{i}@example.com,{}\n", i % 900 + 1));
    }
    std::fs::write(&csv, text).unwrap();
    let schema = dir.join("schema.json");
    std::fs::write(
        &schema,
        r#"{"fields": [{"name": "email", "type": "string", "format": "email",
                        "constraints": {"unique": true}},
                       {"name": "employees", "type": "integer", "constraints": {"minimum": 1}}]}"#,
    )
    .unwrap();
    (csv, schema)
}

#[test]
fn an_allowlist_without_the_helpers_futex_operations_keeps_the_worker_single_threaded() {
    let scratch = tempfile::tempdir().unwrap();
    let (csv, schema) = schema_job(scratch.path(), 60_000);
    let schema = schema.to_str().unwrap();
    let baseline = process(&csv, &["--schema", schema]);
    assert_eq!(baseline.code, 0, "{}", baseline.report);
    assert_eq!(baseline.report["rows"]["accepted"], 60_000);
    // Each operation is shown needed by the escape suite (src/sandbox/tests/escape.rs: the
    // threads' wait and wake, and two threads racing for the allocator). Without any one of
    // them, or without futex at all, the worker does not start the helper and checks on one
    // thread: the same result, never a killed worker.
    let mut policies: Vec<String> = [137u64, 129, 128]
        .iter()
        .map(|&op| seccomp_without_entry("futex", Some(op)))
        .collect();
    policies.push(seccomp_without("futex"));
    for policy in policies {
        let dir = policy_dir_with(&policy, BUILT_IN_SANDBOX);
        let alone = process(
            &csv,
            &[
                "--schema",
                schema,
                "--policy-dir",
                dir.path().to_str().unwrap(),
            ],
        );
        assert_eq!(alone.code, 0, "{}", alone.report);
        assert_eq!(alone.output(), baseline.output());
        assert_eq!(alone.report["rows"], baseline.report["rows"]);
    }
}

#[test]
fn sandboxed_output_is_byte_identical_to_the_engine_in_process() {
    for entry in std::fs::read_dir(fixture("valid")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("legacy-excel") {
            continue;
        }
        let p = process(&path, &[]);
        let mut out = Vec::new();
        let mut rej = Vec::new();
        let bytes = std::fs::read(&path).unwrap();
        let report = airlock_engine::process(
            &bytes[..],
            &mut out,
            &mut rej,
            &airlock_engine::Options::default(),
        )
        .unwrap();
        assert_eq!(
            p.output().unwrap().as_bytes(),
            &out[..],
            "{}",
            path.display()
        );
        assert_eq!(p.report["output"]["sha256"], report.output.sha256);
        let enforced = p.report["sandbox"]["enforced"].as_array().unwrap();
        assert_eq!(enforced.len(), 7, "{}", p.report["sandbox"]);
    }
}

#[test]
fn a_layer_the_host_cannot_provide_refuses_the_job() {
    // One past what this kernel offers (doctor says which) cannot be met.
    let out = airlock().arg("doctor").output().unwrap();
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let host_abi = doctor["host"]["landlock_abi"].as_u64().unwrap();
    let dir = policy_dir_with(
        BUILT_IN_SECCOMP,
        &BUILT_IN_SANDBOX.replace("min_abi = 1", &format!("min_abi = {}", host_abi + 1)),
    );
    let p = process(
        &fixture("valid/leads.csv"),
        &["--policy-dir", dir.path().to_str().unwrap()],
    );
    assert_eq!(p.code, 70, "{}", p.report);
    assert_eq!(p.rejection_code(), Some("sandbox_unavailable"));
    assert!(p.output().is_none());
    let out = airlock()
        .args(["doctor", "--policy-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doctor["ok"], false);
    assert!(doctor["policy"]["problems"][0]
        .as_str()
        .unwrap()
        .contains("landlock ABI"));
}

/// A kernel with an older landlock, reproduced by building the ruleset for ABI 3 (`max_abi`): jobs
/// still run with every layer, the report names what ABI 3 lacks, and doctor says so plainly.
#[test]
fn an_older_landlock_abi_runs_jobs_and_says_what_it_lacks() {
    let dir = policy_dir_with(
        BUILT_IN_SECCOMP,
        &BUILT_IN_SANDBOX.replace("min_abi = 1", "min_abi = 1\nmax_abi = 3"),
    );
    let p = process(
        &fixture("valid/leads.csv"),
        &["--policy-dir", dir.path().to_str().unwrap()],
    );
    assert_eq!(p.code, 0, "{}", p.report);
    let sandbox = &p.report["sandbox"];
    assert_eq!(sandbox["landlock_abi"], 3, "{sandbox}");
    assert_eq!(
        sandbox["enforced"].as_array().unwrap().len(),
        7,
        "{sandbox}"
    );
    assert_eq!(
        sandbox["landlock_missing"],
        json!([
            "net.bind_tcp",
            "net.connect_tcp",
            "fs.ioctl_dev",
            "scope.abstract_unix_socket",
            "scope.signal",
            "fs.resolve_unix"
        ])
    );
    let out = airlock()
        .args(["doctor", "--policy-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let landlock = &doctor["landlock"];
    assert_eq!(landlock["ruleset_abi"], 3);
    let summary = landlock["summary"].as_str().unwrap();
    assert!(
        summary.contains("lacks net.bind_tcp (ABI 4)") && summary.contains("jobs run"),
        "{summary}"
    );
    for right in landlock["not_covered"].as_array().unwrap() {
        assert!(
            !right["still_stopped_by"].as_str().unwrap().is_empty(),
            "{right}"
        );
    }
    assert_eq!(doctor["worker"]["sandbox"]["landlock_abi"], 3);

    // The strict floor on the same kernel: ABI 7 is above 6, so it runs; the full ruleset
    // lacks nothing before ABI 9.
    let strict = policy_dir_with(
        BUILT_IN_SECCOMP,
        &BUILT_IN_SANDBOX.replace("min_abi = 1", "min_abi = \"strict\""),
    );
    let p = process(
        &fixture("valid/leads.csv"),
        &["--policy-dir", strict.path().to_str().unwrap()],
    );
    assert_eq!(p.code, 0, "{}", p.report);
    assert_eq!(
        p.report["sandbox"]["landlock_missing"],
        json!(["fs.resolve_unix"])
    );
}

#[test]
fn doctor_passes_on_this_host_with_every_layer() {
    let out = airlock().arg("doctor").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doctor["host"]["landlock_abi"].as_u64().unwrap() >= 6);
    assert_eq!(doctor["worker"]["status"], "accepted");
    assert_eq!(doctor["worker"]["sandbox"]["missing"], json!([]));
}

fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

#[test]
fn a_live_worker_seen_from_outside_is_locked_down() {
    let policy = SandboxPolicy::built_in().unwrap();
    let config = json!({
        "limits": {"max_bytes": 1u64 << 30, "max_rows": 10_000_000u64, "max_columns": 1024,
            "max_field_bytes": 65536, "max_record_bytes": 1048576, "max_rejected_ratio": 0.1,
            "max_issues": 100},
        "delimiter": null, "fallback_encoding": null, "parent_hashes_output": false,
        "schema_key_bytes": 1048576,
        "rlimits": {"address_space_bytes": 536870912u64, "cpu_seconds": 300, "file_size_bytes": 4294967296u64},
        "sandbox": policy,
    });
    let dir = tempfile::tempdir().unwrap();
    let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    let file = |name: &str| OwnedFd::from(std::fs::File::create(dir.path().join(name)).unwrap());
    let (_diag_r, diag_w) = rustix::pipe::pipe().unwrap();
    let io = airlock_sandbox::spawn::WorkerIo {
        input: pipe_r,
        output: file("out.csv"),
        diagnostics: diag_w,
        report: file("report.json"),
        rejects: file("rej.csv"),
    };
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_airlock"));
    let config = config.to_string();
    let args = [
        std::ffi::OsStr::new("__airlock-worker"),
        std::ffi::OsStr::new(&config),
    ];
    let mut child = airlock_sandbox::spawn::spawn(exe, &args, io).unwrap();
    let pid = child.id();

    // Feed part of a job; the worker is mid-read when we look.
    let mut feed = std::fs::File::from(pipe_w);
    let body = std::fs::read(fixture("valid/leads.csv")).unwrap();
    feed.write_all(&body[..body.len() / 2]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_field(pid, "Seccomp:").as_deref() != Some("2") {
        assert!(
            Instant::now() < deadline,
            "worker never reached seccomp mode 2"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status_field(pid, "NoNewPrivs:").as_deref(), Some("1"));
    assert_eq!(
        status_field(pid, "CapEff:").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(
        status_field(pid, "CapPrm:").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(
        status_field(pid, "CapBnd:").as_deref(),
        Some("0000000000000000")
    );
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "the worker has its own network namespace"
    );
    let userns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).unwrap();
    assert_ne!(userns(&pid.to_string()), userns("self"));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.is_empty(), "environment: {} bytes", environ.len());
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2, 3, 4]);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .rev()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(limit("Max address space"), "536870912");
    assert_eq!(limit("Max core file size"), "0");

    // Finish the job; the result is the normal one.
    feed.write_all(&body[body.len() / 2..]).unwrap();
    drop(feed);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "accepted");
    assert_eq!(report["rows"]["accepted"], 4);
}

#[test]
fn a_worker_started_without_its_fds_refuses() {
    // Run by hand (no fds 3 and 4): the worker must not fall back to anything.
    let policy = SandboxPolicy::built_in().unwrap();
    let config = json!({
        "limits": {"max_bytes": 10, "max_rows": 1, "max_columns": 1, "max_field_bytes": 1,
            "max_record_bytes": 1, "max_rejected_ratio": 0.1, "max_issues": 1},
        "delimiter": null, "fallback_encoding": null, "parent_hashes_output": false,
        "schema_key_bytes": 1048576,
        "rlimits": {"address_space_bytes": 536870912u64, "cpu_seconds": 1, "file_size_bytes": 1024},
        "sandbox": policy,
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["__airlock-worker", &config.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fd 3 is not open"));
}

/// The worker `process` starts holds its outputs write-only (it can neither read back nor map
/// what it wrote) and its fd 2 is a private pipe, not the parent's stderr.
#[test]
fn the_worker_gets_write_only_outputs_and_its_own_diagnostics_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.csv");
    let mut body = b"email,name\n".to_vec();
    body.extend(b"a@x.io,\"Smith, J\"\n".repeat(3_000_000));
    std::fs::write(&input, &body).unwrap();
    let mut parent = crate::common::process_command(&input, dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let worker = loop {
        assert!(Instant::now() < deadline, "no locked-down worker seen");
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", parent.id()))
            .unwrap_or_default();
        let locked = children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|&p| status_field(p, "Seccomp:").as_deref() == Some("2"));
        if let Some(pid) = locked {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let flags = |fd: u32| {
        let info = std::fs::read_to_string(format!("/proc/{worker}/fdinfo/{fd}")).unwrap();
        let octal = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap()
            .trim()
            .to_string();
        u32::from_str_radix(&octal, 8).unwrap()
    };
    for fd in [1, 3, 4] {
        assert_eq!(flags(fd) & 0o3, 0o1, "fd {fd} must be O_WRONLY");
    }
    let link = |pid: u32, fd: u32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let diagnostics = link(worker, 2);
    assert!(
        diagnostics.to_string_lossy().starts_with("pipe:"),
        "{diagnostics:?}"
    );
    assert_ne!(
        diagnostics,
        link(parent.id(), 2),
        "fd 2 is the parent's stderr"
    );
    assert!(parent.wait().unwrap().success());
}

#[test]
fn a_pattern_on_the_regex_engine_runs_on_the_helper_thread_under_the_lockdown() {
    // The pattern's dense DFA would need 2^13 states, far past the 64 KiB a pattern may take,
    // so it runs on the `regex` crate, whose lazy DFA keeps a per-thread cache that hashes with
    // the thread's random keys: the helper draws them before the lockdown (getrandom is not
    // allowlisted). 3,000 rows: the first batches go to the helper.
    let scratch = tempfile::tempdir().unwrap();
    let csv = scratch.path().join("codes.csv");
    let mut text = String::from("code\n");
    for i in 0..3_000 {
        text.push_str(if i % 100 == 7 {
            "bbbbbbbbbbbbbbb\n"
        } else {
            "aaaaaaaaaaaaaaa\n"
        });
    }
    std::fs::write(&csv, text).unwrap();
    let schema = scratch.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"fields": [{"name": "code", "type": "string", "constraints": {"pattern": "(a|b)*a(a|b){12}"}}]}"#,
    )
    .unwrap();
    let p = process(&csv, &["--schema", schema.to_str().unwrap()]);
    assert_eq!(p.code, 0, "{}", p.report);
    assert_eq!(p.report["rows"]["accepted"], 2_970, "{}", p.report["rows"]);
    assert_eq!(p.report["rows"]["rejected"], 30);
}
