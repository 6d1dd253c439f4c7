//! Type and encoding stage: raw bytes in, validated UTF-8 chunks out.
//!
//! Text comes first: the input must be valid in its encoding and free of NUL and C0 controls
//! other than TAB, CR and LF. Only when that fails does `infer` get to *name* what the file was
//! (a real CSV that starts with `CWS Group,` is text, and `infer` would call it a Flash movie).
//! Nothing here ever opens an archive or decompresses anything.

use std::io::{self, Read};

use encoding_rs::{Decoder, DecoderResult, Encoding, UTF_16BE, UTF_16LE};
use sha2::{Digest, Sha256};

use crate::report::{Code, Rejection};
use crate::EngineError;

/// Raw bytes read per call.
const CHUNK: usize = 256 * 1024;
/// The longest chunk [`TextReader::next_chunk`] hands out (transcoding can triple a raw chunk).
pub(crate) const MAX_CHUNK: usize = CHUNK * 3 + 16;
/// Bytes `infer` looks at.
const MAGIC_LEN: usize = 8 * 1024;

/// How the input is turned into UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Utf8,
    Transcode(&'static Encoding),
}

/// Either a chunk of checked UTF-8 text, or why the file is refused.
pub(crate) type Chunk<'a> = Result<Option<&'a [u8]>, Rejection>;

pub(crate) struct TextReader<R> {
    reader: R,
    /// `None` when the caller hashes the input itself.
    hasher: Option<Sha256>,
    /// Raw bytes read so far (including any BOM).
    bytes_in: u64,
    max_bytes: u64,
    eof: bool,
    raw: Vec<u8>,
    /// Unconsumed raw bytes are `raw[start..end]`.
    start: usize,
    end: usize,
    /// Raw offset of `raw[start]` in the stream.
    raw_offset: u64,
    decoded: Vec<u8>,
    decoder: Option<Decoder>,
    source: Source,
    /// Offset of the next decoded byte, in the decoded stream.
    text_offset: u64,
    pub(crate) bom: bool,
    magic: Option<&'static str>,
}

impl<R: Read> TextReader<R> {
    pub(crate) fn new(reader: R, max_bytes: u64) -> Self {
        TextReader {
            reader,
            hasher: Some(Sha256::new()),
            bytes_in: 0,
            max_bytes,
            eof: false,
            raw: vec![0; CHUNK + 8],
            start: 0,
            end: 0,
            raw_offset: 0,
            decoded: Vec::new(),
            decoder: None,
            source: Source::Utf8,
            text_offset: 0,
            bom: false,
            magic: None,
        }
    }

    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    pub(crate) fn source(&self) -> Source {
        self.source
    }

    /// Leave the input hash to the caller (the report's `input.sha256` is then empty).
    pub(crate) fn without_hash(mut self) -> Self {
        self.hasher = None;
        self
    }

    /// The sha256 of every raw byte read so far, hex; empty when not hashing.
    pub(crate) fn sha256_hex(&self) -> String {
        self.hasher
            .as_ref()
            .map(|h| hex::encode(h.clone().finalize()))
            .unwrap_or_default()
    }

    /// Read to end without checking, so the hash and size cover the whole input even when the
    /// file was refused early. Bounded by `max_bytes`.
    pub(crate) fn drain(&mut self) -> Result<(), EngineError> {
        self.start = self.end;
        while !self.eof {
            self.start = 0;
            self.end = 0;
            match self.fill() {
                Ok(()) | Err(Fill::TooLarge) => {}
                Err(Fill::Io(e)) => return Err(EngineError::ReadInput(e)),
            }
            if self.bytes_in > self.max_bytes {
                break;
            }
        }
        self.start = self.end;
        Ok(())
    }

