//! Notify mode: a trigger NOTIFYs each change in the writing transaction;
//! the daemon LISTENs. Nothing is kept: a change committed while no daemon
//! listens is not delivered.

pub mod oversized;
pub mod shed;
pub mod source;
pub mod tail;

use std::sync::Arc;

use skor_sink_api::Op;

use super::tail::{TailError, TailReader};
use super::trigger::trigger_flags;
use super::{BackfillBatch, Capture, OpenError, Opened, Source, Wiring};
use crate::config::{Config, Mode, TableConfig};
use crate::postgres::Postgres;

/// The notify plug-in.
pub struct Notify;

#[async_trait::async_trait]
impl Capture for Notify {
    fn mode(&self) -> Mode {
        Mode::Notify
    }

    fn name(&self) -> &'static str {
        "notify"
    }

    fn used(&self, config: &Config) -> bool {
        !config.notify_channels().is_empty()
    }

    fn trigger_function(&self) -> Option<&'static str> {
        Some("notify")
    }

    fn backfill_flags(&self, table: &TableConfig) -> String {
        trigger_flags(table, Op::Read)
    }

    fn backfill_send_sql(&self, batch: &BackfillBatch<'_>) -> String {
        format!(
            "SELECT skor.notify_payload({}, {}) FROM batch b ORDER BY {}",
            batch.channel,
            (batch.payload)("b", "NULL"),
            batch.order
        )
    }

    fn backfill_warning(&self) -> Option<&'static str> {
        Some("notify mode: the rows reach the sinks only if skor is running and listening now")
    }

    async fn open_source(&self, wiring: &Wiring<'_>) -> Result<Box<dyn Source>, OpenError> {
        let listener = source::Listener::new(
            wiring.pg.clone(),
            wiring.config,
            wiring.fanout.clone(),
            Arc::clone(&wiring.stats.source),
        );
        let session = listener
            .open()
            .await
            .map_err(|e| OpenError(format!("cannot listen to PostgreSQL: {e}")))?;
        Ok(Box::new(Opened::new(listener, session)))
    }

    async fn open_tail(
        &self,
        pg: &Postgres,
        config: &Config,
    ) -> Result<Box<dyn TailReader>, TailError> {
        Ok(Box::new(
            tail::NotifyTail::open(pg, &config.notify_channels()).await?,
        ))
    }
}
