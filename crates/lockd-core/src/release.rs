//! RELEASE and RELEASE_ALL, and the hand-off to queued requests that follows.

use crate::key::Key;
use crate::table::LockTable;
use crate::types::{Millis, Mode, SessionId};

impl LockTable {
    /// Drops session `id`'s `mode` lock on each key; keys not held are ignored. Returns how
    /// many locks were released.
    pub fn release(&mut self, id: SessionId, mode: Mode, keys: &[Key], now: Millis) -> u32 {
        self.release_where(id, mode, keys, None, false, now)
    }

    /// Drops every permit session `id` holds of each semaphore in `keys` (only where they
    /// carry `token`, when given). Returns how many holds were released.
    pub fn release_permits(
        &mut self,
        id: SessionId,
        keys: &[Key],
        token: Option<u64>,
        now: Millis,
    ) -> u32 {
        self.release_where(id, Mode::Sh, keys, token, true, now)
    }

    /// Drops session `id`'s `mode` lock on each key only where it still carries `token`
    /// (the token of the grant the caller holds): a release from a holder that re-acquired
    /// since (the lock now carries a newer token) or that let go already is a no-op.
    /// Returns how many locks were released.
    pub fn release_token(
        &mut self,
        id: SessionId,
        mode: Mode,
        keys: &[Key],
        token: u64,
        now: Millis,
    ) -> u32 {
        self.release_where(id, mode, keys, Some(token), false, now)
    }

    /// [`LockTable::release`], restricted to locks carrying `token` when one is given, and
    /// to semaphores (`permits`) or to locks (not): a lock release never takes permits,
    /// nor the other way round.
    fn release_where(
        &mut self,
        id: SessionId,
        mode: Mode,
        keys: &[Key],
        token: Option<u64>,
        permits: bool,
        now: Millis,
    ) -> u32 {
        let Some(s) = self.find_session(&id) else {
            return 0;
        };
        let mut n = 0;
        for key in keys {
            let Some(k) = self.find_key(key.as_bytes()) else {
                continue;
            };
            if (self.keys[k as usize].capacity() > 0) != permits {
                continue;
            }
            let carries = |t: u64| {
                self.keys[k as usize]
                    .holders
                    .iter()
                    .any(|h| h.session == s && h.mode == mode && h.token == t)
            };
            if token.is_none_or(carries) && self.remove_holder(k, s, mode) {
                n += 1;
                self.grant_waiters(k, now);
                self.release_key_if_unused(k);
            }
        }
        self.forget_if_idle(s);
        n
    }

    /// Drops every lock of session `id`. Returns how many locks were released.
    pub fn release_all(&mut self, id: SessionId, now: Millis) -> u32 {
        let Some(s) = self.find_session(&id) else {
            return 0;
        };
        let n = self.release_all_of(s, now);
        self.forget_if_idle(s);
        n
    }

    pub(crate) fn release_all_of(&mut self, s: u32, now: Millis) -> u32 {
        let mut keys: Vec<u32> = self.session(s).keys.iter().copied().collect();
        // The set's iteration order depends on its history, which a replica restored from
        // a snapshot does not share; the order of release decides the order of grants.
        keys.sort_unstable();
        let mut n = 0;
        for &k in &keys {
            for mode in [Mode::Sh, Mode::Ex] {
                if self.remove_holder(k, s, mode) {
                    n += 1;
                }
            }
        }
        for &k in &keys {
            self.grant_waiters(k, now);
            self.release_key_if_unused(k);
        }
        n
    }
}
