//! Wal mode: no trigger and no extra write in the user's transaction.
//! PostgreSQL decodes its write-ahead log for skor's publication into a
//! logical replication slot (pgoutput); this source streams it, turns each
//! row change into the payload the triggers would have written, hands it
//! to the fan-out, and moves the slot's confirmed position past a
//! transaction once every routed sink confirmed its events (see
//! `progress.rs`). What is not confirmed is streamed again after a crash,
//! a reconnect or a takeover: delivery is at least once, and each event's
//! id (its position in the WAL) is the same every time.
//!
//! The slot admits one reader: a second daemon waits, polling, and takes
//! over when the first lets go. Failed events (a sink gave up) go to the
//! event log's dead letters, so they never hold the slot, and its WAL,
//! back forever.
//!
//! While the captured tables are idle the slot still follows the cluster's
//! WAL: skor confirms up to the server's keepalives, and writes a heartbeat
//! message of its own database now and then. A slot PostgreSQL invalidated
//! (it held more than `max_slot_wal_keep_size`) is said once, fails
//! readiness, and is looked at slowly until `skor install` replaces it.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Schedule;
use crate::capture::reconnect::RECONNECT_FIRST_WAIT;
use crate::capture::Source;
use crate::config::Config;
use crate::delivery::fanout::{Acks, Fanout, Incoming};
use crate::delivery::worker::{Job, Outcome};
use crate::observe::stats::WalStats;
use crate::postgres::event_log::{insert_dead_letter, DeadLetter};
use crate::postgres::{describe, Postgres, Replication, TlsBridge};

use super::catalog;
use super::decode::{Decoder, Step};
use super::progress::Progress;
use super::relations::Rules;

/// How often a standby asks for the slot again.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often dead letters that could not be written are tried again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);
/// How often the publication is compared with what install made of the
/// config: another role's change to it would silently stop events.
const DRIFT_CHECK: Duration = Duration::from_secs(10);
/// A stream that ends sooner than this after it started counts as a
/// failure to start, so the next attempt backs off.
const STABLE_STREAM: Duration = Duration::from_secs(10);
/// The shortest wait between two looks at an invalidated slot (the
/// reconnect backoff's cap otherwise).
const INVALIDATED_RECHECK_MIN: Duration = Duration::from_secs(1);
/// How long a heartbeat may take before it is given up on (the next one
/// tries again); the stream waits meanwhile.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// The prefix of skor's heartbeat messages in the WAL.
const HEARTBEAT_PREFIX: &str = "skor.heartbeat";

/// Why wal mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The catalog connection failed.
    #[error("wal mode: cannot connect to PostgreSQL: {0}")]
    Connect(String),
    /// Something `skor install` sets up is missing or wrong.
    #[error("wal mode: {0}")]
    Setup(String),
}

/// The wal source, connected to the catalog and ready to stream.
pub struct WalSource {
    pg: Postgres,
    slot: String,
    publication: String,
    /// The config's wal-mode tables as install records them, for drift.
    summary: String,
    status_interval: Duration,
    max_backoff: Duration,
    /// After this long without a change, a heartbeat message; `None`: off.
    heartbeat: Option<Duration>,
    /// When the stream last carried something of this database.
    last_change: tokio::time::Instant,
    /// The last heartbeat failed (and said so).
    heartbeat_failing: bool,
    decoder: Decoder,
    fanout: Fanout,
    stats: Arc<WalStats>,
    /// Given to every job; let go at shutdown, so `outcomes` ends once
    /// no job is left.
    acks: Option<Acks>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    progress: Progress,
    /// For column types and dead letters.
    catalog: Option<tokio_postgres::Client>,
    /// Events a sink gave up on, waiting to be written as dead letters:
    /// (event id, sink index, attempts, error).
    dead: Vec<(i64, usize, u32, String)>,
    /// The current transaction was streamed before: its events are skipped.
    skipping: bool,
    /// The current session's TLS bridge, when the DSN asks for TLS.
    bridge: Option<TlsBridge>,
}

