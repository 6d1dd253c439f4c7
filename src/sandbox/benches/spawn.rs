//! Spawn + lockdown overhead. Every variant does the same trivial work — start, take fds 0-4,
//! write two bytes, exit — and is timed from spawn to reaped, sequentially, interleaved round by
//! round so machine noise hits every variant alike:
//!
//! - `true`: `/bin/true` (the floor: fork + exec + exit)
//! - `plain`: this binary, no lockdown
//! - `landlock+seccomp`: this binary, production lockdown without namespaces
//! - `full`: this binary, the full production lockdown (namespaces included)
//! - `bwrap`: `bwrap --unshare-all --ro-bind / / <this binary> plain` (if bwrap is installed)
//!
//! Prints the median per variant and the ratios the goals are stated in.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use airlock_sandbox::lockdown::{Lockdown, Rlimits};
use airlock_sandbox::policy::SandboxPolicy;
use airlock_sandbox::spawn::{spawn, WorkerIo};

const ROUNDS: usize = 300;

fn child(mode: &str) -> ExitCode {
    let fds = std::mem::ManuallyDrop::new(airlock_sandbox::fds::take().expect("fds"));
    if mode != "plain" {
        let policy = SandboxPolicy::built_in().unwrap();
        let rlimits = Rlimits {
            address_space_bytes: 512 << 20,
            cpu_seconds: 300,
            file_size_bytes: 1 << 30,
        };
        let mut lockdown = Lockdown::new(&policy, rlimits);
        if mode == "nons" {
            lockdown = lockdown.without_namespaces_for_tests();
        }
        lockdown.apply().expect("lockdown");
    }
    let _ = (&fds.output).write_all(b"ok");
    std::process::exit(0)
}

fn null() -> OwnedFd {
    OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap(),
    )
}

fn run_self(exe: &Path, mode: &str) -> Duration {
    let (r, w) = rustix::pipe::pipe().unwrap();
    let io = WorkerIo {
        input: null(),
        output: w,
        diagnostics: null(),
        report: null(),
        rejects: null(),
    };
    let started = Instant::now();
    let mut child = spawn(exe, &[OsStr::new("child"), OsStr::new(mode)], io).unwrap();
    let mut out = String::new();
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    let took = started.elapsed();
    assert_eq!(out, "ok", "{mode}");
    took
}

fn run_cmd(cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2]);
    }
    // `cargo bench -p airlock-sandbox --bench spawn -- [ROUNDS]`
    let rounds: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(ROUNDS);
    let exe = std::env::current_exe().unwrap();
    let bwrap = Path::new("/usr/bin/bwrap").exists();
    let names = ["true", "plain", "landlock+seccomp", "full", "bwrap"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        times[0].push(run_cmd(&mut Command::new("/bin/true")));
        times[1].push(run_self(&exe, "plain"));
        times[2].push(run_self(&exe, "nons"));
        times[3].push(run_self(&exe, "full"));
        if bwrap {
            // bwrap's child has no fds 3 and 4, so it runs /bin/true: the same trivial work.
            times[4].push(run_cmd(Command::new("/usr/bin/bwrap").args([
                "--unshare-all",
                "--ro-bind",
                "/",
                "/",
                "/bin/true",
            ])));
        }
    }
    let medians: Vec<Option<Duration>> = times
        .into_iter()
        .map(|t| (!t.is_empty()).then(|| median(t)))
        .collect();
    println!("spawn-to-reaped median over {rounds} interleaved rounds:");
    for (name, m) in names.iter().zip(&medians) {
        match m {
            Some(m) => println!("  {name:<18} {:>8.3} ms", m.as_secs_f64() * 1e3),
            None => println!("  {name:<18} (not installed)"),
        }
    }
    let t = medians[0].unwrap().as_secs_f64();
    let full = medians[3].unwrap().as_secs_f64();
    println!("ratios:");
    println!(
        "  plain / true            {:.2}x",
        medians[1].unwrap().as_secs_f64() / t
    );
    println!(
        "  landlock+seccomp / true {:.2}x",
        medians[2].unwrap().as_secs_f64() / t
    );
    println!("  full / true             {:.2}x   (goal <= 3x)", full / t);
    if let Some(b) = medians[4] {
        println!(
            "  full / bwrap            {:.2}x   (goal <= 0.6x)",
            full / b.as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}
