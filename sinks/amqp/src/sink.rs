//! Publishing with publisher confirms over one channel, re-opened when the
//! connection or the channel is lost.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use skor_sink_api::{Confirmation, Event, Sink, SinkError};
use tokio::sync::Mutex;
use tracing::info;

use crate::config::{AmqpConfig, ExchangeType};

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
        url.parse::<lapin::uri::AMQPUri>().map_err(|e| bad(&e))?;
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_app_id("skor".into());
        if config.persistent {
            properties = properties.with_delivery_mode(2);
        }
        Ok(Self {
            config: config.clone(),
            properties,
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
        let lost = |what: &str, e: lapin::Error| {
            SinkError::disconnected(format!("{what} {url}: {}", describe(&e)))
        };
        let properties = ConnectionProperties::default().with_connection_name("skor".into());
        let connection = Connection::connect(self.config.url.expose(), properties)
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
        if let Some(id) = event.id {
            properties = properties.with_message_id(id.to_string().into());
        }
        let confirm = channel
            .basic_publish(
                self.config.exchange.as_str().into(),
                routing_key.as_str().into(),
                options,
                &event.payload,
                properties,
            )
            .await
            .map_err(|e| SinkError::disconnected(format!("publishing: {}", describe(&e))))?;
        let exchange = self.config.exchange.clone();
        Ok(Box::pin(async move {
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
                Err(e) => Err(SinkError::disconnected(format!(
                    "waiting for the broker's confirmation: {}",
                    describe(&e)
                ))),
            }
        }))
    }
}
