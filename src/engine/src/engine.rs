//! The streaming pass: text chunks → `csv-core` records in fixed buffers → checks → writers.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use csv_core::ReadRecordResult;
use sha2::{Digest, Sha256};

use crate::guard::needs_guard;
use crate::lines::Lines;
use crate::quote::QuoteTracker;
use crate::report::{
    excerpt, Code, Dialect, FieldCounts, InputInfo, Issue, OutputInfo, Rejection, RejectsInfo,
    Report, RowCounts, SchemaSummary, Status,
};
use crate::schema::{Digester, HeaderMap, Insert, KeySet, Schema};

mod batch;
use crate::sniff::sniff_delimiter;
use crate::text::{self, Source, TextReader};
use crate::{EngineError, Limits, Options, ParsePath, HEADER_NAME_IN_REPORT};
pub use batch::Helper;
use batch::{Batch, CheckPlan, Flight, Found, Pending, Queue, Step, Why, DEPTH, MIN_HANDOFF_ROWS};

/// Decoded bytes used to sniff the dialect and the text format.
const SAMPLE: usize = 64 * 1024;
const OUT_BUFFER: usize = 256 * 1024;
const REJECTS_HEADER: [&str; 5] = ["record", "line", "code", "message", "raw"];

type Outcome = Result<Result<(), Rejection>, EngineError>;

/// The most bytes one record can take once written: every byte of it a doubled quote, plus
/// quotes, a formula-guard prefix and a delimiter per cell, and the line break. Output and
/// rejects buffers are sized to this up front, so they never grow (and never reallocate, which
/// the worker's seccomp allowlist does not permit for large blocks: no `mremap`).
fn written_record_max(limits: &Limits) -> usize {
    limits
        .max_record_bytes
        .saturating_mul(2)
        .saturating_add(limits.max_columns.saturating_add(1).saturating_mul(4))
        .saturating_add(16)
}

/// Validate `input` and write the clean CSV to `output` and rejected rows to `rejects`.
///
/// Returns the report whatever the content; `Err` only when reading or writing failed. When the
/// status is not `accepted`, whatever reached `output` must be discarded by the caller.
pub fn process<R: Read, O: Write, J: Write>(
    input: R,
    output: O,
    rejects: J,
    options: &Options,
) -> Result<Report, EngineError> {
    let limits = &options.limits;
    let mut text = TextReader::new(input, limits.max_bytes);
    if !options.hash_input {
        text = text.without_hash();
    }
    let mut sink = Sink::new(output, rejects, limits, options.hash_output)?;
    if let Some(schema) = &options.schema {
        let state = SchemaState::new(
            schema.clone(),
            options.key_budget_bytes,
            options.input_bytes_hint,
        );
        // A helper helps only with a batch large enough to hand over.
        // One run at a time: a helper another run holds is not used.
        sink.flight.helper = options.helper.clone().filter(|h| h.claim());
        let helper = sink.flight.helper.is_some();
        sink.queue = Queue::new(limits, schema, helper);
        if helper {
            sink.spare = (0..DEPTH)
                .map(|_| Queue::new(limits, schema, true))
                .collect();
        }
        sink.schema = Some(state);
    }
    let mut dialect = None;
    let outcome = match text.start(options.fallback_encoding)? {
        Err(rejection) => Err(rejection),
        Ok(()) => run(&mut text, &mut sink, options, &mut dialect)?,
    };
    if outcome.is_err() {
        text.drain()?;
    }
    let detected_type = match &outcome {
        Err(r) if r.code == Code::NotCsv => r
            .detected_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
        Err(r) if r.code == Code::BinaryContent => "application/octet-stream",
        _ if text.bytes_in() == 0 => "inode/x-empty",
        _ => "text/csv",
    };
    let encoding = match (&outcome, text.source()) {
        (Err(r), _)
            if matches!(
                r.code,
                Code::NotCsv | Code::Empty | Code::UnsupportedEncoding
            ) =>
        {
            None
        }
        (_, Source::Utf8) => Some("utf-8".to_string()),
        (_, Source::Transcode(enc)) => Some(enc.name().to_ascii_lowercase()),
    };
    let input_info = InputInfo {
        bytes: text.bytes_in(),
        sha256: text.sha256_hex(),
        detected_type: detected_type.to_string(),
        encoding,
        bom: text.bom,
    };
    sink.finish(outcome, input_info, dialect)
}

fn run<R: Read, O: Write, J: Write>(
    text: &mut TextReader<R>,
    sink: &mut Sink<O, J>,
    options: &Options,
    dialect: &mut Option<Dialect>,
) -> Outcome {
    // Sized so the last chunk always fits: the sample never reallocates.
    let mut sample = Vec::with_capacity(SAMPLE + text::MAX_CHUNK);
    let mut complete = false;
    while sample.len() < SAMPLE {
        match text.next_chunk()? {
            Err(r) => return Ok(Err(r)),
            Ok(None) => {
                complete = true;
                break;
            }
            Ok(Some(chunk)) => sample.extend_from_slice(chunk),
        }
    }
    if let Some(mime) = text::text_format(&sample) {
        return Ok(Err(text::not_csv(mime)));
    }
    let delimiter = options
        .delimiter
        .unwrap_or_else(|| sniff_delimiter(&sample, complete));
    let mut parser = Parser::new(delimiter, &options.limits, options.parse_path);
    let finish = |parser: &Parser, ended: Option<&'static str>, dialect: &mut Option<Dialect>| {
        *dialect = Some(Dialect {
            delimiter: (delimiter as char).to_string(),
            quote: "\"".into(),
            line_terminator: ended.unwrap_or(parser.lines.style()).into(),
        });
    };
    sink.input_seen = text.bytes_in();
    let mut outcome = parser.feed(&sample, false, sink)?;
    drop(sample);
    while outcome.is_ok() {
        // Read before this chunk: an underestimate keeps the rejects budget on the safe side.
        sink.input_seen = text.bytes_in();
        match text.next_chunk()? {
            Err(r) => outcome = Err(r),
            Ok(Some(chunk)) => outcome = parser.feed(chunk, false, sink)?,
            Ok(None) => {
                outcome = parser.feed(&[], true, sink)?;
                break;
            }
        }
    }
    // Rows still waiting for their checks came before whatever ended the input.
    let earlier = sink.flush_deferred()?;
    if earlier.is_err() {
        outcome = earlier;
    }
    finish(&parser, sink.ended_style, dialect);
    if let Some(tally) = &options.tally {
        tally.add(parser.plain_records, parser.csv_core_records);
    }
    if outcome.is_ok() {
        let trailing = parser.lines.trailing_blank_lines();
        let blanks = sink.blank_lines(trailing, parser.lines.last_content_line() + 1)?;
        if blanks.is_err() {
            return Ok(blanks);
        }
        return Ok(sink.check_end());
    }
    Ok(outcome)
}

