//! `[sink.NAME]` options of `type = "redis"`.

use std::fmt;
use std::path::PathBuf;

use skor_sink_kit::{Redacted, Template};

fn default_stream() -> Template {
    Template::parse("skor:{schema}.{table}").expect("the default template is valid")
}

const fn default_connect_timeout_ms() -> u64 {
    10_000
}

const fn default_response_timeout_ms() -> u64 {
    10_000
}

/// Where and how to append.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://...` for TLS,
    /// or `unix:///path/to/redis.sock`; may hold the password, so it is
    /// never logged.
    pub url: Redacted<String>,
    /// The stream each event is appended to, over `{schema}`, `{table}`,
    /// `{op}` and `{channel}`.
    #[serde(default = "default_stream")]
    pub stream: Template,
    /// Trim each stream to about this many entries as it grows (`MAXLEN ~
    /// N`, which Redis applies when it can drop a whole node); unset keeps
    /// every entry.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// The ACL user, instead of the one in the URL.
    #[serde(default)]
    pub username: Option<String>,
    /// The password, instead of the one in the URL (`"${REDIS_PASSWORD}"`).
    #[serde(default)]
    pub password: Option<Redacted<String>>,
    /// The database number, instead of the URL's path.
    #[serde(default)]
    pub db: Option<i64>,
    /// How long to wait for the server when connecting (TCP, TLS, AUTH,
    /// SELECT), in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long to wait for the answer to one XADD, in milliseconds; past
    /// it the connection counts as lost and is opened again.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// With `rediss://`: PEM file of the CA certificates to trust, instead
    /// of the system's roots (for a server with a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// With `rediss://`: PEM file of a client certificate for mutual TLS
    /// (`tls-auth-clients yes`); needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// With `rediss://`: PEM file of the client certificate's unencrypted
    /// private key; needs `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl RedisConfig {
    /// A config for `url` with every other option at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Redacted::new(url.into()),
            stream: default_stream(),
            maxlen: None,
            username: None,
            password: None,
            db: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            response_timeout_ms: default_response_timeout_ms(),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }

    /// The URL with its password replaced, fit for a log line.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("stream", &self.stream)
            .field("maxlen", &self.maxlen)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

/// `scheme://user:secret@host/...` with the secret replaced, and the
/// `pass=` of a `unix://` URL's query too.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut shown = match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    if let Some(query_at) = shown.find('?') {
        let (head, query) = shown.split_at(query_at + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name @ ("pass" | "password"), _)) => format!("{name}=<redacted>"),
                _ => pair.to_string(),
            })
            .collect();
        shown = format!("{head}{}", query.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let mut config = RedisConfig::new("redis://app:s3cret@localhost:6379/2");
        config.password = Some(Redacted::new("other".into()));
        assert_eq!(
            config.redacted_url(),
            "redis://app:<redacted>@localhost:6379/2"
        );
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("other"),
            "{shown}"
        );
        assert_eq!(redact_url("rediss://:s3cret@h"), "rediss://:<redacted>@h");
        assert_eq!(
            redact_url("unix:///run/redis.sock?db=1&pass=s3cret"),
            "unix:///run/redis.sock?db=1&pass=<redacted>"
        );
        assert_eq!(redact_url("redis://h/0?x=a@b"), "redis://h/0?x=a@b");
        assert_eq!(redact_url("redis://user@h"), "redis://user@h");
    }
}
