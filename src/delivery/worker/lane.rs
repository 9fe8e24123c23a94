//! One lane of a sink's worker: takes events from its queue in order,
//! batches them when the sink allows, keeps a window of a pipelined sink's
//! deliveries awaiting confirmation (a lane-based sink's request has its
//! answer when it returns), and settles each one: counted, retried, or
//! given up on and logged.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use skor_sink_api::{
    confirmed, Batching, Concurrency, Confirmation, ErrorKind, Event, Sink, SinkError,
};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Job, Outcome};
use crate::delivery::retry::RetryPolicy;
use crate::observe::stats::SinkStats;

/// Events delivered together, in queue order.
type Batch = Vec<Job>;

/// A submitted batch, its broker's answer, and the sink's count of
/// deliveries when it was handed over (see [`Deliverer::deliveries`]).
type Pending = Pin<Box<dyn Future<Output = (Batch, Result<(), SinkError>, u64)> + Send>>;

/// What every lane of one sink shares: the sink and how to treat it.
pub(super) struct Deliverer {
    pub(super) name: Arc<str>,
    pub(super) sink: Box<dyn Sink>,
    pub(super) policy: RetryPolicy,
    pub(super) stats: Arc<SinkStats>,
    /// Where durable events' outcomes go, with this sink's index.
    /// This sink's index, in the outcomes it reports.
    pub(super) index: usize,
    /// Deliveries of one lane that may await their confirmation at once.
    pub(super) window: usize,
    pub(super) batching: Batching,
    /// Lanes make one request at a time each and have its answer when it
    /// returns: they settle it there, without a confirmation to await.
    pub(super) concurrency: Concurrency,
    /// When the sink lost its broker, while it is without one: shared so
    /// that an outage is logged once, not once per lane.
    pub(super) disconnected_since: Mutex<Option<Instant>>,
    /// Batches delivered so far, by every lane. A batch that lost its
    /// connection after a later one was delivered failed on a connection
    /// the sink has replaced: it is retried at once, not after an outage
    /// wait, so the window of a pipelined sink that lost its broker drains
    /// at the pace of the broker's answers once it is back.
    pub(super) deliveries: AtomicU64,
}

