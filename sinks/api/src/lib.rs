//! The contract between the skor daemon and its sinks: the event it hands
//! over, the `Sink` trait every destination implements, the error that
//! tells the daemon's worker whether a failed delivery is worth retrying,
//! and the `SinkConfig` trait through which a sink type checks, describes
//! and builds itself from its `[sink.NAME]` table.

mod config;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use bytes::Bytes;
pub use config::{OptionError, SinkConfig};

/// A row operation, as `TG_OP` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    /// A row was inserted; `data` is the new row.
    #[serde(alias = "insert")]
    Insert,
    /// A row was updated; `data` is the new row.
    #[serde(alias = "update")]
    Update,
    /// A row was deleted; `data` is the old row.
    #[serde(alias = "delete")]
    Delete,
    /// A row as it already was, sent by `skor backfill`; `data` is the row.
    #[serde(alias = "read")]
    Read,
}

impl Op {
    /// The operations a table captures, in the order skor installs their
    /// triggers.
    pub const ALL: [Op; 3] = [Op::Insert, Op::Update, Op::Delete];

    /// Every operation an event can carry: the captured ones and READ.
    pub const ROUTED: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Read];

    /// The SQL keyword, as in `TG_OP` (`INSERT`, `UPDATE`, `DELETE`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Read => "READ",
        }
    }

    /// The operation `text` names (`TG_OP`'s spelling), if it is one.
    pub fn parse(text: &str) -> Option<Op> {
        Op::ROUTED.into_iter().find(|op| op.as_str() == text)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a payload is laid out, as a sink's `format` option chose it.
///
/// The daemon renders the payload; a sink forwards it and needs the format
/// only to label it (an HTTP `Content-Type`, an AMQP content type).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// skor's own payload, as the trigger or the WAL renderer produced it.
    #[default]
    Skor,
    /// A CloudEvents 1.0 event in structured JSON mode, skor's payload as
    /// its `data`.
    CloudEvents,
    /// A Debezium change event's value, without schema.
    Debezium,
}

impl Format {
    /// Every format, in the order the config's error message lists them.
    pub const ALL: [Format; 3] = [Format::Skor, Format::CloudEvents, Format::Debezium];

    /// The name the config gives it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Skor => "skor",
            Format::CloudEvents => "cloudevents",
            Format::Debezium => "debezium",
        }
    }

    /// The media type of one payload.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::CloudEvents => "application/cloudevents+json",
            Format::Skor | Format::Debezium => "application/json",
        }
    }

    /// The media type of a JSON array of payloads (a webhook batch).
    pub const fn batch_content_type(self) -> &'static str {
        match self {
            Format::CloudEvents => "application/cloudevents-batch+json",
            Format::Skor | Format::Debezium => "application/json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row change, as received from PostgreSQL.
///
/// `payload` holds the notification's bytes exactly as the trigger produced
/// them, or as the daemon rendered them in the sink's `format`; sinks
/// forward it unchanged. The routing fields were read out of it once, by
/// the daemon, so sinks never parse the payload.
#[derive(Clone, Debug)]
pub struct Event {
    /// The NOTIFY channel the event arrived on.
    pub channel: Arc<str>,
    /// Schema of the changed table.
    pub schema: String,
    /// Name of the changed table.
    pub table: String,
    /// What happened to the row.
    pub op: Op,
    /// The JSON payload as the trigger produced it, or rendered in `format`.
    pub payload: Bytes,
    /// How `payload` is laid out.
    pub format: Format,
    /// The row's key, a JSON object of its key columns (`{"id":1}`), when
    /// the table's key is known and the payload holds every key column.
    /// Events with the same key must reach a sink in order.
    pub key: Option<Bytes>,
    /// The event's stable id, the same on every redelivery, so consumers
    /// can deduplicate on it: its event log id in durable mode (wal mode's
    /// dead letters included), its WAL position in wal mode. `None` in
    /// notify mode, whose events have no stored identity.
    pub id: Option<i64>,
    /// The number the listener gave the event on arrival, unique within
    /// this process; names notify-mode events, which have no `id`.
    pub seq: u64,
}

impl Event {
    /// A message id for consumers to deduplicate on, the same on every
    /// attempt: `evt_<id>` in durable mode (stable across restarts), else
    /// `msg_<process>_<seq>` (stable for this process's attempts).
    pub fn message_id(&self) -> String {
        match self.id {
            Some(id) => format!("evt_{id}"),
            None => format!("msg_{}_{}", process_token(), self.seq),
        }
    }

    /// The key a sink partitions by: the row key, or the table's qualified
    /// name when the row key is unknown, so such a table stays in order as
    /// a whole.
    pub fn partition_key(&self) -> Bytes {
        match &self.key {
            Some(key) => key.clone(),
            None => Bytes::from(format!("{}.{}", self.schema, self.table)),
        }
    }
}

/// A token that differs between runs of skor: start time and process id.
fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{started:x}{:x}", std::process::id())
    })
}

