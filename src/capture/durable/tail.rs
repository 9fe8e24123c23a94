//! `skor tail` in durable mode: reads `skor.event_log` and nothing else,
//! in read-only transactions: it never claims, updates or deletes an event
//! and holds no lease, so the running daemons go on as if it were not
//! there. It wakes on the triggers' `skor_event_log` notification and
//! polls besides.
//!
//! Event ids come from a sequence when the row is written, not when its
//! transaction commits, so a lower id can become visible after a higher
//! one. Tail therefore does not stop at "the highest id printed": it
//! remembers what it printed above a floor, and raises the floor to an id
//! only once every transaction that was running when that id was seen has
//! ended (the snapshot's `xmin` has passed that moment's `xmax`): below it
//! no new row can appear. Rows are printed as they become visible, which
//! is commit order.
//!
//! What tail cannot see is an event a daemon deleted (delivered) before
//! tail's next read of the log; see docs/tail.md.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::time::Duration;

use skor_sink_api::{Bytes, Op};
use tokio::sync::mpsc;
use tokio_postgres::{Client, IsolationLevel};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::capture::notify::tail::listening_connection;
use crate::capture::tail::{Event, Seen, TailError, TailReader};
use crate::config::{Config, Mode, TableName};
use crate::postgres::event_log::WAKE_CHANNEL;
use crate::postgres::{describe, Postgres};

/// The channel the durable trigger notifies, with an empty payload.
/// How often the log is read without a wake-up.
const POLL: Duration = Duration::from_millis(500);
/// At start, the ids this far below the highest one are checked for events
/// still being committed, which tail then shows.
const START_WINDOW: i64 = 10_000;

/// Reading the event log.
pub struct DurableTail {
    client: Client,
    wake_ups: mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    /// The durable-mode tables; `None`: every table (no `[[table]]`).
    tables: Option<HashSet<(String, String)>>,
    /// Every id at or below it is printed or will never appear.
    floor: i64,
    /// Ids above `floor` already printed (or there before tail started).
    printed: BTreeSet<i64>,
    /// (xmax of a snapshot, the highest id it saw): once a snapshot's
    /// xmin reaches that xmax, no id up to that one can still appear.
    horizons: VecDeque<(i64, i64)>,
}

/// One read of the log in one snapshot.
struct Read {
    xmin: i64,
    xmax: i64,
    rows: Vec<tokio_postgres::Row>,
}

impl DurableTail {
    /// Connects, checks the log exists, notes what is already in it and
    /// LISTENs for wake-ups.
    pub async fn open(pg: &Postgres, config: &Config) -> Result<Self, TailError> {
        let (client, wake_ups) = listening_connection(pg).await?;
        let installed: bool = client
            .query_one("SELECT to_regclass('skor.event_log') IS NOT NULL", &[])
            .await
            .map_err(|e| TailError::Connect(describe(&e)))?
            .get(0);
        if !installed {
            return Err(TailError::Setup(
                "durable mode: skor.event_log does not exist: run `skor install` first".into(),
            ));
        }
        client
            .batch_execute(&format!("LISTEN {WAKE_CHANNEL}"))
            .await
            .map_err(|e| TailError::Connect(format!("LISTEN failed: {}", describe(&e))))?;
        let tables = (!config.tables.is_empty()).then(|| {
            config
                .tables
                .iter()
                .filter(|t| config.table_mode(t) == Mode::Durable)
                .filter_map(|t| TableName::parse(&t.name).ok())
                .map(|n| (n.schema, n.name))
                .collect()
        });
        let mut tail = Self {
            client,
            wake_ups,
            tables,
            floor: 0,
            printed: BTreeSet::new(),
            horizons: VecDeque::new(),
        };
        // What is there now was there before tail: not shown. Rows below the
        // highest id that are still being committed are.
        let start = tail
            .read(
                "SELECT id FROM skor.event_log \
                  WHERE id > (SELECT coalesce(max(id), 0) FROM skor.event_log) - $1",
                &[&START_WINDOW],
            )
            .await
            .map_err(|e| TailError::Connect(describe(&e)))?;
        let ids: Vec<i64> = start.rows.iter().map(|r| r.get(0)).collect();
        let highest = ids.iter().copied().max().unwrap_or(0);
        tail.floor = (highest - START_WINDOW).max(0);
        tail.printed.extend(ids);
        tail.horizons.push_back((start.xmax, highest));
        Ok(tail)
    }

