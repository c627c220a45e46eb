//! Deadlock detection: refuse a request whose wait would close a cycle of waits.
//!
//! A queued request waits on (a) the other sessions holding conflicting locks on its keys
//! and (b) the sessions of conflicting requests queued before it on its keys, unless its
//! session holds the key (then it goes ahead of the queue, and waits on holders only).
//! Each session waits on at most one request, so the wait-for graph has one outgoing edge
//! set per session, and a search from the new request's targets finds any cycle back to
//! its session.
//!
//! The cost of one search is what bounds the table's mutex, so it is kept linear in what
//! the search reaches, and capped:
//! - A requester on whose keys nobody waits cannot be waited on, now or by jumping ahead:
//!   no cycle, decided from its own keys alone.
//! - Sessions are marked reached in a dense array (no hashing per edge).
//! - Each queue keeps, for the search under way, how far its prefix has been followed for
//!   EX requests (every entry) and for SH requests (EX entries), and each holder list
//!   whether it was followed: a queue walked for one waiter is not walked again for the
//!   next, so many waiters on the same keys cost their keys, not their keys times the
//!   waiters ahead of them (that was quadratic: 5 s under the mutex with 400 waiters on
//!   4,094 keys).
//! - Past its budget ([`SEARCH_BUDGET`] steps by default) (holders, queue entries and waiters' keys looked at) the
//!   search stops and the request is refused as a possible deadlock
//!   ([`crate::Acquired::DeadlockUnsearchable`]), so no request holds the mutex longer
//!   than the budget takes (a few milliseconds; BENCHMARKS.md).

use hashbrown::HashMap;

use crate::table::{LockTable, Queue, SearchMemo};
use crate::types::Mode;

/// Most steps one search may take, unless the table's config says otherwise: about 2 ms
/// of the mutex on the machine of BENCHMARKS.md.
pub const SEARCH_BUDGET: u64 = 1_000_000;

/// What a deadlock search found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Search {
    Clear,
    /// Waiting closes a cycle through this session, which the request would wait on.
    Cycle(u32),
    /// The budget ran out first.
    TooLarge,
}

/// One search's state.
struct Walk<'a> {
    table: &'a LockTable,
    seen: &'a mut [u32],
    epoch: u32,
    /// The requester.
    s: u32,
    /// Sessions reached and not yet followed, each with the first-level target it was
    /// reached from.
    stack: Vec<(u32, u32)>,
    steps: u64,
    budget: u64,
}

impl Walk<'_> {
    fn step(&mut self, n: u64) -> Result<(), Search> {
        self.steps += n;
        if self.steps > self.budget {
            Err(Search::TooLarge)
        } else {
            Ok(())
        }
    }

    /// `x` is waited on, through `origin`: reaching the requester closes the cycle.
    fn reach(&mut self, x: u32, origin: u32) -> Result<(), Search> {
        if x == self.s {
            return Err(Search::Cycle(origin));
        }
        let mark = &mut self.seen[x as usize];
        if *mark != self.epoch {
            *mark = self.epoch;
            self.stack.push((x, origin));
        }
        Ok(())
    }

    /// Follows the holders of key `k` that conflict with `mode`, except `skip`.
    fn holders(
        &mut self,
        k: u32,
        mode: Mode,
        skip: u32,
        origin: Option<u32>,
    ) -> Result<(), Search> {
        let table = self.table;
        let e = &table.keys[k as usize];
        self.step(e.holders.len() as u64)?;
        for h in &e.holders {
            if h.session != skip && mode.conflicts(h.mode) {
                self.reach(h.session, origin.unwrap_or(h.session))?;
            }
        }
        Ok(())
    }

    /// Follows the requests before position `end` of `q` that conflict with `mode`, except
    /// those this search followed already.
    fn queue_prefix(
        &mut self,
        q: &Queue,
        memo: &mut SearchMemo,
        mode: Mode,
        end: usize,
        origin: Option<u32>,
    ) -> Result<(), Search> {
        let from = memo.followed(mode);
        if from >= end {
            return Ok(());
        }
        self.step((end - from) as u64)?;
        for e in q.range(from..end) {
            if mode.conflicts(e.mode) {
                self.reach(e.session, origin.unwrap_or(e.session))?;
            }
        }
        match mode {
            Mode::Ex => memo.all = end as u32,
            Mode::Sh => memo.ex = end as u32,
        }
        Ok(())
    }
}

impl SearchMemo {
    /// How much of the queue's front was followed for a request of `mode`: an EX walk
    /// follows every entry, so it serves SH too.
    fn followed(&self, mode: Mode) -> usize {
        match mode {
            Mode::Ex => self.all as usize,
            Mode::Sh => self.ex.max(self.all) as usize,
        }
    }
}

fn memo_of(q: &Queue, epoch: u32) -> SearchMemo {
    let m = q.memo.get();
    if m.epoch == epoch {
        m
    } else {
        SearchMemo {
            epoch,
            ..SearchMemo::default()
        }
    }
}

