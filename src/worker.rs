//! One worker per sink: a bounded queue in front of it, submission in commit
//! order with confirmations awaited in a window, the retry policy, and the
//! log line for every failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use skor_sink_api::{Confirmation, ErrorKind, Event, Sink, SinkError};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{DeliveryConfig, WhenFull};
use crate::retry::RetryPolicy;
use crate::stats::SinkStats;

/// An event queued for one sink.
#[derive(Clone, Debug)]
pub struct Job {
    /// The event, shared by every sink it goes to.
    pub event: Arc<Event>,
    /// Attempts a durable event already used, from the event log.
    pub resume: Option<Resume>,
}

/// Where a durable event's retries stood when it was claimed.
#[derive(Clone, Copy, Debug)]
pub struct Resume {
    /// Attempts made so far, by this or an earlier run.
    pub attempts: u32,
    /// Not to be tried again before this.
    pub at: Instant,
}

/// What became of a durable event at one sink, for the event log.
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

/// The listener's end of a sink's queue.
#[derive(Clone)]
pub struct SinkQueue {
    name: Arc<str>,
    tx: mpsc::Sender<Job>,
    when_full: WhenFull,
    stats: Arc<SinkStats>,
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
                let started = tokio::time::Instant::now();
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

/// A sink, its queue's receiving end and its policy, before it runs.
pub struct Worker {
    name: Arc<str>,
    sink: Box<dyn Sink>,
    rx: mpsc::Receiver<Job>,
    policy: RetryPolicy,
    max_in_flight: usize,
    stats: Arc<SinkStats>,
    /// When the sink lost its broker, while it is without one.
    disconnected_since: Option<Instant>,
    /// Where durable events' outcomes go, with this sink's index.
    report: Option<(usize, mpsc::UnboundedSender<Outcome>)>,
}

/// A submitted event and its broker's answer.
type Pending = Pin<Box<dyn Future<Output = (Job, Result<(), SinkError>)> + Send>>;

/// Creates the queue of a sink and the worker that will drain it.
pub fn worker(name: &str, sink: Box<dyn Sink>, delivery: &DeliveryConfig) -> (SinkQueue, Worker) {
    let (tx, rx) = mpsc::channel(delivery.queue_capacity);
    let name: Arc<str> = Arc::from(name);
    let stats = Arc::new(SinkStats::default());
    let queue = SinkQueue {
        name: Arc::clone(&name),
        tx,
        when_full: delivery.when_full,
        stats: Arc::clone(&stats),
    };
    let worker = Worker {
        name,
        sink,
        rx,
        policy: RetryPolicy::from_config(delivery),
        max_in_flight: delivery.max_in_flight.max(1),
        stats,
        disconnected_since: None,
        report: None,
    };
    (queue, worker)
}

impl Worker {
    /// Reports what becomes of durable events to `outcomes`, as sink `index`.
    pub fn report_to(&mut self, index: usize, outcomes: mpsc::UnboundedSender<Outcome>) {
        self.report = Some((index, outcomes));
    }

    /// This worker's counters.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// Submits events in queue order, with up to `max_in_flight` awaiting
    /// their confirmation, until the queue is closed and every event is
    /// settled, or `deadline` fires. Returns how many events were left
    /// undelivered.
    pub async fn run(mut self, deadline: CancellationToken) -> u64 {
        let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut open = true;
        let left = loop {
            if !open && in_flight.is_empty() {
                break 0;
            }
            let room = open && in_flight.len() < self.max_in_flight;
            // A failed event is retried before anything else moves, so an
            // outage holds the queue instead of racing through it.
            let (job, result) = tokio::select! {
                biased;
                () = deadline.cancelled() => break in_flight.len(),
                Some(done) = in_flight.next(), if !in_flight.is_empty() => done,
                job = self.rx.recv(), if room => {
                    let Some(job) = job else {
                        open = false;
                        continue;
                    };
                    let submitted = tokio::select! {
                        biased;
                        () = deadline.cancelled() => break 1 + in_flight.len(),
                        submitted = submit_when_due(&*self.sink, &job) => submitted,
                    };
                    match submitted {
                        Ok(confirmation) => {
                            in_flight.push_back(Box::pin(async move { (job, confirmation.await) }));
                            continue;
                        }
                        Err(error) => (job, Err(error)),
                    }
                }
            };
            tokio::select! {
                biased;
                () = deadline.cancelled() => break 1 + in_flight.len(),
                () = self.settle(&job, result) => {}
            }
        };
        left as u64 + self.close_and_count()
    }

    fn close_and_count(&mut self) -> u64 {
        self.rx.close();
        let mut left = 0;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        left
    }

