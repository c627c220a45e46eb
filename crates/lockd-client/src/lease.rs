//! Leases kept alive, and losses reported: a leased [`Guard`](crate::Guard) has a task that
//! extends its lease (EXTEND) every third of its length; when an extension is refused, or
//! none succeeded before the lease would have passed, the guard's [`lost`] future
//! resolves with the reason, never silently. With [`Client::subscribe`](crate::Client::subscribe),
//! the server's `lost` pushes (revoked, session ended, lease passed) reach the guard of
//! that token at once, and every event is also handed to the subscriber.
//!
//! [`lost`]: crate::Guard::lost

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lockd_proto::resp::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::client::Client;
use crate::types::Mode;

/// Why a guard's locks are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loss {
    /// The lease passed: an extension was refused, or none got through in time.
    LeaseExpired(String),
    /// An operator revoked the lock (REVOKE).
    Revoked,
    /// An operator ended the session (SESSION KILL).
    SessionEnded,
    /// The server no longer knows the session (found on reconnecting).
    SessionLost,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::LeaseExpired(why) => write!(f, "the lease passed: {why}"),
            Loss::Revoked => write!(f, "an operator revoked the lock"),
            Loss::SessionEnded => write!(f, "an operator ended the session"),
            Loss::SessionLost => write!(f, "the server no longer knows the session"),
        }
    }
}

/// An event the server pushed to a subscribed client (see `EVENTS` in docs/protocol.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This session no longer holds `key` (a semaphore's permits have `mode` SH).
    Lost {
        key: Vec<u8>,
        token: u64,
        mode: Mode,
        reason: String,
    },
    /// A request for `wanted` waits behind this session's lock on `key`.
    Contended {
        key: Vec<u8>,
        token: u64,
        mode: Mode,
        wanted: Mode,
    },
    /// The server dropped this many events (the client read too slowly): any lock may
    /// have been lost meanwhile.
    Overflow(u64),
}

impl Event {
    /// Parses a push message; `None` for one lockd does not send.
    pub(crate) fn parse(items: &[Value]) -> Option<Event> {
        let text = |v: &Value| match v {
            Value::Bulk(b) => Some(b.to_vec()),
            Value::Simple(s) => Some(s.clone().into_bytes()),
            _ => None,
        };
        let int = |v: &Value| match v {
            Value::Integer(i) if *i >= 0 => Some(*i as u64),
            _ => None,
        };
        // A semaphore's permits are held as SH (docs/protocol.md, Semaphores).
        let mode = |v: &Value| match text(v)?.as_slice() {
            b"PERMITS" => Some(Mode::Sh),
            m => Mode::parse(&String::from_utf8_lossy(m)),
        };
        match (text(items.first()?)?.as_slice(), items) {
            (b"lost", [_, k, t, m, r]) => Some(Event::Lost {
                key: text(k)?,
                token: int(t)?,
                mode: mode(m)?,
                reason: String::from_utf8_lossy(&text(r)?).into_owned(),
            }),
            (b"contended", [_, k, t, m, w]) => Some(Event::Contended {
                key: text(k)?,
                token: int(t)?,
                mode: mode(m)?,
                wanted: mode(w)?,
            }),
            (b"overflow", [_, n]) => Some(Event::Overflow(int(n)?)),
            _ => None,
        }
    }
}

/// Where a guard learns that its locks are gone.
#[derive(Default)]
pub(crate) struct LossCell {
    reason: Mutex<Option<Loss>>,
    notify: Notify,
}

impl LossCell {
    /// Records the first loss; later ones do not replace it.
    pub fn set(&self, loss: Loss) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(loss);
            self.notify.notify_waiters();
        }
    }

    pub fn get(&self) -> Option<Loss> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub async fn wait(&self) -> Loss {
        loop {
            let n = self.notify.notified();
            if let Some(l) = self.get() {
                return l;
            }
            n.await;
        }
    }
}

/// The guards' loss cells by grant token, for pushes and reconnects to reach them.
#[derive(Default)]
pub(crate) struct Losses(Mutex<HashMap<u64, Weak<LossCell>>>);

impl Losses {
    pub fn register(&self, token: u64) -> Arc<LossCell> {
        let cell = Arc::new(LossCell::default());
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Cells of guards gone are pruned as new ones come, so the map stays as large as
        // the guards alive.
        m.retain(|_, w| w.strong_count() > 0);
        m.insert(token, Arc::downgrade(&cell));
        cell
    }

    pub fn lost(&self, token: u64, loss: Loss) {
        let cell = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token)
            .and_then(Weak::upgrade);
        if let Some(c) = cell {
            c.set(loss);
        }
    }

    pub fn all_lost(&self, loss: Loss) {
        let cells: Vec<Arc<LossCell>> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .filter_map(|(_, w)| w.upgrade())
            .collect();
        for c in cells {
            c.set(loss.clone());
        }
    }
}

/// What a `lost` push's reason means for a guard.
pub(crate) fn loss_of(reason: &str) -> Loss {
    match reason {
        "revoked" => Loss::Revoked,
        "session-ended" => Loss::SessionEnded,
        other => Loss::LeaseExpired(format!("the server let it go ({other})")),
    }
}

/// Keeps the lease of grant `token` alive until the guard goes (the task is aborted) or
/// it cannot: then `cell` says why. An extension is sent every third of the lease; one
/// that fails for the connection is tried again every tenth of it, until the lease would
/// have passed counting from the last extension sent that succeeded.
pub(crate) async fn keep(
    client: Weak<crate::client::Inner>,
    token: u64,
    lease: Duration,
    cell: Arc<LossCell>,
) {
    let ms = lease.as_millis().max(1).to_string();
    let tok = token.to_string();
    let mut good_until = Instant::now() + lease;
    let mut next = Instant::now() + lease / 3;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(inner) = client.upgrade() else {
            return;
        };
        let c = Client { inner };
        let sent = Instant::now();
        let left = good_until.saturating_duration_since(sent);
        let reply = tokio::time::timeout(
            left.max(Duration::from_millis(1)),
            c.conn().call(&[b"EXTEND", tok.as_bytes(), ms.as_bytes()]),
        )
        .await;
        match reply {
            Ok(Ok(Value::Simple(_))) => {
                good_until = sent + lease;
                next = sent + lease / 3;
            }
            Ok(Ok(Value::Error(e))) => {
                cell.set(Loss::LeaseExpired(format!(
                    "the server refused to extend it: {e}"
                )));
                return;
            }
            _ if Instant::now() >= good_until => {
                cell.set(Loss::LeaseExpired(
                    "no extension got through before it would have passed".into(),
                ));
                return;
            }
            _ => next = Instant::now() + lease / 10,
        }
    }
}
