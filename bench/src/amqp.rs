//! The AMQP cases' consumer: a fanout exchange of the run's own, and an
//! exclusive auto-delete queue bound to it, consumed without acks.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use skor_sink_amqp::lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use skor_sink_amqp::lapin::types::FieldTable;
use skor_sink_amqp::lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::task::JoinHandle;

use crate::arrivals::Arrivals;

/// The exchange of this run.
pub fn exchange_name() -> String {
    format!("skor_bench_{}", std::process::id())
}

/// The `[sink.bench]` table that publishes to [`exchange_name`].
pub fn sink(url: &str) -> String {
    use crate::skor::toml_string;
    format!(
        "[sink.bench]\ntype = \"amqp\"\nurl = {}\nexchange = {}\ndeclare_exchange = true\n\
         exchange_type = \"fanout\"\nrouting_key = \"{{schema}}.{{table}}.{{op}}\"\n",
        toml_string(url),
        toml_string(&exchange_name())
    )
}

/// The broker's address in `url`, and a function giving the same URL
/// through a proxy's port on 127.0.0.1.
pub fn through_proxy(url: &str) -> Result<(impl Fn(u16) -> String, std::net::SocketAddr)> {
    use std::net::ToSocketAddrs;
    let uri: skor_sink_amqp::lapin::uri::AMQPUri =
        url.parse().map_err(|e| anyhow::anyhow!("amqp url: {e}"))?;
    let (host, port) = (uri.authority.host.clone(), uri.authority.port);
    let broker = (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let userinfo = uri.authority.userinfo;
    let (user, password, vhost) = (userinfo.username, userinfo.password, uri.vhost);
    let proxied = move |port: u16| {
        format!(
            "amqp://{user}:{password}@127.0.0.1:{port}/{}",
            vhost.replace('/', "%2f")
        )
    };
    Ok((proxied, broker))
}

/// Declares the fanout `exchange` (durable, as skor declares it), binds
/// a fresh exclusive queue to it and consumes it without acks.
async fn consume(
    channel: &Channel,
    exchange: &str,
    tag: &str,
) -> Result<skor_sink_amqp::lapin::Consumer> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the exchange")?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the queue")?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the queue")?;
    channel
        .basic_consume(
            queue.name().clone(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("consuming")
}

/// A consumer recording every message's payload.
pub struct Consumer {
    connection: Connection,
    channel: Channel,
    task: JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Consumer {
    /// Declares the exchange as skor will (so messages published before
    /// skor's own declaration find the queue), binds a fresh queue and
    /// starts consuming.
    pub async fn start(url: &str, arrivals: Arc<Arrivals>) -> Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        let mut consumer = consume(&channel, &exchange_name(), "skor-bench").await?;
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                arrivals.record_event(&delivery.data, Instant::now());
            }
        });
        Ok(Self {
            connection,
            channel,
            task,
        })
    }

    /// Stops consuming and deletes the exchange (the queue goes with the
    /// connection).
    pub async fn stop(self) -> Result<()> {
        self.task.abort();
        self.channel
            .exchange_delete(
                exchange_name().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .context("deleting the exchange")?;
        let _ = self.connection.close(200, "bye".into()).await;
        Ok(())
    }
}

/// What a minimal AMQP client achieves on its own: publishes and confirms
/// per second, and the bench process's CPU per message.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// Messages published, confirmed and consumed per second.
    pub per_second: f64,
    /// CPU of the bench process (publisher and consumer) per message, µs.
    pub cpu_us: f64,
}

/// RabbitMQ's publish-confirm ceiling from the simplest client: one lapin
/// channel in confirm mode publishing `messages` persistent 250-byte
/// messages to a fanout exchange, awaiting up to 1000 confirmations at once
/// (skor's default `max_in_flight`), one consumer; from the first publish to
/// the last message consumed.
pub async fn ceiling(url: &str, messages: usize) -> Result<Ceiling> {
    use futures_util::stream::FuturesOrdered;
    use skor_sink_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use skor_sink_amqp::lapin::BasicProperties;

    let exchange = format!("{}_ceiling", exchange_name());
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let consuming = connection.create_channel().await?;
    let mut consumer = consume(&consuming, &exchange, "skor-bench-ceiling").await?;
    let counted = tokio::spawn(async move {
        let mut n = 0;
        while n < messages {
            match consumer.next().await {
                Some(Ok(_)) => n += 1,
                _ => break,
            }
        }
        n
    });
    let publishing = connection.create_channel().await?;
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let payload = crate::receiver::SAMPLE.as_bytes();
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let cpu_before = crate::skor::own_cpu_seconds();
    let start = Instant::now();
    let mut waiting = FuturesOrdered::new();
    for _ in 0..messages {
        if waiting.len() >= 1000 {
            waiting.next().await.context("a confirmation")??;
        }
        let confirm = publishing
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                payload,
                properties.clone(),
            )
            .await?;
        waiting.push_back(confirm);
    }
    while let Some(confirm) = waiting.next().await {
        confirm?;
    }
    let consumed = counted.await?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu = crate::skor::own_cpu_seconds() - cpu_before;
    let _ = consuming
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "bye".into()).await;
    anyhow::ensure!(
        consumed == messages,
        "consumed {consumed} of {messages} messages"
    );
    Ok(Ceiling {
        per_second: messages as f64 / seconds,
        cpu_us: cpu * 1e6 / messages as f64,
    })
}
