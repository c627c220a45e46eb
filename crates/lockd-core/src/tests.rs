//! Scenario tests of the lock table, and a model-based property test of its legacy
//! (try-lock) semantics. Queue properties are in `tests_queue`.

use proptest::prelude::*;

use crate::*;

pub(crate) fn sid(n: u8) -> SessionId {
    SessionId([b'a' + (n % 26); 32])
}

pub(crate) fn key(n: u32) -> Key {
    Key::new(format!("{n:031}").as_bytes()).unwrap()
}

fn table(max_locks: u64) -> LockTable {
    LockTable::new(Config {
        max_locks,
        grace_ms: 1000,
        ..Config::default()
    })
}

fn try_lock(t: &mut LockTable, s: u8, mode: Mode, keys: &[u32]) -> Acquired {
    let keys: Vec<Key> = keys.iter().map(|&k| key(k)).collect();
    t.use_session(sid(s), ConnId(s as u64));
    t.acquire(sid(s), mode, &keys, Wait::No, 0)
}

fn granted(a: Acquired) -> bool {
    matches!(a, Acquired::Granted(_))
}

#[test]
fn shared_locks_share_and_exclude_ex() {
    let mut t = table(100);
    assert!(granted(try_lock(&mut t, 1, Mode::Sh, &[1])));
    assert!(granted(try_lock(&mut t, 2, Mode::Sh, &[1])));
    assert_eq!(try_lock(&mut t, 3, Mode::Ex, &[1]), Acquired::Conflict);
    assert_eq!(
        try_lock(&mut t, 1, Mode::Ex, &[1]),
        Acquired::Conflict,
        "not the only SH holder"
    );
    t.release(sid(2), Mode::Sh, &[key(1)], 0);
    assert!(
        granted(try_lock(&mut t, 1, Mode::Ex, &[1])),
        "sole SH holder upgrades"
    );
    assert!(t.holds(&sid(1), key(1).as_bytes(), Mode::Sh));
    assert!(t.holds(&sid(1), key(1).as_bytes(), Mode::Ex));
    assert_eq!(t.locks_held(), 2);
    assert_eq!(try_lock(&mut t, 2, Mode::Sh, &[1]), Acquired::Conflict);
}

#[test]
fn ex_holder_may_add_sh_and_reacquire_counts_once() {
    let mut t = table(100);
    assert!(granted(try_lock(&mut t, 1, Mode::Ex, &[1])));
    assert!(granted(try_lock(&mut t, 1, Mode::Ex, &[1])));
    assert!(granted(try_lock(&mut t, 1, Mode::Sh, &[1])));
    assert_eq!(t.locks_held(), 2);
    assert_eq!(t.release(sid(1), Mode::Ex, &[key(1)], 0), 1);
    assert_eq!(t.release(sid(1), Mode::Ex, &[key(1)], 0), 0);
    assert_eq!(t.locks_held(), 1);
}

#[test]
fn all_or_nothing() {
    let mut t = table(100);
    assert!(granted(try_lock(&mut t, 1, Mode::Ex, &[2])));
    assert_eq!(
        try_lock(&mut t, 2, Mode::Ex, &[1, 2, 3]),
        Acquired::Conflict
    );
    assert!(!t.holds(&sid(2), key(1).as_bytes(), Mode::Ex));
    assert!(!t.holds(&sid(2), key(3).as_bytes(), Mode::Ex));
    assert_eq!(t.locks_held(), 1);
    assert_eq!(
        t.key_count(),
        1,
        "no entries left behind by a refused request"
    );
}

#[test]
fn too_many_locks_is_checked_first_and_counts_distinct_locks() {
    let mut t = table(3);
    assert!(granted(try_lock(&mut t, 1, Mode::Ex, &[1, 2])));
    for _ in 0..10 {
        // Re-acquiring does not grow the count (the original's defect 3).
        assert!(granted(try_lock(&mut t, 1, Mode::Ex, &[1])));
    }
    assert_eq!(t.locks_held(), 2);
    // Before conflicts: key 1 is held EX by session 1, yet the reply is TooManyLocks.
    assert_eq!(
        try_lock(&mut t, 2, Mode::Ex, &[1, 5]),
        Acquired::TooManyLocks
    );
    assert!(granted(try_lock(&mut t, 2, Mode::Ex, &[5])));
    assert_eq!(try_lock(&mut t, 2, Mode::Ex, &[6]), Acquired::TooManyLocks);
    assert_eq!(t.release_all(sid(1), 0), 2);
    assert!(granted(try_lock(&mut t, 2, Mode::Ex, &[6, 7])));
}

