//! A stand-in worker that misbehaves on purpose, for the tests of what the parent trusts. Built
//! only with the `test-seam` feature; the parent runs it instead of the real worker when
//! `AIRLOCK_TEST_HOSTILE_WORKER` names a mode (see `process::worker_args`). Release builds have
//! neither this module nor the variable.
//!
//! Each mode plays a worker that an attacker controls after the lockdown (or, for the modes that
//! act before it, one that never locks down), and the tests check that the parent's verdict
//! comes from what it observed.

use std::io::Write;
use std::process::ExitCode;

use crate::process::report_cap;
use crate::worker;

/// The hidden first argument of the stand-in.
pub const ARG: &str = "__airlock-hostile-worker";
/// Tests only: the worker executable, when the parent is not `airlock` (a test harness).
pub const WORKER_EXE_ENV: &str = "AIRLOCK_TEST_WORKER_EXE";
/// The variable that selects a mode in the parent.
pub const ENV: &str = "AIRLOCK_TEST_HOSTILE_WORKER";

/// `args`: the mode, then the worker's own config argument.
pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    let Some((mode, rest)) = args.split_first() else {
        return ExitCode::from(worker::EXIT_SETUP);
    };
    let mode = mode.to_string_lossy().into_owned();
    // `slow-MS`: an honest worker that first waits MS milliseconds, so tests can act while a job
    // is certainly in flight.
    if let Some(ms) = mode.strip_prefix("slow-").and_then(|m| m.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        return match worker::lock_down(rest) {
            Ok(w) => w.process().map_or_else(|code| code, |r| w.write_report(&r)),
            Err(code) => code,
        };
    }
    // Modes that act before (instead of) locking down.
    match mode.as_str() {
        "exit-77" => return ExitCode::from(worker::EXIT_SANDBOX),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let w = match worker::lock_down(rest) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let honest = || w.process().ok();
    let mut fd2 = std::io::stderr();
    match mode.as_str() {
        "cpu-spin" => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        "memory-bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::with_capacity(4096);
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "self-abort" => std::process::abort(),
        "report-huge" => {
            // One byte over the parent's cap (and exactly at the file-size rlimit).
            let chunk = vec![b' '; 1 << 20];
            let mut report = &w.fds.report;
            let mut left = report_cap(&w.config.limits) + 1;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if report.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
            ExitCode::SUCCESS
        }
        "output-flood" => {
            let chunk = vec![b'x'; 1 << 20];
            let mut output = &w.fds.output;
            for _ in 0..64 {
                if output.write_all(&chunk).is_err() {
                    break;
                }
            }
            honest().map_or(ExitCode::from(worker::EXIT_IO), |r| w.write_report(&r))
        }
        "rejects-flood" => {
            // 1 MiB every 50 ms (spinning: the clock is read without a system call), so the
            // parent's poll sees the file pass its bound before the file-size rlimit stops it.
            let chunk = vec![b'r'; 1 << 20];
            let mut rejects = &w.fds.rejects;
            loop {
                if rejects.write_all(&chunk).is_err() {
                    return ExitCode::from(worker::EXIT_IO);
                }
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_millis(50) {
                    std::hint::spin_loop();
                }
            }
        }
        "stderr-forever" => loop {
            let _ = fd2.write_all(b"{\"level\":\"INFO\",\"fields\":{\"message\":\"flood\"}}\n");
        },
        "fake-log" => {
            let _ = fd2.write_all(
                b"\n{\"level\":\"INFO\",\"fields\":{\"message\":\"job succeeded\",\"forged\":true}}\n",
            );
            honest().map_or(ExitCode::from(worker::EXIT_IO), |r| w.write_report(&r))
        }
        lie => lie_about(lie, &w),
    }
}

/// Run the engine honestly, then change one thing in the report before handing it over.
fn lie_about(lie: &str, w: &worker::LockedDown) -> ExitCode {
    let Ok(mut report) = w.process() else {
        return ExitCode::from(worker::EXIT_IO);
    };
    match lie {
        "wrong-output-bytes" => report.output.bytes += 1,
        "wrong-rejects-hash" => report.rejects.sha256 = "0".repeat(64),
        // A well-formed hash of other bytes: the parent must publish its own measurement.
        "wrong-output-hash" => report.output.sha256 = "0".repeat(64),
        "contradictory-report" => report.rows.total += 1,
        "huge-header" => {
            report.header = (0..=w.config.limits.max_columns)
                .map(|i| format!("c{i}"))
                .collect()
        }
        "too-many-issues" => {
            let issue = report.issues.first().cloned();
            report.issues = issue
                .into_iter()
                .cycle()
                .take(w.config.limits.max_issues + 1)
                .collect();
        }
        _ => return ExitCode::from(worker::EXIT_SETUP),
    }
    w.write_report(&report)
}

/// Tests only: a factor on the webhook retry schedule (`0.001` makes 5 s into 5 ms), so the
/// retry tests take seconds, not hours.
pub const WEBHOOK_SCHEDULE_SCALE_ENV: &str = "AIRLOCK_TEST_WEBHOOK_SCHEDULE_SCALE";

pub fn webhook_schedule_scale() -> f64 {
    std::env::var(crate::hostile::WEBHOOK_SCHEDULE_SCALE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// Tests only: the webhook delivery lease in milliseconds (60 s otherwise), so a test that
/// kills a dispatcher mid-delivery sees the retry in seconds.
pub const WEBHOOK_LEASE_ENV: &str = "AIRLOCK_TEST_WEBHOOK_LEASE_MS";

pub fn webhook_lease_ms() -> Option<i64> {
    std::env::var(crate::hostile::WEBHOOK_LEASE_ENV)
        .ok()?
        .parse()
        .ok()
}

/// Tests only: when set, the store's tenant-scoped job reads (`job_of`, `jobs_of`) leave out
/// their `WHERE tenant = …`, so a test can show that row-level security alone keeps another
/// tenant's jobs out of a response on PostgreSQL (and that on SQLite the filter is all there is).
pub const DROP_TENANT_FILTER_ENV: &str = "AIRLOCK_TEST_DROP_TENANT_FILTER";

pub fn tenant_filter_dropped() -> bool {
    std::env::var_os(crate::hostile::DROP_TENANT_FILTER_ENV).is_some()
}
