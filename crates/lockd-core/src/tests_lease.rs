//! Leases, revocation and events: scenarios, and a property test of the table driven
//! through `apply` with every command, against what a holder must be able to rely on:
//! a lease's lock is gone by its deadline, never two conflicting holders, and every lock
//! a bound session loses other than by its own request comes with a `lost` event (and no
//! `lost` event for a lock still held).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::events::{EventKind, LostReason};
use crate::*;

fn sid(i: u8) -> SessionId {
    SessionId([b'a' + i; 32])
}

fn key(i: u8) -> Key {
    Key::new(format!("key-{i}").as_bytes()).unwrap()
}

fn conn(i: u8) -> ConnId {
    ConnId(u64::from(i) + 1)
}

fn table() -> LockTable {
    LockTable::new(Config {
        max_locks: 50,
        grace_ms: 1000,
        ..Config::default()
    })
}

fn open(t: &mut LockTable, i: u8) {
    assert_eq!(
        t.apply(
            &Command::Open {
                session: sid(i),
                conn: conn(i),
            },
            0
        ),
        Outcome::Done(true)
    );
}

fn acquire(
    t: &mut LockTable,
    i: u8,
    mode: Mode,
    keys: &[u8],
    wait: Wait,
    lease: Option<u64>,
    now: u64,
) -> Acquired {
    match t.apply(
        &Command::Acquire {
            session: sid(i),
            conn: conn(i),
            legacy: false,
            mode,
            keys: keys.iter().map(|&k| key(k)).collect(),
            wait,
            lease,
            permits: Vec::new(),
        },
        now,
    ) {
        Outcome::Acquired(a) => a,
        other => panic!("{other:?}"),
    }
}

fn events(t: &mut LockTable) -> Vec<Event> {
    let mut out = Vec::new();
    t.take_events(&mut out);
    out
}

fn wakeups(t: &mut LockTable) -> Vec<Wakeup> {
    let mut out = Vec::new();
    t.take_wakeups(&mut out);
    out
}

/// The lost events of the last command: (session, token, reason).
fn lost(t: &mut LockTable) -> Vec<(SessionId, u64, LostReason)> {
    events(t)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Lost { token, reason, .. } => Some((e.session, token, reason)),
            _ => None,
        })
        .collect()
}

fn token(a: Acquired) -> u64 {
    match a {
        Acquired::Granted(t) => t,
        other => panic!("not granted: {other:?}"),
    }
}

