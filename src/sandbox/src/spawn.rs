//! Parent side: start a worker with an exact fd map and nothing else.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rustix::io::fcntl_dupfd_cloexec;

/// The files a worker gets, by their fd in the worker.
#[derive(Debug)]
pub struct WorkerIo {
    /// fd 0: the input, opened read-only.
    pub input: OwnedFd,
    /// fd 1: the clean CSV, opened write-only.
    pub output: OwnedFd,
    /// fd 2: diagnostics, the write end of a pipe the parent reads with a cap. Never the parent's
    /// own stderr: that can be a terminal (keystrokes to read) or the supervisor's log.
    pub diagnostics: OwnedFd,
    /// fd 3: the JSON report, opened write-only.
    pub report: OwnedFd,
    /// fd 4: the rejects CSV, opened write-only.
    pub rejects: OwnedFd,
}

/// The fd numbers of the worker contract.
pub const REPORT_FD: i32 = 3;
pub const REJECTS_FD: i32 = 4;
/// Parent-side copies are moved at or above this, clear of 0..=4, before the fork.
const HIGH_FD: i32 = 10;

/// Start `program args…` as a worker: environment cleared, fds 0–4 from `io`, nothing
/// inherited, and `PR_SET_PDEATHSIG(SIGKILL)`: it is killed when the thread that started it dies,
/// so the caller must wait for it on that same thread (as `airlock process` and the supervisor
/// do). Every other fd of the parent is close-on-exec (Rust opens them so), and the
/// worker closes anything above 4 again before it reads a byte.
pub fn spawn(program: &Path, args: &[&OsStr], io: WorkerIo) -> std::io::Result<Child> {
    // Duplicates above HIGH_FD cannot collide with the targets 3 and 4 in the child.
    let report = fcntl_dupfd_cloexec(&io.report, HIGH_FD)?;
    let rejects = fcntl_dupfd_cloexec(&io.rejects, HIGH_FD)?;
    let (report_fd, rejects_fd) = (report.as_raw_fd(), rejects.as_raw_fd());
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::from(io.input))
        .stdout(Stdio::from(io.output))
        .stderr(Stdio::from(io.diagnostics));
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed. It calls dup2, prctl and getppid only (dup2 on two fds that `report` and
    // `rejects` keep open in the parent until `spawn` returns), and it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for (from, to) in [(report_fd, REPORT_FD), (rejects_fd, REJECTS_FD)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The worker dies with the thread that started it, even by SIGKILL: it never
            // outlives its job. (The signal survives exec, the user namespace and dropping
            // capabilities; only a set-uid exec would clear it.)
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would send the signal.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop((report, rejects));
    child
}

/// How a worker ended, with what the kernel measured of it.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub status: std::process::ExitStatus,
    /// Peak resident set size, in bytes (`ru_maxrss`).
    pub max_rss_bytes: u64,
    /// CPU time used, user plus system.
    pub cpu: std::time::Duration,
}

/// Reap `child` with `wait4`, which also says what it used: the parent classifies failures from
/// these observations, never from what the worker claims.
pub fn wait_measured(child: Child) -> std::io::Result<Ended> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is a plain C struct for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own unreaped child (`Child` never reaps on its own, and it is
        // consumed here so nothing else can wait for it); both pointers are to live locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    drop(child);
    let time = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(Ended {
        status: std::process::ExitStatus::from_raw(status),
        max_rss_bytes: (usage.ru_maxrss.max(0) as u64).saturating_mul(1024),
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
    })
}
