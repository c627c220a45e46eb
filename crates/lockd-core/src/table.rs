//! The lock table's state and the bookkeeping every command family shares: the key slab
//! and its index, the session slab, holders and queues.
//!
//! Memory is the design constraint here: a held lock on a short key costs one 72-byte slab
//! entry, a slot in the key index and a slot in its session's key set (see the
//! `lock_entry_is_small` test and BENCHMARKS.md for the measured figure).

use std::collections::{BTreeSet, VecDeque};

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use smallvec::SmallVec;

use crate::events::Event;
use crate::key::Key;
use crate::lease::Lease;
use crate::types::{ConnId, Millis, Mode, SessionId, WaitId, Wakeup};

/// The largest fencing token: tokens travel as RESP integers, which are signed 64-bit.
pub const MAX_TOKEN: u64 = i64::MAX as u64;

/// Limits and defaults of a table.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most locks held at once, over all sessions (`maxLocks`).
    pub max_locks: u64,
    /// How long a dead session keeps its locks, unless it set its own grace (`lockTimeout`).
    pub grace_ms: Millis,
    /// Most queued requests at once, over all keys.
    pub max_waiters: usize,
    /// Most queued requests on one key.
    pub max_waiters_per_key: usize,
    /// Most steps one deadlock search may take before the request is refused as a
    /// possible deadlock (see `deadlock`).
    pub deadlock_search_budget: u64,
    /// A deliberately broken table, for tests that show a safety check catches a double
    /// grant. Honoured only when built with the `fault-injection` feature (no shipped
    /// binary is); ignored otherwise.
    pub fault: Fault,
}

/// See [`Config::fault`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Requests (try-locks and new waits) are granted without the conflict check.
    GrantAtOnce,
    /// Queued requests are granted, when their key is let go, without the conflict check.
    GrantQueued,
    /// The token counter does not advance: every grant gets the same fencing token.
    TokensRepeat,
    /// A session whose connection is lost gets no grace: its locks go at once (lockbench's
    /// resume check must catch it).
    NoGrace,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_locks: 10_000,
            grace_ms: 60_000,
            max_waiters: 100_000,
            max_waiters_per_key: 10_000,
            deadlock_search_budget: crate::deadlock::SEARCH_BUDGET,
            fault: Fault::None,
        }
    }
}

/// One session's hold of one key in one mode; on a semaphore, of `permits` of its permits
/// (a semaphore's holders have mode SH, so that the lock paths never see them as EX).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Holder {
    pub token: u64,
    pub since: Millis,
    pub session: u32,
    pub mode: Mode,
    /// 0 on a lock.
    pub permits: u16,
}

pub(crate) struct KeyEntry {
    pub key: Key,
    pub holders: SmallVec<[Holder; 1]>,
    // Boxed: most keys never have a queue, and an empty one is 40 bytes.
    pub queue: Option<Box<Queue>>,
}

/// One queued request on a key, with what the walks down a queue need (so that they read
/// the queue alone, not the waiters map).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QEntry {
    pub wait: WaitId,
    pub session: u32,
    pub mode: Mode,
}

/// The requests waiting on a key, in queue order, and how many of them are EX (so that a
/// new request's compatibility with the whole queue is known without walking it). A
/// semaphore key always has one: it holds the capacity and the permits held, and its
/// requests are queued as EX (each waits for everything queued before it: strict FIFO, so
/// a large request is not starved by small ones).
///
/// The queue is two runs, each in the order of its [`WaitId`]s (which are issued in
/// increasing order): first the requests of sessions that held the key when they queued
/// (they go ahead of the others, see `acquire`), then everyone else's, appended at the
/// back. So a request's position is found by binary search, not by a walk.
#[derive(Default)]
pub(crate) struct Queue {
    entries: VecDeque<QEntry>,
    ex: u32,
    /// How many entries at the front are holders' requests.
    jumpers: u32,
    /// Scratch for the deadlock search (see `deadlock`): what of this queue the current
    /// search has walked already. Valid only while its epoch is the search's.
    pub memo: std::cell::Cell<SearchMemo>,
    /// A semaphore's permits (0: the key is a lock), and how many its holders hold.
    pub capacity: u16,
    pub held: u32,
}

/// What one deadlock search has done with one key (see `deadlock`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SearchMemo {
    pub epoch: u32,
    /// The holders were walked for an SH request (bit 0) or an EX one (bit 1).
    pub holders: u8,
    /// Every entry before this position was followed.
    pub all: u32,
    /// Every EX entry before this position was followed.
    pub ex: u32,
}

