//! Durable mode: events come from `skor.event_log`, where the trigger wrote
//! them in the changing transaction. Each daemon session leases some of the
//! 64 key partitions, claims their oldest events in id order, hands them to
//! the same sink queues as notify mode, and deletes each event once every
//! sink it was routed to confirmed it.
//!
//! Leases (`skor.partition_lease`, only skor's owner can write it): a
//! session takes a partition nobody holds or whose lease expired by the
//! database's clock, renews its leases every `lease_ttl_ms / 5`, and gives
//! surplus partitions back (holder NULL) once their events are finished, so
//! the live daemons (`skor.daemon`) hold a fair share each.
//!
//! Fencing: a session stops delivering a partition once it cannot prove it
//! still holds its lease: locally, at the start of its last successful
//! renewal plus TTL minus TTL/5, earlier than the database lets another
//! session take it (that renewal's server time plus TTL). Each queued job
//! carries its partition's [`Fence`]; lanes drop a job whose fence no longer
//! holds instead of starting an attempt. A lost connection revokes every
//! fence of its session at once: the next session starts with new leases.
//!
//! Per-sink window: each sink may have at most `claim_window` events handed to
//! it and not yet answered. An event is handed to each routed sink that has
//! room and has no older event waiting for it (its order); a sink without
//! room is skipped ("deferred") and the event stays pending for it. When
//! the sinks it was handed to have answered, an event with deferred sinks
//! is released from memory and its confirmations are written to
//! `done_sinks`, together with the sinks it is not routed to: claims leave
//! out events whose `done_sinks` hold every sink with room, so an event
//! waiting only for full sinks is not claimed again for the others, and a
//! sink that is down holds back nothing beyond its own window.
//!
//! Memory: claimed events hold at most `max_claim_bytes` of payload (a
//! claim takes at least one event, so a larger row still moves).
//!
//! Rows that are not events skor can parse, and events no route matches,
//! become dead letters with the reason; they never stall their partition
//! and are never deleted unseen.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use skor_sink_api::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Schedule;
use crate::capture::reconnect::{reconnect, RECONNECT_FIRST_WAIT, STABLE_SESSION};
use crate::capture::Sessions;
use crate::config::{Config, DurableConfig};
use crate::delivery::fanout::{Acks, Fanout, Incoming};
use crate::delivery::worker::{Fence, Job, Outcome, Resume};
use crate::observe::stats::DurableStats;
use crate::postgres::event_log::{Store, StoreError, PARTITIONS};
use crate::postgres::{catalog, PgError, Postgres};