/// Parser state that survives between chunks.
struct Parser {
    csv: csv_core::Reader,
    buf: Vec<u8>,
    ends: Vec<usize>,
    out_len: usize,
    ends_len: usize,
    /// Bytes of the current record from earlier chunks, for the end-of-input quote check.
    raw: Vec<u8>,
    raw_cap: usize,
    /// Bytes of the pending record did not fit in `raw`.
    raw_overflow: bool,
    lines: Lines,
    tracker: QuoteTracker,
    /// Set when the current record outgrew the buffer: parse on without keeping anything, to tell
    /// an over-long record from a quote that never closes.
    draining: bool,
    scratch: Vec<u8>,
    scratch_ends: Vec<usize>,
    prev_end_line: u64,
    limits: Limits,
    delimiter: u8,
    /// Split plain lines in place ([`ParsePath::PlainLines`]).
    plain_lines: bool,
    /// `csv-core` has been called: it strips a UTF-8 BOM at the start of its first input only,
    /// so the first record always goes through it.
    started: bool,
    /// Records each path handed to the sink (see [`crate::PathTally`]).
    plain_records: u64,
    csv_core_records: u64,
}

impl Parser {
    fn new(delimiter: u8, limits: &Limits, path: ParsePath) -> Self {
        let raw_cap = limits
            .max_record_bytes
            .saturating_mul(2)
            .saturating_add(SAMPLE * 4);
        Parser {
            csv: csv_core::ReaderBuilder::new()
                .delimiter(delimiter)
                .quote(b'"')
                .double_quote(true)
                .build(),
            // One byte more than the limit: csv-core reports a full buffer before it sees the
            // end of a record that fills it exactly, and a record *at* the limit is allowed.
            buf: vec![0; limits.max_record_bytes.saturating_add(1)],
            ends: vec![0; limits.max_columns + 1],
            out_len: 0,
            ends_len: 0,
            // Never grown past `raw_cap` (see `feed`), so allocated once.
            raw: Vec::with_capacity(raw_cap),
            raw_cap,
            raw_overflow: false,
            lines: Lines::new(),
            tracker: QuoteTracker::new(delimiter, b'"'),
            draining: false,
            scratch: vec![0; 64 * 1024],
            scratch_ends: vec![0; 1024],
            prev_end_line: 0,
            limits: limits.clone(),
            delimiter,
            // A line break or quote as the delimiter is csv-core's alone to read.
            plain_lines: path == ParsePath::PlainLines
                && !matches!(delimiter, b'\n' | b'\r' | b'"'),
            started: false,
            plain_records: 0,
            csv_core_records: 0,
        }
    }

    fn record_open(&self) -> bool {
        self.raw_overflow || self.raw.iter().any(|&b| b != b'\n' && b != b'\r')
    }

