//! Introspection: INSPECT key, LOCKS [session], STATS.

use lockd_core::{Key, Mode, SessionId};
use lockd_proto::resp::Value;

use super::args::{Args, Reply};
use super::Native;
use crate::shared::Shared;
use crate::sys;

/// A holder's, waiter's or lock's mode and, on a semaphore, its permits: mode `PERMITS`
/// and a `permits` field (a lock's entries are as they always were).
fn mode_fields(m: Mode, permits: u16) -> Vec<(&'static str, Value)> {
    let mut f = vec![("mode", Value::bulk(super::mode_name(m, permits)))];
    if permits > 0 {
        f.push(("permits", Value::Integer(i64::from(permits))));
    }
    f
}

pub(super) fn inspect(shared: &Shared, args: Args) -> Reply {
    let [key] = args.arity(1, 1)? else {
        unreachable!("arity checked")
    };
    Key::new(key).map_err(|e| Value::error(format!("ERR invalid key: {e}")))?;
    let info = shared.with(|core, now| core.table.inspect(key, now));
    let holders = info
        .holders
        .into_iter()
        .map(|h| {
            let mut f = vec![("session", Value::bulk(h.session.0))];
            f.extend(mode_fields(h.mode, h.permits));
            f.push(("token", Value::Integer(h.token as i64)));
            f.push(("held_ms", Value::Integer(h.held_ms as i64)));
            Value::map(f)
        })
        .collect();
    let waiters = info
        .waiters
        .into_iter()
        .map(|w| {
            let mut f = vec![("session", Value::bulk(w.session.0))];
            f.extend(mode_fields(w.mode, w.permits));
            f.push(("waited_ms", Value::Integer(w.waited_ms as i64)));
            Value::map(f)
        })
        .collect();
    let mut f = vec![
        ("holders", Value::Array(holders)),
        ("waiters", Value::Array(waiters)),
    ];
    if info.capacity > 0 {
        f.push(("capacity", Value::Integer(i64::from(info.capacity))));
    }
    Ok(Value::map(f))
}

pub(super) fn locks(n: &Native, shared: &Shared, args: Args) -> Reply {
    let id = match args.arity(0, 1)? {
        [] => n.session,
        [s] => match SessionId::from_bytes(s) {
            Some(id) => id,
            None => return Ok(Value::Array(Vec::new())),
        },
        _ => unreachable!("arity checked"),
    };
    let locks = shared
        .with(|core, _| core.table.locks_of(&id))
        .unwrap_or_default();
    Ok(Value::Array(
        locks
            .into_iter()
            .map(|l| {
                let mut f = vec![("key", Value::bulk(l.key.as_bytes()))];
                f.extend(mode_fields(l.mode, l.permits));
                f.push(("token", Value::Integer(l.token as i64)));
                Value::map(f)
            })
            .collect(),
    ))
}

pub(super) fn stats(shared: &Shared, args: Args) -> Reply {
    args.arity(0, 0)?;
    let s = shared.snapshot();
    let int = |v: u64| Value::Integer(v as i64);
    Ok(Value::map([
        ("uptime", int(s.uptime_ms / 1000)),
        ("connections", int(s.connections)),
        ("sessions", int(s.sessions as u64)),
        ("dead_sessions", int(s.dead_sessions as u64)),
        ("locks_held", int(s.locks_held)),
        ("waiters", int(s.waiters as u64)),
        ("grants", int(s.table.grants)),
        ("conflicts", int(s.table.conflicts)),
        ("timeouts", int(s.table.timeouts)),
        ("deadlocks", int(s.table.deadlocks)),
        ("expired_sessions", int(s.table.expired_sessions)),
        ("memory", int(sys::resident_bytes())),
        ("keys", int(s.keys as u64)),
        ("too_many_locks", int(s.table.too_many_locks)),
        ("connections_total", int(s.connections_total)),
        ("refused_clients", int(s.refused_clients)),
        ("legacy_requests", int(s.legacy_requests)),
        ("native_requests", int(s.native_requests)),
        ("bad_requests", int(s.bad_requests)),
        ("auth_failures", int(s.auth_failures)),
        ("leases", int(s.leases as u64)),
        ("leases_expired", int(s.table.leases_expired)),
        ("lease_extensions", int(s.table.lease_extensions)),
        ("revoked", int(s.table.revoked)),
        ("sessions_ended", int(s.table.sessions_ended)),
        ("events_pushed", int(s.events_queued)),
        ("events_dropped", int(s.events_dropped)),
    ]))
}
