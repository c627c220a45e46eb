//! The last minutes of the server's activity, for the status page's charts: a ring of
//! [`SAMPLES`] samples taken every [`INTERVAL`] (five minutes), each the table's cumulative
//! counters, the waiters at that moment, and the 99th percentile of the waits that ended
//! since the sample before. The page draws rates from the counters' differences, so the
//! chart's last point and `/metrics` count the same events.
//!
//! Bounded by construction: the ring never holds more than [`SAMPLES`] samples (about
//! 20 KB), and a wait costs one relaxed atomic add into [`WaitBuckets`]. The sampler runs
//! only where the admin HTTP server does (nothing else reads the ring).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const SAMPLES: usize = 300;

/// Bucket `i` counts waits of at most `2^i` ms; the last also takes anything longer.
/// Powers of two, as the Prometheus histogram's buckets are.
pub(crate) const BUCKETS: usize = 25;

/// Ended waits by length, since start (read as differences between samples).
pub(crate) struct WaitBuckets([AtomicU64; BUCKETS]);

impl WaitBuckets {
    pub fn new() -> WaitBuckets {
        WaitBuckets(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    pub fn observe(&self, waited_ms: u64) {
        // The smallest i with waited_ms <= 2^i.
        let i = if waited_ms <= 1 {
            0
        } else {
            (64 - (waited_ms - 1).leading_zeros()) as usize
        };
        self.0[i.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// One point of the charts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Sample {
    /// Milliseconds since the sampler started (a steady clock, not the wall's).
    pub t_ms: u64,
    pub grants: u64,
    pub conflicts: u64,
    pub timeouts: u64,
    pub deadlocks: u64,
    pub waiters: u64,
    pub locks_held: u64,
    /// The 99th percentile (a bucket's upper bound, in ms) of the waits that ended in the
    /// interval before this sample; `None` if none did.
    pub wait_p99_ms: Option<u64>,
}

/// What `/v1/history` returns.
#[derive(Serialize)]
pub(crate) struct HistoryJson {
    pub interval_ms: u64,
    pub samples: Vec<Sample>,
}

pub(crate) struct History {
    samples: VecDeque<Sample>,
    last_buckets: [u64; BUCKETS],
}

impl History {
    pub fn new() -> History {
        History {
            samples: VecDeque::with_capacity(SAMPLES),
            last_buckets: [0; BUCKETS],
        }
    }

    /// Adds a sample, the wait percentile taken from the buckets' growth since the last.
    fn push(&mut self, mut sample: Sample, buckets: [u64; BUCKETS]) {
        let mut delta = [0u64; BUCKETS];
        for (i, d) in delta.iter_mut().enumerate() {
            *d = buckets[i].saturating_sub(self.last_buckets[i]);
        }
        self.last_buckets = buckets;
        sample.wait_p99_ms = percentile(&delta, 99);
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn json(&self) -> HistoryJson {
        HistoryJson {
            interval_ms: INTERVAL.as_millis() as u64,
            samples: self.samples.iter().cloned().collect(),
        }
    }
}

/// The upper bound (ms) of the bucket holding the `pct`th percentile of `counts`.
fn percentile(counts: &[u64; BUCKETS], pct: u64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the percentile, rounded up: the 99th of 10 waits is the 10th.
    let rank = (total * pct).div_ceil(100).max(1);
    let mut seen = 0;
    for (i, &n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(1u64 << i);
        }
    }
    Some(1u64 << (BUCKETS - 1))
}

/// Takes a sample every [`INTERVAL`] until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = shared.snapshot();
        let sample = Sample {
            t_ms: start.elapsed().as_millis() as u64,
            grants: s.table.grants,
            conflicts: s.table.conflicts,
            timeouts: s.table.timeouts,
            deadlocks: s.table.deadlocks,
            waiters: s.waiters as u64,
            locks_held: s.locks_held,
            wait_p99_ms: None,
        };
        let buckets = shared.metrics.wait_buckets.read();
        shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sample, buckets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(grants: u64) -> Sample {
        Sample {
            t_ms: 0,
            grants,
            conflicts: 0,
            timeouts: 0,
            deadlocks: 0,
            waiters: 0,
            locks_held: 0,
            wait_p99_ms: None,
        }
    }

    #[test]
    fn waits_fall_in_power_of_two_buckets() {
        let b = WaitBuckets::new();
        for ms in [0, 1, 2, 3, 4, 5, 1000, u64::MAX] {
            b.observe(ms);
        }
        let r = b.read();
        // 0 and 1 ms in bucket 0 (<= 1), 2 in 1, 3 and 4 in 2, 5 in 3, 1000 in 10
        // (<= 1024), u64::MAX in the last.
        assert_eq!((r[0], r[1], r[2], r[3], r[10]), (2, 1, 2, 1, 1));
        assert_eq!(r[BUCKETS - 1], 1);
        assert_eq!(r.iter().sum::<u64>(), 8);
    }

    #[test]
    fn the_percentile_is_of_the_waits_since_the_last_sample() {
        let mut h = History::new();
        let b = WaitBuckets::new();
        h.push(sample(0), b.read());
        assert_eq!(h.samples[0].wait_p99_ms, None, "no wait ended");
        for _ in 0..99 {
            b.observe(3);
        }
        b.observe(900);
        h.push(sample(1), b.read());
        // 100 waits: the 99th is a 3 ms one (bucket <= 4 ms); one more slow wait makes it
        // the 1024 ms bucket.
        assert_eq!(h.samples[1].wait_p99_ms, Some(4));
        b.observe(900);
        h.push(sample(2), b.read());
        assert_eq!(
            h.samples[2].wait_p99_ms,
            Some(1024),
            "only the new wait counts"
        );
        h.push(sample(3), b.read());
        assert_eq!(h.samples[3].wait_p99_ms, None);
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_and_no_more() {
        let mut h = History::new();
        let b = WaitBuckets::new();
        for g in 0..(SAMPLES as u64 + 50) {
            h.push(sample(g), b.read());
        }
        let j = h.json();
        assert_eq!(j.samples.len(), SAMPLES);
        assert_eq!(j.samples[0].grants, 50);
        assert_eq!(j.samples[SAMPLES - 1].grants, SAMPLES as u64 + 49);
    }
}