impl std::ops::Deref for Queue {
    type Target = VecDeque<QEntry>;
    fn deref(&self) -> &VecDeque<QEntry> {
        &self.entries
    }
}

impl Queue {
    /// Queues a request: behind the holders' requests already queued if `jumper` (its
    /// session holds the key), else at the back.
    pub fn push(&mut self, e: QEntry, jumper: bool) {
        if jumper {
            self.entries.insert(self.jumpers as usize, e);
            self.jumpers += 1;
        } else {
            self.entries.push_back(e);
        }
        self.ex += (e.mode == Mode::Ex) as u32;
    }

    /// Where request `w` is, in O(log n).
    pub fn position(&self, w: WaitId) -> Option<usize> {
        let j = self.jumpers as usize;
        let (front, back) = self.entries.as_slices();
        let find = |lo: usize, hi: usize| -> Option<usize> {
            // Binary search over entries lo..hi of the ring buffer.
            let (mut lo, mut hi) = (lo, hi);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let at = if mid < front.len() {
                    front[mid].wait
                } else {
                    back[mid - front.len()].wait
                };
                match at.cmp(&w) {
                    std::cmp::Ordering::Equal => return Some(mid),
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                }
            }
            None
        };
        find(0, j).or_else(|| find(j, self.entries.len()))
    }

    /// A queue as an image describes it (see `image`), of a semaphore of `capacity`
    /// permits of which `held` are held (0, 0 for a lock).
    pub fn restore(entries: VecDeque<QEntry>, jumpers: u32, capacity: u16, held: u32) -> Queue {
        let ex = entries.iter().filter(|e| e.mode == Mode::Ex).count() as u32;
        // Never past the entries, whatever the image says: positions rely on it.
        let jumpers = jumpers.min(entries.len() as u32);
        Queue {
            entries,
            ex,
            jumpers,
            memo: Default::default(),
            capacity,
            held,
        }
    }

    pub fn jumpers(&self) -> u32 {
        self.jumpers
    }

    /// The queue a semaphore of `capacity` permits starts with.
    pub fn semaphore(capacity: u16) -> Queue {
        Queue {
            capacity,
            ..Queue::default()
        }
    }

    pub fn remove(&mut self, w: WaitId) {
        if let Some(pos) = self.position(w) {
            let e = self.entries.remove(pos).expect("position is in range");
            self.ex -= (e.mode == Mode::Ex) as u32;
            self.jumpers -= (pos < self.jumpers as usize) as u32;
        }
    }

    /// Whether a request of `mode` from a session with nothing queued here conflicts with
    /// anything queued.
    pub fn conflicts_with(&self, mode: Mode) -> bool {
        match mode {
            Mode::Ex => !self.entries.is_empty(),
            Mode::Sh => self.ex > 0,
        }
    }
}

impl KeyEntry {
    fn is_unused(&self) -> bool {
        self.holders.is_empty() && self.queue.as_ref().is_none_or(|q| q.is_empty())
    }

    pub fn queue_len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    /// The semaphore's capacity, or 0 for a lock.
    pub fn capacity(&self) -> u16 {
        self.queue.as_ref().map_or(0, |q| q.capacity)
    }
}

pub(crate) struct Session {
    pub id: SessionId,
    pub conn: Option<ConnId>,
    /// Slab indices of the keys this session holds at least one lock on.
    pub keys: HashTable<u32>,
    /// Locks held: (key, mode) pairs.
    pub locks: u32,
    /// Set while the session is dead: when its locks are released.
    pub expires_at: Option<Millis>,
    pub grace: Option<Millis>,
    pub wait: Option<WaitId>,
}

pub(crate) struct Waiter {
    pub session: u32,
    pub mode: Mode,
    pub keys: SmallVec<[u32; 2]>,
    pub since: Millis,
    /// The lease its grant gets, if it asked for one.
    pub lease: Option<Millis>,
    /// Of `keys`, the semaphores, with the permits asked of each.
    pub permits: SmallVec<[(u32, u16); 1]>,
}

impl Waiter {
    /// The permits this request asks of key slot `k`, if `k` is one of its semaphores.
    pub fn permits_on(&self, k: u32) -> Option<u16> {
        self.permits.iter().find(|&&(x, _)| x == k).map(|&(_, p)| p)
    }
}

