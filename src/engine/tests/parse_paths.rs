//! Differential test of the two parse paths: on every input, the plain-line path (lines split in
//! place, the default) and csv-core alone (the oracle) must give the same clean output, the same
//! rejects file and the same report, byte for byte. The inputs are built to sit on the borders
//! between the paths: plain lines next to quoted ones, CR and CRLF breaks, blank and whitespace
//! lines, ragged rows, formula triggers, cells at the field and record limits, too many columns,
//! a BOM (also mid-file, where csv-core would strip one at its first read), and no final line
//! break. Small reads cut records across chunks too.

use std::sync::Arc;

use airlock_engine::{process, Limits, Options, ParsePath, PathTally};
use proptest::prelude::*;

mod common;
use common::Trickle;

/// A piece of a line: the bytes the two paths treat differently, and plain text.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => "[a-z0-9 .]{0,10}".prop_map(String::into_bytes),
        2 => Just(b",".to_vec()),
        1 => Just(b";".to_vec()),
        1 => Just(b"\t".to_vec()),
        1 => Just(b"\"".to_vec()),
        1 => Just(b"\"q,\"\"x\"\"\n2\"".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => Just(b"\n\n".to_vec()),
        1 => "[=+@-][0-9a-z( )]{0,5}".prop_map(String::into_bytes),
        1 => Just(b"   ".to_vec()),
        1 => Just("é中".as_bytes().to_vec()),
        1 => Just("\u{feff}\"".as_bytes().to_vec()),
        1 => (30usize..70).prop_map(|n| vec![b'x'; n]),
        1 => Just(b",,,,,,,,,".to_vec()),
    ]
}

/// A file: a header, then lines of pieces, each mostly ending in `\n`.
fn file() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        Just(b"a,b,c\n".to_vec()),
        Just(b"a;b;c\n".to_vec()),
        Just(b"only\n".to_vec()),
        Just(b"\xEF\xBB\xBFa,b\n".to_vec()),
        Just(b"a,b\r\n".to_vec()),
    ];
    let line = (prop::collection::vec(piece(), 0..8), 0u8..10).prop_map(|(pieces, end)| {
        let mut l = pieces.concat();
        match end {
            0 => l.extend_from_slice(b"\r\n"),
            1 => {}
            _ => l.push(b'\n'),
        }
        l
    });
    (header, prop::collection::vec(line, 0..30)).prop_map(|(h, lines)| {
        let mut f = h;
        for l in lines {
            f.extend_from_slice(&l);
        }
        f
    })
}

/// A run's output, rejects and report.
type Run = (Vec<u8>, Vec<u8>, String);

/// One run, and how many records each path read (plain lines, csv-core).
fn run_tallied(input: &[u8], step: usize, options: &Options) -> (Run, (u64, u64)) {
    let tally = Arc::new(PathTally::default());
    let options = Options {
        tally: Some(tally.clone()),
        ..options.clone()
    };
    let (mut out, mut rej) = (Vec::new(), Vec::new());
    let report = process(Trickle { bytes: input, step }, &mut out, &mut rej, &options)
        .expect("in-memory I/O cannot fail");
    let report = serde_json::to_string_pretty(&report).expect("the report serializes");
    ((out, rej, report), (tally.plain(), tally.csv_core()))
}

/// Both paths on `input`: their outputs, rejects and reports, after checking that the oracle
/// really read everything through csv-core (no plain line split in place).
fn both(input: &[u8], step: usize, fast: &Options, oracle: &Options) -> Both {
    let (fast, fast_paths) = run_tallied(input, step, fast);
    let (oracle, oracle_paths) = run_tallied(input, step, oracle);
    assert_eq!(
        oracle_paths.0, 0,
        "the oracle run split {} plain lines",
        oracle_paths.0
    );
    Both {
        fast,
        oracle,
        fast_plain: fast_paths.0,
        oracle_records: oracle_paths.1,
    }
}

struct Both {
    fast: Run,
    oracle: Run,
    /// Records the fast run split in place.
    fast_plain: u64,
    /// Records the oracle run read (all through csv-core).
    oracle_records: u64,
}

