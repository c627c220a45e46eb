//! `--busy-poll-us`: while a lock is being handed down a queue, keep the thread polling
//! for the next request instead of going to sleep, trading CPU for hand-off latency.
//!
//! A server thread that sleeps between requests pays the kernel's wake-up for each one;
//! on a virtual machine that is tens of microseconds, more than the work itself. When
//! clients hand a lock on in a chain (a hot key with a queue), every hand-off pays it: the
//! new holder's RELEASE arrives after the server has gone to sleep. So when a queued
//! request is granted and others still wait (the chain goes on), a window opens: a task
//! yields in a loop, and a yielded task makes the runtime poll the kernel for I/O without
//! blocking before running it again, so the thread does not sleep and the next request is
//! seen at once. Every request that arrives keeps the window open; it closes when none
//! came for the window's length. Traffic without queues never opens it, so an uncontended
//! server costs nothing more.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the server tells the poller: that a queued request was granted (opening the
/// window), and that requests keep coming (keeping it open).
#[derive(Debug, Default)]
pub(crate) struct Activity {
    enabled: AtomicBool,
    seen: AtomicBool,
    asleep: AtomicBool,
    wake: Notify,
}

impl Activity {
    /// Called for every read that brought bytes: at most two relaxed loads and a store.
    #[inline]
    pub fn request(&self) {
        if self.enabled.load(Relaxed) && !self.asleep.load(Relaxed) {
            self.seen.store(true, Relaxed);
        }
    }

    /// Called when queued requests were granted.
    pub fn handoff(&self) {
        if !self.enabled.load(Relaxed) {
            return;
        }
        self.seen.store(true, Relaxed);
        if self.asleep.load(Relaxed) && self.asleep.swap(false, Relaxed) {
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
impl Activity {
    pub(crate) fn enable(&self) {
        self.enabled.store(true, Relaxed);
    }

    /// Whether a hand-off or request was noted since the last call.
    pub(crate) fn take_seen(&self) -> bool {
        self.seen.swap(false, Relaxed)
    }
}

/// Polls for `window` after each hand-off and the requests that follow it, until shutdown.
pub(crate) async fn run(activity: &Activity, window: Duration, shutdown: CancellationToken) {
    activity.enabled.store(true, Relaxed);
    loop {
        activity.asleep.store(true, Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // A notification given before this wait started is kept, so none is lost.
            _ = activity.wake.notified() => {}
        }
        let mut until = tokio::time::Instant::now() + window;
        loop {
            tokio::task::yield_now().await;
            let now = tokio::time::Instant::now();
            if activity.seen.swap(false, Relaxed) {
                until = now + window;
            } else if now >= until || shutdown.is_cancelled() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_after_a_handoff_then_sleeps_again() {
        let a = Arc::new(Activity::default());
        let stop = CancellationToken::new();
        let poller = {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move { run(&a, Duration::from_micros(500), stop).await })
        };
        settle().await;
        assert!(a.asleep.load(Relaxed), "idle: the poller must sleep");
        a.request();
        settle().await;
        assert!(
            a.asleep.load(Relaxed),
            "a request without a queue opens no window"
        );
        a.handoff();
        settle().await;
        assert!(!a.asleep.load(Relaxed), "after a hand-off it polls");
        // A request inside the window keeps it open.
        tokio::time::advance(Duration::from_micros(400)).await;
        a.request();
        settle().await;
        tokio::time::advance(Duration::from_micros(400)).await;
        settle().await;
        assert!(
            !a.asleep.load(Relaxed),
            "the window restarts at each request"
        );
        tokio::time::advance(Duration::from_micros(200)).await;
        settle().await;
        assert!(a.asleep.load(Relaxed), "the window passed: asleep again");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), poller)
            .await
            .expect("the poller stops on shutdown")
            .unwrap();
    }

    #[test]
    fn requests_cost_nothing_while_off() {
        let a = Activity::default();
        a.request();
        a.handoff();
        assert!(!a.seen.load(Relaxed));
    }
}