/// Counters since the table was made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Counters {
    pub grants: u64,
    pub conflicts: u64,
    pub timeouts: u64,
    pub deadlocks: u64,
    pub expired_sessions: u64,
    pub too_many_locks: u64,
    /// Requests refused because their deadlock search passed its step budget.
    pub deadlock_searches_too_large: u64,
    /// Steps taken by deadlock searches (holders, queue entries and waiters' keys looked
    /// at): what the search costs, for tests and metrics.
    pub deadlock_search_steps: u64,
    /// Locks released by an operator (REVOKE, SESSION KILL).
    pub revoked: u64,
    /// Sessions ended by an operator (SESSION KILL).
    pub sessions_ended: u64,
    /// Grants whose lease passed (their locks released).
    pub leases_expired: u64,
    /// Leases extended (EXTEND).
    pub lease_extensions: u64,
}

/// The lock table: a deterministic state machine. It does no I/O and reads no clock.
pub struct LockTable {
    pub(crate) config: Config,
    pub(crate) keys: Vec<KeyEntry>,
    pub(crate) free_keys: Vec<u32>,
    key_index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    pub(crate) sessions: Vec<Option<Session>>,
    pub(crate) free_sessions: Vec<u32>,
    session_index: HashMap<SessionId, u32>,
    pub(crate) conns: HashMap<ConnId, ConnSessions>,
    pub(crate) waiters: HashMap<WaitId, Waiter>,
    pub(crate) next_wait: u64,
    pub(crate) expiries: BTreeSet<(Millis, u32)>,
    pub(crate) next_token: u64,
    pub(crate) token_limit: u64,
    pub(crate) locks_held: u64,
    /// Of `locks_held`, how many are SH.
    pub(crate) locks_sh: u64,
    /// Of `locks_held`, how many are holds of semaphore permits.
    pub(crate) sem_holds: u64,
    pub(crate) dead_sessions: usize,
    pub(crate) counters: Counters,
    pub(crate) wakeups: Vec<Wakeup>,
    /// Deadlock search scratch: which sessions the current search has reached (by slab
    /// index, holding the search's epoch), and that epoch.
    pub(crate) search_seen: Vec<u32>,
    pub(crate) search_epoch: u32,
    /// The latest time applied (see `command`).
    pub(crate) last_now: Millis,
    /// Sessions expired by `apply`, for the caller to log.
    pub(crate) expired: Vec<(SessionId, u32)>,
    /// Cluster nodes declared down (see `Command::NodeDown`).
    pub(crate) down_nodes: BTreeSet<u16>,
    pub(crate) bootstrapped: bool,
    /// Leases by their grant's token, and their deadlines in order (see `lease`).
    pub(crate) leases: HashMap<u64, Lease>,
    pub(crate) lease_order: BTreeSet<(Millis, u64)>,
    /// Events of the command being applied (see `events`).
    pub(crate) events: Vec<Event>,
}

/// The sessions bound to one connection.
#[derive(Default)]
pub(crate) struct ConnSessions {
    pub list: Vec<u32>,
    /// When `list` reaches this length, sessions without locks are pruned from it, so a
    /// client cycling through session ids cannot grow the table without bound.
    pub prune_at: usize,
}