impl WalSource {
    /// Checks that the slot and the publication exist and connects to the
    /// catalog; the stream itself starts in `run`.
    pub async fn open(
        pg: Postgres,
        config: &Config,
        fanout: Fanout,
        stats: Arc<WalStats>,
    ) -> Result<Self, WalError> {
        let slot = config.source.slot.clone();
        let publication = config.source.publication.clone();
        let catalog = connect_catalog(&pg).await.map_err(WalError::Connect)?;
        let row = catalog
            .query_one(
                "SELECT current_setting('wal_level'), \
                        (SELECT plugin::text FROM pg_replication_slots \
                          WHERE slot_name = $1 AND database = current_database()), \
                        EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2)",
                &[&slot, &publication],
            )
            .await
            .map_err(|e| WalError::Connect(describe(&e)))?;
        let (level, plugin, published): (String, Option<String>, bool) =
            (row.get(0), row.get(1), row.get(2));
        if level != "logical" {
            return Err(WalError::Setup(format!(
                "wal_level is {level}, wal mode needs logical: {}",
                crate::capture::wal::publication::WAL_LEVEL_HOWTO
            )));
        }
        match plugin.as_deref() {
            None => {
                return Err(WalError::Setup(format!(
                "replication slot \"{slot}\" does not exist in this database: run `skor install`"
            )))
            }
            Some("pgoutput") => {}
            Some(other) => {
                return Err(WalError::Setup(format!(
                    "replication slot \"{slot}\" decodes with {other}, skor needs pgoutput: \
                     drop it or choose another `source.slot`"
                )))
            }
        }
        if !published {
            return Err(WalError::Setup(format!(
                "publication \"{publication}\" does not exist: run `skor install`"
            )));
        }
        crate::capture::wal::publication::check_failover_support(&catalog, config)
            .await
            .map_err(|e| WalError::Setup(e.to_string()))?;
        if let Ok(Some(status)) =
            crate::capture::wal::publication::slot_status(&catalog, &slot).await
        {
            if let Some(drift) = crate::capture::wal::publication::failover_drift(config, &status) {
                error!(%slot, "{drift}");
            }
        }
        let (acks, outcomes) = mpsc::unbounded_channel();
        let summary = crate::capture::wal::publication::config_summary(config);
        let source = Self {
            pg,
            slot,
            publication,
            summary,
            status_interval: Duration::from_millis(config.source.wal_status_interval_ms),
            max_backoff: Duration::from_millis(config.source.reconnect_max_backoff_ms),
            heartbeat: (config.source.wal_heartbeat_interval_ms > 0)
                .then(|| Duration::from_millis(config.source.wal_heartbeat_interval_ms)),
            last_change: tokio::time::Instant::now(),
            heartbeat_failing: false,
            decoder: Decoder::new(Rules::new(config)),
            fanout,
            stats,
            acks: Some(acks),
            outcomes,
            progress: Progress::default(),
            catalog: Some(catalog),
            dead: Vec::new(),
            skipping: false,
            bridge: None,
        };
        source.check_drift().await;
        Ok(source)
    }

    /// Compares the publication with what install made of the config;
    /// logs an error when it starts or stops differing, and keeps the
    /// differences for readiness.
    async fn check_drift(&self) {
        let Some(catalog) = self.catalog.as_ref() else {
            return;
        };
        let problems = match crate::capture::wal::publication::drift(
            catalog,
            &self.publication,
            &self.summary,
        )
        .await
        {
            Ok(problems) => problems,
            // Refused (say the daemon's role may not read
            // skor.created_object): unchecked is not agreed.
            Err(error) if error.as_db_error().is_some() => vec![format!(
                "cannot compare the publication with the config: {}",
                describe(&error)
            )],
            Err(error) => {
                debug!(error = %describe(&error), "cannot compare the publication with the config");
                return;
            }
        };
        let Ok(mut known) = self.stats.drift.lock() else {
            return;
        };
        if *known == problems {
            return;
        }
        if problems.is_empty() {
            info!(publication = %self.publication, "the publication agrees with the config again");
        } else {
            for problem in &problems {
                error!(publication = %self.publication, %problem,
                       "the publication is not what `skor install` made of this config: \
                        changes it leaves out are not delivered");
            }
        }
        *known = problems;
    }

