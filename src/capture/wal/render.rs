//! Renders a column's text output (as pgoutput sends it) as the JSON that
//! PostgreSQL 15's `row_to_json` gives for the same value, so events from
//! the WAL look like the ones the triggers build with `row_to_json`.
//!
//! `row_to_json` works from the datum (`json_categorize_type`,
//! `datum_to_json` and `JsonEncodeDateTime` in `src/backend/utils/adt/json.c`):
//! booleans and numbers bare, dates and timestamps in XSD form, `json` and
//! `jsonb` unquoted, arrays as JSON arrays, everything else its text output
//! as a JSON string. Here we only have the text output, so each column's
//! type is first reduced to a [`Kind`] ([`builtin_kind`], [`resolve_kinds`])
//! and [`render_value`] converts the text the same way.
//!
//! The text output must have been produced with `DateStyle=ISO` (the ISO
//! form is the one that converts to XSD); `TimeZone`, `IntervalStyle` and
//! `extra_float_digits` shape the text the same way for both, so the WAL
//! connection should use the settings the triggers' sessions use.
//!
//! # Differences from row_to_json
//!
//! - Composite types (and arrays of them): `row_to_json` renders a nested
//!   object; here they are their text output as a JSON string, e.g.
//!   `"(1,abc)"`.
//! - Non-built-in types with an explicit cast to `json` (hstore, for one):
//!   `row_to_json` calls the cast; here they are their text output as a
//!   JSON string.
//! - `int2vector` and `oidvector` (catalog types): `row_to_json` treats them
//!   as arrays; their text output (`1 2 3`) is not in array form, so here
//!   they fall back to a JSON string.
//! - Text output under a `DateStyle` other than ISO: `row_to_json` always
//!   writes XSD dates; here dates and timestamps not in ISO form are kept as
//!   JSON strings as they are.
//!
//! BC dates and timestamps match: both forms end in `" BC"`
//! (`"0044-03-15T12:00:00 BC"`). Array dimension decorations
//! (`[0:1]={1,2}`) are dropped, as `row_to_json` drops the bounds.

use std::collections::HashMap;

/// How `row_to_json` renders a type, reduced to what the text output needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `boolean`: `true` / `false`.
    Bool,
    /// `smallint`, `integer`, `bigint`, `real`, `double precision`,
    /// `numeric`: bare when a valid JSON number, else a string (`"NaN"`).
    Number,
    /// `date`: a string.
    Date,
    /// `timestamp`: an XSD string, `"2024-01-02T03:04:05"`.
    Timestamp,
    /// `timestamptz`: an XSD string with a `+hh:mm` offset.
    TimestampTz,
    /// `json` and `jsonb`: the text itself.
    Json,
    /// Everything else: the text output as a JSON string.
    Text,
    /// An array, each element rendered by `element`'s kind.
    Array {
        /// The kind of the elements.
        element: Box<Kind>,
        /// The element type's `typdelim`, which separates elements in the
        /// text output (`,` for all built-in types but `box`, `;`).
        delimiter: u8,
    },
}

/// The scalar built-in types `json_categorize_type` singles out, and the
/// common ones it renders as strings.
fn scalar_kind(oid: u32) -> Option<Kind> {
    Some(match oid {
        16 => Kind::Bool,
        // int8, int2, int4, float4, float8, numeric. Not oid (26): it is
        // not among json.c's numeric types and comes out as a string.
        20 | 21 | 23 | 700 | 701 | 1700 => Kind::Number,
        1082 => Kind::Date,
        1114 => Kind::Timestamp,
        1184 => Kind::TimestampTz,
        114 | 3802 => Kind::Json,
        // bytea, "char", name, regproc, text, oid, tid, xid, cid, xml,
        // point, lseg, path, box, polygon, line, cidr, circle, macaddr8,
        // money, macaddr, inet, bpchar, varchar, time, interval, timetz,
        // bit, varbit, regclass, regtype, uuid, pg_lsn, tsvector, tsquery,
        // the built-in ranges, jsonpath.
        17 | 18 | 19 | 24 | 25 | 26 | 27 | 28 | 29 | 142 | 600 | 601 | 602 | 603 | 604 | 628
        | 650 | 718 | 774 | 790 | 829 | 869 | 1042 | 1043 | 1083 | 1186 | 1266 | 1560 | 1562
        | 2205 | 2206 | 2950 | 3220 | 3614 | 3615 | 3904 | 3906 | 3908 | 3910 | 3912 | 3926
        | 4072 => Kind::Text,
        _ => return None,
    })
}

