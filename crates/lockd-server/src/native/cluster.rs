//! CLUSTER STATUS: the node's view of the cluster (role, leader, term, log and applied
//! index, members and their lag), as one JSON text, the same as the admin HTTP's
//! `/v1/cluster`. Redis's own CLUSTER subcommands are refused, as a Redis without cluster
//! mode refuses them, so that Redis Cluster clients do not mistake lockd for one.

use lockd_proto::resp::Value;

use super::args::{upper, Args, Reply};
use crate::shared::Shared;

pub(super) fn cluster(shared: &Shared, args: Args) -> Reply {
    let [sub] = args.arity(1, 1)? else {
        unreachable!("arity checked")
    };
    match upper(sub).as_str() {
        "STATUS" => match shared.cluster() {
            Some(c) => Ok(Value::bulk(
                serde_json::to_string(&c.status()).unwrap_or_default(),
            )),
            None => Err(Value::error("ERR this lockd is not a cluster node")),
        },
        _ => Err(Value::error(
            "ERR This instance has cluster support disabled (lockd: CLUSTER STATUS)",
        )),
    }
}