    /// Streams until `shutdown`, reconnecting and standing by as needed.
    async fn serve(mut self, shutdown: CancellationToken) {
        self.fanout.stop_waiting_on(&shutdown);
        let backoff = Schedule::exponential(RECONNECT_FIRST_WAIT, self.max_backoff);
        let mut failures = 0u32;
        let mut standing_by = false;
        let mut streamed_before = false;
        let mut busy_polls = 0u32;
        while !shutdown.is_cancelled() {
            let started = tokio::select! {
                () = shutdown.cancelled() => break,
                started = self.start() => started,
            };
            match started {
                Ok(client) => {
                    if standing_by {
                        info!(slot = %self.slot, "took over the replication slot");
                    } else if streamed_before {
                        info!(slot = %self.slot, "replication stream re-established");
                        self.stats.link.reconnects.incr();
                    } else {
                        info!(slot = %self.slot, publication = %self.publication,
                              "wal mode: streaming from the replication slot");
                    }
                    standing_by = false;
                    streamed_before = true;
                    busy_polls = 0;
                    self.stats.standby.set(0);
                    self.stats.link.set(true);
                    let began = tokio::time::Instant::now();
                    let ended = self.stream(client, &shutdown).await;
                    if began.elapsed() >= STABLE_STREAM {
                        failures = 0;
                    }
                    self.progress.abandon_open();
                    self.decoder.forget_tables();
                    match ended {
                        Ok(client) => {
                            self.finish(Some(client)).await;
                            return;
                        }
                        // A stream that ended as soon as it began (the
                        // server refuses what it streams, say a
                        // publication it cannot find) is retried with
                        // backoff, as a failed start is.
                        Err(error) => {
                            let quick = began.elapsed() < STABLE_STREAM;
                            if quick {
                                if let Ok(Some(reason)) = self.invalidated().await {
                                    self.stand_still(&reason, &error, &shutdown).await;
                                    failures = 0;
                                    continue;
                                }
                            }
                            let delay = if quick {
                                failures = failures.saturating_add(1);
                                backoff.delay(failures - 1)
                            } else {
                                Duration::ZERO
                            };
                            warn!(%error, slot = %self.slot, retry_in_ms = delay.as_millis() as u64,
                                  "replication stream lost; reconnecting, unconfirmed changes come again");
                            self.stats
                                .link
                                .failed(format_args!("replication stream lost: {error}"));
                            if quick {
                                self.check_drift().await;
                                self.wait(delay, &shutdown).await;
                            }
                        }
                    }
                }
                Err(error) if slot_in_use(&error) => {
                    self.stats.link.set(false);
                    // Right after a lost stream, the server may not have
                    // noticed yet that our old session is gone: only a slot
                    // busy for a few polls is another reader's.
                    busy_polls += 1;
                    if !standing_by && (!streamed_before || busy_polls > 5) {
                        info!(slot = %self.slot,
                              "the replication slot is in use by another reader: standing by to take over");
                        standing_by = true;
                        self.stats.standby.set(1);
                    }
                    self.wait(STANDBY_POLL, &shutdown).await;
                }
                Err(error) => {
                    self.stats
                        .link
                        .failed(format_args!("cannot start the replication stream: {error}"));
                    if let Ok(Some(reason)) = self.invalidated().await {
                        self.stand_still(&reason, &error.to_string(), &shutdown)
                            .await;
                        failures = 0;
                        continue;
                    }
                    let delay = backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    warn!(%error, slot = %self.slot, retry_in_ms = delay.as_millis() as u64,
                          "cannot start the replication stream");
                    self.wait(delay, &shutdown).await;
                }
            }
        }
        self.finish(None).await;
    }

    /// Why PostgreSQL invalidated the slot, if it did: asked of the
    /// catalog, whatever words the server's error used. `Err` when the
    /// catalog cannot tell now.
    async fn invalidated(&mut self) -> Result<Option<String>, ()> {
        let slot = self.slot.clone();
        let catalog = self.catalog().await.ok_or(())?;
        match crate::capture::wal::publication::slot_status(catalog, &slot).await {
            Ok(status) => Ok(status.and_then(|s| s.invalidated())),
            Err(error) => {
                debug!(error = %describe(&error), "cannot read the replication slot's status");
                Err(())
            }
        }
    }

    /// How often an invalidated slot is looked at again, in the catalog
    /// only: it stays unusable until an operator replaces it, so no
    /// replication session is opened meanwhile.
    fn invalidated_recheck(&self) -> Duration {
        self.max_backoff.max(INVALIDATED_RECHECK_MIN)
    }

