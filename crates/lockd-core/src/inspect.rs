//! Introspection: who holds and who waits on a key, what a session holds, table-wide
//! figures.

use crate::key::Key;
use crate::table::LockTable;
use crate::types::{Millis, Mode, SessionId};

/// A holder, as [`LockTable::inspect`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    pub session: SessionId,
    pub mode: Mode,
    pub token: u64,
    pub held_ms: Millis,
}

/// A queued request on a key, as [`LockTable::inspect`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaiterInfo {
    pub session: SessionId,
    pub mode: Mode,
    pub waited_ms: Millis,
}

/// Holders and waiters of one key; both empty for a free key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyInfo {
    pub holders: Vec<HolderInfo>,
    /// In queue order.
    pub waiters: Vec<WaiterInfo>,
}

/// One lock of a session, as [`LockTable::locks_of`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub key: Key,
    pub mode: Mode,
    pub token: u64,
}

impl LockTable {
    pub fn inspect(&self, key: &[u8], now: Millis) -> KeyInfo {
        let Some(k) = self.find_key(key) else {
            return KeyInfo::default();
        };
        let e = &self.keys[k as usize];
        let mut holders: Vec<HolderInfo> = e
            .holders
            .iter()
            .map(|h| HolderInfo {
                session: self.session(h.session).id,
                mode: h.mode,
                token: h.token,
                held_ms: now.saturating_sub(h.since),
            })
            .collect();
        holders.sort_by_key(|h| h.token);
        let waiters = e
            .queue
            .iter()
            .flat_map(|q| q.iter())
            .map(|w| {
                let x = &self.waiters[w];
                WaiterInfo {
                    session: self.session(x.session).id,
                    mode: x.mode,
                    waited_ms: now.saturating_sub(x.since),
                }
            })
            .collect();
        KeyInfo { holders, waiters }
    }

    /// The locks session `id` holds, ordered by token then key; `None` if no such session.
    pub fn locks_of(&self, id: &SessionId) -> Option<Vec<LockInfo>> {
        let s = self.find_session(id)?;
        let mut out = Vec::new();
        for &k in self.session(s).keys.iter() {
            let e = &self.keys[k as usize];
            for h in e.holders.iter().filter(|h| h.session == s) {
                out.push(LockInfo {
                    key: e.key.clone(),
                    mode: h.mode,
                    token: h.token,
                });
            }
        }
        out.sort_by(|a, b| {
            (a.token, a.key.as_bytes(), a.mode).cmp(&(b.token, b.key.as_bytes(), b.mode))
        });
        Some(out)
    }

    /// Whether `s` holds `key` in `mode` (for tests and checks).
    pub fn holds(&self, id: &SessionId, key: &[u8], mode: Mode) -> bool {
        let (Some(s), Some(k)) = (self.find_session(id), self.find_key(key)) else {
            return false;
        };
        self.keys[k as usize]
            .holders
            .iter()
            .any(|h| h.session == s && h.mode == mode)
    }

    /// The next fencing token to be issued.
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// Makes every future token at least `floor` (a restart continues above the tokens
    /// issued before it).
    pub fn raise_next_token(&mut self, floor: u64) {
        self.next_token = self.next_token.max(floor);
    }

    /// The highest token that may be issued before the limit is raised.
    pub fn token_limit(&self) -> u64 {
        self.token_limit
    }

    /// Tokens up to `limit` may be issued; past it, acquires answer
    /// [`crate::Acquired::TokensExhausted`] until the limit is raised (the server raises it
    /// after it has durably reserved a range).
    pub fn set_token_limit(&mut self, limit: u64) {
        self.token_limit = limit;
    }
}
