//! Run the engine in-process over FILE, writing the clean output to OUT (default /dev/null),
//! and print seconds and MB/s; a third argument, SCHEMA, checks rows against that Table Schema.
//! `--no-hash` leaves both hashes out (as in the worker, whose parent hashes on another core);
//! `--csv-core` reads every record with csv-core (the old path); `--helper` checks schema batches
//! on a second thread, as the worker does. Used by benches/throughput.sh as
//! the no-sandbox reference.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(path) = args.first() else {
        eprintln!("usage: inprocess FILE [OUT]");
        return;
    };
    let out_path = args.get(1).map(String::as_str).unwrap_or("/dev/null");
    let input = std::fs::File::open(path).unwrap();
    let output = std::fs::File::create(out_path).unwrap();
    let bytes = input.metadata().unwrap().len();
    // A third argument: check rows against that Table Schema too.
    // As in the worker, which is told the input's size.
    let mut options = airlock_engine::Options {
        input_bytes_hint: Some(bytes),
        ..airlock_engine::Options::default()
    };
    // As in the worker, whose parent hashes both streams on its own core.
    if std::env::args().any(|a| a == "--no-hash") {
        options.hash_input = false;
        options.hash_output = false;
    }
    // The old parser, every record through csv-core: the reference for the plain-line path.
    if std::env::args().any(|a| a == "--csv-core") {
        options.parse_path = airlock_engine::ParsePath::CsvCore;
    }
    // Schema checks on a second thread, as the worker runs them.
    if std::env::args().any(|a| a == "--helper") {
        options.helper = Some(std::sync::Arc::new(
            airlock_engine::Helper::spawn().unwrap(),
        ));
    }
    if let Some(schema) = args.get(2) {
        let text = std::fs::read_to_string(schema).unwrap();
        options.schema = Some(std::sync::Arc::new(
            airlock_engine::schema::Schema::parse(&text).unwrap(),
        ));
    }
    let started = Instant::now();
    let report = airlock_engine::process(&input, &output, std::io::sink(), &options).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{secs:.3} s  {:.1} MB/s  {:?}",
        bytes as f64 / secs / 1e6,
        report.status
    );
}
