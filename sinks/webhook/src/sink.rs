//! Sending one event as an HTTP POST and classifying the outcome.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::{redirect, StatusCode};
use skor_sink_api::{Batching, Bytes, Concurrency, ErrorKind, Event, Format, Sink, SinkError};
// `describe` quotes a reqwest error's URL, which may carry credentials:
// callers strip it first (`without_url`) where the request had one.
use skor_sink_kit::{closed_before_answer, describe, has_io_error};

use crate::config::redact_url;
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

/// Bytes of a response body read before the response is dropped: enough
/// for any answer a webhook gives, while an endless body cannot hold an
/// attempt until its timeout. A body cut short costs its connection, not
/// the pool.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Bytes of a response body quoted in an error message.
const QUOTED_BODY_BYTES: usize = 200;

/// POSTs payloads to one URL over a pooled, keep-alive HTTP client.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The configured headers, sent only to the configured origin.
    headers: HeaderMap,
    timeout: Duration,
    connect_timeout: Duration,
    max_redirects: usize,
    cross_origin: bool,
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
        // Within the request's own timeout, so that a connect that hangs is
        // told apart from an answer that does not come.
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms).min(timeout);
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            // Redirects are followed by hand (see `next_hop`): reqwest's
            // policies would turn a POST into a GET on 301/302/303 and
            // carry custom headers and signatures to any origin.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("skor/", env!("CARGO_PKG_VERSION")));
        let client = with_tls(builder, config)?
            .build()
            .map_err(|e| WebhookError::Client(describe(&e)))?;
        Ok(Self {
            client,
            url,
            headers,
            timeout,
            connect_timeout,
            max_redirects: config.max_redirects,
            cross_origin: config.follow_cross_origin_redirects,
            batching,
            signer,
        })
    }

    /// POSTs `body` as `content_type`, with `ids` in the event-id header
    /// when there are any, signed as `webhook_id()` when a secret is set,
    /// following 307/308 redirects as the config allows.
    async fn post(
        &self,
        body: Bytes,
        content_type: &'static str,
        ids: Option<String>,
        webhook_id: impl FnOnce() -> String,
    ) -> Result<(), SinkError> {
        let mut common = HeaderMap::new();
        common.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(ids) = ids {
            if let Ok(value) = HeaderValue::from_str(&ids) {
                common.insert(EVENT_ID_HEADER, value);
            }
        }
        // Configured headers and signatures: for the configured origin only.
        let mut trusted = self.headers.clone();
        if let Some(signer) = &self.signer {
            // The attempt's own time, as the spec asks: a retry is signed
            // afresh, so receivers may reject stale timestamps.
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let id = webhook_id();
            let signature = signer.sign(&id, timestamp, &body);
            for (name, value) in [
                (WEBHOOK_ID_HEADER, id),
                (WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string()),
                (WEBHOOK_SIGNATURE_HEADER, signature),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    trusted.insert(name, value);
                }
            }
        }
        let deadline = Instant::now() + self.timeout;
        let mut url = self.url.clone();
        let mut same_origin = true;
        let mut redirects = 0;
        loop {
            let mut headers = common.clone();
            if same_origin {
                headers.extend(trusted.clone());
            }
            let request = self
                .client
                .post(url.clone())
                .headers(headers)
                // One timeout for the attempt, redirects included.
                .timeout(deadline.saturating_duration_since(Instant::now()))
                .body(body.clone());
            let response = request
                .send()
                .await
                // The URL may carry credentials and tokens: keep it out.
                .map_err(|e| self.transport_error(&e.without_url()))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers().get(LOCATION).cloned();
                drain(response).await;
                let next = self.next_hop(status, &url, location.as_ref(), redirects)?;
                same_origin = same_origin && next.origin() == url.origin();
                url = next;
                redirects += 1;
                continue;
            }
            let answer = drain(response).await;
            return match status_error_kind(status) {
                None => Ok(()),
                Some(kind) => Err(SinkError {
                    kind,
                    message: format!("HTTP {status}{}", quote(&answer)),
                }),
            };
        }
    }

    /// Where a redirect answer leads, if skor may follow it; else the final
    /// error, naming the `Location` (redacted like the configured URL).
    fn next_hop(
        &self,
        status: StatusCode,
        from: &reqwest::Url,
        location: Option<&HeaderValue>,
        followed: usize,
    ) -> Result<reqwest::Url, SinkError> {
        let target = location
            .and_then(|value| value.to_str().ok())
            .and_then(|text| from.join(text).ok());
        let Some(target) = target else {
            return Err(SinkError::permanent(format!(
                "HTTP {status} without a usable Location header"
            )));
        };
        let shown = redact_url(&target);
        let refuse = |why: String| {
            SinkError::permanent(format!(
                "HTTP {status} redirects to {shown}, not followed: {why}"
            ))
        };
        match status {
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {}
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER => {
                return Err(refuse(
                    "it would turn the POST into a GET without its body; \
                     point the sink's url at the new address"
                        .into(),
                ))
            }
            _ => return Err(refuse("only 307 and 308 are followed".into())),
        }
        if !matches!(target.scheme(), "http" | "https") {
            return Err(refuse("the scheme must be http or https".into()));
        }
        if target.origin() != from.origin() && !self.cross_origin {
            return Err(refuse(
                "another origin (scheme, host, port); set \
                 follow_cross_origin_redirects = true to follow it"
                    .into(),
            ));
        }
        if followed >= self.max_redirects {
            return Err(refuse(format!(
                "max_redirects = {} already followed",
                self.max_redirects
            )));
        }
        Ok(target)
    }

    /// Classifies a request that got no answer. An endpoint that cannot be
    /// reached (refused, DNS, connect timeout, connection closed before an
    /// answer) is an outage the worker waits out; a timeout once the
    /// request was sent is a failed attempt.
    fn transport_error(&self, error: &reqwest::Error) -> SinkError {
        let text = describe(error);
        if error.is_connect() {
            if has_io_error(error, &[io::ErrorKind::InvalidData]) {
                // A TLS handshake the server refused (certificate, protocol)
                // will not fix itself while we wait: spend retries on it.
                return SinkError::retryable(format!("TLS handshake failed: {text}"));
            }
            if error.is_timeout() {
                return SinkError::disconnected(format!(
                    "unreachable: no connection within {} ms",
                    self.connect_timeout.as_millis()
                ));
            }
            return SinkError::disconnected(format!("unreachable: {text}"));
        }
        if error.is_timeout() {
            return SinkError::retryable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ));
        }
        if closed_before_answer(error) {
            // A server going down resets what it holds. It may have taken
            // the event first: delivery is at-least-once, the retry after
            // the outage may duplicate it.
            return SinkError::disconnected(format!(
                "unreachable: the connection closed before an answer: {text}"
            ));
        }
        if error.is_builder() {
            return SinkError::permanent(text);
        }
        SinkError::retryable(text)
    }
}

