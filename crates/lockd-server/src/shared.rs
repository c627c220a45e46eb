//! The state all connections share: the lock table behind a short-held mutex (never held
//! across an `.await`), the senders of queued requests, the clock and the counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lockd_core::{
    Command, Config, ConnId, Counters, Event, LockTable, Millis, Outcome, SessionId, WaitId,
    Wakeup, Woken,
};
use lockd_proto::legacy::Signer;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::clock::Clock;
use crate::config::ServerConfig;

pub(crate) struct Core {
    pub table: LockTable,
    /// Where to send how a queued request ended: its fencing token, or a refusal.
    pub waits: HashMap<WaitId, oneshot::Sender<Woken>>,
    /// The receiving ends of `waits` made when a local request was queued, until its
    /// connection takes it (at once on a standalone server; once the cluster's answer
    /// reaches the connection, which may be after later entries granted it).
    pub parked: HashMap<WaitId, oneshot::Receiver<Woken>>,
    wakeups: Vec<Wakeup>,
    clustered: bool,
    /// Connections subscribed to their sessions' events (EVENTS ON).
    subscribers: HashMap<ConnId, Subscriber>,
    events: Vec<Event>,
    /// Events pushed to subscribers' queues, and dropped because a queue was full.
    pub events_queued: u64,
    pub events_dropped: u64,
}

/// Most events waiting to be pushed to one connection (about 100 bytes each, so some
/// 100 KiB): a client that does not read its pushes cannot grow the server past it.
/// Events past it are dropped and counted; the connection is told how many with its next
/// push (`overflow`), so a client knows it may have missed a `lost`.
pub(crate) const MAX_QUEUED_EVENTS: usize = 1024;

struct Subscriber {
    tx: mpsc::Sender<Event>,
    dropped: std::sync::Arc<AtomicU64>,
}

/// A subscribed connection's end of its events.
pub(crate) struct EventsRx {
    pub rx: mpsc::Receiver<Event>,
    /// Events dropped since the connection last said so.
    pub dropped: std::sync::Arc<AtomicU64>,
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
    /// The most reply bytes one connection has had waiting to be sent (recorded only past
    /// [`PEAK_OUTPUT_FLOOR`], so the hot path of small replies never touches it).
    pub peak_output: AtomicU64,
}

/// Output buffers below this size are not recorded in `peak_output`.
pub(crate) const PEAK_OUTPUT_FLOOR: usize = 16 * 1024;

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
    /// A node of a cluster: commands are committed through it (see `backend`).
    pub clustered: bool,
    pub(crate) cluster: std::sync::RwLock<Option<std::sync::Arc<lockd_raft::Cluster<Shared>>>>,
    /// In a cluster: cancelled when the cluster declared this node down, which ends every
    /// client connection made before (their sessions were let go); then replaced.
    pub(crate) cut: Mutex<Option<tokio_util::sync::CancellationToken>>,
    /// In a cluster: tokens start at least here (above a standalone run's in the same
    /// data directory).
    pub(crate) cluster_token_floor: u64,
    /// In a cluster: closed connections whose `Disconnect` is not committed yet.
    pub(crate) closed: Mutex<Vec<ConnId>>,
    pub(crate) closed_notify: Notify,
    /// In a cluster: the open connections that have sent the table a command, so that
    /// only theirs need a `Disconnect` entry when they close (a probe that only ran
    /// `PING` or `CLUSTER STATUS` costs the log nothing). 8 bytes and a hash slot each.
    pub(crate) touched: Mutex<std::collections::HashSet<ConnId>>,
    /// The status page's charts (sampled only where the admin HTTP server runs).
    pub(crate) history: Mutex<crate::history::History>,
    /// In a cluster: why this node's Raft stopped on its own, once it has (the server
    /// then stops, see `Server::run`).
    pub(crate) failure: Mutex<Option<String>>,
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
    /// The most reply bytes one connection has had waiting (0 if never past 16 KiB).
    pub peak_output: u64,
    pub sessions: usize,
    pub dead_sessions: usize,
    pub locks_held: u64,
    pub locks_sh: u64,
    pub keys: usize,
    pub waiters: usize,
    pub leases: usize,
    /// Sessions' holds of semaphore permits (each also one of `locks_held`).
    pub semaphore_holds: u64,
    /// Events queued for subscribers, and dropped (a subscriber's queue was full).
    pub events_queued: u64,
    pub events_dropped: u64,
    pub table: Counters,
    /// The table's bound on locks held (in a cluster, the cluster's setting).
    pub max_locks: u64,
    pub max_clients: usize,
}

