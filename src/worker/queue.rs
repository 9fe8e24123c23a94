//! The listener's end of a sink's queue: a bounded channel and the
//! `when_full` policy applied when it has no room.

use std::sync::Arc;

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
}

impl SinkQueue {
    /// Queues an event for this sink, applying `when_full` if there is no
    /// room. Returns once the event is queued or dropped.
    pub async fn push(&self, event: &Arc<Event>) {
        let job = Job {
            event: Arc::clone(event),
            resume: None,
        };
        let event = match self.tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Closed(Job { event, .. })) => {
                // Only after the worker stopped at the shutdown deadline.
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
                self.stats.dropped.incr();
                error!(sink = %self.name, schema = %event.schema, table = %event.table,
                       op = %event.op, capacity, payload = %String::from_utf8_lossy(&event.payload),
                       "event dropped for this sink: its queue is full");
            }
            WhenFull::Block => {
                let event = event.event;
                warn!(sink = %self.name, capacity,
                      "queue full: waiting for room, every sink waits meanwhile");
                let started = Instant::now();
                let job = Job {
                    event,
                    resume: None,
                };
                if self.tx.send(job).await.is_err() {
                    self.stats.failed.incr();
                    error!(sink = %self.name, "event not delivered: the sink has stopped");
                    return;
                }
                info!(sink = %self.name, waited_ms = started.elapsed().as_millis() as u64,
                      "queue has room again");
            }
        }
    }

    /// Queues a durable event, waiting for room whatever `when_full` says:
    /// the event log holds the backlog. False if the sink has stopped.
    pub async fn send(&self, job: Job) -> bool {
        self.tx.send(job).await.is_ok()
    }

    /// Events waiting in the queue.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}
