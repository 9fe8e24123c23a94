//! One worker per sink: a bounded queue in front of it, then one or more
//! lanes that deliver in commit order. A row key always takes the same
//! lane, so a key's events never overtake each other.

mod lane;
mod queue;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skor_sink_api::{Concurrency, Event, Sink};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::delivery::retry::RetryPolicy;
use crate::observe::stats::SinkStats;
use lane::Deliverer;
pub use queue::SinkQueue;

/// Events a lane may hold beyond what it is delivering, in batches.
const LANE_BATCHES: usize = 2;

/// An event queued for one sink.
#[derive(Clone, Debug)]
pub struct Job {
    /// The event, shared by every sink it goes to.
    pub event: Arc<Event>,
    /// Attempts a durable event already used, from the event log.
    pub resume: Option<Resume>,
    /// When the event entered this sink's queue, for the latency metric.
    pub queued_at: Instant,
    /// A durable event's fence: lanes drop the job instead of starting an
    /// attempt once it no longer holds, since another daemon may be
    /// delivering the same event by then.
    pub fence: Option<Fence>,
    /// Where to report what became of the event, for a source that must
    /// know when its sinks confirmed it.
    pub ack: Option<Acks>,
}

impl Job {
    /// A job for `event`, queued now.
    pub fn new(event: Arc<Event>, resume: Option<Resume>) -> Self {
        Self {
            event,
            resume,
            queued_at: Instant::now(),
            fence: None,
            ack: None,
        }
    }

    /// This job, its outcome reported to `acks`.
    pub fn acked(self, acks: Acks) -> Self {
        Self {
            ack: Some(acks),
            ..self
        }
    }

    /// This job, dropped unsent once `fence` no longer holds.
    pub fn fenced(self, fence: Fence) -> Self {
        Self {
            fence: Some(fence),
            ..self
        }
    }

    /// Whether the job must not be attempted any more.
    pub fn is_fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(|fence| !fence.holds())
    }
}

/// Whether a durable daemon may still start attempts for the events of one
/// partition: until the local deadline of its lease, which each renewal
/// moves on, and never again once revoked. The lanes read the clock
/// themselves, so a coordinator stuck on a statement cannot keep them going
/// past the lease.
#[derive(Clone, Debug)]
pub struct Fence(Arc<FenceState>);

#[derive(Debug)]
struct FenceState {
    base: Instant,
    /// The deadline, in milliseconds after `base`.
    until_ms: AtomicU64,
    revoked: AtomicBool,
}

impl Fence {
    /// A fence that holds until `at`.
    pub fn until(at: Instant) -> Self {
        let base = Instant::now();
        let fence = Self(Arc::new(FenceState {
            base,
            until_ms: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        }));
        fence.extend(at);
        fence
    }

    /// Moves the deadline to `at` (a renewal).
    pub fn extend(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.0.base).as_millis() as u64;
        self.0.until_ms.store(ms, Ordering::Release);
    }

    /// Ends it for good: the lease is lost.
    pub fn revoke(&self) {
        self.0.revoked.store(true, Ordering::Release);
    }

    /// When attempts must have stopped: the deadline, or at once when
    /// revoked.
    pub fn deadline(&self) -> Instant {
        if self.0.revoked.load(Ordering::Acquire) {
            return self.0.base;
        }
        self.0.base + Duration::from_millis(self.0.until_ms.load(Ordering::Acquire))
    }

    /// Whether attempts may still start.
    pub fn holds(&self) -> bool {
        !self.0.revoked.load(Ordering::Acquire)
            && (self.0.base.elapsed().as_millis() as u64) < self.0.until_ms.load(Ordering::Acquire)
    }
}

/// Where a durable event's retries stood when it was claimed.
#[derive(Clone, Copy, Debug)]
pub struct Resume {
    /// Attempts made so far, by this or an earlier run.
    pub attempts: u32,
    /// Not to be tried again before this.
    pub at: Instant,
}

/// Where the workers report what became of a source's events.
pub type Acks = tokio::sync::mpsc::UnboundedSender<Outcome>;

