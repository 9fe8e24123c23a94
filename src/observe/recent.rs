//! The last errors skor met (failed deliveries, lost PostgreSQL
//! connections), kept in a short ring for the status page: what a user
//! would otherwise dig out of the log.

use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many errors the ring keeps.
pub const KEPT: usize = 20;

/// The longest message kept, in bytes: a sink's answer can be long.
const MESSAGE_BYTES: usize = 500;

/// One error, or a run of the same one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecentError {
    /// When it last happened, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Where: `sink NAME` or `postgres CONNECTION`.
    pub origin: String,
    /// What the log line said.
    pub message: String,
    /// Times it happened in a row (a sink retrying the same failure).
    pub count: u64,
}

/// The last [`KEPT`] errors, newest last. Only failures take its lock: a
/// delivery that succeeds never touches it.
#[derive(Debug, Default)]
pub struct RecentErrors {
    ring: Mutex<VecDeque<RecentError>>,
}

impl RecentErrors {
    /// Records an error of `origin`; the same message again from the same
    /// origin adds to the newest entry instead of pushing older ones out.
    pub fn record(&self, origin: impl Display, message: impl Display) {
        let origin = origin.to_string();
        let message =
            crate::observe::logging::truncate(&message.to_string(), MESSAGE_BYTES).into_owned();
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = ring
            .back_mut()
            .filter(|l| l.origin == origin && l.message == message)
        {
            last.count += 1;
            last.at_unix_ms = at_unix_ms;
            return;
        }
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(RecentError {
            at_unix_ms,
            origin,
            message,
            count: 1,
        });
    }

    /// The errors kept, oldest first.
    pub fn list(&self) -> Vec<RecentError> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_errors_and_folds_repeats() {
        let recent = RecentErrors::default();
        recent.record("sink hook", "HTTP 503");
        recent.record("sink hook", "HTTP 503");
        recent.record("postgres listener", "connection refused");
        let list = recent.list();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].origin.as_str(), list[0].count), ("sink hook", 2));
        assert_eq!(list[1].message, "connection refused");
        for n in 0..KEPT + 5 {
            recent.record("sink hook", format!("failure {n}"));
        }
        let list = recent.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].message, "failure 5");
        assert_eq!(list[KEPT - 1].message, format!("failure {}", KEPT + 4));
        recent.record("sink hook", "x".repeat(2000));
        assert!(recent.list()[KEPT - 1].message.len() < 600);
    }
}
