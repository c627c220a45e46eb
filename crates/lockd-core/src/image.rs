//! The whole table as a value ([`TableImage`]): what a cluster's snapshot holds, and what
//! tests compare to show that replicas that applied the same log hold the same table.
//!
//! The image keeps the slab layout exactly (which slot each key and session is in, and the
//! free lists in order), because later commands depend on it: a key freed and made again
//! takes the slot on top of the free list. A table rebuilt from an image therefore goes on
//! exactly as the original would. Scratch state (deadlock-search marks, pending wakeups)
//! is not part of it: it is empty between commands.

use std::collections::BTreeSet;

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::key::Key;
use crate::table::{
    index_hash, ConnSessions, Counters, Holder, KeyEntry, LockTable, QEntry, Queue, Session, Waiter,
};
use crate::types::{ConnId, Millis, Mode, SessionId, WaitId};

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TableImage {
    pub max_locks: u64,
    pub grace_ms: Millis,
    pub max_waiters: usize,
    pub max_waiters_per_key: usize,
    pub deadlock_search_budget: u64,
    /// The key slab; `None` for a free slot.
    pub keys: Vec<Option<KeyImage>>,
    pub free_keys: Vec<u32>,
    pub sessions: Vec<Option<SessionImage>>,
    pub free_sessions: Vec<u32>,
    /// Sorted by connection id.
    pub conns: Vec<ConnImage>,
    /// Sorted by wait id.
    pub waiters: Vec<WaiterImage>,
    pub next_wait: u64,
    pub next_token: u64,
    pub token_limit: u64,
    pub last_now: Millis,
    pub counters: Counters,
    pub down_nodes: Vec<u16>,
    pub bootstrapped: bool,
    /// Sorted by token.
    pub leases: Vec<LeaseImage>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeaseImage {
    pub token: u64,
    pub session: u32,
    pub keys: Vec<u32>,
    pub held: u32,
    pub ms: Millis,
    pub until: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyImage {
    pub key: Key,
    /// (token, since, session slot, mode, permits), in the table's order.
    pub holders: Vec<(u64, Millis, u32, Mode, u16)>,
    /// (wait, session slot, mode), in queue order.
    pub queue: Vec<(WaitId, u32, Mode)>,
    /// How many queue entries at the front are holders' requests.
    pub jumpers: u32,
    /// A semaphore's capacity; 0 for a lock.
    pub capacity: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SessionImage {
    pub id: SessionId,
    pub conn: Option<ConnId>,
    /// Slots of the keys it holds a lock on, sorted.
    pub keys: Vec<u32>,
    pub locks: u32,
    pub expires_at: Option<Millis>,
    pub grace: Option<Millis>,
    pub wait: Option<WaitId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConnImage {
    pub conn: ConnId,
    pub sessions: Vec<u32>,
    pub prune_at: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WaiterImage {
    pub wait: WaitId,
    pub session: u32,
    pub mode: Mode,
    pub keys: Vec<u32>,
    pub since: Millis,
    pub lease: Option<Millis>,
    /// (key slot, permits) of the semaphores it asks for.
    pub permits: Vec<(u32, u16)>,
}

/// An image that does not describe a table (a slot out of range, a session twice).
#[derive(Debug, thiserror::Error)]
#[error("inconsistent table image: {0}")]
pub struct BadImage(&'static str);

impl LockTable {
    /// The table as a value (see the module docs).
    pub fn image(&self) -> TableImage {
        let free_keys: BTreeSet<u32> = self.free_keys.iter().copied().collect();
        let keys = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (!free_keys.contains(&(i as u32))).then(|| KeyImage {
                    key: e.key.clone(),
                    holders: e
                        .holders
                        .iter()
                        .map(|h| (h.token, h.since, h.session, h.mode, h.permits))
                        .collect(),
                    queue: e.queue.as_ref().map_or_else(Vec::new, |q| {
                        q.iter().map(|x| (x.wait, x.session, x.mode)).collect()
                    }),
                    jumpers: e.queue.as_ref().map_or(0, |q| q.jumpers()),
                    capacity: e.capacity(),
                })
            })
            .collect();
        let sessions = self
            .sessions
            .iter()
            .map(|s| {
                s.as_ref().map(|s| {
                    let mut keys: Vec<u32> = s.keys.iter().copied().collect();
                    keys.sort_unstable();
                    SessionImage {
                        id: s.id,
                        conn: s.conn,
                        keys,
                        locks: s.locks,
                        expires_at: s.expires_at,
                        grace: s.grace,
                        wait: s.wait,
                    }
                })
            })
            .collect();
        let mut conns: Vec<ConnImage> = self
            .conns
            .iter()
            .map(|(c, cs)| ConnImage {
                conn: *c,
                sessions: cs.list.clone(),
                prune_at: cs.prune_at,
            })
            .collect();
        conns.sort_unstable_by_key(|c| c.conn);
        let mut waiters: Vec<WaiterImage> = self
            .waiters
            .iter()
            .map(|(w, x)| WaiterImage {
                wait: *w,
                session: x.session,
                mode: x.mode,
                keys: x.keys.to_vec(),
                since: x.since,
                lease: x.lease,
                permits: x.permits.to_vec(),
            })
            .collect();
        waiters.sort_unstable_by_key(|w| w.wait);
        let mut leases: Vec<LeaseImage> = self
            .leases
            .iter()
            .map(|(t, l)| LeaseImage {
                token: *t,
                session: l.session,
                keys: l.keys.to_vec(),
                held: l.held,
                ms: l.ms,
                until: l.until,
            })
            .collect();
        leases.sort_unstable_by_key(|l| l.token);
        TableImage {
            max_locks: self.config.max_locks,
            grace_ms: self.config.grace_ms,
            max_waiters: self.config.max_waiters,
            max_waiters_per_key: self.config.max_waiters_per_key,
            deadlock_search_budget: self.config.deadlock_search_budget,
            keys,
            free_keys: self.free_keys.clone(),
            sessions,
            free_sessions: self.free_sessions.clone(),
            conns,
            waiters,
            next_wait: self.next_wait,
            next_token: self.next_token,
            token_limit: self.token_limit,
            last_now: self.last_now,
            counters: self.counters.clone(),
            down_nodes: self.down_nodes.iter().copied().collect(),
            bootstrapped: self.bootstrapped,
            leases,
        }
    }

    /// Rebuilds a table from [`LockTable::image`]; it goes on exactly as the original.
    pub fn from_image(img: &TableImage) -> Result<LockTable, BadImage> {
        let mut t = LockTable::new(crate::table::Config {
            max_locks: img.max_locks,
            grace_ms: img.grace_ms,
            max_waiters: img.max_waiters,
            max_waiters_per_key: img.max_waiters_per_key,
            deadlock_search_budget: img.deadlock_search_budget,
            ..Default::default()
        });
        let nkeys = img.keys.len() as u32;
        let nsess = img.sessions.len() as u32;
        let live_session = |s: u32| img.sessions.get(s as usize).is_some_and(|x| x.is_some());
        for (i, e) in img.keys.iter().enumerate() {
            let entry = match e {
                None => KeyEntry {
                    key: Key::new(b"-").expect("valid placeholder"),
                    holders: SmallVec::new(),
                    queue: None,
                },
                Some(k) => {
                    if k.holders.iter().any(|h| !live_session(h.2))
                        || k.queue.iter().any(|q| !live_session(q.1))
                    {
                        return Err(BadImage("a key names a session that is not there"));
                    }
                    let holders = k
                        .holders
                        .iter()
                        .map(|&(token, since, session, mode, permits)| Holder {
                            token,
                            since,
                            session,
                            mode,
                            permits,
                        })
                        .collect();
                    let held: u32 = k.holders.iter().map(|h| u32::from(h.4)).sum();
                    if k.capacity == 0 && held > 0 || held > u32::from(k.capacity) {
                        return Err(BadImage("a key's permits are past its capacity"));
                    }
                    // A semaphore keeps its queue (and in it, its capacity) while in use.
                    let queue = (!k.queue.is_empty() || k.capacity > 0).then(|| {
                        Box::new(Queue::restore(
                            k.queue
                                .iter()
                                .map(|&(wait, session, mode)| QEntry {
                                    wait,
                                    session,
                                    mode,
                                })
                                .collect(),
                            k.jumpers,
                            k.capacity,
                            held,
                        ))
                    });
                    KeyEntry {
                        key: k.key.clone(),
                        holders,
                        queue,
                    }
                }
            };
            t.keys.push(entry);
            if e.is_some() {
                t.index_key(i as u32);
            }
        }
        if img
            .free_keys
            .iter()
            .any(|&k| k >= nkeys || img.keys[k as usize].is_some())
            || img.free_keys.len() + t.key_count() != img.keys.len()
        {
            return Err(BadImage("free key slots"));
        }
        t.free_keys = img.free_keys.clone();
        for (i, s) in img.sessions.iter().enumerate() {
            let session = match s {
                None => None,
                Some(s) => {
                    if s.keys
                        .iter()
                        .any(|&k| k >= nkeys || img.keys[k as usize].is_none())
                    {
                        return Err(BadImage("a session holds a key slot that is free"));
                    }
                    let mut keys = HashTable::new();
                    for &k in &s.keys {
                        keys.insert_unique(index_hash(k), k, |&x| index_hash(x));
                    }
                    if t.find_session(&s.id).is_some() {
                        return Err(BadImage("a session id twice"));
                    }
                    t.index_session(s.id, i as u32);
                    if let Some(at) = s.expires_at {
                        t.expiries.insert((at, i as u32));
                        t.dead_sessions += 1;
                    }
                    t.locks_held += u64::from(s.locks);
                    Some(Session {
                        id: s.id,
                        conn: s.conn,
                        keys,
                        locks: s.locks,
                        expires_at: s.expires_at,
                        grace: s.grace,
                        wait: s.wait,
                    })
                }
            };
            t.sessions.push(session);
        }
        if img
            .free_sessions
            .iter()
            .any(|&s| s >= nsess || live_session(s))
        {
            return Err(BadImage("free session slots"));
        }
        t.free_sessions = img.free_sessions.clone();
        t.locks_sh = img
            .keys
            .iter()
            .flatten()
            .map(|k| {
                k.holders
                    .iter()
                    .filter(|h| h.3 == Mode::Sh && h.4 == 0)
                    .count() as u64
            })
            .sum();
        t.sem_holds = img
            .keys
            .iter()
            .flatten()
            .map(|k| k.holders.iter().filter(|h| h.4 > 0).count() as u64)
            .sum();
        for c in &img.conns {
            if c.sessions.iter().any(|&s| !live_session(s)) {
                return Err(BadImage("a connection names a session that is not there"));
            }
            t.conns.insert(
                c.conn,
                ConnSessions {
                    list: c.sessions.clone(),
                    prune_at: c.prune_at,
                },
            );
        }
        for w in &img.waiters {
            if !live_session(w.session) || w.keys.iter().any(|&k| k >= nkeys) {
                return Err(BadImage("a waiter names a slot that is not there"));
            }
            t.waiters.insert(
                w.wait,
                Waiter {
                    session: w.session,
                    mode: w.mode,
                    keys: w.keys.iter().copied().collect(),
                    since: w.since,
                    lease: w.lease,
                    permits: w.permits.iter().copied().collect(),
                },
            );
        }
        for l in &img.leases {
            if !live_session(l.session) || t.leases.contains_key(&l.token) {
                return Err(BadImage(
                    "a lease names a session that is not there, or twice",
                ));
            }
            t.leases.insert(
                l.token,
                crate::lease::Lease {
                    session: l.session,
                    keys: l.keys.iter().copied().collect(),
                    held: l.held,
                    ms: l.ms,
                    until: l.until,
                },
            );
            t.lease_order.insert((l.until, l.token));
        }
        t.next_wait = img.next_wait;
        t.next_token = img.next_token;
        t.token_limit = img.token_limit;
        t.last_now = img.last_now;
        t.counters = img.counters.clone();
        t.down_nodes = img.down_nodes.iter().copied().collect();
        t.bootstrapped = img.bootstrapped;
        Ok(t)
    }
}

/// Connection ids as the image lists them (for tests of what a node holds).
impl TableImage {
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.iter().map(|c| c.conn)
    }
}
