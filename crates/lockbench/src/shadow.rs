//! The shadow table: what the benchmark believes each key's holders are. A grant that
//! contradicts it (an EX beside any other holder, an SH beside another's EX) is a
//! violation: the server gave one lock to two. It also times the longest stretch in which
//! no lock was granted at all: the outage a client saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::LockMode;

#[derive(Default)]
struct Holders {
    ex: Option<u32>,
    sh: Vec<u32>,
}

pub struct Shadow {
    keys: Mutex<Keys>,
    pub violations: AtomicU64,
    started: std::time::Instant,
    /// Microseconds from `started` to the last grant, and the longest gap between grants.
    last_grant_us: AtomicU64,
    longest_gap_us: AtomicU64,
    /// Gaps of at least [`STALL`] (one per fault, typically), the first [`MAX_STALLS`]:
    /// (microseconds from `started` to the gap's start, its length in microseconds).
    stalls: Mutex<Vec<(u64, u64, Placement)>>,
    /// With `--reconnect`: how many connections are on each node (by its place in
    /// `--addr`, the first [`MAX_NODES`]) and how many are between two (reconnecting),
    /// kept with each stall as it ends, to tell a fault that stopped a cluster from one
    /// that stopped the clients gathered on its node.
    pub placed: [AtomicU32; MAX_NODES],
    pub recovering: AtomicU32,
    /// `started` on the wall clock (Unix microseconds), to line stalls up with the faults
    /// a harness injected (`--stall-log`).
    started_unix_us: u64,
    /// Violations that were a token not above an earlier grant's.
    pub token_violations: AtomicU64,
    /// Violations that were an acknowledged lock gone before its session's grace ended
    /// (see `resume`).
    pub lost_in_grace: AtomicU64,
}

/// What the shadow table knows, under one lock (a grant takes it once).
#[derive(Default)]
struct Keys {
    holders: HashMap<u64, Holders>,
    /// Per key: the highest fencing token granted (any mode, and EX). Kept after the
    /// holders are gone, as the next grant's floor.
    fences: HashMap<u64, Fence>,
}

#[derive(Default)]
struct Fence {
    any: u64,
    ex: u64,
}

/// The nodes [`Shadow::placed`] tells apart.
pub const MAX_NODES: usize = 8;

/// Where the connections were when a stall ended: per node, and reconnecting.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Placement {
    pub on: [u32; MAX_NODES],
    pub recovering: u32,
}

/// A gap between grants this long is a stall: counted, and its length kept.
pub const STALL: std::time::Duration = std::time::Duration::from_millis(250);
const MAX_STALLS: usize = 10_000;

impl Default for Shadow {
    fn default() -> Shadow {
        Shadow {
            keys: Mutex::default(),
            violations: AtomicU64::new(0),
            started: std::time::Instant::now(),
            last_grant_us: AtomicU64::new(0),
            longest_gap_us: AtomicU64::new(0),
            stalls: Mutex::default(),
            placed: Default::default(),
            recovering: AtomicU32::new(0),
            token_violations: AtomicU64::new(0),
            lost_in_grace: AtomicU64::new(0),
            started_unix_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        }
    }
}

impl Shadow {
    /// The stalls (gaps of at least [`STALL`] between grants) seen so far, in ms, sorted.
    pub fn stalls_ms(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .stalls
            .lock()
            .unwrap()
            .iter()
            .map(|&(_, us, _)| us / 1000)
            .collect();
        v.sort_unstable();
        v
    }

    /// The stalls in the order they happened: (when each began, in Unix seconds; its
    /// length in ms; where the connections were when it ended).
    pub fn stall_times(&self) -> Vec<(f64, u64, Placement)> {
        self.stalls
            .lock()
            .unwrap()
            .iter()
            .map(|&(at, us, p)| ((self.started_unix_us + at) as f64 / 1e6, us / 1000, p))
            .collect()
    }

    fn placement(&self) -> Placement {
        Placement {
            on: std::array::from_fn(|i| self.placed[i].load(Ordering::Relaxed)),
            recovering: self.recovering.load(Ordering::Relaxed),
        }
    }

