//! Counters of what happened to events: the daemon's summary lines, its
//! Prometheus metrics (see `metrics.rs`) and tests all read the same ones.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::RouteConfig;
pub use crate::counter::Counter;
use crate::observe::metrics::{Connection, Metrics};
use crate::observe::recent::RecentErrors;

/// Whether a connection is up, and since when it is down.
#[derive(Debug, Default)]
pub struct Link {
    /// 1 while connected, exported as `skor_postgres_connected`.
    pub up: Gauge,
    /// Times the connection was re-established.
    pub reconnects: Counter,
    /// Its `connection` label: `listener`, `event_log`, `replication`.
    pub name: &'static str,
    /// Where its errors go for the status page.
    errors: Arc<RecentErrors>,
}

impl Link {
    fn registered(metrics: &Metrics, connection: Connection) -> Self {
        Self {
            up: metrics.connected(connection),
            reconnects: metrics.reconnects(connection),
            name: connection.name(),
            errors: Arc::clone(&metrics.errors),
        }
    }

    /// Records that the connection is up (`true`) or lost.
    pub fn set(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// Records that the connection is down because of `error` (lost, or
    /// refused when reopened), for the status page's last errors.
    pub fn failed(&self, error: impl Display) {
        self.set(false);
        self.errors
            .record(format_args!("postgres {}", self.name), error);
    }

    /// Whether the connection is up.
    pub fn is_up(&self) -> bool {
        self.up.get() == 1
    }
}

/// What the fan-out stage saw, from every source.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Events the sources handed over: notifications that were skor
    /// events (oversized ones included) and claimed durable events (a
    /// claim repeated after a lost lease counts again).
    pub received: Counter,
    /// Events no route matched.
    pub unrouted: Counter,
    /// By route, as configured: events whose filter could not be
    /// evaluated (so did not match). Exported for routes with a filter.
    pub filter_errors: Vec<Counter>,
}

impl EventStats {
    /// Counters exported by `metrics`; `routes` are the configured routes.
    pub fn registered(metrics: &Metrics, routes: &[RouteConfig]) -> Self {
        Self {
            received: Counter::default(),
            unrouted: metrics.unrouted.clone().into(),
            filter_errors: routes
                .iter()
                .enumerate()
                .map(|(index, route)| match route.filter {
                    Some(_) => metrics.filter_errors(index),
                    None => Counter::default(),
                })
                .collect(),
        }
    }
}

/// What the notify listener saw.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Notifications skipped because they were not skor events.
    pub invalid: Counter,
    /// Oversized payloads that could not be fetched.
    pub lost: Counter,
    /// The LISTEN connection.
    pub link: Link,
    /// 1 while the listener sheds load (see `shed.rs`).
    pub shedding: Gauge,
}

impl SourceStats {
    /// Counters exported by `metrics`; the LISTEN connection's series only
    /// when the daemon `listens`, so a durable or wal daemon does not
    /// report a connection it never opens as down.
    pub fn registered(metrics: &Metrics, listens: bool) -> Self {
        Self {
            invalid: metrics.invalid.clone().into(),
            lost: metrics.lost.clone().into(),
            link: if listens {
                Link::registered(metrics, Connection::Listener)
            } else {
                Link::default()
            },
            shedding: metrics.shedding.clone(),
        }
    }
}

/// Milliseconds since the process's first use of this clock.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What one sink's worker did.
#[derive(Debug)]
pub struct SinkStats {
    /// Events the sink confirmed.
    pub delivered: Counter,
    /// Retries after a failed attempt; the attempts that wait out an
    /// outage are not counted.
    pub retried: Counter,
    /// Waits for an unreachable sink, per event held: what an outage cost
    /// instead of retries.
    pub outage_waits: Counter,
    /// Events given up on after a permanent error or the last retry.
    pub failed: Counter,
    /// Of the failed events, those kept in the dead letters (durable mode).
    pub dead_lettered: Counter,
    /// Events not queued because the queue was full: `when_full = "drop"`,
    /// or shedding load while PostgreSQL's notification queue fills.
    pub dropped: Counter,
    /// Events queued or being delivered, not yet settled.
    pub depth: Gauge,
    /// Of those, the events a lane took from the queue: being delivered
    /// or awaiting a retry.
    pub in_flight: Gauge,
    /// 1 while the sink is unreachable and its events wait out the outage.
    pub disconnected: Gauge,
    /// 1 while the listener waits for room in the queue.
    pub blocked: Gauge,
    /// Seconds from queueing to confirmation, retries included.
    pub latency: Histogram,
    /// When (`now_ms`) the sink last settled an event or got work while
    /// idle: how long a sink with events waiting has made no progress.
    progress_ms: AtomicU64,
    /// Where its failures go for the status page.
    pub errors: Arc<RecentErrors>,
}

impl Default for SinkStats {
    /// Counters no registry exports, for tests.
    fn default() -> Self {
        Self {
            delivered: Counter::default(),
            retried: Counter::default(),
            outage_waits: Counter::default(),
            failed: Counter::default(),
            dead_lettered: Counter::default(),
            dropped: Counter::default(),
            depth: Gauge::default(),
            in_flight: Gauge::default(),
            disconnected: Gauge::default(),
            blocked: Gauge::default(),
            latency: crate::observe::metrics::latency_histogram(),
            progress_ms: AtomicU64::new(now_ms()),
            errors: Arc::default(),
        }
    }
}

