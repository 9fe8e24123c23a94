//! Publishing with publisher confirms over one channel, re-opened when the
//! connection or the channel is lost.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::AMQPErrorKind;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, DefaultConnectionBuilder,
    ExchangeKind,
};
use skor_sink_api::{Confirmation, Event, Format, Sink, SinkError};
use tokio::sync::Mutex;
use tracing::info;

use crate::config::{AmqpConfig, ExchangeType};
use crate::tls::tls_config;

/// Why an AMQP sink could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The URL is not an AMQP URL.
    #[error("url {url}: {reason}")]
    Url {
        /// The URL, its password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS option (`ca_file`, `client_cert`, `client_key`) is misused, or
    /// its file is missing or not what it should be.
    #[error("{key}: {message}")]
    Tls {
        /// The config key at fault.
        key: &'static str,
        /// What is wrong, naming the file.
        message: String,
    },
}

/// The open connection and the confirming channel on it.
struct Link {
    connection: Connection,
    channel: Channel,
}

/// Publishes events to one exchange.
pub struct AmqpSink {
    config: AmqpConfig,
    properties: BasicProperties,
    /// CA certificates and client identity for amqps://, read at start-up.
    tls: OwnedTLSConfig,
    link: Mutex<Option<Link>>,
}

impl AmqpSink {
    /// Checks the config; the connection is opened by the first event.
    pub fn new(config: &AmqpConfig) -> Result<Self, AmqpError> {
        let url = config.url.expose();
        let bad = |reason: &str| AmqpError::Url {
            url: config.redacted_url(),
            reason: reason.to_string(),
        };
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(bad("expected amqp://... or amqps://..."));
        }
        // The parser may quote the URL it refused: keep the password out.
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| bad(&e.replace(url.as_str(), &config.redacted_url())))?;
        let tls = tls_config(config)?;
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_app_id("skor".into());
        if config.persistent {
            properties = properties.with_delivery_mode(2);
        }
        Ok(Self {
            config: config.clone(),
            properties,
            tls,
            link: Mutex::new(None),
        })
    }

    /// The confirming channel, connecting first if there is none or it died.
    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut link = self.link.lock().await;
        if let Some(open) = link.as_ref() {
            if open.channel.status().connected() {
                return Ok(open.channel.clone());
            }
        }
        if let Some(dead) = link.take() {
            // Best effort: the broker may already have dropped it.
            let _ = dead.connection.close(200, "reconnecting".into()).await;
        }
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let open = match tokio::time::timeout(timeout, self.connect()).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(SinkError::disconnected(format!(
                    "no answer from {} within {} ms",
                    self.config.redacted_url(),
                    timeout.as_millis()
                )))
            }
        };
        info!(url = %self.config.redacted_url(), exchange = %self.config.exchange,
              "connected to the AMQP broker");
        let channel = open.channel.clone();
        *link = Some(open);
        Ok(channel)
    }

    async fn connect(&self) -> Result<Link, SinkError> {
        let url = self.config.redacted_url();
        let tls = self.config.url.expose().starts_with("amqps://");
        let lost = |what: &str, e: lapin::Error| {
            let mut reason = describe(&e);
            // rustls's words for "the server did not answer in TLS".
            if tls && reason.contains("InvalidContentType") {
                reason.push_str(
                    " (the server does not speak TLS on this port; RabbitMQ's TLS listener is usually 5671)",
                );
            }
            SinkError::disconnected(format!("{what} {url}: {reason}"))
        };
        let properties = ConnectionProperties::default().with_connection_name("skor".into());
        let connection = DefaultConnectionBuilder::new()
            .map_err(|e| lost("starting the AMQP runtime for", e))?
            .with_uri_str(self.config.url.expose().clone())
            .with_properties(properties)
            .with_tls_config(self.tls.clone())
            .connect()
            .await
            .map_err(|e| lost("connecting to", e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| lost("opening a channel on", e))?;
        let exchange = &self.config.exchange;
        if !exchange.is_empty() {
            let options = ExchangeDeclareOptions {
                passive: !self.config.declare_exchange,
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            let kind = match self.config.exchange_type {
                ExchangeType::Topic => ExchangeKind::Topic,
                ExchangeType::Direct => ExchangeKind::Direct,
                ExchangeType::Fanout => ExchangeKind::Fanout,
                ExchangeType::Headers => ExchangeKind::Headers,
            };
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    kind,
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    let action = if self.config.declare_exchange {
                        "declaring"
                    } else {
                        "checking (declare_exchange = false)"
                    };
                    SinkError::disconnected(format!(
                        "{action} exchange \"{exchange}\" on {url}: {}",
                        describe(&e)
                    ))
                })?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lost("enabling publisher confirms on", e))?;
        Ok(Link {
            connection,
            channel,
        })
    }

    fn headers(event: &Event) -> FieldTable {
        let mut headers = FieldTable::default();
        for (name, value) in [
            ("schema", event.schema.as_str()),
            ("table", event.table.as_str()),
            ("op", event.op.as_str()),
            ("channel", &event.channel),
        ] {
            headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
        }
        if let Some(id) = event.id {
            headers.insert(ShortString::from("event_id"), AMQPValue::LongLongInt(id));
        }
        headers
    }
}

/// The broker's own words for an error, when it sent some.
fn describe(error: &lapin::Error) -> String {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            format!("{} ({})", amqp.get_message(), amqp.get_id())
        }
        _ => error.to_string(),
    }
}

