//! `unique` and `primaryKey` in bounded memory: each key is kept as a 128-bit digest in one
//! open-addressing table allocated up front from the plan's budget. Two distinct keys collide
//! with probability about n²/2¹²⁹ (n keys): below 10⁻¹⁸ for a billion keys.
//!
//! The digest is SipHash-1-3's 128-bit output under a key drawn at random when the run starts
//! (before the worker locks down: `getrandom` is not on its allowlist), so a file cannot be
//! crafted to collide.
//!
//! The table is kept either here ([`KeySet`]) or, so that the inserts' cache misses run on the
//! other core, by a second sandboxed process ([`serve`]), to which the engine sends its digests
//! in batches over a pipe ([`KeyLink`]) while it goes on checking rows.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};

use siphasher::sip128::{Hasher128, SipHasher13};

use super::Typed;

/// The table is never filled past this share of its slots (probe lengths stay short).
const LOAD_NUM: usize = 7;
const LOAD_DEN: usize = 8;

/// Every key seen so far, as digests.
#[derive(Debug)]
pub struct KeySet {
    slots: Vec<u128>,
    mask: usize,
    len: usize,
    /// Keys the table holds at its present size before it grows.
    grow_at: usize,
    /// Slots at the budget: the table never grows past them.
    max_slots: usize,
    /// Keys the budget holds.
    max_len: usize,
}

/// Turns keys into digests under a random key.
#[derive(Debug, Clone, Copy)]
pub struct Digester(SipHasher13);

impl Default for Digester {
    fn default() -> Self {
        Digester(random_hasher())
    }
}

impl Digester {
    /// The digest of a key: `tag` tells apart the constraints sharing the table (a field's
    /// `unique`, the primary key), then each value of the key in order.
    pub fn digest(&self, tag: u64, values: &[Typed]) -> u128 {
        let mut h = self.0;
        h.write_u64(tag);
        for v in values {
            v.hash_into(&mut h);
        }
        // 0 marks an empty slot.
        h.finish128().as_u128().max(1)
    }
}

/// A growing table stays within this share of the budget (1/8) until it takes the whole budget,
/// so moving keys takes at most 1 + 1/8 of the budget for a moment. The plan checks that this
/// fits the worker's memory.
pub const GROWTH_SHARE: usize = 8;

/// The smallest table: 64 KiB.
const MIN_SLOTS: usize = 4096;

/// What inserting a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    New,
    Seen,
    /// The budget is spent: no more keys can be kept.
    Full,
}

impl KeySet {
    /// A table taking at most `budget_bytes` (16 bytes a slot, a power of two of them), first
    /// sized for `expected` keys (a hint) when that is at most an eighth of the budget, else the
    /// whole budget. A table much larger than its
    /// keys costs a page fault for nearly every key, since digests scatter them over all its
    /// pages. A small table doubles while it stays within an eighth of the budget, then takes the
    /// whole budget: while it moves, the old table (at most an eighth) sits beside the new one,
    /// which the plan's memory allows for ([`GROWTH_SHARE`]).
    pub fn new(budget_bytes: usize, expected: Option<usize>) -> KeySet {
        let max_slots = max_slots(budget_bytes);
        let first = match expected {
            None => max_slots,
            Some(keys) => (keys.saturating_mul(LOAD_DEN) / LOAD_NUM + 1)
                .checked_next_power_of_two()
                .unwrap_or(max_slots)
                .max(MIN_SLOTS),
        };
        let first = if first <= max_slots / GROWTH_SHARE {
            first
        } else {
            max_slots
        };
        KeySet {
            // Zeroed memory is mapped lazily: pages count only once keys land on them.
            slots: vec![0u128; first],
            mask: first - 1,
            len: 0,
            grow_at: load(first),
            max_slots,
            max_len: load(max_slots),
        }
    }

    /// Keys a table of `budget_bytes` holds.
    pub fn capacity_for(budget_bytes: usize) -> usize {
        load(max_slots(budget_bytes))
    }