    /// Read more raw bytes after the unconsumed ones, until the buffer is full or EOF.
    fn fill(&mut self) -> Result<(), Fill> {
        if self.start > 0 {
            self.raw.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < CHUNK && !self.eof {
            match self.reader.read(&mut self.raw[self.end..CHUNK]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    if let Some(hasher) = &mut self.hasher {
                        hasher.update(&self.raw[self.end..self.end + n]);
                    }
                    self.end += n;
                    self.bytes_in += n as u64;
                    if self.bytes_in > self.max_bytes {
                        return Err(Fill::TooLarge);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fill::Io(e)),
            }
        }
        Ok(())
    }

    fn too_large(&self) -> Rejection {
        Rejection::new(
            Code::TooLarge,
            format!(
                "input is larger than the plan's limit of {} bytes",
                self.max_bytes
            ),
        )
        .with_limit(self.max_bytes)
    }

    /// Read the first block, find the BOM and decide how to decode. `Ok(Err(_))` is a refusal.
    pub(crate) fn start(
        &mut self,
        fallback: Option<&'static Encoding>,
    ) -> Result<Result<(), Rejection>, EngineError> {
        match self.fill() {
            Ok(()) => {}
            Err(Fill::TooLarge) => return Ok(Err(self.too_large())),
            Err(Fill::Io(e)) => return Err(EngineError::ReadInput(e)),
        }
        let head = &self.raw[..self.end];
        self.magic = infer::get(&head[..head.len().min(MAGIC_LEN)]).map(|t| t.mime_type());
        Ok(self.choose_source(fallback))
    }

    fn choose_source(&mut self, fallback: Option<&'static Encoding>) -> Result<(), Rejection> {
        let head = &self.raw[..self.end];
        if head.is_empty() {
            return Err(Rejection::new(Code::Empty, "the file is empty (0 bytes)"));
        }
        if head.starts_with(&[0xFF, 0xFE, 0, 0]) || head.starts_with(&[0, 0, 0xFE, 0xFF]) {
            return Err(Rejection::new(
                Code::UnsupportedEncoding,
                "UTF-32 is not supported; save the file as UTF-8",
            ));
        }
        let (source, bom_len) = if head.starts_with(b"\xEF\xBB\xBF") {
            (Source::Utf8, 3)
        } else if head.starts_with(&[0xFF, 0xFE]) {
            (Source::Transcode(UTF_16LE), 2)
        } else if head.starts_with(&[0xFE, 0xFF]) {
            (Source::Transcode(UTF_16BE), 2)
        } else if looks_like_bomless_utf16(head) {
            return Err(Rejection::new(
                Code::UnsupportedEncoding,
                "looks like UTF-16 without a byte-order mark; save as UTF-8 or UTF-16 with BOM",
            ));
        } else {
            match fallback {
                Some(enc) if !sample_is_utf8(head, self.eof) => (Source::Transcode(enc), 0),
                _ => (Source::Utf8, 0),
            }
        };
        self.bom = bom_len > 0;
        self.start = bom_len;
        self.raw_offset = bom_len as u64;
        if self.end == bom_len && self.eof {
            return Err(Rejection::new(
                Code::Empty,
                "the file holds only a byte-order mark",
            ));
        }
        self.source = source;
        if let Source::Transcode(enc) = source {
            self.decoder = Some(enc.new_decoder_without_bom_handling());
            self.decoded = vec![0; MAX_CHUNK];
        }
        Ok(())
    }

    /// The next chunk of checked UTF-8, `None` at the end.
    pub(crate) fn next_chunk(&mut self) -> Result<Chunk<'_>, EngineError> {
        match self.source {
            Source::Utf8 => self.next_utf8(),
            Source::Transcode(_) => self.next_transcoded(),
        }
    }

    fn refill(&mut self) -> Result<Result<(), Rejection>, EngineError> {
        match self.fill() {
            Ok(()) => Ok(Ok(())),
            Err(Fill::TooLarge) => Ok(Err(self.too_large())),
            Err(Fill::Io(e)) => Err(EngineError::ReadInput(e)),
        }
    }

