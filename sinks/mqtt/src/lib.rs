//! The MQTT sink: publishes each event with QoS 1 or 2 and counts it as
//! delivered only once the broker acked it (PUBACK or PUBCOMP).

mod config;
mod plugin;
mod sink;
mod tls;
mod url;

pub use config::MqttConfig;
pub use sink::{MqttError, MqttSink};

/// The MQTT client this sink is built on, for tests and tools that talk to the same broker.
pub use rumqttc;
