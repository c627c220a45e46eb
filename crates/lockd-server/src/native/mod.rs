//! The native protocol (RESP) on a connection: authentication, dispatch to the command
//! families, and blocking ACQUIREs.
//!
//! Each command family is one file: `connection` (PING, HELLO, AUTH, QUIT, CLIENT, SELECT,
//! COMMAND), `locks` (ACQUIRE, EXTEND, RELEASE, RELEASEALL), `session` (SESSION), `admin`
//! (REVOKE, SESSION KILL: the operator's), `events` (EVENTS and the pushes), `info`
//! (INSPECT, LOCKS, STATS), `cluster` (CLUSTER STATUS). A new verb is one function in one of them and one arm below.

mod admin;
mod args;
mod cluster;
mod connection;
mod events;
mod info;
mod locks;
mod session;

use bytes::{Buf, Bytes, BytesMut};
use lockd_core::{Command, ConnId, Millis, Outcome as Applied, SessionId, WaitId};
use lockd_proto::resp::{parse_spans, Limits, Value};
use tokio::sync::oneshot;

use crate::backend::{CommitFuture, Committed};
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
    /// In a cluster: wait for the commit, then render its outcome.
    Commit(Commit),
}

/// Rendering a committed outcome, once it is known.
pub(crate) type Then = Box<dyn FnOnce(&mut Native, &Shared, Committed) -> Outcome + Send>;

/// A command committing through the cluster, and what to do with its outcome. Nothing
/// else on the connection is answered meanwhile: replies stay in request order.
pub(crate) struct Commit {
    pub fut: CommitFuture,
    pub then: Then,
}

/// How processing stopped.
pub(crate) enum Stop {
    /// Input used up (or waiting for more).
    Drained,
    Wait(PendingWait),
    /// Flush the output, then close.
    Close,
    Commit(Commit),
}

pub(crate) struct Native {
    pub conn: ConnId,
    pub peer: std::net::IpAddr,
    pub session: SessionId,
    pub proto: u8,
    pub authed: bool,
    /// Authenticated with the admin key (see `admin`).
    pub admin: bool,
    /// While subscribed (EVENTS ON): the events of this connection's sessions.
    pub events: Option<crate::shared::EventsRx>,
    pub name: Option<Bytes>,
    /// The time for this batch of requests (read once per batch).
    pub now: Millis,
    /// Set by a command whose reply must be the connection's last (a failed AUTH from an
    /// address past the failure limit).
    pub close_after_reply: bool,
    /// While a request waits: how far the input behind it was searched for a QUIT.
    quit_scan: usize,
    /// Whether the table has this connection's own session (in a cluster it is opened
    /// with the connection's first command that changes the table).
    opened: bool,
}

impl Native {
    pub fn new(shared: &Shared, conn: ConnId, peer: std::net::IpAddr) -> Native {
        let session = loop {
            let id = random_session_id();
            if shared.clustered {
                // 190 bits of randomness: opened with the first command (see `run`).
                break id;
            }
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
            admin: false,
            events: None,
            name: None,
            now: 0,
            close_after_reply: false,
            quit_scan: 0,
            opened: !shared.clustered,
        }
    }

    /// A read in a cluster: linearizable, it is answered from this node's table once an
    /// entry committed after the read arrived has been applied here (so the table holds
    /// every change acknowledged before), at the cost of one round of consensus.
    fn linearized(&mut self, shared: &Shared, args: Args) -> Outcome {
        if lockd_raft::breaks::off(lockd_raft::breaks::Check::ReadIndex) {
            return read_here(self, shared, args);
        }
        let owned: Vec<Vec<u8>> = args.all().iter().map(|a| a.to_vec()).collect();
        Outcome::Commit(Commit {
            fut: shared.submit(Vec::new()),
            then: Box::new(move |n, shared, committed| {
                if let Err(e) = committed {
                    return Outcome::Reply(no_quorum(&e));
                }
                read_here(
                    n,
                    shared,
                    Args::new(owned.iter().map(Vec::as_slice).collect()),
                )
            }),
        })
    }

