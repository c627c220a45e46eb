//! Semaphores: scenarios, and a property test of the table driven through `apply` with
//! permit requests on a few semaphores (waits, timeouts, releases, disconnects, expiry,
//! revocation), checked after every command against what the rules say: no semaphore
//! over its capacity, no grant out of queue order, no request left waiting that could be
//! granted, and tokens that only increase.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::*;

fn sid(i: u8) -> SessionId {
    SessionId([b'a' + i; 32])
}

fn conn(i: u8) -> ConnId {
    ConnId(u64::from(i) + 1)
}

fn key(name: &str) -> Key {
    Key::new(name.as_bytes()).unwrap()
}

fn table() -> LockTable {
    LockTable::new(Config {
        max_locks: 1000,
        grace_ms: 1000,
        ..Config::default()
    })
}

fn ask(name: &str, permits: u16, capacity: u16) -> Permits {
    Permits {
        key: key(name),
        permits,
        capacity,
    }
}

fn acquire(
    t: &mut LockTable,
    i: u8,
    mode: Mode,
    keys: &[&str],
    sems: Vec<Permits>,
    wait: Wait,
) -> Outcome {
    t.apply(
        &Command::Acquire {
            session: sid(i),
            conn: conn(i),
            legacy: false,
            mode,
            keys: keys.iter().map(|k| key(k)).collect(),
            wait,
            lease: None,
            permits: sems,
        },
        0,
    )
}

fn opened(n: u8) -> LockTable {
    let mut t = table();
    for i in 0..n {
        t.apply(
            &Command::Open {
                session: sid(i),
                conn: conn(i),
            },
            0,
        );
    }
    t
}

fn granted(o: Outcome) -> u64 {
    match o {
        Outcome::Acquired(Acquired::Granted(t)) => t,
        other => panic!("not granted: {other:?}"),
    }
}

fn queued(o: Outcome) -> WaitId {
    match o {
        Outcome::Acquired(Acquired::Queued(w)) => w,
        other => panic!("not queued: {other:?}"),
    }
}

#[test]
fn permits_are_counted_and_a_large_request_is_not_starved() {
    let mut t = opened(4);
    granted(acquire(
        &mut t,
        0,
        Mode::Ex,
        &[],
        vec![ask("pool", 2, 3)],
        Wait::No,
    ));
    // One permit left: a request for 2 waits; a later request for 1 waits behind it
    // (strict FIFO), though one permit is free.
    let big = queued(acquire(
        &mut t,
        1,
        Mode::Ex,
        &[],
        vec![ask("pool", 2, 3)],
        Wait::Queue,
    ));
    assert_eq!(
        acquire(&mut t, 2, Mode::Ex, &[], vec![ask("pool", 1, 3)], Wait::No),
        Outcome::Acquired(Acquired::Conflict)
    );
    let small = queued(acquire(
        &mut t,
        3,
        Mode::Ex,
        &[],
        vec![ask("pool", 1, 3)],
        Wait::Queue,
    ));
    let info = t.inspect(b"pool", 0);
    assert_eq!(info.capacity, 3);
    assert_eq!(info.holders[0].permits, 2);
    assert_eq!(
        info.waiters.iter().map(|w| w.permits).collect::<Vec<_>>(),
        vec![2, 1]
    );
    // The holder lets go: the big request gets 2, then the small one the last.
    t.apply(
        &Command::ReleasePermits {
            session: sid(0),
            conn: conn(0),
            keys: vec![key("pool")],
            token: None,
        },
        1,
    );
    let mut w = Vec::new();
    t.take_wakeups(&mut w);
    let order: Vec<WaitId> = w.iter().map(|x| x.wait).collect();
    assert_eq!(order, vec![big, small]);
    assert_eq!(t.semaphore_holds(), 2);
    assert_eq!(
        t.locks_by_mode(),
        (0, 0),
        "permits are neither SH nor EX locks"
    );
    // A lock release does not take permits, nor the other way round.
    assert_eq!(
        t.apply(
            &Command::Release {
                session: sid(1),
                conn: conn(1),
                legacy: false,
                mode: Mode::Sh,
                keys: vec![key("pool")],
                token: None,
            },
            2
        ),
        Outcome::Released(0)
    );
}

