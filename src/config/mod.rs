//! The daemon's configuration: the TOML file's shape, its defaults, and the
//! checks that serde alone cannot make.

mod columns;
mod env;
mod error;
pub mod filter;
mod load;
mod outline;
mod sinks;
mod validate;
mod when;

use std::collections::BTreeMap;

use skor_sink_api::{Format, Op};
use skor_sink_kit::Redacted;
use skor_sink_webhook::WebhookConfig;

pub use columns::Columns;
pub use error::ConfigError;
pub use outline::Outline;
pub use validate::{TableName, TablePattern};
pub use when::{one_expression, row_reference, Metadata, When};

/// The channel the original skor listened on, and skor's default.
pub const DEFAULT_CHANNEL: &str = "skor";

/// The whole config file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the events come from.
    pub source: SourceConfig,
    /// The tables whose changes `skor install` captures.
    #[serde(default, rename = "table")]
    pub tables: Vec<TableConfig>,
    /// Destinations, by name; read from `raw_sinks` once the file parsed.
    #[serde(skip)]
    pub sinks: BTreeMap<String, ConfiguredSink>,
    /// The `[sink.NAME]` tables as written, split by `sinks::parse_sink`
    /// so an error in one names its exact key.
    #[serde(default, rename = "sink")]
    raw_sinks: BTreeMap<String, toml::Table>,
    /// Which events go to which sinks; none means every event to every sink.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Process-wide settings.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// How durable mode claims, retries and cleans up events.
    #[serde(default)]
    pub durable: DurableConfig,
    /// The HTTP endpoint for metrics and health probes; off when absent.
    pub admin: Option<AdminConfig>,
}

const fn default_reconnect_max_backoff_ms() -> u64 {
    10_000
}

const fn default_heartbeat_interval_ms() -> u64 {
    5_000
}

const fn default_query_timeout_ms() -> u64 {
    5_000
}

const fn default_shed_notify_queue_usage() -> f64 {
    0.5
}

fn default_channels() -> Vec<String> {
    vec![DEFAULT_CHANNEL.to_string()]
}

/// The PostgreSQL database skor listens to.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq connection string, keyword form or URL; holds the password.
    pub dsn: Redacted<String>,
    /// Channels to LISTEN on.
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
    /// Longest wait between two reconnection attempts, in milliseconds.
    #[serde(default = "default_reconnect_max_backoff_ms")]
    pub reconnect_max_backoff_ms: u64,
    /// How tables capture their changes unless a `[[table]]` says otherwise.
    #[serde(default)]
    pub mode: Mode,
    /// After this long without a message on the listening connection, in
    /// milliseconds, a `SELECT 1` checks that it is alive.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// How long the listener waits for PostgreSQL to answer the heartbeat,
    /// LISTEN or an oversized-payload fetch, in milliseconds; past it the
    /// connection counts as lost.
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
    /// `pg_notification_queue_usage()` (0 to 1) past which the listener
    /// stops waiting for full sink queues and drops what does not fit, so
    /// PostgreSQL's notification queue never fills and NOTIFYing commits
    /// keep succeeding.
    #[serde(default = "default_shed_notify_queue_usage")]
    pub shed_notify_queue_usage: f64,
    /// Largest oversized notify-mode payload fetched from the database;
    /// larger ones stay in `skor.oversized_payload` and are reported.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: u64,
    /// Wal mode: the logical replication slot skor reads (and `install`
    /// creates).
    #[serde(default = "default_wal_name")]
    pub slot: String,
    /// Wal mode: the publication naming the captured tables.
    #[serde(default = "default_wal_name")]
    pub publication: String,
    /// Wal mode: how often skor tells PostgreSQL how far its sinks
    /// confirmed, in milliseconds; the slot keeps WAL until then.
    #[serde(default = "default_wal_status_interval_ms")]
    pub wal_status_interval_ms: u64,
    /// Wal mode: after this long without a change from the stream, in
    /// milliseconds, skor writes a logical decoding message in the captured
    /// database (if the cluster wrote WAL past what skor confirmed), so the
    /// slot has WAL of its own database to move past; 0 turns it off.
    #[serde(default = "default_wal_heartbeat_interval_ms")]
    pub wal_heartbeat_interval_ms: u64,
    /// Wal mode: `skor install` creates the slot as a failover slot, which
    /// PostgreSQL 17 and later keep on a standby that can be promoted.
    #[serde(default)]
    pub slot_failover: bool,
}

