//! Landlock: handle every right the ruleset's ABI knows, add no rule, and require full
//! enforcement. With zero rules nothing on the filesystem can be opened, created or executed (from
//! ABI 1), no TCP port can be bound or connected (ABI 4), and the abstract-unix-socket and signal
//! scopes keep the worker from reaching processes outside its domain (ABI 6).
//!
//! The ruleset's ABI is the kernel's, capped by the policy's `max_abi` and by [`LATEST_ABI`]; the
//! policy's `min_abi` is the floor below which no job runs. What a lower ABI lacks is listed by
//! [`not_covered`], with the layer that still stops it.

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetStatus,
    Scope, ABI,
};

use crate::policy::{LandlockPolicy, LATEST_ABI};

/// The kernel's landlock ABI version, 0 when landlock is unavailable.
pub fn kernel_abi() -> u8 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the VERSION flag only
    // returns the ABI number (or an error); it reads and writes no memory and creates no fd.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u8::try_from(abi.max(0)).unwrap_or(u8::MAX)
}

/// The ABI the worker's ruleset is built for on a kernel offering `kernel`: the kernel's, capped
/// by the policy's `max_abi` and by the newest this build knows.
pub fn ruleset_abi(kernel: u8, policy: &LandlockPolicy) -> u8 {
    kernel
        .min(policy.max_abi.unwrap_or(LATEST_ABI))
        .min(LATEST_ABI)
}

/// One landlock right or scope the worker's ruleset handles from some ABI on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Right {
    /// The name used in reports and `doctor` (`sandbox.landlock_missing`).
    pub name: &'static str,
    /// The first ABI that has it.
    pub abi: u8,
    /// What still stops the same thing on a kernel without it.
    pub still_stopped_by: &'static str,
}

/// Every right and scope added after ABI 1, in ABI order. ABI 1's file rights (execute, read,
/// write, create and remove anything) are the floor; with zero rules they already refuse every
/// path. ABI 7 and 8 add logging and thread-sync flags, no rights.
pub const RIGHTS_AFTER_ABI_1: [Right; 8] = [
    Right {
        name: "fs.refer",
        abi: 2,
        still_stopped_by: "landlock ABI 1 refuses every rename and link outright; seccomp refuses the calls",
    },
    Right {
        name: "fs.truncate",
        abi: 3,
        still_stopped_by: "seccomp refuses truncate and ftruncate; outputs are opened by the parent",
    },
    Right {
        name: "net.bind_tcp",
        abi: 4,
        still_stopped_by: "seccomp refuses socket and bind; the empty network namespace has no interface up",
    },
    Right {
        name: "net.connect_tcp",
        abi: 4,
        still_stopped_by: "seccomp refuses socket and connect; the empty network namespace has no route",
    },
    Right {
        name: "fs.ioctl_dev",
        abi: 5,
        still_stopped_by: "seccomp refuses ioctl; no device can be opened (ABI 1)",
    },
    Right {
        name: "scope.abstract_unix_socket",
        abi: 6,
        still_stopped_by: "seccomp refuses socket and connect; abstract sockets belong to the network namespace, which is empty",
    },
    Right {
        name: "scope.signal",
        abi: 6,
        still_stopped_by: "seccomp allows tgkill only to the worker itself with SIGABRT; kill is refused",
    },
    Right {
        name: "fs.resolve_unix",
        abi: 9,
        still_stopped_by: "seccomp refuses socket and connect",
    },
];

/// The rights and scopes a ruleset built for `abi` lacks, against the newest this build knows.
pub fn not_covered(abi: u8) -> impl Iterator<Item = &'static Right> {
    RIGHTS_AFTER_ABI_1.iter().filter(move |r| r.abi > abi)
}

/// Restrict this thread (the worker's only one) with an empty, fully enforced ruleset for
/// [`ruleset_abi`]. Returns that ABI.
pub fn restrict(policy: &LandlockPolicy) -> Result<u8, String> {
    let kernel = kernel_abi();
    let used = ruleset_abi(kernel, policy);
    if used < policy.min_abi {
        return Err(format!(
            "the kernel offers landlock ABI {kernel}; the policy requires {}",
            policy.min_abi
        ));
    }
    let abi = ABI::from(i32::from(used));
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| e.to_string())?;
    // An empty set of rights is an error to the landlock crate: below ABI 4 there are no network
    // rights and below 6 no scopes.
    if !AccessNet::from_all(abi).is_empty() {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(|e| e.to_string())?;
    }
    if !Scope::from_all(abi).is_empty() {
        ruleset = ruleset
            .scope(Scope::from_all(abi))
            .map_err(|e| e.to_string())?;
    }
    let status = ruleset
        .create()
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(format!(
            "ruleset is {:?}, not fully enforced",
            status.ruleset
        ));
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rights_table_matches_the_landlock_crate() {
        for abi in 1..=LATEST_ABI {
            let a = ABI::from(i32::from(abi));
            let has = |name: &str| !not_covered(abi).any(|r| r.name == name);
            assert_eq!(
                has("fs.refer"),
                AccessFs::from_all(a).contains(AccessFs::Refer)
            );
            assert_eq!(
                has("fs.truncate"),
                AccessFs::from_all(a).contains(AccessFs::Truncate)
            );
            assert_eq!(
                has("fs.ioctl_dev"),
                AccessFs::from_all(a).contains(AccessFs::IoctlDev)
            );
            assert_eq!(
                has("fs.resolve_unix"),
                AccessFs::from_all(a).contains(AccessFs::ResolveUnix)
            );
            assert_eq!(
                has("net.bind_tcp"),
                AccessNet::from_all(a).contains(AccessNet::BindTcp)
            );
            assert_eq!(
                has("net.connect_tcp"),
                AccessNet::from_all(a).contains(AccessNet::ConnectTcp)
            );
            assert_eq!(
                has("scope.abstract_unix_socket"),
                Scope::from_all(a).contains(Scope::AbstractUnixSocket)
            );
            assert_eq!(
                has("scope.signal"),
                Scope::from_all(a).contains(Scope::Signal)
            );
        }
        assert_eq!(not_covered(LATEST_ABI).count(), 0);
        assert_eq!(not_covered(1).count(), RIGHTS_AFTER_ABI_1.len());
    }

    #[test]
    fn the_ruleset_abi_is_capped() {
        let policy = |max_abi| LandlockPolicy {
            min_abi: 1,
            max_abi,
        };
        assert_eq!(ruleset_abi(7, &policy(None)), 7);
        assert_eq!(ruleset_abi(7, &policy(Some(3))), 3);
        assert_eq!(ruleset_abi(2, &policy(Some(3))), 2);
        assert_eq!(ruleset_abi(12, &policy(None)), LATEST_ABI);
    }
}
