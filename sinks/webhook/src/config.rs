//! Configuration of one webhook sink (`type = "webhook"`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use skor_sink_kit::Redacted;

const fn default_timeout_ms() -> u64 {
    5_000
}

const fn default_connect_timeout_ms() -> u64 {
    2_000
}

const fn default_max_redirects() -> usize {
    1
}

const fn default_batch_size() -> usize {
    1
}

/// Options of a webhook sink.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST each event (http or https).
    pub url: String,
    /// Extra request headers; values may hold secrets and are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Redacted<String>>,
    /// How long one request may take, connection included, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long opening a connection (TLS included) may take, in
    /// milliseconds, within `timeout_ms`: past it the endpoint counts as
    /// unreachable and its outage is waited out.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How many 307/308 redirects to follow (the original skor followed
    /// one); 301, 302 and 303 are never followed, they would turn the POST
    /// into a GET.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// Follow 307/308 redirects to another origin (scheme, host, port) too;
    /// such a request carries neither `headers` nor signatures.
    #[serde(default)]
    pub follow_cross_origin_redirects: bool,
    /// Events per request: above 1, the body is a JSON array of the
    /// original payloads, in commit order per row.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a request may wait for more events to fill its batch, in
    /// milliseconds; 0 sends whatever is queued at once.
    #[serde(default)]
    pub batch_timeout_ms: u64,
    /// Standard Webhooks signing secret(s): `"whsec_<base64>"` (the decoded
    /// bytes are the key) or any other string (its bytes are the key), or
    /// a list of them to sign with each while receivers rotate. Empty: no
    /// `webhook-*` headers.
    #[serde(default, deserialize_with = "one_or_many")]
    pub secret: Vec<Redacted<String>>,
    /// PEM file of CA certificates trusted for HTTPS in addition to the
    /// built-in (Mozilla) roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) for mutual TLS; needs
    /// `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1, unencrypted); needs `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// Accepts `secret = "..."` as well as `secret = ["...", "..."]`.
fn one_or_many<'de, D>(deserializer: D) -> Result<Vec<Redacted<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<Redacted<String>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a secret string or a list of secret strings")
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(vec![Redacted::new(value.to_string())])
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut secrets = Vec::new();
            while let Some(secret) = seq.next_element::<Redacted<String>>()? {
                secrets.push(secret);
            }
            Ok(secrets)
        }
    }
    deserializer.deserialize_any(Visitor)
}

impl WebhookConfig {
    /// A config with the defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            headers: BTreeMap::new(),
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            max_redirects: default_max_redirects(),
            follow_cross_origin_redirects: false,
            batch_size: default_batch_size(),
            batch_timeout_ms: 0,
            secret: Vec::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }

    /// The URL fit for a log line: see [`redact_url`].
    pub fn redacted_url(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(url) => redact_url(&url),
            Err(_) => "<invalid url>".to_string(),
        }
    }
}

/// What replaces a secret in a shown URL.
const REDACTED: &str = "<redacted>";

/// A URL fit for a log line. Webhook URLs often carry their token in the
/// path (`https://hooks.slack.com/services/T000/B000/XXXX`) or the query
/// (`?token=...`), so only the scheme, the user name, the host, the port
/// and the first path segment are shown; the rest of the path, every query
/// value, the fragment and the password become `<redacted>`. A user name
/// without a password is redacted too: it is then usually the token.
pub(crate) fn redact_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    match (url.username(), url.password()) {
        ("", None) => {}
        (_, None) => shown.push_str(&format!("{REDACTED}@")),
        (user, Some(_)) => shown.push_str(&format!("{user}:{REDACTED}@")),
    }
    if let Some(host) = url.host_str() {
        shown.push_str(host);
    }
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    let path = url.path();
    let rest = path.strip_prefix('/').unwrap_or(path);
    match rest.split_once('/') {
        Some((first, more)) if !more.is_empty() => {
            shown.push_str(&format!("/{first}/{REDACTED}"));
        }
        _ => shown.push_str(path),
    }
    if let Some(query) = url.query() {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}={REDACTED}"),
                // A bare `?token` is a value too.
                None => REDACTED.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    if url.fragment().is_some() {
        shown.push_str(&format!("#{REDACTED}"));
    }
    shown
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.redacted_url())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_redirects", &self.max_redirects)
            .field(
                "follow_cross_origin_redirects",
                &self.follow_cross_origin_redirects,
            )
            .field("batch_size", &self.batch_size)
            .field("batch_timeout_ms", &self.batch_timeout_ms)
            .field("secrets", &self.secret.len())
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
    fn debug_hides_passwords_and_header_values() {
        let mut config = WebhookConfig::new("https://user:hunter2@example.com/hook");
        config.headers.insert(
            "Authorization".into(),
            Redacted::new("Bearer s3cret".into()),
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("Authorization"), "{shown}");
    }

    #[test]
    fn tokens_in_paths_and_queries_are_redacted() {
        let shown = |url: &str| WebhookConfig::new(url).redacted_url();
        assert_eq!(
            shown("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/services/<redacted>"
        );
        assert_eq!(
            shown("https://example.com:8443/hook?token=abc&x=1"),
            "https://example.com:8443/hook?token=<redacted>&x=<redacted>"
        );
        assert_eq!(
            shown("http://skor:pw@127.0.0.1:9000/hook"),
            "http://skor:<redacted>@127.0.0.1:9000/hook"
        );
        assert_eq!(
            shown("https://ghp_token@example.com/?key#frag"),
            "https://<redacted>@example.com/?<redacted>#<redacted>"
        );
        assert_eq!(shown("http://example.com"), "http://example.com/");
        assert_eq!(shown("http://example.com/a/"), "http://example.com/a/");
        assert_eq!(shown("not a url"), "<invalid url>");
    }

    #[test]
    fn secret_is_one_string_or_a_list_and_never_shown() {
        let one: WebhookConfig =
            toml::from_str("url = \"http://x/\"\nsecret = \"whsec_c2VjcmV0\"").unwrap();
        assert_eq!(one.secret.len(), 1);
        assert_eq!(one.secret[0].expose(), "whsec_c2VjcmV0");
        let two: WebhookConfig =
            toml::from_str("url = \"http://x/\"\nsecret = [\"new-one\", \"old-one\"]").unwrap();
        assert_eq!(two.secret.len(), 2);
        let shown = format!("{two:?}");
        assert!(
            !shown.contains("new-one") && !shown.contains("old-one"),
            "{shown}"
        );
        let none: WebhookConfig = toml::from_str("url = \"http://x/\"").unwrap();
        assert!(none.secret.is_empty() && none.ca_file.is_none());
        let error = toml::from_str::<WebhookConfig>("url = \"http://x/\"\nsecret = 5")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("a secret string or a list"), "{error}");
    }
}
