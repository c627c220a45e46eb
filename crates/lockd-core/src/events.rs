//! Events about a session's own locks, for the server to push to the session's connection
//! (RESP3): a lock **lost** (revoked, its lease passed, its session ended by an operator),
//! and a lock **contended** (a request of another session queued behind it).
//!
//! The table makes them as part of applying a command (so a cluster's replicas make the
//! same ones, and each node pushes those of its own connections) and only for sessions
//! bound to a connection: a dead session has nobody to tell. [`LockTable::apply`] starts
//! every command with an empty list; the caller takes them after it
//! ([`LockTable::take_events`]), so the list never holds more than one command's worth.

use crate::key::Key;
use crate::table::LockTable;
use crate::types::{ConnId, Mode, SessionId};

/// Why a lock was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum LostReason {
    /// An operator revoked the key's holders (REVOKE).
    Revoked,
    /// Its lease passed without an EXTEND.
    LeaseExpired,
    /// An operator ended the session (SESSION KILL).
    SessionEnded,
}

impl LostReason {
    /// The protocol spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Revoked => "revoked",
            LostReason::LeaseExpired => "lease-expired",
            LostReason::SessionEnded => "session-ended",
        }
    }
}

/// What happened to one lock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum EventKind {
    /// The session no longer holds `key` in `mode` (the grant `token`).
    Lost {
        key: Key,
        mode: Mode,
        token: u64,
        reason: LostReason,
        /// Of a semaphore: the permits lost (then `mode` is SH); 0 for a lock.
        permits: u16,
    },
    /// A request for `wanted` on `key` waits for the session's `mode` lock (grant `token`):
    /// told once, when the first request queues behind the lock, or when the lock is
    /// granted with requests already queued behind it.
    Contended {
        key: Key,
        mode: Mode,
        token: u64,
        wanted: Mode,
        /// Of a semaphore: the permits the session holds; 0 for a lock.
        permits: u16,
    },
}

/// An event for the session `session`, bound to connection `conn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub session: SessionId,
    pub conn: ConnId,
    pub kind: EventKind,
}

impl LockTable {
    /// Moves the events of the last command applied into `out`.
    pub fn take_events(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.events);
    }

    /// Records `kind` for session slot `s`, if it has a connection to tell.
    pub(crate) fn emit(&mut self, s: u32, kind: EventKind) {
        let sess = self.session(s);
        if let Some(conn) = sess.conn {
            let session = sess.id;
            self.events.push(Event {
                session,
                conn,
                kind,
            });
        }
    }

    /// Tells the holders of key slot `k` that conflict with `wanted` that a request waits
    /// for them.
    pub(crate) fn emit_contended(&mut self, k: u32, wanted: Mode, from: u32) {
        let e = &self.keys[k as usize];
        let told: smallvec::SmallVec<[(u32, Mode, u64, u16); 2]> = e
            .holders
            .iter()
            .filter(|h| h.session != from && wanted.conflicts(h.mode))
            .map(|h| (h.session, h.mode, h.token, h.permits))
            .collect();
        if told.is_empty() {
            return;
        }
        let key = e.key.clone();
        for (s, mode, token, permits) in told {
            self.emit(
                s,
                EventKind::Contended {
                    key: key.clone(),
                    mode,
                    token,
                    wanted,
                    permits,
                },
            );
        }
    }
}
