//! Field types and formats: how a cell parses, and the typed value that constraints, `enum`,
//! `unique` and keys compare.

use serde_json::{Map, Value};

use super::{err, SchemaError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrFormat {
    Default,
    Email,
    Uri,
    Uuid,
}

/// A date or time format: the default ISO 8601 form, or a strptime-style pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateFormat {
    Default,
    Pattern(Vec<Token>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Literal(char),
    /// %Y: four digits.
    Year,
    /// %y: two digits, 1969-2068 as Python reads them.
    Year2,
    /// %m, %d, %H, %M, %S: one or two digits.
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// %f: one to nine digits of a second.
    Fraction,
    /// %z: Z, +HH:MM, +HHMM.
    Offset,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    String(StrFormat),
    Integer {
        bare: bool,
    },
    Number {
        decimal: char,
        group: Option<char>,
        bare: bool,
    },
    Boolean {
        trues: Vec<String>,
        falses: Vec<String>,
    },
    Date(DateFormat),
    DateTime(DateFormat),
    Time(DateFormat),
    Year,
}

/// A parsed cell. Text borrows the cell (UTF-8, as every cell the engine hands on); the rest is
/// its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Typed<'a> {
    Text(&'a [u8]),
    Int(i128),
    /// An integer beyond i128, as its digits (sign kept, leading zeros dropped).
    BigInt {
        negative: bool,
        /// Without leading zeros, so equal values compare and hash alike.
        digits: &'a str,
    },
    Num(f64),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i64),
    /// Nanoseconds since 1970-01-01T00:00:00Z (naive times read as UTC).
    DateTime(i128),
    /// Nanoseconds since midnight, UTC when an offset is given.
    Time(i64),
    Year(i64),
    /// A key part that is missing or does not parse (primary keys only).
    Null,
}

/// A value from the schema itself (`enum`, `minimum`, `maximum`), owning its text.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Text(String),
    Value(Typed<'static>),
}

impl Bound {
    pub fn is_ordered(&self) -> bool {
        matches!(
            self,
            Bound::Value(
                Typed::Int(_)
                    | Typed::Num(_)
                    | Typed::Date(_)
                    | Typed::DateTime(_)
                    | Typed::Time(_)
                    | Typed::Year(_)
            )
        )
    }

    /// Whether the cell's value equals this one (after parsing: '01' equals 1).
    pub fn same(&self, t: &Typed) -> bool {
        match (self, t) {
            (Bound::Text(s), Typed::Text(c)) => s.as_bytes() == *c,
            (Bound::Value(v), t) => v.eq_value(t),
            _ => false,
        }
    }

    /// `cell < self`, for `minimum`.
    pub fn above(&self, t: &Typed) -> bool {
        matches!(self, Bound::Value(v) if t.cmp_value(v) == Some(std::cmp::Ordering::Less))
    }

    /// `cell > self`, for `maximum`.
    pub fn below(&self, t: &Typed) -> bool {
        matches!(self, Bound::Value(v) if t.cmp_value(v) == Some(std::cmp::Ordering::Greater))
    }
}

impl<'a> Typed<'a> {
    fn eq_value(&self, other: &Typed) -> bool {
        match (self, other) {
            (Typed::Num(a), Typed::Num(b)) => a == b,
            _ => self == other,
        }
    }

    fn cmp_value(&self, other: &Typed) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Typed::Int(a), Typed::Int(b)) => Some(a.cmp(b)),
            (Typed::Num(a), Typed::Num(b)) => a.partial_cmp(b),
            (Typed::Date(a), Typed::Date(b)) => Some(a.cmp(b)),
            (Typed::DateTime(a), Typed::DateTime(b)) => Some(a.cmp(b)),
            (Typed::Time(a), Typed::Time(b)) => Some(a.cmp(b)),
            (Typed::Year(a), Typed::Year(b)) => Some(a.cmp(b)),
            (Typed::BigInt { negative, .. }, Typed::Int(_)) => Some(if *negative {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }),
            (Typed::Int(_), Typed::BigInt { negative, .. }) => Some(if *negative {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Less
            }),
            _ => None,
        }
    }

    /// Characters, for minLength/maxLength (of the cell as written, UTF-8): every byte that
    /// does not continue a character starts one.
    pub fn length(&self, cell: &[u8]) -> usize {
        cell.iter().filter(|&&b| (b as i8) >= -0x40).count()
    }

    /// Feed the value's canonical form to a hasher: equal values hash alike ('0100' as 100).
    /// Each value is its bytes and then a trailer (its type and its length), so a key of
    /// several values reads back one way only, from the end.
    pub fn hash_into<H: std::hash::Hasher>(&self, h: &mut H) {
        let (kind, len): (u64, usize) = match self {
            Typed::Text(s) => {
                h.write(s);
                (0, s.len())
            }
            Typed::Int(i) => {
                h.write(&i.to_le_bytes());
                (1, 16)
            }
            Typed::BigInt { negative, digits } => {
                h.write(digits.as_bytes());
                h.write(&[u8::from(*negative)]);
                (2, digits.len() + 1)
            }
            // -0.0 and 0.0 are equal; every NaN is its own.
            Typed::Num(f) => {
                h.write(&(if *f == 0.0 { 0u64 } else { f.to_bits() }).to_le_bytes());
                (3, 8)
            }
            Typed::Bool(b) => {
                h.write(&[u8::from(*b)]);
                (4, 1)
            }
            Typed::Date(d) => {
                h.write(&d.to_le_bytes());
                (5, 8)
            }
            Typed::DateTime(t) => {
                h.write(&t.to_le_bytes());
                (6, 16)
            }
            Typed::Time(t) => {
                h.write(&t.to_le_bytes());
                (7, 8)
            }
            Typed::Year(y) => {
                h.write(&y.to_le_bytes());
                (8, 8)
            }
            Typed::Null => (9, 0),
        };
        h.write_u64(kind << 56 | len as u64);
    }
}

