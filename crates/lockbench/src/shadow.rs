//! The shadow table: what the benchmark believes each key's holders are. A grant that
//! contradicts it (an EX beside any other holder, an SH beside another's EX) is a
//! violation: the server gave one lock to two.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::LockMode;

#[derive(Default)]
struct Holders {
    ex: Option<u32>,
    sh: Vec<u32>,
}

#[derive(Default)]
pub struct Shadow {
    keys: Mutex<HashMap<u64, Holders>>,
    pub violations: AtomicU64,
}

impl Shadow {
    /// Records that `session` was granted `key` in `mode`; counts a violation if that
    /// contradicts what is held.
    pub fn granted(&self, key: u64, session: u32, mode: LockMode) {
        let mut keys = self.keys.lock().unwrap();
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