#[test]
fn a_key_is_a_lock_or_a_semaphore_of_one_capacity() {
    let mut t = opened(2);
    granted(acquire(
        &mut t,
        0,
        Mode::Ex,
        &["job"],
        vec![ask("pool", 1, 5)],
        Wait::No,
    ));
    assert_eq!(
        acquire(
            &mut t,
            1,
            Mode::Ex,
            &[],
            vec![ask("pool", 1, 4)],
            Wait::Queue
        ),
        Outcome::WrongKind {
            key: key("pool"),
            capacity: 5,
            asked: 4
        }
    );
    assert_eq!(
        acquire(&mut t, 1, Mode::Sh, &["pool"], vec![], Wait::Queue),
        Outcome::WrongKind {
            key: key("pool"),
            capacity: 5,
            asked: 0
        }
    );
    assert_eq!(
        acquire(
            &mut t,
            1,
            Mode::Sh,
            &[],
            vec![ask("job", 1, 2)],
            Wait::Queue
        ),
        Outcome::WrongKind {
            key: key("job"),
            capacity: 0,
            asked: 2
        }
    );
    assert_eq!(t.waiter_count(), 0, "nothing queued");
    // Once nobody uses it, a key may become the other kind.
    t.apply(
        &Command::ReleaseAll {
            session: sid(0),
            conn: conn(0),
            legacy: false,
        },
        1,
    );
    granted(acquire(
        &mut t,
        1,
        Mode::Ex,
        &["pool"],
        vec![ask("job", 2, 2)],
        Wait::No,
    ));
}

#[test]
fn locks_and_semaphores_in_one_request_are_all_or_nothing() {
    let mut t = opened(3);
    granted(acquire(&mut t, 0, Mode::Ex, &["a"], vec![], Wait::No));
    // Permits are free, the lock is not: nothing is taken.
    assert_eq!(
        acquire(
            &mut t,
            1,
            Mode::Ex,
            &["a"],
            vec![ask("pool", 1, 1)],
            Wait::No
        ),
        Outcome::Acquired(Acquired::Conflict)
    );
    assert!(t.inspect(b"pool", 0).holders.is_empty());
    let w = queued(acquire(
        &mut t,
        1,
        Mode::Ex,
        &["a"],
        vec![ask("pool", 1, 1)],
        Wait::Queue,
    ));
    // Someone else takes the permit meanwhile? No: the waiter is queued on the pool too.
    assert_eq!(
        acquire(&mut t, 2, Mode::Ex, &[], vec![ask("pool", 1, 1)], Wait::No),
        Outcome::Acquired(Acquired::Conflict)
    );
    t.apply(
        &Command::ReleaseAll {
            session: sid(0),
            conn: conn(0),
            legacy: false,
        },
        1,
    );
    let mut woken = Vec::new();
    t.take_wakeups(&mut woken);
    assert_eq!(woken[0].wait, w);
    let Woken::Granted(tok) = woken[0].outcome else {
        panic!("{woken:?}")
    };
    let locks = t.locks_of(&sid(1)).unwrap();
    assert_eq!(locks.len(), 2);
    assert!(
        locks.iter().all(|l| l.token == tok),
        "one token for the whole grant"
    );
    assert_eq!(locks.iter().map(|l| l.permits).max(), Some(1));
}

#[test]
fn a_semaphore_wait_in_a_cycle_is_a_deadlock() {
    let mut t = opened(2);
    granted(acquire(&mut t, 0, Mode::Ex, &["lock"], vec![], Wait::No));
    granted(acquire(
        &mut t,
        1,
        Mode::Ex,
        &[],
        vec![ask("pool", 1, 1)],
        Wait::No,
    ));
    // 0 waits for the pool's only permit, held by 1; 1 then waits for 0's lock.
    queued(acquire(
        &mut t,
        0,
        Mode::Ex,
        &[],
        vec![ask("pool", 1, 1)],
        Wait::Queue,
    ));
    assert_eq!(
        acquire(&mut t, 1, Mode::Ex, &["lock"], vec![], Wait::Queue),
        Outcome::Acquired(Acquired::Deadlock(sid(0)))
    );
}

