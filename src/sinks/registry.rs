//! The one list of sink types: a `[sink.NAME]` table's `type` is looked up
//! here. Adding a sink type is one line below, its crate, and its cargo
//! feature.

use serde::de::DeserializeOwned;
use skor_sink_api::SinkConfig;

/// Reads a sink type's own options out of its table; the error names the
/// key at fault inside the table.
pub type ParseOptions = fn(toml::Table) -> Result<Box<dyn SinkConfig>, ParseError>;

/// A sink table that does not deserialize, with the path to the bad key.
pub type ParseError = serde_path_to_error::Error<toml::de::Error>;

/// One sink type: its `type` name, the cargo feature it needs, and, when
/// this build has that feature, how to read its options.
#[derive(Clone, Copy)]
pub struct SinkType {
    /// The value of `type` that selects it.
    pub name: &'static str,
    /// The cargo feature that builds it in; `None` for the built-in types.
    pub feature: Option<&'static str>,
    /// How to read its options; `None` when this build left it out.
    pub parse: Option<ParseOptions>,
}

impl SinkType {
    /// The sink type called `name`, if any build knows it.
    pub fn named(name: &str) -> Option<&'static SinkType> {
        SINK_TYPES.iter().find(|t| t.name == name)
    }
}

/// Deserializes `C` from a sink's table.
fn parse<C: SinkConfig + DeserializeOwned>(
    table: toml::Table,
) -> Result<Box<dyn SinkConfig>, ParseError> {
    serde_path_to_error::deserialize::<_, C>(toml::Value::Table(table))
        .map(|config| Box::new(config) as Box<dyn SinkConfig>)
}

/// A sink type always built in.
macro_rules! builtin {
    ($name:literal, $config:ty) => {
        SinkType {
            name: $name,
            feature: None,
            parse: Some(parse::<$config>),
        }
    };
}

/// A sink type behind the cargo feature of the same name.
macro_rules! optional {
    ($name:literal, $config:ty) => {
        SinkType {
            name: $name,
            feature: Some($name),
            #[cfg(feature = $name)]
            parse: Some(parse::<$config>),
            #[cfg(not(feature = $name))]
            parse: None,
        }
    };
}

/// Every sink type, by its `type` name.
pub static SINK_TYPES: &[SinkType] = &[
    builtin!("webhook", skor_sink_webhook::WebhookConfig),
    builtin!("stdout", super::StdoutConfig),
    optional!("amqp", skor_sink_amqp::AmqpConfig),
    optional!("kafka", skor_sink_kafka::KafkaConfig),
    optional!("pubsub", skor_sink_pubsub::PubsubConfig),
    optional!("redis", skor_sink_redis::RedisConfig),
    optional!("mqtt", skor_sink_mqtt::MqttConfig),
    optional!("nats", skor_sink_nats::NatsConfig),
];
