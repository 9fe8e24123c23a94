//! The webhook sink against real local HTTP servers that misbehave on
//! purpose: how each failure is classified (outage, retry, final), which
//! redirects are followed and with which headers, and how much of an
//! answer's body is read and quoted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skor_sink_api::{Bytes, ErrorKind, Event, Op, Sink, SinkError};
use skor_sink_kit::Redacted;
use skor_sink_webhook::{WebhookConfig, WebhookSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request a server received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// Header names lowercased, values as sent.
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a server answers one request.
#[derive(Clone)]
enum Answer {
    /// A status, extra headers and a body.
    Reply(u16, Vec<(String, String)>, Vec<u8>),
    /// A status and a body that never ends.
    Endless(u16),
    /// Close the connection without answering.
    Close,
    /// Never answer.
    Hang,
}

fn reply(status: u16) -> Answer {
    Answer::Reply(status, Vec::new(), Vec::new())
}

fn redirect(status: u16, location: &str) -> Answer {
    Answer::Reply(
        status,
        vec![("Location".into(), location.into())],
        Vec::new(),
    )
}

type Script = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// An HTTP/1.1 server on 127.0.0.1:0 that answers by `script` and records
/// every request.
struct Server {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, Arc::clone(&script), Arc::clone(&record)));
            }
        });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves the requests of one keep-alive connection.
async fn serve(mut socket: TcpStream, script: Script, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buffer = Vec::new();
    loop {
        let Some(request) = read_request(&mut socket, &mut buffer).await else {
            return;
        };
        seen.lock().unwrap().push(request.clone());
        match script(&request) {
            Answer::Reply(status, headers, body) => {
                let mut head = format!("HTTP/1.1 {status} Whatever\r\n");
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                if socket.write_all(head.as_bytes()).await.is_err()
                    || socket.write_all(&body).await.is_err()
                {
                    return;
                }
            }
            Answer::Endless(status) => {
                let head =
                    format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 1000000000000\r\n\r\n");
                let _ = socket.write_all(head.as_bytes()).await;
                let chunk = vec![b'x'; 16 * 1024];
                while socket.write_all(&chunk).await.is_ok() {}
                return;
            }
            Answer::Close => return,
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
        }
    }
}

/// Reads one request (headers, then a Content-Length body).
async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Seen> {
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    buffer.drain(..end + 4);
    while buffer.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[..length]).into_owned();
    buffer.drain(..length);
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

const PAYLOAD: &str = r#"{"table":"items","schema":"public","op":"INSERT","data":{"id":1}}"#;

fn event() -> Event {
    Event {
        channel: "skor".into(),
        schema: "public".into(),
        table: "items".into(),
        op: Op::Insert,
        payload: Bytes::from_static(PAYLOAD.as_bytes()),
        format: skor_sink_api::Format::Skor,
        key: None,
        id: Some(7),
        seq: 1,
    }
}

/// A config for `url` with an auth header and a signing secret.
fn config(url: String) -> WebhookConfig {
    let mut config = WebhookConfig::new(url);
    config.headers.insert(
        "Authorization".into(),
        Redacted::new("Bearer s3cret".into()),
    );
    config.secret = vec![Redacted::new("a signing secret of 24+ bytes".into())];
    config
}

async fn send(config: &WebhookConfig) -> Result<(), SinkError> {
    WebhookSink::new(config).unwrap().send(&event()).await
}

fn failure(result: Result<(), SinkError>) -> SinkError {
    result.expect_err("the delivery should fail")
}

