//! The escape suite: every probe runs in its own child process, started the way the worker is
//! started (`spawn::spawn`: exec, cleared environment, fds 0-4 only) and locked down with the
//! production policy (`policies/seccomp.json`, `policies/sandbox.toml`, the default plan's
//! rlimits). The parent then checks how the child ended. We run as root, so every probe is aimed
//! at something root could otherwise reach: a world-readable file, a live listener this test
//! started on 127.0.0.1, an abstract socket it listens on, its own pid.
//!
//! Regression check: the same network and file probes run again with seccomp left out, to show
//! which other layer still stops them (landlock, the empty network namespace) — and, with the
//! namespaces also left out, that UDP is stopped by seccomp and the namespace alone.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};

use airlock_sandbox::lockdown::{Lockdown, Rlimits};
use airlock_sandbox::policy::SandboxPolicy;
use airlock_sandbox::spawn::{spawn, WorkerIo};

const DEFAULT_RLIMITS: Rlimits = Rlimits {
    address_space_bytes: 512 << 20,
    cpu_seconds: 300,
    file_size_bytes: 4 << 30,
};

// ---- child side --------------------------------------------------------------------------

fn say(s: &str) {
    let mut out = std::io::stdout();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

fn errno_result(rc: i64) -> String {
    if rc < 0 {
        format!(
            "err {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    } else {
        format!("ok {rc}")
    }
}

fn io_result<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("err {}", e.raw_os_error().unwrap_or(0)),
    }
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let buf = [n; 512];
    std::hint::black_box(&buf);
    if std::hint::black_box(n) == u64::MAX {
        return 0;
    }
    recurse(n + 1) + buf[7]
}

/// Runs in the child, after the lockdown. Prints its result on fd 1 and exits 0, unless the
/// sandbox kills it first.
#[allow(clippy::undocumented_unsafe_blocks)]
fn probe(name: &str, arg: &str) {
    // The probes call raw libc on purpose, to see the exact errno; the calls take no pointers
    // into freed memory and the child exits right after.
    let result = match name {
        "nothing" => "ok".to_string(),
        // With `thread`, both threads churn the allocator at once.
        "malloc_race" => {
            malloc_churn();
            "ok".to_string()
        }
        "read_file" => io_result(std::fs::read(arg)),
        "write_file" => io_result(std::fs::write(arg, b"escaped")),
        "proc_environ" => io_result(std::fs::read("/proc/self/environ")),
        "env_count" => format!("ok {}", std::env::vars_os().count()),
        "socket" => {
            let (domain, ty) = match arg {
                "inet" => (libc::AF_INET, libc::SOCK_STREAM),
                "inet6" => (libc::AF_INET6, libc::SOCK_STREAM),
                "unix" => (libc::AF_UNIX, libc::SOCK_STREAM),
                "netlink" => (libc::AF_NETLINK, libc::SOCK_RAW),
                "packet" => (libc::AF_PACKET, libc::SOCK_RAW),
                _ => unreachable!(),
            };
            errno_result(i64::from(unsafe { libc::socket(domain, ty, 0) }))
        }
        "tcp_connect" => io_result(std::net::TcpStream::connect(arg)),
        "udp_send" => {
            io_result(UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"escaped", arg)))
        }
        "abstract_connect" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(arg.as_bytes()).unwrap();
            io_result(std::os::unix::net::UnixStream::connect_addr(&addr))
        }
        "execve" => {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            errno_result(i64::from(unsafe {
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr())
            }))
        }
        "fork" => errno_result(i64::from(unsafe { libc::fork() })),
        "clone3" => {
            errno_result(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) })
        }
        "fork_bomb" => {
            for _ in 0..10_000 {
                unsafe { libc::fork() };
            }
            "ok".into()
        }
        "ptrace" => errno_result(unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) }),
        "kill_parent" => {
            let pid: i32 = arg.parse().unwrap();
            errno_result(i64::from(unsafe { libc::kill(pid, libc::SIGTERM) }))
        }
        "unshare" => errno_result(i64::from(unsafe { libc::unshare(libc::CLONE_NEWNET) })),
        "setuid" => errno_result(i64::from(unsafe { libc::setuid(0) })),
        "mprotect_exec" => {
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            errno_result(i64::from(unsafe {
                libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC)
            }))
        }
        "mmap_exec" => {
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            errno_result(if p == libc::MAP_FAILED { -1 } else { 0 })
        }
        "ioctl_tiocsti" => {
            let c: u8 = b'x';
            errno_result(i64::from(unsafe { libc::ioctl(0, libc::TIOCSTI, &c) }))
        }
        "memory_bomb" => {
            let v = vec![1u8; 1 << 30];
            format!("ok {}", std::hint::black_box(&v)[12345])
        }
        "cpu_spin" => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "stack_overflow" => format!("ok {}", recurse(0)),
        "whoami" => format!("ok {}", unsafe { libc::geteuid() }),
        "signal_parent" => {
            let pid: i32 = arg.parse().unwrap();
            // Signal 0: the permission check alone, nothing is delivered.
            errno_result(i64::from(unsafe { libc::kill(pid, 0) }))
        }
        "tcp_bind" => io_result(std::net::TcpListener::bind(arg)),
        "truncate_file" => {
            let path = std::ffi::CString::new(arg).unwrap();
            errno_result(i64::from(unsafe { libc::truncate(path.as_ptr(), 0) }))
        }
        "tgkill_other" => {
            // What abort() calls, aimed at another process.
            let pid: i32 = arg.parse().unwrap();
            errno_result(unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGABRT) })
        }
        "mmap_fd4_shared" => {
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    4,
                    0,
                )
            };
            errno_result(if p == libc::MAP_FAILED { -1 } else { 0 })
        }
        "panic" => panic!("probe panic with secret cell content"),
        other => panic!("unknown probe {other}"),
    };
    say(&result);
    std::process::exit(0);
}

