//! The NATS sink: publishes each event to a JetStream subject and counts it
//! delivered once the stream acknowledged it; `Nats-Msg-Id` carries the
//! event's message id, so the stream's duplicate window drops a redelivery.

mod config;
mod plugin;
mod sink;

pub use config::{NatsConfig, Subject};
pub use sink::{NatsError, NatsSink};

/// The NATS client this sink is built on, for tests and tools that talk to the same server.
pub use async_nats;
