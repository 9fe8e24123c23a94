//! Where events come from. Each source reads changes its own way and hands
//! them to the fan-out stage (`crate::delivery::fanout`); the daemon holds a list of
//! sources and runs them side by side.
//!
//! - [`notify`]: LISTEN for the triggers' NOTIFY payloads; nothing is kept.
//! - [`durable`]: claim the events the triggers wrote to `skor.event_log`
//!   and delete each once every sink it was routed to confirmed it.
//! - [`wal`]: stream the write-ahead log through a logical replication slot
//!   and move the slot past what every routed sink confirmed.

pub mod durable;
pub mod notify;
pub mod payload;
pub mod wal;

use tokio_util::sync::CancellationToken;

/// A source of events, connected and ready to run.
#[async_trait::async_trait]
pub trait Source: Send {
    /// What it reads, for logs: `notify`, `durable`.
    fn name(&self) -> &'static str;

    /// Hands events to the fan-out stage until `shutdown`, reconnecting
    /// whenever its connection is lost; then lets go of the sink queues
    /// and returns once what it must see confirmed is settled, or what is
    /// left is safe for the next run.
    async fn run(self: Box<Self>, shutdown: CancellationToken);
}
