//! Three lockd servers as one cluster on loopback: both protocols on every node, a wait on
//! one node granted by a release on another, the leader killed with locks held, and a
//! session resumed on another node after its node went away.

use std::collections::BTreeMap;
use std::time::Duration;

use lockd_server::ClusterConfig;

use crate::harness::{key, session, Client, Resp, TestServer, AUTH_KEY, R};

fn free_port() -> u16 {
    lockd_server::free_port().unwrap()
}

struct Three {
    _dirs: Vec<tempfile::TempDir>,
    nodes: BTreeMap<u64, TestServer>,
}

async fn three() -> Three {
    let raft: BTreeMap<u64, String> = (1..=3)
        .map(|i| (i, format!("127.0.0.1:{}", free_port())))
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for i in 1..=3u64 {
        let mut c = ClusterConfig::new(
            i,
            &raft[&i],
            dirs[(i - 1) as usize].path().to_path_buf(),
            AUTH_KEY.as_bytes(),
        );
        c.initial = raft.clone();
        c.heartbeat_ms = 50;
        c.election_min_ms = 300;
        c.election_max_ms = 600;
        c.detect_ms = 1000;
        let s = TestServer::start_with(move |cfg| {
            cfg.cluster = Some(c);
            cfg.lock_timeout = Duration::from_secs(30);
        })
        .await;
        nodes.insert(i, s);
    }
    // Serving once joined: a native PING is answered at once, so try a change.
    for s in nodes.values() {
        let mut ok = false;
        for _ in 0..200 {
            let mut r = Resp::authed(s.addr).await;
            if matches!(r.call(&["SESSION", "GRACE", "1000"]).await, R::Simple(ref s) if s.starts_with("OK"))
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "node never served a change");
    }
    Three { _dirs: dirs, nodes }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_both_protocols_on_every_node_and_survives_its_leader() {
    let mut c = three().await;
    let addr = |c: &Three, i: u64| c.nodes[&i].addr;
    // Every node reports the cluster: the same leader, three members, one leader role.
    let mut leaders = std::collections::BTreeSet::new();
    let mut roles = Vec::new();
    for i in 1..=3 {
        let mut r = Resp::authed(addr(&c, i)).await;
        let status: serde_json::Value =
            serde_json::from_str(&r.call(&["CLUSTER", "STATUS"]).await.text()).unwrap();
        assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
        leaders.insert(status["leader"].as_u64().unwrap());
        roles.push(status["role"].as_str().unwrap().to_string());
    }
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    assert_eq!(
        roles.iter().filter(|r| *r == "leader").count(),
        1,
        "{roles:?}"
    );
    // Every node sees every member's peer protocol version (its own, and the others' from
    // their answers to its probes): this build's, 1.
    for i in 1..=3 {
        let mut r = Resp::authed(addr(&c, i)).await;
        let mut seen = Vec::new();
        for _ in 0..40 {
            let status: serde_json::Value =
                serde_json::from_str(&r.call(&["CLUSTER", "STATUS"]).await.text()).unwrap();
            seen = status["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["peer_protocol"].as_u64())
                .collect();
            if seen.iter().all(|v| *v == Some(1)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            seen,
            vec![Some(1); 3],
            "node {i}'s view of the members' versions"
        );
    }
    // Legacy: a lock taken on node 1 is held for node 2's clients too.
    let k = key(1);
    let mut l1 = Client::connect(addr(&c, 1)).await;
    let mut l2 = Client::connect(addr(&c, 2)).await;
    let (sa, sb) = (session('a'), session('b'));
    assert_eq!(l1.call(&sa, "ACQUIRE", "EX", &k).await, "ACQUIRED");
    assert_eq!(l2.call(&sb, "ACQUIRE", "SH", &k).await, "CANT_ACQUIRE");

    // Native: a wait on node 2 is granted when node 3's holder lets go.
    let mut n3 = Resp::authed(addr(&c, 3)).await;
    let t1 = n3.call(&["ACQUIRE", "EX", "0", "job"]).await.int();
    // Reads are linearizable: another node's INSPECT, right after, sees the grant.
    let mut n1r = Resp::authed(addr(&c, 1)).await;
    let seen = n1r.call(&["INSPECT", "job"]).await;
    assert_eq!(seen.get("holders").items().len(), 1, "{seen:?}");
    let mut n2 = Resp::authed(addr(&c, 2)).await;
    n2.send(&["ACQUIRE", "EX", "10000", "job"]).await;
    assert!(n2.nothing_to_read().await, "granted while held");
    assert_eq!(n3.call(&["RELEASE", "EX", "job"]).await.int(), 1);
    let t2 = n2.recv().await.int();
    assert!(t2 > t1, "tokens increase: {t1} then {t2}");

    // A closed connection's session dies in the cluster: with a grace of 300 ms its lock
    // is free soon after (the leader expires it), for a client of another node.
    let mut brief = Resp::authed(addr(&c, 2)).await;
    brief.call(&["SESSION", "GRACE", "300"]).await;
    brief.call(&["ACQUIRE", "EX", "0", "brief"]).await.int();
    drop(brief);
    let mut next = Resp::authed(addr(&c, 1)).await;
    let mut freed = false;
    for _ in 0..50 {
        if matches!(next.call(&["ACQUIRE", "EX", "0", "brief"]).await, R::Int(_)) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        freed,
        "a closed connection's lock was never let go after its grace"
    );

    // A session on node 3 that will outlive its node.
    let mut n3b = Resp::authed(addr(&c, 3)).await;
    let orphan = n3b.call(&["SESSION"]).await.text();
    n3b.call(&["SESSION", "GRACE", "30000"]).await;
    n3b.call(&["ACQUIRE", "EX", "0", "orphan"]).await.int();

    // And a legacy session on node 3.
    let sc = session('c');
    let mut l3 = Client::connect(addr(&c, 3)).await;
    assert_eq!(l3.call(&sc, "ACQUIRE", "EX", &key(2)).await, "ACQUIRED");

    // Kill node 3 (with node 1 or 2 as leader, or itself): locks stay, node 3's session is
    // resumed on node 1 after the cluster noticed.
    let gone = c.nodes.remove(&3).unwrap();
    gone.shutdown.cancel();
    let _ = gone.task.await;
    drop((n3, n3b));
    let mut n1 = Resp::authed(addr(&c, 1)).await;
    let mut resumed = false;
    for _ in 0..100 {
        let r = n1.call(&["SESSION", "RESUME", &orphan]).await;
        if r == R::Simple("OK".into()) {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "the session of the dead node was never resumed");
    let locks = n1.call(&["LOCKS"]).await;
    assert_eq!(locks.items().len(), 1, "its lock came with it");
    assert_eq!(l2.call(&sb, "ACQUIRE", "SH", &k).await, "CANT_ACQUIRE");
    let mut other = Resp::authed(addr(&c, 2)).await;
    assert_eq!(other.call(&["ACQUIRE", "EX", "0", "orphan"]).await, R::Null);
    // The legacy session's lock survived its node; its next request, on another node,
    // takes the session back with it.
    drop(l3);
    assert_eq!(l2.call(&sb, "ACQUIRE", "EX", &key(2)).await, "CANT_ACQUIRE");
    let mut l1b = Client::connect(addr(&c, 1)).await;
    assert_eq!(l1b.call(&sc, "ACQUIRE", "EX", &key(3)).await, "ACQUIRED");
    assert_eq!(l1b.call(&sc, "RELEASE", "EX", &key(2)).await, "RELEASED");
    assert_eq!(l2.call(&sb, "ACQUIRE", "EX", &key(2)).await, "ACQUIRED");
    for s in c.nodes.values() {
        s.shutdown.cancel();
    }
}

/// Issue 15 on a cluster: a lease ends the lock on the leader's time and hands it to a
/// waiter on another node; an extended lease lives on; pushes reach the holder's node;
/// REVOKE and SESSION KILL from one node act on sessions of others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_revocation_and_events_work_across_the_cluster() {
    let c = three().await;
    let addr = |i: u64| c.nodes[&i].addr;
    let mut holder = Resp::connect(addr(1)).await;
    holder
        .call(&["HELLO", "3", "AUTH", "default", AUTH_KEY])
        .await;
    assert_eq!(holder.call(&["EVENTS", "ON"]).await, R::Simple("OK".into()));
    let t = holder
        .call(&["ACQUIRE", "LEASE", "400", "EX", "0", "lk"])
        .await
        .int();
    let mut waiter = Resp::authed(addr(2)).await;
    waiter.send(&["ACQUIRE", "EX", "10000", "lk"]).await;
    let told = holder.recv().await;
    assert_eq!(told.items()[0].text(), "contended", "{told:?}");
    assert_eq!(told.items()[2].int(), t);
    // Not extended: gone within the lease and the leader's 100 ms expiry check.
    let started = std::time::Instant::now();
    let lost = holder.recv().await;
    assert_eq!(
        (lost.items()[0].text(), lost.items()[4].text()),
        ("lost".to_string(), "lease-expired".to_string())
    );
    let t2 = waiter.recv().await.int();
    assert!(t2 > t);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Extended from node 3, four times its length: still held, seen from node 1.
    let mut ext = Resp::authed(addr(3)).await;
    let te = ext
        .call(&["ACQUIRE", "LEASE", "500", "SH", "0", "ek"])
        .await
        .int()
        .to_string();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ext.call(&["EXTEND", &te]).await, R::Simple("OK".into()));
    }
    let mut reader = Resp::authed(addr(1)).await;
    let seen = reader.call(&["INSPECT", "ek"]).await;
    assert_eq!(seen.get("holders").items().len(), 1, "{seen:?}");
    // Revoked from node 2: the lease's next extension is refused.
    let mut admin = Resp::authed(addr(2)).await;
    assert_eq!(admin.call(&["REVOKE", "ek"]).await.int(), 1);
    assert!(ext
        .call(&["EXTEND", &te])
        .await
        .err()
        .starts_with("NOLEASE"));
    // A session waiting on node 3, ended from node 1: its wait is answered.
    let id = ext.call(&["SESSION"]).await.text();
    ext.send(&["ACQUIRE", "EX", "10000", "lk"]).await;
    let mut queued = false;
    for _ in 0..100 {
        let seen = reader.call(&["INSPECT", "lk"]).await;
        if seen.get("waiters").items().len() == 1 {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(queued, "the wait never showed");
    let mut killer = Resp::authed(addr(1)).await;
    assert_eq!(killer.call(&["SESSION", "KILL", &id]).await.int(), 0);
    assert_eq!(
        ext.recv().await.err(),
        "REVOKED an operator ended this session while it waited (SESSION KILL)"
    );
    // A semaphore of two permits across three nodes: the third request waits on node 3
    // until a permit is let go on node 1; a request of the wrong capacity is refused.
    let mut p1 = Resp::authed(addr(1)).await;
    let mut p2 = Resp::authed(addr(2)).await;
    let mut p3 = Resp::authed(addr(3)).await;
    let first = p1
        .call(&["ACQUIRE", "PERMITS", "pool", "1", "2", "0"])
        .await
        .int();
    p2.call(&["ACQUIRE", "PERMITS", "pool", "1", "2", "0"])
        .await
        .int();
    assert!(p3
        .call(&["ACQUIRE", "PERMITS", "pool", "1", "3", "0"])
        .await
        .err()
        .starts_with("WRONGTYPE"));
    p3.send(&["ACQUIRE", "PERMITS", "pool", "1", "2", "10000"])
        .await;
    assert!(p3.nothing_to_read().await, "granted past the capacity");
    assert_eq!(p1.call(&["RELEASE", "PERMITS", "pool"]).await.int(), 1);
    assert!(p3.recv().await.int() > first);
}

/// The applied index in a node's `CLUSTER DIGEST`, asked on `r`.
async fn applied(r: &mut Resp) -> u64 {
    match r.call(&["CLUSTER", "DIGEST"]).await {
        R::Bulk(b) => {
            let text = String::from_utf8(b).unwrap();
            text.strip_prefix("applied=")
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{text}"))
        }
        other => panic!("{other:?}"),
    }
}

/// A connection that never sent the table a command (a probe: PING, CLUSTER STATUS) costs
/// the log nothing when it closes; one that took a lock has its `Disconnect` committed (its
/// session dies, and its lock is let go at the end of its grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_connections_that_used_the_table_commit_a_disconnect() {
    let t = three().await;
    let addr = t.nodes[&1].addr;
    let mut watch = Resp::authed(addr).await;
    // Quiet first: the start-up connections' disconnects and their sessions' expiry.
    let mut last = applied(&mut watch).await;
    let mut still = 0;
    while still < 20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = applied(&mut watch).await;
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    for _ in 0..5 {
        let mut probe = Resp::authed(addr).await;
        probe.call(&["PING"]).await;
        probe.call(&["CLUSTER", "STATUS"]).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(applied(&mut watch).await, last, "probes added log entries");

    let mut user = Resp::authed(addr).await;
    user.call(&["SESSION", "GRACE", "0"]).await;
    assert!(matches!(
        user.call(&["ACQUIRE", "EX", "0", "probe"]).await,
        R::Int(_)
    ));
    drop(user);
    let mut other = Resp::authed(addr).await;
    let mut got = R::Null;
    for _ in 0..100 {
        got = other.call(&["ACQUIRE", "EX", "0", "probe"]).await;
        if matches!(got, R::Int(_)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(got, R::Int(_)),
        "the closed connection's lock was never let go: {got:?}"
    );
}
