//! Configuration of one webhook sink (`type = "webhook"`).

use std::collections::BTreeMap;
use std::fmt;

use skor_sink_api::Redacted;

const fn default_timeout_ms() -> u64 {
    5_000
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
    /// How many redirects to follow (the original skor followed one).
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// Events per request: above 1, the body is a JSON array of the
    /// original payloads, in commit order per row.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a request may wait for more events to fill its batch, in
    /// milliseconds; 0 sends whatever is queued at once.
    #[serde(default)]
    pub batch_timeout_ms: u64,
}

impl WebhookConfig {
    /// A config with the defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            headers: BTreeMap::new(),
            timeout_ms: default_timeout_ms(),
            max_redirects: default_max_redirects(),
            batch_size: default_batch_size(),
            batch_timeout_ms: 0,
        }
    }

    /// The URL with any password replaced, fit for a log line.
    pub fn redacted_url(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("<redacted>"));
                }
                // The URL type percent-encodes the marker; show it as written.
                url.to_string().replacen("%3Credacted%3E", "<redacted>", 1)
            }
            Err(_) => "<invalid url>".to_string(),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.redacted_url())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("max_redirects", &self.max_redirects)
            .field("batch_size", &self.batch_size)
            .field("batch_timeout_ms", &self.batch_timeout_ms)
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
}