    fn feed<O: Write, J: Write>(
        &mut self,
        chunk: &[u8],
        eof: bool,
        sink: &mut Sink<O, J>,
    ) -> Outcome {
        if eof && !self.draining && self.record_open() {
            self.tracker.reset();
            self.tracker.feed(&self.raw);
            if self.tracker.in_quote() {
                return Ok(Err(self.unterminated(sink)));
            }
        }
        let mut pos = 0;
        let mut rec_start = 0;
        // Between records (nothing of the next one read yet), plain lines skip csv-core.
        let mut between = self.out_len == 0 && self.ends_len == 0 && !self.record_open();
        loop {
            if self.draining {
                return Ok(self.drain(&chunk[pos..], eof, sink));
            }
            if between && self.plain_lines && self.started {
                let verdict;
                (pos, verdict) = self.split_plain_lines(chunk, pos, sink)?;
                rec_start = pos;
                if verdict.is_err() {
                    return Ok(verdict);
                }
            }
            between = false;
            self.started = true;
            let input = &chunk[pos..];
            let (res, nin, nout, nend) = self.csv.read_record(
                input,
                &mut self.buf[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            self.lines.feed(&input[..nin]);
            pos += nin;
            self.out_len += nout;
            self.ends_len += nend;
            match res {
                ReadRecordResult::InputEmpty => {
                    let rest = &chunk[rec_start..];
                    if self.raw.len() + rest.len() <= self.raw_cap {
                        self.raw.extend_from_slice(rest);
                    } else {
                        // `raw` no longer holds the whole pending record: never take it for
                        // a record boundary.
                        self.raw_overflow = true;
                    }
                    return Ok(Ok(()));
                }
                ReadRecordResult::OutputFull => {
                    self.tracker.reset();
                    self.tracker.feed(&self.raw);
                    self.tracker.feed(&chunk[rec_start..pos]);
                    self.draining = true;
                }
                ReadRecordResult::OutputEndsFull => return Ok(Err(self.too_many_columns(sink))),
                ReadRecordResult::Record => {
                    if self.ends_len > self.limits.max_columns {
                        return Ok(Err(self.too_many_columns(sink)));
                    }
                    self.csv_core_records += 1;
                    let row = Row {
                        buf: &self.buf[..self.out_len],
                        ends: &self.ends[..self.ends_len],
                        sep: None,
                        quick: None,
                    };
                    let verdict = emit(&mut self.lines, &mut self.prev_end_line, row, sink)?;
                    self.out_len = 0;
                    self.ends_len = 0;
                    self.raw.clear();
                    self.raw_overflow = false;
                    rec_start = pos;
                    between = true;
                    if verdict.is_err() {
                        return Ok(verdict);
                    }
                }
                ReadRecordResult::End => return Ok(Ok(())),
            }
        }
    }

    /// Hand the plain lines at `chunk[pos..]` to the sink, split in place: lines that end in `\n`
    /// or `\r\n` and hold no quote and no other `\r`, within the record and column limits. For those, splitting
    /// at the delimiter is exactly what csv-core does. Stops before the first other line (or the
    /// unfinished one at the end of the chunk), which csv-core then reads; returns where.
    fn split_plain_lines<O: Write, J: Write>(
        &mut self,
        chunk: &[u8],
        pos: usize,
        sink: &mut Sink<O, J>,
    ) -> Result<(usize, Result<(), Rejection>), EngineError> {
        let rest = &chunk[pos..];
        let Some(last) = memchr::memrchr(b'\n', rest) else {
            return Ok((pos, Ok(())));
        };
        let mut span = &rest[..=last];
        if let Some(k) = memchr::memchr(b'"', span) {
            match memchr::memrchr(b'\n', &span[..k]) {
                Some(end) => span = &span[..=end],
                None => return Ok((pos, Ok(()))),
            }
        }
        let max_cells = self.limits.max_columns;
        let max_bytes = self.limits.max_record_bytes;
        let mut line_start = 0;
        let mut cells = 0;
        let mut cell_start = 0;
        let mut quick = Quick::default();
        // A `\r` is plain only as the first half of a CRLF; its `\n` is then skipped.
        let mut crlf = false;
        for i in memchr::memchr3_iter(self.delimiter, b'\n', b'\r', span) {
            if crlf {
                crlf = false;
                continue;
            }
            let byte = span[i];
            if byte == b'\r' {
                if span[i + 1] != b'\n' {
                    // A bare CR ends a record too: csv-core reads this line.
                    return Ok((pos + line_start, Ok(())));
                }
                crlf = true;
            }
            // The cell `span[cell_start..i]` ends here.
            let len = i - cell_start;
            quick.longest = quick.longest.max(len);
            if len > 0 {
                let first = span[cell_start];
                quick.trigger |= crate::guard::is_trigger(first);
                quick.content |= !first.is_ascii_whitespace();
            }
            cell_start = i + 1 + usize::from(crlf);
            if byte == self.delimiter {
                if cells + 1 >= max_cells {
                    // Too many columns: csv-core reports it, from the start of this line.
                    return Ok((pos + line_start, Ok(())));
                }
                self.ends[cells] = i - line_start;
                cells += 1;
                continue;
            }
            let line = &span[line_start..i];
            let next = i + 1 + usize::from(crlf);
            if line.is_empty() {
                self.lines.plain_line(false, byte);
                if crlf {
                    self.lines.plain_line(false, b'\n');
                }
                line_start = next;
                quick = Quick::default();
                continue;
            }
            // The record's bytes as csv-core counts them: the cells without the delimiters.
            if line.len() - cells > max_bytes || cells + 1 > max_cells {
                return Ok((pos + line_start, Ok(())));
            }
            self.ends[cells] = line.len();
            cells += 1;
            self.lines.plain_line(true, byte);
            self.plain_records += 1;
            let row = Row {
                buf: line,
                ends: &self.ends[..cells],
                sep: Some(self.delimiter),
                quick: Some(quick),
            };
            let verdict = emit(&mut self.lines, &mut self.prev_end_line, row, sink)?;
            if verdict.is_err() {
                // As csv-core: a record ends at its CR, and the LF after it is never read.
                return Ok((pos + i + 1, verdict));
            }
            if crlf {
                self.lines.plain_line(false, b'\n');
            }
            cells = 0;
            line_start = next;
            quick = Quick::default();
        }
        Ok((pos + line_start, Ok(())))
    }

    /// Parse on through an over-long record without keeping it.
    fn drain<O: Write, J: Write>(
        &mut self,
        mut input: &[u8],
        eof: bool,
        sink: &mut Sink<O, J>,
    ) -> Result<(), Rejection> {
        loop {
            let (res, nin, _, _) =
                self.csv
                    .read_record(input, &mut self.scratch, &mut self.scratch_ends);
            self.tracker.feed(&input[..nin]);
            self.lines.feed(&input[..nin]);
            input = &input[nin..];
            match res {
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::InputEmpty if !eof => return Ok(()),
                _ if eof && self.tracker.in_quote() => return Err(self.unterminated(sink)),
                _ => {
                    let (record, line) = self.position(sink);
                    let max = self.limits.max_record_bytes;
                    return Err(Rejection::new(
                        Code::RecordTooLong,
                        format!("record {record} is longer than {max} bytes, the plan's limit"),
                    )
                    .at(record, line, None)
                    .with_limit(max as u64));
                }
            }
        }
    }

    fn position<O: Write, J: Write>(&self, sink: &Sink<O, J>) -> (u64, u64) {
        let line = self.lines.start_line();
        let skipped = line.saturating_sub(self.prev_end_line + 1);
        (sink.record_no + skipped + 1, line)
    }

    fn too_many_columns<O: Write, J: Write>(&self, sink: &Sink<O, J>) -> Rejection {
        let (record, line) = self.position(sink);
        let max = self.limits.max_columns;
        Rejection::new(
            Code::TooManyColumns,
            format!("record {record} has more than {max} columns, the plan's limit"),
        )
        .at(record, line, Some(max as u64 + 1))
        .with_limit(max as u64)
    }

    fn unterminated<O: Write, J: Write>(&self, sink: &Sink<O, J>) -> Rejection {
        let (record, line) = self.position(sink);
        Rejection::new(
            Code::UnterminatedQuote,
            format!(
                "a quoted field in record {record} (line {line}) is never closed before the end of the file"
            ),
        )
        .at(record, line, None)
    }
}

/// A record to the sink, after the blank lines before it.
fn emit<O: Write, J: Write>(
    lines: &mut Lines,
    prev_end_line: &mut u64,
    row: Row<'_>,
    sink: &mut Sink<O, J>,
) -> Outcome {
    let line = lines.start_line();
    let skipped = line.saturating_sub(*prev_end_line + 1);
    let blanks = sink.blank_lines(skipped, *prev_end_line + 1)?;
    if blanks.is_err() {
        return Ok(blanks);
    }
    *prev_end_line = lines.last_content_line();
    lines.mark_record_end();
    sink.style = lines.settled_style();
    sink.record(line, row)
}

/// One record's cells, `buf[span(i)]`. Records from csv-core have their cells back to back;
/// a plain line split in place keeps its delimiter (`sep`) between them.
#[derive(Debug, Clone, Copy)]
struct Row<'a> {
    buf: &'a [u8],
    ends: &'a [usize],
    sep: Option<u8>,
    /// What the splitter saw of the cells on its way, when it split the row.
    quick: Option<Quick>,
}

/// A plain line's cells as the splitter saw them, so the checks need not look again.
#[derive(Debug, Clone, Copy, Default)]
struct Quick {
    /// The longest cell's length.
    longest: usize,
    /// Some cell starts with a byte that can start a formula ([`needs_guard`] may say yes).
    trigger: bool,
    /// Some cell starts with a byte that is not whitespace: the row is not blank.
    content: bool,
}

impl<'a> Row<'a> {
    fn len(&self) -> usize {
        self.ends.len()
    }

