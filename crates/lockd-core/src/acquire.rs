//! ACQUIRE: try-locks, queued requests, fair FIFO granting, upgrades, timeouts.
//!
//! Fairness rule (native.md): a request can be granted on a key when it is compatible with
//! the key's holders and with every request queued on that key before it. A session that
//! already holds a lock on a key is the exception: it is not queued behind requests that
//! wait on its own lock (PostgreSQL's rule), so it never deadlocks with itself.

use smallvec::SmallVec;

use crate::deadlock::Search;
use crate::key::Key;
use crate::table::{LockTable, QEntry, Waiter};
use crate::types::{Millis, Mode, SessionId, WaitId, Wakeup, Woken};

/// How an ACQUIRE ended, when it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Acquired {
    /// Every key is locked; the fencing token of this grant.
    Granted(u64),
    /// A try-lock that could not be granted at once.
    Conflict,
    /// Held locks plus the keys of this request would exceed `max_locks`.
    TooManyLocks,
    /// The request waits in the queues of its keys.
    Queued(WaitId),
    /// Waiting would close a cycle of waits; the named session is on that cycle.
    Deadlock(SessionId),
    /// Whether waiting would close a cycle could not be decided within the search's step
    /// budget (a wait graph of millions of edges); refused as a deadlock would be.
    DeadlockUnsearchable,
    /// The queue limits (per key or in total) are reached.
    TooManyWaiters,
    /// This session already has a queued request.
    AlreadyWaiting,
    /// No fencing token can be issued until more are reserved.
    TokensExhausted,
    /// A native request whose session is no longer bound to its connection (see
    /// `Command::Acquire`).
    NotBound,
    /// Key number `index` of the request (its lock keys first, then its semaphores) is
    /// in use as another kind: a semaphore of `capacity` permits (0: a lock) where the
    /// request asked for a lock or for a semaphore of another capacity. Nothing was done.
    Mismatch { index: u32, capacity: u16 },
}

/// Permits of a semaphore, as a request asks for them: `permits` of `capacity`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Permits {
    pub key: Key,
    pub permits: u16,
    pub capacity: u16,
}

/// Whether a request may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Wait {
    /// Answer at once (legacy ACQUIRE, native timeout 0).
    No,
    /// Queue if it cannot be granted now.
    Queue,
}

impl LockTable {
    /// Acquires `keys` in `mode` for session `id`, all or nothing. The session is made if
    /// it does not exist yet (unbound; see [`LockTable::use_session`]).
    pub fn acquire(
        &mut self,
        id: SessionId,
        mode: Mode,
        keys: &[Key],
        wait: Wait,
        now: Millis,
    ) -> Acquired {
        if self.past_max_locks(keys.len()) {
            return Acquired::TooManyLocks;
        }
        let s = match self.find_session(&id) {
            Some(s) => s,
            None => self.insert_session(id, None),
        };
        let result = self.acquire_for(s, mode, keys, &[], wait, None, now);
        self.forget_if_idle(s);
        result
    }

    /// Whether a request for `keys` is refused by `max_locks` (and counted so). Checked
    /// before conflicts and before the session is looked at, as the original daemon does:
    /// held locks plus the keys asked for, duplicates included.
    fn past_max_locks(&mut self, keys: usize) -> bool {
        let past = self.locks_held.saturating_add(keys as u64) > self.config.max_locks;
        self.counters.too_many_locks += u64::from(past);
        past
    }

