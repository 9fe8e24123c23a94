//! Publishing to JetStream with acknowledgements, over one connection that
//! is replaced, never resumed, when it is lost.
//!
//! async-nats reconnects by itself and then sends what was still queued in
//! the client, while what sat in the dead connection's buffer is lost: a
//! later event of a row could be stored before the retry of an earlier one.
//! So each client gets one connection only: when it drops, the client's
//! reconnect goes to an address that refuses at once and the client gives
//! up, failing every pending acknowledgement. The worker then retries those
//! events in order on a fresh client.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{
    GetStreamByNameErrorKind, GetStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, HeaderMap, ReconnectToServer, ServerAddr};
use skor_sink_api::{Confirmation, Event, Sink, SinkError};
use skor_sink_kit::{TlsFileOptions, TlsFiles};
use tokio::sync::Mutex;
use tracing::info;

use crate::config::{redact_userinfo, NatsConfig};

/// Why a NATS sink could not be built from its config.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct NatsError {
    /// The config key at fault.
    pub key: &'static str,
    /// What is wrong; never quotes a secret.
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> NatsError {
    NatsError {
        key,
        message: message.into(),
    }
}

/// A server address nothing can listen on: connecting to it is refused at
/// once, which is how a client that lost its connection is made to give up.
fn nowhere() -> ServerAddr {
    ServerAddr::from_str("nats://127.0.0.1:0").expect("a valid address")
}

/// The open client and its JetStream context.
struct Link {
    client: Client,
    jetstream: jetstream::Context,
}

/// How to authenticate, checked at start-up.
#[derive(Clone)]
enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
    Nkey(String),
    /// The content of a `.creds` file.
    Credentials(String),
}

/// Publishes events to JetStream subjects.
pub struct NatsSink {
    config: NatsConfig,
    servers: Vec<ServerAddr>,
    auth: Auth,
    /// The server to try first: the last one that answered.
    next_server: AtomicUsize,
    link: Mutex<Option<Link>>,
}

impl NatsSink {
    /// Checks the config; the connection is opened by the first event.
    pub fn new(config: &NatsConfig) -> Result<Self, NatsError> {
        let servers = parse_servers(config)?;
        let auth = auth(config, &servers)?;
        check_tls(config)?;
        check_subject(config)?;
        check_stream(config)?;
        Ok(Self {
            config: config.clone(),
            servers,
            auth,
            next_server: AtomicUsize::new(0),
            link: Mutex::new(None),
        })
    }

    /// The JetStream context of a live connection, connecting first if
    /// there is none or it was lost.
    async fn jetstream(&self) -> Result<jetstream::Context, SinkError> {
        let mut link = self.link.lock().await;
        if let Some(open) = link.as_ref() {
            if open.client.connection_state() == State::Connected {
                return Ok(open.jetstream.clone());
            }
        }
        // A lost client has given up by itself; dropping it closes it.
        *link = None;
        let open = self.connect().await?;
        let jetstream = open.jetstream.clone();
        *link = Some(open);
        Ok(jetstream)
    }

    /// Tries each server once, starting with the last one that answered.
    async fn connect(&self) -> Result<Link, SinkError> {
        let first = self.next_server.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..self.servers.len() {
            let index = (first + i) % self.servers.len();
            let server = &self.servers[index];
            match self.connect_to(server).await {
                Ok(client) => {
                    self.next_server.store(index, Ordering::Relaxed);
                    let jetstream = jetstream::ContextBuilder::new()
                        .timeout(Duration::from_millis(self.config.ack_timeout_ms))
                        .build(client.clone());
                    let shown = redact_userinfo(server.as_url_str());
                    if self.config.create_stream {
                        self.ensure_stream(&jetstream, &shown).await?;
                    }
                    info!(server = %shown, subject = %self.config.subject.text(),
                          "connected to NATS");
                    return Ok(Link { client, jetstream });
                }
                Err(error) => errors.push(error),
            }
        }
        Err(SinkError::disconnected(errors.join("; ")))
    }

