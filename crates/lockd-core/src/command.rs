//! Every change to the table as a value: a [`Command`], applied by one
//! [`LockTable::apply`] that returns an [`Outcome`].
//!
//! This is what makes the table a replicated state machine: a standalone server applies a
//! command at once under its mutex; a cluster appends it to the Raft log and every node
//! applies it, with the time the leader stamped on the entry. The protocol handlers build
//! commands and render outcomes, and do not know which of the two is behind them.
//!
//! `apply` is a pure function of (table, command, now): it reads no clock, draws no random
//! number, and no order that shows (grants, expiry, deadlock victims, tokens) depends on a
//! hash seed. Time never runs backwards inside the table: `now` is clamped to the latest
//! time applied, so a leader whose clock is behind only stretches waits and grace periods.

use crate::acquire::{Acquired, Permits, Wait};
use crate::key::Key;
use crate::lease::ExtendError;
use crate::sessions::ResumeError;
use crate::table::LockTable;
use crate::types::{ConnId, Millis, Mode, SessionId, WaitId};

/// One change to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Command {
    /// The legacy rule, on its own (STAT): `session` is bound to `conn` unless another
    /// live connection has it.
    Use { session: SessionId, conn: ConnId },
    /// A native connection's own new session.
    Open { session: SessionId, conn: ConnId },
    /// `conn` takes over dead session `session`, letting go of `current`.
    Resume {
        conn: ConnId,
        current: SessionId,
        session: SessionId,
    },
    SetGrace {
        session: SessionId,
        grace_ms: Millis,
    },
    /// ACQUIRE from connection `conn`. A legacy request applies the legacy rule first; a
    /// native one is refused unless `session` is bound to `conn` (a command that arrives
    /// after its connection was let go must not make a session nobody will end).
    Acquire {
        session: SessionId,
        conn: ConnId,
        legacy: bool,
        mode: Mode,
        keys: Vec<Key>,
        wait: Wait,
        /// A native request's lease, in ms (see `lease`).
        lease: Option<Millis>,
        /// A native request's semaphores: permits of each, all or nothing with `keys`.
        permits: Vec<Permits>,
    },
    /// RELEASE PERMITS: the session's permits of these semaphores (all it holds of each),
    /// or with `token` only where they carry that grant's token.
    ReleasePermits {
        session: SessionId,
        conn: ConnId,
        keys: Vec<Key>,
        token: Option<u64>,
    },
    /// EXTEND: the lease of grant `token` of `session` (bound to `conn`) ends `lease_ms`
    /// from now (its own length again when None).
    Extend {
        session: SessionId,
        conn: ConnId,
        token: u64,
        lease_ms: Option<Millis>,
    },
    /// REVOKE (operator): the locks on `key` of every holder, or of `session`, are
    /// released.
    Revoke {
        key: Key,
        session: Option<SessionId>,
    },
    /// SESSION KILL (operator): `session` ends now.
    EndSession { session: SessionId },
    /// RELEASE, or with `token` only the locks that carry that grant's token.
    Release {
        session: SessionId,
        conn: ConnId,
        legacy: bool,
        mode: Mode,
        keys: Vec<Key>,
        token: Option<u64>,
    },
    ReleaseAll {
        session: SessionId,
        conn: ConnId,
        legacy: bool,
    },
    /// A queued request's timeout passed, or its client withdrew it.
    TimeOut { wait: WaitId },
    /// A connection closed: its sessions die (or are forgotten), its wait is withdrawn.
    Disconnect { conn: ConnId },
    /// Every connection of a node is gone (the node died, restarted, or was cut off): as
    /// `Disconnect` for each connection id whose top 16 bits are `node`; until `NodeUp`,
    /// commands from that node's connections are refused ([`Outcome::NodeDown`]), so that
    /// one still in flight cannot bring back what was let go.
    NodeDown { node: u16 },
    /// The node serves clients again (with connections made after it learnt of its
    /// `NodeDown`).
    NodeUp { node: u16 },
    /// Releases dead sessions whose grace has passed (every command does this first; this
    /// one does only that, for the expiry timer).
    Expire,
    /// Every dead session gets at least its full grace from now: a new leader's timers
    /// start afresh, and never shorten a grace the old leader granted.
    Regrace,
    /// Every later token is at least `floor`.
    RaiseTokens { floor: u64 },
    /// The cluster's first command, from the node that made it: tokens start at `floor`
    /// (above what a standalone lockd in that node's data directory issued), the table's
    /// settings become the cluster's (every node applies with them, whatever its own
    /// flags), and nodes serve clients only once this is applied.
    Bootstrap { floor: u64, settings: Settings },
    /// Changes `maxLocks` (cluster configuration).
    SetMaxLocks { max_locks: u64 },
}

