//! Integration tests: the real binary, the real worker process, real files.

mod api;
mod audit;
mod browser;
mod build_info;
mod common;
#[cfg(feature = "test-seam")]
mod hostile;
mod jobs;
mod layering;
mod migrations;
mod process;
mod readme;
mod sandbox;
mod schema;
mod service;
mod storage;
mod sufficiency;
#[cfg(feature = "test-seam")]
mod supervisor;
mod sweeper;
mod tenants;
mod webhooks;

/// The hostile-worker tests need the parent's test seam; without it they would silently not exist.
#[cfg(not(feature = "test-seam"))]
#[test]
fn hostile_worker_tests_need_the_test_seam_feature() {
    panic!("run the integration tests with --features test-seam (as .ci/test does)");
}
