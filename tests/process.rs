//! `airlock process`: exit codes, report contract, every code the engine can produce.

use crate::common::{airlock, fixture, process, tiny_policy_dir, write_temp};

#[test]
fn valid_fixtures_are_accepted() {
    for entry in std::fs::read_dir(fixture("valid")).unwrap() {
        let path = entry.unwrap().path();
        let plan = if path.to_string_lossy().contains("legacy-excel") {
            "legacy-excel"
        } else {
            "default"
        };
        let p = process(&path, &["--plan", plan]);
        assert_eq!(p.code, 0, "{}: {}", path.display(), p.report);
        assert_eq!(p.status(), "accepted");
        assert!(p.output().is_some(), "{}", path.display());
        assert!(p.leftovers().is_empty(), "{:?}", p.leftovers());
    }
}

#[test]
fn every_invalid_fixture_gives_the_code_in_its_name() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixture("invalid")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let want = name.split('.').next().unwrap();
        let p = process(&path, &[]);
        assert_eq!(p.code, 1, "{name}: {}", p.report);
        assert_eq!(p.rejection_code(), Some(want), "{name}: {}", p.report);
        assert!(
            p.output().is_none(),
            "{name}: a rejected file must not publish output"
        );
        assert!(p.leftovers().is_empty(), "{name}: {:?}", p.leftovers());
        seen += 1;
    }
    assert!(seen >= 12);
}

#[test]
fn row_level_codes() {
    let p = process(&fixture("rows/ragged_row.csv"), &[]);
    assert_eq!(p.code, 0, "{}", p.report);
    assert_eq!(p.report["issue_counts"]["ragged_row"], 2);
    let rejects = p.rejects().unwrap();
    assert!(rejects.starts_with("record,line,code,message,raw\n"));
    assert!(rejects.contains("32,32,ragged_row,"), "{rejects}");
    assert!(rejects.contains("1 extra"), "{rejects}");

    let p = process(&fixture("rows/formula_escaped.csv"), &[]);
    assert_eq!(p.code, 0, "{}", p.report);
    assert_eq!(p.report["issue_counts"]["formula_escaped"], 4);
    let out = p.output().unwrap();
    assert!(out.contains("+34 600 000 001"));
    assert!(out.contains("'-2+3+cmd"));
    // Every cell, not only line starts: none would run as a formula.
    let mut cells = 0;
    for record in csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(out.as_bytes())
        .records()
    {
        for cell in record.unwrap().iter() {
            cells += 1;
            assert!(
                !airlock_engine::guard::needs_guard(cell.as_bytes()),
                "an unguarded formula cell: {cell:?}"
            );
        }
    }
    assert!(cells >= 8, "{cells} cells");

    let p = process(&fixture("valid/blank-rows.csv"), &[]);
    assert_eq!(p.report["issue_counts"]["blank_row"], 4);
    assert_eq!(p.report["rows"]["blank"], 4);
}

#[test]
fn limit_codes_with_a_tiny_plan() {
    let policy = tiny_policy_dir();
    let dir = tempfile::tempdir().unwrap();
    let pd = policy.path().to_str().unwrap();
    let cases: [(&str, Vec<u8>); 5] = [
        ("too_large", vec![b'a'; 5000]),
        ("too_many_columns", b"a,b,c,d,e\n".to_vec()),
        ("too_many_rows", b"a\n1\n2\n3\n4\n5\n6\n".to_vec()),
        ("field_too_long", b"a,b\n1,12345678901234567\n".to_vec()),
        (
            "record_too_long",
            b"a,b,c\n123456789012345,123456789012345,123456789012345\n1,2,3\n".to_vec(),
        ),
    ];
    for (code, bytes) in cases {
        let path = write_temp(dir.path(), code, &bytes);
        let p = process(&path, &["--policy-dir", pd]);
        assert_eq!(p.code, 1, "{code}: {}", p.report);
        assert_eq!(p.rejection_code(), Some(code), "{}", p.report);
        assert!(
            p.report["rejection"]["limit"].is_u64(),
            "{code} names its limit"
        );
    }
}

