//! Airlock's worker sandbox: how a worker process is started and locked down.
//!
//! This is the only crate with `unsafe` code; every block carries a `// SAFETY:` comment.
//!
//! - [`spawn`] (parent side): start the worker by a fresh `exec`, with a cleared environment and
//!   exactly the fds of the worker contract: 0 input, 1 clean output, 2 diagnostics, 3 report,
//!   4 rejects. Never fork without exec.
//! - [`fds`] (worker side): take ownership of those fds, once, at the top of the worker.
//! - [`lockdown`] (worker side): panic hook, compile seccomp, close every other fd, rlimits, new
//!   user+net+ipc+uts+mount namespaces, drop capabilities, no_new_privs, landlock with zero
//!   rules, seccomp allowlist last. Fails closed.
//! - [`policy`]: `policies/seccomp.json` and `policies/sandbox.toml`, validated.
//! - [`host`]: what the kernel offers, for `airlock doctor`.
//!
//! # What it must never do
//!
//! Parse or even look at the untrusted bytes; it only arranges who can touch them.
//!
//! # Tests
//!
//! `tests/escape.rs` runs each probe in its own child process under the production policy and
//! checks that the denial came from the sandbox, not from file permissions (we run as root).

pub mod fds;
pub mod host;
pub mod landlock;
pub mod lockdown;
pub mod policy;
pub mod seccomp;
pub mod spawn;
