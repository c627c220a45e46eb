//! Random command sequences on the lock table, four bytes a command: after every step no
//! key has conflicting holders, the lock count matches the holders and never passes
//! max_locks (queued requests included), grants are reported exactly once, and every
//! queued session is marked waiting.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockd_core::{Acquired, Config, ConnId, Key, LockTable, Mode, SessionId, WaitId, Wait};

const KEYS: u8 = 6;
const SESSIONS: u8 = 6;

fn sid(s: u8) -> SessionId {
    SessionId([b'a' + s; 32])
}

fn key(k: u8) -> Key {
    Key::new(&[b'k', k]).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let mut t = LockTable::new(Config { max_locks: 20, grace_ms: 100, max_waiters: 8, max_waiters_per_key: 4, ..Config::default() });
    let mut now = 0u64;
    let mut waits: Vec<(WaitId, u8)> = Vec::new();
    let mut woken = Vec::new();
    for op in data.chunks_exact(4) {
        let (kind, s, mask, flags) = (op[0] % 7, op[1] % SESSIONS, op[2], op[3]);
        let keys: Vec<Key> = (0..KEYS).filter(|k| mask & (1 << k) != 0).map(key).collect();
        let mode = if flags & 1 == 0 { Mode::Sh } else { Mode::Ex };
        match kind {
            0 | 1 => {
                t.use_session(sid(s), ConnId(s as u64));
                if keys.is_empty() || waits.iter().any(|&(_, x)| x == s) {
                    continue;
                }
                let wait = if kind == 1 { Wait::Queue } else { Wait::No };
                if let Acquired::Queued(w) = t.acquire(sid(s), mode, &keys, wait, now) {
                    waits.push((w, s));
                }
            }
            2 => {
                t.release(sid(s), mode, &keys, now);
            }
            3 => {
                t.release_all(sid(s), now);
            }
            4 => {
                t.disconnect(ConnId(s as u64), now);
                waits.retain(|&(_, x)| x != s);
            }
            5 => {
                if let Some(i) = waits.iter().position(|&(_, x)| x == s) {
                    let (w, _) = waits.remove(i);
                    assert!(t.time_out(w, now), "a pending wait can time out");
                }
            }
            _ => {
                now += (flags as u64) * 2;
                t.expire(now);
            }
        }
        t.take_wakeups(&mut woken);
        for w in woken.drain(..) {
            let i = waits.iter().position(|&(x, _)| x == w.wait).expect("woken waits were pending");
            waits.remove(i);
        }
        assert_eq!(t.waiter_count(), waits.len());
        let mut held = 0u64;
        for k in 0..KEYS {
            let info = t.inspect(key(k).as_bytes(), now);
            held += info.holders.len() as u64;
            for a in &info.holders {
                for b in &info.holders {
                    assert!(a.session == b.session || !(a.mode == Mode::Ex || b.mode == Mode::Ex), "conflicting holders");
                }
            }
            for w in &info.waiters {
                assert!(t.session_state(&w.session).is_some_and(|s| s.waiting), "a queued session is marked waiting");
            }
        }
        assert_eq!(held, t.locks_held());
        assert!(t.locks_held() <= 20, "max_locks passed: {}", t.locks_held());
        assert!(t.key_count() <= KEYS as usize, "more keys indexed than exist");
    }
});
