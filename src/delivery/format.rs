//! Renders an event in a sink's `format`: CloudEvents 1.0 (structured JSON)
//! or a Debezium change event's value. skor's own format is the payload as
//! captured and never passes through here. The fan-out stage renders each
//! event once per format its sinks use, so sinks stay ignorant of
//! PostgreSQL and of formats alike (docs/formats.md describes the fields).

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use skor_sink_api::{Bytes, Event, Format, Op};

use crate::capture::wal::relations::rfc3339_micros;

/// Milliseconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC.
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// What a path segment of the CloudEvents `source` must escape: everything
/// RFC 3986 does not allow unescaped in a segment, and `%` itself.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// What wal mode knows of an event's transaction from the stream itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The transaction's xid.
    pub xid: u32,
    /// The commit's time, microseconds since 2000-01-01 UTC.
    pub time_micros: i64,
    /// The commit's WAL position.
    pub lsn: u64,
}

/// The transaction facts a format may show; `None` where the mode does not
/// know them.
#[derive(Debug, Default)]
struct Known<'a> {
    /// RFC 3339: the commit time (wal) or the transaction's start (trigger
    /// modes' `tx_time`).
    time: Option<Cow<'a, str>>,
    /// The same instant in milliseconds since the Unix epoch.
    ts_ms: Option<i64>,
    xid: Option<u32>,
    lsn: Option<u64>,
}

/// The parts of a skor payload the formats read; the row values stay
/// unparsed text, copied as they are.
#[derive(Debug, Default, Deserialize)]
struct Parts<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old: Option<&'a RawValue>,
    #[serde(default)]
    txid: Option<u32>,
    #[serde(borrow, default)]
    tx_time: Option<Cow<'a, str>>,
}