#[test]
fn a_dead_sessions_permits_go_at_the_end_of_its_grace() {
    let mut t = opened(2);
    granted(acquire(
        &mut t,
        0,
        Mode::Ex,
        &[],
        vec![ask("pool", 2, 2)],
        Wait::No,
    ));
    let w = queued(acquire(
        &mut t,
        1,
        Mode::Ex,
        &[],
        vec![ask("pool", 1, 2)],
        Wait::Queue,
    ));
    t.apply(&Command::Disconnect { conn: conn(0) }, 10);
    t.apply(&Command::Expire, 1009);
    assert!(t.is_waiting(w));
    t.apply(&Command::Expire, 1010);
    assert!(!t.is_waiting(w));
    assert_eq!(t.inspect(b"pool", 1010).holders.len(), 1);
}

// ---- the property test ----

/// Capacities of the semaphores the test uses.
const CAPACITY: [u16; 3] = [3, 2, 4];

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        s: u8,
        sems: Vec<(usize, u16)>,
        queue: bool,
        wrong: bool,
    },
    Release {
        s: u8,
        k: usize,
    },
    ReleaseAll {
        s: u8,
    },
    TimeOut {
        nth: usize,
    },
    Disconnect {
        s: u8,
    },
    Reconnect {
        s: u8,
    },
    Revoke {
        k: usize,
    },
    Kill {
        s: u8,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0u8..5;
    let sems = prop::collection::vec((0usize..3, 1u16..4), 1..3);
    prop_oneof![
        8 => (s.clone(), sems, any::<bool>(), prop::bool::weighted(0.05))
            .prop_map(|(s, sems, queue, wrong)| Op::Acquire { s, sems, queue, wrong }),
        3 => (s.clone(), 0usize..3).prop_map(|(s, k)| Op::Release { s, k }),
        1 => s.clone().prop_map(|s| Op::ReleaseAll { s }),
        2 => (0usize..10).prop_map(|nth| Op::TimeOut { nth }),
        1 => s.clone().prop_map(|s| Op::Disconnect { s }),
        1 => s.clone().prop_map(|s| Op::Reconnect { s }),
        1 => (0usize..3).prop_map(|k| Op::Revoke { k }),
        1 => s.prop_map(|s| Op::Kill { s }),
        2 => (0u64..1500).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn sem(i: usize) -> Key {
    key(&format!("sem-{i}"))
}

/// A semaphore: capacity, holders (session slot -> permits), queue.
type SemView = (u16, BTreeMap<u32, u16>, Vec<WaitId>);

/// What the property test reads of the table: per semaphore slot, its capacity, holders
/// (session slot -> permits) and queue (wait ids in order); per waiter, its session slot
/// and (key slot, permits).
struct View {
    keys: BTreeMap<u32, SemView>,
    waiters: BTreeMap<WaitId, (u32, Vec<(u32, u16)>)>,
}

fn view(t: &LockTable) -> View {
    let img = t.image();
    let mut keys = BTreeMap::new();
    for (i, k) in img.keys.iter().enumerate() {
        if let Some(k) = k {
            let holders = k.holders.iter().map(|h| (h.2, h.4)).collect();
            let queue = k.queue.iter().map(|q| q.0).collect();
            keys.insert(i as u32, (k.capacity, holders, queue));
        }
    }
    let waiters = img
        .waiters
        .iter()
        .map(|w| (w.wait, (w.session, w.permits.clone())))
        .collect();
    View { keys, waiters }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn permits_are_never_over_granted_nor_out_of_order(ops in prop::collection::vec(op(), 1..90)) {
        let mut t = table();
        let mut now = 0u64;
        let mut gen = [0u64; 5];
        let conn_of = |s: u8, g: u64| ConnId(u64::from(s) + 1 + 16 * g);
        for i in 0..5u8 {
            t.apply(&Command::Open { session: sid(i), conn: conn_of(i, 0) }, 0);
        }
        let mut waits: Vec<WaitId> = Vec::new();
        let mut last_token = 0u64;
        for op in ops {
            let before = view(&t);
            let in_use: Vec<bool> = (0..3).map(|k| t.find_key(sem(k).as_bytes()).is_some()).collect();
            let cmd = match &op {
                Op::Acquire { s, sems, queue, wrong } => Command::Acquire {
                    session: sid(*s),
                    conn: conn_of(*s, gen[*s as usize]),
                    legacy: false,
                    mode: Mode::Ex,
                    keys: Vec::new(),
                    wait: if *queue { Wait::Queue } else { Wait::No },
                    lease: None,
                    permits: sems
                        .iter()
                        .map(|&(k, p)| {
                            let capacity = CAPACITY[k] + u16::from(*wrong);
                            Permits { key: sem(k), permits: p.min(capacity), capacity }
                        })
                        .collect(),
                },
                Op::Release { s, k } => Command::ReleasePermits {
                    session: sid(*s),
                    conn: conn_of(*s, gen[*s as usize]),
                    keys: vec![sem(*k)],
                    token: None,
                },
                Op::ReleaseAll { s } => Command::ReleaseAll {
                    session: sid(*s),
                    conn: conn_of(*s, gen[*s as usize]),
                    legacy: false,
                },
                Op::TimeOut { nth } => Command::TimeOut { wait: waits.get(*nth).copied().unwrap_or(WaitId(0)) },
                Op::Disconnect { s } => Command::Disconnect { conn: conn_of(*s, gen[*s as usize]) },
                Op::Reconnect { s } => {
                    gen[*s as usize] += 1;
                    Command::Use { session: sid(*s), conn: conn_of(*s, gen[*s as usize]) }
                }
                Op::Revoke { k } => Command::Revoke { key: sem(*k), session: None },
                Op::Kill { s } => Command::EndSession { session: sid(*s) },
                Op::Advance { ms } => {
                    now += ms;
                    Command::Expire
                }
            };
            let outcome = t.apply(&cmd, now);
            let mut woken = Vec::new();
            t.take_wakeups(&mut woken);
            let after = view(&t);
            // Refused as the wrong kind only for a semaphore named twice, or one in use
            // with another capacity; and then nothing changed.
            if let (Op::Acquire { sems, .. }, Outcome::WrongKind { .. }) = (&op, &outcome) {
                let twice = (1..sems.len()).any(|i| sems[..i].iter().any(|x| x.0 == sems[i].0));
                prop_assert!(twice || sems.iter().any(|&(k, _)| in_use[k]), "{:?}", outcome);
                prop_assert_eq!(&before.keys, &after.keys);
            }
            let mut tokens = Vec::new();
            match &outcome {
                Outcome::Acquired(Acquired::Granted(tok)) => tokens.push(*tok),
                Outcome::Acquired(Acquired::Queued(w)) => waits.push(*w),
                _ => {}
            }
            for w in &woken {
                if let Woken::Granted(tok) = w.outcome {
                    tokens.push(tok);
                    // Granted in queue order: every request queued before it on each of
                    // its keys is no longer waiting, unless its session held the key (it
                    // goes ahead) when the command began.
                    let (s, asked) = &before.waiters[&w.wait];
                    for &(k, _) in asked {
                        let (_, holders, queue) = &before.keys[&k];
                        if holders.contains_key(s) {
                            continue;
                        }
                        for ahead in queue.iter().take_while(|&&x| x != w.wait) {
                            prop_assert!(
                                !after.waiters.contains_key(ahead),
                                "{:?} granted over {:?}, still waiting ahead of it", w.wait, ahead
                            );
                        }
                    }
                }
            }
            for tok in tokens {
                prop_assert!(tok > last_token, "token {} after {}", tok, last_token);
                last_token = tok;
            }
            // Never over capacity.
            for (k, (capacity, holders, _)) in &after.keys {
                let held: u32 = holders.values().map(|&p| u32::from(p)).sum();
                prop_assert!(held <= u32::from(*capacity), "key {}: {} of {}", k, held, capacity);
            }
            // No request left waiting that could be granted now: at the front of every
            // queue it is in (or its session holds the key), with room for its permits.
            for (w, (s, asked)) in &after.waiters {
                let could = asked.iter().all(|&(k, p)| {
                    let (capacity, holders, queue) = &after.keys[&k];
                    let held: u32 = holders.values().map(|&p| u32::from(p)).sum();
                    (holders.contains_key(s) || queue.first() == Some(w))
                        && held + u32::from(p) <= u32::from(*capacity)
                });
                prop_assert!(!could, "{:?} could be granted but waits after {:?}", w, op);
            }
        }
    }
}
