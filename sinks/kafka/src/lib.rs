//! The Kafka sink: produces each event to a topic with an idempotent
//! producer; an event counts as delivered when its delivery report succeeds.

mod config;
mod plugin;
mod sink;

pub use config::{KafkaConfig, OptionValue};
pub use sink::{KafkaError, KafkaSink};

/// The Kafka client this sink is built on, for tests and tools that talk to the same brokers.
pub use rdkafka;