impl SinkStats {
    /// Counters exported by `metrics` with the label `sink="name"`.
    pub fn registered(metrics: &Metrics, name: &str, capacity: usize) -> Self {
        let sink = metrics.sink(name, capacity);
        Self {
            delivered: sink.delivered,
            retried: sink.retried,
            outage_waits: sink.outage_waits,
            failed: sink.failed,
            dead_lettered: sink.dead_lettered,
            dropped: sink.dropped,
            depth: sink.depth,
            in_flight: Gauge::default(),
            disconnected: sink.disconnected,
            blocked: sink.blocked,
            latency: sink.latency,
            progress_ms: AtomicU64::new(now_ms()),
            errors: Arc::clone(&metrics.errors),
        }
    }

    /// Counts an event taken into the queue.
    pub fn queued(&self) {
        if self.depth.inc() == 0 {
            self.progress_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Counts events that left the queue without being delivered: dropped
    /// for lack of room, or refused by a stopped worker.
    pub fn unqueued(&self, events: usize) {
        self.depth.dec_by(events as i64);
    }

    /// Counts events a lane took from the queue to deliver.
    pub fn taken(&self, events: usize) {
        self.in_flight.inc_by(events as i64);
    }

    /// Counts events a lane took and then let go undelivered: another
    /// daemon owns them now.
    pub fn untaken(&self, events: usize) {
        self.in_flight.dec_by(events as i64);
        self.unqueued(events);
    }

    /// Counts events a lane settled, delivered or not, `waited` after
    /// queueing.
    pub fn settled(&self, waited: impl Iterator<Item = Duration>) {
        let mut events = 0;
        for waited in waited {
            self.latency.observe(waited.as_secs_f64());
            events += 1;
        }
        self.in_flight.dec_by(events);
        self.depth.dec_by(events);
        self.progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long events have waited with nothing settled, if any wait.
    pub fn stalled_for(&self) -> Option<Duration> {
        if self.depth.get() <= 0 {
            return None;
        }
        let since = self.progress_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(now_ms().saturating_sub(since)))
    }
}

/// What durable mode did with the event log.
#[derive(Debug, Default)]
pub struct DurableStats {
    /// Events claimed from the log.
    pub claimed: Counter,
    /// Events deleted (or marked delivered) after every sink confirmed.
    pub finished: Counter,
    /// Events moved to the dead letters.
    pub dead_lettered: Counter,
    /// Rows of the log that are not events skor can parse.
    pub unparseable: Counter,
    /// Statements on the event log that failed on an open connection.
    pub statement_errors: Counter,
    /// The most payload bytes held claimed at once, since start.
    pub peak_claimed_bytes: AtomicU64,
    /// The event log's connection.
    pub link: Link,
}

impl DurableStats {
    /// Counters exported by `metrics`.
    pub fn registered(metrics: &Metrics) -> Self {
        Self {
            claimed: metrics.claimed.clone().into(),
            finished: metrics.finished.clone().into(),
            dead_lettered: Counter::default(),
            unparseable: Counter::default(),
            statement_errors: Counter::default(),
            peak_claimed_bytes: AtomicU64::new(0),
            link: Link::registered(metrics, Connection::EventLog),
        }
    }
}

/// What wal mode did with the replication slot.
#[derive(Debug, Default)]
pub struct WalStats {
    /// The replication stream.
    pub link: Link,
    /// 1 while another reader holds the slot and this daemon waits.
    pub standby: Gauge,
    /// Transactions the stream carried.
    pub transactions: Counter,
    /// Events sent to the dead letters after a sink gave up on them.
    pub dead_lettered: Counter,
    /// TRUNCATE statements seen (not captured).
    pub truncates: Counter,
    /// Heartbeat messages written while the stream was idle.
    pub heartbeats: Counter,
    /// 1 while PostgreSQL has invalidated the slot (`wal_status` lost).
    pub invalidated: Gauge,
    /// How the publication differs from what `skor install` made from
    /// this config (checked at start and every minute); empty when it
    /// agrees.
    pub drift: std::sync::Mutex<Vec<String>>,
    /// The slot's confirmed position, as skor last sent it.
    pub confirmed_lsn: AtomicU64,
    /// When (`now_ms`) the confirmed position last moved.
    confirmed_ms: AtomicU64,
}

impl WalStats {
    /// Counters exported by `metrics`.
    pub fn registered(metrics: &Metrics) -> Self {
        Self {
            link: Link::registered(metrics, Connection::Replication),
            heartbeats: metrics.wal_heartbeats.clone().into(),
            invalidated: metrics.wal_slot_invalidated.clone(),
            confirmed_ms: AtomicU64::new(now_ms()),
            ..Self::default()
        }
    }

    /// Records that the confirmed position moved to `lsn`.
    pub fn confirmed(&self, lsn: u64) {
        self.confirmed_lsn.store(lsn, Ordering::Relaxed);
        self.confirmed_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Time since the confirmed position last moved (or since start).
    pub fn confirmed_age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.confirmed_ms.load(Ordering::Relaxed)))
    }
}

/// Counters of a running daemon, for its summary line and for tests.
#[derive(Clone, Debug)]
pub struct Stats {
    /// What the fan-out stage saw, from every source.
    pub events: Arc<EventStats>,
    /// What the notify listener saw.
    pub source: Arc<SourceStats>,
    /// What each sink's worker did, by sink name.
    pub sinks: Vec<(String, Arc<SinkStats>)>,
    /// What durable mode did, when it runs.
    pub durable: Option<Arc<DurableStats>>,
    /// What wal mode did, when it runs.
    pub wal: Option<Arc<WalStats>>,
    /// The last errors of the sinks and the connections, for the status
    /// page.
    pub errors: Arc<RecentErrors>,
}

impl Stats {
    /// The counters of the sink called `name`.
    pub fn sink(&self, name: &str) -> Option<&SinkStats> {
        self.sinks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| &**s)
    }
}
