//! The shadow table: what the benchmark believes each key's holders are. A grant that
//! contradicts it (an EX beside any other holder, an SH beside another's EX) is a
//! violation: the server gave one lock to two. It also times the longest stretch in which
//! no lock was granted at all: the outage a client saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::LockMode;

#[derive(Default)]
struct Holders {
    ex: Option<u32>,
    sh: Vec<u32>,
}

pub struct Shadow {
    keys: Mutex<HashMap<u64, Holders>>,
    pub violations: AtomicU64,
    started: std::time::Instant,
    /// Microseconds from `started` to the last grant, and the longest gap between grants.
    last_grant_us: AtomicU64,
    longest_gap_us: AtomicU64,
    /// Gaps of at least [`STALL`] (one per fault, typically), the first [`MAX_STALLS`].
    stalls: Mutex<Vec<u64>>,
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
        }
    }
}

impl Shadow {
    /// The longest time, until now, in which no lock was granted (from the start, and
    /// counting a stretch still going on).
    /// The stalls (gaps of at least [`STALL`] between grants) seen so far, in ms, sorted.
    pub fn stalls_ms(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .stalls
            .lock()
            .unwrap()
            .iter()
            .map(|us| us / 1000)
            .collect();
        v.sort_unstable();
        v
    }

    pub fn longest_outage(&self) -> std::time::Duration {
        let _keys = self.keys.lock().unwrap();
        let now = self.started.elapsed().as_micros() as u64;
        let open = now.saturating_sub(self.last_grant_us.load(Ordering::Relaxed));
        std::time::Duration::from_micros(self.longest_gap_us.load(Ordering::Relaxed).max(open))
    }

    /// Records that `session` was granted `key` in `mode`; counts a violation if that
    /// contradicts what is held.
    pub fn granted(&self, key: u64, session: u32, mode: LockMode) {
        let mut keys = self.keys.lock().unwrap();
        // Under the lock: grants are seen in order.
        let now = self.started.elapsed().as_micros() as u64;
        let gap = now.saturating_sub(self.last_grant_us.swap(now, Ordering::Relaxed));
        self.longest_gap_us.fetch_max(gap, Ordering::Relaxed);
        if gap >= STALL.as_micros() as u64 {
            let mut stalls = self.stalls.lock().unwrap();
            if stalls.len() < MAX_STALLS {
                stalls.push(gap);
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
        let mut keys = self.keys.lock().unwrap();
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

    /// A gap between grants of at least STALL is one stall, and the longest outage is at
    /// least it (the sleep bounds the gap from below, whatever the machine's speed).
    #[test]
    fn a_gap_between_grants_is_a_stall() {
        let s = Shadow::default();
        s.granted(1, 1, LockMode::Sh);
        s.granted(2, 1, LockMode::Sh);
        assert!(s.stalls_ms().is_empty(), "{:?}", s.stalls_ms());
        std::thread::sleep(STALL + std::time::Duration::from_millis(50));
        s.granted(3, 1, LockMode::Sh);
        let stalls = s.stalls_ms();
        assert_eq!(stalls.len(), 1, "{stalls:?}");
        assert!(stalls[0] >= 300, "{stalls:?}");
        assert!(s.longest_outage() >= STALL);
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
