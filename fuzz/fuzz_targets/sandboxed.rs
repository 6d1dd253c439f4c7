//! Arbitrary bytes through the *real sandboxed worker*: `airlock process` (the binary named by
//! `AIRLOCK_BIN`, default `../target/debug/airlock`, which `.ci/fuzz` builds) under the production seccomp policy. No
//! input may end `failed` — least of all `sandbox_violation` — and the sandboxed result must be
//! exactly the in-process engine's (status, code, output bytes). The in-process run is what
//! libFuzzer's coverage sees; the sandboxed run proves the allowlist is sufficient for it.
//! The first byte picks a fallback encoding (bit 0) and a Table Schema (bit 4).
#![no_main]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use airlock_engine::{process, Options, Status};
use libfuzzer_sys::fuzz_target;

fn airlock() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("AIRLOCK_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("../target/debug/airlock"));
        assert!(
            bin.exists(),
            "build airlock first, or set AIRLOCK_BIN ({})",
            bin.display()
        );
        bin
    })
}

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    // tmpfs when there is one: every input is written and read back once.
    DIR.get_or_init(|| {
        tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("temp dir")
    })
}

/// A schema with keys, a format, a pattern and a date (header matched by name, `partial`).
const SCHEMA: &str = r#"{"fields": [
    {"name": "a", "type": "integer", "constraints": {"unique": true}},
    {"name": "b", "type": "string", "format": "email", "constraints": {"pattern": "[^x]*"}},
    {"name": "c", "type": "date", "constraints": {"required": true}}],
 "fieldsMatch": "partial", "primaryKey": ["a", "c"]}"#;

fuzz_target!(|data: &[u8]| {
    let (legacy, with_schema, input) = match data.split_first() {
        Some((&b, rest)) => (b & 1 == 1, b & 16 != 0, rest),
        None => (false, false, data),
    };
    let options = Options {
        fallback_encoding: if legacy {
            airlock_engine::encoding_for_label("windows-1252")
        } else {
            None
        },
        schema: with_schema.then(|| {
            std::sync::Arc::new(airlock_engine::schema::Schema::parse(SCHEMA).expect("loads"))
        }),
        ..Options::default()
    };
    let (mut out, mut rej) = (Vec::new(), Vec::new());
    let want = process(input, &mut out, &mut rej, &options).expect("in-memory I/O cannot fail");

    let dir = scratch().path();
    let (path, clean, report) = (
        dir.join("in.csv"),
        dir.join("out.csv"),
        dir.join("report.json"),
    );
    let schema_file = dir.join("schema.json");
    if with_schema && !schema_file.exists() {
        std::fs::write(&schema_file, SCHEMA).expect("write the schema");
    }
    let _ = std::fs::remove_file(&clean);
    let _ = std::fs::remove_file(&report);
    std::fs::write(&path, input).expect("write the input");
    let ran = Command::new(airlock())
        .arg("process")
        .arg(&path)
        .arg("--output")
        .arg(&clean)
        .arg("--report")
        .arg(&report)
        .args(["--plan", if legacy { "legacy-excel" } else { "default" }])
        .args(if with_schema {
            vec!["--schema".into(), schema_file.into_os_string()]
        } else {
            Vec::new()
        })
        .env_remove("AIRLOCK_POLICY_DIR")
        .output()
        .expect("run airlock");
    assert!(
        matches!(ran.status.code(), Some(0 | 1 | 70)),
        "exit {:?}",
        ran.status
    );
    let got: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("a report")).expect("report JSON");
    assert_ne!(
        got["status"], "failed",
        "the sandboxed worker failed: {}",
        got["rejection"]
    );
    assert!(
        matches!(ran.status.code(), Some(0 | 1)),
        "exit {:?}",
        ran.status
    );
    assert_eq!(got["status"], serde_json::to_value(want.status).unwrap());
    assert_eq!(
        got["rejection"]["code"].as_str(),
        want.rejection.as_ref().map(|r| r.code.as_str())
    );
    if want.status == Status::Accepted {
        assert!(std::fs::read(&clean).expect("published output") == out);
    }
});
