//! Sending one event as an HTTP POST and classifying the outcome.

use std::error::Error as _;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{redirect, StatusCode};
use skor_sink_api::{Batching, Bytes, Concurrency, ErrorKind, Event, Sink, SinkError};

use crate::signing::{self, Signer};
use crate::tls::with_tls;
use crate::{WebhookConfig, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER};

/// Why a webhook sink could not be created from its config.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL does not parse or is not http(s).
    #[error("invalid webhook url: {0}")]
    Url(String),
    /// A header name or value is not valid HTTP.
    #[error("invalid header `{name}`: {reason}")]
    Header {
        /// The header's name, as configured.
        name: String,
        /// What is wrong with it (never the value).
        reason: String,
    },
    /// The HTTP client could not be built (TLS roots, for example).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// `batch_size` is 0.
    #[error("batch_size must be at least 1")]
    BatchSize,
    /// A signing secret is not usable (bad base64, wrong length).
    #[error("invalid {0}")]
    Secret(String),
    /// A TLS file (`ca_file`, `client_cert`, `client_key`) is missing,
    /// unreadable or not what it should be.
    #[error("{key}: {message}")]
    Tls {
        /// The config key at fault.
        key: &'static str,
        /// What is wrong, naming the file.
        message: String,
    },
}

/// POSTs payloads to one URL over a pooled, keep-alive HTTP client.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    timeout: Duration,
    batching: Batching,
    signer: Option<Signer>,
}

impl WebhookSink {
    /// Builds the sink; fails on an invalid URL or header.
    pub fn new(config: &WebhookConfig) -> Result<Self, WebhookError> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| WebhookError::Url(format!("{}: {e}", config.redacted_url())))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::Url(format!(
                "{}: the scheme must be http or https",
                config.redacted_url()
            )));
        }
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            let header_error = |reason: String| WebhookError::Header {
                name: name.clone(),
                reason,
            };
            let header_name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| header_error(e.to_string()))?;
            let mut header_value = HeaderValue::from_str(value.expose())
                .map_err(|_| header_error("the value holds characters HTTP forbids".into()))?;
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }
        if config.batch_size == 0 {
            return Err(WebhookError::BatchSize);
        }
        let batching = Batching {
            max_events: config.batch_size,
            linger: Duration::from_millis(config.batch_timeout_ms),
        };
        let signer = Signer::new(&config.secret).map_err(WebhookError::Secret)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(redirect::Policy::limited(config.max_redirects))
            .user_agent(concat!("skor/", env!("CARGO_PKG_VERSION")));
        let client = with_tls(builder, config)?
            .build()
            .map_err(|e| WebhookError::Client(describe(&e)))?;
        Ok(Self {
            client,
            url,
            headers,
            timeout,
            batching,
            signer,
        })
    }

    /// POSTs `body`, with `ids` in the event-id header when there are any,
    /// signed as `webhook_id()` when a secret is set.
    async fn post(
        &self,
        body: Bytes,
        ids: Option<String>,
        webhook_id: impl FnOnce() -> String,
    ) -> Result<(), SinkError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone());
        if let Some(ids) = ids {
            request = request.header(EVENT_ID_HEADER, ids);
        }
        if let Some(signer) = &self.signer {
            // The attempt's own time, as the spec asks: a retry is signed
            // afresh, so receivers may reject stale timestamps.
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let id = webhook_id();
            let signature = signer.sign(&id, timestamp, &body);
            request = request
                .header(WEBHOOK_ID_HEADER, id)
                .header(WEBHOOK_TIMESTAMP_HEADER, timestamp)
                .header(WEBHOOK_SIGNATURE_HEADER, signature);
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(error) => {
                let error = error.without_url();
                if error.is_timeout() {
                    let waited = self.timeout.as_millis();
                    return Err(SinkError::retryable(format!(
                        "no answer within {waited} ms"
                    )));
                }
                // Too many redirects will not change by retrying; every
                // transport failure (refused, reset) may pass.
                return Err(if error.is_redirect() || error.is_builder() {
                    SinkError::permanent(describe(&error))
                } else {
                    SinkError::retryable(describe(&error))
                });
            }
        };
        let status = response.status();
        // Reading the body to its end lets the connection go back to the pool.
        let _ = response.bytes().await;
        match status_error_kind(status) {
            None => Ok(()),
            Some(kind) => Err(SinkError {
                kind,
                message: format!("HTTP {status}"),
            }),
        }
    }
}