/// The word the two threads of `futex_handshake` meet on: 0 until the waker has seen the
/// waiter asleep, then 1.
static HANDSHAKE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One futex call on [`HANDSHAKE`] with the private flag, as std's Mutex and Condvar make them:
/// the kernel's answer.
fn handshake_futex(op: libc::c_int, val: u32) -> libc::c_long {
    // SAFETY: the address is a live, aligned static u32; FUTEX_WAIT_BITSET without a timeout
    // (null) and FUTEX_WAKE read nothing else. The full bitset makes the wait a plain one.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            HANDSHAKE.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            u32::MAX,
        )
    }
}

/// The waiting side: it goes to sleep in the kernel (at least one FUTEX_WAIT_BITSET, made
/// whatever the other thread has done) and leaves only once woken with the word at 1.
fn handshake_wait() {
    loop {
        handshake_futex(libc::FUTEX_WAIT_BITSET, 0);
        if HANDSHAKE.load(std::sync::atomic::Ordering::Acquire) == 1 {
            return;
        }
    }
}

/// The waking side: FUTEX_WAKE until the kernel says it woke a sleeper (so the waiter certainly
/// waited), then the word to 1 and one more wake for a waiter gone back to sleep.
fn handshake_wake() {
    while handshake_futex(libc::FUTEX_WAKE, 1) < 1 {
        std::hint::spin_loop();
    }
    HANDSHAKE.store(1, std::sync::atomic::Ordering::Release);
    handshake_futex(libc::FUTEX_WAKE, 1);
}

/// Blocks past glibc's per-thread cache and below its mmap threshold: each takes the arena lock.
fn malloc_churn() {
    for i in 0..400_000usize {
        let v: Vec<u8> = Vec::with_capacity(2048 + (i % 64) * 64);
        std::hint::black_box(&v);
    }
}

