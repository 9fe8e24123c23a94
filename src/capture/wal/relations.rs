//! The tables the stream describes (pgoutput's Relation messages), what
//! the config asks of each, and how one row change becomes the payload the
//! triggers would have written: `{"table" : ..., "schema" : ..., "op" : ...,
//! "data" : {...}}` in json_build_object's spacing, `data` in row_to_json's.

use std::collections::HashMap;
use std::sync::Arc;

use skor_sink_api::{Bytes, Op};

use super::pgoutput::{OldTuple, Relation, Tuple, Value};
use super::render::{escape_json, render_value, Kind};
use crate::config::{Config, Metadata, TableName};

/// What the config asks of one captured table.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The channel its events carry, for routes.
    pub channel: Arc<str>,
    ops: Vec<Op>,
    columns: crate::config::Columns,
    key: Option<Vec<String>>,
    old: bool,
    /// The metadata fields, in the payload's order.
    metadata: Vec<Metadata>,
}

/// The rules of every table in wal mode, by schema and name.
#[derive(Debug)]
pub struct Rules {
    tables: HashMap<(String, String), Rule>,
    /// With no `[[table]]`, every table of the publication, on this channel.
    any: Option<Rule>,
}

impl Rules {
    /// The wal-mode tables of `config`.
    pub fn new(config: &Config) -> Self {
        let mut tables = HashMap::new();
        for table in &config.tables {
            if config.table_mode(table) != crate::config::Mode::Wal {
                continue;
            }
            let Ok(name) = TableName::parse(&table.name) else {
                continue;
            };
            tables.insert(
                (name.schema, name.name),
                Rule {
                    channel: Arc::from(config.table_channel(table)),
                    ops: table.ops.clone(),
                    columns: table.columns.clone(),
                    key: table.key.clone(),
                    old: table.old,
                    metadata: {
                        let mut fields = table.metadata.clone();
                        fields.sort();
                        fields
                    },
                },
            );
        }
        let any = config.tables.is_empty().then(|| Rule {
            channel: Arc::from(config.source.channels[0].as_str()),
            ops: Op::ALL.to_vec(),
            columns: Default::default(),
            key: None,
            old: false,
            metadata: Vec::new(),
        });
        Self { tables, any }
    }

    /// The `metadata` fields of a captured table's payloads, in order.
    pub fn metadata(&self, schema: &str, name: &str) -> &[Metadata] {
        self.get(schema, name).map_or(&[], |rule| &rule.metadata)
    }

    fn get(&self, schema: &str, name: &str) -> Option<&Rule> {
        self.tables
            .get(&(schema.to_string(), name.to_string()))
            .or(self.any.as_ref())
    }
}

/// A relation of the stream, ready to render its rows.
#[derive(Debug)]
pub struct Table {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its rule; `None` for a published table the config does not capture.
    pub rule: Option<Rule>,
    /// `"name"`, escaped, per column.
    names: Vec<Vec<u8>>,
    kinds: Vec<Kind>,
    /// Per operation, the columns of `data`, in order; `None` for all.
    picks: [Option<Vec<usize>>; 3],
    /// The row key's columns.
    key: Vec<usize>,
    /// The replica identity's columns: all a DELETE carries without
    /// `REPLICA IDENTITY FULL`.
    identity: Vec<usize>,
    /// `{"table" : "...", "schema" : "...", "op" : "` ready to copy.
    head: Vec<u8>,
}

/// What the stream says of a change and its transaction, for the
/// `metadata` fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct Meta {
    /// The event's id (its WAL position), as sinks see it.
    pub event_id: i64,
    /// The transaction's xid, from its BEGIN.
    pub xid: u32,
    /// The commit's time, microseconds since 2000-01-01 UTC, from BEGIN.
    pub commit_time: i64,
    /// The commit's WAL position, from BEGIN.
    pub lsn: u64,
}