/// How often partition ownership is rebalanced among the daemons.
const REBALANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Finished events deleted in one statement at most...
const FLUSH_BATCH: usize = 256;
/// ...or after they waited this long for more.
const FLUSH_LINGER: Duration = Duration::from_millis(10);
/// Delivered events removed per statement once their retention is over...
const CLEAN_BATCH: i64 = 5_000;
/// ...and statements per rebalance tick at most, while they come back full.
const CLEAN_ROUNDS: usize = 20;
/// A statement that keeps failing is retried at most this often.
const STATEMENT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Why durable mode could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the event log: {0}")]
pub struct DurableError(#[from] StoreError);

/// An event claimed and not yet finished.
#[derive(Debug)]
struct Tracked {
    part: i16,
    /// Payload bytes it holds.
    bytes: u64,
    /// Sinks it was routed to.
    routed: Vec<usize>,
    /// Sinks it was handed to that have not answered yet.
    waiting: Vec<usize>,
    /// Routed sinks it was not handed to (no room, or an older event waits
    /// for them): it stays pending for them.
    deferred: Vec<usize>,
    /// Sinks that need nothing more of it: confirmed now or before, or (from
    /// an earlier claim) not routed to it.
    done: Vec<String>,
    /// The attempts and error of a sink that gave up on it.
    failed: Option<(u32, String)>,
}

/// A partition this session leases.
#[derive(Debug)]
struct Lease {
    /// Until when this daemon may deliver its events.
    fence: Fence,
    valid_until: Instant,
    /// Given up: released once its events are finished.
    releasing: bool,
}

/// Claims events from the log and finishes them as sinks confirm.
pub struct Durable {
    pg: Postgres,
    config: DurableConfig,
    max_backoff: Duration,
    fanout: Fanout,
    sink_names: Vec<String>,
    /// Given to every job, so the workers report what became of it; let go
    /// at shutdown, so `outcomes` ends once no job is left.
    acks: Option<Acks>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    stats: Arc<DurableStats>,
    tracked: HashMap<i64, Tracked>,
    /// Per sink: events handed to it and not answered.
    owed: Vec<usize>,
    /// Per sink: tracked events deferred for it, whose order it must keep.
    deferring: Vec<BTreeSet<i64>>,
    /// Payload bytes of the tracked events.
    held_bytes: u64,
    /// Partitions this session leases.
    leases: BTreeMap<i16, Lease>,
    /// Delivered events not yet deleted.
    finished: Vec<i64>,
    /// Events that stay pending for deferred sinks, with the sinks (a JSON
    /// array) to add to their `done_sinks`.
    progress: Vec<(i64, String)>,
    /// Tracked events every sink they were handed to has answered.
    answered: Vec<i64>,
}

/// A durable source, connected and ready to run.
pub struct Session {
    store: Store,
    wake: mpsc::Receiver<()>,
}

impl Durable {
    /// A coordinator that hands events to `fanout` and learns from the
    /// workers what became of each.
    pub fn new(pg: Postgres, config: &Config, fanout: Fanout, stats: Arc<DurableStats>) -> Self {
        let sink_names = fanout.sink_names().to_vec();
        let sinks = sink_names.len();
        let (acks, outcomes) = mpsc::unbounded_channel();
        Self {
            pg,
            config: config.durable.clone(),
            max_backoff: Duration::from_millis(config.source.reconnect_max_backoff_ms),
            fanout,
            sink_names,
            acks: Some(acks),
            outcomes,
            stats,
            tracked: HashMap::new(),
            owed: vec![0; sinks],
            deferring: vec![BTreeSet::new(); sinks],
            held_bytes: 0,
            leases: BTreeMap::new(),
            finished: Vec::new(),
            progress: Vec::new(),
            answered: Vec::new(),
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.lease_ttl_ms)
    }

    /// Until when a lease renewed by a request sent at `sent` is surely
    /// ours: the database counts its TTL from a later moment, and the margin
    /// covers clock drift and the time a lane needs to notice.
    fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.ttl() - self.ttl() / 5
    }

    /// Connects to the event log and reports its backlog.
    pub async fn open(&self) -> Result<Session, DurableError> {
        let (store, wake) = Store::connect(&self.pg, self.ttl()).await?;
        let backlog = store.backlog().await?;
        let stale = store.stale_statement_triggers().await?;
        if !stale.is_empty() {
            error!("{}", catalog::stale_statement_triggers(&stale));
        }
        self.stats.link.set(true);
        info!(
            pending = backlog.pending,
            dead_letters = backlog.dead,
            oldest_pending_s = backlog.oldest_s.round() as u64,
            session = store.session(),
            "durable mode: reading skor.event_log"
        );
        Ok(Session { store, wake })
    }
    /// Opens a new session, backing off between attempts; `quick_losses`
    /// counts the sessions in a row that were lost soon after they opened,
    /// so a session that dies as it starts is not opened again at once.
    async fn reconnect(&self, shutdown: &CancellationToken, quick_losses: u32) -> Option<Session> {
        let (store, wake) = reconnect(
            shutdown,
            quick_losses,
            self.max_backoff,
            "the event log",
            &self.stats.link,
            || Store::connect(&self.pg, self.ttl()),
        )
        .await?;
        self.stats.link.set(true);
        self.stats.link.reconnects.incr();
        info!(session = store.session(), "event log connection back");
        Some(Session { store, wake })
    }

    /// One connection's life: `Ok` once shut down and drained.
    async fn serve(
        &mut self,
        session: &mut Session,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let store = &session.store;
        let mut poll = tokio::time::interval(Duration::from_millis(self.config.poll_interval_ms));
        let mut rebalance = tokio::time::interval(REBALANCE_INTERVAL);
        let mut renew = tokio::time::interval(self.ttl() / 5);
        let backlog_every = Duration::from_millis(self.config.backlog_log_interval_ms.max(1));
        let mut backlog = tokio::time::interval_at(Instant::now() + backlog_every, backlog_every);
        for timer in [&mut poll, &mut rebalance, &mut renew, &mut backlog] {
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        // Look at once: nothing waits for a wake-up that came while away.
        let mut due = true;
        let mut flush_at: Option<Instant> = None;
        loop {
            self.expire_leases();
            let stopping = shutdown.is_cancelled();
            if stopping && !self.fanout.is_closed() {
                // Closing the queues lets the workers finish.
                self.fanout.close();
                self.acks = None;
                info!(
                    unfinished = self.tracked.len(),
                    "durable mode: no more claims, finishing what the sinks hold"
                );
            }
            if stopping && self.tracked.is_empty() {
                self.flush(store).await?;
                store.leave().await?;
                return Ok(());
            }
            // Deletes go in batches: a full one, or what gathered in a
            // moment, so a steady trickle is not one round trip per event.
            let gathered = self.finished.len() + self.progress.len();
            if gathered >= FLUSH_BATCH || flush_at.is_some_and(|at| at <= Instant::now()) {
                self.flush(store).await?;
            }
            flush_at = match flush_at {
                _ if self.finished.is_empty() && self.progress.is_empty() => None,
                None => Some(Instant::now() + FLUSH_LINGER),
                at => at,
            };
            self.release_idle(store).await?;
            if due && !stopping && self.wants_claim() {
                // Claims leave out events by their done sinks: those must
                // be written first.
                self.flush(store).await?;
                flush_at = None;
                due = self.claim(store).await?;
            }
            let next_expiry = self.leases.values().map(|l| l.valid_until).min();
            // Not biased: a sink retrying fast sends a stream of outcomes
            // that must not starve the lease renewal.
            tokio::select! {
                outcome = self.outcomes.recv() => {
                    let Some(outcome) = outcome else {
                        // Every worker stopped: what is left stays pending.
                        self.flush(store).await?;
                        store.leave().await?;
                        return Ok(());
                    };
                    let mut retrying = HashMap::new();
                    self.record(outcome, &mut retrying, &mut due);
                    while let Ok(outcome) = self.outcomes.try_recv() {
                        self.record(outcome, &mut retrying, &mut due);
                    }
                    self.settle(store).await?;
                    if !retrying.is_empty() {
                        store.retrying(retrying).await?;
                    }
                }
                () = shutdown.cancelled(), if !stopping => {}
                wake = session.wake.recv() => {
                    if wake.is_none() {
                        return Err(StoreError::Lost(PgError::Closed));
                    }
                    due = true;
                }
                _ = renew.tick() => self.renew(store).await?,
                () = sleep_until_some(next_expiry) => {}
                _ = poll.tick() => due = true,
                _ = rebalance.tick(), if !stopping => {
                    if self.rebalance(store).await? {
                        due = true;
                    }
                    if self.config.retention_ms > 0 {
                        self.clean(store).await?;
                    }
                }
                _ = backlog.tick() => self.log_backlog(store).await?,
                () = sleep_until_some(flush_at) => {}
            }
        }
    }

    /// Whether a claim is worth making: some sink has half its window free
    /// and half the byte budget is free (or nothing is held).
    fn wants_claim(&self) -> bool {
        let half = self.config.claim_window / 2;
        let bytes_free =
            self.tracked.is_empty() || self.held_bytes <= self.config.max_claim_bytes / 2;
        bytes_free && self.owed.iter().any(|&owed| owed <= half)
    }

    /// Claims events up to the free window and byte budget; true if there
    /// may be more.
    async fn claim(&mut self, store: &Store) -> Result<bool, StoreError> {
        let window = self.config.claim_window;
        let open: Vec<String> = self
            .sink_names
            .iter()
            .zip(&self.owed)
            .filter(|(_, &owed)| owed < window)
            .map(|(name, _)| name.clone())
            .collect();
        let room = self
            .owed
            .iter()
            .map(|&owed| window.saturating_sub(owed))
            .max()
            .unwrap_or(0);
        let parts: Vec<i16> = self
            .leases
            .iter()
            .filter(|(_, lease)| !lease.releasing)
            .map(|(&part, _)| part)
            .collect();
        if room == 0 || parts.is_empty() {
            return Ok(false);
        }
        let budget = self.config.max_claim_bytes.saturating_sub(self.held_bytes);
        if budget == 0 && !self.tracked.is_empty() {
            return Ok(false);
        }
        let claimed: Vec<i64> = self.tracked.keys().copied().collect();
        let budget = i64::try_from(budget).unwrap_or(i64::MAX);
        let rows = store
            .claim(&parts, &claimed, &open, room as i64, budget)
            .await?;
        let mut bytes = 0;
        let full = rows.len() == room;
        for row in rows {
            self.stats.claimed.incr();
            match row {
                Ok((event, size)) => {
                    bytes += size.max(0) as u64;
                    self.dispatch(store, event, size.max(0) as u64).await?;
                }
                Err(bad) => {
                    self.stats.unparseable.incr();
                    self.stats.dead_lettered.incr();
                    warn!(id = bad.id, part = bad.part, reason = %bad.reason,
                          "row of skor.event_log is not an event: moved to the dead letters");
                    store.dead(bad.id, 0, &bad.reason, &[]).await?;
                }
            }
        }
        self.stats
            .peak_claimed_bytes
            .fetch_max(self.held_bytes, Ordering::Relaxed);
        debug!(
            claimed_bytes = bytes,
            held_bytes = self.held_bytes,
            "claimed events"
        );
        // Held back by the byte budget: more may wait, claimed once the
        // sinks have freed half of it.
        Ok(full || self.held_bytes.saturating_mul(2) >= self.config.max_claim_bytes)
    }

    async fn dispatch(
        &mut self,
        store: &Store,
        claimed: crate::postgres::event_log::Claimed,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let crate::postgres::event_log::Claimed {
            id,
            channel,
            schema,
            table,
            op,
            key,
            part,
            payload,
            attempts,
            due_in_ms,
            done_sinks,
        } = claimed;
        let payload = match &self.config.id_field {
            Some(field) => with_id_field(&payload, field, id),
            None => payload,
        };
        let incoming = Incoming {
            channel: &channel,
            schema,
            table,
            op,
            payload: Bytes::from(payload),
            key: key.map(Bytes::from),
            id: Some(id),
            commit: None,
        };
        let Some(event) = self.fanout.route(incoming) else {
            if self.fanout.filtered() {
                // Turned away by a route's filter, as configured: done.
                self.finished.push(id);
                return Ok(());
            }
            // A route may be missing by mistake (a partition's name, a
            // typo): the event waits for `skor dead-letters replay`.
            self.stats.dead_lettered.incr();
            warn!(id, %channel, "no route matches this durable event: moved to the dead letters");
            let attempts = u32::try_from(attempts).unwrap_or(0);
            return store.dead(id, attempts, "no route", &[]).await;
        };
        let routed = self.fanout.targets().to_vec();
        let mut waiting = Vec::new();
        let mut deferred = Vec::new();
        for &sink in &routed {
            if done_sinks.contains(&self.sink_names[sink]) {
                continue;
            }
            let older_waits = self.deferring[sink]
                .first()
                .is_some_and(|&older| older < id);
            if self.owed[sink] < self.config.claim_window && !older_waits {
                waiting.push(sink);
            } else {
                deferred.push(sink);
            }
        }
        if waiting.is_empty() && deferred.is_empty() {
            // Every routed sink has it already (a replayed dead letter).
            self.finished.push(id);
            return Ok(());
        }
        if waiting.is_empty() {
            self.park(id, &routed, done_sinks);
            return Ok(());
        }
        let (Some(fence), Some(acks)) = (
            self.leases.get(&part).map(|l| l.fence.clone()),
            self.acks.clone(),
        ) else {
            return Ok(());
        };
        let resume = (attempts > 0).then(|| Resume {
            attempts: attempts as u32,
            at: Instant::now() + Duration::from_millis(due_in_ms.max(0) as u64),
        });
        for &sink in &deferred {
            self.deferring[sink].insert(id);
        }
        for &sink in &waiting {
            self.owed[sink] += 1;
        }
        self.held_bytes += bytes;
        self.tracked.insert(
            id,
            Tracked {
                part,
                bytes,
                routed,
                waiting: waiting.clone(),
                deferred,
                done: done_sinks,
                failed: None,
            },
        );
        for sink in waiting {
            let job = Job::new(self.fanout.event_for(sink, &event), resume)
                .fenced(fence.clone())
                .acked(acks.clone());
            if !self.fanout.send(sink, job).await {
                // The worker is gone (shutdown deadline): the event stays
                // pending and is delivered by the next run.
                self.untrack(id);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Leaves an event pending for its deferred sinks, marking the others
    /// done so claims for them pass it by.
    fn park(&mut self, id: i64, routed: &[usize], mut done: Vec<String>) {
        for (index, name) in self.sink_names.iter().enumerate() {
            if !routed.contains(&index) && !done.contains(name) {
                done.push(name.clone());
            }
        }
        let done = serde_json::to_string(&done).expect("strings serialise");
        self.progress.push((id, done));
    }

    /// Forgets a tracked event and what it held.
    fn untrack(&mut self, id: i64) -> Option<Tracked> {
        let tracked = self.tracked.remove(&id)?;
        for &sink in &tracked.waiting {
            self.owed[sink] -= 1;
        }
        for &sink in &tracked.deferred {
            self.deferring[sink].remove(&id);
        }
        self.held_bytes -= tracked.bytes;
        Some(tracked)
    }

    /// Applies what a sink did with an event: failed attempts gather in
    /// `retrying` (the latest per event), to be written in one statement;
    /// `due` is set when the sink's window has room for a claim again.
    fn record(
        &mut self,
        outcome: Outcome,
        retrying: &mut HashMap<i64, (u32, Duration, String)>,
        due: &mut bool,
    ) {
        let (id, sink, failed) = match outcome {
            Outcome::Retrying {
                id,
                attempts,
                delay,
                error,
            } => {
                retrying.insert(id, (attempts, delay, error));
                return;
            }
            Outcome::Delivered { id, sink } => (id, sink, None),
            Outcome::Failed {
                id,
                sink,
                attempts,
                error,
            } => (id, sink, Some((attempts, error))),
        };
        let name = &self.sink_names[sink];
        let Some(tracked) = self.tracked.get_mut(&id) else {
            debug!(id, sink = %name, "outcome of an event no longer tracked");
            return;
        };
        let Some(at) = tracked.waiting.iter().position(|&s| s == sink) else {
            debug!(id, sink = %name, "outcome of an event this sink no longer owes");
            return;
        };
        tracked.waiting.swap_remove(at);
        self.owed[sink] -= 1;
        if self.owed[sink] == self.config.claim_window / 2 {
            *due = true;
        }
        match failed {
            None => tracked.done.push(name.clone()),
            Some((attempts, error)) => {
                tracked.failed = Some((attempts, format!("sink {name}: {error}")));
            }
        }
        if tracked.waiting.is_empty() {
            self.answered.push(id);
        }
    }

    /// Settles the events every sink they were handed to has answered:
    /// finished, left pending for deferred sinks, or dead-lettered.
    async fn settle(&mut self, store: &Store) -> Result<(), StoreError> {
        // One at a time: after a failed statement the others still wait.
        while let Some(id) = self.answered.pop() {
            let Some(tracked) = self.untrack(id) else {
                continue;
            };
            match tracked.failed {
                Some((attempts, error)) => {
                    self.stats.dead_lettered.incr();
                    // Only the routed sinks that confirmed: a replay after a
                    // route was added must reach the new sinks.
                    let confirmed: Vec<String> = tracked
                        .routed
                        .iter()
                        .map(|&s| self.sink_names[s].clone())
                        .filter(|name| tracked.done.contains(name))
                        .collect();
                    store.dead(id, attempts, &error, &confirmed).await?;
                }
                None if !tracked.deferred.is_empty() => {
                    self.park(id, &tracked.routed, tracked.done);
                }
                None => self.finished.push(id),
            }
        }
        Ok(())
    }

    /// Deletes (or marks) the events every sink confirmed, and records the
    /// confirmations of events that wait for other sinks.
    async fn flush(&mut self, store: &Store) -> Result<(), StoreError> {
        if !self.progress.is_empty() {
            let (ids, done): (Vec<i64>, Vec<String>) = self.progress.iter().cloned().unzip();
            store.progress(&ids, &done).await?;
            self.progress.clear();
        }
        if self.finished.is_empty() {
            return Ok(());
        }
        store
            .finish(&self.finished, self.config.retention_ms > 0)
            .await?;
        self.stats.finished.add(self.finished.len() as u64);
        self.finished.clear();
        Ok(())
    }

    /// Renews this session's leases; those the database no longer gives
    /// are lost.
    async fn renew(&mut self, store: &Store) -> Result<(), StoreError> {
        let sent = Instant::now();
        let renewed = store.renew().await?;
        let until = self.valid_until(sent);
        let lost: Vec<i16> = self
            .leases
            .keys()
            .copied()
            .filter(|part| !renewed.contains(part))
            .collect();
        if !lost.is_empty() {
            self.lose(&lost, "the lease expired before it was renewed");
        }
        for part in renewed {
            let lease = self.leases.entry(part).or_insert_with(|| Lease {
                // Still ours by the database's clock after a local expiry:
                // a new fence, the old one's jobs are gone.
                fence: Fence::until(until),
                valid_until: until,
                releasing: false,
            });
            lease.fence.extend(until);
            lease.valid_until = until;
        }
        Ok(())
    }

    /// Fences off the partitions whose lease this daemon can no longer
    /// prove it holds.
    fn expire_leases(&mut self) {
        let now = Instant::now();
        let expired: Vec<i16> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.valid_until <= now)
            .map(|(&part, _)| part)
            .collect();
        if !expired.is_empty() {
            self.lose(&expired, "no renewal came back in time");
        }
    }

    /// Gives up `parts`: revokes their fences, so the lanes drop their
    /// unsent jobs, and forgets their unfinished events, which stay pending
    /// for the next holder.
    fn lose(&mut self, parts: &[i16], reason: &str) {
        let mut lost = Vec::new();
        for part in parts {
            if let Some(lease) = self.leases.remove(part) {
                lease.fence.revoke();
                lost.push(*part);
            }
        }
        if lost.is_empty() {
            return;
        }
        let dropped: Vec<i64> = self
            .tracked
            .iter()
            .filter(|(_, t)| lost.contains(&t.part))
            .map(|(&id, _)| id)
            .collect();
        for &id in &dropped {
            self.untrack(id);
        }
        warn!(partitions = ?lost, unfinished = dropped.len(), reason,
              "lost partition leases: stopped delivering their events, which stay pending \
               for the next holder");
    }

    /// Takes or gives up partitions so each daemon leases its share; true
    /// if it took some.
    async fn rebalance(&mut self, store: &Store) -> Result<bool, StoreError> {
        let members = store.members().await?.max(1);
        let share = (i64::from(PARTITIONS) + members - 1) / members;
        let owned = self.leases.values().filter(|l| !l.releasing).count() as i64;
        if owned < share {
            // Start from a place of our own so daemons do not all race for
            // the same partitions.
            let start = store
                .session()
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
                % PARTITIONS as u32;
            let candidates: Vec<i16> = (0..PARTITIONS)
                .map(|i| (start as i16 + i) % PARTITIONS)
                .filter(|p| !self.leases.contains_key(p))
                .collect();
            let sent = Instant::now();
            let got = store.take(&candidates, share - owned).await?;
            if !got.is_empty() {
                let until = self.valid_until(sent);
                for part in got {
                    self.leases.insert(
                        part,
                        Lease {
                            fence: Fence::until(until),
                            valid_until: until,
                            releasing: false,
                        },
                    );
                }
                info!(
                    owned = self.leases.len(),
                    daemons = members,
                    "leased key partitions"
                );
                return Ok(true);
            }
        } else if owned > share {
            let surplus = (owned - share) as usize;
            let given: Vec<i16> = self
                .leases
                .iter()
                .filter(|(_, l)| !l.releasing)
                .map(|(&p, _)| p)
                .rev()
                .take(surplus)
                .collect();
            for part in given {
                if let Some(lease) = self.leases.get_mut(&part) {
                    lease.releasing = true;
                }
            }
            info!(
                owned = owned as usize - surplus,
                daemons = members,
                "giving key partitions to other daemons once their events are finished"
            );
        }
        Ok(false)
    }

    /// Releases given-up partitions that have no unfinished event left, so
    /// their next holder starts after this daemon's last event of each key.
    async fn release_idle(&mut self, store: &Store) -> Result<(), StoreError> {
        if !self.leases.values().any(|l| l.releasing) {
            return Ok(());
        }
        let busy: BTreeSet<i16> = self.tracked.values().map(|t| t.part).collect();
        let idle: Vec<i16> = self
            .leases
            .iter()
            .filter(|(p, l)| l.releasing && !busy.contains(p))
            .map(|(&p, _)| p)
            .collect();
        if !idle.is_empty() {
            // Delivered events must be gone before the next holder looks.
            self.flush(store).await?;
        }
        for part in idle {
            store.release(part).await?;
            if let Some(lease) = self.leases.remove(&part) {
                lease.fence.revoke();
            }
        }
        Ok(())
    }

    /// Removes delivered events past their retention: batch after batch
    /// while they come back full, so removal keeps up with the write rate,
    /// but boundedly per tick so claims go on meanwhile.
    async fn clean(&mut self, store: &Store) -> Result<(), StoreError> {
        let retention = Duration::from_millis(self.config.retention_ms);
        let mut removed = 0;
        for _ in 0..CLEAN_ROUNDS {
            let batch = store.clean(retention, CLEAN_BATCH).await?;
            removed += batch;
            if batch < CLEAN_BATCH as u64 {
                break;
            }
        }
        if removed > 0 {
            debug!(removed, "removed delivered events past their retention");
        }
        Ok(())
    }

    async fn log_backlog(&mut self, store: &Store) -> Result<(), StoreError> {
        let backlog = store.backlog().await?;
        if backlog.pending > 0 || backlog.dead > 0 {
            info!(
                pending = backlog.pending,
                dead_letters = backlog.dead,
                oldest_pending_s = backlog.oldest_s.round() as u64,
                owned_partitions = self.leases.len(),
                "durable backlog"
            );
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sessions for Durable {
    type Session = Session;
    const NAME: &'static str = "durable";

    /// Delivers events until `shutdown`, retrying failed statements on the
    /// same connection and reconnecting when it is lost; then waits for the
    /// sinks to answer for the events already handed to them, and finishes
    /// those.
    async fn run(mut self, mut session: Session, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut quick_losses: u32 = 0;
        loop {
            let started = Instant::now();
            let error = match self.serve(&mut session, &shutdown).await {
                Ok(()) => return,
                Err(error) => error,
            };
            match error {
                StoreError::Statement(_) | StoreError::NotInstalled => {
                    self.stats.statement_errors.incr();
                    if started.elapsed() > STATEMENT_RETRY_MAX {
                        failures = 0;
                    }
                    failures += 1;
                    let delay = Schedule::exponential(RECONNECT_FIRST_WAIT, STATEMENT_RETRY_MAX)
                        .delay(failures);
                    warn!(%error, failures, retry_in_ms = delay.as_millis() as u64,
                          "a statement on the event log failed; retrying on the same connection");
                    tokio::select! {
                        () = shutdown.cancelled(), if self.tracked.is_empty() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                StoreError::Lost(error) => {
                    self.stats
                        .link
                        .failed(format_args!("connection lost: {error}"));
                    let held: Vec<i16> = self.leases.keys().copied().collect();
                    self.lose(&held, "the event log connection was lost");
                    warn!(%error, "lost the event log connection, reconnecting; a new session \
                          takes partitions once their leases expire");
                    let quick = started.elapsed() < STABLE_SESSION;
                    quick_losses = if quick {
                        quick_losses.saturating_add(1)
                    } else {
                        0
                    };
                    match self.reconnect(&shutdown, quick_losses).await {
                        Some(next) => session = next,
                        None => {
                            info!(
                                "stopped reconnecting: unfinished events stay pending in the log"
                            );
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `payload` with `"field" : id` added first, in json_build_object's style.
fn with_id_field(payload: &str, field: &str, id: i64) -> String {
    let name = serde_json::to_string(field).expect("a string serialises");
    match payload.strip_prefix('{') {
        Some(rest) => format!("{{{name} : {id}, {rest}"),
        None => payload.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_field_goes_first() {
        assert_eq!(
            with_id_field(r#"{"table" : "t", "data" : {}}"#, "event_id", 42),
            r#"{"event_id" : 42, "table" : "t", "data" : {}}"#
        );
    }
}
