//! The one backoff schedule: how long to wait before attempt number `n`
//! again. A sink's retries, a sink's outage waits and the reconnect loops
//! to PostgreSQL all take their delays from here, so they grow, cap and
//! overflow the same way.
//!
//! A schedule is a base delay, a growth (linear: base × n; exponential:
//! base × 2ⁿ⁻¹) and a cap no delay exceeds. `delay(n)` is defined for every
//! `n` and never panics: past the cap (or past what a `Duration` holds) it
//! stays at the cap, so a loop that must never give up can keep asking.
//! Whether to try again at all, and how many times, is the caller's call.
//!
//! A reconnect loop (doubling from 100 ms up to the source's
//! `reconnect_max_backoff_ms`, for ever):
//!
//! ```
//! use std::time::Duration;
//! use skor::backoff::Schedule;
//!
//! let max_backoff = Duration::from_millis(10_000); // reconnect_max_backoff_ms
//! let schedule = Schedule::exponential(Duration::from_millis(100), max_backoff);
//! // for attempt in 1u64.. { ...; sleep(schedule.delay_u64(attempt)).await }
//! assert_eq!(schedule.delay_u64(1), Duration::from_millis(100));
//! assert_eq!(schedule.delay_u64(2), Duration::from_millis(200));
//! assert_eq!(schedule.delay_u64(8), Duration::from_millis(10_000));
//! assert_eq!(schedule.delay_u64(u64::MAX), Duration::from_millis(10_000));
//!
//! // Or, where no attempt number is kept, an endless iterator:
//! let mut waits = schedule.delays();
//! assert_eq!(waits.next(), Some(Duration::from_millis(100)));
//! ```
//!
//! A schedule with a limit on attempts wraps this one (see
//! `retry::RetryPolicy::delay`), rather than adding a limit here.

use std::time::Duration;

/// How the delay grows from one attempt to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// The base times the attempt number: 100, 200, 300 ms...
    Linear,
    /// The base doubled at each attempt: 100, 200, 400 ms...
    Exponential,
}

/// A base delay, how it grows, and the longest delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The delay before the first repeat (`n = 1`).
    pub base: Duration,
    /// How it grows with `n`.
    pub growth: Growth,
    /// No delay is longer.
    pub cap: Duration,
}

impl Schedule {
    /// A schedule growing by `growth` from `base`, never past `cap`.
    pub const fn new(base: Duration, growth: Growth, cap: Duration) -> Self {
        Self { base, growth, cap }
    }

    /// A schedule doubling from `base` up to `cap`.
    pub const fn exponential(base: Duration, cap: Duration) -> Self {
        Self::new(base, Growth::Exponential, cap)
    }

    /// A schedule stepping by `base` up to `cap`.
    pub const fn linear(base: Duration, cap: Duration) -> Self {
        Self::new(base, Growth::Linear, cap)
    }

    /// The delay before attempt `n` again, counting from 1; `n = 0` is
    /// taken as 1, so an off-by-one in a caller waits rather than spins.
    pub fn delay(&self, n: u32) -> Duration {
        let n = n.max(1);
        let factor = match self.growth {
            Growth::Linear => n,
            // Past 2³¹ the shift would overflow; any cap is reached long
            // before, so saturating is exact.
            Growth::Exponential => 1u32.checked_shl(n - 1).unwrap_or(u32::MAX),
        };
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// `delay` for loops that count their attempts in a `u64`.
    pub fn delay_u64(&self, n: u64) -> Duration {
        self.delay(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The delays for attempts 1, 2, 3... without end.
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        (1..=u32::MAX)
            .map(move |n| self.delay(n))
            .chain(std::iter::repeat(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(schedule: Schedule, ns: &[u32]) -> Vec<u128> {
        ns.iter().map(|&n| schedule.delay(n).as_millis()).collect()
    }

    #[test]
    fn linear_steps_by_the_base_up_to_the_cap() {
        let s = Schedule::linear(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(ms(s, &[1, 2, 3, 4, 100]), vec![100, 200, 300, 350, 350]);
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let s = Schedule::exponential(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(
            ms(s, &[1, 2, 3, 7, 8, 9]),
            vec![100, 200, 400, 6_400, 10_000, 10_000]
        );
    }

    #[test]
    fn never_overflows_and_never_runs_out() {
        let cap = Duration::from_secs(5);
        for growth in [Growth::Linear, Growth::Exponential] {
            let s = Schedule::new(Duration::from_secs(u64::MAX / 2), growth, cap);
            assert_eq!(s.delay(u32::MAX), cap);
            assert_eq!(s.delay_u64(u64::MAX), cap);
            let s = Schedule::new(Duration::from_millis(1), growth, cap);
            assert_eq!(s.delay(u32::MAX), cap);
            assert_eq!(s.delays().nth(10_000), Some(cap));
        }
        let s = Schedule::exponential(Duration::from_millis(1), cap);
        assert_eq!(s.delay(33), cap, "past the shift's width");
    }

    #[test]
    fn attempt_zero_waits_like_the_first() {
        let s = Schedule::exponential(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(s.delay(0), s.delay(1));
    }

    #[test]
    fn the_iterator_follows_delay() {
        let s = Schedule::exponential(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = s.delays().take(6).collect();
        let by_n: Vec<Duration> = (1..=6).map(|n| s.delay(n)).collect();
        assert_eq!(waits, by_n);
    }
}
