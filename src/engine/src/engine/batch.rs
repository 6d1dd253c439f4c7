//! Rows checked against a schema in batches: a batch is checked, its keys inserted in input
//! order, then its rows are judged and written in order. With a [`Helper`], a full batch is
//! checked on the helper's thread while the engine splits the next one; anything that must
//! come out in order before the next row (a blank line, a ragged row, the end) settles the
//! batch in flight and checks the rest on the engine's own thread, so no such row costs a
//! round trip to the helper.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::{Quick, Row};
use crate::report::Code;
use crate::schema::{Digester, Insert, KeySet, Schema, Typed, Violation};
use crate::Limits;

/// Rows a batch holds without a helper: enough for their keys' cache misses to overlap.
pub(super) const DEFER_ROWS: usize = 16;

/// Rows a batch holds with a helper, at most: enough that handing batches over costs nothing
/// measurable (two wake-ups a batch).
const HELPER_ROWS: usize = 1024;

/// With a helper, a batch's worst-case issue list stays within this many entries.
const HELPER_CELLS: usize = 16_384;

/// Keys whose first slots are loaded together before they are inserted.
const TOUCH_KEYS: usize = 16;

/// Why a row breaks the schema. Its message is written only when the row is judged, on the
/// engine's thread: checking allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    Required,
    Type,
    Constraint(&'static str),
    Unique,
    PrimaryKeyEmpty,
    PrimaryKeySeen,
}

/// A violation in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Found {
    pub field: usize,
    /// The data column; none for a primary key.
    pub column: Option<usize>,
    pub why: Why,
}

impl Found {
    pub fn code(&self) -> Code {
        match self.why {
            Why::Required | Why::Constraint(_) => Code::ConstraintError,
            Why::Type => Code::TypeError,
            Why::Unique | Why::PrimaryKeyEmpty | Why::PrimaryKeySeen => Code::UniqueError,
        }
    }

    /// The message: names and bounds from the schema, never the cell.
    pub fn message(&self, schema: &Schema) -> String {
        let field = &schema.fields[self.field];
        match self.why {
            Why::Required => format!("field {:?} is required, and this cell is empty", field.name),
            Why::Type => format!(
                "the cell is not a valid {} for field {:?}",
                field.describe(),
                field.name
            ),
            Why::Constraint(which) => match field.bound_text(which) {
                Some(bound) => format!(
                    "the cell breaks field {:?}'s {which} constraint ({bound})",
                    field.name
                ),
                None => format!(
                    "the cell breaks field {:?}'s {which} constraint",
                    field.name
                ),
            },
            Why::Unique => format!(
                "field {:?} is unique, and this value is in an earlier row",
                field.name
            ),
            Why::PrimaryKeyEmpty => "the primary key is empty".into(),
            Why::PrimaryKeySeen => "the primary key is in an earlier row".into(),
        }
    }
}

/// One field's part of checking a row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    pub field: usize,
    /// The data column that carries it; none: every row misses it.
    pub column: Option<usize>,
    pub required: bool,
    /// A present value needs checking (not a plain string), or keeping (`unique`).
    pub check: bool,
    pub unique: bool,
}

/// A key to insert: the field (the first of a primary key), its column (none for a primary
/// key) and the digest.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub field: usize,
    pub column: Option<usize>,
    pub digest: u128,
    pub primary_key: bool,
}

/// What checking a row needs once the header is mapped; shared with the helper, never changed.
#[derive(Debug)]
pub(super) struct CheckPlan {
    pub schema: Arc<Schema>,
    pub steps: Vec<Step>,
    /// Each field's data column.
    pub columns: Vec<Option<usize>>,
    pub digester: Digester,
}