impl LockTable {
    /// Whether queuing a request of session `s` for `keys`, each in its mode (`None` for a
    /// key with no entry, which is free), would close a cycle of waits. A semaphore's
    /// request comes as EX: it waits for every other holder of its permits.
    pub(crate) fn find_deadlock(&mut self, s: u32, keys: &[(Option<u32>, Mode)]) -> Search {
        if !self.anyone_waits_on_keys_of(s) {
            return Search::Clear;
        }
        let epoch = self.next_search_epoch();
        let mut seen = std::mem::take(&mut self.search_seen);
        seen.resize(self.sessions.len(), 0);
        let (result, steps) = self.search(s, keys, &mut seen, epoch);
        self.search_seen = seen;
        self.counters.deadlock_search_steps += steps;
        result
    }

    /// Whether some request is queued on a key that `s` holds. Only such a request can
    /// wait on `s` (on its locks, or on the new request, which goes ahead of it), so
    /// without one no cycle can pass through `s`.
    fn anyone_waits_on_keys_of(&self, s: u32) -> bool {
        let sess = self.session(s);
        // A session with more keys than the budget is searched rather than scanned.
        sess.keys.len() as u64 > self.config.deadlock_search_budget
            || sess
                .keys
                .iter()
                .any(|&k| self.keys[k as usize].queue_len() > 0)
    }

    fn next_search_epoch(&mut self) -> u32 {
        self.search_epoch = self.search_epoch.wrapping_add(1);
        if self.search_epoch == 0 {
            // Wrapped: old marks could match new epochs; clear them all once.
            self.search_seen.iter_mut().for_each(|m| *m = 0);
            for e in &self.keys {
                if let Some(q) = &e.queue {
                    q.memo.set(SearchMemo::default());
                }
            }
            self.search_epoch = 1;
        }
        self.search_epoch
    }

    fn search(
        &self,
        s: u32,
        keys: &[(Option<u32>, Mode)],
        seen: &mut [u32],
        epoch: u32,
    ) -> (Search, u64) {
        let mut walk = Walk {
            table: self,
            seen,
            epoch,
            s,
            stack: Vec::new(),
            steps: 0,
            budget: self.config.deadlock_search_budget,
        };
        let result = self.search_in(&mut walk, keys);
        (result.err().unwrap_or(Search::Clear), walk.steps)
    }