/// What the table's behaviour depends on: in a cluster, the same on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Settings {
    pub max_locks: u64,
    pub grace_ms: Millis,
    pub max_waiters: usize,
    pub max_waiters_per_key: usize,
}

impl Settings {
    /// The settings `config` holds.
    pub fn of(config: &crate::Config) -> Settings {
        Settings {
            max_locks: config.max_locks,
            grace_ms: config.grace_ms,
            max_waiters: config.max_waiters,
            max_waiters_per_key: config.max_waiters_per_key,
        }
    }

    /// Each setting where `self` and `other` differ: (name, self's, other's).
    pub fn differences(&self, other: &Settings) -> Vec<(&'static str, u64, u64)> {
        [
            ("max-locks", self.max_locks, other.max_locks),
            ("lock-timeout (ms)", self.grace_ms, other.grace_ms),
            (
                "max-waiters",
                self.max_waiters as u64,
                other.max_waiters as u64,
            ),
            (
                "max-waiters-per-key",
                self.max_waiters_per_key as u64,
                other.max_waiters_per_key as u64,
            ),
        ]
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .collect()
    }
}

/// What a [`Command`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Outcome {
    Acquired(Acquired),
    /// Locks released.
    Released(u32),
    /// `Open` (false: the id is taken), `SetGrace` (false: no such session), `TimeOut`
    /// (false: the request was no longer queued; it was granted or refused, and that is in
    /// the wakeups).
    Done(bool),
    Resumed(Result<(), ResumeError>),
    /// `Extend`: the lease's new deadline, or why not.
    Extended(Result<Millis, ExtendError>),
    /// `EndSession`: the locks the session held, or None if there was no such session.
    Ended(Option<u32>),
    /// `Acquire` refused, nothing done: `key` is in use as a semaphore of `capacity`
    /// permits (0: as a lock), and the request asked for one of `asked` (0: a lock); or
    /// the request named this semaphore twice, or also as a lock (`capacity` 0).
    WrongKind {
        key: Key,
        capacity: u16,
        asked: u16,
    },
    /// Nothing to report.
    Unit,
    /// The command came from a connection of a node that was declared down: nothing was
    /// done, and the connection must be closed.
    NodeDown,
}

impl Command {
    /// The client connection the command came from, if it came from one.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Command::Use { conn, .. }
            | Command::Open { conn, .. }
            | Command::Resume { conn, .. }
            | Command::Acquire { conn, .. }
            | Command::Release { conn, .. }
            | Command::ReleaseAll { conn, .. }
            | Command::Extend { conn, .. }
            | Command::ReleasePermits { conn, .. }
            | Command::Disconnect { conn } => Some(*conn),
            _ => None,
        }
    }
}

/// The top 16 bits of a connection id name the node that holds the connection (0 on a
/// standalone server), so that a cluster can end every connection of a node that died.
pub fn conn_node(conn: ConnId) -> u16 {
    (conn.0 >> 48) as u16
}

