//! Property tests: any table written by the `csv` crate comes back cell for cell (formula guard
//! aside), and no input at all makes the engine panic or write output that does not parse.

use airlock_engine::guard::needs_guard;
use airlock_engine::{output_bound, process, rejects_bound, Options, Status};
use proptest::prelude::*;

/// Cells without C0 controls (other than TAB/CR/LF), which the engine refuses by design.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 @.+-]{0,12}",
        "[=+@\\-\t][a-z0-9()]{0,6}",
        "[,\"\r\n a-zé中]{0,8}",
        any::<String>().prop_map(|s| s
            .chars()
            .filter(|c| !c.is_control() || matches!(c, '\t' | '\r' | '\n'))
            .collect()),
    ]
}

fn table() -> impl Strategy<Value = (Vec<String>, Vec<Vec<String>>)> {
    (1usize..6).prop_flat_map(|cols| {
        let header =
            prop::collection::vec("[a-z][a-z0-9_]{0,8}", cols).prop_filter("unique names", |h| {
                let mut s = h.clone();
                s.sort();
                s.dedup();
                s.len() == h.len()
            });
        let rows = prop::collection::vec(prop::collection::vec(cell(), cols), 0..20);
        (header, rows)
    })
}

fn guarded(cell: &str) -> String {
    if needs_guard(cell.as_bytes()) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn written_tables_round_trip((header, rows) in table(), crlf in any::<bool>()) {
        let mut w = csv::WriterBuilder::new()
            .terminator(if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') })
            .from_writer(Vec::new());
        w.write_record(&header).unwrap();
        for r in &rows {
            w.write_record(r).unwrap();
        }
        let input = w.into_inner().unwrap();
        let mut out = Vec::new();
        let report = process(&input[..], &mut out, std::io::sink(), &Options { delimiter: Some(b','), ..Options::default() }).unwrap();
        prop_assert_eq!(report.status, Status::Accepted, "{:?}", report.rejection);
        let mut rd = csv::ReaderBuilder::new().has_headers(false).from_reader(&out[..]);
        let got: Vec<Vec<String>> = rd.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
        let blank = |r: &Vec<String>| r.iter().all(|c| c.trim_ascii().is_empty());
        let mut want = vec![header.iter().map(|h| guarded(h.trim())).collect::<Vec<_>>()];
        want.extend(rows.iter().filter(|r| !blank(r)).map(|r| r.iter().map(|c| guarded(c)).collect()));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_output_parses(input in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut out = Vec::new();
        let mut rej = Vec::new();
        let report = process(&input[..], &mut out, &mut rej, &Options::default()).unwrap();
        prop_assert_eq!(report.input.bytes, input.len() as u64);
        if report.status == Status::Accepted {
            let width = report.header.len();
            let mut rd = csv::ReaderBuilder::new().has_headers(false).from_reader(&out[..]);
            for r in rd.records() {
                prop_assert_eq!(r.unwrap().len(), width);
            }
            prop_assert!(std::str::from_utf8(&out).is_ok());
        }
        let mut rd = csv::Reader::from_reader(&rej[..]);
        for r in rd.records() {
            prop_assert_eq!(r.unwrap().len(), 5);
        }
        prop_assert!(out.len() as u64 <= output_bound(input.len() as u64));
        prop_assert!(rej.len() as u64 <= rejects_bound(input.len() as u64));
    }

    /// The inputs that expand most: one-byte windows-1252 cells that become three UTF-8 bytes,
    /// formula starts, stray quotes and commas under another delimiter, and rows too short for the
    /// header. Output and rejects stay within their bounds of the input.
    #[test]
    fn output_and_rejects_stay_within_their_bounds(
        cells in prop::collection::vec(prop::sample::select(vec![
            &b"\x80"[..], b"=", b"-,", b"=\"\"", b"a\"", b",", b"\x80\x80\x80", b"", b"+\x80,",
        ]), 1..400),
        width in 1usize..4,
        short_rows in any::<bool>(),
    ) {
        let mut input = b"h1;h2;h3;h4\n".to_vec();
        for (i, c) in cells.iter().enumerate() {
            input.extend_from_slice(c);
            let end_of_row = if short_rows { i % 2 == 1 } else { i % width == width - 1 };
            input.push(if end_of_row { b'\n' } else { b';' });
        }
        let options = Options {
            delimiter: Some(b';'),
            fallback_encoding: airlock_engine::encoding_for_label("windows-1252"),
            ..Options::default()
        };
        let (mut out, mut rej) = (Vec::new(), Vec::new());
        let report = process(&input[..], &mut out, &mut rej, &options).unwrap();
        prop_assert!(out.len() as u64 <= output_bound(input.len() as u64), "{} > bound of {}", out.len(), input.len());
        prop_assert!(rej.len() as u64 <= rejects_bound(input.len() as u64));
        prop_assert_eq!(report.output.bytes, out.len() as u64);
        prop_assert_eq!(report.rejects.bytes, rej.len() as u64);
    }
}
