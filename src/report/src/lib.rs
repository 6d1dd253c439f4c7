//! The contract between the worker and everything else: the report (DESIGN §3.2), the stable
//! codes (DESIGN §3.3), the limits a plan sets, and the bounds the parent enforces on what a
//! worker writes.
//!
//! The same types are serialized by the worker and parsed, strictly, by the parent: every struct
//! refuses unknown fields, so a worker that was made to write something else is caught. This
//! crate has no parser in it: the supervisor, `doctor` and the service depend on it, and only the
//! worker depends on the engine (`airlock-engine`).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Overall outcome of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The file is clean CSV; the output is usable.
    Accepted,
    /// The file broke a rule; `rejection` says which.
    Rejected,
    /// The worker did not finish (crash, limit, sandbox violation).
    Failed,
}

/// Every stable code. File-level rejections, row-level issues, informational notes and failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    // File-level rejections.
    TooLarge,
    Empty,
    NotCsv,
    BinaryContent,
    InvalidEncoding,
    UnsupportedEncoding,
    NoHeader,
    BlankHeader,
    DuplicateHeader,
    TooManyColumns,
    TooManyRows,
    FieldTooLong,
    RecordTooLong,
    UnterminatedQuote,
    TooManyBadRows,
    /// The header does not fit the job's schema (a required column missing, extra or misplaced
    /// columns where `fieldsMatch` forbids them).
    SchemaMismatch,
    /// `unique` and `primaryKey` need more keys than the plan's key memory holds.
    KeyBudgetExceeded,
    // Row-level.
    RaggedRow,
    /// A cell does not parse as its field's type or format.
    TypeError,
    /// A cell breaks a field constraint (required, length, range, pattern, enum).
    ConstraintError,
    /// A value (or primary key) already seen in an earlier row.
    UniqueError,
    // Informational.
    BlankRow,
    FormulaEscaped,
    // Failures.
    Timeout,
    MemoryLimit,
    CpuLimit,
    SandboxViolation,
    WorkerCrashed,
    SandboxUnavailable,
}

impl Code {
    /// Every code, in contract order; used by docs and tests.
    pub const ALL: [Code; 29] = [
        Code::TooLarge,
        Code::Empty,
        Code::NotCsv,
        Code::BinaryContent,
        Code::InvalidEncoding,
        Code::UnsupportedEncoding,
        Code::NoHeader,
        Code::BlankHeader,
        Code::DuplicateHeader,
        Code::TooManyColumns,
        Code::TooManyRows,
        Code::FieldTooLong,
        Code::RecordTooLong,
        Code::UnterminatedQuote,
        Code::TooManyBadRows,
        Code::SchemaMismatch,
        Code::KeyBudgetExceeded,
        Code::RaggedRow,
        Code::TypeError,
        Code::ConstraintError,
        Code::UniqueError,
        Code::BlankRow,
        Code::FormulaEscaped,
        Code::Timeout,
        Code::MemoryLimit,
        Code::CpuLimit,
        Code::SandboxViolation,
        Code::WorkerCrashed,
        Code::SandboxUnavailable,
    ];

    /// A file-level rejection code (status `rejected`).
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            Code::TooLarge
                | Code::Empty
                | Code::NotCsv
                | Code::BinaryContent
                | Code::InvalidEncoding
                | Code::UnsupportedEncoding
                | Code::NoHeader
                | Code::BlankHeader
                | Code::DuplicateHeader
                | Code::TooManyColumns
                | Code::TooManyRows
                | Code::FieldTooLong
                | Code::RecordTooLong
                | Code::UnterminatedQuote
                | Code::TooManyBadRows
                | Code::SchemaMismatch
                | Code::KeyBudgetExceeded
        )
    }

    /// A failure code (status `failed`).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Code::Timeout
                | Code::MemoryLimit
                | Code::CpuLimit
                | Code::SandboxViolation
                | Code::WorkerCrashed
                | Code::SandboxUnavailable
        )
    }

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::TooLarge => "too_large",
            Code::Empty => "empty",
            Code::NotCsv => "not_csv",
            Code::BinaryContent => "binary_content",
            Code::InvalidEncoding => "invalid_encoding",
            Code::UnsupportedEncoding => "unsupported_encoding",
            Code::NoHeader => "no_header",
            Code::BlankHeader => "blank_header",
            Code::DuplicateHeader => "duplicate_header",
            Code::TooManyColumns => "too_many_columns",
            Code::TooManyRows => "too_many_rows",
            Code::FieldTooLong => "field_too_long",
            Code::RecordTooLong => "record_too_long",
            Code::UnterminatedQuote => "unterminated_quote",
            Code::TooManyBadRows => "too_many_bad_rows",
            Code::SchemaMismatch => "schema_mismatch",
            Code::KeyBudgetExceeded => "key_budget_exceeded",
            Code::RaggedRow => "ragged_row",
            Code::TypeError => "type_error",
            Code::ConstraintError => "constraint_error",
            Code::UniqueError => "unique_error",
            Code::BlankRow => "blank_row",
            Code::FormulaEscaped => "formula_escaped",
            Code::Timeout => "timeout",
            Code::MemoryLimit => "memory_limit",
            Code::CpuLimit => "cpu_limit",
            Code::SandboxViolation => "sandbox_violation",
            Code::WorkerCrashed => "worker_crashed",
            Code::SandboxUnavailable => "sandbox_unavailable",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a file was not accepted. Positions are set where they mean something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
    /// Byte offset in the input (encoding and binary-content errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_offset: Option<u64>,
    /// Record number, counting the header as record 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    /// Physical line (1-based) where the record starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Column (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// The limit that was exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// What the file is instead, for `not_csv` (a MIME type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_type: Option<String>,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            byte_offset: None,
            record: None,
            line: None,
            column: None,
            limit: None,
            detected_type: None,
        }
    }

    pub fn at_byte(mut self, offset: u64) -> Self {
        self.byte_offset = Some(offset);
        self
    }

    pub fn at(mut self, record: u64, line: u64, column: Option<u64>) -> Self {
        self.record = Some(record);
        self.line = Some(line);
        self.column = column;
        self
    }

    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// What the input was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputInfo {
    pub bytes: u64,
    pub sha256: String,
    pub detected_type: String,
    pub encoding: Option<String>,
    pub bom: bool,
}