    async fn connect_to(&self, server: &ServerAddr) -> Result<Client, String> {
        let shown = redact_userinfo(server.as_url_str());
        let options = self
            .options(server)
            .map_err(|e| format!("connecting to {shown}: {e}"))?;
        let servers = vec![server.clone(), nowhere()];
        options.connect(servers).await.map_err(|e| {
            let mut reason = e.to_string();
            for raw in self.config.servers() {
                reason = reason.replace(raw, &redact_userinfo(raw));
            }
            if e.kind() == async_nats::ConnectErrorKind::Tls
                || reason.contains("InvalidContentType")
            {
                reason.push_str(" (is TLS enabled on that port, and the CA in ca_file?)");
            }
            format!("connecting to {shown}: {reason}")
        })
    }

    fn options(&self, server: &ServerAddr) -> std::io::Result<ConnectOptions> {
        let config = &self.config;
        let once = Arc::new(AtomicBool::new(false));
        let target = server.clone();
        let mut options = ConnectOptions::new()
            .name("skor")
            .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
            .request_timeout(Some(Duration::from_millis(config.ack_timeout_ms)))
            .require_tls(config.tls_required())
            .ignore_discovered_servers()
            // The one connection goes to `server`; the reconnect after it
            // is refused and the client gives up (see the module's doc).
            .max_reconnects(1)
            .reconnect_to_server_callback(move |_, _| {
                let addr = if once.swap(true, Ordering::Relaxed) {
                    nowhere()
                } else {
                    target.clone()
                };
                async move {
                    Some(ReconnectToServer {
                        addr,
                        delay: Some(Duration::ZERO),
                    })
                }
            });
        options = match &self.auth {
            // async-nats reads no credentials from the URL itself.
            Auth::None => match (server.username(), server.password()) {
                (Some(user), Some(password)) => {
                    options.user_and_password(decode(user), decode(password))
                }
                (Some(token), None) => options.token(decode(token)),
                _ => options,
            },
            Auth::UserPassword(user, password) => {
                options.user_and_password(user.clone(), password.clone())
            }
            Auth::Token(token) => options.token(token.clone()),
            Auth::Nkey(seed) => options.nkey(seed.clone()),
            Auth::Credentials(creds) => options.credentials(creds)?,
        };
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }

    /// Creates the configured stream over the subject's wildcard form when
    /// no stream of that name exists; an existing one is left as it is.
    async fn ensure_stream(
        &self,
        jetstream: &jetstream::Context,
        server: &str,
    ) -> Result<(), SinkError> {
        let name = self
            .config
            .stream
            .as_deref()
            .expect("checked: create_stream needs stream");
        match jetstream.get_stream(name).await {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(ref js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
            Err(e) => {
                return Err(SinkError::disconnected(format!(
                    "looking up stream \"{name}\" on {server}: {e}"
                )))
            }
        }
        let subjects = self.config.subject.wildcard();
        jetstream
            .create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![subjects.clone()],
                storage: stream::StorageType::File,
                ..stream::Config::default()
            })
            .await
            .map_err(|e| {
                SinkError::disconnected(format!(
                    "creating stream \"{name}\" over \"{subjects}\" on {server}: {e}"
                ))
            })?;
        info!(stream = %name, subjects = %subjects, "created the JetStream stream");
        Ok(())
    }

    fn headers(event: &Event) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.message_id());
        headers.insert("Content-Type", event.format.content_type());
        headers.insert("schema", event.schema.as_str());
        headers.insert("table", event.table.as_str());
        headers.insert("op", event.op.as_str());
        headers.insert("channel", &*event.channel);
        if let Some(id) = event.id {
            headers.insert("event_id", id.to_string());
        }
        headers
    }
}

/// The servers of `url`, each `nats://` or `tls://`.
fn parse_servers(config: &NatsConfig) -> Result<Vec<ServerAddr>, NatsError> {
    let servers = config.servers();
    if servers.is_empty() {
        return Err(bad(
            "url",
            "no server: expected nats://host:4222 or tls://host:4222, several separated by commas",
        ));
    }
    servers
        .into_iter()
        .map(|server| {
            let shown = redact_userinfo(server);
            if !(server.starts_with("nats://") || server.starts_with("tls://")) {
                return Err(bad(
                    "url",
                    format!("{shown}: expected nats://host:port or tls://host:port"),
                ));
            }
            // The parser's words never quote the URL.
            ServerAddr::from_str(server).map_err(|e| bad("url", format!("{shown}: {e}")))
        })
        .collect()
}

