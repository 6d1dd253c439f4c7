//! A build that says what it is: `airlock --version`, `airlock doctor` and `/healthz` name the
//! same version, git commit and build profile, and the commit is the checkout's.

use crate::common::airlock;

/// The checkout's commit, as the build names it (twelve hex digits).
fn head() -> String {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git, to read the checkout's commit");
    assert!(out.status.success(), "the tests run from a git checkout");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn version_names_the_commit_and_the_profile() {
    let out = airlock().arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "airlock {} (commit {}, debug build)\n",
        env!("CARGO_PKG_VERSION"),
        head()
    );
    assert_eq!(line, want);
}

#[test]
fn doctor_carries_the_same_build() {
    let out = airlock().arg("doctor").output().unwrap();
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doctor["build"],
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "commit": head(),
            "profile": "debug",
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_carries_the_same_build() {
    let s = crate::api::Server::on(crate::api::Backend::Embedded, &["--supervise", "0"]).await;
    let (status, _, body) = s.get("/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ok",
            "build": {
                "version": env!("CARGO_PKG_VERSION"),
                "commit": head(),
                "profile": "debug",
            },
        })
    );
}
