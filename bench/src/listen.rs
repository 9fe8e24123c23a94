//! The ceiling: the bench itself LISTENs on `skor` and records each
//! notification, which is as fast as any NOTIFY consumer can hear events.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::future::poll_fn;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::arrivals::Arrivals;

/// A LISTENing connection; dropping it stops listening.
pub struct Listening {
    _client: Client,
    task: JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `dsn` and LISTENs on `channel`, recording into `arrivals`.
pub async fn start(dsn: &str, channel: &str, arrivals: Arc<Arrivals>) -> Result<Listening> {
    let (client, mut connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .context("connecting the ceiling listener")?;
    // Spawning the connection future would discard notifications; polling
    // its messages by hand both drives the queries and hands them over.
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(notification) = message {
                arrivals.record_event(notification.payload().as_bytes(), Instant::now());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .context("LISTEN")?;
    Ok(Listening {
        _client: client,
        task,
    })
}
