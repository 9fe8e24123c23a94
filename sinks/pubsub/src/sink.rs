//! Publishing over the Pub/Sub REST API (`projects.topics.publish`), one
//! request at a time per lane, each event's row key as its ordering key.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use skor_sink_api::{Batching, Concurrency, Event, Sink, SinkError};
use skor_sink_kit::{closed_before_answer, describe, has_io_error, Template};
use tokio::sync::OnceCell;

use crate::auth::Auth;
use crate::config::{PubsubConfig, Target};

/// Messages one publish request may carry (the API's limit).
pub const MAX_BATCH: usize = 1_000;

/// Bytes of JSON one publish request may carry: under the API's 10 MB
/// request limit, with room for the envelope.
const MAX_REQUEST_BYTES: usize = 9_000_000;

/// Bytes of an error answer read and quoted.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a Pub/Sub sink could not be built from its config.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PubsubError {
    /// The config key at fault.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> PubsubError {
    PubsubError {
        key,
        message: message.into(),
    }
}

/// Publishes events to the topics its template names.
pub struct PubsubSink {
    client: reqwest::Client,
    /// `http://host:port` or `https://...`, no trailing slash.
    base: String,
    project: String,
    topic: Template,
    auth: Auth,
    timeout: Duration,
    batching: Batching,
}

impl PubsubSink {
    /// Checks the config and reads the credentials file; nothing connects
    /// before the first event.
    pub fn new(config: &PubsubConfig) -> Result<Self, PubsubError> {
        if config.project.is_empty() || config.project.contains('/') {
            return Err(bad(
                "project",
                "expected a project id such as \"my-project\"",
            ));
        }
        if !(1..=MAX_BATCH).contains(&config.batch_size) {
            return Err(bad(
                "batch_size",
                format!("expected 1 to {MAX_BATCH}, got {}", config.batch_size),
            ));
        }
        if config.emulator_host.is_some() && config.endpoint.is_some() {
            return Err(bad(
                "emulator_host",
                "set either endpoint or emulator_host, not both",
            ));
        }
        if config.emulator_host.is_some() && config.credentials_file.is_some() {
            return Err(bad(
                "credentials_file",
                "the emulator takes no credentials; remove credentials_file or emulator_host",
            ));
        }
        let (base, auth) = match config.target() {
            Target::Emulator(host) => {
                if host.contains("://") || host.contains('/') || !host.contains(':') {
                    let from = if config.emulator_host.is_some() {
                        String::new()
                    } else {
                        format!(" (from {})", crate::config::EMULATOR_HOST_VAR)
                    };
                    return Err(bad(
                        "emulator_host",
                        format!("{host:?}{from}: expected host:port, such as \"localhost:8085\""),
                    ));
                }
                (format!("http://{host}"), Auth::None)
            }
            Target::Api(endpoint) => {
                let url = reqwest::Url::parse(&endpoint)
                    .map_err(|e| bad("endpoint", format!("{endpoint:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
                    return Err(bad(
                        "endpoint",
                        format!("{endpoint:?}: expected https://host[:port]"),
                    ));
                }
                let auth = match &config.credentials_file {
                    Some(path) => Auth::key_file(path).map_err(|m| bad("credentials_file", m))?,
                    None => Auth::Default(OnceCell::new()),
                };
                (endpoint, auth)
            }
        };
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("skor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                bad(
                    "endpoint",
                    format!("cannot build the HTTP client: {}", describe(&e)),
                )
            })?;
        Ok(Self {
            client,
            base,
            project: config.project.clone(),
            topic: config.topic.clone(),
            auth,
            timeout,
            batching: Batching {
                max_events: config.batch_size,
                linger: Duration::from_millis(config.batch_timeout_ms),
            },
        })
    }

    /// `projects/P/topics/T`, for messages and errors.
    fn topic_name(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    /// Publishes `events`, in order: consecutive events of one topic go in
    /// as few requests as the API's limits allow, one request after the
    /// other, so a row's events reach Pub/Sub in commit order.
    async fn publish_all<'a>(
        &self,
        events: impl Iterator<Item = &'a Event>,
    ) -> Result<(), SinkError> {
        let mut topic: Option<String> = None;
        let mut body = Body::default();
        for event in events {
            let this = self.topic.render(event);
            let message = message(event);
            let switch = topic.as_deref().is_some_and(|t| t != this);
            if switch || !body.has_room(&message) {
                self.publish(topic.as_deref().unwrap_or(&this), body.finish())
                    .await?;
            }
            body.push(&message);
            topic = Some(this);
        }
        match topic {
            Some(topic) => self.publish(&topic, body.finish()).await,
            None => Ok(()),
        }
    }

