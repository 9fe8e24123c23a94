//! `skor tail` in notify mode: LISTEN on the config's channels, as the
//! daemon does; a notification goes to every listener, so tail takes
//! nothing from the daemon. An oversized payload's reference is read with
//! a plain SELECT, never the daemon's DELETE, so the row stays for the
//! daemon; if the daemon already took it, tail says it is gone.

use futures_util::future::poll_fn;
use skor_sink_api::{Bytes, Op};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Notification as PgNotification};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::capture::payload::{self, Notification, Reference};
use crate::capture::tail::{Event, Seen, TailError, TailReader};
use crate::postgres::{describe, quote_ident, Postgres};

/// Listening on the notify-mode channels.
pub struct NotifyTail {
    client: Client,
    notifications: mpsc::UnboundedReceiver<PgNotification>,
}

/// A connection whose notifications arrive on the returned receiver; the
/// receiver closes when the connection does.
pub(crate) async fn listening_connection(
    pg: &Postgres,
) -> Result<(Client, mpsc::UnboundedReceiver<PgNotification>), TailError> {
    let (client, mut conn) = pg
        .connect()
        .await
        .map_err(|e| TailError::Connect(e.to_string()))?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if sender.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(error = %describe(&e), "tail: connection closed");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, receiver))
}

impl NotifyTail {
    /// Connects and LISTENs on `channels`.
    pub async fn open(pg: &Postgres, channels: &[String]) -> Result<Self, TailError> {
        let (client, notifications) = listening_connection(pg).await?;
        let sql: String = channels
            .iter()
            .map(|c| format!("LISTEN {};", quote_ident(c)))
            .collect();
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| TailError::Connect(format!("LISTEN failed: {}", describe(&e))))?;
        Ok(Self {
            client,
            notifications,
        })
    }
    async fn read(&self, channel: &str, text: &str) -> Option<Seen> {
        match payload::parse(text) {
            Ok(Notification::Event {
                schema, table, op, ..
            }) => Some(seen(
                channel,
                schema.into_owned(),
                table.into_owned(),
                op,
                text.to_string(),
            )),
            Ok(Notification::Reference(reference)) => self.oversized(channel, &reference).await,
            Err(error) => {
                warn!(channel, %error, payload = %crate::observe::logging::truncate(text, 256),
                      "a notification that is not a skor event");
                None
            }
        }
    }

    /// Reads an oversized payload without taking it.
    async fn oversized(&self, channel: &str, reference: &Reference<'_>) -> Option<Seen> {
        const SQL: &str = "SELECT payload FROM skor.oversized_payload \
                            WHERE id = $1 AND channel = $2 AND token = $3";
        if reference.channel != channel {
            warn!(
                channel,
                id = reference.id,
                "a reference to another channel's payload"
            );
            return None;
        }
        let found = self
            .client
            .query_opt(
                SQL,
                &[&reference.id, &&*reference.channel, &&*reference.token],
            )
            .await;
        let text: String = match found {
            Ok(Some(row)) => row.get(0),
            Ok(None) => {
                return Some(Seen::Gone {
                    id: reference.id,
                    channel: channel.to_string(),
                })
            }
            Err(error) => {
                warn!(channel, id = reference.id, error = %describe(&error),
                      "cannot read an oversized payload");
                return None;
            }
        };
        match payload::parse(&text) {
            Ok(Notification::Event {
                schema, table, op, ..
            }) => {
                let (schema, table) = (schema.into_owned(), table.into_owned());
                Some(seen(channel, schema, table, op, text))
            }
            _ => {
                warn!(
                    channel,
                    id = reference.id,
                    "an oversized payload that is not a skor event"
                );
                None
            }
        }
    }
}

/// An event as tail shows it: its routing fields and the payload as sent.
fn seen(channel: &str, schema: String, table: String, op: Op, payload: String) -> Seen {
    Seen::Event(Event {
        channel: channel.to_string(),
        schema,
        table,
        op,
        payload: Bytes::from(payload),
    })
}

#[async_trait::async_trait]
impl TailReader for NotifyTail {
    /// Hands every notification on, as an event, until `shutdown`.
    async fn run(
        mut self: Box<Self>,
        seen: mpsc::Sender<Seen>,
        shutdown: CancellationToken,
    ) -> Result<(), TailError> {
        loop {
            let notification = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                n = self.notifications.recv() => n,
            };
            let Some(notification) = notification else {
                return Err(TailError::Lost {
                    mode: "notify",
                    message: "the connection to PostgreSQL was lost".into(),
                });
            };
            let Some(note) = self
                .read(notification.channel(), notification.payload())
                .await
            else {
                continue;
            };
            if seen.send(note).await.is_err() {
                return Ok(());
            }
        }
    }
}
