//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn airlock() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.env_remove("AIRLOCK_POLICY_DIR");
    cmd
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// The result of one `airlock process` run.
pub struct Processed {
    pub code: i32,
    pub report: Value,
    pub stderr: String,
    pub dir: tempfile::TempDir,
}

impl Processed {
    pub fn rejection_code(&self) -> Option<&str> {
        self.report["rejection"]["code"].as_str()
    }

    pub fn status(&self) -> &str {
        self.report["status"].as_str().unwrap_or("?")
    }

    pub fn output(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("out.csv")).ok()
    }

    pub fn rejects(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("rej.csv")).ok()
    }

    /// Names in the output directory other than the three results (temp leftovers).
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !matches!(n.as_str(), "out.csv" | "rej.csv" | "report.json"))
            .collect()
    }
}

/// `airlock process INPUT` with its three results in `dir`: out.csv, rej.csv, report.json.
pub fn process_command(input: &Path, dir: &Path) -> Command {
    let mut cmd = airlock();
    cmd.arg("process")
        .arg(input)
        .arg("--output")
        .arg(dir.join("out.csv"))
        .arg("--rejects")
        .arg(dir.join("rej.csv"))
        .arg("--report")
        .arg(dir.join("report.json"));
    cmd
}

/// What a finished `process_command` left in `dir`.
pub fn processed(out: Output, dir: tempfile::TempDir) -> Processed {
    let code = out.status.code().expect("exit code");
    let report = std::fs::read(dir.path().join("report.json"))
        .map(|b| serde_json::from_slice(&b).expect("report is JSON"))
        .unwrap_or(Value::Null);
    Processed {
        code,
        report,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    }
}

/// Run `airlock process INPUT` with all three outputs in a fresh directory.
pub fn process(input: &Path, extra: &[&str]) -> Processed {
    let dir = tempfile::tempdir().unwrap();
    let out = process_command(input, dir.path())
        .args(extra)
        .output()
        .expect("run airlock");
    processed(out, dir)
}

/// A policy directory whose `default` plan has tiny limits, so limit codes can be hit with
/// small generated inputs.
pub fn tiny_policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let limits = "\
[plans.default]
max_bytes = 4096
max_rows = 5
max_columns = 4
max_field_bytes = 16
max_record_bytes = 40
max_rejected_ratio = 0.10
max_issues = 100
fallback_encoding = \"\"
worker_memory_bytes = 268435456
worker_cpu_seconds = 10
worker_wall_seconds = 20
";
    std::fs::write(dir.path().join("limits.toml"), limits).unwrap();
    // Only the default plan exists here, so retention must not name others.
    let retention =
        "retain_days = 30\norphan_grace_hours = 48\nbatch_size = 250\nlease_seconds = 600\n";
    std::fs::write(dir.path().join("retention.toml"), retention).unwrap();
    dir
}

pub fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
