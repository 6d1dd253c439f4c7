//! What this binary is: its version, the git commit it was built from and its build profile
//! (`build.rs`). `airlock --version`, `airlock doctor` and `/healthz` all say the same.

use serde::Serialize;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Twelve hex digits, or `unknown` for a build made without git and without
/// `AIRLOCK_BUILD_COMMIT`.
pub const COMMIT: &str = env!("AIRLOCK_GIT_COMMIT");
/// `release` or `debug`.
pub const PROFILE: &str = env!("AIRLOCK_BUILD_PROFILE");
/// `0.1.0 (commit 0123456789ab, release build)`: what `airlock --version` prints after the name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AIRLOCK_GIT_COMMIT"),
    ", ",
    env!("AIRLOCK_BUILD_PROFILE"),
    " build)"
);

/// The three facts, as JSON carries them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Build {
    pub version: &'static str,
    pub commit: &'static str,
    pub profile: &'static str,
}

pub const BUILD: Build = Build {
    version: VERSION,
    commit: COMMIT,
    profile: PROFILE,
};