impl Shared {
    pub fn new(config: ServerConfig, clock: Clock) -> Shared {
        let clustered = config.cluster.is_some();
        // A cluster node's connection ids carry its node id (see `lockd_core::conn_node`).
        let node_bits = config.cluster.as_ref().map_or(0, |c| c.node_id << 48);
        let table = LockTable::new(Config {
            max_locks: config.max_locks,
            grace_ms: config.lock_timeout.as_millis() as Millis,
            max_waiters: config.max_waiters,
            max_waiters_per_key: config.max_waiters_per_key,
            fault: config.fault,
            ..Config::default()
        });
        Shared {
            core: Mutex::new(Core {
                table,
                waits: HashMap::new(),
                parked: HashMap::new(),
                wakeups: Vec::new(),
                clustered: config.cluster.is_some(),
                subscribers: HashMap::new(),
                events: Vec::new(),
                events_queued: 0,
                events_dropped: 0,
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
            next_conn: AtomicU64::new(1 | node_bits),
            activity: Default::default(),
            clustered,
            cluster: Default::default(),
            cut: Default::default(),
            cluster_token_floor: 0,
            closed: Mutex::new(Vec::new()),
            touched: Mutex::default(),
            failure: Mutex::default(),
            closed_notify: Notify::new(),
            history: Mutex::new(crate::history::History::new()),
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
    #[inline]
    pub fn with_at<R>(&self, now: Millis, f: impl FnOnce(&mut Core, Millis) -> R) -> R {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        // A cluster's table expires sessions only by log entries, at the leader's time.
        if !self.clustered && core.table.next_expiry().is_some_and(|at| at <= now) {
            core.apply(&Command::Expire, now);
        }
        // A cluster's times are the leader's (see `lockd_raft::node`).
        let now = if self.clustered {
            core.table.last_now()
        } else {
            now
        };
        let due = core.table.next_expiry();
        let r = f(&mut core, now);
        // A lease granted or extended may be due before what the expiry timer sleeps
        // for (dead sessions wake it themselves, but leases come with any request).
        let sooner = match (core.table.next_expiry(), due) {
            (Some(a), Some(b)) => a < b,
            (a, b) => a.is_some() && b.is_none(),
        };
        let mut expired = Vec::new();
        core.table.take_expired(&mut expired);
        // A grant from a queue that still has waiters is likely followed by another: the
        // new holder's release hands the lock on again. Only then is busy polling worth it.
        let handed_on = core.deliver_wakeups() && core.table.waiter_count() > 0;
        if self.reserving
            && core.table.next_token() + crate::tokens::RESERVE / 2 > core.table.token_limit()
        {
            self.tokens_low.notify_one();
        }
        drop(core);
        if sooner {
            self.expiry_changed.notify_one();
        }
        if handed_on {
            self.activity.handoff();
        }
        log_expired(&expired);
        r
    }

    /// Records an authentication failure from `peer`: counted, logged (rate-limited).
    /// Returns whether `peer` is past the failure limit, so that the caller may make the
    /// failing connection pay (close it); correct requests from `peer` are never refused.
    pub fn auth_failed(&self, peer: std::net::IpAddr, protocol: &'static str) -> bool {
        self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let f = self.auth_limit.failure(peer, now);
        if f.blocked {
            tracing::warn!(%peer, protocol, "too many authentication failures: this address's failing connections are closed for {} s", crate::auth_limit::BLOCK_MS / 1000);
        } else if f.log {
            tracing::warn!(%peer, protocol, earlier_unlogged = f.unlogged, "authentication failed");
        }
        f.blocked || self.auth_limit.blocked(peer, now)
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
            peak_output: c.peak_output.load(Ordering::Relaxed),
            sessions: t.session_count(),
            dead_sessions: t.dead_session_count(),
            locks_held: t.locks_held(),
            locks_sh: t.locks_by_mode().0,
            keys: t.key_count(),
            waiters: t.waiter_count(),
            leases: t.lease_count(),
            semaphore_holds: t.semaphore_holds(),
            events_queued: core.events_queued,
            events_dropped: core.events_dropped,
            table: t.counters().clone(),
            max_locks: t.config().max_locks,
            max_clients: self.config.max_clients,
        }
    }

    /// Runs `f` on the core (table and waits) as it is: no expiry, no wakeups delivered.
    pub(crate) fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut core);
        core.deliver_wakeups();
        r
    }

    /// Takes the wait of a local request that the cluster queued (see `Core::parked`).
    pub(crate) fn take_parked(&self, w: WaitId) -> Option<oneshot::Receiver<Woken>> {
        self.with_core(|core| core.parked.remove(&w))
    }

    /// Runs `f` on the table without expiring anything first: for read-only views.
    pub fn read<R>(&self, f: impl FnOnce(&lockd_core::LockTable, Millis) -> R) -> R {
        let now = self.clock.now();
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let now = if self.clustered {
            core.table.last_now()
        } else {
            now
        };
        f(&core.table, now)
    }

    /// Ends queued request `w` whose timeout passed (or that its client withdrew): `None`
    /// if it was still queued and is now withdrawn, or how it ended if it ended first. It
    /// may have been granted moments ago, by this very call: the expiry that `with_at`
    /// runs first can grant it, and that grant is still in the table's wakeups. They are
    /// delivered before the sender is dropped, so a grant is never lost and the client is
    /// told the truth: a token when it holds the lock, null when it does not.
    pub fn end_wait(&self, w: WaitId, mut rx: oneshot::Receiver<Woken>) -> Option<Woken> {
        self.with(|core, now| {
            if core.apply(&Command::TimeOut { wait: w }, now) == Outcome::Done(true) {
                core.waits.remove(&w);
                return None;
            }
            core.deliver_wakeups();
            core.waits.remove(&w);
            rx.try_recv().ok()
        })
    }

    /// Subscribes `conn` to the events of its sessions (replacing an earlier
    /// subscription).
    pub(crate) fn subscribe(&self, conn: ConnId) -> EventsRx {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_EVENTS);
        let dropped = std::sync::Arc::new(AtomicU64::new(0));
        let sub = Subscriber {
            tx,
            dropped: dropped.clone(),
        };
        self.with_core(|core| core.subscribers.insert(conn, sub));
        EventsRx { rx, dropped }
    }