    /// Says once that the slot is invalidated and what to do, fails
    /// readiness, and waits for an operator to replace it.
    async fn stand_still(&mut self, reason: &str, error: &str, shutdown: &CancellationToken) {
        error!(slot = %self.slot, %reason, %error,
               "PostgreSQL invalidated the replication slot: skor cannot stream from it any more; {}; \
                skor looks again every {} s",
               crate::capture::wal::publication::invalidated_howto(&self.slot),
               self.invalidated_recheck().as_secs_f64());
        self.stats.invalidated.set(1);
        self.wait_while_invalidated(shutdown).await;
    }

    /// Waits, looking at the catalog every [`Self::invalidated_recheck`], until
    /// the slot is no longer the invalidated one (`skor install` replaced
    /// it) or shutdown.
    async fn wait_while_invalidated(&mut self, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            self.wait(self.invalidated_recheck(), shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
            if let Ok(None) = self.invalidated().await {
                info!(slot = %self.slot,
                      "the replication slot is no longer the invalidated one: streaming again; changes \
                       from before the new slot was made are not streamed, `skor backfill` sends current rows");
                self.stats.invalidated.set(0);
                return;
            }
        }
    }

    /// After `heartbeat` without a change from the stream, writes a
    /// logical decoding message in the captured database: its WAL reaches
    /// the slot's decoder, whose keepalives then let skor confirm past the
    /// WAL other databases wrote meanwhile. Not transactional, so it
    /// reaches the stream at once, as a message no sink is handed.
    async fn beat(&mut self) {
        let Some(every) = self.heartbeat else { return };
        if self.last_change.elapsed() < every {
            return;
        }
        self.last_change = tokio::time::Instant::now();
        let confirmed = Lsn::from_u64(self.progress.confirmed()).to_string();
        let Some(catalog) = self.catalog().await else {
            return;
        };
        // Only when the cluster wrote WAL past what skor confirmed: an idle
        // cluster gets no WAL from skor (which would wake its checkpoints
        // and archiving for nothing).
        let emitted = tokio::time::timeout(
            HEARTBEAT_TIMEOUT,
            catalog.query_opt(
                "SELECT pg_catalog.pg_logical_emit_message(false, $1, '')::pg_catalog.text \
                  WHERE pg_catalog.pg_current_wal_lsn() \
                        OPERATOR(pg_catalog.>) $2::pg_catalog.text::pg_catalog.pg_lsn",
                &[&HEARTBEAT_PREFIX, &confirmed],
            ),
        )
        .await;
        match emitted {
            Ok(Ok(row)) => {
                if self.heartbeat_failing {
                    info!("wal mode: heartbeat messages are written again");
                    self.heartbeat_failing = false;
                }
                if let Some(row) = row {
                    let lsn: String = row.get(0);
                    self.stats.heartbeats.incr();
                    debug!(slot = %self.slot, %lsn, %confirmed,
                           "wal mode: idle while the cluster writes WAL, wrote a heartbeat message");
                }
            }
            Ok(Err(error)) if !self.heartbeat_failing => {
                self.heartbeat_failing = true;
                warn!(error = %describe(&error),
                      "wal mode: cannot write the heartbeat message (said once until it works again); \
                       the slot still moves with the server's keepalives; see wal_heartbeat_interval_ms");
            }
            Ok(Err(error)) => debug!(error = %describe(&error), "wal mode: heartbeat failed"),
            Err(_) => debug!("wal mode: the heartbeat message timed out"),
        }
    }

