//! `airlock doctor`: which sandbox layers this host supports, and whether the active policy can
//! run here — proven by running one real worker, locked down, on a tiny sample.

use std::process::ExitCode;

use airlock_report::Status;
use airlock_sandbox::host::HostSupport;
use serde_json::json;

use crate::policy::Policies;
use crate::process::{self, Dest, Destinations};

const SAMPLE: &[u8] = b"email,name\nana@example.com,Ana\n";

pub fn run(policies: &Policies, plan: &str) -> anyhow::Result<ExitCode> {
    let host = HostSupport::probe();
    let problems = host.problems(&policies.sandbox);
    let worker = if problems.is_empty() {
        worker_check(policies, plan)
    } else {
        json!({"ok": false, "detail": "not run: the host lacks required layers"})
    };
    let ok = problems.is_empty() && worker["ok"] == json!(true);
    let landlock = landlock_summary(&host, policies);
    let out = json!({
        "ok": ok,
        "build": crate::build_info::BUILD,
        "host": host,
        "landlock": landlock,
        "policy": {
            "required_landlock_abi": policies.sandbox.layers.landlock.min_abi,
            "layers": policies.sandbox.layers.layers,
            "seccomp_allowlist": policies.sandbox.seccomp.rules.iter().map(|r| &r.syscall).collect::<Vec<_>>(),
            "problems": problems,
        },
        "worker": worker,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the worker's landlock ruleset covers here, and, for what an older kernel lacks, what still
/// stops it.
fn landlock_summary(host: &HostSupport, policies: &Policies) -> serde_json::Value {
    use airlock_sandbox::landlock::not_covered;
    let policy = &policies.sandbox.layers.landlock;
    let abi = host.ruleset_abi(&policies.sandbox);
    let lacking: Vec<_> = not_covered(abi).collect();
    let summary = if abi < policy.min_abi {
        format!(
            "landlock ABI {abi} is below the policy's min_abi = {}: no job runs here",
            policy.min_abi
        )
    } else if lacking.is_empty() {
        format!("landlock ABI {abi}: every right and scope Airlock uses is in force")
    } else {
        let names: Vec<String> = lacking
            .iter()
            .map(|r| format!("{} (ABI {})", r.name, r.abi))
            .collect();
        format!(
            "landlock ABI {abi} lacks {}; jobs run, and each is still stopped by another layer (see not_covered)",
            names.join(", ")
        )
    };
    json!({
        "kernel_abi": host.landlock_abi,
        "ruleset_abi": abi,
        "min_abi": policy.min_abi,
        "max_abi": policy.max_abi,
        "not_covered": lacking,
        "summary": summary,
    })
}

/// Run the real worker, under the active policy, on a built-in sample.
fn worker_check(policies: &Policies, plan: &str) -> serde_json::Value {
    let attempt = || -> anyhow::Result<serde_json::Value> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("sample.csv");
        std::fs::write(&input, SAMPLE)?;
        let (file, size) = process::open_input(&input, false)?;
        let dest = Destinations {
            report: Dest::File(dir.path().join("report.json")),
            ..Destinations::default()
        };
        let plan = policies.limits.plan(plan)?;
        let outcome = process::run(
            file,
            size,
            plan,
            &policies.sandbox,
            process::Reading::default(),
            &dest,
            &Default::default(),
        )?;
        let report = outcome.report;
        let ok = report.status == Status::Accepted;
        Ok(json!({
            "ok": ok,
            "status": report.status,
            "rejection": report.rejection,
            "sandbox": report.sandbox,
        }))
    };
    attempt().unwrap_or_else(|e| json!({"ok": false, "detail": format!("{e:#}")}))
}
