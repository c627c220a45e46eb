//! The table as a replicated state machine: the same commands give the same table and the
//! same outcomes on every replica (each has its own hash seed), and a replica rebuilt from
//! an image in the middle of the log goes on exactly as the others.

use proptest::prelude::*;

use crate::{Acquired, Command, ConnId, Key, LockTable, Mode, SessionId, Wait, WaitId, Wakeup};

fn sid(i: u8) -> SessionId {
    SessionId([b'a' + i; 32])
}

fn key(i: u8) -> Key {
    Key::new(format!("key-{i}").as_bytes()).unwrap()
}

/// Semaphores of 2 or 3 permits, on keys that locks use too (so some requests meet a key
/// of the other kind).
fn permits() -> impl Strategy<Value = Vec<crate::Permits>> {
    proptest::collection::vec(
        ((3u8..8).prop_map(key), 2u16..4, 1u16..3).prop_map(|(key, capacity, permits)| {
            crate::Permits {
                key,
                permits: permits.min(capacity),
                capacity,
            }
        }),
        0..2,
    )
}

fn command() -> impl Strategy<Value = Command> {
    let session = (0u8..5).prop_map(sid);
    let conn = (0u64..4, 0u16..3).prop_map(|(c, n)| ConnId((u64::from(n) << 48) | c));
    let mode = prop_oneof![Just(Mode::Sh), Just(Mode::Ex)];
    let keys = proptest::collection::vec((0u8..6).prop_map(key), 1..4);
    let wait = prop_oneof![Just(Wait::No), Just(Wait::Queue)];
    prop_oneof![
        2 => (session.clone(), conn.clone()).prop_map(|(session, conn)| Command::Use { session, conn }),
        1 => (session.clone(), conn.clone()).prop_map(|(session, conn)| Command::Open { session, conn }),
        1 => (conn.clone(), session.clone(), session.clone())
            .prop_map(|(conn, current, session)| Command::Resume { conn, current, session }),
        1 => (session.clone(), 0u64..3000).prop_map(|(session, grace_ms)| Command::SetGrace { session, grace_ms }),
        6 => (session.clone(), conn.clone(), any::<bool>(), mode.clone(), keys.clone(), wait, proptest::option::of(1u64..3000), permits())
            .prop_map(|(session, conn, legacy, mode, keys, wait, lease, permits)| Command::Acquire { session, conn, legacy, mode, keys, wait, lease, permits }),
        1 => (session.clone(), conn.clone(), keys.clone(), proptest::option::of(1u64..30))
            .prop_map(|(session, conn, keys, token)| Command::ReleasePermits { session, conn, keys, token }),
        2 => (session.clone(), conn.clone(), 1u64..30, proptest::option::of(1u64..3000))
            .prop_map(|(session, conn, token, lease_ms)| Command::Extend { session, conn, token, lease_ms }),
        1 => ((0u8..6).prop_map(key), proptest::option::of(session.clone()))
            .prop_map(|(key, session)| Command::Revoke { key, session }),
        1 => session.clone().prop_map(|session| Command::EndSession { session }),
        3 => (session.clone(), conn.clone(), any::<bool>(), mode, keys, proptest::option::of(1u64..30))
            .prop_map(|(session, conn, legacy, mode, keys, token)| Command::Release { session, conn, legacy, mode, keys, token }),
        1 => (session, conn.clone(), any::<bool>())
            .prop_map(|(session, conn, legacy)| Command::ReleaseAll { session, conn, legacy }),
        2 => (1u64..20).prop_map(|w| Command::TimeOut { wait: WaitId(w) }),
        2 => conn.prop_map(|conn| Command::Disconnect { conn }),
        1 => (0u16..3).prop_map(|node| Command::NodeDown { node }),
        1 => (0u16..3).prop_map(|node| Command::NodeUp { node }),
        1 => Just(Command::Expire),
        1 => Just(Command::Regrace),
        1 => (0u64..40).prop_map(|floor| Command::RaiseTokens { floor }),
        1 => (0u64..40, 1u64..20, 1000u64..3000).prop_map(|(floor, max_locks, grace_ms)| Command::Bootstrap {
            floor,
            settings: crate::Settings { max_locks, grace_ms, max_waiters: 6, max_waiters_per_key: 3 },
        }),
    ]
}

/// An entry of the log: a command and the leader's time (which may run backwards: a new
/// leader's clock may be behind the old one's).
fn log() -> impl Strategy<Value = Vec<(Command, u64)>> {
    proptest::collection::vec((command(), 0u64..5000), 1..120)
}

