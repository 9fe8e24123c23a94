//! The webhook sink as the daemon sees it: checked, outlined and built
//! through [`SinkConfig`].

use skor_sink_api::{OptionError, Sink, SinkConfig};
use skor_sink_kit::{delay_ms, MAX_DELAY_MS};

use crate::{WebhookConfig, WebhookError, WebhookSink};

impl WebhookError {
    /// The option this error is about, inside `[sink.NAME]`.
    fn key(&self) -> Vec<&str> {
        match self {
            WebhookError::Header { name, .. } => vec!["headers", name.as_str()],
            WebhookError::Url(_) => vec!["url"],
            WebhookError::Client(_) => vec![],
            WebhookError::BatchSize => vec!["batch_size"],
            WebhookError::Secret(_) => vec!["secret"],
            WebhookError::Tls { key, .. } => vec![*key],
        }
    }
}

impl From<WebhookError> for OptionError {
    fn from(error: WebhookError) -> Self {
        OptionError::new(error.key(), error.to_string())
    }
}

impl SinkConfig for WebhookConfig {
    fn type_name(&self) -> &'static str {
        "webhook"
    }

    fn check(&self) -> Vec<OptionError> {
        let mut errors = Vec::new();
        errors.extend(delay_ms("timeout_ms", self.timeout_ms).err());
        errors.extend(delay_ms("connect_timeout_ms", self.connect_timeout_ms).err());
        if self.batch_timeout_ms > MAX_DELAY_MS {
            errors.push(OptionError::new(
                ["batch_timeout_ms"],
                format!(
                    "expected at most {MAX_DELAY_MS} ms (a day), got {}",
                    self.batch_timeout_ms
                ),
            ));
        }
        // Building parses the URL, headers, secret and TLS files: nothing
        // connects yet.
        errors.extend(WebhookSink::new(self).err().map(OptionError::from));
        errors
    }

    fn build(&self) -> Result<Box<dyn Sink>, OptionError> {
        Ok(Box::new(WebhookSink::new(self)?))
    }

    fn outline(&self) -> String {
        let mut text = format!("webhook {}", self.redacted_url());
        if !self.headers.is_empty() {
            let names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
            text.push_str(&format!(" (headers {})", names.join(", ")));
        }
        if !self.secret.is_empty() {
            text.push_str(" signed");
        }
        if self.client_cert.is_some() {
            text.push_str(" with a client certificate");
        }
        text
    }
}