fn child(args: &[String]) -> ExitCode {
    let [name, arg, variant, policy_minus] = args else {
        return ExitCode::from(2);
    };
    let fds = std::mem::ManuallyDrop::new(airlock_sandbox::fds::take().expect("worker fds"));
    let _ = &fds;
    let mut policy = SandboxPolicy::built_in().expect("production policy");
    // `call` takes out every entry of the call; `call=N` only the one whose second argument
    // must equal N.
    match policy_minus.split_once('=') {
        Some((call, val)) => {
            let val: u64 = val.parse().expect("call=N");
            policy.seccomp.rules.retain(|r| {
                r.syscall != call
                    || !r
                        .args
                        .as_ref()
                        .is_some_and(|a| a.iter().any(|c| c.index == 1 && c.val == val))
            });
        }
        None if !policy_minus.is_empty() => {
            policy.seccomp.rules.retain(|r| r.syscall != *policy_minus);
        }
        None => {}
    }
    let mut rlimits = DEFAULT_RLIMITS;
    if variant.contains("cpu1") {
        rlimits.cpu_seconds = 1;
    }
    // `abiN`: the landlock ruleset built for ABI N, as on a kernel that offers no more.
    if let Some(n) = variant.split('-').find_map(|v| v.strip_prefix("abi")) {
        policy.layers.landlock.max_abi = Some(n.parse().expect("abiN"));
    }
    let mut lockdown = Lockdown::new(&policy, rlimits);
    if variant.contains("no-seccomp") {
        lockdown = lockdown.without_seccomp_for_tests();
    }
    if variant.contains("no-ns") {
        lockdown = lockdown.without_namespaces_for_tests();
    }
    if variant.contains("no-landlock") {
        lockdown = lockdown.without_landlock_for_tests();
    }
    if variant.contains("no-hook") {
        lockdown = lockdown.without_panic_hook_for_tests();
    }
    if variant.contains("no-pin") {
        lockdown = lockdown.without_tgkill_pin_for_tests();
    }
    if variant.contains("no-tsync") {
        lockdown = lockdown.without_tsync_for_tests();
    }
    if !variant.contains("thread") {
        if let Err(e) = lockdown.apply() {
            say(&format!("lockdown failed: {e}"));
            return ExitCode::from(3);
        }
        probe(name, arg);
        return ExitCode::SUCCESS;
    }
    // `thread`: the probe runs on a second thread, started during the lockdown as the worker
    // starts its helper, once the lockdown is complete.
    let gate = Arc::new((Mutex::new(0u8), Condvar::new()));
    let started = lockdown.apply_with(|| {
        let theirs = gate.clone();
        let (name, arg) = (name.clone(), arg.clone());
        std::thread::spawn(move || {
            let (lock, cv) = &*theirs;
            let mut state = lock.lock().unwrap();
            *state = 1;
            cv.notify_all();
            while *state != 2 {
                state = cv.wait(state).unwrap();
            }
            drop(state);
            if name == "futex_handshake" {
                handshake_wait();
                probe("nothing", "");
            }
            probe(&name, &arg);
        });
        let (lock, cv) = &*gate;
        let mut state = lock.lock().unwrap();
        while *state != 1 {
            state = cv.wait(state).unwrap();
        }
    });
    if let Err(e) = started {
        say(&format!("lockdown failed: {e}"));
        return ExitCode::from(3);
    }
    let (lock, cv) = &*gate;
    let mut state = lock.lock().unwrap();
    *state = 2;
    cv.notify_all();
    if name == "malloc_race" {
        drop(state);
        malloc_churn();
        state = lock.lock().unwrap();
    }
    if name == "futex_handshake" {
        drop(state);
        handshake_wake();
        state = lock.lock().unwrap();
    }
    // The probe ends the process; this thread waits (a join would need calls the allowlist
    // does not have).
    loop {
        state = cv.wait(state).unwrap();
    }
}

// ---- parent side -------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Ended {
    Exit(i32, String),
    Signal(i32),
}

fn run(name: &str, arg: &str, variant: &str, minus: &str) -> Ended {
    run_full(name, arg, variant, minus).0
}

/// Run one probe; also returns what it wrote to fd 2. Its fd 4 is a scratch file opened
/// write-only, as the worker's outputs are (read-write with the variant `rdwr4`).
fn run_full(name: &str, arg: &str, variant: &str, minus: &str) -> (Ended, String) {
    let exe = std::env::current_exe().unwrap();
    let (out_r, out_w) = rustix::pipe::pipe().unwrap();
    let (err_r, err_w) = rustix::pipe::pipe().unwrap();
    let null = || {
        OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .unwrap(),
        )
    };
    let scratch = tempfile::NamedTempFile::new().unwrap();
    let fd4 = std::fs::OpenOptions::new()
        .read(variant.contains("rdwr4"))
        .write(true)
        .open(scratch.path())
        .unwrap();
    let io = WorkerIo {
        input: null(),
        output: out_w,
        diagnostics: err_w,
        report: null(),
        rejects: OwnedFd::from(fd4),
    };
    let args: Vec<&OsStr> = ["probe", name, arg, variant, minus]
        .into_iter()
        .map(OsStr::new)
        .collect();
    let mut child = spawn(&exe, &args, io).expect("spawn probe");
    let stderr = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = std::fs::File::from(err_r)
            .take(64 * 1024)
            .read_to_string(&mut err);
        err
    });
    let mut out = String::new();
    std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    let err = stderr.join().unwrap();
    let ended = match status.signal() {
        Some(sig) => Ended::Signal(sig),
        None => Ended::Exit(status.code().unwrap(), out),
    };
    (ended, err)
}

struct Suite {
    failures: Vec<String>,
    passed: usize,
    /// Checks that ran a probe in a child process, and checks made in the parent alone.
    in_child: usize,
    in_parent: usize,
}

impl Suite {
    /// A check on how a probe child ended.
    fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Debug) {
        self.in_child += 1;
        self.record(what, ok, detail);
    }

    /// A check the parent makes on its own (controls, listeners, files).
    fn check_parent(&mut self, what: &str, ok: bool, detail: impl std::fmt::Debug) {
        self.in_parent += 1;
        self.record(what, ok, detail);
    }

    fn record(&mut self, what: &str, ok: bool, detail: impl std::fmt::Debug) {
        if ok {
            self.passed += 1;
            println!("ok      {what}");
        } else {
            println!("FAILED  {what}: {detail:?}");
            self.failures.push(what.to_string());
        }
    }

    fn killed(&mut self, what: &str, name: &str, arg: &str, variant: &str) {
        let ended = run(name, arg, variant, "");
        self.check(
            &format!("{what} is killed by seccomp ({variant})"),
            ended == Ended::Signal(libc::SIGSYS),
            ended,
        );
    }
}

