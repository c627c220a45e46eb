//! The legacy LockServerDaemon protocol on a connection: every complete line is answered,
//! in order (the original glued pipelined requests together).

use bytes::BytesMut;
use lockd_core::{Acquired, Command as Cmd, ConnId, Key, Mode, Outcome, SessionId, Wait};
use lockd_proto::legacy::{parse, BadRequest, Command, Reply};
use lockd_proto::line::{next_line, LineTooLong, MAX_LINE};
use lockd_proto::LockType;

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

    /// Answers every complete line in `input`, appending the replies to `out`.
    pub fn process(
        &mut self,
        shared: &Shared,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), LineTooLong> {
        let (mut laps, now) = Laps::start(&shared.clock);
        // Checked after every reply: a batch stops once the bound is passed.
        let max_output = shared.config.max_pending_output;
        while out.len() <= max_output {
            let Some(line) = next_line(input, &mut self.scanned, MAX_LINE)? else {
                break;
            };
            self.answer(shared, &line, now).write_to(out);
            laps.lap(&shared.metrics.legacy_request_seconds);
        }
        Ok(())
    }

    fn answer(&mut self, shared: &Shared, line: &[u8], now: lockd_core::Millis) -> Reply {
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
                return Reply::Bad(bad);
            }
        };
        self.authed = true;
        let Some(sid) = SessionId::from_bytes(req.session) else {
            // parse() guarantees 32 bytes; answer as the original would if it did not.
            return Reply::Bad(BadRequest::Session);
        };
        let conn = self.conn;
        match req.command {
            Command::Acquire(ty, keys) => {
                let cmd = Cmd::Acquire {
                    session: sid,
                    conn,
                    legacy: true,
                    mode: mode(ty),
                    keys: to_keys(&keys),
                    wait: Wait::No,
                };
                shared.with_at(now, |core, now| match core.apply(&cmd, now) {
                    Outcome::Acquired(got) => match got {
                        Acquired::Granted(_) => Reply::Acquired,
                        Acquired::TooManyLocks => Reply::TooManyLocks,
                        Acquired::TokensExhausted => {
                            tracing::error!("no fencing tokens reserved: refusing ACQUIRE");
                            Reply::CantAcquire
                        }
                        _ => Reply::CantAcquire,
                    },
                    // A legacy client's protocol has no such reply; the caller closes
                    // the connection, as a dead server would.
                    _ => Reply::CantAcquire,
                })
            }
            Command::Release(ty, keys) => {
                let cmd = Cmd::Release {
                    session: sid,
                    conn,
                    legacy: true,
                    mode: mode(ty),
                    keys: to_keys(&keys),
                    token: None,
                };
                shared.with_at(now, |core, now| core.apply(&cmd, now));
                Reply::Released
            }
            Command::ReleaseAll => {
                let cmd = Cmd::ReleaseAll {
                    session: sid,
                    conn,
                    legacy: true,
                };
                shared.with_at(now, |core, now| core.apply(&cmd, now));
                Reply::ReleasedAll
            }
            Command::Stat => {
                let cmd = Cmd::Use { session: sid, conn };
                let uptime_ms = shared.with_at(now, |core, now| {
                    core.apply(&cmd, now);
                    now
                });
                Reply::Stat {
                    uptime_secs: uptime_ms / 1000,
                    memory_bytes: sys::resident_bytes(),
                }
            }
        }
    }
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
