//! The status page's data (`GET /status`, and what `GET /` shows): the
//! counters `/metrics` exports and the problems `/readyz` names, gathered
//! into one JSON document. Every string in it is already redacted: the
//! database as `user@host:port/db`, each sink by its `outline()`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::observe::metrics::DatabaseGauges;
use crate::observe::recent::RecentError;
use crate::observe::stats::{Link, SinkStats, Stats};

/// What the status page says about the config, fixed at start-up.
#[derive(Debug, Default)]
pub struct About {
    /// The capture modes some table is captured in: `notify`, `durable`,
    /// `wal`.
    pub modes: Vec<&'static str>,
    /// The database, as `user@host:port/db sslmode=...`: no password.
    pub database: String,
    /// The replication slot, in wal mode.
    pub slot: Option<String>,
    /// Each sink, in the order of [`Stats::sinks`].
    pub sinks: Vec<SinkAbout>,
}

/// One sink as configured.
#[derive(Debug)]
pub struct SinkAbout {
    /// Its `type`.
    pub kind: &'static str,
    /// Where it delivers: its `outline()`, redacted.
    pub target: String,
    /// Its `queue_capacity`.
    pub capacity: usize,
}

/// The document `GET /status` returns (see docs/status.md).
#[derive(Debug, Serialize)]
pub struct Status {
    /// skor's version.
    pub version: &'static str,
    /// When this reading was taken, in milliseconds since the Unix epoch:
    /// rates are the difference of two readings over the difference of this.
    pub at_unix_ms: u64,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// What `/readyz` would list.
    pub problems: Vec<String>,
    /// The capture modes in use.
    pub modes: Vec<&'static str>,
    /// The database and skor's connections to it.
    pub postgres: Postgres,
    /// What the sources handed to the fan-out stage.
    pub events: Events,
    /// Each sink, in config order.
    pub sinks: Vec<SinkStatus>,
    /// The last errors, oldest first.
    pub errors: Vec<RecentError>,
}

/// The database and skor's connections to it.
#[derive(Debug, Serialize)]
pub struct Postgres {
    /// `user@host:port/db sslmode=...`.
    pub database: String,
    /// The connections the sources keep open.
    pub connections: Vec<ConnectionStatus>,
    /// Why this reading has no gauges from PostgreSQL, if it has none.
    pub reading_error: Option<String>,
    /// `pg_notification_queue_usage()`, 0 to 1.
    pub notify_queue_usage: Option<f64>,
    /// The event log, in durable mode.
    pub durable: Option<Durable>,
    /// The replication slot, in wal mode.
    pub wal: Option<Wal>,
}

/// One of skor's connections to PostgreSQL.
#[derive(Debug, Serialize)]
pub struct ConnectionStatus {
    /// `listener`, `event_log` or `replication`.
    pub name: &'static str,
    /// Whether it is up.
    pub connected: bool,
    /// Times it was re-established.
    pub reconnects: u64,
}

/// The event log (durable mode).
#[derive(Debug, Serialize)]
pub struct Durable {
    /// Events pending.
    pub backlog: Option<f64>,
    /// Events in the dead letters.
    pub dead_letters: Option<f64>,
    /// Age of the oldest pending event, in seconds.
    pub oldest_pending_seconds: Option<f64>,
}

/// The replication slot (wal mode).
#[derive(Debug, Serialize)]
pub struct Wal {
    /// The slot's name.
    pub slot: String,
    /// WAL written since the slot's confirmed position, in bytes.
    pub lag_bytes: Option<f64>,
    /// WAL the slot keeps on disk, in bytes.
    pub retained_bytes: Option<f64>,
    /// Seconds since skor last moved the confirmed position.
    pub confirmed_age_seconds: Option<f64>,
    /// Whether PostgreSQL has invalidated the slot (its WAL is gone).
    pub invalidated: bool,
}

/// What the fan-out stage saw.
#[derive(Debug, Serialize)]
pub struct Events {
    /// Events the sources handed over.
    pub received: u64,
    /// Events no route matched.
    pub unrouted: u64,
}

