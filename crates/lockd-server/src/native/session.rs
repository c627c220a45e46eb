//! SESSION, SESSION RESUME id, SESSION GRACE ms (capped by `--max-grace`).

use lockd_core::{Command, Outcome, ResumeError, SessionId};
use lockd_proto::resp::Value;

use super::args::{uint, upper, Args, Reply};
use super::Native;
use crate::shared::Shared;

pub(super) fn session(n: &mut Native, shared: &Shared, args: Args) -> Reply {
    let rest = args.arity(0, 2)?;
    let Some(sub) = rest.first() else {
        return Ok(Value::bulk(n.session.0));
    };
    match (upper(sub).as_str(), rest.len()) {
        ("RESUME", 2) => {
            let Some(id) = SessionId::from_bytes(rest[1]) else {
                return Err(Value::error("NOSESSION no such session (ids are 32 bytes)"));
            };
            let cmd = Command::Resume {
                conn: n.conn,
                current: n.session,
                session: id,
            };
            let resumed = match shared.with(|core, now| core.apply(&cmd, now)) {
                Outcome::Resumed(r) => r,
                Outcome::NodeDown => return Err(super::locks::node_down()),
                other => unreachable!("SESSION RESUME answered {other:?}"),
            };
            resumed.map_err(|e| match e {
                ResumeError::NoSession => {
                    Value::error("NOSESSION no such session (never existed, or expired)")
                }
                ResumeError::Busy => Value::error("BUSYSESSION the session has a live connection"),
            })?;
            n.session = id;
            shared.expiry_changed.notify_one();
            Ok(Value::ok())
        }
        ("GRACE", 2) => {
            let asked = uint(rest[1], "grace")?;
            // No client keeps its locks past what the operator allows (`--max-grace`).
            let max = u64::try_from(shared.config.max_grace.as_millis()).unwrap_or(u64::MAX);
            let ms = asked.min(max);
            let cmd = Command::SetGrace {
                session: n.session,
                grace_ms: ms,
            };
            shared.with(|core, now| core.apply(&cmd, now));
            Ok(if asked > max {
                Value::Simple(format!("OK capped at {max} ms (the server's --max-grace)"))
            } else {
                Value::ok()
            })
        }
        _ => Err(Value::error(
            "ERR unknown SESSION subcommand (SESSION, SESSION RESUME id, SESSION GRACE ms)",
        )),
    }
}