    #[inline]
    fn span(&self, i: usize) -> (usize, usize) {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] + usize::from(self.sep.is_some()),
        };
        (start, self.ends[i])
    }

    fn cells(self) -> impl Iterator<Item = &'a [u8]> {
        (0..self.len()).map(move |i| {
            let (start, end) = self.span(i);
            &self.buf[start..end]
        })
    }

    /// All the record's bytes, delimiters included for a plain line.
    fn bytes(&self) -> &'a [u8] {
        &self.buf[..self.ends.last().copied().unwrap_or(0)]
    }
}

/// A `Write` that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    /// `None` when the caller hashes this stream itself.
    hasher: Option<Sha256>,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn hex(&self) -> String {
        self.hasher
            .as_ref()
            .map(|h| hex::encode(h.clone().finalize()))
            .unwrap_or_default()
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn csv_writer<W: Write>(inner: W) -> csv::Writer<Hashing<W>> {
    csv::WriterBuilder::new()
        .buffer_capacity(OUT_BUFFER)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Hashing {
            inner,
            hasher: Some(Sha256::new()),
            bytes: 0,
        })
}

/// Everything downstream of the parser: checks, counts, issues and the two writers.
struct Sink<O: Write, J: Write> {
    out: CsvOut<O>,
    rej: csv::Writer<Hashing<J>>,
    raw: Vec<u8>,
    guarded: Vec<u8>,
    header: Option<Vec<String>>,
    header_len: usize,
    /// Records so far, blank lines included, the header being record 1.
    record_no: u64,
    rows: RowCounts,
    issue_counts: BTreeMap<Code, u64>,
    issues: Vec<Issue>,
    limits: Limits,
    /// Raw input bytes read so far; the rejects budget grows with it.
    input_seen: u64,
    /// An upper bound of the bytes written to the rejects file so far.
    rejects_spent: u64,
    rejects_rows: u64,
    rejects_truncated: bool,
    schema: Option<SchemaState>,
    /// With a schema, rows wait here in a batch before they are checked, their keys inserted
    /// and they are judged and written ([`batch`]): a key table far larger than the caches has
    /// the cache misses of a batch's keys overlap, and with a helper a full batch is checked on
    /// its thread while the next one fills. Anything else (a blank line, a ragged row, the end)
    /// settles every waiting row first, so the report and the files come out in input order.
    queue: Queue,
    /// Empty batches, while fewer than [`DEPTH`] are with the helper.
    spare: Vec<Queue>,
    /// The helper, and the batches it is checking.
    flight: Flight,
    /// The line breaks seen up to the record being handed in.
    style: &'static str,
    /// The line breaks seen up to the row that ended the file, when a queued row did.
    ended_style: Option<&'static str>,
}

/// Add a judged row's missing values and errors (its first `counted` issues) to the per-field
/// counts.
fn count(counts: &mut [FieldCounts], missed: &[u16], found: &[Found], counted: usize) {
    for &i in missed {
        counts[usize::from(i)].missing += 1;
    }
    for f in found.iter().take(counted) {
        counts[f.field].errors += 1;
    }
}

/// A schema being checked: the header's mapping once read, the keys, and per-field counts.
struct SchemaState {
    schema: std::sync::Arc<Schema>,
    map: Option<HeaderMap>,
    /// How to check a row, once the header is mapped.
    plan: Option<std::sync::Arc<CheckPlan>>,
    /// The key table; with the helper while it checks a batch.
    keys: Option<KeySet>,
    /// Keys the table holds.
    key_capacity: usize,
    counts: Vec<FieldCounts>,
    /// The row being judged: its violations, then its keys' `unique_error`s.
    found: Vec<Found>,
}

impl SchemaState {
    fn new(schema: std::sync::Arc<Schema>, key_budget: usize, input_bytes: Option<u64>) -> Self {
        let expected = input_bytes.map(|bytes| schema.expected_keys(bytes));
        let keys = schema
            .keeps_keys()
            .then(|| KeySet::new(key_budget, expected));
        let counts = schema
            .fields
            .iter()
            .map(|f| FieldCounts {
                name: f.name.clone(),
                ..FieldCounts::default()
            })
            .collect();
        let found = Vec::with_capacity(schema.fields.len() * 2 + 1);
        SchemaState {
            schema,
            map: None,
            plan: None,
            key_capacity: keys.as_ref().map_or(0, KeySet::capacity),
            keys,
            counts,
            found,
        }
    }

    /// Settle a row's keys from what inserting them found (`answers`, in the same order); a
    /// key seen before adds its `unique_error` to `found`. `Err`: the key memory is spent.
    fn settle_keys(
        &mut self,
        pending: &[Pending],
        answers: &[Insert],
        found: &mut Vec<Found>,
    ) -> Result<(), ()> {
        let before = found.len();
        for (p, answer) in pending.iter().zip(answers) {
            match answer {
                Insert::New => {}
                Insert::Seen => found.push(Found {
                    field: p.field,
                    column: p.column,
                    why: if p.primary_key {
                        Why::PrimaryKeySeen
                    } else {
                        Why::Unique
                    },
                }),
                Insert::Full => return Err(()),
            }
        }
        for p in pending.iter().filter(|p| !p.primary_key) {
            if found[before..]
                .iter()
                .any(|f| f.field == p.field && f.column == p.column)
            {
                self.counts[p.field].errors += 1;
            }
        }
        // A field's unique_error among its row's other issues in field order (a primary key's
        // last), as if each key had been inserted as its cell was checked.
        if found.len() > before && before > 0 {
            found.sort_by_key(|f| (f.column.is_none() && f.code() == Code::UniqueError, f.field));
        }
        Ok(())
    }
    fn summary(&self) -> SchemaSummary {
        let mut fields = self.counts.clone();
        if let Some(map) = &self.map {
            for (i, f) in fields.iter_mut().enumerate() {
                f.column = map.found[i].map(|c| c as u64 + 1);
            }
        }
        SchemaSummary {
            header_mapping: self
                .map
                .as_ref()
                .map(|m| m.mapping.clone())
                .unwrap_or_default(),
            fields,
        }
    }
}

