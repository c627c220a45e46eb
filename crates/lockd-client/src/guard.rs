//! [`Guard`]: held locks, their fencing token, release on drop.

use std::sync::atomic::Ordering;

use crate::client::{unexpected, Client};
use crate::error::Error;
use crate::types::Mode;

/// Locks held by a [`Client`]'s session: one acquisition. Dropping the guard releases what
/// it acquired (queued on the connection at once, in order with later requests), naming
/// the grant's fencing token so that a release can never free a later grant of the same
/// lock; [`Guard::release`] does the same and reports errors. Guards of one SH lock taken
/// again by the same client are counted: the lock goes with the last of them (an EX lock,
/// or SH over EX, is refused with [`Error::HeldHere`](crate::Error::HeldHere)). After
/// [`Client::release_all`] or [`Client::release`], earlier guards are inert.
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
/// Keys to release, with the token their locks carry.
type ByToken = (u64, Vec<Vec<u8>>);

#[must_use = "dropping the guard releases the locks"]
pub struct Guard {
    client: Client,
    mode: Mode,
    keys: Vec<Vec<u8>>,
    token: u64,
    generation: u64,
    /// Per key, the life of the session's lock this guard counts on (see `client::Held`).
    epochs: Vec<u64>,
    released: bool,
    /// Where this guard learns that its locks are gone, and the task keeping its lease.
    loss: std::sync::Arc<crate::lease::LossCell>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Guard {
    pub(crate) fn new(
        client: Client,
        mode: Mode,
        keys: Vec<Vec<u8>>,
        token: u64,
        epochs: Vec<u64>,
        lease: Option<std::time::Duration>,
    ) -> Guard {
        let generation = client.inner.generation.load(Ordering::SeqCst);
        let loss = client.inner.losses.register(token);
        let keeper = lease.map(|l| {
            let inner = std::sync::Arc::downgrade(&client.inner);
            tokio::spawn(crate::lease::keep(inner, token, l, loss.clone()))
        });
        Guard {
            client,
            mode,
            keys,
            token,
            generation,
            epochs,
            released: false,
            loss,
            keeper,
        }
    }

    /// Resolves when the locks are known to be gone, with why: the lease passed (its
    /// extension was refused or did not get through in time), an operator revoked the
    /// lock or ended the session (reported at once with [`Client::subscribe`], else
    /// found by the lease's next extension), or the session was gone on reconnecting.
    /// Never resolves while the locks are held. A lost connection alone is not a loss
    /// (the session may be resumed): see [`Guard::may_be_lost`].
    pub async fn lost(&self) -> crate::Loss {
        self.loss.wait().await
    }

    /// The loss, if one is known already (see [`Guard::lost`]).
    pub fn loss(&self) -> Option<crate::Loss> {
        self.loss.get()
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
            || self.loss.get().is_some()
    }

    /// Releases the locks, reporting errors: a lost connection, or
    /// [`Error::NotHeld`] when they were let go already (`release_all`, `release`), in
    /// which case nothing is sent: a later guard's locks are never touched.
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        let lost = self.may_be_lost();
        let (free, inert) = self.unref();
        if lost {
            return Err(Error::ConnectionLost);
        }
        if inert {
            return Err(Error::NotHeld);
        }
        for (token, keys) in free {
            let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            let args = crate::client::release_args(self.mode, token, &keys);
            match self
                .client
                .conn()
                .call(&crate::client::as_args(&args))
                .await?
            {
                lockd_proto::resp::Value::Integer(_) => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    /// Drops this guard's counts on the locks it was made with: the locks no other guard
    /// counts on any more, grouped by the token the server's lock carries, and whether
    /// this guard was inert (its locks let go already, or gone with the session).
    fn unref(&self) -> (Vec<ByToken>, bool) {
        if self.client.inner.generation.load(Ordering::SeqCst) != self.generation {
            return (Vec::new(), true);
        }
        let mut held = self
            .client
            .inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut free: Vec<ByToken> = Vec::new();
        let mut inert = false;
        for (k, &epoch) in self.keys.iter().zip(&self.epochs) {
            let entry = (k.clone(), self.mode);
            match held.locks.get_mut(&entry) {
                Some(h) if h.epoch == epoch => {
                    h.count -= 1;
                    if h.count == 0 {
                        let token = h.token;
                        held.locks.remove(&entry);
                        match free.iter_mut().find(|(t, _)| *t == token) {
                            Some((_, keys)) => keys.push(k.clone()),
                            None => free.push((token, vec![k.clone()])),
                        }
                    }
                }
                // Let go already, and perhaps taken again by a later guard: not ours.
                _ => inert = true,
            }
        }
        (free, inert)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        if self.released {
            return;
        }
        let conn = self.client.conn();
        for (token, keys) in self.unref().0 {
            let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            let args = crate::client::release_args(self.mode, token, &keys);
            conn.send_only(&crate::client::as_args(&args));
        }
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
