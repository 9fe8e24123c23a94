//! The AMQP sink: publishes each event to an exchange with publisher
//! confirms, so an event counts as delivered only once the broker acked it.

mod config;
mod plugin;
mod sink;
mod tls;

pub use config::{AmqpConfig, ExchangeType};
pub use sink::{AmqpError, AmqpSink};

/// The AMQP client this sink is built on, for tests and tools that talk to the same broker.
pub use lapin;
