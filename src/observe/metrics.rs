//! The daemon's Prometheus metrics: one registry, whose counters the
//! listener, the sink workers and durable mode update as they go, and the
//! gauges read from PostgreSQL when `/metrics` is scraped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use skor_sink_api::Op;

use crate::counter;
use crate::observe::recent::RecentErrors;

/// Labels of `skor_events_received_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceivedLabels {
    channel: String,
    table: String,
    op: &'static str,
}

/// The label of every per-sink series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// The label of `skor_route_filter_errors_total`: the route's index in the
/// config, as in its errors (`route[0]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// A connection to PostgreSQL skor keeps open.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Connection {
    /// The connection that LISTENs (notify mode).
    Listener,
    /// The connection that claims from the event log (durable mode).
    EventLog,
    /// The replication stream (wal mode).
    Replication,
}

impl Connection {
    /// Its name, as in its `connection` label.
    pub const fn name(self) -> &'static str {
        match self {
            Connection::Listener => "listener",
            Connection::EventLog => "event_log",
            Connection::Replication => "replication",
        }
    }

    /// Its `connection` label.
    const fn label(self) -> ConnectionLabel {
        ConnectionLabel {
            connection: self.name(),
        }
    }
}

/// The label of per-connection series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    connection: &'static str,
}

/// Delivery latency buckets: 1 ms to about 65 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The per-sink series of one sink.
pub struct SinkSeries {
    pub delivered: counter::Counter,
    pub retried: counter::Counter,
    pub outage_waits: counter::Counter,
    pub failed: counter::Counter,
    pub dead_lettered: counter::Counter,
    pub dropped: counter::Counter,
    pub depth: Gauge,
    pub disconnected: Gauge,
    pub blocked: Gauge,
    pub latency: Histogram,
}

/// Gauges of the database, set at each scrape.
#[derive(Debug, Default)]
pub struct DatabaseGauges {
    /// `pg_notification_queue_usage()`, 0 to 1.
    pub notify_queue_usage: Gauge<f64, AtomicU64>,
    /// Events pending in the event log.
    pub backlog: Gauge<f64, AtomicU64>,
    /// Events in the event log's dead letters.
    pub dead_letters: Gauge<f64, AtomicU64>,
    /// Age of the oldest pending event, in seconds.
    pub oldest_pending_seconds: Gauge<f64, AtomicU64>,
    /// WAL written since the slot's confirmed position, in bytes.
    pub wal_lag_bytes: Gauge<f64, AtomicU64>,
    /// WAL the slot keeps on disk, in bytes.
    pub wal_retained_bytes: Gauge<f64, AtomicU64>,
    /// Seconds since skor last moved the slot's confirmed position.
    pub wal_confirmed_age_seconds: Gauge<f64, AtomicU64>,
}

/// Every series skor exports, registered under the `skor_` prefix.
pub struct Metrics {
    registry: Registry,
    received: Family<ReceivedLabels, Counter>,
    pub(crate) invalid: Counter,
    pub(crate) unrouted: Counter,
    filter_errors: Family<RouteLabel, Counter>,
    pub(crate) lost: Counter,
    pub(crate) claimed: Counter,
    pub(crate) finished: Counter,
    pub(crate) wal_heartbeats: Counter,
    pub(crate) wal_slot_invalidated: Gauge,
    delivered: Family<SinkLabel, Counter>,
    retried: Family<SinkLabel, Counter>,
    outage_waits: Family<SinkLabel, Counter>,
    failed: Family<SinkLabel, Counter>,
    dead_lettered: Family<SinkLabel, Counter>,
    dropped: Family<SinkLabel, Counter>,
    depth: Family<SinkLabel, Gauge>,
    disconnected: Family<SinkLabel, Gauge>,
    blocked: Family<SinkLabel, Gauge>,
    pub(crate) shedding: Gauge,
    capacity: Family<SinkLabel, Gauge>,
    latency: Family<SinkLabel, Histogram, fn() -> Histogram>,
    reconnects: Family<ConnectionLabel, Counter>,
    connected: Family<ConnectionLabel, Gauge>,
    /// Read from PostgreSQL when scraped.
    pub database: DatabaseGauges,
    /// The last errors, for the status page: no series, but every counter
    /// holder gets it from here.
    pub errors: Arc<RecentErrors>,
}

