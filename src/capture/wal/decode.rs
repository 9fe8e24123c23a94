//! From a pgoutput message to an event: the one decoder the daemon's wal
//! source and `skor tail` share, so both number, render and skip changes
//! the same way. Each reader keeps what differs: its catalog connection
//! (for relation descriptions), what it does with a transaction's end and
//! where the events go.

use std::collections::HashMap;
use std::sync::Arc;

use skor_sink_api::{Bytes, Op};
use tracing::warn;

use super::pgoutput::{self, Change, Relation};
use super::relations::{Meta, Rules, Table};
use crate::delivery::format::Commit;

/// A captured change (or a backfilled row), rendered as the sinks get it.
#[derive(Debug)]
pub struct WalEvent {
    /// The channel its table's events carry.
    pub channel: Arc<str>,
    /// Schema of the changed table.
    pub schema: String,
    /// Name of the changed table.
    pub table: String,
    /// What happened; READ for a backfilled row.
    pub op: Op,
    /// The payload, byte for byte as the sinks get it.
    pub payload: Bytes,
    /// The row key, when every key column has a value.
    pub key: Option<Bytes>,
    /// Its stable id: its WAL position plus its rank among the changes of
    /// one WAL record.
    pub id: i64,
    /// Its transaction's xid, commit time and commit LSN, for the formats.
    pub commit: Commit,
}

/// What one XLogData message meant.
#[derive(Debug)]
pub enum Step {
    /// A relation's description: the reader reads its types and primary
    /// key from the catalog ([`super::catalog::prepare`]) and hands the
    /// table back with [`Decoder::describe`].
    Relation(Relation),
    /// A TRUNCATE of these tables (`schema.name`); it is not captured.
    Truncate(Vec<String>),
    /// An event to deliver.
    Event(WalEvent),
    /// Nothing to deliver (an operation not captured, a skipped change).
    Nothing,
}

/// The stream's state between messages: the tables described so far, the
/// current transaction and the numbering of its changes.
pub struct Decoder {
    rules: Rules,
    tables: HashMap<u32, Table>,
    /// The current transaction as its BEGIN describes it, for `metadata`.
    transaction: Meta,
    /// The last change's WAL position and how many changes shared it.
    last_change: (u64, i64),
}

impl Decoder {
    /// A decoder for the tables `rules` capture.
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            tables: HashMap::new(),
            transaction: Meta::default(),
            last_change: (0, 0),
        }
    }

    /// The capture rules, for preparing a described relation.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// A transaction begins.
    pub fn begin(&mut self, final_lsn: u64, xid: u32, commit_time_micros: i64) {
        self.last_change = (0, 0);
        self.transaction = Meta::begin(final_lsn, xid, commit_time_micros);
    }

    /// Forgets the described tables: a new stream describes them again.
    pub fn forget_tables(&mut self) {
        self.tables.clear();
    }

    /// The table a relation message described, prepared by the reader.
    pub fn describe(&mut self, relation: u32, table: Table) {
        self.tables.insert(relation, table);
    }

    /// Decodes one XLogData message at `position`; `skipping` numbers the
    /// change but delivers nothing (a transaction already confirmed).
    pub fn xlog(&mut self, position: u64, data: &Bytes, skipping: bool) -> Result<Step, String> {
        let change =
            pgoutput::decode(data).map_err(|e| format!("cannot decode the stream: {e}"))?;
        Ok(self.change(position, change, skipping))
    }

    fn change(&mut self, position: u64, change: Change, skipping: bool) -> Step {
        let (relation, op, row, old) = match change.into_row() {
            Ok(row) => row,
            Err(Change::Relation(relation)) => return Step::Relation(relation),
            Err(Change::Truncate { relations }) => {
                let names = relations
                    .iter()
                    .filter_map(|id| self.tables.get(id))
                    .map(|t| format!("{}.{}", t.schema, t.name))
                    .collect();
                return Step::Truncate(names);
            }
            Err(_) => return Step::Nothing,
        };
        // Changes of one WAL record (a multi-row insert) share its
        // position; the next record starts further on than their count.
        self.last_change = if self.last_change.0 == position {
            (position, self.last_change.1 + 1)
        } else {
            (position, 0)
        };
        if skipping {
            return Step::Nothing;
        }
        let Some(table) = self.tables.get(&relation) else {
            warn!(
                relation,
                "a change of a relation the stream did not describe; skipped"
            );
            return Step::Nothing;
        };
        let id = position as i64 + self.last_change.1;
        let meta = Meta {
            event_id: id,
            ..self.transaction
        };
        if table.is_backfill() {
            // `skor backfill`'s rows; its deletes only empty the table.
            if op != Op::Insert {
                return Step::Nothing;
            }
            let Some(read) = self.rules.backfilled(&row, &meta) else {
                warn!(
                    id,
                    "a backfilled row without its channel, table or payload; skipped"
                );
                return Step::Nothing;
            };
            return Step::Event(WalEvent {
                channel: Arc::from(read.channel),
                schema: read.schema,
                table: read.table,
                op: Op::Read,
                payload: read.payload,
                key: read.key,
                id,
                commit: meta.commit(),
            });
        }
        if !table.captures(op) {
            return Step::Nothing;
        }
        let Some(rule) = &table.rule else {
            return Step::Nothing;
        };
        let rendered = table.render(op, &row, old.as_ref(), &meta);
        Step::Event(WalEvent {
            channel: Arc::clone(&rule.channel),
            schema: table.schema.clone(),
            table: table.name.clone(),
            op,
            payload: rendered.payload,
            key: rendered.key,
            id,
            commit: meta.commit(),
        })
    }
}
