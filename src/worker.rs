//! The worker process: a fresh exec of this binary with a hidden first argument, dispatched at the
//! top of `main` before any runtime or thread exists. It takes the fds of the worker contract,
//! locks itself down, and only then reads its input.

use std::io::Write;
use std::process::ExitCode;

use airlock_engine::report::SandboxSummary;
use airlock_engine::{Limits, Options, Report};
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
    /// The job's Table Schema, as JSON (checked by the parent; compiled again here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// Memory for the schema's keys (the plan's `schema_key_bytes`).
    pub schema_key_bytes: usize,
    /// The input's size as the parent measured it: the schema's key table starts sized for it.
    #[serde(default)]
    pub input_bytes: u64,
}

impl WorkerConfig {
    /// The config for one input of `input_bytes`: the file-size rlimit is the larger of the
    /// output and rejects bounds for that size (and the report cap), so a worker cannot write
    /// gigabytes for an 8-byte input.
    pub fn new(
        plan: &crate::policy::Plan,
        sandbox: &SandboxPolicy,
        delimiter: Option<u8>,
        input_bytes: u64,
    ) -> Self {
        WorkerConfig {
            limits: plan.limits.clone(),
            delimiter,
            fallback_encoding: plan.fallback_encoding.map(|e| e.name().to_string()),
            parent_hashes_output: false,
            rlimits: Rlimits {
                address_space_bytes: plan.worker.memory_bytes,
                cpu_seconds: plan.worker.cpu_seconds,
                file_size_bytes: airlock_engine::output_bound(input_bytes)
                    .max(airlock_engine::rejects_bound(input_bytes))
                    .max(crate::process::report_cap(&plan.limits) + 1),
            },
            sandbox: sandbox.clone(),
            schema: None,
            schema_key_bytes: usize::try_from(plan.worker.schema_key_bytes).unwrap_or(usize::MAX),
            input_bytes,
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
        let schema = match &self.schema {
            None => None,
            Some(json) => {
                let schema =
                    airlock_engine::schema::Schema::from_value(json).map_err(|e| e.to_string())?;
                // Draws the random keys of the key digests now: getrandom is not on the
                // allowlist once the worker is locked down.
                airlock_engine::schema::prepare();
                Some(std::sync::Arc::new(schema))
            }
        };
        Ok(Options {
            limits: self.limits.clone(),
            delimiter: self.delimiter,
            fallback_encoding,
            // The parent hashes the input on its own core, in parallel (process.rs).
            hash_input: false,
            hash_output: !self.parent_hashes_output,
            schema,
            key_budget_bytes: self.schema_key_bytes,
            input_bytes_hint: Some(self.input_bytes),
            parse_path: airlock_engine::ParsePath::default(),
            helper: None,
            tally: None,
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

/// A worker that has taken its fds and locked itself down, ready to read.
#[derive(Debug)]
pub struct LockedDown {
    pub config: WorkerConfig,
    pub options: Options,
    /// The kernel closes the fds at exit; dropping them would need close (and fcntl in debug
    /// builds), which the seccomp allowlist does not grant.
    pub fds: std::mem::ManuallyDrop<airlock_sandbox::fds::WorkerFds>,
    pub sandbox: SandboxSummary,
}

/// Parse the config, take fds 0–4 and apply the lockdown. `Err` is the exit status to end with.
pub fn lock_down(args: &[std::ffi::OsString]) -> Result<LockedDown, ExitCode> {
    let [config] = args else {
        return Err(fail(
            EXIT_SETUP,
            "expected exactly one argument (the config)",
        ));
    };
    let Some(config) = config.to_str() else {
        return Err(fail(EXIT_SETUP, "the config argument is not UTF-8"));
    };
    let config: WorkerConfig = serde_json::from_str(config)
        .map_err(|_| fail(EXIT_SETUP, "the config argument does not parse"))?;
    let mut options = config.options().map_err(|e| fail(EXIT_SETUP, &e))?;
    let fds = airlock_sandbox::fds::take().map_err(|e| fail(EXIT_SETUP, &e.to_string()))?;
    let fds = std::mem::ManuallyDrop::new(fds);
    // Nothing after this runs outside the sandbox.
    // With a schema, a second thread checks rows while this one reads and writes: started
    // inside the lockdown, before seccomp, when the allowlist lets the two threads wait for each
    // other and kills the whole process on a violation (an operator's allowlist without that
    // keeps the worker single-threaded). A thread
    // that cannot start leaves the checks on this one.
    let threaded = options.schema.is_some() && config.sandbox.seccomp.allows_helper_thread();
    let (lockdown, helper) = Lockdown::new(&config.sandbox, config.rlimits)
        .apply_with(|| {
            threaded
                .then(airlock_engine::Helper::spawn)?
                .inspect_err(|e| {
                    // The parent logs fd 2: an operator sees why the checks ran on one thread.
                    eprintln!("airlock worker: the schema helper thread did not start: {e}");
                })
                .ok()
        })
        .map_err(|e| fail(EXIT_SANDBOX, &error_chain(&e)))?;
    if let Some(helper) = helper {
        let helper = std::sync::Arc::new(helper);
        // Never dropped: stopping the thread would need calls the allowlist does not have; it
        // ends with the process.
        std::mem::forget(helper.clone());
        options.helper = Some(helper);
    }
    Ok(LockedDown {
        config,
        options,
        fds,
        sandbox: SandboxSummary {
            enforced: lockdown.enforced,
            missing: lockdown.missing,
            landlock_abi: lockdown.landlock_abi,
            landlock_missing: Vec::new(),
        },
    })
}

impl LockedDown {
    /// Run the engine over fd 0, writing fds 1 and 4.
    pub fn process(&self) -> Result<Report, ExitCode> {
        let fds = &self.fds;
        let mut report =
            airlock_engine::process(&fds.input, &fds.output, &fds.rejects, &self.options)
                .map_err(|e| fail(EXIT_IO, &e.to_string()))?;
        report.sandbox = Some(self.sandbox.clone());
        Ok(report)
    }

    /// Write `report` to fd 3 and say how to exit.
    pub fn write_report(&self, report: &Report) -> ExitCode {
        // Streamed through a fixed buffer: a report with 1,024 long header names is about 1 MiB,
        // and building it in a growing Vec would need mremap, which seccomp does not allow.
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, &self.fds.report);
        let written = serde_json::to_writer(&mut out, report)
            .map_err(std::io::Error::from)
            .and_then(|()| out.flush());
        match written {
            Ok(()) => ExitCode::from(EXIT_DONE),
            Err(_) => fail(EXIT_IO, "writing the report failed"),
        }
    }
}

/// Entry point of the worker. `args` are the arguments after [`ARG`].
pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    let worker = match lock_down(args) {
        Ok(w) => w,
        Err(code) => return code,
    };
    match worker.process() {
        Ok(report) => worker.write_report(&report),
        Err(code) => code,
    }
}
