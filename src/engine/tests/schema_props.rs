//! Property tests of Table Schema checking:
//! - a value the field's formatter ([`Kind::format`]) writes always parses back to itself;
//! - a table generated to fit its schema is always accepted, every row and cell;
//! - one corrupted cell in such a table is always reported at its exact row and column.

use airlock_engine::schema::{Kind, Schema, Typed};
use airlock_engine::{process, Options, Status};
use proptest::prelude::*;
use serde_json::{json, Value};

/// How to make values for one field: which parts of a date or time its format can express.
#[derive(Debug, Clone, Copy)]
enum Gen {
    Text,
    Int,
    Num,
    Bool,
    /// `y2`: a two-digit year (1969-2068).
    Date {
        y2: bool,
    },
    DateTime {
        seconds: bool,
        fraction: bool,
    },
    Time {
        seconds: bool,
        fraction: bool,
    },
    Year,
}

/// Field types with their options, and how to make their values.
fn cases() -> Vec<(Value, Gen)> {
    vec![
        (
            json!({"type": "string", "constraints": {"pattern": "[a-z]{1,8}"}}),
            Gen::Text,
        ),
        (json!({"type": "integer"}), Gen::Int),
        (json!({"type": "number"}), Gen::Num),
        (
            json!({"type": "number", "decimalChar": ",", "groupChar": "."}),
            Gen::Num,
        ),
        (
            json!({"type": "number", "decimalChar": ".", "groupChar": " "}),
            Gen::Num,
        ),
        (json!({"type": "boolean"}), Gen::Bool),
        (
            json!({"type": "boolean", "trueValues": ["ja", "J"], "falseValues": ["nein", "N"]}),
            Gen::Bool,
        ),
        (json!({"type": "date"}), Gen::Date { y2: false }),
        (
            json!({"type": "date", "format": "%d/%m/%Y"}),
            Gen::Date { y2: false },
        ),
        (
            json!({"type": "date", "format": "%Y%m%d"}),
            Gen::Date { y2: false },
        ),
        (
            json!({"type": "date", "format": "%m-%d-%y"}),
            Gen::Date { y2: true },
        ),
        (
            json!({"type": "datetime"}),
            Gen::DateTime {
                seconds: true,
                fraction: true,
            },
        ),
        (
            json!({"type": "datetime", "format": "%Y-%m-%d %H:%M"}),
            Gen::DateTime {
                seconds: false,
                fraction: false,
            },
        ),
        (
            json!({"type": "datetime", "format": "%d.%m.%Y %H:%M:%S.%f%z"}),
            Gen::DateTime {
                seconds: true,
                fraction: true,
            },
        ),
        (
            json!({"type": "time"}),
            Gen::Time {
                seconds: true,
                fraction: true,
            },
        ),
        (
            json!({"type": "time", "format": "%H:%M"}),
            Gen::Time {
                seconds: false,
                fraction: false,
            },
        ),
        (json!({"type": "year"}), Gen::Year),
    ]
}

/// Days since 1970-01-01 of 0000-01-01 and 9999-12-31, and of 1969-01-01 and 2068-12-31.
const DAYS_4: (i64, i64) = (-719_528, 2_932_896);
const DAYS_2: (i64, i64) = (-365, 36_159);

/// A value for `g` from raw randomness (`n` picks it; `word` is for text).
fn value(g: Gen, n: u64, word: &str) -> Typed<'_> {
    let span = |lo: i64, hi: i64| lo + (n % (hi - lo + 1) as u64) as i64;
    match g {
        Gen::Text => Typed::Text(word.as_bytes()),
        Gen::Int => Typed::Int(i128::from(n as i64)),
        Gen::Num => {
            let f = f64::from_bits(n);
            // Finite values; the bit pattern covers huge, tiny and subnormal ones.
            Typed::Num(if f.is_finite() {
                f
            } else {
                (n >> 12) as f64 / 7.0
            })
        }
        Gen::Bool => Typed::Bool(n.is_multiple_of(2)),
        Gen::Date { y2 } => {
            let (lo, hi) = if y2 { DAYS_2 } else { DAYS_4 };
            Typed::Date(span(lo, hi))
        }
        Gen::DateTime { seconds, fraction } => {
            let days = span(DAYS_4.0, DAYS_4.1);
            let mut secs = (n >> 32) % 86_400;
            if !seconds {
                secs -= secs % 60;
            }
            let nanos = if fraction {
                (n >> 8) % 1_000_000_000
            } else {
                0
            };
            Typed::DateTime(
                (i128::from(days) * 86_400 + i128::from(secs)) * 1_000_000_000 + i128::from(nanos),
            )
        }
        Gen::Time { seconds, fraction } => {
            let mut secs = (n % 86_400) as i64;
            if !seconds {
                secs -= secs % 60;
            }
            let nanos = if fraction {
                ((n >> 20) % 1_000_000_000) as i64
            } else {
                0
            };
            Typed::Time(secs * 1_000_000_000 + nanos)
        }
        Gen::Year => Typed::Year(span(0, 9999)),
    }
}

