//! Policies as data: reviewable files in `policies/`, built into the binary and overridable per
//! directory (`--policy-dir` / `AIRLOCK_POLICY_DIR`). Every file is loaded in two stages: raw
//! serde structs that refuse unknown fields, then validated types with the semantic checks.

pub mod limits;
pub mod retention;
pub mod storage;

use std::path::{Path, PathBuf};

use airlock_sandbox::policy::{SandboxPolicy, BUILT_IN_SANDBOX, BUILT_IN_SECCOMP};
pub use limits::{LimitsPolicy, Plan};

/// Files built into the binary, by name inside the policy directory.
const BUILT_IN: &[(&str, &str)] = &[
    ("limits.toml", include_str!("../../policies/limits.toml")),
    ("seccomp.json", BUILT_IN_SECCOMP),
    ("sandbox.toml", BUILT_IN_SANDBOX),
    (
        "storage/presign.toml",
        include_str!("../../policies/storage/presign.toml"),
    ),
    (
        "storage/lifecycle.json",
        include_str!("../../policies/storage/lifecycle.json"),
    ),
    (
        "retention.toml",
        include_str!("../../policies/retention.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {file} does not parse")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("policy file {file}: {what}")]
    Invalid { file: String, what: String },
    #[error("{file}: {source}")]
    Sandbox {
        file: String,
        #[source]
        source: airlock_sandbox::policy::PolicyError,
    },
    #[error("no plan named {name:?}; known plans: {known}")]
    UnknownPlan { name: String, known: String },
}

impl PolicyError {
    pub fn invalid(file: &str, what: String) -> Self {
        PolicyError::Invalid {
            file: file.to_string(),
            what,
        }
    }
}

/// Stage one of loading: the raw serde types (which refuse unknown fields).
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, PolicyError> {
    toml::from_str(text).map_err(|source| PolicyError::Parse {
        file: file.to_string(),
        source,
    })
}

/// Every policy Airlock runs with.
#[derive(Debug, Clone)]
pub struct Policies {
    pub limits: LimitsPolicy,
    pub sandbox: SandboxPolicy,
    pub presign: storage::PresignPolicy,
    pub retention: retention::RetentionPolicy,
}

impl Policies {
    /// The built-in policies, with any file present in `dir` taking the place of its built-in.
    pub fn load(dir: Option<&Path>) -> Result<Self, PolicyError> {
        let limits = read("limits.toml", dir)?;
        let seccomp = read("seccomp.json", dir)?;
        let sandbox = read("sandbox.toml", dir)?;
        let sandbox = SandboxPolicy::parse(&seccomp.0, &sandbox.0).map_err(|source| {
            PolicyError::Sandbox {
                file: format!("{} / {}", seccomp.1, sandbox.1),
                source,
            }
        })?;
        let presign = read("storage/presign.toml", dir)?;
        let lifecycle = read("storage/lifecycle.json", dir)?;
        let backstop = storage::lifecycle_backstop_days(&lifecycle.0).map_err(|what| {
            PolicyError::Invalid {
                file: lifecycle.1.clone(),
                what,
            }
        })?;
        let limits = LimitsPolicy::parse(&limits.0, &limits.1)?;
        let retention = read("retention.toml", dir)?;
        let retention = retention::RetentionPolicy::parse(
            &retention.0,
            &retention.1,
            backstop,
            limits.longest_job(),
            &limits.plan_names(),
        )?;
        Ok(Policies {
            limits,
            sandbox,
            presign: storage::PresignPolicy::parse(&presign.0, &presign.1)?,
            retention,
        })
    }
}

/// The text of a policy file and the name to report it under.
fn read(name: &str, dir: Option<&Path>) -> Result<(String, String), PolicyError> {
    if let Some(dir) = dir {
        let path = dir.join(name);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
                path: path.clone(),
                source,
            })?;
            return Ok((text, path.display().to_string()));
        }
    }
    let text = BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| (*text).to_string())
        .unwrap_or_default();
    Ok((text, format!("built-in policies/{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_policies_load() {
        let p = Policies::load(None).unwrap();
        assert!(p.limits.plan("default").is_ok());
    }

    #[test]
    fn a_directory_overrides_the_built_in() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            include_str!("../../policies/limits.toml").replace("[plans.trial]", "[plans.tiny]");
        std::fs::write(dir.path().join("limits.toml"), text).unwrap();
        // Retention names plans too; a directory that renames a plan must say its retention.
        assert!(Policies::load(Some(dir.path())).is_err());
        let retention =
            include_str!("../../policies/retention.toml").replace("trial = 7", "tiny = 7");
        std::fs::write(dir.path().join("retention.toml"), retention).unwrap();
        let p = Policies::load(Some(dir.path())).unwrap();
        assert!(p.limits.plan("tiny").is_ok());
        assert!(p.limits.plan("trial").is_err());
    }
}