impl CheckPlan {
    /// Check one row: its violations, keys and missing fields are appended to the three lists.
    /// Returns how many of its violations count as field errors (a primary key's do not).
    pub fn check_row(
        &self,
        row: Row<'_>,
        found: &mut Vec<Found>,
        pending: &mut Vec<Pending>,
        missed: &mut Vec<u16>,
    ) -> usize {
        let schema = &*self.schema;
        let first = found.len();
        let sep = usize::from(row.sep.is_some());
        let bytes_at = |c: usize| -> &[u8] {
            let start = match c {
                0 => 0,
                _ => row.ends[c - 1] + sep,
            };
            &row.buf[start..row.ends[c]]
        };
        for step in &self.steps {
            let (i, column) = (step.field, step.column);
            let bytes = column.map(bytes_at);
            let missing = bytes.is_none_or(|c| schema.is_missing(c));
            if missing {
                missed.push(i as u16);
                if step.required {
                    found.push(Found {
                        field: i,
                        column,
                        why: Why::Required,
                    });
                }
                continue;
            }
            if !step.check {
                continue;
            }
            let field = &schema.fields[i];
            let cell = bytes.unwrap_or_default();
            let result = if step.unique {
                field.check_value(cell).map(|typed| {
                    let digest = self.digester.digest(i as u64, std::slice::from_ref(&typed));
                    pending.push(Pending {
                        field: i,
                        column,
                        digest,
                        primary_key: false,
                    });
                })
            } else {
                field.check(cell)
            };
            let why = match result {
                Ok(()) => continue,
                Err(Violation::Type) => Why::Type,
                Err(Violation::Constraint(which)) => Why::Constraint(which),
            };
            found.push(Found {
                field: i,
                column,
                why,
            });
        }
        let counted = found.len() - first;
        let key = schema.primary_key();
        if !key.is_empty() {
            // A key cell that is missing or does not parse counts as null; an all-null key is an
            // error, a partly null one is compared as it is (as the reference validator does).
            let value = |i: usize| {
                self.columns[i]
                    .filter(|&c| !schema.is_missing(bytes_at(c)))
                    .and_then(|c| schema.fields[i].check_value(bytes_at(c)).ok())
            };
            let mut parts: [Typed; 8] = [Typed::Null; 8];
            let mut overflow = Vec::new();
            let mut all_null = true;
            for (n, &i) in key.iter().enumerate() {
                let v = value(i);
                all_null &= v.is_none();
                let v = v.unwrap_or(Typed::Null);
                match parts.get_mut(n) {
                    Some(p) => *p = v,
                    None => overflow.push(v),
                }
            }
            if all_null {
                found.push(Found {
                    field: key[0],
                    column: None,
                    why: Why::PrimaryKeyEmpty,
                });
            } else {
                let digest = if overflow.is_empty() {
                    self.digester.digest(u64::MAX, &parts[..key.len()])
                } else {
                    let all: Vec<Typed> = parts.iter().copied().chain(overflow).collect();
                    self.digester.digest(u64::MAX, &all)
                };
                pending.push(Pending {
                    field: key[0],
                    column: None,
                    digest,
                    primary_key: true,
                });
            }
        }
        counted
    }
}

/// One queued row: where its parts end in the [`Queue`]'s buffers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Queued {
    pub record: u64,
    pub line: u64,
    pub sep: Option<u8>,
    pub quick: Option<Quick>,
    pub bytes_end: usize,
    pub ends_end: usize,
    /// Filled in when the row is checked.
    pub found_end: usize,
    pub pending_end: usize,
    pub missed_end: usize,
    /// How many of the row's issues count as field errors.
    pub counted: usize,
    /// Input read when the row was queued (the rejects budget as it stood then) and the line
    /// breaks seen so far: a row that ends the file is judged, and the file described, as
    /// when it was read, however far reading got before the row was settled.
    pub input_seen: u64,
    pub style: &'static str,
}

/// A batch of rows, kept flat: their bytes and cell ends, and once checked their issues, keys,
/// missing fields and what inserting the keys found, each in one buffer shared by the rows.
/// Every buffer is reserved up front and never grows (growing a large one would need `mremap`,
/// which the worker may not call): a row whose bytes or cells would not fit ends the batch
/// first, one row of the plan's largest size always fits an empty batch, and the lists that
/// checking fills are sized for the worst case of the batch's rows.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub rows: Vec<Queued>,
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
    pub found: Vec<Found>,
    pub pending: Vec<Pending>,
    pub missed: Vec<u16>,
    pub answers: Vec<Insert>,
}