impl<O: Write, J: Write> Sink<O, J> {
    fn new(output: O, rejects: J, limits: &Limits, hash_output: bool) -> Result<Self, EngineError> {
        let mut rej = csv_writer(rejects);
        rej.write_record(REJECTS_HEADER)
            .map_err(|e| EngineError::WriteRejects(e.into()))?;
        let record_max = written_record_max(limits);
        Ok(Sink {
            out: CsvOut::new(output, hash_output, record_max),
            rej,
            raw: Vec::with_capacity(record_max),
            guarded: Vec::with_capacity(limits.max_field_bytes.saturating_add(1)),
            header: None,
            header_len: 0,
            record_no: 0,
            rows: RowCounts::default(),
            issue_counts: BTreeMap::new(),
            // The whole list up front (plans allow at most 10,000): it never reallocates.
            issues: Vec::with_capacity(limits.max_issues),
            limits: limits.clone(),
            input_seen: 0,
            rejects_spent: csv_row_max(REJECTS_HEADER.iter().map(|h| h.len())),
            rejects_rows: 0,
            rejects_truncated: false,
            schema: None,
            queue: Queue::default(),
            spare: Vec::new(),
            flight: Flight::default(),
            style: "lf",
            ended_style: None,
        })
    }

    fn note(&mut self, code: Code, row: u64, line: u64, column: Option<u64>, message: String) {
        self.note_field(code, row, line, column, None, message);
    }

    fn note_field(
        &mut self,
        code: Code,
        row: u64,
        line: u64,
        column: Option<u64>,
        field: Option<&str>,
        message: String,
    ) {
        *self.issue_counts.entry(code).or_default() += 1;
        if self.issues.len() < self.limits.max_issues {
            self.issues.push(Issue {
                code,
                row,
                line,
                column,
                field: field.map(str::to_string),
                message,
            });
        }
    }

    /// `n` empty lines, the first at `first_line`; `csv-core` skips them, the report counts them.
    /// Rows waiting for their keys are settled first, so the report stays in input order.
    fn blank_lines(&mut self, n: u64, first_line: u64) -> Outcome {
        if n > 0 {
            let earlier = self.flush_deferred()?;
            if earlier.is_err() {
                return Ok(earlier);
            }
        }
        for i in 0..n {
            self.record_no += 1;
            self.blank(self.record_no, first_line + i);
        }
        Ok(Ok(()))
    }

    fn blank(&mut self, row: u64, line: u64) {
        self.rows.total += 1;
        self.rows.blank += 1;
        self.note(Code::BlankRow, row, line, None, "blank row skipped".into());
    }

    /// Queue a row for the schema's checks. A full batch goes to the helper (or is checked and
    /// settled here, without one).
    fn defer(&mut self, record: u64, line: u64, row: Row<'_>) -> Outcome {
        if !self.queue.fits(row.bytes().len(), row.ends.len()) {
            let earlier = self.next_batch()?;
            if earlier.is_err() {
                // The file ended before this row: it was never judged.
                self.rows.total -= 1;
                return Ok(earlier);
            }
        }
        self.queue
            .push((record, line), row, self.input_seen, self.style);
        if self.queue.is_full() {
            return self.next_batch();
        }
        Ok(Ok(()))
    }

    /// The batch is full. With a helper: hand it over; when [`DEPTH`] batches are already out,
    /// first take back the oldest, and settle it while the helper checks the others (this
    /// thread writes while the helper checks). Without one: check and settle it here.
    fn next_batch(&mut self) -> Outcome {
        let (Some(helper), Some(state)) = (self.flight.helper.clone(), &mut self.schema) else {
            return self.flush_deferred();
        };
        let Some(plan) = state.plan.clone() else {
            return self.flush_deferred();
        };
        if self.queue.rows.len() < MIN_HANDOFF_ROWS {
            return self.flush_deferred();
        }
        let taken = if self.flight.batches >= DEPTH {
            self.flight.take()
        } else {
            None
        };
        let (next, settle) = match taken {
            Some(batch) => (batch.queue, true),
            None => match self.spare.pop() {
                Some(spare) => (spare, false),
                None => return self.flush_deferred(),
            },
        };
        let full = std::mem::replace(&mut self.queue, next);
        let keys = state.keys.take();
        self.flight
            .submit(&helper, Batch { plan, queue: full }, keys);
        if !settle {
            return Ok(Ok(()));
        }
        // The batch filling next is the one taken back: settle it, then empty it.
        let mut taken = std::mem::take(&mut self.queue);
        let outcome = self.settle(&taken);
        taken.clear();
        self.queue = taken;
        let outcome = outcome?;
        if outcome.is_err() {
            self.discard_in_flight();
        }
        Ok(outcome)
    }

    /// Take back every batch with the helper and drop its rows (the file ended before them);
    /// then the key table.
    fn discard_in_flight(&mut self) {
        while let Some(mut batch) = self.flight.take() {
            self.rows.total -= batch.queue.rows.len() as u64;
            batch.queue.clear();
            self.spare.push(batch.queue);
        }
        self.take_keys_back();
    }

    /// With every batch back from the helper, the key table is too.
    fn take_keys_back(&mut self) {
        if let (Some(helper), Some(state)) = (&self.flight.helper, &mut self.schema) {
            if state.keys.is_none() {
                state.keys = helper.take_keys();
            }
        }
    }

    /// Take back every batch the helper has, in order, and settle it. If one ends the file,
    /// the rows queued after it are never judged.
    fn settle_in_flight(&mut self) -> Outcome {
        while let Some(mut batch) = self.flight.take() {
            let outcome = self.settle(&batch.queue);
            batch.queue.clear();
            self.spare.push(batch.queue);
            let outcome = outcome?;
            if outcome.is_err() {
                self.discard_in_flight();
                self.rows.total -= self.queue.rows.len() as u64;
                self.queue.clear();
                return Ok(outcome);
            }
        }
        self.take_keys_back();
        Ok(Ok(()))
    }

