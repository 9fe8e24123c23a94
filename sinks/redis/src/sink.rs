//! Appending with XADD over one multiplexed connection, re-opened when it
//! is lost.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisError,
    TlsCertificates, Value,
};
use skor_sink_api::{Confirmation, Event, Sink, SinkError};
use skor_sink_kit::{Template, TlsFileError, TlsFileOptions};
use tokio::sync::Mutex;
use tracing::info;

use crate::config::RedisConfig;

/// Commands the client may hold before it has written them. The worker
/// never has more than `max_in_flight` (at most 100,000) events
/// outstanding, so the queue never fills and handing a command over never
/// waits: what `submit` hands over goes out in that order.
const PIPELINE_BUFFER: usize = 131_072;

/// Why a Redis sink could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// The URL is not one the client accepts.
    #[error("url {url}: {reason}")]
    Url {
        /// The URL, its password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An option other than `url` is wrong, or its file is missing or not
    /// what it should be.
    #[error("{key}: {message}")]
    Option {
        /// The config key at fault.
        key: &'static str,
        /// What is wrong, naming the file if any.
        message: String,
    },
}

impl From<TlsFileError> for RedisSinkError {
    fn from(error: TlsFileError) -> Self {
        RedisSinkError::Option {
            key: error.key,
            message: error.message,
        }
    }
}

/// The open connection and the number that tells it from earlier ones.
struct Link {
    connection: MultiplexedConnection,
    generation: u64,
}

/// Appends events to Redis streams.
pub struct RedisSink {
    client: Client,
    connection_config: AsyncConnectionConfig,
    connect_timeout: Duration,
    stream: Template,
    maxlen: Option<u64>,
    /// The URL, its password redacted, for log lines and errors.
    shown_url: String,
    link: Mutex<Option<Link>>,
    /// The newest connection a reply found lost: that one and every older
    /// one are opened again before the next command.
    broken: Arc<AtomicU64>,
}

impl RedisSink {
    /// Checks the config and reads the TLS files; the connection is opened
    /// by the first event.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisSinkError> {
        let url = config.url.expose();
        let shown_url = config.redacted_url();
        let bad = |reason: &str| RedisSinkError::Url {
            url: shown_url.clone(),
            // The client may quote what it refused: keep the password out.
            reason: reason.replace(url.as_str(), &shown_url),
        };
        if redis::parse_redis_url(url).is_none() {
            return Err(bad(
                "expected redis://host[:port][/db], rediss://... (TLS) or unix:///path",
            ));
        }
        let mut info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(&e.to_string()))?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &config.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        if let Some(db) = config.db {
            settings = settings.set_db(db);
        }
        info = info.set_redis_settings(settings);
        let tls =
            match info.addr() {
                ConnectionAddr::TcpTls { insecure: true, .. } => return Err(bad(
                    "#insecure (TLS without checking the server's certificate) is not supported; \
                     give the server's CA in ca_file instead",
                )),
                ConnectionAddr::TcpTls { .. } => true,
                _ => false,
            };
        let options = TlsFileOptions {
            ca_file: config.ca_file.as_deref(),
            client_cert: config.client_cert.as_deref(),
            client_key: config.client_key.as_deref(),
        };
        options.require_tls(tls, || {
            format!("applies to rediss:// URLs only, and the url is {shown_url}")
        })?;
        let files = options.read()?;
        let client = if options.any() {
            let certificates = TlsCertificates {
                client_tls: files.identity.map(|identity| ClientTlsConfig {
                    client_cert: identity.cert,
                    client_key: identity.key,
                }),
                root_cert: files.ca,
            };
            Client::build_with_tls(info, certificates)
        } else {
            Client::open(info)
        }
        .map_err(|e| bad(&e.to_string()))?;
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(Duration::from_millis(config.response_timeout_ms)))
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        Ok(Self {
            client,
            connection_config,
            connect_timeout,
            stream: config.stream.clone(),
            maxlen: config.maxlen,
            shown_url,
            link: Mutex::new(None),
            broken: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The open connection, connecting first if there is none or it was lost.
    async fn connection(&self) -> Result<(MultiplexedConnection, u64), SinkError> {
        let mut link = self.link.lock().await;
        let broken = self.broken.load(Ordering::Acquire);
        if let Some(open) = link.as_ref() {
            if open.generation > broken {
                return Ok((open.connection.clone(), open.generation));
            }
        }
        let generation = link
            .take()
            .map_or(broken, |dead| dead.generation)
            .max(broken)
            + 1;
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config);
        // The client's own timeout covers the TCP connect; this one the TLS
        // handshake, AUTH and SELECT too.
        let connection = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                return Err(SinkError::disconnected(format!(
                    "connecting to {}: {}",
                    self.shown_url,
                    describe(&e)
                )))
            }
            Err(_) => {
                return Err(SinkError::disconnected(format!(
                    "no answer from {} within {} ms",
                    self.shown_url,
                    self.connect_timeout.as_millis()
                )))
            }
        };
        info!(url = %self.shown_url, "connected to Redis");
        *link = Some(Link {
            connection: connection.clone(),
            generation,
        });
        Ok((connection, generation))
    }

    /// `XADD stream [MAXLEN ~ n] * field value...` for one event.
    fn command(&self, stream: &str, event: &Event) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream);
        if let Some(maxlen) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg("*")
            .arg("event_id")
            .arg(event.message_id())
            .arg("schema")
            .arg(&event.schema)
            .arg("table")
            .arg(&event.table)
            .arg("op")
            .arg(event.op.as_str())
            .arg("channel")
            .arg(&*event.channel);
        if let Some(key) = &event.key {
            cmd.arg("key").arg(key.as_ref());
        }
        cmd.arg("payload").arg(event.payload.as_ref());
        cmd
    }
}

