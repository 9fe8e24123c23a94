//! `[sink.NAME]` options of `type = "mqtt"`.

use std::fmt;
use std::path::PathBuf;

use skor_sink_kit::{redact_userinfo, Redacted, Template};

fn default_topic() -> Template {
    Template::parse("skor/{schema}/{table}/{op}").expect("the default template is valid")
}

const fn default_qos() -> u8 {
    1
}

const fn default_keep_alive_secs() -> u64 {
    30
}

const fn default_connect_timeout_ms() -> u64 {
    10_000
}

const fn default_inflight() -> u16 {
    100
}

/// Where and how to publish.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:1883` or `mqtts://host:8883`, optionally with
    /// `user:password@`; never logged with its password.
    pub url: Redacted<String>,
    /// The topic, over `{schema}`, `{table}`, `{op}` and `{channel}`; MQTT
    /// levels are separated by `/`.
    #[serde(default = "default_topic")]
    pub topic: Template,
    /// 1 (at least once, confirmed by PUBACK) or 2 (exactly once between
    /// skor and the broker, confirmed by PUBCOMP). 0 cannot confirm
    /// anything and is refused.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish with the retain flag, so the broker keeps the last message
    /// of each topic for subscribers that come later.
    #[serde(default)]
    pub retain: bool,
    /// The MQTT client id; by default `skor-` and a token unique to this
    /// process, so two daemons never take over each other's connection.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name, when the url has none.
    #[serde(default)]
    pub username: Option<String>,
    /// Password of `username` (write `${ENV}` to read it from the
    /// environment); never logged.
    #[serde(default)]
    pub password: Option<Redacted<String>>,
    /// TLS with an `mqtt://` url too; `mqtts://` always uses TLS.
    #[serde(default)]
    pub tls: bool,
    /// With TLS: PEM file of CA certificates trusted in addition to the
    /// system's roots (for a broker with a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// With TLS: PEM file of a client certificate for mutual TLS; needs
    /// `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// With TLS: PEM file of the client certificate's unencrypted private
    /// key; needs `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Seconds between pings when nothing else is sent; a broker that
    /// answers none within about this long is taken as gone.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// How long to wait for the broker's CONNACK when connecting, in
    /// milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Publishes on the wire awaiting the broker's ack at once (packet ids
    /// in use); the shared `max_in_flight` bounds the confirmations the
    /// worker awaits, of which the rest wait in line on skor's side.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
}

impl MqttConfig {
    /// A config for `url` with every other option at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Redacted::new(url.into()),
            topic: default_topic(),
            qos: default_qos(),
            retain: false,
            client_id: None,
            username: None,
            password: None,
            tls: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive_secs: default_keep_alive_secs(),
            connect_timeout_ms: default_connect_timeout_ms(),
            inflight: default_inflight(),
        }
    }

    /// The URL with its password replaced, fit for a log line.
    pub fn redacted_url(&self) -> String {
        redact_userinfo(self.url.expose())
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.redacted_url())
            .field("topic", &self.topic)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("inflight", &self.inflight)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let mut config = MqttConfig::new("mqtt://skor:s3cret@localhost:1883");
        config.password = Some(Redacted::new("other-s3cret".into()));
        assert_eq!(
            config.redacted_url(),
            "mqtt://skor:<redacted>@localhost:1883"
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            redact_userinfo("mqtt://localhost/a@b"),
            "mqtt://localhost/a@b"
        );
    }

    #[test]
    fn defaults_are_qos_1_without_retain_on_a_slash_separated_topic() {
        let config: MqttConfig = toml::from_str("url = \"mqtt://localhost\"").unwrap();
        assert_eq!((config.qos, config.retain), (1, false));
        assert_eq!(config.topic, default_topic());
        assert_eq!(config.inflight, 100);
    }
}
