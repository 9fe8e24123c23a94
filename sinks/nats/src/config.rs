//! `[sink.NAME]` options of `type = "nats"`.

use std::fmt;
use std::path::PathBuf;

use skor_sink_kit::{Redacted, Template};

const DEFAULT_SUBJECT: &str = "skor.{schema}.{table}.{op}";

const fn default_connect_timeout_ms() -> u64 {
    10_000
}

const fn default_ack_timeout_ms() -> u64 {
    10_000
}

/// The subject template, with the text it was written as: the stream skor
/// creates (`create_stream`) takes its subjects from that text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    text: String,
    template: Template,
}

impl Subject {
    /// Parses a subject template over `{schema}`, `{table}`, `{op}` and
    /// `{channel}`.
    pub fn parse(text: &str) -> Result<Self, skor_sink_kit::TemplateError> {
        Ok(Self {
            text: text.to_string(),
            template: Template::parse(text)?,
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The template, to render per event.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The subject filter that covers every subject the template renders:
    /// each dot-separated token holding a placeholder becomes `*`
    /// (`skor.{schema}.{table}.{op}` is covered by `skor.*.*.*`).
    pub fn wildcard(&self) -> String {
        self.text
            .split('.')
            .map(|token| {
                let placeholder = ["{schema}", "{table}", "{op}", "{channel}"]
                    .iter()
                    .any(|p| token.contains(p));
                if placeholder {
                    "*"
                } else {
                    token
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl<'de> serde::Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Subject::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn default_subject() -> Subject {
    Subject::parse(DEFAULT_SUBJECT).expect("the default template is valid")
}

/// Where and how to publish.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:4222`, `tls://host:4222`, or several servers separated
    /// by commas; may hold `user:password@` or `token@`, so it is never
    /// logged as written.
    pub url: Redacted<String>,
    /// The subject, over `{schema}`, `{table}`, `{op}` and `{channel}`; a
    /// JetStream stream must cover it.
    #[serde(default = "default_subject")]
    pub subject: Subject,
    /// User name, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(default)]
    pub password: Option<Redacted<String>>,
    /// Authentication token.
    #[serde(default)]
    pub token: Option<Redacted<String>>,
    /// An nkey seed (`SU...`): the client signs the server's nonce with it.
    #[serde(default)]
    pub nkey_seed: Option<Redacted<String>>,
    /// A `.creds` file (user JWT and nkey seed), as `nsc` writes it.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS; `tls://` URLs imply it.
    #[serde(default)]
    pub require_tls: bool,
    /// PEM file of the CA certificates that sign the server's certificate,
    /// trusted instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of a client certificate for mutual TLS; needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's unencrypted private key.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// How long to wait for a server when connecting, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long to wait for the stream's acknowledgement of a message, in
    /// milliseconds; past it the message is sent again (and dropped by the
    /// stream as a duplicate if it had been stored).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// The stream skor creates when `create_stream` is set.
    #[serde(default)]
    pub stream: Option<String>,
    /// Create `stream`, file-backed, over the subject's wildcard form, when
    /// it does not exist yet; otherwise a stream must already cover the
    /// subjects.
    #[serde(default)]
    pub create_stream: bool,
}

impl NatsConfig {
    /// A config for `url` with every other option at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Redacted::new(url.into()),
            subject: default_subject(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            credentials_file: None,
            require_tls: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            ack_timeout_ms: default_ack_timeout_ms(),
            stream: None,
            create_stream: false,
        }
    }

    /// The server URLs as written, one per server.
    pub fn servers(&self) -> Vec<&str> {
        self.url
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The URL with passwords and tokens replaced, fit for a log line.
    pub fn redacted_url(&self) -> String {
        self.servers()
            .into_iter()
            .map(redact_userinfo)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether every connection must use TLS.
    pub fn tls_required(&self) -> bool {
        self.require_tls || self.servers().iter().any(|s| s.starts_with("tls://"))
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("subject", &self.subject.text)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("token", &self.token)
            .field("nkey_seed", &self.nkey_seed)
            .field("credentials_file", &self.credentials_file)
            .field("require_tls", &self.require_tls)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("ack_timeout_ms", &self.ack_timeout_ms)
            .field("stream", &self.stream)
            .field("create_stream", &self.create_stream)
            .finish()
    }
}

/// `scheme://user:secret@host` with the secret replaced; a lone `token@`
/// is a secret as a whole.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:<redacted>{}", &rest[at..]),
        None => format!("{scheme}<redacted>{}", &rest[at..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_never_show() {
        let mut config = NatsConfig::new("nats://skor:s3cret@a:4222, tls://t0ken@b:4443,nats://c");
        config.password = Some(Redacted::new("pw-s3cret".into()));
        config.token = Some(Redacted::new("t0ken".into()));
        config.nkey_seed = Some(Redacted::new("SUAS3CRET".into()));
        assert_eq!(
            config.redacted_url(),
            "nats://skor:<redacted>@a:4222,tls://<redacted>@b:4443,nats://c"
        );
        let shown = format!("{config:?}");
        for secret in ["s3cret", "t0ken", "SUAS3CRET"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(config.tls_required(), "a tls:// server requires TLS");
    }

    #[test]
    fn the_wildcard_covers_every_rendered_subject() {
        assert_eq!(default_subject().wildcard(), "skor.*.*.*");
        assert_eq!(
            Subject::parse("cdc.{schema}_{table}.all")
                .unwrap()
                .wildcard(),
            "cdc.*.all"
        );
    }

    #[test]
    fn options_read_from_toml() {
        let config: NatsConfig = toml::from_str(
            r#"
            url = "nats://a:4222,nats://b:4222"
            subject = "pg.{table}.{op}"
            user = "skor"
            password = "s3cret"
            stream = "PG"
            create_stream = true
            "#,
        )
        .unwrap();
        assert_eq!(config.servers(), ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(config.subject.text(), "pg.{table}.{op}");
        assert_eq!(config.password.as_ref().unwrap().expose(), "s3cret");
        assert!(config.create_stream && !config.tls_required());
    }
}
