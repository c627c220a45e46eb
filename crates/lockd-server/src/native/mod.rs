//! The native protocol (RESP) on a connection: authentication, dispatch to the command
//! families, and blocking ACQUIREs.
//!
//! Each command family is one file: `connection` (PING, HELLO, AUTH, QUIT, CLIENT, SELECT,
//! COMMAND), `locks` (ACQUIRE, RELEASE, RELEASEALL), `session` (SESSION), `info`
//! (INSPECT, LOCKS, STATS). A new verb is one function in one of them and one arm below.

mod args;
mod connection;
mod info;
mod locks;
mod session;

use bytes::{Buf, Bytes, BytesMut};
use lockd_core::{ConnId, Millis, SessionId, WaitId};
use lockd_proto::resp::{parse_spans, Limits, Value};
use tokio::sync::oneshot;

use crate::clock::Laps;
use crate::shared::Shared;

pub(crate) use args::Args;

/// A queued ACQUIRE the connection waits on; nothing else on the connection is answered
/// until it ends.
pub(crate) struct PendingWait {
    pub id: WaitId,
    pub rx: oneshot::Receiver<lockd_core::Woken>,
    pub deadline: Millis,
    /// When it was queued, for the wait-time histogram.
    pub since: Millis,
}

/// What a command asks of the connection.
pub(crate) enum Outcome {
    Reply(Value),
    Wait(PendingWait),
    /// Reply, then close the connection.
    Close(Value),
}

/// How processing stopped.
pub(crate) enum Stop {
    /// Input used up (or waiting for more).
    Drained,
    Wait(PendingWait),
    /// Flush the output, then close.
    Close,
}

pub(crate) struct Native {
    pub conn: ConnId,
    pub peer: std::net::IpAddr,
    pub session: SessionId,
    pub proto: u8,
    pub authed: bool,
    pub name: Option<Bytes>,
    /// The time for this batch of requests (read once per batch).
    pub now: Millis,
    limits: Limits,
}

impl Native {
    pub fn new(shared: &Shared, conn: ConnId, peer: std::net::IpAddr) -> Native {
        let session = loop {
            let id = random_session_id();
            if shared.with(|core, _| core.table.open_session(id, conn)) {
                break id;
            }
        };
        Native {
            conn,
            peer,
            session,
            proto: 2,
            authed: false,
            name: None,
            now: 0,
            limits: Limits::default(),
        }
    }

    /// Answers requests from `input` until it is used up or one must wait.
    pub fn process(&mut self, shared: &Shared, input: &mut BytesMut, out: &mut BytesMut) -> Stop {
        let (mut laps, now) = Laps::start(&shared.clock);
        self.now = now;
        loop {
            // Arguments are borrowed from `input` while the request runs, then consumed.
            let (used, spans) = match parse_spans(input, &self.limits) {
                Ok(Some(x)) => x,
                Ok(None) => return Stop::Drained,
                Err(e) => {
                    shared.metrics.bad_request("PROTOCOL");
                    Value::error(format!("ERR {e}")).encode(self.proto, out);
                    tracing::debug!(conn = self.conn.0, error = %e, "native protocol error: closing");
                    return Stop::Close;
                }
            };
            if spans.is_empty() {
                input.advance(used);
                continue;
            }
            shared
                .counters
                .native_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = {
                let frame = &input[..used];
                self.execute(
                    shared,
                    Args::new(spans.iter().map(|&(p, l)| &frame[p..p + l]).collect()),
                )
            };
            input.advance(used);
            laps.lap(&shared.metrics.native_request_seconds);
            match outcome {
                Outcome::Reply(Value::Error(e)) => {
                    shared
                        .metrics
                        .bad_request(e.split(' ').next().unwrap_or("ERR"));
                    Value::Error(e).encode(self.proto, out)
                }
                Outcome::Reply(v) => v.encode(self.proto, out),
                Outcome::Wait(w) => return Stop::Wait(w),
                Outcome::Close(v) => {
                    v.encode(self.proto, out);
                    return Stop::Close;
                }
            }
        }
    }

    fn execute(&mut self, shared: &Shared, args: Args) -> Outcome {
        let name = args.name();
        let open = matches!(name.as_bytes(), b"HELLO" | b"AUTH" | b"PING" | b"QUIT");
        if !self.authed && !open {
            return Outcome::Reply(Value::error("NOAUTH Authentication required."));
        }
        let reply = match name.as_bytes() {
            b"PING" => connection::ping(args),
            b"HELLO" => connection::hello(self, shared, args),
            b"AUTH" => connection::auth(self, shared, args),
            b"QUIT" => return Outcome::Close(Value::ok()),
            b"CLIENT" => connection::client(self, args),
            b"SELECT" => connection::select(args),
            b"COMMAND" => Ok(Value::Array(Vec::new())),
            b"ACQUIRE" => return locks::acquire(self, shared, args),
            b"RELEASE" => locks::release(self, shared, args),
            b"RELEASEALL" => locks::release_all(self, shared, args),
            b"SESSION" => session::session(self, shared, args),
            b"INSPECT" => info::inspect(shared, args),
            b"LOCKS" => info::locks(self, shared, args),
            b"STATS" => info::stats(shared, args),
            _ => Err(args.unknown()),
        };
        Outcome::Reply(reply.unwrap_or_else(|e| e))
    }

    /// The wait ended: granted with a token, or timed out (`None`).
    pub fn finish_wait(
        &mut self,
        shared: &Shared,
        mut wait: PendingWait,
        woken: Option<lockd_core::Woken>,
        out: &mut BytesMut,
    ) {
        let waited = shared.clock.now().saturating_sub(wait.since);
        shared.metrics.wait_seconds.observe(waited as f64 / 1000.0);
        let outcome = woken.or_else(|| {
            shared.with(|core, now| {
                core.waits.remove(&wait.id);
                if core.table.time_out(wait.id, now) {
                    None
                } else {
                    // Granted just before the timeout was handled: the token is sent.
                    wait.rx.try_recv().ok()
                }
            })
        });
        match outcome {
            Some(lockd_core::Woken::Granted(t)) => Value::Integer(t as i64),
            Some(lockd_core::Woken::TooManyLocks) => locks::too_many_locks(shared),
            None => Value::Null,
        }
        .encode(self.proto, out);
    }
}

/// 32 random alphanumerics: also a valid legacy session id.
fn random_session_id() -> SessionId {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    let mut id = [0u8; 32];
    for b in &mut id {
        *b = ALPHABET[rng.gen_range(0..ALPHABET.len())];
    }
    SessionId(id)
}
