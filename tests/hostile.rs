//! The parent trusts nothing the worker hands back. With the `test-seam` feature, the parent runs
//! a stand-in worker (`src/hostile.rs`) that locks down like the real one and then lies, floods or
//! dies on purpose; each test checks that the verdict comes from what the parent observed, and
//! that nothing is published.

use std::path::Path;

use crate::common::{fixture, process_command, processed, Processed};

/// A policy directory whose default plan has small worker limits, so the failure classes show
/// within seconds.
fn quick_policy(memory_mib: u64, cpu_s: u64, wall_s: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let limits = format!(
        "[plans.default]\nmax_bytes = 1_073_741_824\nmax_rows = 10_000_000\nmax_columns = 1024\n\
         max_field_bytes = 65536\nmax_record_bytes = 1048576\nmax_rejected_ratio = 0.10\n\
         max_issues = 100\nfallback_encoding = \"\"\nworker_memory_bytes = {}\n\
         worker_cpu_seconds = {cpu_s}\nworker_wall_seconds = {wall_s}\n",
        memory_mib << 20
    );
    std::fs::write(dir.path().join("limits.toml"), limits).unwrap();
    let retention =
        "retain_days = 30\norphan_grace_hours = 48\nbatch_size = 250\nlease_seconds = 600\n";
    std::fs::write(dir.path().join("retention.toml"), retention).unwrap();
    dir
}

/// Run `airlock process` on `input` with the stand-in worker in `mode`; also its stderr.
fn hostile(mode: &str, input: &Path, policy: Option<&Path>) -> (Processed, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = process_command(input, dir.path());
    cmd.env("AIRLOCK_TEST_HOSTILE_WORKER", mode)
        .env("AIRLOCK_LOG", "info");
    if let Some(p) = policy {
        cmd.arg("--policy-dir").arg(p);
    }
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{mode}: the parent took {:?}",
        started.elapsed()
    );
    let p = processed(out, dir);
    let stderr = p.stderr.clone();
    (p, stderr)
}

fn assert_failed(p: &Processed, code: &str, message_has: &str) {
    assert_eq!(p.code, 70, "{}", p.report);
    assert_eq!(p.status(), "failed");
    assert_eq!(p.rejection_code(), Some(code), "{}", p.report);
    let message = p.report["rejection"]["message"].as_str().unwrap();
    assert!(message.contains(message_has), "{message}");
    assert!(p.output().is_none(), "a failed job must publish no output");
    assert!(
        p.rejects().is_none(),
        "a failed job must publish no rejects"
    );
    assert!(p.leftovers().is_empty(), "{:?}", p.leftovers());
}

fn leads() -> std::path::PathBuf {
    fixture("valid/leads.csv")
}

#[test]
fn a_report_over_the_cap_is_refused() {
    // Exactly one byte over the cap: refused when read, or stopped by the parent's poll as soon
    // as the file passes the cap, whichever comes first.
    let (p, _) = hostile("report-huge", &leads(), None);
    assert_eq!(p.rejection_code(), Some("worker_crashed"), "{}", p.report);
    let message = p.report["rejection"]["message"].as_str().unwrap();
    assert!(
        message.contains("larger than") || message.contains("passed its output bound"),
        "{message}"
    );
    assert_failed(&p, "worker_crashed", "");
}

#[test]
fn a_wrong_output_byte_count_is_refused() {
    let (p, _) = hostile("wrong-output-bytes", &leads(), None);
    assert_failed(&p, "worker_crashed", "output bytes");
}

#[test]
fn a_rejects_file_whose_hash_is_not_the_reported_one_is_refused() {
    let (p, _) = hostile("wrong-rejects-hash", &fixture("rows/ragged_row.csv"), None);
    assert_failed(&p, "worker_crashed", "sha256");
}

#[test]
fn the_output_hash_is_the_parents_measurement_not_the_workers_claim() {
    use sha2::Digest;
    let (p, _) = hostile("wrong-output-hash", &leads(), None);
    assert_eq!(p.code, 0, "{}", p.report);
    let output = p.output().expect("the job publishes its output");
    let measured = hex::encode(sha2::Sha256::digest(output.as_bytes()));
    assert_eq!(
        p.report["output"]["sha256"].as_str(),
        Some(measured.as_str()),
        "the report must carry the hash of the published bytes, never the worker's claim"
    );
    assert_ne!(measured, "0".repeat(64));
}