/// The element type of the built-in array types whose element
/// [`scalar_kind`] knows, from `pg_type.typelem`.
fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1007 => 23,
        1008 => 24,
        1009 => 25,
        1010 => 27,
        1011 => 28,
        1012 => 29,
        1014 => 1042,
        1015 => 1043,
        1016 => 20,
        1017 => 600,
        1018 => 601,
        1019 => 602,
        1020 => 603,
        1021 => 700,
        1022 => 701,
        1027 => 604,
        1028 => 26,
        1040 => 829,
        1041 => 869,
        1115 => 1114,
        1182 => 1082,
        1183 => 1083,
        1185 => 1184,
        1187 => 1186,
        1231 => 1700,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        143 => 142,
        199 => 114,
        629 => 628,
        651 => 650,
        719 => 718,
        775 => 774,
        791 => 790,
        2210 => 2205,
        2211 => 2206,
        2951 => 2950,
        3221 => 3220,
        3643 => 3614,
        3645 => 3615,
        3807 => 3802,
        3905 => 3904,
        3907 => 3906,
        3909 => 3908,
        3911 => 3910,
        3913 => 3912,
        3927 => 3926,
        4073 => 4072,
        _ => return None,
    })
}

/// The kind of a built-in type, without asking the server; `None` for
/// types this list does not hold (user types: ask [`resolve_kinds`]).
pub fn builtin_kind(oid: u32) -> Option<Kind> {
    if let Some(kind) = scalar_kind(oid) {
        return Some(kind);
    }
    let element = array_element(oid)?;
    Some(Kind::Array {
        element: Box::new(scalar_kind(element)?),
        // box is the one built-in type whose typdelim is not a comma.
        delimiter: if element == 603 { b';' } else { b',' },
    })
}

/// How deep a chain of domains and arrays [`resolve_kinds`] follows before
/// settling on [`Kind::Text`]; real chains are a few links long.
const MAX_CHAIN: i32 = 32;

/// From each type, the chain of domain base types and array element types
/// down to a type that is neither: one row per link, `depth` 0 the type
/// itself. An array is what `get_element_type` calls one: a varlena type
/// with an element type (`typlen = -1`, unlike `point` or `name`).
const CHAIN_SQL: &str = "\
WITH RECURSIVE chain(root, depth, oid) AS (
    SELECT o, 0, o FROM unnest($1::oid[]) AS o
  UNION ALL
    SELECT c.root, c.depth + 1,
           CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END
    FROM chain c JOIN pg_type t ON t.oid = c.oid
    WHERE (t.typtype = 'd' OR (t.typelem <> 0 AND t.typlen = -1)) AND c.depth < $2
)
SELECT c.root, c.depth, c.oid, t.typtype = 'd', t.typelem <> 0 AND t.typlen = -1,
       t.typdelim::text
FROM chain c JOIN pg_type t ON t.oid = c.oid
ORDER BY c.root, c.depth";

/// One link of a type's chain, as [`CHAIN_SQL`] returns it.
struct Link {
    oid: u32,
    domain: bool,
    array: bool,
    delimiter: u8,
}

