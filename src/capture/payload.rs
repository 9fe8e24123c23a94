//! Reading the routing fields out of a notification's payload, once.

use std::borrow::Cow;

use serde::Deserializer as _;
use serde_json::value::RawValue;
use skor_sink_api::{Bytes, Op};

/// What a notification on a skor channel holds.
#[derive(Debug)]
pub enum Notification<'a> {
    /// A whole event; the payload is forwarded as it is.
    Event {
        /// Schema of the changed table.
        schema: Cow<'a, str>,
        /// Name of the changed table.
        table: Cow<'a, str>,
        /// What happened.
        op: Op,
        /// The row, as written; `None` when the payload has no `data`.
        data: Option<&'a RawValue>,
    },
    /// A payload too large for NOTIFY, waiting in `skor.oversized_payload`.
    Reference(Reference<'a>),
}

/// Where an oversized payload waits: its row, and the channel and random
/// token the trigger stored with it, which a fetch must match, so a forged
/// reference can neither take another channel's payload nor guess one.
#[derive(Debug, PartialEq, Eq)]
pub struct Reference<'a> {
    /// The row's id in `skor.oversized_payload`.
    pub id: i64,
    /// The channel the trigger notified.
    pub channel: Cow<'a, str>,
    /// The token stored with the row.
    pub token: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    op: Option<Op>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    skor_ref: Option<i64>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
}

/// Parses a payload; `data` and any other field are skipped, not built.
pub fn parse(payload: &str) -> Result<Notification<'_>, String> {
    let fields: Fields = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    if let Some(id) = fields.skor_ref {
        return match (fields.channel, fields.token) {
            (Some(channel), Some(token)) => {
                Ok(Notification::Reference(Reference { id, channel, token }))
            }
            _ => Err("a reference without its channel and token".to_string()),
        };
    }
    match (fields.schema, fields.table, fields.op) {
        (Some(schema), Some(table), Some(op)) => Ok(Notification::Event {
            schema,
            table,
            op,
            data: fields.data,
        }),
        _ => Err("expected an object with \"schema\", \"table\" and \"op\"".to_string()),
    }
}

/// The row key of `data`: a JSON object of the key columns in key order,
/// their values as written (`{"id":1}`); `None` unless every one is there.
pub fn row_key(data: &RawValue, columns: &[String]) -> Option<Bytes> {
    let mut deserializer = serde_json::Deserializer::from_str(data.get());
    let values = deserializer.deserialize_map(KeyColumns { columns }).ok()?;
    let mut key = String::with_capacity(data.get().len().min(64));
    key.push('{');
    for (i, (column, value)) in columns.iter().zip(&values).enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(&serde_json::to_string(column).ok()?);
        key.push(':');
        key.push_str((*value)?.get());
    }
    key.push('}');
    Some(Bytes::from(key))
}

/// Reads a row object keeping only the raw values of `columns`, in their
/// order, and skipping every other value without building it: the row key
/// costs one pass over `data`, not a map of the whole row.
struct KeyColumns<'c> {
    columns: &'c [String],
}

impl<'de> serde::de::Visitor<'de> for KeyColumns<'_> {
    type Value = Vec<Option<&'de RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![None; self.columns.len()];
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            match self.columns.iter().position(|c| *c == name) {
                Some(i) => values[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_original_payload() {
        let payload = r#"{"table" : "t", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"x":{"op":"no"}}}"#;
        let Ok(Notification::Event {
            schema,
            table,
            op,
            data,
        }) = parse(payload)
        else {
            panic!("not an event");
        };
        assert_eq!((&*schema, &*table, op), ("public", "t", Op::Delete));
        assert_eq!(data.unwrap().get(), r#"{"id":1,"x":{"op":"no"}}"#);
        let Ok(Notification::Reference(reference)) =
            parse(r#"{"skor_ref" : 42, "channel" : "skor", "token" : "t0k"}"#)
        else {
            panic!("not a reference");
        };
        assert_eq!(
            (reference.id, &*reference.channel, &*reference.token),
            (42, "skor", "t0k")
        );
        // The original reference, without channel and token, is refused:
        // anyone could forge one.
        assert!(parse(r#"{"skor_ref":42}"#).is_err());
    }

    #[test]
    fn rejects_what_is_not_a_skor_event() {
        for bad in [
            "garbage",
            "",
            "[]",
            r#"{"table":"t"}"#,
            r#"{"table":"t","schema":"s","op":"TRUNCATE"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn row_key_takes_the_key_columns_in_order() {
        let data: &RawValue =
            serde_json::from_str(r#"{"name":"a\"b","id":7,"tenant":"x"}"#).unwrap();
        let key = |columns: &[&str]| {
            let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            row_key(data, &columns)
        };
        assert_eq!(key(&["tenant", "id"]).unwrap(), r#"{"tenant":"x","id":7}"#);
        assert_eq!(key(&["name"]).unwrap(), r#"{"name":"a\"b"}"#);
        assert_eq!(key(&["id", "missing"]), None);
    }

    #[test]
    fn truncates_on_a_char_boundary() {}
}