/// A field's `enum`: its values, and for short strings (up to 7 bytes: codes such as
/// countries and currencies) each packed in an integer, so a cell is looked up without a
/// string comparison.
#[derive(Debug, Clone)]
pub struct Enumeration {
    values: Vec<Bound>,
    packed: Option<Vec<u64>>,
}

impl Enumeration {
    pub fn new(values: Vec<Bound>) -> Enumeration {
        let packed = values
            .iter()
            .map(|v| match v {
                Bound::Text(t) => pack(t.as_bytes()),
                Bound::Value(_) => None,
            })
            .collect();
        Enumeration { values, packed }
    }

    #[inline]
    pub fn contains(&self, t: &Typed) -> bool {
        match (&self.packed, t) {
            (Some(packed), Typed::Text(cell)) => {
                pack(cell).is_some_and(|p| packed.iter().fold(false, |hit, &v| hit | (v == p)))
            }
            _ => self.values.iter().any(|v| v.same(t)),
        }
    }
}

/// Up to 7 bytes and their count in one integer; `None` for anything longer.
#[inline]
fn pack(b: &[u8]) -> Option<u64> {
    if b.len() > 7 {
        return None;
    }
    // Shifted in, not copied to a buffer and read back as one word (a store-forwarding stall).
    let bytes = b
        .iter()
        .rev()
        .fold(0u64, |v, &byte| (v << 8) | u64::from(byte));
    Some(bytes | (b.len() as u64) << 56)
}

/// An integer of at most 18 digits (which fits 64 bits whatever they are) with an optional
/// sign and nothing else; `None` for anything else, which [`Kind::parse`] then reads.
#[inline]
pub fn small_integer(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    Some(if negative { -n } else { n })
}

impl StrFormat {
    /// Whether a cell (UTF-8) is in this format.
    #[inline]
    pub fn accepts(self, cell: &[u8]) -> bool {
        match self {
            StrFormat::Default => true,
            StrFormat::Email => is_email(cell),
            StrFormat::Uri => std::str::from_utf8(cell).is_ok_and(is_uri),
            StrFormat::Uuid => is_uuid(cell),
        }
    }
}

const TRUES: [&str; 4] = ["true", "True", "TRUE", "1"];
const FALSES: [&str; 4] = ["false", "False", "FALSE", "0"];

