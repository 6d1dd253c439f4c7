//! The seccomp allowlist is *sufficient*: no input, however odd, makes the real sandboxed worker
//! die of the sandbox. Every fixture, every fuzz seed and corpus file, and generated extremes (each
//! plan limit at limit-1, limit and limit+1; fields and records of 1 KiB to 64 MiB; 10M one-byte
//! rows; 1M columns; pathological quoting; every supported encoding) go through `airlock process`
//! under the production policy. None may end `failed` (least of all `sandbox_violation`), and each
//! must give exactly what the in-process engine gives: status, code, output and rejects bytes.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use airlock_engine::{Limits, Options};

use crate::common::{process, tiny_policy_dir};

thread_local! {
    /// Sandboxed runs made by the current test (each test has its own thread).
    static RUNS: Cell<usize> = const { Cell::new(0) };
}

fn runs() -> usize {
    RUNS.with(Cell::get)
}

/// The sandboxed runs of each part of the suite, asserted by that part and quoted by
/// BENCHMARKS.md (`the_documented_run_counts_are_the_suites`): the fixture and fuzz inputs run
/// under both plans, plus these.
const PLANS_PER_FILE: usize = 2;
const PLAN_LIMIT_RUNS: usize = 21;
const HUGE_RUNS: usize = 19;
const QUOTING_AND_ENCODING_RUNS: usize = 26;
const LARGEST_ISSUE_LIST_RUNS: usize = 1;

/// Every fixture, fuzz seed and fuzz corpus file: what the first part runs.
fn fixture_and_fuzz_inputs() -> Vec<PathBuf> {
    let mut files = every_file_under(&repo("fixtures"));
    let fixtures = files.len();
    let seeds = every_file_under(&repo("fuzz/seeds"));
    let corpus = every_file_under(&repo("fuzz/corpus"));
    assert!(fixtures >= 30, "only {fixtures} fixtures found");
    assert!(
        seeds.len() >= 20 && corpus.len() >= 100,
        "fuzz inputs missing: {} seeds, {} corpus files",
        seeds.len(),
        corpus.len()
    );
    files.extend(seeds);
    files.extend(corpus);
    files
}

/// 1263 as "1,263".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// BENCHMARKS.md quotes the suite's size; the numbers it quotes are the ones the parts assert,
/// so adding a fixture without updating the document fails here.
#[test]
fn the_documented_run_counts_are_the_suites() {
    let files = fixture_and_fuzz_inputs().len();
    let total = files * PLANS_PER_FILE
        + PLAN_LIMIT_RUNS
        + HUGE_RUNS
        + QUOTING_AND_ENCODING_RUNS
        + LARGEST_ISSUE_LIST_RUNS;
    let doc = std::fs::read_to_string(repo("BENCHMARKS.md")).expect("BENCHMARKS.md reads");
    for quoted in [
        format!(
            "**{} runs through the real sandboxed worker**",
            thousands(total)
        ),
        format!(
            "{} fixture, fuzz-seed and fuzz-corpus files",
            thousands(files)
        ),
        format!("which is {} runs", thousands(files * PLANS_PER_FILE)),
        format!("{PLAN_LIMIT_RUNS} plan-limit cases"),
        format!("{HUGE_RUNS} huge cases"),
        format!("{QUOTING_AND_ENCODING_RUNS} runs of quoting and encoding cases"),
    ] {
        assert!(
            doc.contains(&quoted),
            "BENCHMARKS.md does not say {quoted:?}"
        );
    }
}

/// How one input is run: the CLI arguments and the matching in-process options.
struct Plan {
    args: Vec<String>,
    options: Options,
}

fn default_plan() -> Plan {
    Plan {
        args: vec![],
        options: Options::default(),
    }
}

fn legacy_excel() -> Plan {
    Plan {
        args: vec!["--plan".into(), "legacy-excel".into()],
        options: Options {
            fallback_encoding: airlock_engine::encoding_for_label("windows-1252"),
            ..Options::default()
        },
    }
}

