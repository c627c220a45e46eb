//! The lockd lock table: sessions, SH/EX locks on many keys at once (all or nothing), FIFO
//! queues, fencing tokens and deadlock detection.
//!
//! [`LockTable`] is a synchronous, deterministic state machine: it does no I/O and never
//! reads a clock; every command that depends on time takes `now` (milliseconds on the
//! caller's monotonic clock). The server keeps it behind a short-held mutex and drives the
//! timers (wait timeouts, session expiry) from outside; a replicated cluster can apply the
//! same commands to a copy on every node.
//!
//! Command families live one per module: [`acquire`](LockTable::acquire) in `acquire`,
//! [`release`](LockTable::release) in `release`, sessions in `sessions`, introspection in
//! `inspect`, deadlock detection in `deadlock`, leases (EXTEND) in `lease`, operators'
//! revocation in `revoke`, and the events pushed to holders in `events`.

mod acquire;
mod command;
mod deadlock;
mod error;
mod events;
mod image;
mod inspect;
mod key;
mod lease;
mod release;
mod revoke;
mod sessions;
mod table;
mod types;

pub use acquire::{Acquired, Permits, Wait};
pub use command::{conn_node, Command, Outcome, Settings};
pub use deadlock::SEARCH_BUDGET as DEADLOCK_SEARCH_BUDGET;
pub use error::KeyError;
pub use events::{Event, EventKind, LostReason};
pub use image::{BadImage, ConnImage, KeyImage, LeaseImage, SessionImage, TableImage, WaiterImage};
pub use inspect::{HolderInfo, KeyInfo, LockInfo, PendingInfo, SessionInfo, WaiterInfo};
pub use key::{Key, MAX_KEY_LEN};
pub use lease::{ExtendError, MAX_LEASE_MS};
pub use sessions::{ResumeError, SessionState};
pub use table::{Config, Counters, Fault, LockTable, MAX_TOKEN};
pub use types::{ConnId, Millis, Mode, SessionId, WaitId, Wakeup, Woken};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_command;
#[cfg(test)]
mod tests_lease;
#[cfg(test)]
mod tests_queue;
#[cfg(test)]
mod tests_semaphore;