impl Metrics {
    /// Registers every series; the event log's only when `durable`, the
    /// slot's only when `wal`.
    pub fn new(durable: bool, wal: bool) -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("skor"),
            received: Family::default(),
            invalid: Counter::default(),
            unrouted: Counter::default(),
            filter_errors: Family::default(),
            lost: Counter::default(),
            claimed: Counter::default(),
            finished: Counter::default(),
            wal_heartbeats: Counter::default(),
            wal_slot_invalidated: Gauge::default(),
            delivered: Family::default(),
            retried: Family::default(),
            outage_waits: Family::default(),
            failed: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            depth: Family::default(),
            disconnected: Family::default(),
            blocked: Family::default(),
            shedding: Gauge::default(),
            capacity: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            reconnects: Family::default(),
            connected: Family::default(),
            database: DatabaseGauges::default(),
            errors: Arc::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "build",
            "The running skor's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "events_received",
            "Events received from PostgreSQL, by channel, table and operation",
            metrics.received.clone(),
        );
        r.register(
            "events_invalid",
            "Notifications skipped because they were not skor events",
            metrics.invalid.clone(),
        );
        r.register(
            "events_unrouted",
            "Events that no route matched",
            metrics.unrouted.clone(),
        );
        r.register(
            "route_filter_errors",
            "Events whose route filter could not be evaluated (a missing field, a type \
             mismatch), which so did not match that route, by the route's index in the config",
            metrics.filter_errors.clone(),
        );
        r.register(
            "events_lost",
            "Oversized events whose payload could not be fetched",
            metrics.lost.clone(),
        );
        r.register(
            "sink_delivered",
            "Events the sink confirmed",
            metrics.delivered.clone(),
        );
        r.register(
            "sink_retried",
            "Events sent again after a failed attempt; waiting out an outage retries none",
            metrics.retried.clone(),
        );
        r.register(
            "sink_outage_waits",
            "Events held back once more because the sink was unreachable, each wait \
             counted apart from retries",
            metrics.outage_waits.clone(),
        );
        r.register(
            "sink_failed",
            "Events given up on: a permanent error or retries exhausted",
            metrics.failed.clone(),
        );
        r.register(
            "sink_dead_lettered",
            "Failed events kept in the event log's dead letters (durable mode)",
            metrics.dead_lettered.clone(),
        );
        r.register(
            "sink_dropped",
            "Events not queued because the sink's queue was full: when_full = \"drop\", \
             or shedding load (skor_listener_shedding)",
            metrics.dropped.clone(),
        );
        r.register(
            "sink_blocked",
            "1 while the listener waits for room in the sink's queue (when_full = \"block\")",
            metrics.blocked.clone(),
        );
        r.register(
            "listener_shedding",
            "1 while PostgreSQL's notification queue is past shed_notify_queue_usage and \
             events that find a full sink queue are dropped",
            metrics.shedding.clone(),
        );
        r.register(
            "sink_queue_depth",
            "Events queued for the sink or being delivered, not yet settled",
            metrics.depth.clone(),
        );
        r.register(
            "sink_disconnected",
            "1 while the sink is unreachable and its events wait out the outage",
            metrics.disconnected.clone(),
        );
        r.register(
            "sink_queue_capacity",
            "Room in the sink's queue (queue_capacity)",
            metrics.capacity.clone(),
        );
        r.register(
            "sink_delivery_seconds",
            "Time from an event's queueing to the sink's confirmation, retries included",
            metrics.latency.clone(),
        );
        r.register(
            "postgres_reconnects",
            "Times a lost connection to PostgreSQL was re-established",
            metrics.reconnects.clone(),
        );
        r.register(
            "postgres_connected",
            "1 while the connection to PostgreSQL is up",
            metrics.connected.clone(),
        );
        r.register(
            "notification_queue_usage",
            "pg_notification_queue_usage(): the fraction of PostgreSQL's NOTIFY queue in use",
            metrics.database.notify_queue_usage.clone(),
        );
        if durable {
            r.register(
                "durable_claimed",
                "Events claimed from the event log",
                metrics.claimed.clone(),
            );
            r.register(
                "durable_finished",
                "Events every sink settled, removed from (or marked in) the event log",
                metrics.finished.clone(),
            );
            r.register(
                "durable_backlog_events",
                "Events pending in the event log",
                metrics.database.backlog.clone(),
            );
            r.register(
                "durable_dead_letters",
                "Events in the event log's dead letters",
                metrics.database.dead_letters.clone(),
            );
            r.register(
                "durable_oldest_pending_seconds",
                "Age of the oldest pending event in the event log",
                metrics.database.oldest_pending_seconds.clone(),
            );
        }
        if wal {
            r.register(
                "wal_lag_bytes",
                "WAL written since the replication slot's confirmed position: what skor's \
                 sinks have not all confirmed yet",
                metrics.database.wal_lag_bytes.clone(),
            );
            r.register(
                "wal_retained_bytes",
                "WAL PostgreSQL keeps on disk for the replication slot",
                metrics.database.wal_retained_bytes.clone(),
            );
            r.register(
                "wal_confirmed_age_seconds",
                "Seconds since skor last moved the replication slot's confirmed position",
                metrics.database.wal_confirmed_age_seconds.clone(),
            );
            r.register(
                "wal_heartbeats",
                "Logical decoding messages skor wrote in the captured database while the \
                 stream was idle, so the replication slot can move past other databases' WAL",
                metrics.wal_heartbeats.clone(),
            );
            r.register(
                "wal_slot_invalidated",
                "1 while PostgreSQL has invalidated skor's replication slot (wal_status lost): \
                 the changes in the WAL it dropped are gone; see `skor install` and `skor backfill`",
                metrics.wal_slot_invalidated.clone(),
            );
        }
        metrics
    }

    /// The series of the sink called `name`, whose queue holds `capacity`.
    pub fn sink(&self, name: &str, capacity: usize) -> SinkSeries {
        let label = SinkLabel {
            sink: name.to_string(),
        };
        self.capacity
            .get_or_create(&label)
            .set(capacity.try_into().unwrap_or(i64::MAX));
        SinkSeries {
            delivered: self.delivered.get_or_create_owned(&label).into(),
            retried: self.retried.get_or_create_owned(&label).into(),
            outage_waits: self.outage_waits.get_or_create_owned(&label).into(),
            failed: self.failed.get_or_create_owned(&label).into(),
            dead_lettered: self.dead_lettered.get_or_create_owned(&label).into(),
            dropped: self.dropped.get_or_create_owned(&label).into(),
            depth: self.depth.get_or_create_owned(&label),
            disconnected: self.disconnected.get_or_create_owned(&label),
            blocked: self.blocked.get_or_create_owned(&label),
            latency: self.latency.get_or_create_owned(&label),
        }
    }

    /// Failed evaluations of the filter of route `route` (its index).
    pub fn filter_errors(&self, route: usize) -> counter::Counter {
        self.filter_errors
            .get_or_create_owned(&RouteLabel {
                route: route.to_string(),
            })
            .into()
    }

    /// Whether `connection` is up, as a gauge.
    pub fn connected(&self, connection: Connection) -> Gauge {
        self.connected.get_or_create_owned(&connection.label())
    }

    /// Reconnections of `connection`.
    pub fn reconnects(&self, connection: Connection) -> counter::Counter {
        self.reconnects
            .get_or_create_owned(&connection.label())
            .into()
    }

    /// A counter of events received, per channel, table and operation;
    /// tables other than `known` (table names by schema) share one `other`
    /// label.
    pub fn received(self: &Arc<Self>, known: Arc<KnownTables>) -> ReceivedCounter {
        ReceivedCounter {
            metrics: Arc::clone(self),
            known,
            cache: HashMap::new(),
            others: HashMap::new(),
        }
    }

    /// Every series in Prometheus's text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Counters of one schema's tables, by table, then op.
