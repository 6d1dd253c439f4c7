//! Keys kept by a key worker ([`airlock_engine::schema::serve`] at the other end of a pipe) give
//! the same report and the same files, byte for byte, as keys kept in the process: on generated
//! tables with repeated keys, missing keys, rows that break other constraints, blank lines and
//! ragged rows between them (each of which settles the queues), and with the key budget spent at
//! every point of a run. The server refuses malformed batches.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use airlock_engine::schema::{serve, KeyLink, Schema, Served, MAX_BATCH};
use airlock_engine::{process, process_with_key_link, Options, Report};
use proptest::prelude::*;
use serde_json::json;

fn schema() -> Arc<Schema> {
    let s = json!({
        "fields": [
            {"name": "email", "type": "string", "constraints": {"unique": true}},
            {"name": "n", "type": "integer", "constraints": {"minimum": 0}},
            {"name": "code", "type": "string", "constraints": {"unique": true}},
            {"name": "k", "type": "integer"}
        ],
        "primaryKey": ["n", "k"]
    });
    Arc::new(Schema::from_value(&s).expect("the test schema loads"))
}

fn options(budget: usize) -> Options {
    Options {
        schema: Some(schema()),
        key_budget_bytes: budget,
        ..Options::default()
    }
}

struct Run {
    report: Report,
    output: Vec<u8>,
    rejects: Vec<u8>,
}

fn local(input: &[u8], budget: usize) -> Run {
    let (mut output, mut rejects) = (Vec::new(), Vec::new());
    let report = process(input, &mut output, &mut rejects, &options(budget)).expect("runs");
    Run {
        report,
        output,
        rejects,
    }
}

/// The same run with a key worker on a thread, over a socket pair (what the parent gives the two
/// processes).
fn remote(input: &[u8], budget: usize) -> (Run, Served) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let server = std::thread::spawn(move || {
        let to = theirs.try_clone().expect("clone");
        serve(theirs, to, budget, None).expect("the key worker serves")
    });
    let link = KeyLink {
        to: Box::new(ours.try_clone().expect("clone")),
        from: Box::new(ours),
    };
    let (mut output, mut rejects) = (Vec::new(), Vec::new());
    let report = process_with_key_link(
        input,
        &mut output,
        &mut rejects,
        &options(budget),
        Some(link),
    )
    .expect("runs");
    let served = server.join().expect("the key worker ends");
    (
        Run {
            report,
            output,
            rejects,
        },
        served,
    )
}

fn same(input: &[u8], budget: usize) -> Served {
    let a = local(input, budget);
    let (b, served) = remote(input, budget);
    let (ra, rb) = (
        serde_json::to_value(&a.report).unwrap(),
        serde_json::to_value(&b.report).unwrap(),
    );
    if ra != rb {
        let mut diff = String::new();
        for key in ra.as_object().unwrap().keys() {
            if ra[key] != rb[key] {
                let cut =
                    |v: &serde_json::Value| v.to_string().chars().take(600).collect::<String>();
                diff.push_str(&format!(
                    "{key}:\n  local  {}\n  remote {}\n",
                    cut(&ra[key]),
                    cut(&rb[key])
                ));
            }
        }
        panic!("the reports differ:\n{diff}");
    }
    assert!(a.output == b.output, "clean output differs");
    assert!(a.rejects == b.rejects, "rejects differ");
    served
}

/// One generated row: which email (a small range repeats), whether `n` breaks its minimum,
/// whether the code is missing, and what comes before the row.
#[derive(Debug, Clone)]
struct GenRow {
    email: u32,
    negative: bool,
    no_code: bool,
    before: Before,
}

#[derive(Debug, Clone, Copy)]
enum Before {
    Nothing,
    Blank,
    Ragged,
}

fn table(rows: &[GenRow]) -> Vec<u8> {
    let mut s = String::from("email,n,code,k\n");
    for (i, r) in rows.iter().enumerate() {
        match r.before {
            Before::Nothing => {}
            Before::Blank => s.push('\n'),
            Before::Ragged => s.push_str("only,two\n"),
        }
        let n = if r.negative { -1 } else { (i % 97) as i64 };
        let code = if r.no_code {
            String::new()
        } else {
            format!("c{}", i % 1009)
        };
        s.push_str(&format!("u{}@example.com,{n},{code},{}\n", r.email, i % 89));
    }
    s.into_bytes()
}