impl Kind {
    pub fn from_field(obj: &Map<String, Value>, at: &str) -> Result<Kind, SchemaError> {
        let ty = match obj.get("type") {
            None => "string",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(err(format!("{at}/type"), "a type name (string)")),
        };
        let format = match obj.get("format") {
            None => "default",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(err(format!("{at}/format"), "a format (string)")),
        };
        let only = |allowed: &[&str]| {
            for k in [
                "trueValues",
                "falseValues",
                "decimalChar",
                "groupChar",
                "bareNumber",
            ] {
                if obj.contains_key(k) && !allowed.contains(&k) {
                    return Err(err(
                        format!("{at}/{k}"),
                        format!("{k} does not apply to type {ty}"),
                    ));
                }
            }
            Ok(())
        };
        let plain_format = |formats: &[&str]| {
            if formats.contains(&format) {
                Ok(())
            } else {
                Err(err(
                    format!("{at}/format"),
                    format!(
                        "type {ty} has no format {format:?} (only {})",
                        formats.join(", ")
                    ),
                ))
            }
        };
        let bare = || match obj.get("bareNumber") {
            None => Ok(true),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(err(format!("{at}/bareNumber"), "true or false")),
        };
        let kind = match ty {
            "string" => {
                only(&[])?;
                Kind::String(match format {
                    "default" => StrFormat::Default,
                    "email" => StrFormat::Email,
                    "uri" => StrFormat::Uri,
                    "uuid" => StrFormat::Uuid,
                    other => {
                        return Err(err(
                            format!("{at}/format"),
                            format!("string format {other:?} is not one of default, email, uri, uuid"),
                        ))
                    }
                })
            }
            "integer" => {
                only(&["bareNumber"])?;
                plain_format(&["default"])?;
                Kind::Integer { bare: bare()? }
            }
            "number" => {
                only(&["decimalChar", "groupChar", "bareNumber"])?;
                plain_format(&["default"])?;
                let one_char = |k: &str| match obj.get(k) {
                    None => Ok(None),
                    Some(Value::String(s)) if s.chars().count() == 1 => Ok(s.chars().next()),
                    Some(_) => Err(err(format!("{at}/{k}"), "a single character")),
                };
                let decimal = one_char("decimalChar")?.unwrap_or('.');
                let group = one_char("groupChar")?;
                if group == Some(decimal) {
                    return Err(err(
                        format!("{at}/groupChar"),
                        "groupChar and decimalChar must differ",
                    ));
                }
                Kind::Number {
                    decimal,
                    group,
                    bare: bare()?,
                }
            }
            "boolean" => {
                only(&["trueValues", "falseValues"])?;
                plain_format(&["default"])?;
                let list = |k: &str, default: &[&str]| match obj.get(k) {
                    None => Ok(default.iter().map(|s| s.to_string()).collect()),
                    Some(v) => super::strings(v, &format!("{at}/{k}")),
                };
                let trues: Vec<String> = list("trueValues", &TRUES)?;
                let falses: Vec<String> = list("falseValues", &FALSES)?;
                if let Some(both) = trues.iter().find(|t| falses.contains(t)) {
                    return Err(err(
                        format!("{at}/falseValues"),
                        format!("{both:?} is both true and false"),
                    ));
                }
                Kind::Boolean { trues, falses }
            }
            "date" | "datetime" | "time" => {
                only(&[])?;
                let f = match format {
                    "default" => DateFormat::Default,
                    "any" => {
                        return Err(err(
                            format!("{at}/format"),
                            "format \"any\" is not supported; give a pattern such as \"%d/%m/%Y\"",
                        ))
                    }
                    p => DateFormat::Pattern(
                        parse_pattern(p).map_err(|why| err(format!("{at}/format"), why))?,
                    ),
                };
                match ty {
                    "date" => Kind::Date(f),
                    "datetime" => Kind::DateTime(f),
                    _ => Kind::Time(f),
                }
            }
            "year" => {
                only(&[])?;
                plain_format(&["default"])?;
                Kind::Year
            }
            other => {
                return Err(err(
                    format!("{at}/type"),
                    format!("type {other:?} is not supported (string, integer, number, boolean, date, datetime, time, year)"),
                ))
            }
        };
        Ok(kind)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Kind::String(_) => "string",
            Kind::Integer { .. } => "integer",
            Kind::Number { .. } => "number",
            Kind::Boolean { .. } => "boolean",
            Kind::Date(_) => "date",
            Kind::DateTime(_) => "datetime",
            Kind::Time(_) => "time",
            Kind::Year => "year",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Kind::String(StrFormat::Email) => "string (email)".into(),
            Kind::String(StrFormat::Uri) => "string (uri)".into(),
            Kind::String(StrFormat::Uuid) => "string (uuid)".into(),
            Kind::Date(DateFormat::Pattern(_)) => "date (in the schema's pattern)".into(),
            Kind::DateTime(DateFormat::Pattern(_)) => "datetime (in the schema's pattern)".into(),
            Kind::Time(DateFormat::Pattern(_)) => "time (in the schema's pattern)".into(),
            k => k.name().into(),
        }
    }

    /// A value written in the schema (`enum`, `minimum`, `maximum`): a JSON string in the
    /// field's lexical form, or a JSON number or boolean for those types.
    pub fn parse_json(&self, v: &Value) -> Result<Bound, String> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n)
                if matches!(
                    self,
                    Kind::Integer { .. } | Kind::Number { .. } | Kind::Year
                ) =>
            {
                n.to_string()
            }
            Value::Bool(b) if matches!(self, Kind::Boolean { .. }) => {
                return Ok(Bound::Value(Typed::Bool(*b)))
            }
            _ => return Err(format!("a {} value", self.name())),
        };
        if let Kind::String(_) = self {
            return Ok(Bound::Text(text));
        }
        // A JSON number for a number field is in JSON's own form, whatever decimalChar says.
        let parsed = match (self, v) {
            (Kind::Number { .. }, Value::Number(n)) => n.as_f64().map(Typed::Num),
            (Kind::Integer { .. }, Value::Number(n)) => {
                n.as_i64().map(|i| Typed::Int(i128::from(i)))
            }
            _ => self.parse(text.as_bytes()).and_then(|t| t.to_static()),
        };
        parsed
            .map(Bound::Value)
            .ok_or_else(|| format!("{text:?} is not a valid {}", self.name()))
    }

    /// Parse one cell (not a missing value; UTF-8). `None`: a type error.
    #[inline]
    pub fn parse<'a>(&self, cell: &'a [u8]) -> Option<Typed<'a>> {
        // Strings and integers are read as bytes; the rest as text.
        let text = || std::str::from_utf8(cell).ok();
        match self {
            Kind::String(f) => f.accepts(cell).then_some(Typed::Text(cell)),
            Kind::Integer { bare } => {
                let s = cell.trim_ascii();
                let s = if *bare {
                    s
                } else {
                    let start = s
                        .iter()
                        .position(|&b| b.is_ascii_digit() || b == b'-' || b == b'+')
                        .unwrap_or(s.len());
                    let end = s
                        .iter()
                        .rposition(u8::is_ascii_digit)
                        .map_or(start, |e| (e + 1).max(start));
                    &s[start..end]
                };
                parse_integer(s)
            }
            Kind::Number {
                decimal,
                group,
                bare,
            } => parse_number(text()?, *decimal, *group, *bare).map(Typed::Num),
            Kind::Boolean { trues, falses } => {
                if trues.iter().any(|t| t.as_bytes() == cell) {
                    Some(Typed::Bool(true))
                } else if falses.iter().any(|f| f.as_bytes() == cell) {
                    Some(Typed::Bool(false))
                } else {
                    None
                }
            }
            Kind::Date(f) => {
                let p = match f {
                    DateFormat::Default => parse_tokens(text()?, ISO_DATE, true)?,
                    DateFormat::Pattern(t) => parse_tokens(text()?, t, false)?,
                };
                Some(Typed::Date(days_from_civil(p.year?, p.month?, p.day?)?))
            }
            Kind::DateTime(f) => {
                let p = match f {
                    DateFormat::Default => parse_tokens(text()?, ISO_DATETIME, true)?,
                    DateFormat::Pattern(t) => parse_tokens(text()?, t, false)?,
                };
                let days = days_from_civil(p.year?, p.month.unwrap_or(1), p.day.unwrap_or(1))?;
                let secs = i128::from(days) * 86_400 + i128::from(p.seconds_of_day()?)
                    - i128::from(p.offset);
                Some(Typed::DateTime(secs * 1_000_000_000 + i128::from(p.nanos)))
            }
            Kind::Time(f) => {
                let p = match f {
                    DateFormat::Default => parse_tokens(text()?, ISO_TIME, true)?,
                    DateFormat::Pattern(t) => parse_tokens(text()?, t, false)?,
                };
                let secs = (p.seconds_of_day()? - p.offset).rem_euclid(86_400);
                Some(Typed::Time(secs * 1_000_000_000 + i64::from(p.nanos)))
            }
            Kind::Year => (cell.len() == 4 && cell.iter().all(u8::is_ascii_digit))
                .then(|| Typed::Year(cell.iter().fold(0, |y, &d| y * 10 + i64::from(d - b'0')))),
        }
    }
}