    /// Runs `sql` in a read-only snapshot, with the snapshot's bounds.
    async fn read(
        &mut self,
        sql: &str,
        parameters: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Read, tokio_postgres::Error> {
        let transaction = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let bounds = transaction
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8, \
                        pg_snapshot_xmax(pg_current_snapshot())::text::int8",
                &[],
            )
            .await?;
        let rows = transaction.query(sql, parameters).await?;
        transaction.commit().await?;
        Ok(Read {
            xmin: bounds.get(0),
            xmax: bounds.get(1),
            rows,
        })
    }
    /// The events that became visible since the last read, in id order.
    async fn next(&mut self) -> Result<Vec<Event>, TailError> {
        // What was printed is left out by id, so its payload is not read
        // again while the floor waits for older transactions.
        const SQL: &str = "\
            SELECT id, channel, schema_name, table_name, op, payload \
              FROM skor.event_log WHERE id > $1 AND NOT (id = ANY ($2)) ORDER BY id";
        let floor = self.floor;
        let printed: Vec<i64> = self.printed.iter().copied().collect();
        let read = self
            .read(SQL, &[&floor, &printed])
            .await
            .map_err(|e| lost(describe(&e)))?;
        let mut events = Vec::new();
        let mut highest = self.horizons.back().map_or(floor, |h| h.1);
        for row in &read.rows {
            let id: i64 = row.get(0);
            highest = highest.max(id);
            if !self.printed.insert(id) {
                continue;
            }
            let (schema, table): (String, String) = (row.get(2), row.get(3));
            if let Some(tables) = &self.tables {
                // Wal mode's dead letters live in the log too.
                if !tables.contains(&(schema.clone(), table.clone())) {
                    continue;
                }
            }
            let op_text: &str = row.get(4);
            let Some(op) = Op::parse(op_text) else {
                warn!(id, op = op_text, "an event with an unknown operation");
                continue;
            };
            let payload: String = row.get(5);
            events.push(Event {
                channel: row.get(1),
                schema,
                table,
                op,
                payload: Bytes::from(payload),
            });
        }
        while let Some(&(xmax, id)) = self.horizons.front() {
            if read.xmin < xmax {
                break;
            }
            self.floor = self.floor.max(id);
            self.horizons.pop_front();
        }
        self.printed = self.printed.split_off(&(self.floor + 1));
        if self.horizons.back().is_none_or(|h| h.1 < highest) {
            self.horizons.push_back((read.xmax, highest));
        }
        Ok(events)
    }
}

fn lost(message: String) -> TailError {
    TailError::Lost {
        mode: "durable",
        message,
    }
}

#[async_trait::async_trait]
impl TailReader for DurableTail {
    /// Reads the log after every wake-up and poll until `shutdown`.
    async fn run(
        mut self: Box<Self>,
        seen: mpsc::Sender<Seen>,
        shutdown: CancellationToken,
    ) -> Result<(), TailError> {
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                wake_up = self.wake_ups.recv() => {
                    if wake_up.is_none() {
                        return Err(lost("the connection to PostgreSQL was lost".into()));
                    }
                    // One read covers every wake-up that came meanwhile.
                    while self.wake_ups.try_recv().is_ok() {}
                }
                _ = poll.tick() => {}
            }
            for event in self.next().await? {
                if seen.send(Seen::Event(event)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
