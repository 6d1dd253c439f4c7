//! Frictionless Table Schema, the subset Airlock supports: fields with types and formats,
//! constraints, `primaryKey`, `missingValues`, `fieldsMatch`, plus two Airlock additions for
//! header mapping (case-insensitive matching and per-field `aliases`).
//!
//! A schema is JSON; [`Schema::parse`] checks it completely and says where it is wrong (a JSON
//! pointer), so a bad schema is the caller's error before any worker starts. The compiled
//! [`Schema`] is what the engine checks each row against.

mod keys;
mod pattern;
mod value;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

pub use keys::{Digester, Insert, KeySet, GROWTH_SHARE};
use value::Bound;
pub use value::{DateFormat, Kind, StrFormat, Token, Typed};

/// The longest pattern accepted, in bytes, and the compiled size each may take: patterns run
/// inside the worker on every cell, on a linear-time engine, in bounded memory.
pub const PATTERN_MAX_BYTES: usize = 1024;
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;
const PATTERN_DFA_LIMIT: usize = 64 * 1024;
/// Fields a schema may have.
pub const MAX_FIELDS: usize = 1024;
/// The longest field name, and all names together, in bytes: the clean output's header carries
/// the names, and must stay within the output bound the parent enforces (3 × the input plus
/// 64 KiB).
pub const MAX_NAME_BYTES: usize = 256;
pub const MAX_NAMES_BYTES: usize = 16 * 1024;

/// Draw, on this thread, the random keys that key digests and hash maps use (the standard library
/// reads them from the kernel on a thread's first use, and keeps them per thread). The worker
/// calls this on each of its threads before it locks down, since `getrandom` is not on its
/// allowlist: the `regex` crate's per-thread caches hash with them too.
pub fn prepare() {
    let _ = std::collections::hash_map::RandomState::new();
}

/// A schema that does not load: where (a JSON pointer into it) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the schema is invalid at {pointer}: {message}")]
pub struct SchemaError {
    pub pointer: String,
    pub message: String,
}

fn err(pointer: impl Into<String>, message: impl Into<String>) -> SchemaError {
    SchemaError {
        pointer: pointer.into(),
        message: message.into(),
    }
}

/// How the header must match the schema's fields (Data Package v2 `fieldsMatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldsMatch {
    /// The same names in the same order.
    Exact,
    /// The same names, in any order.
    Equal,
    /// Every schema field is in the data; the data may have more columns.
    Subset,
    /// Every data column is in the schema; the schema may have fields the data lacks.
    Superset,
    /// At least one field is in the data.
    Partial,
}

/// One field, compiled.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    aliases: Vec<String>,
    kind: Kind,
    required: bool,
    unique: bool,
    min_length: Option<usize>,
    max_length: Option<usize>,
    minimum: Option<Bound>,
    maximum: Option<Bound>,
    pattern: Option<pattern::Pattern>,
    enumeration: Option<value::Enumeration>,
    /// [`Field::accepts_any`], worked out once.
    plain: bool,
}

/// A compiled schema.
#[derive(Debug, Clone)]
pub struct Schema {
    pub fields: Vec<Field>,
    missing_values: Vec<String>,
    /// Field indices of the primary key, in key order.
    primary_key: Vec<usize>,
    fields_match: FieldsMatch,
    /// Match header labels to names and aliases ignoring case (and surrounding spaces).
    case_insensitive: bool,
}

/// What one cell broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The cell does not parse as the field's type or format.
    Type,
    /// A constraint: which one, and a message without the cell's content.
    Constraint(&'static str),
}