/// What went wrong, in the server's words when it sent some.
fn describe(error: &RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => error.to_string(),
    }
}

/// How a failed XADD is classified, and whether the connection it was
/// sent on must be replaced.
pub(crate) fn reply_error(stream: &str, error: &RedisError) -> (SinkError, bool) {
    let what = describe(error);
    match error.code() {
        // The server is up but cannot take writes now: loading its data
        // after a restart, a replica after a failover, a busy script.
        // Wait, as for a lost connection, on a fresh one.
        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY") => (
            SinkError::disconnected(format!("XADD to stream \"{stream}\": {what}")),
            true,
        ),
        // maxmemory reached: may pass once consumers trim; spends retries.
        Some("OOM") => (
            SinkError::retryable(format!("XADD to stream \"{stream}\": {what}")),
            false,
        ),
        // WRONGTYPE (the key holds something else), NOPERM (the ACL
        // refuses the key or the command), ERR...: the same command gets
        // the same answer.
        Some(_) => (
            SinkError::permanent(format!("XADD to stream \"{stream}\" refused: {what}")),
            false,
        ),
        // I/O, a dropped connection, no reply within response_timeout_ms.
        None => (
            SinkError::disconnected(format!("XADD to stream \"{stream}\": {what}; reconnecting")),
            true,
        ),
    }
}

#[async_trait::async_trait]
impl Sink for RedisSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.submit(event).await?.await
    }

    async fn submit(&self, event: &Event) -> Result<Confirmation, SinkError> {
        let (mut connection, generation) = self.connection().await?;
        let stream = self.stream.render(event);
        let command = self.command(&stream, event);
        let mut reply = Box::pin(async move { connection.send_packed_command(&command).await });
        // Polled once now, the command joins the connection's queue before
        // `submit` returns, so commands go out in submit order; the reply is
        // the confirmation still to come.
        let first = std::future::poll_fn(|cx| Poll::Ready(reply.as_mut().poll(cx))).await;
        let broken = Arc::clone(&self.broken);
        let settle =
            move |result: Result<Value, RedisError>| match result.and_then(Value::extract_error) {
                Ok(_) => Ok(()),
                Err(e) => {
                    let (error, reconnect) = reply_error(&stream, &e);
                    if reconnect {
                        broken.fetch_max(generation, Ordering::AcqRel);
                    }
                    Err(error)
                }
            };
        match first {
            Poll::Ready(result) => {
                settle(result)?;
                Ok(skor_sink_api::confirmed())
            }
            Poll::Pending => Ok(Box::pin(async move { settle(reply.await) })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skor_sink_api::ErrorKind;

    fn error(config: &RedisConfig) -> String {
        RedisSink::new(config).err().expect("refused").to_string()
    }

    #[test]
    fn a_bad_url_names_what_is_wrong_without_the_password() {
        let shown = error(&RedisConfig::new("http://app:s3cret@h/"));
        assert_eq!(
            shown,
            "url http://app:<redacted>@h/: expected redis://host[:port][/db], rediss://... (TLS) or unix:///path"
        );
        let shown = error(&RedisConfig::new("redis://app:s3cret@h/notadb"));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("Invalid database number"), "{shown}");
        let shown = error(&RedisConfig::new("rediss://app:s3cret@h/#insecure"));
        assert!(shown.contains("#insecure"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(RedisSink::new(&RedisConfig::new("redis://127.0.0.1")).is_ok());
        assert!(RedisSink::new(&RedisConfig::new("rediss://h:6380/1")).is_ok());
        assert!(RedisSink::new(&RedisConfig::new("unix:///run/redis.sock")).is_ok());
    }

    #[test]
    fn tls_files_need_rediss() {
        let mut config = RedisConfig::new("redis://app:s3cret@h");
        config.client_cert = Some("/nonexistent/cert.pem".into());
        let shown = error(&config);
        assert_eq!(
            shown,
            "client_cert: applies to rediss:// URLs only, and the url is redis://app:<redacted>@h"
        );
        config.url = skor_sink_kit::Redacted::new("rediss://app:s3cret@h".into());
        assert_eq!(
            error(&config),
            "client_key: client_cert is set, so client_key must be too"
        );
        config.client_cert = None;
        config.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(
            error(&config),
            "ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn command_errors_are_permanent_outages_are_not() {
        let server = |text: &str| {
            // What the server sends: `-CODE detail`.
            let value = redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap();
            value.extract_error().unwrap_err()
        };
        let (wrong, reconnect) = reply_error(
            "s",
            &server("WRONGTYPE Operation against a key holding the wrong kind of value"),
        );
        assert_eq!((wrong.kind, reconnect), (ErrorKind::Permanent, false));
        assert_eq!(
            wrong.message,
            "XADD to stream \"s\" refused: WRONGTYPE Operation against a key holding the wrong kind of value"
        );
        let (loading, reconnect) = reply_error(
            "s",
            &server("LOADING Redis is loading the dataset in memory"),
        );
        assert_eq!((loading.kind, reconnect), (ErrorKind::Disconnected, true));
        let (oom, _) = reply_error(
            "s",
            &server("OOM command not allowed when used memory > 'maxmemory'."),
        );
        assert_eq!(oom.kind, ErrorKind::Retryable);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let (lost, reconnect) = reply_error("s", &io);
        assert_eq!((lost.kind, reconnect), (ErrorKind::Disconnected, true));
    }
}
