//! EVENTS ON|OFF: a RESP3 connection subscribes to events about its own session's locks,
//! pushed as RESP3 push messages (`>`), each written whole between two replies:
//!
//! - `lost key token mode reason`: the lock is no longer held; reason `revoked`,
//!   `lease-expired` or `session-ended`.
//! - `contended key token mode wanted`: a request for `wanted` waits behind the lock.
//! - `overflow count`: `count` events were dropped because the connection did not read
//!   its pushes (at most [`crate::shared::MAX_QUEUED_EVENTS`] wait): any lock may have
//!   been lost meanwhile.
//!
//! A RESP2 connection cannot subscribe, and is never sent a push.

use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use lockd_core::{Event, EventKind};
use lockd_proto::resp::Value;

use super::args::{upper, Args, Reply};
use super::Native;
use crate::shared::Shared;

/// EVENTS ON|OFF
pub(super) fn events(n: &mut Native, shared: &Shared, args: Args) -> Reply {
    let rest = args.arity(1, 1)?;
    match upper(rest[0]).as_str() {
        "ON" if n.proto < 3 => Err(Value::error(
            "ERR EVENTS needs RESP3 push messages: send HELLO 3 first",
        )),
        "ON" => {
            n.events = Some(shared.subscribe(n.conn));
            Ok(Value::ok())
        }
        "OFF" => {
            if n.events.take().is_some() {
                shared.unsubscribe(n.conn);
            }
            Ok(Value::ok())
        }
        _ => Err(Value::error("ERR syntax: EVENTS ON|OFF")),
    }
}

/// The push message for one event.
fn push(e: &Event) -> Value {
    match &e.kind {
        EventKind::Lost {
            key,
            mode,
            token,
            reason,
            permits,
        } => Value::Push(vec![
            Value::bulk("lost"),
            Value::bulk(key.as_bytes()),
            Value::Integer(*token as i64),
            Value::bulk(crate::native::mode_name(*mode, *permits)),
            Value::bulk(reason.as_str()),
        ]),
        EventKind::Contended {
            key,
            mode,
            token,
            wanted,
            permits,
        } => Value::Push(vec![
            Value::bulk("contended"),
            Value::bulk(key.as_bytes()),
            Value::Integer(*token as i64),
            Value::bulk(crate::native::mode_name(*mode, *permits)),
            Value::bulk(wanted.as_str()),
        ]),
    }
}

impl Native {
    /// Writes an event that reached this connection (`None`: the subscription ended).
    pub(crate) fn push_event(&mut self, shared: &Shared, event: Option<Event>, out: &mut BytesMut) {
        let Some(e) = event else {
            self.events = None;
            return;
        };
        if self.proto < 3 {
            // Switched back to RESP2 (HELLO 2) while subscribed: nothing is pushed.
            self.events = None;
            shared.unsubscribe(self.conn);
            return;
        }
        // Events are dropped only while the queue is full, so one is always read after a
        // drop, and the count is told with it.
        if let Some(ev) = &self.events {
            let dropped = ev.dropped.swap(0, Relaxed);
            if dropped > 0 {
                Value::Push(vec![
                    Value::bulk("overflow"),
                    Value::Integer(dropped as i64),
                ])
                .encode(self.proto, out);
            }
        }
        push(&e).encode(self.proto, out);
    }
}