impl Kind {
    /// Write `v` the way this field reads it: Table Schema's formatter, the inverse of
    /// [`Kind::parse`] (the first of `trueValues`/`falseValues`; `decimalChar` and `groupChar`;
    /// dates and times in the field's pattern, UTC). `None` when the format cannot express the
    /// value: a year outside 0-9999, a pattern without a part the value needs, a value of
    /// another type.
    pub fn format(&self, v: &Typed) -> Option<String> {
        match (self, v) {
            (Kind::String(_), Typed::Text(s)) => String::from_utf8(s.to_vec()).ok(),
            (Kind::Integer { .. }, Typed::Int(i)) => Some(i.to_string()),
            (Kind::Integer { .. }, Typed::BigInt { negative, digits }) => {
                Some(format!("{}{digits}", if *negative { "-" } else { "" }))
            }
            (Kind::Number { decimal, group, .. }, Typed::Num(f)) => {
                Some(format_number(*f, *decimal, *group))
            }
            (Kind::Boolean { trues, falses }, Typed::Bool(b)) => {
                if *b { trues.first() } else { falses.first() }.cloned()
            }
            (Kind::Date(f), Typed::Date(days)) => {
                let (year, month, day) = civil_from_days(*days);
                let when = When {
                    year,
                    month,
                    day,
                    ..When::default()
                };
                match f {
                    DateFormat::Default => when.write(ISO_DATE),
                    DateFormat::Pattern(t) => when.needs(t, true).then(|| when.write(t))?,
                }
            }
            (Kind::DateTime(f), Typed::DateTime(ns)) => {
                let secs = ns.div_euclid(1_000_000_000);
                let nanos = ns.rem_euclid(1_000_000_000) as u32;
                let days = i64::try_from(secs.div_euclid(86_400)).ok()?;
                let (year, month, day) = civil_from_days(days);
                let when = When {
                    year,
                    month,
                    day,
                    nanos,
                    ..When::time_of_day(secs.rem_euclid(86_400) as u32)
                };
                match f {
                    DateFormat::Default => when.write(ISO_DATETIME),
                    DateFormat::Pattern(t) => when.needs(t, false).then(|| when.write(t))?,
                }
            }
            (Kind::Time(f), Typed::Time(ns)) => {
                let nanos = ns.rem_euclid(1_000_000_000) as u32;
                let when = When {
                    nanos,
                    ..When::time_of_day((ns.div_euclid(1_000_000_000)).rem_euclid(86_400) as u32)
                };
                match f {
                    DateFormat::Default => when.write(ISO_TIME),
                    DateFormat::Pattern(t) => when.needs(t, false).then(|| when.write(t))?,
                }
            }
            (Kind::Year, Typed::Year(y)) => (0..=9999).contains(y).then(|| format!("{y:04}")),
            _ => None,
        }
    }
}

/// A number in the field's lexical form: Rust's shortest round-trip digits, the decimal mark
/// replaced and the integer part grouped in threes.
fn format_number(f: f64, decimal: char, group: Option<char>) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "INF".into() } else { "-INF".into() };
    }
    let plain = format!("{f}");
    let (sign, rest) = match plain.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", plain.as_str()),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let mut out = String::with_capacity(plain.len() + plain.len() / 3 + 1);
    out.push_str(sign);
    for (i, c) in int.chars().enumerate() {
        if let Some(g) = group {
            if i > 0 && (int.len() - i) % 3 == 0 {
                out.push(g);
            }
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push(decimal);
        out.push_str(frac);
    }
    out
}

/// A date and time of day, to write by tokens (UTC).
#[derive(Debug, Clone, Copy)]
struct When {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
}

impl Default for When {
    fn default() -> Self {
        When {
            year: 1970,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            nanos: 0,
        }
    }
}

impl When {
    fn time_of_day(secs: u32) -> When {
        When {
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
            ..When::default()
        }
    }

    /// Whether `tokens` can express this value: every part that [`parse_tokens`] would
    /// otherwise default is either written or at its default, and the year fits its token.
    fn needs(&self, tokens: &[Token], date_parts_required: bool) -> bool {
        let has = |t: Token| tokens.contains(&t);
        let year_ok = if has(Year2) {
            (1969..=2068).contains(&self.year) && (!has(Year) || (0..=9999).contains(&self.year))
        } else {
            (0..=9999).contains(&self.year)
        };
        let has_year = has(Year) || has(Year2);
        year_ok
            && (has_year || (!date_parts_required && self.year == 1970))
            && (has(Month) || (!date_parts_required && self.month == 1))
            && (has(Day) || (!date_parts_required && self.day == 1))
            && (has(Hour) || self.hour == 0)
            && (has(Minute) || self.minute == 0)
            && (has(Second) || self.second == 0)
            && (has(Fraction) || self.nanos == 0)
    }