impl Queue {
    /// A batch for `schema` under `limits`: [`DEFER_ROWS`] rows, or with a helper as many as
    /// keep its worst-case issue list within [`HELPER_CELLS`] (at most [`HELPER_ROWS`]).
    pub fn new(limits: &Limits, schema: &Schema, helper: bool) -> Queue {
        // A row has at most one issue a field and one for the primary key, one key a unique
        // field and one for the primary key, and one missing value a field.
        let fields = schema.fields.len() + 1;
        let keys = schema.expected_keys(64);
        let rows = if helper {
            (HELPER_CELLS / fields).clamp(DEFER_ROWS, HELPER_ROWS)
        } else {
            DEFER_ROWS
        };
        Queue {
            rows: Vec::with_capacity(rows),
            // A row's bytes are its record and its delimiters.
            bytes: Vec::with_capacity(
                limits
                    .max_record_bytes
                    .saturating_add(limits.max_columns)
                    .saturating_add(rows * 128),
            ),
            ends: Vec::with_capacity(limits.max_columns.saturating_add(1).max(rows * 16)),
            found: Vec::with_capacity(fields * rows),
            pending: Vec::with_capacity(keys * rows),
            missed: Vec::with_capacity(fields * rows),
            answers: Vec::with_capacity(keys * rows),
        }
    }

    /// Whether a row of `bytes` bytes and `ends` cells fits without growing a buffer.
    pub fn fits(&self, bytes: usize, ends: usize) -> bool {
        let room = |len: usize, cap: usize, more: usize| len.saturating_add(more) <= cap;
        self.rows.len() < self.rows.capacity()
            && room(self.bytes.len(), self.bytes.capacity(), bytes)
            && room(self.ends.len(), self.ends.capacity(), ends)
    }

    pub fn is_full(&self) -> bool {
        self.rows.len() >= self.rows.capacity()
    }

    /// Queue a row, unchecked.
    pub fn push(
        &mut self,
        (record, line): (u64, u64),
        row: Row<'_>,
        input_seen: u64,
        style: &'static str,
    ) {
        self.bytes.extend_from_slice(row.bytes());
        self.ends.extend_from_slice(row.ends);
        self.rows.push(Queued {
            record,
            line,
            sep: row.sep,
            quick: row.quick,
            bytes_end: self.bytes.len(),
            ends_end: self.ends.len(),
            found_end: 0,
            pending_end: 0,
            missed_end: 0,
            counted: 0,
            input_seen,
            style,
        });
    }

    /// Check every row against `plan`, then insert their keys in order into `keys` (none: the
    /// plan keeps no keys, or the budget was spent, and every key is answered as not inserted).
    pub fn check(&mut self, plan: &CheckPlan, keys: Option<&mut KeySet>) {
        self.found.clear();
        self.pending.clear();
        self.missed.clear();
        self.answers.clear();
        let (mut bytes, mut ends) = (0, 0);
        for r in self.rows.iter_mut() {
            let row = Row {
                buf: &self.bytes[bytes..r.bytes_end],
                ends: &self.ends[ends..r.ends_end],
                sep: r.sep,
                quick: r.quick,
            };
            r.counted = plan.check_row(row, &mut self.found, &mut self.pending, &mut self.missed);
            r.found_end = self.found.len();
            r.pending_end = self.pending.len();
            r.missed_end = self.missed.len();
            (bytes, ends) = (r.bytes_end, r.ends_end);
        }
        if let Some(keys) = keys {
            // The table is far larger than the caches: the first slots of a few keys are loaded
            // together, so their cache misses overlap instead of each stalling its insert.
            for chunk in self.pending.chunks(TOUCH_KEYS) {
                keys.touch(chunk.iter().map(|p| p.digest));
                self.answers
                    .extend(chunk.iter().map(|p| keys.insert(p.digest)));
            }
        }
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.bytes.clear();
        self.ends.clear();
        self.found.clear();
        self.pending.clear();
        self.missed.clear();
        self.answers.clear();
    }
}

/// A batch handed to the helper: the rows and the plan to check them with.
#[derive(Debug)]
pub(super) struct Batch {
    pub plan: Arc<CheckPlan>,
    pub queue: Queue,
}

/// A full batch of fewer rows than this (rows of very many cells) is checked on the engine's
/// thread: handing it over would cost more than checking it.
pub(super) const MIN_HANDOFF_ROWS: usize = 64;

/// Batches with the helper at most: a few, so that neither thread waits for the other when
/// one of them is briefly off its core (the parent's hashing shares the two).
pub(super) const DEPTH: usize = 3;

/// The engine's side of the helper: how many batches, and rows, are with it. Dropped with
/// batches out (a run that ended on an error), it takes them back, so the helper is free for
/// the next run.
#[derive(Debug, Default)]
pub(super) struct Flight {
    pub helper: Option<Arc<Helper>>,
    pub batches: usize,
    pub rows: usize,
}