/// The kinds of `oids`, asking the catalog (one query) about those
/// [`builtin_kind`] does not know: a domain takes its base type's kind, an
/// array its element's, and enums, composites, ranges and everything else
/// are [`Kind::Text`]. Every oid asked for is in the map; one the catalog
/// does not know is `Text`.
pub async fn resolve_kinds(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<HashMap<u32, Kind>, tokio_postgres::Error> {
    let mut kinds = HashMap::new();
    let mut unknown = Vec::new();
    for &oid in oids {
        match builtin_kind(oid) {
            Some(kind) => {
                kinds.insert(oid, kind);
            }
            None => unknown.push(oid),
        }
    }
    if unknown.is_empty() {
        return Ok(kinds);
    }
    let rows = client.query(CHAIN_SQL, &[&unknown, &MAX_CHAIN]).await?;
    let mut chains: HashMap<u32, Vec<Link>> = HashMap::new();
    for row in rows {
        let root: u32 = row.try_get(0)?;
        let delimiter: String = row.try_get(5)?;
        chains.entry(root).or_default().push(Link {
            oid: row.try_get(2)?,
            domain: row.try_get(3)?,
            array: row.try_get(4)?,
            delimiter: delimiter.bytes().next().unwrap_or(b','),
        });
    }
    for oid in unknown {
        let kind = chains
            .get(&oid)
            .map_or(Kind::Text, |chain| chain_kind(chain));
        kinds.insert(oid, kind);
    }
    Ok(kinds)
}

/// Folds a chain (outermost type first) into a kind, from its end.
fn chain_kind(chain: &[Link]) -> Kind {
    let Some(last) = chain.last() else {
        return Kind::Text;
    };
    // A chain cut short by MAX_CHAIN ends on a domain or an array.
    let mut kind = if last.domain || last.array {
        Kind::Text
    } else {
        // Only scalars: arrays were followed to their elements.
        scalar_kind(last.oid).unwrap_or(Kind::Text)
    };
    for pair in chain.windows(2).rev() {
        let (link, element) = (&pair[0], &pair[1]);
        if link.array && !link.domain {
            kind = Kind::Array {
                element: Box::new(kind),
                // array_out separates with the element type's delimiter
                // (a domain copies its base type's).
                delimiter: element.delimiter,
            };
        }
    }
    kind
}

/// Appends the JSON for one non-null value whose text output is `text`.
/// Text PostgreSQL could not have produced for `kind` is rendered as a JSON
/// string, never a panic.
pub fn render_value(kind: &Kind, text: &[u8], out: &mut Vec<u8>) {
    match kind {
        Kind::Bool => match text {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            _ => escape_json(text, out),
        },
        Kind::Number if is_json_number(text) => out.extend_from_slice(text),
        // Same digits in ISO and XSD form, " BC" included.
        Kind::Number | Kind::Date | Kind::Text => escape_json(text, out),
        Kind::Timestamp => render_timestamp(text, false, out),
        Kind::TimestampTz => render_timestamp(text, true, out),
        // json and jsonb output is JSON already; empty text cannot be.
        Kind::Json if !text.is_empty() => out.extend_from_slice(text),
        Kind::Json => escape_json(text, out),
        Kind::Array { element, delimiter } => {
            let start = out.len();
            let mut parser = ArrayParser {
                text,
                pos: 0,
                element,
                delimiter: *delimiter,
            };
            if parser.render(out).is_none() {
                out.truncate(start);
                escape_json(text, out);
            }
        }
    }
}

/// Appends `text` as a JSON string literal, quotes included, escaped as
/// PostgreSQL's `escape_json` does: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`,
/// `\t`, other bytes below 0x20 as `\u00xx` (lower-case hex), and nothing
/// else (not DEL, not non-ASCII).
pub fn escape_json(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(text.len() + 2);
    out.push(b'"');
    for &byte in text {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// Whether `text` is a JSON number, by the grammar of PostgreSQL's
/// `IsValidJsonNumber`: `-`? (`0` | [1-9][0-9]*) (`.`[0-9]+)?
/// ([eE][+-]?[0-9]+)?.
fn is_json_number(text: &[u8]) -> bool {
    let text = text.strip_prefix(b"-").unwrap_or(text);
    let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
    let int = digits(text);
    if int == 0 || (int > 1 && text[0] == b'0') {
        return false;
    }
    let mut rest = &text[int..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = digits(fraction);
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    if let Some(exponent) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exponent = exponent
            .strip_prefix(b"+")
            .or_else(|| exponent.strip_prefix(b"-"))
            .unwrap_or(exponent);
        let n = digits(exponent);
        if n == 0 {
            return false;
        }
        rest = &exponent[n..];
    }
    rest.is_empty()
}

/// Appends an ISO timestamp (`2024-01-02 03:04:05.123456+05:30 BC`) in the
/// XSD form `JsonEncodeDateTime` writes: `T` between date and time, and an
/// offset of whole hours as `+hh:00`. Anything else (`infinity`,
/// `-infinity`, another DateStyle) is kept as a string as it is.
fn render_timestamp(text: &[u8], with_zone: bool, out: &mut Vec<u8>) {
    match split_timestamp(text, with_zone) {
        Some(Timestamp {
            date,
            time,
            zone,
            era,
        }) => {
            // Every byte was checked to be a digit or punctuation that
            // needs no escaping.
            out.push(b'"');
            out.extend_from_slice(date);
            out.push(b'T');
            out.extend_from_slice(time);
            out.extend_from_slice(zone);
            if zone.len() == 3 {
                out.extend_from_slice(b":00");
            }
            out.extend_from_slice(era);
            out.push(b'"');
        }
        None => escape_json(text, out),
    }
}

/// The parts of an ISO timestamp's text output, each checked for shape.
struct Timestamp<'a> {
    /// `YYYY-MM-DD`, the year four digits or more.
    date: &'a [u8],
    /// `HH:MM:SS`, maybe with a fraction.
    time: &'a [u8],
    /// `+hh`, `+hh:mm` or `+hh:mm:ss`; empty without a zone.
    zone: &'a [u8],
    /// `" BC"` or empty.
    era: &'a [u8],
}

/// Splits an ISO timestamp into its parts; `None` when it is not one.
fn split_timestamp(text: &[u8], with_zone: bool) -> Option<Timestamp<'_>> {
    let (text, era) = match text.strip_suffix(b" BC") {
        Some(rest) => (rest, &text[rest.len()..]),
        None => (text, &text[text.len()..]),
    };
    let space = text.iter().position(|b| *b == b' ')?;
    let (date, rest) = (&text[..space], &text[space + 1..]);
    // YYYY-MM-DD, the year four digits or more.
    let year = date.iter().take_while(|b| b.is_ascii_digit()).count();
    if year < 4 || !fits(&date[year..], b"-00-00") {
        return None;
    }
    let zone_at = if with_zone {
        rest.iter().position(|b| matches!(b, b'+' | b'-'))?
    } else {
        rest.len()
    };
    let (time, zone) = rest.split_at(zone_at);
    // HH:MM:SS, then a fraction of 1 to 6 digits.
    let fraction = time.get(8..)?;
    if !fits(&time[..8], b"00:00:00")
        || !(fraction.is_empty()
            || (fraction.len() >= 2
                && fraction.len() <= 7
                && fraction[0] == b'.'
                && fraction[1..].iter().all(u8::is_ascii_digit)))
    {
        return None;
    }
    if with_zone {
        let digits = &zone[1..];
        if !matches!(digits.len(), 2 | 5 | 8) || !fits(digits, &b"00:00:00"[..digits.len()]) {
            return None;
        }
    }
    Some(Timestamp {
        date,
        time,
        zone,
        era,
    })
}

/// Whether `text` has the shape of `pattern`, where `0` in the pattern
/// stands for any digit.
fn fits(text: &[u8], pattern: &[u8]) -> bool {
    text.len() == pattern.len()
        && text.iter().zip(pattern).all(|(t, p)| match p {
            b'0' => t.is_ascii_digit(),
            _ => t == p,
        })
}

/// The dimensions PostgreSQL allows (`MAXDIM`); deeper nesting cannot be
/// its output, and the limit bounds the recursion.
const MAX_DIMENSIONS: usize = 6;

/// A recursive-descent reader of `array_out`'s text that writes the JSON
/// array as it goes; `None` means the text was not array output.
struct ArrayParser<'a> {
    text: &'a [u8],
    pos: usize,
    element: &'a Kind,
    delimiter: u8,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn render(&mut self, out: &mut Vec<u8>) -> Option<()> {
        // Bounds other than 1 come first ("[0:1]={1,2}"); row_to_json
        // drops them.
        if self.peek() == Some(b'[') {
            let equals = self.text.iter().position(|b| *b == b'=')?;
            self.pos = equals + 1;
        }
        self.level(out, 1)?;
        (self.pos == self.text.len()).then_some(())
    }

    /// One `{...}`, nested arrays or elements.
    fn level(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DIMENSIONS || self.peek()? != b'{' {
            return None;
        }
        self.pos += 1;
        out.push(b'[');
        if self.peek()? == b'}' {
            self.pos += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            match self.peek()? {
                b'{' => self.level(out, depth + 1)?,
                b'"' => {
                    let value = self.quoted()?;
                    render_value(self.element, &value, out);
                }
                _ => {
                    let start = self.pos;
                    while !matches!(self.peek()?, b'}' | b'{' | b'"')
                        && self.peek()? != self.delimiter
                    {
                        self.pos += 1;
                    }
                    let value = &self.text[start..self.pos];
                    if value.is_empty() {
                        return None;
                    }
                    if value == b"NULL" {
                        out.extend_from_slice(b"null");
                    } else {
                        render_value(self.element, value, out);
                    }
                }
            }
            match self.peek()? {
                b'}' => {
                    self.pos += 1;
                    out.push(b']');
                    return Some(());
                }
                d if d == self.delimiter => {
                    self.pos += 1;
                    out.push(b',');
                }
                _ => return None,
            }
        }
    }

    /// A `"..."` element with `\` escapes removed.
    fn quoted(&mut self) -> Option<Vec<u8>> {
        self.pos += 1;
        let mut value = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(value);
                }
                b'\\' => {
                    self.pos += 1;
                    value.push(self.peek()?);
                }
                byte => value.push(byte),
            }
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(kind: &Kind, text: &str) -> String {
        let mut out = Vec::new();
        render_value(kind, text.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn array(element: Kind) -> Kind {
        Kind::Array {
            element: Box::new(element),
            delimiter: b',',
        }
    }

    #[test]
    fn escapes_like_postgres() {
        let mut out = Vec::new();
        escape_json("a\"b\\c\x08\x0c\n\r\t\x01\x1f\x7f/é😀".as_bytes(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f\x7f/é😀\""
        );
    }

    #[test]
    fn booleans() {
        assert_eq!(render(&Kind::Bool, "t"), "true");
        assert_eq!(render(&Kind::Bool, "f"), "false");
        assert_eq!(render(&Kind::Bool, "true"), "\"true\"");
    }

    #[test]
    fn numbers() {
        for bare in [
            "0", "-0", "12", "-12", "1.5", "0.001", "1e-300", "1.5E+30", "-1e5",
        ] {
            assert_eq!(render(&Kind::Number, bare), bare);
        }
        for quoted in [
            "NaN",
            "Infinity",
            "-Infinity",
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "1 ",
            "0x1",
        ] {
            assert_eq!(render(&Kind::Number, quoted), format!("\"{quoted}\""));
        }
    }

    #[test]
    fn timestamps() {
        let tz = Kind::TimestampTz;
        assert_eq!(
            render(&tz, "2024-01-02 03:04:05.123456+05:30"),
            "\"2024-01-02T03:04:05.123456+05:30\""
        );
        assert_eq!(
            render(&tz, "2024-01-02 03:04:05+00"),
            "\"2024-01-02T03:04:05+00:00\""
        );
        assert_eq!(
            render(&tz, "1850-01-01 00:00:00-03:30:52"),
            "\"1850-01-01T00:00:00-03:30:52\""
        );
        assert_eq!(
            render(&tz, "0044-03-15 12:00:00+00 BC"),
            "\"0044-03-15T12:00:00+00:00 BC\""
        );
        assert_eq!(
            render(&tz, "12345-01-01 00:00:00.5-08"),
            "\"12345-01-01T00:00:00.5-08:00\""
        );
        assert_eq!(render(&tz, "infinity"), "\"infinity\"");
        assert_eq!(render(&tz, "-infinity"), "\"-infinity\"");
        let ts = Kind::Timestamp;
        assert_eq!(
            render(&ts, "2024-01-02 03:04:05.5"),
            "\"2024-01-02T03:04:05.5\""
        );
        assert_eq!(
            render(&ts, "0001-01-01 00:00:00 BC"),
            "\"0001-01-01T00:00:00 BC\""
        );
        // Not ISO output: kept as it is.
        for odd in [
            "Tue Jan 02 03:04:05 2024 PST",
            "2024-01-02",
            "2024-01-02 03:04",
            "2024-01-02 03:04:05.",
            "2024-01-02 03:04:05.1234567",
            "2024-01-02 03:04:05+5",
            "2024-01-02 03:04:05+05:3",
            "24-01-02 03:04:05+00",
            "2024-01-02 03:04:05\"+00",
            "",
        ] {
            let mut expected = Vec::new();
            escape_json(odd.as_bytes(), &mut expected);
            assert_eq!(
                render(&tz, odd),
                String::from_utf8(expected).unwrap(),
                "{odd}"
            );
        }
        assert_eq!(
            render(&ts, "2024-01-02 03:04:05+00"),
            "\"2024-01-02 03:04:05+00\""
        );
        assert_eq!(render(&Kind::Date, "2024-01-02 BC"), "\"2024-01-02 BC\"");
    }

    #[test]
    fn json_is_kept_as_is() {
        assert_eq!(render(&Kind::Json, "{\"a\": [1, 2]}"), "{\"a\": [1, 2]}");
        assert_eq!(render(&Kind::Json, ""), "\"\"");
    }

    #[test]
    fn arrays() {
        assert_eq!(render(&array(Kind::Number), "{}"), "[]");
        assert_eq!(
            render(&array(Kind::Number), "{1,NULL,NaN,-2.5}"),
            "[1,null,\"NaN\",-2.5]"
        );
        assert_eq!(
            render(&array(Kind::Number), "{{1,2},{3,4}}"),
            "[[1,2],[3,4]]"
        );
        assert_eq!(render(&array(Kind::Number), "[0:1]={1,2}"), "[1,2]");
        assert_eq!(
            render(&array(Kind::Number), "[0:1][1:1]={{1},{2}}"),
            "[[1],[2]]"
        );
        assert_eq!(
            render(
                &array(Kind::Text),
                r#"{a,"b c","q\"uote","back\\slash","NULL",NULL,"{}",""}"#
            ),
            r#"["a","b c","q\"uote","back\\slash","NULL",null,"{}",""]"#
        );
        assert_eq!(render(&array(Kind::Bool), "{t,f}"), "[true,false]");
        assert_eq!(
            render(
                &array(Kind::TimestampTz),
                r#"{"2024-01-02 03:04:05+00",infinity}"#
            ),
            r#"["2024-01-02T03:04:05+00:00","infinity"]"#
        );
        assert_eq!(
            render(&array(Kind::Json), r#"{"{\"a\": 1}",null,"[]"}"#),
            r#"[{"a": 1},null,[]]"#
        );
        let boxes = Kind::Array {
            element: Box::new(Kind::Text),
            delimiter: b';',
        };
        assert_eq!(
            render(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
        // An array of a domain over an array: the elements are arrays.
        assert_eq!(
            render(&array(array(Kind::Number)), r#"{"{1,2}","{3}"}"#),
            "[[1,2],[3]]"
        );
    }

    #[test]
    fn malformed_arrays_fall_back_to_a_string() {
        for bad in [
            "",
            "{",
            "}",
            "{1",
            "{1,",
            "{1,}",
            "{,1}",
            "{1}}",
            "{1}x",
            "{\"a}",
            "{\"a\\",
            "{{1}",
            "[0:1]",
            "[0:1]{1}",
            "1 2 3",
            "{{{{{{{1}}}}}}}",
            "{1\"2}",
            "{a{b}}",
        ] {
            let mut expected = Vec::new();
            escape_json(bad.as_bytes(), &mut expected);
            assert_eq!(
                render(&array(Kind::Number), bad),
                String::from_utf8(expected).unwrap(),
                "{bad:?}"
            );
        }
        assert_eq!(
            render(&array(Kind::Number), "{{{{{{1}}}}}}"),
            "[[[[[[1]]]]]]"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let alphabet = b"{}[]:=,;\"\\ NUL0123456789.-+eET:BCtf\x01";
        let kinds = [
            Kind::Bool,
            Kind::Number,
            Kind::Date,
            Kind::Timestamp,
            Kind::TimestampTz,
            Kind::Json,
            Kind::Text,
            array(Kind::TimestampTz),
            array(array(Kind::Number)),
        ];
        for _ in 0..20_000 {
            let mut text = Vec::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            for i in 0..len {
                text.push(alphabet[((state >> (i % 8 * 8)) as usize + i) % alphabet.len()]);
            }
            for kind in &kinds {
                let mut out = Vec::new();
                render_value(kind, &text, &mut out);
                assert!(!out.is_empty());
            }
        }
    }

    #[test]
    fn builtin_kinds() {
        assert_eq!(builtin_kind(16), Some(Kind::Bool));
        assert_eq!(builtin_kind(1700), Some(Kind::Number));
        assert_eq!(builtin_kind(26), Some(Kind::Text));
        assert_eq!(builtin_kind(3802), Some(Kind::Json));
        assert_eq!(builtin_kind(1007), Some(array(Kind::Number)));
        assert_eq!(
            builtin_kind(1020),
            Some(Kind::Array {
                element: Box::new(Kind::Text),
                delimiter: b';'
            })
        );
        // int2vector and oidvector are left to the catalog.
        assert_eq!(builtin_kind(22), None);
        assert_eq!(builtin_kind(30), None);
        assert_eq!(builtin_kind(16385), None);
        // Every array's element is known.
        for oid in 0..10_000 {
            if array_element(oid).is_some() {
                assert!(
                    matches!(builtin_kind(oid), Some(Kind::Array { .. })),
                    "{oid}"
                );
            }
        }
    }
}