    /// Waits `delay` while settling what the sinks report.
    async fn wait(&mut self, delay: Duration, shutdown: &CancellationToken) {
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return,
                () = shutdown.cancelled() => return,
                Some(outcome) = self.outcomes.recv() => self.on_outcome(outcome),
            }
            self.write_dead_letters().await;
        }
    }

    /// Opens a replication session and waits until the server accepted it.
    async fn start(&mut self) -> Result<ReplicationClient, PgWireError> {
        let Replication { config, bridge } = self
            .pg
            .replication(&self.slot, &self.publication, self.status_interval)
            .map_err(PgWireError::Tls)?;
        // The previous session's bridge goes; this one lives as long as it.
        self.bridge = bridge;
        let settings = config.with_ack_lsn(Lsn::from_u64(self.progress.confirmed()));
        let mut client = ReplicationClient::connect(settings).await?;
        client.wait_started().await?;
        Ok(client)
    }

    /// Handles the stream until shutdown, which hands the session back
    /// for the last confirmation, or until it is lost.
    async fn stream(
        &mut self,
        mut client: ReplicationClient,
        shutdown: &CancellationToken,
    ) -> Result<ReplicationClient, String> {
        let mut retry = tokio::time::interval(DEAD_LETTER_RETRY);
        let mut drift = tokio::time::interval(DRIFT_CHECK);
        drift.tick().await;
        // Checked a few times per interval, so a beat is at most a quarter
        // interval late; never when heartbeats are off.
        let mut heartbeat =
            tokio::time::interval(self.heartbeat.map_or(Duration::from_secs(3600), |every| {
                (every / 4).max(Duration::from_millis(25))
            }));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        self.last_change = tokio::time::Instant::now();
        let mut confirmed = self.progress.confirmed();
        client.update_applied_lsn(Lsn::from_u64(confirmed));
        let result = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                Some(outcome) = self.outcomes.recv() => self.on_outcome(outcome),
                event = client.recv() => match event {
                    Ok(Some(event)) => {
                        if let Err(error) = self.on_event(event).await {
                            break Err(error);
                        }
                    }
                    Ok(None) => break Err("the server ended the stream".to_string()),
                    Err(error) => break Err(error.to_string()),
                },
                _ = retry.tick() => self.write_dead_letters().await,
                _ = drift.tick() => {
                    let _ = self.catalog().await;
                    self.check_drift().await;
                }
                _ = heartbeat.tick() => self.beat().await,
            }
            if let Some(lsn) = self.progress.take_moved() {
                if lsn > confirmed {
                    confirmed = lsn;
                    client.update_applied_lsn(Lsn::from_u64(lsn));
                    self.stats.confirmed(lsn);
                }
            }
        };
        match result {
            Ok(()) => Ok(client),
            Err(error) => {
                self.stats.link.set(false);
                client.abort();
                Err(error)
            }
        }
    }

    /// One message of the stream.
    async fn on_event(&mut self, event: ReplicationEvent) -> Result<(), String> {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.last_change = tokio::time::Instant::now();
                self.skipping = !self.progress.begin(final_lsn.as_u64());
                self.decoder
                    .begin(final_lsn.as_u64(), xid, commit_time_micros);
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if !self.skipping {
                    self.progress.commit(end_lsn.as_u64());
                    self.stats.transactions.incr();
                }
                self.skipping = false;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => self.progress.idle(wal_end.as_u64()),
            // skor's own heartbeats, and messages other programs write:
            // never events. Outside a transaction, nothing before it is
            // left to stream.
            ReplicationEvent::Message {
                transactional: false,
                lsn,
                ..
            } => {
                self.last_change = tokio::time::Instant::now();
                self.progress.idle(lsn.as_u64());
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let step = self
                    .decoder
                    .xlog(wal_start.as_u64(), &data, self.skipping)?;
                self.on_step(step).await;
            }
            ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    async fn on_step(&mut self, step: Step) {
        match step {
            Step::Relation(relation) => {
                // Reconnects a lost catalog connection first.
                let _ = self.catalog().await;
                let (table, healthy) =
                    catalog::prepare(self.catalog.as_ref(), &relation, self.decoder.rules()).await;
                if !healthy {
                    self.catalog = None;
                }
                self.decoder.describe(relation.id, table);
            }
            Step::Truncate(names) => {
                self.stats.truncates.incr();
                warn!(tables = ?names,
                      "TRUNCATE is not captured (as with triggers): no event is sent for the rows it removed");
            }
            Step::Event(event) => {
                let incoming = Incoming {
                    channel: &event.channel,
                    schema: event.schema,
                    table: event.table,
                    op: event.op,
                    payload: event.payload,
                    key: event.key,
                    id: Some(event.id),
                    commit: Some(event.commit),
                };
                self.dispatch(incoming).await;
            }
            Step::Nothing => {}
        }
    }

    /// Routes an event and queues it for its sinks, remembering it until
    /// they confirm it.
    async fn dispatch(&mut self, incoming: Incoming<'_>) {
        let Some(event) = self.fanout.route(incoming) else {
            return;
        };
        self.progress
            .event(Arc::clone(&event), self.fanout.targets().len());
        let Some(acks) = &self.acks else { return };
        for &index in self.fanout.targets() {
            let job = Job::new(self.fanout.event_for(index, &event), None).acked(acks.clone());
            if !self.fanout.send(index, job).await {
                // Shutting down: the event stays unconfirmed and comes again.
                return;
            }
        }
    }

    /// The catalog connection, reconnected when it was lost.
    async fn catalog(&mut self) -> Option<&tokio_postgres::Client> {
        if self.catalog.as_ref().is_none_or(|c| c.is_closed()) {
            match connect_catalog(&self.pg).await {
                Ok(client) => self.catalog = Some(client),
                Err(error) => {
                    debug!(%error, "cannot reach the catalog");
                    self.catalog = None;
                }
            }
        }
        self.catalog.as_ref()
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Delivered { id, .. } => self.progress.settle(id),
            Outcome::Retrying { .. } => {}
            Outcome::Failed {
                id,
                sink,
                attempts,
                error,
            } => self.dead.push((id, sink, attempts, error)),
        }
    }

    /// Writes the events sinks gave up on to the dead letters; each one
    /// written settles its sink, one that cannot be written yet keeps the
    /// slot where it is.
    async fn write_dead_letters(&mut self) {
        if self.dead.is_empty() {
            return;
        }
        let names = self.fanout.sink_names().to_vec();
        let dead = std::mem::take(&mut self.dead);
        let mut left = Vec::new();
        for (id, sink, attempts, error) in dead {
            let Some(event) = self.progress.unsettled(id).map(|u| Arc::clone(&u.event)) else {
                continue;
            };
            let Some(catalog) = self.catalog().await else {
                left.push((id, sink, attempts, error));
                continue;
            };
            let done: Vec<&str> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != sink)
                .map(|(_, n)| n.as_str())
                .collect();
            let letter = DeadLetter {
                channel: &event.channel,
                schema: &event.schema,
                table: &event.table,
                op: event.op.as_str(),
                key: event
                    .key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: String::from_utf8_lossy(&event.payload).into_owned(),
                attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                error: &error,
                done_sinks: done,
            };
            let written = insert_dead_letter(catalog, &letter).await;
            match written {
                Ok(_) => {
                    self.stats.dead_lettered.incr();
                    warn!(id, sink = %names[sink], attempts, %error,
                          "wal mode: the sink gave up on an event; it waits in the dead letters \
                           (skor dead-letters list)");
                    self.progress.settle(id);
                }
                Err(db_error) => {
                    error!(id, sink = %names[sink], error = %describe(&db_error),
                           "cannot write a dead letter; the slot stays behind this event until it is written");
                    left.push((id, sink, attempts, error));
                }
            }
        }
        self.dead.extend(left);
    }

    /// After shutdown: lets go of the sink queues, settles what the sinks
    /// report while they drain, and confirms as far as that allows.
    async fn finish(&mut self, client: Option<ReplicationClient>) {
        self.fanout.close();
        self.acks = None;
        while let Some(outcome) = self.outcomes.recv().await {
            self.on_outcome(outcome);
        }
        self.write_dead_letters().await;
        let _ = self.progress.take_moved();
        let confirmed = self.progress.confirmed();
        if let Some(mut client) = client {
            client.update_applied_lsn(Lsn::from_u64(confirmed));
            self.stats.confirmed(confirmed);
            if let Err(error) = client.shutdown().await {
                debug!(%error, "replication stream closed");
            }
        }
        self.stats.link.set(false);
        info!(slot = %self.slot, confirmed = %Lsn::from_u64(confirmed),
              unconfirmed_events = self.progress.outstanding(),
              "wal mode stopped; unconfirmed changes are streamed again on the next start");
    }
}

#[async_trait::async_trait]
impl Source for WalSource {
    fn name(&self) -> &'static str {
        "wal"
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) {
        (*self).serve(shutdown).await;
    }
}

/// Whether START_REPLICATION failed because another session holds the slot.
fn slot_in_use(error: &PgWireError) -> bool {
    matches!(error, PgWireError::Server(message) if message.contains("55006"))
}

async fn connect_catalog(pg: &Postgres) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = pg
        .named("skor wal catalog")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}
