//! The worker against scripted sinks, on a paused clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use skor_sink_api::{Bytes, Confirmation, Op, SinkError};

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
        format: skor_sink_api::Format::Skor,
        key: None,
        id: None,
        seq: 0,
    })
}

async fn run_script(answers: Vec<Result<(), SinkError>>) -> (Arc<SinkStats>, Vec<Duration>) {
    run_script_with(answers, &DeliveryConfig::default()).await
}

async fn run_script_with(
    answers: Vec<Result<(), SinkError>>,
    delivery: &DeliveryConfig,
) -> (Arc<SinkStats>, Vec<Duration>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let sink = Scripted {
        answers: Mutex::new(answers.into()),
        calls: Arc::clone(&calls),
    };
    let (queue, worker) = worker(0, "test", Box::new(sink), delivery, Arc::default());
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
    assert_eq!(
        (
            stats.delivered.get(),
            stats.retried.get(),
            stats.failed.get()
        ),
        (1, 0, 0)
    );
    assert_eq!(stats.outage_waits.get(), 9, "each wait counted apart");
    assert_eq!(stats.disconnected.get(), 0, "back once delivered");
}

#[tokio::test(start_paused = true)]
async fn an_outage_longer_than_max_outage_ms_spends_the_retries() {
    let answers = (0..20)
        .map(|_| Err(SinkError::disconnected("connection refused")))
        .collect();
    let delivery = DeliveryConfig {
        max_outage_ms: Some(1_000),
        ..DeliveryConfig::default()
    };
    let (stats, calls) = run_script_with(answers, &delivery).await;
    let ms: Vec<u128> = calls.iter().map(|d| d.as_millis()).collect();
    // Waited out with doubling delays up to the limit (woken at it), then
    // the five linear retries, then given up.
    assert_eq!(
        ms,
        vec![0, 100, 300, 700, 1_000, 1_100, 1_300, 1_600, 2_000, 2_500]
    );
    assert_eq!(
        (
            stats.delivered.get(),
            stats.retried.get(),
            stats.failed.get()
        ),
        (0, 5, 1)
    );
    // The wake-up at the limit finds the sink still down: that attempt is
    // the first to count, as a retry.
    assert_eq!(stats.outage_waits.get(), 4, "the waits before the limit");
    assert_eq!(stats.disconnected.get(), 1, "still unreachable");
}

/// A lane-based sink that answers from a script in `send` and has no use
/// for a confirmation: its `submit` must never be called.
struct Lane(Mutex<VecDeque<Result<(), SinkError>>>);

#[async_trait::async_trait]
impl Sink for Lane {
    async fn send(&self, _event: &Event) -> Result<(), SinkError> {
        self.0.lock().unwrap().pop_front().unwrap_or(Ok(()))
    }

    async fn submit(&self, _event: &Event) -> Result<Confirmation, SinkError> {
        panic!("a lane's request is settled from send, not through a confirmation");
    }

    fn concurrency(&self) -> skor_sink_api::Concurrency {
        skor_sink_api::Concurrency::Lanes
    }
}

#[tokio::test(start_paused = true)]
async fn a_lanes_request_is_settled_from_its_answer_without_a_confirmation() {
    let script = vec![
        Err(SinkError::disconnected("refused")),
        Err(SinkError::retryable("HTTP 503")),
        Ok(()),
    ];
    let sink = Lane(Mutex::new(script.into()));
    let (queue, worker) = worker(
        0,
        "test",
        Box::new(sink),
        &DeliveryConfig::default(),
        Arc::default(),
    );
    let stats = worker.stats();
    queue.push(&event()).await;
    queue.push(&event()).await;
    drop(queue);
    assert_eq!(worker.run(CancellationToken::new()).await, 0);
    assert_eq!(
        (
            stats.delivered.get(),
            stats.retried.get(),
            stats.outage_waits.get(),
            stats.failed.get()
        ),
        (2, 1, 1, 0)
    );
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
        max_in_flight: Some(3),
        ..DeliveryConfig::default()
    };
    let (queue, worker) = worker(0, "test", Box::new(sink), &delivery, Arc::default());
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
async fn a_full_queue_drops_and_counts_when_asked_to() {
    let delivery = DeliveryConfig {
        queue_capacity: 1,
        when_full: crate::config::WhenFull::Drop,
        ..DeliveryConfig::default()
    };
    let (queue, worker) = worker(
        0,
        "test",
        Box::new(crate::sinks::StdoutSink),
        &delivery,
        Arc::default(),
    );
    queue.push(&event()).await;
    queue.push(&event()).await;
    assert_eq!(worker.stats().depth.get(), 1, "one queued, one dropped");
    assert_eq!(worker.stats().dropped.get(), 1);
}