/// Appends the `metadata` fields `fields` of a change described by `meta`
/// to a payload whose closing brace is still to come.
pub fn append_metadata(fields: &[Metadata], meta: &Meta, out: &mut Vec<u8>) {
    for field in fields {
        out.extend_from_slice(b", \"");
        out.extend_from_slice(field.as_str().as_bytes());
        out.extend_from_slice(b"\" : ");
        match field {
            Metadata::EventId => out.extend_from_slice(meta.event_id.to_string().as_bytes()),
            Metadata::Txid => out.extend_from_slice(meta.xid.to_string().as_bytes()),
            Metadata::CommitTime => {
                out.push(b'"');
                out.extend_from_slice(rfc3339_micros(meta.commit_time).as_bytes());
                out.push(b'"');
            }
            Metadata::Lsn => {
                let text = format!("\"{:X}/{:X}\"", meta.lsn >> 32, meta.lsn & 0xFFFF_FFFF);
                out.extend_from_slice(text.as_bytes());
            }
            // Refused in wal mode by config validation.
            Metadata::TxTime => out.extend_from_slice(b"null"),
        }
    }
}

/// A row `skor backfill` inserted into `skor.wal_backfill`: a READ event
/// of the table it names.
#[derive(Debug)]
pub struct Backfilled {
    /// The channel its table's events carry.
    pub channel: String,
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
    /// The row key, as the table's changes carry it.
    pub key: Option<Bytes>,
    /// The payload: rendered by the triggers' SQL, then the table's
    /// `metadata` from the stream.
    pub payload: Bytes,
}

impl Rules {
    /// The READ event in a row of `skor.wal_backfill` (`id, channel,
    /// schema_name, table_name, row_key, payload`, as sql/backfill.sql
    /// creates it), the change described by `meta`; `None` when a column
    /// is missing.
    pub fn backfilled(&self, row: &Tuple, meta: &Meta) -> Option<Backfilled> {
        let text = |index: usize| match row.0.get(index) {
            Some(Value::Text(bytes)) => Some(bytes.clone()),
            _ => None,
        };
        let utf8 = |index: usize| text(index).and_then(|b| String::from_utf8(b.to_vec()).ok());
        let (channel, schema, table, payload) = (utf8(1)?, utf8(2)?, utf8(3)?, text(5)?);
        let fields = self.metadata(&schema, &table);
        let payload = if fields.is_empty() {
            payload
        } else {
            let mut out = payload.to_vec();
            if out.last() == Some(&b'}') {
                out.pop();
            }
            append_metadata(fields, meta, &mut out);
            out.push(b'}');
            out.into()
        };
        Some(Backfilled {
            channel,
            schema,
            table,
            key: text(4),
            payload,
        })
    }
}

impl Meta {
    /// What the formats show of the transaction.
    pub fn commit(&self) -> crate::delivery::format::Commit {
        crate::delivery::format::Commit {
            xid: self.xid,
            time_micros: self.commit_time,
            lsn: self.lsn,
        }
    }

    /// A transaction as its BEGIN message describes it.
    pub fn begin(final_lsn: u64, xid: u32, commit_time_micros: i64) -> Self {
        Self {
            event_id: 0,
            xid,
            commit_time: commit_time_micros,
            lsn: final_lsn,
        }
    }
}

/// A row change rendered, ready for the fan-out.
#[derive(Debug)]
pub struct Rendered {
    /// The payload.
    pub payload: Bytes,
    /// The row key, `{"id":1}`, when every key column has a value.
    pub key: Option<Bytes>,
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Insert | Op::Read => 0,
        Op::Update => 1,
        Op::Delete => 2,
    }
}

impl Table {
    /// Whether this is `skor.wal_backfill`, whose inserts are backfilled rows.
    pub fn is_backfill(&self) -> bool {
        self.schema == "skor" && self.name == "wal_backfill"
    }

