//! Wal mode: no trigger. PostgreSQL decodes its write-ahead log for skor's
//! publication into a logical replication slot; the daemon streams it
//! (pgoutput), renders each row as the triggers would, and confirms the
//! slot past what every routed sink confirmed.

pub mod catalog;
pub mod decode;
pub mod pgoutput;
mod progress;
pub mod publication;
pub mod relations;
pub mod render;
pub mod source;
pub mod tail;

use std::sync::Arc;

use tokio_postgres::{Client, Transaction};

use super::tail::{TailError, TailReader};
use super::{
    BackfillBatch, Capture, InstallError, InstallOptions, OpenError, Removal, Source, Wiring,
};
use crate::config::{Config, Mode};
use crate::postgres::Postgres;

/// The wal plug-in.
pub struct Wal;

#[async_trait::async_trait]
impl Capture for Wal {
    fn mode(&self) -> Mode {
        Mode::Wal
    }

    fn name(&self) -> &'static str {
        "wal"
    }

    fn used(&self, config: &Config) -> bool {
        config.uses_wal()
    }

    fn install_script_note(&self) -> Option<&'static str> {
        Some(
            "-- Wal mode: `skor install` creates the publication and the replication slot\n\
             -- from the catalog (replica identities, column lists); see `skor check --connect`.\n",
        )
    }

    /// Into `skor.wal_backfill`, which the publication carries: the rows
    /// come back through the stream, in commit order with the changes.
    fn backfill_send_sql(&self, batch: &BackfillBatch<'_>) -> String {
        format!(
            "INSERT INTO skor.wal_backfill (channel, schema_name, table_name, row_key, payload)\n    \
             SELECT {}, {}, {}, k.row_key, k.payload\n      \
             FROM (SELECT {} AS row_key, {} AS payload FROM batch b ORDER BY {}) k\n    \
             RETURNING 1",
            batch.channel,
            batch.schema,
            batch.table,
            batch.row_key,
            (batch.payload)("b", "NULL"),
            batch.order
        )
    }

    /// Empties its table again: the publication already has the inserts.
    fn backfill_after_batch_sql(&self) -> Option<&'static str> {
        Some("DELETE FROM skor.wal_backfill")
    }

    async fn open_source(&self, wiring: &Wiring<'_>) -> Result<Box<dyn Source>, OpenError> {
        let stats = wiring
            .stats
            .wal
            .as_ref()
            .ok_or_else(|| OpenError("wal mode: its counters were not registered".into()))?;
        let source = source::WalSource::open(
            wiring.pg.clone(),
            wiring.config,
            wiring.fanout.clone(),
            Arc::clone(stats),
        )
        .await
        .map_err(|e| OpenError(e.to_string()))?;
        Ok(Box::new(source))
    }

    async fn open_tail(
        &self,
        pg: &Postgres,
        config: &Config,
    ) -> Result<Box<dyn TailReader>, TailError> {
        Ok(Box::new(
            tail::WalTail::open(pg, config, tail::slot_name()).await?,
        ))
    }

    async fn abandon_tail(&self, pg: &Postgres) {
        tail::abandon(pg, tail::slot_name()).await;
    }

    async fn before_install(&self, client: &Client, config: &Config) -> Result<(), InstallError> {
        if config.uses_wal() {
            publication::check_server(client).await?;
            publication::check_failover_support(client, config).await?;
        }
        Ok(())
    }

    async fn install(
        &self,
        transaction: &Transaction<'_>,
        config: &Config,
        upgrading: bool,
    ) -> Result<(), InstallError> {
        if config.uses_wal() {
            publication::publish(transaction, config, upgrading).await?;
        }
        Ok(())
    }

    /// Makes the slot; a config without wal tables takes back a
    /// publication an earlier install made.
    async fn after_install(
        &self,
        client: &mut Client,
        config: &Config,
        options: &InstallOptions,
        upgrading: bool,
    ) -> Result<(), InstallError> {
        if config.uses_wal() {
            publication::create_slot(
                client,
                config,
                options.adopt_slot || upgrading,
                options.lock_timeout,
            )
            .await
        } else {
            publication::unpublish(client, config).await
        }
    }

    async fn before_uninstall(&self, client: &Client, config: &Config) -> Result<(), InstallError> {
        publication::check_slot_idle(client, config).await
    }

    /// Only what skor created goes; the record of it goes with the schema,
    /// so it is read first.
    async fn uninstall(
        &self,
        transaction: &Transaction<'_>,
        config: &Config,
    ) -> Result<Removal, InstallError> {
        let publication_ours =
            publication::created_by_skor(transaction, "publication", &config.source.publication)
                .await?;
        let slot_ours =
            publication::created_by_skor(transaction, "slot", &config.source.slot).await?;
        Ok(Removal {
            sql: if publication_ours {
                publication::drop_publication_sql(config)
            } else {
                String::new()
            },
            after: slot_ours,
        })
    }

    async fn after_uninstall(
        &self,
        transaction: &Transaction<'_>,
        config: &Config,
    ) -> Result<(), InstallError> {
        publication::drop_slot(transaction, config).await
    }

    async fn report(
        &self,
        client: &Client,
        config: &Config,
    ) -> Result<Option<String>, InstallError> {
        if !config.uses_wal() {
            return Ok(None);
        }
        let report = publication::slot_report(client, config).await?;
        Ok(Some(format!("wal:    {report}")))
    }
}