#[test]
fn a_sparse_10gb_file_is_too_large_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.csv");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(10 << 30)
        .unwrap();
    let p = process(&path, &[]);
    assert_eq!(p.code, 1);
    assert_eq!(p.rejection_code(), Some("too_large"));
    assert_eq!(p.report["input"]["bytes"], 10u64 << 30);
    // No hash: not a byte was read.
    assert_eq!(p.report["input"]["sha256"], "");
}

#[test]
fn report_has_the_contract_fields() {
    let p = process(&fixture("valid/leads.csv"), &[]);
    let r = &p.report;
    for key in [
        "status",
        "rejection",
        "input",
        "dialect",
        "header",
        "rows",
        "issue_counts",
        "issues",
        "output",
    ] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    for key in ["bytes", "sha256", "detected_type", "encoding", "bom"] {
        assert!(r["input"].get(key).is_some(), "missing input.{key}");
    }
    for key in ["delimiter", "quote", "line_terminator"] {
        assert!(r["dialect"].get(key).is_some(), "missing dialect.{key}");
    }
    for key in ["total", "accepted", "rejected", "blank"] {
        assert!(r["rows"][key].is_u64(), "missing rows.{key}");
    }
    let out = p.output().unwrap();
    assert_eq!(r["output"]["bytes"], out.len() as u64);
    assert_eq!(r["input"]["detected_type"], "text/csv");
    assert_eq!(r["header"][0], "email");
}

#[test]
fn report_goes_to_stdout_by_default() {
    let out = airlock()
        .args(["process", fixture("valid/leads.csv").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "accepted");
}

#[test]
fn usage_errors_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(Vec<String>, &str); 4] = [
        (
            vec!["process".into(), dir.path().display().to_string()],
            "not a regular file",
        ),
        (
            vec!["process".into(), "/nonexistent/x.csv".into()],
            "cannot open",
        ),
        (
            vec![
                "process".into(),
                fixture("valid/leads.csv").display().to_string(),
                "--plan".into(),
                "gold".into(),
            ],
            "no plan named",
        ),
        (vec!["process".into()], "INPUT"),
    ];
    for (args, needle) in cases {
        let out = airlock().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn a_bad_policy_dir_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("limits.toml"),
        "[plans.default]\nmax_bytes = 1\nbogus = 2\n",
    )
    .unwrap();
    let out = airlock()
        .args([
            "process",
            fixture("valid/leads.csv").to_str().unwrap(),
            "--policy-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not parse"));
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let out = airlock().arg("process").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a FIFO"));
}

#[test]
fn explicit_delimiter_overrides_sniffing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(dir.path(), "x.csv", b"a;b,c\n1;2,3\n");
    let p = process(&path, &["--delimiter", ";"]);
    assert_eq!(p.report["dialect"]["delimiter"], ";");
    assert_eq!(p.output().unwrap(), "a,\"b,c\"\n1,\"2,3\"\n");
}

#[test]
fn outputs_are_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let p = process(&fixture("valid/leads.csv"), &[]);
    for name in ["out.csv", "rej.csv", "report.json"] {
        let mode = std::fs::metadata(p.dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name} is {mode:o}");
    }
}

/// Running as root, a destination that is a device or a symlink must be refused, never replaced
/// or written through. A private device node stands in for `/dev/null`.
#[test]
fn destinations_that_are_not_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("null");
    let made = std::process::Command::new("mknod")
        .arg(&device)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod needs root, which these tests run as");
    let target = write_temp(dir.path(), "target.csv", b"keep me\n");
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let input = fixture("valid/leads.csv");
    for (flag, dest) in [
        ("--report", &device),
        ("--output", &link),
        ("--rejects", &link),
        ("--output", &dir.path().to_path_buf()),
    ] {
        let out = airlock()
            .arg("process")
            .arg(&input)
            .arg(flag)
            .arg(dest)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {}", dest.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not a regular file"), "{stderr}");
    }
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::symlink_metadata(&device).unwrap();
    assert!(meta.file_type().is_char_device(), "the device was replaced");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me\n");
}