    /// Applies `cmd` (on a standalone server, now; in a cluster, once committed) and
    /// renders its outcome with `render`, which also gets the wait of a queued ACQUIRE.
    /// Both backends take this one path.
    #[inline]
    pub(super) fn run<R>(&mut self, shared: &Shared, cmd: Command, render: R) -> Outcome
    where
        R: FnOnce(&mut Native, &Shared, Applied, Option<Parked>) -> Outcome + Send + 'static,
    {
        if !shared.clustered {
            let (o, parked) = shared.with_at(self.now, |core, now| {
                let o = core.apply(&cmd, now);
                let parked = queued(&o).and_then(|w| core.parked.remove(&w));
                (o, parked)
            });
            return render(self, shared, o, parked);
        }
        let opening = !self.opened;
        let mut cmds = Vec::with_capacity(2);
        if opening {
            cmds.push(Command::Open {
                session: self.session,
                conn: self.conn,
            });
        }
        cmds.push(cmd);
        Outcome::Commit(Commit {
            fut: shared.submit(cmds),
            then: Box::new(move |n, shared, committed| match committed {
                Ok(mut outcomes) => {
                    let o = outcomes.pop().expect("one outcome per command");
                    if opening {
                        match outcomes.first() {
                            Some(Applied::Done(true)) => n.opened = true,
                            Some(Applied::NodeDown) => return Outcome::Close(locks::node_down()),
                            _ => {
                                return Outcome::Close(Value::error(
                                    "ERR session id collision; reconnect",
                                ))
                            }
                        }
                    }
                    if o == Applied::NodeDown {
                        return Outcome::Close(locks::node_down());
                    }
                    let parked = queued(&o).and_then(|w| shared.take_parked(w));
                    render(n, shared, o, parked)
                }
                Err(e) => Outcome::Reply(no_quorum(&e)),
            }),
        })
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
                Outcome::Commit(c) => return Stop::Commit(c),
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
            b"RELEASE" => return locks::release(self, shared, args),
            b"RELEASEALL" => return locks::release_all(self, shared, args),
            b"EXTEND" => return locks::extend(self, shared, args),
            b"REVOKE" => return admin::revoke(self, shared, args),
            b"EVENTS" => events::events(self, shared, args),
            b"SESSION" => return session::session(self, shared, args),
            b"INSPECT" | b"LOCKS" | b"STATS" if shared.clustered => {
                return self.linearized(shared, args)
            }
            b"INSPECT" => info::inspect(shared, args),
            b"LOCKS" => info::locks(self, shared, args),
            b"STATS" => info::stats(shared, args),
            b"CLUSTER" => return cluster::cluster(shared, args),
            _ => Err(args.unknown()),
        };
        Outcome::Reply(reply.unwrap_or_else(|e| e))
    }

    /// The wait ended: granted with a token, or it timed out or was withdrawn (`None`).
    /// In a cluster a withdrawal is committed first (the grant may come first): then the
    /// reply is the commit's to write.
    pub fn finish_wait(
        &mut self,
        shared: &Shared,
        wait: PendingWait,
        woken: Option<lockd_core::Woken>,
        out: &mut BytesMut,
    ) -> Option<Commit> {
        let waited = shared.clock.now().saturating_sub(wait.since);
        shared.metrics.wait_seconds.observe(waited as f64 / 1000.0);
        shared.metrics.wait_buckets.observe(waited);
        if woken.is_none() && shared.clustered {
            let mut rx = wait.rx;
            return Some(Commit {
                fut: shared.submit(vec![Command::TimeOut { wait: wait.id }]),
                then: Box::new(move |_, shared, committed| {
                    // Withdrawn, or answered first: the answer is in the channel.
                    let woken = match committed {
                        Ok(o) if o.first() == Some(&Applied::Done(true)) => None,
                        _ => rx.try_recv().ok(),
                    };
                    Outcome::Reply(woken_reply(shared, woken))
                }),
            });
        }
        let outcome = woken.or_else(|| shared.end_wait(wait.id, wait.rx));
        woken_reply(shared, outcome).encode(self.proto, out);
        None
    }
}

/// A mode as the protocol shows a holder's or a waiter's (INSPECT, LOCKS, pushes, the
/// admin HTTP): `PERMITS` on a semaphore.
pub(crate) fn mode_name(mode: lockd_core::Mode, permits: u16) -> &'static str {
    if permits > 0 {
        "PERMITS"
    } else {
        mode.as_str()
    }
}

/// The receiving end of a queued request's wait.
pub(crate) type Parked = oneshot::Receiver<lockd_core::Woken>;

fn queued(o: &Applied) -> Option<WaitId> {
    match o {
        Applied::Acquired(lockd_core::Acquired::Queued(w)) => Some(*w),
        _ => None,
    }
}

/// The reply when a cluster command could not be committed (native.md: CLUSTERDOWN).
pub(crate) fn no_quorum(e: &lockd_raft::ClusterError) -> Value {
    // NoQuorum reads "no quorum: ..."; Removed says the node left the cluster.
    Value::error(format!("CLUSTERDOWN {e}"))
}

fn woken_reply(shared: &Shared, woken: Option<lockd_core::Woken>) -> Value {
    match woken {
        Some(lockd_core::Woken::Granted(t)) => Value::Integer(t as i64),
        Some(lockd_core::Woken::TooManyLocks) => locks::too_many_locks(shared),
        Some(lockd_core::Woken::Revoked) => {
            Value::error("REVOKED an operator ended this session while it waited (SESSION KILL)")
        }
        None => Value::Null,
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

/// `INSPECT`, `LOCKS` or `STATS`, answered from this node's table as it is now (in a
/// cluster, once [`Native::linearized`] has seen an entry committed after the read).
fn read_here(n: &Native, shared: &Shared, args: Args) -> Outcome {
    let reply = match args.name().as_bytes() {
        b"INSPECT" => info::inspect(shared, args),
        b"LOCKS" => info::locks(n, shared, args),
        _ => info::stats(shared, args),
    };
    Outcome::Reply(reply.unwrap_or_else(|e| e))
}
