//! `--busy-poll-us`: after a request, keep the thread polling for the next one for a
//! while instead of going to sleep, trading CPU for wake-up latency.
//!
//! A server thread that sleeps between requests pays the kernel's wake-up for each one;
//! on a virtual machine that is tens of microseconds, more than the work itself. When
//! clients hand a lock on in a chain (a hot key with a queue), every hand-off pays it.
//! While the window is open, a task yields in a loop: a yielded task makes the runtime
//! poll the kernel for I/O without blocking, then run it again, so the thread never
//! sleeps and a new request is seen at once. Off by default: it burns a core while
//! requests keep coming.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What connections tell the poller: that a request came, and to start when it sleeps.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    enabled: AtomicBool,
    seen: AtomicBool,
    asleep: AtomicBool,
    wake: Notify,
}

impl Activity {
    /// Called for every read that brought bytes: two relaxed loads when the poller is off
    /// or already spinning.
    #[inline]
    pub fn request(&self) {
        if !self.enabled.load(Relaxed) {
            return;
        }
        self.seen.store(true, Relaxed);
        if self.asleep.load(Relaxed) && self.asleep.swap(false, Relaxed) {
            self.wake.notify_one();
        }
    }
}

/// Polls for `window` after each request, until shutdown.
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
    async fn polls_after_a_request_then_sleeps_again() {
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
        assert!(!a.asleep.load(Relaxed), "after a request it polls");
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
        assert!(!a.seen.load(Relaxed));
    }
}