    /// [`LockTable::acquire`] for a native request from `conn`, with a lease of `lease`
    /// ms if asked: refused ([`Acquired::NotBound`]) unless the session exists and is
    /// bound to `conn`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn acquire_bound(
        &mut self,
        id: SessionId,
        conn: crate::types::ConnId,
        mode: Mode,
        keys: &[Key],
        sems: &[Permits],
        wait: Wait,
        lease: Option<Millis>,
        now: Millis,
    ) -> Acquired {
        if self.past_max_locks(keys.len() + sems.len()) {
            return Acquired::TooManyLocks;
        }
        match self.find_session(&id) {
            Some(s) if self.session(s).conn == Some(conn) => {
                self.acquire_for(s, mode, keys, sems, wait, lease, now)
            }
            _ => Acquired::NotBound,
        }
    }

    /// The request's lock keys in `mode` and its semaphores' permits, all or nothing.
    #[allow(clippy::too_many_arguments)]
    fn acquire_for(
        &mut self,
        s: u32,
        mode: Mode,
        keys: &[Key],
        sems: &[Permits],
        wait: Wait,
        lease: Option<Millis>,
        now: Millis,
    ) -> Acquired {
        if self.session(s).wait.is_some() {
            return Acquired::AlreadyWaiting;
        }
        // Resolve keys once; a key that has no entry is free.
        let mut idx: SmallVec<[Option<u32>; 4]> = SmallVec::with_capacity(keys.len());
        for k in keys {
            idx.push(self.find_key(k.as_bytes()));
        }
        let mut sidx: SmallVec<[Option<u32>; 2]> = SmallVec::with_capacity(sems.len());
        for p in sems {
            sidx.push(self.find_key(p.key.as_bytes()));
        }
        // A semaphore named twice, or also as a lock, is refused (the protocol refuses it
        // first; this keeps the table whole whatever a caller sends).
        // (One semaphore alone cannot collide: no set is made for the common case.)
        if !sems.is_empty() && sems.len() + keys.len() > 1 {
            let mut seen: hashbrown::HashSet<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            for (i, p) in sems.iter().enumerate() {
                if !seen.insert(p.key.as_bytes()) {
                    return Acquired::Mismatch {
                        index: (keys.len() + i) as u32,
                        capacity: 0,
                    };
                }
            }
        }
        // A key is a lock or a semaphore of one capacity while it is in use.
        let kinds = idx
            .iter()
            .map(|&k| (k, 0))
            .chain(sidx.iter().zip(sems).map(|(&k, p)| (k, p.capacity)));
        for (i, (k, want)) in kinds.enumerate() {
            if let Some(k) = k {
                let capacity = self.keys[k as usize].capacity();
                if capacity != want {
                    return Acquired::Mismatch {
                        index: i as u32,
                        capacity,
                    };
                }
            }
        }
        let free_now = self.faulty(crate::table::Fault::GrantAtOnce)
            || (idx
                .iter()
                .flatten()
                .all(|&k| self.grantable_on(s, mode, k, None))
                && sidx.iter().zip(sems).all(|(&k, p)| match k {
                    Some(k) => self.grantable_sem(s, k, p.permits, None),
                    None => p.permits <= p.capacity,
                }));
        if free_now {
            let Some(token) = self.issue_token() else {
                return Acquired::TokensExhausted;
            };
            for (i, key) in keys.iter().enumerate() {
                let k = match idx[i] {
                    Some(k) => k,
                    None => {
                        // A duplicate key in the request may have been inserted already.
                        let k = self.find_or_insert_key(key);
                        idx[i] = Some(k);
                        k
                    }
                };
                self.add_holder(k, s, mode, token, now);
            }
            for (i, p) in sems.iter().enumerate() {
                let k = self.find_or_insert_semaphore(&p.key, p.capacity);
                sidx[i] = Some(k);
                self.add_permits(k, s, p.permits, token, now);
            }
            if let Some(ms) = lease {
                let slots: SmallVec<[u32; 4]> =
                    idx.iter().chain(sidx.iter()).flatten().copied().collect();
                self.start_lease(s, token, &slots, ms, now);
            }
            self.counters.grants += 1;
            return Acquired::Granted(token);
        }
        if wait == Wait::No {
            self.counters.conflicts += 1;
            return Acquired::Conflict;
        }
        if self.waiters.len() >= self.config.max_waiters
            || idx
                .iter()
                .chain(sidx.iter())
                .flatten()
                .any(|&k| self.keys[k as usize].queue_len() >= self.config.max_waiters_per_key)
        {
            return Acquired::TooManyWaiters;
        }
        // A semaphore request waits for every other holder of its permits and everything
        // queued before it, as an EX request does on a lock.
        let searched: SmallVec<[(Option<u32>, Mode); 4]> = idx
            .iter()
            .map(|&k| (k, mode))
            .chain(sidx.iter().map(|&k| (k, Mode::Ex)))
            .collect();
        match self.find_deadlock(s, &searched) {
            Search::Clear => {}
            Search::Cycle(other) => {
                self.counters.deadlocks += 1;
                return Acquired::Deadlock(self.session(other).id);
            }
            Search::TooLarge => {
                self.counters.deadlocks += 1;
                self.counters.deadlock_searches_too_large += 1;
                return Acquired::DeadlockUnsearchable;
            }
        }
        let mut kidx: SmallVec<[u32; 2]> = keys
            .iter()
            .map(|key| self.find_or_insert_key(key))
            .collect();
        let permits: SmallVec<[(u32, u16); 1]> = sems
            .iter()
            .map(|p| (self.find_or_insert_semaphore(&p.key, p.capacity), p.permits))
            .collect();
        kidx.extend(permits.iter().map(|&(k, _)| k));
        // A request may name a key twice; it waits once on it. Sorted rather than
        // searched: a request has up to 4,096 keys.
        kidx.sort_unstable();
        kidx.dedup();
        let w = WaitId(self.next_wait);
        self.next_wait += 1;
        for &k in &kidx {
            // A holder of this key goes ahead of every request that waits on its own lock,
            // behind other holders' requests that went ahead before.
            let jumper = self.session_holds_key(s, k);
            let on_semaphore = permits.iter().any(|&(x, _)| x == k);
            let entry = QEntry {
                wait: w,
                session: s,
                mode: if on_semaphore { Mode::Ex } else { mode },
            };
            let q = self.keys[k as usize]
                .queue
                .get_or_insert_with(Default::default);
            let first = q.is_empty();
            q.push(entry, jumper);
            if first {
                // The holders learn that someone waits for them (once per queue).
                self.emit_contended(k, entry.mode, s);
            }
        }
        self.waiters.insert(
            w,
            Waiter {
                session: s,
                mode,
                keys: kidx,
                since: now,
                lease,
                permits,
            },
        );
        self.session_mut(s).wait = Some(w);
        Acquired::Queued(w)
    }

    /// Whether `s` can have `mode` on key `k` now: compatible with the holders, and unless
    /// `s` already holds `k`, with the requests queued before position `before` (all of
    /// the queue when `before` is None, i.e. for a request not yet queued).
    pub(crate) fn grantable_on(&self, s: u32, mode: Mode, k: u32, before: Option<WaitId>) -> bool {
        let e = &self.keys[k as usize];
        if e.holders
            .iter()
            .any(|h| h.session != s && mode.conflicts(h.mode))
        {
            return false;
        }
        if self.session_holds_key(s, k) {
            return true;
        }
        let Some(q) = &e.queue else {
            return true;
        };
        if before.is_none() {
            // A request not yet queued: its session waits for nothing, so every queued
            // request is another session's.
            return !q.conflicts_with(mode);
        }
        for e in q.iter() {
            if Some(e.wait) == before {
                break;
            }
            if e.session != s && mode.conflicts(e.mode) {
                return false;
            }
        }
        true
    }

    /// Whether `s` can have `permits` more of semaphore `k` now: they fit under its
    /// capacity, and unless `s` already holds some, nothing is queued before position
    /// `before` (all of the queue for a request not yet queued).
    pub(crate) fn grantable_sem(
        &self,
        s: u32,
        k: u32,
        permits: u16,
        before: Option<WaitId>,
    ) -> bool {
        let Some(q) = &self.keys[k as usize].queue else {
            return true;
        };
        if q.held + u32::from(permits) > u32::from(q.capacity) {
            return false;
        }
        if self.session_holds_key(s, k) {
            return true;
        }
        match before {
            None => q.is_empty(),
            Some(w) => q.front().is_none_or(|e| e.wait == w),
        }
    }

    /// The slot of semaphore `key`, made with `capacity` if it is not in use (the caller
    /// checked that a key in use is a semaphore of that capacity).
    pub(crate) fn find_or_insert_semaphore(&mut self, key: &Key, capacity: u16) -> u32 {
        let k = self.find_or_insert_key(key);
        let e = &mut self.keys[k as usize];
        if e.queue.is_none() {
            e.queue = Some(Box::new(crate::table::Queue::semaphore(capacity)));
        }
        k
    }

    /// A queued request is withdrawn (its connection closed). Returns false if it is no
    /// longer queued: a grant is reported through the wakeups, so a cancel that comes after
    /// it finds nothing.
    pub fn cancel_wait(&mut self, w: WaitId, now: Millis) -> bool {
        let Some(waiter) = self.dequeue(w) else {
            return false;
        };
        for &k in &waiter.keys {
            self.grant_waiters(k, now);
            self.release_key_if_unused(k);
        }
        true
    }

    /// The timeout of queued request `w` passed. Returns false if it is no longer queued
    /// (it was granted: the grant is in the wakeups).
    pub fn time_out(&mut self, w: WaitId, now: Millis) -> bool {
        let session = match self.waiters.get(&w) {
            Some(x) => x.session,
            None => return false,
        };
        self.counters.timeouts += 1;
        self.cancel_wait(w, now);
        self.forget_if_idle(session);
        true
    }

    /// Grants, in queue order, every request queued on `k` that can be granted now. One
    /// whose turn came without room under `max_locks` is refused; that can let requests
    /// behind it on its other keys through, so those keys are looked at too.
    pub(crate) fn grant_waiters(&mut self, k: u32, now: Millis) {
        let mut work: SmallVec<[u32; 4]> = SmallVec::new();
        self.grant_waiters_on(k, now, &mut work);
        while let Some(k2) = work.pop() {
            self.grant_waiters_on(k2, now, &mut work);
            // `k` is the caller's to free; keys reached through a refusal are ours.
            if k2 != k {
                self.release_key_if_unused(k2);
            }
        }
    }

    fn grant_waiters_on(&mut self, k: u32, now: Millis, revisit: &mut SmallVec<[u32; 4]>) {
        let mut i = 0;
        let mut ahead_any = false;
        let mut ahead_ex = false;
        while let Some((w, mode)) = self.keys[k as usize]
            .queue
            .as_ref()
            .and_then(|q| q.get(i))
            .map(|e| (e.wait, e.mode))
        {
            // The entry's mode: a semaphore request's is EX (see `Queue`).
            let (s, new_locks) = {
                let x = &self.waiters[&w];
                (x.session, x.keys.len() as u64)
            };
            let jumps = self.session_holds_key(s, k);
            let blocked_here = !jumps && (ahead_ex || (mode == Mode::Ex && ahead_any));
            if blocked_here && ahead_ex {
                // Holders' requests (which may pass) are only at the front; everything
                // from here on is behind a queued EX.
                break;
            }
            let grantable =
                self.waiter_grantable(w) || self.faulty(crate::table::Fault::GrantQueued);
            if !blocked_here && grantable {
                // Room under max_locks, each key counted as a new lock, as on arrival.
                if self.locks_held.saturating_add(new_locks) > self.config.max_locks {
                    self.refuse_waiter(w, k, revisit);
                    continue;
                }
                if self.grant_waiter(w, now, k, revisit) {
                    continue;
                }
            }
            ahead_any = true;
            ahead_ex |= mode == Mode::Ex;
            i += 1;
        }
    }

    fn waiter_grantable(&self, w: WaitId) -> bool {
        let x = &self.waiters[&w];
        x.keys.iter().all(|&k| match x.permits_on(k) {
            Some(p) => self.grantable_sem(x.session, k, p, Some(w)),
            None => self.grantable_on(x.session, x.mode, k, Some(w)),
        })
    }

    /// Takes `w` out of its queues with a TooManyLocks answer; its keys other than `k`
    /// (whose queue is being walked) go on `revisit`.
    fn refuse_waiter(&mut self, w: WaitId, k: u32, revisit: &mut SmallVec<[u32; 4]>) {
        let x = self.dequeue(w).expect("queued waiter");
        for &k2 in &x.keys {
            if k2 != k && !revisit.contains(&k2) {
                revisit.push(k2);
            }
        }
        self.counters.too_many_locks += 1;
        self.wakeups.push(Wakeup {
            wait: w,
            outcome: Woken::TooManyLocks,
        });
    }

    /// Grants `w`, found in the queue of `k`. Its other semaphores go on `revisit`: its
    /// queue entry there blocked everyone behind it (strict FIFO), its permits now block
    /// only by count, so requests behind it may fit. (On a lock, what it holds now blocks
    /// exactly what its entry did.)
    fn grant_waiter(
        &mut self,
        w: WaitId,
        now: Millis,
        k: u32,
        revisit: &mut SmallVec<[u32; 4]>,
    ) -> bool {
        let Some(token) = self.issue_token() else {
            return false;
        };
        let x = self.dequeue(w).expect("queued waiter");
        for &key in &x.keys {
            match x.permits_on(key) {
                Some(p) => {
                    self.add_permits(key, x.session, p, token, now);
                    if key != k && !revisit.contains(&key) {
                        revisit.push(key);
                    }
                }
                None => {
                    self.add_holder(key, x.session, x.mode, token, now);
                }
            };
        }
        if let Some(ms) = x.lease {
            self.start_lease(x.session, token, &x.keys, ms, now);
        }
        for &k in &x.keys {
            // Granted with requests still queued behind it: the new holder is told.
            let Some(q) = self.keys[k as usize].queue.as_ref() else {
                continue;
            };
            let on_semaphore = x.permits_on(k).is_some();
            if q.conflicts_with(if on_semaphore { Mode::Ex } else { x.mode }) {
                let wanted = if x.mode == Mode::Ex || on_semaphore {
                    q[0].mode
                } else {
                    Mode::Ex
                };
                let key = self.keys[k as usize].key.clone();
                self.emit(
                    x.session,
                    crate::events::EventKind::Contended {
                        key,
                        mode: if on_semaphore { Mode::Sh } else { x.mode },
                        token,
                        wanted,
                        permits: x.permits_on(k).unwrap_or(0),
                    },
                );
            }
        }
        self.counters.grants += 1;
        self.wakeups.push(Wakeup {
            wait: w,
            outcome: Woken::Granted(token),
        });
        true
    }

    /// Takes queued request `w` out of the waiters and of its keys' queues, and marks its
    /// session as no longer waiting. Wakes nobody and frees no key: the caller decides.
    pub(crate) fn dequeue(&mut self, w: WaitId) -> Option<Waiter> {
        let x = self.waiters.remove(&w)?;
        for &k in &x.keys {
            if let Some(q) = self.keys[k as usize].queue.as_mut() {
                q.remove(w);
            }
        }
        self.session_mut(x.session).wait = None;
        Some(x)
    }

    /// Forgets a session that is unbound and has nothing left (made by a request that did
    /// not take anything).
    pub(crate) fn forget_if_idle(&mut self, s: u32) {
        if let Some(sess) = self.sessions[s as usize].as_ref() {
            if sess.conn.is_none() && sess.locks == 0 && sess.wait.is_none() {
                self.remove_session(s);
            }
        }
    }
}
