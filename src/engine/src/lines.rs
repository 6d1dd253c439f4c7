//! Physical line accounting: where each record starts, how many blank lines were skipped, and
//! which line terminators the file uses. `csv-core` only counts `\n`, which is wrong for files
//! with bare-CR line ends (old Mac exports), so the engine keeps its own count.

use memchr::memchr2_iter;

#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// Current physical line, 1-based.
    line: u64,
    prev_cr: bool,
    lf: u64,
    crlf: u64,
    cr: u64,
    /// Line of the last non-terminator byte seen.
    last_content_line: u64,
    last_was_break: bool,
    /// Waiting for the first content byte of the next record.
    want_start: bool,
    start_line: u64,
}

impl Lines {
    pub(crate) fn new() -> Self {
        Lines {
            line: 1,
            want_start: true,
            ..Lines::default()
        }
    }

    /// Classify the breaks in `bytes`, which follow the previous call's bytes in the stream.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut from = 0;
        for i in memchr2_iter(b'\n', b'\r', bytes) {
            if i > from {
                self.content(from);
            }
            self.line_break(bytes[i]);
            from = i + 1;
        }
        if from < bytes.len() {
            self.content(from);
        }
        self.last_was_break = matches!(bytes[bytes.len() - 1], b'\n' | b'\r');
    }

    /// One line without a line break of its own, then one break byte (`\n` or `\r`): what
    /// [`Lines::feed`] does for them, without looking at the bytes again. `content`: the line is
    /// not empty. A CRLF is two calls, the second with `content` false.
    #[inline]
    pub(crate) fn plain_line(&mut self, content: bool, end: u8) {
        if content {
            self.content(0);
        }
        self.line_break(end);
        self.last_was_break = true;
    }

    /// Count one `\n` or `\r`.
    #[inline]
    fn line_break(&mut self, b: u8) {
        if b == b'\n' && self.prev_cr {
            // The CR already counted the line; it was half of a CRLF.
            self.cr -= 1;
            self.crlf += 1;
        } else if b == b'\n' {
            self.lf += 1;
            self.line += 1;
        } else {
            self.cr += 1;
            self.line += 1;
        }
        self.prev_cr = b == b'\r';
    }

    #[inline]
    fn content(&mut self, _at: usize) {
        if self.want_start {
            self.want_start = false;
            self.start_line = self.line;
        }
        self.prev_cr = false;
        self.last_content_line = self.line;
    }

    /// The next content byte starts a new record.
    pub(crate) fn mark_record_end(&mut self) {
        self.want_start = true;
    }

    /// Line where the current record started.
    pub(crate) fn start_line(&self) -> u64 {
        self.start_line
    }

    /// Line of the last content byte, i.e. where the last complete record ended.
    pub(crate) fn last_content_line(&self) -> u64 {
        self.last_content_line
    }

    /// Empty lines after the last record, not counting the final terminator.
    pub(crate) fn trailing_blank_lines(&self) -> u64 {
        let end = self.line - u64::from(self.last_was_break);
        end.saturating_sub(self.last_content_line.max(1))
    }

    /// `lf`, `crlf`, `cr` or `mixed`. A file without any terminator reports `lf`.
    pub(crate) fn style(&self) -> &'static str {
        self.style_of(self.cr)
    }

    /// [`Lines::style`] of the breaks settled so far: a CR that the next byte may yet turn into
    /// half of a CRLF is left out.
    pub(crate) fn settled_style(&self) -> &'static str {
        self.style_of(self.cr - u64::from(self.prev_cr))
    }

    fn style_of(&self, cr: u64) -> &'static str {
        match (self.lf > 0, self.crlf > 0, cr > 0) {
            (_, false, false) => "lf",
            (false, true, false) => "crlf",
            (false, false, true) => "cr",
            _ => "mixed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(parts: &[&[u8]]) -> Lines {
        let mut l = Lines::new();
        for p in parts {
            l.feed(p);
        }
        l
    }

    #[test]
    fn styles() {
        assert_eq!(fed(&[b"a\nb\n"]).style(), "lf");
        assert_eq!(fed(&[b"a\r\nb\r\n"]).style(), "crlf");
        assert_eq!(fed(&[b"a\r", b"\nb\r\n"]).style(), "crlf");
        assert_eq!(fed(&[b"a\rb\r"]).style(), "cr");
        assert_eq!(fed(&[b"a\rb\n"]).style(), "mixed");
        assert_eq!(fed(&[b"a"]).style(), "lf");
    }

    #[test]
    fn lines_count_cr_and_crlf_once() {
        let l = fed(&[b"a\r\nb\rc\nd"]);
        assert_eq!(l.line, 4);
    }

    #[test]
    fn trailing_blank_lines() {
        assert_eq!(fed(&[b"a\nb\n"]).trailing_blank_lines(), 0);
        assert_eq!(fed(&[b"a\nb\n\n\n"]).trailing_blank_lines(), 2);
        assert_eq!(fed(&[b"a\nb"]).trailing_blank_lines(), 0);
        assert_eq!(fed(&[b"a\r\n\r\n"]).trailing_blank_lines(), 1);
    }

    #[test]
    fn record_start_skips_leading_breaks() {
        let mut l = Lines::new();
        l.feed(b"h\n");
        l.mark_record_end();
        l.feed(b"\n\nx\n");
        assert_eq!(l.start_line(), 4);
    }
}
