//! An async client for lockd's native protocol.
//!
//! One [`Client`] is one connection and one lockd session. Locks are taken with
//! [`Client::acquire`] (waiting up to a timeout) or [`Client::try_acquire`], and come back as
//! a [`Guard`] that carries the fencing token and releases the locks when dropped (or, with
//! errors reported, by [`Guard::release`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockd_client::Error> {
//! use std::time::Duration;
//! use lockd_client::{Client, Mode};
//!
//! let client = Client::connect("127.0.0.1:7531", "s3cret").await?;
//! let guard = client.acquire(Mode::Ex, &["invoices"], Duration::from_secs(5)).await?;
//! println!("holding invoices with fencing token {}", guard.token());
//! // ... write to the resource, passing guard.token() along ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! A blocking ACQUIRE blocks its connection (the server answers commands in order), so
//! calls on one `Client` from several tasks wait behind it; use one client per concurrent
//! locker. Tasks sharing one client never both hold a conflicting lock: one session is
//! never made to wait for itself, so the client refuses an acquisition that conflicts with
//! one of its own, held or under way, with [`Error::HeldHere`] (SH locks are shared). If the connection is lost, every [`Guard`] of the client reports
//! [`Guard::may_be_lost`]; [`Client::reconnect`] resumes the session, locks included, if
//! it is back within the session's grace period.
//!
//! The address may name several nodes of a lockd cluster, comma-separated
//! (`"10.0.0.1:7531,10.0.0.2:7531,10.0.0.3:7531"`): the client connects to the first that
//! answers, and [`Client::reconnect`] moves to the next one and resumes the session there,
//! so guards keep their locks through the loss of the node they were connected to.
//!
//! A lock may have a lease ([`Client::acquire_leased`]): the server lets it go when the
//! lease passes, and the guard extends it while it lives; [`Guard::lost`] resolves, with
//! the reason, when the lock is gone (lease passed, revoked by an operator, session ended
//! or forgotten). [`Client::subscribe`] has the server push such events as they happen.
//!
//! A semaphore's permits ([`Client::acquire_permits`]: "at most 5 workers reindex at
//! once") come back as a [`Permit`], released on drop; a client that crashes lets go of
//! them at the end of its session's grace, as of its locks.
//!
//! [`QuorumClient`] takes locks on a majority of several independent servers.

mod client;
mod conn;
mod error;
mod guard;
mod lease;
mod permit;
mod quorum;
mod tls;
mod types;

pub use client::Client;
pub use error::Error;
pub use guard::Guard;
pub use lease::{Event, Loss};
pub use permit::Permit;
pub use quorum::{QuorumClient, QuorumGuard};
pub use tls::TlsOptions;
pub use types::{Holder, KeyInfo, LockInfo, Mode, Waiter};

/// Where a `lockd` started without an auth key writes the key it generates, and where
/// `lockctl` looks for it: `$XDG_STATE_HOME/lockd/auth-key`, else
/// `~/.local/state/lockd/auth-key`, else `lockd-auth-key` in the temporary directory.
pub fn default_key_file() -> std::path::PathBuf {
    use std::path::PathBuf;
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match state {
        Some(dir) => dir.join("lockd").join("auth-key"),
        None => std::env::temp_dir().join("lockd-auth-key"),
    }
}
