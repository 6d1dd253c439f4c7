//! Delimiter sniffing: parse a bounded sample with each candidate and keep the one whose records
//! agree on a field count of two or more. Ties go to the earlier candidate.

/// Candidates in order of preference.
pub const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];
/// Records looked at per candidate.
const MAX_RECORDS: usize = 100;

/// The delimiter that best explains `sample`; `complete` says the sample is the whole text.
pub fn sniff_delimiter(sample: &[u8], complete: bool) -> u8 {
    let mut best = (b',', 0.0f64, 0usize);
    for d in CANDIDATES {
        let counts = field_counts(sample, d, complete);
        let Some((mode, freq)) = mode(&counts) else {
            continue;
        };
        if mode < 2 {
            continue;
        }
        let consistency = freq as f64 / counts.len() as f64;
        let better =
            consistency > best.1 + 1e-9 || ((consistency - best.1).abs() <= 1e-9 && mode > best.2);
        if better {
            best = (d, consistency, mode);
        }
    }
    best.0
}

fn field_counts(sample: &[u8], delimiter: u8, complete: bool) -> Vec<usize> {
    let mut reader = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
    let mut out = vec![0u8; sample.len() + 1];
    let mut ends = vec![0usize; 2048];
    let mut counts = Vec::new();
    let mut input = sample;
    let mut eof_sent = false;
    while counts.len() < MAX_RECORDS {
        let (res, nin, _, nend) = reader.read_record(input, &mut out, &mut ends);
        input = &input[nin..];
        match res {
            csv_core::ReadRecordResult::Record => {
                let blank = nend <= 1 && ends.first().copied().unwrap_or(0) == 0;
                if !blank {
                    counts.push(nend);
                }
            }
            csv_core::ReadRecordResult::InputEmpty if !complete => break,
            csv_core::ReadRecordResult::InputEmpty if eof_sent => break,
            csv_core::ReadRecordResult::InputEmpty => eof_sent = true,
            csv_core::ReadRecordResult::End => break,
            // Too many fields for the sample buffer: not a plausible dialect for this sample.
            csv_core::ReadRecordResult::OutputFull | csv_core::ReadRecordResult::OutputEndsFull => {
                return Vec::new()
            }
        }
    }
    counts
}

fn mode(counts: &[usize]) -> Option<(usize, usize)> {
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    let mut best: Option<(usize, usize)> = None;
    for group in sorted.chunk_by(|a, b| a == b) {
        if best.is_none_or(|(_, f)| group.len() > f) {
            best = Some((group[0], group.len()));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_consistent_delimiter() {
        assert_eq!(sniff_delimiter(b"a,b,c\n1,2,3\n", true), b',');
        assert_eq!(sniff_delimiter(b"a;b;c\n1;2,5;3\n", true), b';');
        assert_eq!(sniff_delimiter(b"a\tb\n1\t2\n", true), b'\t');
        assert_eq!(sniff_delimiter(b"a|b\n1|2\n", true), b'|');
        assert_eq!(sniff_delimiter(b"single\ncolumn\n", true), b',');
        assert_eq!(sniff_delimiter(b"\"x;y\",b\n\"1;2\",3\n", true), b',');
    }

    #[test]
    fn a_cut_off_last_record_is_ignored() {
        assert_eq!(sniff_delimiter(b"a;b\n1;2\n3;", false), b';');
    }
}
