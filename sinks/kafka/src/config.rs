//! `[sink.NAME]` options of `type = "kafka"`.

use std::collections::BTreeMap;
use std::fmt;

use skor_sink_kit::{Redacted, Template};

fn default_acks() -> String {
    "all".to_string()
}

const fn default_true() -> bool {
    true
}

const fn default_message_timeout_ms() -> u64 {
    300_000
}

/// A librdkafka property value as TOML writes it.
#[derive(Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// `"lz4"`.
    Text(String),
    /// `5`.
    Integer(i64),
    /// `true`.
    Bool(bool),
    /// `0.5`.
    Float(f64),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Text(text) => f.write_str(text),
            OptionValue::Integer(n) => write!(f, "{n}"),
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Where and how to produce.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic, over `{schema}`, `{table}`, `{op}` and `{channel}`.
    pub topic: Template,
    /// Acknowledgements the leader waits for: `all`, `1` or `0`.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// Idempotent producer: retries inside librdkafka never duplicate or
    /// reorder a partition's messages.
    #[serde(default = "default_true")]
    pub idempotent: bool,
    /// How long librdkafka keeps trying one message before it reports a
    /// failure (`message.timeout.ms`); a broker outage shorter than this
    /// only delays delivery.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Any other librdkafka property (compression, TLS, SASL), passed
    /// through as written. Values may hold secrets and are never logged.
    #[serde(default)]
    pub options: BTreeMap<String, Redacted<OptionValue>>,
}

impl KafkaConfig {
    /// A config for `brokers` and `topic` with every other option at its default.
    pub fn new(brokers: impl Into<String>, topic: Template) -> Self {
        Self {
            brokers: brokers.into(),
            topic,
            acks: default_acks(),
            idempotent: true,
            message_timeout_ms: default_message_timeout_ms(),
            options: BTreeMap::new(),
        }
    }

    /// Every librdkafka property this config sets, options last so they win.
    pub fn properties(&self) -> Vec<(String, String)> {
        let mut properties = vec![
            ("bootstrap.servers".to_string(), self.brokers.clone()),
            ("acks".to_string(), self.acks.clone()),
            (
                "enable.idempotence".to_string(),
                self.idempotent.to_string(),
            ),
            (
                "message.timeout.ms".to_string(),
                self.message_timeout_ms.to_string(),
            ),
            ("client.id".to_string(), "skor".to_string()),
        ];
        properties.extend(
            self.options
                .iter()
                .map(|(key, value)| (key.clone(), value.expose().to_string())),
        );
        properties
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("acks", &self.acks)
            .field("idempotent", &self.idempotent)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_sasl_options_pass_through_but_never_show() {
        let config: KafkaConfig = toml::from_str(
            r#"
            brokers = "kafka:9093"
            topic = "pg.{table}"
            [options]
            "security.protocol" = "SASL_SSL"
            "ssl.ca.location" = "/etc/skor/kafka-ca.pem"
            "ssl.key.password" = "k3y-pass"
            "sasl.mechanisms" = "SCRAM-SHA-512"
            "sasl.username" = "skor"
            "sasl.password" = "s3cret"
            "#,
        )
        .unwrap();
        let properties = config.properties();
        assert!(properties.contains(&("sasl.password".into(), "s3cret".into())));
        assert!(properties.contains(&("security.protocol".into(), "SASL_SSL".into())));
        let shown = format!("{config:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("k3y-pass"),
            "{shown}"
        );
    }
}