fn kind_of(field: &Value) -> Kind {
    let mut f = field.clone();
    f["name"] = json!("f");
    let schema = Schema::from_value(&json!({"fields": [f]})).expect("the case's schema loads");
    schema.fields[0].kind().clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn formatted_values_parse_back(case in 0..cases().len(), n in any::<u64>(), word in "[a-z]{1,8}") {
        let (field, g) = cases()[case].clone();
        let kind = kind_of(&field);
        let v = value(g, n, &word);
        let written = kind.format(&v);
        prop_assert!(written.is_some(), "{field}: {v:?} has no written form");
        let written = written.unwrap();
        let back = kind.parse(written.as_bytes());
        prop_assert_eq!(back, Some(v), "{} wrote {:?} for {:?}", field, written, v);
    }
}

/// A generated table and the schema it fits: fields from [`cases`] (every one required, the
/// first also unique), rows of values each field's formatter wrote.
#[derive(Debug, Clone)]
struct Table {
    schema: Value,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn table() -> impl Strategy<Value = Table> {
    let n_cases = cases().len();
    (
        prop::collection::vec(0..n_cases, 1..6),
        prop::collection::vec(
            prop::collection::vec((any::<u64>(), "[a-z]{1,8}"), 6),
            1..25,
        ),
    )
        .prop_map(|(picked, raw)| {
            let all = cases();
            let mut fields = Vec::new();
            let mut header = Vec::new();
            for (i, &c) in picked.iter().enumerate() {
                let mut f = all[c].0.clone();
                let name = format!("f{i}");
                f["name"] = json!(name);
                let constraints = f
                    .as_object_mut()
                    .unwrap()
                    .entry("constraints")
                    .or_insert_with(|| json!({}));
                constraints["required"] = json!(true);
                if i == 0 {
                    constraints["unique"] = json!(true);
                }
                fields.push(f);
                header.push(name);
            }
            let kinds: Vec<Kind> = picked.iter().map(|&c| kind_of(&all[c].0)).collect();
            let mut seen = std::collections::HashSet::new();
            let mut rows = Vec::new();
            for r in &raw {
                let row: Vec<String> = picked
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let (n, word) = &r[i];
                        kinds[i]
                            .format(&value(all[c].1, *n, word))
                            .expect("a generated value has a written form")
                    })
                    .collect();
                // The unique field: skip a row whose value came up before (booleans do).
                let key = kinds[0].parse(row[0].as_bytes()).map(|t| format!("{t:?}"));
                if seen.insert(key) {
                    rows.push(row);
                }
            }
            Table {
                schema: json!({"fields": fields}),
                header,
                rows,
            }
        })
}

/// The report's issues other than `formula_escaped` (a negative number is guarded, by design,
/// and the row kept).
fn faults(report: &airlock_engine::Report) -> Vec<airlock_engine::report::Issue> {
    report
        .issues
        .iter()
        .filter(|i| i.code != airlock_engine::report::Code::FormulaEscaped)
        .cloned()
        .collect()
}