    fn write(&self, tokens: &[Token]) -> Option<String> {
        use std::fmt::Write;
        let mut out = String::new();
        for t in tokens {
            let _ = match *t {
                Literal(c) => {
                    out.push(c);
                    Ok(())
                }
                Year => {
                    if !(0..=9999).contains(&self.year) {
                        return None;
                    }
                    write!(out, "{:04}", self.year)
                }
                Year2 => write!(out, "{:02}", self.year.rem_euclid(100)),
                Month => write!(out, "{:02}", self.month),
                Day => write!(out, "{:02}", self.day),
                Hour => write!(out, "{:02}", self.hour),
                Minute => write!(out, "{:02}", self.minute),
                Second => write!(out, "{:02}", self.second),
                Fraction => {
                    // The ISO forms write a fraction only when there is one.
                    if tokens == ISO_TIME || tokens == ISO_DATETIME {
                        if self.nanos == 0 {
                            continue;
                        }
                        out.push('.');
                    }
                    write!(out, "{:09}", self.nanos)
                }
                Offset => {
                    out.push('Z');
                    Ok(())
                }
            };
        }
        Some(out)
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// civil_from_days, the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Typed<'_> {
    fn to_static(self) -> Option<Typed<'static>> {
        Some(match self {
            Typed::Text(_) | Typed::BigInt { .. } | Typed::Null => return None,
            Typed::Int(i) => Typed::Int(i),
            Typed::Num(f) => Typed::Num(f),
            Typed::Bool(b) => Typed::Bool(b),
            Typed::Date(d) => Typed::Date(d),
            Typed::DateTime(t) => Typed::DateTime(t),
            Typed::Time(t) => Typed::Time(t),
            Typed::Year(y) => Typed::Year(y),
        })
    }
}