fn errno_of(ended: &Ended) -> Option<i32> {
    match ended {
        Ended::Exit(0, out) => out.strip_prefix("err ").and_then(|n| n.parse().ok()),
        _ => None,
    }
}

/// A handshake after the lockdown in which one thread certainly sleeps in the kernel
/// (FUTEX_WAIT_BITSET, as std's Mutex and Condvar wait) and the other certainly wakes it
/// (FUTEX_WAKE): the waker keeps waking until the kernel reports a sleeper woken, so neither call
/// can be skipped by a lucky schedule. It completes with the allowlist as it is, and without
/// either entry it is killed.
fn futex_handshake_checks(s: &mut Suite) {
    let ended = run("futex_handshake", "", "full-thread", "");
    s.check(
        "a futex handshake between the two threads completes under the lockdown",
        ended == Ended::Exit(0, "ok".into()),
        &ended,
    );
    for (op, name) in [(137, "FUTEX_WAIT_BITSET"), (129, "FUTEX_WAKE")] {
        let ended = run("futex_handshake", "", "full-thread", &format!("futex={op}"));
        s.check(
            &format!("futex {name}|PRIVATE is needed by the two threads' handshake"),
            ended == Ended::Signal(libc::SIGSYS),
            &ended,
        );
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        return child(&args[2..]);
    }
    let mut s = Suite {
        failures: Vec::new(),
        passed: 0,
        in_child: 0,
        in_parent: 0,
    };
    // `-- futex-handshake N`: only the handshake's checks, N times (TESTING.md: the run under
    // load). Any other arguments (`cargo test -- <filter>`) run the whole suite.
    if args.get(1).map(String::as_str) == Some("futex-handshake") {
        let times: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1);
        for _ in 0..times {
            futex_handshake_checks(&mut s);
        }
        println!("{} passed, {} failed", s.passed, s.failures.len());
        return if s.failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    // The file-permission argument below (a denial must come from the sandbox, not from mode
    // bits) holds because we are root.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    s.check_parent("the suite runs as root", euid == 0, euid);

    // Baseline: the lockdown itself succeeds and a harmless probe finishes.
    let ended = run("nothing", "", "full", "");
    s.check(
        "a harmless probe runs to completion under the lockdown",
        ended == Ended::Exit(0, "ok".into()),
        &ended,
    );

    // Targets root could reach without the sandbox.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("world-readable.txt");
    std::fs::write(&secret, b"secret").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let secret = secret.to_str().unwrap().to_string();
    let target = dir.path().join("written.txt").to_str().unwrap().to_string();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let tcp_addr = tcp.local_addr().unwrap().to_string();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_addr = udp.local_addr().unwrap().to_string();
    let abstract_name = format!("airlock-escape-{}", std::process::id());
    let unix = {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        UnixListener::bind_addr(&addr).unwrap()
    };
    unix.set_nonblocking(true).unwrap();
    // Without a sandbox, each of these works for this (root) process.
    s.check_parent(
        "control: the file is readable without the sandbox",
        std::fs::read(&secret).is_ok(),
        (),
    );
    s.check_parent(
        "control: the TCP listener accepts without the sandbox",
        std::net::TcpStream::connect(&tcp_addr).is_ok() && tcp.accept().is_ok(),
        (),
    );

    let me = std::process::id().to_string();
    let killed_probes: Vec<(String, &str, &str)> = {
        let mut v: Vec<(String, &str, &str)> = vec![
            (
                "open+read of a world-readable file".into(),
                "read_file",
                &secret,
            ),
            ("creating a file".into(), "write_file", &target),
            ("truncating a file".into(), "truncate_file", &secret),
            ("reading /proc/self/environ".into(), "proc_environ", ""),
        ];
        for family in ["inet", "inet6", "unix", "netlink", "packet"] {
            v.push((format!("socket({family})"), "socket", family));
        }
        v.extend([
            (
                "TCP connect to a live listener".to_string(),
                "tcp_connect",
                tcp_addr.as_str(),
            ),
            ("UDP send to a live socket".into(), "udp_send", &udp_addr),
            (
                "connect to a live abstract unix socket".into(),
                "abstract_connect",
                &abstract_name,
            ),
            ("execve".into(), "execve", ""),
            ("fork".into(), "fork", ""),
            ("clone3".into(), "clone3", ""),
            ("a fork bomb".into(), "fork_bomb", ""),
            ("ptrace".into(), "ptrace", ""),
            ("kill of the parent".into(), "kill_parent", &me),
            (
                "SIGABRT by tgkill to another process".into(),
                "tgkill_other",
                &me,
            ),
            ("unshare".into(), "unshare", ""),
            ("setuid".into(), "setuid", ""),
            ("mprotect to executable memory".into(), "mprotect_exec", ""),
            ("mmap of executable memory".into(), "mmap_exec", ""),
            ("ioctl TIOCSTI".into(), "ioctl_tiocsti", ""),
        ]);
        v
    };
    for (what, probe, arg) in &killed_probes {
        s.killed(what, probe, arg, "full");
    }
    // The worker's helper thread, started during the lockdown before seccomp, is as locked down
    // as the thread that started it.
    let ended = run("nothing", "", "full-thread", "");
    s.check(
        "a harmless probe on a thread started in the lockdown runs to completion",
        ended == Ended::Exit(0, "ok".into()),
        &ended,
    );
    for (what, probe, arg) in &killed_probes {
        s.killed(
            &format!("{what}, from a thread started in the lockdown"),
            probe,
            arg,
            "full-thread",
        );
    }
    // Two threads racing for the allocator: they share one arena (a second arena would need
    // mprotect, which kills), and its lock's waits are FUTEX_WAIT|PRIVATE, which the allowlist
    // needs for that.
    let ended = run("malloc_race", "", "full-thread", "");
    s.check(
        "two threads racing for the allocator under the lockdown finish",
        ended == Ended::Exit(0, "ok".into()),
        &ended,
    );
    futex_handshake_checks(&mut s);
    let ended = run("malloc_race", "", "full-thread", "futex=128");
    s.check(
        "futex FUTEX_WAIT|PRIVATE is needed by the allocator lock the threads share",
        ended == Ended::Signal(libc::SIGSYS),
        &ended,
    );
    // Control: with the filter installed on the calling thread only (no TSYNC), the thread
    // escapes seccomp: opening a socket works from it.
    let ended = run("socket", "inet", "full-thread-no-tsync", "");
    s.check(
        "control: without TSYNC, a socket opens from the thread",
        matches!(&ended, Ended::Exit(0, out) if out.starts_with("ok")),
        &ended,
    );

    let ended = run("env_count", "", "full", "");
    s.check(
        "the environment is empty",
        ended == Ended::Exit(0, "ok 0".into()),
        &ended,
    );
    let ended = run("memory_bomb", "", "full", "");
    s.check(
        "a memory bomb dies of SIGABRT (allocation failure under RLIMIT_AS)",
        ended == Ended::Signal(libc::SIGABRT),
        &ended,
    );
    let ended = run("cpu_spin", "", "full-cpu1", "");
    s.check(
        "a CPU spin dies of SIGXCPU",
        ended == Ended::Signal(libc::SIGXCPU),
        &ended,
    );
    let ended = run("stack_overflow", "", "full", "");
    s.check(
        "a stack overflow dies of SIGSEGV/SIGABRT, not SIGSYS",
        matches!(ended, Ended::Signal(libc::SIGSEGV | libc::SIGABRT)),
        &ended,
    );
    let (ended, stderr) = run_full("panic", "", "full", "");
    s.check(
        "a panic exits 101 (worker_crashed) and its stderr is the fixed line, no payload",
        matches!(&ended, Ended::Exit(101, _)) && stderr == "airlock worker: panicked\n",
        (&ended, &stderr),
    );
    let (ended, stderr) = run_full("panic", "", "no-seccomp-no-hook", "");
    s.check(
        "control: without the hook, the panic's payload does reach stderr",
        matches!(&ended, Ended::Exit(101, _)) && stderr.contains("secret cell content"),
        (&ended, &stderr),
    );

    // Every abort-path syscall in the allowlist is needed: without it the memory bomb dies of
    // SIGSYS instead of SIGABRT.
    for syscall in ["rt_sigprocmask", "getpid", "gettid", "tgkill"] {
        let ended = run("memory_bomb", "", "full", syscall);
        s.check(
            &format!("{syscall} is needed by abort()"),
            ended == Ended::Signal(libc::SIGSYS),
            &ended,
        );
    }

    // Regression check: the other layers on their own.
    let ended = run("read_file", &secret, "no-seccomp", "");
    s.check(
        "without seccomp, landlock denies reading (EACCES)",
        errno_of(&ended) == Some(libc::EACCES),
        &ended,
    );
    let ended = run("write_file", &target, "no-seccomp", "");
    s.check(
        "without seccomp, landlock denies creating a file (EACCES)",
        errno_of(&ended) == Some(libc::EACCES),
        &ended,
    );
    let ended = run("tcp_connect", &tcp_addr, "no-seccomp", "");
    s.check(
        "without seccomp, landlock still denies TCP connect (EACCES)",
        errno_of(&ended) == Some(libc::EACCES),
        &ended,
    );
    let ended = run("tcp_connect", &tcp_addr, "no-seccomp-no-ns", "");
    s.check(
        "without seccomp and namespaces, landlock denies TCP connect (EACCES)",
        errno_of(&ended) == Some(libc::EACCES),
        &ended,
    );
    let ended = run("abstract_connect", &abstract_name, "no-seccomp-no-ns", "");
    s.check(
        "without seccomp and namespaces, the landlock scope denies the abstract socket (EPERM)",
        errno_of(&ended) == Some(libc::EPERM),
        &ended,
    );
    let ended = run("udp_send", &udp_addr, "no-seccomp", "");
    s.check(
        "without seccomp, the empty network namespace stops UDP (ENETUNREACH)",
        errno_of(&ended) == Some(libc::ENETUNREACH),
        &ended,
    );
    // Landlock on its own: with seccomp and the namespaces left out, each probe is denied with
    // landlock's errno, and with landlock left out too (the rest of the sandbox identical:
    // rlimits, no capabilities, no_new_privs) the very same probe succeeds as root.
    let ended = run("whoami", "", "no-seccomp-no-ns", "");
    s.check(
        "the landlock probes run as uid 0 (mode bits would let them through)",
        ended == Ended::Exit(0, "ok 0".into()),
        &ended,
    );
    let free_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let parent = std::process::id().to_string();
    let pairs: [(&str, &str, &str, i32); 6] = [
        (
            "reading a world-readable file",
            "read_file",
            &secret,
            libc::EACCES,
        ),
        ("creating a file", "write_file", &target, libc::EACCES),
        ("exec of /bin/true", "execve", "", libc::EACCES),
        (
            "signalling the parent",
            "signal_parent",
            &parent,
            libc::EPERM,
        ),
        ("TCP bind", "tcp_bind", &free_port, libc::EACCES),
        (
            "TCP connect to a live listener",
            "tcp_connect",
            &tcp_addr,
            libc::EACCES,
        ),
    ];
    for (what, probe, arg, errno) in pairs {
        let ended = run(probe, arg, "no-seccomp-no-ns", "");
        s.check(
            &format!("landlock alone denies {what} (errno {errno})"),
            errno_of(&ended) == Some(errno),
            &ended,
        );
        // The thread the lockdown starts inherits the landlock domain.
        let ended = run(probe, arg, "no-seccomp-no-ns-thread", "");
        s.check(
            &format!("landlock alone denies {what} from a thread started in the lockdown"),
            errno_of(&ended) == Some(errno),
            &ended,
        );
        let ended = run(probe, arg, "no-seccomp-no-ns-no-landlock", "");
        // A successful exec replaces the probe with /bin/true: exit 0, nothing printed.
        let want = if probe == "execve" { "" } else { "ok" };
        s.check(
            &format!("control: without landlock, {what} succeeds"),
            matches!(&ended, Ended::Exit(0, out) if out == want || out.starts_with("ok ")),
            &ended,
        );
        if probe == "write_file" {
            let _ = std::fs::remove_file(&target);
        }
    }
    let _ = tcp.accept();
    // Outputs are write-only and mmap is private-anonymous only: no file can be mapped and
    // rewritten after the parent has hashed it.
    s.killed(
        "mmap MAP_SHARED of an output fd",
        "mmap_fd4_shared",
        "",
        "full",
    );
    let ended = run("mmap_fd4_shared", "", "no-seccomp", "");
    s.check(
        "without seccomp, a write-only output fd cannot be mapped (EACCES)",
        errno_of(&ended) == Some(libc::EACCES),
        &ended,
    );
    let ended = run("mmap_fd4_shared", "", "no-seccomp-rdwr4", "");
    s.check(
        "control: without seccomp, a read-write fd can be mapped shared",
        ended == Ended::Exit(0, "ok 0".into()),
        &ended,
    );

    let ended = run("udp_send", &udp_addr, "no-seccomp-no-ns", "");
    let mut buf = [0u8; 16];
    let got = udp.recv(&mut buf).ok();
    s.check(
        "without seccomp and namespaces, UDP gets through: landlock does not cover UDP",
        ended == Ended::Exit(0, "ok".into()) && got == Some(7),
        (&ended, got),
    );
    s.check_parent(
        "no probe ever reached the TCP listener",
        tcp.accept().is_err(),
        (),
    );
    s.check_parent(
        "no probe ever reached the abstract socket",
        unix.accept().is_err(),
        (),
    );
    s.check_parent(
        "the world-readable file is untouched",
        std::fs::read(&secret).unwrap() == b"secret",
        (),
    );
    s.check_parent(
        "no file was created",
        !std::path::Path::new(&target).exists(),
        (),
    );

    let (abis, per_abi_child, per_abi_parent) = older_abis(&mut s, &killed_probes, dir.path());

    println!(
        "\n{} checks ran a probe in a child process, {} were made in the parent",
        s.in_child, s.in_parent
    );
    println!("{} passed, {} failed", s.passed, s.failures.len());
    // The README and BENCHMARKS quote the suite's size on a kernel with landlock ABI 7 (CI's
    // machines); each ABI more or less adds or removes the same checks. A count that drifts from
    // the quoted one fails the suite.
    let at_7 = |count: usize, per_abi: usize| (count + 7 * per_abi).saturating_sub(abis * per_abi);
    let (in_child, in_parent) = (
        at_7(s.in_child, per_abi_child),
        at_7(s.in_parent, per_abi_parent),
    );
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
    )
    .expect("README.md reads");
    let quoted = format!(
        "{} checks in all, at the kernel's ABI and at each older one,\nall but {} of them",
        in_child + in_parent,
        in_parent
    );
    if !readme.contains(&quoted) {
        println!("README.md does not say {quoted:?}");
        return ExitCode::FAILURE;
    }
    let benchmarks = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md"),
    )
    .expect("BENCHMARKS.md reads");
    let quoted = format!(
        "**{} checks**, {} made on a\nprobe run in its own locked-down child process and {} made in the parent",
        in_child + in_parent,
        in_child,
        in_parent
    );
    if !benchmarks.contains(&quoted) {
        println!("BENCHMARKS.md does not say {quoted:?}");
        return ExitCode::FAILURE;
    }
    if s.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What a probe did with some layers left out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Refused with this errno.
    Denied(i32),
    /// It worked: only the layers left out would have stopped it.
    Got,
}

