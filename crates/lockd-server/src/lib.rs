//! The lockd server: a tokio listener serving the legacy LockServerDaemon protocol (and the
//! native RESP protocol) on one port, over one shared [`lockd_core::LockTable`].
//!
//! - `listener`: binding, accepting, `maxClients`, graceful shutdown.
//! - `conn`: one task per connection: buffers, output bound, protocol detection.
//! - `legacy`: the legacy line protocol's request handling.
//! - `native`: the native RESP protocol, one file per command family.
//! - `shared`: the state every connection shares: the table behind a short-held mutex.
//! - `expiry`: the timer that releases dead sessions' locks on time, also when idle.
//! - `tls`: TLS on the same listener (detected by the first byte), reloadable.
//! - `tokens`: fencing tokens that keep increasing across restarts (`--data-dir`).
//! - `clock`: the server's notion of time (real, or manual in tests).
//! - `admin`, `metrics`: the admin HTTP server: Prometheus metrics, health, JSON views, status page.
//! - `sys`: process-level details (open-files limit, resident memory).
//! - `logging`: a log writer that never fails (so logging can never panic lockd).

mod admin;
mod auth_limit;
mod backend;
mod busy_poll;
mod clock;
mod config;
mod conn;
mod expiry;
mod history;
mod legacy;
mod listener;
pub mod logging;
mod metrics;
mod native;
mod shared;
pub mod sys;
mod tls;
mod tokens;

pub use clock::{Clock, ManualClock};
pub use config::ServerConfig;
pub use listener::{admin_address, check_data_dir, check_tls, Server, ServerError, ServerHandle};
pub use lockd_core::Fault;
pub use lockd_raft::tls::PeerTlsFiles;
pub use lockd_raft::{free_port, ClusterConfig};
pub use shared::Snapshot;
pub use tls::TlsError;
pub use tokio_util::sync::CancellationToken;