    /// Settle every waiting row, in order: the helper's batch, then the one filling, checked
    /// here. Stops at the first row that ends the file; the rows after it were never judged.
    fn flush_deferred(&mut self) -> Outcome {
        let earlier = self.settle_in_flight()?;
        if earlier.is_err() || self.queue.rows.is_empty() {
            return Ok(earlier);
        }
        let mut q = std::mem::take(&mut self.queue);
        if let Some(plan) = self.schema.as_ref().and_then(|s| s.plan.clone()) {
            let keys = self.schema.as_mut().and_then(|s| s.keys.as_mut());
            q.check(&plan, keys);
        }
        let outcome = self.settle(&q);
        q.clear();
        self.queue = q;
        outcome
    }

    /// Settle the rows of `q`, checked and their keys inserted, in order: then write each.
    /// Stops at the first row that ends the file; the rows after it were never judged.
    fn settle(&mut self, q: &Queue) -> Outcome {
        let (mut bytes, mut ends, mut found, mut pending, mut missed) = (0, 0, 0, 0, 0);
        let mut outcome = Ok(());
        for (n, r) in q.rows.iter().enumerate() {
            let row = Row {
                buf: &q.bytes[bytes..r.bytes_end],
                ends: &q.ends[ends..r.ends_end],
                sep: r.sep,
                quick: r.quick,
            };
            let Some(state) = &mut self.schema else {
                break;
            };
            let mut issues = std::mem::take(&mut state.found);
            issues.clear();
            issues.extend_from_slice(&q.found[found..r.found_end]);
            let row_missed = &q.missed[missed..r.missed_end];
            let row_pending = &q.pending[pending..r.pending_end];
            let keys = match q.answers.get(pending..r.pending_end) {
                Some(answers) => state.settle_keys(row_pending, answers, &mut issues),
                // A key without its answer: the table is spent (or was never there), and the
                // file ends here rather than the worker panic.
                None => Err(()),
            };
            if keys.is_ok() {
                count(
                    &mut state.counts,
                    row_missed,
                    &q.found[found..r.found_end],
                    r.counted,
                );
            }
            let clean = issues.is_empty();
            state.found = issues;
            // The rejects budget as it stood when the row was read.
            let seen = std::mem::replace(&mut self.input_seen, r.input_seen);
            outcome = if keys.is_err() {
                self.rows.total -= 1;
                Ok(Err(self.key_budget(r.record, r.line)))
            } else if clean {
                self.accept(r.record, r.line, row)
            } else {
                self.schema_reject(r.record, r.line, row)
            }
            .inspect(|_| self.input_seen = seen)?;
            self.input_seen = seen;
            if outcome.is_err() {
                self.ended_style = Some(r.style);
                // The file ends at this row: the rows after it were never judged.
                self.rows.total -= (q.rows.len() - n - 1) as u64;
                break;
            }
            (bytes, ends, found, pending, missed) = (
                r.bytes_end,
                r.ends_end,
                r.found_end,
                r.pending_end,
                r.missed_end,
            );
        }
        Ok(outcome)
    }
    fn accept(&mut self, record: u64, line: u64, row: Row<'_>) -> Outcome {
        let guard = match row.quick {
            Some(q) if !q.trigger => false,
            _ => row.cells().any(needs_guard),
        };
        if row.sep == Some(b',') && !guard {
            // A plain line, comma-delimited and with nothing to guard, is its own output.
            self.out
                .line(row.bytes())
                .map_err(EngineError::WriteOutput)?;
            self.rows.accepted += 1;
            return Ok(Ok(()));
        }
        self.out.begin_record(row);
        for (i, cell) in row.cells().enumerate() {
            self.write_cell(cell, record, line, i)?;
        }
        self.end_row()?;
        self.rows.accepted += 1;
        Ok(Ok(()))
    }

    fn record(&mut self, line: u64, row: Row<'_>) -> Outcome {
        self.record_no += 1;
        let record = self.record_no;
        // What the splitter saw settles both checks for most rows.
        let seen = row
            .quick
            .is_some_and(|q| q.content && q.longest <= self.limits.max_field_bytes);
        let mut is_blank = !seen;
        let unseen = if seen { 0 } else { row.len() };
        for (i, field) in row.cells().take(unseen).enumerate() {
            if field.len() > self.limits.max_field_bytes {
                let earlier = self.flush_deferred()?;
                if earlier.is_err() {
                    return Ok(earlier);
                }
                let max = self.limits.max_field_bytes;
                return Ok(Err(Rejection::new(
                    Code::FieldTooLong,
                    format!(
                        "record {record}, column {} is longer than {max} bytes, the plan's limit",
                        i + 1
                    ),
                )
                .at(record, line, Some(i as u64 + 1))
                .with_limit(max as u64)));
            }
            is_blank &= field.iter().all(u8::is_ascii_whitespace);
        }
        if is_blank {
            let earlier = self.flush_deferred()?;
            if earlier.is_ok() {
                self.blank(record, line);
            }
            return Ok(earlier);
        }
        if self.header.is_none() {
            return self.header(record, line, row);
        }
        let data_rows = self.rows.accepted
            + self.rows.rejected
            + (self.queue.rows.len() + self.flight.rows) as u64;
        if data_rows >= self.limits.max_rows {
            let max = self.limits.max_rows;
            return Ok(Err(Rejection::new(
                Code::TooManyRows,
                format!("the file has more than {max} data rows, the plan's limit"),
            )
            .at(record, line, None)
            .with_limit(max)));
        }
        self.rows.total += 1;
        if row.len() != self.header_len {
            let earlier = self.flush_deferred()?;
            if earlier.is_err() {
                self.rows.total -= 1;
                return Ok(earlier);
            }
            return self.ragged(record, line, row);
        }
        if self.schema.is_some() {
            return self.defer(record, line, row);
        }
        self.accept(record, line, row)
    }