    /// Counts a delivered event, or retries a failed one as the policy
    /// allows and logs and counts it if it cannot be delivered.
    async fn settle(&mut self, job: &Job, mut result: Result<(), SinkError>) {
        let event = &*job.event;
        let mut attempt: u32 = 1 + job.resume.map_or(0, |r| r.attempts);
        let mut outage: u32 = 0;
        loop {
            let error = match result {
                Ok(()) => return self.delivered(event, attempt),
                Err(error) => error,
            };
            let delay = match error.kind {
                ErrorKind::Disconnected => {
                    outage += 1;
                    self.lost_broker(&error);
                    Some(self.policy.reconnect_delay(outage))
                }
                ErrorKind::Retryable => self.policy.delay(attempt),
                ErrorKind::Permanent => None,
            };
            let Some(delay) = delay else {
                self.stats.failed.incr();
                let reason = if error.is_retryable() {
                    "retries exhausted"
                } else {
                    "permanent error"
                };
                if let (Some(id), Some((sink, outcomes))) = (event.id, &self.report) {
                    error!(sink = %self.name, id, schema = %event.schema, table = %event.table,
                           op = %event.op, attempts = attempt, error = %error, reason,
                           "event not delivered: moved to the dead letters");
                    let _ = outcomes.send(Outcome::Failed {
                        id,
                        sink: *sink,
                        attempts: attempt,
                        error: error.to_string(),
                    });
                    return;
                }
                error!(sink = %self.name, schema = %event.schema, table = %event.table,
                       op = %event.op, attempts = attempt, error = %error, reason,
                       payload = %String::from_utf8_lossy(&event.payload),
                       "event not delivered");
                return;
            };
            self.stats.retried.incr();
            if error.kind != ErrorKind::Disconnected {
                warn!(sink = %self.name, schema = %event.schema, table = %event.table,
                      op = %event.op, attempt, retry_in_ms = delay.as_millis() as u64,
                      error = %error, "delivery failed, retrying");
                if let (Some(id), Some((_, outcomes))) = (event.id, &self.report) {
                    let _ = outcomes.send(Outcome::Retrying {
                        id,
                        attempts: attempt,
                        delay,
                        error: error.to_string(),
                    });
                }
                attempt += 1;
            }
            tokio::time::sleep(delay).await;
            result = match self.sink.submit(event).await {
                Ok(confirmation) => confirmation.await,
                Err(error) => Err(error),
            };
        }
    }

    fn delivered(&mut self, event: &Event, attempt: u32) {
        self.stats.delivered.incr();
        if let (Some(id), Some((sink, outcomes))) = (event.id, &self.report) {
            let _ = outcomes.send(Outcome::Delivered { id, sink: *sink });
        }
        if let Some(since) = self.disconnected_since.take() {
            info!(sink = %self.name, down_ms = since.elapsed().as_millis() as u64,
                  "sink reachable again, delivering");
        }
        if attempt > 1 {
            info!(sink = %self.name, schema = %event.schema, table = %event.table,
                  op = %event.op, attempt, "delivered after retrying");
        }
    }

