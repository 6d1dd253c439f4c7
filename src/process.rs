//! `airlock process`: one file through the sandboxed worker, no services needed.
//!
//! The parent never parses CSV. It decides `too_large` from `fstat` alone, hands the file to a
//! fresh worker process, waits with a wall-clock deadline, and treats what comes back — exit
//! status, report, outputs — as untrusted: the report is size-capped and strictly parsed, and the
//! outputs are published (renamed into place) only when the worker finished cleanly.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{IsTerminal, Read, Seek};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_engine::report::Rejection;
use airlock_engine::{Code, Report, Status};
use anyhow::Context;
use tempfile::NamedTempFile;

use airlock_sandbox::host::HostSupport;
use airlock_sandbox::policy::SandboxPolicy;

use crate::policy::Plan;
use crate::worker::{self, WorkerConfig};

/// The largest report the parent will read from a worker.
pub const REPORT_CAP: u64 = 8 * 1024 * 1024;
/// Show a progress bar for inputs at least this large, when stderr is a terminal.
const PROGRESS_MIN_BYTES: u64 = 16 * 1024 * 1024;
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Where the three results go; `None` means not kept.
#[derive(Debug, Default)]
pub struct Destinations {
    pub output: Option<PathBuf>,
    pub rejects: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

/// A usage problem: the CLI exits 2 with this message.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file ({kind}); give the path of an uploaded file")]
    NotRegular { path: PathBuf, kind: &'static str },
}

/// Open `path` for the worker without blocking on FIFOs or following into devices.
pub fn open_input(path: &Path) -> Result<(File, u64), UsageError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)
        .map_err(|source| UsageError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| UsageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err(UsageError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok((file, meta.len()))
}

/// The outcome of one run, before it is written anywhere.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
}

impl Outcome {
    /// Exit status of `airlock process`: 0 accepted, 1 rejected, 70 failed.
    pub fn exit_code(&self) -> u8 {
        match self.report.status {
            Status::Accepted => 0,
            Status::Rejected => 1,
            Status::Failed => 70,
        }
    }
}

/// Run one file through a worker and publish the results.
pub fn run(
    input: File,
    size: u64,
    plan: &Plan,
    sandbox: &SandboxPolicy,
    delimiter: Option<u8>,
    dest: &Destinations,
) -> anyhow::Result<Outcome> {
    let problems = HostSupport::probe().problems(sandbox);
    if !problems.is_empty() {
        let rejection = Rejection::new(
            Code::SandboxUnavailable,
            format!(
                "this host cannot run the sandbox ({}); see `airlock doctor`",
                problems.join("; ")
            ),
        );
        let report = Report::without_input(Status::Failed, rejection, size);
        write_report(&report, dest.report.as_deref())?;
        return Ok(Outcome { report });
    }
    if size > plan.limits.max_bytes {
        let rejection = Rejection::new(
            Code::TooLarge,
            format!(
                "the file is {size} bytes; plan {:?} allows {} (decided from the size, nothing was read)",
                plan.name, plan.limits.max_bytes
            ),
        )
        .with_limit(plan.limits.max_bytes);
        let report = Report::without_input(Status::Rejected, rejection, size);
        write_report(&report, dest.report.as_deref())?;
        return Ok(Outcome { report });
    }
    let output = Staged::new(dest.output.as_deref())?;
    let rejects = Staged::new(dest.rejects.as_deref())?;
    let report_file = tempfile::tempfile().context("creating the report temp file")?;
    let mut config = WorkerConfig::new(plan, sandbox, delimiter);
    let output_reader = output.reader()?;
    config.parent_hashes_output = output_reader.is_some();
    let config = serde_json::to_string(&config)?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let io = airlock_sandbox::spawn::WorkerIo {
        input: OwnedFd::from(input.try_clone()?),
        output: output.fd()?,
        report: OwnedFd::from(report_file.try_clone()?),
        rejects: rejects.fd()?,
    };
    let started = Instant::now();
    let args = [OsStr::new(worker::ARG), OsStr::new(&config)];
    let child = airlock_sandbox::spawn::spawn(Path::new("/proc/self/exe"), &args, io)
        .with_context(|| format!("starting the worker ({})", exe.display()))?;
    // Hash the input here, on the other core, while the worker parses it. `read_at` leaves the
    // file offset (shared with the worker's fd 0, and read for progress) alone.
    let hasher = {
        let file = input.try_clone()?;
        std::thread::spawn(move || sha256_file(&file, size))
    };
    let deadline = Duration::from_secs(plan.worker.wall_seconds);
    // And the clean output, following the worker as it writes.
    let worker_done = Arc::new(AtomicBool::new(false));
    let output_hasher = output_reader.map(|file| {
        let done = worker_done.clone();
        std::thread::spawn(move || sha256_following(&file, &done))
    });
    let waited = wait(child, deadline, &input, size);
    worker_done.store(true, Ordering::Release);
    let (status, timed_out) = waited?;
    let input_sha256 = hasher
        .join()
        .map_err(|_| anyhow::anyhow!("the input hashing thread panicked"))?
        .context("hashing the input")?;
    let mut report = match classify(status, timed_out, deadline) {
        Some(failure) => Report::without_input(Status::Failed, failure, size),
        None => match read_report(report_file) {
            Ok(report) if report.input.bytes == size => report,
            Ok(report) => Report::without_input(
                Status::Failed,
                Rejection::new(
                    Code::WorkerCrashed,
                    format!(
                        "the worker says it read {} bytes of {size}",
                        report.input.bytes
                    ),
                ),
                size,
            ),
            Err(why) => Report::without_input(
                Status::Failed,
                Rejection::new(
                    Code::WorkerCrashed,
                    format!("the worker's report was refused: {why}"),
                ),
                size,
            ),
        },
    };
    report.input.sha256 = input_sha256;
    if let Some(h) = output_hasher {
        let (sha, bytes) = h
            .join()
            .map_err(|_| anyhow::anyhow!("the output hashing thread panicked"))?
            .context("hashing the output")?;
        if report.status != Status::Failed {
            if bytes != report.output.bytes {
                report = Report::without_input(
                    Status::Failed,
                    Rejection::new(
                        Code::WorkerCrashed,
                        format!(
                            "the worker reported {} output bytes but wrote {bytes}",
                            report.output.bytes
                        ),
                    ),
                    size,
                );
                report.input.sha256.clear();
            } else {
                report.output.sha256 = sha;
            }
        }
    }
    if report.status == Status::Accepted {
        output.publish()?;
    }
    if report.status != Status::Failed {
        rejects.publish()?;
    }
    write_report(&report, dest.report.as_deref())?;
    if let Some(sandbox) = report.sandbox.as_ref().filter(|s| !s.missing.is_empty()) {
        tracing::warn!(missing = ?sandbox.missing, "worker ran without optional sandbox layers");
    }
    tracing::info!(
        status = ?report.status,
        code = report.rejection.as_ref().map(|r| r.code.as_str()),
        bytes = size,
        millis = started.elapsed().as_millis() as u64,
        "processed"
    );
    Ok(Outcome { report })
}