    pub(crate) fn unsubscribe(&self, conn: ConnId) {
        self.with_core(|core| core.subscribers.remove(&conn));
    }

    /// The connection closed: its sessions die or are forgotten, its wait (if any) is
    /// withdrawn.
    pub fn disconnect(&self, conn: ConnId, wait: Option<WaitId>) {
        if self.clustered {
            self.with_core(|core| {
                core.subscribers.remove(&conn);
                if let Some(w) = wait {
                    core.waits.remove(&w);
                    core.parked.remove(&w);
                }
            });
            let touched = self
                .touched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&conn);
            if touched {
                self.disconnect_in_cluster(conn);
            }
            return;
        }
        self.with(|core, now| {
            core.subscribers.remove(&conn);
            if let Some(w) = wait {
                core.waits.remove(&w);
            }
            core.apply(&Command::Disconnect { conn }, now)
        });
        self.expiry_changed.notify_one();
    }
}

impl Core {
    /// Applies one command to the table (see `lockd_core::Command`): every change goes
    /// through here, on a standalone server and on every node of a cluster. A request of
    /// this server's own (`local`) that is queued gets its wait registered here, under
    /// the same lock, so that no later grant can miss it.
    #[inline]
    pub fn apply_from(&mut self, cmd: &Command, now: Millis, local: bool) -> Outcome {
        let o = self.table.apply(cmd, now);
        self.deliver_events();
        match &o {
            Outcome::Acquired(lockd_core::Acquired::Queued(w)) if local => {
                let (tx, rx) = oneshot::channel();
                self.waits.insert(*w, tx);
                self.parked.insert(*w, rx);
            }
            Outcome::Done(true) => {
                if let Command::TimeOut { wait } = cmd {
                    self.waits.remove(wait);
                    self.parked.remove(wait);
                }
            }
            _ => {}
        }
        // On a standalone server the closing connection removes its own wait; in a
        // cluster its wait may not have reached it yet.
        if self.clustered && matches!(cmd, Command::Disconnect { .. } | Command::NodeDown { .. }) {
            // Waits withdrawn by the table without an answer: nobody will collect them.
            let table = &self.table;
            self.waits.retain(|w, _| table.is_waiting(*w));
            self.parked.retain(|w, _| table.is_waiting(*w));
        }
        o
    }

    /// [`Core::apply_from`] for this server's own request.
    #[inline]
    pub fn apply(&mut self, cmd: &Command, now: Millis) -> Outcome {
        self.apply_from(cmd, now, true)
    }