    /// Logs the start of an outage once; events wait in the queue meanwhile.
    fn lost_broker(&mut self, error: &SinkError) {
        if self.disconnected_since.is_none() {
            self.disconnected_since = Some(Instant::now());
            warn!(sink = %self.name, error = %error, queued = self.rx.len(),
                  "sink unreachable; events wait in its queue while it reconnects");
        } else {
            debug!(sink = %self.name, error = %error, "sink still unreachable");
        }
    }
}

/// Submits `job`, first waiting out the retry delay a durable event still
/// had when it was claimed.
async fn submit_when_due(sink: &dyn Sink, job: &Job) -> Result<Confirmation, SinkError> {
    if let Some(resume) = job.resume {
        tokio::time::sleep_until(resume.at).await;
    }
    sink.submit(&job.event).await
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use skor_sink_api::{Bytes, Op};

    use super::*;

    /// A sink that answers from a script and records when it was called.
    struct Scripted {
        answers: Mutex<VecDeque<Result<(), SinkError>>>,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    #[async_trait::async_trait]
    impl Sink for Scripted {
        async fn send(&self, _event: &Event) -> Result<(), SinkError> {
            self.calls.lock().unwrap().push(Instant::now());
            self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
    }

    fn event() -> Arc<Event> {
        Arc::new(Event {
            channel: Arc::from("skor"),
            schema: "public".into(),
            table: "t".into(),
            op: Op::Insert,
            payload: Bytes::from_static(b"{}"),
            key: None,
            id: None,
        })
    }

    async fn run_script(answers: Vec<Result<(), SinkError>>) -> (Arc<SinkStats>, Vec<Duration>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sink = Scripted {
            answers: Mutex::new(answers.into()),
            calls: Arc::clone(&calls),
        };
        let (queue, worker) = worker("test", Box::new(sink), &DeliveryConfig::default());
        let stats = worker.stats();
        queue.push(&event()).await;
        drop(queue);
        let started = Instant::now();
        assert_eq!(worker.run(CancellationToken::new()).await, 0);
        let offsets = calls.lock().unwrap().iter().map(|t| *t - started).collect();
        (stats, offsets)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_linear_schedule() {
        let fail = || Err(SinkError::retryable("HTTP 500"));
        let (stats, calls) = run_script(vec![fail(), fail(), Ok(())]).await;
        let ms: Vec<u128> = calls.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 100, 300]);
        assert_eq!(
            (
                stats.delivered.get(),
                stats.retried.get(),
                stats.failed.get()
            ),
            (1, 2, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_five_retries_and_counts_the_failure() {
        let answers = (0..10)
            .map(|_| Err(SinkError::retryable("refused")))
            .collect();
        let (stats, calls) = run_script(answers).await;
        assert_eq!(calls.len(), 6);
        assert_eq!(calls.last().unwrap().as_millis(), 1_500);
        assert_eq!((stats.delivered.get(), stats.failed.get()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let (stats, calls) = run_script(vec![Err(SinkError::permanent("HTTP 403"))]).await;
        assert_eq!(calls.len(), 1);
        assert_eq!((stats.retried.get(), stats.failed.get()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_broker_is_waited_for_without_spending_retries() {
        let mut answers: Vec<_> = (0..9)
            .map(|_| Err(SinkError::disconnected("connection refused")))
            .collect();
        answers.push(Ok(()));
        let (stats, calls) = run_script(answers).await;
        let ms: Vec<u128> = calls.iter().map(|d| d.as_millis()).collect();
        // Doubling from 100 ms, capped at 5 s, far past the 5-retry budget.
        assert_eq!(
            ms,
            vec![0, 100, 300, 700, 1_500, 3_100, 6_300, 11_300, 16_300, 21_300]
        );
        assert_eq!((stats.delivered.get(), stats.failed.get()), (1, 0));
    }

    /// A sink whose confirmations arrive only when the test releases them.
    struct Pipelined {
        submitted: Arc<Mutex<Vec<u64>>>,
        release: Arc<tokio::sync::Notify>,
    }

    #[async_trait::async_trait]
    impl Sink for Pipelined {
        async fn send(&self, event: &Event) -> Result<(), SinkError> {
            self.submit(event).await?.await
        }

        async fn submit(&self, event: &Event) -> Result<Confirmation, SinkError> {
            self.submitted
                .lock()
                .unwrap()
                .push(event.payload.len() as u64);
            let release = Arc::clone(&self.release);
            Ok(Box::pin(async move {
                release.notified().await;
                Ok(())
            }))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn confirmations_are_awaited_together_and_drained_at_shutdown() {
        let submitted = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let sink = Pipelined {
            submitted: Arc::clone(&submitted),
            release: Arc::clone(&release),
        };
        let delivery = DeliveryConfig {
            max_in_flight: 3,
            ..DeliveryConfig::default()
        };
        let (queue, worker) = worker("test", Box::new(sink), &delivery);
        let stats = worker.stats();
        for size in 1..=5 {
            let mut event = (*event()).clone();
            event.payload = Bytes::from(vec![b' '; size]);
            queue.push(&Arc::new(event)).await;
        }
        drop(queue);
        let run = tokio::spawn(worker.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Three handed over, in order, before any confirmation came back.
        assert_eq!(*submitted.lock().unwrap(), vec![1, 2, 3]);
        assert_eq!(stats.delivered.get(), 0);
        for _ in 0..1_000 {
            if run.is_finished() {
                break;
            }
            release.notify_waiters();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(run.is_finished(), "the worker stops once all is confirmed");
        assert_eq!(run.await.unwrap(), 0, "the closed queue drained");
        assert_eq!(*submitted.lock().unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(stats.delivered.get(), 5);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_by_default() {
        let delivery = DeliveryConfig {
            queue_capacity: 1,
            ..DeliveryConfig::default()
        };
        let (queue, worker) = worker("test", Box::new(skor_sink_api::StdoutSink), &delivery);
        queue.push(&event()).await;
        queue.push(&event()).await;
        assert_eq!(queue.depth(), 1);
        assert_eq!(worker.stats().dropped.get(), 1);
    }
}