#[tokio::test]
async fn a_full_queue_waits_by_default_until_shedding_starts() {
    let delivery = DeliveryConfig {
        queue_capacity: 1,
        ..DeliveryConfig::default()
    };
    let (mut queue, worker) = worker(
        0,
        "test",
        Box::new(crate::sinks::StdoutSink),
        &delivery,
        Arc::default(),
    );
    let shedding = Arc::new(crate::delivery::shedding::Shedding::default());
    queue.shed_with(Arc::clone(&shedding));
    let stats = worker.stats();
    queue.push(&event()).await;
    let second = tokio::spawn({
        let queue = queue.clone();
        async move { queue.push(&event()).await }
    });
    while stats.blocked.get() == 0 {
        tokio::task::yield_now().await;
    }
    assert!(!second.is_finished(), "the listener waits for room");
    assert_eq!(stats.dropped.get(), 0);
    shedding.set(true);
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("shedding ends the wait")
        .unwrap();
    assert_eq!(stats.blocked.get(), 0);
    assert_eq!(stats.dropped.get(), 1);
    assert_eq!(shedding.shed(), 1);
    assert_eq!(stats.depth.get(), 1, "one queued, one shed");
    queue.push(&event()).await;
    assert_eq!(stats.dropped.get(), 2, "no wait at all while shedding");
}

#[tokio::test]
async fn shutdown_ends_a_wait_for_room() {
    let delivery = DeliveryConfig {
        queue_capacity: 1,
        ..DeliveryConfig::default()
    };
    let (mut queue, worker) = worker(
        0,
        "test",
        Box::new(crate::sinks::StdoutSink),
        &delivery,
        Arc::default(),
    );
    let shutdown = CancellationToken::new();
    queue.stop_waiting_on(shutdown.clone());
    let stats = worker.stats();
    queue.push(&event()).await;
    let second = tokio::spawn(async move { queue.push(&event()).await });
    while stats.blocked.get() == 0 {
        tokio::task::yield_now().await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("shutdown ends the wait")
        .unwrap();
    assert_eq!(stats.dropped.get(), 1, "counted, not lost silently");
    assert_eq!(stats.depth.get(), 1, "the queued event stays to be drained");
}

/// A sink with lanes that records each delivery's keys when it finishes;
/// events of key `slow` take 100 ms.
struct Recorder {
    finished: Arc<Mutex<Vec<Vec<String>>>>,
    batching: skor_sink_api::Batching,
}

impl Recorder {
    fn keys(events: &[Arc<Event>]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect()
    }
}

#[async_trait::async_trait]
impl Sink for Recorder {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.send_batch(&[Arc::new(event.clone())]).await
    }

    async fn send_batch(&self, events: &[Arc<Event>]) -> Result<(), SinkError> {
        if events[0].key.as_deref() == Some(b"slow") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.finished.lock().unwrap().push(Self::keys(events));
        Ok(())
    }

    fn concurrency(&self) -> skor_sink_api::Concurrency {
        skor_sink_api::Concurrency::Lanes
    }

    fn batching(&self) -> skor_sink_api::Batching {
        self.batching
    }
}

