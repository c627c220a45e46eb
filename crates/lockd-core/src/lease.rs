//! Leases: a grant that ends by itself when its lease passes, unless its holder extends it
//! (EXTEND, naming the grant's token).
//!
//! A lease belongs to one grant (one fencing token, all the keys of that request). It is
//! kept by token, with its deadlines in a sorted set, so that `apply` releases what has
//! passed before every command, as it does for dead sessions. Rules where it meets the
//! rest of the table:
//! - A lease and a session's grace are independent; whichever ends first lets the locks
//!   go. A dead session's locks still go when its grace ends, even with time left on a
//!   lease; a live session's leased locks go when the lease passes.
//! - A lease goes with the locks that carry its token: once none does (released, revoked,
//!   or re-acquired by the same session, which gives the lock a new token), the lease is
//!   gone, and EXTEND of that token is refused.
//! - A new cluster leader gives every lease its full length from then (`Regrace`), as etcd
//!   does: an extension cannot commit while there is no leader, and a holder must not lose
//!   its lock for that.

use smallvec::SmallVec;

use crate::events::LostReason;
use crate::table::LockTable;
use crate::types::{ConnId, Millis, SessionId};

/// The longest lease one request may ask for: a day. A longer hold is what a plain lock
/// (ended by RELEASE or the session) is for.
pub const MAX_LEASE_MS: Millis = 86_400_000;

/// One grant's lease.
#[derive(Clone, Debug)]
pub(crate) struct Lease {
    pub session: u32,
    /// The slots of the keys granted (a slot whose lock went since is skipped).
    pub keys: SmallVec<[u32; 2]>,
    /// How many of those locks still carry the token.
    pub held: u32,
    /// Its length, for EXTEND without one and for `Regrace`.
    pub ms: Millis,
    pub until: Millis,
}

/// Why an EXTEND was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ExtendError {
    /// No lock of this session carries a lease with that token: it passed, or the locks
    /// were released or revoked, or the grant had no lease.
    NoLease,
    /// The session is not bound to the connection that asked.
    NotBound,
}

impl LockTable {
    /// Starts the lease of the grant `token` of session `s` on key slots `keys`.
    pub(crate) fn start_lease(
        &mut self,
        s: u32,
        token: u64,
        keys: &[u32],
        ms: Millis,
        now: Millis,
    ) {
        let mut slots: SmallVec<[u32; 2]> = keys.iter().copied().collect();
        slots.sort_unstable();
        slots.dedup();
        let until = now.saturating_add(ms);
        let held = slots.len() as u32;
        self.leases.insert(
            token,
            Lease {
                session: s,
                keys: slots,
                held,
                ms,
                until,
            },
        );
        self.lease_order.insert((until, token));
    }

    /// One lock that carried `token` is gone: the lease goes with the last of them.
    pub(crate) fn lease_lock_gone(&mut self, token: u64) {
        if self.leases.is_empty() {
            return;
        }
        if let Some(l) = self.leases.get_mut(&token) {
            l.held = l.held.saturating_sub(1);
            if l.held == 0 {
                let until = l.until;
                self.leases.remove(&token);
                self.lease_order.remove(&(until, token));
            }
        }
    }

    /// EXTEND: the lease of grant `token` now ends `ms` from `now` (its own length when
    /// `ms` is None). Returns the new deadline.
    pub fn extend(
        &mut self,
        id: SessionId,
        conn: ConnId,
        token: u64,
        ms: Option<Millis>,
        now: Millis,
    ) -> Result<Millis, ExtendError> {
        let s = match self.find_session(&id) {
            Some(s) if self.session(s).conn == Some(conn) => s,
            _ => return Err(ExtendError::NotBound),
        };
        let Some(l) = self.leases.get_mut(&token).filter(|l| l.session == s) else {
            return Err(ExtendError::NoLease);
        };
        let old = l.until;
        if let Some(ms) = ms {
            l.ms = ms;
        }
        l.until = now.saturating_add(l.ms);
        let until = l.until;
        self.lease_order.remove(&(old, token));
        self.lease_order.insert((until, token));
        self.counters.lease_extensions += 1;
        Ok(until)
    }

    /// When the next lease passes, if any.
    pub(crate) fn next_lease_end(&self) -> Option<Millis> {
        self.lease_order.first().map(|&(at, _)| at)
    }

    /// Releases every grant whose lease passed by `now`, in deadline order (ties by
    /// token): each lock goes, its holder is told (if subscribed), and waiters move up.
    pub(crate) fn expire_leases(&mut self, now: Millis) {
        while let Some(&(at, token)) = self.lease_order.first() {
            if at > now {
                break;
            }
            self.lease_order.pop_first();
            let Some(l) = self.leases.remove(&token) else {
                continue;
            };
            self.counters.leases_expired += 1;
            for &k in &l.keys {
                self.take_lock(k, l.session, Some(token), LostReason::LeaseExpired, now);
            }
            self.forget_if_idle(l.session);
        }
    }

    /// Gives every lease at least its full length from `now` (see the module docs).
    pub(crate) fn relengthen_leases(&mut self, now: Millis) {
        let all: Vec<(Millis, u64)> = self.lease_order.iter().copied().collect();
        for (at, token) in all {
            // Every deadline has its lease (they are made and dropped together).
            let Some(l) = self.leases.get_mut(&token) else {
                continue;
            };
            let new_at = at.max(now.saturating_add(l.ms));
            if new_at != at {
                l.until = new_at;
                self.lease_order.remove(&(at, token));
                self.lease_order.insert((new_at, token));
            }
        }
    }

    /// The deadline of grant `token`'s lease, if it has one.
    pub fn lease_of(&self, token: u64) -> Option<Millis> {
        self.leases.get(&token).map(|l| l.until)
    }

    /// Leases running.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }
}
