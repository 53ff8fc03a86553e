//! The one retry policy of muster's own loops: reconnecting to a broker,
//! taking jobs again after an error, re-reading a snapshot, restarting the
//! event forwarder. Waits grow from 100 ms and double to at most 1 s, with
//! jitter (up to the wait again), so that a hundred instances that lost
//! the same broker do not all come back in the same millisecond.
//!
//! The waits come from `backon`; this type adds what every loop here needs
//! around them: a count of failures in a row, a reset on success, and the
//! rule for when a failure is worth a log line (the first, then each power
//! of two), so that a broker down for an hour writes a dozen lines, not
//! thousands.
//!
//! ```
//! use std::time::Duration;
//! use muster_core::retry::Backoff;
//!
//! let mut backoff = Backoff::new();
//! let first = backoff.failed();
//! assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
//! assert!(backoff.worth_logging());
//! for _ in 0..20 {
//!     assert!(backoff.failed() <= Duration::from_secs(2));
//! }
//! backoff.succeeded();
//! assert_eq!(backoff.failures(), 0);
//! ```

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Failures in a row and the wait before the next attempt.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    waits: ExponentialBackoff,
    failures: u32,
    max: Duration,
}

impl Backoff {
    /// The standard policy: 100 ms doubling to 1 s, jittered.
    pub fn new() -> Self {
        Self::between(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Waits from `min`, doubling to `max`, each with jitter of up to the
    /// wait itself.
    pub fn between(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times();
        Self {
            waits: builder.build(),
            builder,
            failures: 0,
            max,
        }
    }

    /// Counts a failure and returns how long to wait before trying again.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // The builder has no limit on times, so there is always a next
        // wait; the fallback only keeps this total.
        self.waits.next().unwrap_or(self.max)
    }

    /// Forgets the failures: the next one waits the shortest time again.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            self.failures = 0;
            self.waits = self.builder.build();
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// True on the first failure and each power of two after it.
    pub fn worth_logging(&self) -> bool {
        self.failures.is_power_of_two()
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_stay_bounded_and_reset() {
        let mut b = Backoff::between(Duration::from_millis(10), Duration::from_millis(80));
        let waits: Vec<Duration> = (0..12).map(|_| b.failed()).collect();
        assert!(waits[0] >= Duration::from_millis(10) && waits[0] <= Duration::from_millis(20));
        assert!(
            waits.iter().all(|w| *w <= Duration::from_millis(160)),
            "{waits:?}"
        );
        assert!(waits[11] >= Duration::from_millis(80), "{waits:?}");
        assert_eq!(b.failures(), 12);
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert!(b.failed() <= Duration::from_millis(20));
    }

    #[test]
    fn logs_first_then_powers_of_two() {
        let mut b = Backoff::new();
        let logged: Vec<u32> = (1..=17)
            .filter(|_| {
                b.failed();
                b.worth_logging()
            })
            .collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
    }
}