/// `user:password@` or `token@` of a URL, percent-decoded.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// At most one way to authenticate, complete and well-formed.
fn auth(config: &NatsConfig, servers: &[ServerAddr]) -> Result<Auth, NatsError> {
    let mut chosen: Vec<(&'static str, Auth)> = Vec::new();
    if servers.iter().any(ServerAddr::has_user_pass) {
        chosen.push(("url", Auth::None));
    }
    match (&config.user, &config.password) {
        (Some(user), Some(password)) => chosen.push((
            "user",
            Auth::UserPassword(user.clone(), password.expose().clone()),
        )),
        (Some(_), None) => return Err(bad("password", "user is set, so password must be too")),
        (None, Some(_)) => return Err(bad("user", "password is set, so user must be too")),
        (None, None) => {}
    }
    if let Some(token) = &config.token {
        chosen.push(("token", Auth::Token(token.expose().clone())));
    }
    if let Some(seed) = &config.nkey_seed {
        // Never quote the seed, not even part of it.
        match nkeys::KeyPair::from_seed(seed.expose()) {
            Ok(pair) if pair.public_key().starts_with('U') => {}
            Ok(_) => {
                return Err(bad(
                    "nkey_seed",
                    "not a user seed: expected the seed of a user nkey (SU...)",
                ))
            }
            Err(_) => {
                return Err(bad(
                    "nkey_seed",
                    "not a valid nkey seed: expected a user seed (SU...), as `nsc` or `nk -gen user` prints it",
                ))
            }
        }
        chosen.push(("nkey_seed", Auth::Nkey(seed.expose().clone())));
    }
    if let Some(path) = &config.credentials_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            bad(
                "credentials_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        ConnectOptions::with_credentials(&text).map_err(|_| {
            bad(
                "credentials_file",
                format!(
                    "{}: not a NATS credentials file (a user JWT and an nkey seed, as `nsc generate creds` writes)",
                    path.display()
                ),
            )
        })?;
        chosen.push(("credentials_file", Auth::Credentials(text)));
    }
    match chosen.len() {
        // Credentials in the URL (`Auth::None` here) are read per server
        // when connecting.
        0 | 1 => Ok(chosen.pop().map_or(Auth::None, |(_, auth)| auth)),
        _ => {
            let first = match chosen[0].0 {
                "url" => "the url holds credentials".to_string(),
                key => format!("{key} is set"),
            };
            Err(bad(
                chosen[1].0,
                format!(
                    "{first} too: use one of user/password, token, nkey_seed, credentials_file \
                     or credentials in the url"
                ),
            ))
        }
    }
}

/// The TLS files, only with TLS, read and checked now.
fn check_tls(config: &NatsConfig) -> Result<TlsFiles, NatsError> {
    let options = TlsFileOptions {
        ca_file: config.ca_file.as_deref(),
        client_cert: config.client_cert.as_deref(),
        client_key: config.client_key.as_deref(),
    };
    options
        .require_tls(config.tls_required(), || {
            format!(
                "applies with TLS only: use tls:// URLs or set require_tls = true (the url is {})",
                config.redacted_url()
            )
        })
        .and_then(|()| options.read())
        .map_err(|e| bad(e.key, e.message))
}

/// Whether `subject` is one a message can be published to: no whitespace,
/// no empty token, no wildcard.
fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && !subject.contains(char::is_whitespace)
        && subject
            .split('.')
            .all(|token| !token.is_empty() && token != "*" && token != ">")
}

/// The subject template renders valid subjects for ordinary names.
fn check_subject(config: &NatsConfig) -> Result<(), NatsError> {
    let sample = Event {
        channel: "skor".into(),
        schema: "public".into(),
        table: "orders".into(),
        op: skor_sink_api::Op::Insert,
        payload: skor_sink_api::Bytes::new(),
        format: skor_sink_api::Format::Skor,
        key: None,
        id: None,
        seq: 0,
    };
    let rendered = config.subject.template().render(&sample);
    if !valid_subject(&rendered) {
        return Err(bad(
            "subject",
            format!(
                "renders as \"{rendered}\", not a NATS subject: expected dot-separated tokens without spaces or wildcards"
            ),
        ));
    }
    Ok(())
}