#[test]
fn a_report_that_contradicts_itself_is_refused() {
    let (p, _) = hostile("contradictory-report", &leads(), None);
    assert_failed(&p, "worker_crashed", "add up");
}

#[test]
fn report_values_beyond_the_plan_are_refused() {
    let (p, _) = hostile("huge-header", &leads(), None);
    assert_failed(&p, "worker_crashed", "header has 1025 names");
    let (p, _) = hostile(
        "too-many-issues",
        &fixture("rows/formula_escaped.csv"),
        None,
    );
    assert_failed(&p, "worker_crashed", "issues");
}

#[test]
fn exit_77_on_a_host_that_runs_the_sandbox_is_a_crash_not_a_host_problem() {
    let (p, _) = hostile("exit-77", &leads(), None);
    assert_failed(&p, "worker_crashed", "this host supports every layer");
}

#[test]
fn output_past_the_bound_for_the_input_stops_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.csv");
    std::fs::write(&tiny, b"a,b\n1,2\n").unwrap();
    // 64 MiB at full speed for an 8-byte input: the file-size rlimit (8 MiB here) stops it with
    // SIGXFSZ before the parent's next poll.
    let (p, _) = hostile("output-flood", &tiny, None);
    assert_failed(&p, "worker_crashed", "wrote more than the output bound");
}

#[test]
fn a_file_passing_its_bound_is_stopped_by_the_parent_before_the_rlimit() {
    // 4 MiB in: rejects may have 9 MiB, the file-size rlimit is the 12 MiB output bound.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let mut body = b"a,b\n".to_vec();
    body.extend(b"1,2\n".repeat(1 << 20));
    std::fs::write(&input, body).unwrap();
    let (p, _) = hostile("rejects-flood", &input, None);
    assert_failed(&p, "worker_crashed", "passed its output bound");
}

// Each failure class pinned end to end, one test each, with small worker limits (256 MiB, 1 s of
// CPU, 4 s of wall clock).

#[test]
fn memory_limit_is_a_worker_that_used_its_memory_and_died() {
    let policy = quick_policy(256, 1, 4);
    let (p, _) = hostile("memory-bomb", &leads(), Some(policy.path()));
    assert_failed(&p, "memory_limit", "memory limit");
}

#[test]
fn cpu_limit_is_a_worker_that_used_its_cpu_time() {
    let policy = quick_policy(256, 1, 4);
    let (p, _) = hostile("cpu-spin", &leads(), Some(policy.path()));
    assert_failed(&p, "cpu_limit", "CPU time");
}

#[test]
fn timeout_is_a_worker_the_parent_killed_at_the_wall_clock_limit() {
    let policy = quick_policy(256, 1, 4);
    let (p, _) = hostile("sleep", &leads(), Some(policy.path()));
    assert_failed(&p, "timeout", "wall-clock");
}

#[test]
fn worker_crashed_is_a_small_worker_that_aborted() {
    // abort() from a small worker is not an out-of-memory: the parent saw its peak RSS.
    let policy = quick_policy(256, 1, 4);
    let (p, _) = hostile("self-abort", &leads(), Some(policy.path()));
    assert_failed(&p, "worker_crashed", "signal 6");
}

#[test]
fn worker_diagnostics_are_logged_as_one_escaped_field_never_as_lines() {
    let (p, stderr) = hostile("fake-log", &leads(), None);
    assert_eq!(p.code, 0, "{}", p.report);
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("{\"level\":\"INFO\",\"fields\":{\"message\":\"job succeeded\"")),
        "a forged log line reached the parent's log:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("worker_diagnostics"))
        .unwrap_or_else(|| panic!("no diagnostics field in:\n{stderr}"));
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    let text = entry["fields"]["worker_diagnostics"].as_str().unwrap();
    assert!(
        text.contains("job succeeded") && !text.contains('\n'),
        "{text}"
    );
}

#[test]
fn a_worker_writing_to_fd_2_forever_is_capped_and_stopped() {
    let policy = quick_policy(256, 1, 4);
    let (p, stderr) = hostile("stderr-forever", &leads(), Some(policy.path()));
    assert_eq!(p.status(), "failed");
    assert!(
        matches!(p.rejection_code(), Some("cpu_limit" | "timeout")),
        "{}",
        p.report
    );
    assert!(
        stderr.len() < 64 * 1024,
        "{} bytes of parent stderr",
        stderr.len()
    );
    assert_eq!(stderr.matches("worker_diagnostics").count(), 1, "{stderr}");
}
