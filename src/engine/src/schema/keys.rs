//! `unique` and `primaryKey` in bounded memory: each key is kept as a 128-bit digest in one
//! open-addressing table allocated up front from the plan's budget. Two distinct keys collide
//! with probability about n²/2¹²⁹ (n keys): below 10⁻¹⁸ for a billion keys.
//!
//! The digest is SipHash-1-3's 128-bit output under a key drawn at random when the run starts
//! (before the worker locks down: `getrandom` is not on its allowlist), so a file cannot be
//! crafted to collide.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

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

/// A SipHash-1-3 keyed with 128 random bits, which the standard library draws from the kernel
/// (once per thread, then varied per digester).
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