    fn next_utf8(&mut self) -> Result<Chunk<'_>, EngineError> {
        // Refill only when the block is used up, so at most a cut-off sequence (< 4 bytes) is
        // ever moved to the front.
        if self.end - self.start < 4 && !self.eof {
            if let Err(r) = self.refill()? {
                return Ok(Err(r));
            }
        }
        if self.start == self.end {
            return Ok(Ok(None));
        }
        let bytes = &self.raw[self.start..self.end];
        let valid = match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => bytes.len(),
            Err(e) if e.error_len().is_none() && !self.eof => e.valid_up_to(),
            Err(e) => {
                let at = self.raw_offset + e.valid_up_to() as u64;
                // Controls before the bad byte are the more telling error.
                let rejection = match find_control(&bytes[..e.valid_up_to()]) {
                    Some(i) => self.binary_rejection(self.raw_offset + i as u64),
                    None => self.encoding_rejection(at),
                };
                return Ok(Err(rejection));
            }
        };
        if valid == 0 {
            // Only a partial sequence is buffered and more input is coming.
            if let Err(r) = self.refill()? {
                return Ok(Err(r));
            }
            return self.next_utf8();
        }
        let chunk_offset = self.raw_offset;
        if let Some(i) = find_control(&self.raw[self.start..self.start + valid]) {
            return Ok(Err(self.binary_rejection(chunk_offset + i as u64)));
        }
        let from = self.start;
        self.start += valid;
        self.raw_offset += valid as u64;
        self.text_offset += valid as u64;
        Ok(Ok(Some(&self.raw[from..from + valid])))
    }

    fn next_transcoded(&mut self) -> Result<Chunk<'_>, EngineError> {
        loop {
            if self.end - self.start < 4 && !self.eof {
                if let Err(r) = self.refill()? {
                    return Ok(Err(r));
                }
            }
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(Ok(None));
            };
            let last = self.eof;
            let input = &self.raw[self.start..self.end];
            let (result, read, written) =
                decoder.decode_to_utf8_without_replacement(input, &mut self.decoded, last);
            let consumed_before = self.raw_offset;
            self.start += read;
            self.raw_offset += read as u64;
            if let DecoderResult::Malformed(bad, after) = result {
                let at = consumed_before + read as u64 - u64::from(bad) - u64::from(after);
                return Ok(Err(self.encoding_rejection(at)));
            }
            if last && result == DecoderResult::InputEmpty {
                self.decoder = None;
            }
            if written > 0 {
                let text_offset = self.text_offset;
                self.text_offset += written as u64;
                if let Some(i) = find_control(&self.decoded[..written]) {
                    return Ok(Err(self.binary_rejection(text_offset + i as u64)));
                }
                return Ok(Ok(Some(&self.decoded[..written])));
            }
            if self.decoder.is_none() {
                return Ok(Ok(None));
            }
        }
    }

    fn encoding_rejection(&self, at: u64) -> Rejection {
        if let Some(mime) = self.magic {
            return not_csv(mime);
        }
        let name = match self.source {
            Source::Utf8 => "UTF-8",
            Source::Transcode(enc) => enc.name(),
        };
        Rejection::new(
            Code::InvalidEncoding,
            format!(
                "byte {at} is not valid {name}; save the file as UTF-8, or use a plan with a fallback_encoding"
            ),
        )
        .at_byte(at)
    }

    fn binary_rejection(&self, at: u64) -> Rejection {
        if let Some(mime) = self.magic {
            return not_csv(mime);
        }
        let offset_kind = match self.source {
            Source::Utf8 => "byte",
            Source::Transcode(_) => "UTF-8 byte (after transcoding)",
        };
        Rejection::new(
            Code::BinaryContent,
            format!("{offset_kind} {at} is a NUL or control character; this is not a text file"),
        )
        .at_byte(at)
    }
}

