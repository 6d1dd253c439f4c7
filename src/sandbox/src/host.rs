//! What this host offers, for `airlock doctor` and the pre-flight check before a job.

use serde::Serialize;

use crate::policy::{Requirement, SandboxPolicy};
use crate::{landlock, seccomp};

#[derive(Debug, Clone, Serialize)]
pub struct HostSupport {
    pub landlock_abi: u8,
    pub seccomp: bool,
    pub user_namespaces: bool,
    pub net_namespaces: bool,
    pub close_range: bool,
}

impl HostSupport {
    pub fn probe() -> Self {
        let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let unprivileged = std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
            .map(|s| s.trim() != "0")
            .unwrap_or(true);
        HostSupport {
            landlock_abi: landlock::kernel_abi(),
            seccomp: seccomp::supported(),
            user_namespaces: max_userns > 0 && unprivileged,
            net_namespaces: std::path::Path::new("/proc/self/ns/net").exists(),
            close_range: close_range_supported(),
        }
    }

    /// Why the policy cannot run here, if it cannot.
    pub fn problems(&self, policy: &SandboxPolicy) -> Vec<String> {
        let mut problems = Vec::new();
        let min = policy.layers.landlock.min_abi;
        if self.landlock_abi < min {
            problems.push(format!(
                "landlock ABI {} is below the required {min} (Linux 6.12+, landlock enabled in the LSM list)",
                self.landlock_abi
            ));
        }
        if !self.seccomp {
            problems.push("seccomp filters are not available (CONFIG_SECCOMP_FILTER)".into());
        }
        if !self.close_range {
            problems.push("close_range is not available (Linux 5.9+)".into());
        }
        let ns_required = policy.layers.layers.namespaces == Requirement::Required;
        if ns_required && !(self.user_namespaces && self.net_namespaces) {
            problems.push(
                "user and network namespaces are required but unavailable; allow them, or mark namespaces optional in policies/sandbox.toml".into(),
            );
        }
        problems
    }
}

fn close_range_supported() -> bool {
    // SAFETY: closes fds in [u32::MAX - 1, u32::MAX], which no process can hold (RLIMIT_NOFILE is
    // far below), so nothing is closed; only ENOSYS vs success is of interest.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, u32::MAX - 1, u32::MAX, 0u32) };
    rc == 0
}