/// The dialect the parse used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialect {
    pub delimiter: String,
    pub quote: String,
    /// `lf`, `crlf`, `cr`, `mixed`, or `none` for a single line without terminator.
    pub line_terminator: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowCounts {
    /// Data records seen after the header: accepted + rejected + blank.
    pub total: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub blank: u64,
}

/// One row-level or informational finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issue {
    pub code: Code,
    /// Record number, counting the header as record 1.
    pub row: u64,
    /// Physical line (1-based) where the record starts.
    pub line: u64,
    /// Column (1-based), where one column is to blame.
    pub column: Option<u64>,
    /// The schema field, for schema issues (`type_error`, `constraint_error`, `unique_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputInfo {
    pub bytes: u64,
    pub sha256: String,
}

/// The rejects file. It holds at most [`rejects_bound`] bytes: past that, rejected rows
/// are still counted (`rows.rejected`, `issue_counts`) but no longer written, and `truncated` is
/// set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectsInfo {
    pub bytes: u64,
    pub sha256: String,
    /// Rows written to the file (the header line not counted).
    #[serde(default)]
    pub rows_written: u64,
    #[serde(default)]
    pub truncated: bool,
}

/// The report for one file (DESIGN §3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub status: Status,
    pub rejection: Option<Rejection>,
    pub input: InputInfo,
    pub dialect: Option<Dialect>,
    pub header: Vec<String>,
    pub rows: RowCounts,
    pub issue_counts: BTreeMap<Code, u64>,
    pub issues: Vec<Issue>,
    pub output: OutputInfo,
    /// The rejects file: its size and hash, and whether rows were left out of it.
    pub rejects: RejectsInfo,
    /// The sandbox layers the worker ran under (filled in by the worker, not the engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSummary>,
    /// With a schema: which header went to which field, and per-field counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaSummary>,
}

/// What a schema found: the header mapping and, per field, errors and missing values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSummary {
    /// Header label → schema field, for every column the schema names.
    pub header_mapping: BTreeMap<String, String>,
    /// Per schema field (in schema order).
    pub fields: Vec<FieldCounts>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldCounts {
    pub name: String,
    /// Data column (1-based) that carries it; `None` when the data has no such column.
    pub column: Option<u64>,
    /// Cells that broke the field's type or constraints (`unique` included).
    pub errors: u64,
    /// Cells that held a missing value (`missingValues`).
    pub missing: u64,
}

/// Which lockdown layers were in force, and which optional ones the host could not provide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSummary {
    pub enforced: Vec<String>,
    pub missing: Vec<String>,
    /// The ABI the worker's landlock ruleset was built for (the kernel's, capped by the policy).
    pub landlock_abi: u8,
    /// Landlock rights and scopes newer than that ABI, which the ruleset therefore lacks (other
    /// layers still stop what they cover; SECURITY.md). Filled in by the parent from the ABI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub landlock_missing: Vec<String>,
}

impl Report {
    /// A report for a file that was never read: the size alone decided, or the worker failed.
    pub fn without_input(status: Status, rejection: Rejection, bytes: u64) -> Self {
        Report {
            status,
            rejection: Some(rejection),
            input: InputInfo {
                bytes,
                sha256: String::new(),
                detected_type: "unknown".into(),
                encoding: None,
                bom: false,
            },
            dialect: None,
            header: Vec::new(),
            rows: RowCounts::default(),
            issue_counts: BTreeMap::new(),
            issues: Vec::new(),
            output: OutputInfo::default(),
            rejects: RejectsInfo::default(),
            sandbox: None,
            schema: None,
        }
    }
}

/// A short, escaped excerpt of untrusted text for messages: never more than `max` characters,
/// control characters and quotes escaped.
pub fn excerpt(text: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(text);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in Code::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn report_refuses_unknown_fields() {
        let report = Report::without_input(Status::Failed, Rejection::new(Code::Timeout, "t"), 3);
        let mut value = serde_json::to_value(&report).unwrap();
        assert!(serde_json::from_value::<Report>(value.clone()).is_ok());
        value["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Report>(value).is_err());
    }

    #[test]
    fn excerpt_is_short_and_escaped() {
        assert_eq!(excerpt(b"a\"b\nc", 10), "a\\\"b\\nc");
        assert_eq!(excerpt("ééééé".as_bytes(), 2), "éé…");
    }
}

/// Size limits for one file; every buffer the engine allocates is derived from these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Header names longer than this are shortened in the report (not in the output), at a
/// character boundary.
pub const HEADER_NAME_IN_REPORT: usize = 1024;