/// sha256 of the first `size` bytes of `file`, hex, read with `pread` so the shared offset stays
/// the worker's.
fn sha256_file(file: &File, size: u64) -> std::io::Result<String> {
    use sha2::Digest;
    use std::os::unix::fs::FileExt;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// sha256 and length of a file another process is still appending to: read behind the writer
/// until `done` is set, then to the end.
fn sha256_following(file: &File, done: &AtomicBool) -> std::io::Result<(String, u64)> {
    use sha2::Digest;
    use std::os::unix::fs::FileExt;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let finished = done.load(Ordering::Acquire);
        let n = file.read_at(&mut buf, offset)?;
        if n > 0 {
            hasher.update(&buf[..n]);
            offset += n as u64;
        } else if finished {
            break;
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok((hex::encode(hasher.finalize()), offset))
}

/// A result file written under a temporary name beside its destination, renamed into place only
/// when it is good. Without a destination it is `/dev/null`.
enum Staged {
    Discard,
    File { temp: NamedTempFile, dest: PathBuf },
}

impl Staged {
    fn new(dest: Option<&Path>) -> anyhow::Result<Self> {
        let Some(dest) = dest else {
            return Ok(Staged::Discard);
        };
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".airlock-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        Ok(Staged::File {
            temp,
            dest: dest.to_path_buf(),
        })
    }

    /// A separate read handle on the staged file, to hash it while the worker writes it.
    fn reader(&self) -> anyhow::Result<Option<File>> {
        Ok(match self {
            Staged::Discard => None,
            Staged::File { temp, .. } => Some(temp.reopen()?),
        })
    }

    fn fd(&self) -> anyhow::Result<OwnedFd> {
        Ok(match self {
            Staged::Discard => OwnedFd::from(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")
                    .context("opening /dev/null")?,
            ),
            Staged::File { temp, .. } => OwnedFd::from(temp.as_file().try_clone()?),
        })
    }

    fn publish(self) -> anyhow::Result<()> {
        if let Staged::File { temp, dest } = self {
            temp.as_file().sync_all().ok();
            temp.persist(&dest)
                .with_context(|| format!("writing {}", dest.display()))?;
        }
        Ok(())
    }
}