#[tokio::test]
async fn a_302_is_final_names_its_location_and_no_get_follows() {
    let server = Server::start(|seen| match seen.path.as_str() {
        "/hook" => redirect(302, "/moved/T000/secret-token?key=abc"),
        _ => reply(200),
    })
    .await;
    let error = failure(send(&config(server.url("/hook"))).await);
    assert_eq!(error.kind, ErrorKind::Permanent, "{error}");
    let location = format!("{}/moved/<redacted>?key=<redacted>", server.url(""));
    assert!(
        error.message.starts_with("HTTP 302 Found redirects to ")
            && error.message.contains(&location)
            && error.message.contains("would turn the POST into a GET"),
        "{error}"
    );
    assert!(!error.message.contains("secret-token"), "{error}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "nothing follows the 302: {seen:#?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/hook")
    );
}

#[tokio::test]
async fn a_301_and_a_303_are_final_too() {
    for status in [301, 303] {
        let server = Server::start(move |seen| match seen.path.as_str() {
            "/hook" => redirect(status, "/moved"),
            _ => reply(200),
        })
        .await;
        let error = failure(send(&config(server.url("/hook"))).await);
        assert_eq!(error.kind, ErrorKind::Permanent, "{error}");
        assert!(error.message.contains("/moved"), "{error}");
        assert_eq!(server.seen().len(), 1, "{status}");
    }
}

#[tokio::test]
async fn a_307_to_the_same_origin_delivers_the_post_and_its_body_there() {
    let server = Server::start(|seen| match seen.path.as_str() {
        "/hook" => redirect(307, "/v2/hook"),
        _ => reply(204),
    })
    .await;
    send(&config(server.url("/hook"))).await.unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let moved = &seen[1];
    assert_eq!(
        (moved.method.as_str(), moved.path.as_str()),
        ("POST", "/v2/hook")
    );
    assert_eq!(moved.body, PAYLOAD);
    // Same origin: the configured headers and the signature go along.
    assert_eq!(moved.header("authorization"), Some("Bearer s3cret"));
    assert!(moved.header("webhook-signature").is_some());
    assert_eq!(moved.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn redirects_past_max_redirects_are_final() {
    let server = Server::start(|seen| match seen.path.as_str() {
        "/a" => redirect(308, "/b"),
        "/b" => redirect(308, "/c"),
        _ => reply(200),
    })
    .await;
    let error = failure(send(&config(server.url("/a"))).await);
    assert_eq!(error.kind, ErrorKind::Permanent);
    assert!(error.message.contains("max_redirects = 1"), "{error}");
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_307_to_another_origin_is_final_and_nothing_arrives_there() {
    let other = Server::start(|_| reply(200)).await;
    let elsewhere = other.url("/hook");
    let server = Server::start(move |_| redirect(307, &elsewhere)).await;
    let error = failure(send(&config(server.url("/hook"))).await);
    assert_eq!(error.kind, ErrorKind::Permanent, "{error}");
    assert!(
        error.message.contains(&other.url("/hook"))
            && error.message.contains("another origin")
            && error.message.contains("follow_cross_origin_redirects"),
        "{error}"
    );
    assert!(other.seen().is_empty(), "{:#?}", other.seen());
}

#[tokio::test]
async fn an_opted_in_cross_origin_307_arrives_without_headers_or_signature() {
    let other = Server::start(|_| reply(200)).await;
    let elsewhere = other.url("/hook");
    let server = Server::start(move |_| redirect(307, &elsewhere)).await;
    let mut config = config(server.url("/hook"));
    config.follow_cross_origin_redirects = true;
    send(&config).await.unwrap();
    let first = &server.seen()[0];
    assert_eq!(first.header("authorization"), Some("Bearer s3cret"));
    assert!(first.header("webhook-signature").is_some());
    let seen = other.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let moved = &seen[0];
    assert_eq!(
        (moved.method.as_str(), moved.body.as_str()),
        ("POST", PAYLOAD)
    );
    assert_eq!(moved.header("content-type"), Some("application/json"));
    for header in [
        "authorization",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        assert_eq!(
            moved.header(header),
            None,
            "{header} went to another origin"
        );
    }
}

#[tokio::test]
async fn a_closed_port_is_an_outage_not_a_failed_attempt() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = failure(send(&config(format!("http://{addr}/hook"))).await);
    assert_eq!(error.kind, ErrorKind::Disconnected, "{error}");
    assert!(error.message.starts_with("unreachable: "), "{error}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_an_outage() {
    // `.invalid` never resolves (RFC 6761).
    let error = failure(send(&config("http://skor-test.invalid/hook".into())).await);
    assert_eq!(error.kind, ErrorKind::Disconnected, "{error}");
    assert!(error.message.starts_with("unreachable: "), "{error}");
}

#[tokio::test]
async fn a_connection_closed_before_an_answer_is_an_outage() {
    let server = Server::start(|_| Answer::Close).await;
    let error = failure(send(&config(server.url("/hook"))).await);
    assert_eq!(error.kind, ErrorKind::Disconnected, "{error}");
    assert!(error.message.contains("closed before an answer"), "{error}");
    assert_eq!(server.seen().len(), 1, "the request was sent");
}

#[tokio::test]
async fn no_answer_after_the_request_was_sent_is_a_failed_attempt() {
    let server = Server::start(|_| Answer::Hang).await;
    let mut config = config(server.url("/hook"));
    config.timeout_ms = 300;
    let error = failure(send(&config).await);
    assert_eq!(error.kind, ErrorKind::Retryable, "{error}");
    assert_eq!(error.message, "no answer within 300 ms");
}

#[tokio::test]
async fn an_endless_error_body_is_cut_short_and_quoted_briefly() {
    let server = Server::start(|_| Answer::Endless(503)).await;
    let mut config = config(server.url("/hook"));
    config.timeout_ms = 10_000;
    let started = Instant::now();
    let error = failure(send(&config).await);
    // Reading to the end would have taken the whole timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(error.kind, ErrorKind::Retryable);
    let expected = format!(
        "HTTP 503 Service Unavailable, body: \"{}...\"",
        "x".repeat(200)
    );
    assert_eq!(error.message, expected);
}

#[tokio::test]
async fn an_error_body_is_quoted_on_one_line() {
    let answers = Arc::new(Mutex::new(0));
    let count = Arc::clone(&answers);
    let server = Server::start(move |_| {
        let mut n = count.lock().unwrap();
        *n += 1;
        if *n == 1 {
            Answer::Reply(422, Vec::new(), b"{\"error\":\n  \"bad row\"}".to_vec())
        } else {
            reply(200)
        }
    })
    .await;
    let sink = WebhookSink::new(&config(server.url("/hook"))).unwrap();
    let error = failure(sink.send(&event()).await);
    assert_eq!(error.kind, ErrorKind::Permanent);
    assert_eq!(
        error.message,
        r#"HTTP 422 Unprocessable Entity, body: "{\"error\":   \"bad row\"}""#
    );
    sink.send(&event()).await.unwrap();
    assert_eq!(server.seen().len(), 2);
}
