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
        let landlock = &policy.layers.landlock;
        let used = landlock::ruleset_abi(self.landlock_abi, landlock);
        if used < landlock.min_abi {
            let min = landlock.min_abi;
            problems.push(if self.landlock_abi == 0 {
                format!("landlock is unavailable; the policy requires ABI {min} (Linux 5.13+, with landlock in the LSM list: boot with lsm=landlock,...)")
            } else if used < self.landlock_abi {
                format!("the policy caps landlock at ABI {used} (max_abi) but requires {min}")
            } else {
                format!("landlock ABI {used} is below the policy's min_abi = {min}; lower it, or run a newer kernel")
            });
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

impl HostSupport {
    /// The ABI the worker's landlock ruleset is built for here under `policy`.
    pub fn ruleset_abi(&self, policy: &SandboxPolicy) -> u8 {
        landlock::ruleset_abi(self.landlock_abi, &policy.layers.landlock)
    }
}

fn close_range_supported() -> bool {
    // SAFETY: closes fds in [u32::MAX - 1, u32::MAX], which no process can hold (RLIMIT_NOFILE is
    // far below), so nothing is closed; only ENOSYS vs success is of interest.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, u32::MAX - 1, u32::MAX, 0u32) };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(landlock_abi: u8) -> HostSupport {
        HostSupport {
            landlock_abi,
            seccomp: true,
            user_namespaces: true,
            net_namespaces: true,
            close_range: true,
        }
    }

    #[test]
    fn older_kernels_run_the_default_policy_and_not_the_strict_one() {
        let default = SandboxPolicy::built_in().unwrap();
        let mut strict = default.clone();
        strict.layers.landlock.min_abi = crate::policy::STRICT_MIN_ABI;
        for abi in 1..=5 {
            assert_eq!(
                kernel(abi).problems(&default),
                Vec::<String>::new(),
                "ABI {abi}"
            );
            let problems = kernel(abi).problems(&strict);
            assert!(
                problems.len() == 1 && problems[0].contains("below the policy's min_abi = 6"),
                "{problems:?}"
            );
        }
        assert!(kernel(6).problems(&strict).is_empty());
        assert!(kernel(0).problems(&default)[0].contains("landlock is unavailable"));
    }
}
