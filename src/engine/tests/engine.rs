//! End-to-end behaviour of the engine through its public entry point.

use airlock_engine::{process, Code, Limits, Options, Report, Status};

struct Run {
    report: Report,
    output: String,
    rejects: String,
}

fn run_with(input: &[u8], options: &Options) -> Run {
    let mut output = Vec::new();
    let mut rejects = Vec::new();
    let report = process(input, &mut output, &mut rejects, options).expect("engine I/O");
    Run {
        report,
        output: String::from_utf8(output).expect("output is UTF-8"),
        rejects: String::from_utf8(rejects).expect("rejects are UTF-8"),
    }
}

fn run(input: &[u8]) -> Run {
    run_with(input, &Options::default())
}

fn rejected(input: &[u8]) -> Code {
    let r = run(input).report;
    assert_eq!(r.status, Status::Rejected, "{r:?}");
    r.rejection.expect("rejection").code
}

fn small(limits: impl FnOnce(&mut Limits)) -> Options {
    let mut options = Options::default();
    limits(&mut options.limits);
    options
}

#[test]
fn clean_file_round_trips() {
    let r = run(b"email,name\r\na@x.io,\"Smith, J\"\r\nb@x.io,\"say \"\"hi\"\"\"\r\n");
    assert_eq!(r.report.status, Status::Accepted);
    assert_eq!(
        r.output,
        "email,name\na@x.io,\"Smith, J\"\nb@x.io,\"say \"\"hi\"\"\"\n"
    );
    assert_eq!(r.report.rows.accepted, 2);
    assert_eq!(r.report.header, ["email", "name"]);
    let dialect = r.report.dialect.unwrap();
    assert_eq!(dialect.line_terminator, "crlf");
    assert_eq!(dialect.delimiter, ",");
    assert_eq!(r.report.output.bytes, r.output.len() as u64);
    assert_eq!(r.report.input.sha256.len(), 64);
    assert_eq!(r.rejects, "record,line,code,message,raw\n");
}

#[test]
fn header_only_is_accepted_with_zero_rows() {
    let r = run(b"a,b\n");
    assert_eq!(r.report.status, Status::Accepted);
    assert_eq!(r.report.rows.total, 0);
    assert_eq!(r.output, "a,b\n");
}

#[test]
fn header_is_trimmed_and_bom_removed() {
    let r = run(b"\xEF\xBB\xBF email , name\n1,2\n");
    assert_eq!(r.report.header, ["email", "name"]);
    assert!(r.report.input.bom);
    assert_eq!(r.output, "email,name\n1,2\n");
}

#[test]
fn semicolon_file_is_sniffed_and_written_with_commas() {
    let r = run(b"a;b;c\n1;2,5;3\n");
    assert_eq!(r.report.dialect.unwrap().delimiter, ";");
    assert_eq!(r.output, "a,b,c\n1,\"2,5\",3\n");
}

#[test]
fn formula_guard_in_output_and_counts() {
    let r = run(b"name,phone\n=HYPERLINK(\"x\"),+34 600 000 001\n-2+3+cmd|' /C calc'!A0,-12.5\n");
    assert_eq!(
        r.output,
        "name,phone\n\"'=HYPERLINK(\"\"x\"\")\",+34 600 000 001\n'-2+3+cmd|' /C calc'!A0,-12.5\n"
    );
    assert_eq!(r.report.issue_counts[&Code::FormulaEscaped], 2);
}

#[test]
fn ragged_rows_go_to_rejects_with_positions() {
    let mut input = b"a,b,c\n".to_vec();
    for i in 0..20 {
        input.extend_from_slice(format!("{i},x,y\n").as_bytes());
    }
    input.extend_from_slice(b"1,2\n=1,2,3,4\n");
    let r = run(&input);
    assert_eq!(r.report.status, Status::Accepted);
    assert_eq!(r.report.rows.rejected, 2);
    assert_eq!(r.report.issue_counts[&Code::RaggedRow], 2);
    let ragged: Vec<_> = r
        .report
        .issues
        .iter()
        .filter(|i| i.code == Code::RaggedRow)
        .collect();
    assert_eq!(
        (ragged[0].row, ragged[0].line, ragged[0].column),
        (22, 22, Some(3))
    );
    assert!(ragged[0].message.contains("1 missing"));
    assert!(ragged[1].message.contains("1 extra"));
    assert_eq!(ragged[1].column, Some(4));
    let mut rejects = csv::Reader::from_reader(r.rejects.as_bytes());
    let rows: Vec<csv::StringRecord> = rejects.records().map(Result::unwrap).collect();
    assert_eq!(&rows[0][0], "22");
    assert_eq!(&rows[0][2], "ragged_row");
    assert_eq!(&rows[0][4], "1,2");
    assert_eq!(&rows[1][4], "'=1,2,3,4");
}

