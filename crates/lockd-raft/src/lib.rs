//! lockd's cluster: the lock table replicated with Raft (openraft 0.9).
//!
//! - [`types`]: the openraft type configuration; a log entry is a [`Batch`] of table
//!   commands from one node, stamped with the leader's time (group commit: many client
//!   requests share one entry and one fsync).
//! - [`log_store`]: the Raft store: entries in [`wal`]'s segment files (one write and one
//!   fdatasync an append, before openraft is told it is durable), vote and snapshot in a
//!   redb file.
//! - [`state_machine`]: the lock table as the state machine: deterministic apply,
//!   deduplication of retried batches, snapshots as table images.
//! - [`network`]: peer RPCs over TCP, both ends proving they know the auth key.
//! - [`breaks`]: the test-only switch that turns a check off, for the fault tests.
//!
//! `lockd-core` stays free of I/O, and `lockd-server` of Raft details: the server hands
//! this crate commands and gets outcomes back through its [`Table`] implementation.

pub mod breaks;
pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod tls;
pub mod types;
pub mod wal;

pub use node::{Cluster, ClusterConfig, ClusterError, ClusterStatus, MemberStatus};
pub use state_machine::{MemTable, StateMachine, Table};
pub use types::{Batch, NodeId, TypeConfig};

/// A port on 127.0.0.1 that is free now, for a node that will be started on it (tests,
/// lockbench's spawned clusters). Chosen below the kernel's ephemeral range: a port from
/// a `:0` bind is handed out again meanwhile, to another `:0` listener or to a client's
/// outgoing connection, which made tests that start several nodes fail now and then with
/// "address in use".
pub fn free_port() -> std::io::Result<u16> {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.max(10_001));
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = rng.gen_range(lo..hi);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