fn parse_integer(s: &[u8]) -> Option<Typed<'_>> {
    if let Some(n) = small_integer(s) {
        return Some(Typed::Int(i128::from(n)));
    }
    let digits = s
        .strip_prefix(b"-")
        .or_else(|| s.strip_prefix(b"+"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Digits and a sign: ASCII.
    let s = std::str::from_utf8(s).ok()?;
    match s.parse::<i128>() {
        Ok(i) => Some(Typed::Int(i)),
        Err(_) => Some(Typed::BigInt {
            negative: s.starts_with('-'),
            digits: s.trim_start_matches(['-', '+']).trim_start_matches('0'),
        }),
    }
}

fn parse_number(cell: &str, decimal: char, group: Option<char>, bare: bool) -> Option<f64> {
    let s = cell.trim_matches(|c: char| c.is_ascii_whitespace());
    let s = if bare {
        s
    } else {
        let numeric = |c: char| c.is_ascii_digit() || c == decimal;
        let start = s
            .char_indices()
            .find(|&(_, c)| numeric(c) || c == '-' || c == '+')
            .map_or(s.len(), |(i, _)| i);
        let end = s
            .char_indices()
            .rev()
            .find(|&(_, c)| numeric(c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        if start >= end {
            return None;
        }
        &s[start..end]
    };
    let lower = s.to_ascii_lowercase();
    let word = lower.trim_start_matches(['+', '-']);
    if matches!(word, "nan" | "inf" | "infinity") {
        return lower.parse().ok();
    }
    // A number in its lexical form: sign, digits with an optional decimal part, exponent.
    let mut normal = String::with_capacity(s.len());
    for c in s.chars() {
        if Some(c) == group {
            continue;
        }
        if c == decimal {
            normal.push('.');
        } else if c.is_ascii_digit() || matches!(c, '+' | '-' | 'e' | 'E') {
            normal.push(c);
        } else {
            return None;
        }
    }
    if !normal.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    normal.parse().ok()
}

// ---- dates and times -------------------------------------------------------------------

use Token::*;
const ISO_DATE: &[Token] = &[Year, Literal('-'), Month, Literal('-'), Day];
const ISO_TIME: &[Token] = &[
    Hour,
    Literal(':'),
    Minute,
    Literal(':'),
    Second,
    Fraction,
    Offset,
];
const ISO_DATETIME: &[Token] = &[
    Year,
    Literal('-'),
    Month,
    Literal('-'),
    Day,
    Literal('T'),
    Hour,
    Literal(':'),
    Minute,
    Literal(':'),
    Second,
    Fraction,
    Offset,
];

fn parse_pattern(p: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            tokens.push(Literal(c));
            continue;
        }
        tokens.push(match chars.next() {
            Some('Y') => Year,
            Some('y') => Year2,
            Some('m') => Month,
            Some('d') => Day,
            Some('H') => Hour,
            Some('M') => Minute,
            Some('S') => Second,
            Some('f') => Fraction,
            Some('z') => Offset,
            Some('%') => Literal('%'),
            Some(other) => {
                return Err(format!(
                    "%{other} is not supported (only %Y %y %m %d %H %M %S %f %z %%)"
                ))
            }
            None => return Err("the pattern ends in a lone %".into()),
        });
    }
    if tokens.len() > 64 {
        return Err("the pattern is too long".into());
    }
    Ok(tokens)
}

#[derive(Debug, Default)]
struct Parts {
    year: Option<i64>,
    month: Option<u32>,
    day: Option<u32>,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    /// Seconds east of UTC.
    offset: i64,
}

impl Parts {
    fn seconds_of_day(&self) -> Option<i64> {
        (self.hour < 24 && self.minute < 60 && self.second < 60)
            .then(|| i64::from(self.hour * 3600 + self.minute * 60 + self.second))
    }
}

/// Read `cell` by `tokens`. `strict`: the ISO forms, where numbers have their full width and
/// the fraction and offset are optional; patterns take 1-2 digit fields as strptime does.
fn parse_tokens(cell: &str, tokens: &[Token], strict: bool) -> Option<Parts> {
    let b = cell.as_bytes();
    let mut i = 0;
    let mut p = Parts::default();
    let digits = |i: &mut usize, min: usize, max: usize| -> Option<u32> {
        let start = *i;
        while *i < b.len() && *i - start < max && b[*i].is_ascii_digit() {
            *i += 1;
        }
        if *i - start < min {
            return None;
        }
        cell[start..*i].parse().ok()
    };
    let (lo, hi) = if strict { (2, 2) } else { (1, 2) };
    for t in tokens {
        match *t {
            Literal(c) => {
                let mut buf = [0u8; 4];
                let l = c.encode_utf8(&mut buf).as_bytes();
                if !b[i..].starts_with(l) {
                    return None;
                }
                i += l.len();
            }
            Year => p.year = Some(i64::from(digits(&mut i, 4, 4)?)),
            Year2 => {
                let y = i64::from(digits(&mut i, 2, 2)?);
                p.year = Some(if y < 69 { 2000 + y } else { 1900 + y });
            }
            Month => p.month = Some(digits(&mut i, lo, hi)?),
            Day => p.day = Some(digits(&mut i, lo, hi)?),
            Hour => p.hour = digits(&mut i, lo, hi)?,
            Minute => p.minute = digits(&mut i, lo, hi)?,
            Second => p.second = digits(&mut i, lo, hi)?,
            Fraction => {
                // Optional in the ISO forms ("." then 1-9 digits); required in a pattern.
                if strict {
                    if b.get(i) == Some(&b'.') {
                        i += 1;
                    } else {
                        continue;
                    }
                }
                let start = i;
                let f = digits(&mut i, 1, 9)?;
                p.nanos = f * 10u32.pow(9 - (i - start) as u32);
            }
            Offset => match b.get(i) {
                None if strict => {}
                Some(b'Z') => i += 1,
                Some(&s @ (b'+' | b'-')) => {
                    i += 1;
                    let h = digits(&mut i, 2, 2)?;
                    if b.get(i) == Some(&b':') {
                        i += 1;
                    }
                    let m = digits(&mut i, 2, 2)?;
                    if h > 23 || m > 59 {
                        return None;
                    }
                    let secs = i64::from(h * 3600 + m * 60);
                    p.offset = if s == b'-' { -secs } else { secs };
                }
                _ => return None,
            },
        }
    }
    (i == b.len()).then_some(p)
}

/// Days since 1970-01-01 of a proleptic Gregorian date, checking the calendar.
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let len = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > len[month as usize - 1] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

// ---- string formats --------------------------------------------------------------------

/// A plausible address: one `@`; a dot-atom local part (RFC 5322's characters, and letters and
/// digits of any script, as RFC 6531 allows); a domain of at least two labels of letters, digits
/// and hyphens, whose last (the TLD) is letters only, or `xn--` punycode.
fn is_email(s: &[u8]) -> bool {
    let Some(at) = memchr::memchr(b'@', s) else {
        return false;
    };
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.is_empty() || local.len() > 64 || domain.len() > 253 {
        return false;
    }
    // One pass each, without branches: a byte's class, and whether it may follow the one
    // before (a position "before the start" counts as a dot).
    let (mut bad, mut prev, mut wide) = (0, DOT, 0);
    for &b in local {
        let c = LOCAL_CLASS[usize::from(b)];
        // atext runs joined by single dots, no dot at either end.
        bad |= (c & BAD) | (c & prev & DOT);
        wide |= c;
        prev = c;
    }
    bad |= prev & DOT;
    prev = DOT;
    for &b in domain {
        let c = DOMAIN_CLASS[usize::from(b)];
        // Labels of letters, digits and inner hyphens: no dot or hyphen after a dot, no dot
        // after a hyphen.
        bad |= (c & BAD) | (prev & DOT & ((c | (c >> 1)) & DOT)) | ((prev >> 1) & c & DOT);
        wide |= c;
        prev = c;
    }
    bad |= prev & (DOT | HYPHEN);
    if bad != 0 {
        return false;
    }
    if wide & WIDE != 0
        && !(other_scripts_alphanumeric(local) && other_scripts_alphanumeric(domain))
    {
        return false;
    }
    // At least two labels, each at most 63 bytes.
    let Some(last_dot) = memchr::memrchr(b'.', domain) else {
        return false;
    };
    if domain.len() > 63 && domain.split(|&b| b == b'.').any(|l| l.len() > 63) {
        return false;
    }
    // The TLD: letters only (of any script), at least two, or punycode.
    let last = &domain[last_dot + 1..];
    let tld_ok = if last.is_ascii() {
        last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
    } else {
        std::str::from_utf8(last)
            .is_ok_and(|l| l.chars().count() >= 2 && l.chars().all(char::is_alphabetic))
    };
    tld_ok || last.starts_with(b"xn--")
}

/// Byte classes for [`is_email`]: a dot, a hyphen, a byte of a character beyond ASCII, a byte
/// that may not appear; anything else is a letter, digit or other allowed character.
const DOT: u8 = 1;
const HYPHEN: u8 = 2;
const WIDE: u8 = 4;
const BAD: u8 = 8;

const fn classes(allowed: &[bool; 128]) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = if b >= 0x80 {
            WIDE
        } else if b == b'.' as usize {
            DOT
        } else if b == b'-' as usize {
            HYPHEN
        } else if allowed[b] {
            0
        } else {
            BAD
        };
        b += 1;
    }
    t
}

