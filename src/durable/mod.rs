//! Durable mode: events come from `skor.event_log`, where the trigger wrote
//! them in the changing transaction. This daemon owns some of the 64 key
//! partitions (advisory locks shared out among the daemons on the database),
//! claims their oldest events in id order, hands them to the same sink
//! queues as notify mode, and deletes each event once every sink it was
//! routed to confirmed it.

mod store;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use skor_sink_api::{Bytes, Event};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, DurableConfig};
use crate::metrics::ReceivedCounter;
use crate::postgres::Postgres;
use crate::router::Router;
use crate::stats::DurableStats;
use crate::worker::{Job, Outcome, Resume, SinkQueue};

pub use store::{backlog, Backlog, Store, PARTITIONS, WAKE_CHANNEL};

/// How often partition ownership is rebalanced among the daemons.
const REBALANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Finished events deleted in one statement at most...
const FLUSH_BATCH: usize = 256;
/// ...or after they waited this long for more.
const FLUSH_LINGER: Duration = Duration::from_millis(10);
/// Delivered events removed per statement once their retention is over.
const CLEAN_BATCH: i64 = 1_000;

/// Why durable mode could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the event log: {0}")]
pub struct DurableError(String);

/// An event claimed and not yet finished.
#[derive(Debug)]
struct Tracked {
    part: i16,
    /// Sinks that have not answered yet.
    remaining: usize,
    /// Sinks that confirmed it, now or before a replay.
    done: Vec<String>,
    /// The attempts and error of a sink that gave up on it.
    failed: Option<(u32, String)>,
}

/// Claims events from the log and finishes them as sinks confirm.
pub struct Durable {
    pg: Postgres,
    config: DurableConfig,
    max_backoff: Duration,
    router: Router,
    sink_names: Vec<String>,
    queues: Vec<SinkQueue>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    channels: Vec<Arc<str>>,
    stats: Arc<DurableStats>,
    received: ReceivedCounter,
    tracked: HashMap<i64, Tracked>,
    /// Partitions this daemon claims from.
    owned: BTreeSet<i16>,
    /// Partitions given up: locked until their events are finished.
    releasing: BTreeSet<i16>,
    /// Delivered events not yet deleted.
    finished: Vec<i64>,
    targets: Vec<usize>,
}

/// A durable source, connected and ready to run.
pub struct Session {
    store: Store,
    wake: mpsc::Receiver<()>,
}

