//! The capture-side options of a `[[table]]`: `when`, a SQL condition a row
//! change must meet to become an event (a string for every operation, or a
//! table per operation, as `columns`), and `metadata`, the opt-in fields an
//! event's payload gains.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use skor_sink_api::Op;

/// The condition a change must meet, per operation; `None` captures every
/// change of that operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct When {
    /// Condition of the INSERT trigger.
    pub insert: Option<String>,
    /// Condition of the UPDATE trigger(s).
    pub update: Option<String>,
    /// Condition of the DELETE trigger.
    pub delete: Option<String>,
    /// Whether the config gave one string for every operation (errors then
    /// suggest the per-operation form).
    pub shared: bool,
}

impl When {
    /// The condition for `op`.
    pub fn for_op(&self, op: Op) -> Option<&str> {
        match op {
            Op::Insert | Op::Read => self.insert.as_deref(),
            Op::Update => self.update.as_deref(),
            Op::Delete => self.delete.as_deref(),
        }
    }

    /// Whether any operation has a condition.
    pub fn is_set(&self) -> bool {
        self.insert.is_some() || self.update.is_some() || self.delete.is_some()
    }

    /// The config key of `op`'s condition, for errors: `when` or
    /// `when.update`.
    pub fn key(&self, op: Op) -> String {
        if self.shared {
            "when".to_string()
        } else {
            format!("when.{}", op.as_str().to_lowercase())
        }
    }
}

const EXPECTED: &str = "a SQL condition, or a table with insert/update/delete conditions";

fn condition<E: de::Error>(v: &str) -> Result<String, E> {
    if v.trim().is_empty() {
        return Err(E::custom(
            "the condition is empty; remove `when` to capture every change",
        ));
    }
    one_expression(v).map_err(E::custom)?;
    Ok(v.to_string())
}

impl<'de> serde::Deserialize<'de> for When {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WhenVisitor;
        impl<'de> Visitor<'de> for WhenVisitor {
            type Value = When;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<When, E> {
                let c = condition(v)?;
                Ok(When {
                    insert: Some(c.clone()),
                    update: Some(c.clone()),
                    delete: Some(c),
                    shared: true,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<When, A::Error> {
                let mut when = When::default();
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "insert" => &mut when.insert,
                        "update" => &mut when.update,
                        "delete" => &mut when.delete,
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &["insert", "update", "delete"],
                            ))
                        }
                    };
                    *slot = Some(condition(&map.next_value::<String>()?)?);
                }
                Ok(when)
            }
        }
        deserializer.deserialize_any(WhenVisitor)
    }
}

/// An opt-in field of the payload (`metadata = [...]`). Whatever order the
/// config lists them in, they follow the payload's other fields in this
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metadata {
    /// `"event_id" : N`: durable mode's event log id, wal mode's WAL
    /// position (the event id sinks see).
    EventId,
    /// `"txid" : N`: the writing transaction's 32-bit xid.
    Txid,
    /// `"tx_time" : "..."`: the writing transaction's start (`now()`),
    /// trigger modes only.
    TxTime,
    /// `"commit_time" : "..."`: the commit's time, wal mode only.
    CommitTime,
    /// `"lsn" : "X/Y"`: the commit's WAL position, wal mode only.
    Lsn,
}

impl Metadata {
    /// The field's name in the payload, as the config spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EventId => "event_id",
            Self::Txid => "txid",
            Self::TxTime => "tx_time",
            Self::CommitTime => "commit_time",
            Self::Lsn => "lsn",
        }
    }

    /// The trigger flag (TG_ARGV[1]) asking `skor.payload` for it; `None`
    /// for the fields only wal mode has.
    pub const fn flag(self) -> Option<char> {
        match self {
            Self::EventId => Some('e'),
            Self::Txid => Some('x'),
            Self::TxTime => Some('t'),
            Self::CommitTime | Self::Lsn => None,
        }
    }
}