/// Deterministic hash for slab indices: the session key sets are iterated (release-all,
/// expiry), and replicas of a replicated table must iterate in the same order.
pub(crate) fn index_hash(i: u32) -> u64 {
    let p = (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    (p as u64) ^ ((p >> 64) as u64)
}

impl LockTable {
    pub fn new(config: Config) -> LockTable {
        LockTable {
            config,
            keys: Vec::new(),
            free_keys: Vec::new(),
            key_index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            session_index: HashMap::new(),
            conns: HashMap::new(),
            waiters: HashMap::new(),
            next_wait: 1,
            expiries: BTreeSet::new(),
            next_token: 1,
            token_limit: MAX_TOKEN,
            locks_held: 0,
            locks_sh: 0,
            sem_holds: 0,
            dead_sessions: 0,
            counters: Counters::default(),
            wakeups: Vec::new(),
            search_seen: Vec::new(),
            search_epoch: 0,
            last_now: 0,
            expired: Vec::new(),
            down_nodes: BTreeSet::new(),
            bootstrapped: false,
            leases: HashMap::new(),
            lease_order: BTreeSet::new(),
            events: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the table is built to misbehave this way (see [`Config::fault`]).
    #[inline]
    pub(crate) fn faulty(&self, f: Fault) -> bool {
        cfg!(feature = "fault-injection") && self.config.fault == f
    }

    /// Changes `max_locks`; locks already held stay held.
    pub fn set_max_locks(&mut self, max_locks: u64) {
        self.config.max_locks = max_locks;
    }

    /// Moves queued requests granted since the last call into `out`.
    pub fn take_wakeups(&mut self, out: &mut Vec<Wakeup>) {
        out.append(&mut self.wakeups);
    }

    // ---- keys ----

    fn hash_key(&self, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    pub(crate) fn find_key(&self, key: &[u8]) -> Option<u32> {
        let h = self.hash_key(key);
        let keys = &self.keys;
        self.key_index
            .find(h, |&i| keys[i as usize].key.as_bytes() == key)
            .copied()
    }

    pub(crate) fn find_or_insert_key(&mut self, key: &Key) -> u32 {
        if let Some(i) = self.find_key(key.as_bytes()) {
            return i;
        }
        let entry = KeyEntry {
            key: key.clone(),
            holders: SmallVec::new(),
            queue: None,
        };
        let idx = match self.free_keys.pop() {
            Some(i) => {
                self.keys[i as usize] = entry;
                i
            }
            None => {
                self.keys.push(entry);
                (self.keys.len() - 1) as u32
            }
        };
        self.index_key(idx);
        idx
    }

    /// Adds slab entry `idx` to the key index.
    pub(crate) fn index_key(&mut self, idx: u32) {
        let h = self.hash_key(self.keys[idx as usize].key.as_bytes());
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.key_index.insert_unique(h, idx, |&i| {
            use std::hash::BuildHasher;
            hasher.hash_one(keys[i as usize].key.as_bytes())
        });
    }

    pub(crate) fn index_session(&mut self, id: SessionId, s: u32) {
        self.session_index.insert(id, s);
    }

    /// Frees a key's slab entry once nothing holds or waits on it.
    pub(crate) fn release_key_if_unused(&mut self, idx: u32) {
        let e = &mut self.keys[idx as usize];
        if !e.is_unused() {
            return;
        }
        let h = self.hash_key(self.keys[idx as usize].key.as_bytes());
        // Idempotent: a slot already freed is no longer indexed, and must not go on the
        // free list twice (two keys would then share it).
        match self.key_index.find_entry(h, |&i| i == idx) {
            Ok(found) => {
                found.remove();
            }
            Err(_) => return,
        }
        let e = &mut self.keys[idx as usize];
        e.queue = None;
        e.holders = SmallVec::new();
        // Drop a long key's heap buffer now rather than when the slot is reused.
        if self.keys[idx as usize].key.as_bytes().len() > 31 {
            self.keys[idx as usize].key = Key::new(b"-").expect("valid placeholder");
        }
        self.free_keys.push(idx);
    }

    /// Number of distinct keys with a holder or a waiter.
    pub fn key_count(&self) -> usize {
        self.key_index.len()
    }

    // ---- sessions ----

    pub(crate) fn find_session(&self, id: &SessionId) -> Option<u32> {
        self.session_index.get(id).copied()
    }

    pub(crate) fn session(&self, s: u32) -> &Session {
        self.sessions[s as usize]
            .as_ref()
            .expect("live session index")
    }

    pub(crate) fn session_mut(&mut self, s: u32) -> &mut Session {
        self.sessions[s as usize]
            .as_mut()
            .expect("live session index")
    }

    pub(crate) fn insert_session(&mut self, id: SessionId, conn: Option<ConnId>) -> u32 {
        let session = Session {
            id,
            conn: None,
            keys: HashTable::new(),
            locks: 0,
            expires_at: None,
            grace: None,
            wait: None,
        };
        let s = match self.free_sessions.pop() {
            Some(s) => {
                self.sessions[s as usize] = Some(session);
                s
            }
            None => {
                self.sessions.push(Some(session));
                (self.sessions.len() - 1) as u32
            }
        };
        self.session_index.insert(id, s);
        if let Some(c) = conn {
            self.bind(s, c);
        }
        s
    }

    /// Forgets a session that holds nothing, waits for nothing and has no connection.
    pub(crate) fn remove_session(&mut self, s: u32) {
        let sess = self.sessions[s as usize]
            .take()
            .expect("live session index");
        debug_assert!(sess.locks == 0 && sess.wait.is_none());
        if let Some(at) = sess.expires_at {
            self.expiries.remove(&(at, s));
            self.dead_sessions -= 1;
        }
        self.session_index.remove(&sess.id);
        self.free_sessions.push(s);
    }

    /// Number of sessions known to the table (live and dead).
    pub fn session_count(&self) -> usize {
        self.session_index.len()
    }

    /// Whether this session holds any lock on key `k`.
    pub(crate) fn session_holds_key(&self, s: u32, k: u32) -> bool {
        self.session(s)
            .keys
            .find(index_hash(k), |&x| x == k)
            .is_some()
    }

    // ---- holders ----

    /// Adds or refreshes `s`'s lock on `k` in `mode`. Returns whether it is a new lock.
    pub(crate) fn add_holder(
        &mut self,
        k: u32,
        s: u32,
        mode: Mode,
        token: u64,
        now: Millis,
    ) -> bool {
        self.add_hold(k, s, mode, 0, token, now)
    }

    /// Adds `permits` of semaphore `k` to what `s` holds of it. Returns whether it is a
    /// new hold.
    pub(crate) fn add_permits(
        &mut self,
        k: u32,
        s: u32,
        permits: u16,
        token: u64,
        now: Millis,
    ) -> bool {
        self.add_hold(k, s, Mode::Sh, permits, token, now)
    }

    fn add_hold(
        &mut self,
        k: u32,
        s: u32,
        mode: Mode,
        permits: u16,
        token: u64,
        now: Millis,
    ) -> bool {
        let e = &mut self.keys[k as usize];
        if permits > 0 {
            let q = e.queue.as_mut().expect("a semaphore has a queue");
            q.held += u32::from(permits);
        }
        if let Some(h) = e
            .holders
            .iter_mut()
            .find(|h| h.session == s && h.mode == mode)
        {
            h.permits += permits;
            let old = std::mem::replace(&mut h.token, token);
            if old != token {
                // The lock now belongs to the new grant; the old grant's lease lets go of it.
                self.lease_lock_gone(old);
            }
            return false;
        }
        e.holders.push(Holder {
            token,
            since: now,
            session: s,
            mode,
            permits,
        });
        let sess = self.sessions[s as usize]
            .as_mut()
            .expect("live session index");
        sess.locks += 1;
        let h = index_hash(k);
        if sess.keys.find(h, |&x| x == k).is_none() {
            sess.keys.insert_unique(h, k, |&x| index_hash(x));
        }
        self.locks_held += 1;
        self.locks_sh += (mode == Mode::Sh && permits == 0) as u64;
        self.sem_holds += (permits > 0) as u64;
        true
    }

    /// Drops `s`'s lock on `k` in `mode`, if held. Does not free the key or wake waiters.
    pub(crate) fn remove_holder(&mut self, k: u32, s: u32, mode: Mode) -> bool {
        let e = &mut self.keys[k as usize];
        let Some(pos) = e
            .holders
            .iter()
            .position(|h| h.session == s && h.mode == mode)
        else {
            return false;
        };
        let gone = e.holders.swap_remove(pos);
        let still_holds = e.holders.iter().any(|h| h.session == s);
        let sess = self.sessions[s as usize]
            .as_mut()
            .expect("live session index");
        sess.locks -= 1;
        if !still_holds {
            if let Ok(found) = sess.keys.find_entry(index_hash(k), |&x| x == k) {
                found.remove();
            }
        }
        self.locks_held -= 1;
        self.locks_sh -= (mode == Mode::Sh && gone.permits == 0) as u64;
        if gone.permits > 0 {
            self.sem_holds -= 1;
            if let Some(q) = self.keys[k as usize].queue.as_mut() {
                q.held -= u32::from(gone.permits);
            }
        }
        self.lease_lock_gone(gone.token);
        true
    }

    pub(crate) fn issue_token(&mut self) -> Option<u64> {
        if self.next_token > self.token_limit.min(MAX_TOKEN) {
            return None;
        }
        let t = self.next_token;
        if !self.faulty(Fault::TokensRepeat) {
            self.next_token += 1;
        }
        Some(t)
    }

    /// Total locks held, over all sessions.
    pub fn locks_held(&self) -> u64 {
        self.locks_held
    }

    /// Locks held in each mode: (SH, EX); holds of semaphore permits are in neither.
    pub fn locks_by_mode(&self) -> (u64, u64) {
        (
            self.locks_sh,
            self.locks_held - self.locks_sh - self.sem_holds,
        )
    }

    /// Holds of semaphore permits (each counts as one lock against `max_locks`).
    pub fn semaphore_holds(&self) -> u64 {
        self.sem_holds
    }

    /// Requests waiting in queues.
    /// Whether queued request `w` still waits.
    pub fn is_waiting(&self, w: WaitId) -> bool {
        self.waiters.contains_key(&w)
    }

    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Sessions that lost their connection and still hold locks.
    pub fn dead_session_count(&self) -> usize {
        self.dead_sessions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_entry_is_small() {
        // The per-lock memory budget (100 bytes at a million locks) depends on these.
        assert_eq!(std::mem::size_of::<Holder>(), 24);
        assert!(
            std::mem::size_of::<KeyEntry>() <= 72,
            "{}",
            std::mem::size_of::<KeyEntry>()
        );
    }
}