/// The default plan of a policy directory (such as `common::tiny_policy_dir`), read the way the
/// CLI reads it.
fn tiny(dir: &Path) -> Plan {
    let policies = airlock::policy::Policies::load(Some(dir)).unwrap();
    Plan {
        args: vec!["--policy-dir".into(), dir.display().to_string()],
        options: Options {
            limits: policies.limits.plan("default").unwrap().limits.clone(),
            ..Options::default()
        },
    }
}

/// Run `path` sandboxed and in-process; they must agree, and the sandbox must not fail it.
/// Returns the rejection code, if any.
fn check(path: &Path, plan: &Plan) -> Option<String> {
    let args: Vec<&str> = plan.args.iter().map(String::as_str).collect();
    let p = process(path, &args);
    RUNS.with(|r| r.set(r.get() + 1));
    let name = path.display();
    assert_ne!(
        p.status(),
        "failed",
        "{name}: input data alone must never fail the worker: {}",
        p.report["rejection"]
    );
    let size = std::fs::metadata(path).unwrap().len();
    if size > plan.options.limits.max_bytes {
        assert_eq!(p.rejection_code(), Some("too_large"), "{name}");
        return Some("too_large".into());
    }
    let input = std::fs::read(path).unwrap();
    let (mut out, mut rej) = (Vec::new(), Vec::new());
    let want = airlock_engine::process(&input[..], &mut out, &mut rej, &plan.options).unwrap();
    let want_code = want.rejection.as_ref().map(|r| r.code.as_str());
    assert_eq!(
        p.status(),
        serde_json::to_value(want.status).unwrap(),
        "{name}"
    );
    assert_eq!(p.rejection_code(), want_code, "{name}");
    assert_eq!(p.report["rows"], serde_json::to_value(&want.rows).unwrap());
    if want.status == airlock_engine::Status::Accepted {
        let got = std::fs::read(p.dir.path().join("out.csv")).unwrap();
        assert!(
            got == out,
            "{name}: sandboxed output differs from in-process"
        );
    }
    let got = std::fs::read(p.dir.path().join("rej.csv")).unwrap();
    assert!(
        got == rej,
        "{name}: sandboxed rejects differ from in-process"
    );
    p.rejection_code().map(String::from)
}

