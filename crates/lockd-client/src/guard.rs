//! [`Guard`]: held locks, their fencing token, release on drop.

use std::sync::atomic::Ordering;

use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::types::Mode;

/// Locks held by a [`Client`]'s session. Dropping the guard releases them (the release is
/// queued on the connection at once, in order with later requests); [`Guard::release`]
/// does the same and reports errors.
///
/// ```no_run
/// # async fn demo(client: lockd_client::Client) -> Result<(), lockd_client::Error> {
/// use std::time::Duration;
/// use lockd_client::Mode;
///
/// let guard = client.acquire(Mode::Sh, &["report/2026", "report/2027"], Duration::from_secs(2)).await?;
/// let token = guard.token();
/// // ... read both reports, presenting `token` to a storage that checks fencing tokens ...
/// if guard.may_be_lost() {
///     // The connection dropped: another session may hold the locks by now.
/// }
/// drop(guard); // released
/// # let _ = token; Ok(()) }
/// ```
#[must_use = "dropping the guard releases the locks"]
pub struct Guard {
    client: Client,
    mode: Mode,
    keys: Vec<Vec<u8>>,
    token: u64,
    generation: u64,
    released: bool,
}

impl Guard {
    pub(crate) fn new(client: Client, mode: Mode, keys: Vec<Vec<u8>>, token: u64) -> Guard {
        let generation = client.inner.generation.load(Ordering::SeqCst);
        Guard {
            client,
            mode,
            keys,
            token,
            generation,
            released: false,
        }
    }

    /// The fencing token of this grant: greater than every token the server issued
    /// before. Pass it to the resource the lock protects.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Whether these locks may no longer be held: the connection they were taken on was
    /// lost and the session has not been resumed since (or could not be). Check it before
    /// acting on the protected resource; the fencing token protects against the rest.
    pub fn may_be_lost(&self) -> bool {
        self.client.inner.generation.load(Ordering::SeqCst) != self.generation
            || self.client.is_connection_lost()
    }

    /// Releases the locks, reporting errors (a lost connection among them).
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        let lost = self.may_be_lost();
        let keys = self.unref();
        if lost {
            return Err(Error::ConnectionLost);
        }
        if keys.is_empty() {
            return Ok(());
        }
        let mut args: Vec<&[u8]> = vec![b"RELEASE", self.mode.as_str().as_bytes()];
        args.extend(keys.iter().map(|k| k.as_slice()));
        match self.client.conn().call(&args).await? {
            lockd_proto::resp::Value::Integer(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Drops this guard's references; returns the keys no other guard holds.
    fn unref(&self) -> Vec<Vec<u8>> {
        if self.client.inner.generation.load(Ordering::SeqCst) != self.generation {
            return Vec::new();
        }
        let mut held = self
            .client
            .inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for k in &self.keys {
            let entry = (k.clone(), self.mode);
            if let Some(n) = held.get_mut(&entry) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&entry);
                    out.push(k.clone());
                }
            }
        }
        out
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let keys = self.unref();
        if keys.is_empty() {
            return;
        }
        let mut args: Vec<&[u8]> = vec![b"RELEASE", self.mode.as_str().as_bytes()];
        args.extend(keys.iter().map(|k| k.as_slice()));
        self.client.conn().send_only(&args);
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("mode", &self.mode)
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k))
                    .collect::<Vec<_>>(),
            )
            .field("token", &self.token)
            .finish()
    }
}