#[test]
fn dash_sends_one_result_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out = airlock()
        .arg("process")
        .arg(fixture("valid/leads.csv"))
        .args(["--output", "-", "--report"])
        .arg(dir.path().join("report.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let clean = String::from_utf8(out.stdout).unwrap();
    assert!(clean.starts_with("email,"), "{clean}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["output"]["bytes"], clean.len());
    // The report goes to stdout by default, so a second `-` is a usage error.
    let out = airlock()
        .arg("process")
        .arg(fixture("valid/leads.csv"))
        .args(["--output", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard output"));
}

#[test]
fn an_input_symlink_is_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_temp(dir.path(), "secret.csv", b"a,b\n1,2\n");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let link = dir.path().join("upload.csv");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let out = airlock().arg("process").arg(&link).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("symbolic link") && stderr.contains("--follow-symlinks"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let out = airlock()
        .arg("process")
        .arg(&link)
        .arg("--follow-symlinks")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn non_utf8_file_names_work_and_never_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"leads-\xff\xfe.csv");
    let input = dir.path().join(name);
    std::fs::copy(fixture("valid/leads.csv"), &input).unwrap();
    let report = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"report-\xff.json"));
    let out = airlock()
        .arg("process")
        .arg(&input)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.exists());
    // A missing file with such a name is a usage error, not a panic (101).
    let out = airlock()
        .arg("process")
        .arg(
            dir.path()
                .join(std::ffi::OsStr::from_bytes(b"gone-\xff.csv")),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Any other argument that is not UTF-8 is a usage error too.
    let out = airlock()
        .arg("process")
        .arg(&input)
        .arg("--plan")
        .arg(std::ffi::OsStr::from_bytes(b"\xff"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn one_file_for_two_results_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let same = dir.path().join("x.csv");
    let out = airlock()
        .arg("process")
        .arg(fixture("valid/leads.csv"))
        .arg("--output")
        .arg(&same)
        .arg("--report")
        .arg(dir.path().join(".").join("x.csv"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("given for two results"));
    assert!(!same.exists());
}

/// Each hostile fixture has its own expected outcome, worked out from the file, not taken from
/// whatever `airlock process` happens to say.
#[test]
fn hostile_fixtures_meet_their_own_expectations() {
    let read_output = |p: &crate::common::Processed| p.output().expect("accepted output");
    let cells = |text: &str| -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect()
    };

    // Bidi overrides and zero-width spaces are text, not controls: passed through untouched.
    let path = fixture("hostile/bidi-and-zero-width.csv");
    let p = process(&path, &[]);
    assert_eq!(p.status(), "accepted", "{}", p.report);
    assert_eq!(read_output(&p), std::fs::read_to_string(&path).unwrap());

    // DDE payloads: both cells get the formula guard, nothing else changes.
    let p = process(&fixture("hostile/csv-injection-dde.csv"), &[]);
    assert_eq!(p.status(), "accepted");
    assert_eq!(p.report["issue_counts"]["formula_escaped"], 2);
    assert_eq!(
        cells(&read_output(&p)),
        [
            vec!["name", "cmd"],
            vec!["x", "'=cmd|' /C calc'!A0"],
            vec!["y", "'+cmd|' /C notepad'!A0"],
        ]
    );

    // A terminal escape sequence: ESC is a C0 control at byte 5, after "name\n".
    let p = process(&fixture("hostile/escape-sequences.csv"), &[]);
    assert_eq!(p.rejection_code(), Some("binary_content"));
    assert_eq!(p.report["rejection"]["byte_offset"], 5);

    // 5,000 commas: a row of 5,001 cells, over the 1,024-column limit, on record 2.
    let p = process(&fixture("hostile/many-empty-fields.csv"), &[]);
    assert_eq!(p.rejection_code(), Some("too_many_columns"));
    assert_eq!(p.report["rejection"]["record"], 2);

    // 40,000 quotes open a field, double 19,999 quotes and close it: one cell of 19,999 quotes,
    // well under the 64 KiB field limit, then "x".
    let p = process(&fixture("hostile/quote-bomb.csv"), &[]);
    assert_eq!(p.status(), "accepted", "{}", p.report);
    let rows = cells(&read_output(&p));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], "\"".repeat(19_999));
    assert_eq!(rows[1][1], "x");
}