#[test]
fn dead_session_keeps_locks_for_grace_then_expires() {
    let mut t = table(100);
    assert!(granted(try_lock(&mut t, 1, Mode::Ex, &[1])));
    t.disconnect(ConnId(1), 5_000);
    assert_eq!(t.dead_session_count(), 1);
    assert_eq!(t.next_expiry(), Some(6_000));
    assert!(t.expire(5_999).is_empty());
    assert!(t.holds(&sid(1), key(1).as_bytes(), Mode::Ex));
    assert_eq!(t.expire(6_000), vec![(sid(1), 1)]);
    assert_eq!(t.locks_held(), 0);
    assert_eq!(t.session_count(), 0);
    assert_eq!(t.counters().expired_sessions, 1);
}

#[test]
fn dead_session_revives_on_use_from_any_connection() {
    let mut t = table(100);
    assert!(granted(try_lock(&mut t, 1, Mode::Ex, &[1])));
    t.disconnect(ConnId(1), 0);
    t.use_session(sid(1), ConnId(77));
    assert_eq!(t.next_expiry(), None);
    assert!(t.expire(1_000_000).is_empty());
    assert!(t.holds(&sid(1), key(1).as_bytes(), Mode::Ex));
    t.disconnect(ConnId(77), 10);
    assert_eq!(t.next_expiry(), Some(1010));
}

#[test]
fn every_session_of_a_closed_connection_dies() {
    let mut t = table(100);
    for s in 0..5u8 {
        t.use_session(sid(s), ConnId(9));
        let a = t.acquire(sid(s), Mode::Ex, &[key(s as u32)], Wait::No, 0);
        assert!(granted(a));
    }
    t.disconnect(ConnId(9), 0);
    assert_eq!(t.dead_session_count(), 5);
    assert_eq!(t.expire(1000).len(), 5);
    assert_eq!(t.locks_held(), 0);
}

#[test]
fn session_bound_elsewhere_stays_bound_there() {
    let mut t = table(100);
    t.use_session(sid(1), ConnId(1));
    t.use_session(sid(1), ConnId(2));
    assert!(granted(t.acquire(sid(1), Mode::Ex, &[key(1)], Wait::No, 0)));
    t.disconnect(ConnId(2), 0);
    assert_eq!(
        t.dead_session_count(),
        0,
        "bound to connection 1, which lives"
    );
    t.disconnect(ConnId(1), 0);
    assert_eq!(t.dead_session_count(), 1);
}

