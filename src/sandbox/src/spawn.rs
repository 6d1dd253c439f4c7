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
    /// fd 1: the clean CSV.
    pub output: OwnedFd,
    /// fd 3: the JSON report.
    pub report: OwnedFd,
    /// fd 4: the rejects CSV.
    pub rejects: OwnedFd,
}

/// The fd numbers of the worker contract.
pub const REPORT_FD: i32 = 3;
pub const REJECTS_FD: i32 = 4;
/// Parent-side copies are moved at or above this, clear of 0..=4, before the fork.
const HIGH_FD: i32 = 10;

/// Start `program args…` as a worker: environment cleared, stdin/stdout/fd 3/fd 4 from `io`,
/// stderr inherited. Every other fd of the parent is close-on-exec (Rust opens them so), and the
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
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed. It calls dup2 only, on two fds that `report` and `rejects` keep open in
    // the parent until `spawn` returns, and it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for (from, to) in [(report_fd, REPORT_FD), (rejects_fd, REJECTS_FD)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop((report, rejects));
    child
}