    /// One publish request.
    async fn publish(&self, topic: &str, body: Vec<u8>) -> Result<(), SinkError> {
        let url = format!(
            "{}/v1/projects/{}/topics/{}:publish",
            self.base,
            escape(&self.project),
            escape(topic)
        );
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        // gcp_auth's own client has no timeout: a token endpoint that
        // hangs must not hold the lane.
        let header = tokio::time::timeout(self.timeout, self.auth.header())
            .await
            .map_err(|_| {
                SinkError::retryable(format!(
                    "no access token within {} ms",
                    self.timeout.as_millis()
                ))
            })??;
        if let Some(header) = header {
            let mut value = HeaderValue::from_str(&header).map_err(|_| {
                SinkError::permanent("the access token is not a valid header value")
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = read_answer(response).await;
        Err(status_error(status, &answer, &self.topic_name(topic)))
    }

    /// Classifies a request that got no answer, as the webhook sink does:
    /// an endpoint that cannot be reached is an outage to wait out; a
    /// timeout once the request was sent is a failed attempt.
    fn transport_error(&self, error: &reqwest::Error) -> SinkError {
        let text = describe(error);
        if error.is_connect() {
            if has_io_error(error, &[io::ErrorKind::InvalidData]) {
                return SinkError::retryable(format!("TLS handshake failed: {text}"));
            }
            if error.is_timeout() {
                return SinkError::disconnected(format!(
                    "unreachable: no connection to {} within {} ms",
                    self.base,
                    self.timeout.as_millis()
                ));
            }
            return SinkError::disconnected(format!("unreachable: {}: {text}", self.base));
        }
        if error.is_timeout() {
            return SinkError::retryable(format!(
                "no answer from {} within {} ms",
                self.base,
                self.timeout.as_millis()
            ));
        }
        if closed_before_answer(error) {
            // Pub/Sub may have taken the messages first: delivery is
            // at-least-once, the attempt after the outage may duplicate them.
            return SinkError::disconnected(format!(
                "unreachable: {} closed the connection before an answer: {text}",
                self.base
            ));
        }
        if error.is_builder() {
            return SinkError::permanent(text);
        }
        SinkError::retryable(text)
    }
}

/// One message, serialized: `{"data":..., "attributes":..., "orderingKey":...}`.
fn message(event: &Event) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Attributes<'a> {
        schema: &'a str,
        table: &'a str,
        op: &'a str,
        channel: &'a str,
        event_id: String,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Message<'a> {
        data: String,
        attributes: Attributes<'a>,
        ordering_key: &'a str,
    }
    let key = event.partition_key();
    let message = Message {
        data: base64::engine::general_purpose::STANDARD.encode(&event.payload),
        attributes: Attributes {
            schema: &event.schema,
            table: &event.table,
            op: event.op.as_str(),
            channel: &event.channel,
            event_id: event.message_id(),
        },
        ordering_key: &String::from_utf8_lossy(&key),
    };
    serde_json::to_vec(&message).expect("a message always serializes")
}

/// The JSON body of one publish request, filled message by message.
#[derive(Default)]
struct Body {
    json: Vec<u8>,
    messages: usize,
}

const BODY_START: &[u8] = b"{\"messages\":[";
const BODY_END: &[u8] = b"]}";

impl Body {
    /// Whether `message` fits; an empty body takes any one message, and
    /// the API judges a message too large by itself.
    fn has_room(&self, message: &[u8]) -> bool {
        self.messages == 0
            || (self.messages < MAX_BATCH
                && self.json.len() + 1 + message.len() + BODY_END.len() <= MAX_REQUEST_BYTES)
    }

    fn push(&mut self, message: &[u8]) {
        if self.messages == 0 {
            self.json.extend_from_slice(BODY_START);
        } else {
            self.json.push(b',');
        }
        self.json.extend_from_slice(message);
        self.messages += 1;
    }

    /// The finished body; this one starts over, empty.
    fn finish(&mut self) -> Vec<u8> {
        let mut json = std::mem::take(&mut self.json);
        json.extend_from_slice(BODY_END);
        self.messages = 0;
        json
    }
}

/// Percent-encodes a path segment: project and topic ids may hold `%`
/// and `+`, which must not reach the path as they are.
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reads the start of an error answer.
async fn read_answer(mut response: reqwest::Response) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    kept.truncate(MAX_ANSWER_BYTES);
    kept
}

