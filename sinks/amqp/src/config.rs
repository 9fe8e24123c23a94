//! `[sink.NAME]` options of `type = "amqp"`.

use std::fmt;
use std::path::PathBuf;

use skor_sink_kit::{redact_userinfo, Redacted, Template};

fn default_routing_key() -> Template {
    Template::parse("{schema}.{table}.{op}").expect("the default template is valid")
}

const fn default_true() -> bool {
    true
}

const fn default_connect_timeout_ms() -> u64 {
    10_000
}

/// The type of an exchange skor declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Routes on routing-key patterns (`public.orders.*`).
    #[default]
    Topic,
    /// Routes on the exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes on message headers.
    Headers,
}

/// Where and how to publish.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/vhost` or `amqps://...`; holds the
    /// password, so it is never logged.
    pub url: Redacted<String>,
    /// The exchange to publish to; `""` is the default exchange, which
    /// routes to the queue named by the routing key.
    pub exchange: String,
    /// Declare the exchange (durable, of `exchange_type`) at connect time;
    /// otherwise check passively that it exists.
    #[serde(default)]
    pub declare_exchange: bool,
    /// The type of the exchange when `declare_exchange` is set.
    #[serde(default)]
    pub exchange_type: ExchangeType,
    /// The routing key, over `{schema}`, `{table}`, `{op}` and `{channel}`.
    #[serde(default = "default_routing_key")]
    pub routing_key: Template,
    /// Ask the broker to return a message no queue is bound to receive, and
    /// count it as a failed delivery rather than let it vanish.
    #[serde(default = "default_true")]
    pub mandatory: bool,
    /// Mark messages persistent (delivery mode 2), so a durable queue keeps
    /// them across a broker restart.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// How long to wait for the broker when connecting, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// With `amqps://`: PEM file of CA certificates trusted in addition to
    /// the system's roots (for a broker with a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// With `amqps://`: PEM file of a client certificate for mutual TLS
    /// (RabbitMQ's `fail_if_no_peer_cert`); needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// With `amqps://`: PEM file of the client certificate's unencrypted
    /// private key; needs `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl AmqpConfig {
    /// A config for `url` and `exchange` with every other option at its default.
    pub fn new(url: impl Into<String>, exchange: impl Into<String>) -> Self {
        Self {
            url: Redacted::new(url.into()),
            exchange: exchange.into(),
            declare_exchange: false,
            exchange_type: ExchangeType::default(),
            routing_key: default_routing_key(),
            mandatory: true,
            persistent: true,
            connect_timeout_ms: default_connect_timeout_ms(),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }

    /// The URL with its password replaced, fit for a log line.
    pub fn redacted_url(&self) -> String {
        redact_userinfo(self.url.expose())
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.redacted_url())
            .field("exchange", &self.exchange)
            .field("declare_exchange", &self.declare_exchange)
            .field("exchange_type", &self.exchange_type)
            .field("routing_key", &self.routing_key)
            .field("mandatory", &self.mandatory)
            .field("persistent", &self.persistent)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let config = AmqpConfig::new("amqp://guest:s3cret@localhost:5672/%2f", "x");
        assert_eq!(
            config.redacted_url(),
            "amqp://guest:<redacted>@localhost:5672/%2f"
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(
            redact_userinfo("amqp://localhost/a@b"),
            "amqp://localhost/a@b"
        );
    }
}
