//! Table Schemas through the real sandboxed worker: the verdict, the rejects and the report's
//! schema section; bad schemas as usage errors; a pattern that would stall a backtracking engine;
//! unique keys over many rows, and the key budget, all under the full lockdown.

use std::io::Write;

use serde_json::json;

use crate::common::{airlock, fixture, process, write_temp};

fn schema_file(dir: &std::path::Path, schema: serde_json::Value) -> String {
    write_temp(dir, "schema.json", schema.to_string().as_bytes())
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_lead_list_is_checked_against_its_schema_in_the_sandbox() {
    let schema = fixture("schema/leads.schema.json");
    let p = process(
        &fixture("schema/leads.csv"),
        &["--schema", schema.to_str().unwrap()],
    );
    assert_eq!(p.status(), "accepted", "{}", p.report);
    assert_eq!(
        p.report["rows"],
        json!({"total": 20, "accepted": 18, "rejected": 2, "blank": 0})
    );
    let issues: Vec<(String, u64, String)> = p.report["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["code"].as_str().unwrap().to_string(),
                i["row"].as_u64().unwrap(),
                i["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        issues,
        [
            ("type_error".to_string(), 10, "email".to_string()),
            ("unique_error".to_string(), 13, "email".to_string())
        ]
    );
    // Aliases and case-insensitive labels map the header; the clean CSV names the fields.
    let mapping = &p.report["schema"]["header_mapping"];
    assert_eq!(mapping["E-mail"], "email");
    assert_eq!(mapping["First Name"], "first_name");
    let output = p.output().unwrap();
    assert!(
        output.starts_with("email,first_name,last_name,company,title,phone,country,employees\n")
    );
    assert_eq!(output.lines().count(), 19);
    let rejects = p.rejects().unwrap();
    assert!(rejects.contains("10,10,type_error,"), "{rejects}");
    assert!(rejects.contains("13,13,unique_error,"), "{rejects}");
    assert_eq!(p.report["schema"]["fields"][0]["errors"], 2);
    assert_eq!(p.report["sandbox"]["enforced"].as_array().unwrap().len(), 7);
}

#[test]
fn a_bad_schema_is_a_usage_error_that_points_at_the_bad_part() {
    let dir = tempfile::tempdir().unwrap();
    for (schema, pointer) in [
        (
            json!({"fields": [{"name": "a", "type": "integr"}]}),
            "/fields/0/type",
        ),
        (
            json!({"fields": [{"name": "a", "constraints": {"pattern": "(unclosed"}}]}),
            "/fields/0/constraints/pattern",
        ),
        (
            json!({"fields": [{"name": "a"}], "primaryKey": ["b"]}),
            "/primaryKey/0",
        ),
        (
            json!({"fields": [{"name": "a", "type": "integer", "constraints": {"enum": ["x"]}}]}),
            "/fields/0/constraints/enum/0",
        ),
        (
            json!({"fields": [{"name": "a", "colour": "red"}]}),
            "/fields/0/colour",
        ),
        (json!({"fields": []}), "/fields"),
    ] {
        let path = schema_file(dir.path(), schema);
        let out = airlock()
            .args([
                "process",
                fixture("valid/leads.csv").to_str().unwrap(),
                "--schema",
                &path,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("at {pointer}:")),
            "{pointer}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "no report for a job that never started"
        );
    }
}

#[test]
fn a_header_that_does_not_fit_is_a_schema_mismatch_naming_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [
            {"name": "email", "constraints": {"required": true}},
            {"name": "name"}
        ], "fieldsMatch": "subset"}),
    );
    let input = write_temp(dir.path(), "in.csv", b"name,phone\nAna,1\n");
    let p = process(&input, &["--schema", &schema]);
    assert_eq!(p.rejection_code(), Some("schema_mismatch"), "{}", p.report);
    let message = p.report["rejection"]["message"].as_str().unwrap();
    assert!(message.contains("missing column(s) \"email\""), "{message}");
    assert!(p.output().is_none());
}