fn check_stream(config: &NatsConfig) -> Result<(), NatsError> {
    match &config.stream {
        None if config.create_stream => Err(bad(
            "stream",
            "create_stream = true needs the name of the stream to create",
        )),
        Some(name)
            if name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\')) =>
        {
            Err(bad(
                "stream",
                format!("\"{name}\" is not a stream name: no dots, spaces, *, >, / or \\"),
            ))
        }
        _ => Ok(()),
    }
}

/// Classifies a publish that never reached the client's queue.
fn send_error(subject: &str, error: &PublishError) -> SinkError {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => {
            SinkError::permanent(format!("publishing to \"{subject}\": {error}"))
        }
        _ => SinkError::disconnected(format!("publishing to \"{subject}\": {error}")),
    }
}

/// Classifies a publish the stream did not acknowledge.
async fn ack_error(
    jetstream: &jetstream::Context,
    subject: &str,
    timeout_ms: u64,
    error: PublishError,
) -> SinkError {
    match error.kind() {
        PublishErrorKind::TimedOut => SinkError::disconnected(format!(
            "no acknowledgement for \"{subject}\" within {timeout_ms} ms (ack_timeout_ms)"
        )),
        PublishErrorKind::BrokenPipe => SinkError::disconnected(format!(
            "the connection was lost before \"{subject}\" was acknowledged"
        )),
        PublishErrorKind::StreamNotFound => no_stream(jetstream, subject).await,
        PublishErrorKind::MaxPayloadExceeded => {
            SinkError::permanent(format!("publishing to \"{subject}\": {error}"))
        }
        // The stream refused it (full with discard = new, too large for
        // max_msg_size...): worth trying again, within the retries.
        _ => SinkError::retryable(format!("the stream refused \"{subject}\": {error}")),
    }
}

