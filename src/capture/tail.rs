//! What a capture plug-in's `skor tail` reader hands on, and the trait it
//! implements; the command itself (selection, printing) is `crate::tail`.

use std::time::Duration;

use skor_sink_api::{Bytes, Op};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a reader may take to let go at Ctrl-C.
pub const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// Why `skor tail` could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// A `--table` pattern does not parse.
    #[error("--table: {0}")]
    Pattern(String),
    /// The `--filter` expression does not parse.
    #[error("--filter: {0}")]
    Filter(String),
    /// PostgreSQL could not be reached.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    /// Something `skor install` sets up is missing.
    #[error("{0}")]
    Setup(String),
    /// A connection was lost or a statement failed while watching.
    #[error("{mode} mode: {message}")]
    Lost {
        /// The mode whose reader stopped.
        mode: &'static str,
        /// What happened.
        message: String,
    },
    /// The config captures nothing.
    #[error("the config captures nothing to watch")]
    Nothing,
}

/// Something a reader saw.
#[derive(Debug)]
pub enum Seen {
    /// An event, as the daemon would deliver it.
    Event(Event),
    /// A notify-mode oversized payload that was gone when tail looked: the
    /// daemon fetched (and deleted) it first.
    Gone {
        /// Its id in `skor.oversized_payload`.
        id: i64,
        /// The channel it was notified on.
        channel: String,
    },
}

/// One event and its routing fields.
#[derive(Debug)]
pub struct Event {
    /// The channel its table is configured with.
    pub channel: String,
    /// Schema of the changed table.
    pub schema: String,
    /// Name of the changed table.
    pub table: String,
    /// What happened.
    pub op: Op,
    /// The payload, byte for byte as the sinks get it.
    pub payload: Bytes,
}

/// One mode's `skor tail` reader, connected and ready.
#[async_trait::async_trait]
pub trait TailReader: Send {
    /// Hands what it sees to `seen` until `shutdown` (or until nobody
    /// reads `seen`); an error if it stops on its own.
    async fn run(
        self: Box<Self>,
        seen: mpsc::Sender<Seen>,
        shutdown: CancellationToken,
    ) -> Result<(), TailError>;
}
