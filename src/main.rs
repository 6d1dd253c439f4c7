//! `airlock`: the CLI and, re-executed with a hidden first argument, the sandboxed worker. That
//! dispatch happens first thing in `main`, before clap, logging, a runtime or any thread exists.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use airlock::{cli, worker};

fn main() -> ExitCode {
    // `args_os`: a file name need not be UTF-8, and `args` would panic on it.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == worker::ARG) {
        return worker::main(&args[2..]);
    }
    #[cfg(feature = "test-seam")]
    if args.get(1).is_some_and(|a| a == airlock::hostile::ARG) {
        return airlock::hostile::main(&args[2..]);
    }
    cli::main()
}