fn default_wal_name() -> String {
    DEFAULT_CHANNEL.to_string()
}

const fn default_wal_status_interval_ms() -> u64 {
    1_000
}

const fn default_wal_heartbeat_interval_ms() -> u64 {
    60_000
}

const fn default_max_payload_bytes() -> u64 {
    64 * 1024 * 1024
}

/// How a table's changes reach skor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The trigger sends the payload with NOTIFY: nothing is stored, and
    /// events committed while skor is not listening are lost.
    #[default]
    Notify,
    /// The trigger writes the event into `skor.event_log` in the changing
    /// transaction; skor deletes it once every sink confirmed it.
    Durable,
    /// No trigger: skor reads the changes from the write-ahead log through
    /// a publication and a logical replication slot, and moves the slot
    /// past a transaction once every sink confirmed its events.
    Wal,
}

fn default_ops() -> Vec<Op> {
    Op::ALL.to_vec()
}

fn default_route_ops() -> Vec<Op> {
    Op::ROUTED.to_vec()
}

/// What PostgreSQL logs of a row's old version on UPDATE and DELETE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaIdentity {
    /// The primary key's columns.
    Default,
    /// The whole row: wal mode can send the old row and fill unchanged
    /// TOASTed values.
    Full,
}

/// One captured table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table`, or a bare table name in `public`.
    pub name: String,
    /// Operations to capture.
    #[serde(default = "default_ops")]
    pub ops: Vec<Op>,
    /// Columns published in `data`: `"*"`, a list, or a list per operation.
    #[serde(default)]
    pub columns: Columns,
    /// Channel the trigger notifies; the first of `source.channels` if unset.
    pub channel: Option<String>,
    /// Columns that identify a row, instead of its primary key: events of
    /// one key keep their order (Kafka message key, partition).
    pub key: Option<Vec<String>>,
    /// Notify, durable or wal; `source.mode` if unset.
    pub mode: Option<Mode>,
    /// UPDATE events carry the old row as `"old"`, restricted to the same
    /// columns as `data` (wal mode needs `REPLICA IDENTITY FULL`).
    #[serde(default)]
    pub old: bool,
    /// A SQL condition a change must meet to become an event: the
    /// triggers' `WHEN` clause, or wal mode's publication row filter. One
    /// string for every operation, or a table per operation.
    #[serde(default)]
    pub when: When,
    /// Opt-in payload fields: `event_id`, `txid`, `tx_time` (trigger
    /// modes), `commit_time` and `lsn` (wal mode).
    #[serde(default)]
    pub metadata: Vec<Metadata>,
    /// Wal mode: the replica identity `install` gives the table; unset
    /// leaves it as it is.
    pub replica_identity: Option<ReplicaIdentity>,
    /// Adds `"skor_seq" : N` to every payload, so PostgreSQL never merges
    /// two identical notifications of one transaction.
    #[serde(default)]
    pub unique_payloads: bool,
}

/// One named destination: its type's own options, and how the worker
/// drives it.
#[derive(Debug)]
pub struct ConfiguredSink {
    /// Retry and queue settings shared by every sink type.
    pub delivery: DeliveryConfig,
    /// The sink type's own options; the type checks, outlines and builds
    /// itself (see `crate::sinks` for the types this build knows).
    pub options: Box<dyn skor_sink_api::SinkConfig>,
}

const fn default_retries() -> u32 {
    5
}

const fn default_backoff_ms() -> u64 {
    100
}

const fn default_max_backoff_ms() -> u64 {
    30_000
}

const fn default_queue_capacity() -> usize {
    10_000
}

/// How the worker in front of a sink retries and queues.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Retries after the first attempt; 0 disables retrying.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Base delay between attempts, in milliseconds.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// How the delay grows from one retry to the next.
    #[serde(default)]
    pub backoff: Backoff,
    /// Upper bound of one delay, in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Events that may wait for this sink before `when_full` applies.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// What to do with an event when the queue is full.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Deliveries awaiting their answer at once: publishes awaiting the
    /// broker's confirmation (AMQP, Kafka; default 1000), or concurrent
    /// requests, one per lane of row keys (webhook; default 16).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// How long an unreachable sink (refused, reset, DNS failure, connect
    /// timeout, broker gone) is waited for, in milliseconds, before each
    /// further attempt counts against `retries`; unset waits without limit.
    #[serde(default)]
    pub max_outage_ms: Option<u64>,
    /// How the payload is laid out for this sink: skor's own (the
    /// default, forwarded as captured), CloudEvents or Debezium.
    #[serde(default)]
    pub format: Format,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retries: default_retries(),
            backoff_ms: default_backoff_ms(),
            backoff: Backoff::default(),
            max_backoff_ms: default_max_backoff_ms(),
            queue_capacity: default_queue_capacity(),
            when_full: WhenFull::default(),
            max_in_flight: None,
            max_outage_ms: None,
            format: Format::Skor,
        }
    }
}