/// One sink's worker.
#[derive(Debug, Serialize)]
pub struct SinkStatus {
    /// The `[sink.NAME]`.
    pub name: String,
    /// Its `type`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where it delivers, redacted.
    pub target: String,
    /// Events queued or being delivered.
    pub queue_depth: i64,
    /// Its `queue_capacity`.
    pub queue_capacity: usize,
    /// Of the queued, those being delivered or awaiting a retry.
    pub in_flight: i64,
    /// Events the sink confirmed.
    pub delivered: u64,
    /// Events given up on.
    pub failed: u64,
    /// Retries after failed attempts.
    pub retried: u64,
    /// Events not queued because the queue was full.
    pub dropped: u64,
    /// Failed events kept in the dead letters (durable mode).
    pub dead_lettered: u64,
    /// Whether it is unreachable and its events wait out the outage.
    pub disconnected: bool,
    /// Whether the sources wait for room in its queue.
    pub blocked: bool,
}

/// A gauge PostgreSQL could not give reads NaN: `null` here.
fn known(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

impl Status {
    /// Gathers a reading; `gauges` were just read from PostgreSQL, unless
    /// `reading_error` says why not; `listens` when a LISTEN connection
    /// is expected.
    pub fn read(
        about: &About,
        stats: &Stats,
        listens: bool,
        gauges: &DatabaseGauges,
        reading_error: Option<String>,
        problems: Vec<String>,
    ) -> Self {
        let link = |link: &Link| ConnectionStatus {
            name: link.name,
            connected: link.is_up(),
            reconnects: link.reconnects.get(),
        };
        let mut connections = Vec::new();
        if listens {
            connections.push(link(&stats.source.link));
        }
        connections.extend(stats.durable.as_ref().map(|d| link(&d.link)));
        connections.extend(stats.wal.as_ref().map(|w| link(&w.link)));
        Self {
            version: env!("CARGO_PKG_VERSION"),
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            ready: problems.is_empty(),
            problems,
            modes: about.modes.clone(),
            postgres: Postgres {
                database: about.database.clone(),
                connections,
                reading_error,
                notify_queue_usage: known(gauges.notify_queue_usage.get()),
                durable: stats.durable.as_ref().map(|_| Durable {
                    backlog: known(gauges.backlog.get()),
                    dead_letters: known(gauges.dead_letters.get()),
                    oldest_pending_seconds: known(gauges.oldest_pending_seconds.get()),
                }),
                wal: about.slot.as_ref().map(|slot| Wal {
                    slot: slot.clone(),
                    lag_bytes: known(gauges.wal_lag_bytes.get()),
                    retained_bytes: known(gauges.wal_retained_bytes.get()),
                    confirmed_age_seconds: known(gauges.wal_confirmed_age_seconds.get()),
                    invalidated: stats.wal.as_ref().is_some_and(|w| w.invalidated.get() == 1),
                }),
            },
            events: Events {
                received: stats.events.received.get(),
                unrouted: stats.events.unrouted.get(),
            },
            sinks: stats
                .sinks
                .iter()
                .zip(&about.sinks)
                .map(|((name, stats), about)| SinkStatus::read(name, about, stats))
                .collect(),
            errors: stats.errors.list(),
        }
    }
}

impl SinkStatus {
    fn read(name: &str, about: &SinkAbout, stats: &SinkStats) -> Self {
        Self {
            name: name.to_string(),
            kind: about.kind,
            target: about.target.clone(),
            queue_depth: stats.depth.get(),
            queue_capacity: about.capacity,
            in_flight: stats.in_flight.get(),
            delivered: stats.delivered.get(),
            failed: stats.failed.get(),
            retried: stats.retried.get(),
            dropped: stats.dropped.get(),
            dead_lettered: stats.dead_lettered.get(),
            disconnected: stats.disconnected.get() == 1,
            blocked: stats.blocked.get() == 1,
        }
    }
}