    fn header(&mut self, record: u64, line: u64, row: Row<'_>) -> Outcome {
        let mut names: Vec<String> = Vec::with_capacity(row.len());
        for (i, cell) in row.cells().enumerate() {
            let column = i as u64 + 1;
            let name = String::from_utf8_lossy(cell).trim().to_string();
            if name.is_empty() {
                return Ok(Err(Rejection::new(
                    Code::BlankHeader,
                    format!("header column {column} is blank; every column needs a name"),
                )
                .at(record, line, Some(column))));
            }
            if let Some(first) = names.iter().position(|n| *n == name) {
                return Ok(Err(Rejection::new(
                    Code::DuplicateHeader,
                    format!(
                        "header \"{}\" appears in columns {} and {column}; names must be unique",
                        excerpt(name.as_bytes(), 32),
                        first + 1
                    ),
                )
                .at(record, line, Some(column))));
            }
            names.push(name);
        }
        if let Some(state) = &mut self.schema {
            match state.schema.map_header(&names) {
                Ok(map) => {
                    let steps = state
                        .schema
                        .fields
                        .iter()
                        .enumerate()
                        .map(|(i, f)| Step {
                            field: i,
                            column: map.found[i],
                            required: f.required(),
                            check: !f.accepts_any(),
                            unique: f.unique(),
                        })
                        .collect();
                    state.plan = Some(std::sync::Arc::new(CheckPlan {
                        schema: state.schema.clone(),
                        steps,
                        columns: map.found.clone(),
                        digester: Digester::default(),
                    }));
                    state.map = Some(map);
                }
                Err(m) => {
                    let mut parts = Vec::new();
                    let list = |v: &[String]| {
                        v.iter()
                            .map(|n| format!("\"{}\"", excerpt(n.as_bytes(), 32)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    if !m.missing.is_empty() {
                        parts.push(format!("missing column(s) {}", list(&m.missing)));
                    }
                    if !m.extra.is_empty() {
                        parts.push(format!(
                            "column(s) the schema does not have: {}",
                            list(&m.extra)
                        ));
                    }
                    for (c, want) in &m.misplaced {
                        parts.push(format!(
                            "column {} is \"{}\" where the schema has \"{}\"",
                            c + 1,
                            excerpt(names[*c].as_bytes(), 32),
                            excerpt(want.as_bytes(), 32)
                        ));
                    }
                    return Ok(Err(Rejection::new(
                        Code::SchemaMismatch,
                        format!("the header does not fit the schema: {}", parts.join("; ")),
                    )
                    .at(record, line, None)));
                }
            }
        }
        // With a schema, the clean output names each mapped column by its field.
        let renamed: Vec<String> = match self
            .schema
            .as_ref()
            .and_then(|s| s.map.as_ref().map(|m| (m, &s.schema)))
        {
            Some((map, schema)) => names
                .iter()
                .zip(&map.columns)
                .map(|(label, f)| {
                    f.map_or_else(|| label.clone(), |i| schema.fields[i].name.clone())
                })
                .collect(),
            None => names.clone(),
        };
        self.out.plain = false;
        for (i, name) in renamed.iter().enumerate() {
            self.write_cell(name.as_bytes(), record, line, i)?;
        }
        self.end_row()?;
        self.header_len = names.len();
        self.header = Some(names);
        Ok(Ok(()))
    }

    fn write_cell(
        &mut self,
        cell: &[u8],
        record: u64,
        line: u64,
        column: usize,
    ) -> Result<(), EngineError> {
        if needs_guard(cell) {
            self.note(
                Code::FormulaEscaped,
                record,
                line,
                Some(column as u64 + 1),
                "a cell that would run as a spreadsheet formula was prefixed with '".into(),
            );
            self.guarded.clear();
            self.guarded.push(b'\'');
            self.guarded.extend_from_slice(cell);
            self.out.field(&self.guarded, column, self.header_len == 1);
        } else {
            self.out.field(cell, column, self.header_len == 1);
        }
        Ok(())
    }

    fn end_row(&mut self) -> Result<(), EngineError> {
        self.out.end_record().map_err(EngineError::WriteOutput)
    }

    fn ragged(&mut self, record: u64, line: u64, row: Row<'_>) -> Outcome {
        let (n, want) = (row.len(), self.header_len);
        let (message, column) = if n > want {
            (
                format!(
                    "{} extra cell(s): {n} cells, the header has {want}",
                    n - want
                ),
                want + 1,
            )
        } else {
            (
                format!(
                    "{} missing cell(s): {n} cells, the header has {want}",
                    want - n
                ),
                n + 1,
            )
        };
        self.note(
            Code::RaggedRow,
            record,
            line,
            Some(column as u64),
            message.clone(),
        );
        self.reject_row(record, line, row, Code::RaggedRow, &message)
    }

    /// A row that breaks the schema: an issue per violation, and the row to the rejects file
    /// with the first reason.
    fn schema_reject(&mut self, record: u64, line: u64, row: Row<'_>) -> Outcome {
        let Some(mut state) = self.schema.take() else {
            return Ok(Ok(()));
        };
        for found in state.found.drain(..) {
            let field = &state.schema.fields[found.field].name;
            self.note_field(
                found.code(),
                record,
                line,
                found.column.map(|c| c as u64 + 1),
                Some(field),
                found.message(&state.schema),
            );
        }
        self.schema = Some(state);
        let first = self
            .issues
            .iter()
            .rev()
            .find(|i| i.row == record)
            .map(|i| (i.code, i.message.clone()));
        let (code, message) =
            first.unwrap_or((Code::ConstraintError, "the row breaks the schema".into()));
        self.reject_row(record, line, row, code, &message)
    }

    fn key_budget(&self, record: u64, line: u64) -> Rejection {
        let keys = self.schema.as_ref().map_or(0, |s| s.key_capacity);
        Rejection::new(
            Code::KeyBudgetExceeded,
            format!(
                "unique and primary-key checks need more than the {keys} keys the plan's key memory holds; raise the plan's key budget or split the file"
            ),
        )
        .at(record, line, None)
        .with_limit(keys as u64)
    }

    fn reject_row(
        &mut self,
        record: u64,
        line: u64,
        row: Row<'_>,
        code: Code,
        message: &str,
    ) -> Outcome {
        self.rows.rejected += 1;
        // The record as it stood, re-quoted, formula-guarded and bounded.
        let raw = &mut self.raw;
        raw.clear();
        for (i, cell) in row.cells().enumerate() {
            if i > 0 {
                raw.push(b',');
            }
            if needs_guard(cell) {
                self.guarded.clear();
                self.guarded.push(b'\'');
                self.guarded.extend_from_slice(cell);
                quote_into(raw, &self.guarded, row.len() == 1);
            } else {
                quote_into(raw, cell, row.len() == 1);
            }
        }
        truncate_utf8(raw, self.limits.max_record_bytes);
        if needs_guard(raw) {
            raw.insert(0, b'\'');
        }
        let raw_err = |e: csv::Error| EngineError::WriteRejects(e.into());
        let (record_s, line_s) = (record.to_string(), line.to_string());
        let row: [&[u8]; 5] = [
            record_s.as_bytes(),
            line_s.as_bytes(),
            code.as_str().as_bytes(),
            message.as_bytes(),
            raw,
        ];
        // The file stays within `rejects_bound` of the input read so far, counted pessimistically
        // (every byte quoted), so it stays within it of the whole input too.
        let cost = csv_row_max(row.iter().map(|f| f.len()));
        if self.rejects_truncated
            || self.rejects_spent.saturating_add(cost) > crate::rejects_bound(self.input_seen)
        {
            self.rejects_truncated = true;
            return Ok(Ok(()));
        }
        self.rej.write_record(row).map_err(raw_err)?;
        self.rejects_spent += cost;
        self.rejects_rows += 1;
        Ok(Ok(()))
    }

    /// File-level checks once every record is in.
    fn check_end(&mut self) -> Result<(), Rejection> {
        if self.header.is_none() {
            return Err(Rejection::new(
                Code::NoHeader,
                "the file has no header row (only blank lines); the first row must name the columns",
            ));
        }
        let judged = self.rows.accepted + self.rows.rejected;
        let ratio = self.limits.max_rejected_ratio;
        if self.rows.rejected as f64 > ratio * judged as f64 {
            let pct = 100.0 * self.rows.rejected as f64 / judged as f64;
            return Err(Rejection::new(
                Code::TooManyBadRows,
                format!(
                    "{} of {judged} data rows ({pct:.1}%) were rejected; the plan allows {:.1}%",
                    self.rows.rejected,
                    ratio * 100.0
                ),
            ));
        }
        Ok(())
    }

    fn finish(
        mut self,
        outcome: Result<(), Rejection>,
        input: InputInfo,
        dialect: Option<Dialect>,
    ) -> Result<Report, EngineError> {
        let out = self.out.finish().map_err(EngineError::WriteOutput)?;
        self.rej.flush().map_err(EngineError::WriteRejects)?;
        let rej = self.rej.get_ref();
        let header = self
            .header
            .unwrap_or_default()
            .into_iter()
            .map(|mut name| {
                if name.len() > HEADER_NAME_IN_REPORT {
                    let mut bytes = name.into_bytes();
                    truncate_utf8(&mut bytes, HEADER_NAME_IN_REPORT);
                    name = String::from_utf8(bytes).unwrap_or_default();
                    name.push('…');
                }
                name
            })
            .collect();
        let (status, rejection) = match outcome {
            Ok(()) => (Status::Accepted, None),
            Err(r) => (Status::Rejected, Some(r)),
        };
        Ok(Report {
            status,
            rejection,
            input,
            dialect,
            header,
            rows: self.rows,
            issue_counts: self.issue_counts,
            issues: self.issues,
            output: OutputInfo {
                bytes: out.bytes,
                sha256: out.hex(),
            },
            rejects: RejectsInfo {
                bytes: rej.bytes,
                sha256: rej.hex(),
                rows_written: self.rejects_rows,
                truncated: self.rejects_truncated,
            },
            sandbox: None,
            schema: self.schema.as_ref().map(SchemaState::summary),
        })
    }
}

/// The clean-output writer: comma-delimited, RFC 4180 quoting only where needed, `\n` line ends.
/// Cells are copied straight into a fixed buffer; most need no quoting at all.
struct CsvOut<W> {
    buf: Vec<u8>,
    /// The current record has no byte that needs quoting anywhere.
    plain: bool,
    inner: Hashing<W>,
}

impl<W: Write> CsvOut<W> {
    /// `record_max`: the most one written record can take, so `buf` never grows.
    fn new(inner: W, hash: bool, record_max: usize) -> Self {
        CsvOut {
            buf: Vec::with_capacity(OUT_BUFFER.saturating_add(record_max)),
            plain: false,
            inner: Hashing {
                inner,
                hasher: hash.then(Sha256::new),
                bytes: 0,
            },
        }
    }

    /// Look at all the record's cell bytes at once: one vectorized pass usually proves that no
    /// cell needs quoting. A line split in place has no quote or line break by construction.
    fn begin_record(&mut self, row: Row<'_>) {
        let bytes = row.bytes();
        self.plain = match row.sep {
            Some(b',') => true,
            Some(_) => memchr::memchr(b',', bytes).is_none(),
            None => {
                memchr::memchr3(b',', b'"', b'\n', bytes).is_none()
                    && memchr::memchr(b'\r', bytes).is_none()
            }
        };
    }

    /// A whole record, already in its written form, and its line break.
    fn line(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        self.end_record()
    }

    #[inline]
    fn field(&mut self, cell: &[u8], column: usize, alone: bool) {
        if column > 0 {
            self.buf.push(b',');
        }
        if self.plain && !(alone && cell.is_empty()) {
            self.buf.extend_from_slice(cell);
        } else {
            quote_into(&mut self.buf, cell, alone);
        }
    }

    fn end_record(&mut self) -> std::io::Result<()> {
        self.buf.push(b'\n');
        if self.buf.len() >= OUT_BUFFER {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<&Hashing<W>> {
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.inner.flush()?;
        Ok(&self.inner)
    }
}

/// The most bytes a CSV row of fields this long can take: each doubled and quoted, plus the
/// delimiters and the line break.
fn csv_row_max(fields: impl Iterator<Item = usize>) -> u64 {
    fields.map(|n| 2 * n as u64 + 3).sum::<u64>() + 1
}

/// Append `cell` with RFC 4180 quoting where needed. A lone empty cell is quoted so the record
/// does not read back as a blank line.
fn quote_into(out: &mut Vec<u8>, cell: &[u8], alone: bool) {
    // Bytes that force quoting; a table lookup per byte beats memchr on cells this short.
    const SPECIAL: [bool; 256] = {
        let mut t = [false; 256];
        t[b',' as usize] = true;
        t[b'"' as usize] = true;
        t[b'\n' as usize] = true;
        t[b'\r' as usize] = true;
        t
    };
    let needs = cell
        .iter()
        .fold(false, |acc, &b| acc | SPECIAL[usize::from(b)])
        || (alone && cell.is_empty());
    if !needs {
        out.extend_from_slice(cell);
        return;
    }
    out.push(b'"');
    for &b in cell {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Shorten to at most `max` bytes without splitting a UTF-8 sequence.
fn truncate_utf8(bytes: &mut Vec<u8>, max: usize) {
    if bytes.len() <= max {
        return;
    }
    let mut cut = max;
    while cut > 0 && (bytes[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    bytes.truncate(cut);
}
