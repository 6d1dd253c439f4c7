//! Airlock's validation engine: the only code that parses untrusted bytes.
//!
//! One streaming pass turns an untrusted upload into a clean CSV, a rejects CSV and a
//! [`Report`]: type and encoding check (`text`), delimiter sniffing ([`sniff`]), structure
//! (`csv-core` into fixed buffers), and the formula guard ([`guard`]).
//!
//! # What it must never do
//!
//! - Any I/O of its own: input is `impl Read`, outputs are `impl Write`. No files, sockets or
//!   processes; it runs inside the locked-down worker, where those calls would kill it.
//! - Grow memory with the input: every buffer is sized from [`Limits`] up front, so peak memory is
//!   the same for a 20 MB and a 1 GB file, and a quote left open at the top of a file cannot turn
//!   the rest of it into one giant field.
//! - Echo cell contents beyond a short escaped [`report::excerpt`]; none of it is logged.
//!
//! # Limitations
//!
//! - Encoding is decided from the first block (128 KiB): a file that is valid UTF-8 there but not
//!   later is `invalid_encoding` even when the plan names a fallback encoding.
//! - Line-terminator style counts every break, including ones inside quoted fields.
//!
//! # Tests
//!
//! Unit tests per stage sit beside each module; `tests/` holds end-to-end cases, a proptest
//! round trip against the `csv` crate, and a memory bound check.

#![forbid(unsafe_code)]
// A rejection ends the file; it is built at most once per run, so its size does not matter.
#![allow(clippy::result_large_err)]

mod engine;
pub mod guard;
mod lines;
mod quote;
pub mod report;
pub mod sniff;
mod text;

pub use encoding_rs::Encoding;
pub use engine::{process, HEADER_NAME_IN_REPORT};
pub use report::{Code, Report, Status};

/// Size limits for one file; every buffer the engine allocates is derived from these.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_rows: u64,
    pub max_columns: usize,
    pub max_field_bytes: usize,
    pub max_record_bytes: usize,
    /// Rejected rows allowed, as a fraction of data rows (0.1 = 10%).
    pub max_rejected_ratio: f64,
    /// Issues listed in the report (all are counted).
    pub max_issues: usize,
}

impl Default for Limits {
    /// The default plan of DESIGN §3.4.
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_rows: 10_000_000,
            max_columns: 1024,
            max_field_bytes: 64 * 1024,
            max_record_bytes: 1024 * 1024,
            max_rejected_ratio: 0.10,
            max_issues: 100,
        }
    }
}

/// How to read one file.
#[derive(Debug, Clone)]
pub struct Options {
    pub limits: Limits,
    /// The delimiter, when the job names one; otherwise sniffed.
    pub delimiter: Option<u8>,
    /// Transcode from this encoding when the input is not UTF-8 (default: strict UTF-8).
    pub fallback_encoding: Option<&'static Encoding>,
    /// Compute `input.sha256` (default). A caller that hashes the input itself, on another core,
    /// turns this off and fills the field in.
    pub hash_input: bool,
    /// Compute `output.sha256` (default); see `hash_input`.
    pub hash_output: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            delimiter: None,
            fallback_encoding: None,
            hash_input: true,
            hash_output: true,
        }
    }
}

/// The engine could not finish: reading or writing failed. Bad *content* is never an error; it is
/// a [`Report`] with status `rejected`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("reading the input failed")]
    ReadInput(#[source] std::io::Error),
    #[error("writing the clean output failed")]
    WriteOutput(#[source] std::io::Error),
    #[error("writing the rejects file failed")]
    WriteRejects(#[source] std::io::Error),
}

/// Constant slack in [`output_bound`]: a last record without a line break gains one.
pub const OUTPUT_SLACK: u64 = 64 * 1024;
/// Constant floor of [`rejects_bound`]: room for a few rejected rows of even a tiny file.
pub const REJECTS_FLOOR: u64 = 1024 * 1024;

/// The most bytes the clean output can have for an input of `input_bytes`: 3 × the input, plus
/// [`OUTPUT_SLACK`]. One input byte becomes at most three output bytes (a windows-1252 byte
/// transcoded to UTF-8); quoting and the formula guard add at most three bytes per cell, and every
/// cell but the last costs at least one delimiter byte in the input. The parent enforces it.
pub fn output_bound(input_bytes: u64) -> u64 {
    input_bytes.saturating_mul(3).saturating_add(OUTPUT_SLACK)
}

/// The most bytes the rejects file can have for an input of `input_bytes`: 2 × the input, plus
/// [`REJECTS_FLOOR`]. The engine stops writing rows before it would pass this (the report's
/// `rejects.truncated`), and the parent enforces it.
pub fn rejects_bound(input_bytes: u64) -> u64 {
    input_bytes.saturating_mul(2).saturating_add(REJECTS_FLOOR)
}

/// Look an encoding up by its WHATWG label (`windows-1252`, `latin1`, `shift_jis`, …).
pub fn encoding_for_label(label: &str) -> Option<&'static Encoding> {
    Encoding::for_label(label.as_bytes())
}
