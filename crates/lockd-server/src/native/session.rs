//! SESSION, SESSION RESUME id, SESSION GRACE ms (capped by `--max-grace`).

use lockd_core::{ResumeError, SessionId};
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
            let (conn, current) = (n.conn, n.session);
            shared
                .with(|core, now| core.table.resume_session(conn, current, id, now))
                .map_err(|e| match e {
                    ResumeError::NoSession => {
                        Value::error("NOSESSION no such session (never existed, or expired)")
                    }
                    ResumeError::Busy => {
                        Value::error("BUSYSESSION the session has a live connection")
                    }
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
            let id = n.session;
            shared.with(|core, _| core.table.set_grace(id, ms));
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
