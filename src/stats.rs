//! Counters of what happened to events, read at shutdown and by tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter that many tasks bump.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn incr(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the listener saw.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Notifications that were skor events (oversized ones included).
    pub received: Counter,
    /// Notifications skipped because they were not skor events.
    pub invalid: Counter,
    /// Events no route matched.
    pub unrouted: Counter,
    /// Oversized payloads that could not be fetched.
    pub lost: Counter,
    /// Times the connection was re-established.
    pub reconnects: Counter,
}

/// What one sink's worker did.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events the sink confirmed.
    pub delivered: Counter,
    /// Retries after a failed attempt.
    pub retried: Counter,
    /// Events given up on after a permanent error or the last retry.
    pub failed: Counter,
    /// Events not queued because the queue was full (`when_full = "drop"`).
    pub dropped: Counter,
}

/// What durable mode did with the event log.
#[derive(Debug, Default)]
pub struct DurableStats {
    /// Events claimed from the log.
    pub claimed: Counter,
    /// Events deleted (or marked delivered) after every sink confirmed.
    pub finished: Counter,
    /// Events moved to the dead letters.
    pub dead_lettered: Counter,
    /// Claimed events no route matched.
    pub unrouted: Counter,
    /// Times the event log connection was re-established.
    pub reconnects: Counter,
}
