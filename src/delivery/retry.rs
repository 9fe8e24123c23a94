//! How long to wait before each retry. Whether to retry is the sink's call
//! (`SinkError::is_retryable`); when and how often is this policy's. The
//! delays themselves come from `backoff::Schedule`, like every other wait
//! in skor.

use std::time::Duration;

use crate::backoff::{Growth, Schedule};
use crate::config::{Backoff, DeliveryConfig};

/// The retry schedule of one sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The delays between attempts: `backoff_ms`, grown as `backoff` says,
    /// up to `max_backoff_ms`.
    pub schedule: Schedule,
    /// How long an outage is waited out before attempts count; `None`
    /// waits without limit.
    pub max_outage: Option<Duration>,
}

impl RetryPolicy {
    /// The policy a sink's `[sink.NAME]` options describe.
    pub fn from_config(config: &DeliveryConfig) -> Self {
        let growth = match config.backoff {
            Backoff::Linear => Growth::Linear,
            Backoff::Exponential => Growth::Exponential,
        };
        Self {
            retries: config.retries,
            schedule: Schedule::new(
                Duration::from_millis(config.backoff_ms),
                growth,
                Duration::from_millis(config.max_backoff_ms),
            ),
            max_outage: config.max_outage_ms.map(Duration::from_millis),
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), or
    /// `None` when the policy allows no more.
    pub fn delay(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.retries {
            return None;
        }
        Some(self.schedule.delay(retry))
    }

    /// The wait before reconnection attempt `n` (from 1) to a broker: it
    /// doubles from the base delay up to the smaller of the policy's cap and
    /// five seconds, whatever `backoff` says, so a broker that comes back
    /// is found again quickly. Reconnecting never runs out.
    pub fn reconnect_delay(&self, n: u32) -> Duration {
        Schedule::exponential(
            self.schedule.base,
            self.schedule.cap.min(MAX_RECONNECT_DELAY),
        )
        .delay(n)
    }
}

/// The longest wait between two attempts to reach a broker that is down.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(policy: &RetryPolicy) -> Vec<u128> {
        (1..)
            .map_while(|n| policy.delay(n))
            .map(|d| d.as_millis())
            .collect()
    }

    #[test]
    fn default_is_five_linear_retries_in_steps_of_100_ms() {
        let policy = RetryPolicy::from_config(&DeliveryConfig::default());
        assert_eq!(schedule(&policy), vec![100, 200, 300, 400, 500]);
    }

    #[test]
    fn exponential_doubles_and_is_capped() {
        let policy = RetryPolicy {
            retries: 6,
            schedule: Schedule::exponential(
                Duration::from_millis(100),
                Duration::from_millis(1_000),
            ),
            max_outage: None,
        };
        assert_eq!(schedule(&policy), vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn reconnecting_doubles_up_to_five_seconds_and_never_stops() {
        let policy = RetryPolicy::from_config(&DeliveryConfig::default());
        let waits: Vec<u128> = [1, 2, 3, 6, 7, 100]
            .into_iter()
            .map(|n| policy.reconnect_delay(n).as_millis())
            .collect();
        assert_eq!(waits, vec![100, 200, 400, 3_200, 5_000, 5_000]);
    }

    #[test]
    fn zero_retries_means_one_attempt() {
        let policy = RetryPolicy {
            retries: 0,
            ..RetryPolicy::from_config(&DeliveryConfig::default())
        };
        assert!(schedule(&policy).is_empty());
    }
}