/// The escape suite at every landlock ABI from 1 to the kernel's: the ruleset is built for that
/// ABI (`max_abi`), as on a kernel that offers no more. Every probe must still be killed with the
/// whole lockdown in force; then the probes that landlock covers from some ABI on run without
/// seccomp, and without seccomp and the namespaces, to show which layer stops each at each ABI.
///
/// Returns how many ABIs it ran, and the checks each ABI adds (in a child, in the parent).
fn older_abis(
    s: &mut Suite,
    killed_probes: &[(String, &str, &str)],
    dir: &std::path::Path,
) -> (usize, usize, usize) {
    use Outcome::{Denied, Got};
    let kernel = airlock_sandbox::landlock::kernel_abi();
    s.check_parent(
        "the kernel offers landlock ABI 6 or later (the scopes), so ABIs 1 to 6 at least can each be built",
        kernel >= 6,
        kernel,
    );
    // Fresh targets: some probes below get through (that is what they show).
    let file = dir.join("older-abi.txt");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let tcp_addr = tcp.local_addr().unwrap().to_string();
    let abstract_name = format!("airlock-escape-abi-{}", std::process::id());
    let unix = {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        UnixListener::bind_addr(&addr).unwrap()
    };
    unix.set_nonblocking(true).unwrap();
    let me = std::process::id().to_string();
    let mut table = Vec::new();
    let mut per_abi = (0, 0);
    let abis = kernel.min(airlock_sandbox::policy::LATEST_ABI);
    for abi in 1..=abis {
        let counted = (s.in_child, s.in_parent);
        let full = format!("full-abi{abi}");
        for (what, probe, arg) in killed_probes {
            s.killed(what, probe, arg, &full);
        }
        // A process to aim SIGABRT at: the control below does kill it.
        let mut victim = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let victim_pid = victim.id().to_string();
        s.killed(
            "SIGABRT by tgkill to another process",
            "tgkill_other",
            &victim_pid,
            &full,
        );
        s.check_parent(
            &format!("ABI {abi}: the process the worker aimed SIGABRT at lives"),
            victim.try_wait().unwrap().is_none(),
            (),
        );
        let free_port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        std::fs::write(&file, b"secret").unwrap();
        let file = file.to_str().unwrap();
        let landlock = |from: u8, errno: i32, below: Outcome| {
            if abi >= from {
                Denied(errno)
            } else {
                below
            }
        };
        // (what, probe, arg, without seccomp, without seccomp and namespaces, who stops it)
        let rows: [(&str, &str, &str, Outcome, Outcome); 9] = [
            (
                "read a file",
                "read_file",
                file,
                Denied(libc::EACCES),
                Denied(libc::EACCES),
            ),
            (
                "create a file",
                "write_file",
                &format!("{file}.new"),
                Denied(libc::EACCES),
                Denied(libc::EACCES),
            ),
            (
                "exec /bin/true",
                "execve",
                "",
                Denied(libc::EACCES),
                Denied(libc::EACCES),
            ),
            (
                "truncate a file",
                "truncate_file",
                file,
                landlock(3, libc::EACCES, Got),
                landlock(3, libc::EACCES, Got),
            ),
            (
                "TCP connect",
                "tcp_connect",
                &tcp_addr,
                landlock(4, libc::EACCES, Denied(libc::ENETUNREACH)),
                landlock(4, libc::EACCES, Got),
            ),
            // In the empty namespace a bind works (127.0.0.1 is there, lo is down) but nothing can
            // reach the port.
            (
                "TCP bind",
                "tcp_bind",
                &free_port,
                landlock(4, libc::EACCES, Got),
                landlock(4, libc::EACCES, Got),
            ),
            // The name is looked up in the worker's own network namespace first, at every ABI.
            (
                "abstract socket connect",
                "abstract_connect",
                &abstract_name,
                Denied(libc::ECONNREFUSED),
                landlock(6, libc::EPERM, Got),
            ),
            (
                "signal the parent (kill 0)",
                "signal_parent",
                &me,
                landlock(6, libc::EPERM, Got),
                landlock(6, libc::EPERM, Got),
            ),
            (
                "SIGABRT another process",
                "tgkill_other",
                &victim_pid,
                landlock(6, libc::EPERM, Got),
                landlock(6, libc::EPERM, Got),
            ),
        ];
        for (what, probe, arg, no_seccomp, neither) in rows {
            for (variant, want) in [("no-seccomp", no_seccomp), ("no-seccomp-no-ns", neither)] {
                // The last row would kill the victim; run it once, in the last variant.
                if probe == "tgkill_other" && variant == "no-seccomp" {
                    continue;
                }
                let ended = run(probe, arg, &format!("{variant}-abi{abi}"), "");
                let got = match (&ended, errno_of(&ended)) {
                    (_, Some(errno)) => Some(Denied(errno)),
                    (Ended::Exit(0, out), None)
                        if out == "ok" || out.starts_with("ok ") || out.is_empty() =>
                    {
                        Some(Got)
                    }
                    _ => None,
                };
                s.check(
                    &format!("ABI {abi}, {variant}: {what} is {want:?}"),
                    got == Some(want),
                    &ended,
                );
            }
            let stopped_by = match (no_seccomp, neither) {
                (_, Denied(_)) => "landlock",
                (Denied(_), Got) => "seccomp, then the network namespace",
                (Got, Got) if probe == "tcp_bind" => {
                    "seccomp alone (bound in the empty namespace, the port is unreachable)"
                }
                (Got, Got) => "seccomp alone",
            };
            table.push(format!("  ABI {abi}  {what:<28} {stopped_by}"));
            let _ = std::fs::remove_file(format!("{file}.new"));
            std::fs::write(file, b"secret").unwrap();
        }
        let victim_died = victim.wait_timeout_or_kill();
        s.check_parent(
            &format!("ABI {abi}: the control's SIGABRT reached the victim only where landlock has no signal scope"),
            victim_died == (abi < 6),
            (abi, victim_died),
        );
        // With seccomp in force but tgkill not pinned to the worker's pid, the same SIGABRT gets
        // through below ABI 6: the pin is what stops it there.
        let mut victim = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let ended = run(
            "tgkill_other",
            &victim.id().to_string(),
            &format!("full-no-pin-abi{abi}"),
            "",
        );
        let victim_died = victim.wait_timeout_or_kill();
        s.check(
            &format!("ABI {abi}, seccomp without the pid pin: SIGABRT reaches another process only below ABI 6"),
            victim_died == (abi < 6) && (abi < 6 || errno_of(&ended) == Some(libc::EPERM)),
            (&ended, victim_died),
        );
        per_abi = (s.in_child - counted.0, s.in_parent - counted.1);
    }
    while tcp.accept().is_ok() {}
    while unix.accept().is_ok() {}
    println!("\nWhat stops each probe with seccomp left out, by landlock ABI (with seccomp in force, seccomp kills every one at every ABI):");
    for line in table {
        println!("{line}");
    }
    (usize::from(abis), per_abi.0, per_abi.1)
}

trait WaitOrKill {
    /// Whether the process died of a signal within a second; kills and reaps it either way.
    fn wait_timeout_or_kill(&mut self) -> bool;
}

impl WaitOrKill for std::process::Child {
    fn wait_timeout_or_kill(&mut self) -> bool {
        for _ in 0..100 {
            if let Some(status) = self.try_wait().unwrap() {
                return status.signal() == Some(libc::SIGABRT);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.kill();
        let _ = self.wait();
        false
    }
}