    fn search_in(&self, walk: &mut Walk, keys: &[(Option<u32>, Mode)]) -> Result<(), Search> {
        let s = walk.s;
        // Keys of the request that `s` holds: there it goes ahead of the queue, so the
        // conflicting requests queued there (other than holders') would wait on it; with
        // the request's mode there.
        let mut jumped: HashMap<u32, Mode> = HashMap::new();
        walk.step(keys.len() as u64)?;
        for &(k, mode) in keys {
            let Some(k) = k else { continue };
            // The new request's own edges: conflicting holders, and unless it goes ahead,
            // every conflicting queued request. Holders are not memoised here: `s` is
            // skipped, and a later walk of the same holders must still find it.
            walk.holders(k, mode, s, None)?;
            if self.session_holds_key(s, k) {
                jumped.insert(k, mode);
            } else if let Some(q) = &self.keys[k as usize].queue {
                let mut memo = memo_of(q, walk.epoch);
                walk.queue_prefix(q, &mut memo, mode, q.len(), None)?;
                q.memo.set(memo);
            }
        }
        while let Some((x, origin)) = walk.stack.pop() {
            let Some(w) = self.session(x).wait else {
                // Holds, waits for nothing: no edges out.
                continue;
            };
            let waiter = &self.waiters[&w];
            walk.step(waiter.keys.len() as u64)?;
            for &k in &waiter.keys {
                let holds = self.session_holds_key(x, k);
                // Its mode here: on a semaphore, EX (see `Queue`).
                let wmode = if waiter.permits_on(k).is_some() {
                    Mode::Ex
                } else {
                    waiter.mode
                };
                if !holds && jumped.get(&k).is_some_and(|&m| wmode.conflicts(m)) {
                    // `x` would wait on the new request, which goes ahead of it on `k`.
                    return Err(Search::Cycle(origin));
                }
                let q = self.keys[k as usize]
                    .queue
                    .as_ref()
                    .expect("a waiter's keys have queues");
                let mut memo = memo_of(q, walk.epoch);
                // An EX walk of the holders follows every one of them, so it does an SH
                // walk's work too.
                let bit = match wmode {
                    Mode::Sh => 1,
                    Mode::Ex => 3,
                };
                if memo.holders & bit != bit {
                    // `x` itself is reached already, so following it is a no-op.
                    walk.holders(k, wmode, u32::MAX, Some(origin))?;
                    memo.holders |= bit;
                }
                // Unless the whole queue was followed for this mode already, find where
                // `x` stands and follow what is ahead of it.
                if !holds && memo.followed(wmode) < q.len() {
                    let pos = q.position(w).expect("a waiter is in its keys' queues");
                    walk.step(u64::from(usize::BITS - q.len().leading_zeros()))?;
                    walk.queue_prefix(q, &mut memo, wmode, pos, Some(origin))?;
                }
                q.memo.set(memo);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Acquired, Config, ConnId, Key, LockTable, Mode, SessionId, Wait};

    fn sid(i: u32) -> SessionId {
        let mut id = [b'0'; 32];
        id[..10].copy_from_slice(format!("{i:010}").as_bytes());
        SessionId(id)
    }

    /// Session 0 holds EX on `keys` keys; sessions 1..=waiters queue EX on all of them.
    fn crowded(keys: usize, waiters: u32) -> (LockTable, Vec<Key>) {
        let mut t = LockTable::new(Config {
            max_locks: 1_000_000,
            max_waiters_per_key: 100_000,
            deadlock_search_budget: 20_000,
            ..Config::default()
        });
        let ks: Vec<Key> = (0..keys)
            .map(|i| Key::new(format!("k{i}").as_bytes()).unwrap())
            .collect();
        t.use_session(sid(0), ConnId(0));
        assert!(matches!(
            t.acquire(sid(0), Mode::Ex, &ks, Wait::No, 0),
            Acquired::Granted(_)
        ));
        for w in 1..=waiters {
            t.use_session(sid(w), ConnId(w as u64));
            assert!(matches!(
                t.acquire(sid(w), Mode::Ex, &ks, Wait::Queue, 0),
                Acquired::Queued(_)
            ));
        }
        (t, ks)
    }

    /// Issue 10, defect 2: a request that reaches many waiters on many keys costs steps in
    /// proportion to the waiters' keys, not to the waiters ahead of each of them. (The old
    /// search took about keys x waiters^2 / 2 steps: 4 million here.)
    #[test]
    fn a_search_through_many_waiters_on_many_keys_is_linear() {
        let (keys, waiters) = (60usize, 60u32);
        let (mut t, ks) = crowded(keys, waiters);
        // A requester that holds a key someone waits on, so the search must run.
        let z = sid(1000);
        let other = [Key::new(b"z").unwrap()];
        t.use_session(z, ConnId(1000));
        t.acquire(z, Mode::Ex, &other, Wait::No, 0);
        t.use_session(sid(1001), ConnId(1001));
        assert!(matches!(
            t.acquire(sid(1001), Mode::Ex, &other, Wait::Queue, 0),
            Acquired::Queued(_)
        ));
        let before = t.counters().deadlock_search_steps;
        assert!(matches!(
            t.acquire(z, Mode::Ex, &ks, Wait::Queue, 0),
            Acquired::Queued(_)
        ));
        let steps = t.counters().deadlock_search_steps - before;
        let pairs = keys as u64 * (waiters as u64 + 1);
        assert!(
            steps <= 3 * pairs,
            "{steps} steps for {pairs} (waiter, key) pairs"
        );
        assert!(steps >= pairs, "{steps} steps: the search did not run");
    }

    /// Nobody waits on what the requester holds: no cycle can pass through it, and the
    /// search does not start, however crowded the keys it asks for.
    #[test]
    fn a_requester_nobody_waits_on_is_not_searched() {
        let (mut t, ks) = crowded(500, 100);
        let z = sid(1000);
        t.use_session(z, ConnId(1000));
        t.acquire(z, Mode::Ex, &[Key::new(b"z").unwrap()], Wait::No, 0);
        assert!(matches!(
            t.acquire(z, Mode::Ex, &ks, Wait::Queue, 0),
            Acquired::Queued(_)
        ));
        assert_eq!(t.counters().deadlock_search_steps, 0);
    }

    /// Past the budget the request is refused, having taken at most the budget's steps.
    #[test]
    fn a_search_past_its_budget_is_refused() {
        let (mut t, ks) = crowded(400, 100);
        let z = sid(1000);
        let other = [Key::new(b"z").unwrap()];
        t.use_session(z, ConnId(1000));
        t.acquire(z, Mode::Ex, &other, Wait::No, 0);
        t.use_session(sid(1001), ConnId(1001));
        t.acquire(sid(1001), Mode::Ex, &other, Wait::Queue, 0);
        assert_eq!(
            t.acquire(z, Mode::Ex, &ks, Wait::Queue, 0),
            Acquired::DeadlockUnsearchable
        );
        let steps = t.counters().deadlock_search_steps;
        assert!(steps <= 20_000 + 400, "{steps}");
        assert_eq!(t.counters().deadlock_searches_too_large, 1);
        assert_eq!(t.waiter_count(), 101, "nothing was queued");
    }

    /// A cycle through many keys is still found exactly.
    #[test]
    fn a_cycle_behind_many_waiters_is_found() {
        let (mut t, ks) = crowded(100, 50);
        // The holder of the crowded keys asks for a key that the last waiter holds.
        let z = [Key::new(b"z").unwrap()];
        t.use_session(sid(77), ConnId(77));
        assert!(matches!(
            t.acquire(sid(77), Mode::Ex, &z, Wait::No, 0),
            Acquired::Granted(_)
        ));
        assert!(matches!(
            t.acquire(sid(77), Mode::Ex, &ks, Wait::Queue, 0),
            Acquired::Queued(_)
        ));
        assert_eq!(
            t.acquire(sid(0), Mode::Ex, &z, Wait::Queue, 0),
            Acquired::Deadlock(sid(77))
        );
    }
}