    /// Keys the budget holds.
    pub fn capacity(&self) -> usize {
        self.max_len
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Load the first slot of each digest, ahead of [`KeySet::insert`]. The loads do not depend
    /// on each other, so the CPU has their cache misses in flight together; the inserts that
    /// follow find the slots cached. (Stable Rust has no safe prefetch instruction; loads serve.)
    pub fn touch(&self, digests: impl Iterator<Item = u128>) {
        let mut any = 0u128;
        for d in digests {
            any ^= self.slots[(d as usize) & self.mask];
        }
        std::hint::black_box(any);
    }

    pub fn insert(&mut self, digest: u128) -> Insert {
        // 0 marks an empty slot; a digest from elsewhere (a key link) may be anything.
        let digest = digest.max(1);
        let mut i = (digest as usize) & self.mask;
        loop {
            let slot = self.slots[i];
            if slot == digest {
                return Insert::Seen;
            }
            if slot == 0 {
                if self.len >= self.grow_at {
                    if self.len >= self.max_len {
                        return Insert::Full;
                    }
                    self.grow();
                    return self.insert(digest);
                }
                self.slots[i] = digest;
                self.len += 1;
                return Insert::New;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Double the table while it stays within an eighth of the budget, else take the whole
    /// budget, and place every key again.
    #[cold]
    fn grow(&mut self) {
        let doubled = self.slots.len() * 2;
        let size = if doubled <= self.max_slots / GROWTH_SHARE {
            doubled
        } else {
            self.max_slots
        };
        let old = std::mem::replace(&mut self.slots, vec![0u128; size]);
        self.mask = size - 1;
        self.grow_at = load(size);
        for d in old.into_iter().filter(|&d| d != 0) {
            let mut i = (d as usize) & self.mask;
            while self.slots[i] != 0 {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = d;
        }
    }
}

/// Keys a table of `slots` holds.
fn load(slots: usize) -> usize {
    slots / LOAD_DEN * LOAD_NUM
}

/// The slots a budget buys: a power of two of 16-byte slots.
fn max_slots(budget_bytes: usize) -> usize {
    let slots = (budget_bytes / 16).max(16);
    if slots.is_power_of_two() {
        slots
    } else {
        slots.next_power_of_two() / 2
    }
}

// ---- the key worker ----------------------------------------------------------------------

/// The two ends of a key worker's pipe, as the engine sees them: digests go out on `to`,
/// answers come back on `from`.
///
/// The protocol: the engine sends a batch as a little-endian `u32` count `n` (1 to
/// [`MAX_BATCH`]) and `n` 16-byte little-endian digests; the key worker answers with `n` bytes,
/// one a digest in order: 0 new, 1 seen before, 2 the budget is spent. A count of 0 ends the
/// run. The engine has at most two batches unanswered, so the answers it has not yet read
/// (at most `2 * MAX_BATCH` bytes) always fit the pipe's buffer and neither side can block the
/// other for good.
pub struct KeyLink {
    pub to: Box<dyn Write + Send>,
    pub from: Box<dyn Read + Send>,
}

impl std::fmt::Debug for KeyLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLink")
    }
}

/// The most digests in one batch.
pub const MAX_BATCH: usize = 16 * 1024;

/// How much the key worker reads at a time: its memory for messages is fixed.
const SERVE_CHUNK: usize = 4096;
/// How many slots the key worker loads together before inserting their digests.
const TOUCH_AHEAD: usize = 16;

impl KeyLink {
    /// Send one batch of 1 to [`MAX_BATCH`] digests, through `buf` (a scratch buffer with room
    /// for `4 + 16 * MAX_BATCH` bytes, so it never grows).
    pub fn send(
        &mut self,
        digests: impl ExactSizeIterator<Item = u128>,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let n = digests.len();
        if n == 0 || n > MAX_BATCH {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a batch of keys must hold 1 to MAX_BATCH digests",
            ));
        }
        buf.clear();
        buf.extend_from_slice(&(n as u32).to_le_bytes());
        for d in digests {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        self.to.write_all(buf)?;
        self.to.flush()
    }

    /// Read the answers to a batch of `n` digests into `into` (cleared first).
    pub fn receive(&mut self, n: usize, into: &mut Vec<Insert>) -> std::io::Result<()> {
        let mut bytes = [0u8; SERVE_CHUNK];
        into.clear();
        let mut left = n;
        while left > 0 {
            let part = &mut bytes[..left.min(SERVE_CHUNK)];
            self.from.read_exact(part)?;
            for &b in part.iter() {
                into.push(match b {
                    0 => Insert::New,
                    1 => Insert::Seen,
                    2 => Insert::Full,
                    _ => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "the key worker answered with an unknown byte",
                        ))
                    }
                });
            }
            left -= part.len();
        }
        Ok(())
    }

    /// Tell the key worker the run is over.
    pub fn close(&mut self) -> std::io::Result<()> {
        self.to.write_all(&0u32.to_le_bytes())?;
        self.to.flush()
    }
}

/// What a key worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Served {
    pub batches: u64,
    pub keys: u64,
}

