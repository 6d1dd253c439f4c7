//! A field's `pattern`: a whole-value match on a linear-time engine in bounded memory.
//!
//! Where the pattern fits a small fully built DFA, a cell is matched by one table step a byte,
//! with no per-call set-up: the cost of a check is the cell's length. Any other pattern (too
//! large a DFA, or a feature a DFA lacks, such as a Unicode word boundary) runs on the `regex`
//! crate's lazy DFA, which is as linear but pays a set-up on every call.

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::{primitives::StateID, start};
use regex_automata::Anchored;

/// The most memory one pattern's DFA may take, built and while building.
const DFA_BYTES: usize = 64 * 1024;
const DETERMINIZE_BYTES: usize = 256 * 1024;
/// The most memory all of a schema's DFAs may take together; patterns past it use the regex.
pub const SCHEMA_DFA_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Pattern {
    dfa: Option<Dfa>,
    regex: regex::bytes::Regex,
}

#[derive(Debug, Clone)]
struct Dfa {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
}

impl Pattern {
    /// `whole` is the pattern as a whole-value match (`\A(?:p)\z`), already checked by
    /// `regex` (which the caller built with its size limits: that is the pattern's validation).
    /// `budget` is what is left of the schema's [`SCHEMA_DFA_BYTES`]; a DFA built takes its
    /// share, and an attempt that fails takes a whole pattern's, so a schema of many patterns
    /// too large for a DFA costs a bounded number of attempts (each a few milliseconds) to load.
    pub fn new(whole: &str, regex: regex::bytes::Regex, budget: &mut usize) -> Pattern {
        if *budget < DFA_BYTES {
            return Pattern { dfa: None, regex };
        }
        let dfa = Dfa::build(whole);
        let spent = dfa.as_ref().map_or(DFA_BYTES, |d| d.dfa.memory_usage());
        *budget = budget.saturating_sub(spent);
        Pattern { dfa, regex }
    }

    /// Whether the whole cell matches.
    #[inline]
    pub fn is_match(&self, cell: &[u8]) -> bool {
        match &self.dfa {
            Some(d) => d.is_match(cell),
            None => self.regex.is_match(cell),
        }
    }

    /// Whether a fully built DFA runs this pattern.
    #[cfg(test)]
    fn is_dfa(&self) -> bool {
        self.dfa.is_some()
    }
}

impl Dfa {
    fn build(whole: &str) -> Option<Dfa> {
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .dfa_size_limit(Some(DFA_BYTES))
                    .determinize_size_limit(Some(DETERMINIZE_BYTES)),
            )
            .build(whole)
            .ok()?;
        // A match always starts at the cell's first byte, with nothing before it: one start
        // state serves every cell.
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .ok()?;
        // No quit bytes are configured, so the DFA never gives up part-way; a pattern with a
        // Unicode word boundary, which would need them, fails to build above and falls back.
        Some(Dfa { dfa, start })
    }

    #[inline]
    fn is_match(&self, cell: &[u8]) -> bool {
        let mut state = self.start;
        for &b in cell {
            state = self.dfa.next_state(state, b);
            if self.dfa.is_dead_state(state) {
                return false;
            }
        }
        self.dfa.is_match_state(self.dfa.next_eoi_state(state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> Pattern {
        let whole = format!(r"\A(?:{p})\z");
        let re = regex::bytes::Regex::new(&whole).unwrap();
        Pattern::new(&whole, re, &mut SCHEMA_DFA_BYTES.clone())
    }

    const PATTERNS: &[&str] = &[
        r"\+[0-9]{1,2} [0-9]{3} [0-9]{6}",
        r"[A-Z]{2}",
        r"a|ab|abc",
        r"^x$",
        r"(?i)straße|éa*",
        r"\d+(\.\d+)?",
        r"\w+@\w+",
        r"[^,]*",
        r"",
        r"(a|b)*c{2,3}",
        r".{0,4}é",
        r"\p{Greek}+",
        r"[[:alpha:]]+-\d",
    ];

    #[test]
    fn common_patterns_run_on_a_dfa_and_the_rest_fall_back() {
        for p in PATTERNS.iter().filter(|p| !p.contains(r"\w")) {
            assert!(pattern(p).is_dfa(), "{p}");
        }
        // Unicode's word characters make a DFA past the size limit: the regex runs it.
        assert!(!pattern(r"\w+@\w+").is_dfa());
        let b = pattern(r"\bword\b");
        assert!(!b.is_dfa());
        assert!(b.is_match(b"word"));
        assert!(!b.is_match(b"words"));
    }

    #[test]
    fn the_budget_bounds_the_dfas() {
        let whole = r"\A(?:[a-z]{1,3})\z";
        let mut budget = DFA_BYTES - 1;
        let p = Pattern::new(whole, regex::bytes::Regex::new(whole).unwrap(), &mut budget);
        assert!(!p.is_dfa());
        assert_eq!(budget, DFA_BYTES - 1);
        let mut budget = SCHEMA_DFA_BYTES;
        let p = Pattern::new(whole, regex::bytes::Regex::new(whole).unwrap(), &mut budget);
        assert!(p.is_dfa());
        assert!(budget < SCHEMA_DFA_BYTES);
        // Failed attempts are charged too: at most one budget's worth of them.
        let big = r"\A(?:\w{40})\z";
        let mut budget = SCHEMA_DFA_BYTES;
        let mut attempts = 0;
        while budget >= DFA_BYTES {
            assert!(
                !Pattern::new(big, regex::bytes::Regex::new(big).unwrap(), &mut budget).is_dfa()
            );
            attempts += 1;
        }
        assert_eq!(attempts, SCHEMA_DFA_BYTES / DFA_BYTES);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5_000))]
        /// The DFA and the regex agree on every cell, for every pattern.
        #[test]
        fn the_dfa_agrees_with_the_regex(
            p in 0..PATTERNS.len(),
            cell in "[+0-9 A-Za-zéßΣ.@,x-]{0,16}|\\+[0-9]{1,3} [0-9]{2,4} [0-9]{5,7}|(a|b|c|ab)*",
        ) {
            let pat = pattern(PATTERNS[p]);
            let re = regex::bytes::Regex::new(&format!(r"\A(?:{})\z", PATTERNS[p])).unwrap();
            proptest::prop_assert_eq!(pat.is_match(cell.as_bytes()), re.is_match(cell.as_bytes()));
        }
    }
}
