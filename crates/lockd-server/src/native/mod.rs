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
use lockd_core::{Command, ConnId, Millis, Outcome as Applied, SessionId, WaitId};
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
    /// Set by a command whose reply must be the connection's last (a failed AUTH from an
    /// address past the failure limit).
    pub close_after_reply: bool,
    /// While a request waits: how far the input behind it was searched for a QUIT.
    quit_scan: usize,
}

impl Native {
    pub fn new(shared: &Shared, conn: ConnId, peer: std::net::IpAddr) -> Native {
        let session = loop {
            let id = random_session_id();
            let open = Command::Open { session: id, conn };
            if shared.with(|core, now| core.apply(&open, now)) == Applied::Done(true) {
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
            close_after_reply: false,
            quit_scan: 0,
        }
    }

    /// The limits on the next request: small until the connection has authenticated.
    fn limits(&self) -> &'static Limits {
        if self.authed {
            &Limits::AUTHENTICATED
        } else {
            &Limits::UNAUTHENTICATED
        }
    }

    /// Answers requests from `input` until it is used up, one must wait, or the replies
    /// waiting to be sent pass `--max-pending-output` (checked after every reply, so one
    /// batch cannot pile up more than one reply past the bound).
    pub fn process(&mut self, shared: &Shared, input: &mut BytesMut, out: &mut BytesMut) -> Stop {
        let (mut laps, now) = Laps::start(&shared.clock);
        self.now = now;
        self.quit_scan = 0;
        let max_output = shared.config.max_pending_output;
        loop {
            if out.len() > max_output {
                return Stop::Drained;
            }
            // Arguments are borrowed from `input` while the request runs, then consumed.
            let frame = match parse_spans(input, self.limits()) {
                Ok(Some(f)) => f,
                Ok(None) => return Stop::Drained,
                Err(e) => {
                    shared.metrics.bad_request("PROTOCOL");
                    Value::error(format!("ERR {e}")).encode(self.proto, out);
                    tracing::debug!(conn = self.conn.0, error = %e, "native protocol error: closing");
                    return Stop::Close;
                }
            };
            if frame.spans.is_empty() {
                input.advance(frame.len);
                continue;
            }
            shared
                .counters
                .native_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = {
                let bytes = &input[..frame.len];
                let args = Args::new(frame.spans.iter().map(|&(p, l)| &bytes[p..p + l]).collect());
                if frame.args > frame.spans.len() {
                    Outcome::Reply(args.too_many(frame.args))
                } else {
                    self.execute(shared, args)
                }
            };
            input.advance(frame.len);
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
            if self.close_after_reply {
                return Stop::Close;
            }
        }
    }

    /// While a request waits: whether the requests sent behind it include a QUIT, which
    /// withdraws the wait. Only what arrived since the last call is searched.
    pub fn quit_behind(&mut self, input: &[u8]) -> bool {
        while self.quit_scan < input.len() {
            let Ok(Some(f)) = parse_spans(&input[self.quit_scan..], self.limits()) else {
                return false;
            };
            let at = self.quit_scan;
            self.quit_scan += f.len;
            if let Some(&(p, l)) = f.spans.first() {
                if input[at + p..at + p + l].eq_ignore_ascii_case(b"QUIT") {
                    return true;
                }
            }
        }
        false
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

    /// The wait ended: granted with a token, or it timed out or was withdrawn (`None`).
    pub fn finish_wait(
        &mut self,
        shared: &Shared,
        wait: PendingWait,
        woken: Option<lockd_core::Woken>,
        out: &mut BytesMut,
    ) {
        let waited = shared.clock.now().saturating_sub(wait.since);
        shared.metrics.wait_seconds.observe(waited as f64 / 1000.0);
        let outcome = woken.or_else(|| shared.end_wait(wait.id, wait.rx));
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