    /// Prepares `relation` under `rules`, its column types as `kinds`;
    /// `primary` is its primary key's columns as the catalog has them
    /// (empty: none), `None` when the catalog could not be read.
    pub fn new(
        relation: &Relation,
        kinds: Vec<Kind>,
        primary: Option<&[String]>,
        rules: &Rules,
    ) -> Self {
        let rule = rules.get(&relation.schema, &relation.name).cloned();
        let names: Vec<Vec<u8>> = relation
            .columns
            .iter()
            .map(|c| {
                let mut name = Vec::new();
                escape_json(c.name.as_bytes(), &mut name);
                name
            })
            .collect();
        let position = |wanted: &str| relation.columns.iter().position(|c| c.name == wanted);
        let pick = |op: Op| {
            rule.as_ref()
                .and_then(|r| r.columns.for_op(op))
                .map(|list| list.iter().filter_map(|c| position(c)).collect())
        };
        let picks = [pick(Op::Insert), pick(Op::Update), pick(Op::Delete)];
        let identity: Vec<usize> = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        // The row key is the configured key, else the primary key, as the
        // triggers have it; not the replica identity, which under
        // REPLICA IDENTITY FULL is every column.
        let key = match (rule.as_ref().and_then(|r| r.key.as_ref()), primary) {
            (Some(key), _) => key.iter().filter_map(|c| position(c)).collect(),
            (None, Some(primary)) => primary.iter().filter_map(|c| position(c)).collect(),
            (None, None) if relation.replica_identity == b'f' => Vec::new(),
            (None, None) => identity.clone(),
        };
        let mut head = b"{\"table\" : ".to_vec();
        escape_json(relation.name.as_bytes(), &mut head);
        head.extend_from_slice(b", \"schema\" : ");
        escape_json(relation.schema.as_bytes(), &mut head);
        head.extend_from_slice(b", \"op\" : \"");
        Self {
            schema: relation.schema.clone(),
            name: relation.name.clone(),
            rule,
            names,
            kinds,
            picks,
            key,
            identity,
            head,
        }
    }

    /// Whether the config captures `op` on this table.
    pub fn captures(&self, op: Op) -> bool {
        self.rule.as_ref().is_some_and(|r| r.ops.contains(&op))
    }

