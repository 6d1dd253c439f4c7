//! Worker side: take the fds of the worker contract.

use std::fs::File;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::spawn::{REJECTS_FD, REPORT_FD};

/// The worker's files, owned.
#[derive(Debug)]
pub struct WorkerFds {
    pub input: File,
    pub output: File,
    pub report: File,
    pub rejects: File,
}

#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("worker fd {fd} is not open; the worker must be started by the supervisor")]
    NotOpen { fd: RawFd },
    #[error("worker fds were already taken")]
    AlreadyTaken,
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Take fds 0, 1, 3 and 4. Fails if any is not open, or if called twice.
pub fn take() -> Result<WorkerFds, FdError> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(FdError::AlreadyTaken);
    }
    for fd in [0, 1, REPORT_FD, REJECTS_FD] {
        // SAFETY: the borrow lives only for this fcntl call, which is valid on any integer: a
        // closed fd gives EBADF, which is the answer we want.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if rustix::io::fcntl_getfd(borrowed).is_err() {
            return Err(FdError::NotOpen { fd });
        }
    }
    // SAFETY: each fd was just checked to be open; the TAKEN flag makes this the only place that
    // ever takes ownership of them, and nothing else in the worker uses fds 0, 1, 3 or 4 by number
    // (std's stdin/stdout handles are never used by the worker).
    let owned = |fd| unsafe { File::from_raw_fd(fd) };
    Ok(WorkerFds {
        input: owned(0),
        output: owned(1),
        report: owned(REPORT_FD),
        rejects: owned(REJECTS_FD),
    })
}