enum Fill {
    TooLarge,
    Io(io::Error),
}

pub(crate) fn not_csv(mime: &str) -> Rejection {
    let mut rejection = Rejection::new(
        Code::NotCsv,
        format!("this is {mime}, not CSV text; export the data as CSV (it was not opened)"),
    );
    rejection.detected_type = Some(mime.to_string());
    rejection
}

/// Index of the first byte that is a C0 control other than TAB, LF or CR.
pub(crate) fn find_control(bytes: &[u8]) -> Option<usize> {
    #[inline(always)]
    fn bad(b: u8) -> bool {
        b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r'
    }
    // A branch-free pass vectorizes; the exact position is only searched when needed.
    let any = bytes
        .chunks(64)
        .any(|block| block.iter().fold(false, |acc, &b| acc | bad(b)));
    if any {
        bytes.iter().position(|&b| bad(b))
    } else {
        None
    }
}

/// Valid UTF-8, allowing a sequence cut off at the end of a sample that is not the whole file.
fn sample_is_utf8(sample: &[u8], complete: bool) -> bool {
    match simdutf8::compat::from_utf8(sample) {
        Ok(_) => true,
        Err(e) => !complete && e.error_len().is_none(),
    }
}

/// Many NULs in alternating positions and none elsewhere: UTF-16 text without a BOM.
fn looks_like_bomless_utf16(sample: &[u8]) -> bool {
    let n = sample.len().min(4096) & !1;
    if n < 8 {
        return false;
    }
    let (mut even, mut odd) = (0, 0);
    for pair in sample[..n].chunks_exact(2) {
        even += usize::from(pair[0] == 0);
        odd += usize::from(pair[1] == 0);
    }
    let pairs = n / 2;
    (even * 10 >= pairs * 9 && odd == 0) || (odd * 10 >= pairs * 9 && even == 0)
}