#[test]
fn a_lease_ends_the_lock_and_hands_it_on_unless_extended() {
    let mut t = table();
    open(&mut t, 0);
    open(&mut t, 1);
    let a = token(acquire(
        &mut t,
        0,
        Mode::Ex,
        &[1, 2],
        Wait::No,
        Some(100),
        1000,
    ));
    assert_eq!(t.next_expiry(), Some(1100));
    let Acquired::Queued(w) = acquire(&mut t, 1, Mode::Ex, &[1], Wait::Queue, None, 1010) else {
        panic!("should queue");
    };
    // Extended at 1090 for 100 ms more: still held at 1150.
    let ext = t.apply(
        &Command::Extend {
            session: sid(0),
            conn: conn(0),
            token: a,
            lease_ms: None,
        },
        1090,
    );
    assert_eq!(ext, Outcome::Extended(Ok(1190)));
    t.apply(&Command::Expire, 1150);
    assert!(t.holds(&sid(0), key(1).as_bytes(), Mode::Ex));
    // At the deadline it goes: the waiter gets key 1, the holder is told of both keys.
    t.apply(&Command::Expire, 1190);
    assert!(!t.holds(&sid(0), key(1).as_bytes(), Mode::Ex));
    assert!(!t.holds(&sid(0), key(2).as_bytes(), Mode::Ex));
    assert!(t.holds(&sid(1), key(1).as_bytes(), Mode::Ex));
    assert!(
        matches!(wakeups(&mut t)[..], [Wakeup { wait, outcome: Woken::Granted(_) }] if wait == w)
    );
    let lost: Vec<_> = events(&mut t)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Lost {
                key, token, reason, ..
            } => Some((e.session, key, token, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        lost,
        vec![
            (sid(0), key(1), a, LostReason::LeaseExpired),
            (sid(0), key(2), a, LostReason::LeaseExpired)
        ]
    );
    // A lease that passed cannot be extended.
    let late = t.apply(
        &Command::Extend {
            session: sid(0),
            conn: conn(0),
            token: a,
            lease_ms: Some(1000),
        },
        1200,
    );
    assert_eq!(late, Outcome::Extended(Err(ExtendError::NoLease)));
    assert_eq!(t.counters().leases_expired, 1);
    assert_eq!(t.lease_count(), 0);
}

#[test]
fn a_lease_goes_with_its_locks() {
    let mut t = table();
    open(&mut t, 0);
    open(&mut t, 1);
    let a = token(acquire(&mut t, 0, Mode::Sh, &[1], Wait::No, Some(500), 0));
    // Re-acquired by the same session: the lock carries the new grant's token; the old
    // lease lets go of it and, with no lock left, ends.
    let b = token(acquire(&mut t, 0, Mode::Sh, &[1], Wait::No, None, 10));
    assert_eq!(t.lease_of(a), None);
    assert_eq!(t.lease_count(), 0);
    t.apply(&Command::Expire, 10_000);
    assert!(
        t.holds(&sid(0), key(1).as_bytes(), Mode::Sh),
        "token {b} has no lease"
    );
    // Released: the lease is gone, EXTEND is refused, another session's EXTEND too.
    let c = token(acquire(
        &mut t,
        1,
        Mode::Sh,
        &[2],
        Wait::No,
        Some(500),
        10_000,
    ));
    let wrong = t.apply(
        &Command::Extend {
            session: sid(0),
            conn: conn(0),
            token: c,
            lease_ms: None,
        },
        10_001,
    );
    assert_eq!(wrong, Outcome::Extended(Err(ExtendError::NoLease)));
    t.apply(
        &Command::Release {
            session: sid(1),
            conn: conn(1),
            legacy: false,
            mode: Mode::Sh,
            keys: vec![key(2)],
            token: None,
        },
        10_002,
    );
    assert_eq!(t.lease_count(), 0);
    assert_eq!(t.next_expiry(), None);
}

#[test]
fn a_dead_sessions_grace_and_a_lease_each_end_the_lock() {
    let mut t = table();
    open(&mut t, 0);
    open(&mut t, 1);
    token(acquire(&mut t, 0, Mode::Ex, &[1], Wait::No, Some(5000), 0));
    token(acquire(&mut t, 1, Mode::Ex, &[2], Wait::No, Some(100), 0));
    t.apply(&Command::Disconnect { conn: conn(0) }, 10);
    t.apply(&Command::Disconnect { conn: conn(1) }, 10);
    // Session 1's lease passes inside its grace; session 0's grace ends inside its lease.
    t.apply(&Command::Expire, 100);
    assert!(!t.holds(&sid(1), key(2).as_bytes(), Mode::Ex));
    assert!(t.holds(&sid(0), key(1).as_bytes(), Mode::Ex));
    t.apply(&Command::Expire, 1010);
    assert!(!t.holds(&sid(0), key(1).as_bytes(), Mode::Ex));
    assert_eq!(t.lease_count(), 0);
    // Dead sessions have nobody to tell.
    assert!(events(&mut t).is_empty());
}

#[test]
fn a_new_leader_gives_leases_their_full_length() {
    let mut t = table();
    open(&mut t, 0);
    let a = token(acquire(&mut t, 0, Mode::Ex, &[1], Wait::No, Some(300), 0));
    t.apply(&Command::Regrace, 200);
    assert_eq!(t.lease_of(a), Some(500));
    t.apply(&Command::Regrace, 100);
    assert_eq!(t.lease_of(a), Some(500), "never shortened");
}

#[test]
fn revoke_frees_the_holders_tells_them_and_moves_the_queue() {
    let mut t = table();
    for i in 0..3 {
        open(&mut t, i);
    }
    let a = token(acquire(&mut t, 0, Mode::Sh, &[1], Wait::No, None, 0));
    let b = token(acquire(&mut t, 1, Mode::Sh, &[1], Wait::No, Some(1000), 0));
    events(&mut t);
    let Acquired::Queued(w) = acquire(&mut t, 2, Mode::Ex, &[1], Wait::Queue, None, 1) else {
        panic!("should queue");
    };
    // The first request queued behind the SH holders: both are told, once.
    let told: BTreeSet<_> = events(&mut t)
        .into_iter()
        .map(|e| match e.kind {
            EventKind::Contended {
                token,
                mode,
                wanted,
                ..
            } => (e.session, token, mode, wanted),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        told,
        BTreeSet::from([
            (sid(0), a, Mode::Sh, Mode::Ex),
            (sid(1), b, Mode::Sh, Mode::Ex)
        ])
    );
    // Revoking one holder: the EX waiter still waits for the other.
    assert_eq!(
        t.apply(
            &Command::Revoke {
                key: key(1),
                session: Some(sid(1))
            },
            2
        ),
        Outcome::Released(1)
    );
    assert_eq!(t.lease_count(), 0, "the lease went with the lock");
    assert!(t.is_waiting(w));
    assert_eq!(
        t.apply(
            &Command::Revoke {
                key: key(1),
                session: None
            },
            3
        ),
        Outcome::Released(1)
    );
    assert!(t.holds(&sid(2), key(1).as_bytes(), Mode::Ex));
    let lost = lost(&mut t);
    assert_eq!(lost, vec![(sid(0), a, LostReason::Revoked)]);
    assert_eq!(t.counters().revoked, 2);
    assert_eq!(
        t.apply(
            &Command::Revoke {
                key: key(9),
                session: None
            },
            3
        ),
        Outcome::Released(0)
    );
}

#[test]
fn a_killed_session_loses_its_locks_and_its_wait() {
    let mut t = table();
    for i in 0..3 {
        open(&mut t, i);
    }
    token(acquire(&mut t, 0, Mode::Ex, &[1], Wait::No, None, 0));
    let held = token(acquire(&mut t, 1, Mode::Ex, &[2], Wait::No, None, 0));
    let Acquired::Queued(w1) = acquire(&mut t, 1, Mode::Ex, &[1], Wait::Queue, None, 1) else {
        panic!("should queue");
    };
    let Acquired::Queued(w2) = acquire(&mut t, 2, Mode::Ex, &[2], Wait::Queue, None, 1) else {
        panic!("should queue");
    };
    wakeups(&mut t);
    assert_eq!(
        t.apply(&Command::EndSession { session: sid(1) }, 5),
        Outcome::Ended(Some(1))
    );
    let woken = wakeups(&mut t);
    assert!(woken.contains(&Wakeup {
        wait: w1,
        outcome: Woken::Revoked
    }));
    assert!(woken
        .iter()
        .any(|x| x.wait == w2 && matches!(x.outcome, Woken::Granted(_))));
    assert!(t.holds(&sid(2), key(2).as_bytes(), Mode::Ex));
    assert!(t.session_state(&sid(1)).is_none());
    let lost = lost(&mut t);
    assert_eq!(lost, vec![(sid(1), held, LostReason::SessionEnded)]);
    // Its connection's next native request is refused, not a new session.
    assert_eq!(
        acquire(&mut t, 1, Mode::Ex, &[3], Wait::No, None, 6),
        Acquired::NotBound
    );
    assert_eq!(
        t.apply(&Command::EndSession { session: sid(1) }, 7),
        Outcome::Ended(None)
    );
    // The connection closing later finds nothing of it.
    t.apply(&Command::Disconnect { conn: conn(1) }, 8);
    assert_eq!(t.session_count(), 2);
}

#[test]
fn a_grant_with_requests_behind_it_is_told() {
    let mut t = table();
    for i in 0..3 {
        open(&mut t, i);
    }
    token(acquire(&mut t, 0, Mode::Ex, &[1], Wait::No, None, 0));
    acquire(&mut t, 1, Mode::Ex, &[1], Wait::Queue, None, 1);
    acquire(&mut t, 2, Mode::Sh, &[1], Wait::Queue, None, 1);
    events(&mut t);
    t.apply(
        &Command::ReleaseAll {
            session: sid(0),
            conn: conn(0),
            legacy: false,
        },
        2,
    );
    let got: Vec<_> = events(&mut t)
        .into_iter()
        .map(|e| match e.kind {
            EventKind::Contended { mode, wanted, .. } => (e.session, mode, wanted),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec![(sid(1), Mode::Ex, Mode::Sh)]);
}

#[test]
fn leases_survive_an_image() {
    let mut t = table();
    open(&mut t, 0);
    open(&mut t, 1);
    let a = token(acquire(&mut t, 0, Mode::Ex, &[1], Wait::No, Some(300), 0));
    acquire(&mut t, 1, Mode::Ex, &[1], Wait::Queue, Some(50), 1);
    let mut r = LockTable::from_image(&t.image()).unwrap();
    assert_eq!(r.image(), t.image());
    assert_eq!(r.lease_of(a), Some(300));
    r.apply(&Command::Expire, 300);
    let granted = wakeups(&mut r);
    let Woken::Granted(b) = granted[0].outcome else {
        panic!("{granted:?}");
    };
    assert_eq!(
        r.lease_of(b),
        Some(350),
        "the waiter's lease starts at its grant"
    );
}

// ---- the property test ----

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        s: u8,
        ex: bool,
        keys: Vec<u8>,
        queue: bool,
        lease: Option<u64>,
    },
    Release {
        s: u8,
        ex: bool,
        keys: Vec<u8>,
    },
    ReleaseAll {
        s: u8,
    },
    Extend {
        s: u8,
        nth: usize,
        ms: Option<u64>,
    },
    Revoke {
        k: u8,
        s: Option<u8>,
    },
    Kill {
        s: u8,
    },
    Disconnect {
        s: u8,
    },
    Reopen {
        s: u8,
    },
    TimeOut {
        nth: usize,
    },
    Regrace,
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0u8..4;
    let keys = prop::collection::vec(0u8..4, 1..3);
    prop_oneof![
        6 => (s.clone(), any::<bool>(), keys.clone(), any::<bool>(), prop::option::of(1u64..400))
            .prop_map(|(s, ex, keys, queue, lease)| Op::Acquire { s, ex, keys, queue, lease }),
        2 => (s.clone(), any::<bool>(), keys).prop_map(|(s, ex, keys)| Op::Release { s, ex, keys }),
        1 => s.clone().prop_map(|s| Op::ReleaseAll { s }),
        3 => (s.clone(), 0usize..8, prop::option::of(1u64..400)).prop_map(|(s, nth, ms)| Op::Extend { s, nth, ms }),
        1 => (0u8..4, prop::option::of(s.clone())).prop_map(|(k, s)| Op::Revoke { k, s }),
        1 => s.clone().prop_map(|s| Op::Kill { s }),
        1 => s.clone().prop_map(|s| Op::Disconnect { s }),
        1 => s.prop_map(|s| Op::Reopen { s }),
        1 => (0usize..8).prop_map(|nth| Op::TimeOut { nth }),
        1 => Just(Op::Regrace),
        3 => (0u64..300).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A session's own RELEASE (of these keys in this mode) or RELEASEALL (None).
type OwnRelease = (SessionId, Option<(Vec<Key>, Mode)>);

/// Every lock held: (session, key, mode) -> token.
fn held(t: &LockTable) -> BTreeMap<(SessionId, Vec<u8>, Mode), u64> {
    let img = t.image();
    let mut out = BTreeMap::new();
    for k in img.keys.iter().flatten() {
        for &(token, _, s, mode, _) in &k.holders {
            let id = img.sessions[s as usize].as_ref().unwrap().id;
            out.insert((id, k.key.as_bytes().to_vec(), mode), token);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn leases_end_on_time_and_every_loss_is_told(ops in prop::collection::vec(op(), 1..80)) {
        let mut t = table();
        let mut now = 0u64;
        let mut reopened = [0u64; 4];
        let conn_of = |s: u8, gen: u64| ConnId(u64::from(s) + 1 + 16 * gen);
        for i in 0..4u8 {
            t.apply(&Command::Open { session: sid(i), conn: conn_of(i, 0) }, 0);
        }
        // What a holder may rely on: the deadline of each lease it was granted (by token),
        // and the length of each queued request's lease.
        let mut deadline: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut queued: BTreeMap<WaitId, u64> = BTreeMap::new();
        let mut waits: Vec<WaitId> = Vec::new();
        for op in ops {
            let before = held(&t);
            let mut own_release: Option<OwnRelease> = None;
            let cmd = match &op {
                Op::Acquire { s, ex, keys, queue, lease } => Command::Acquire {
                    session: sid(*s),
                    conn: conn_of(*s, reopened[*s as usize]),
                    legacy: false,
                    mode: if *ex { Mode::Ex } else { Mode::Sh },
                    keys: keys.iter().map(|&k| key(k)).collect(),
                    wait: if *queue { Wait::Queue } else { Wait::No },
                    lease: *lease,
                    permits: Vec::new(),
                },
                Op::Release { s, ex, keys } => {
                    let mode = if *ex { Mode::Ex } else { Mode::Sh };
                    let keys: Vec<Key> = keys.iter().map(|&k| key(k)).collect();
                    own_release = Some((sid(*s), Some((keys.clone(), mode))));
                    Command::Release {
                        session: sid(*s),
                        conn: conn_of(*s, reopened[*s as usize]),
                        legacy: false,
                        mode,
                        keys,
                        token: None,
                    }
                }
                Op::ReleaseAll { s } => {
                    own_release = Some((sid(*s), None));
                    Command::ReleaseAll { session: sid(*s), conn: conn_of(*s, reopened[*s as usize]), legacy: false }
                }
                Op::Extend { s, nth, ms } => {
                    let token = deadline.keys().nth(*nth).copied().unwrap_or(1);
                    Command::Extend { session: sid(*s), conn: conn_of(*s, reopened[*s as usize]), token, lease_ms: *ms }
                }
                Op::Revoke { k, s } => Command::Revoke { key: key(*k), session: s.map(sid) },
                Op::Kill { s } => Command::EndSession { session: sid(*s) },
                Op::Disconnect { s } => Command::Disconnect { conn: conn_of(*s, reopened[*s as usize]) },
                Op::Reopen { s } => {
                    // A new connection takes the session up again (the legacy rule).
                    reopened[*s as usize] += 1;
                    Command::Use { session: sid(*s), conn: conn_of(*s, reopened[*s as usize]) }
                }
                Op::TimeOut { nth } => Command::TimeOut { wait: waits.get(*nth).copied().unwrap_or(WaitId(0)) },
                Op::Regrace => Command::Regrace,
                Op::Advance { ms } => {
                    now += ms;
                    Command::Expire
                }
            };
            // Who was bound before the command (only they are told).
            let bound: BTreeSet<SessionId> = (0..4u8)
                .map(sid)
                .filter(|id| t.session_state(id).is_some_and(|x| x.connected))
                .collect();
            let outcome = t.apply(&cmd, now);
            let mut ev = Vec::new();
            t.take_events(&mut ev);
            let mut woken = Vec::new();
            t.take_wakeups(&mut woken);
            match (&op, &outcome) {
                (Op::Acquire { lease: Some(ms), .. }, Outcome::Acquired(Acquired::Granted(tok))) => {
                    deadline.insert(*tok, (now + ms, *ms));
                }
                (Op::Acquire { lease, .. }, Outcome::Acquired(Acquired::Queued(w))) => {
                    waits.push(*w);
                    if let Some(ms) = lease {
                        queued.insert(*w, *ms);
                    }
                }
                (Op::Extend { ms, .. }, Outcome::Extended(Ok(until))) => {
                    let Command::Extend { token, .. } = cmd else { unreachable!() };
                    let len = ms.unwrap_or(deadline[&token].1);
                    prop_assert_eq!(*until, now + len, "EXTEND's deadline");
                    deadline.insert(token, (*until, len));
                }
                (Op::Regrace, _) => {
                    for (d, len) in deadline.values_mut() {
                        *d = (*d).max(now + *len);
                    }
                }
                _ => {}
            }
            for w in &woken {
                if let (Some(ms), Woken::Granted(tok)) = (queued.remove(&w.wait), w.outcome) {
                    deadline.insert(tok, (now + ms, ms));
                }
            }
            let after = held(&t);
            // Never two conflicting holders of one key.
            for (s1, k1, m1) in after.keys() {
                for (s2, k2, m2) in after.keys() {
                    prop_assert!(!(k1 == k2 && s1 != s2 && m1.conflicts(*m2)), "conflicting holders of {:?}", k1);
                }
            }
            // No lock outlives its lease.
            for ((_, k, _), tok) in &after {
                if let Some((d, _)) = deadline.get(tok) {
                    prop_assert!(*d > now, "token {} on {:?} held at {} past its lease {}", tok, k, now, d);
                }
            }
            // Every lost event is a lock that went, and every lock a bound session lost
            // other than by its own release or re-acquisition comes with one.
            let mut told: BTreeSet<(SessionId, Vec<u8>, Mode, u64)> = BTreeSet::new();
            for e in &ev {
                if let EventKind::Lost { key, mode, token, .. } = &e.kind {
                    let id = (e.session, key.as_bytes().to_vec(), *mode);
                    prop_assert_eq!(before.get(&id), Some(token), "lost, but was not held: {:?}", id);
                    prop_assert!(after.get(&id) != Some(token), "lost, but still held: {:?}", id);
                    told.insert((e.session, key.as_bytes().to_vec(), *mode, *token));
                }
            }
            for ((s, k, m), tok) in &before {
                if after.contains_key(&(*s, k.clone(), *m)) || !bound.contains(s) {
                    continue;
                }
                let own = match &own_release {
                    Some((who, None)) => who == s,
                    Some((who, Some((keys, mode)))) => who == s && mode == m && keys.iter().any(|x| x.as_bytes() == &k[..]),
                    None => false,
                };
                let disconnected = matches!(op, Op::Disconnect { .. } | Op::Reopen { .. })
                    && !t.session_state(s).is_some_and(|x| x.connected);
                if !own && !disconnected {
                    prop_assert!(told.contains(&(*s, k.clone(), *m, *tok)), "{:?} lost {:?} {:?} untold after {:?}", s, k, m, op);
                }
            }
        }
    }
}