#[test]
fn lockless_sessions_are_forgotten_at_disconnect_and_pruned() {
    let mut t = table(100);
    for i in 0..5000u32 {
        let mut id = [b'x'; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        t.use_session(SessionId(id), ConnId(1));
    }
    assert!(t.session_count() < 2100, "pruned: {}", t.session_count());
    t.disconnect(ConnId(1), 0);
    assert_eq!(t.session_count(), 0);
}

#[test]
fn tokens_increase_and_respect_limit() {
    let mut t = table(100);
    t.raise_next_token(500);
    let Acquired::Granted(a) = try_lock(&mut t, 1, Mode::Sh, &[1]) else {
        panic!()
    };
    let Acquired::Granted(b) = try_lock(&mut t, 2, Mode::Sh, &[1]) else {
        panic!()
    };
    assert!(a >= 500 && b > a);
    t.set_token_limit(b);
    assert_eq!(
        try_lock(&mut t, 3, Mode::Sh, &[2]),
        Acquired::TokensExhausted
    );
}

// ---- the model ----

#[derive(Clone, Debug)]
enum Op {
    Acquire { s: u8, ex: bool, keys: Vec<u32> },
    Release { s: u8, ex: bool, keys: Vec<u32> },
    ReleaseAll { s: u8 },
    Use { s: u8, conn: u8 },
    Disconnect { conn: u8 },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0u8..5;
    let keys = prop::collection::vec(0u32..6, 1..4);
    prop_oneof![
        4 => (s.clone(), any::<bool>(), keys.clone()).prop_map(|(s, ex, keys)| Op::Acquire { s, ex, keys }),
        2 => (s.clone(), any::<bool>(), keys).prop_map(|(s, ex, keys)| Op::Release { s, ex, keys }),
        1 => s.clone().prop_map(|s| Op::ReleaseAll { s }),
        2 => (s, 0u8..3).prop_map(|(s, conn)| Op::Use { s, conn }),
        1 => (0u8..3).prop_map(|conn| Op::Disconnect { conn }),
        1 => (0u64..1500).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// The legacy semantics written as plainly as possible.
#[derive(Default)]
struct Model {
    sh: std::collections::BTreeSet<(u32, u8)>,
    ex: std::collections::BTreeMap<u32, u8>,
    conn: std::collections::BTreeMap<u8, u8>,
    dead: std::collections::BTreeMap<u8, u64>,
}

impl Model {
    fn count(&self) -> usize {
        self.sh.len() + self.ex.len()
    }
    fn has_locks(&self, s: u8) -> bool {
        self.sh.iter().any(|&(_, x)| x == s) || self.ex.values().any(|&x| x == s)
    }
    fn release_all(&mut self, s: u8) {
        self.sh.retain(|&(_, x)| x != s);
        self.ex.retain(|_, x| *x != s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn table_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        const MAX: usize = 7;
        const GRACE: u64 = 1000;
        let mut t = table(MAX as u64);
        let mut m = Model::default();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Acquire { s, ex, keys } => {
                    let ks: Vec<Key> = keys.iter().map(|&k| key(k)).collect();
                    let mode = if ex { Mode::Ex } else { Mode::Sh };
                    let got = t.acquire(sid(s), mode, &ks, Wait::No, now);
                    let want = if m.count() + keys.len() > MAX {
                        Acquired::TooManyLocks
                    } else if keys.iter().any(|k| {
                        m.ex.get(k).is_some_and(|&o| o != s)
                            || (ex && m.sh.iter().any(|&(kk, o)| kk == *k && o != s))
                    }) {
                        Acquired::Conflict
                    } else {
                        for &k in &keys {
                            if ex { m.ex.insert(k, s); } else { m.sh.insert((k, s)); }
                        }
                        Acquired::Granted(0)
                    };
                    match (got, want) {
                        (Acquired::Granted(_), Acquired::Granted(_)) => {}
                        (g, w) => prop_assert_eq!(g, w),
                    }
                }
                Op::Release { s, ex, keys } => {
                    let ks: Vec<Key> = keys.iter().map(|&k| key(k)).collect();
                    let mode = if ex { Mode::Ex } else { Mode::Sh };
                    let got = t.release(sid(s), mode, &ks, now);
                    let mut want = 0;
                    for k in keys {
                        let removed = if ex {
                            m.ex.get(&k) == Some(&s) && m.ex.remove(&k).is_some()
                        } else {
                            m.sh.remove(&(k, s))
                        };
                        want += removed as u32;
                    }
                    prop_assert_eq!(got, want);
                }
                Op::ReleaseAll { s } => {
                    let before = m.count();
                    m.release_all(s);
                    prop_assert_eq!(t.release_all(sid(s), now) as usize, before - m.count());
                }
                Op::Use { s, conn } => {
                    t.use_session(sid(s), ConnId(conn as u64));
                    if let std::collections::btree_map::Entry::Vacant(e) = m.conn.entry(s) {
                        e.insert(conn);
                        m.dead.remove(&s);
                    }
                }
                Op::Disconnect { conn } => {
                    t.disconnect(ConnId(conn as u64), now);
                    let gone: Vec<u8> = m.conn.iter().filter(|&(_, &c)| c == conn).map(|(&s, _)| s).collect();
                    for s in gone {
                        m.conn.remove(&s);
                        if m.has_locks(s) {
                            m.dead.insert(s, now + GRACE);
                        }
                    }
                }
                Op::Advance { ms } => {
                    now += ms;
                    t.expire(now);
                    let expired: Vec<u8> = m.dead.iter().filter(|&(_, &at)| at <= now).map(|(&s, _)| s).collect();
                    for s in expired {
                        m.dead.remove(&s);
                        m.release_all(s);
                    }
                }
            }
            // A dead session that lost its last lock (released by another connection
            // acting for it) has nothing left to expire: the table forgets it.
            let alive: Vec<u8> = m.dead.keys().copied().filter(|&s| m.has_locks(s)).collect();
            m.dead.retain(|s, _| alive.contains(s));
            // Invariants, checked against the model after every step.
            prop_assert_eq!(t.locks_held() as usize, m.count());
            prop_assert_eq!(t.dead_session_count(), m.dead.len());
            for k in 0..6u32 {
                let info = t.inspect(key(k).as_bytes(), now);
                let ex: Vec<_> = info.holders.iter().filter(|h| h.mode == Mode::Ex).collect();
                prop_assert!(ex.len() <= 1, "two EX holders on {}", k);
                if let Some(e) = ex.first() {
                    prop_assert!(info.holders.iter().all(|h| h.session == e.session), "EX beside another's SH");
                    prop_assert_eq!(Some(e.session), m.ex.get(&k).map(|&s| sid(s)));
                } else {
                    prop_assert!(!m.ex.contains_key(&k));
                }
                let mut sh: Vec<SessionId> = info.holders.iter().filter(|h| h.mode == Mode::Sh).map(|h| h.session).collect();
                sh.sort();
                let msh: Vec<SessionId> = m.sh.iter().filter(|&&(kk, _)| kk == k).map(|&(_, s)| sid(s)).collect();
                prop_assert_eq!(sh, msh);
            }
        }
    }
}
