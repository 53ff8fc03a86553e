//! Per-method statistics: counts, errors, last error, in flight, and a
//! lock-free latency histogram for p50/p99 (NATS service STATS vocabulary).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Buckets per power of two: about 19% resolution.
const SUB: u32 = 4;
/// Covers 1 µs to 2^40 µs.
const BUCKETS: usize = 40 * SUB as usize;

/// Live counters of one method (or subscription).
#[derive(Debug)]
pub(crate) struct MethodStats {
    skipped: AtomicU64,
    cancelled: AtomicU64,
    missed: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicI64,
    total_us: AtomicU64,
    last_error: Mutex<Option<String>>,
    histogram: Box<[AtomicU64]>,
}

impl Default for MethodStats {
    fn default() -> Self {
        Self {
            skipped: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            total_us: AtomicU64::new(0),
            last_error: Mutex::new(None),
            histogram: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    let log2 = 63 - us.leading_zeros();
    let frac = if log2 >= 2 {
        (us >> (log2 - 2)) & 3
    } else {
        (us << (2 - log2)) & 3
    };
    ((log2 * SUB) as usize + frac as usize).min(BUCKETS - 1)
}

fn bucket_upper_us(i: usize) -> u64 {
    let log2 = i as u32 / SUB;
    let frac = i as u64 % SUB as u64;
    let base = 1u64 << log2;
    base + (base * (frac + 1)) / SUB as u64
}

impl MethodStats {
    /// Scheduled fire times that did not run (overlap or misfire policy).
    pub(crate) fn skipped(&self, n: u64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
    }

    /// Events the bus dropped for this subscription (it fell behind).
    pub(crate) fn missed(&self, n: u64) {
        self.missed.fetch_add(n, Ordering::Relaxed);
    }

    /// A call stopped at its deadline, or not started because it had
    /// passed: the handler was dropped (it also ends as an error).
    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end(&self, elapsed: Duration, error: Option<&str>) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.histogram[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        if let Some(e) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_owned());
        }
    }

    fn quantile_us(&self, counts: &[u64], total: u64, q: f64) -> u64 {
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper_us(i);
            }
        }
        bucket_upper_us(BUCKETS - 1)
    }

    pub(crate) fn report(&self) -> MethodReport {
        let counts: Vec<u64> = self
            .histogram
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let requests = self.requests.load(Ordering::Relaxed);
        MethodReport {
            num_requests: requests,
            num_errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            average_processing_time_us: self
                .total_us
                .load(Ordering::Relaxed)
                .checked_div(requests)
                .unwrap_or(0),
            p50_us: self.quantile_us(&counts, total, 0.50),
            p99_us: self.quantile_us(&counts, total, 0.99),
            num_skipped: self.skipped.load(Ordering::Relaxed),
            num_missed: self.missed.load(Ordering::Relaxed),
            num_cancelled: self.cancelled.load(Ordering::Relaxed),
        }
    }
}

/// Statistics of one method, as `$stats` reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MethodReport {
    /// Calls finished.
    pub num_requests: u64,
    /// Calls that ended in an error reply.
    pub num_errors: u64,
    /// Calls running now.
    pub in_flight: u64,
    /// The most recent error message.
    pub last_error: Option<String>,
    /// Mean handler time, microseconds.
    pub average_processing_time_us: u64,
    /// Median handler time (bucket upper bound, ±19%), microseconds.
    pub p50_us: u64,
    /// 99th percentile handler time, microseconds.
    pub p99_us: u64,
    /// Scheduled jobs only: fire times that did not run (they came while
    /// the previous run was going, or were missed and the misfire policy
    /// let them go).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_skipped: u64,
    /// Subscriptions only: events published while this subscriber was too
    /// far behind, which the bus dropped for it (`docs/guarantees.md`,
    /// "slow subscriber").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_missed: u64,
    /// Calls whose handler was dropped at the caller's deadline, ended with
    /// an error at it, or was not started because it had passed (counted
    /// in `num_errors` too).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_cancelled: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What an instance answers to `$stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatsReport {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub instance: String,
    /// Seconds since the instance started.
    pub uptime_secs: u64,
    /// Per method; subscriptions appear as `event:<pattern>`.
    pub methods: BTreeMap<String, MethodReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover() {
        let mut last = 0;
        for us in [1, 2, 3, 5, 10, 100, 1_000, 50_000, 1_000_000] {
            let b = bucket_of(us);
            assert!(b >= last);
            assert!(bucket_upper_us(b) >= us, "{us} fits its bucket");
            last = b;
        }
    }

    #[test]
    fn percentiles() {
        let s = MethodStats::default();
        for _ in 0..99 {
            s.begin();
            s.end(Duration::from_micros(100), None);
        }
        s.begin();
        s.end(Duration::from_millis(50), Some("boom"));
        let r = s.report();
        assert_eq!(r.num_requests, 100);
        assert_eq!(r.num_errors, 1);
        assert_eq!(r.last_error.as_deref(), Some("boom"));
        assert!((100..=120).contains(&r.p50_us), "p50 {}", r.p50_us);
        assert!((100..=120).contains(&r.p99_us), "p99 {}", r.p99_us);
        assert_eq!(r.in_flight, 0);
    }
}
