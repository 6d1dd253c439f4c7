//! Airlock's validation engine: the only code that parses untrusted bytes.
//!
//! One streaming pass turns an untrusted upload into a clean CSV, a rejects CSV and a
//! [`Report`]: type and encoding check (`text`), delimiter sniffing ([`sniff`]), structure
//! (plain lines split in place, every other record through `csv-core` into fixed buffers: see
//! [`ParsePath`]), and the formula guard ([`guard`]).
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
//! - Encoding is decided from the first block (256 KiB): a file that is valid UTF-8 there but not
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
pub mod schema;
pub mod sniff;
mod text;

/// The report contract lives in its own crate (`airlock-report`), so code that only reads
/// reports does not depend on the parser.
pub use airlock_report as report;
pub use airlock_report::{
    output_bound, rejects_bound, Code, Limits, Report, Status, HEADER_NAME_IN_REPORT, OUTPUT_SLACK,
    REJECTS_FLOOR,
};
pub use encoding_rs::Encoding;
pub use engine::{process, Helper};

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
    /// Check every row against this Table Schema.
    pub schema: Option<std::sync::Arc<schema::Schema>>,
    /// Memory for `unique` and `primaryKey` keys (16 bytes each); past it the file is rejected
    /// with `key_budget_exceeded`.
    pub key_budget_bytes: usize,
    /// The input's size, when known: the key table starts sized for it (assuming rows of 64
    /// bytes or more) and grows up to `key_budget_bytes` if rows are shorter. Without it the
    /// table starts at the whole budget.
    pub input_bytes_hint: Option<u64>,
    /// How records are read; [`ParsePath::PlainLines`] unless a test wants the oracle.
    pub parse_path: ParsePath,
    /// A second thread that checks batches of rows against the schema while the engine reads
    /// on (see [`Helper`]); without it every check runs on the caller's thread.
    pub helper: Option<std::sync::Arc<Helper>>,
    /// When set, the run adds how many records each parse path read (tests use it to prove the
    /// oracle path really ran).
    pub tally: Option<std::sync::Arc<PathTally>>,
}

/// How many records each [`ParsePath`] handled, added up over the runs given it.
#[derive(Debug, Default)]
pub struct PathTally {
    plain: std::sync::atomic::AtomicU64,
    csv_core: std::sync::atomic::AtomicU64,
}

impl PathTally {
    /// Records split in place as plain lines.
    pub fn plain(&self) -> u64 {
        self.plain.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records read by `csv-core`.
    pub fn csv_core(&self) -> u64 {
        self.csv_core.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn add(&self, plain: u64, csv_core: u64) {
        self.plain
            .fetch_add(plain, std::sync::atomic::Ordering::Relaxed);
        self.csv_core
            .fetch_add(csv_core, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How the engine turns text into records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ParsePath {
    /// Lines with no quote and no carriage return are split in place at the delimiter and, when
    /// nothing in them needs rewriting, copied to the output whole; every other record goes
    /// through `csv-core`. The default.
    #[default]
    PlainLines,
    /// Every record through `csv-core`, byte at a time: the reference the fast path is tested
    /// against (same records, same report, same bytes out).
    CsvCore,
}

/// The default memory for schema keys: 64 MiB, about 3.7 million keys.
pub const DEFAULT_KEY_BUDGET: usize = 64 << 20;

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            delimiter: None,
            fallback_encoding: None,
            hash_input: true,
            hash_output: true,
            schema: None,
            key_budget_bytes: DEFAULT_KEY_BUDGET,
            input_bytes_hint: None,
            parse_path: ParsePath::default(),
            helper: None,
            tally: None,
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

/// Look an encoding up by its WHATWG label (`windows-1252`, `latin1`, `shift_jis`, …).
pub fn encoding_for_label(label: &str) -> Option<&'static Encoding> {
    Encoding::for_label(label.as_bytes())
}