fn gen_row(emails: u32) -> impl Strategy<Value = GenRow> {
    (
        0..emails,
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.1),
        prop_oneof![
            20 => Just(Before::Nothing),
            1 => Just(Before::Blank),
            1 => Just(Before::Ragged),
        ],
    )
        .prop_map(|(email, negative, no_code, before)| GenRow {
            email,
            negative,
            no_code,
            before,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Runs long enough to cross several batches, with and without a budget that runs out.
    #[test]
    fn a_key_worker_gives_what_the_local_table_gives(
        rows in prop::collection::vec(gen_row(6000), 0..7000),
        small_budget in prop::bool::ANY,
    ) {
        let budget = if small_budget { 16 * 8192 } else { 1 << 20 };
        same(&table(&rows), budget);
    }
}

#[test]
fn many_batches_and_a_spent_budget() {
    let rows: Vec<GenRow> = (0..20_000)
        .map(|i| GenRow {
            email: i % 15_000,
            negative: i % 1000 == 7,
            no_code: i % 50 == 3,
            before: if i % 3001 == 5 {
                Before::Blank
            } else {
                Before::Nothing
            },
        })
        .collect();
    let input = table(&rows);
    let served = same(&input, 4 << 20);
    assert!(served.batches >= 9, "{served:?}");
    // 15,000 emails, 1,009 codes and 8,633 primary keys (n, k) are new.
    assert!(served.keys > 24_000, "{served:?}");
    let spent = local(&input, 16 * 4096);
    assert_eq!(
        spent.report.rejection.unwrap().code.as_str(),
        "key_budget_exceeded"
    );
    same(&input, 16 * 4096);
}

#[test]
fn the_key_worker_refuses_what_breaks_the_protocol() {
    let run = |bytes: &[u8]| {
        let mut answers = Vec::new();
        serve(bytes, &mut answers, 1 << 16, None).map(|s| (s, answers))
    };
    // The end of input at a message boundary, or a batch of 0: a clean end.
    assert_eq!(run(&[]).unwrap().0.batches, 0);
    assert_eq!(run(&0u32.to_le_bytes()).unwrap().0.batches, 0);
    // Two digests, the second seen before, then the end; a 0 digest is a digest like another.
    let mut m = 3u32.to_le_bytes().to_vec();
    for d in [0u128, 5, 5] {
        m.extend_from_slice(&d.to_le_bytes());
    }
    let (served, answers) = run(&m).unwrap();
    assert_eq!((served.batches, served.keys), (1, 2));
    assert_eq!(answers, [0, 0, 1]);
    // A batch past the limit, a cut count, a cut digest: errors, not a wait or a guess.
    let too_many = ((MAX_BATCH + 1) as u32).to_le_bytes();
    assert!(run(&too_many).is_err());
    assert!(run(&[1, 0]).is_err());
    let mut cut = 1u32.to_le_bytes().to_vec();
    cut.extend_from_slice(&[7; 9]);
    assert!(run(&cut).is_err());
}

#[test]
fn a_key_worker_that_goes_away_is_an_error_not_a_verdict() {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    // A key worker that reads one batch and leaves without answering.
    let server = std::thread::spawn(move || {
        let mut theirs = theirs;
        let mut buf = [0u8; 4];
        theirs.read_exact(&mut buf).ok();
        drop(theirs);
    });
    let link = KeyLink {
        to: Box::new(ours.try_clone().expect("clone")),
        from: Box::new(ours),
    };
    let rows: Vec<GenRow> = (0..5000)
        .map(|i| GenRow {
            email: i,
            negative: false,
            no_code: false,
            before: Before::Nothing,
        })
        .collect();
    let (mut output, mut rejects) = (Vec::new(), Vec::new());
    let got = process_with_key_link(
        &table(&rows)[..],
        &mut output,
        &mut rejects,
        &options(1 << 20),
        Some(link),
    );
    server.join().unwrap();
    assert!(
        matches!(got, Err(airlock_engine::EngineError::KeyLink(_))),
        "{got:?}"
    );
    let _ = std::io::sink().write_all(&output);
}