/// What became of an event at one sink, for the source that sent it
/// with an [`Acks`] sender.
#[derive(Debug)]
pub enum Outcome {
    /// The sink confirmed the event.
    Delivered {
        /// The event's id in the log.
        id: i64,
        /// The sink's index.
        sink: usize,
    },
    /// An attempt failed and another follows after `delay`.
    Retrying {
        /// The event's id in the log.
        id: i64,
        /// Attempts made so far.
        attempts: u32,
        /// Wait before the next attempt.
        delay: Duration,
        /// Why the attempt failed.
        error: String,
    },
    /// The sink will not get the event: retries exhausted or a permanent error.
    Failed {
        /// The event's id in the log.
        id: i64,
        /// The sink's index.
        sink: usize,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// A sink, its queue's receiving end and its lanes, before it runs.
pub struct Worker {
    deliverer: Deliverer,
    rx: mpsc::Receiver<Job>,
    lanes: usize,
}

/// Creates the queue of sink number `index` and the worker that will drain
/// it. `stats` are the sink's counters.
pub fn worker(
    index: usize,
    name: &str,
    sink: Box<dyn Sink>,
    delivery: &DeliveryConfig,
    stats: Arc<SinkStats>,
) -> (SinkQueue, Worker) {
    let (tx, rx) = mpsc::channel(delivery.queue_capacity);
    let name: Arc<str> = Arc::from(name);
    let queue = SinkQueue {
        name: Arc::clone(&name),
        tx,
        when_full: delivery.when_full,
        stats: Arc::clone(&stats),
        waits: Arc::default(),
        drops: Arc::default(),
        shedding: Arc::default(),
        shutdown: CancellationToken::new(),
    };
    let concurrency = sink.concurrency();
    let in_flight = delivery
        .max_in_flight
        .unwrap_or_else(|| sink.default_max_in_flight())
        .max(1);
    let (lanes, window) = match concurrency {
        Concurrency::Pipelined => (1, in_flight),
        Concurrency::Lanes => (in_flight, 1),
    };
    let worker = Worker {
        deliverer: Deliverer {
            name,
            batching: sink.batching(),
            concurrency,
            sink,
            policy: RetryPolicy::from_config(delivery),
            stats,
            index,
            window,
            disconnected_since: Mutex::new(None),
            deliveries: AtomicU64::new(0),
        },
        rx,
        lanes,
    };
    (queue, worker)
}

impl Worker {
    /// This worker's counters.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.deliverer.stats)
    }

    /// Delivers queued events until the queue is closed and every event is
    /// settled, or `deadline` fires. Returns how many events were left
    /// undelivered.
    pub async fn run(self, deadline: CancellationToken) -> u64 {
        let Worker {
            deliverer,
            rx,
            lanes,
        } = self;
        if lanes == 1 {
            return deliverer.lane(rx, &deadline).await;
        }
        let capacity = LANE_BATCHES * deliverer.batching.max_events.max(8);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..lanes).map(|_| mpsc::channel(capacity)).unzip();
        let lanes =
            futures_util::future::join_all(rxs.into_iter().map(|rx| deliverer.lane(rx, &deadline)));
        let (left_in_lanes, left_in_queue) = tokio::join!(lanes, dispatch(rx, txs, &deadline));
        left_in_lanes.into_iter().sum::<u64>() + left_in_queue
    }
}

/// Moves events from the sink's queue to the lane of their row key. A full
/// lane (slow, or retrying) holds up the others once they run dry: its
/// keys' order forbids passing it. Returns the events left at `deadline`.
async fn dispatch(
    mut rx: mpsc::Receiver<Job>,
    lanes: Vec<mpsc::Sender<Job>>,
    deadline: &CancellationToken,
) -> u64 {
    let mut left = 0;
    loop {
        let job = tokio::select! {
            biased;
            () = deadline.cancelled() => break,
            job = rx.recv() => job,
        };
        let Some(job) = job else { break };
        let lane = &lanes[lane_of(&job.event, lanes.len())];
        let sent = tokio::select! {
            biased;
            () = deadline.cancelled() => false,
            sent = lane.send(job) => sent.is_ok(),
        };
        if !sent {
            left += 1;
            break;
        }
    }
    drop(lanes);
    rx.close();
    while rx.try_recv().is_ok() {
        left += 1;
    }
    left
}

/// The lane of `event`: its row key hashed, or its table's name when the
/// key is unknown, so such a table stays in one lane.
fn lane_of(event: &Event, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match &event.key {
        Some(key) => key.hash(&mut hasher),
        None => (&event.schema, &event.table).hash(&mut hasher),
    }
    (hasher.finish() % lanes as u64) as usize
}

#[cfg(test)]
mod tests;
