//! The report contract does not pull the parser in: only the worker uses the engine, and the
//! contract crate depends on nothing but serde.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_worker_uses_the_engine() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offenders = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        // The crates themselves, and the worker: the one place the parser runs.
        if ["engine", "report", "sandbox"]
            .iter()
            .any(|c| rel.starts_with(c))
            || rel == Path::new("worker.rs")
        {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests (at the end of a file) may build reports with the real engine.
        let code = text.split("#[cfg(test)]").next().unwrap();
        // The one exception: a job's Table Schema is loaded and checked in the parent (so a bad
        // schema is a usage error, never a worker failure). That reads the schema's JSON, not
        // the upload; the rows are still checked only in the worker.
        let code = code.replace("airlock_engine::schema", "");
        if code.contains("airlock_engine") {
            offenders.push(rel.display().to_string());
        }
    }
    assert!(checked >= 20, "only {checked} files checked");
    assert!(
        offenders.is_empty(),
        "use airlock_report, not airlock_engine, in: {offenders:?}"
    );
}

#[test]
fn the_report_crate_depends_on_serde_alone() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/Cargo.toml"),
    )
    .unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    let names: Vec<&str> = deps
        .lines()
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .map(|n| n.trim_end_matches(".workspace"))
        .collect();
    assert_eq!(names, ["serde"], "{manifest}");
}

/// Configuration is read once, at the CLI edge (clap's `env`): nothing below it reads the
/// environment, except the test seams that exist only in `test-seam` builds.
#[test]
fn only_the_cli_reads_the_environment() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offenders = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        if rel == Path::new("cli.rs") || rel.starts_with("sandbox") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            let reads = line.contains("env::var(") || line.contains("env::var_os(");
            let seam = line.contains("crate::hostile::");
            if reads && !seam {
                offenders.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
