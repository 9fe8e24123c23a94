//! Durable mode: a trigger writes each change to `skor.event_log` in the
//! writing transaction; daemons share the log by partition leases and
//! delete each event once its sinks confirmed it. Wal mode's dead letters
//! live in the same log.

pub mod dead_letters;
pub mod source;

pub mod tail;

use std::sync::Arc;

use skor_sink_api::Op;

use super::tail::{TailError, TailReader};
use super::trigger::trigger_flags;
use super::{BackfillBatch, Capture, InstallError, OpenError, Opened, Source, Wiring};
use crate::config::{Config, Mode, TableConfig};
use crate::postgres::event_log::{partition_sql, WAKE_SQL};
use crate::postgres::{catalog, Postgres};

/// The durable plug-in.
pub struct Durable;

#[async_trait::async_trait]
impl Capture for Durable {
    fn mode(&self) -> Mode {
        Mode::Durable
    }

    fn name(&self) -> &'static str {
        "durable"
    }

    fn used(&self, config: &Config) -> bool {
        config.uses_mode(Mode::Durable)
    }

    /// The daemon reads the event log for wal mode's dead letters too.
    fn runs_source(&self, config: &Config) -> bool {
        config.reads_event_log()
    }

    fn trigger_function(&self) -> Option<&'static str> {
        Some("capture")
    }

    fn backfill_flags(&self, table: &TableConfig) -> String {
        trigger_flags(table, Op::Read)
    }

    /// The row key and partition as skor.capture() computes them, so a
    /// row's READ and its changes are delivered in one order; the ids
    /// taken in key order (volatile, so after the sort), and given to the
    /// payload for its `event_id`.
    fn backfill_send_sql(&self, batch: &BackfillBatch<'_>) -> String {
        format!(
            "INSERT INTO skor.event_log (id, channel, schema_name, table_name, op, row_key, part, payload)\n    \
             SELECT k.id, {channel}, {schema}, {table}, 'READ', k.row_key,\n           \
             {part}, {payload}\n      \
             FROM (SELECT b.skor_row, b.skor_record, {row_key} AS row_key,\n                   \
             pg_catalog.nextval('skor.event_log_id_seq'::pg_catalog.regclass) AS id\n              \
             FROM batch b ORDER BY {order}) k\n    \
             RETURNING 1",
            channel = batch.channel,
            schema = batch.schema,
            table = batch.table,
            part = partition_sql("k.row_key", batch.schema, batch.table),
            payload = (batch.payload)("k", "k.id"),
            row_key = batch.row_key,
            order = batch.order,
        )
    }

    /// Wakes the daemons, as the triggers do.
    fn backfill_after_batch_sql(&self) -> Option<&'static str> {
        Some(WAKE_SQL)
    }

    async fn open_source(&self, wiring: &Wiring<'_>) -> Result<Box<dyn Source>, OpenError> {
        let stats =
            wiring.stats.durable.as_ref().ok_or_else(|| {
                OpenError("durable mode: its counters were not registered".into())
            })?;
        let durable = source::Durable::new(
            wiring.pg.clone(),
            wiring.config,
            wiring.fanout.clone(),
            Arc::clone(stats),
        );
        let session = durable.open().await.map_err(|e| OpenError(e.to_string()))?;
        Ok(Box::new(Opened::new(durable, session)))
    }

    /// Fails when a table's statement trigger misses rows now.
    async fn report(
        &self,
        client: &tokio_postgres::Client,
        config: &Config,
    ) -> Result<Option<String>, InstallError> {
        if !self.used(config) {
            return Ok(None);
        }
        let stale: Vec<String> = client
            .query(catalog::STALE_STATEMENT_TRIGGERS, &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if stale.is_empty() {
            return Ok(None);
        }
        Err(InstallError::Schema(catalog::stale_statement_triggers(
            &stale,
        )))
    }

    async fn open_tail(
        &self,
        pg: &Postgres,
        config: &Config,
    ) -> Result<Box<dyn TailReader>, TailError> {
        Ok(Box::new(tail::DurableTail::open(pg, config).await?))
    }
}
