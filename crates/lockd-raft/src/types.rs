//! The openraft type configuration and what a log entry carries.

use std::io::Cursor;

use lockd_core::{Command, Millis, Outcome};
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// One log entry's payload: commands from one node, applied in order at one time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The node whose clients sent the commands; it answers them from its own apply.
    pub origin: NodeId,
    /// Increases by one with each batch `origin` sends; a batch whose `seq` is not above
    /// the last applied from `origin` is a retry and is not applied again.
    pub seq: u64,
    /// The leader's time when it proposed the entry (the table clamps it monotonic).
    pub now: Millis,
    pub cmds: Vec<Command>,
}

/// What applying one entry gave: an outcome per command, or `None` for a batch skipped
/// as a retry (its outcomes were given when it was first applied).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Option<Vec<Outcome>>);

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {}#{} at {} ms, {} commands",
            self.origin,
            self.seq,
            self.now,
            self.cmds.len()
        )
    }
}

openraft::declare_raft_types!(
    /// lockd's Raft types: entries carry [`Batch`]es, responses are [`Applied`].
    pub TypeConfig:
        D = Batch,
        R = Applied,
);
