//! Differential test of the schema helper: checking batches of rows on a second thread must give
//! the same clean output, rejects file and report, byte for byte, as checking every row on the
//! caller's thread. The files are long enough for many batches to pass through the helper, and
//! mix in what settles the waiting rows early (blank lines, ragged rows, a field over the limit),
//! repeated keys, cells that break the schema, the key budget running out and the row limit.

use std::sync::Arc;

use airlock_engine::{process, Helper, Limits, Options};
use proptest::prelude::*;

mod common;
use common::Trickle;

/// A file of `rows` data rows drawn from `seed`: `rare` in 1,000 rows is something other than
/// a plain valid row; with `long`, one of those kinds is a field over the limit (which ends the
/// file). The first `crlf` rows end in CRLF, the rest in LF.
fn file(seed: u64, rows: usize, rare: u64, long: bool, crlf: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut f = match crlf {
        0 => b"id,email,n,country\n".to_vec(),
        _ => b"id,email,n,country\r\n".to_vec(),
    };
    for i in 0..rows {
        let roll = next() % 1000;
        let line = if roll >= rare {
            format!("{i},user{i}@example.com,{},ES\n", next() % 500)
        } else {
            match next() % if long { 9 } else { 8 } {
                0 => "\n".to_string(),
                1 => format!("{i},a@b.co\n"),
                2 => format!("{},dup{}@example.com,1,GB\n", next() % 50, next() % 20),
                3 => format!("{i},not an email,2,DE\n"),
                4 => format!("{i},x{i}@example.com,-5,FR\n"),
                5 => format!("{i},y{i}@example.com,seven,ZZ\n"),
                6 => format!("{i},,3,\n"),
                7 => format!("{i},\"q,{i}\"\"@example.com\",4,ES\n"),
                _ => format!("{i},{},5,ES\n", "z".repeat(300)),
            }
        };
        match line.strip_suffix('\n') {
            Some(l) if i < crlf => {
                f.extend_from_slice(l.as_bytes());
                f.extend_from_slice(b"\r\n");
            }
            _ => f.extend_from_slice(line.as_bytes()),
        }
    }
    f
}

const SCHEMA: &str = r#"{
  "fields": [
    {"name": "id", "type": "integer"},
    {"name": "email", "type": "string", "format": "email",
     "constraints": {"required": true, "unique": true}},
    {"name": "n", "type": "integer", "constraints": {"minimum": 0}},
    {"name": "country", "type": "string", "constraints": {"enum": ["ES", "GB", "DE", "FR"]}}
  ],
  "primaryKey": ["id", "country"]
}"#;

fn options(key_budget: usize, max_rows: u64, helper: Option<Arc<Helper>>) -> Options {
    Options {
        limits: Limits {
            max_field_bytes: 200,
            max_rows,
            max_rejected_ratio: 1.0,
            ..Limits::default()
        },
        schema: Some(Arc::new(
            airlock_engine::schema::Schema::parse(SCHEMA).expect("the schema loads"),
        )),
        key_budget_bytes: key_budget,
        helper,
        ..Options::default()
    }
}

fn run(input: &[u8], options: &Options) -> (Vec<u8>, Vec<u8>, String) {
    run_in(input, usize::MAX, options)
}

fn run_in(input: &[u8], step: usize, options: &Options) -> (Vec<u8>, Vec<u8>, String) {
    let (mut out, mut rej) = (Vec::new(), Vec::new());
    let input = Trickle { bytes: input, step };
    let report = process(input, &mut out, &mut rej, options).expect("in-memory I/O cannot fail");
    let report = serde_json::to_string_pretty(&report).expect("the report serializes");
    (out, rej, report)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_helper_changes_nothing_but_the_thread(
        seed in any::<u64>(),
        rows in 0usize..30_000,
        rare in prop_oneof![Just(0u64), 1u64..30, Just(1000)],
        long in prop_oneof![4 => Just(false), 1 => Just(true)],
        crlf in prop_oneof![Just(0usize), 0usize..30_000],
        step in prop_oneof![Just(usize::MAX), 512usize..65_536],
        key_budget in prop_oneof![Just(64usize << 20), (16usize * 64)..(16 * 4096)],
        max_rows in prop_oneof![Just(u64::MAX), 1u64..12_000],
    ) {
        let input = file(seed, rows, rare, long, crlf);
        let helper = Arc::new(Helper::spawn().expect("a thread starts"));
        let alone = run_in(&input, step, &options(key_budget, max_rows, None));
        let helped = run_in(&input, step, &options(key_budget, max_rows, Some(helper)));
        prop_assert_eq!(&alone.2, &helped.2, "report");
        prop_assert!(alone.0 == helped.0, "clean output differs");
        prop_assert!(alone.1 == helped.1, "rejects differ");
    }
}

/// An output that fails after `left` bytes.
struct Failing {
    left: usize,
}

impl std::io::Write for Failing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            return Err(std::io::Error::other("disk full"));
        }
        self.left -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_run_that_fails_with_a_batch_out_leaves_the_helper_ready_for_the_next() {
    let input = file(7, 30_000, 20, false, 0);
    let helper = Arc::new(Helper::spawn().expect("a thread starts"));
    let helped = options(64 << 20, u64::MAX, Some(helper.clone()));
    // The output fails while batches are with the helper.
    let failed = process(
        &input[..],
        Failing { left: 300_000 },
        std::io::sink(),
        &helped,
    );
    assert!(failed.is_err(), "the output's failure ends the run");
    // The same helper serves the next run as if it were new.
    let again = run(&input, &helped);
    let alone = run(&input, &options(64 << 20, u64::MAX, None));
    assert_eq!(again.2, alone.2);
    assert!(again.0 == alone.0 && again.1 == alone.1);
    let report: serde_json::Value = serde_json::from_str(&again.2).unwrap();
    assert!(
        report["rows"]["rejected"].as_u64().unwrap() > 100,
        "the file breaks the schema in places: {}",
        report["rows"]
    );
}

#[test]
fn a_file_the_key_budget_ends_is_described_as_far_as_that_row() {
    // The first 2,000 rows end in CRLF; the key budget (56 keys, two a row) ends the file near
    // row 28, long before the LF rows, which the helper's read-ahead (four batches of 3,276
    // rows) reaches. Reads of 4 KiB keep the engine's chunks small.
    let input = file(3, 30_000, 0, false, 2_000);
    let helper = Arc::new(Helper::spawn().expect("a thread starts"));
    let alone = run_in(&input, 4096, &options(16 * 64, u64::MAX, None));
    let helped = run_in(&input, 4096, &options(16 * 64, u64::MAX, Some(helper)));
    let report: serde_json::Value = serde_json::from_str(&alone.2).unwrap();
    assert_eq!(report["rejection"]["code"], "key_budget_exceeded");
    assert_eq!(report["dialect"]["line_terminator"], "crlf");
    assert_eq!(alone.2, helped.2);
}
