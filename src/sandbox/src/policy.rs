//! The sandbox policies: `policies/seccomp.json` (Firecracker style: one justification per entry)
//! and `policies/sandbox.toml` (which layers are required). Loaded in two stages: raw serde types
//! that refuse unknown fields, then validated types that refuse dangerous values.

use serde::{Deserialize, Serialize};

/// The built-in policy texts.
pub const BUILT_IN_SECCOMP: &str = include_str!("../../../policies/seccomp.json");
pub const BUILT_IN_SANDBOX: &str = include_str!("../../../policies/sandbox.toml");

/// The futex operations the worker's two threads use: FUTEX_WAIT, FUTEX_WAKE and
/// FUTEX_WAIT_BITSET, each with FUTEX_PRIVATE_FLAG (glibc's allocator lock, std's Mutex and
/// Condvar).
pub const FUTEX_OPS: [u64; 3] = [128, 129, 137];

/// Syscalls that would let the worker reach outside its box. Never allowed, whatever the policy
/// file says.
pub const FORBIDDEN: &[&str] = &[
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recvfrom",
    "execve",
    "execveat",
    "ptrace",
    "fork",
    "vfork",
    "clone",
    "clone3",
    "open",
    "openat",
    "openat2",
    "creat",
    "unshare",
    "setns",
    "mount",
    "kill",
    "tkill",
    // Below landlock ABI 6 (no signal scope) and ABI 3 (no truncate right), seccomp alone stops
    // these: a policy may never allow them.
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "fcntl",
    "truncate",
    "ftruncate",
    "setuid",
    "setgid",
    "process_vm_readv",
    "process_vm_writev",
    "bpf",
    "perf_event_open",
    "io_uring_setup",
    "userfaultfd",
    "keyctl",
    "mprotect",
    "ioctl",
    "prctl",
    "seccomp",
    "landlock_restrict_self",
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file} does not parse: {message}")]
    Parse { file: &'static str, message: String },
    #[error("{file}: {what}")]
    Invalid { file: &'static str, what: String },
}

// ---- seccomp.json -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    KillProcess,
    KillThread,
    Trap,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    #[default]
    Allow,
    ErrnoEnosys,
}