/// Classifies a failed publish. A channel the broker closed with a soft
/// error (403 access refused, 404 no exchange, 406 precondition failed...)
/// answers a publish, not a lost connection: it spends retries, so a
/// message the broker refuses ends failed instead of being waited on
/// forever. Not permanent: every confirmation pending on the channel fails
/// with the same error, and only one of those messages was at fault.
/// Everything else (I/O, a closed connection, a hard error such as 320
/// connection forced) is an outage: wait for the broker.
fn publish_error(what: &str, error: &lapin::Error) -> SinkError {
    let message = format!("{what}: {}", describe(error));
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => {
            SinkError::retryable(format!("{message}; the broker closed the channel"))
        }
        _ => SinkError::disconnected(message),
    }
}

#[async_trait::async_trait]
impl Sink for AmqpSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.submit(event).await?.await
    }

    async fn submit(&self, event: &Event) -> Result<Confirmation, SinkError> {
        let channel = self.channel().await?;
        let routing_key = self.config.routing_key.render(event);
        let options = BasicPublishOptions {
            mandatory: self.config.mandatory,
            ..BasicPublishOptions::default()
        };
        let mut properties = self.properties.clone().with_headers(Self::headers(event));
        if event.format != Format::Skor {
            properties = properties.with_content_type(event.format.content_type().into());
        }
        if let Some(id) = event.id {
            properties = properties.with_message_id(id.to_string().into());
        }
        let payload = event.payload.clone();
        let exchange = self.config.exchange.clone();
        let mut confirmation: Confirmation = Box::pin(async move {
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    options,
                    &payload,
                    properties,
                )
                .await
                .map_err(|e| publish_error("publishing", &e))?;
            match confirm.await {
                Ok(lapin::Confirmation::Ack(None)) | Ok(lapin::Confirmation::NotRequested) => {
                    Ok(())
                }
                Ok(lapin::Confirmation::Ack(Some(returned))) => Err(SinkError::retryable(format!(
                    "unroutable: the broker returned the message ({} {}): no queue is bound to \
                     exchange \"{exchange}\" for routing key \"{routing_key}\"",
                    returned.reply_code, returned.reply_text
                ))),
                Ok(lapin::Confirmation::Nack(_)) => Err(SinkError::retryable(
                    "the broker refused the message (nack)",
                )),
                Err(e) => Err(publish_error("waiting for the broker's confirmation", &e)),
            }
        });
        // lapin takes the publish's delivery tag and queues its frames on the
        // first poll, then waits for its I/O thread to write them. Waiting
        // here cost a round trip between threads per event, since the worker
        // submits one event after another; the event is in order on the
        // channel after this one poll, and the write is awaited with the
        // broker's confirmation.
        match poll_once(confirmation.as_mut()).await {
            Poll::Ready(Err(error)) => Err(error),
            Poll::Ready(Ok(())) => Ok(skor_sink_api::confirmed()),
            Poll::Pending => Ok(confirmation),
        }
    }
}

/// Polls `future` once, with the calling task's waker.
async fn poll_once<F: Future + ?Sized>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPHardError, AMQPSoftError};

    fn error(config: &AmqpConfig) -> String {
        AmqpSink::new(config).err().expect("refused").to_string()
    }

    #[test]
    fn a_channel_the_broker_closed_spends_retries_a_lost_connection_does_not() {
        let protocol = |kind: AMQPErrorKind, text: &str| {
            lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
                kind,
                text.into(),
            )))
        };
        let refused = publish_error(
            "waiting for the broker's confirmation",
            &protocol(
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
                "PRECONDITION_FAILED - message size 200000000 is larger than configured max size 134217728",
            ),
        );
        assert_eq!(refused.kind, skor_sink_api::ErrorKind::Retryable);
        assert!(
            refused.message.contains("message size") && refused.message.contains("(406)"),
            "{refused}"
        );
        let forced = publish_error(
            "publishing",
            &protocol(
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
                "CONNECTION_FORCED - broker forced connection closure",
            ),
        );
        assert_eq!(forced.kind, skor_sink_api::ErrorKind::Disconnected);
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(
            publish_error("publishing", &io).kind,
            skor_sink_api::ErrorKind::Disconnected
        );
    }

    #[test]
    fn a_bad_url_never_shows_the_password() {
        let config = AmqpConfig::new("amqp://guest:s3cret@localhost:notaport/", "x");
        let shown = error(&config);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    /// What a plain AMQP 0-9-1 server does with a TLS ClientHello: it
    /// answers with its protocol header and hangs up.
    async fn plain_amqp_port() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut hello = [0u8; 512];
                let _ = socket.read(&mut hello).await;
                let _ = socket.write_all(b"AMQP\x00\x00\x09\x01").await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn amqps_against_a_plain_port_fails_clearly_without_the_password() {
        let addr = plain_amqp_port().await;
        let mut config = AmqpConfig::new(format!("amqps://guest:s3cret@{addr}/%2f"), "");
        config.connect_timeout_ms = 5_000;
        let sink = AmqpSink::new(&config).unwrap();
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
            Ok(_) => panic!("a TLS handshake with a plain AMQP port cannot succeed"),
            Err(error) => error,
        };
        assert_eq!(error.kind, skor_sink_api::ErrorKind::Disconnected);
        let shown = error.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.starts_with(&format!(
                "connecting to amqps://guest:<redacted>@{addr}/%2f: "
            )),
            "{shown}"
        );
        assert!(
            shown.contains("InvalidContentType") || shown.contains("corrupt message"),
            "{shown}"
        );
    }
}
