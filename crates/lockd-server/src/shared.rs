//! The state all connections share: the lock table behind a short-held mutex (never held
//! across an `.await`), the senders of queued requests, the clock and the counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lockd_core::{Config, ConnId, Counters, LockTable, Millis, SessionId, WaitId, Wakeup, Woken};
use lockd_proto::legacy::Signer;
use std::collections::HashMap;
use tokio::sync::{oneshot, Notify};

use crate::clock::Clock;
use crate::config::ServerConfig;

pub(crate) struct Core {
    pub table: LockTable,
    /// Where to send how a queued request ended: its fencing token, or a refusal.
    pub waits: HashMap<WaitId, oneshot::Sender<Woken>>,
    wakeups: Vec<Wakeup>,
}

/// Server-level counters (the table keeps its own).
#[derive(Default)]
pub(crate) struct ServerCounters {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub refused_clients: AtomicU64,
    pub bad_requests: AtomicU64,
    pub legacy_requests: AtomicU64,
    pub native_requests: AtomicU64,
    pub auth_failures: AtomicU64,
    pub legacy_connections: AtomicU64,
    pub native_connections: AtomicU64,
}

pub(crate) struct Shared {
    core: Mutex<Core>,
    pub clock: Clock,
    pub config: ServerConfig,
    pub signer: Signer,
    /// Woken when a session dies, so the expiry timer can look at the new deadline.
    pub expiry_changed: Notify,
    /// Woken when less than half of the reserved fencing tokens are left.
    pub tokens_low: Notify,
    /// Whether tokens are reserved durably (a data directory is in use).
    reserving: bool,
    pub counters: ServerCounters,
    pub metrics: crate::metrics::Metrics,
    pub auth_limit: crate::auth_limit::AuthLimiter,
    pub tls: Option<crate::tls::Tls>,
    /// False until the listener runs, and again once shutdown starts.
    pub ready: std::sync::atomic::AtomicBool,
    next_conn: AtomicU64,
    /// Requests seen, for the busy poller (`--busy-poll-us`).
    pub activity: crate::busy_poll::Activity,
}

/// A point-in-time view of the server, for STATS, tests and tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub uptime_ms: Millis,
    pub connections: u64,
    pub connections_total: u64,
    pub refused_clients: u64,
    pub bad_requests: u64,
    pub legacy_requests: u64,
    pub native_requests: u64,
    pub auth_failures: u64,
    pub legacy_connections: u64,
    pub native_connections: u64,
    pub sessions: usize,
    pub dead_sessions: usize,
    pub locks_held: u64,
    pub locks_sh: u64,
    pub keys: usize,
    pub waiters: usize,
    pub table: Counters,
}

impl Shared {
    pub fn new(config: ServerConfig, clock: Clock) -> Shared {
        let table = LockTable::new(Config {
            max_locks: config.max_locks,
            grace_ms: config.lock_timeout.as_millis() as Millis,
            max_waiters: config.max_waiters,
            max_waiters_per_key: config.max_waiters_per_key,
        });
        Shared {
            core: Mutex::new(Core {
                table,
                waits: HashMap::new(),
                wakeups: Vec::new(),
            }),
            clock,
            signer: Signer::new(config.auth_key.as_bytes(), config.auth_scheme),
            config,
            expiry_changed: Notify::new(),
            tokens_low: Notify::new(),
            reserving: false,
            counters: ServerCounters::default(),
            metrics: crate::metrics::Metrics::new(),
            auth_limit: Default::default(),
            tls: None,
            ready: std::sync::atomic::AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            activity: Default::default(),
        }
    }

    /// Sets where tokens start and how far they may go before the next reservation.
    pub fn init_tokens(&mut self, first: u64, limit: Option<u64>) {
        let core = self.core.get_mut().unwrap_or_else(|p| p.into_inner());
        core.table.raise_next_token(first);
        if let Some(l) = limit {
            core.table.set_token_limit(l);
            self.reserving = true;
        }
    }

    pub fn new_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs `f` on the table at the current time. Dead sessions whose grace has passed are
    /// released first, so no command ever sees a lock that should be gone, even if the
    /// timer task is late; queued requests granted by `f` are handed to their waiters.
    pub fn with<R>(&self, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        self.with_at(self.clock.now(), f)
    }

    /// [`Shared::with`] at a time the caller read already: a connection reads the clock
    /// once per batch of requests rather than once per request.
    pub fn with_at<R>(&self, now: Millis, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let expired = if core.table.next_expiry().is_some_and(|at| at <= now) {
            core.table.expire(now)
        } else {
            Vec::new()
        };
        let r = f(&mut core, now);
        // A grant from a queue that still has waiters is likely followed by another: the
        // new holder's release hands the lock on again. Only then is busy polling worth it.
        let handed_on = core.deliver_wakeups() && core.table.waiter_count() > 0;
        if self.reserving
            && core.table.next_token() + crate::tokens::RESERVE / 2 > core.table.token_limit()
        {
            self.tokens_low.notify_one();
        }
        drop(core);
        if handed_on {
            self.activity.handoff();
        }
        log_expired(&expired);
        r
    }