    /// Queues the last command's events for the connections subscribed to them (in a
    /// cluster, every node makes the same events and pushes those of its own
    /// connections).
    fn deliver_events(&mut self) {
        self.table.take_events(&mut self.events);
        for e in self.events.drain(..) {
            let Some(sub) = self.subscribers.get(&e.conn) else {
                continue;
            };
            match sub.tx.try_send(e) {
                Ok(()) => self.events_queued += 1,
                Err(_) => {
                    sub.dropped.fetch_add(1, Ordering::Relaxed);
                    self.events_dropped += 1;
                }
            }
        }
    }

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
    use lockd_core::{Acquired, ConnId, Key, Mode, SessionId, Wait};
    use proptest::prelude::*;

    use super::*;

    fn s(c: u8) -> SessionId {
        SessionId([c; 32])
    }

    fn shared_with_grace(grace_ms: u64) -> (Shared, std::sync::Arc<crate::ManualClock>) {
        let clock = crate::ManualClock::new();
        let mut config = crate::ServerConfig::new("127.0.0.1", 0, "k");
        config.lock_timeout = std::time::Duration::from_millis(grace_ms);
        (Shared::new(config, Clock::Manual(clock.clone())), clock)
    }

    /// Queues an EX request of `id` on `keys` the way a native ACQUIRE does.
    fn queue(
        shared: &Shared,
        id: SessionId,
        mode: Mode,
        keys: &[Key],
    ) -> Result<(WaitId, oneshot::Receiver<Woken>), Acquired> {
        shared.with(
            |core, now| match core.table.acquire(id, mode, keys, Wait::Queue, now) {
                Acquired::Queued(w) => {
                    let (tx, rx) = oneshot::channel();
                    core.waits.insert(w, tx);
                    Ok((w, rx))
                }
                other => Err(other),
            },
        )
    }

    fn held(shared: &Shared, id: SessionId) -> usize {
        shared.read(|t, _| t.locks_of(&id).map_or(0, |l| l.len()))
    }

    /// `a` (on connection 1, grace 1 s) holds EX on `k`; `b` waits for it.
    fn a_holds_b_waits() -> (
        Shared,
        std::sync::Arc<crate::ManualClock>,
        WaitId,
        oneshot::Receiver<Woken>,
    ) {
        let (shared, clock) = shared_with_grace(1000);
        let k = [Key::new(b"k").unwrap()];
        shared.with(|core, now| {
            core.table.use_session(s(b'a'), ConnId(1));
            core.table.acquire(s(b'a'), Mode::Ex, &k, Wait::No, now);
            core.table.use_session(s(b'b'), ConnId(2));
        });
        let (w, rx) = queue(&shared, s(b'b'), Mode::Ex, &k).unwrap();
        (shared, clock, w, rx)
    }

    /// Issue 10, defect 3: the holder's grace and the waiter's timeout both passed before
    /// either was handled, and the timeout is handled first. The expiry it runs grants the
    /// waiter; the answer must be that token, not null.
    #[test]
    fn a_timeout_handled_after_the_holders_grace_ended_reports_the_grant() {
        let (shared, clock, w, rx) = a_holds_b_waits();
        shared.disconnect(ConnId(1), None);
        clock.advance(3000);
        let got = shared.end_wait(w, rx);
        assert!(matches!(got, Some(Woken::Granted(_))), "{got:?}");
        assert_eq!(held(&shared, s(b'b')), 1);
    }

    #[test]
    fn a_timeout_with_nothing_granted_withdraws_the_request() {
        let (shared, clock, w, rx) = a_holds_b_waits();
        clock.advance(3000);
        assert_eq!(shared.end_wait(w, rx), None);
        assert_eq!(held(&shared, s(b'b')), 0);
        assert_eq!(shared.read(|t, _| t.waiter_count()), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Session `s` lets go of what it holds, then asks for `keys` with a timeout.
        Acquire(u8, bool, Vec<u8>, u64),
        Release(u8),
        /// The connection of `s` closes (a pending wait is withdrawn); it reconnects
        /// (revives) at its next request.
        Disconnect(u8),
        Advance(u64),
        /// The expiry timer runs.
        Expire,
        /// Connections whose deadline passed handle their timeouts, in this rotation.
        Timeouts(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, any::<bool>(), proptest::collection::vec(0u8..3, 1..3), 1u64..3000)
                .prop_map(|(s, ex, k, t)| Op::Acquire(s, ex, k, t)),
            2 => (0u8..4).prop_map(Op::Release),
            1 => (0u8..4).prop_map(Op::Disconnect),
            3 => (1u64..2500).prop_map(Op::Advance),
            1 => Just(Op::Expire),
            2 => (0usize..4).prop_map(Op::Timeouts),
        ]
    }