/// Reads a response's body up to [`MAX_BODY_BYTES`], then drops the
/// response; returns the first [`QUOTED_BODY_BYTES`] bytes. A body that
/// fails midway is left at what arrived: the status already answered.
async fn drain(mut response: reqwest::Response) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut read = 0;
    while read < MAX_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = (QUOTED_BODY_BYTES + 1).saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    kept
}

/// `, body: "..."` with the start of a response body, on one line, or
/// nothing for an empty body.
fn quote(body: &[u8]) -> String {
    let cut = body.len() > QUOTED_BODY_BYTES;
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY_BYTES)]);
    let mut line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.is_empty() {
        return String::new();
    }
    if cut {
        // The cut may have split a character into a replacement mark.
        line = line.trim_end_matches('\u{fffd}').to_string();
        line.push_str("...");
    }
    format!(", body: {line:?}")
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

/// The header that carries a durable event's stable id.
pub const EVENT_ID_HEADER: &str = "skor-event-id";

#[async_trait::async_trait]
impl Sink for WebhookSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.post(
            event.payload.clone(),
            event.format.content_type(),
            event.id.map(|id| id.to_string()),
            || signing::event_id(event),
        )
        .await
    }

    async fn send_batch(&self, events: &[Arc<Event>]) -> Result<(), SinkError> {
        // A sink renders every event in its one format.
        let content_type = events
            .first()
            .map_or(Format::Skor, |e| e.format)
            .batch_content_type();
        self.post(batch_body(events), content_type, batch_ids(events), || {
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
            skor_sink_kit::Redacted::new("line\nbreak".into()),
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
        config.secret = vec![skor_sink_kit::Redacted::new("whsec_???".into())];
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(
            error.starts_with("invalid secret:")
                && error.contains("base64")
                && !error.contains("???"),
            "{error}"
        );
        config.secret = vec![skor_sink_kit::Redacted::new("short".into())];
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(error.contains("5 bytes"), "{error}");
        config.secret = vec![skor_sink_kit::Redacted::new("x".repeat(32))];
        assert!(WebhookSink::new(&config).is_ok());
    }
}
