//! What the parent concludes from a worker, using only what it observed itself: how the process
//! ended (signal, exit status, CPU time and peak memory from `wait4`), its own host check, the
//! bytes it counted and hashed in the output files, and a report it reads with a size cap and
//! checks against the plan. Nothing the worker says about itself decides a failure class.

use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use airlock_report::Rejection;
use airlock_report::{Code, Limits, Report, Status};
use airlock_sandbox::host::HostSupport;
use airlock_sandbox::policy::SandboxPolicy;
use airlock_sandbox::spawn::Ended;

use crate::worker;

/// The smallest cap on a worker's report; plans with many columns or issues get more
/// ([`report_cap`]).
pub const REPORT_CAP: u64 = 8 * 1024 * 1024;

/// The largest report the parent reads for a plan: room for every header name and issue at their
/// longest, JSON-escaped, plus the rest.
pub fn report_cap(limits: &Limits) -> u64 {
    let per_text = 2 * TEXT_CAP as u64 + 64;
    let texts = (limits.max_columns as u64).saturating_add(limits.max_issues as u64);
    REPORT_CAP.max((1 << 20) + texts.saturating_mul(per_text))
}
/// Longest header name and issue message a report may carry (the engine shortens names to 1024
/// bytes plus an ellipsis; its messages are far shorter).
const TEXT_CAP: usize = airlock_report::HEADER_NAME_IN_REPORT + 4;

/// Signal numbers on Linux (all architectures Airlock supports agree on these).
mod signal {
    pub const SIGABRT: i32 = 6;
    pub const SIGKILL: i32 = 9;
    pub const SIGXCPU: i32 = 24;
    pub const SIGXFSZ: i32 = 25;
    pub const SIGSYS: i32 = 31;
}

/// What the parent knows of the run that the worker cannot forge.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    pub ended: Ended,
    /// The parent killed it at the wall-clock deadline.
    pub timed_out: bool,
    pub wall_limit: Duration,
    pub cpu_limit: Duration,
    pub memory_limit: u64,
}

/// Map how the worker ended to a failure, or `None` when it exited 0.
pub fn classify(o: &Observed, policy: &SandboxPolicy) -> Option<Rejection> {
    if o.timed_out {
        return Some(Rejection::new(
            Code::Timeout,
            format!(
                "the worker ran past the plan's wall-clock limit of {}s and was killed",
                o.wall_limit.as_secs()
            ),
        ));
    }
    let status = o.ended.status;
    let used_cpu = o.ended.cpu + Duration::from_millis(200) >= o.cpu_limit;
    // A worker that used at least half its memory limit and then aborted or was killed ran out
    // of memory; a small one that aborts did so on its own.
    let used_memory = o.ended.max_rss_bytes.saturating_mul(2) >= o.memory_limit;
    let (code, message) = match (status.code(), status.signal()) {
        (Some(c), _) if c == i32::from(worker::EXIT_DONE) => return None,
        (Some(c), _) if c == i32::from(worker::EXIT_SANDBOX) => {
            let problems = HostSupport::probe().problems(policy);
            if problems.is_empty() {
                (
                    Code::WorkerCrashed,
                    "the worker said it could not lock down, but this host supports every layer"
                        .to_string(),
                )
            } else {
                (
                    Code::SandboxUnavailable,
                    format!("this host cannot run the sandbox ({})", problems.join("; ")),
                )
            }
        }
        (Some(c), _) if c == i32::from(worker::EXIT_PANIC) => {
            (Code::WorkerCrashed, "the worker panicked".to_string())
        }
        (Some(c), _) => (
            Code::WorkerCrashed,
            format!("the worker exited with status {c}"),
        ),
        (None, Some(signal::SIGSYS)) => (
            Code::SandboxViolation,
            "the worker made a system call the sandbox forbids and was killed".to_string(),
        ),
        (None, Some(signal::SIGXCPU | signal::SIGKILL)) if used_cpu => (
            Code::CpuLimit,
            format!(
                "the worker used up the plan's CPU time ({}s)",
                o.cpu_limit.as_secs()
            ),
        ),
        (None, Some(signal::SIGABRT | signal::SIGKILL)) if used_memory => (
            Code::MemoryLimit,
            format!(
                "the worker ran out of its memory limit (peak {} MiB of {} MiB)",
                o.ended.max_rss_bytes >> 20,
                o.memory_limit >> 20
            ),
        ),
        (None, Some(signal::SIGXFSZ)) => (
            Code::WorkerCrashed,
            "the worker wrote more than the output bound for this input and was stopped"
                .to_string(),
        ),
        (None, Some(sig)) => (
            Code::WorkerCrashed,
            format!("the worker died of signal {sig}"),
        ),
        (None, None) => (
            Code::WorkerCrashed,
            "the worker ended in an unknown way".to_string(),
        ),
    };
    Some(Rejection::new(code, message))
}