/// Google's error answer, `{"error": {"code", "message", "status"}}`, as
/// `STATUS: message`; else the start of the body.
fn explain(answer: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        #[serde(default)]
        message: String,
        #[serde(default)]
        status: String,
    }
    if let Ok(Answer { error }) = serde_json::from_slice::<Answer>(answer) {
        return match (error.status.is_empty(), error.message.is_empty()) {
            (false, false) => format!("{}: {}", error.status, error.message),
            (false, true) => error.status,
            _ => error.message,
        };
    }
    let text = String::from_utf8_lossy(&answer[..answer.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sorts an error answer. 408, 409 (ABORTED), 429 and 5xx but 501 are
/// worth another attempt, as Google's own publishers retry them; refused
/// credentials, a missing topic and every other 4xx are not.
fn status_error(status: StatusCode, answer: &[u8], topic: &str) -> SinkError {
    let said = explain(answer);
    let head = format!("HTTP {}", status.as_u16());
    let said = if said.is_empty() {
        head
    } else {
        format!("{head} {said}")
    };
    match status.as_u16() {
        408 | 409 | 429 => SinkError::retryable(format!("publishing to {topic}: {said}")),
        500..=599 if status != StatusCode::NOT_IMPLEMENTED => {
            SinkError::retryable(format!("publishing to {topic}: {said}"))
        }
        401 | 403 => SinkError::permanent(format!(
            "not allowed to publish to {topic}: {said} (the credentials need the \
             roles/pubsub.publisher role on the topic)"
        )),
        404 => SinkError::permanent(format!(
            "publishing to {topic}: {said} (create the topic, or fix project or topic)"
        )),
        _ => SinkError::permanent(format!("publishing to {topic}: {said}")),
    }
}

#[async_trait::async_trait]
impl Sink for PubsubSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.publish_all(std::iter::once(event)).await
    }

    async fn send_batch(&self, events: &[Arc<Event>]) -> Result<(), SinkError> {
        self.publish_all(events.iter().map(|e| e.as_ref())).await
    }

    /// Two publish requests for one ordering key may reach Pub/Sub in
    /// either order, so each lane has one request out at a time and a
    /// row key always takes the same lane.
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
    use skor_sink_api::{Bytes, ErrorKind, Op};

    fn event(id: i64, payload: &'static str) -> Event {
        Event {
            channel: "skor".into(),
            schema: "public".into(),
            table: "items".into(),
            op: Op::Update,
            payload: Bytes::from_static(payload.as_bytes()),
            format: skor_sink_api::Format::Skor,
            key: Some(Bytes::from(format!("{{\"id\":{id}}}"))),
            id: Some(id),
            seq: 1,
        }
    }

    #[test]
    fn a_message_carries_the_payload_attributes_and_the_row_key() {
        let json: serde_json::Value =
            serde_json::from_slice(&message(&event(7, r#"{"a":1}"#))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "data": "eyJhIjoxfQ==",
                "attributes": {"schema": "public", "table": "items", "op": "UPDATE",
                               "channel": "skor", "event_id": "evt_7"},
                "orderingKey": "{\"id\":7}",
            })
        );
    }

    #[test]
    fn bodies_stop_at_the_message_limit_and_take_one_message_of_any_size() {
        let mut body = Body::default();
        let small = message(&event(1, "{}"));
        for _ in 0..MAX_BATCH {
            assert!(body.has_room(&small));
            body.push(&small);
        }
        assert!(!body.has_room(&small));
        let json: serde_json::Value = serde_json::from_slice(&body.finish()).unwrap();
        assert_eq!(json["messages"].as_array().unwrap().len(), MAX_BATCH);
        let huge = vec![b'x'; MAX_REQUEST_BYTES];
        assert!(body.has_room(&huge), "an empty body takes any message");
        body.push(&small);
        assert!(!body.has_room(&huge));
    }

    #[test]
    fn statuses_sort_into_retryable_and_permanent() {
        let kind = |code: u16| {
            status_error(
                StatusCode::from_u16(code).unwrap(),
                b"",
                "projects/p/topics/t",
            )
            .kind
        };
        for code in [408, 409, 429, 500, 502, 503, 504] {
            assert_eq!(kind(code), ErrorKind::Retryable, "{code}");
        }
        for code in [400, 401, 403, 404, 413, 501] {
            assert_eq!(kind(code), ErrorKind::Permanent, "{code}");
        }
        let missing = status_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":404,"message":"Topic not found","status":"NOT_FOUND"}}"#,
            "projects/p/topics/t",
        );
        assert_eq!(
            missing.message,
            "publishing to projects/p/topics/t: HTTP 404 NOT_FOUND: Topic not found \
             (create the topic, or fix project or topic)"
        );
        let denied = status_error(
            StatusCode::FORBIDDEN,
            b"<html>\n nope </html>",
            "projects/p/topics/t",
        );
        assert!(
            denied.message.starts_with(
                "not allowed to publish to projects/p/topics/t: HTTP 403 <html> nope </html>"
            ),
            "{}",
            denied.message
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(escape("pg.public.items"), "pg.public.items");
        assert_eq!(escape("a+b%c d/e"), "a%2Bb%25c%20d%2Fe");
    }
}
