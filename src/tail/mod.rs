//! `skor tail`: a live view of the events the config captures, for a person
//! at a terminal, without sinks and without touching what the daemon owns.
//!
//! Each mode is read its own read-only way (see `notify.rs`, `durable.rs`,
//! `wal.rs`); every reader hands what it saw to one loop, which narrows it
//! by `--table`, `--op` and `--filter` (a route's filter expression) and
//! prints it (`print.rs`): coloured
//! lines on a terminal, the payload exactly as delivered, one per line,
//! otherwise.

mod print;

use std::io::Write;

use skor_sink_api::Op;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;
use wildmatch::WildMatch;

use crate::capture::tail::STOP_PATIENCE;
use crate::capture::{self, TailReader};
use crate::config::filter::Filter;
use crate::config::{Config, TableName};
use crate::postgres::Postgres;

pub use crate::capture::tail::{Event, Seen, TailError};
pub use print::Printer;

/// How many seen events may wait for the printer before readers wait.
const QUEUE: usize = 1024;
/// A `schema.table` pattern as routes have them; `*` matches any run of
/// characters.
#[derive(Debug)]
struct TablePattern {
    schema: WildMatch,
    table: WildMatch,
}

impl TablePattern {
    fn parse(pattern: &str) -> Result<Self, TailError> {
        if pattern == "*" {
            return Ok(Self {
                schema: WildMatch::new("*"),
                table: WildMatch::new("*"),
            });
        }
        let name = TableName::parse(pattern).map_err(TailError::Pattern)?;
        Ok(Self {
            schema: WildMatch::new(&name.schema),
            table: WildMatch::new(&name.name),
        })
    }

    fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table)
    }
}

/// Which events to show: every one unless narrowed.
#[derive(Debug, Default)]
pub struct Selection {
    tables: Vec<TablePattern>,
    ops: Vec<Op>,
    filter: Option<Filter>,
}

impl Selection {
    /// Events of tables matching one of `tables` (none: any table), of one
    /// of `ops` (none: any operation) and, with a `filter`, for which that
    /// expression (a route's `filter`) is true.
    pub fn new(tables: &[String], ops: &[Op], filter: Option<&str>) -> Result<Self, TailError> {
        Ok(Self {
            tables: tables
                .iter()
                .map(|t| TablePattern::parse(t))
                .collect::<Result<_, _>>()?,
            ops: ops.to_vec(),
            filter: filter
                .map(Filter::parse)
                .transpose()
                .map_err(|e| TailError::Filter(e.to_string()))?,
        })
    }

    /// Whether `event` is one to show.
    pub fn wants(&self, event: &Event) -> bool {
        (self.tables.is_empty()
            || self
                .tables
                .iter()
                .any(|t| t.matches(&event.schema, &event.table)))
            && (self.ops.is_empty() || self.ops.contains(&event.op))
            && self.filter.as_ref().is_none_or(|f| {
                f.matches(
                    &event.channel,
                    &event.schema,
                    &event.table,
                    event.op,
                    &event.payload,
                )
            })
    }
}

/// Connects a reader for every mode `config` captures in.
async fn open(pg: &Postgres, config: &Config) -> Result<Vec<Box<dyn TailReader>>, TailError> {
    let mut readers = Vec::new();
    for capture in capture::used(config) {
        readers.push(capture.open_tail(pg, config).await?);
    }
    if readers.is_empty() {
        return Err(TailError::Nothing);
    }
    Ok(readers)
}

