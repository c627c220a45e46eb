//! SESSION, SESSION RESUME id, SESSION GRACE ms (capped by `--max-grace`); SESSION KILL id
//! is the operator's (`admin`).

use lockd_core::{Command, Outcome, ResumeError, SessionId};
use lockd_proto::resp::Value;

use super::args::{uint, upper, Args, Reply};
use super::{Native, Outcome as Answer};
use crate::shared::Shared;

pub(super) fn session(n: &mut Native, shared: &Shared, args: Args) -> Answer {
    if args
        .rest()
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case(b"KILL"))
    {
        return super::admin::kill(n, shared, args);
    }
    match command(n, shared, args) {
        Ok(Some((cmd, sub))) => n.run(shared, cmd, move |n, shared, o, _| {
            Answer::Reply(render(n, shared, o, sub).unwrap_or_else(|e| e))
        }),
        Ok(None) => Answer::Reply(Value::bulk(n.session.0)),
        Err(e) => Answer::Reply(e),
    }
}

/// The command a SESSION subcommand makes (none for SESSION alone).
fn command(n: &Native, shared: &Shared, args: Args) -> Result<Option<(Command, Sub)>, Value> {
    let rest = args.arity(0, 2)?;
    let Some(sub) = rest.first() else {
        return Ok(None);
    };
    match (upper(sub).as_str(), rest.len()) {
        ("RESUME", 2) => {
            let Some(id) = SessionId::from_bytes(rest[1]) else {
                return Err(Value::error("NOSESSION no such session (ids are 32 bytes)"));
            };
            Ok(Some((
                Command::Resume {
                    conn: n.conn,
                    current: n.session,
                    session: id,
                },
                Sub::Resume(id),
            )))
        }
        ("GRACE", 2) => {
            let asked = uint(rest[1], "grace")?;
            // No client keeps its locks past what the operator allows (`--max-grace`).
            let max = u64::try_from(shared.config.max_grace.as_millis()).unwrap_or(u64::MAX);
            Ok(Some((
                Command::SetGrace {
                    session: n.session,
                    grace_ms: asked.min(max),
                },
                Sub::Grace((asked > max).then_some(max)),
            )))
        }
        _ => Err(Value::error(
            "ERR unknown SESSION subcommand (SESSION, SESSION RESUME id, SESSION GRACE ms, \
             SESSION KILL id)",
        )),
    }
}

fn render(n: &mut Native, shared: &Shared, o: Outcome, sub: Sub) -> Reply {
    match (o, sub) {
        (Outcome::Resumed(resumed), Sub::Resume(id)) => {
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
        (Outcome::Done(_), Sub::Grace(capped)) => Ok(match capped {
            Some(max) => Value::Simple(format!("OK capped at {max} ms (the server's --max-grace)")),
            None => Value::ok(),
        }),
        (other, _) => unreachable!("SESSION answered {other:?}"),
    }
}

/// Which SESSION subcommand a command came from.
enum Sub {
    Resume(SessionId),
    /// The cap applied to the grace asked for, if any.
    Grace(Option<u64>),
}
