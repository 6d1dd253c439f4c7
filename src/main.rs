//! `airlock`: the CLI and, re-executed with a hidden first argument, the sandboxed worker. That
//! dispatch happens first thing in `main`, before clap, logging, a runtime or any thread exists.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use airlock::{cli, worker};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(worker::ARG) {
        return worker::main(&args[2..]);
    }
    cli::main()
}