    /// The longest time in which no lock was granted, from the start, counting a stretch
    /// still going on up to `until` (the run's end: after it no request is sent, and the
    /// last batches committing, over a slow disk say, are no outage), or now if sooner.
    pub fn longest_outage(&self, until: std::time::Instant) -> std::time::Duration {
        let _keys = self.keys.lock().unwrap();
        let now = self
            .started
            .elapsed()
            .min(until.saturating_duration_since(self.started))
            .as_micros() as u64;
        let open = now.saturating_sub(self.last_grant_us.load(Ordering::Relaxed));
        std::time::Duration::from_micros(self.longest_gap_us.load(Ordering::Relaxed).max(open))
    }

    /// Records that `session` was granted `key` in `mode`; counts a violation if that
    /// contradicts what is held.
    pub fn granted(&self, key: u64, session: u32, mode: LockMode) {
        self.granted_with(key, session, mode, None);
    }

    /// As [`Shadow::granted`], with the grant's fencing token where the protocol gives one:
    /// a violation too if it is not above the tokens of the grants it must follow. Those
    /// are every earlier grant on the key for an EX, the earlier EX grants for an SH (two
    /// SH grants may be answered in either order); a grant is recorded here before its
    /// holder sends the release that lets the next one in, so "earlier" here is earlier
    /// at the server. A session's grant on a key it already holds is not checked (it may
    /// be the same lock).
    pub fn granted_with(&self, key: u64, session: u32, mode: LockMode, token: Option<u64>) {
        let mut guard = self.keys.lock().unwrap();
        let Keys {
            holders: keys,
            fences,
        } = &mut *guard;
        if let Some(t) = token {
            let holds = keys
                .get(&key)
                .is_some_and(|h| h.ex == Some(session) || h.sh.contains(&session));
            let f = fences.entry(key).or_default();
            let floor = match mode {
                LockMode::Sh => f.ex,
                _ => f.any,
            };
            if !holds && t <= floor {
                self.token_violations.fetch_add(1, Ordering::Relaxed);
                self.violations.fetch_add(1, Ordering::Relaxed);
            }
            f.any = f.any.max(t);
            if mode != LockMode::Sh {
                f.ex = f.ex.max(t);
            }
        }
        // Under the lock: grants are seen in order.
        let now = self.started.elapsed().as_micros() as u64;
        let gap = now.saturating_sub(self.last_grant_us.swap(now, Ordering::Relaxed));
        self.longest_gap_us.fetch_max(gap, Ordering::Relaxed);
        if gap >= STALL.as_micros() as u64 {
            let mut stalls = self.stalls.lock().unwrap();
            if stalls.len() < MAX_STALLS {
                stalls.push((now - gap, gap, self.placement()));
            }
        }
        let h = keys.entry(key).or_default();
        let clash = match mode {
            LockMode::Sh => h.ex.is_some_and(|s| s != session),
            _ => h.ex.is_some_and(|s| s != session) || h.sh.iter().any(|&s| s != session),
        };
        if clash {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        match mode {
            LockMode::Sh => h.sh.push(session),
            _ => h.ex = Some(session),
        }
    }

    /// Records that `session` is about to release `key` in `mode` (called before the
    /// release is sent, so a grant to another after it is never mistaken for a clash).
    pub fn releasing(&self, key: u64, session: u32, mode: LockMode) {
        let mut guard = self.keys.lock().unwrap();
        let keys = &mut guard.holders;
        if let Some(h) = keys.get_mut(&key) {
            match mode {
                LockMode::Sh => {
                    if let Some(i) = h.sh.iter().position(|&s| s == session) {
                        h.sh.swap_remove(i);
                    }
                }
                _ => {
                    if h.ex == Some(session) {
                        h.ex = None;
                    }
                }
            }
            if h.ex.is_none() && h.sh.is_empty() {
                keys.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_not_above_an_earlier_grant_is_a_violation() {
        let s = Shadow::default();
        s.granted_with(1, 1, LockMode::Ex, Some(10));
        s.releasing(1, 1, LockMode::Ex);
        // The next EX must be above 10; SH grants after it above the EX's token, in any
        // order among themselves.
        s.granted_with(1, 2, LockMode::Ex, Some(9));
        assert_eq!(s.token_violations.load(Ordering::Relaxed), 1);
        s.releasing(1, 2, LockMode::Ex);
        s.granted_with(1, 3, LockMode::Sh, Some(12));
        s.granted_with(1, 4, LockMode::Sh, Some(11));
        assert_eq!(
            s.token_violations.load(Ordering::Relaxed),
            1,
            "SH after SH: any order"
        );
        // A session granted again on a key it holds is not checked (the same lock).
        s.granted_with(1, 4, LockMode::Sh, Some(11));
        assert_eq!(s.token_violations.load(Ordering::Relaxed), 1);
        s.releasing(1, 3, LockMode::Sh);
        s.releasing(1, 4, LockMode::Sh);
        s.releasing(1, 4, LockMode::Sh);
        s.granted_with(1, 5, LockMode::Ex, Some(12));
        assert_eq!(
            s.token_violations.load(Ordering::Relaxed),
            2,
            "EX at an SH's token"
        );
        assert_eq!(s.violations.load(Ordering::Relaxed), 2);
    }

    /// A gap between grants of at least STALL is one stall, and the longest outage is at
    /// least it (the sleep bounds the gap from below, whatever the machine's speed).
    #[test]
    fn a_gap_between_grants_is_a_stall() {
        let s = Shadow::default();
        s.granted(1, 1, LockMode::Sh);
        s.granted(2, 1, LockMode::Sh);
        assert!(s.stalls_ms().is_empty(), "{:?}", s.stalls_ms());
        s.placed[1].store(2, Ordering::Relaxed);
        s.recovering.store(1, Ordering::Relaxed);
        std::thread::sleep(STALL + std::time::Duration::from_millis(50));
        s.granted(3, 1, LockMode::Sh);
        let stalls = s.stalls_ms();
        assert_eq!(stalls.len(), 1, "{stalls:?}");
        assert!(stalls[0] >= 300, "{stalls:?}");
        // It began at the second grant, by the wall clock.
        let [(at, ms, placed)] = s.stall_times()[..] else {
            panic!("{:?}", s.stall_times())
        };
        // Where the connections were as it ended.
        assert_eq!((&placed.on[..3], placed.recovering), (&[0, 2, 0][..], 1));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert_eq!(ms, stalls[0]);
        assert!(at <= now - 0.3 && at > now - 5.0, "{at} vs {now}");
        let far = std::time::Instant::now() + std::time::Duration::from_secs(60);
        assert!(s.longest_outage(far) >= STALL);
    }

    /// A stretch without a grant still going on counts up to the run's end, not after it.
    #[test]
    fn the_stretch_after_the_run_is_no_outage() {
        let s = Shadow::default();
        s.granted(1, 1, LockMode::Sh);
        let end = std::time::Instant::now() + std::time::Duration::from_millis(20);
        std::thread::sleep(std::time::Duration::from_millis(150));
        let until_end = s.longest_outage(end);
        assert!(
            until_end < std::time::Duration::from_millis(100),
            "{until_end:?}"
        );
        let far = std::time::Instant::now() + std::time::Duration::from_secs(60);
        assert!(s.longest_outage(far) >= std::time::Duration::from_millis(150));
    }

    #[test]
    fn detects_double_ex_and_ex_beside_sh() {
        let s = Shadow::default();
        s.granted(1, 1, LockMode::Ex);
        s.granted(1, 2, LockMode::Ex);
        assert_eq!(s.violations.load(Ordering::Relaxed), 1);
        s.granted(2, 1, LockMode::Sh);
        s.granted(2, 2, LockMode::Sh);
        assert_eq!(
            s.violations.load(Ordering::Relaxed),
            1,
            "SH beside SH is fine"
        );
        s.granted(2, 3, LockMode::Ex);
        assert_eq!(s.violations.load(Ordering::Relaxed), 2);
        s.releasing(3, 1, LockMode::Ex);
        s.releasing(1, 1, LockMode::Ex);
        s.releasing(1, 2, LockMode::Ex);
        s.granted(1, 3, LockMode::Ex);
        assert_eq!(
            s.violations.load(Ordering::Relaxed),
            2,
            "released keys are free"
        );
    }
}
