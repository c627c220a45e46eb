//! Test-only switch that turns one of the cluster's safety or liveness checks off, so that
//! the fault tests (`crates/lockd/tests/faults.rs`) can show each of them failing when
//! the check it relies on is gone: a test that passes with the check and also without it
//! would not be testing the check.
//!
//! `LOCKD_FAULT_BREAK` names the checks to switch off, separated by commas or spaces
//! (see [`Check`] for the names). It is read once; lockd refuses to start on a name it
//! does not know and warns when it is set. Never set it outside a test.

use std::sync::OnceLock;

pub const BREAK_ENV: &str = "LOCKD_FAULT_BREAK";

/// A check that [`BREAK_ENV`] can switch off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `read-index`: `INSPECT`, `LOCKS` and `STATS` wait for an entry committed after the
    /// read arrived. Off: answered from this node's table at once, so a deposed leader
    /// (paused, cut off) answers with what it held before.
    ReadIndex,
    /// `leader-time`: a new leader's clock continues from the last time applied, and it
    /// regraces every dead session. Off: its clock starts an hour ahead (a leader whose
    /// clock ran fast) and it does not regrace, so dead sessions lose their locks at once.
    LeaderTime,
    /// `node-down`: the leader declares a member silent for the detection time down, and
    /// its sessions' locks go at the end of their grace. Off: never, so a dead node's
    /// locks are held for ever.
    NodeDown,
    /// `deaf-leader`: a follower whose pings its leader leaves unanswered stops answering
    /// that leader's appends, so that an election can run. Off: a leader that hears
    /// nothing keeps the followers from electing anyone for as long as it lasts.
    DeafLeader,
    /// `durable-ack`: openraft is told an append is done only once its fdatasync returned
    /// (with the slow-disk switch, after its delay), so a reply means a majority's disks
    /// have the entry. Off: the store does not wait for the slow disk (as one that told
    /// openraft of writes still in the page cache).
    DurableAck,
    /// `forward-moves`: a batch forwarded to a leader that stops answering (paused, mute)
    /// is sent to the next leader once one is known. Off: it waits for the old one until
    /// the commit timeout, and so do the node's clients.
    ForwardMoves,
    /// `fail-stop`: a node whose Raft stopped on an error (a full disk) stops its server
    /// and exits with that error. Off: it goes on answering clients, a zombie the others
    /// see as silent.
    FailStop,
    /// `quorum-heard`: a follower stands for election, and finds its leader deaf, only
    /// while its pings reach a quorum. Off: a node cut off (or mute) runs elections no one
    /// hears, and the term it reaches deposes the working leader when it comes back.
    QuorumHeard,
    /// `refused-gone`: the leader declares down at once a member whose peer port has
    /// refused connections for the shortest election timeout (a killed process). Off: only
    /// after the detection time, counted from this leader's election, so a killed
    /// leader's sessions stay bound, and their clients wait, that much longer.
    RefusedGone,
    /// `longest-log`: with no leader, a voter that reaches one with a longer log (or the
    /// same and a lower id) leaves the election to it, and the one with the longest log
    /// stands as soon as the leader lease is out. Off: the first election timer to run
    /// out decides, and a candidate with the shorter log is refused, and raises the term
    /// the longer one must then pass: elections of several rounds.
    LongestLog,
    /// `leader-held`: a follower whose leader answers its pings stands for no election.
    /// Off: one whose heartbeats stopped for a while (openraft backs off for 500 ms from
    /// a follower that was unreachable, such as one just restarted) stands, and deposes a
    /// leader that was alive and reached it.
    LeaderHeld,
}

impl Check {
    const ALL: [(&'static str, Check); 11] = [
        ("read-index", Check::ReadIndex),
        ("leader-time", Check::LeaderTime),
        ("node-down", Check::NodeDown),
        ("deaf-leader", Check::DeafLeader),
        ("durable-ack", Check::DurableAck),
        ("forward-moves", Check::ForwardMoves),
        ("fail-stop", Check::FailStop),
        ("quorum-heard", Check::QuorumHeard),
        ("refused-gone", Check::RefusedGone),
        ("longest-log", Check::LongestLog),
        ("leader-held", Check::LeaderHeld),
    ];
}

/// The checks switched off, or a message naming what in [`BREAK_ENV`] is not a check.
pub fn parse(value: &str) -> Result<Vec<Check>, String> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| {
            Check::ALL
                .iter()
                .find(|(name, _)| *name == w)
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    let names: Vec<&str> = Check::ALL.iter().map(|(n, _)| *n).collect();
                    format!(
                        "{BREAK_ENV}: {w:?} is not a check (one of: {})",
                        names.join(", ")
                    )
                })
        })
        .collect()
}

fn switched_off() -> &'static Result<Vec<Check>, String> {
    static OFF: OnceLock<Result<Vec<Check>, String>> = OnceLock::new();
    OFF.get_or_init(|| {
        let Some(v) = std::env::var_os(BREAK_ENV) else {
            return Ok(Vec::new());
        };
        let off = parse(&v.to_string_lossy());
        if let Ok(checks) = &off {
            if !checks.is_empty() {
                tracing::warn!(
                    ?checks,
                    "{BREAK_ENV} is set: test-only, these cluster checks are switched off"
                );
            }
        }
        off
    })
}

/// Whether `check` is switched off (a test asked for it).
pub fn off(check: Check) -> bool {
    switched_off().as_ref().is_ok_and(|c| c.contains(&check))
}

/// The error to refuse to start with when [`BREAK_ENV`] names an unknown check.
pub fn validate() -> Result<(), String> {
    switched_off().clone().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_unknown_ones_refused() {
        assert_eq!(
            parse("read-index, node-down").unwrap(),
            vec![Check::ReadIndex, Check::NodeDown]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        let e = parse("read-index,fsync").unwrap_err();
        assert!(e.contains("\"fsync\" is not a check"), "{e}");
        assert!(e.contains("leader-time"), "{e}");
    }
}