impl Deliverer {
    /// Delivers what `rx` holds, in order, until it is closed and every
    /// delivery is settled, or `deadline` fires. Returns how many events
    /// were left undelivered.
    pub(super) async fn lane(
        &self,
        mut rx: mpsc::Receiver<Job>,
        deadline: &CancellationToken,
    ) -> u64 {
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut in_flight_events = 0;
        let mut open = true;
        let mut left = loop {
            if !open && in_flight.is_empty() {
                break 0;
            }
            let room = open && in_flight.len() < self.window;
            // A failed batch is retried before anything else moves, so an
            // outage holds the lane instead of racing through it.
            let (batch, result, handed_over) = tokio::select! {
                biased;
                () = deadline.cancelled() => break in_flight_events,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    in_flight_events -= done.0.len();
                    done
                }
                job = rx.recv(), if room => {
                    let Some(job) = job else {
                        open = false;
                        continue;
                    };
                    let mut batch = vec![job];
                    if self.batching.max_events > 1 {
                        open = self.fill(&mut rx, &mut batch).await;
                    }
                    self.stats.taken(batch.len());
                    let handed_over = self.deliveries.load(Ordering::Relaxed);
                    if self.concurrency == Concurrency::Lanes {
                        let sent = tokio::select! {
                            biased;
                            () = deadline.cancelled() => break batch.len() + in_flight_events,
                            sent = self.send_when_due(&mut batch) => sent,
                        };
                        match sent {
                            None => continue,
                            Some(result) => (batch, result, handed_over),
                        }
                    } else {
                        let submitted = tokio::select! {
                            biased;
                            () = deadline.cancelled() => break batch.len() + in_flight_events,
                            submitted = self.submit_when_due(&mut batch) => submitted,
                        };
                        match submitted {
                            None => continue,
                            Some(Ok(confirmation)) => {
                                in_flight_events += batch.len();
                                in_flight.push_back(Box::pin(async move {
                                    (batch, confirmation.await, handed_over)
                                }));
                                continue;
                            }
                            Some(Err(error)) => (batch, Err(error), handed_over),
                        }
                    }
                }
            };
            let mut batch = batch;
            tokio::select! {
                biased;
                () = deadline.cancelled() => break batch.len() + in_flight_events,
                () = self.settle(&mut batch, result, handed_over) => {}
            }
        } as u64;
        rx.close();
        while rx.try_recv().is_ok() {
            left += 1;
        }
        left
    }

    /// Adds queued events to `batch` up to the sink's limit, waiting at most
    /// its linger for more. False once the queue is closed and empty.
    async fn fill(&self, rx: &mut mpsc::Receiver<Job>, batch: &mut Batch) -> bool {
        let max = self.batching.max_events;
        let until = Instant::now() + self.batching.linger;
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) if self.batching.linger.is_zero() => break,
                Err(TryRecvError::Empty) => {
                    let wanted = max - batch.len();
                    match tokio::time::timeout_at(until, rx.recv_many(batch, wanted)).await {
                        Err(_) => break,
                        Ok(0) => return false,
                        Ok(_) => {}
                    }
                }
            }
        }
        true
    }

    /// Submits `batch` once it is due (see `due`); `None` if every job was
    /// fenced off.
    async fn submit_when_due(&self, batch: &mut Batch) -> Option<Result<Confirmation, SinkError>> {
        if !self.due(batch).await {
            return None;
        }
        self.within_leases(batch, self.submit(batch)).await
    }

    /// Sends `batch` once it is due (see `due`) and returns the sink's
    /// answer; `None` if every job was fenced off.
    async fn send_when_due(&self, batch: &mut Batch) -> Option<Result<(), SinkError>> {
        if !self.due(batch).await {
            return None;
        }
        self.within_leases(batch, self.send(batch)).await
    }

    /// Waits out the retry delay a durable event still had when it was
    /// claimed, then drops what was fenced off meanwhile. False if nothing
    /// is left to send.
    async fn due(&self, batch: &mut Batch) -> bool {
        if let Some(at) = batch.iter().filter_map(|j| j.resume.map(|r| r.at)).max() {
            tokio::time::sleep_until(at).await;
        }
        self.drop_fenced(batch)
    }

    /// `within_fences`, counted and logged when a lease cut it short.
    async fn within_leases<T>(&self, batch: &Batch, attempt: impl Future<Output = T>) -> Option<T> {
        let out = within_fences(batch, attempt).await;
        if out.is_none() {
            self.cancelled_by_fence(batch);
        }
        out
    }

    /// Counts and says that an attempt was cut short because the leases of
    /// its events ran out while it was under way.
    fn cancelled_by_fence(&self, batch: &Batch) {
        self.stats.untaken(batch.len());
        warn!(sink = %self.name, events = batch.len(),
              "cancelled an attempt under way when its partition lease ran out: \
               the partition's next owner delivers these events");
    }

    /// Drops the jobs whose durable session lost its partition lease:
    /// another daemon owns their events now, and an attempt from here could
    /// overtake its deliveries. False if nothing is left to send.
    fn drop_fenced(&self, batch: &mut Batch) -> bool {
        let before = batch.len();
        batch.retain(|job| !job.is_fenced());
        let dropped = before - batch.len();
        if dropped > 0 {
            self.stats.untaken(dropped);
            debug!(sink = %self.name, events = dropped,
                   "dropped unsent events of a partition lease this daemon lost");
        }
        !batch.is_empty()
    }

    /// Hands `batch` over; a pipelined sink's answer may still be to come.
    async fn submit(&self, batch: &Batch) -> Result<Confirmation, SinkError> {
        if let Some(job) = self.single(batch) {
            return self.sink.submit(&job.event).await;
        }
        self.send(batch).await?;
        Ok(confirmed())
    }

    /// Delivers `batch` and returns the sink's answer.
    async fn send(&self, batch: &Batch) -> Result<(), SinkError> {
        if let Some(job) = self.single(batch) {
            return self.sink.send(&job.event).await;
        }
        let events: Vec<Arc<Event>> = batch.iter().map(|j| Arc::clone(&j.event)).collect();
        self.sink.send_batch(&events).await
    }

    /// One attempt at `batch`, to its answer.
    async fn attempt(&self, batch: &Batch) -> Result<(), SinkError> {
        match self.concurrency {
            Concurrency::Lanes => self.send(batch).await,
            Concurrency::Pipelined => self.submit(batch).await?.await,
        }
    }

    /// The job of a batch of one, for a sink that does not batch: a
    /// batching sink gets a batch even of one, so its receiver always sees
    /// the same shape of body.
    fn single<'a>(&self, batch: &'a Batch) -> Option<&'a Job> {
        match batch.as_slice() {
            [job] if self.batching.max_events <= 1 => Some(job),
            _ => None,
        }
    }

    /// Counts a delivered batch, or retries a failed one as the policy
    /// allows and logs and counts its events if they cannot be delivered.
    /// `handed_over` is [`Self::deliveries`] when the batch was sent.
    async fn settle(&self, batch: &mut Batch, mut result: Result<(), SinkError>, handed_over: u64) {
        let first = Arc::clone(&batch[0].event);
        let resumed = batch
            .iter()
            .filter_map(|j| j.resume.map(|r| r.attempts))
            .max();
        let mut attempt: u32 = 1 + resumed.unwrap_or(0);
        let mut outage: u32 = 0;
        // When this batch first found the sink unreachable: the sink-wide
        // clock restarts whenever another lane delivers, which must not let
        // a batch that only ever fails this way wait forever.
        let mut waiting_since: Option<Instant> = None;
        let mut stale = handed_over < self.deliveries.load(Ordering::Relaxed);
        loop {
            let events = batch.len();
            let mut error = match result {
                Ok(()) => return self.delivered(batch, attempt),
                Err(error) => error,
            };
            if error.kind == ErrorKind::Disconnected && std::mem::take(&mut stale) {
                // Lost with a connection the sink has since replaced (a
                // later batch got through): once, at once.
                debug!(sink = %self.name, events, error = %error,
                       "retrying at once what a replaced connection lost");
                result = match self.within_leases(batch, self.attempt(batch)).await {
                    Some(result) => result,
                    None => return,
                };
                continue;
            }
            let delay = match error.kind {
                ErrorKind::Disconnected => {
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    let down = self.lost_broker(&error).max(since.elapsed());
                    match self.policy.max_outage {
                        // Past the limit, the outage is a failure like any
                        // other: each attempt counts against the retries.
                        Some(max) if down >= max => {
                            error = SinkError::retryable(format!(
                                "unreachable for {} ms, longer than max_outage_ms = {}: {}",
                                down.as_millis(),
                                max.as_millis(),
                                error.message
                            ));
                            self.policy.delay(attempt)
                        }
                        // Wake up when the limit is reached, not after it.
                        Some(max) => {
                            outage += 1;
                            Some(self.policy.reconnect_delay(outage).min(max - down))
                        }
                        None => {
                            outage += 1;
                            Some(self.policy.reconnect_delay(outage))
                        }
                    }
                }
                ErrorKind::Retryable => self.policy.delay(attempt),
                ErrorKind::Permanent => None,
            };
            let Some(delay) = delay else {
                return self.give_up(batch, attempt, &error);
            };
            // Waiting out an outage spends no retry: it has a counter of its
            // own, so `retried` keeps meaning attempts the sink failed.
            if error.kind == ErrorKind::Disconnected {
                self.stats.outage_waits.add(events as u64);
            } else {
                self.stats.retried.add(events as u64);
                warn!(sink = %self.name, schema = %first.schema, table = %first.table,
                      op = %first.op, events, attempt, retry_in_ms = delay.as_millis() as u64,
                      error = %error, "delivery failed, retrying");
                self.stats.errors.record(
                    format_args!("sink {}", self.name),
                    format_args!("delivery failed, retrying: {error}"),
                );
                for job in batch.iter() {
                    if let (Some(id), Some(acks)) = (job.event.id, &job.ack) {
                        let _ = acks.send(Outcome::Retrying {
                            id,
                            attempts: attempt,
                            delay,
                            error: error.to_string(),
                        });
                    }
                }
                attempt += 1;
            }
            tokio::time::sleep(delay).await;
            if !self.drop_fenced(batch) {
                return;
            }
            let batch: &Batch = batch;
            result = match self.within_leases(batch, self.attempt(batch)).await {
                Some(result) => result,
                None => return,
            };
        }
    }

    /// Counts and logs every event of a batch that will not be delivered;
    /// a durable one becomes a dead letter.
    fn give_up(&self, batch: &Batch, attempts: u32, error: &SinkError) {
        self.stats.failed.add(batch.len() as u64);
        self.stats
            .settled(batch.iter().map(|j| j.queued_at.elapsed()));
        let reason = if error.is_retryable() {
            "retries exhausted"
        } else {
            "permanent error"
        };
        self.stats.errors.record(
            format_args!("sink {}", self.name),
            format_args!(
                "{} event(s) not delivered ({reason}, {attempts} attempt(s)): {error}",
                batch.len()
            ),
        );
        for job in batch {
            let event = &*job.event;
            if let (Some(id), Some(acks)) = (event.id, &job.ack) {
                self.stats.dead_lettered.incr();
                error!(sink = %self.name, id, schema = %event.schema, table = %event.table,
                       op = %event.op, attempts, error = %error, reason,
                       "event not delivered: moved to the dead letters");
                let _ = acks.send(Outcome::Failed {
                    id,
                    sink: self.index,
                    attempts,
                    error: error.to_string(),
                });
                continue;
            }
            error!(sink = %self.name, schema = %event.schema, table = %event.table,
                   op = %event.op, attempts, error = %error, reason,
                   payload = %String::from_utf8_lossy(&event.payload),
                   "event not delivered");
        }
    }

    fn delivered(&self, batch: &Batch, attempt: u32) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.stats.delivered.add(batch.len() as u64);
        self.stats
            .settled(batch.iter().map(|j| j.queued_at.elapsed()));
        for job in batch {
            if let (Some(id), Some(acks)) = (job.event.id, &job.ack) {
                let _ = acks.send(Outcome::Delivered {
                    id,
                    sink: self.index,
                });
            }
        }
        let back = self.disconnected_since.lock().expect("not poisoned").take();
        if let Some(since) = back {
            self.stats.disconnected.set(0);
            info!(sink = %self.name, down_ms = since.elapsed().as_millis() as u64,
                  "sink reachable again, delivering");
        }
        if attempt > 1 {
            let first = &*batch[0].event;
            info!(sink = %self.name, schema = %first.schema, table = %first.table,
                  op = %first.op, events = batch.len(), attempt, "delivered after retrying");
        }
    }

    /// Logs the start of an outage once and returns how long the sink has
    /// been unreachable; events wait in the queue meanwhile.
    fn lost_broker(&self, error: &SinkError) -> Duration {
        let mut since = self.disconnected_since.lock().expect("not poisoned");
        match *since {
            None => {
                *since = Some(Instant::now());
                self.stats.disconnected.set(1);
                warn!(sink = %self.name, error = %error,
                      "sink unreachable; events wait in its queue until it is back");
                self.stats.errors.record(
                    format_args!("sink {}", self.name),
                    format_args!("unreachable, events wait in its queue: {error}"),
                );
                Duration::ZERO
            }
            Some(at) => {
                debug!(sink = %self.name, error = %error, "sink still unreachable");
                at.elapsed()
            }
        }
    }
}

/// Runs `attempt` while the partition leases of `batch`'s durable events
/// hold, and cancels it when one runs out: a request still being sent then
/// could reach the sink after the partition's next owner delivered. `None`
/// when it was cancelled. A pipelined sink's confirmation is only awaited
/// here; what its client library already holds may still go out.
async fn within_fences<T>(batch: &Batch, attempt: impl Future<Output = T>) -> Option<T> {
    let fences: Vec<&super::Fence> = batch.iter().filter_map(|j| j.fence.as_ref()).collect();
    if fences.is_empty() {
        return Some(attempt.await);
    }
    tokio::pin!(attempt);
    loop {
        // Renewals move the deadlines on; look again when the nearest passes.
        let deadline = fences
            .iter()
            .map(|f| f.deadline())
            .min()
            .expect("not empty");
        tokio::select! {
            biased;
            out = &mut attempt => return Some(out),
            () = tokio::time::sleep_until(deadline) => {
                if fences.iter().any(|f| !f.holds()) {
                    return None;
                }
            }
        }
    }
}