#[test]
fn too_many_bad_rows() {
    assert_eq!(rejected(b"a,b\n1,2\n1\n"), Code::TooManyBadRows);
}

#[test]
fn blank_rows_are_skipped_and_counted_with_lines() {
    let r = run(b"a,b\n\n1,2\n,\n \n3,4\n\n\n");
    assert_eq!(r.report.status, Status::Accepted);
    assert_eq!(r.output, "a,b\n1,2\n3,4\n");
    assert_eq!(r.report.rows.blank, 5);
    assert_eq!(r.report.rows.accepted, 2);
    let lines: Vec<u64> = r.report.issues.iter().map(|i| i.line).collect();
    assert_eq!(lines, [2, 4, 5, 7, 8]);
}

#[test]
fn cr_only_files_count_lines() {
    let r = run(b"a,b\r1,2\r3\r");
    let ragged = &r.report.issues[0];
    assert_eq!((ragged.row, ragged.line), (3, 3));
    assert_eq!(r.report.dialect.unwrap().line_terminator, "cr");
}

#[test]
fn quoted_newlines_move_the_line_count() {
    let mut input = b"a,b\n\"x\ny\",1\n".to_vec();
    input.extend(b"1,2\n".repeat(20));
    input.extend(b"z\n");
    let r = run(&input);
    let ragged = &r.report.issues[0];
    assert_eq!((ragged.row, ragged.line), (23, 24));
}

#[test]
fn file_level_codes() {
    assert_eq!(rejected(b""), Code::Empty);
    assert_eq!(
        rejected(b"PK\x03\x04\x14\x00\x00\x00\x08\x00"),
        Code::NotCsv
    );
    assert_eq!(rejected(b"a,b\n1,\x01\n"), Code::BinaryContent);
    assert_eq!(rejected(b"a,b\n1,\xff\n"), Code::InvalidEncoding);
    assert_eq!(
        rejected(b"\xFF\xFE\x00\x00a\x00\x00\x00"),
        Code::UnsupportedEncoding
    );
    assert_eq!(rejected(b"\n\n,,\n"), Code::NoHeader);
    assert_eq!(rejected(b"a,,c\n1,2,3\n"), Code::BlankHeader);
    assert_eq!(rejected(b"a,b,a\n1,2,3\n"), Code::DuplicateHeader);
    assert_eq!(rejected(b"a,b\n1,\"open\n2,3\n"), Code::UnterminatedQuote);
    assert_eq!(rejected(b"[{\"a\": 1}]"), Code::NotCsv);
}

#[test]
fn not_csv_names_the_type() {
    let r = run(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03").report;
    assert_eq!(r.input.detected_type, "application/gzip");
    assert_eq!(
        r.rejection.unwrap().detected_type.as_deref(),
        Some("application/gzip")
    );
}

#[test]
fn limits() {
    let opts = small(|l| l.max_columns = 3);
    let r = run_with(b"a,b,c,d\n", &opts).report;
    assert_eq!(r.rejection.unwrap().code, Code::TooManyColumns);
    assert_eq!(
        run_with(b"a,b,c\n1,2,3\n", &opts).report.status,
        Status::Accepted
    );

    let opts = small(|l| l.max_rows = 2);
    let r = run_with(b"a\n1\n2\n3\n", &opts).report;
    assert_eq!(r.rejection.unwrap().code, Code::TooManyRows);
    assert_eq!(
        run_with(b"a\n1\n2\n", &opts).report.status,
        Status::Accepted
    );

    let opts = small(|l| l.max_field_bytes = 4);
    let r = run_with(b"a,b\n1,12345\n", &opts).report;
    let rej = r.rejection.unwrap();
    assert_eq!((rej.code, rej.column), (Code::FieldTooLong, Some(2)));

    let opts = small(|l| l.max_record_bytes = 16);
    let r = run_with(b"a,b\n1234567890,1234567890\n1,2\n", &opts).report;
    let rej = r.rejection.unwrap();
    assert_eq!((rej.code, rej.line), (Code::RecordTooLong, Some(2)));

    let opts = small(|l| l.max_bytes = 8);
    let r = run_with(b"a,b\n1,2\n3,4\n", &opts).report;
    assert_eq!(r.rejection.unwrap().code, Code::TooLarge);
}

#[test]
fn an_open_quote_longer_than_a_record_is_still_unterminated() {
    let opts = small(|l| l.max_record_bytes = 1024);
    let mut input = b"a,b\n1,\"".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1 << 20));
    let r = run_with(&input, &opts).report;
    let rej = r.rejection.unwrap();
    assert_eq!((rej.code, rej.line), (Code::UnterminatedQuote, Some(2)));
    assert_eq!(r.input.bytes, input.len() as u64);
}