/// Why a payload could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("the payload is not a JSON object skor can render: {0}")]
pub struct RenderError(#[from] serde_json::Error);

/// Renders events for one database.
#[derive(Debug)]
pub struct Renderer {
    /// The database's name, as Debezium's `source.db` shows it.
    database: String,
    /// `/skor/<database>`, escaped, the start of every CloudEvents `source`.
    source_prefix: String,
}

impl Renderer {
    /// A renderer for events of `database`.
    pub fn new(database: &str) -> Self {
        Self {
            database: database.to_string(),
            source_prefix: format!("/skor/{}", utf8_percent_encode(database, SEGMENT)),
        }
    }

    /// `event`'s payload in `format`; `commit` is what the source knows of
    /// its transaction (wal mode), else the payload's `metadata` fields are
    /// read. skor's own format is the payload as it is.
    pub fn render(
        &self,
        format: Format,
        event: &Event,
        commit: Option<&Commit>,
    ) -> Result<Bytes, RenderError> {
        match format {
            Format::Skor => Ok(event.payload.clone()),
            Format::CloudEvents => self.cloudevent(event, commit),
            Format::Debezium => self.debezium(event, commit),
        }
    }

    /// The CloudEvents `source` of a table's events.
    pub fn source(&self, schema: &str, table: &str) -> String {
        format!(
            "{}/{}/{}",
            self.source_prefix,
            utf8_percent_encode(schema, SEGMENT),
            utf8_percent_encode(table, SEGMENT)
        )
    }

    fn cloudevent(&self, event: &Event, commit: Option<&Commit>) -> Result<Bytes, RenderError> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            specversion: &'static str,
            id: String,
            source: String,
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            subject: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            time: Option<&'a str>,
            datacontenttype: &'static str,
        }
        // Wal mode knows the time without reading the payload; trigger
        // modes' payloads are read for `tx_time` and, on the way, checked
        // to be JSON, since they are copied whole into `data`.
        let parts = match commit {
            Some(_) => Parts::default(),
            None => serde_json::from_slice(&event.payload)?,
        };
        let known = known(&parts, commit);
        let envelope = Envelope {
            specversion: "1.0",
            id: event.message_id(),
            source: self.source(&event.schema, &event.table),
            kind: cloudevents_type(event.op),
            subject: event
                .key
                .as_ref()
                .and_then(|key| std::str::from_utf8(key).ok()),
            time: known.time.as_deref(),
            datacontenttype: "application/json",
        };
        let mut out = serde_json::to_vec(&envelope)?;
        // `data` is the payload's own bytes: no re-serialisation.
        out.pop();
        out.reserve(event.payload.len() + 9);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&event.payload);
        out.push(b'}');
        Ok(Bytes::from(out))
    }

    fn debezium(&self, event: &Event, commit: Option<&Commit>) -> Result<Bytes, RenderError> {
        #[derive(Serialize)]
        struct Source<'a> {
            version: &'static str,
            connector: &'static str,
            name: &'static str,
            ts_ms: Option<i64>,
            snapshot: &'static str,
            db: &'a str,
            sequence: Option<()>,
            schema: &'a str,
            table: &'a str,
            #[serde(rename = "txId")]
            tx_id: Option<u32>,
            lsn: Option<u64>,
            xmin: Option<()>,
        }
        #[derive(Serialize)]
        struct Change<'a> {
            before: Option<&'a RawValue>,
            after: Option<&'a RawValue>,
            source: Source<'a>,
            op: &'static str,
            ts_ms: i64,
            transaction: Option<()>,
        }
        let parts: Parts = serde_json::from_slice(&event.payload)?;
        let known = known(&parts, commit);
        let (before, after, op) = match event.op {
            Op::Insert => (None, parts.data, "c"),
            Op::Update => (parts.old, parts.data, "u"),
            Op::Delete => (parts.data, None, "d"),
            Op::Read => (None, parts.data, "r"),
        };
        let change = Change {
            before,
            after,
            source: Source {
                version: env!("CARGO_PKG_VERSION"),
                connector: "postgresql",
                name: "skor",
                ts_ms: known.ts_ms,
                snapshot: if event.op == Op::Read {
                    "true"
                } else {
                    "false"
                },
                db: &self.database,
                sequence: None,
                schema: &event.schema,
                table: &event.table,
                tx_id: known.xid,
                lsn: known.lsn,
                xmin: None,
            },
            op,
            ts_ms: now_ms(),
            transaction: None,
        };
        Ok(Bytes::from(serde_json::to_vec(&change)?))
    }
}

/// What the source or the payload says of the event's transaction.
fn known<'a>(parts: &'a Parts<'a>, commit: Option<&Commit>) -> Known<'a> {
    match commit {
        Some(commit) => Known {
            time: Some(Cow::Owned(rfc3339_micros(commit.time_micros))),
            ts_ms: Some(commit.time_micros.div_euclid(1_000) + PG_EPOCH_MS),
            xid: Some(commit.xid),
            lsn: Some(commit.lsn),
        },
        None => {
            // A `tx_time` that is not RFC 3339 is not passed on as a time.
            let parsed = parts
                .tx_time
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            Known {
                time: parsed.and(parts.tx_time.as_deref().map(Cow::Borrowed)),
                ts_ms: parsed.map(|t| t.timestamp_millis()),
                xid: parts.txid,
                lsn: None,
            }
        }
    }
}