/// Nobody answered a publish: no stream covers the subject, or one does but
/// has no leader for now. Only the first is permanent.
async fn no_stream(jetstream: &jetstream::Context, subject: &str) -> SinkError {
    match jetstream.stream_by_subject(subject).await {
        Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => SinkError::permanent(format!(
            "no JetStream stream covers subject \"{subject}\": create one whose subjects match it \
             (nats stream add NAME --subjects '...'), or set stream and create_stream = true"
        )),
        Ok(stream) => SinkError::retryable(format!(
            "stream \"{stream}\" covers \"{subject}\" but did not answer (no leader for now?)"
        )),
        Err(e) => SinkError::disconnected(format!(
            "no answer for \"{subject}\", nor to the stream lookup: {e}"
        )),
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.submit(event).await?.await
    }

    async fn submit(&self, event: &Event) -> Result<Confirmation, SinkError> {
        let subject = self.config.subject.template().render(event);
        if !valid_subject(&subject) {
            return Err(SinkError::permanent(format!(
                "\"{subject}\" is not a valid NATS subject (a space, an empty token or a wildcard \
                 from the schema, table or channel name)"
            )));
        }
        let jetstream = self.jetstream().await?;
        let message = PublishMessage::build()
            .payload(event.payload.clone())
            .headers(Self::headers(event));
        let ack = jetstream
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| send_error(&subject, &e))?;
        let timeout_ms = self.config.ack_timeout_ms;
        Ok(Box::pin(async move {
            match ack.await {
                Ok(_) => Ok(()),
                Err(error) => Err(ack_error(&jetstream, &subject, timeout_ms, error).await),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(config: &NatsConfig) -> NatsError {
        match NatsSink::new(config) {
            Ok(_) => panic!("accepted {config:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn urls_must_be_nats_or_tls_and_never_show_the_password() {
        let e = error(&NatsConfig::new("http://skor:s3cret@h:4222"));
        assert_eq!(e.key, "url");
        assert_eq!(
            e.message,
            "http://skor:<redacted>@h:4222: expected nats://host:port or tls://host:port"
        );
        assert_eq!(error(&NatsConfig::new(" , ")).key, "url");
        let many = NatsSink::new(&NatsConfig::new("nats://a:4222,tls://b:4443")).unwrap();
        assert_eq!(many.servers.len(), 2);
    }

    #[test]
    fn one_way_to_authenticate() {
        let mut config = NatsConfig::new("nats://h:4222");
        config.user = Some("skor".into());
        assert_eq!(error(&config).key, "password");
        config.password = Some(skor_sink_kit::Redacted::new("pw".into()));
        assert!(NatsSink::new(&config).is_ok());
        config.token = Some(skor_sink_kit::Redacted::new("t0ken".into()));
        let e = error(&config);
        assert_eq!(
            (e.key, e.message.as_str()),
            (
                "token",
                "user is set too: use one of user/password, token, nkey_seed, credentials_file \
                 or credentials in the url"
            )
        );
        let mut in_url = NatsConfig::new("nats://skor:pw@h:4222");
        assert!(NatsSink::new(&in_url).is_ok());
        in_url.token = config.token.clone();
        assert_eq!(
            error(&in_url).message,
            "the url holds credentials too: use one of user/password, token, nkey_seed, \
             credentials_file or credentials in the url"
        );
        assert_eq!(decode("p%40ss%3Aw0rd"), "p@ss:w0rd");
        config.user = None;
        config.password = None;
        config.token = None;
        config.nkey_seed = Some(skor_sink_kit::Redacted::new("SUnotaseed".into()));
        let e = error(&config);
        assert_eq!(e.key, "nkey_seed");
        assert!(!e.message.contains("SUnotaseed"), "{e}");
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        config.nkey_seed = Some(skor_sink_kit::Redacted::new(seed));
        assert!(NatsSink::new(&config).is_ok());
        config.nkey_seed = None;
        config.credentials_file = Some("/nonexistent/skor.creds".into());
        assert_eq!(
            error(&config).to_string(),
            "credentials_file: cannot read /nonexistent/skor.creds: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn tls_files_need_tls() {
        let mut config = NatsConfig::new("nats://skor:s3cret@h:4222");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        let e = error(&config);
        assert_eq!(e.key, "ca_file");
        assert!(e.message.starts_with("applies with TLS only"), "{e}");
        assert!(!e.message.contains("s3cret"), "{e}");
        config.require_tls = true;
        assert_eq!(
            error(&config).to_string(),
            "ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn subjects_and_streams_are_checked() {
        let mut config = NatsConfig::new("nats://h:4222");
        config.subject = crate::config::Subject::parse("pg..{table}").unwrap();
        assert_eq!(error(&config).key, "subject");
        config.subject = crate::config::Subject::parse("pg.>").unwrap();
        assert_eq!(error(&config).key, "subject");
        config.subject = crate::config::Subject::parse("pg.{table}").unwrap();
        config.create_stream = true;
        assert_eq!(error(&config).key, "stream");
        config.stream = Some("a.b".into());
        assert_eq!(error(&config).key, "stream");
        config.stream = Some("PG".into());
        assert!(NatsSink::new(&config).is_ok());
        assert!(valid_subject("skor.public.orders.INSERT"));
        assert!(!valid_subject("skor.public.my table.INSERT"));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_outage_named_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = NatsConfig::new(format!("nats://skor:s3cret@127.0.0.1:{port}"));
        config.connect_timeout_ms = 2_000;
        let sink = NatsSink::new(&config).unwrap();
        let event = Event {
            channel: "skor".into(),
            schema: "public".into(),
            table: "t".into(),
            op: skor_sink_api::Op::Insert,
            payload: skor_sink_api::Bytes::from_static(b"{}"),
            format: skor_sink_api::Format::Skor,
            key: None,
            id: None,
            seq: 1,
        };
        let error = match sink.submit(&event).await {
            Ok(_) => panic!("nothing listens there"),
            Err(error) => error,
        };
        assert_eq!(error.kind, skor_sink_api::ErrorKind::Disconnected);
        let shown = error.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.starts_with(&format!(
                "connecting to nats://skor:<redacted>@127.0.0.1:{port}"
            )),
            "{shown}"
        );
    }
}
