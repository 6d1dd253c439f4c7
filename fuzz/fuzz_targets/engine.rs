//! Arbitrary bytes through the engine with small limits: it must never panic, what it accepts
//! must be UTF-8 CSV whose every record has the header's width, and the output and rejects stay
//! within their bounds of the input size; and csv-core alone (`ParsePath::CsvCore`, the oracle)
//! gives the same output, rejects and report as the plain-line path. The first byte picks the delimiter, a fallback
//! encoding and (bit 3) a Table Schema with `unique`, a primary key and a tiny key budget.
#![no_main]

use airlock_engine::{
    output_bound, process, rejects_bound, Limits, Options, ParsePath, PathTally, Status,
};
use libfuzzer_sys::fuzz_target;

/// The schema of the schema runs: every kind of key, a format, a date, header matching by
/// name (`partial`, so most headers fit), and a 64-key budget (the budget's rejection too).
pub fn schema() -> std::sync::Arc<airlock_engine::schema::Schema> {
    static SCHEMA: std::sync::OnceLock<std::sync::Arc<airlock_engine::schema::Schema>> =
        std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            std::sync::Arc::new(
                airlock_engine::schema::Schema::parse(
                    r#"{"fields": [
                        {"name": "a", "type": "integer", "constraints": {"unique": true}},
                        {"name": "b", "type": "string", "format": "email",
                         "constraints": {"pattern": "[^x]*", "maxLength": 20}},
                        {"name": "c", "type": "date", "constraints": {"required": true}}],
                     "fieldsMatch": "partial", "primaryKey": ["a", "c"]}"#,
                )
                .expect("the fuzz schema loads"),
            )
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let (delimiter, fallback, with_schema, input) = match data.split_first() {
        Some((&b, rest)) => (
            [None, Some(b','), Some(b';'), Some(b'\t')][usize::from(b & 3)],
            (b & 4 != 0)
                .then_some(airlock_engine::encoding_for_label("windows-1252"))
                .flatten(),
            b & 8 != 0,
            rest,
        ),
        None => (None, None, false, data),
    };
    let options = Options {
        limits: Limits {
            max_bytes: 1 << 20,
            max_rows: 1000,
            max_columns: 16,
            max_field_bytes: 256,
            max_record_bytes: 1024,
            max_rejected_ratio: 0.5,
            max_issues: 10,
        },
        delimiter,
        fallback_encoding: fallback,
        hash_input: true,
        hash_output: true,
        schema: with_schema.then(schema),
        key_budget_bytes: 16 * 64,
        ..Options::default()
    };
    let mut out = Vec::new();
    let mut rej = Vec::new();
    let report = process(input, &mut out, &mut rej, &options).expect("in-memory I/O cannot fail");
    // The differential check: csv-core alone (the old path, the oracle) reads the same records,
    // so it writes the same bytes and the same report.
    let tally = std::sync::Arc::new(PathTally::default());
    let oracle = Options {
        parse_path: ParsePath::CsvCore,
        tally: Some(tally.clone()),
        ..options.clone()
    };
    let (mut oracle_out, mut oracle_rej) = (Vec::new(), Vec::new());
    let oracle_report = process(input, &mut oracle_out, &mut oracle_rej, &oracle)
        .expect("in-memory I/O cannot fail");
    // The oracle is only one if it ran: csv-core read every record it handed on.
    assert_eq!(tally.plain(), 0, "the oracle run split plain lines");
    assert!(out == oracle_out, "the parse paths wrote different outputs");
    assert!(rej == oracle_rej, "the parse paths wrote different rejects");
    assert_eq!(
        serde_json::to_string(&report).expect("report serializes"),
        serde_json::to_string(&oracle_report).expect("report serializes"),
        "the parse paths wrote different reports"
    );
    assert_eq!(report.input.bytes, input.len() as u64);
    assert!(out.len() as u64 <= output_bound(input.len() as u64));
    assert!(rej.len() as u64 <= rejects_bound(input.len() as u64));
    assert_eq!(report.output.bytes, out.len() as u64);
    assert_eq!(report.rejects.bytes, rej.len() as u64);
    assert_eq!(
        report.rows.accepted + report.rows.rejected + report.rows.blank,
        report.rows.total
    );
    if report.status == Status::Accepted {
        assert!(std::str::from_utf8(&out).is_ok());
        let width = report.header.len();
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&out[..]);
        for record in rd.records() {
            assert_eq!(record.expect("output parses").len(), width);
        }
    }
});
