//! Seccomp: compile the allowlist from `policies/seccomp.json` early (compiling allocates), apply
//! it last, when nothing else in the lockdown needs a syscall the allowlist would refuse.

use seccompiler::{BpfProgram, TargetArch};

use crate::policy::SeccompPolicy;

/// The compiled filters, in the order they are installed.
#[derive(Debug)]
pub struct Compiled(Vec<BpfProgram>);

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Compile the filters for the worker whose pid is `own_pid` (the caller's): `tgkill` is pinned
/// to it. `None` leaves it unpinned, which only the escape suite's control does.
pub fn compile(policy: &SeccompPolicy, own_pid: Option<u32>) -> Result<Compiled, String> {
    let (allow, enosys) = policy.to_seccompiler_json(own_pid);
    let mut programs = Vec::new();
    for json in std::iter::once(allow).chain(enosys) {
        let mut map =
            seccompiler::compile_from_json(json.as_bytes(), ARCH).map_err(|e| e.to_string())?;
        programs.push(
            map.remove("worker")
                .ok_or("the compiled filter is missing")?,
        );
    }
    Ok(Compiled(programs))
}

/// Install every filter on every thread of the worker at once (TSYNC: a thread the worker
/// started during the lockdown gets the same filters). Requires no_new_privs. `all_threads`
/// false installs them on the calling thread only: the escape suite's control.
pub fn apply(compiled: &Compiled, all_threads: bool) -> Result<(), String> {
    // The ENOSYS filter (if any) first: once the allowlist is in, installing another filter
    // (prctl, seccomp) would be refused. Stacked filters give the same verdicts in either order.
    for program in compiled.0.iter().rev() {
        if all_threads {
            seccompiler::apply_filter_all_threads(program)
        } else {
            seccompiler::apply_filter(program)
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether this kernel offers seccomp filters at all.
pub fn supported() -> bool {
    // Kernels built with CONFIG_SECCOMP_FILTER list the filter count in /proc/self/status.
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp_filters:")))
        .unwrap_or(false)
}
