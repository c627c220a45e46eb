//! Revocation by an operator: REVOKE (a key's holders, or one of them) and SESSION KILL
//! (a session ends at once: its locks go, its wait is cancelled). The server allows these
//! only to connections with the admin right; the table does what it is told.
//!
//! Rules where revocation meets the rest: a revoked lock's holder is told (a `lost`
//! event), its lease goes with it, and the waiters it blocked move up at once, in queue
//! order. REVOKE takes holders only; a request waiting on the key keeps its place (and is
//! often what gets the key next). SESSION KILL cancels the session's wait, whose client is
//! answered as revoked, and unbinds the session from its connection, so that the
//! connection's next lock command is refused (`NOSESSION`) instead of making it anew.

use smallvec::SmallVec;

use crate::events::{EventKind, LostReason};
use crate::key::Key;
use crate::table::LockTable;
use crate::types::{Millis, Mode, SessionId, Wakeup, Woken};

impl LockTable {
    /// Takes session slot `s`'s locks on key slot `k` that carry `token` (all of them when
    /// None), telling the session why; waiters move up and the key is freed if unused.
    /// Returns how many locks went.
    pub(crate) fn take_lock(
        &mut self,
        k: u32,
        s: u32,
        token: Option<u64>,
        reason: LostReason,
        now: Millis,
    ) -> u32 {
        let n = self.take_holds(k, s, token, reason);
        if n > 0 {
            self.grant_waiters(k, now);
            self.release_key_if_unused(k);
        }
        n
    }

    /// [`LockTable::take_lock`] without moving the waiters up (the caller does, once).
    fn take_holds(&mut self, k: u32, s: u32, token: Option<u64>, reason: LostReason) -> u32 {
        let Some(e) = self.keys.get(k as usize) else {
            return 0;
        };
        let found: SmallVec<[(Mode, u64, u16); 2]> = e
            .holders
            .iter()
            .filter(|h| h.session == s && token.is_none_or(|t| h.token == t))
            .map(|h| (h.mode, h.token, h.permits))
            .collect();
        if found.is_empty() {
            return 0;
        }
        let key = e.key.clone();
        for &(mode, token, permits) in &found {
            self.emit(
                s,
                EventKind::Lost {
                    key: key.clone(),
                    mode,
                    token,
                    reason,
                    permits,
                },
            );
            self.remove_holder(k, s, mode);
        }
        found.len() as u32
    }

    /// REVOKE: releases the locks on `key` of every holder, or of session `only`. Returns
    /// how many locks were released.
    pub fn revoke(&mut self, key: &Key, only: Option<SessionId>, now: Millis) -> u32 {
        let Some(k) = self.find_key(key.as_bytes()) else {
            return 0;
        };
        let only = match only {
            Some(id) => match self.find_session(&id) {
                Some(s) => Some(s),
                None => return 0,
            },
            None => None,
        };
        let mut sessions: SmallVec<[u32; 4]> = SmallVec::new();
        for h in &self.keys[k as usize].holders {
            if only.is_none_or(|s| s == h.session) && !sessions.contains(&h.session) {
                sessions.push(h.session);
            }
        }
        // Every holder goes before any waiter moves up: a waiter granted by the first
        // release (an upgrade of one of the holders) is not a holder being revoked.
        let mut n = 0;
        for &s in &sessions {
            n += self.take_holds(k, s, None, LostReason::Revoked);
        }
        if n > 0 {
            self.grant_waiters(k, now);
            self.release_key_if_unused(k);
        }
        for &s in &sessions {
            self.forget_if_idle(s);
        }
        self.counters.revoked += u64::from(n);
        n
    }

    /// SESSION KILL: session `id` ends now, live or dead: its locks are released (each
    /// one told to it as lost), its wait is cancelled (answered [`Woken::Revoked`]), and
    /// it is forgotten. Returns how many locks it held, or None if there is no such
    /// session.
    pub fn end_session(&mut self, id: SessionId, now: Millis) -> Option<u32> {
        let s = self.find_session(&id)?;
        if let Some(w) = self.session(s).wait {
            if let Some(x) = self.dequeue(w) {
                self.wakeups.push(Wakeup {
                    wait: w,
                    outcome: Woken::Revoked,
                });
                for &k in &x.keys {
                    self.grant_waiters(k, now);
                    self.release_key_if_unused(k);
                }
            }
        }
        let mut keys: Vec<u32> = self.session(s).keys.iter().copied().collect();
        // Sorted: the set's order depends on its history, which replicas do not share.
        keys.sort_unstable();
        let mut n = 0;
        for &k in &keys {
            n += self.take_lock(k, s, None, LostReason::SessionEnded, now);
        }
        if let Some(c) = self.session(s).conn {
            if let Some(cs) = self.conns.get_mut(&c) {
                cs.list.retain(|&x| x != s);
            }
            self.session_mut(s).conn = None;
        }
        self.remove_session(s);
        self.counters.sessions_ended += 1;
        self.counters.revoked += u64::from(n);
        Some(n)
    }
}
