//! The Redis case's consumer: one stream of the run's own, read with
//! blocking XREAD as entries arrive, deleted at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use skor_sink_redis::redis::aio::MultiplexedConnection;
use skor_sink_redis::redis::{self, AsyncConnectionConfig, Value};
use tokio::task::JoinHandle;

use crate::arrivals::Arrivals;

/// The stream of this run.
pub fn stream_name() -> String {
    format!("skor_bench_{}", std::process::id())
}

/// The `[sink.bench]` table that appends to [`stream_name`].
pub fn sink(url: &str) -> String {
    use crate::skor::toml_string;
    format!(
        "[sink.bench]\ntype = \"redis\"\nurl = {}\nstream = {}\n",
        toml_string(url),
        toml_string(&stream_name())
    )
}

/// A consumer recording every entry's payload.
pub struct Consumer {
    connection: MultiplexedConnection,
    task: JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The payloads of an XREAD reply and the id of its last entry.
fn payloads(reply: Value) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
    let mut found = Vec::new();
    let mut last = None;
    // [[stream, [[id, [field, value, ...]], ...]]], or nil when none came.
    let Value::Array(streams) = reply else {
        return (found, last);
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut entry) = entry else {
                continue;
            };
            let Some(Value::Array(fields)) = entry.pop() else {
                continue;
            };
            if let Some(Value::BulkString(id)) = entry.pop() {
                last = Some(id);
            }
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if let (Value::BulkString(name), Value::BulkString(value)) = (name, value) {
                    if name == b"payload" {
                        found.push(value);
                    }
                }
            }
        }
    }
    (found, last)
}

impl Consumer {
    /// Starts reading the run's stream from its beginning.
    pub async fn start(url: &str, arrivals: Arc<Arrivals>) -> Result<Self> {
        let client = redis::Client::open(url).context("the Redis URL")?;
        // XREAD BLOCK waits up to a second: the reply takes longer than
        // the client's default response timeout.
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting to Redis")?;
        let mut reader = connection.clone();
        let stream = stream_name();
        let task = tokio::spawn(async move {
            let mut last: Vec<u8> = b"0-0".to_vec();
            loop {
                let reply = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(10_000)
                    .arg("BLOCK")
                    .arg(1_000)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&last)
                    .query_async::<Value>(&mut reader)
                    .await;
                let Ok(reply) = reply else { return };
                let at = Instant::now();
                let (found, newest) = payloads(reply);
                for payload in &found {
                    arrivals.record_event(payload, at);
                }
                if let Some(newest) = newest {
                    last = newest;
                }
            }
        });
        Ok(Self { connection, task })
    }

    /// Stops reading and deletes the stream.
    pub async fn stop(mut self) -> Result<()> {
        self.task.abort();
        redis::cmd("DEL")
            .arg(stream_name())
            .query_async::<()>(&mut self.connection)
            .await
            .context("deleting the stream")
    }
}
