//! The listener's end of a sink's queue: a bounded channel and the
//! `when_full` policy applied when it has no room.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use skor_sink_api::Event;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Job;
use crate::config::WhenFull;
use crate::delivery::shedding::Shedding;
use crate::observe::stats::SinkStats;

/// Most bytes of a dropped event's payload quoted in the log.
const LOGGED_PAYLOAD_BYTES: usize = 256;

/// The listener's end of a sink's queue.
#[derive(Clone)]
pub struct SinkQueue {
    pub(super) name: Arc<str>,
    pub(super) tx: mpsc::Sender<Job>,
    pub(super) when_full: WhenFull,
    pub(super) stats: Arc<SinkStats>,
    pub(super) waits: Arc<Mutex<Waits>>,
    pub(super) drops: Arc<Mutex<Drops>>,
    pub(super) shedding: Arc<Shedding>,
    /// Ends a wait for room: a stuck sink must not hold up shutdown.
    pub(super) shutdown: CancellationToken,
}

/// How often the listener waited for room, to say so at most every 10 s.
#[derive(Debug, Default)]
pub(super) struct Waits {
    said_at: Option<Instant>,
    unsaid: u64,
}

impl Waits {
    const QUIET: Duration = Duration::from_secs(10);

    /// Counts a wait; `Some(waits not logged since the last line)` when
    /// this one is to be logged.
    fn wait(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.said_at.is_some_and(|at| now - at < Self::QUIET) {
            self.unsaid += 1;
            return None;
        }
        self.said_at = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// Events dropped since the last line, so a burst makes one line a second
/// rather than one per event.
#[derive(Debug, Default)]
pub(super) struct Drops {
    said_at: Option<Instant>,
    unsaid: u64,
}

impl Drops {
    const QUIET: Duration = Duration::from_secs(1);

    /// Counts a drop; `Some(drops to report, this one included)` when this
    /// one is to be logged, as the sample.
    fn dropped(&mut self) -> Option<u64> {
        let now = Instant::now();
        self.unsaid += 1;
        if self.said_at.is_some_and(|at| now - at < Self::QUIET) {
            return None;
        }
        self.said_at = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// Why an event was dropped, for the log.
#[derive(Clone, Copy)]
enum Why {
    /// `when_full = "drop"`.
    Full,
    /// PostgreSQL's notification queue is past the shedding threshold.
    Shedding,
    /// skor is shutting down.
    Shutdown,
}

impl SinkQueue {
    /// Shares `shedding` with the watch on PostgreSQL's notification queue.
    pub fn shed_with(&mut self, shedding: Arc<Shedding>) {
        self.shedding = shedding;
    }

    /// Stops waiting for room, dropping the event, once `shutdown` fires.
    pub fn stop_waiting_on(&mut self, shutdown: CancellationToken) {
        self.shutdown = shutdown;
    }

    /// Queues an event for this sink, applying `when_full` if there is no
    /// room. Returns once the event is queued or dropped.
    pub async fn push(&self, event: &Arc<Event>) {
        let job = Job::new(Arc::clone(event), None);
        // Counted before the worker can settle it, so depth never dips.
        self.stats.queued();
        let event = match self.tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Closed(Job { event, .. })) => return self.stopped(&event),
            Err(TrySendError::Full(job)) => job.event,
        };
        if self.when_full == WhenFull::Drop {
            return self.drop_event(&event, Why::Full);
        }
        if self.shedding.is_on() {
            return self.drop_event(&event, Why::Shedding);
        }
        let capacity = self.tx.max_capacity();
        // A burst faster than the sink fills the queue again at once: one
        // line per episode would flood the log.
        let suppressed = self.waits.lock().expect("not poisoned").wait();
        if let Some(suppressed) = suppressed {
            warn!(sink = %self.name, capacity, waits_since_last_line = suppressed,
                  "queue full: waiting for room, every sink waits meanwhile \
                   (said at most every 10 s)");
        }
        let started = Instant::now();
        self.stats.blocked.set(1);
        // Shedding starts while the listener waits when the sink stays
        // stuck: waiting on would let PostgreSQL's queue fill.
        let permit = tokio::select! {
            permit = self.tx.reserve() => Ok(permit),
            () = self.shedding.started() => Err(Why::Shedding),
            () = self.shutdown.cancelled() => Err(Why::Shutdown),
        };
        self.stats.blocked.set(0);
        match permit {
            Ok(Ok(permit)) => permit.send(Job::new(event, None)),
            Ok(Err(_)) => return self.stopped(&event),
            Err(why) => return self.drop_event(&event, why),
        }
        if suppressed.is_some() {
            info!(sink = %self.name, waited_ms = started.elapsed().as_millis() as u64,
                  "queue has room again");
        }
    }

    /// Counts and logs an event the stopped worker refused; only after it
    /// stopped at the shutdown deadline.
    fn stopped(&self, event: &Event) {
        self.stats.unqueued(1);
        self.stats.failed.incr();
        error!(sink = %self.name, schema = %event.schema, table = %event.table,
               op = %event.op, payload = %sample(event),
               "event not delivered: the sink has stopped");
    }

    /// Counts a dropped event; logs at most once a second, with a count
    /// and this event as the sample.
    fn drop_event(&self, event: &Event, why: Why) {
        self.stats.unqueued(1);
        self.stats.dropped.incr();
        if matches!(why, Why::Shedding) {
            self.shedding.count();
        }
        let Some(dropped) = self.drops.lock().expect("not poisoned").dropped() else {
            return;
        };
        let capacity = self.tx.max_capacity();
        let reason = match why {
            Why::Full => "its queue is full and when_full = \"drop\"",
            Why::Shedding => {
                "its queue is full and PostgreSQL's notification queue is past \
                 shed_notify_queue_usage"
            }
            Why::Shutdown => "its queue is full and skor is shutting down",
        };
        error!(sink = %self.name, dropped, capacity, reason,
               sample_schema = %event.schema, sample_table = %event.table,
               sample_op = %event.op, sample = %sample(event),
               "events dropped for this sink (said at most once a second, with one sample)");
    }

    /// Queues a durable event, waiting for room whatever `when_full` says:
    /// the event log holds the backlog. False if the sink has stopped.
    pub async fn send(&self, job: Job) -> bool {
        self.stats.queued();
        let sent = self.tx.send(job).await.is_ok();
        if !sent {
            self.stats.unqueued(1);
        }
        sent
    }
}

/// The start of an event's payload, for a log line.
fn sample(event: &Event) -> String {
    let text = String::from_utf8_lossy(&event.payload);
    crate::observe::logging::truncate(&text, LOGGED_PAYLOAD_BYTES).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_said_at_most_every_ten_seconds() {
        let mut waits = Waits::default();
        assert_eq!(waits.wait(), Some(0));
        assert_eq!(waits.wait(), None);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(waits.wait(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(waits.wait(), Some(2), "two waits went unsaid");
    }

    #[tokio::test(start_paused = true)]
    async fn drops_are_said_at_most_once_a_second_with_their_count() {
        let mut drops = Drops::default();
        assert_eq!(drops.dropped(), Some(1), "the first drop is said at once");
        for _ in 0..999 {
            assert_eq!(drops.dropped(), None);
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(drops.dropped(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(drops.dropped(), Some(1001), "1000 unsaid and this one");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(drops.dropped(), Some(1), "a lone drop later is said");
    }
}