/// A comparison on one syscall argument, as seccompiler spells it: `"eq"`, `"ne"`, `"lt"`, …
/// or `{"masked_eq": MASK}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArgOp {
    Simple(String),
    Masked { masked_eq: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgCondition {
    pub index: u8,
    #[serde(rename = "type")]
    pub kind: String,
    pub op: ArgOp,
    pub val: u64,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallRule {
    pub syscall: String,
    pub comment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<ArgCondition>>,
    #[serde(default, skip_serializing_if = "is_allow")]
    pub action: RuleAction,
}

fn is_allow(a: &RuleAction) -> bool {
    *a == RuleAction::Allow
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeccomp {
    comment: Option<String>,
    default_action: DefaultAction,
    filter: Vec<SyscallRule>,
}

/// A validated allowlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompPolicy {
    pub default_action: DefaultAction,
    pub rules: Vec<SyscallRule>,
}

impl SeccompPolicy {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        const FILE: &str = "seccomp.json";
        let raw: RawSeccomp = serde_json::from_str(text).map_err(|e| PolicyError::Parse {
            file: FILE,
            message: e.to_string(),
        })?;
        let policy = SeccompPolicy {
            default_action: raw.default_action,
            rules: raw.filter,
        };
        policy
            .validate()
            .map_err(|what| PolicyError::Invalid { file: FILE, what })?;
        Ok(policy)
    }

    /// The semantic checks; also run by the worker on what it was handed.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_action == DefaultAction::Allow {
            return Err("default_action must not be allow: this is an allowlist".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for rule in &self.rules {
            if FORBIDDEN.contains(&rule.syscall.as_str()) {
                return Err(format!(
                    "{:?} must never be allowed in the worker",
                    rule.syscall
                ));
            }
            if rule.comment.trim().is_empty() {
                return Err(format!(
                    "{:?} needs a comment saying why it is allowed",
                    rule.syscall
                ));
            }
            // A call listed more than once is allowed when any entry's conditions hold: each
            // entry must then have conditions (one without would allow every call), and all the
            // same action.
            if !seen.insert(rule.syscall.as_str()) {
                let entries = || self.rules.iter().filter(|r| r.syscall == rule.syscall);
                if entries().any(|r| r.args.as_ref().is_none_or(Vec::is_empty))
                    || entries().any(|r| r.action != rule.action)
                {
                    return Err(format!(
                        "{:?} is listed twice; a call listed more than once needs conditions (args) in every entry, and one action",
                        rule.syscall
                    ));
                }
            }
        }
        self.check_futex()?;
        if !seen.contains("tgkill") {
            return self.check_mmap();
        }
        // tgkill lets abort() raise SIGABRT; any other signal could reach other processes' threads.
        let limited = self
            .rules
            .iter()
            .filter(|r| r.syscall == "tgkill")
            .all(|r| {
                r.args.as_ref().is_some_and(|args| {
                    args.iter().any(|a| {
                        a.index == 2
                            && a.op == ArgOp::Simple("eq".into())
                            && a.val == libc::SIGABRT as u64
                    })
                })
            });
        if !limited {
            return Err("tgkill must be limited to SIGABRT (args index 2 eq 6)".into());
        }
        self.check_mmap()
    }

    /// futex is for the schema helper thread: each entry pins the operation (argument 1) to one
    /// of [`FUTEX_OPS`], so no priority-inheritance, requeue or shared-memory operation is ever
    /// allowed.
    fn check_futex(&self) -> Result<(), String> {
        for futex in self.rules.iter().filter(|r| r.syscall == "futex") {
            let pinned = futex.args.as_ref().is_some_and(|args| {
                args.iter().any(|a| {
                    a.index == 1 && a.op == ArgOp::Simple("eq".into()) && FUTEX_OPS.contains(&a.val)
                })
            });
            if !pinned {
                return Err(format!(
                    "each futex entry must pin its operation (args index 1 eq) to one of {FUTEX_OPS:?}"
                ));
            }
        }
        Ok(())
    }

    /// Whether the allowlist lets the worker run its schema helper thread: it kills the whole
    /// process on a violation (with kill_thread, the other thread would wait forever), and
    /// allows each of [`FUTEX_OPS`].
    pub fn allows_helper_thread(&self) -> bool {
        self.default_action == DefaultAction::KillProcess
            && FUTEX_OPS.iter().all(|op| {
                self.rules.iter().any(|r| {
                    r.syscall == "futex"
                        && r.args
                            .as_ref()
                            .is_some_and(|args| args.iter().any(|a| a.index == 1 && a.val == *op))
                })
            })
    }

    /// mmap must not hand out executable memory (its `prot` argument is masked against
    /// PROT_EXEC), and must map only private anonymous memory (its `flags` masked against
    /// MAP_SHARED|MAP_PRIVATE|MAP_ANONYMOUS equal MAP_PRIVATE|MAP_ANONYMOUS), so no file the
    /// worker holds can be mapped and rewritten behind the parent's back.
    fn check_mmap(&self) -> Result<(), String> {
        for mmap in self.rules.iter().filter(|r| r.syscall == "mmap") {
            Self::check_one_mmap(mmap)?;
        }
        Ok(())
    }

    fn check_one_mmap(mmap: &SyscallRule) -> Result<(), String> {
        let exec = libc::PROT_EXEC as u64;
        let no_exec = mmap.args.as_ref().is_some_and(|args| {
            args.iter().any(|a| {
                a.index == 2
                    && a.val == 0
                    && matches!(a.op, ArgOp::Masked { masked_eq } if masked_eq & exec != 0)
            })
        });
        if !no_exec {
            return Err("mmap must be limited to non-executable memory (args index 2 masked_eq PROT_EXEC == 0)".into());
        }
        let kinds = (libc::MAP_SHARED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let private_anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let anonymous = mmap.args.as_ref().is_some_and(|args| {
            args.iter().any(|a| {
                a.index == 3
                    && a.val == private_anon
                    && matches!(a.op, ArgOp::Masked { masked_eq } if masked_eq == kinds)
            })
        });
        if !anonymous {
            return Err("mmap must be limited to private anonymous memory (args index 3 masked_eq 35 == 34)".into());
        }
        Ok(())
    }

    /// The allowlist as seccompiler JSON filters: the allowlist proper, and (if any rule asks for
    /// it) a second filter that turns the `errno_enosys` calls into ENOSYS. Seccomp stacks them
    /// and the most restrictive verdict wins.
    /// The filters in seccompiler's JSON, for a worker whose pid (the tgid of both its threads) is
    /// `own_pid`: `tgkill` is pinned to it, so abort()'s SIGABRT can reach no other process —
    /// without a pid namespace, and on kernels without landlock's signal scope (ABI < 6), the
    /// signal number alone would let the worker abort its supervisor.
    pub(crate) fn to_seccompiler_json(&self, own_pid: Option<u32>) -> (String, Option<String>) {
        let action = match self.default_action {
            DefaultAction::KillProcess => "kill_process",
            DefaultAction::KillThread => "kill_thread",
            DefaultAction::Trap => "trap",
            DefaultAction::Allow => "allow",
        };
        let rule = |r: &SyscallRule| {
            let mut v = serde_json::json!({"syscall": r.syscall});
            if let Some(args) = &r.args {
                v["args"] = serde_json::json!(args
                    .iter()
                    .map(|a| serde_json::json!({"index": a.index, "type": a.kind, "op": a.op, "val": a.val}))
                    .collect::<Vec<_>>());
            }
            if let Some(own_pid) = own_pid.filter(|_| r.syscall == "tgkill") {
                let own =
                    serde_json::json!({"index": 0, "type": "dword", "op": "eq", "val": own_pid});
                match v["args"].as_array_mut() {
                    Some(args) => args.push(own),
                    None => v["args"] = serde_json::json!([own]),
                }
            }
            v
        };
        let allow = serde_json::json!({"worker": {
            "mismatch_action": action,
            "match_action": "allow",
            "filter": self.rules.iter().map(rule).collect::<Vec<_>>(),
        }});
        let enosys: Vec<_> = self
            .rules
            .iter()
            .filter(|r| r.action == RuleAction::ErrnoEnosys)
            .map(rule)
            .collect();
        let enosys = (!enosys.is_empty()).then(|| {
            serde_json::json!({"worker": {
                "mismatch_action": "allow",
                "match_action": {"errno": libc::ENOSYS},
                "filter": enosys,
            }})
            .to_string()
        });
        (allow.to_string(), enosys)
    }
}

// ---- sandbox.toml -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    Required,
    Optional,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layers {
    pub close_fds: Requirement,
    pub rlimits: Requirement,
    pub namespaces: Requirement,
    pub capabilities: Requirement,
    pub no_new_privs: Requirement,
    pub landlock: Requirement,
    pub seccomp: Requirement,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockPolicy {
    /// The lowest landlock ABI the host must offer, else no job runs. In the file: a number
    /// (1 to 9) or `"strict"` ([`STRICT_MIN_ABI`]).
    #[serde(deserialize_with = "min_abi")]
    pub min_abi: u8,
    /// Build the ruleset for at most this ABI even where the kernel offers more: one behaviour
    /// across a fleet of mixed kernels, and how the tests reproduce an older kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abi: Option<u8>,
}

/// `min_abi = "strict"`: ABI 6 (Linux 6.12), the first with the abstract-unix-socket and signal
/// scopes, so landlock alone stops TCP, abstract sockets and signals (only `fs.resolve_unix`, ABI
/// 9, comes later).
pub const STRICT_MIN_ABI: u8 = 6;

/// The highest landlock ABI this build knows; every right up to it is handled when offered.
pub const LATEST_ABI: u8 = 9;

fn min_abi<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum MinAbi {
        Number(u8),
        Named(String),
    }
    match MinAbi::deserialize(d)? {
        MinAbi::Number(n) => Ok(n),
        MinAbi::Named(name) if name == "strict" => Ok(STRICT_MIN_ABI),
        MinAbi::Named(name) => Err(serde::de::Error::custom(format!(
            "min_abi = {name:?}: expected a number from 1 to {LATEST_ABI}, or \"strict\""
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxLayers {
    pub layers: Layers,
    pub landlock: LandlockPolicy,
}

impl SandboxLayers {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        const FILE: &str = "sandbox.toml";
        let policy: SandboxLayers = toml::from_str(text).map_err(|e| PolicyError::Parse {
            file: FILE,
            message: e.to_string(),
        })?;
        policy
            .validate()
            .map_err(|what| PolicyError::Invalid { file: FILE, what })?;
        Ok(policy)
    }

    pub fn validate(&self) -> Result<(), String> {
        let l = &self.layers;
        let always = [
            ("close_fds", l.close_fds),
            ("rlimits", l.rlimits),
            ("capabilities", l.capabilities),
            ("no_new_privs", l.no_new_privs),
            ("landlock", l.landlock),
            ("seccomp", l.seccomp),
        ];
        for (name, req) in always {
            if req != Requirement::Required {
                return Err(format!(
                    "layer {name} must be required; only namespaces may be optional"
                ));
            }
        }
        let min = self.landlock.min_abi;
        if !(1..=LATEST_ABI).contains(&min) {
            return Err(format!(
                "landlock.min_abi = {min} is outside 1..={LATEST_ABI} (landlock itself is always required)"
            ));
        }
        if let Some(max) = self.landlock.max_abi {
            if !(min..=LATEST_ABI).contains(&max) {
                return Err(format!(
                    "landlock.max_abi = {max} is outside min_abi..={LATEST_ABI} ({min}..={LATEST_ABI})"
                ));
            }
        }
        Ok(())
    }
}

/// Everything the lockdown needs: both policy files, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPolicy {
    pub seccomp: SeccompPolicy,
    pub layers: SandboxLayers,
}

impl SandboxPolicy {
    pub fn built_in() -> Result<Self, PolicyError> {
        Self::parse(BUILT_IN_SECCOMP, BUILT_IN_SANDBOX)
    }

    pub fn parse(seccomp_json: &str, sandbox_toml: &str) -> Result<Self, PolicyError> {
        Ok(SandboxPolicy {
            seccomp: SeccompPolicy::parse(seccomp_json)?,
            layers: SandboxLayers::parse(sandbox_toml)?,
        })
    }

    /// Re-check a policy that arrived over a trust boundary (the worker's argument).
    pub fn validate(&self) -> Result<(), String> {
        self.seccomp.validate()?;
        self.layers.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_policies_are_valid() {
        let p = SandboxPolicy::built_in().unwrap();
        assert_eq!(p.seccomp.default_action, DefaultAction::KillProcess);
        assert!(p.seccomp.rules.iter().all(|r| !r.comment.is_empty()));
    }

    #[test]
    fn allow_by_default_is_refused() {
        let text = BUILT_IN_SECCOMP.replace("\"kill_process\"", "\"allow\"");
        assert!(matches!(
            SeccompPolicy::parse(&text),
            Err(PolicyError::Invalid { .. })
        ));
    }

    #[test]
    fn forbidden_syscalls_are_refused() {
        for name in [
            "socket", "connect", "execve", "ptrace", "fork", "clone", "clone3", "openat",
        ] {
            let text = BUILT_IN_SECCOMP.replace(
                "{\"syscall\": \"read\",",
                &format!("{{\"syscall\": \"{name}\", \"comment\": \"x\"}},\n    {{\"syscall\": \"read\","),
            );
            let err = SeccompPolicy::parse(&text).unwrap_err();
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn entries_need_a_comment_and_tgkill_needs_its_limit() {
        let text = BUILT_IN_SECCOMP.replace(
            "\"comment\": \"Read the input on fd 0\"",
            "\"comment\": \"\"",
        );
        assert!(SeccompPolicy::parse(&text).is_err());
        let text = BUILT_IN_SECCOMP.replace("\"val\": 6", "\"val\": 9");
        assert!(SeccompPolicy::parse(&text).is_err());
        let text = BUILT_IN_SECCOMP.replace("{\"masked_eq\": 4}", "\"eq\"");
        assert!(SeccompPolicy::parse(&text)
            .unwrap_err()
            .to_string()
            .contains("mmap"));
        let text = BUILT_IN_SECCOMP.replace("{\"masked_eq\": 35}", "{\"masked_eq\": 32}");
        assert!(SeccompPolicy::parse(&text)
            .unwrap_err()
            .to_string()
            .contains("private anonymous"));
    }

    #[test]
    fn futex_entries_pin_their_operation_and_gate_the_helper_thread() {
        let built_in = SeccompPolicy::parse(BUILT_IN_SECCOMP).unwrap();
        assert!(built_in.allows_helper_thread());
        // A bare futex entry would allow every operation (PI, requeue): refused.
        let bare = BUILT_IN_SECCOMP.replace(
            "{\"syscall\": \"read\",",
            "{\"syscall\": \"futex\", \"comment\": \"x\"},\n    {\"syscall\": \"read\",",
        );
        assert!(SeccompPolicy::parse(&bare)
            .unwrap_err()
            .to_string()
            .contains("futex"));
        // So is an operation outside the three, and a second entry with conditions is fine.
        let lock_pi = BUILT_IN_SECCOMP.replace("\"val\": 128,", "\"val\": 134,");
        assert!(SeccompPolicy::parse(&lock_pi).is_err());
        // Without one of the three, or killing only the thread, the worker stays single-threaded.
        let mut fewer = built_in.clone();
        fewer
            .rules
            .retain(|r| !(r.syscall == "futex" && r.args.as_ref().unwrap()[0].val == 128));
        assert!(fewer.validate().is_ok() && !fewer.allows_helper_thread());
        let mut thread_only = built_in.clone();
        thread_only.default_action = DefaultAction::KillThread;
        assert!(!thread_only.allows_helper_thread());
        // A second unconditional entry for a listed call is refused.
        let twice = BUILT_IN_SECCOMP.replace(
            "{\"syscall\": \"read\",",
            "{\"syscall\": \"brk\", \"comment\": \"x\"},\n    {\"syscall\": \"read\",",
        );
        assert!(SeccompPolicy::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text =
            BUILT_IN_SECCOMP.replace("\"default_action\"", "\"defaults\": 1, \"default_action\"");
        assert!(matches!(
            SeccompPolicy::parse(&text),
            Err(PolicyError::Parse { .. })
        ));
        let text = format!("{BUILT_IN_SANDBOX}\n[extra]\nx = 1\n");
        assert!(matches!(
            SandboxLayers::parse(&text),
            Err(PolicyError::Parse { .. })
        ));
    }

    #[test]
    fn only_namespaces_may_be_optional() {
        let text =
            BUILT_IN_SANDBOX.replace("namespaces = \"required\"", "namespaces = \"optional\"");
        assert!(SandboxLayers::parse(&text).is_ok());
        let text = BUILT_IN_SANDBOX.replace("seccomp = \"required\"", "seccomp = \"optional\"");
        assert!(SandboxLayers::parse(&text).is_err());
    }

    #[test]
    fn landlock_floor_and_cap() {
        let with = |landlock: &str| {
            let text = BUILT_IN_SANDBOX.replace("min_abi = 1", landlock);
            SandboxLayers::parse(&text).map(|p| p.landlock)
        };
        assert_eq!(with("min_abi = 1").unwrap().min_abi, 1);
        let strict = with("min_abi = \"strict\"").unwrap();
        assert_eq!((strict.min_abi, strict.max_abi), (STRICT_MIN_ABI, None));
        assert_eq!(with("min_abi = 2\nmax_abi = 4").unwrap().max_abi, Some(4));
        for bad in [
            "min_abi = 0",
            "min_abi = 10",
            "min_abi = \"lenient\"",
            "min_abi = 5\nmax_abi = 4",
            "min_abi = 1\nmax_abi = 10",
        ] {
            assert!(with(bad).is_err(), "{bad}");
        }
    }
}
