//! The lockdown: a flat, ordered list of small steps, each returning `Result`, seccomp last. The
//! worker calls [`Lockdown::apply`] before it reads a byte; any error ends the worker with exit
//! 77, except a layer the policy marks optional, which is reported missing. The parent calls that
//! `sandbox_unavailable` only when its own host check then fails too (else `worker_crashed`).

use std::io;
use std::io::Write;

use rustix::process::{setrlimit, Resource, Rlimit};
use rustix::thread::{CapabilitySet, CapabilitySets};
use serde::{Deserialize, Serialize};

use crate::policy::{Requirement, SandboxPolicy};
use crate::{landlock, seccomp};

/// Limits from the job's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimits {
    pub address_space_bytes: u64,
    pub cpu_seconds: u64,
    pub file_size_bytes: u64,
}

/// Which layers are in force, for the report and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockdownReport {
    pub enforced: Vec<String>,
    pub missing: Vec<String>,
    pub landlock_abi: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    #[error("the sandbox policy handed to the worker is invalid: {0}")]
    Policy(String),
    #[error("compiling the seccomp filter failed: {0}")]
    SeccompCompile(String),
    #[error("closing inherited file descriptors failed")]
    CloseFds(#[source] io::Error),
    #[error("setting rlimit {resource} failed")]
    Rlimit {
        resource: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("creating user and network namespaces failed")]
    Namespaces(#[source] io::Error),
    #[error("dropping capabilities failed")]
    Capabilities(#[source] io::Error),
    #[error("setting no_new_privs failed")]
    NoNewPrivs(#[source] io::Error),
    #[error("landlock could not be fully enforced: {0}")]
    Landlock(String),
    #[error("applying the seccomp filter failed: {0}")]
    SeccompApply(String),
}

/// Every layer name a [`LockdownReport`] can list, in lockdown order (the parent refuses any
/// other).
pub const LAYERS: [&str; 7] = [
    "close_fds",
    "rlimits",
    "namespaces",
    "capabilities",
    "no_new_privs",
    "landlock",
    "seccomp",
];

/// Fds the worker keeps: input, output, diagnostics, report, rejects.
pub const KEEP_FDS: u32 = 5;
/// The panic hook's exit status (`worker_crashed` in the parent).
pub const PANIC_EXIT: i32 = 101;

/// The lockdown for one worker.
#[derive(Debug)]
pub struct Lockdown<'a> {
    policy: &'a SandboxPolicy,
    rlimits: Rlimits,
    seccomp: bool,
    namespaces: bool,
    landlock: bool,
    panic_hook: bool,
    tgkill_pin: bool,
    tsync: bool,
}

impl<'a> Lockdown<'a> {
    pub fn new(policy: &'a SandboxPolicy, rlimits: Rlimits) -> Self {
        Lockdown {
            policy,
            rlimits,
            seccomp: true,
            namespaces: true,
            landlock: true,
            panic_hook: true,
            tgkill_pin: true,
            tsync: true,
        }
    }

    /// Leave seccomp out. Only for the escape suite's regression check, which shows what the
    /// other layers stop on their own; the worker never calls this.
    #[doc(hidden)]
    pub fn without_seccomp_for_tests(mut self) -> Self {
        self.seccomp = false;
        self
    }

    /// Leave the namespaces out (escape suite only; see [`Self::without_seccomp_for_tests`]).
    #[doc(hidden)]
    pub fn without_namespaces_for_tests(mut self) -> Self {
        self.namespaces = false;
        self
    }

    /// Leave landlock out (escape suite only): the control that shows which denials are
    /// landlock's.
    #[doc(hidden)]
    pub fn without_landlock_for_tests(mut self) -> Self {
        self.landlock = false;
        self
    }

    /// Keep Rust's default panic hook (escape suite only): the control that shows the payload
    /// check can fail.
    #[doc(hidden)]
    pub fn without_panic_hook_for_tests(mut self) -> Self {
        self.panic_hook = false;
        self
    }

    /// Install the seccomp filter on the calling thread only (escape suite only): the control
    /// that shows TSYNC is what puts a thread started during the lockdown under the filter.
    #[doc(hidden)]
    pub fn without_tsync_for_tests(mut self) -> Self {
        self.tsync = false;
        self
    }

    /// Leave `tgkill` unpinned from the worker's own pid (escape suite only): the control that
    /// shows the pin is what keeps SIGABRT from other processes below landlock ABI 6.
    #[doc(hidden)]
    pub fn without_tgkill_pin_for_tests(mut self) -> Self {
        self.tgkill_pin = false;
        self
    }

    /// Every step, in order. Nothing may run between this and reading the input except the
    /// engine itself.
    pub fn apply(self) -> Result<LockdownReport, LockdownError> {
        self.apply_with(|| ()).map(|(report, ())| report)
    }

    /// [`Lockdown::apply`], running `start_threads` after every layer but the last two: the
    /// threads it starts inherit the namespaces, the empty capability sets, no_new_privs and the
    /// landlock domain from this thread, then `RLIMIT_NPROC` drops to 0 (no more threads or
    /// processes) and the seccomp filter is installed on every thread at once (TSYNC). So the
    /// allowlist needs no `clone`, and no thread ever runs outside the sandbox once the worker
    /// reads a byte. `start_threads` must return only once its threads have made the calls a
    /// starting thread makes. Every thread shares the one malloc arena (`M_ARENA_MAX` = 1), so no
    /// thread maps an arena of its own (64 MiB of address space) or needs `mprotect` to grow it.
    pub fn apply_with<T>(
        self,
        start_threads: impl FnOnce() -> T,
    ) -> Result<(LockdownReport, T), LockdownError> {
        let mut report = LockdownReport::default();
        if self.panic_hook {
            install_panic_hook();
        }
        self.policy.validate().map_err(LockdownError::Policy)?;
        let own_pid = self.tgkill_pin.then(std::process::id);
        let filter = seccomp::compile(&self.policy.seccomp, own_pid)
            .map_err(LockdownError::SeccompCompile)?;
        close_fds().map_err(LockdownError::CloseFds)?;
        report.enforced.push("close_fds".into());
        set_rlimits(&self.rlimits)?;
        report.enforced.push("rlimits".into());
        if self.namespaces {
            match unshare_namespaces() {
                Ok(()) => report.enforced.push("namespaces".into()),
                Err(_) if self.policy.layers.layers.namespaces == Requirement::Optional => {
                    report.missing.push("namespaces".into())
                }
                Err(e) => return Err(LockdownError::Namespaces(e)),
            }
        }
        drop_capabilities().map_err(LockdownError::Capabilities)?;
        report.enforced.push("capabilities".into());
        rustix::thread::set_no_new_privs(true).map_err(|e| LockdownError::NoNewPrivs(e.into()))?;
        report.enforced.push("no_new_privs".into());
        if self.landlock {
            report.landlock_abi = landlock::restrict(&self.policy.layers.landlock)
                .map_err(LockdownError::Landlock)?;
            report.enforced.push("landlock".into());
        }
        one_malloc_arena();
        let threads = start_threads();
        let last = || -> Result<(), LockdownError> {
            setrlimit(Resource::Nproc, fixed(0)).map_err(|e| LockdownError::Rlimit {
                resource: "RLIMIT_NPROC",
                source: e.into(),
            })?;
            if self.seccomp {
                seccomp::apply(&filter, self.tsync).map_err(LockdownError::SeccompApply)?;
            }
            Ok(())
        };
        if let Err(e) = last() {
            // The worker exits on this error; stopping its threads first (a join, their exit)
            // could need calls a partly installed filter refuses.
            std::mem::forget(threads);
            return Err(e);
        }
        if self.seccomp {
            report.enforced.push("seccomp".into());
        }
        Ok((report, threads))
    }
}

/// A panic says only that it happened (the payload could quote input) and exits; no unwinding
/// machinery, no backtrace (which would open files).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|_| {
        let _ = io::stderr().write_all(b"airlock worker: panicked\n");
        std::process::exit(PANIC_EXIT);
    }));
}

