//! Deadlock detection: refuse a request whose wait would close a cycle of waits.
//!
//! A queued request waits on (a) the other sessions holding conflicting locks on its keys
//! and (b) the sessions of conflicting requests queued before it on its keys. Each session
//! waits on at most one request, so the wait-for graph has one outgoing edge set per
//! session and a depth-first search from the new request's targets finds any cycle back
//! to its session.

use hashbrown::HashSet;
use smallvec::SmallVec;

use crate::table::LockTable;
use crate::types::{Mode, WaitId};

impl LockTable {
    /// If queuing a request of session `s` for `mode` on `keys` (`None` for a key with no
    /// entry, which is free) would close a cycle, returns the session it would wait on that
    /// leads back to `s`.
    pub(crate) fn find_deadlock(&self, s: u32, mode: Mode, keys: &[Option<u32>]) -> Option<u32> {
        // Only holders and queued requests are waited on; a session holding nothing has no
        // queued request either (it is about to queue this one), so nothing waits on it.
        if self.session(s).locks == 0 {
            return None;
        }
        let mut first: SmallVec<[u32; 8]> = SmallVec::new();
        // Who will wait on the new request: `s` itself (through its held locks), and, on
        // keys `s` holds (where the request goes ahead of the queue), the conflicting
        // requests it goes ahead of. A cycle must come back to one of them.
        let mut targets: HashSet<u32> = HashSet::new();
        targets.insert(s);
        for &k in keys.iter().flatten() {
            self.wait_targets(s, mode, k, None, &mut |t| first.push(t));
            if self.session_holds_key(s, k) {
                if let Some(q) = &self.keys[k as usize].queue {
                    for w in q.iter() {
                        let x = &self.waiters[w];
                        if x.session != s
                            && !self.session_holds_key(x.session, k)
                            && mode.conflicts(x.mode)
                        {
                            targets.insert(x.session);
                        }
                    }
                }
            }
        }
        let mut seen: HashSet<u32> = HashSet::new();
        first
            .into_iter()
            .find(|&t| self.reaches(t, &targets, &mut seen))
    }

    /// Whether session `from` is one of `targets` or waits, directly or through others, on
    /// one of them.
    fn reaches(&self, from: u32, targets: &HashSet<u32>, seen: &mut HashSet<u32>) -> bool {
        let mut stack = vec![from];
        while let Some(x) = stack.pop() {
            if targets.contains(&x) {
                return true;
            }
            if !seen.insert(x) {
                continue;
            }
            let Some(w) = self.session(x).wait else {
                continue;
            };
            let waiter = &self.waiters[&w];
            for &k in &waiter.keys {
                self.wait_targets(x, waiter.mode, k, Some(w), &mut |t| {
                    if !seen.contains(&t) {
                        stack.push(t)
                    }
                });
            }
        }
        false
    }

    /// Calls `f` with each session that a request of `s` for `mode` on key `k` waits on:
    /// conflicting holders, and conflicting requests queued before `w` (or all of the
    /// queue for a request not yet queued) unless `s` holds `k` and so goes ahead of them.
    fn wait_targets(&self, s: u32, mode: Mode, k: u32, w: Option<WaitId>, f: &mut impl FnMut(u32)) {
        let e = &self.keys[k as usize];
        for h in &e.holders {
            if h.session != s && mode.conflicts(h.mode) {
                f(h.session);
            }
        }
        if self.session_holds_key(s, k) {
            return;
        }
        if let Some(q) = &e.queue {
            for x in q.iter() {
                if Some(*x) == w {
                    break;
                }
                let other = &self.waiters[x];
                if other.session != s && mode.conflicts(other.mode) {
                    f(other.session);
                }
            }
        }
    }
}