/// The local part: RFC 5322's atext and the dot (a hyphen is atext there).
const LOCAL_CLASS: [u8; 256] = {
    let mut t = classes(&ATEXT);
    t[b'-' as usize] = 0;
    t
};
/// The domain: letters, digits, hyphens and dots.
const DOMAIN_CLASS: [u8; 256] = classes(&LABEL);

/// Every character beyond ASCII is a letter or digit (of any script). The Latin letters of
/// U+00C0 to U+024F (all but × and ÷) are known without a table lookup.
fn other_scripts_alphanumeric(s: &[u8]) -> bool {
    let mut i = 0;
    while let Some(off) = s[i..].iter().position(|&b| b >= 0x80) {
        let at = i + off;
        let (lead, next) = (s[at], s.get(at + 1).copied().unwrap_or(0));
        let latin = (matches!(lead, 0xC3..=0xC8) && matches!(next, 0x80..=0xBF))
            || (lead == 0xC9 && matches!(next, 0x80..=0x8F));
        if latin && !(lead == 0xC3 && matches!(next, 0x97 | 0xB7)) {
            i = at + 2;
            continue;
        }
        let width = match lead {
            0xF0.. => 4,
            0xE0.. => 3,
            _ => 2,
        };
        let ok = s
            .get(at..at + width)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.chars().next())
            .is_some_and(char::is_alphanumeric);
        if !ok {
            return false;
        }
        i = at + width;
    }
    true
}