impl LockTable {
    /// Applies one command at `now` (clamped to the latest time applied). Dead sessions
    /// whose grace has passed are released first (see [`LockTable::take_expired`]), so no
    /// command ever sees a lock that should be gone; queued requests that the command
    /// granted or refused are in [`LockTable::take_wakeups`].
    // Inlined where the command is built, the match folds to the one arm it can take.
    #[inline]
    pub fn apply(&mut self, cmd: &Command, now: Millis) -> Outcome {
        let now = now.max(self.last_now);
        self.last_now = now;
        // Events not taken after the last command are dropped: the list holds one
        // command's worth at most.
        self.events.clear();
        if self.next_expiry().is_some_and(|at| at <= now) {
            let mut gone = self.expire(now);
            self.expired.append(&mut gone);
        }
        if !self.down_nodes.is_empty() {
            if let Some(conn) = cmd.conn() {
                if self.down_nodes.contains(&conn_node(conn)) {
                    return Outcome::NodeDown;
                }
            }
        }
        match cmd {
            Command::Use { session, conn } => {
                self.use_session(*session, *conn);
                Outcome::Unit
            }
            Command::Open { session, conn } => Outcome::Done(self.open_session(*session, *conn)),
            Command::Resume {
                conn,
                current,
                session,
            } => Outcome::Resumed(self.resume_session(*conn, *current, *session, now)),
            Command::SetGrace { session, grace_ms } => {
                Outcome::Done(self.set_grace(*session, *grace_ms))
            }
            Command::Acquire {
                session,
                conn,
                legacy,
                mode,
                keys,
                wait,
                lease,
                permits,
            } => {
                let got = if *legacy {
                    self.use_session(*session, *conn);
                    self.acquire(*session, *mode, keys, *wait, now)
                } else {
                    self.acquire_bound(*session, *conn, *mode, keys, permits, *wait, *lease, now)
                };
                match got {
                    Acquired::Mismatch { index, capacity } => {
                        let i = index as usize;
                        let (key, asked) = match keys.get(i) {
                            Some(k) => (k.clone(), 0),
                            None => {
                                let p = &permits[i - keys.len()];
                                (p.key.clone(), p.capacity)
                            }
                        };
                        Outcome::WrongKind {
                            key,
                            capacity,
                            asked,
                        }
                    }
                    other => Outcome::Acquired(other),
                }
            }
            Command::ReleasePermits {
                session,
                conn: _,
                keys,
                token,
            } => Outcome::Released(self.release_permits(*session, keys, *token, now)),
            Command::Extend {
                session,
                conn,
                token,
                lease_ms,
            } => Outcome::Extended(self.extend(*session, *conn, *token, *lease_ms, now)),
            Command::Revoke { key, session } => Outcome::Released(self.revoke(key, *session, now)),
            Command::EndSession { session } => Outcome::Ended(self.end_session(*session, now)),
            Command::Release {
                session,
                conn,
                legacy,
                mode,
                keys,
                token,
            } => {
                if *legacy {
                    self.use_session(*session, *conn);
                }
                Outcome::Released(match token {
                    Some(t) => self.release_token(*session, *mode, keys, *t, now),
                    None => self.release(*session, *mode, keys, now),
                })
            }
            Command::ReleaseAll {
                session,
                conn,
                legacy,
            } => {
                if *legacy {
                    self.use_session(*session, *conn);
                }
                Outcome::Released(self.release_all(*session, now))
            }
            Command::TimeOut { wait } => Outcome::Done(self.time_out(*wait, now)),
            Command::Disconnect { conn } => {
                self.disconnect(*conn, now);
                Outcome::Unit
            }
            Command::NodeDown { node } => {
                let mut conns: Vec<ConnId> = self
                    .conns
                    .keys()
                    .copied()
                    .filter(|c| conn_node(*c) == *node)
                    .collect();
                // The connections map is a hash map: sorted, so every replica lets the
                // sessions go in the same order.
                conns.sort_unstable();
                for c in conns {
                    self.disconnect(c, now);
                }
                self.down_nodes.insert(*node);
                Outcome::Unit
            }
            Command::NodeUp { node } => {
                self.down_nodes.remove(node);
                Outcome::Unit
            }
            Command::Expire => Outcome::Unit,
            Command::Regrace => {
                self.regrace(now);
                Outcome::Unit
            }
            Command::RaiseTokens { floor } => {
                self.raise_next_token(*floor);
                Outcome::Unit
            }
            Command::Bootstrap { floor, settings } => {
                self.raise_next_token(*floor);
                self.config.max_locks = settings.max_locks;
                self.config.grace_ms = settings.grace_ms;
                self.config.max_waiters = settings.max_waiters;
                self.config.max_waiters_per_key = settings.max_waiters_per_key;
                self.bootstrapped = true;
                Outcome::Unit
            }
            Command::SetMaxLocks { max_locks } => {
                self.set_max_locks(*max_locks);
                Outcome::Unit
            }
        }
    }

    /// Nodes declared down and not up since.
    pub fn down_nodes(&self) -> impl Iterator<Item = u16> + '_ {
        self.down_nodes.iter().copied()
    }

    /// Moves the sessions that expired in [`LockTable::apply`] since the last call (with
    /// the locks each lost) into `out`.
    pub fn take_expired(&mut self, out: &mut Vec<(SessionId, u32)>) {
        out.append(&mut self.expired);
    }

    /// Whether `Command::Bootstrap` was applied.
    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// The latest time applied.
    pub fn last_now(&self) -> Millis {
        self.last_now
    }
}