impl Flight {
    /// Hand a batch over, with the key table if this thread holds it.
    pub fn submit(&mut self, helper: &Helper, batch: Batch, keys: Option<KeySet>) {
        self.batches += 1;
        self.rows += batch.queue.rows.len();
        helper.submit(batch, keys);
    }

    /// The oldest batch with the helper, checked; none if none is out.
    pub fn take(&mut self) -> Option<Batch> {
        let helper = self.helper.as_ref().filter(|_| self.batches > 0)?;
        let batch = helper.wait();
        self.batches -= 1;
        self.rows -= batch.queue.rows.len();
        Some(batch)
    }
}

impl Drop for Flight {
    /// Take back every batch and the key table, then free the helper for the next run.
    fn drop(&mut self) {
        while self.take().is_some() {}
        if let Some(helper) = &self.helper {
            drop(helper.take_keys());
            helper
                .busy
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

/// What the two threads share.
#[derive(Default)]
struct State {
    /// The thread has reached its loop.
    started: bool,
    stop: bool,
    /// Checking a batch panicked (in the worker the panic hook ends the process first).
    dead: bool,
    todo: std::collections::VecDeque<Batch>,
    done: std::collections::VecDeque<Batch>,
    /// The key table, whenever the engine's thread does not hold it: the helper takes it for
    /// each batch and puts it back before the batch is done, so once every batch is back it is
    /// here.
    keys: Option<KeySet>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A second thread that checks schema batches while the engine reads on. It is started before
/// the worker's seccomp filter is applied (so the filter need not allow creating threads) and
/// after every other layer (which the thread inherits); once running it needs only `futex` to
/// wait and wake. Checking allocates little: a larger key table, and the `regex` crate's caches
/// for this thread. Dropping it stops and joins the thread; the sandboxed worker never drops it (a thread's exit needs calls the
/// worker may not make), and its thread ends with the process. It serves one run at a time.
pub struct Helper {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A run is using it; a second run at the same time goes without.
    busy: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helper").finish_non_exhaustive()
    }
}

/// The helper's stack: checking is shallow (no recursion; patterns run on automata).
const HELPER_STACK: usize = 1 << 20;

impl Helper {
    /// Start the thread, and return once it waits for work: the calls a thread makes as it
    /// starts (its signal stack, its robust-futex list) are behind it.
    pub fn spawn() -> std::io::Result<Helper> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                todo: std::collections::VecDeque::with_capacity(DEPTH),
                done: std::collections::VecDeque::with_capacity(DEPTH),
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .stack_size(HELPER_STACK)
            .spawn(move || helper_loop(&theirs))?;
        let mut state = lock(&shared);
        while !state.started {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(state);
        Ok(Helper {
            shared,
            thread: Some(thread),
            busy: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Queue a batch; [`Helper::wait`] gets the batches back checked, in order.
    fn submit(&self, batch: Batch, keys: Option<KeySet>) {
        let mut state = lock(&self.shared);
        state.todo.push_back(batch);
        if keys.is_some() {
            state.keys = keys;
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    /// The oldest batch submitted and not yet taken, checked.
    fn wait(&self) -> Batch {
        let mut state = lock(&self.shared);
        loop {
            if let Some(batch) = state.done.pop_front() {
                return batch;
            }
            assert!(!state.dead, "the schema helper thread panicked");
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Claim the helper for one run; false if another run has it.
    pub(super) fn claim(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// The key table back, once every batch is: the engine's thread checks the next rows itself.
    pub(super) fn take_keys(&self) -> Option<KeySet> {
        lock(&self.shared).keys.take()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn helper_loop(shared: &Shared) {
    // This thread's random keys (for the hash maps of the regex caches it will build), drawn
    // now: in the worker, before the lockdown's seccomp filter, which has no getrandom.
    crate::schema::prepare();
    let mut state = lock(shared);
    state.started = true;
    shared.changed.notify_all();
    loop {
        if state.stop {
            return;
        }
        let Some(mut batch) = state.todo.pop_front() else {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let mut keys = state.keys.take();
        drop(state);
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch.queue.check(&batch.plan, keys.as_mut());
        }));
        state = lock(shared);
        if checked.is_err() {
            // The engine's thread would wait for this batch forever: it panics instead.
            state.dead = true;
            shared.changed.notify_all();
            return;
        }
        state.keys = keys;
        state.done.push_back(batch);
        shared.changed.notify_all();
    }
}
