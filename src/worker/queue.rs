//! The listener's end of a sink's queue: a bounded channel and the
//! `when_full` policy applied when it has no room.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use skor_sink_api::Event;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::Job;
use crate::config::WhenFull;
use crate::stats::SinkStats;

/// The listener's end of a sink's queue.
#[derive(Clone)]
pub struct SinkQueue {
    pub(super) name: Arc<str>,
    pub(super) tx: mpsc::Sender<Job>,
    pub(super) when_full: WhenFull,
    pub(super) stats: Arc<SinkStats>,
    pub(super) waits: Arc<Mutex<Waits>>,
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

impl SinkQueue {
    /// Queues an event for this sink, applying `when_full` if there is no
    /// room. Returns once the event is queued or dropped.
    pub async fn push(&self, event: &Arc<Event>) {
        let job = Job::new(Arc::clone(event), None);
        // Counted before the worker can settle it, so depth never dips.
        self.stats.queued();
        let event = match self.tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Closed(Job { event, .. })) => {
                // Only after the worker stopped at the shutdown deadline.
                self.stats.unqueued(1);
                self.stats.failed.incr();
                error!(sink = %self.name, schema = %event.schema, table = %event.table,
                       op = %event.op, payload = %String::from_utf8_lossy(&event.payload),
                       "event not delivered: the sink has stopped");
                return;
            }
            Err(TrySendError::Full(job)) => job,
        };
        let capacity = self.tx.max_capacity();
        match self.when_full {
            WhenFull::Drop => {
                let event = event.event;
                self.stats.unqueued(1);
                self.stats.dropped.incr();
                error!(sink = %self.name, schema = %event.schema, table = %event.table,
                       op = %event.op, capacity, payload = %String::from_utf8_lossy(&event.payload),
                       "event dropped for this sink: its queue is full");
            }
            WhenFull::Block => {
                let event = event.event;
                // A burst faster than the sink fills the queue again at once:
                // one line per episode would flood the log.
                let suppressed = self.waits.lock().expect("not poisoned").wait();
                if let Some(suppressed) = suppressed {
                    warn!(sink = %self.name, capacity, waits_since_last_line = suppressed,
                          "queue full: waiting for room, every sink waits meanwhile \
                           (said at most every 10 s)");
                }
                let started = Instant::now();
                if self.tx.send(Job::new(event, None)).await.is_err() {
                    self.stats.unqueued(1);
                    self.stats.failed.incr();
                    error!(sink = %self.name, "event not delivered: the sink has stopped");
                    return;
                }
                if suppressed.is_some() {
                    info!(sink = %self.name, waited_ms = started.elapsed().as_millis() as u64,
                          "queue has room again");
                }
            }
        }
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
}