fn close_fds() -> io::Result<()> {
    // SAFETY: close_range closes fds KEEP_FDS and above; nothing in the worker holds those (the
    // parent passes only 0..=4, and no file has been opened yet), so no live owner is invalidated.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, KEEP_FDS, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A soft and hard limit of `n`.
fn fixed(n: u64) -> Rlimit {
    Rlimit {
        current: Some(n),
        maximum: Some(n),
    }
}

/// Every thread allocates from the main arena (grown with `brk`, large blocks mapped with
/// `mmap`): a second arena would reserve 64 MiB of address space and grow with `mprotect`.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a glibc allocator parameter; it takes no pointers, and the
    // arena count may change at any time (it affects only arenas created later).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Every limit but `RLIMIT_NPROC`, which drops to 0 once the worker's threads have started.
fn set_rlimits(limits: &Rlimits) -> Result<(), LockdownError> {
    let steps = [
        ("RLIMIT_AS", Resource::As, fixed(limits.address_space_bytes)),
        // The soft limit sends SIGXCPU (cpu_limit); the hard one a second later is a backstop.
        (
            "RLIMIT_CPU",
            Resource::Cpu,
            Rlimit {
                current: Some(limits.cpu_seconds),
                maximum: Some(limits.cpu_seconds + 1),
            },
        ),
        (
            "RLIMIT_FSIZE",
            Resource::Fsize,
            fixed(limits.file_size_bytes),
        ),
        // One fd above the kept five, for the landlock ruleset (closed again before seccomp,
        // which then forbids every call that could create an fd).
        (
            "RLIMIT_NOFILE",
            Resource::Nofile,
            fixed(u64::from(KEEP_FDS) + 1),
        ),
        ("RLIMIT_CORE", Resource::Core, fixed(0)),
        ("RLIMIT_MEMLOCK", Resource::Memlock, fixed(0)),
    ];
    for (resource, which, value) in steps {
        setrlimit(which, value).map_err(|e| LockdownError::Rlimit {
            resource,
            source: e.into(),
        })?;
    }
    Ok(())
}

fn unshare_namespaces() -> io::Result<()> {
    use rustix::thread::UnshareFlags as F;
    let flags = F::NEWUSER | F::NEWNET | F::NEWIPC | F::NEWUTS | F::NEWNS;
    // SAFETY: the worker is single-threaded here (it was just exec'd; its helper thread starts
    // only after landlock, later in the lockdown), so no
    // other thread can observe the change; FILES is not among the flags, so fd tables are shared
    // with nobody.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

fn drop_capabilities() -> io::Result<()> {
    for cap in CapabilitySet::all().iter() {
        // Only what is there: dropping needs CAP_SETPCAP, which a worker without a new user
        // namespace (namespaces optional) under a runtime that dropped every capability lacks —
        // and there the bounding set is already empty.
        match rustix::thread::capability_is_in_bounding_set(cap) {
            Ok(false) | Err(rustix::io::Errno::INVAL) => continue,
            Ok(true) => {}
            Err(e) => return Err(e.into()),
        }
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // EINVAL: a capability this kernel does not know.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}