type TableCounters = HashMap<String, [Option<Counter>; 4]>;

/// Table names by schema.
pub type KnownTables = HashMap<String, HashSet<String>>;

/// The tables `config` names, by schema: the only `table` labels events
/// get.
pub fn known_tables(config: &crate::config::Config) -> KnownTables {
    let mut known = KnownTables::new();
    for table in &config.tables {
        if let Ok(name) = crate::config::TableName::parse(&table.name) {
            known.entry(name.schema).or_default().insert(name.name);
        }
    }
    known
}

/// The `table` label of events from tables no `[[table]]` names: a
/// notification anyone can send must not grow the metrics without bound.
pub const OTHER_TABLE: &str = "other";

/// Counts received events by channel, then `schema.table`, then op, keeping
/// the counters it found so the hot path neither allocates nor locks.
#[derive(Clone)]
pub struct ReceivedCounter {
    metrics: Arc<Metrics>,
    /// The configured tables, which get labels of their own.
    known: Arc<KnownTables>,
    cache: HashMap<Arc<str>, HashMap<String, TableCounters>>,
    /// The `other` counters, by channel.
    others: HashMap<Arc<str>, [Option<Counter>; 4]>,
}

impl ReceivedCounter {
    /// Counts one event.
    pub fn count(&mut self, channel: &Arc<str>, schema: &str, table: &str, op: Op) {
        let slot = op as usize;
        let counters = self
            .cache
            .get_mut(&**channel)
            .and_then(|schemas| schemas.get_mut(schema))
            .and_then(|tables| tables.get_mut(table));
        if let Some(Some(counter)) = counters.map(|c| &c[slot]) {
            counter.inc();
            return;
        }
        if !self.known.get(schema).is_some_and(|t| t.contains(table)) {
            let others = self.others.entry(Arc::clone(channel)).or_default();
            let metrics = &self.metrics;
            others[slot]
                .get_or_insert_with(|| {
                    metrics.received.get_or_create_owned(&ReceivedLabels {
                        channel: channel.to_string(),
                        table: OTHER_TABLE.to_string(),
                        op: op.as_str(),
                    })
                })
                .inc();
            return;
        }
        let counter = self.metrics.received.get_or_create_owned(&ReceivedLabels {
            channel: channel.to_string(),
            table: format!("{schema}.{table}"),
            op: op.as_str(),
        });
        counter.inc();
        self.cache
            .entry(Arc::clone(channel))
            .or_default()
            .entry(schema.to_string())
            .or_default()
            .entry(table.to_string())
            .or_default()[slot] = Some(counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_counters_with_their_labels() {
        let metrics = Arc::new(Metrics::new(false, false));
        let known = KnownTables::from([("public".into(), HashSet::from(["orders".into()]))]);
        let mut received = metrics.received(Arc::new(known));
        let channel: Arc<str> = Arc::from("skor");
        received.count(&channel, "public", "orders", Op::Insert);
        received.count(&channel, "public", "orders", Op::Insert);
        received.count(&channel, "public", "orders", Op::Delete);
        for forged in 0..100 {
            received.count(&channel, "public", &format!("forged_{forged}"), Op::Insert);
        }
        let sink = metrics.sink("hook", 100);
        sink.delivered.add(3);
        sink.outage_waits.add(2);
        sink.latency.observe(0.003);
        let text = metrics.encode();
        for line in [
            r#"skor_events_received_total{channel="skor",table="public.orders",op="INSERT"} 2"#,
            r#"skor_events_received_total{channel="skor",table="public.orders",op="DELETE"} 1"#,
            r#"skor_events_received_total{channel="skor",table="other",op="INSERT"} 100"#,
            r#"skor_sink_delivered_total{sink="hook"} 3"#,
            r#"skor_sink_outage_waits_total{sink="hook"} 2"#,
            r#"skor_sink_retried_total{sink="hook"} 0"#,
            r#"skor_sink_queue_capacity{sink="hook"} 100"#,
            r#"skor_sink_disconnected{sink="hook"} 0"#,
            r#"skor_sink_blocked{sink="hook"} 0"#,
            "skor_listener_shedding 0",
            r#"skor_sink_delivery_seconds_bucket{sink="hook",le="0.004"} 1"#,
            r#"skor_sink_delivery_seconds_count{sink="hook"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(!text.contains("skor_durable_"), "{text}");
        assert!(!text.contains("forged"), "{text}");
    }
}