impl Schema {
    /// Load a schema from JSON text, checking every part of it.
    pub fn parse(text: &str) -> Result<Schema, SchemaError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            err(
                "",
                format!("not JSON (line {}, column {}): {e}", e.line(), e.column()),
            )
        })?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Schema, SchemaError> {
        let obj = value
            .as_object()
            .ok_or_else(|| err("", "a schema is a JSON object"))?;
        known_keys(
            obj,
            "",
            &[
                "fields",
                "missingValues",
                "primaryKey",
                "fieldsMatch",
                "headerCase",
                "foreignKeys",
                "$schema",
                "name",
                "title",
                "description",
            ],
        )?;
        if obj.contains_key("foreignKeys") {
            return Err(err("/foreignKeys", "foreign keys are not supported"));
        }
        let missing_values = match obj.get("missingValues") {
            None => vec![String::new()],
            Some(v) => strings(v, "/missingValues")?,
        };
        let list = obj
            .get("fields")
            .ok_or_else(|| err("/fields", "a schema needs a \"fields\" array"))?
            .as_array()
            .ok_or_else(|| err("/fields", "\"fields\" is an array of field objects"))?;
        if list.is_empty() {
            return Err(err("/fields", "a schema needs at least one field"));
        }
        if list.len() > MAX_FIELDS {
            return Err(err(
                "/fields",
                format!("{} fields; at most {MAX_FIELDS}", list.len()),
            ));
        }
        let case_insensitive = match obj.get("headerCase") {
            None => false,
            Some(Value::Bool(b)) => !b,
            Some(_) => {
                return Err(err(
                    "/headerCase",
                    "true (labels match names exactly) or false (ignoring case)",
                ))
            }
        };
        let mut fields: Vec<Field> = Vec::with_capacity(list.len());
        let mut names_bytes = 0;
        let mut dfa_budget = pattern::SCHEMA_DFA_BYTES;
        for (i, f) in list.iter().enumerate() {
            let field = Field::from_value(f, &format!("/fields/{i}"), &mut dfa_budget)?;
            if field.name.len() > MAX_NAME_BYTES {
                return Err(err(
                    format!("/fields/{i}/name"),
                    format!(
                        "{} bytes; a field name is at most {MAX_NAME_BYTES}",
                        field.name.len()
                    ),
                ));
            }
            names_bytes += field.name.len();
            if names_bytes > MAX_NAMES_BYTES {
                return Err(err(
                    format!("/fields/{i}/name"),
                    format!("the field names come to more than {MAX_NAMES_BYTES} bytes"),
                ));
            }
            if fields.iter().any(|g| g.name == field.name) {
                return Err(err(
                    format!("/fields/{i}/name"),
                    format!("the name {:?} is used by two fields", field.name),
                ));
            }
            fields.push(field);
        }
        let fields_match = match obj.get("fieldsMatch") {
            None => FieldsMatch::Exact,
            Some(Value::String(s)) => match s.as_str() {
                "exact" => FieldsMatch::Exact,
                "equal" => FieldsMatch::Equal,
                "subset" => FieldsMatch::Subset,
                "superset" => FieldsMatch::Superset,
                "partial" => FieldsMatch::Partial,
                other => {
                    return Err(err(
                        "/fieldsMatch",
                        format!("{other:?} is not one of exact, equal, subset, superset, partial"),
                    ))
                }
            },
            Some(_) => return Err(err("/fieldsMatch", "a string")),
        };
        let primary_key = match obj.get("primaryKey") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![field_index(&fields, s, "/primaryKey")?],
            Some(Value::Array(names)) => {
                if names.is_empty() {
                    return Err(err("/primaryKey", "an empty primary key"));
                }
                let mut key = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    let pointer = format!("/primaryKey/{i}");
                    let n = n
                        .as_str()
                        .ok_or_else(|| err(pointer.clone(), "a field name"))?;
                    let at = field_index(&fields, n, &pointer)?;
                    if key.contains(&at) {
                        return Err(err(pointer, format!("{n:?} is named twice")));
                    }
                    key.push(at);
                }
                key
            }
            Some(_) => {
                return Err(err(
                    "/primaryKey",
                    "a field name or an array of field names",
                ))
            }
        };
        Ok(Schema {
            fields,
            missing_values,
            primary_key,
            fields_match,
            case_insensitive,
        })
    }

    /// Whether the schema keeps keys (unique fields or a primary key), which need a [`KeySet`].
    pub fn keeps_keys(&self) -> bool {
        !self.primary_key.is_empty() || self.fields.iter().any(|f| f.unique)
    }

    /// Keys a file of `input_bytes` holds if its rows are 64 bytes or more: one a row for each
    /// unique field and the primary key. The key table starts sized for them.
    pub(crate) fn expected_keys(&self, input_bytes: u64) -> usize {
        let per_row = self.fields.iter().filter(|f| f.unique()).count()
            + usize::from(!self.primary_key().is_empty());
        usize::try_from(input_bytes / 64)
            .unwrap_or(usize::MAX)
            .saturating_mul(per_row)
    }

    pub fn primary_key(&self) -> &[usize] {
        &self.primary_key
    }

    /// Whether the cell is one of the schema's `missingValues`.
    #[inline]
    pub fn is_missing(&self, cell: &[u8]) -> bool {
        match self.missing_values.as_slice() {
            // The default: only the empty cell.
            [only] if only.is_empty() => cell.is_empty(),
            [only] => only.as_bytes() == cell,
            all => all.iter().any(|m| m.as_bytes() == cell),
        }
    }

    fn label_matches(&self, field: &Field, label: &str) -> bool {
        let same = |a: &str, b: &str| {
            if self.case_insensitive {
                a.trim().to_lowercase() == b.trim().to_lowercase()
            } else {
                a == b
            }
        };
        same(&field.name, label) || field.aliases.iter().any(|a| same(a, label))
    }

    /// Map the header's labels to fields. `Ok` holds, per data column, the field it carries (or
    /// `None` for a column the schema does not name); `Err`, why the header does not fit.
    pub fn map_header(&self, labels: &[String]) -> Result<HeaderMap, HeaderMismatch> {
        let n = self.fields.len();
        let mut columns: Vec<Option<usize>> = vec![None; labels.len()];
        let mut found: Vec<Option<usize>> = vec![None; n];
        if self.fields_match == FieldsMatch::Exact {
            let mut wrong = Vec::new();
            for (c, label) in labels.iter().enumerate() {
                match self.fields.get(c) {
                    Some(f) if self.label_matches(f, label) => {
                        columns[c] = Some(c);
                        found[c] = Some(c);
                    }
                    _ => wrong.push(c),
                }
            }
            let missing: Vec<String> = (labels.len()..n)
                .map(|i| self.fields[i].name.clone())
                .collect();
            let extra: Vec<String> = (n..labels.len()).map(|c| labels[c].clone()).collect();
            let renamed: Vec<(usize, String)> = wrong
                .into_iter()
                .filter(|&c| c < n)
                .map(|c| (c, self.fields[c].name.clone()))
                .collect();
            if !missing.is_empty() || !extra.is_empty() || !renamed.is_empty() {
                return Err(HeaderMismatch {
                    missing,
                    extra,
                    misplaced: renamed,
                });
            }
        } else {
            for (c, label) in labels.iter().enumerate() {
                if let Some(i) = (0..n)
                    .find(|&i| found[i].is_none() && self.label_matches(&self.fields[i], label))
                {
                    columns[c] = Some(i);
                    found[i] = Some(c);
                }
            }
            let missing: Vec<String> = (0..n)
                .filter(|&i| found[i].is_none())
                .map(|i| self.fields[i].name.clone())
                .collect();
            let extra: Vec<String> = (0..labels.len())
                .filter(|&c| columns[c].is_none())
                .map(|c| labels[c].clone())
                .collect();
            let matched = n - missing.len();
            let fits = match self.fields_match {
                FieldsMatch::Exact => unreachable!(),
                FieldsMatch::Equal => missing.is_empty() && extra.is_empty(),
                FieldsMatch::Subset => missing.is_empty(),
                FieldsMatch::Superset => extra.is_empty(),
                FieldsMatch::Partial => matched > 0,
            };
            // A required field must be there whatever the match mode.
            let required_missing: Vec<String> = (0..n)
                .filter(|&i| found[i].is_none() && self.fields[i].required)
                .map(|i| self.fields[i].name.clone())
                .collect();
            if !fits || !required_missing.is_empty() {
                let missing = match self.fields_match {
                    FieldsMatch::Superset | FieldsMatch::Partial if fits => required_missing,
                    FieldsMatch::Superset | FieldsMatch::Partial => missing,
                    _ => missing,
                };
                let extra = match self.fields_match {
                    FieldsMatch::Equal | FieldsMatch::Superset => extra,
                    _ => Vec::new(),
                };
                return Err(HeaderMismatch {
                    missing,
                    extra,
                    misplaced: Vec::new(),
                });
            }
        }
        let mapping = labels
            .iter()
            .zip(&columns)
            .filter_map(|(label, f)| f.map(|i| (label.clone(), self.fields[i].name.clone())))
            .collect();
        Ok(HeaderMap {
            columns,
            found,
            mapping,
        })
    }
}