/// ASCII letters and digits, and `extra`.
const fn ascii_set(extra: &[u8]) -> [bool; 128] {
    let mut t = [false; 128];
    let mut b = 0;
    while b < 128 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// RFC 5322's atext and the dot: an email's local part.
const ATEXT: [bool; 128] = ascii_set(b"!#$%&'*+/=?^_`{|}~.-");
/// A domain label's characters.
const LABEL: [bool; 128] = ascii_set(b"-");

/// An absolute URI by RFC 3986's grammar, at the character level: a scheme, `:`, and the rest
/// made of unreserved, reserved and percent-encoded characters.
fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let b = scheme.as_bytes();
    if b.is_empty()
        || !b[0].is_ascii_alphabetic()
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        || rest.is_empty()
    {
        return false;
    }
    let r = rest.as_bytes();
    let mut i = 0;
    while i < r.len() {
        let c = r[i];
        if c == b'%' {
            if i + 2 >= r.len() {
                return false;
            }
            if !(r[i + 1].is_ascii_hexdigit() && r[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(c.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&c)) {
            return false;
        }
        i += 1;
    }
    true
}

/// The canonical 8-4-4-4-12 hex form (either case).
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_checked_against_the_calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2024, 2, 29), Some(19_782));
        assert_eq!(days_from_civil(2023, 2, 29), None);
        assert_eq!(days_from_civil(2024, 13, 1), None);
        let d = Kind::Date(DateFormat::Default);
        assert!(d.parse(b"2024-01-05").is_some());
        assert!(d.parse(b"2024-1-5").is_none());
        assert!(d.parse(b"20240105").is_none());
        let custom = Kind::Date(DateFormat::Pattern(parse_pattern("%d/%m/%Y").unwrap()));
        assert_eq!(custom.parse(b"05/01/2024"), d.parse(b"2024-01-05"));
        assert_eq!(custom.parse(b"5/1/2024"), d.parse(b"2024-01-05"));
    }

    #[test]
    fn times_take_fractions_and_offsets() {
        let t = Kind::Time(DateFormat::Default);
        assert!(t.parse(b"10:20:30").is_some());
        assert!(t.parse(b"10:20:30.123").is_some());
        assert_eq!(t.parse(b"10:20:30+01:00"), t.parse(b"09:20:30Z"));
        assert!(t.parse(b"24:00:00").is_none());
        assert!(t.parse(b"10:20").is_none());
        let dt = Kind::DateTime(DateFormat::Default);
        assert!(dt.parse(b"2024-01-05T10:20:30Z").is_some());
        assert!(dt.parse(b"2024-01-05 10:20:30").is_none());
        assert!(dt.parse(b"2024-01-05").is_none());
    }

    #[test]
    fn numbers_in_their_lexical_forms() {
        let n = |d, g, bare, s| parse_number(s, d, g, bare);
        assert_eq!(n('.', None, true, "1e3"), Some(1000.0));
        assert_eq!(n('.', None, true, ".5"), Some(0.5));
        assert_eq!(n('.', None, true, "1,000"), None);
        assert_eq!(n('.', Some(','), true, "1,000.5"), Some(1000.5));
        assert_eq!(n(',', Some('.'), true, "1.000,5"), Some(1000.5));
        assert_eq!(n('.', None, false, "€95"), Some(95.0));
        assert_eq!(n('.', None, false, "12.5%"), Some(12.5));
        assert_eq!(n('.', None, false, "x%"), None);
        assert!(n('.', None, true, "NaN").unwrap().is_nan());
        assert_eq!(n('.', None, true, "-INF"), Some(f64::NEG_INFINITY));
    }

    #[test]
    fn string_formats() {
        assert!(is_email("ana@example.com".as_bytes()));
        assert!(!is_email("dave@example".as_bytes()));
        assert!(!is_email("a b@example.com".as_bytes()));
        assert!(is_email("chloé.dubois@example.com".as_bytes()));
        assert!(!is_email("ana@@example.com".as_bytes()));
        assert!(!is_email("ana@example.c0m".as_bytes()));
        assert!(!is_email("ana@-example.com".as_bytes()));
        assert!(!is_email("ana@example-.com".as_bytes()));
        assert!(!is_email("ana@example..com".as_bytes()));
        assert!(!is_email("ana@example.c".as_bytes()));
        assert!(is_email("ana@exämple.de".as_bytes()));
        assert!(is_email("ana@example.xn--p1ai".as_bytes()));
        assert!(!is_email("ana@example.xn--".as_bytes()));
        assert!(!is_email("ana@example.xn--p1ai-".as_bytes()));
        assert!(!is_email(format!("ana@{}.com", "a".repeat(64)).as_bytes()));
        assert!(is_email(format!("ana@{}.com", "a".repeat(63)).as_bytes()));
        assert!(is_email("ana@пример.рф".as_bytes()));
        assert!(!is_email("ana@example.р".as_bytes()));
        assert!(is_uri("https://example.com/a?b=c"));
        assert!(is_uri("mailto:ana@example.com"));
        assert!(!is_uri("www.example.com"));
        assert!(!is_uri("/relative/path"));
        assert!(is_uuid(b"00000000-0000-0000-0000-000000000000"));
        assert!(!is_uuid(b"{00000000-0000-0000-0000-000000000000}"));
    }

    /// The email check as first written, a set of whole-string tests: the one-pass [`is_email`]
    /// must agree with it on every string.
    fn is_email_reference(s: &str) -> bool {
        let all_chars = |s: &str, set: &[bool; 128]| {
            s.chars().all(|c| match u8::try_from(c) {
                Ok(b) if b < 128 => set[usize::from(b)],
                _ => c.is_alphanumeric(),
            })
        };
        const LABEL_OR_DOT: [bool; 128] = ascii_set(b"-.");
        let Some(at) = s.find('@') else {
            return false;
        };
        let (local, domain) = (&s[..at], &s[at + 1..]);
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && all_chars(local, &ATEXT);
        if !local_ok || domain.len() > 253 {
            return false;
        }
        let label_ok =
            |l: &str| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-');
        let labels: Vec<&str> = domain.split('.').collect();
        if !labels.iter().all(|l| label_ok(l)) {
            return false;
        }
        let last = labels[labels.len() - 1];
        let tld_ok = last.chars().count() >= 2 && last.chars().all(char::is_alphabetic);
        labels.len() >= 2
            && all_chars(domain, &LABEL_OR_DOT)
            && (tld_ok || last.starts_with("xn--"))
    }

    #[test]
    fn short_enums_match_as_packed_integers_as_they_do_as_strings() {
        let values = ["ES", "GB", "", "a\u{0}", "seven77", "eight888", "é"];
        let e = Enumeration::new(values.iter().map(|v| Bound::Text(v.to_string())).collect());
        assert!(
            e.packed.is_none(),
            "an 8-byte value leaves the strings to compare"
        );
        let short = Enumeration::new(
            values[..5]
                .iter()
                .map(|v| Bound::Text(v.to_string()))
                .collect(),
        );
        assert!(short.packed.is_some());
        for cell in [
            "ES",
            "GB",
            "",
            "a",
            "a\u{0}",
            "a\u{0}\u{0}",
            "E",
            "ESP",
            "seven77",
            "seven7",
            "eight888",
            "é",
            "e",
        ] {
            let t = Typed::Text(cell.as_bytes());
            assert_eq!(e.contains(&t), values.contains(&cell), "{cell:?}");
            assert_eq!(short.contains(&t), values[..5].contains(&cell), "{cell:?}");
        }
    }

    #[test]
    fn integers_beyond_i128_compare_without_their_leading_zeros() {
        let k = Kind::Integer { bare: true };
        let big = "340282366920938463463374607431768211456";
        assert_eq!(
            k.parse(big.as_bytes()),
            k.parse(format!("00{big}").as_bytes())
        );
        assert_eq!(
            k.parse(format!("-{big}").as_bytes()),
            k.parse(format!("-0{big}").as_bytes())
        );
        assert_ne!(
            k.parse(big.as_bytes()),
            k.parse(format!("-{big}").as_bytes())
        );
        let cell = format!("-0{big}");
        let t = k.parse(cell.as_bytes()).unwrap();
        assert_eq!(k.format(&t), Some(format!("-{big}")));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_no_letters() {
        // The engine hands on UTF-8 only; the check still must not panic on anything else.
        for bad in [
            &b"a@b\xC3"[..],
            b"\xC3",
            b"\xC9",
            b"\xC3a",
            b"a@b\xE2\x82",
            b"\xF0",
        ] {
            assert!(!other_scripts_alphanumeric(bad));
            let _ = is_email(bad);
        }
    }

    #[test]
    fn latin_letters_are_known_without_a_lookup() {
        for c in '\u{80}'..='\u{7ff}' {
            let mut buf = [0u8; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            assert_eq!(
                other_scripts_alphanumeric(bytes),
                c.is_alphanumeric(),
                "{c:?}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        #[test]
        fn the_one_pass_email_check_agrees_with_the_reference(
            s in "[a-zA-Z0-9._+@-]{0,12}|[a-zé.-]{1,8}@[a-zé0-9.-]{0,10}\\.[a-zр1-]{0,4}|[a-z]{0,70}@[a-z-]{0,70}\\.(com|c|xn--p1ai|рф)|.{0,20}"
        ) {
            proptest::prop_assert_eq!(is_email(s.as_bytes()), is_email_reference(&s), "{:?}", s);
        }
    }
}
