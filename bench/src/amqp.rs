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
        let exchange = exchange_name();
        channel
            .exchange_declare(
                exchange.as_str().into(),
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
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the queue")?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "skor-bench".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context("consuming")?;
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
