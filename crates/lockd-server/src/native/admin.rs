//! The operator's commands: REVOKE key [SESSION id] (a key's holders, or one of them, lose
//! their locks) and SESSION KILL id (a session ends at once). Allowed only to a connection
//! authenticated with the admin key (`--admin-key`; without one, the auth key carries the
//! right). Each is logged with who asked, and counted (`lockd_revoked_total`,
//! `lockd_sessions_ended_total`). The rules are the table's (`lockd_core::revoke`).

use lockd_core::{Command, Key, Outcome as Applied, SessionId};
use lockd_proto::resp::Value;

use super::args::{upper, Args};
use super::{locks, Native, Outcome};
use crate::shared::Shared;

fn require_admin(n: &Native) -> Result<(), Value> {
    if n.admin {
        Ok(())
    } else {
        Err(Value::error(
            "NOPERM this command needs the admin right: AUTH with the admin key (--admin-key)",
        ))
    }
}

fn session_id(arg: &[u8]) -> Result<SessionId, Value> {
    SessionId::from_bytes(arg)
        .ok_or_else(|| Value::error("NOSESSION no such session (ids are 32 bytes)"))
}

/// REVOKE key [SESSION id]
pub(super) fn revoke(n: &mut Native, shared: &Shared, args: Args) -> Outcome {
    let parsed = (|| {
        require_admin(n)?;
        let rest = args.arity(1, 3)?;
        let key = Key::new(rest[0]).map_err(|e| {
            Value::error(format!("ERR invalid key: {e} (keys are 1 to 1024 bytes)"))
        })?;
        let session = match rest {
            [_] => None,
            [_, s, id] if upper(s) == "SESSION" => Some(session_id(id)?),
            _ => return Err(Value::error("ERR syntax: REVOKE key [SESSION id]")),
        };
        Ok::<_, Value>((key, session))
    })();
    let (key, session) = match parsed {
        Ok(x) => x,
        Err(e) => return Outcome::Reply(e),
    };
    let peer = n.peer;
    let shown = String::from_utf8_lossy(key.as_bytes()).into_owned();
    let cmd = Command::Revoke { key, session };
    n.run(shared, cmd, move |_, _, applied, _| match applied {
        Applied::Released(count) => {
            tracing::warn!(
                key = %shown,
                session = ?session,
                released = count,
                %peer,
                "operator revoked locks (REVOKE)"
            );
            Outcome::Reply(Value::Integer(i64::from(count)))
        }
        Applied::NodeDown => Outcome::Close(locks::node_down()),
        other => unreachable!("REVOKE answered {other:?}"),
    })
}

/// SESSION KILL id
pub(super) fn kill(n: &mut Native, shared: &Shared, args: Args) -> Outcome {
    let parsed = (|| {
        require_admin(n)?;
        match args.arity(2, 2)? {
            [_, id] => session_id(id),
            _ => unreachable!("arity checked"),
        }
    })();
    let id = match parsed {
        Ok(x) => x,
        Err(e) => return Outcome::Reply(e),
    };
    let peer = n.peer;
    n.run(
        shared,
        Command::EndSession { session: id },
        move |_, shared, applied, _| match applied {
            Applied::Ended(Some(count)) => {
                tracing::warn!(
                    session = ?id,
                    released = count,
                    %peer,
                    "operator ended a session (SESSION KILL)"
                );
                shared.expiry_changed.notify_one();
                Outcome::Reply(Value::Integer(i64::from(count)))
            }
            Applied::Ended(None) => Outcome::Reply(Value::error(
                "NOSESSION no such session (never existed, or expired)",
            )),
            Applied::NodeDown => Outcome::Close(locks::node_down()),
            other => unreachable!("SESSION KILL answered {other:?}"),
        },
    )
}
