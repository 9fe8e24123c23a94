//! A RabbitMQ exchange and queue of the test's own on the real broker.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{eventually_within, PATIENCE};
use skor_sink_amqp::lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use skor_sink_amqp::lapin::types::{AMQPValue, FieldTable};
use skor_sink_amqp::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

/// The broker the tests use.
pub fn url() -> String {
    std::env::var("SKOR_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One message as a consumer sees it.
#[derive(Debug)]
pub struct Message {
    pub body: String,
    pub routing_key: String,
    pub headers: BTreeMap<String, String>,
    pub delivery_mode: Option<u8>,
    pub content_type: Option<String>,
    pub message_id: Option<String>,
}

/// A durable topic exchange and a durable queue bound to it with `#`,
/// named uniquely; the queue expires if a failed test leaves it behind.
pub struct Rabbit {
    connection: Connection,
    channel: Channel,
    pub exchange: String,
    pub queue: String,
}

impl Rabbit {
    /// An exchange with a queue bound to every routing key.
    pub async fn new() -> Self {
        let rabbit = Self::unbound().await;
        rabbit
            .channel
            .queue_bind(
                rabbit.queue.as_str().into(),
                rabbit.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
        rabbit
    }

    /// An exchange whose queue is bound to nothing: every message is unroutable.
    pub async fn unbound() -> Self {
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("open channel");
        let name = format!("skor_test_{:016x}", rand::random::<u64>());
        declare_exchange(&channel, &name).await;
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .expect("declare queue");
        Self {
            connection,
            channel,
            exchange: name.clone(),
            queue: name,
        }
    }

    /// Opens a new connection, after the broker restarted.
    pub async fn reconnect(&mut self) {
        self.connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("reconnect to RabbitMQ");
        self.channel = self
            .connection
            .create_channel()
            .await
            .expect("open channel");
    }

    /// The `[sink.bus]` table of an AMQP sink publishing to this exchange.
    pub fn sink(&self, options: &str) -> String {
        format!(
            "[sink.bus]\ntype = \"amqp\"\nurl = \"{}\"\nexchange = \"{}\"\n{options}\n",
            url(),
            self.exchange
        )
    }

    /// Takes `n` messages off the queue, waiting for them to arrive.
    pub async fn take(&self, n: usize) -> Vec<Message> {
        self.take_within(n, PATIENCE).await
    }

    /// Takes `n` messages off the queue, waiting at most `patience`.
    pub async fn take_within(&self, n: usize, patience: Duration) -> Vec<Message> {
        let messages = std::sync::Mutex::new(Vec::with_capacity(n));
        eventually_within(&format!("{n} messages"), patience, || async {
            let mut taken = messages.lock().unwrap().len();
            while taken < n {
                let got = self
                    .channel
                    .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                    .await
                    .expect("basic.get");
                let Some(message) = got else {
                    return Err(format!("{taken} of {n} messages arrived"));
                };
                let mut messages = messages.lock().unwrap();
                messages.push(to_message(message.delivery));
                taken = messages.len();
            }
            Ok(())
        })
        .await;
        messages.into_inner().unwrap()
    }

    /// Messages still in the queue, without waiting.
    pub async fn rest(&self) -> Vec<Message> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            messages.push(to_message(message.delivery));
        }
        messages
    }

    /// Declares another exchange like this one and binds the queue to it.
    pub async fn add_exchange(&self, name: &str) {
        declare_exchange(&self.channel, name).await;
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                name.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
    }

    /// Declares an internal exchange, one clients may not publish to: the
    /// broker closes the channel of a publish to it (403).
    pub async fn add_internal_exchange(&self, name: &str) {
        self.channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    internal: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare internal exchange");
    }

    /// Deletes an exchange made by `add_exchange`.
    pub async fn delete_exchange(&self, name: &str) {
        let _ = self
            .channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await;
    }

    /// Deletes the queue and the exchange.
    pub async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// A durable topic exchange, as skor declares one.
async fn declare_exchange(channel: &Channel, name: &str) {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
}

fn to_message(delivery: skor_sink_amqp::lapin::message::Delivery) -> Message {
    let properties = &delivery.properties;
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(key, value)| {
                    let value = match value {
                        AMQPValue::LongString(s) => s.to_string(),
                        AMQPValue::LongLongInt(n) => n.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key.to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        body: String::from_utf8(delivery.data).expect("UTF-8 body"),
        routing_key: delivery.routing_key.to_string(),
        headers,
        delivery_mode: *properties.delivery_mode(),
        content_type: properties.content_type().as_ref().map(|s| s.to_string()),
        message_id: properties.message_id().as_ref().map(|s| s.to_string()),
    }
}