/// Wait for the worker, killing it at the deadline. Shows progress on a terminal.
fn wait(
    mut child: Child,
    deadline: Duration,
    input: &File,
    size: u64,
) -> anyhow::Result<(ExitStatus, bool)> {
    let started = Instant::now();
    let pid = rustix::process::Pid::from_child(&child);
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .context("pidfd_open on the worker")?;
    let bar = (size >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bar:30} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            timed_out = true;
            child.kill().ok();
            break;
        }
        let slice = left.min(POLL_INTERVAL);
        let timeout = rustix::time::Timespec {
            tv_sec: slice.as_secs() as i64,
            tv_nsec: i64::from(slice.subsec_nanos()),
        };
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(n) if n > 0 => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).context("waiting for the worker"),
        }
        if let Some(bar) = &bar {
            // The worker's fd 0 shares this file description, so its offset is the progress.
            let mut shared = input;
            if let Ok(pos) = shared.stream_position() {
                bar.set_position(pos);
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let status = child.wait().context("reaping the worker")?;
    Ok((status, timed_out))
}

/// Map how the worker ended to a failure, or `None` when it finished normally.
fn classify(status: ExitStatus, timed_out: bool, deadline: Duration) -> Option<Rejection> {
    if timed_out {
        return Some(Rejection::new(
            Code::Timeout,
            format!(
                "the worker ran past the plan's wall-clock limit of {}s and was killed",
                deadline.as_secs()
            ),
        ));
    }
    let (code, message) = match (status.code(), status.signal()) {
        (Some(c), _) if c == i32::from(worker::EXIT_DONE) => return None,
        (Some(c), _) if c == i32::from(worker::EXIT_PANIC) => {
            (Code::WorkerCrashed, "the worker panicked".to_string())
        }
        (Some(c), _) if c == i32::from(worker::EXIT_SANDBOX) => (
            Code::SandboxUnavailable,
            "the worker could not establish its sandbox and read nothing (see its log line)"
                .to_string(),
        ),
        (Some(c), _) => (
            Code::WorkerCrashed,
            format!("the worker exited with status {c}"),
        ),
        (None, Some(libc_signal::SIGSYS)) => (
            Code::SandboxViolation,
            "the worker made a system call the sandbox forbids and was killed".to_string(),
        ),
        (None, Some(libc_signal::SIGXCPU)) => (
            Code::CpuLimit,
            "the worker used up the plan's CPU time".to_string(),
        ),
        (None, Some(libc_signal::SIGABRT | libc_signal::SIGKILL)) => (
            Code::MemoryLimit,
            "the worker ran out of its memory limit".to_string(),
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

/// Signal numbers on Linux (all architectures Airlock supports agree on these).
mod libc_signal {
    pub const SIGABRT: i32 = 6;
    pub const SIGKILL: i32 = 9;
    pub const SIGXCPU: i32 = 24;
    pub const SIGSYS: i32 = 31;
}

/// Read the worker's report: capped, strictly parsed, and checked for consistency.
fn read_report(mut file: File) -> Result<Report, String> {
    file.rewind().map_err(|e| format!("cannot rewind: {e}"))?;
    let mut bytes = Vec::new();
    file.take(REPORT_CAP + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > REPORT_CAP {
        return Err(format!("larger than {REPORT_CAP} bytes"));
    }
    let report: Report =
        serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON ({e})"))?;
    match (report.status, &report.rejection) {
        (Status::Accepted, None) => Ok(report),
        (Status::Rejected, Some(r)) if r.code.is_rejection() => Ok(report),
        _ => Err("status and rejection disagree".into()),
    }
}

/// Write the report to `dest` (atomically) or to stdout.
fn write_report(report: &Report, dest: Option<&Path>) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    match dest {
        Some(path) => {
            let staged = Staged::new(Some(path))?;
            if let Staged::File { temp, .. } = &staged {
                std::io::Write::write_all(&mut temp.as_file(), &json)?;
            }
            staged.publish()
        }
        None => {
            std::io::Write::write_all(&mut std::io::stdout().lock(), &json)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signalled(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn code_of(status: ExitStatus, timed_out: bool) -> Option<Code> {
        classify(status, timed_out, Duration::from_secs(1)).map(|r| r.code)
    }

    #[test]
    fn worker_endings_map_to_the_failure_codes() {
        assert_eq!(code_of(exited(0), false), None);
        assert_eq!(
            code_of(signalled(libc_signal::SIGSYS), false),
            Some(Code::SandboxViolation)
        );
        assert_eq!(
            code_of(signalled(libc_signal::SIGXCPU), false),
            Some(Code::CpuLimit)
        );
        assert_eq!(
            code_of(signalled(libc_signal::SIGABRT), false),
            Some(Code::MemoryLimit)
        );
        assert_eq!(
            code_of(signalled(libc_signal::SIGKILL), true),
            Some(Code::Timeout)
        );
        assert_eq!(code_of(exited(101), false), Some(Code::WorkerCrashed));
        assert_eq!(code_of(exited(77), false), Some(Code::SandboxUnavailable));
        assert_eq!(code_of(signalled(11), false), Some(Code::WorkerCrashed));
    }

    #[test]
    fn reports_that_contradict_themselves_are_refused() {
        let mut file = tempfile::tempfile().unwrap();
        let report = Report::without_input(Status::Accepted, Rejection::new(Code::Empty, "x"), 0);
        std::io::Write::write_all(&mut file, &serde_json::to_vec(&report).unwrap()).unwrap();
        assert!(read_report(file).is_err());
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![b' '; REPORT_CAP as usize + 10]).unwrap();
        assert!(read_report(file).unwrap_err().contains("larger"));
    }
}
