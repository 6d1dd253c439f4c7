//! Conformance with frictionless-py on the Table Schema cases in `tests/table-schema/` (copied
//! from the shared corpus: each case is NAME.csv, NAME.schema.json and frictionless-py 5.18.1's
//! own verdict, NAME.frictionless.json; MANIFEST.txt says where each comes from).
//!
//! Both sides are reduced to the same tokens — `type_error r5 email`, `unique_error r4` (a
//! primary key), `ragged_row r2`, `blank_row r11` — and a header that does not fit the schema to
//! the one file-level token `schema_mismatch` (Airlock rejects the file there; frictionless goes
//! on reading rows by position). Every case must match, except those in [`DIFFERENCES`], each
//! with its reason; a new difference fails, and so does a listed one that went away.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use airlock_engine::schema::Schema;
use airlock_engine::{process, Limits, Options, Status};

/// Cases where Airlock's answer differs from frictionless-py 5.18.1's, and why.
const DIFFERENCES: &[(&str, &str)] = &[
    ("constraints-pattern", "frictionless anchors patterns as '^'+p+'$' under re.match, so 'cat|dog' accepts 'category' and '$' lets a trailing newline through; Airlock matches the whole value (\\A(?:p)\\z), as the spec says: two more constraint errors"),
    ("date-iso", "Python's strptime takes '2024-1-5' for %Y-%m-%d; Airlock reads the default date as strict ISO 8601 (YYYY-MM-DD): one more type error"),
    ("datetime-iso", "dateutil accepts a space for the 'T'; Airlock reads the default datetime as strict ISO 8601: one more type error"),
    ("time-iso", "dateutil accepts 24:00:00; Airlock does not: one more type error"),
    ("quirk-uuid-lenient", "Python's uuid.UUID accepts 32 bare hex digits, braces and urn:uuid:; the uuid format is the canonical 8-4-4-4-12 form: three type errors"),
    ("fl-schema-errors", "row 5 has 6 cells for 3 fields: Airlock rejects it as ragged_row without checking its cells (their positions cannot be trusted); frictionless also checks them by position and adds a required and a primary-key error on that row"),
    ("fieldsmatch-equal-reordered", "5.18.1 ignores fieldsMatch and matches by position; Airlock implements fieldsMatch=equal (as frictionless 5.19+ does) and reads cells by name: one type error, as 5.21.0 reports"),
    ("fieldsmatch-subset-extra", "5.18.1 ignores fieldsMatch; Airlock implements fieldsMatch=subset: valid, as 5.21.0 says"),
    ("fl-capital-invalid", "the data repeats a column name: Airlock rejects the file (duplicate_header) before any schema check"),
    ("fl-duplicate-column", "the data repeats a column name: Airlock rejects the file (duplicate_header) before any schema check"),
];

fn cases() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/table-schema");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".schema.json").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

fn read(name: &str, ext: &str) -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/table-schema/{name}.{ext}"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Airlock's verdict as tokens.
fn ours(name: &str) -> BTreeSet<String> {
    let schema =
        Schema::parse(&read(name, "schema.json")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let options = Options {
        schema: Some(Arc::new(schema)),
        limits: Limits {
            max_rejected_ratio: 1.0,
            max_issues: 10_000,
            ..Limits::default()
        },
        ..Options::default()
    };
    let csv = read(name, "csv");
    let report = process(csv.as_bytes(), Vec::new(), Vec::new(), &options).unwrap();
    let mut tokens = BTreeSet::new();
    if let Some(r) = &report.rejection {
        tokens.insert(r.code.as_str().to_string());
        return tokens;
    }
    assert_eq!(report.status, Status::Accepted);
    for issue in &report.issues {
        let code = issue.code.as_str();
        match code {
            "formula_escaped" => {}
            "ragged_row" | "blank_row" => {
                tokens.insert(format!("{code} r{}", issue.row));
            }
            _ if issue.column.is_none() => {
                tokens.insert(format!("{code} r{}", issue.row));
            }
            _ => {
                tokens.insert(format!(
                    "{code} r{} {}",
                    issue.row,
                    issue.field.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    tokens
}

/// frictionless-py's verdict as the same tokens.
fn theirs(name: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(&read(name, "frictionless.json")).unwrap();
    let errors = v["tasks"][0]["errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut tokens = BTreeSet::new();
    for e in &errors {
        let ty = e["type"].as_str().unwrap();
        if ty.ends_with("-label") {
            tokens.clear();
            tokens.insert("schema_mismatch".to_string());
            return tokens;
        }
    }
    for e in &errors {
        let row = e["rowNumber"].as_u64().unwrap_or(0);
        let field = e["fieldName"].as_str().unwrap_or("?");
        let token = match e["type"].as_str().unwrap() {
            "type-error" => format!("type_error r{row} {field}"),
            "constraint-error" => format!("constraint_error r{row} {field}"),
            "unique-error" => format!("unique_error r{row} {field}"),
            "primary-key" => format!("unique_error r{row}"),
            "extra-cell" | "missing-cell" => format!("ragged_row r{row}"),
            "blank-row" => format!("blank_row r{row}"),
            other => format!("{other} r{row}"),
        };
        tokens.insert(token);
    }
    tokens
}

#[test]
fn conformance_with_frictionless() {
    let all = cases();
    assert!(all.len() >= 40, "{} cases", all.len());
    let mut differing = Vec::new();
    for name in &all {
        let (a, f) = (ours(name), theirs(name));
        if a == f {
            println!("match    {name}");
        } else {
            println!(
                "differs  {name}\n    airlock only: {:?}\n    frictionless only: {:?}",
                a.difference(&f).collect::<Vec<_>>(),
                f.difference(&a).collect::<Vec<_>>()
            );
            differing.push(name.clone());
        }
    }
    println!(
        "\n{} of {} cases match frictionless-py 5.18.1; {} differ",
        all.len() - differing.len(),
        all.len(),
        differing.len()
    );
    let listed: Vec<String> = DIFFERENCES.iter().map(|(n, _)| n.to_string()).collect();
    let unexplained: Vec<&String> = differing.iter().filter(|d| !listed.contains(d)).collect();
    let gone: Vec<&String> = listed.iter().filter(|l| !differing.contains(l)).collect();
    assert!(
        unexplained.is_empty(),
        "differences without a reason: {unexplained:?}"
    );
    assert!(
        gone.is_empty(),
        "listed differences that now match (take them off the list): {gone:?}"
    );
}
