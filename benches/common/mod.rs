//! What the service benchmarks share: running commands, free ports, and a private SeaweedFS
//! started with `.ci/s3-server.sh`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use airlock::storage::s3::{Explicit, S3Store};

pub const BIN: &str = env!("CARGO_BIN_EXE_airlock");
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private SeaweedFS that can be stopped and started.
pub struct S3 {
    pub dir: PathBuf,
    vars: BTreeMap<String, String>,
}

impl S3 {
    pub fn script(dir: &Path, cmd: &str) {
        run(Command::new("bash")
            .arg(Path::new(ROOT).join(".ci/s3-server.sh"))
            .arg(cmd)
            .arg(dir));
    }

    pub fn start(dir: &Path) -> Self {
        Self::script(dir, "start");
        let env = std::fs::read_to_string(dir.join("env")).unwrap();
        let vars = env
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3 {
            dir: dir.to_path_buf(),
            vars,
        }
    }

    pub fn var(&self, k: &str) -> &str {
        &self.vars[k]
    }

    pub fn store(&self) -> S3Store {
        S3Store::explicit(
            Explicit {
                endpoint: self.var("AIRLOCK_TEST_S3_ENDPOINT"),
                region: "us-east-1",
                access_key: self.var("AIRLOCK_TEST_S3_ACCESS_KEY"),
                secret_key: self.var("AIRLOCK_TEST_S3_SECRET_KEY").to_string().into(),
            },
            self.var("AIRLOCK_TEST_S3_BUCKET"),
        )
    }

    /// The variables `airlock` needs to use this server's bucket.
    pub fn airlock_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AIRLOCK_STORAGE_URL".into(),
                format!("s3://{}", self.var("AIRLOCK_TEST_S3_BUCKET")),
            ),
            (
                "AWS_ENDPOINT_URL".into(),
                self.var("AIRLOCK_TEST_S3_ENDPOINT").into(),
            ),
            (
                "AWS_ACCESS_KEY_ID".into(),
                self.var("AIRLOCK_TEST_S3_ACCESS_KEY").into(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                self.var("AIRLOCK_TEST_S3_SECRET_KEY").into(),
            ),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AIRLOCK_S3_PATH_STYLE".into(), "true".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Path::new(ROOT).join(".ci/s3-server.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}
