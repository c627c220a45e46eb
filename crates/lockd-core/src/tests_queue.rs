//! Queues: FIFO hand-off, fairness, all-or-nothing waits, deadlock detection, timeouts;
//! and a property test of random interleavings (time passing, dead sessions keeping their
//! locks through their grace with waiters on their keys, revival from a new connection,
//! requests from a second connection, up to 4 keys, tight lock and waiter limits) in which
//! a model decides every ACQUIRE's answer (granted, queued, refused for a deadlock, for a
//! limit, or a try-lock refused) and the table must give exactly that one, and which checks
//! after every step that no two conflicting locks are held, no waiter that could be
//! granted is left waiting, no grant overtook a conflicting earlier request, and the
//! wait-for graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::tests::{key, sid};
use crate::*;

fn t() -> LockTable {
    LockTable::new(Config {
        max_locks: 1000,
        grace_ms: 100,
        ..Config::default()
    })
}

fn acq(t: &mut LockTable, s: u8, mode: Mode, keys: &[u32], wait: Wait) -> Acquired {
    t.use_session(sid(s), ConnId(s as u64));
    let keys: Vec<Key> = keys.iter().map(|&k| key(k)).collect();
    t.acquire(sid(s), mode, &keys, wait, 0)
}

fn wakeups(t: &mut LockTable) -> Vec<WaitId> {
    let mut out = Vec::new();
    t.take_wakeups(&mut out);
    out.into_iter().map(|w| w.wait).collect()
}

fn queued(a: Acquired) -> WaitId {
    match a {
        Acquired::Queued(w) => w,
        other => panic!("expected Queued, got {other:?}"),
    }
}

#[test]
fn fifo_hand_off() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Ex, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    let b = queued(acq(&mut t, 1, Mode::Ex, &[1], Wait::Queue));
    let c = queued(acq(&mut t, 2, Mode::Ex, &[1], Wait::Queue));
    t.release(sid(0), Mode::Ex, &[key(1)], 0);
    assert_eq!(wakeups(&mut t), vec![b]);
    assert!(t.holds(&sid(1), key(1).as_bytes(), Mode::Ex));
    t.release(sid(1), Mode::Ex, &[key(1)], 0);
    assert_eq!(wakeups(&mut t), vec![c]);
}

#[test]
fn waiting_ex_is_not_starved_by_shared_requests() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Sh, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    let b = queued(acq(&mut t, 1, Mode::Ex, &[1], Wait::Queue));
    // A try-lock does not overtake the queued EX, though it is compatible with the holder.
    assert_eq!(acq(&mut t, 2, Mode::Sh, &[1], Wait::No), Acquired::Conflict);
    let c = queued(acq(&mut t, 2, Mode::Sh, &[1], Wait::Queue));
    let d = queued(acq(&mut t, 3, Mode::Sh, &[1], Wait::Queue));
    t.release(sid(0), Mode::Sh, &[key(1)], 0);
    assert_eq!(wakeups(&mut t), vec![b]);
    t.release(sid(1), Mode::Ex, &[key(1)], 0);
    assert_eq!(wakeups(&mut t), vec![c, d], "both SH granted together");
}

#[test]
fn multi_key_wait_is_all_or_nothing_and_holds_its_place() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Ex, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    let b = queued(acq(&mut t, 1, Mode::Ex, &[1, 2], Wait::Queue));
    assert!(
        !t.holds(&sid(1), key(2).as_bytes(), Mode::Ex),
        "nothing held while waiting"
    );
    assert_eq!(t.inspect(key(2).as_bytes(), 0).waiters.len(), 1);
    assert_eq!(
        acq(&mut t, 2, Mode::Ex, &[2], Wait::No),
        Acquired::Conflict,
        "key 2 is promised"
    );
    t.release_all(sid(0), 0);
    assert_eq!(wakeups(&mut t), vec![b]);
    assert!(
        t.holds(&sid(1), key(1).as_bytes(), Mode::Ex)
            && t.holds(&sid(1), key(2).as_bytes(), Mode::Ex)
    );
}