/// The body of a batch: a JSON array of the payloads as received.
fn batch_body(events: &[Arc<Event>]) -> Bytes {
    let size = events.iter().map(|e| e.payload.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(size);
    body.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&event.payload);
    }
    body.push(b']');
    Bytes::from(body)
}

/// The event ids of a batch, comma-separated in body order; `None` in
/// notify mode, where events have none.
fn batch_ids(events: &[Arc<Event>]) -> Option<String> {
    let mut ids = String::new();
    for id in events.iter().filter_map(|e| e.id) {
        if !ids.is_empty() {
            ids.push(',');
        }
        let _ = write!(ids, "{id}");
    }
    (!ids.is_empty()).then_some(ids)
}

/// Which HTTP statuses are worth another attempt: 408, 429 and 5xx but 501.
pub fn status_error_kind(status: StatusCode) -> Option<ErrorKind> {
    if status.is_success() {
        None
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
    {
        Some(ErrorKind::Retryable)
    } else {
        Some(ErrorKind::Permanent)
    }
}

/// Describes a transport error with its causes but without the URL, which
/// may carry credentials.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The header that carries a durable event's stable id.
pub const EVENT_ID_HEADER: &str = "skor-event-id";

#[async_trait::async_trait]
impl Sink for WebhookSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.post(
            event.payload.clone(),
            event.id.map(|id| id.to_string()),
            || signing::event_id(event),
        )
        .await
    }

    async fn send_batch(&self, events: &[Arc<Event>]) -> Result<(), SinkError> {
        self.post(batch_body(events), batch_ids(events), || {
            signing::batch_id(events)
        })
        .await
    }

    fn concurrency(&self) -> Concurrency {
        Concurrency::Lanes
    }

    fn batching(&self) -> Batching {
        self.batching
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_the_design_says() {
        for code in [200, 201, 204] {
            assert_eq!(status_error_kind(StatusCode::from_u16(code).unwrap()), None);
        }
        for code in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                status_error_kind(status),
                Some(ErrorKind::Retryable),
                "{code}"
            );
        }
        for code in [301, 400, 401, 403, 404, 409, 422, 501] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                status_error_kind(status),
                Some(ErrorKind::Permanent),
                "{code}"
            );
        }
    }

    #[test]
    fn rejects_non_http_urls_and_bad_headers() {
        let error = WebhookSink::new(&WebhookConfig::new("ftp://example.com/"))
            .err()
            .unwrap();
        assert!(error.to_string().contains("http or https"), "{error}");
        let mut config = WebhookConfig::new("http://example.com/");
        config.headers.insert(
            "X-Token".into(),
            skor_sink_api::Redacted::new("line\nbreak".into()),
        );
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(
            error.contains("X-Token") && !error.contains("break"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_secret_is_a_start_up_error_that_does_not_show_it() {
        let mut config = WebhookConfig::new("https://example.com/");
        config.secret = vec![skor_sink_api::Redacted::new("whsec_???".into())];
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(
            error.starts_with("invalid secret:")
                && error.contains("base64")
                && !error.contains("???"),
            "{error}"
        );
        config.secret = vec![skor_sink_api::Redacted::new("short".into())];
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(error.contains("5 bytes"), "{error}");
        config.secret = vec![skor_sink_api::Redacted::new("x".repeat(32))];
        assert!(WebhookSink::new(&config).is_ok());
    }
}