/// Whether a failed delivery may succeed if tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A transient failure (connection refused, timeout, 5xx, 429): retry.
    Retryable,
    /// The far side rejected the event (a 4xx, a bad request): do not retry.
    Permanent,
    /// The sink has no connection to its broker and is re-opening it. The
    /// worker waits, with capped backoff, as long as it takes, and the wait
    /// costs no retry attempt: a broker outage must not exhaust the policy.
    Disconnected,
}

/// Why a sink could not deliver an event.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// Whether the worker should try again.
    pub kind: ErrorKind,
    /// What went wrong, fit for a log line (never holds a secret).
    pub message: String,
}

impl SinkError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }

    /// A lost or refused connection to the broker: wait and try again.
    pub fn disconnected(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Disconnected,
            message: message.into(),
        }
    }

    /// True when the worker should try again.
    pub fn is_retryable(&self) -> bool {
        self.kind != ErrorKind::Permanent
    }
}

/// The broker's answer to an event already handed over: resolves once the
/// far side confirmed it (`Ok`) or refused or lost it (`Err`).
pub type Confirmation = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// A confirmation that has already arrived.
pub fn confirmed() -> Confirmation {
    Box::pin(std::future::ready(Ok(())))
}

/// How the worker may overlap deliveries to a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// `submit` hands events over one after another on a transport that
    /// keeps their order (an AMQP channel, a Kafka partition), and many
    /// confirmations are awaited at once.
    Pipelined,
    /// Each delivery is an independent request (HTTP) that may overtake
    /// another: the worker runs several lanes, one request at a time each,
    /// and sends all events of a row key down the same lane.
    Lanes,
}

/// How many events a sink takes in one delivery, and how long the worker
/// may wait to fill a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// At most this many events per delivery; 1 turns batching off.
    pub max_events: usize,
    /// How long to wait for more events once a batch has its first.
    pub linger: std::time::Duration,
}

impl Batching {
    /// One event per delivery.
    pub const OFF: Batching = Batching {
        max_events: 1,
        linger: std::time::Duration::ZERO,
    };
}

/// A destination for events.
///
/// `send` returns `Ok` only once the far side has confirmed the event (an
/// HTTP 2xx, a broker ack): that is what "delivered" means. The daemon's
/// worker owns retries, backoff, ordering and logging; a sink makes one
/// attempt per call and classifies its failure. Delivery is at-least-once: a
/// retry after a lost confirmation sends the event again, so consumers must
/// tolerate duplicates.
///
/// For a [`Concurrency::Pipelined`] sink the worker calls `submit` for one
/// event at a time, in queue order, and may await many returned
/// confirmations at once. A sink whose transport keeps order (an AMQP
/// channel, a Kafka partition) hands the event over in `submit` and returns
/// the pending broker answer, so publishes are pipelined; the default waits
/// for `send` and so delivers one at a time. A [`Concurrency::Lanes`] sink
/// gets several deliveries at once, never two of the same row key.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Delivers one event, or says why it could not.
    async fn send(&self, event: &Event) -> Result<(), SinkError>;

    /// Hands one event over and returns the confirmation still to come.
    async fn submit(&self, event: &Event) -> Result<Confirmation, SinkError> {
        self.send(event).await?;
        Ok(confirmed())
    }

    /// Delivers several events, in order, as one: all of them are
    /// confirmed, or the whole batch failed and is tried again. Called only
    /// when [`Sink::batching`] allows more than one event.
    async fn send_batch(&self, events: &[Arc<Event>]) -> Result<(), SinkError> {
        for event in events {
            self.send(event).await?;
        }
        Ok(())
    }

    /// How deliveries to this sink may overlap; pipelined by default.
    fn concurrency(&self) -> Concurrency {
        Concurrency::Pipelined
    }

    /// `max_in_flight` when the config does not set it: confirmations
    /// awaited at once (pipelined), or lanes (one request each).
    fn default_max_in_flight(&self) -> usize {
        match self.concurrency() {
            Concurrency::Pipelined => 1_000,
            Concurrency::Lanes => 16,
        }
    }

    /// How many events one delivery may carry; one by default.
    fn batching(&self) -> Batching {
        Batching::OFF
    }
}