#[test]
fn crossed_waits_are_a_deadlock() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Ex, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    assert!(matches!(
        acq(&mut t, 1, Mode::Ex, &[2], Wait::No),
        Acquired::Granted(_)
    ));
    queued(acq(&mut t, 0, Mode::Ex, &[2], Wait::Queue));
    assert_eq!(
        acq(&mut t, 1, Mode::Ex, &[1], Wait::Queue),
        Acquired::Deadlock(sid(0))
    );
    assert_eq!(
        t.inspect(key(1).as_bytes(), 0).waiters.len(),
        0,
        "nothing queued"
    );
    assert_eq!(t.counters().deadlocks, 1);
}

#[test]
fn two_sh_holders_upgrading_are_a_deadlock() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Sh, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    assert!(matches!(
        acq(&mut t, 1, Mode::Sh, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    let a = queued(acq(&mut t, 0, Mode::Ex, &[1], Wait::Queue));
    assert_eq!(
        acq(&mut t, 1, Mode::Ex, &[1], Wait::Queue),
        Acquired::Deadlock(sid(0))
    );
    // B gives up its SH: A's upgrade goes through.
    t.release(sid(1), Mode::Sh, &[key(1)], 0);
    assert_eq!(wakeups(&mut t), vec![a]);
    assert!(t.holds(&sid(0), key(1).as_bytes(), Mode::Ex));
}

#[test]
fn a_holder_is_not_queued_behind_waiters_on_its_own_lock() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Sh, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    let b = queued(acq(&mut t, 1, Mode::Ex, &[1], Wait::Queue));
    assert!(matches!(
        acq(&mut t, 0, Mode::Sh, &[1], Wait::Queue),
        Acquired::Granted(_)
    ));
    assert!(matches!(
        acq(&mut t, 0, Mode::Sh, &[1, 2], Wait::No),
        Acquired::Granted(_)
    ));
    assert_eq!(
        t.inspect(key(1).as_bytes(), 0).waiters.len(),
        1,
        "B keeps waiting"
    );
    t.release_all(sid(0), 0);
    assert_eq!(wakeups(&mut t), vec![b]);
}

#[test]
fn upgrade_waits_ahead_of_earlier_waiters() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Sh, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    assert!(matches!(
        acq(&mut t, 1, Mode::Sh, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    let c = queued(acq(&mut t, 2, Mode::Ex, &[1], Wait::Queue));
    let a = queued(acq(&mut t, 0, Mode::Ex, &[1], Wait::Queue));
    let q = t.inspect(key(1).as_bytes(), 0).waiters;
    assert_eq!(
        q[0].session,
        sid(0),
        "the holder's upgrade is first in line"
    );
    t.release(sid(1), Mode::Sh, &[key(1)], 0);
    assert_eq!(wakeups(&mut t), vec![a]);
    t.release_all(sid(0), 0);
    assert_eq!(wakeups(&mut t), vec![c]);
}

#[test]
fn timeout_withdraws_and_lets_later_waiters_through() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Sh, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    let b = queued(acq(&mut t, 1, Mode::Ex, &[1, 2], Wait::Queue));
    let c = queued(acq(&mut t, 2, Mode::Sh, &[1], Wait::Queue));
    assert!(t.time_out(b, 50));
    assert_eq!(wakeups(&mut t), vec![c]);
    assert!(!t.holds(&sid(1), key(2).as_bytes(), Mode::Ex));
    assert_eq!(t.key_count(), 1, "key 2's entry is gone with the waiter");
    assert!(!t.time_out(b, 60), "already withdrawn");
    assert_eq!(t.counters().timeouts, 1);
}

#[test]
fn disconnect_cancels_the_wait() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Ex, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    queued(acq(&mut t, 1, Mode::Ex, &[1], Wait::Queue));
    t.disconnect(ConnId(1), 0);
    assert_eq!(t.waiter_count(), 0);
    assert_eq!(t.session_state(&sid(1)), None, "held nothing: forgotten");
    t.release_all(sid(0), 0);
    assert!(wakeups(&mut t).is_empty());
}

#[test]
fn a_queued_request_never_takes_the_table_past_max_locks() {
    let mut t = LockTable::new(Config {
        max_locks: 3,
        ..Config::default()
    });
    assert!(matches!(
        acq(&mut t, 0, Mode::Ex, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    // 1 held + 2 asked = 3: room on arrival, so it queues behind session 0.
    let w = queued(acq(&mut t, 1, Mode::Ex, &[1, 2], Wait::Queue));
    // Session 2 fills the table meanwhile.
    assert!(matches!(
        acq(&mut t, 2, Mode::Ex, &[3, 4], Wait::No),
        Acquired::Granted(_)
    ));
    assert_eq!(t.locks_held(), 3);
    // Its turn comes with 2 held: granting would make 4.
    t.release(sid(0), Mode::Ex, &[key(1)], 0);
    let mut woken = Vec::new();
    t.take_wakeups(&mut woken);
    assert_eq!(
        woken,
        vec![Wakeup {
            wait: w,
            outcome: Woken::TooManyLocks
        }]
    );
    assert_eq!(t.locks_held(), 2);
    assert_eq!(t.waiter_count(), 0);
    assert!(!t.session_state(&sid(1)).unwrap().waiting);
    // Nothing of the refused request is left behind: its keys are free.
    assert_eq!(t.key_count(), 2);
    assert!(matches!(
        acq(&mut t, 3, Mode::Ex, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    assert_eq!(t.counters().too_many_locks, 1);
}

#[test]
fn a_refused_waiter_lets_the_requests_behind_it_on_other_keys_through() {
    let mut t = LockTable::new(Config {
        max_locks: 4,
        ..Config::default()
    });
    assert!(matches!(
        acq(&mut t, 0, Mode::Ex, &[1], Wait::No),
        Acquired::Granted(_)
    ));
    assert!(matches!(
        acq(&mut t, 4, Mode::Sh, &[2], Wait::No),
        Acquired::Granted(_)
    ));
    // Session 1 waits for 1 and 2 (EX); session 2 queues behind it on 2 (SH).
    queued(acq(&mut t, 1, Mode::Ex, &[1, 2], Wait::Queue));
    let w2 = queued(acq(&mut t, 2, Mode::Sh, &[2], Wait::Queue));
    // The table fills up; session 4 lets 2 go, then session 0 lets 1 go.
    assert!(matches!(
        acq(&mut t, 3, Mode::Ex, &[5], Wait::No),
        Acquired::Granted(_)
    ));
    t.release(sid(4), Mode::Sh, &[key(2)], 0);
    assert!(matches!(
        acq(&mut t, 3, Mode::Ex, &[6, 7], Wait::No),
        Acquired::Granted(_)
    ));
    assert_eq!(t.locks_held(), 4);
    t.release(sid(0), Mode::Ex, &[key(1)], 0);
    // Session 1 would make 3 + 2 = 5: refused. Session 2's SH on key 2 (3 + 1 = 4) fits and
    // is no longer behind a queued EX.
    let mut woken = Vec::new();
    t.take_wakeups(&mut woken);
    assert_eq!(woken.len(), 2, "{woken:?}");
    assert_eq!(woken[0].outcome, Woken::TooManyLocks);
    assert_eq!(woken[1].wait, w2);
    assert!(matches!(woken[1].outcome, Woken::Granted(_)));
    assert_eq!(t.locks_held(), 4);
}

#[test]
fn queue_limits_are_enforced() {
    let mut t = LockTable::new(Config {
        max_waiters_per_key: 2,
        max_waiters: 3,
        ..Config::default()
    });
    assert!(matches!(
        acq(&mut t, 0, Mode::Ex, &[1, 2], Wait::No),
        Acquired::Granted(_)
    ));
    queued(acq(&mut t, 1, Mode::Ex, &[1], Wait::Queue));
    queued(acq(&mut t, 2, Mode::Ex, &[1], Wait::Queue));
    assert_eq!(
        acq(&mut t, 3, Mode::Ex, &[1], Wait::Queue),
        Acquired::TooManyWaiters
    );
    queued(acq(&mut t, 3, Mode::Ex, &[2], Wait::Queue));
    assert_eq!(
        acq(&mut t, 4, Mode::Ex, &[2], Wait::Queue),
        Acquired::TooManyWaiters
    );
}

#[test]
fn operator_views() {
    let mut t = t();
    assert!(matches!(
        acq(&mut t, 0, Mode::Sh, &[1, 2], Wait::No),
        Acquired::Granted(_)
    ));
    assert!(matches!(
        acq(&mut t, 3, Mode::Ex, &[7], Wait::No),
        Acquired::Granted(_)
    ));
    t.use_session(sid(1), ConnId(1));
    t.acquire(sid(1), Mode::Ex, &[key(1)], Wait::Queue, 10);
    t.use_session(sid(2), ConnId(2));
    t.acquire(sid(2), Mode::Ex, &[key(1), key(2)], Wait::Queue, 20);
    assert_eq!(t.locks_by_mode(), (2, 1));
    let k1 = key(1);
    let prefix = &k1.as_bytes()[..30];
    let all = t.keys_with_prefix(prefix, 10, 30);
    assert_eq!(
        all.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![key(1), key(2), key(7)]
    );
    assert_eq!(t.keys_with_prefix(prefix, 2, 30).len(), 2, "limit");
    assert!(t.keys_with_prefix(b"zzz", 10, 30).is_empty());
    let listed = t.keys_with_prefix(k1.as_bytes(), 10, 30);
    assert_eq!(
        listed.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![key(1)]
    );
    assert_eq!(listed[0].1.waiters.len(), 2);
    assert_eq!(t.most_contended(1), vec![(key(1), 2)]);
    let w = t.longest_waiters(10, 50);
    assert_eq!((w[0].session, w[0].waited_ms), (sid(1), 40));
    assert_eq!(w[1].keys, vec![key(1), key(2)]);
    t.disconnect(ConnId(3), 100);
    let s = t.sessions_info(10);
    assert_eq!(s[0].session, sid(3), "dead sessions first");
    assert_eq!(s[0].expires_at, Some(200));
    assert!(s
        .iter()
        .any(|x| x.session == sid(2) && x.waiting && x.connected));
}

// ---- property test ----

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        s: u8,
        ex: bool,
        keys: Vec<u32>,
        wait: bool,
    },
    Release {
        s: u8,
        ex: bool,
        key: u32,
    },
    ReleaseAll {
        s: u8,
    },
    TimeOut {
        s: u8,
    },
    /// The session's connection closes: it is dead for its grace period (its wait is
    /// withdrawn), and a later request from a new connection revives it.
    Disconnect {
        s: u8,
    },
    /// A request of the session from a second connection (as a legacy client may send):
    /// it binds the session there only if it has no live connection.
    UseFrom {
        s: u8,
    },
    /// Time passes; what expires is expired before the next command, as the server does.
    Advance {
        ms: u64,
    },
}

const SESSIONS: u8 = 5;
const KEYS: u32 = 5;
const GRACE_MS: u64 = 100;

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SESSIONS;
    prop_oneof![
        6 => (s.clone(), any::<bool>(), prop::collection::vec(0..KEYS, 1..5), any::<bool>())
            .prop_map(|(s, ex, keys, wait)| Op::Acquire { s, ex, keys, wait }),
        3 => (s.clone(), any::<bool>(), 0..KEYS).prop_map(|(s, ex, key)| Op::Release { s, ex, key }),
        1 => s.clone().prop_map(|s| Op::ReleaseAll { s }),
        2 => s.clone().prop_map(|s| Op::TimeOut { s }),
        1 => s.clone().prop_map(|s| Op::Disconnect { s }),
        1 => s.prop_map(|s| Op::UseFrom { s }),
        2 => prop_oneof![1u64..60, Just(GRACE_MS)].prop_map(|ms| Op::Advance { ms }),
    ]
}

fn conflicts(a: Mode, b: Mode) -> bool {
    a == Mode::Ex || b == Mode::Ex
}

type Queues = BTreeMap<u32, Vec<(SessionId, Mode)>>;

fn queues(t: &LockTable) -> Queues {
    (0..KEYS)
        .map(|k| {
            let w = t.inspect(key(k).as_bytes(), 0).waiters;
            (k, w.into_iter().map(|w| (w.session, w.mode)).collect())
        })
        .collect()
}

type Holders = BTreeMap<u32, Vec<(SessionId, Mode)>>;

fn holders(t: &LockTable) -> Holders {
    (0..KEYS)
        .map(|k| {
            let h = t.inspect(key(k).as_bytes(), 0).holders;
            (k, h.into_iter().map(|h| (h.session, h.mode)).collect())
        })
        .collect()
}

/// The wait-for graph of the model: a request of `s` at position `pos` of key `k`'s queue
/// waits on the other sessions holding `k` in a conflicting mode and, unless `s` holds
/// `k`, on the conflicting requests queued before it.
fn wait_graph(holders: &Holders, queues: &Queues) -> BTreeMap<SessionId, BTreeSet<SessionId>> {
    let mut edges: BTreeMap<SessionId, BTreeSet<SessionId>> = BTreeMap::new();
    for (k, q) in queues {
        let h = &holders[k];
        for (pos, &(s, mode)) in q.iter().enumerate() {
            let e = edges.entry(s).or_default();
            e.extend(
                h.iter()
                    .filter(|(x, m)| *x != s && conflicts(mode, *m))
                    .map(|(x, _)| *x),
            );
            if !h.iter().any(|(x, _)| *x == s) {
                e.extend(
                    q[..pos]
                        .iter()
                        .filter(|(x, m)| *x != s && conflicts(mode, *m))
                        .map(|(x, _)| *x),
                );
            }
        }
    }
    edges
}

/// Kahn's algorithm: a graph is acyclic iff every node can be removed; what is left
/// is on or behind a cycle.
fn cyclic_part(
    edges: &BTreeMap<SessionId, BTreeSet<SessionId>>,
) -> BTreeMap<SessionId, BTreeSet<SessionId>> {
    let mut g = edges.clone();
    loop {
        let leaves: Vec<SessionId> = g
            .iter()
            .filter(|(_, ts)| ts.iter().all(|t| !g.contains_key(t)))
            .map(|(s, _)| *s)
            .collect();
        if leaves.is_empty() {
            return g;
        }
        for l in leaves {
            g.remove(&l);
        }
    }
}

/// The queues as they would be with `s`'s request for `mode` on `keys` queued: behind the
/// other holders' requests where `s` holds the key, else at the back.
fn with_request(
    holders: &Holders,
    queues: &Queues,
    s: SessionId,
    mode: Mode,
    keys: &[u32],
) -> Queues {
    let mut q = queues.clone();
    let mut keys = keys.to_vec();
    keys.sort();
    keys.dedup();
    for k in keys {
        let h = &holders[&k];
        let holds = |x: &SessionId| h.iter().any(|(y, _)| y == x);
        let entries = q.get_mut(&k).unwrap();
        let pos = if holds(&s) {
            entries
                .iter()
                .position(|(x, _)| !holds(x))
                .unwrap_or(entries.len())
        } else {
            entries.len()
        };
        entries.insert(pos, (s, mode));
    }
    q
}

/// What the table must answer to `s`'s ACQUIRE, decided from what it shows (holders,
/// queues, counts) by the protocol's rules in their order: room under max_locks, one wait
/// per session, granted when compatible with the holders and every queued request (a
/// holder of a key goes ahead of the queue there), a try-lock refused, the waiter limits,
/// a deadlock when queuing would close a cycle through `s`, else queued.
fn predict(
    t: &LockTable,
    cfg: &Config,
    s: SessionId,
    mode: Mode,
    keys: &[u32],
    wait: bool,
) -> Acquired {
    if t.locks_held() + keys.len() as u64 > cfg.max_locks {
        return Acquired::TooManyLocks;
    }
    if t.session_state(&s).is_some_and(|x| x.waiting) {
        return Acquired::AlreadyWaiting;
    }
    let (h, q) = (holders(t), queues(t));
    let free = keys.iter().all(|k| {
        let holds = h[k].iter().any(|(x, _)| *x == s);
        h[k].iter().all(|(x, m)| *x == s || !conflicts(mode, *m))
            && (holds || q[k].iter().all(|(_, m)| !conflicts(mode, *m)))
    });
    if free {
        return Acquired::Granted(0);
    }
    if !wait {
        return Acquired::Conflict;
    }
    if t.waiter_count() >= cfg.max_waiters
        || keys.iter().any(|k| q[k].len() >= cfg.max_waiters_per_key)
    {
        return Acquired::TooManyWaiters;
    }
    let cyc = cyclic_part(&wait_graph(&h, &with_request(&h, &q, s, mode, keys)));
    if cyc.contains_key(&s) {
        // Any session on the cycle may be named; the test checks the one named is.
        return Acquired::Deadlock(s);
    }
    Acquired::Queued(WaitId(0))
}

/// Whether the table's answer is the predicted one (tokens and ids aside; a deadlock must
/// name another session on the cycle).
fn agrees(got: Acquired, want: Acquired, cycle_of: impl Fn(SessionId) -> bool) -> bool {
    match (got, want) {
        (Acquired::Granted(_), Acquired::Granted(_))
        | (Acquired::Queued(_), Acquired::Queued(_)) => true,
        (Acquired::Deadlock(other), Acquired::Deadlock(s)) => other != s && cycle_of(other),
        (g, w) => g == w,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
    ))]
    #[test]
    fn queues_stay_fair_safe_and_deadlock_free(
        ops in prop::collection::vec(op(), 1..80),
        // Mostly roomy; sometimes so tight that queued requests are refused for room.
        max_locks in prop_oneof![3 => Just(1000u64), 1 => 2u64..8],
        // Mostly roomy; sometimes tight enough that the waiter limits are reached.
        (max_waiters, max_waiters_per_key) in prop_oneof![3 => Just((1000usize, 1000usize)), 1 => (1usize..4, 1usize..3)],
    ) {
        let cfg = Config { max_locks, grace_ms: GRACE_MS, max_waiters, max_waiters_per_key, ..Config::default() };
        let mut t = LockTable::new(cfg.clone());
        let mut now = 0u64;
        // Each session's live connection, if the test gave it one; fresh ids revive.
        let mut conn: BTreeMap<u8, u64> = BTreeMap::new();
        let mut next_conn = 100u64;
        // Which session each pending wait belongs to, and its keys.
        let mut waits: BTreeMap<WaitId, (SessionId, Vec<u32>)> = BTreeMap::new();
        for op in ops {
            let before = queues(&t);
            let held_before: BTreeMap<u32, Vec<SessionId>> = (0..KEYS)
                .map(|k| (k, t.inspect(key(k).as_bytes(), 0).holders.into_iter().map(|h| h.session).collect()))
                .collect();
            // What the server does before every command: release what has expired. Its
            // grants are checked with this step's.
            let expired = !t.expire(now).is_empty();
            let disconnect = matches!(op, Op::Disconnect { .. }) || expired;
            // The expiry's grants are delivered before the command runs (as the server
            // does), so the waits the command sees are the table's.
            let mut woken = Vec::new();
            t.take_wakeups(&mut woken);
            let mut pending_before = waits.clone();
            for w in &woken {
                waits.remove(&w.wait);
            }
            // What the command itself sees, for the check of an immediate grant.
            let at_command = queues(&t);
            let held_at_command: BTreeMap<u32, Vec<SessionId>> = (0..KEYS)
                .map(|k| (k, t.inspect(key(k).as_bytes(), 0).holders.into_iter().map(|h| h.session).collect()))
                .collect();
            let mut bind = |t: &mut LockTable, s: u8| {
                let c = *conn.entry(s).or_insert_with(|| { next_conn += 1; next_conn });
                t.use_session(sid(s), ConnId(c));
            };
            match op {
                Op::Acquire { s, ex, keys, wait } => {
                    if t.session_state(&sid(s)).is_some_and(|x| x.waiting) {
                        continue; // the server blocks a waiting connection
                    }
                    let mode = if ex { Mode::Ex } else { Mode::Sh };
                    bind(&mut t, s);
                    let want = predict(&t, &cfg, sid(s), mode, &keys, wait);
                    let (h, q) = (holders(&t), queues(&t));
                    let cyc = cyclic_part(&wait_graph(&h, &with_request(&h, &q, sid(s), mode, &keys)));
                    let ks: Vec<Key> = keys.iter().map(|&k| key(k)).collect();
                    let w = if wait { Wait::Queue } else { Wait::No };
                    let got = t.acquire(sid(s), mode, &ks, w, now);
                    prop_assert!(agrees(got, want, |x| cyc.contains_key(&x)),
                        "{:?} asked {:?} on {:?} (wait {}): got {:?}, the model says {:?}", sid(s), mode, keys, wait, got, want);
                    match got {
                        Acquired::Queued(id) => { waits.insert(id, (sid(s), keys.clone())); }
                        Acquired::Granted(_) => {
                            // Granted at once: nothing conflicting was queued on its keys,
                            // except on keys it held (it goes ahead of waiters there).
                            for k in &keys {
                                if held_at_command[k].contains(&sid(s)) { continue; }
                                for (other, m) in &at_command[k] {
                                    prop_assert!(*other == sid(s) || !conflicts(mode, *m),
                                        "immediate grant to {:?} overtook queued {:?} on {}", sid(s), other, k);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Op::Release { s, ex, key: k } => {
                    let mode = if ex { Mode::Ex } else { Mode::Sh };
                    bind(&mut t, s);
                    t.release(sid(s), mode, &[key(k)], now);
                }
                Op::ReleaseAll { s } => {
                    bind(&mut t, s);
                    t.release_all(sid(s), now);
                }
                Op::TimeOut { s } => {
                    if let Some((&id, _)) = waits.iter().find(|(_, (x, _))| *x == sid(s)) {
                        prop_assert!(t.time_out(id, now));
                        waits.remove(&id);
                    }
                }
                Op::Disconnect { s } => {
                    if let Some(c) = conn.remove(&s) {
                        t.disconnect(ConnId(c), now);
                        waits.retain(|_, (x, _)| *x != sid(s));
                        // Holding locks, it is dead until its grace ends, and stays known.
                        if let Some(st) = t.session_state(&sid(s)) {
                            prop_assert!(!st.connected && st.locks > 0 && st.expires_at == Some(now + GRACE_MS), "{:?}", st);
                        }
                    }
                }
                Op::UseFrom { s } => {
                    let other = 10_000 + s as u64;
                    let was = conn.get(&s).copied();
                    t.use_session(sid(s), ConnId(other));
                    // Bound there only if it had no live connection.
                    if was.is_none() {
                        conn.insert(s, other);
                    }
                    prop_assert!(t.session_state(&sid(s)).is_some_and(|x| x.connected));
                }
                Op::Advance { ms } => now += ms,
            }
            // The sessions the test has let go of are dead or gone; those it holds, live.
            for x in 0..SESSIONS {
                if let Some(st) = t.session_state(&sid(x)) {
                    prop_assert_eq!(st.connected, conn.contains_key(&x), "{:?} {:?}", sid(x), st);
                }
            }
            // Grants made by this step must not overtake a conflicting earlier request
            // still waiting, unless the grantee already held that key.
            let mut more = Vec::new();
            t.take_wakeups(&mut more);
            for w in &more {
                pending_before.insert(w.wait, waits.remove(&w.wait).expect("woken wait was pending"));
            }
            woken.extend(more);
            let after = queues(&t);
            for w in &woken {
                let (s, keys) = pending_before.remove(&w.wait).expect("woken wait was pending");
                if w.outcome == Woken::TooManyLocks {
                    // Only grants follow a refusal within a step (a disconnect's expiry
                    // also releases), so the room it lacked is still lacking.
                    prop_assert!(disconnect || t.locks_held() + keys.len() as u64 > max_locks,
                        "{:?} refused for room with room to spare", s);
                    continue;
                }
                for k in keys {
                    let q = &before[&k];
                    let Some(pos) = q.iter().position(|(x, _)| *x == s) else { continue };
                    let mode = q[pos].1;
                    // A holder of the key goes ahead of requests waiting on its lock.
                    let held_before = held_before[&k].contains(&s);
                    for (other, m) in &q[..pos] {
                        let still = after[&k].iter().any(|(x, _)| x == other);
                        prop_assert!(held_before || !still || !conflicts(mode, *m),
                            "grant to {:?} overtook {:?} on key {}", s, other, k);
                    }
                }
            }
            prop_assert!(t.locks_held() <= max_locks, "{} locks held, max {}", t.locks_held(), max_locks);
            // Safety: no conflicting holders.
            for k in 0..KEYS {
                let h = t.inspect(key(k).as_bytes(), 0).holders;
                for a in &h {
                    for b in &h {
                        prop_assert!(a.session == b.session || !conflicts(a.mode, b.mode),
                            "conflicting holders on {}: {:?}", k, h);
                    }
                }
            }
            // Liveness: every waiter waits on somebody; and the wait-for graph is acyclic.
            let edges = wait_graph(&holders(&t), &after);
            for (s, targets) in &edges {
                prop_assert!(!targets.is_empty(), "{:?} waits though it could be granted", s);
            }
            let g = cyclic_part(&edges);
            prop_assert!(g.is_empty(), "cycle of waits among {:?}", g.keys().collect::<Vec<_>>());
            prop_assert_eq!(t.waiter_count(), waits.len());
        }
    }
}
