//! `airlock`: the safe door through which untrusted CSV uploads enter a data pipeline.
//!
//! The same binary is the CLI and, re-executed with a hidden first argument, the sandboxed worker.
//! That dispatch happens first thing in `main`, before clap, logging or any thread exists.

#![forbid(unsafe_code)]

mod cli;
mod doctor;
mod policy;
mod process;
mod worker;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(worker::ARG) {
        return worker::main(&args[2..]);
    }
    cli::main()
}