/// The key worker's whole job: keep a [`KeySet`] of `budget_bytes` (first sized for `expected`
/// keys) and answer batches read from `from` on `to` until a batch of 0 or the end of `from`.
/// A batch larger than [`MAX_BATCH`], or one cut short, is an error. Memory for messages is
/// fixed ([`SERVE_CHUNK`] digests at a time).
pub fn serve<R: Read, W: Write>(
    mut from: R,
    mut to: W,
    budget_bytes: usize,
    expected: Option<usize>,
) -> std::io::Result<Served> {
    let mut set = KeySet::new(budget_bytes, expected);
    let mut served = Served::default();
    let mut digests = vec![0u8; SERVE_CHUNK * 16];
    let mut answers = vec![0u8; SERVE_CHUNK];
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    loop {
        let mut count = [0u8; 4];
        if !read_all_or_nothing(&mut from, &mut count)? {
            return Ok(served);
        }
        let n = u32::from_le_bytes(count) as usize;
        if n == 0 {
            return Ok(served);
        }
        if n > MAX_BATCH {
            return Err(bad("a batch larger than the protocol allows"));
        }
        served.batches += 1;
        let mut left = n;
        while left > 0 {
            let part = left.min(SERVE_CHUNK);
            from.read_exact(&mut digests[..part * 16])?;
            for (d, a) in digests[..part * 16]
                .chunks(16 * TOUCH_AHEAD)
                .zip(answers.chunks_mut(TOUCH_AHEAD))
            {
                let group = d
                    .chunks_exact(16)
                    .map(|d| u128::from_le_bytes(d.try_into().unwrap_or([0; 16])));
                // As the engine does with its own table: the group's cache misses overlap.
                set.touch(group.clone());
                for (digest, a) in group.zip(a.iter_mut()) {
                    *a = match set.insert(digest) {
                        Insert::New => 0,
                        Insert::Seen => 1,
                        Insert::Full => 2,
                    };
                }
            }
            // The answers of a batch are written as its digests are read: the engine reads them
            // only once the batch is sent, and they fit the pipe.
            to.write_all(&answers[..part])?;
            left -= part;
        }
        to.flush()?;
        served.keys = set.len() as u64;
    }
}

/// Fill `buf` from `r`, or find `r` already at its end (`false`); an end part way is an error.
fn read_all_or_nothing<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A SipHash-1-3 keyed with 128 random bits, which the standard library draws from the kernel
/// (once per process, then varied per table).
fn random_hasher() -> SipHasher13 {
    let key = |state: RandomState| state.build_hasher().finish();
    SipHasher13::new_with_keys(key(RandomState::new()), key(RandomState::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_again_and_the_budget_holds() {
        let mut set = KeySet::new(16 * 64, None);
        assert_eq!(set.capacity(), 56);
        assert_eq!(KeySet::capacity_for(16 * 64), 56);
        let h = Digester::default();
        let d = |i: i128| h.digest(1, &[Typed::Int(i)]);
        for i in 0..56 {
            assert_eq!(set.insert(d(i)), Insert::New);
        }
        assert_eq!(set.insert(d(3)), Insert::Seen);
        assert_eq!(set.insert(d(1000)), Insert::Full);
        // Another constraint's key with the same value is a different key.
        assert_ne!(h.digest(2, &[Typed::Int(3)]), d(3));
    }

    #[test]
    fn a_key_of_several_values_reads_one_way_only() {
        let set = Digester::default();
        let two = set.digest(7, &[Typed::Text(b"ab"), Typed::Text(b"")]);
        assert_ne!(set.digest(7, &[Typed::Text(b"ab")]), two);
        assert_ne!(set.digest(7, &[Typed::Text(b"a"), Typed::Text(b"b")]), two);
        assert_ne!(
            set.digest(7, &[Typed::Text(b""), Typed::Null]),
            set.digest(7, &[Typed::Null, Typed::Text(b"")])
        );
    }

    #[test]
    fn a_table_sized_for_few_keys_grows_to_the_budget_and_no_further() {
        let budget = 16 * MIN_SLOTS * 8;
        let mut set = KeySet::new(budget, Some(10));
        assert_eq!(set.slots.len(), MIN_SLOTS);
        let cap = set.capacity();
        assert_eq!(cap, load(MIN_SLOTS * 8));
        let h = Digester::default();
        let d = |i: i128| h.digest(1, &[Typed::Int(i)]);
        for i in 0..cap as i128 {
            assert_eq!(set.insert(d(i)), Insert::New, "{i}");
        }
        assert_eq!(set.slots.len(), MIN_SLOTS * 8);
        // Every key is found again after the moves.
        for i in 0..cap as i128 {
            assert_eq!(set.insert(d(i)), Insert::Seen, "{i}");
        }
        assert_eq!(set.insert(d(-1)), Insert::Full);
        // A hint past the budget is the budget.
        assert_eq!(
            KeySet::new(budget, Some(usize::MAX)).slots.len(),
            MIN_SLOTS * 8
        );
    }
}