/// The CloudEvents `type` of an operation.
pub const fn cloudevents_type(op: Op) -> &'static str {
    match op {
        Op::Insert => "skor.row.insert",
        Op::Update => "skor.row.update",
        Op::Delete => "skor.row.delete",
        Op::Read => "skor.row.read",
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::*;

    fn event(op: Op, payload: &str, id: Option<i64>) -> Event {
        Event {
            channel: Arc::from("skor"),
            schema: "public".into(),
            table: "customers".into(),
            op,
            payload: Bytes::from(payload.to_string()),
            format: Format::Skor,
            key: Some(Bytes::from_static(br#"{"id":1}"#)),
            id,
            seq: 7,
        }
    }

    fn json(bytes: &Bytes) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn skor_is_the_payload_itself() {
        let e = event(Op::Insert, r#"{"data" : {"id":1}}"#, None);
        let rendered = Renderer::new("app").render(Format::Skor, &e, None).unwrap();
        assert_eq!(rendered.as_ptr(), e.payload.as_ptr());
    }

    #[test]
    fn a_cloudevent_wraps_the_payload_and_names_its_table() {
        let payload = r#"{"table" : "customers", "schema" : "public", "op" : "UPDATE", "data" : {"id":1}, "txid" : 9, "tx_time" : "2026-12-07T06:32:45.123456Z"}"#;
        let e = event(Op::Update, payload, Some(42));
        let out = Renderer::new("my db")
            .render(Format::CloudEvents, &e, None)
            .unwrap();
        assert_eq!(
            json(&out),
            json!({
                "specversion": "1.0",
                "id": "evt_42",
                "source": "/skor/my%20db/public/customers",
                "type": "skor.row.update",
                "subject": "{\"id\":1}",
                "time": "2026-12-07T06:32:45.123456Z",
                "datacontenttype": "application/json",
                "data": serde_json::from_str::<Value>(payload).unwrap(),
            })
        );
    }

    #[test]
    fn wal_mode_gives_the_commit_time_without_reading_the_payload() {
        let e = event(Op::Insert, r#"{"data" : {"id":1}}"#, Some(1));
        let commit = Commit {
            xid: 740,
            time_micros: 849_550_069_969_779,
            lsn: 0x1_6B37_4D48,
        };
        let out = Renderer::new("app")
            .render(Format::CloudEvents, &e, Some(&commit))
            .unwrap();
        assert_eq!(json(&out)["time"], "2026-12-02T18:07:49.969779Z");
        let out = Renderer::new("app")
            .render(Format::Debezium, &e, Some(&commit))
            .unwrap();
        let source = &json(&out)["source"];
        assert_eq!(source["ts_ms"], 1_796_234_869_969_i64);
        assert_eq!(source["txId"], 740);
        assert_eq!(source["lsn"], 0x1_6B37_4D48_u64);
    }

    #[test]
    fn debezium_puts_rows_before_and_after_by_operation() {
        let r = Renderer::new("app");
        let render = |op, payload: &str| {
            json(
                &r.render(Format::Debezium, &event(op, payload, None), None)
                    .unwrap(),
            )
        };
        let insert = render(Op::Insert, r#"{"data" : {"id":1}}"#);
        assert_eq!(
            (&insert["before"], &insert["after"], &insert["op"]),
            (&Value::Null, &json!({"id":1}), &json!("c"))
        );
        let update = render(Op::Update, r#"{"data" : {"id":2}, "old" : {"id":1}}"#);
        assert_eq!(
            (&update["before"], &update["after"], &update["op"]),
            (&json!({"id":1}), &json!({"id":2}), &json!("u"))
        );
        let bare = render(Op::Update, r#"{"data" : {"id":2}}"#);
        assert_eq!(bare["before"], Value::Null);
        let delete = render(Op::Delete, r#"{"data" : {"id":1}}"#);
        assert_eq!(
            (&delete["before"], &delete["after"], &delete["op"]),
            (&json!({"id":1}), &Value::Null, &json!("d"))
        );
        let read = render(Op::Read, r#"{"data" : {"id":1}}"#);
        assert_eq!(
            (&read["op"], &read["source"]["snapshot"]),
            (&json!("r"), &json!("true"))
        );
        assert_eq!(insert["source"]["snapshot"], "false");
        assert_eq!(insert["source"]["txId"], Value::Null);
        assert_eq!(insert["source"]["db"], "app");
    }

    #[test]
    fn a_payload_that_is_not_json_is_an_error_not_a_panic() {
        let e = event(Op::Insert, "not json", None);
        for format in [Format::CloudEvents, Format::Debezium] {
            assert!(Renderer::new("app").render(format, &e, None).is_err());
        }
    }
}
