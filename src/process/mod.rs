//! `airlock process`: one file through the sandboxed worker, no services needed.
//!
//! The parent never parses CSV. It decides `too_large` from `fstat` alone, hands the file to a
//! fresh worker process, waits with a wall-clock deadline, and treats everything that comes back
//! as hostile (`verify`): the failure class comes from what the parent observed (signal, CPU
//! time, peak memory, its own host check), the report is size-capped, strictly parsed and checked
//! against the plan, and the output and rejects files are counted and hashed by the parent as the
//! worker writes them, and must stay within a bound of the input size. Results are published
//! (`dest`) only when all of that holds.

mod dest;
mod verify;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{IsTerminal, Read, Seek};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_report::Rejection;
use airlock_report::{Code, Report, Status};
use anyhow::Context;

use airlock_sandbox::host::HostSupport;
use airlock_sandbox::policy::SandboxPolicy;
use airlock_sandbox::spawn::Ended;

use crate::policy::Plan;
use crate::worker::{self, WorkerConfig};

use dest::Staged;
pub use dest::{Dest, Destinations};
pub use verify::report_cap;
use verify::{Measured, Observed};

/// Show a progress bar for inputs at least this large, when stderr is a terminal.
const PROGRESS_MIN_BYTES: u64 = 16 * 1024 * 1024;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The most of the worker's diagnostics (its fd 2) the parent reads; it then closes the pipe.
const DIAGNOSTICS_CAP: usize = 8 * 1024;

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
    #[error("{path} is a symbolic link; give the file itself, or pass --follow-symlinks")]
    Symlink { path: PathBuf },
    #[error("{path} exists and is {kind}, not a regular file; refusing to replace it (use - for standard output)")]
    Destination { path: PathBuf, kind: &'static str },
    #[error("only one of --output, --rejects and --report can be - (standard output); the report goes there when --report is not given")]
    TwoOnStdout,
    #[error("{path} is given for two results; give each of --output, --rejects and --report its own file")]
    SameDestination { path: PathBuf },
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// Open `path` for the worker without blocking on FIFOs, following into devices, or (unless
/// `follow_symlinks`) following a symbolic link.
pub fn open_input(path: &Path, follow_symlinks: bool) -> Result<(File, u64), UsageError> {
    let mut flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    if !follow_symlinks {
        flags |= rustix::fs::OFlags::NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                UsageError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                UsageError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let meta = file.metadata().map_err(|source| UsageError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(UsageError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta.file_type()),
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

/// The program and arguments the worker is started with: this binary with the hidden worker
/// argument, or, in builds with the `test-seam` feature and `AIRLOCK_TEST_HOSTILE_WORKER` set, a
/// stand-in that misbehaves on purpose (`crate::hostile`).
fn worker_args(config: &str) -> Vec<std::ffi::OsString> {
    #[cfg(feature = "test-seam")]
    if let Some(mode) = std::env::var_os(crate::hostile::ENV) {
        return vec![crate::hostile::ARG.into(), mode, config.into()];
    }
    vec![worker::ARG.into(), config.into()]
}

/// The worker's executable: this binary. In `test-seam` builds, `AIRLOCK_TEST_WORKER_EXE` names
/// another (tests that run a supervisor inside the test harness point it at `airlock`).
fn worker_exe() -> std::path::PathBuf {
    #[cfg(feature = "test-seam")]
    if let Some(exe) = std::env::var_os(crate::hostile::WORKER_EXE_ENV) {
        return exe.into();
    }
    "/proc/self/exe".into()
}

fn failed(code: Code, message: String, size: u64) -> Report {
    Report::without_input(Status::Failed, Rejection::new(code, message), size)
}

/// Set to stop a running worker: it is killed at the next poll (within 100 ms) and the run ends
/// with an error, publishing nothing. The supervisor cancels one job when its lease is lost, and
/// all of them when its shutdown grace runs out (a [`Cancel::child`] sees both).
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    own: Arc<AtomicBool>,
    parent: Option<Arc<AtomicBool>>,
}

impl Cancel {
    pub fn cancel(&self) {
        self.own.store(true, Ordering::Release);
    }

    /// A token cancelled by itself or by `self`.
    pub fn child(&self) -> Cancel {
        Cancel {
            own: Arc::default(),
            parent: Some(self.own.clone()),
        }
    }

    fn is_cancelled(&self) -> bool {
        self.own.load(Ordering::Acquire)
            || self
                .parent
                .as_ref()
                .is_some_and(|p| p.load(Ordering::Acquire))
    }
}

/// Run one file through a worker and publish the results; the worker is stopped early when
/// `cancel` is set (pass `&Cancel::default()` for a run nobody cancels).
pub fn run(
    input: File,
    size: u64,
    plan: &Plan,
    sandbox: &SandboxPolicy,
    reading: Reading,
    dest: &Destinations,
    cancel: &Cancel,
) -> anyhow::Result<Outcome> {
    let Reading { delimiter, schema } = reading;
    dest.check()?;
    let started = Instant::now();
    let problems = HostSupport::probe().problems(sandbox);
    let report = if !problems.is_empty() {
        failed(
            Code::SandboxUnavailable,
            format!(
                "this host cannot run the sandbox ({}); see `airlock doctor`",
                problems.join("; ")
            ),
            size,
        )
    } else if size > plan.limits.max_bytes {
        let rejection = Rejection::new(
            Code::TooLarge,
            format!(
                "the file is {size} bytes; plan {:?} allows {} (decided from the size, nothing was read)",
                plan.name, plan.limits.max_bytes
            ),
        )
        .with_limit(plan.limits.max_bytes);
        Report::without_input(Status::Rejected, rejection, size)
    } else {
        let output = Staged::new(&dest.output)?;
        let rejects = Staged::new(&dest.rejects)?;
        let worker = Worker {
            plan,
            sandbox,
            delimiter,
            schema,
            cancel,
        };
        let report = worker.run(&input, size, &output, &rejects)?;
        if report.status == Status::Accepted {
            output.publish()?;
        }
        if report.status != Status::Failed {
            rejects.publish()?;
        }
        report
    };
    write_report(&report, &dest.report)?;
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

/// How to read one file: the delimiter (else sniffed) and the schema to check rows against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading<'a> {
    pub delimiter: Option<u8>,
    pub schema: Option<&'a crate::schema::JobSchema>,
}

/// How to run one worker.
struct Worker<'a> {
    plan: &'a Plan,
    sandbox: &'a SandboxPolicy,
    delimiter: Option<u8>,
    schema: Option<&'a crate::schema::JobSchema>,
    cancel: &'a Cancel,
}

impl Worker<'_> {
    /// Start a worker on `input`, watch it, and build the report from what was observed.
    fn run(
        &self,
        input: &File,
        size: u64,
        output: &Staged,
        rejects: &Staged,
    ) -> anyhow::Result<Report> {
        let (plan, sandbox) = (self.plan, self.sandbox);
        let report_file = tempfile::tempfile().context("creating the report temp file")?;
        let mut config = WorkerConfig::new(plan, sandbox, self.delimiter, size);
        let output_reader = output.reader()?.map(|f| (f, output.synced_on_publish()));
        let rejects_reader = rejects.reader()?.map(|f| (f, rejects.synced_on_publish()));
        config.parent_hashes_output = output_reader.is_some();
        config.schema = self.schema.map(|s| s.json.clone());
        let config = serde_json::to_string(&config)?;
        let (diag_read, diag_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .context("creating the worker's diagnostics pipe")?;
        let io = airlock_sandbox::spawn::WorkerIo {
            input: OwnedFd::from(input.try_clone()?),
            output: output.fd()?,
            diagnostics: diag_write,
            report: dest::write_only(&report_file)?,
            rejects: rejects.fd()?,
        };
        let args = worker_args(&config);
        let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        // Everything fallible happens before the spawn: once started, the worker is always waited
        // for (and killed on any error) in `wait`.
        let to_hash = input.try_clone()?;
        let child = airlock_sandbox::spawn::spawn(&worker_exe(), &args, io)
            .context("starting the worker")?;
        let diagnostics = std::thread::spawn(move || read_capped(File::from(diag_read)));
        // Hash the input here, on the other core, while the worker parses it, then the outputs,
        // following the worker as it writes. One thread: the parent keeps to the core the worker
        // does not use, instead of taking a share of the worker's.
        let worker_done = Arc::new(AtomicBool::new(false));
        let done = worker_done.clone();
        let hasher = std::thread::spawn(move || {
            // The worker is the job's critical path (with a schema, two threads of it), and this
            // thread's work can lag and catch up: at a lower priority it takes what the worker
            // leaves of the cores instead of preempting it. Best effort: nothing else depends
            // on it.
            let tid = rustix::thread::gettid();
            let _ = rustix::process::setpriority_process(Some(tid), HASHER_NICE);
            let input = sha256_file(&to_hash, size)?;
            let [output, rejects] = sha256_following([output_reader, rejects_reader], &done)?;
            Ok::<_, std::io::Error>((input, output, rejects))
        });
        let deadline = Duration::from_secs(plan.worker.wall_seconds);
        // Checked on every poll: a worker writing past a bound is stopped at once, so it cannot fill
        // the disk up to its file-size rlimit.
        let report_bound = verify::report_cap(&plan.limits);
        let over_bound = || {
            let past = |len: Option<u64>, bound: u64| len.is_some_and(|n| n > bound);
            past(report_file.metadata().ok().map(|m| m.len()), report_bound)
                || past(output.len(), airlock_report::output_bound(size))
                || past(rejects.len(), airlock_report::rejects_bound(size))
        };
        let waited = wait(child, deadline, input, size, self.cancel, &over_bound);
        worker_done.store(true, Ordering::Release);
        // Wakes the hashing thread if it is waiting for more output: the worker is gone.
        hasher.thread().unpark();
        let (ended, stop) = waited?;
        if stop == Stop::Cancelled {
            anyhow::bail!("the worker was stopped: the supervisor is shutting down");
        }
        let (input_measured, output_measured, rejects_measured) = hasher
            .join()
            .map_err(|_| anyhow::anyhow!("the hashing thread panicked"))?
            .context("hashing the input or a result file")?;
        let input_sha256 = input_measured.sha256;
        let measured = (output_measured, rejects_measured);
        log_diagnostics(&diagnostics.join().unwrap_or_default());
        let observed = Observed {
            ended,
            timed_out: stop == Stop::Deadline,
            wall_limit: deadline,
            cpu_limit: Duration::from_secs(plan.worker.cpu_seconds),
            memory_limit: plan.worker.memory_bytes,
        };
        let mut report = if stop == Stop::OverBound {
            failed(
                Code::WorkerCrashed,
                "the parent stopped the worker: a result file passed its output bound for this input"
                    .into(),
                size,
            )
        } else {
            self.judge(&observed, report_file, size, measured)
        };
        report.input.sha256 = input_sha256;
        Ok(report)
    }

    /// The report of a worker that was not stopped by the parent: a failure class from how it
    /// ended, or its own report once it passes every check.
    fn judge(
        &self,
        observed: &Observed,
        report_file: File,
        size: u64,
        (output, rejects): (Option<Measured>, Option<Measured>),
    ) -> Report {
        if let Some(failure) = verify::classify(observed, self.sandbox) {
            return Report::without_input(Status::Failed, failure, size);
        }
        let limits = &self.plan.limits;
        let checked =
            verify::read_report(report_file, verify::report_cap(limits)).and_then(|mut r| {
                verify::check_report(&mut r, limits, size, output.as_ref(), rejects.as_ref())?;
                let kernel_abi = airlock_sandbox::landlock::kernel_abi();
                verify::check_sandbox(&mut r, self.sandbox, kernel_abi)?;
                verify::check_schema(&r, self.schema.map(|s| &*s.compiled))?;
                Ok(r)
            });
        checked.unwrap_or_else(|why| {
            failed(
                Code::WorkerCrashed,
                format!("the worker's report was refused: {why}"),
                size,
            )
        })
    }
}

/// The worker's diagnostics: data, escaped onto one line, never raw lines that could pass for the
/// parent's own log.
fn log_diagnostics(diagnostics: &[u8]) {
    if diagnostics.is_empty() {
        return;
    }
    let text: String = String::from_utf8_lossy(diagnostics)
        .chars()
        .flat_map(char::escape_debug)
        .collect();
    tracing::warn!(worker_diagnostics = %text, bytes = diagnostics.len(), "the worker wrote diagnostics");
}

/// Up to [`DIAGNOSTICS_CAP`] bytes of the worker's fd 2; then the pipe is closed, so a worker
/// that writes on gets EPIPE, and the parent never holds more.
fn read_capped(file: File) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = file.take(DIAGNOSTICS_CAP as u64).read_to_end(&mut bytes);
    bytes
}

/// sha256 of the first `size` bytes of `file`, read with `pread` so the shared offset stays the
/// worker's.
fn sha256_file(file: &File, size: u64) -> std::io::Result<Measured> {
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
    Ok(Measured {
        bytes: offset,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The niceness of the parent's hashing thread (the worker's stays at the parent's).
const HASHER_NICE: i32 = 10;

/// How much of a followed file is written back to disk at a time, while the worker writes on.
const EARLY_SYNC_BYTES: u64 = 16 << 20;

/// sha256 and length of files another process is still appending to: read behind the writer
/// until `done` is set, then to the end. A file marked `true` is published with an fsync; it is
/// flushed here every [`EARLY_SYNC_BYTES`] as well, on this thread, so that the final fsync,
/// after the worker, has little left to write (on a 200 MiB output it was 85 ms of the run).
fn sha256_following<const N: usize>(
    files: [Option<(File, bool)>; N],
    done: &AtomicBool,
) -> std::io::Result<[Option<Measured>; N]> {
    use sha2::Digest;
    use std::os::unix::fs::FileExt;
    let mut state =
        files.map(|f| f.map(|(file, sync)| (file, sync, sha2::Sha256::new(), 0u64, 0u64)));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let finished = done.load(Ordering::Acquire);
        let mut read = false;
        for (file, sync, hasher, offset, synced) in state.iter_mut().flatten() {
            let n = file.read_at(&mut buf, *offset)?;
            if n > 0 {
                hasher.update(&buf[..n]);
                *offset += n as u64;
                read = true;
            }
            if *sync && *offset - *synced >= EARLY_SYNC_BYTES {
                // Best effort: the fsync at publish is the one that counts.
                file.sync_data().ok();
                *synced = *offset;
            }
        }
        if finished && !read {
            break;
        }
        if !read {
            // Unparked as soon as the worker is done (a small file is hashed by then).
            std::thread::park_timeout(Duration::from_millis(2));
        }
    }
    Ok(state.map(|s| {
        s.map(|(_, _, hasher, bytes, _)| Measured {
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }))
}

/// Why the parent stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The worker ended by itself.
    Exited,
    /// The parent killed it at the wall-clock deadline.
    Deadline,
    /// The parent killed it because the run was cancelled.
    Cancelled,
    /// The parent killed it for writing past a bound.
    OverBound,
}

/// Wait for the worker, killing it at the deadline or on cancellation. Shows progress on a
/// terminal.
fn wait(
    mut child: Child,
    deadline: Duration,
    input: &File,
    size: u64,
    cancel: &Cancel,
    over_bound: &dyn Fn() -> bool,
) -> anyhow::Result<(Ended, Stop)> {
    let started = Instant::now();
    let pid = rustix::process::Pid::from_child(&child);
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Never leave a worker running unwatched.
            child.kill().ok();
            child.wait().ok();
            return Err(e).context("pidfd_open on the worker");
        }
    };
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
    let mut stop = Stop::Exited;
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        let why = if left.is_zero() {
            Some(Stop::Deadline)
        } else if cancel.is_cancelled() {
            Some(Stop::Cancelled)
        } else if over_bound() {
            Some(Stop::OverBound)
        } else {
            None
        };
        if let Some(why) = why {
            stop = why;
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
            Err(e) => {
                child.kill().ok();
                child.wait().ok();
                return Err(e).context("waiting for the worker");
            }
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
    let ended = airlock_sandbox::spawn::wait_measured(child).context("reaping the worker")?;
    Ok((ended, stop))
}

/// Write the report to its destination, atomically.
fn write_report(report: &Report, dest: &Dest) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    let staged = Staged::new(dest)?;
    staged.write_all(&json)?;
    staged.publish()
}
