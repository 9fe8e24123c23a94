//! Credentials from a service-account key file, against a local token
//! endpoint and a local stand-in for the Pub/Sub API: the key's JWT is
//! exchanged for a token, the token goes out as a bearer header, and
//! refused credentials or a refused publish are permanent failures that
//! quote no secret. The key is made by `openssl genpkey` for the test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use skor_sink_api::{Bytes, ErrorKind, Event, Op, Sink};
use skor_sink_kit::Template;
use skor_sink_pubsub::{PubsubConfig, PubsubSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "ya29.test-token-not-for-logs";

/// One request a scripted server got: its request line, headers and body.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    body: String,
}

/// An HTTP/1.1 server answering every request with `status` and `body`,
/// closing each connection after its answer.
async fn serve(status: u16, body: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buffer = [0u8; 8192];
                let (head, length) = loop {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buffer[..n]);
                    if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..end]).to_string();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        data.drain(..end + 4);
                        break (head, length);
                    }
                };
                while data.len() < length {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buffer[..n]);
                }
                log.lock().unwrap().push(Seen {
                    head,
                    body: String::from_utf8_lossy(&data).to_string(),
                });
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, seen)
}

/// A service-account key file whose token endpoint is `token_uri`.
fn key_file(token_uri: &str) -> tempfile::NamedTempFile {
    let output = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("run openssl genpkey");
    assert!(output.status.success(), "openssl genpkey failed");
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "skor-test",
        "private_key_id": "0123",
        "private_key": String::from_utf8(output.stdout).unwrap(),
        "client_email": "skor@skor-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), key.to_string()).unwrap();
    file
}

fn sink(api: SocketAddr, key: &tempfile::NamedTempFile) -> PubsubSink {
    let mut config = PubsubConfig::new("skor-test", Template::parse("pg.{table}").unwrap());
    config.endpoint = Some(format!("http://{api}"));
    config.credentials_file = Some(key.path().to_path_buf());
    PubsubSink::new(&config).expect("the key file is accepted")
}

fn event() -> Event {
    Event {
        channel: "skor".into(),
        schema: "public".into(),
        table: "items".into(),
        op: Op::Insert,
        payload: Bytes::from_static(br#"{"id":1}"#),
        format: skor_sink_api::Format::Skor,
        key: Some(Bytes::from_static(br#"{"id":1}"#)),
        id: None,
        seq: 1,
    }
}

#[tokio::test]
async fn the_key_is_exchanged_for_a_token_that_authorizes_the_publish() {
    let token_answer = r#"{"access_token":"ya29.test-token-not-for-logs","expires_in":3600,"token_type":"Bearer"}"#;
    let (token_server, tokens) = serve(200, token_answer).await;
    let (api, published) = serve(200, r#"{"messageIds":["1"]}"#).await;
    let key = key_file(&format!("http://{token_server}/token"));
    let sink = sink(api, &key);
    sink.send(&event()).await.expect("published");
    sink.send(&event()).await.expect("published again");
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 1, "the token is cached: {tokens:?}");
    assert!(tokens[0].head.starts_with("POST /token "), "{tokens:?}");
    assert!(
        tokens[0]
            .body
            .contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        "{tokens:?}"
    );
    let published = published.lock().unwrap().clone();
    assert_eq!(published.len(), 2);
    assert!(
        published[0]
            .head
            .starts_with("POST /v1/projects/skor-test/topics/pg.items:publish "),
        "{published:?}"
    );
    assert!(
        published[0]
            .head
            .lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}"))),
        "{published:?}"
    );
}

#[tokio::test]
async fn refused_credentials_are_permanent() {
    let (token_server, _) = serve(
        400,
        r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
    )
    .await;
    let (api, published) = serve(200, r#"{"messageIds":["1"]}"#).await;
    let key = key_file(&format!("http://{token_server}/token"));
    let error = sink(api, &key).send(&event()).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Permanent, "{error}");
    assert!(
        error.message.starts_with("authentication failed"),
        "{error}"
    );
    assert!(published.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_denied_publish_is_permanent_and_never_shows_the_token() {
    let token_answer = r#"{"access_token":"ya29.test-token-not-for-logs","expires_in":3600,"token_type":"Bearer"}"#;
    let (token_server, _) = serve(200, token_answer).await;
    let (api, _) = serve(
        403,
        r#"{"error":{"code":403,"message":"User not authorized to perform this action.","status":"PERMISSION_DENIED"}}"#,
    )
    .await;
    let key = key_file(&format!("http://{token_server}/token"));
    let error = sink(api, &key).send(&event()).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Permanent, "{error}");
    assert_eq!(
        error.message,
        "not allowed to publish to projects/skor-test/topics/pg.items: HTTP 403 PERMISSION_DENIED: \
         User not authorized to perform this action. (the credentials need the \
         roles/pubsub.publisher role on the topic)"
    );
    assert!(!error.message.contains(TOKEN));
}

#[tokio::test]
async fn an_unreachable_api_is_an_outage_and_a_busy_one_a_retry() {
    let token_answer = r#"{"access_token":"ya29.test-token-not-for-logs","expires_in":3600,"token_type":"Bearer"}"#;
    let (token_server, _) = serve(200, token_answer).await;
    let key = key_file(&format!("http://{token_server}/token"));
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let error = sink(closed, &key).send(&event()).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Disconnected, "{error}");
    let (busy, _) = serve(
        429,
        r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
    )
    .await;
    let error = sink(busy, &key).send(&event()).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Retryable, "{error}");
}