impl Durable {
    /// A coordinator for the sinks named `sink_names`, behind `queues`;
    /// `outcomes` receives what their workers did with each event.
    pub fn new(
        pg: Postgres,
        config: &Config,
        sink_names: Vec<String>,
        queues: Vec<SinkQueue>,
        outcomes: mpsc::UnboundedReceiver<Outcome>,
        stats: Arc<DurableStats>,
        received: ReceivedCounter,
    ) -> Self {
        Self {
            pg,
            config: config.durable.clone(),
            max_backoff: Duration::from_millis(config.source.reconnect_max_backoff_ms),
            router: Router::new(config, &sink_names),
            sink_names,
            queues,
            outcomes,
            channels: config
                .source
                .channels
                .iter()
                .map(|c| Arc::from(c.as_str()))
                .collect(),
            stats,
            received,
            tracked: HashMap::new(),
            owned: BTreeSet::new(),
            releasing: BTreeSet::new(),
            finished: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<DurableStats> {
        Arc::clone(&self.stats)
    }

    /// Connects to the event log and reports its backlog.
    pub async fn open(&self) -> Result<Session, DurableError> {
        let (store, wake) = Store::connect(&self.pg).await.map_err(DurableError)?;
        let backlog = store.backlog().await.map_err(DurableError)?;
        self.stats.link.set(true);
        info!(
            pending = backlog.pending,
            dead_letters = backlog.dead,
            oldest_pending_s = backlog.oldest_s.round() as u64,
            "durable mode: reading skor.event_log"
        );
        Ok(Session { store, wake })
    }

    /// Delivers events until `shutdown`, reconnecting when the connection
    /// is lost; then waits for the sinks to answer for the events already
    /// handed to them, and finishes those.
    pub async fn run(mut self, mut session: Session, shutdown: CancellationToken) {
        loop {
            let Err(reason) = self.serve(&mut session, &shutdown).await else {
                return;
            };
            self.stats.link.set(false);
            warn!(error = %reason, "lost the event log connection, reconnecting; \
                  events already handed to sinks are finished once it is back");
            // Our locks went with the connection.
            self.owned.clear();
            self.releasing.clear();
            match self.reconnect(&shutdown).await {
                Some(next) => session = next,
                None => {
                    info!(
                        unfinished = self.tracked.len(),
                        "stopped reconnecting: unfinished events stay pending in the log"
                    );
                    return;
                }
            }
        }
    }

    async fn reconnect(&self, shutdown: &CancellationToken) -> Option<Session> {
        let mut delay = Duration::from_millis(100);
        for attempt in 1u64.. {
            let opened = tokio::select! {
                () = shutdown.cancelled(), if self.tracked.is_empty() => return None,
                opened = Store::connect(&self.pg) => opened,
            };
            match opened {
                Ok((store, wake)) => {
                    self.stats.link.set(true);
                    self.stats.link.reconnects.incr();
                    info!("event log connection back");
                    return Some(Session { store, wake });
                }
                Err(e) => warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %e,
                                "cannot reconnect to the event log yet"),
            }
            tokio::select! {
                () = shutdown.cancelled(), if self.tracked.is_empty() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.max_backoff);
        }
        None
    }

    /// One connection's life: `Ok` once shut down and drained.
    async fn serve(
        &mut self,
        session: &mut Session,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let store = &session.store;
        let mut poll = tokio::time::interval(Duration::from_millis(self.config.poll_interval_ms));
        let mut rebalance = tokio::time::interval(REBALANCE_INTERVAL);
        let backlog_every = Duration::from_millis(self.config.backlog_log_interval_ms.max(1));
        let mut backlog = tokio::time::interval_at(Instant::now() + backlog_every, backlog_every);
        for timer in [&mut poll, &mut rebalance, &mut backlog] {
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        // Look at once: nothing waits for a wake-up that came while away.
        let mut due = true;
        let mut flush_at: Option<Instant> = None;
        loop {
            let stopping = shutdown.is_cancelled();
            if stopping && !self.queues.is_empty() {
                // Closing the queues lets the workers finish.
                self.queues.clear();
                info!(
                    unfinished = self.tracked.len(),
                    "durable mode: no more claims, finishing what the sinks hold"
                );
            }
            if stopping && self.tracked.is_empty() {
                self.flush(store).await?;
                return Ok(());
            }
            // Deletes go in batches: a full one, or what gathered in a
            // moment, so a steady trickle is not one round trip per event.
            if self.finished.len() >= FLUSH_BATCH || flush_at.is_some_and(|at| at <= Instant::now())
            {
                self.flush(store).await?;
            }
            flush_at = match flush_at {
                _ if self.finished.is_empty() => None,
                None => Some(Instant::now() + FLUSH_LINGER),
                at => at,
            };
            self.release_idle(store).await?;
            // Claims go in batches too: once half the window is free.
            if due && !stopping && self.tracked.len() <= self.config.batch_size / 2 {
                self.flush(store).await?;
                flush_at = None;
                due = self.claim(store).await?;
            }
            tokio::select! {
                biased;
                outcome = self.outcomes.recv() => {
                    let Some(outcome) = outcome else {
                        // Every worker stopped: what is left stays pending.
                        self.flush(store).await?;
                        return Ok(());
                    };
                    self.record(store, outcome).await?;
                    while let Ok(outcome) = self.outcomes.try_recv() {
                        self.record(store, outcome).await?;
                    }
                }
                () = shutdown.cancelled(), if !stopping => {}
                wake = session.wake.recv() => {
                    if wake.is_none() {
                        return Err("the server closed the connection".into());
                    }
                    due = true;
                }
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

    /// Claims events up to the batch size; true if there may be more.
    async fn claim(&mut self, store: &Store) -> Result<bool, String> {
        // Finished events count until deleted: together they bound what a
        // crash can deliver twice.
        let room = self
            .config
            .batch_size
            .saturating_sub(self.tracked.len() + self.finished.len());
        if room == 0 || self.owned.is_empty() {
            return Ok(room == 0 && !self.owned.is_empty());
        }
        let parts: Vec<i16> = self.owned.iter().copied().collect();
        let claimed: Vec<i64> = self.tracked.keys().copied().collect();
        let events = store.claim(&parts, &claimed, room as i64).await?;
        let full = events.len() == room;
        for claimed in events {
            self.stats.claimed.incr();
            self.dispatch(claimed).await;
        }
        Ok(full)
    }

    async fn dispatch(&mut self, claimed: store::Claimed) {
        let store::Claimed {
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
        let channel = self
            .channels
            .iter()
            .find(|c| ***c == *channel)
            .cloned()
            .unwrap_or_else(|| Arc::from(channel.as_str()));
        self.received.count(&channel, &schema, &table, op);
        self.router
            .targets(&channel, &schema, &table, op, &mut self.targets);
        let names = &self.sink_names;
        self.targets
            .retain(|&index| !done_sinks.contains(&names[index]));
        if self.targets.is_empty() {
            debug!(id, %channel, schema, table, %op, "no route matches this event");
            self.stats.unrouted.incr();
            self.finished.push(id);
            return;
        }
        let payload = match &self.config.id_field {
            Some(field) => with_id_field(&payload, field, id),
            None => payload,
        };
        let event = Arc::new(Event {
            channel,
            schema,
            table,
            op,
            payload: Bytes::from(payload),
            key: key.map(Bytes::from),
            id: Some(id),
            seq: id as u64,
        });
        let resume = (attempts > 0).then(|| Resume {
            attempts: attempts as u32,
            at: Instant::now() + Duration::from_millis(due_in_ms.max(0) as u64),
        });
        self.tracked.insert(
            id,
            Tracked {
                part,
                remaining: self.targets.len(),
                done: done_sinks,
                failed: None,
            },
        );
        for &index in &self.targets {
            let job = Job::new(Arc::clone(&event), resume);
            if !self.queues[index].send(job).await {
                // The worker is gone (shutdown deadline): the event stays
                // pending and is delivered by the next run.
                self.tracked.remove(&id);
                return;
            }
        }
    }

    async fn record(&mut self, store: &Store, outcome: Outcome) -> Result<(), String> {
        let (id, sink) = match outcome {
            Outcome::Retrying {
                id,
                attempts,
                delay,
                error,
            } => return store.retrying(id, attempts, delay, &error).await,
            Outcome::Delivered { id, sink } => {
                if let Some(tracked) = self.tracked.get_mut(&id) {
                    tracked.done.push(self.sink_names[sink].clone());
                }
                (id, sink)
            }
            Outcome::Failed {
                id,
                sink,
                attempts,
                error,
            } => {
                if let Some(tracked) = self.tracked.get_mut(&id) {
                    let error = format!("sink {}: {error}", self.sink_names[sink]);
                    tracked.failed = Some((attempts, error));
                }
                (id, sink)
            }
        };
        let Some(tracked) = self.tracked.get_mut(&id) else {
            debug!(id, sink, "outcome of an event no longer tracked");
            return Ok(());
        };
        tracked.remaining -= 1;
        if tracked.remaining > 0 {
            return Ok(());
        }
        let tracked = self.tracked.remove(&id).expect("present");
        match tracked.failed {
            None => self.finished.push(id),
            Some((attempts, error)) => {
                self.stats.dead_lettered.incr();
                store.dead(id, attempts, &error, &tracked.done).await?;
            }
        }
        Ok(())
    }

    /// Deletes (or marks) the events every sink confirmed.
    async fn flush(&mut self, store: &Store) -> Result<(), String> {
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

    /// Takes or gives up partitions so each daemon owns its share; true if
    /// it took some.
    async fn rebalance(&mut self, store: &Store) -> Result<bool, String> {
        let members = store.members().await?.max(1);
        let share = (i64::from(PARTITIONS) + members - 1) / members;
        let owned = self.owned.len() as i64;
        if owned < share {
            // Start from a place of our own so daemons do not all race for
            // the same partitions.
            let start = (store.member().rem_euclid(i32::from(PARTITIONS))) as i16;
            let candidates: Vec<i16> = (0..PARTITIONS)
                .map(|i| (start + i) % PARTITIONS)
                .filter(|p| !self.owned.contains(p) && !self.releasing.contains(p))
                .collect();
            let got = store.lock_partitions(&candidates, share - owned).await?;
            if !got.is_empty() {
                self.owned.extend(got);
                info!(
                    owned = self.owned.len(),
                    daemons = members,
                    "took key partitions"
                );
                return Ok(true);
            }
        } else if owned > share {
            let surplus = (owned - share) as usize;
            let given: Vec<i16> = self.owned.iter().rev().take(surplus).copied().collect();
            for part in given {
                self.owned.remove(&part);
                self.releasing.insert(part);
            }
            info!(
                owned = self.owned.len(),
                daemons = members,
                "giving key partitions to other daemons once their events are finished"
            );
        }
        Ok(false)
    }

    /// Unlocks given-up partitions that have no unfinished event left, so
    /// their next owner starts after this daemon's last event of each key.
    async fn release_idle(&mut self, store: &Store) -> Result<(), String> {
        if self.releasing.is_empty() {
            return Ok(());
        }
        let busy: BTreeSet<i16> = self.tracked.values().map(|t| t.part).collect();
        let idle: Vec<i16> = self.releasing.difference(&busy).copied().collect();
        if !idle.is_empty() {
            // Delivered events must be gone before the next owner looks.
            self.flush(store).await?;
        }
        for part in idle {
            store.unlock_partition(part).await?;
            self.releasing.remove(&part);
        }
        Ok(())
    }

    async fn clean(&mut self, store: &Store) -> Result<(), String> {
        let retention = Duration::from_millis(self.config.retention_ms);
        let removed = store.clean(retention, CLEAN_BATCH).await?;
        if removed > 0 {
            debug!(removed, "removed delivered events past their retention");
        }
        Ok(())
    }

    async fn log_backlog(&mut self, store: &Store) -> Result<(), String> {
        let backlog = store.backlog().await?;
        if backlog.pending > 0 || backlog.dead > 0 {
            info!(
                pending = backlog.pending,
                dead_letters = backlog.dead,
                oldest_pending_s = backlog.oldest_s.round() as u64,
                owned_partitions = self.owned.len(),
                "durable backlog"
            );
        }
        Ok(())
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
