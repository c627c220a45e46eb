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
    /// Of a semaphore: the permits held (then `mode` is SH); 0 for a lock.
    pub permits: u16,
}

/// A queued request on a key, as [`LockTable::inspect`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaiterInfo {
    pub session: SessionId,
    pub mode: Mode,
    pub waited_ms: Millis,
    /// On a semaphore: the permits asked for (then `mode` is EX, as it is queued); 0 on
    /// a lock.
    pub permits: u16,
}

/// Holders and waiters of one key; both empty for a free key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyInfo {
    pub holders: Vec<HolderInfo>,
    /// In queue order.
    pub waiters: Vec<WaiterInfo>,
    /// A semaphore's capacity; 0 for a lock (or a free key).
    pub capacity: u16,
}

/// A session, as [`LockTable::sessions_info`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub session: SessionId,
    pub connected: bool,
    pub locks: u32,
    /// For a dead session: when its locks are released.
    pub expires_at: Option<Millis>,
    pub waiting: bool,
}

/// A queued request, as [`LockTable::longest_waiters`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingInfo {
    pub session: SessionId,
    pub mode: Mode,
    pub keys: Vec<Key>,
    pub waited_ms: Millis,
}

/// One lock of a session, as [`LockTable::locks_of`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub key: Key,
    pub mode: Mode,
    pub token: u64,
    /// Of a semaphore: the permits held; 0 for a lock.
    pub permits: u16,
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
                permits: h.permits,
            })
            .collect();
        holders.sort_by_key(|h| h.token);
        let waiters = e
            .queue
            .iter()
            .flat_map(|q| q.iter())
            .map(|q| {
                let w = &self.waiters[&q.wait];
                WaiterInfo {
                    session: self.session(q.session).id,
                    mode: q.mode,
                    waited_ms: now.saturating_sub(w.since),
                    permits: w.permits_on(k).unwrap_or(0),
                }
            })
            .collect();
        KeyInfo {
            holders,
            waiters,
            capacity: e.capacity(),
        }
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
                    permits: h.permits,
                });
            }
        }
        out.sort_by(|a, b| {
            (a.token, a.key.as_bytes(), a.mode).cmp(&(b.token, b.key.as_bytes(), b.mode))
        });
        Some(out)
    }

    /// Up to `limit` keys starting with `prefix` that are held or waited on, in key order,
    /// with their holders and waiters. Walks every key: for operators, not the hot path.
    pub fn keys_with_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
        now: Millis,
    ) -> Vec<(Key, KeyInfo)> {
        let mut keys: Vec<&Key> = self
            .keys
            .iter()
            .filter(|e| !e.holders.is_empty() || e.queue_len() > 0)
            .map(|e| &e.key)
            .filter(|k| k.as_bytes().starts_with(prefix))
            .collect();
        keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        keys.into_iter()
            .take(limit)
            .map(|k| (k.clone(), self.inspect(k.as_bytes(), now)))
            .collect()
    }

    /// Up to `limit` sessions, dead ones first (by expiry), then the rest by id.
    pub fn sessions_info(&self, limit: usize) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .sessions
            .iter()
            .flatten()
            .map(|s| SessionInfo {
                session: s.id,
                connected: s.conn.is_some(),
                locks: s.locks,
                expires_at: s.expires_at,
                waiting: s.wait.is_some(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.expires_at.is_none(), a.expires_at, a.session).cmp(&(
                b.expires_at.is_none(),
                b.expires_at,
                b.session,
            ))
        });
        out.truncate(limit);
        out
    }

    /// The `limit` requests that have waited longest. Walks only the queued requests.
    pub fn longest_waiters(&self, limit: usize, now: Millis) -> Vec<PendingInfo> {
        let mut w: Vec<_> = self.waiters.values().collect();
        w.sort_by_key(|x| x.since);
        w.into_iter()
            .take(limit)
            .map(|x| PendingInfo {
                session: self.session(x.session).id,
                mode: x.mode,
                keys: x
                    .keys
                    .iter()
                    .map(|&k| self.keys[k as usize].key.clone())
                    .collect(),
                waited_ms: now.saturating_sub(x.since),
            })
            .collect()
    }

    /// The `limit` keys with the longest queues, with their queue lengths. Walks only the
    /// queued requests.
    pub fn most_contended(&self, limit: usize) -> Vec<(Key, usize)> {
        let mut seen = hashbrown::HashSet::new();
        let mut keys: Vec<(usize, u32)> = Vec::new();
        for x in self.waiters.values() {
            for &k in &x.keys {
                if seen.insert(k) {
                    keys.push((self.keys[k as usize].queue_len(), k));
                }
            }
        }
        keys.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        keys.into_iter()
            .take(limit)
            .map(|(n, k)| (self.keys[k as usize].key.clone(), n))
            .collect()
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