/// Watches every mode `config` captures in and prints what `selection`
/// wants with `printer` until `shutdown`; returns an error if a reader cannot
/// start or stops on its own.
pub async fn run(
    config: &Config,
    selection: &Selection,
    printer: &mut Printer<impl Write>,
    shutdown: CancellationToken,
) -> Result<(), TailError> {
    let pg = config
        .postgres()
        .map_err(|e| TailError::Connect(format!("source.dsn: {e}")))?
        .named("skor tail");
    // Opening may wait (a temporary slot waits for running transactions):
    // Ctrl-C ends it too, and whatever was opened closes with it.
    let readers = tokio::select! {
        () = shutdown.cancelled() => {
            for capture in capture::used(config) {
                capture.abandon_tail(&pg).await;
            }
            return Ok(());
        }
        readers = open(&pg, config) => readers?,
    };
    let modes: Vec<&str> = capture::used(config).map(|c| c.name()).collect();
    info!(modes = ?modes, "tail: watching; Ctrl-C ends");
    let (sender, mut seen) = mpsc::channel(QUEUE);
    let mut tasks = JoinSet::new();
    for reader in readers {
        tasks.spawn(reader.run(sender.clone(), shutdown.clone()));
    }
    drop(sender);
    let mut failure = None;
    loop {
        tokio::select! {
            note = seen.recv() => {
                let open = match note {
                    Some(Seen::Event(event)) => !selection.wants(&event) || printer.event(&event),
                    Some(Seen::Gone { id, channel }) => printer.gone(id, &channel),
                    None => break,
                };
                if !open {
                    // Whoever read the output is gone.
                    shutdown.cancel();
                    break;
                }
            }
            Some(ended) = tasks.join_next() => {
                if let Ok(Err(error)) = ended {
                    failure.get_or_insert(error);
                    shutdown.cancel();
                }
            }
        }
    }
    // The readers have all let go of their sender: they are ending.
    let _ = tokio::time::timeout(STOP_PATIENCE, async {
        while let Some(ended) = tasks.join_next().await {
            if let Ok(Err(error)) = ended {
                failure.get_or_insert(error);
            }
        }
    })
    .await;
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Parses `--op`: INSERT, UPDATE, DELETE or READ, any case.
pub fn parse_op(text: &str) -> Result<Op, String> {
    Op::parse(&text.to_ascii_uppercase())
        .ok_or_else(|| format!("expected INSERT, UPDATE, DELETE or READ, got \"{text}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skor_sink_api::Bytes;

    fn event(schema: &str, table: &str, op: Op) -> Event {
        Event {
            channel: "skor".into(),
            schema: schema.into(),
            table: table.into(),
            op,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn narrows_by_table_and_op() {
        let all = Selection::new(&[], &[], None).unwrap();
        assert!(all.wants(&event("public", "orders", Op::Delete)));
        let some = Selection::new(
            &["orders".into(), "billing.*".into()],
            &[Op::Insert, Op::Update],
            None,
        )
        .unwrap();
        assert!(some.wants(&event("public", "orders", Op::Insert)));
        assert!(some.wants(&event("billing", "invoices", Op::Update)));
        assert!(!some.wants(&event("public", "orders", Op::Delete)));
        assert!(!some.wants(&event("public", "invoices", Op::Insert)));
        let star = Selection::new(&["*".into()], &[Op::Read], None).unwrap();
        assert!(star.wants(&event("a", "b", Op::Read)));
        assert!(Selection::new(&["a.".into()], &[], None).is_err());
    }

    #[test]
    fn narrows_by_filter() {
        let paid = Selection::new(&[], &[], Some(r#"data.status == "paid""#)).unwrap();
        let mut e = event("public", "orders", Op::Update);
        e.payload = Bytes::from_static(
            br#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"status":"paid"}}"#,
        );
        assert!(paid.wants(&e));
        e.payload = Bytes::from_static(
            br#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"status":"new"}}"#,
        );
        assert!(!paid.wants(&e));
        let bad = Selection::new(&[], &[], Some("data.status ==")).unwrap_err();
        assert!(bad.to_string().starts_with("--filter: "), "{bad}");
    }

    #[test]
    fn parses_ops_in_any_case() {
        assert_eq!(parse_op("insert"), Ok(Op::Insert));
        assert_eq!(parse_op("READ"), Ok(Op::Read));
        assert!(parse_op("TRUNCATE").is_err());
    }
}
