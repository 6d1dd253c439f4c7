//! `policies/limits.toml`: limits per plan.

use std::collections::BTreeMap;

use airlock_report::Limits;
use encoding_rs::Encoding;
use serde::Deserialize;

use super::PolicyError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimitsFile {
    plans: BTreeMap<String, RawPlan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    max_bytes: u64,
    max_rows: u64,
    max_columns: u64,
    max_field_bytes: u64,
    max_record_bytes: u64,
    max_rejected_ratio: f64,
    max_issues: u64,
    fallback_encoding: String,
    worker_memory_bytes: u64,
    worker_cpu_seconds: u64,
    worker_wall_seconds: u64,
    /// Memory for a schema's `unique` and `primaryKey` keys; optional in the file (added after
    /// the others): a quarter of the worker's memory, at most 64 MiB.
    #[serde(default)]
    schema_key_bytes: Option<u64>,
}

/// One validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub limits: Limits,
    pub fallback_encoding: Option<&'static Encoding>,
    pub worker: WorkerLimits,
}

/// What one worker process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    pub memory_bytes: u64,
    pub cpu_seconds: u64,
    pub wall_seconds: u64,
    /// Memory for a schema's `unique` and `primaryKey` keys (16 bytes a key, allocated up front).
    pub schema_key_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct LimitsPolicy {
    plans: BTreeMap<String, Plan>,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// The parser holds one record and one column table; memory must cover them with room to spare.
const WORKER_BASE_MEMORY: u64 = 64 * MIB;

impl LimitsPolicy {
    pub fn parse(text: &str, file: &str) -> Result<Self, PolicyError> {
        let raw: RawLimitsFile = super::parse_toml(text, file)?;
        let invalid = |what: String| PolicyError::invalid(file, what);
        if !raw.plans.contains_key("default") {
            return Err(invalid("there must be a plan named \"default\"".into()));
        }
        let mut plans = BTreeMap::new();
        for (name, p) in raw.plans {
            let plan =
                validate(&name, p).map_err(|what| invalid(format!("plan {name:?}: {what}")))?;
            plans.insert(name, plan);
        }
        Ok(LimitsPolicy { plans })
    }

    pub fn plan_names(&self) -> Vec<&str> {
        self.plans.keys().map(String::as_str).collect()
    }

    /// The longest wall time any plan lets a job run.
    pub fn longest_job(&self) -> std::time::Duration {
        let secs = self
            .plans
            .values()
            .map(|p| p.worker.wall_seconds)
            .max()
            .unwrap_or(0);
        std::time::Duration::from_secs(secs)
    }

    pub fn plan(&self, name: &str) -> Result<&Plan, PolicyError> {
        self.plans
            .get(name)
            .ok_or_else(|| PolicyError::UnknownPlan {
                name: name.to_string(),
                known: self.plans.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }
}

fn check(field: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("{field} = {value} is outside {min}..={max}"));
    }
    Ok(())
}

fn validate(name: &str, p: RawPlan) -> Result<Plan, String> {
    check("max_bytes", p.max_bytes, 1, 1024 * GIB)?;
    check("max_rows", p.max_rows, 1, 10_000_000_000)?;
    check("max_columns", p.max_columns, 1, 65_536)?;
    check("max_record_bytes", p.max_record_bytes, 1, 64 * MIB)?;
    check("max_field_bytes", p.max_field_bytes, 1, p.max_record_bytes)?;
    check("max_issues", p.max_issues, 0, 10_000)?;
    if !(0.0..=1.0).contains(&p.max_rejected_ratio) {
        return Err(format!(
            "max_rejected_ratio = {} is outside 0..=1",
            p.max_rejected_ratio
        ));
    }
    // What the engine reserves up front (parser, carry-over, rejects and output buffers, the
    // guard's scratch, field ends, and with a schema four batches of rows waiting to be checked
    // (one filling, three with the helper), each holding at least a record, its cells' ends and
    // up to 1.7 MiB of lists, and the helper thread's 1 MiB stack), on top of the binary and its
    // stacks. With a pattern the `regex` crate runs, each thread keeps its own cache for it.
    let min_memory = WORKER_BASE_MEMORY
        + 12 * p.max_record_bytes
        + 10 * MIB
        + p.max_field_bytes
        + 48 * (p.max_columns + 1)
        + 64 * p.max_issues;
    check(
        "worker_memory_bytes",
        p.worker_memory_bytes,
        min_memory,
        64 * GIB,
    )?;
    check("worker_cpu_seconds", p.worker_cpu_seconds, 1, 86_400)?;
    check(
        "worker_wall_seconds",
        p.worker_wall_seconds,
        p.worker_cpu_seconds,
        86_400,
    )?;
    let schema_key_bytes = p
        .schema_key_bytes
        .unwrap_or((p.worker_memory_bytes / 4).min(64 * MIB));
    // The keys come on top of the engine's buffers, and a growing key table briefly holds an
    // eighth of the budget more while it moves to its full size.
    let share = airlock_engine::schema::GROWTH_SHARE as u64;
    check(
        "schema_key_bytes",
        schema_key_bytes,
        KIB,
        p.worker_memory_bytes.saturating_sub(min_memory) / (share + 1) * share,
    )?;
    let fallback_encoding =
        match p.fallback_encoding.as_str() {
            "" => None,
            label => Some(Encoding::for_label(label.as_bytes()).ok_or_else(|| {
                format!("fallback_encoding {label:?} is not a known encoding label")
            })?),
        };
    Ok(Plan {
        name: name.to_string(),
        limits: Limits {
            max_bytes: p.max_bytes,
            max_rows: p.max_rows,
            max_columns: p.max_columns as usize,
            max_field_bytes: p.max_field_bytes as usize,
            max_record_bytes: p.max_record_bytes as usize,
            max_rejected_ratio: p.max_rejected_ratio,
            max_issues: p.max_issues as usize,
        },
        fallback_encoding,
        worker: WorkerLimits {
            memory_bytes: p.worker_memory_bytes,
            cpu_seconds: p.worker_cpu_seconds,
            wall_seconds: p.worker_wall_seconds,
            schema_key_bytes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILT_IN: &str = include_str!("../../policies/limits.toml");

    #[test]
    fn default_plan_is_the_contract() {
        let policy = LimitsPolicy::parse(BUILT_IN, "t").unwrap();
        let plan = policy.plan("default").unwrap();
        assert_eq!(plan.limits, Limits::default());
        assert_eq!(
            plan.worker,
            WorkerLimits {
                memory_bytes: 512 * MIB,
                cpu_seconds: 300,
                wall_seconds: 600,
                schema_key_bytes: 64 * MIB,
            }
        );
        assert!(plan.fallback_encoding.is_none());
        assert_eq!(
            policy.plan("legacy-excel").unwrap().fallback_encoding,
            Some(encoding_rs_name("windows-1252"))
        );
    }

    fn encoding_rs_name(label: &str) -> &'static Encoding {
        Encoding::for_label(label.as_bytes()).unwrap()
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = BUILT_IN.replacen("max_rows", "max_rowz", 1);
        assert!(matches!(
            LimitsPolicy::parse(&text, "t"),
            Err(PolicyError::Parse { .. })
        ));
    }

    #[test]
    fn dangerous_values_are_refused() {
        for (from, to) in [
            ("max_rejected_ratio = 0.10", "max_rejected_ratio = 1.5"),
            ("max_field_bytes = 65_536", "max_field_bytes = 2_000_000"),
            (
                "worker_memory_bytes = 536_870_912",
                "worker_memory_bytes = 1_000",
            ),
            ("worker_wall_seconds = 600", "worker_wall_seconds = 10"),
            (
                "fallback_encoding = \"\"",
                "fallback_encoding = \"klingon\"",
            ),
            ("max_columns = 1_024", "max_columns = 0"),
        ] {
            let text = BUILT_IN.replacen(from, to, 1);
            assert_ne!(text, BUILT_IN, "{from}");
            let err = LimitsPolicy::parse(&text, "t").unwrap_err();
            assert!(matches!(err, PolicyError::Invalid { .. }), "{to}: {err}");
        }
    }

    #[test]
    fn a_default_plan_is_required() {
        let text = BUILT_IN.replace("[plans.default]", "[plans.other]");
        assert!(LimitsPolicy::parse(&text, "t").is_err());
    }
}
