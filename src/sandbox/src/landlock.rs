//! Landlock: handle every right the kernel knows, add no rule, and require full enforcement. With
//! zero rules nothing on the filesystem can be opened, created or executed, no TCP port can be
//! bound or connected, and the abstract-unix-socket and signal scopes keep the worker from
//! reaching processes outside its domain.

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetStatus,
    Scope, ABI,
};

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

/// Restrict this thread (the worker's only one) with an empty, fully enforced ruleset.
pub fn restrict(min_abi: u8) -> Result<u8, String> {
    let kernel = kernel_abi();
    if kernel < min_abi {
        return Err(format!(
            "the kernel offers landlock ABI {kernel}; the policy requires {min_abi}"
        ));
    }
    // Everything the best ABI both this kernel and the landlock crate know about.
    let abi = ABI::from(i32::from(kernel));
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(format!(
            "ruleset is {:?}, not fully enforced",
            status.ruleset
        ));
    }
    Ok(kernel)
}