fn options(delimiter: Option<u8>, small: bool, schema: bool, path: ParsePath) -> Options {
    let mut options = Options {
        delimiter,
        parse_path: path,
        ..Options::default()
    };
    if small {
        options.limits = Limits {
            max_columns: 4,
            max_field_bytes: 40,
            max_record_bytes: 60,
            max_rows: 20,
            max_rejected_ratio: 1.0,
            ..Limits::default()
        };
    }
    if schema {
        options.schema = Some(Arc::new(
            airlock_engine::schema::Schema::parse(
                r#"{"fields": [{"name": "a", "type": "string", "constraints": {"unique": true, "maxLength": 8}},
                               {"name": "b", "type": "integer"}],
                    "fieldsMatch": "subset"}"#,
            )
            .expect("the schema loads"),
        ));
    }
    options
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn both_paths_agree(
        input in file(),
        delimiter in prop_oneof![Just(None), Just(Some(b',')), Just(Some(b';'))],
        small: bool,
        schema in prop::bool::weighted(0.2),
        step in prop_oneof![Just(1usize << 20), 1usize..40],
    ) {
        let Both { fast, oracle, .. } = both(
            &input,
            step,
            &options(delimiter, small, schema, ParsePath::PlainLines),
            &options(delimiter, small, schema, ParsePath::CsvCore),
        );
        prop_assert_eq!(String::from_utf8_lossy(&fast.0), String::from_utf8_lossy(&oracle.0));
        prop_assert_eq!(String::from_utf8_lossy(&fast.1), String::from_utf8_lossy(&oracle.1));
        prop_assert_eq!(fast.2, oracle.2);
    }
}

/// The fixtures of the engine's own tests, through both paths.
#[test]
fn fixtures_agree() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let mut seen = 0;
    let (mut plain, mut oracle_records) = (0, 0);
    for entry in walk(&dir) {
        let input = std::fs::read(&entry).expect("fixture reads");
        for delimiter in [None, Some(b';')] {
            let b = both(
                &input,
                1 << 20,
                &options(delimiter, false, false, ParsePath::PlainLines),
                &options(delimiter, false, false, ParsePath::CsvCore),
            );
            assert!(
                b.fast == b.oracle,
                "{} differs between the parse paths",
                entry.display()
            );
            plain += b.fast_plain;
            oracle_records += b.oracle_records;
        }
        seen += 1;
    }
    // Both paths did the reading they are named for: the comparison is not of one path with
    // itself.
    assert!(plain > 100, "the fast path split only {plain} plain lines");
    assert!(
        oracle_records > plain,
        "the oracle read {oracle_records} records"
    );
    assert!(
        seen >= 20,
        "only {seen} fixtures found under {}",
        dir.display()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("fixtures directory reads") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Cases a review found: a quote at the end of a chunk after blank lines that overflow the
/// pending-record buffer, a line break as the delimiter, and a column limit of zero.
#[test]
fn review_cases_agree() {
    let mut crs = b"h\n".to_vec();
    crs.extend(std::iter::repeat_n(b'\r', 2 * 262_144 - 3));
    crs.extend_from_slice(b"\"x\ny\"\n");
    let tiny_records = Limits {
        max_record_bytes: 10,
        ..Limits::default()
    };
    let no_columns = Limits {
        max_columns: 0,
        ..Limits::default()
    };
    let mut blank_then_one = vec![b'\n'; 262_144];
    blank_then_one.extend_from_slice(b"a\n");
    let cases: Vec<(Vec<u8>, u8, Limits)> = vec![
        (crs, b',', tiny_records),
        (b"h\r\n\nx\r\n".to_vec(), b'\n', Limits::default()),
        (b"a\rb\nx\r\ny\n".to_vec(), b'\r', Limits::default()),
        (blank_then_one, b',', no_columns),
    ];
    for (input, delimiter, limits) in cases {
        let opts = |path| Options {
            delimiter: Some(delimiter),
            limits: limits.clone(),
            parse_path: path,
            ..Options::default()
        };
        let Both { fast, oracle, .. } = both(
            &input,
            1 << 20,
            &opts(ParsePath::PlainLines),
            &opts(ParsePath::CsvCore),
        );
        assert!(
            fast == oracle,
            "paths differ on a {}-byte input",
            input.len()
        );
    }
}