/// Where a bare `OLD.` or `NEW.` (outside strings, quoted identifiers and
/// comments) appears in a condition: wal mode's row filter names columns
/// bare. Returns the word as written.
pub fn row_reference(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(next) = skip_non_code(sql, i) {
            i = next;
            continue;
        }
        let b = bytes[i];
        if is_word(b) && (i == 0 || !is_word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            let word = &sql[start..i];
            let mut next = i;
            while next < bytes.len() && bytes[next].is_ascii_whitespace() {
                next += 1;
            }
            if (word.eq_ignore_ascii_case("old") || word.eq_ignore_ascii_case("new"))
                && bytes.get(next) == Some(&b'.')
            {
                return Some(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    None
}

/// Checks that a condition is one expression: install pastes it between
/// parentheses into `CREATE TRIGGER ... WHEN (...)` or a publication's
/// `WHERE (...)`, so a parenthesis it closes without opening, a `;`, or a
/// string, identifier or comment it leaves open would let it write the
/// rest of that statement (`id > 0), public.other WHERE (true` adds a
/// table to the publication).
pub fn one_expression(sql: &str) -> Result<(), String> {
    let bytes = sql.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(next) = skip_non_code(sql, i) {
            if next > bytes.len() {
                return Err(format!(
                    "the condition leaves open what it starts at byte {i} ({}): close it",
                    &sql[i..(i + 2).min(sql.len())]
                ));
            }
            i = next;
            continue;
        }
        match bytes[i] {
            b'(' => depth += 1,
            b')' => {
                if depth == 0 {
                    return Err(format!(
                        "the condition closes a parenthesis it did not open (byte {i}): it must be \
                         one SQL expression"
                    ));
                }
                depth -= 1;
            }
            b';' => {
                return Err(format!(
                    "the condition holds a `;` (byte {i}): it must be one SQL expression"
                ))
            }
            _ => {}
        }
        i += 1;
    }
    if depth > 0 {
        return Err("the condition opens a parenthesis it does not close".into());
    }
    Ok(())
}

/// If a string, quoted identifier, comment or dollar-quoted string starts
/// at `i`, the index after its end (one past the text's length when it
/// never ends); `None` at ordinary code. Standard strings take no
/// backslash escapes (skor's sessions pin standard_conforming_strings).
fn skip_non_code(sql: &str, i: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    let unterminated = bytes.len() + 1;
    match bytes[i] {
        b'\'' => Some(skip_quoted(
            bytes,
            i + 1,
            b'\'',
            i > 0 && matches!(bytes[i - 1], b'e' | b'E') && (i < 2 || !is_word(bytes[i - 2])),
        )),
        b'"' => Some(skip_quoted(bytes, i + 1, b'"', false)),
        b'-' if bytes.get(i + 1) == Some(&b'-') => {
            Some(sql[i..].find('\n').map_or(bytes.len(), |end| i + end + 1))
        }
        b'/' if bytes.get(i + 1) == Some(&b'*') => {
            // Block comments nest in PostgreSQL.
            let mut depth = 0usize;
            let mut j = i;
            while j + 1 < bytes.len() {
                if bytes[j] == b'/' && bytes[j + 1] == b'*' {
                    depth += 1;
                    j += 2;
                } else if bytes[j] == b'*' && bytes[j + 1] == b'/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        return Some(j);
                    }
                } else {
                    j += 1;
                }
            }
            Some(unterminated)
        }
        b'$' if i == 0 || !is_word(bytes[i - 1]) => {
            // A dollar-quoted string: $tag$ ... $tag$.
            let end = bytes[i + 1..]
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                .map(|p| i + 1 + p)?;
            if bytes[end] != b'$' {
                return None;
            }
            let tag = &sql[i..=end];
            Some(
                sql[end + 1..]
                    .find(tag)
                    .map_or(unterminated, |p| end + 1 + p + tag.len()),
            )
        }
        _ => None,
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// The index after the closing `quote` of a string or identifier opened
/// before `i` (one past the end when it is never closed); a doubled quote
/// is one character, and so is a backslash escape in an `E'...'` string.
fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < bytes.len() {
        if backslash && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len() + 1
}

#[cfg(test)]
mod tests {
    use super::{one_expression, row_reference};

    #[test]
    fn a_condition_is_one_expression() {
        for good in [
            "status = 'paid'",
            "(a > 1) AND (b < 2)",
            "note = ')' AND \"odd)\" = 1",
            "x = $t$ ) $t$ -- )\n",
            "note = E'it\\'s )' /* ( /* ) */ */",
            "lower(name) ~ '^a(b'",
        ] {
            assert_eq!(one_expression(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("id > 0), public.other WHERE (true", "closes a parenthesis"),
            ("true; DROP TABLE t", "holds a `;`"),
            ("(id > 0", "opens a parenthesis"),
            ("note = 'open", "leaves open"),
            ("x = 1 /* (", "leaves open"),
            ("x = $q$ )", "leaves open"),
            ("\"x) = 1", "leaves open"),
            ("note = 'a\\' ) OR (true'", "closes a parenthesis"),
        ] {
            let error = one_expression(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn row_references_are_found_outside_strings_identifiers_and_comments() {
        assert_eq!(row_reference("status = 'paid'"), None);
        assert_eq!(row_reference("NEW.status = 'paid'"), Some("NEW".into()));
        assert_eq!(row_reference("a = 1 AND old . b = 2"), Some("old".into()));
        assert_eq!(row_reference("note = 'old.x' AND \"new.y\" = 1"), None);
        assert_eq!(row_reference("note = E'it\\'s old.x'"), None);
        assert_eq!(
            row_reference("note = $$new.x$$ -- old.y\n/* new.z */"),
            None
        );
        assert_eq!(row_reference("renew.x = 1 AND old_total > 2"), None);
        assert_eq!(
            row_reference("x = $t$ a $t$ AND new.y = 1"),
            Some("new".into())
        );
    }
}