/// Growth of the delay between retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// `backoff_ms` times the retry number: 100, 200, 300 ms...
    #[default]
    Linear,
    /// `backoff_ms` doubled at each retry: 100, 200, 400 ms...
    Exponential,
}

/// The policy for an event that finds its sink's queue full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// Do not queue it for this sink: count it and log the drops at most
    /// once a second with one sample; other sinks are not held up.
    Drop,
    /// Wait for room: nothing is dropped, but every sink waits meanwhile
    /// (PostgreSQL's notification queue holds the backlog) until that queue
    /// passes `source.shed_notify_queue_usage`.
    #[default]
    Block,
}

fn default_route_tables() -> Vec<String> {
    vec!["*".to_string()]
}

/// Sends the events that match it to one or more sinks.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Only events from this channel; any channel if unset.
    pub channel: Option<String>,
    /// `schema.table` patterns (`*` matches any run of characters).
    #[serde(default = "default_route_tables")]
    pub tables: Vec<String>,
    /// Only these operations; every one, READ included, if unset.
    #[serde(default = "default_route_ops")]
    pub ops: Vec<Op>,
    /// Only events for which this CEL expression is true, e.g.
    /// `op == "UPDATE" && data.status == "paid"`; parsed when the config is
    /// read. An expression that cannot be evaluated for an event (a missing
    /// field) does not match it; see `src/config/filter.rs`.
    #[serde(default)]
    pub filter: Option<crate::config::filter::Filter>,
    /// Names of the sinks that get the matching events.
    pub sinks: Vec<String>,
}

const fn default_claim_window() -> usize {
    5_000
}

const fn default_poll_interval_ms() -> u64 {
    1_000
}

const fn default_backlog_log_interval_ms() -> u64 {
    30_000
}

const fn default_lease_ttl_ms() -> u64 {
    10_000
}

const fn default_max_claim_bytes() -> u64 {
    64 * 1024 * 1024
}

/// Durable mode's settings, shared by every durable table.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurableConfig {
    /// Most events one daemon has handed to one sink and not yet seen
    /// confirmed: the size of one claim, and the bound on events delivered
    /// twice to a sink after a crash. (Not a batch: a sink's `batch_size`
    /// is events per request.)
    #[serde(default = "default_claim_window")]
    pub claim_window: usize,
    /// The old name of `claim_window`, still accepted with a warning.
    #[serde(default, rename = "batch_size")]
    pub deprecated_batch_size: Option<usize>,
    /// How often to look for events without a wake-up, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How long delivered events are kept before removal, in milliseconds;
    /// 0 deletes each event as soon as it is delivered.
    #[serde(default)]
    pub retention_ms: u64,
    /// A field added first in each durable payload with the event's id, for
    /// consumers that cannot read headers; unset keeps the payload as is.
    pub id_field: Option<String>,
    /// How often the backlog is logged while there is one, in milliseconds.
    #[serde(default = "default_backlog_log_interval_ms")]
    pub backlog_log_interval_ms: u64,
    /// How long a partition lease lasts without renewal, in milliseconds: a
    /// daemon that lost its connection stops delivering before this, and
    /// another daemon takes its partitions over after it.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Most payload bytes a daemon holds claimed at once; a claim always
    /// takes at least one event, so a larger row still moves.
    #[serde(default = "default_max_claim_bytes")]
    pub max_claim_bytes: u64,
}

impl Default for DurableConfig {
    fn default() -> Self {
        Self {
            claim_window: default_claim_window(),
            deprecated_batch_size: None,
            poll_interval_ms: default_poll_interval_ms(),
            retention_ms: 0,
            id_field: None,
            backlog_log_interval_ms: default_backlog_log_interval_ms(),
            lease_ttl_ms: default_lease_ttl_ms(),
            max_claim_bytes: default_max_claim_bytes(),
        }
    }
}

const fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// Settings of the daemon process itself.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// On SIGINT/SIGTERM, how long sinks may take to drain their queues.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }
}

const fn default_stuck_after_ms() -> u64 {
    60_000
}

/// The admin endpoint: `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port to serve on, such as `127.0.0.1:9187`.
    pub listen: std::net::SocketAddr,
    /// A sink with events waiting that settles none for this long, in
    /// milliseconds, is stuck: `/readyz` then answers 503.
    #[serde(default = "default_stuck_after_ms")]
    pub stuck_after_ms: u64,
}

impl Config {
    /// The connection settings of the source, named `skor` in
    /// pg_stat_activity unless the DSN names it otherwise. Validation parsed
    /// the DSN already; this fails only if a certificate file changed since.
    pub fn postgres(&self) -> Result<crate::postgres::Postgres, crate::postgres::DsnError> {
        let mut pg = crate::postgres::Postgres::from_dsn(self.source.dsn.expose())?;
        let settings = pg.config_mut();
        if settings.get_application_name().is_none() {
            settings.application_name("skor");
        }
        if settings.get_connect_timeout().is_none() {
            settings.connect_timeout(std::time::Duration::from_secs(10));
        }
        Ok(pg)
    }

    /// The config the original command line `skor DSN URL` stands for: LISTEN
    /// on `skor` and POST every payload to `url`.
    pub fn legacy(dsn: String, url: String) -> Self {
        let sink = ConfiguredSink {
            delivery: DeliveryConfig::default(),
            options: Box::new(WebhookConfig::new(url)),
        };
        Self {
            source: SourceConfig {
                dsn: Redacted::new(dsn),
                channels: default_channels(),
                reconnect_max_backoff_ms: default_reconnect_max_backoff_ms(),
                mode: Mode::Notify,
                heartbeat_interval_ms: default_heartbeat_interval_ms(),
                query_timeout_ms: default_query_timeout_ms(),
                shed_notify_queue_usage: default_shed_notify_queue_usage(),
                max_payload_bytes: default_max_payload_bytes(),
                slot: default_wal_name(),
                publication: default_wal_name(),
                wal_status_interval_ms: default_wal_status_interval_ms(),
                wal_heartbeat_interval_ms: default_wal_heartbeat_interval_ms(),
                slot_failover: false,
            },
            tables: Vec::new(),
            sinks: BTreeMap::from([("webhook".to_string(), sink)]),
            raw_sinks: BTreeMap::new(),
            routes: Vec::new(),
            daemon: DaemonConfig::default(),
            durable: DurableConfig::default(),
            admin: None,
        }
    }

    /// The mode `table` captures in.
    pub fn table_mode(&self, table: &TableConfig) -> Mode {
        table.mode.unwrap_or(self.source.mode)
    }

    /// Whether the daemon reads skor's event log: durable tables' events
    /// wait there, and wal mode keeps its dead letters there.
    pub fn reads_event_log(&self) -> bool {
        self.uses_mode(Mode::Durable) || self.uses_wal()
    }

    /// Whether any event reaches skor through the replication slot.
    pub fn uses_wal(&self) -> bool {
        self.uses_mode(Mode::Wal)
    }

    /// Whether some table (or, with none configured, the source) captures
    /// in `mode`.
    pub fn uses_mode(&self, mode: Mode) -> bool {
        if self.tables.is_empty() {
            return self.source.mode == mode;
        }
        self.tables.iter().any(|t| self.table_mode(t) == mode)
    }

    /// The channels to LISTEN on for notify-mode payloads: every channel,
    /// less those only durable and wal tables use, so nobody can inject an event
    /// on them with a hand-written NOTIFY. With no `[[table]]`, the
    /// source's mode decides.
    pub fn notify_channels(&self) -> Vec<String> {
        if self.tables.is_empty() {
            return match self.source.mode {
                Mode::Notify => self.source.channels.clone(),
                Mode::Durable | Mode::Wal => Vec::new(),
            };
        }
        let not_notified = |channel: &String| {
            let mut users = self
                .tables
                .iter()
                .filter(|t| self.table_channel(t) == channel);
            let mut any = false;
            let none_notify = users.all(|t| {
                any = true;
                self.table_mode(t) != Mode::Notify
            });
            any && none_notify
        };
        self.source
            .channels
            .iter()
            .filter(|c| !not_notified(c))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;
