//! Reading the routing fields out of a notification's payload, once.

use std::borrow::Cow;

use skor_sink_api::Op;

/// What a notification on a skor channel holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Notification<'a> {
    /// A whole event; the payload is forwarded as it is.
    Event {
        /// Schema of the changed table.
        schema: Cow<'a, str>,
        /// Name of the changed table.
        table: Cow<'a, str>,
        /// What happened.
        op: Op,
    },
    /// A payload too large for NOTIFY, waiting in `skor.oversized_payload`.
    Reference(i64),
}

#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    schema: Option<Cow<'a, str>>,
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    op: Option<Op>,
    skor_ref: Option<i64>,
}

/// Parses a payload; `data` and any other field are skipped, not built.
pub fn parse(payload: &str) -> Result<Notification<'_>, String> {
    let fields: Fields = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    if let Some(id) = fields.skor_ref {
        return Ok(Notification::Reference(id));
    }
    match (fields.schema, fields.table, fields.op) {
        (Some(schema), Some(table), Some(op)) => Ok(Notification::Event { schema, table, op }),
        _ => Err("expected an object with \"schema\", \"table\" and \"op\"".to_string()),
    }
}

/// At most `max` bytes of `text`, cut on a character boundary, for logs.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_original_payload() {
        let payload = r#"{"table" : "t", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"x":{"op":"no"}}}"#;
        assert_eq!(
            parse(payload).unwrap(),
            Notification::Event {
                schema: "public".into(),
                table: "t".into(),
                op: Op::Delete
            }
        );
        assert_eq!(
            parse(r#"{"skor_ref":42}"#).unwrap(),
            Notification::Reference(42)
        );
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
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é... (6 bytes)");
    }
}
