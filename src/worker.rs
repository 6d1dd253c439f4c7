//! The worker process: a fresh exec of this binary with a hidden first argument, dispatched at the
//! top of `main` before any runtime or thread exists. It takes the fds of the worker contract,
//! locks itself down, and only then reads its input.

use std::io::Write;
use std::process::ExitCode;

use airlock_engine::report::SandboxSummary;
use airlock_engine::{Limits, Options};
use airlock_sandbox::lockdown::{Lockdown, Rlimits};
use airlock_sandbox::policy::SandboxPolicy;
use serde::{Deserialize, Serialize};

/// The hidden first argument that makes this binary a worker. Not a subcommand: it is never shown
/// in `--help` and is checked before clap runs.
pub const ARG: &str = "__airlock-worker";

/// Exit status of a worker that finished and wrote its report.
pub const EXIT_DONE: u8 = 0;
/// The engine could not read or write (not bad content: that is a report).
pub const EXIT_IO: u8 = 74;
/// A panic; the hook prints a fixed message and exits with this.
pub const EXIT_PANIC: u8 = airlock_sandbox::lockdown::PANIC_EXIT as u8;
/// The worker could not be set up (fds missing, bad config).
pub const EXIT_SETUP: u8 = 78;
/// The sandbox could not be fully established: the worker refuses to read its input.
pub const EXIT_SANDBOX: u8 = 77;

/// Everything the worker needs, passed as one JSON argument (the environment is cleared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub limits: Limits,
    pub delimiter: Option<u8>,
    pub fallback_encoding: Option<String>,
    /// The parent hashes the clean output itself as it is written (only when it keeps it).
    pub parent_hashes_output: bool,
    pub rlimits: Rlimits,
    pub sandbox: SandboxPolicy,
}

impl WorkerConfig {
    pub fn new(plan: &crate::policy::Plan, sandbox: &SandboxPolicy, delimiter: Option<u8>) -> Self {
        WorkerConfig {
            limits: plan.limits.clone(),
            delimiter,
            fallback_encoding: plan.fallback_encoding.map(|e| e.name().to_string()),
            parent_hashes_output: false,
            rlimits: Rlimits {
                address_space_bytes: plan.worker.memory_bytes,
                cpu_seconds: plan.worker.cpu_seconds,
                // The clean output can outgrow the input (quoting, the formula guard): 4x bounds it.
                file_size_bytes: plan
                    .limits
                    .max_bytes
                    .saturating_mul(4)
                    .saturating_add(1 << 20),
            },
            sandbox: sandbox.clone(),
        }
    }

    fn options(&self) -> Result<Options, String> {
        let fallback_encoding = match &self.fallback_encoding {
            None => None,
            Some(label) => Some(
                airlock_engine::encoding_for_label(label)
                    .ok_or_else(|| format!("unknown encoding {label:?}"))?,
            ),
        };
        Ok(Options {
            limits: self.limits.clone(),
            delimiter: self.delimiter,
            fallback_encoding,
            // The parent hashes the input on its own core, in parallel (process.rs).
            hash_input: false,
            hash_output: !self.parent_hashes_output,
        })
    }
}

/// A line on fd 2 and an exit status; never any input content.
fn fail(code: u8, what: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "airlock worker: {what}");
    ExitCode::from(code)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Entry point of the worker. `args` are the arguments after [`ARG`].
pub fn main(args: &[String]) -> ExitCode {
    let [config] = args else {
        return fail(EXIT_SETUP, "expected exactly one argument (the config)");
    };
    let config: WorkerConfig = match serde_json::from_str(config) {
        Ok(c) => c,
        Err(_) => return fail(EXIT_SETUP, "the config argument does not parse"),
    };
    let options = match config.options() {
        Ok(o) => o,
        Err(e) => return fail(EXIT_SETUP, &e),
    };
    // The kernel closes the fds at exit; dropping them would need close (and fcntl in debug
    // builds), which the seccomp allowlist does not grant.
    let fds = match airlock_sandbox::fds::take() {
        Ok(fds) => std::mem::ManuallyDrop::new(fds),
        Err(e) => return fail(EXIT_SETUP, &e.to_string()),
    };
    // Nothing below this line runs outside the sandbox.
    let lockdown = match Lockdown::new(&config.sandbox, config.rlimits).apply() {
        Ok(report) => report,
        Err(e) => return fail(EXIT_SANDBOX, &error_chain(&e)),
    };
    let mut report = match airlock_engine::process(&fds.input, &fds.output, &fds.rejects, &options)
    {
        Ok(report) => report,
        Err(e) => return fail(EXIT_IO, &e.to_string()),
    };
    report.sandbox = Some(SandboxSummary {
        enforced: lockdown.enforced,
        missing: lockdown.missing,
        landlock_abi: lockdown.landlock_abi,
    });
    let written = serde_json::to_vec(&report)
        .map_err(std::io::Error::from)
        .and_then(|json| (&fds.report).write_all(&json));
    match written {
        Ok(()) => ExitCode::from(EXIT_DONE),
        Err(_) => fail(EXIT_IO, "writing the report failed"),
    }
}