/// Which field each data column carries.
#[derive(Debug, Clone)]
pub struct HeaderMap {
    /// Per data column, the index of its field.
    pub columns: Vec<Option<usize>>,
    /// Per field, the data column that carries it.
    pub found: Vec<Option<usize>>,
    /// Header label → field name, for the report.
    pub mapping: BTreeMap<String, String>,
}

/// Why a header does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMismatch {
    /// Schema fields the header lacks.
    pub missing: Vec<String>,
    /// Header columns the schema does not have (where that is not allowed).
    pub extra: Vec<String>,
    /// `fieldsMatch: exact`: (column index, the field expected there) where the label differs.
    pub misplaced: Vec<(usize, String)>,
}

impl Field {
    fn from_value(v: &Value, at: &str, dfa_budget: &mut usize) -> Result<Field, SchemaError> {
        let obj = v
            .as_object()
            .ok_or_else(|| err(at, "a field is a JSON object"))?;
        known_keys(
            obj,
            at,
            &[
                "name",
                "type",
                "format",
                "constraints",
                "aliases",
                "title",
                "description",
                "example",
                "trueValues",
                "falseValues",
                "decimalChar",
                "groupChar",
                "bareNumber",
                "rdfType",
            ],
        )?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("{at}/name"), "every field needs a name (a string)"))?
            .to_string();
        if name.is_empty() {
            return Err(err(format!("{at}/name"), "a field name cannot be empty"));
        }
        let aliases = match obj.get("aliases") {
            None => Vec::new(),
            Some(v) => strings(v, &format!("{at}/aliases"))?,
        };
        let kind = Kind::from_field(obj, at)?;
        let mut field = Field {
            name,
            aliases,
            kind,
            required: false,
            unique: false,
            min_length: None,
            max_length: None,
            minimum: None,
            maximum: None,
            pattern: None,
            enumeration: None,
            plain: false,
        };
        if let Some(c) = obj.get("constraints") {
            field.constraints(c, &format!("{at}/constraints"), dfa_budget)?;
        }
        field.plain = field.kind == Kind::String(value::StrFormat::Default)
            && !field.unique
            && field.min_length.is_none()
            && field.max_length.is_none()
            && field.minimum.is_none()
            && field.maximum.is_none()
            && field.pattern.is_none()
            && field.enumeration.is_none();
        Ok(field)
    }

    fn constraints(
        &mut self,
        v: &Value,
        at: &str,
        dfa_budget: &mut usize,
    ) -> Result<(), SchemaError> {
        let obj = v
            .as_object()
            .ok_or_else(|| err(at, "constraints are a JSON object"))?;
        known_keys(
            obj,
            at,
            &[
                "required",
                "unique",
                "minLength",
                "maxLength",
                "minimum",
                "maximum",
                "pattern",
                "enum",
            ],
        )?;
        let flag = |k: &str| match obj.get(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(err(format!("{at}/{k}"), "true or false")),
        };
        self.required = flag("required")?;
        self.unique = flag("unique")?;
        let length = |k: &str| match obj.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| err(format!("{at}/{k}"), "a non-negative integer")),
        };
        self.min_length = length("minLength")?;
        self.max_length = length("maxLength")?;
        if let (Some(lo), Some(hi)) = (self.min_length, self.max_length) {
            if lo > hi {
                return Err(err(
                    format!("{at}/minLength"),
                    "minLength is above maxLength",
                ));
            }
        }
        for (k, slot) in [("minimum", 0), ("maximum", 1)] {
            if let Some(v) = obj.get(k) {
                let bound = self
                    .kind
                    .parse_json(v)
                    .map_err(|why| err(format!("{at}/{k}"), why))?;
                if !bound.is_ordered() {
                    return Err(err(
                        format!("{at}/{k}"),
                        format!("{k} applies to numbers, dates and times, not to this type"),
                    ));
                }
                if slot == 0 {
                    self.minimum = Some(bound);
                } else {
                    self.maximum = Some(bound);
                }
            }
        }
        if let Some(v) = obj.get("pattern") {
            let p = v
                .as_str()
                .ok_or_else(|| err(format!("{at}/pattern"), "a regular expression (string)"))?;
            if p.len() > PATTERN_MAX_BYTES {
                return Err(err(
                    format!("{at}/pattern"),
                    format!(
                        "{} bytes; patterns are at most {PATTERN_MAX_BYTES}",
                        p.len()
                    ),
                ));
            }
            let unusable = |e: regex::Error| {
                err(
                    format!("{at}/pattern"),
                    format!("not a usable pattern: {e}"),
                )
            };
            // The pattern must stand on its own, as text: a pattern that closes the group it is
            // wrapped in below (`a)|(?:b`), or that matches bytes which are no text (`(?-u)`), is
            // refused rather than read some other way.
            regex::RegexBuilder::new(p)
                .size_limit(PATTERN_SIZE_LIMIT)
                .dfa_size_limit(PATTERN_DFA_LIMIT)
                .build()
                .map_err(unusable)?;
            // Whole-value match, as the spec says (not '^'+p+'$', which breaks alternation).
            let whole = format!(r"\A(?:{p})\z");
            let re = regex::bytes::RegexBuilder::new(&whole)
                .size_limit(PATTERN_SIZE_LIMIT)
                .dfa_size_limit(PATTERN_DFA_LIMIT)
                .build()
                .map_err(unusable)?;
            self.pattern = Some(pattern::Pattern::new(&whole, re, dfa_budget));
        }
        if let Some(v) = obj.get("enum") {
            let list = v
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| err(format!("{at}/enum"), "a non-empty array of values"))?;
            let mut values = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                values.push(
                    self.kind
                        .parse_json(item)
                        .map_err(|why| err(format!("{at}/enum/{i}"), why))?,
                );
            }
            self.enumeration = Some(value::Enumeration::new(values));
        }
        Ok(())
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn unique(&self) -> bool {
        self.unique
    }

    /// Whether every present value is valid and nothing needs its value: a plain string with no
    /// constraint but `required`. Such a cell need not be parsed at all.
    pub fn accepts_any(&self) -> bool {
        self.plain
    }

    /// Check one non-missing cell (UTF-8).
    #[inline]
    pub fn check(&self, cell: &[u8]) -> Result<(), Violation> {
        self.checked(cell).map(|_| ())
    }

    /// Check one non-missing cell (UTF-8) and give its value, for keys.
    #[inline]
    pub fn check_value<'a>(&self, cell: &'a [u8]) -> Result<Typed<'a>, Violation> {
        self.checked(cell)
    }

    /// Strings and integers are parsed here, inline, so their values stay in registers; other
    /// types through [`Kind::parse`].
    #[inline(always)]
    fn checked<'a>(&self, cell: &'a [u8]) -> Result<Typed<'a>, Violation> {
        let typed = match &self.kind {
            Kind::String(format) => {
                if !format.accepts(cell) {
                    return Err(Violation::Type);
                }
                Typed::Text(cell)
            }
            Kind::Integer { bare: true } => match value::small_integer(cell) {
                Some(i) => Typed::Int(i128::from(i)),
                None => self.kind.parse(cell).ok_or(Violation::Type)?,
            },
            kind => kind.parse(cell).ok_or(Violation::Type)?,
        };
        if self.min_length.is_some() || self.max_length.is_some() {
            let len = typed.length(cell);
            if self.min_length.is_some_and(|lo| len < lo) {
                return Err(Violation::Constraint("minLength"));
            }
            if self.max_length.is_some_and(|hi| len > hi) {
                return Err(Violation::Constraint("maxLength"));
            }
        }
        if self.minimum.as_ref().is_some_and(|lo| lo.above(&typed)) {
            return Err(Violation::Constraint("minimum"));
        }
        if self.maximum.as_ref().is_some_and(|hi| hi.below(&typed)) {
            return Err(Violation::Constraint("maximum"));
        }
        if let Some(re) = &self.pattern {
            if !re.is_match(cell) {
                return Err(Violation::Constraint("pattern"));
            }
        }
        if let Some(values) = &self.enumeration {
            if !values.contains(&typed) {
                return Err(Violation::Constraint("enum"));
            }
        }
        Ok(typed)
    }

    /// The field's type, as the schema names it.
    pub fn type_name(&self) -> &'static str {
        self.kind.name()
    }

    /// The type and format, for messages ("integer", "string (email)").
    pub fn describe(&self) -> String {
        self.kind.describe()
    }

    /// The field's type and format.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// A `minimum` or `maximum` from the schema, written in the field's own format (for
    /// messages: it is the schema's, never a cell's).
    pub fn bound_text(&self, which: &str) -> Option<String> {
        let bound = match which {
            "minimum" => self.minimum.as_ref(),
            "maximum" => self.maximum.as_ref(),
            _ => None,
        }?;
        match bound {
            Bound::Value(v) => self.kind.format(v),
            Bound::Text(t) => Some(t.clone()),
        }
    }
}