fn run(t: &Table, rows: &[Vec<String>]) -> airlock_engine::Report {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(&t.header).unwrap();
    for r in rows {
        w.write_record(r).unwrap();
    }
    let input = w.into_inner().unwrap();
    let options = Options {
        schema: Some(std::sync::Arc::new(Schema::from_value(&t.schema).unwrap())),
        ..Options::default()
    };
    let mut output = Vec::new();
    let mut rejects = Vec::new();
    process(&input[..], &mut output, &mut rejects, &options).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn tables_that_fit_their_schema_are_accepted(t in table()) {
        let report = run(&t, &t.rows);
        prop_assert_eq!(report.status, Status::Accepted, "{:?}", report.rejection);
        prop_assert_eq!(report.rows.rejected, 0, "{:?}", report.issues);
        prop_assert_eq!(report.rows.accepted, t.rows.len() as u64);
        prop_assert!(faults(&report).is_empty(), "{:?}", report.issues);
    }

    #[test]
    fn one_corrupted_cell_is_reported_where_it_is(t in table(), at in any::<(usize, usize)>()) {
        let r = at.0 % t.rows.len();
        let c = at.1 % t.header.len();
        let mut rows = t.rows.clone();
        // Parses as no type here, and breaks the text fields' pattern.
        rows[r][c] = "X!".into();
        let report = run(&t, &rows);
        prop_assert_eq!(report.rows.rejected, 1, "{:?}", report.issues);
        let faults = faults(&report);
        prop_assert_eq!(faults.len(), 1, "{:?}", report.issues);
        let issue = &faults[0];
        // Records count the header as record 1.
        prop_assert_eq!(issue.row, r as u64 + 2);
        prop_assert_eq!(issue.column, Some(c as u64 + 1));
        prop_assert_eq!(issue.field.as_deref(), Some(t.header[c].as_str()));
        prop_assert!(
            matches!(
                issue.code,
                airlock_engine::report::Code::TypeError | airlock_engine::report::Code::ConstraintError
            ),
            "{:?}",
            issue.code
        );
    }
}

/// One line of a generated file: a row with a key from a small set (so keys repeat), a blank
/// line, or a row with a cell too many.
#[derive(Debug, Clone)]
enum Line {
    Row(u8),
    Blank,
    Ragged(u8),
}

fn lines() -> impl Strategy<Value = Vec<Line>> {
    prop::collection::vec(
        prop_oneof![
            8 => (0u8..40).prop_map(Line::Row),
            1 => Just(Line::Blank),
            1 => (0u8..40).prop_map(Line::Ragged),
        ],
        // Under the report's 100 issues.
        0..90,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Rows with `unique` keys are settled in batches; the outcome must be exactly what checking
    /// one row at a time gives: every repeat reported at its row, in input order among the
    /// blank lines and ragged rows, and the clean file holding the first of each key, in order.
    #[test]
    fn repeated_keys_are_found_in_input_order(lines in lines()) {
        let schema = json!({"fields": [
            {"name": "key", "type": "integer", "constraints": {"unique": true}},
            {"name": "n", "type": "integer"}
        ]});
        let mut input = String::from("key,n\n");
        let mut seen = std::collections::HashSet::new();
        let mut want_issues = Vec::new();
        let mut want_output = String::from("key,n\n");
        for (i, l) in lines.iter().enumerate() {
            let record = i as u64 + 2;
            match l {
                Line::Row(k) => {
                    input.push_str(&format!("{k},{i}\n"));
                    if seen.insert(*k) {
                        want_output.push_str(&format!("{k},{i}\n"));
                    } else {
                        want_issues.push(("unique_error".to_string(), record, Some(1)));
                    }
                }
                Line::Blank => {
                    input.push('\n');
                    want_issues.push(("blank_row".to_string(), record, None));
                }
                Line::Ragged(k) => {
                    input.push_str(&format!("{k},{i},x\n"));
                    want_issues.push(("ragged_row".to_string(), record, Some(3)));
                }
            }
        }
        let options = Options {
            schema: Some(std::sync::Arc::new(Schema::from_value(&schema).unwrap())),
            limits: airlock_engine::Limits {
                max_rejected_ratio: 1.0,
                ..airlock_engine::Limits::default()
            },
            ..Options::default()
        };
        let mut output = Vec::new();
        let mut rejects = Vec::new();
        let report = process(input.as_bytes(), &mut output, &mut rejects, &options).unwrap();
        let got: Vec<(String, u64, Option<u64>)> = report
            .issues
            .iter()
            .map(|i| (i.code.as_str().to_string(), i.row, i.column))
            .collect();
        prop_assert_eq!(got, want_issues);
        let rows = lines.iter().filter(|l| !matches!(l, Line::Blank)).count() as u64;
        if report.status == Status::Accepted {
            prop_assert_eq!(String::from_utf8(output).unwrap(), want_output);
        }
        prop_assert_eq!(report.rows.total, lines.len() as u64);
        prop_assert_eq!(report.rows.accepted + report.rows.rejected, rows);
        prop_assert_eq!(report.schema.unwrap().fields[0].errors, report.issue_counts.get(&airlock_engine::report::Code::UniqueError).copied().unwrap_or(0));
    }
}