    /// Records an authentication failure from `peer`: counted, logged (rate-limited).
    pub fn auth_failed(&self, peer: std::net::IpAddr, protocol: &'static str) {
        self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        let f = self.auth_limit.failure(peer, self.clock.now());
        if f.blocked {
            tracing::warn!(%peer, protocol, "too many authentication failures: refusing this address for {} s", crate::auth_limit::BLOCK_MS / 1000);
        } else if f.log {
            tracing::warn!(%peer, protocol, earlier_unlogged = f.unlogged, "authentication failed");
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.clock.now();
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let t = &core.table;
        let c = &self.counters;
        Snapshot {
            uptime_ms: now,
            connections: c.connections.load(Ordering::Relaxed),
            connections_total: c.connections_total.load(Ordering::Relaxed),
            refused_clients: c.refused_clients.load(Ordering::Relaxed),
            bad_requests: c.bad_requests.load(Ordering::Relaxed),
            legacy_requests: c.legacy_requests.load(Ordering::Relaxed),
            native_requests: c.native_requests.load(Ordering::Relaxed),
            auth_failures: c.auth_failures.load(Ordering::Relaxed),
            legacy_connections: c.legacy_connections.load(Ordering::Relaxed),
            native_connections: c.native_connections.load(Ordering::Relaxed),
            sessions: t.session_count(),
            dead_sessions: t.dead_session_count(),
            locks_held: t.locks_held(),
            locks_sh: t.locks_by_mode().0,
            keys: t.key_count(),
            waiters: t.waiter_count(),
            table: t.counters().clone(),
        }
    }

    /// Runs `f` on the table without expiring anything first: for read-only views.
    pub fn read<R>(&self, f: impl FnOnce(&lockd_core::LockTable, Millis) -> R) -> R {
        let now = self.clock.now();
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        f(&core.table, now)
    }

    /// The connection closed: its sessions die or are forgotten, its wait (if any) is
    /// withdrawn.
    pub fn disconnect(&self, conn: ConnId, wait: Option<WaitId>) {
        self.with(|core, now| {
            if let Some(w) = wait {
                core.waits.remove(&w);
            }
            core.table.disconnect(conn, now)
        });
        self.expiry_changed.notify_one();
    }
}

impl Core {
    /// Hands granted queued requests to their waiters; true if there were any.
    fn deliver_wakeups(&mut self) -> bool {
        self.table.take_wakeups(&mut self.wakeups);
        let any = !self.wakeups.is_empty();
        for w in self.wakeups.drain(..) {
            if let Some(tx) = self.waits.remove(&w.wait) {
                // A waiter that is gone had its wait cancelled under this same lock, so a
                // failed send cannot strand a grant; ignore it.
                let _ = tx.send(w.outcome);
            }
        }
        any
    }
}

pub(crate) fn log_expired(expired: &[(SessionId, u32)]) {
    for (id, n) in expired {
        tracing::info!(session = ?id, locks = n, "dead session expired: its locks are released");
    }
}

#[cfg(test)]
mod tests {
    use lockd_core::{ConnId, Key, Mode, SessionId, Wait};

    use super::*;

    #[test]
    fn busy_polling_is_asked_for_only_while_a_queue_goes_on() {
        let shared = Shared::new(
            crate::ServerConfig::new("127.0.0.1", 0, "k"),
            Clock::Manual(crate::clock::ManualClock::new()),
        );
        shared.activity.enable();
        let k = [Key::new(b"k").unwrap()];
        let s = |c: u8| SessionId([c; 32]);
        shared.with(|core, now| {
            for (i, c) in [b'a', b'b', b'c'].into_iter().enumerate() {
                core.table.use_session(s(c), ConnId(i as u64));
                core.table.acquire(s(c), Mode::Ex, &k, Wait::Queue, now);
            }
        });
        assert!(!shared.activity.take_seen(), "nothing was handed on yet");
        // a lets go: b is granted, c still waits.
        shared.with(|core, now| core.table.release(s(b'a'), Mode::Ex, &k, now));
        assert!(shared.activity.take_seen(), "the queue goes on: poll");
        // b lets go: c is granted, and nobody is left waiting.
        shared.with(|core, now| core.table.release(s(b'b'), Mode::Ex, &k, now));
        assert!(
            !shared.activity.take_seen(),
            "the queue is empty: no window"
        );
    }
}
