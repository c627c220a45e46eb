//! Connection commands: PING, HELLO, AUTH, CLIENT, SELECT.

use bytes::Bytes;
use lockd_proto::resp::Value;
use subtle::ConstantTimeEq;

use super::args::{upper, Args, Reply};
use super::Native;
use crate::shared::Shared;

pub(super) fn ping(args: Args) -> Reply {
    match args.arity(0, 1)? {
        [] => Ok(Value::Simple("PONG".into())),
        [msg] => Ok(Value::bulk(msg)),
        _ => unreachable!("arity checked"),
    }
}

/// AUTH [username] password. lockd has one user; any username is accepted with the key.
pub(super) fn auth(n: &mut Native, shared: &Shared, args: Args) -> Reply {
    let password = match args.arity(1, 2)? {
        [p] | [_, p] => p,
        _ => unreachable!("arity checked"),
    };
    check_password(n, shared, password)?;
    Ok(Value::ok())
}

/// A right password is always accepted. A wrong one is counted; from an address past the
/// failure limit it also closes the connection, so guessing costs a connection per try
/// while every correct client on that address goes on being served.
/// The admin key (`--admin-key`) authenticates too, with the admin right; without an
/// admin key, the auth key carries that right.
fn check_password(n: &mut Native, shared: &Shared, password: &[u8]) -> Result<(), Value> {
    let client = bool::from(shared.config.auth_key.as_bytes().ct_eq(password));
    let admin = bool::from(shared.config.admin_key().as_bytes().ct_eq(password));
    if client || admin {
        n.authed = true;
        n.admin = admin;
        Ok(())
    } else {
        if shared.auth_failed(n.peer, "native") {
            n.close_after_reply = true;
        }
        Err(Value::error(
            "WRONGPASS invalid username-password pair or user is disabled.",
        ))
    }
}

/// HELLO [protover [AUTH username password] [SETNAME name]]
pub(super) fn hello(n: &mut Native, shared: &Shared, args: Args) -> Reply {
    let rest = args.rest();
    let mut proto = n.proto;
    let mut i = 0;
    if let Some(v) = rest.first() {
        proto = match &v[..] {
            b"2" => 2,
            b"3" => 3,
            _ => return Err(Value::error("NOPROTO unsupported protocol version")),
        };
        i = 1;
    }
    let mut name = None;
    while i < rest.len() {
        match upper(rest[i]).as_str() {
            "AUTH" if i + 2 < rest.len() => {
                check_password(n, shared, rest[i + 2])?;
                i += 3;
            }
            "SETNAME" if i + 1 < rest.len() => {
                name = Some(Bytes::copy_from_slice(rest[i + 1]));
                i += 2;
            }
            _ => return Err(Value::error("ERR syntax error in HELLO")),
        }
    }
    // HELLO is answered before authentication (native.md exempts it from NOAUTH); the
    // connection stays unauthenticated until AUTH, or HELLO ... AUTH, succeeds.
    n.proto = proto;
    if name.is_some() {
        n.name = name;
    }
    Ok(Value::map([
        ("server", Value::bulk("lockd")),
        ("version", Value::bulk(env!("CARGO_PKG_VERSION"))),
        ("proto", Value::Integer(proto as i64)),
        ("id", Value::Integer(n.conn.0 as i64)),
        (
            "mode",
            Value::bulk(if shared.clustered {
                "cluster"
            } else {
                "standalone"
            }),
        ),
        // In a cluster, as Redis says of a replica: this node is not the leader.
        (
            "role",
            Value::bulk(match shared.cluster() {
                Some(c) if !c.is_leader() => "replica",
                _ => "master",
            }),
        ),
        ("modules", Value::Array(Vec::new())),
    ]))
}

/// CLIENT SETNAME | GETNAME | ID | SETINFO: what Redis client libraries send on connect.
pub(super) fn client(n: &mut Native, args: Args) -> Reply {
    let rest = args.arity(1, 3)?;
    match (upper(rest[0]).as_str(), rest.len()) {
        ("SETNAME", 2) => {
            n.name = Some(Bytes::copy_from_slice(rest[1]));
            Ok(Value::ok())
        }
        ("GETNAME", 1) => Ok(n.name.clone().map_or(Value::Null, Value::Bulk)),
        ("ID", 1) => Ok(Value::Integer(n.conn.0 as i64)),
        ("SETINFO", 3) => Ok(Value::ok()),
        _ => Err(Value::error("ERR unknown or malformed CLIENT subcommand")),
    }
}

/// SELECT 0 (clients configured with a database number send it); lockd has one table.
pub(super) fn select(args: Args) -> Reply {
    match args.arity(1, 1)? {
        [db] if &db[..] == b"0" => Ok(Value::ok()),
        _ => Err(Value::error("ERR DB index is out of range")),
    }
}