fn known_keys(obj: &Map<String, Value>, at: &str, known: &[&str]) -> Result<(), SchemaError> {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            return Err(err(
                format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                format!("unknown property {k:?}"),
            ));
        }
    }
    Ok(())
}

fn strings(v: &Value, at: &str) -> Result<Vec<String>, SchemaError> {
    let list = v.as_array().ok_or_else(|| err(at, "an array of strings"))?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| err(format!("{at}/{i}"), "a string"))
        })
        .collect()
}

fn field_index(fields: &[Field], name: &str, at: &str) -> Result<usize, SchemaError> {
    fields
        .iter()
        .position(|f| f.name == name)
        .ok_or_else(|| err(at, format!("no field is named {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern_schema(p: &str) -> Result<Schema, SchemaError> {
        Schema::from_value(&serde_json::json!({
            "fields": [{"name": "c", "type": "string", "constraints": {"pattern": p}}]
        }))
    }

    #[test]
    fn a_pattern_must_stand_on_its_own_as_text() {
        for bad in ["[A-Z]{2})|(?:[0-9]+", "(?-u).{1,3}", r"(?-u:\xE9)", "a)"] {
            let e = pattern_schema(bad).unwrap_err();
            assert_eq!(e.pointer, "/fields/0/constraints/pattern", "{bad}");
        }
        let s = pattern_schema("[A-Z]{2}|[0-9]+").unwrap();
        let f = &s.fields[0];
        assert!(f.check(b"GB").is_ok() && f.check(b"123").is_ok());
        assert!(f.check(b"GBR").is_err() && f.check(b"abc123").is_err());
        assert!(f.check("é".as_bytes()).is_err());
        let dot = pattern_schema(".{1,3}").unwrap();
        assert!(dot.fields[0].check("éé".as_bytes()).is_ok());
    }
}
