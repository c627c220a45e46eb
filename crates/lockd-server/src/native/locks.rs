//! Lock commands: ACQUIRE (optionally with a lease), EXTEND (a lease), RELEASE (optionally
//! naming the grant's token), RELEASEALL.

use lockd_core::{
    Acquired, Command, ExtendError, Key, Millis, Mode, Outcome as Applied, Permits, Wait,
};
use lockd_proto::resp::Value;

use super::args::{uint, upper, Args};
use super::{Native, Outcome, PendingWait};
use crate::shared::Shared;

/// Most keys in one request.
pub(crate) const MAX_KEYS: usize = 4096;

fn mode(arg: &[u8]) -> Result<Mode, Value> {
    match upper(arg).as_str() {
        "SH" => Ok(Mode::Sh),
        "EX" => Ok(Mode::Ex),
        _ => Err(Value::error("ERR mode must be SH or EX")),
    }
}

fn keys(args: &[&[u8]]) -> Result<Vec<Key>, Value> {
    if args.len() > MAX_KEYS {
        return Err(Value::error(format!(
            "ERR too many keys in one request (at most {MAX_KEYS})"
        )));
    }
    args.iter()
        .map(|k| {
            Key::new(k).map_err(|e| {
                Value::error(format!("ERR invalid key: {e} (keys are 1 to 1024 bytes)"))
            })
        })
        .collect()
}

/// A lease's length: 1 ms to a day.
fn lease_ms(arg: &[u8]) -> Result<Millis, Value> {
    match uint(arg, "lease")? {
        ms @ 1..=lockd_core::MAX_LEASE_MS => Ok(ms),
        _ => Err(Value::error(format!(
            "ERR lease must be 1 to {} ms",
            lockd_core::MAX_LEASE_MS
        ))),
    }
}

/// The most permits a semaphore may have.
const MAX_CAPACITY: u64 = u16::MAX as u64;

/// What an ACQUIRE asks for.
struct Ask {
    lease: Option<Millis>,
    permits: Vec<Permits>,
    mode: Mode,
    timeout: u64,
    keys: Vec<Key>,
}

/// `PERMITS key permits capacity`, after the word.
fn permits_clause(args: &[&[u8]]) -> Result<Permits, Value> {
    let [key, permits, capacity] = args else {
        unreachable!("three arguments")
    };
    let capacity = match uint(capacity, "capacity")? {
        c @ 1..=MAX_CAPACITY => c as u16,
        _ => {
            return Err(Value::error(format!(
                "ERR a semaphore's capacity must be 1 to {MAX_CAPACITY}"
            )))
        }
    };
    let permits = match uint(permits, "permits")? {
        p if p >= 1 && p <= u64::from(capacity) => p as u16,
        _ => {
            return Err(Value::error(format!(
                "ERR permits must be 1 to the semaphore's capacity ({capacity})"
            )))
        }
    };
    let key = keys(&[key])?.pop().expect("one key");
    Ok(Permits {
        key,
        permits,
        capacity,
    })
}

/// ACQUIRE [LEASE ms] [PERMITS key permits capacity]... SH|EX timeout_ms key [key ...], or
/// with at least one PERMITS and no lock keys: ACQUIRE [LEASE ms] PERMITS ... timeout_ms.
/// The options come first: after the mode every argument may be a key.
fn parse_acquire(args: &Args) -> Result<Ask, Value> {
    let wrong = || {
        args.arity(usize::MAX, usize::MAX)
            .expect_err("never that many")
    };
    let rest = args.arity(2, usize::MAX)?;
    let mut i = 0;
    let (mut lease, mut permits) = (None, Vec::new());
    loop {
        let Some(a) = rest.get(i) else {
            return Err(wrong());
        };
        if a.eq_ignore_ascii_case(b"LEASE") && lease.is_none() {
            lease = Some(lease_ms(rest.get(i + 1).ok_or_else(wrong)?)?);
            i += 2;
        } else if a.eq_ignore_ascii_case(b"PERMITS") {
            permits.push(permits_clause(rest.get(i + 1..i + 4).ok_or_else(wrong)?)?);
            i += 4;
        } else {
            break;
        }
    }
    let rest = &rest[i..];
    let (mode, rest, had_mode) = match rest.first() {
        Some(a) if a.eq_ignore_ascii_case(b"SH") || a.eq_ignore_ascii_case(b"EX") => {
            (self::mode(a)?, &rest[1..], true)
        }
        // Semaphores alone: the timeout comes next, and no lock key.
        Some(_) if !permits.is_empty() => (Mode::Ex, rest, false),
        Some(a) => return Err(self::mode(a).expect_err("not a mode")),
        None => return Err(wrong()),
    };
    let timeout = uint(rest.first().ok_or_else(wrong)?, "timeout")?;
    let lock_keys = &rest[1..];
    if lock_keys.is_empty() && (permits.is_empty() || had_mode) {
        return Err(wrong());
    }
    if !had_mode && !lock_keys.is_empty() {
        return Err(Value::error(
            "ERR lock keys need a mode: ACQUIRE [PERMITS ...] SH|EX timeout key [key ...]",
        ));
    }
    if lock_keys.len() + permits.len() > MAX_KEYS {
        return Err(Value::error(format!(
            "ERR too many keys in one request (at most {MAX_KEYS})"
        )));
    }
    let keys = keys(lock_keys)?;
    if !permits.is_empty() && permits.len() + keys.len() > 1 {
        let mut seen: std::collections::HashSet<&[u8]> =
            keys.iter().map(|k| k.as_bytes()).collect();
        for p in &permits {
            if !seen.insert(p.key.as_bytes()) {
                return Err(Value::error(format!(
                    "ERR key '{}' is named twice: a semaphore is asked for once, and is not \
                     also a lock",
                    String::from_utf8_lossy(p.key.as_bytes())
                )));
            }
        }
    }
    Ok(Ask {
        lease,
        permits,
        mode,
        timeout,
        keys,
    })
}

