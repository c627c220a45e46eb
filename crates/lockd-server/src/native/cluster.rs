//! CLUSTER: the node's view of the cluster and changes of its members.
//!
//! - `CLUSTER STATUS`: role, leader, term, log and applied index, members and their lag,
//!   as one JSON text, the same as the admin HTTP's `/v1/cluster`.
//! - `CLUSTER DIGEST`: `applied=N digest=X`, a CRC-32 of the table's image as applied up
//!   to log index N: nodes at the same index must have the same digest (the fault harness
//!   compares them at the end of a run). It copies the whole image under the table's
//!   lock: an operator's or a test's command, not one for every request.
//! - `CLUSTER ADD id raft_address`: adds a node (a learner until it has caught up, then a
//!   voter); `CLUSTER REMOVE id`: removes one. Both answer with what was done, or `-ERR`
//!   with why not (an id used before, a quorum that would be lost, a learner that did not
//!   catch up), or `-CLUSTERDOWN` without a leader. They take as long as the change does
//!   (up to a minute for a new node to catch up).
//!
//! Redis's own CLUSTER subcommands are refused, as a Redis without cluster mode refuses
//! them, so that Redis Cluster clients do not mistake lockd for one.

use std::sync::{Arc, Mutex};

use lockd_proto::resp::Value;
use lockd_raft::network::MemberChange;
use lockd_raft::ClusterError;

use super::args::{uint, upper, Args};
use super::{no_quorum, Commit, Outcome};
use crate::shared::Shared;

pub(super) fn cluster(shared: &Shared, args: Args) -> Outcome {
    let sub = match args.rest().first() {
        Some(s) => upper(s),
        None => {
            return Outcome::Reply(Value::error(
                "ERR wrong number of arguments for 'cluster' command",
            ))
        }
    };
    let reply = match sub.as_str() {
        "STATUS" => args.arity(1, 1).and_then(|_| match shared.cluster() {
            Some(c) => Ok(Value::bulk(
                serde_json::to_string(&c.status()).unwrap_or_default(),
            )),
            None => Err(not_clustered()),
        }),
        "DIGEST" => args.arity(1, 1).and_then(|_| match shared.cluster() {
            Some(c) => {
                let (applied, digest) = c.digest();
                Ok(Value::bulk(format!("applied={applied} digest={digest:08x}")))
            }
            None => Err(not_clustered()),
        }),
        "ADD" => match args.arity(3, 3) {
            Ok(a) => match uint(a[1], "node id") {
                Ok(id) => {
                    let addr = String::from_utf8_lossy(a[2]).into_owned();
                    return change(shared, MemberChange::Add { id, addr });
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        "REMOVE" => match args.arity(2, 2) {
            Ok(a) => match uint(a[1], "node id") {
                Ok(id) => return change(shared, MemberChange::Remove { id }),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        _ => Err(Value::error(
            "ERR This instance has cluster support disabled (lockd: CLUSTER STATUS|DIGEST|ADD|REMOVE)",
        )),
    };
    Outcome::Reply(reply.unwrap_or_else(|e| e))
}

fn not_clustered() -> Value {
    Value::error("ERR this lockd is not a cluster node")
}

/// Runs a membership change as the connection's one request in flight (nothing behind it
/// is answered before it, as for a committing command). The change's answer is a text,
/// not table outcomes: it is passed beside the commit's result.
fn change(shared: &Shared, change: MemberChange) -> Outcome {
    let Some(node) = shared.cluster() else {
        return Outcome::Reply(not_clustered());
    };
    tracing::info!(?change, "membership change asked for by a client");
    let said: Arc<Mutex<Option<Result<String, ClusterError>>>> = Arc::default();
    let slot = said.clone();
    Outcome::Commit(Commit {
        fut: Box::pin(async move {
            let r = node.change_members(change).await;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            Ok(Vec::new())
        }),
        then: Box::new(move |_, _, _| {
            let r = said.lock().unwrap_or_else(|p| p.into_inner()).take();
            Outcome::Reply(match r {
                Some(Ok(done)) => Value::bulk(done),
                Some(Err(ClusterError::Refused(why))) => Value::error(format!("ERR {why}")),
                Some(Err(e)) => no_quorum(&e),
                None => no_quorum(&ClusterError::Shutdown),
            })
        }),
    })
}
