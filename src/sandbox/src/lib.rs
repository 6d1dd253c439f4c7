//! Airlock's worker sandbox: how a worker process is started and locked down.
//!
//! This is the only crate with `unsafe` code; every block carries a `// SAFETY:` comment.
//!
//! - [`spawn`] (parent side): start the worker by a fresh `exec`, with a cleared environment and
//!   exactly the fds of the worker contract: 0 input, 1 clean output, 2 diagnostics, 3 report,
//!   4 rejects. Never fork without exec.
//! - [`fds`] (worker side): take ownership of those fds, once, at the top of the worker.
//!
//! # What it must never do
//!
//! Parse or even look at the untrusted bytes; it only arranges who can touch them.

pub mod fds;
pub mod spawn;
