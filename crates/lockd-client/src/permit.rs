//! [`Permit`]: permits of a semaphore held, released on drop.

use std::sync::Arc;
use std::time::Duration;

use lockd_proto::resp::Value;

use crate::client::{unexpected, Client};
use crate::error::Error;

/// Permits of one semaphore held by a [`Client`]'s session (see
/// [`Client::acquire_permits`]). Dropping it releases them (queued on the connection at
/// once), naming the grant's fencing token; [`Permit::release`] does the same and reports
/// errors. As with [`Guard`](crate::Guard): [`Permit::lost`] says when the permits are gone
/// (lease passed, revoked, session ended), and [`Permit::may_be_lost`] when the connection
/// was lost.
#[must_use = "dropping the permit releases it"]
pub struct Permit {
    client: Client,
    key: Vec<u8>,
    permits: u16,
    token: u64,
    generation: u64,
    released: bool,
    loss: Arc<crate::lease::LossCell>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Permit {
    pub(crate) fn new(
        client: Client,
        key: Vec<u8>,
        permits: u16,
        token: u64,
        lease: Option<Duration>,
    ) -> Permit {
        use std::sync::atomic::Ordering::SeqCst;
        let generation = client.inner.generation.load(SeqCst);
        let loss = client.inner.losses.register(token);
        let keeper = lease.map(|l| {
            let inner = Arc::downgrade(&client.inner);
            tokio::spawn(crate::lease::keep(inner, token, l, loss.clone()))
        });
        Permit {
            client,
            key,
            permits,
            token,
            generation,
            released: false,
            loss,
            keeper,
        }
    }

    /// The fencing token of this grant.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// How many permits this holds.
    pub fn permits(&self) -> u16 {
        self.permits
    }

    /// Resolves when the permits are known to be gone, with why (see [`crate::Guard::lost`]).
    pub async fn lost(&self) -> crate::Loss {
        self.loss.wait().await
    }

    /// The loss, if one is known already.
    pub fn loss(&self) -> Option<crate::Loss> {
        self.loss.get()
    }

    /// Whether the permits may no longer be held: the connection was lost and the session
    /// not resumed, or a loss is known.
    pub fn may_be_lost(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.client.inner.generation.load(SeqCst) != self.generation
            || self.client.is_connection_lost()
            || self.loss.get().is_some()
    }

    fn release_args(&self) -> Vec<Vec<u8>> {
        vec![
            b"RELEASE".to_vec(),
            b"TOKEN".to_vec(),
            self.token.to_string().into_bytes(),
            b"PERMITS".to_vec(),
            self.key.clone(),
        ]
    }

    /// Releases the permits, reporting errors (a lost connection).
    pub async fn release(mut self) -> Result<(), Error> {
        self.released = true;
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        self.client.inner.forget_permit(&self.key);
        let args = self.release_args();
        match self
            .client
            .conn()
            .call(&crate::client::as_args(&args))
            .await?
        {
            Value::Integer(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        if self.released {
            return;
        }
        self.client.inner.forget_permit(&self.key);
        let args = self.release_args();
        self.client.conn().send_only(&crate::client::as_args(&args));
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("permits", &self.permits)
            .field("token", &self.token)
            .finish()
    }
}