    /// The payload of a change: `row` is the new row (the old one for
    /// DELETE); `old` what the stream carries of the old row on UPDATE.
    pub fn render(&self, op: Op, row: &Tuple, old: Option<&OldTuple>, meta: &Meta) -> Rendered {
        let full_old = match old {
            Some(OldTuple::Full(tuple)) => Some(tuple),
            _ => None,
        };
        let mut out = Vec::with_capacity(self.head.len() + 64 + row.0.len() * 16);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(op.as_str().as_bytes());
        out.extend_from_slice(b"\", \"data\" : ");
        let unchanged = match (op, old) {
            // Without REPLICA IDENTITY FULL the WAL keeps only the key of a
            // deleted row: `data` holds what is known, not nulls.
            (Op::Delete, Some(OldTuple::Key(_))) => {
                let known: Vec<usize> = match &self.picks[op_index(op)] {
                    Some(pick) => pick
                        .iter()
                        .copied()
                        .filter(|i| self.identity.contains(i))
                        .collect(),
                    None => self.identity.clone(),
                };
                self.columns_object(&known, row, None, &mut out)
            }
            _ => self.object(op, row, full_old, &mut out),
        };
        if op == Op::Update {
            let key_changed = match old {
                Some(OldTuple::Key(_)) => true,
                Some(OldTuple::Full(old)) => self
                    .key
                    .iter()
                    .any(|&i| !same_value(old.0.get(i), row.0.get(i))),
                None => false,
            };
            if key_changed && !self.key.is_empty() {
                if let Some(OldTuple::Key(old) | OldTuple::Full(old)) = old {
                    out.extend_from_slice(b", \"old_key\" : ");
                    self.columns_object(&self.key, old, None, &mut out);
                }
            }
            if self.rule.as_ref().is_some_and(|r| r.old) {
                if let Some(old) = full_old {
                    out.extend_from_slice(b", \"old\" : ");
                    self.object(op, old, None, &mut out);
                }
            }
        }
        if !unchanged.is_empty() {
            out.extend_from_slice(b", \"unchanged_toast\" : [");
            for (n, &i) in unchanged.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.names[i]);
            }
            out.push(b']');
        }
        if let Some(rule) = &self.rule {
            append_metadata(&rule.metadata, meta, &mut out);
        }
        out.push(b'}');
        let key = self.row_key(row);
        Rendered {
            payload: Bytes::from(out),
            key,
        }
    }

    /// `data` for `op`; returns the columns left out because the stream
    /// does not carry them (unchanged TOASTed values with no old row).
    fn object(&self, op: Op, row: &Tuple, fill: Option<&Tuple>, out: &mut Vec<u8>) -> Vec<usize> {
        match &self.picks[op_index(op)] {
            Some(pick) => self.columns_object(pick, row, fill, out),
            None => {
                let all: Vec<usize> = (0..row.0.len()).collect();
                self.columns_object(&all, row, fill, out)
            }
        }
    }

    fn columns_object(
        &self,
        columns: &[usize],
        row: &Tuple,
        fill: Option<&Tuple>,
        out: &mut Vec<u8>,
    ) -> Vec<usize> {
        let mut missing = Vec::new();
        out.push(b'{');
        let mut first = true;
        for &i in columns {
            let mut value = row.0.get(i).unwrap_or(&Value::Null);
            if matches!(value, Value::UnchangedToast) {
                match fill.and_then(|old| old.0.get(i)) {
                    Some(old @ (Value::Text(_) | Value::Null | Value::Binary(_))) => value = old,
                    _ => {
                        missing.push(i);
                        continue;
                    }
                }
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&self.names[i]);
            out.push(b':');
            self.value(i, value, out);
        }
        out.push(b'}');
        missing
    }

    fn value(&self, column: usize, value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Text(text) => render_value(&self.kinds[column], text, out),
            Value::Binary(bytes) => escape_json(
                &String::from_utf8_lossy(bytes).into_owned().into_bytes(),
                out,
            ),
            Value::Null | Value::UnchangedToast => out.extend_from_slice(b"null"),
        }
    }

    fn row_key(&self, row: &Tuple) -> Option<Bytes> {
        if self.key.is_empty() {
            return None;
        }
        let mut key = Vec::with_capacity(32);
        key.push(b'{');
        for (n, &i) in self.key.iter().enumerate() {
            let value = row.0.get(i)?;
            if !matches!(value, Value::Text(_)) {
                return None;
            }
            if n > 0 {
                key.push(b',');
            }
            key.extend_from_slice(&self.names[i]);
            key.push(b':');
            self.value(i, value, &mut key);
        }
        key.push(b'}');
        Some(Bytes::from(key))
    }
}

fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Text(a)), Some(Value::Text(b))) => a == b,
        (Some(Value::Null), Some(Value::Null)) => true,
        (Some(Value::UnchangedToast), _) | (_, Some(Value::UnchangedToast)) => true,
        _ => false,
    }
}

/// `micros` since PostgreSQL's epoch (2000-01-01 UTC) as RFC 3339 in UTC
/// with six decimals, `2026-12-02T18:07:49.969779Z`: what the triggers
/// render with `to_char(... AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`.
pub fn rfc3339_micros(micros: i64) -> String {
    const UNIX_TO_PG_DAYS: i64 = 10_957;
    let days = micros.div_euclid(86_400_000_000) + UNIX_TO_PG_DAYS;
    let in_day = micros.rem_euclid(86_400_000_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let seconds = in_day / 1_000_000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60,
        in_day % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339_micros;

    #[test]
    fn commit_times_render_as_rfc3339_utc_with_microseconds() {
        assert_eq!(rfc3339_micros(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(-1), "1999-12-31T23:59:59.999999Z");
        // SELECT extract(epoch FROM '2026-12-02 18:07:49.969779+00'::timestamptz
        //                         - '2000-01-01 00:00:00+00') * 1e6
        assert_eq!(
            rfc3339_micros(849_550_069_969_779),
            "2026-12-02T18:07:49.969779Z"
        );
        assert_eq!(
            rfc3339_micros(60 * 86_400_000_000),
            "2000-03-01T00:00:00.000000Z"
        );
    }
}
