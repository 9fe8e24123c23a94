//! The NATS case's consumer: a file-backed JetStream stream of the run's
//! own (as a user would make for skor), read back by an ordered consumer.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use skor_sink_nats::async_nats::jetstream::{self, consumer, stream};
use tokio::task::JoinHandle;

use crate::arrivals::Arrivals;

/// The server: `SKOR_BENCH_NATS_URL`, else the local one scripts/services starts.
pub fn url() -> String {
    std::env::var("SKOR_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The stream of this run, also the prefix of its subjects.
fn stream_name() -> String {
    format!("skor_bench_{}", std::process::id())
}

/// The `[sink.bench]` table that publishes into [`stream_name`]'s subjects.
pub fn sink(url: &str) -> String {
    use crate::skor::toml_string;
    format!(
        "[sink.bench]\ntype = \"nats\"\nurl = {}\nsubject = {}\n",
        toml_string(url),
        toml_string(&format!("{}.{{schema}}.{{table}}.{{op}}", stream_name()))
    )
}

/// A consumer recording every stored message's payload.
pub struct Consumer {
    jetstream: jetstream::Context,
    task: JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Consumer {
    /// Creates the stream afresh and starts reading it from the start.
    pub async fn start(url: &str, arrivals: Arc<Arrivals>) -> Result<Self> {
        let client = skor_sink_nats::async_nats::connect(url)
            .await
            .context("connecting to NATS")?;
        let jetstream = jetstream::new(client);
        let name = stream_name();
        // A case before this one left its messages: start empty.
        let _ = jetstream.delete_stream(&name).await;
        let stream = jetstream
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.>")],
                storage: stream::StorageType::File,
                ..stream::Config::default()
            })
            .await
            .context("creating the stream")?;
        let mut messages = stream
            .create_consumer(consumer::pull::OrderedConfig::default())
            .await
            .context("creating the consumer")?
            .messages()
            .await
            .context("consuming")?;
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                arrivals.record_event(&message.payload, Instant::now());
            }
        });
        Ok(Self { jetstream, task })
    }

    /// Stops consuming and deletes the stream.
    pub async fn stop(self) -> Result<()> {
        self.task.abort();
        self.jetstream
            .delete_stream(stream_name())
            .await
            .context("deleting the stream")?;
        Ok(())
    }
}
