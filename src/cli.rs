//! The command line (DESIGN §3.1). Exit codes: 0 accepted, 1 rejected, 2 usage or configuration
//! error, 70 failed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::policy::Policies;
use crate::process::{self, Destinations};

const EXIT_USAGE: u8 = 2;
const EXIT_FAILED: u8 = 70;

const EXAMPLES: &str = "\
Examples:
  airlock process leads.csv --output clean.csv --rejects rejects.csv --report report.json
  airlock process leads.csv                      # report JSON on stdout, outputs discarded
  airlock process export.csv --plan legacy-excel # windows-1252 fallback for old spreadsheets

Exit status: 0 accepted, 1 rejected (the report says why), 2 usage or configuration error,
70 failed (worker crash, limit, timeout or sandbox violation).";

#[derive(Debug, Parser)]
#[command(name = "airlock", version, about = "Sandboxed validation of untrusted CSV uploads", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate one file through the sandboxed worker; no services needed.
    #[command(after_help = EXAMPLES)]
    Process(ProcessArgs),
    /// Show which sandbox layers this host supports and prove the active policy runs here.
    #[command(
        after_help = "Exit status: 0 the policy runs here, 1 it cannot (see \"problems\"), 2 usage error.\n\nExample:\n  airlock doctor --policy-dir /etc/airlock/policies"
    )]
    Doctor(DoctorArgs),
    /// Serve signed-link downloads for the local storage backend (HTTP, 127.0.0.1 by default).
    #[command(
        after_help = "Links come from `airlock link` and expire within the presign policy's TTL (5 min).\n\nExample:\n  AIRLOCK_STORAGE_URL=file:///var/lib/airlock airlock serve --listen 127.0.0.1:8787"
    )]
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", env = "AIRLOCK_LISTEN", default_value = crate::config::DEFAULT_LISTEN)]
    listen: String,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// The plan whose limits the check worker runs with.
    #[arg(long, value_name = "NAME", default_value = "default")]
    plan: String,
}

#[derive(Debug, Args)]
struct ProcessArgs {
    /// The uploaded file (a regular file; never opened by this process beyond a size check).
    input: PathBuf,
    /// Where to write the clean CSV (only when the file is accepted).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Where to write the rejected rows, as CSV: record,line,code,message,raw.
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Where to write the JSON report [default: stdout].
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The plan of limits in policies/limits.toml.
    #[arg(long, value_name = "NAME", default_value = "default")]
    plan: String,
    /// A directory whose policy files replace the built-in ones.
    #[arg(long, value_name = "DIR", env = "AIRLOCK_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// The delimiter: `,` `;` `|` or `tab` [default: sniffed].
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    delimiter: Option<u8>,
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "," | "comma" => Ok(b','),
        ";" | "semicolon" => Ok(b';'),
        "\t" | "tab" | "\\t" => Ok(b'\t'),
        "|" | "pipe" => Ok(b'|'),
        _ => Err("use one of , ; | tab".into()),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Process(args) => process_command(args),
        Command::Doctor(args) => doctor_command(args),
        Command::Serve(args) => serve_command(args),
    }
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("airlock: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// `anyhow` chains, one line.
fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn serve_command(args: ServeArgs) -> ExitCode {
    let url = match crate::config::StorageUrl::from_env() {
        Ok(u) => u,
        Err(e) => return usage(e),
    };
    let crate::config::StorageUrl::File(root) = url else {
        return usage("AIRLOCK_STORAGE_URL is s3://: S3 serves its own presigned links; `serve` is for the local backend");
    };
    let store = match crate::storage::fs::FsStore::open(&root, &crate::config::public_url()) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => return usage(e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return usage(format!("starting the runtime: {e}")),
    };
    match rt.block_on(crate::serve::run(store, &args.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock: {}", chain(&e));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn doctor_command(args: DoctorArgs) -> ExitCode {
    let policies = match Policies::load(args.policy_dir.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage(chain(&e.into())),
    };
    match crate::doctor::run(&policies, &args.plan) {
        Ok(code) => code,
        Err(e) => usage(chain(&e)),
    }
}

fn process_command(args: ProcessArgs) -> ExitCode {
    let policies = match Policies::load(args.policy_dir.as_deref()) {
        Ok(p) => p,
        Err(e) => return usage(chain(&e.into())),
    };
    let plan = match policies.limits.plan(&args.plan) {
        Ok(plan) => plan,
        Err(e) => return usage(e),
    };
    let (input, size) = match process::open_input(&args.input) {
        Ok(opened) => opened,
        Err(e) => return usage(e),
    };
    let dest = Destinations {
        output: args.output,
        rejects: args.rejects,
        report: args.report,
    };
    match process::run(input, size, plan, &policies.sandbox, args.delimiter, &dest) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            tracing::error!(error = %chain(&e), "processing failed");
            eprintln!("airlock: {}", chain(&e));
            ExitCode::from(EXIT_FAILED)
        }
    }
}
