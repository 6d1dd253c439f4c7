//! `policies/retention.toml`: how long results live after their job completed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::PolicyError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    retain_days: u64,
    orphan_grace_hours: u64,
    batch_size: u64,
    lease_seconds: u64,
    #[serde(default)]
    plans: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub retain_days: u64,
    pub plans: BTreeMap<String, u64>,
    pub orphan_grace: Duration,
    pub batch_size: i64,
    pub lease: Duration,
}

const DAY_MS: i64 = 86_400_000;

impl RetentionPolicy {
    /// `backstop_days`: the lifecycle rule's expiration; `max_job`: the longest wall time a job
    /// may run. Retention must end before the backstop could delete anything early.
    /// `known_plans`: the plans of limits.toml; retention for any other name is refused.
    pub fn parse(
        text: &str,
        file: &str,
        backstop_days: u64,
        max_job: Duration,
        known_plans: &[&str],
    ) -> Result<Self, PolicyError> {
        let raw: RawRetention = super::parse_toml(text, file)?;
        let invalid = |what: String| PolicyError::invalid(file, what);
        let limit = Duration::from_secs(backstop_days * 86_400).saturating_sub(max_job);
        let all = std::iter::once(("retain_days".to_string(), raw.retain_days))
            .chain(raw.plans.iter().map(|(p, d)| (format!("plans.{p}"), *d)));
        for (name, days) in all {
            if !(1..=3650).contains(&days) {
                return Err(invalid(format!("{name} = {days} is outside 1..=3650 days")));
            }
            if Duration::from_secs(days * 86_400) >= limit {
                return Err(invalid(format!(
                    "{name} = {days} days does not end before the lifecycle backstop ({backstop_days} days) minus the longest job"
                )));
            }
        }
        if let Some(unknown) = raw
            .plans
            .keys()
            .find(|p| !known_plans.contains(&p.as_str()))
        {
            return Err(invalid(format!(
                "plans.{unknown}: no such plan in limits.toml"
            )));
        }
        if !(1..=100_000).contains(&raw.batch_size) {
            return Err(invalid("batch_size must be 1..=100000".into()));
        }
        if raw.lease_seconds < 30 {
            return Err(invalid("lease_seconds must be at least 30".into()));
        }
        // An object is an orphan only once nothing can still come to reference it: a job's
        // outputs are referenced when its attempt completes (at most the longest job after they
        // were stored), and an input when its submit commits.
        let floor = max_job + SUBMIT_WINDOW;
        if Duration::from_secs(raw.orphan_grace_hours.saturating_mul(3600)) < floor {
            return Err(invalid(format!(
                "orphan_grace_hours = {} is shorter than the longest job plus the submit window ({} s); live objects would be deleted",
                raw.orphan_grace_hours,
                floor.as_secs()
            )));
        }
        Ok(RetentionPolicy {
            retain_days: raw.retain_days,
            plans: raw.plans,
            orphan_grace: Duration::from_secs(raw.orphan_grace_hours * 3600),
            batch_size: raw.batch_size as i64,
            lease: Duration::from_secs(raw.lease_seconds),
        })
    }

    /// The retention classes due at `now` (ms).
    pub fn classes(&self, now: i64) -> Vec<crate::jobs::RetentionClass> {
        let mut by_days: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (plan, days) in &self.plans {
            by_days.entry(*days).or_default().push(plan.clone());
        }
        let mut classes: Vec<_> = by_days
            .into_iter()
            .map(|(days, plans)| crate::jobs::RetentionClass {
                plans,
                others: false,
                cutoff: now - days as i64 * DAY_MS,
            })
            .collect();
        classes.push(crate::jobs::RetentionClass {
            plans: Vec::new(),
            others: true,
            cutoff: now - self.retain_days as i64 * DAY_MS,
        });
        classes
    }
}

/// The longest a submit may take between storing its input and committing its job. It also
/// covers direct uploads: a PUT lands before its link expires (10 minutes) and can be completed
/// until 15 minutes after that (`crate::api`), so an uploaded input is referenced within 25
/// minutes or never.
const SUBMIT_WINDOW: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../../policies/retention.toml");
    const JOB: Duration = Duration::from_secs(600);
    const PLANS: &[&str] = &["default", "trial", "legacy-excel"];

    #[test]
    fn built_in_retention_is_30_days_and_valid() {
        let p = RetentionPolicy::parse(TEXT, "t", 45, JOB, PLANS).unwrap();
        assert_eq!(p.retain_days, 30);
        assert_eq!(p.plans["trial"], 7);
    }

    #[test]
    fn out_of_range_or_past_the_backstop_is_refused() {
        for (from, to) in [
            ("retain_days = 30", "retain_days = 0"),
            ("retain_days = 30", "retain_days = 4000"),
            ("trial = 7", "trial = 45"),
        ] {
            let text = TEXT.replacen(from, to, 1);
            assert!(
                RetentionPolicy::parse(&text, "t", 45, JOB, PLANS).is_err(),
                "{to}"
            );
        }
        // An orphan grace that could take a live job's objects is refused: 0 h, or 1 h when the
        // longest job is 10 minutes (1 h of submit window on top).
        for hours in [0, 1] {
            let text = TEXT.replace(
                "orphan_grace_hours = 48",
                &format!("orphan_grace_hours = {hours}"),
            );
            let err = RetentionPolicy::parse(&text, "t", 45, JOB, PLANS).unwrap_err();
            assert!(format!("{err}").contains("orphan_grace_hours"), "{err}");
        }
        let two = TEXT.replace("orphan_grace_hours = 48", "orphan_grace_hours = 2");
        assert!(RetentionPolicy::parse(&two, "t", 45, JOB, PLANS).is_ok());
        // A backstop shorter than retention + the longest job is refused too.
        assert!(RetentionPolicy::parse(TEXT, "t", 30, JOB, PLANS).is_err());
        let unknown_field = TEXT.replace("retain_days = 30", "retain_days = 30\nbogus = 1");
        assert!(RetentionPolicy::parse(&unknown_field, "t", 45, JOB, PLANS).is_err());
        let unknown_plan = format!("{TEXT}\ngold = 10\n");
        let err = RetentionPolicy::parse(&unknown_plan, "t", 45, JOB, PLANS).unwrap_err();
        assert!(
            err.to_string().contains("gold") || format!("{err:?}").contains("gold"),
            "{err:?}"
        );
    }

    #[test]
    fn classes_cover_named_plans_and_the_rest() {
        let p = RetentionPolicy::parse(TEXT, "t", 45, JOB, PLANS).unwrap();
        let c = p.classes(100 * DAY_MS);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].plans.clone(), c[0].cutoff),
            (vec!["trial".to_string()], 93 * DAY_MS)
        );
        assert!(c[1].others && c[1].cutoff == 70 * DAY_MS);
    }
}