/// The reply to an ACQUIRE refused because a key is in use as another kind.
fn wrong_kind(key: &Key, capacity: u16, asked: u16) -> Value {
    let key = String::from_utf8_lossy(key.as_bytes());
    let is = match capacity {
        0 => "a lock".to_string(),
        c => format!("a semaphore of {c} permits"),
    };
    let not = match asked {
        0 => "a lock".to_string(),
        c => format!("a semaphore of {c}"),
    };
    Value::error(format!("WRONGTYPE key '{key}' is {is}, not {not}"))
}

/// ACQUIRE: see [`parse_acquire`].
pub(super) fn acquire(n: &mut Native, shared: &Shared, args: Args) -> Outcome {
    let Ask {
        lease,
        permits,
        mode,
        timeout,
        keys,
    } = match parse_acquire(&args) {
        Ok(x) => x,
        Err(e) => return Outcome::Reply(e),
    };
    let wait = if timeout == 0 { Wait::No } else { Wait::Queue };
    let cmd = Command::Acquire {
        session: n.session,
        conn: n.conn,
        legacy: false,
        mode,
        keys,
        wait,
        lease,
        permits,
    };
    n.run(shared, cmd, move |n, shared, applied, parked| {
        let got = match applied {
            Applied::Acquired(a) => a,
            Applied::WrongKind {
                key,
                capacity,
                asked,
            } => return Outcome::Reply(wrong_kind(&key, capacity, asked)),
            Applied::NodeDown => return Outcome::Close(node_down()),
            other => unreachable!("ACQUIRE answered {other:?}"),
        };
        match got {
            Acquired::Granted(token) => Outcome::Reply(Value::Integer(token as i64)),
            Acquired::Conflict => Outcome::Reply(Value::Null),
            Acquired::Queued(id) => {
                let Some(rx) = parked else {
                    // The wait was withdrawn before this reply came (the connection or
                    // node let go meanwhile).
                    return Outcome::Reply(Value::Null);
                };
                // Timed on this server's clock, from when the queueing was known here.
                let now = if shared.clustered {
                    shared.clock.now()
                } else {
                    n.now
                };
                Outcome::Wait(PendingWait {
                    id,
                    rx,
                    deadline: now.saturating_add(timeout),
                    since: now,
                })
            }
            Acquired::TooManyLocks => Outcome::Reply(too_many_locks(shared)),
            Acquired::Deadlock(other) => Outcome::Reply(Value::error(format!(
                "DEADLOCK waiting would close a cycle of waits with session {}",
                String::from_utf8_lossy(&other.0)
            ))),
            Acquired::DeadlockUnsearchable => Outcome::Reply(Value::error(format!(
                "DEADLOCK possible: the waits this request would join are too many to search \
                 (over {} steps); refused rather than risk a deadlock",
                lockd_core::DEADLOCK_SEARCH_BUDGET
            ))),
            Acquired::TooManyWaiters => Outcome::Reply(Value::error(
                "ERR too many waiters on these keys or in total; try again later",
            )),
            Acquired::AlreadyWaiting => {
                Outcome::Reply(Value::error("ERR this session already waits for a lock"))
            }
            Acquired::TokensExhausted => Outcome::Reply(Value::error(
                "ERR no fencing tokens reserved yet; try again",
            )),
            // Made into `Applied::WrongKind` by the table's `apply`.
            Acquired::Mismatch { capacity, .. } => Outcome::Reply(Value::error(format!(
                "WRONGTYPE a key of this request is in use as another kind ({capacity} permits)"
            ))),
            Acquired::NotBound => Outcome::Reply(Value::error(
                "NOSESSION this connection's session was let go",
            )),
        }
    })
}