#[test]
fn a_pattern_that_would_stall_a_backtracking_engine_runs_in_linear_time() {
    // (a|aa)*c against a long run of 'a' takes exponential time by backtracking; the worker's
    // CPU limit (10 s in this plan) would end it as cpu_limit. The linear-time engine decides.
    let dir = crate::common::tiny_policy_dir();
    let limits = std::fs::read_to_string(dir.path().join("limits.toml"))
        .unwrap()
        .replace("max_bytes = 4096", "max_bytes = 1048576")
        .replace("max_field_bytes = 16", "max_field_bytes = 65536")
        .replace("max_record_bytes = 40", "max_record_bytes = 131072");
    std::fs::write(dir.path().join("limits.toml"), limits).unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [{"name": "id"}, {"name": "v", "constraints": {"pattern": "(a|aa)*c"}}]}),
    );
    let mut csv = b"id,v\n1,".to_vec();
    csv.extend(std::iter::repeat_n(b'a', 60_000));
    csv.extend_from_slice(b"\n2,aac\n3,aaac\n4,aaac\n5,aac\n");
    let input = write_temp(dir.path(), "in.csv", &csv);
    let policy = dir.path().to_str().unwrap().to_string();
    let p = process(&input, &["--schema", &schema, "--policy-dir", &policy]);
    // One of five rows broke the pattern: over the plan's 10%, so the file is rejected, but by
    // the engine's verdict, not by a limit.
    assert_eq!(
        p.rejection_code(),
        Some("too_many_bad_rows"),
        "{}",
        p.report
    );
    assert_eq!(p.report["issues"][0]["code"], "constraint_error");
    assert_eq!(p.report["issues"][0]["row"], 2);
}

/// Unique keys over many rows, through the real worker: the key table (allocated from the
/// plan's budget) works under the lockdown, and the one repeat is found at its row.
#[test]
fn unique_emails_over_two_hundred_thousand_rows() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [
            {"name": "email", "format": "email", "constraints": {"unique": true}},
            {"name": "n", "type": "integer"}
        ], "primaryKey": ["email", "n"]}),
    );
    let path = dir.path().join("in.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, "email,n").unwrap();
    for i in 0..200_000 {
        writeln!(f, "user{i}@example.com,{i}").unwrap();
    }
    writeln!(f, "user77@example.com,77").unwrap();
    drop(f);
    let schema_arg = schema.clone();
    let p = process(&path, &["--schema", &schema_arg]);
    assert_eq!(p.status(), "accepted", "{}", p.report);
    assert_eq!(p.report["rows"]["rejected"], 1);
    let issues = p.report["issues"].as_array().unwrap();
    let rows: Vec<(u64, &str)> = issues
        .iter()
        .map(|i| (i["row"].as_u64().unwrap(), i["code"].as_str().unwrap()))
        .collect();
    // The email repeats, and so does the (email, n) primary key.
    assert_eq!(rows, [(200_002, "unique_error"), (200_002, "unique_error")]);
}

#[test]
fn past_the_key_budget_the_file_is_rejected_not_killed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = std::fs::read_to_string(fixture("../policies/limits.toml"))
        .unwrap()
        .replacen(
            "schema_key_bytes = 67_108_864",
            "schema_key_bytes = 4_096",
            1,
        );
    std::fs::write(dir.path().join("limits.toml"), limits).unwrap();
    let schema = schema_file(
        dir.path(),
        json!({"fields": [{"name": "id", "type": "integer", "constraints": {"unique": true}}]}),
    );
    let mut csv = String::from("id\n");
    for i in 0..1000 {
        csv.push_str(&format!("{i}\n"));
    }
    let input = write_temp(dir.path(), "in.csv", csv.as_bytes());
    let policy = dir.path().to_str().unwrap().to_string();
    let p = process(&input, &["--schema", &schema, "--policy-dir", &policy]);
    assert_eq!(
        p.rejection_code(),
        Some("key_budget_exceeded"),
        "{}",
        p.report
    );
    // 4,096 bytes hold 256 slots, filled to 7/8: 224 keys.
    assert_eq!(p.report["rejection"]["limit"], 224);
}