/// An event of row key `key` whose payload says `key:n`.
fn keyed(key: &str, n: u32) -> Arc<Event> {
    let mut event = (*event()).clone();
    event.key = Some(Bytes::from(key.to_string()));
    event.payload = Bytes::from(format!("{key}:{n}"));
    Arc::new(event)
}

async fn run_lanes(
    events: &[Arc<Event>],
    batching: skor_sink_api::Batching,
) -> (Vec<Vec<String>>, Arc<SinkStats>) {
    let finished = Arc::new(Mutex::new(Vec::new()));
    let sink = Recorder {
        finished: Arc::clone(&finished),
        batching,
    };
    let (queue, worker) = worker(
        0,
        "test",
        Box::new(sink),
        &DeliveryConfig::default(),
        Arc::default(),
    );
    let stats = worker.stats();
    for event in events {
        queue.push(event).await;
    }
    drop(queue);
    assert_eq!(worker.run(CancellationToken::new()).await, 0);
    let finished = finished.lock().unwrap().clone();
    (finished, stats)
}

#[tokio::test(start_paused = true)]
async fn lanes_let_other_keys_pass_a_slow_one_but_keep_each_keys_order() {
    // Two keys that hash onto different lanes of the default 16.
    let fast = (0..)
        .map(|i| format!("fast{i}"))
        .find(|k| lane_of(&keyed(k, 0), 16) != lane_of(&keyed("slow", 0), 16))
        .unwrap();
    let events: Vec<_> = (1..=3)
        .flat_map(|n| [keyed("slow", n), keyed(&fast, n)])
        .collect();
    let (finished, stats) = run_lanes(&events, skor_sink_api::Batching::OFF).await;
    let order: Vec<String> = finished.into_iter().flatten().collect();
    let expected: Vec<String> = (1..=3)
        .map(|n| format!("{fast}:{n}"))
        .chain((1..=3).map(|n| format!("slow:{n}")))
        .collect();
    assert_eq!(
        order, expected,
        "the fast key overtook the slow one, each in order"
    );
    assert_eq!(stats.delivered.get(), 6);
}

