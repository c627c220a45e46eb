//! The legacy LockServerDaemon protocol on a connection: every complete line is answered,
//! in order (the original glued pipelined requests together).

use bytes::BytesMut;
use lockd_core::{Acquired, Command as Cmd, ConnId, Key, Mode, Outcome, SessionId, Wait};
use lockd_proto::legacy::{parse, BadRequest, Command, Reply};
use lockd_proto::line::{next_line, LineTooLong, MAX_LINE};
use lockd_proto::LockType;

use crate::backend::{CommitFuture, Committed};
use crate::clock::Laps;
use crate::shared::Shared;
use crate::sys;

pub(crate) struct Legacy {
    conn: ConnId,
    peer: std::net::IpAddr,
    scanned: usize,
    /// A correctly signed line came on this connection (it has logged in).
    pub authed: bool,
}

impl Legacy {
    pub fn new(conn: ConnId, peer: std::net::IpAddr) -> Legacy {
        Legacy {
            conn,
            peer,
            scanned: 0,
            authed: false,
        }
    }

    /// Answers every complete line in `input`, appending the replies to `out`; in a
    /// cluster, stops at a line whose command must be committed first.
    pub fn process(
        &mut self,
        shared: &Shared,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Commit>, LineTooLong> {
        let (mut laps, now) = Laps::start(&shared.clock);
        // Checked after every reply: a batch stops once the bound is passed.
        let max_output = shared.config.max_pending_output;
        while out.len() <= max_output {
            let Some(line) = next_line(input, &mut self.scanned, MAX_LINE)? else {
                break;
            };
            match self.answer(shared, &line, now) {
                Answer::Now(r) => r.write_to(out),
                Answer::Commit(c) => return Ok(Some(c)),
            }
            laps.lap(&shared.metrics.legacy_request_seconds);
        }
        Ok(None)
    }

    fn answer(&mut self, shared: &Shared, line: &[u8], now: lockd_core::Millis) -> Answer {
        use std::sync::atomic::Ordering::Relaxed;
        shared.counters.legacy_requests.fetch_add(1, Relaxed);
        // Every line is checked on its own, as the original does: failures from this
        // address are counted and logged, and never refuse a correctly signed line.
        // Parsing and the signature check happen outside the table's lock.
        let req = match parse(line, &shared.signer) {
            Ok(r) => r,
            Err(bad) => {
                shared.counters.bad_requests.fetch_add(1, Relaxed);
                shared.metrics.bad_request(bad.code());
                if bad == BadRequest::Key {
                    let _ = shared.auth_failed(self.peer, "legacy");
                }
                tracing::debug!(conn = self.conn.0, code = bad.code(), "bad legacy request");
                return Answer::Now(Reply::Bad(bad));
            }
        };
        self.authed = true;
        let Some(sid) = SessionId::from_bytes(req.session) else {
            // parse() guarantees 32 bytes; answer as the original would if it did not.
            return Answer::Now(Reply::Bad(BadRequest::Session));
        };
        let conn = self.conn;
        let (cmd, render): (Cmd, Render) = match req.command {
            Command::Acquire(ty, keys) => (
                Cmd::Acquire {
                    session: sid,
                    conn,
                    legacy: true,
                    mode: mode(ty),
                    keys: to_keys(&keys),
                    wait: Wait::No,
                    lease: None,
                    permits: Vec::new(),
                },
                |_, o| match o {
                    Outcome::Acquired(Acquired::Granted(_)) => Reply::Acquired,
                    Outcome::Acquired(Acquired::TooManyLocks) => Reply::TooManyLocks,
                    Outcome::Acquired(Acquired::TokensExhausted) => {
                        tracing::error!("no fencing tokens reserved: refusing ACQUIRE");
                        Reply::CantAcquire
                    }
                    _ => Reply::CantAcquire,
                },
            ),
            Command::Release(ty, keys) => (
                Cmd::Release {
                    session: sid,
                    conn,
                    legacy: true,
                    mode: mode(ty),
                    keys: to_keys(&keys),
                    token: None,
                },
                |_, _| Reply::Released,
            ),
            Command::ReleaseAll => (
                Cmd::ReleaseAll {
                    session: sid,
                    conn,
                    legacy: true,
                },
                |_, _| Reply::ReleasedAll,
            ),
            Command::Stat => (Cmd::Use { session: sid, conn }, |shared, _| Reply::Stat {
                uptime_secs: shared.clock.now() / 1000,
                memory_bytes: sys::resident_bytes(),
            }),
        };
        if !shared.clustered {
            let o = shared.with_at(now, |core, now| core.apply(&cmd, now));
            return Answer::Now(render(shared, o));
        }
        Answer::Commit(Commit {
            fut: shared.submit(vec![cmd]),
            then: render,
        })
    }
}

/// How a committed outcome is answered.
pub(crate) type Render = fn(&Shared, Outcome) -> Reply;

/// In a cluster: a line's command committing, and how its outcome is answered. A legacy
/// client has no reply for "no quorum": it gets what a dead server gives, a closed
/// connection (and so does a connection of a node the cluster cut off), so that
/// LSLockManager's quorum logic takes over.
pub(crate) struct Commit {
    pub fut: CommitFuture,
    pub then: Render,
}

impl Commit {
    /// The reply to write, or `None` to close the connection.
    pub fn answer(self, shared: &Shared, committed: Committed) -> Option<Reply> {
        match committed {
            Ok(mut o) => match o.pop() {
                Some(Outcome::NodeDown) | None => None,
                Some(o) => Some((self.then)(shared, o)),
            },
            Err(e) => {
                tracing::warn!("legacy request not committed ({e}): closing the connection");
                None
            }
        }
    }
}

enum Answer {
    Now(Reply),
    Commit(Commit),
}

fn mode(t: LockType) -> Mode {
    match t {
        LockType::Sh => Mode::Sh,
        LockType::Ex => Mode::Ex,
    }
}

fn to_keys(keys: &[&[u8]]) -> Vec<Key> {
    // Legacy keys are exactly 31 bytes (checked by parse), always valid keys.
    keys.iter().filter_map(|k| Key::new(k).ok()).collect()
}
