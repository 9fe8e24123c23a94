//! The shedding flag notify mode's listener and its sink queues share:
//! while it is on, an event that finds its sink's queue full is dropped
//! rather than waited for (see `capture::notify::shed`, which sets it).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// Whether the listener sheds load now, shared by its sink queues and the
/// watch on PostgreSQL's notification queue.
#[derive(Debug)]
pub struct Shedding {
    on: watch::Sender<bool>,
    /// Events dropped while shedding, so the watch can tell when the sinks
    /// take every event again.
    shed: AtomicU64,
    /// 1 while shedding, exported as `skor_listener_shedding`.
    gauge: Gauge,
}

impl Default for Shedding {
    fn default() -> Self {
        Self::new(Gauge::default())
    }
}

impl Shedding {
    /// Not shedding yet; `gauge` follows the state.
    pub fn new(gauge: Gauge) -> Self {
        Self {
            on: watch::Sender::new(false),
            shed: AtomicU64::new(0),
            gauge,
        }
    }

    /// Whether events that find a full queue are dropped now.
    pub fn is_on(&self) -> bool {
        *self.on.borrow()
    }

    /// Starts (`true`) or stops shedding; a listener waiting for room
    /// stops waiting when it starts.
    pub fn set(&self, on: bool) {
        self.gauge.set(i64::from(on));
        self.on.send_replace(on);
    }

    /// Counts an event dropped because of shedding.
    pub fn count(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Events dropped because of shedding so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Resolves once shedding is on; never while it is off.
    pub async fn started(&self) {
        let mut on = self.on.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = on.wait_for(|on| *on).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiting_listener_hears_that_shedding_started() {
        let shedding = Arc::new(Shedding::default());
        let waiting = tokio::spawn({
            let shedding = Arc::clone(&shedding);
            async move { shedding.started().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        shedding.set(true);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(shedding.gauge.get(), 1);
    }
}
