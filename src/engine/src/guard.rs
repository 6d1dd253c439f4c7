//! The formula guard (DESIGN §3.4): a cell a spreadsheet would run as a formula gets a leading
//! apostrophe, unless the whole cell is a plain number or looks like a phone number.

/// Bytes that make a spreadsheet treat a cell as a formula (or hide one): a cell that starts with
/// none of them never needs the guard.
#[inline]
pub fn is_trigger(b: u8) -> bool {
    matches!(b, b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
}

/// `true` when `cell` must be written as `'` + `cell`.
#[inline]
pub fn needs_guard(cell: &[u8]) -> bool {
    match cell.first() {
        Some(&b) if is_trigger(b) => !(is_phone_like(cell) || is_number(cell)),
        _ => false,
    }
}

/// Digits, spaces and `+-().`, with at least one digit: `+34 600 000 001`, `(555) 010-9999`.
fn is_phone_like(cell: &[u8]) -> bool {
    cell.iter().any(u8::is_ascii_digit)
        && cell
            .iter()
            .all(|&b| b.is_ascii_digit() || matches!(b, b' ' | b'+' | b'-' | b'(' | b')' | b'.'))
}

/// An optionally signed decimal with an optional exponent: `-12.5`, `+3e8`.
fn is_number(cell: &[u8]) -> bool {
    let s = match cell {
        [b'+' | b'-', rest @ ..] => rest,
        _ => cell,
    };
    let (mantissa, exponent) = match s.iter().position(|&b| b == b'e' || b == b'E') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = mantissa.splitn(2, |&b| b == b'.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next().unwrap_or_default();
    let digits = |p: &[u8]| p.iter().all(u8::is_ascii_digit);
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exponent_ok = match exponent {
        None => true,
        Some([b'+' | b'-', rest @ ..]) | Some(rest) => !rest.is_empty() && digits(rest),
    };
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_guarded() {
        for cell in [
            &b"=HYPERLINK(\"http://x\",\"y\")"[..],
            b"-2+3+cmd|' /C calc'!A0",
            b"@SUM(A1)",
            b"+A1",
            b"=1+1",
            b"\t=cmd",
            b"\r=cmd",
            b"-",
            b"+",
        ] {
            assert!(needs_guard(cell), "{:?}", String::from_utf8_lossy(cell));
        }
    }

    #[test]
    fn numbers_and_phones_survive() {
        for cell in [
            &b"+34 600 000 001"[..],
            b"-12.5",
            b"+3e8",
            b"-1E-5",
            b"+1 (555) 010-9999",
            b"-.5",
            b"hello",
            b"",
            b"a=b",
        ] {
            assert!(!needs_guard(cell), "{:?}", String::from_utf8_lossy(cell));
        }
    }
}
