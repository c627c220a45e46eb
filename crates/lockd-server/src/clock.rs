//! The server's clock. The lock table takes time as an argument; this is where the
//! server gets it. Tests use a [`ManualClock`] so that grace periods and timeouts are
//! exercised without waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lockd_core::Millis;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Milliseconds since the server started, from tokio's clock or from a manual one.
#[derive(Clone, Debug)]
pub enum Clock {
    Real(Instant),
    Manual(Arc<ManualClock>),
}

impl Clock {
    pub fn real() -> Clock {
        Clock::Real(Instant::now())
    }

    pub fn now(&self) -> Millis {
        self.at(Instant::now())
    }

    /// What [`Clock::now`] would have said at `at`, an instant the caller read anyway (to
    /// time a request), so a request costs one clock read instead of two.
    pub fn at(&self, at: Instant) -> Millis {
        match self {
            Clock::Real(start) => at.saturating_duration_since(*start).as_millis() as Millis,
            Clock::Manual(m) => m.now(),
        }
    }

    /// Waits until `now() >= at`.
    pub async fn sleep_until(&self, at: Millis) {
        match self {
            // A deadline past what an Instant can hold (a huge timeout) never comes.
            Clock::Real(start) => match start.checked_add(std::time::Duration::from_millis(at)) {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            },
            Clock::Manual(m) => loop {
                let notified = m.changed.notified();
                if m.now() >= at {
                    return;
                }
                notified.await;
            },
        }
    }
}

/// Times a batch of requests with one clock read per request: each request's time runs
/// from the end of the one before, and the batch's first read also gives the table's time.
pub(crate) struct Laps {
    last: Instant,
}

impl Laps {
    /// Starts a batch; returns the timer and the table's time for the batch.
    pub fn start(clock: &Clock) -> (Laps, Millis) {
        let last = Instant::now();
        (Laps { last }, clock.at(last))
    }

    /// Ends a request: its time goes to `seconds`.
    pub fn lap(&mut self, seconds: &prometheus_client::metrics::histogram::Histogram) {
        let done = Instant::now();
        seconds.observe((done - self.last).as_secs_f64());
        self.last = done;
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
    changed: Notify,
}

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock::default())
    }

    pub fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    pub fn advance(&self, ms: Millis) {
        self.now.fetch_add(ms, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn real_clock_sleeps_and_never_overflows() {
        let c = Clock::real();
        c.sleep_until(1500).await;
        assert!(c.now() >= 1500);
        assert_eq!(c.at(Instant::now()), c.now());
        let forever = tokio::time::timeout(
            std::time::Duration::from_secs(3600),
            c.sleep_until(u64::MAX),
        );
        assert!(
            forever.await.is_err(),
            "a deadline at u64::MAX ms never comes"
        );
    }
}