#[tokio::test(start_paused = true)]
async fn batches_take_what_is_queued_up_to_the_limit_in_order() {
    let events: Vec<_> = (1..=7).map(|n| keyed("k", n)).collect();
    let batching = skor_sink_api::Batching {
        max_events: 3,
        linger: Duration::ZERO,
    };
    let (finished, stats) = run_lanes(&events, batching).await;
    let sizes: Vec<usize> = finished.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    let order: Vec<String> = finished.into_iter().flatten().collect();
    let expected: Vec<String> = (1..=7).map(|n| format!("k:{n}")).collect();
    assert_eq!(order, expected);
    assert_eq!(stats.delivered.get(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_batch_waits_its_linger_for_more_events() {
    let finished = Arc::new(Mutex::new(Vec::new()));
    let sink = Recorder {
        finished: Arc::clone(&finished),
        batching: skor_sink_api::Batching {
            max_events: 10,
            linger: Duration::from_millis(50),
        },
    };
    let (queue, worker) = worker(
        0,
        "test",
        Box::new(sink),
        &DeliveryConfig::default(),
        Arc::default(),
    );
    let run = tokio::spawn(worker.run(CancellationToken::new()));
    queue.push(&keyed("k", 1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    queue.push(&keyed("k", 2)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    queue.push(&keyed("k", 3)).await;
    drop(queue);
    assert_eq!(run.await.unwrap(), 0);
    let sizes: Vec<usize> = finished.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        vec![2, 1],
        "the second event joined the first's batch"
    );
}

/// Runs one durable job behind `fence` against `answers`; returns the stats
/// and when the sink was called.
async fn run_fenced(
    answers: Vec<Result<(), SinkError>>,
    fence: Fence,
) -> (Arc<SinkStats>, Vec<Duration>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let sink = Scripted {
        answers: Mutex::new(answers.into()),
        calls: Arc::clone(&calls),
    };
    let (queue, worker) = worker(
        0,
        "test",
        Box::new(sink),
        &DeliveryConfig::default(),
        Arc::default(),
    );
    let stats = worker.stats();
    assert!(queue.send(Job::new(event(), None).fenced(fence)).await);
    drop(queue);
    let started = Instant::now();
    assert_eq!(worker.run(CancellationToken::new()).await, 0);
    let offsets = calls.lock().unwrap().iter().map(|t| *t - started).collect();
    (stats, offsets)
}

#[tokio::test(start_paused = true)]
async fn a_revoked_fence_drops_the_job_unsent() {
    let fence = Fence::until(Instant::now() + Duration::from_secs(60));
    fence.revoke();
    let (stats, calls) = run_fenced(vec![Ok(())], fence).await;
    assert!(calls.is_empty(), "attempted at {calls:?}");
    assert_eq!((stats.delivered.get(), stats.depth.get()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_runs_out_stops_the_retries() {
    let fence = Fence::until(Instant::now() + Duration::from_millis(50));
    let fail = || Err(SinkError::retryable("HTTP 503"));
    let (stats, calls) = run_fenced(vec![fail(), Ok(())], fence).await;
    // The first attempt, then none at 100 ms: the lease ran out at 50 ms.
    assert_eq!(calls, vec![Duration::ZERO]);
    assert_eq!((stats.delivered.get(), stats.depth.get()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_renewed_fence_keeps_retrying() {
    let fence = Fence::until(Instant::now() + Duration::from_millis(50));
    fence.extend(Instant::now() + Duration::from_secs(1));
    let fail = || Err(SinkError::retryable("HTTP 503"));
    let (stats, calls) = run_fenced(vec![fail(), Ok(())], fence).await;
    assert_eq!(calls, vec![Duration::ZERO, Duration::from_millis(100)]);
    assert_eq!(stats.delivered.get(), 1);
}

/// A sink whose every attempt takes ten seconds; says whether one ever
/// finished.
struct Slow {
    finished: Arc<Mutex<u32>>,
}

#[async_trait::async_trait]
impl Sink for Slow {
    async fn send(&self, _event: &Event) -> Result<(), SinkError> {
        tokio::time::sleep(Duration::from_secs(10)).await;
        *self.finished.lock().unwrap() += 1;
        Ok(())
    }

    fn concurrency(&self) -> skor_sink_api::Concurrency {
        skor_sink_api::Concurrency::Lanes
    }
}

#[tokio::test(start_paused = true)]
async fn an_attempt_under_way_is_cancelled_when_its_lease_runs_out() {
    let finished = Arc::new(Mutex::new(0));
    let sink = Slow {
        finished: Arc::clone(&finished),
    };
    let (queue, slow) = worker(
        0,
        "test",
        Box::new(sink),
        &DeliveryConfig::default(),
        Arc::default(),
    );
    let stats = slow.stats();
    let fence = Fence::until(Instant::now() + Duration::from_secs(1));
    assert!(
        queue
            .send(Job::new(event(), None).fenced(fence.clone()))
            .await
    );
    drop(queue);
    let started = Instant::now();
    assert_eq!(slow.run(CancellationToken::new()).await, 0);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "cut at the lease's end"
    );
    assert_eq!(*finished.lock().unwrap(), 0, "the attempt never completed");
    assert_eq!(
        (stats.delivered.get(), stats.failed.get(), stats.depth.get()),
        (0, 0, 0)
    );

    // A lease renewed while the attempt runs lets it finish.
    let finished = Arc::new(Mutex::new(0));
    let (queue, slow) = worker(
        0,
        "test",
        Box::new(Slow {
            finished: Arc::clone(&finished),
        }),
        &DeliveryConfig::default(),
        Arc::default(),
    );
    let fence = Fence::until(Instant::now() + Duration::from_secs(1));
    assert!(
        queue
            .send(Job::new(event(), None).fenced(fence.clone()))
            .await
    );
    drop(queue);
    let renewer = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            fence.extend(Instant::now() + Duration::from_secs(1));
        }
    });
    assert_eq!(slow.run(CancellationToken::new()).await, 0);
    assert_eq!(*finished.lock().unwrap(), 1);
    renewer.abort();
}

/// A sink with lanes that cannot deliver key `poison` (its connection is
/// closed before an answer, every time) and delivers other keys at once.
struct Poison;

#[async_trait::async_trait]
impl Sink for Poison {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        if event.key.as_deref() == Some(b"poison") {
            return Err(SinkError::disconnected("closed before an answer"));
        }
        Ok(())
    }

    fn concurrency(&self) -> skor_sink_api::Concurrency {
        skor_sink_api::Concurrency::Lanes
    }
}

#[tokio::test(start_paused = true)]
async fn max_outage_ms_bounds_an_event_that_only_ever_finds_the_sink_unreachable() {
    let delivery = DeliveryConfig {
        max_outage_ms: Some(1_000),
        ..DeliveryConfig::default()
    };
    let (queue, worker) = worker(0, "test", Box::new(Poison), &delivery, Arc::default());
    let stats = worker.stats();
    let run = tokio::spawn(worker.run(CancellationToken::new()));
    queue.push(&keyed("poison", 0)).await;
    // Other keys keep being delivered meanwhile, each ending the sink-wide
    // outage; the poisoned event must still give up after its own limit
    // and its retries (1 s + 1.5 s).
    for n in 1..=40 {
        queue.push(&keyed(&format!("key{n}"), n)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats.failed.get(), 1, "given up on while others flowed");
    assert_eq!(stats.retried.get(), 5);
    drop(queue);
    assert_eq!(run.await.unwrap(), 0);
    assert_eq!(stats.delivered.get(), 40);
}

/// A pipelined sink whose first `lost` confirmations fail as a lost
/// connection would fail them, and which delivers everything after.
struct LosesItsWindow {
    lost: usize,
    calls: Arc<Mutex<Vec<Instant>>>,
}

#[async_trait::async_trait]
impl Sink for LosesItsWindow {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.submit(event).await?.await
    }

    async fn submit(&self, _event: &Event) -> Result<Confirmation, SinkError> {
        let mut calls = self.calls.lock().unwrap();
        calls.push(Instant::now());
        let answer = if calls.len() <= self.lost {
            Err(SinkError::disconnected("connection reset"))
        } else {
            Ok(())
        };
        Ok(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            answer
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn a_window_lost_with_its_connection_is_sent_again_at_once_after_the_first_retry() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let sink = LosesItsWindow {
        lost: 5,
        calls: Arc::clone(&calls),
    };
    let delivery = DeliveryConfig {
        max_in_flight: Some(5),
        ..DeliveryConfig::default()
    };
    let (queue, worker) = worker(0, "test", Box::new(sink), &delivery, Arc::default());
    let stats = worker.stats();
    for _ in 0..5 {
        queue.push(&event()).await;
    }
    drop(queue);
    let started = Instant::now();
    assert_eq!(worker.run(CancellationToken::new()).await, 0);
    let ms: Vec<u128> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|t| (*t - started).as_millis())
        .collect();
    // The five handed over at once and lost; the first waits out the
    // outage's first delay (100 ms) and gets through; the other four
    // follow it, one confirmation (1 ms) apart, instead of waiting 100 ms
    // each.
    assert_eq!(ms, vec![0, 0, 0, 0, 0, 101, 102, 103, 104, 105]);
    assert_eq!(
        (
            stats.delivered.get(),
            stats.retried.get(),
            stats.outage_waits.get()
        ),
        (5, 0, 1)
    );
}
