//! The counter every statistic is made of: tasks bump it, the summary
//! lines, tests and the Prometheus registry read the same total.

use prometheus_client::metrics::counter;

/// A counter that many tasks bump; a clone counts into the same total.
#[derive(Clone, Debug, Default)]
pub struct Counter(counter::Counter);

impl Counter {
    /// Adds one.
    pub fn incr(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl From<counter::Counter> for Counter {
    fn from(counter: counter::Counter) -> Self {
        Self(counter)
    }
}
