//! `unique` and `primaryKey` in bounded memory: each key is kept as a 128-bit digest in one
//! open-addressing table allocated up front from the plan's budget. Two distinct keys collide
//! with probability about n²/2¹²⁹ (n keys): below 10⁻¹⁸ for a billion keys.
//!
//! The digest is SipHash-1-3's 128-bit output under a key drawn at random when the table is
//! made (before the worker locks down: `getrandom` is not on its allowlist), so a file cannot be
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
    max_len: usize,
    hasher: SipHasher13,
}

/// What inserting a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    New,
    Seen,
    /// The budget is spent: no more keys can be kept.
    Full,
}

impl KeySet {
    /// A table taking at most `budget_bytes` (16 bytes a slot, a power of two of them).
    pub fn with_budget(budget_bytes: usize) -> KeySet {
        let slots = (budget_bytes / 16).max(16);
        let cap = if slots.is_power_of_two() {
            slots
        } else {
            slots.next_power_of_two() / 2
        };
        KeySet {
            // Zeroed memory is mapped lazily: pages count only once keys land on them.
            slots: vec![0u128; cap],
            mask: cap - 1,
            len: 0,
            max_len: cap / LOAD_DEN * LOAD_NUM,
            hasher: random_hasher(),
        }
    }

    /// Keys the table can hold.
    pub fn capacity(&self) -> usize {
        self.max_len
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of a key: `tag` tells apart the constraints sharing the table (a field's
    /// `unique`, the primary key), then each value of the key in order.
    pub fn digest(&self, tag: u64, values: &[Typed]) -> u128 {
        let mut h = self.hasher;
        h.write_u64(tag);
        for v in values {
            v.hash_into(&mut h);
        }
        // 0 marks an empty slot.
        h.finish128().as_u128().max(1)
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
                if self.len >= self.max_len {
                    return Insert::Full;
                }
                self.slots[i] = digest;
                self.len += 1;
                return Insert::New;
            }
            i = (i + 1) & self.mask;
        }
    }
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
        let mut set = KeySet::with_budget(16 * 64);
        assert_eq!(set.capacity(), 56);
        let d = |set: &KeySet, i: i128| set.digest(1, &[Typed::Int(i)]);
        for i in 0..56 {
            assert_eq!(set.insert(d(&set, i)), Insert::New);
        }
        assert_eq!(set.insert(d(&set, 3)), Insert::Seen);
        assert_eq!(set.insert(d(&set, 1000)), Insert::Full);
        // Another constraint's key with the same value is a different key.
        assert_ne!(set.digest(2, &[Typed::Int(3)]), d(&set, 3));
    }
}