#[test]
fn utf16_and_fallback_encodings() {
    let mut le = vec![0xFF, 0xFE];
    for u in "name,city\nJosé,Málaga\n".encode_utf16() {
        le.extend_from_slice(&u.to_le_bytes());
    }
    let r = run(&le);
    assert_eq!(r.report.input.encoding.as_deref(), Some("utf-16le"));
    assert_eq!(r.output, "name,city\nJosé,Málaga\n");

    let opts = Options {
        fallback_encoding: airlock_engine::encoding_for_label("windows-1252"),
        ..Options::default()
    };
    let r = run_with(b"name\nJos\xe9\n", &opts);
    assert_eq!(r.report.input.encoding.as_deref(), Some("windows-1252"));
    assert_eq!(r.output, "name\nJosé\n");
}

#[test]
fn no_cell_content_in_the_report() {
    let secret = "supersecret@example.com";
    let input = format!(
        "email,name\n{secret},x\n{secret}\n=cmd,{secret}\n1,2\n3,4\n5,6\n7,8\n9,10\n11,12\n13,14\n"
    );
    let r = run(input.as_bytes()).report;
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains(secret), "{json}");
    assert!(!json.contains("=cmd"));
}

/// 20 MB of one-cell rows under a two-column header: every row is ragged. The rejects file used
/// to grow to 38 times the input; it now stops at the bound, says so, and still counts every row.
#[test]
fn rejects_file_is_bounded_by_the_input() {
    let mut input = b"a,b\n".to_vec();
    for _ in 0..2_000_000 {
        input.extend_from_slice(b"x\n");
    }
    let r = run(&input);
    let rejects_len = r.rejects.len() as u64;
    assert!(rejects_len <= airlock_engine::rejects_bound(input.len() as u64));
    assert_eq!(r.report.rejects.bytes, rejects_len);
    assert!(r.report.rejects.truncated);
    assert!(r.report.rejects.rows_written < 2_000_000);
    assert_eq!(r.report.rows.rejected, 2_000_000);
    assert_eq!(r.report.issue_counts[&Code::RaggedRow], 2_000_000);
    assert_eq!(
        r.rejects.lines().count() as u64,
        r.report.rejects.rows_written + 1
    );
}

/// A few ragged rows are all written, and the file is not marked truncated.
#[test]
fn rejects_file_is_whole_when_small() {
    let r = run(b"a,b\n1,2\n3\n4,5\n6,7\n8,9\n10,11\n12,13\n14,15\n16,17\n18,19\n20,21\n");
    assert!(!r.report.rejects.truncated);
    assert_eq!(r.report.rejects.rows_written, 1);
}

/// When the key budget ends the file, the rows queued behind the row that ended it were checked
/// but never judged: the report's per-field counts leave them out, as its row counts do.
#[test]
fn per_field_counts_count_judged_rows_only() {
    let schema = airlock_engine::schema::Schema::parse(
        r#"{"fields": [{"name": "id", "type": "integer", "constraints": {"unique": true}},
                       {"name": "note"}]}"#,
    )
    .unwrap();
    // 16 bytes a slot, 64 slots, 7/8 of them: 56 keys. Every row misses its note.
    let options = Options {
        schema: Some(std::sync::Arc::new(schema)),
        key_budget_bytes: 16 * 64,
        ..Options::default()
    };
    let mut csv = String::from("id,note\n");
    for i in 0..100 {
        csv.push_str(&format!("{i},\n"));
    }
    let r = run_with(csv.as_bytes(), &options).report;
    assert_eq!(
        r.rejection.as_ref().map(|r| r.code),
        Some(Code::KeyBudgetExceeded)
    );
    assert_eq!(r.rows.accepted, 56);
    assert_eq!(r.rows.total, 56);
    let fields = &r.schema.as_ref().unwrap().fields;
    assert_eq!(fields[1].missing, 56, "{fields:?}");
}
