//! Sessions and connections: binding a session to the connection that uses it, death at
//! disconnect, the grace period, revival, resumption, and expiry.

use crate::table::{ConnSessions, LockTable};
use crate::types::{ConnId, Millis, SessionId};

const PRUNE_FLOOR: usize = 1024;

/// Why a session could not be taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ResumeError {
    /// No such session (never existed, or expired).
    NoSession,
    /// The session has a live connection.
    Busy,
}

impl LockTable {
    pub(crate) fn bind(&mut self, s: u32, conn: ConnId) {
        let sess = self.session_mut(s);
        debug_assert!(sess.conn.is_none());
        sess.conn = Some(conn);
        if let Some(at) = sess.expires_at.take() {
            self.expiries.remove(&(at, s));
            self.dead_sessions -= 1;
        }
        let entry = self.conns.entry(conn).or_insert_with(|| ConnSessions {
            list: Vec::new(),
            prune_at: PRUNE_FLOOR,
        });
        entry.list.push(s);
        if entry.list.len() >= entry.prune_at {
            self.prune_conn(conn);
        }
    }

    /// Forgets the sessions of `conn` that hold nothing and wait for nothing; they would be
    /// dropped at disconnect anyway, and a new use binds them again.
    fn prune_conn(&mut self, conn: ConnId) {
        let Some(mut cs) = self.conns.remove(&conn) else {
            return;
        };
        // The list holds exactly the sessions bound to this connection (bind pushes, letting
        // go removes), so the idle ones are found there, not by walking every session.
        let (keep, idle): (Vec<u32>, Vec<u32>) = cs.list.iter().partition(|&&s| {
            let sess = self.session(s);
            sess.locks > 0 || sess.wait.is_some()
        });
        for s in idle {
            self.session_mut(s).conn = None;
            self.remove_session(s);
        }
        cs.list = keep;
        cs.prune_at = (cs.list.len() * 2).max(PRUNE_FLOOR);
        self.conns.insert(conn, cs);
    }

    /// The legacy daemon's rule, applied before every valid command: a session is bound to
    /// the connection that first uses it; a session without a live connection (new, or
    /// dead in its grace period) is bound to this one and so is alive again. A session
    /// bound to another live connection stays bound there.
    pub fn use_session(&mut self, id: SessionId, conn: ConnId) -> u32 {
        match self.find_session(&id) {
            None => self.insert_session(id, Some(conn)),
            Some(s) => {
                if self.session(s).conn.is_none() {
                    self.bind(s, conn);
                }
                s
            }
        }
    }

    /// Makes a new session bound to `conn` (a native connection's own session). Returns
    /// false if the id is taken.
    pub fn open_session(&mut self, id: SessionId, conn: ConnId) -> bool {
        if self.find_session(&id).is_some() {
            return false;
        }
        self.insert_session(id, Some(conn));
        true
    }

    /// `conn` takes over session `id`, which must have no live connection. The session
    /// `conn` had until now (`current`) is let go as if its connection had closed.
    pub fn resume_session(
        &mut self,
        conn: ConnId,
        current: SessionId,
        id: SessionId,
        now: Millis,
    ) -> Result<(), ResumeError> {
        if current == id {
            return Ok(());
        }
        let s = self.find_session(&id).ok_or(ResumeError::NoSession)?;
        if self.session(s).conn.is_some() {
            return Err(ResumeError::Busy);
        }
        if let Some(cur) = self.find_session(&current) {
            if self.session(cur).conn == Some(conn) {
                if let Some(cs) = self.conns.get_mut(&conn) {
                    cs.list.retain(|&x| x != cur);
                }
                self.let_go(cur, now);
            }
        }
        self.bind(s, conn);
        Ok(())
    }

    /// Sets a session's grace period (how long it keeps its locks after its connection is
    /// lost). Returns false if there is no such session.
    pub fn set_grace(&mut self, id: SessionId, grace_ms: Millis) -> bool {
        match self.find_session(&id) {
            Some(s) => {
                self.session_mut(s).grace = Some(grace_ms);
                true
            }
            None => false,
        }
    }

    /// The connection closed: each session bound to it loses its pending wait, and either
    /// becomes dead (it holds locks: they are released after its grace period) or is
    /// forgotten.
    pub fn disconnect(&mut self, conn: ConnId, now: Millis) {
        let Some(cs) = self.conns.remove(&conn) else {
            return;
        };
        for s in cs.list {
            if self.sessions[s as usize]
                .as_ref()
                .is_some_and(|x| x.conn == Some(conn))
            {
                self.let_go(s, now);
            }
        }
    }

    /// Unbinds one session from its connection (see [`LockTable::disconnect`]).
    fn let_go(&mut self, s: u32, now: Millis) {
        if let Some(w) = self.session(s).wait {
            self.cancel_wait(w, now);
        }
        let grace = match self.faulty(crate::table::Fault::NoGrace) {
            true => 0,
            false => self.session(s).grace.unwrap_or(self.config.grace_ms),
        };
        let sess = self.session_mut(s);
        sess.conn = None;
        if sess.locks == 0 {
            self.remove_session(s);
            return;
        }
        let at = now.saturating_add(grace);
        sess.expires_at = Some(at);
        self.expiries.insert((at, s));
        self.dead_sessions += 1;
    }

    /// Every dead session keeps its locks for at least its full grace from `now` (a new
    /// cluster leader restarts the timers; it never shortens one).
    /// Leases too get their full length again.
    pub(crate) fn regrace(&mut self, now: Millis) {
        self.relengthen_leases(now);
        let dead: Vec<(Millis, u32)> = self.expiries.iter().copied().collect();
        for (at, s) in dead {
            let grace = self.session(s).grace.unwrap_or(self.config.grace_ms);
            let new_at = at.max(now.saturating_add(grace));
            if new_at != at {
                self.expiries.remove(&(at, s));
                self.expiries.insert((new_at, s));
                self.session_mut(s).expires_at = Some(new_at);
            }
        }
    }

    /// When the next dead session expires, if any: the caller's timer should call
    /// [`LockTable::expire`] then.
    /// Leases count too: their deadlines are kept the same way.
    pub fn next_expiry(&self) -> Option<Millis> {
        let session = self.expiries.first().map(|&(at, _)| at);
        match (session, self.next_lease_end()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Releases the locks of every dead session whose grace period has passed by `now`, and
    /// forgets those sessions. Returns them with the number of locks each lost.
    /// Grants whose lease passed go first (see `lease`).
    pub fn expire(&mut self, now: Millis) -> Vec<(SessionId, u32)> {
        self.expire_leases(now);
        let mut out = Vec::new();
        while let Some(&(at, s)) = self.expiries.first() {
            if at > now {
                break;
            }
            let id = self.session(s).id;
            let n = self.release_all_of(s, now);
            self.remove_session(s);
            self.counters.expired_sessions += 1;
            out.push((id, n));
        }
        out
    }

    /// The id of a session if it exists, with whether it has a live connection.
    pub fn session_state(&self, id: &SessionId) -> Option<SessionState> {
        let s = self.find_session(id)?;
        let sess = self.session(s);
        Some(SessionState {
            connected: sess.conn.is_some(),
            conn: sess.conn,
            locks: sess.locks,
            expires_at: sess.expires_at,
            waiting: sess.wait.is_some(),
        })
    }
}

/// What [`LockTable::session_state`] tells of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionState {
    pub connected: bool,
    /// The connection it is bound to.
    pub conn: Option<ConnId>,
    pub locks: u32,
    pub expires_at: Option<Millis>,
    pub waiting: bool,
}