    struct Pending {
        session: u8,
        wait: WaitId,
        rx: oneshot::Receiver<Woken>,
        deadline: u64,
    }

    /// A reply is the truth (issue 10): for any order of grants, releases, disconnects,
    /// expiries and timeouts, several deadlines passing in one step included, a wait that
    /// ends with a token holds its locks and one that ends with null holds nothing.
    fn check_replies(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let (shared, clock) = shared_with_grace(1500);
        let mut conn = [1u64, 2, 3, 4];
        let mut next_conn = 5;
        let mut pending: Vec<Pending> = Vec::new();
        let keys: Vec<Key> = (0..3)
            .map(|i| Key::new(&[b'k', b'0' + i]).unwrap())
            .collect();
        let check_answer = |id: SessionId, answer: Option<Woken>| -> Result<(), TestCaseError> {
            let h = held(&shared, id);
            match answer {
                Some(Woken::Granted(_)) => prop_assert!(h > 0, "granted, holds nothing"),
                Some(Woken::TooManyLocks) | Some(Woken::Revoked) | None => {
                    prop_assert_eq!(h, 0, "null, holds {}", h)
                }
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Acquire(x, ex, ks, timeout) => {
                    if pending.iter().any(|p| p.session == x) {
                        continue;
                    }
                    let id = s(b'a' + x);
                    let c = ConnId(conn[x as usize]);
                    let ks: Vec<Key> = ks.iter().map(|&i| keys[i as usize].clone()).collect();
                    let mode = if ex { Mode::Ex } else { Mode::Sh };
                    shared.with(|core, now| {
                        core.table.use_session(id, c);
                        core.table.release_all(id, now);
                        core.table.use_session(id, c);
                    });
                    if let Ok((wait, rx)) = queue(&shared, id, mode, &ks) {
                        let deadline = clock.now() + timeout;
                        pending.push(Pending {
                            session: x,
                            wait,
                            rx,
                            deadline,
                        });
                    }
                }
                Op::Release(x) => {
                    if !pending.iter().any(|p| p.session == x) {
                        let c = ConnId(conn[x as usize]);
                        shared.with(|core, now| {
                            core.table.use_session(s(b'a' + x), c);
                            core.table.release_all(s(b'a' + x), now)
                        });
                    }
                }
                Op::Disconnect(x) => {
                    let wait = pending.iter().position(|p| p.session == x);
                    let wait = wait.map(|i| pending.remove(i).wait);
                    shared.disconnect(ConnId(conn[x as usize]), wait);
                    conn[x as usize] = next_conn;
                    next_conn += 1;
                }
                Op::Advance(ms) => clock.advance(ms),
                Op::Expire => {
                    shared.with(|core, now| core.table.expire(now));
                }
                Op::Timeouts(rot) => {
                    let now = clock.now();
                    let n = pending.len();
                    for i in 0..n {
                        let i = (i + rot) % n;
                        if pending[i].deadline <= now {
                            let (w, rx) = (
                                pending[i].wait,
                                std::mem::replace(&mut pending[i].rx, oneshot::channel().1),
                            );
                            let answer = shared.end_wait(w, rx);
                            check_answer(s(b'a' + pending[i].session), answer)?;
                            pending[i].deadline = u64::MAX;
                        }
                    }
                    pending.retain(|p| p.deadline != u64::MAX);
                }
            }
            // Grants delivered meanwhile are answers too.
            let mut still = Vec::new();
            for mut p in pending.drain(..) {
                match p.rx.try_recv() {
                    Ok(answer) => check_answer(s(b'a' + p.session), Some(answer))?,
                    Err(_) => {
                        let st = shared.read(|t, _| t.session_state(&s(b'a' + p.session)));
                        prop_assert!(st.is_some_and(|st| st.waiting && st.locks == 0), "{:?}", st);
                        still.push(p);
                    }
                }
            }
            pending = still;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn every_wait_is_answered_with_the_truth(ops in proptest::collection::vec(op(), 1..60)) {
            check_replies(ops)?;
        }
    }

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