/// What the parent measured of one result file it kept (discarded ones are not measured).
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub bytes: u64,
    pub sha256: String,
}

/// Read the worker's report: capped and strictly parsed.
pub fn read_report(mut file: File, cap: u64) -> Result<Report, String> {
    file.rewind().map_err(|e| format!("cannot rewind: {e}"))?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(format!("larger than {cap} bytes"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON ({e})"))
}

/// Check a parsed report against the plan and against what the parent measured, and fill in the
/// hashes the parent computed. `Err` says why the report is refused.
pub fn check_report(
    report: &mut Report,
    limits: &Limits,
    input_bytes: u64,
    output: Option<&Measured>,
    rejects: Option<&Measured>,
) -> Result<(), String> {
    match (report.status, &report.rejection) {
        (Status::Accepted, None) => {}
        (Status::Rejected, Some(r)) if r.code.is_rejection() => {}
        _ => return Err("status and rejection disagree".into()),
    }
    if report.input.bytes != input_bytes {
        return Err(format!(
            "it says it read {} bytes of {input_bytes}",
            report.input.bytes
        ));
    }
    if report.header.len() > limits.max_columns {
        return Err(format!(
            "its header has {} names; the plan allows {} columns",
            report.header.len(),
            limits.max_columns
        ));
    }
    if report.header.iter().any(|n| n.len() > TEXT_CAP) {
        return Err("a header name is longer than the engine ever reports".into());
    }
    if report.issues.len() > limits.max_issues {
        return Err(format!(
            "it lists {} issues; the plan caps the list at {}",
            report.issues.len(),
            limits.max_issues
        ));
    }
    let row_level = |c: Code| {
        matches!(
            c,
            Code::RaggedRow
                | Code::BlankRow
                | Code::FormulaEscaped
                | Code::TypeError
                | Code::ConstraintError
                | Code::UniqueError
        )
    };
    if report
        .issues
        .iter()
        .any(|i| !row_level(i.code) || i.message.len() > TEXT_CAP)
        || report.issue_counts.keys().any(|c| !row_level(*c))
    {
        return Err("an issue has a code or message no engine writes".into());
    }
    check_counts(report, limits)?;
    check_strings(report)?;
    check_sizes(report, input_bytes, output, rejects)
}

/// Row counts that add up, agree with the per-code counts and respect the plan.
fn check_counts(report: &Report, limits: &Limits) -> Result<(), String> {
    let rows = &report.rows;
    let count = |c: Code| report.issue_counts.get(&c).copied().unwrap_or(0);
    if rows
        .accepted
        .checked_add(rows.rejected)
        .and_then(|n| n.checked_add(rows.blank))
        != Some(rows.total)
        || rows.accepted + rows.rejected > limits.max_rows
        // Every rejected row is ragged or broke the schema (at least one issue each).
        || count(Code::RaggedRow) > rows.rejected
        || rows.rejected
            > count(Code::RaggedRow)
                + count(Code::TypeError)
                + count(Code::ConstraintError)
                + count(Code::UniqueError)
        || count(Code::BlankRow) != rows.blank
    {
        return Err("its row counts do not add up".into());
    }
    if report.rejects.rows_written > rows.rejected {
        return Err("it wrote more rejected rows than it counted".into());
    }
    let judged = rows.accepted + rows.rejected;
    if report.status == Status::Accepted
        && rows.rejected as f64 > limits.max_rejected_ratio * judged as f64
    {
        return Err("it accepted a file with more rejected rows than the plan allows".into());
    }
    Ok(())
}

/// Sizes within the bounds for this input, equal to what the parent measured; the parent's own
/// hashes replace the worker's.
fn check_sizes(
    report: &mut Report,
    input_bytes: u64,
    output: Option<&Measured>,
    rejects: Option<&Measured>,
) -> Result<(), String> {
    let (out_cap, rej_cap) = (
        airlock_report::output_bound(input_bytes),
        airlock_report::rejects_bound(input_bytes),
    );
    if report.output.bytes > out_cap || report.rejects.bytes > rej_cap {
        return Err("its output sizes exceed the bound for this input".into());
    }
    if let Some(m) = output {
        if m.bytes != report.output.bytes || m.bytes > out_cap {
            return Err(format!(
                "it reported {} output bytes but wrote {}",
                report.output.bytes, m.bytes
            ));
        }
        report.output.sha256 = m.sha256.clone();
    }
    if let Some(m) = rejects {
        if m.bytes != report.rejects.bytes || m.bytes > rej_cap {
            return Err(format!(
                "it reported {} rejects bytes but wrote {}",
                report.rejects.bytes, m.bytes
            ));
        }
        if m.sha256 != report.rejects.sha256 {
            return Err("the rejects file's sha256 is not the one it reported".into());
        }
    }
    Ok(())
}

/// The report's sandbox section against what the parent knows: the landlock ABI the worker
/// claims must be the one its ruleset is built for on this kernel under `policy` (when landlock
/// is in force), and the rights that ABI lacks are the parent's own list, whatever the worker
/// wrote there.
pub fn check_sandbox(
    report: &mut Report,
    policy: &SandboxPolicy,
    kernel_abi: u8,
) -> Result<(), String> {
    // A worker that read its input locked down first, landlock included (it is never optional).
    let Some(sandbox) = report.sandbox.as_mut() else {
        return Err("the report has no sandbox section".into());
    };
    if !sandbox.enforced.iter().any(|l| l == "landlock") {
        return Err("the report says landlock was not enforced".into());
    }
    let expected = airlock_sandbox::landlock::ruleset_abi(kernel_abi, &policy.layers.landlock);
    if sandbox.landlock_abi != expected {
        return Err(format!(
            "the worker says landlock ABI {}; its ruleset here is built for {expected}",
            sandbox.landlock_abi
        ));
    }
    sandbox.landlock_missing = airlock_sandbox::landlock::not_covered(sandbox.landlock_abi)
        .map(|r| r.name.to_string())
        .collect();
    Ok(())
}

/// The report's schema section against the job's schema: present only with one; its fields are
/// the schema's, in order; its counts and its issues' fields are possible.
pub fn check_schema(
    report: &Report,
    schema: Option<&airlock_engine::schema::Schema>,
) -> Result<(), String> {
    let names = |s: &airlock_engine::schema::Schema| -> Vec<String> {
        s.fields.iter().map(|f| f.name.clone()).collect()
    };
    match (&report.schema, schema) {
        (None, None) => {}
        (Some(_), None) => return Err("a schema section, for a job without a schema".into()),
        (None, Some(_)) if report.rejection.is_none() => {
            return Err("no schema section, for a job with a schema".into())
        }
        (None, Some(_)) => {}
        (Some(summary), Some(schema)) => {
            let want = names(schema);
            let got: Vec<&String> = summary.fields.iter().map(|f| &f.name).collect();
            if got.len() != want.len() || got.iter().zip(&want).any(|(a, b)| *a != b) {
                return Err("the schema section's fields are not the schema's".into());
            }
            let total = report.rows.total;
            if summary.fields.iter().any(|f| {
                f.errors > total
                    || f.missing > total
                    || f.column
                        .is_some_and(|c| c == 0 || c > report.header.len() as u64)
            }) {
                return Err("the schema section's counts are impossible".into());
            }
            if summary.header_mapping.len() > report.header.len()
                || summary.header_mapping.iter().any(|(label, field)| {
                    label.len() > 4 * airlock_report::HEADER_NAME_IN_REPORT || !want.contains(field)
                })
            {
                return Err("the schema section's header mapping is not the schema's".into());
            }
        }
    }
    let schema_codes = [Code::TypeError, Code::ConstraintError, Code::UniqueError];
    if schema.is_none()
        && schema_codes
            .iter()
            .any(|c| report.issue_counts.contains_key(c))
    {
        return Err("schema issues, for a job without a schema".into());
    }
    let fields = schema.map(names).unwrap_or_default();
    if report
        .issues
        .iter()
        .any(|i| i.field.as_ref().is_some_and(|f| !fields.contains(f)))
    {
        return Err("an issue names a field the schema does not have".into());
    }
    Ok(())
}

/// Every other string the report carries is short, and from a known set where there is one.
fn check_strings(report: &Report) -> Result<(), String> {
    let short = |s: &str, max: usize| s.len() <= max;
    let sha = |s: &str| s.is_empty() || (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let mime = |s: &str| short(s, 128) && s.bytes().all(|b| b.is_ascii_graphic());
    let layers = |v: &[String]| {
        v.len() <= 8
            && v.iter()
                .all(|l| airlock_sandbox::lockdown::LAYERS.contains(&l.as_str()))
    };
    let rejection_ok = report
        .rejection
        .as_ref()
        .is_none_or(|r| short(&r.message, TEXT_CAP) && r.detected_type.as_deref().is_none_or(mime));
    let dialect_ok = report.dialect.as_ref().is_none_or(|d| {
        short(&d.delimiter, 4)
            && short(&d.quote, 4)
            && ["lf", "crlf", "cr", "mixed", "none"].contains(&d.line_terminator.as_str())
    });
    let sandbox_ok = report
        .sandbox
        .as_ref()
        .is_none_or(|s| layers(&s.enforced) && layers(&s.missing));
    let input = &report.input;
    let input_ok = sha(&input.sha256)
        && mime(&input.detected_type)
        && input.encoding.as_deref().is_none_or(|e| short(e, 64));
    if rejection_ok
        && dialect_ok
        && sandbox_ok
        && input_ok
        && sha(&report.output.sha256)
        && sha(&report.rejects.sha256)
    {
        Ok(())
    } else {
        Err("a text field is longer, or other, than the engine ever writes".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_sandbox::spawn::Ended;
    use std::process::ExitStatus;

    fn observed(status: ExitStatus, timed_out: bool, rss: u64, cpu_s: u64) -> Observed {
        Observed {
            ended: Ended {
                status,
                max_rss_bytes: rss,
                cpu: Duration::from_secs(cpu_s),
            },
            timed_out,
            wall_limit: Duration::from_secs(10),
            cpu_limit: Duration::from_secs(5),
            memory_limit: 512 << 20,
        }
    }

    fn code_of(status: ExitStatus, timed_out: bool, rss: u64, cpu_s: u64) -> Option<Code> {
        let policy = crate::policy::Policies::load(None).unwrap().sandbox;
        classify(&observed(status, timed_out, rss, cpu_s), &policy).map(|r| r.code)
    }

    fn signalled(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn failure_classes_come_from_what_the_parent_observed() {
        let small = 4 << 20;
        let big = 400 << 20;
        assert_eq!(code_of(exited(0), false, small, 0), None);
        assert_eq!(
            code_of(signalled(signal::SIGSYS), false, small, 0),
            Some(Code::SandboxViolation)
        );
        assert_eq!(
            code_of(signalled(signal::SIGXCPU), false, small, 5),
            Some(Code::CpuLimit)
        );
        // SIGXCPU without the CPU time to show for it cannot be the kernel's limit.
        assert_eq!(
            code_of(signalled(signal::SIGXCPU), false, small, 0),
            Some(Code::WorkerCrashed)
        );
        assert_eq!(
            code_of(signalled(signal::SIGABRT), false, big, 0),
            Some(Code::MemoryLimit)
        );
        // A small worker that aborts did not run out of memory: it crashed.
        assert_eq!(
            code_of(signalled(signal::SIGABRT), false, small, 0),
            Some(Code::WorkerCrashed)
        );
        assert_eq!(
            code_of(signalled(signal::SIGKILL), true, small, 0),
            Some(Code::Timeout)
        );
        assert_eq!(
            code_of(signalled(signal::SIGXFSZ), false, small, 0),
            Some(Code::WorkerCrashed)
        );
        assert_eq!(
            code_of(exited(101), false, small, 0),
            Some(Code::WorkerCrashed)
        );
        // This host runs the sandbox, so a worker's claim that it could not is a crash.
        assert_eq!(
            code_of(exited(77), false, small, 0),
            Some(Code::WorkerCrashed)
        );
        assert_eq!(
            code_of(signalled(11), false, small, 0),
            Some(Code::WorkerCrashed)
        );
    }

    fn write(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file
    }

    fn good() -> Report {
        let mut input = &b"a,b\n1,2\n3\n"[..];
        let (mut out, mut rej) = (Vec::new(), Vec::new());
        let options = airlock_engine::Options {
            limits: Limits {
                max_rejected_ratio: 1.0,
                ..Limits::default()
            },
            ..Default::default()
        };
        let report = airlock_engine::process(&mut input, &mut out, &mut rej, &options).unwrap();
        assert_eq!(report.status, Status::Accepted);
        report
    }

    fn check(report: &mut Report) -> Result<(), String> {
        let limits = Limits {
            max_rejected_ratio: 1.0,
            ..Limits::default()
        };
        check_report(report, &limits, 10, None, None)
    }

    #[test]
    fn the_landlock_abi_is_the_parents_to_decide() {
        let policy = crate::policy::Policies::load(None).unwrap().sandbox;
        let claim = |abi: u8, missing: Vec<String>| {
            let mut r = good();
            r.sandbox = Some(airlock_report::SandboxSummary {
                enforced: vec!["landlock".into()],
                missing: vec![],
                landlock_abi: abi,
                landlock_missing: missing,
            });
            check_sandbox(&mut r, &policy, 7).map(|()| r.sandbox.unwrap().landlock_missing)
        };
        // On an ABI 7 kernel the ruleset is built for 7: it lacks only what ABI 9 brings, and
        // the worker's own list is replaced.
        assert_eq!(
            claim(7, vec!["nothing".into()]).unwrap(),
            ["fs.resolve_unix"]
        );
        assert!(claim(5, vec![]).unwrap_err().contains("built for 7"));
        let mut r = good();
        r.sandbox = Some(airlock_report::SandboxSummary {
            enforced: vec![],
            missing: vec![],
            landlock_abi: 9,
            landlock_missing: vec![],
        });
        assert!(check_sandbox(&mut r, &policy, 7)
            .unwrap_err()
            .contains("not enforced"));
        r.sandbox = None;
        assert!(check_sandbox(&mut r, &policy, 7)
            .unwrap_err()
            .contains("no sandbox"));
        let mut capped = policy.clone();
        capped.layers.landlock.max_abi = Some(3);
        let mut r = good();
        r.sandbox = Some(airlock_report::SandboxSummary {
            enforced: vec!["landlock".into()],
            missing: vec![],
            landlock_abi: 3,
            landlock_missing: vec![],
        });
        check_sandbox(&mut r, &capped, 7).unwrap();
        let missing = r.sandbox.unwrap().landlock_missing;
        assert!(
            missing.contains(&"net.connect_tcp".to_string())
                && !missing.contains(&"fs.truncate".to_string()),
            "{missing:?}"
        );
    }

    #[test]
    fn reports_are_capped_and_strictly_parsed() {
        assert!(
            read_report(write(&vec![b' '; REPORT_CAP as usize + 10]), REPORT_CAP)
                .unwrap_err()
                .contains("larger")
        );
        assert!(read_report(write(b"{\"status\": \"accepted\"}"), REPORT_CAP).is_err());
        let json = serde_json::to_vec(&good()).unwrap();
        assert!(read_report(write(&json), REPORT_CAP).is_ok());
        // A wide plan gets a larger cap: every name at its longest still fits.
        let wide = Limits {
            max_columns: 65_536,
            ..Limits::default()
        };
        assert!(report_cap(&wide) > 65_536 * 2 * 1024);
    }

    #[test]
    fn reports_that_contradict_themselves_or_the_plan_are_refused() {
        let mut r = good();
        assert_eq!(check(&mut r), Ok(()));
        let mut r = good();
        r.rejection = Some(Rejection::new(Code::Empty, "x"));
        assert!(check(&mut r).unwrap_err().contains("disagree"));
        let mut r = good();
        r.header = (0..=1024).map(|i| i.to_string()).collect();
        assert!(check(&mut r).unwrap_err().contains("header"));
        let mut r = good();
        r.rows.accepted += 1;
        assert!(check(&mut r).unwrap_err().contains("add up"));
        let mut r = good();
        r.rows.rejected += 1;
        r.rows.total += 1;
        assert!(check(&mut r).unwrap_err().contains("add up"));
        let mut r = good();
        r.issues = vec![r.issues[0].clone(); 101];
        assert!(check(&mut r).unwrap_err().contains("issues"));
        let mut r = good();
        r.issues[0].code = Code::SandboxViolation;
        assert!(check(&mut r).unwrap_err().contains("code"));
        let mut r = good();
        r.rejection = None;
        r.sandbox = Some(airlock_report::SandboxSummary {
            enforced: vec![],
            missing: vec![String::new(); 9],
            landlock_abi: 0,
            landlock_missing: Vec::new(),
        });
        assert!(check(&mut r).unwrap_err().contains("text field"));
        let mut r = good();
        r.input.detected_type = "A".repeat(4096);
        assert!(check(&mut r).unwrap_err().contains("text field"));
        let mut r = good();
        r.output.sha256 = "zz".into();
        assert!(check(&mut r).unwrap_err().contains("text field"));
        let mut r = good();
        let strict = Limits::default();
        assert!(check_report(&mut r, &strict, 10, None, None)
            .unwrap_err()
            .contains("more rejected rows"));
        let mut r = good();
        r.input.bytes = 11;
        assert!(check(&mut r).unwrap_err().contains("read 11"));
        let mut r = good();
        r.output.bytes = airlock_report::output_bound(10) + 1;
        assert!(check(&mut r).unwrap_err().contains("bound"));
        let mut r = good();
        let measured = Measured {
            bytes: r.output.bytes + 1,
            sha256: String::new(),
        };
        let limits = Limits {
            max_rejected_ratio: 1.0,
            ..Limits::default()
        };
        assert!(check_report(&mut r, &limits, 10, Some(&measured), None)
            .unwrap_err()
            .contains("output bytes"));
        let mut r = good();
        let measured = Measured {
            bytes: r.rejects.bytes,
            sha256: "0".repeat(64),
        };
        assert!(check_report(&mut r, &limits, 10, None, Some(&measured))
            .unwrap_err()
            .contains("sha256"));
    }
}