/// Valid text that is plainly another format: JSON, JSON lines, HTML or XML.
pub(crate) fn text_format(sample: &[u8]) -> Option<&'static str> {
    let trimmed = sample.trim_ascii_start();
    let first = *trimmed.first()?;
    let next = trimmed[1..].trim_ascii_start().first().copied();
    match first {
        b'{' if matches!(next, Some(b'"') | Some(b'}')) => {
            let lines = trimmed
                .split(|&b| b == b'\n')
                .filter(|l| !l.trim_ascii().is_empty())
                .take(3)
                .collect::<Vec<_>>();
            if lines.len() > 1 && lines.iter().all(|l| l.trim_ascii().ends_with(b"}")) {
                Some("application/x-ndjson")
            } else {
                Some("application/json")
            }
        }
        // `[id],[name]` is a real header style, so only JSON-shaped openings count.
        b'[' if matches!(next, Some(b'[' | b'{' | b'"' | b']' | b'0'..=b'9' | b'-')) => {
            Some("application/json")
        }
        b'<' => {
            let lower = trimmed[..trimmed.len().min(512)].to_ascii_lowercase();
            if lower.starts_with(b"<?xml") {
                Some("application/xml")
            } else if lower.starts_with(b"<!doctype html")
                || lower.starts_with(b"<html")
                || lower.starts_with(b"<table")
                || lower.starts_with(b"<body")
                || lower.starts_with(b"<head")
                || lower.starts_with(b"<!--")
            {
                Some("text/html")
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], fallback: Option<&'static Encoding>) -> Result<Vec<u8>, Rejection> {
        let mut reader = TextReader::new(input, u64::MAX);
        reader.start(fallback).unwrap()?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap()? {
            out.extend_from_slice(chunk);
        }
        Ok(out)
    }

    #[test]
    fn utf8_bom_is_stripped() {
        assert_eq!(decode_all(b"\xEF\xBB\xBFa,b\n", None).unwrap(), b"a,b\n");
    }

    #[test]
    fn utf16_with_bom_is_transcoded() {
        let mut le = vec![0xFF, 0xFE];
        for u in "é,ü\n".encode_utf16() {
            le.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(decode_all(&le, None).unwrap(), "é,ü\n".as_bytes());
        let mut be = vec![0xFE, 0xFF];
        for u in "x,y\n".encode_utf16() {
            be.extend_from_slice(&u.to_be_bytes());
        }
        assert_eq!(decode_all(&be, None).unwrap(), b"x,y\n");
    }

    #[test]
    fn invalid_utf8_gives_the_offset() {
        let err = decode_all(b"name\nJos\xE9\n", None).unwrap_err();
        assert_eq!(err.code, Code::InvalidEncoding);
        assert_eq!(err.byte_offset, Some(8));
    }

    #[test]
    fn fallback_transcodes_windows_1252() {
        let out = decode_all(b"name\nJos\xE9\n", Some(encoding_rs::WINDOWS_1252)).unwrap();
        assert_eq!(out, "name\nJosé\n".as_bytes());
    }

    #[test]
    fn utf8_sequence_split_across_reads_is_valid() {
        // A reader that returns one byte at a time splits every multi-byte sequence.
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let text = "ñame,中国人\n".repeat(20_000);
        let mut reader = TextReader::new(OneByte(text.as_bytes()), u64::MAX);
        reader.start(None).unwrap().unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap().unwrap() {
            out.extend_from_slice(chunk);
        }
        assert_eq!(out, text.as_bytes());
    }

    #[test]
    fn nul_is_binary_content_and_magic_names_formats() {
        let err = decode_all(b"a,b\n1,\x002\n", None).unwrap_err();
        assert_eq!(err.code, Code::BinaryContent);
        assert_eq!(err.byte_offset, Some(6));
        let err = decode_all(b"PK\x03\x04\x14\x00\x08\x00\x08\x00", None).unwrap_err();
        assert_eq!(err.code, Code::NotCsv);
        assert!(err.message.contains("application/zip"), "{}", err.message);
    }

    #[test]
    fn magic_misnames_are_ignored_for_text() {
        for text in [
            &b"CWS Group,city\nA,B\n"[..],
            b"ID3 code,x\n1,2\n",
            b"%!ps,x\n1,2\n",
        ] {
            assert_eq!(decode_all(text, None).unwrap(), text);
        }
    }

    #[test]
    fn empty_and_utf32_and_bomless_utf16() {
        assert_eq!(decode_all(b"", None).unwrap_err().code, Code::Empty);
        assert_eq!(
            decode_all(b"\xEF\xBB\xBF", None).unwrap_err().code,
            Code::Empty
        );
        let utf32 = [0xFF, 0xFE, 0, 0, b'a', 0, 0, 0];
        assert_eq!(
            decode_all(&utf32, None).unwrap_err().code,
            Code::UnsupportedEncoding
        );
        let bomless: Vec<u8> = "a,b\n1,2\n".bytes().flat_map(|b| [b, 0]).collect();
        assert_eq!(
            decode_all(&bomless, None).unwrap_err().code,
            Code::UnsupportedEncoding
        );
    }

    #[test]
    fn text_formats_are_named() {
        assert_eq!(text_format(b"[\n  [\"id\"]]"), Some("application/json"));
        assert_eq!(
            text_format(b"{\"a\":1}\n{\"a\":2}\n"),
            Some("application/x-ndjson")
        );
        assert_eq!(text_format(b"<html><body>"), Some("text/html"));
        assert_eq!(text_format(b"[id],[name]\n1,2\n"), None);
        assert_eq!(text_format(b"email,name\n"), None);
    }

    #[test]
    fn size_limit_is_enforced_while_reading() {
        let mut reader = TextReader::new(&b"a,b\n1,2\n"[..], 4);
        let err = reader.start(None).unwrap().unwrap_err();
        assert_eq!(err.code, Code::TooLarge);
    }
}