fn every_file_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{} cannot be read: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(every_file_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn every_fixture_and_fuzz_input_runs_sandboxed_as_it_does_in_process() {
    let before = runs();
    let files = fixture_and_fuzz_inputs();
    for path in &files {
        check(path, &default_plan());
        check(path, &legacy_excel());
    }
    eprintln!(
        "sufficiency: {} fixture and fuzz inputs, {} sandboxed runs",
        files.len(),
        runs() - before
    );
    assert_eq!(runs() - before, files.len() * PLANS_PER_FILE);
}

/// A file whose only data row is `field` under a one-column header.
fn one_field(dir: &Path, name: &str, field: &[u8]) -> PathBuf {
    let mut bytes = b"h\n".to_vec();
    bytes.extend_from_slice(field);
    bytes.push(b'\n');
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A header of `cols` columns and one row of `cols` fields of `width` bytes.
fn one_record(dir: &Path, name: &str, cols: usize, width: usize) -> PathBuf {
    let header: Vec<String> = (0..cols).map(|i| format!("c{i}")).collect();
    let mut bytes = header.join(",").into_bytes();
    bytes.push(b'\n');
    let field = vec![b'x'; width];
    for i in 0..cols {
        if i > 0 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(&field);
    }
    bytes.push(b'\n');
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

#[test]
fn every_plan_limit_at_minus_one_at_and_plus_one() {
    let before = runs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = tiny_policy_dir();
    let tiny = tiny(policy.path());
    let limits = Limits::default();

    // Bytes (tiny plan: 4096). Its other limits (5 rows of 40 bytes) reject a 4 KiB file
    // anyway, so what is pinned is that only the file over the limit is `too_large`.
    for n in [4095, 4096, 4097] {
        let mut bytes = b"h\n".to_vec();
        bytes.resize(n - 1, b'b');
        bytes.push(b'\n');
        let got = check(&write(d, &format!("bytes-{n}"), &bytes), &tiny);
        assert_eq!(
            got.as_deref() == Some("too_large"),
            n > 4096,
            "{n} bytes: {got:?}"
        );
    }
    // Rows (tiny plan: 5).
    for (n, want) in [(4, None), (5, None), (6, Some("too_many_rows"))] {
        let bytes = format!("h\n{}", "r\n".repeat(n));
        let got = check(&write(d, &format!("rows-{n}"), bytes.as_bytes()), &tiny);
        assert_eq!(got.as_deref(), want, "{n} rows");
    }
    // Columns (default plan: 1024).
    let max = limits.max_columns;
    for (n, want) in [
        (max - 1, None),
        (max, None),
        (max + 1, Some("too_many_columns")),
    ] {
        let got = check(&one_record(d, &format!("cols-{n}"), n, 1), &default_plan());
        assert_eq!(got.as_deref(), want, "{n} columns");
    }
    // Field bytes (default plan: 64 KiB).
    let max = limits.max_field_bytes;
    for (n, want) in [
        (max - 1, None),
        (max, None),
        (max + 1, Some("field_too_long")),
    ] {
        let got = check(
            &one_field(d, &format!("field-{n}"), &vec![b'f'; n]),
            &default_plan(),
        );
        assert_eq!(got.as_deref(), want, "a {n}-byte field");
    }
    // Record bytes (default plan: 1 MiB): 32 fields of 32 KiB (within the field limit), the
    // last one a byte short, exact, or a byte over.
    let max = limits.max_record_bytes;
    for n in [max - 1, max, max + 1] {
        let cols = 32;
        let width = n / cols;
        let mut path = one_record(d, &format!("record-{n}"), cols, width);
        let extra = n - width * cols;
        if extra > 0 {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.pop();
            bytes.extend(std::iter::repeat_n(b'y', extra));
            bytes.push(b'\n');
            path = write(d, &format!("record-{n}"), &bytes);
        }
        let got = check(&path, &default_plan());
        let want = (n > max).then_some("record_too_long");
        assert_eq!(got.as_deref(), want, "a {n}-byte record");
    }
    // Issues listed (default plan: 100) and counted.
    for n in [99, 100, 101] {
        let bytes = format!("h\n{}", "=1\n".repeat(n));
        let plan = Plan {
            args: vec![],
            options: Options::default(),
        };
        let path = write(d, &format!("issues-{n}"), bytes.as_bytes());
        check(&path, &plan);
        let p = process(&path, &[]);
        assert_eq!(p.report["issue_counts"]["formula_escaped"], n);
        assert_eq!(p.report["issues"].as_array().unwrap().len(), n.min(100));
    }
    // Rejected-row ratio (10%): 1 of 10 passes, 2 of 10 and 1 of 9 do not.
    for (good, bad, want) in [
        (9, 1, None),
        (8, 2, Some("too_many_bad_rows")),
        (8, 1, Some("too_many_bad_rows")),
    ] {
        let bytes = format!("a,b\n{}{}", "1,2\n".repeat(good), "3\n".repeat(bad));
        let got = check(
            &write(d, &format!("ratio-{good}-{bad}"), bytes.as_bytes()),
            &default_plan(),
        );
        assert_eq!(got.as_deref(), want, "{bad} bad of {}", good + bad);
    }
    eprintln!(
        "sufficiency: {} sandboxed runs at plan limits",
        runs() - before
    );
    assert_eq!(runs() - before, PLAN_LIMIT_RUNS);
}

#[test]
fn huge_fields_records_rows_and_columns() {
    let before = runs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plan = default_plan();
    for size in [KIB, MIB, 8 * MIB, 64 * MIB] {
        // One field, bare and quoted; the 8 MiB one used to kill the worker (mremap).
        let code = check(&one_field(d, "field", &vec![b'x'; size]), &plan);
        let mut quoted = vec![b'"'];
        quoted.extend(std::iter::repeat_n(b'q', size));
        quoted.push(b'"');
        let quoted_code = check(&one_field(d, "quoted", &quoted), &plan);
        // One record of 1,024 fields.
        let record_code = check(&one_record(d, "record", 1024, size / 1024), &plan);
        if size == KIB {
            assert_eq!((code, quoted_code, record_code), (None, None, None));
        } else {
            assert!(
                matches!(code.as_deref(), Some("field_too_long" | "record_too_long")),
                "{size}: {code:?}"
            );
            assert!(matches!(
                quoted_code.as_deref(),
                Some("field_too_long" | "record_too_long")
            ));
            if size > MIB {
                assert_eq!(record_code.as_deref(), Some("record_too_long"));
            }
        }
    }
    // 50 MiB without a line break.
    let got = check(&write(d, "no-break", &vec![b'z'; 50 * MIB]), &plan);
    assert_eq!(got.as_deref(), Some("record_too_long"));
    // 10M one-byte rows: exactly the row limit, then one more.
    let mut rows = b"h\n".to_vec();
    rows.extend(b"x\n".repeat(10_000_000));
    assert_eq!(check(&write(d, "rows", &rows), &plan), None);
    rows.extend_from_slice(b"x\n");
    let got = check(&write(d, "rows", &rows), &plan);
    assert_eq!(got.as_deref(), Some("too_many_rows"));
    drop(rows);
    // 1M columns.
    let cols = b"a,".repeat(1_000_000);
    let got = check(&write(d, "columns", &cols), &plan);
    assert_eq!(got.as_deref(), Some("too_many_columns"));
    // 1,024 header names of 1,000 bytes each: a report of about 1 MiB, streamed by the worker.
    let names: Vec<String> = (0..1024).map(|i| format!("{i:0>1000}")).collect();
    let header = format!("{}\n{}\n", names.join(","), vec!["1"; 1024].join(","));
    assert_eq!(
        check(&write(d, "long-names", header.as_bytes()), &plan),
        None
    );
    // 1M formula cells: issues capped, counts exact.
    let formulas = format!("h\n{}", "=x\n".repeat(1_000_000));
    assert_eq!(
        check(&write(d, "formulas", formulas.as_bytes()), &plan),
        None
    );
    // 20 MB of rows too short for the header: the rejects file hits its bound.
    let mut short = b"a,b\n".to_vec();
    short.extend(b"x\n".repeat(10_000_000));
    let path = write(d, "short-rows", &short);
    assert_eq!(check(&path, &plan).as_deref(), Some("too_many_bad_rows"));
    let p = process(&path, &[]);
    assert_eq!(p.report["rejects"]["truncated"], true);
    assert!(p.report["rejects"]["bytes"].as_u64().unwrap() <= 2 * short.len() as u64 + (1 << 20));
    eprintln!(
        "sufficiency: {} sandboxed runs of huge inputs",
        runs() - before
    );
    assert_eq!(runs() - before, HUGE_RUNS);
}

#[test]
fn pathological_quoting_and_every_encoding() {
    let before = runs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plan = default_plan();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // A quote that never closes, 8 MiB long.
    let mut open = b"h\n\"".to_vec();
    open.extend(std::iter::repeat_n(b'o', 8 * MIB));
    cases.push(("unclosed", open));
    // 8 MiB of doubled quotes inside one quoted field.
    let mut doubled = b"h\n\"".to_vec();
    doubled.extend(b"\"\"".repeat(4 * MIB));
    doubled.extend_from_slice(b"\"\n");
    cases.push(("doubled", doubled));
    // 1M quoted line breaks in one field.
    let mut breaks = b"h\n\"".to_vec();
    breaks.extend(b"\n".repeat(MIB));
    breaks.extend_from_slice(b"\"\n");
    cases.push(("quoted-breaks", breaks));
    // Stray quotes in unquoted fields, quotes after quoted fields, and quote-only rows.
    cases.push((
        "stray",
        b"a,b\n"
            .iter()
            .copied()
            .chain(b"x\"y,\"z\"w\n".repeat(100_000))
            .collect(),
    ));
    cases.push((
        "quote-rows",
        b"a\n"
            .iter()
            .copied()
            .chain(b"\"\"\"\"\n\"\n".repeat(50_000))
            .collect(),
    ));
    cases.push(("only-quotes", b"\"".repeat(3 * MIB)));
    // Encodings: UTF-8 with and without BOM, UTF-16 LE and BE with BOM, each with non-BMP
    // characters straddling the 256 KiB read chunks; UTF-16 without a BOM; invalid UTF-8 late.
    let text: String = "email,name\n".to_string()
        + &"a@x.io,Zoë 😀 中文 ∑\n".repeat(40_000)
        + "b@x.io,\"quoted, with 😀\"\n";
    cases.push(("utf8", text.clone().into_bytes()));
    cases.push(("utf8-bom", [&b"\xEF\xBB\xBF"[..], text.as_bytes()].concat()));
    let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    cases.push(("utf16le", [&b"\xFF\xFE"[..], &le].concat()));
    cases.push(("utf16be", [&b"\xFE\xFF"[..], &be].concat()));
    cases.push(("utf16le-no-bom", le));
    let mut late = text.clone().into_bytes();
    late.extend_from_slice(b"c@x.io,\xFF\xFE\n");
    cases.push(("invalid-late", late));
    let latin1: Vec<u8> = b"name,city\n"
        .iter()
        .copied()
        .chain(b"Jos\xE9,M\xFCnchen \x80\n".repeat(100_000))
        .collect();
    cases.push(("windows-1252", latin1.clone()));
    for (name, bytes) in &cases {
        let path = write(d, name, bytes);
        check(&path, &plan);
        check(&path, &legacy_excel());
    }
    let utf8_ok = ["utf8", "utf8-bom", "utf16le", "utf16be"];
    for name in utf8_ok {
        let p = process(&d.join(name), &[]);
        assert_eq!(p.status(), "accepted", "{name}: {}", p.report["rejection"]);
    }
    let p = process(&d.join("windows-1252"), &["--plan", "legacy-excel"]);
    assert_eq!(p.status(), "accepted", "{}", p.report["rejection"]);
    assert_eq!(p.report["input"]["encoding"], "windows-1252");
    let p = process(&d.join("unclosed"), &[]);
    assert_eq!(p.rejection_code(), Some("unterminated_quote"));
    eprintln!(
        "sufficiency: {} sandboxed runs of quoting and encodings",
        runs() - before
    );
    assert_eq!(runs() - before, QUOTING_AND_ENCODING_RUNS);
}

/// The largest issue list a plan may ask for (10,000) is reserved up front: filling it never
/// reallocates a large block (which would need mremap, not allowlisted).
#[test]
fn the_largest_issue_list_a_plan_allows() {
    let dir = tempfile::tempdir().unwrap();
    let limits = std::fs::read_to_string(repo("policies/limits.toml"))
        .unwrap()
        .replace("max_issues = 100 ", "max_issues = 10_000 ");
    assert!(limits.contains("max_issues = 10_000"));
    std::fs::write(dir.path().join("limits.toml"), limits).unwrap();
    let plan = Plan {
        args: vec!["--policy-dir".into(), dir.path().display().to_string()],
        options: Options {
            limits: Limits {
                max_issues: 10_000,
                ..Limits::default()
            },
            ..Options::default()
        },
    };
    let input = format!("h\n{}", "-x\n".repeat(20_000));
    let path = write(dir.path(), "issues.csv", input.as_bytes());
    let before = runs();
    assert_eq!(check(&path, &plan), None);
    assert_eq!(runs() - before, LARGEST_ISSUE_LIST_RUNS);
    let p = process(&path, &["--policy-dir", &dir.path().display().to_string()]);
    assert_eq!(p.report["issues"].as_array().unwrap().len(), 10_000);
}
