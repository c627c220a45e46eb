//! lockd's cluster: the lock table replicated with Raft (openraft 0.9).
//!
//! - [`types`]: the openraft type configuration; a log entry is a [`Batch`] of table
//!   commands from one node, stamped with the leader's time (group commit: many client
//!   requests share one entry and one fsync).
//! - [`log_store`]: the Raft log, vote and snapshot in one redb file, fsynced before
//!   openraft is told an append is durable.
//! - [`state_machine`]: the lock table as the state machine: deterministic apply,
//!   deduplication of retried batches, snapshots as table images.
//! - [`network`]: peer RPCs over TCP, both ends proving they know the auth key.
//!
//! `lockd-core` stays free of I/O, and `lockd-server` of Raft details: the server hands
//! this crate commands and gets outcomes back through its [`Table`] implementation.

pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod tls;
pub mod types;

pub use node::{Cluster, ClusterConfig, ClusterError, ClusterStatus, MemberStatus};
pub use state_machine::{MemTable, StateMachine, Table};
pub use types::{Batch, NodeId, TypeConfig};