type Step = (crate::Outcome, Vec<Wakeup>, Vec<(SessionId, u32)>);

fn step(t: &mut LockTable, cmd: &Command, now: u64) -> Step {
    let outcome = t.apply(cmd, now);
    let (mut w, mut e) = (Vec::new(), Vec::new());
    t.take_wakeups(&mut w);
    t.take_expired(&mut e);
    (outcome, w, e)
}

fn config() -> crate::Config {
    crate::Config {
        max_locks: 12,
        grace_ms: 2000,
        max_waiters: 6,
        max_waiters_per_key: 3,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn replicas_that_apply_one_log_agree(log in log(), cut in 0usize..120) {
        let mut a = LockTable::new(config());
        let mut b = LockTable::new(config());
        let mut time = 0u64;
        let mut restored: Option<LockTable> = None;
        for (i, (cmd, dt)) in log.iter().enumerate() {
            if i == cut.min(log.len() - 1) {
                let img = a.image();
                let r = LockTable::from_image(&img).expect("an image restores");
                prop_assert_eq!(r.image(), img, "restore changes nothing");
                restored = Some(r);
            }
            // Mostly forward, sometimes back (clamped by the table).
            time = if dt % 7 == 0 { time.saturating_sub(*dt) } else { time + dt / 4 };
            let sa = step(&mut a, cmd, time);
            let sb = step(&mut b, cmd, time);
            prop_assert_eq!(&sa, &sb, "step {}: {:?}", i, cmd);
            if let Some(r) = restored.as_mut() {
                let sr = step(r, cmd, time);
                prop_assert_eq!(&sa, &sr, "restored replica, step {}: {:?}", i, cmd);
            }
            prop_assert_eq!(a.image(), b.image(), "step {}", i);
        }
        prop_assert_eq!(a.image(), restored.expect("cut within the log").image());
    }
}

/// Time never runs backwards in the table: an entry stamped earlier than the last one
/// applied acts at the later time, so a leader whose clock is behind cannot make a dead
/// session's grace longer than it was granted, nor shorter.
#[test]
fn time_is_clamped_and_regrace_never_shortens() {
    let mut t = LockTable::new(config());
    let c = ConnId(1);
    t.apply(
        &Command::Use {
            session: sid(0),
            conn: c,
        },
        1000,
    );
    let got = t.apply(
        &Command::Acquire {
            session: sid(0),
            conn: c,
            legacy: false,
            mode: Mode::Ex,
            keys: vec![key(0)],
            wait: Wait::No,
            lease: None,
            permits: Vec::new(),
        },
        1000,
    );
    assert!(matches!(
        got,
        crate::Outcome::Acquired(Acquired::Granted(_))
    ));
    t.apply(&Command::Disconnect { conn: c }, 2000);
    assert_eq!(t.next_expiry(), Some(4000));
    // A later entry stamped before the last: acts at 2000.
    t.apply(&Command::Expire, 500);
    assert_eq!(t.last_now(), 2000);
    assert_eq!(t.locks_held(), 1);
    // A new leader restarts the grace at its full length from now...
    t.apply(&Command::Regrace, 3000);
    assert_eq!(t.next_expiry(), Some(5000));
    // ...and never shortens it.
    t.apply(&Command::Regrace, 3000);
    assert_eq!(t.next_expiry(), Some(5000));
    t.apply(&Command::Expire, 4999);
    assert_eq!(t.locks_held(), 1);
    t.apply(&Command::Expire, 5000);
    assert_eq!(t.locks_held(), 0);
    let mut gone = Vec::new();
    t.take_expired(&mut gone);
    assert_eq!(gone, vec![(sid(0), 1)]);
}

/// NodeDown ends exactly the connections of that node.
#[test]
fn node_down_ends_that_nodes_connections_only() {
    let mut t = LockTable::new(config());
    let on = |n: u16, c: u64| ConnId((u64::from(n) << 48) | c);
    for (i, conn) in [on(1, 1), on(1, 2), on(2, 1)].into_iter().enumerate() {
        t.apply(
            &Command::Use {
                session: sid(i as u8),
                conn,
            },
            0,
        );
        t.apply(
            &Command::Acquire {
                session: sid(i as u8),
                conn,
                legacy: false,
                mode: Mode::Sh,
                keys: vec![key(0)],
                wait: Wait::No,
                lease: None,
                permits: Vec::new(),
            },
            0,
        );
    }
    t.apply(&Command::NodeDown { node: 1 }, 10);
    assert_eq!(t.dead_session_count(), 2);
    assert!(t.session_state(&sid(2)).unwrap().connected);
}
