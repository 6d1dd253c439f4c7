//! A byte-at-a-time mirror of `csv-core`'s quoting states, used only where `csv-core` cannot
//! answer: is the input at its end still inside a quoted field? It runs over the last record
//! and over records too long to buffer, never over the whole file.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    StartField,
    InField,
    InQuoted,
    /// A quote inside a quoted field: either the closing quote or the first of a doubled pair.
    QuoteInQuoted,
}

#[derive(Debug)]
pub(crate) struct QuoteTracker {
    state: State,
    delimiter: u8,
    quote: u8,
}

impl QuoteTracker {
    pub(crate) fn new(delimiter: u8, quote: u8) -> Self {
        QuoteTracker {
            state: State::StartField,
            delimiter,
            quote,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.state = State::StartField;
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state = match self.state {
                State::StartField if b == self.quote => State::InQuoted,
                State::StartField | State::InField => {
                    if b == self.delimiter || b == b'\n' || b == b'\r' {
                        State::StartField
                    } else {
                        State::InField
                    }
                }
                State::InQuoted if b == self.quote => State::QuoteInQuoted,
                State::InQuoted => State::InQuoted,
                State::QuoteInQuoted if b == self.quote => State::InQuoted,
                State::QuoteInQuoted => {
                    if b == self.delimiter || b == b'\n' || b == b'\r' {
                        State::StartField
                    } else {
                        State::InField
                    }
                }
            };
        }
    }

    pub(crate) fn in_quote(&self) -> bool {
        self.state == State::InQuoted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(bytes: &[u8]) -> bool {
        let mut t = QuoteTracker::new(b',', b'"');
        t.feed(bytes);
        t.in_quote()
    }

    #[test]
    fn quotes() {
        assert!(!open(b"a,\"b\"\n"));
        assert!(open(b"a,\"b\n"));
        assert!(!open(b"a,\"b\"\"c\""));
        assert!(open(b"a,\"b\"\"c"));
        assert!(!open(b"a,b\"c,d"));
        assert!(!open(b"\n\n\"x\"\n"));
    }
}
