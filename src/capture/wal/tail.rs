//! `skor tail` in wal mode: a TEMPORARY logical replication slot of its
//! own on the configured publication, created on the replication session
//! that then reads it, so PostgreSQL drops it when that session ends
//! (Ctrl-C, a crash, a lost connection). The configured slot is never
//! read, held or moved: the daemon goes on streaming from it. Changes are
//! decoded and rendered by the daemon's own decoder (`decode.rs`), so tail
//! prints the payloads the daemon sends, byte for byte, from the moment
//! the slot is created on.

use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::catalog;
use super::decode::{Decoder, Step};
use super::relations::Rules;
use crate::capture::tail::{Event, Seen, TailError, TailReader, STOP_PATIENCE};
use crate::config::Config;
use crate::postgres::{describe, Postgres, Replication, TlsBridge};

/// Reading a temporary slot.
pub struct WalTail {
    client: ReplicationClient,
    /// Kept while the session lives, when the DSN asks for TLS.
    _bridge: Option<TlsBridge>,
    /// For column types and primary keys.
    catalog: tokio_postgres::Client,
    /// The daemon's decoder: the same payloads and ids.
    decoder: Decoder,
    slot: String,
}

impl WalTail {
    /// Checks the server and the publication, creates the temporary slot
    /// and starts streaming from it.
    pub async fn open(pg: &Postgres, config: &Config, slot: &str) -> Result<Self, TailError> {
        let publication = &config.source.publication;
        let (catalog, connection) = pg
            .connect()
            .await
            .map_err(|e| TailError::Connect(e.to_string()))?;
        tokio::spawn(connection);
        let row = catalog
            .query_one(
                "SELECT current_setting('wal_level'), \
                        EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1), \
                        (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
                &[publication],
            )
            .await
            .map_err(|e| TailError::Connect(describe(&e)))?;
        let (level, published, replication): (String, bool, Option<bool>) =
            (row.get(0), row.get(1), row.get(2));
        if level != "logical" {
            return Err(TailError::Setup(format!(
                "wal mode: wal_level is {level}, wal mode needs logical: {}",
                crate::capture::wal::publication::WAL_LEVEL_HOWTO
            )));
        }
        if !published {
            return Err(TailError::Setup(format!(
                "wal mode: publication \"{publication}\" does not exist: run `skor install` first"
            )));
        }
        if replication != Some(true) {
            return Err(TailError::Setup(
                "wal mode: the role has no REPLICATION attribute, which reading a replication \
                 slot needs"
                    .into(),
            ));
        }
        let slot = slot.to_string();
        let status = Duration::from_millis(config.source.wal_status_interval_ms);
        let Replication {
            config: settings,
            bridge,
        } = pg
            .replication(&slot, publication, status)
            .map_err(TailError::Connect)?;
        let settings = settings.with_application_name("skor tail");
        let mut client = ReplicationClient::connect_gated(settings)
            .await
            .map_err(|e| TailError::Connect(e.to_string()))?;
        info!(%slot, "wal mode: creating a temporary replication slot (PostgreSQL waits for the \
                      transactions running now to end)");
        // TEMPORARY: it belongs to this session and goes with it.
        client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT"
            ))
            .await
            .map_err(|e| {
                TailError::Setup(format!("wal mode: cannot create a temporary slot: {e}"))
            })?;
        client
            .start()
            .await
            .map_err(|e| TailError::Connect(e.to_string()))?;
        client
            .wait_started()
            .await
            .map_err(|e| TailError::Connect(format!("wal mode: {e}")))?;
        Ok(Self {
            client,
            _bridge: bridge,
            catalog,
            decoder: Decoder::new(Rules::new(config)),
            slot,
        })
    }
    async fn on_step(&mut self, step: Step) -> Option<Event> {
        match step {
            Step::Relation(relation) => {
                let (table, _) =
                    catalog::prepare(Some(&self.catalog), &relation, self.decoder.rules()).await;
                self.decoder.describe(relation.id, table);
                None
            }
            Step::Event(event) => Some(Event {
                channel: event.channel.to_string(),
                schema: event.schema,
                table: event.table,
                op: event.op,
                payload: event.payload,
            }),
            Step::Truncate(_) | Step::Nothing => None,
        }
    }
}

/// The temporary slot's name for this run, `skor_tail_<pid>_<random>`:
/// the same for opening it and for abandoning it.
pub fn slot_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| format!("skor_tail_{}_{:08x}", std::process::id(), random()))
}

/// Ends the session still creating `slot` (Ctrl-C while it waited for
/// running transactions). Its server process waits on their locks, not on
/// the socket, so it would otherwise notice that tail is gone, and drop
/// the slot, only once they end.
pub async fn abandon(pg: &Postgres, slot: &str) {
    const SQL: &str = "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                        WHERE slot_name = $1 AND temporary AND active_pid IS NOT NULL";
    let Ok((client, connection)) = pg.connect().await else {
        return;
    };
    tokio::spawn(connection);
    match tokio::time::timeout(STOP_PATIENCE, client.query(SQL, &[&slot])).await {
        Ok(Ok(rows)) if !rows.is_empty() => {
            info!(%slot, "ended the session creating the temporary slot");
        }
        Ok(Ok(_)) => {}
        Ok(Err(error)) => warn!(%slot, error = %describe(&error),
                                "cannot end the session creating the temporary slot; \
                                 PostgreSQL drops it once the transactions it waits for end"),
        Err(_) => warn!(%slot, "no answer while ending the session creating the temporary slot"),
    }
}

fn lost(message: String) -> TailError {
    TailError::Lost {
        mode: "wal",
        message,
    }
}

/// A few random bits, so two tails never pick the same slot name.
fn random() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as u32
}

#[async_trait::async_trait]
impl TailReader for WalTail {
    /// Hands every captured change on until `shutdown`, then ends the
    /// session, which drops the slot.
    async fn run(
        mut self: Box<Self>,
        seen: mpsc::Sender<Seen>,
        shutdown: CancellationToken,
    ) -> Result<(), TailError> {
        let result = loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                event = self.client.recv() => event,
            };
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => break Err(lost("the server ended the stream".into())),
                Err(error) => break Err(lost(error.to_string())),
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => self
                    .decoder
                    .begin(final_lsn.as_u64(), xid, commit_time_micros),
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => {
                    let step = match self.decoder.xlog(wal_start.as_u64(), &data, false) {
                        Ok(step) => step,
                        Err(error) => break Err(lost(error)),
                    };
                    if let Some(event) = self.on_step(step).await {
                        if seen.send(Seen::Event(event)).await.is_err() {
                            break Ok(());
                        }
                    }
                }
                // The slot is tail's own: moving it on keeps only the WAL
                // tail has not read yet.
                ReplicationEvent::Commit { end_lsn, .. } => self.client.update_applied_lsn(end_lsn),
                _ => {}
            }
        };
        match tokio::time::timeout(STOP_PATIENCE, self.client.shutdown()).await {
            Ok(Ok(())) => debug!(slot = %self.slot, "temporary slot released"),
            Ok(Err(error)) => debug!(%error, "replication stream closed"),
            Err(_) => self.client.abort(),
        }
        result
    }
}