/// EXTEND token [lease_ms]: the lease of the grant `token` (of this connection's session)
/// ends `lease_ms` from now, or its own length from now.
pub(super) fn extend(n: &mut Native, shared: &Shared, args: Args) -> Outcome {
    let parsed = (|| {
        let rest = args.arity(1, 2)?;
        let token = uint(rest[0], "token")?;
        let ms = rest.get(1).map(|a| lease_ms(a)).transpose()?;
        Ok::<_, Value>((token, ms))
    })();
    let (token, lease_ms) = match parsed {
        Ok(x) => x,
        Err(e) => return Outcome::Reply(e),
    };
    let cmd = Command::Extend {
        session: n.session,
        conn: n.conn,
        token,
        lease_ms,
    };
    n.run(shared, cmd, move |_, _, applied, _| match applied {
        Applied::Extended(Ok(_)) => Outcome::Reply(Value::ok()),
        Applied::Extended(Err(ExtendError::NoLease)) => Outcome::Reply(Value::error(format!(
            "NOLEASE no lease with token {token} is held by this session: it passed, or its \
             locks were released or revoked, or the grant had no lease"
        ))),
        Applied::Extended(Err(ExtendError::NotBound)) => Outcome::Reply(Value::error(
            "NOSESSION this connection's session was let go",
        )),
        Applied::NodeDown => Outcome::Close(node_down()),
        other => unreachable!("EXTEND answered {other:?}"),
    })
}

/// The reply to a command from a connection that the cluster let go (its node was
/// declared down); the connection is closed after it.
pub(super) fn node_down() -> Value {
    Value::error("CLUSTERDOWN this node was cut off from the cluster; reconnect")
}

/// The count a RELEASE or RELEASEALL outcome reports.
fn released(_: &mut Native, _: &Shared, o: Applied, _: Option<super::Parked>) -> Outcome {
    match o {
        Applied::Released(n) => Outcome::Reply(Value::Integer(i64::from(n))),
        Applied::NodeDown => Outcome::Close(node_down()),
        other => unreachable!("RELEASE answered {other:?}"),
    }
}

/// RELEASE SH|EX|PERMITS key [key ...], or RELEASE TOKEN token SH|EX|PERMITS key [key ...]:
/// only the locks that still carry that grant's token (so a stale release is a no-op).
/// PERMITS lets go of every permit the session holds of each semaphore named.
pub(super) fn release(n: &mut Native, shared: &Shared, args: Args) -> Outcome {
    match release_command(n, args) {
        Ok(cmd) => n.run(shared, cmd, released),
        Err(e) => Outcome::Reply(e),
    }
}

fn release_command(n: &Native, args: Args) -> Result<Command, Value> {
    let rest = args.arity(2, usize::MAX)?;
    let (token, rest) = if upper(rest[0]) == "TOKEN" {
        let [_, t, more @ ..] = rest else {
            unreachable!("arity checked")
        };
        if more.len() < 2 {
            return Err(args.arity(4, usize::MAX).expect_err("too few"));
        }
        (Some(uint(t, "token")?), more)
    } else {
        (None, rest)
    };
    if rest[0].eq_ignore_ascii_case(b"PERMITS") {
        return Ok(Command::ReleasePermits {
            session: n.session,
            conn: n.conn,
            keys: keys(&rest[1..])?,
            token,
        });
    }
    let mode = mode(rest[0])?;
    let keys = keys(&rest[1..])?;
    Ok(Command::Release {
        session: n.session,
        conn: n.conn,
        legacy: false,
        mode,
        keys,
        token,
    })
}

/// RELEASEALL
pub(super) fn release_all(n: &mut Native, shared: &Shared, args: Args) -> Outcome {
    if let Err(e) = args.arity(0, 0) {
        return Outcome::Reply(e);
    }
    let cmd = Command::ReleaseAll {
        session: n.session,
        conn: n.conn,
        legacy: false,
    };
    n.run(shared, cmd, released)
}

/// The answer to an ACQUIRE that would take the locks held past `--max-locks`: on arrival,
/// or when a queued one's turn came (see `lockd_core::Woken`).
pub(super) fn too_many_locks(shared: &Shared) -> Value {
    // In a cluster the table's (the cluster's setting). Never called under the table's
    // lock: renders run after it is released.
    let max = if shared.clustered {
        shared.read(|t, _| t.config().max_locks)
    } else {
        shared.config.max_locks
    };
    Value::error(format!(
        "TOOMANYLOCKS the server holds its maximum of {max} locks"
    ))
}
