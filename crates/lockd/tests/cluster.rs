//! Three `lockd` processes as one cluster (issue 13): the flags are checked, a lock taken
//! on one node holds on the others, `kill -9` of a node loses no acknowledged lock and a
//! node restarted from its data directory rejoins with fencing tokens still increasing.

mod common;

use std::process::Stdio;

use common::*;

const KEY: &str = "cluster-operator-key";

fn node(i: u64, raft: &[String; 3], dir: &std::path::Path) -> Running {
    node_with(i, raft, dir, &[])
}

fn node_with(i: u64, raft: &[String; 3], dir: &std::path::Path, extra: &[&str]) -> Running {
    let initial = format!("1={},2={},3={}", raft[0], raft[1], raft[2]);
    Running::start(
        lockd()
            .args(["--auth-key", KEY, "--node-id", &i.to_string()])
            .args(extra)
            .args(["--raft-address", &raft[(i - 1) as usize]])
            .args(["--data-dir", dir.to_str().unwrap()])
            .args(["--initial-cluster", &initial])
            .stdout(Stdio::null()),
    )
}

#[test]
fn the_cluster_flags_are_checked() {
    let node = [
        "--node-id",
        "1",
        "--raft-address",
        "127.0.0.1:1",
        "--data-dir",
        "/tmp/x",
    ];
    let with = |more: &[&'static str]| [&node[..], more].concat();
    let timeout = |t: &'static str| with(&["--election-timeout", t]);
    for (args, says) in [
        (&["--node-id", "1"][..], "--raft-address"),
        (&["--raft-address", "127.0.0.1:1"][..], "--node-id"),
        (
            &["--tls-ca", "/tmp/ca.pem"][..],
            "--tls-ca is the CA of the cluster",
        ),
        (
            &["--node-id", "0", "--raft-address", "127.0.0.1:1"][..],
            "1 to 65535",
        ),
        (
            &with(&["--initial-cluster", "1=127.0.0.1:9,2=127.0.0.1:2"])[..],
            "must list this node as 1=127.0.0.1:1 (it lists 127.0.0.1:9)",
        ),
        (
            &["--node-id", "1", "--raft-address", "127.0.0.1:1"][..],
            "--data-dir",
        ),
        (&["--election-timeout", "200-400"][..], "need --node-id"),
        (
            &timeout("400-200")[..],
            "--election-timeout \"400-200\": give MIN-MAX in milliseconds",
        ),
        (&timeout("50")[..], "100 <= MIN < MAX <= 60000"),
        (&timeout("50-100")[..], "100 <= MIN < MAX <= 60000"),
    ] {
        let out = lockd()
            .args(["--auth-key", KEY])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn three_processes_keep_their_locks_through_kill_9_and_restart() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let raft: [String; 3] = std::array::from_fn(|_| format!("127.0.0.1:{}", free_port()));
    // Node 1's directory was a standalone lockd's, whose tokens reached far past the clock.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let standalone = now_us + 1_000_000_000_000;
    std::fs::write(
        dirs[0].path().join("token-limit"),
        format!("{standalone}\n"),
    )
    .unwrap();
    let mut nodes: Vec<Running> = (1..=3)
        .map(|i| node(i, &raft, dirs[i as usize - 1].path()))
        .collect();
    let on = |n: &Running| Native::connect(n.port, KEY);
    let mut a = on(&nodes[1]);
    let t1 = eventually(
        || a.call(&["ACQUIRE", "EX", "0", "deploy"]),
        |r| r.starts_with(':'),
    );
    let t1: u64 = t1
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("{t1}"));
    assert!(
        t1 > standalone,
        "token {t1} not above the standalone run's {standalone}"
    );
    let mut b = on(&nodes[2]);
    assert_eq!(
        b.call(&["ACQUIRE", "EX", "0", "deploy"]),
        "$-1",
        "held across nodes"
    );

    // kill -9 the first node (it initialized the cluster; most often the leader).
    signal(&nodes[0].child, libc::SIGKILL);
    nodes[0].wait();
    let got = eventually(
        || b.call(&["ACQUIRE", "EX", "0", "other"]),
        |r| r.starts_with(':'),
    );
    let t2: u64 = got
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("{got}"));
    assert!(t2 > t1, "tokens increase across the loss: {t1} then {t2}");
    assert_eq!(
        b.call(&["ACQUIRE", "EX", "0", "deploy"]),
        "$-1",
        "the lock was lost with the node"
    );

    // Back from its data directory: it serves, sees the locks, and tokens go on rising.
    nodes[0] = node(1, &raft, dirs[0].path());
    let mut c = on(&nodes[0]);
    let got = eventually(
        || c.call(&["ACQUIRE", "EX", "0", "third"]),
        |r| r.starts_with(':'),
    );
    let t3: u64 = got
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("{got}"));
    assert!(t3 > t2, "{t2} then {t3}");
    assert_eq!(c.call(&["ACQUIRE", "EX", "0", "deploy"]), "$-1");
    for n in &nodes {
        signal(&n.child, libc::SIGTERM);
    }
    for mut n in nodes {
        let (status, log) = n.wait();
        assert!(status.success(), "{status}: {log}");
    }
}

/// One configuration: the table's settings are the cluster's (those of the node that made
/// it); a node whose flags disagree says so and applies the cluster's, never its own.
#[test]
fn a_node_with_other_settings_applies_the_clusters_and_says_so() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let raft: [String; 3] = std::array::from_fn(|_| format!("127.0.0.1:{}", free_port()));
    let mut nodes = vec![
        node_with(1, &raft, dirs[0].path(), &["--max-locks", "2"]),
        node(2, &raft, dirs[1].path()),
        // Its own timing, which is a node's (not the table's): taken, and shown.
        node_with(3, &raft, dirs[2].path(), &["--election-timeout", "300-900"]),
    ];
    let mut c = Native::connect(nodes[2].port, KEY);
    let first = eventually(
        || c.call(&["ACQUIRE", "EX", "0", "a"]),
        |r| r.starts_with(':'),
    );
    assert!(first.starts_with(':'), "{first}");
    assert!(c.call(&["ACQUIRE", "EX", "0", "b"]).starts_with(':'));
    let third = c.call(&["ACQUIRE", "EX", "0", "c"]);
    assert!(
        third.starts_with("-TOOMANYLOCKS") && third.contains("maximum of 2"),
        "node 3 applied its own --max-locks: {third}"
    );
    assert!(c.call(&["CLUSTER", "STATUS"]).starts_with('$'));
    let mut status = String::new();
    std::io::BufRead::read_line(&mut c.r, &mut status).unwrap();
    assert!(
        status.contains(r#""election_timeout_ms":[300,900],"heartbeat_ms":150"#),
        "{status}"
    );
    for n in &nodes {
        signal(&n.child, libc::SIGTERM);
    }
    let logs: Vec<String> = nodes.iter_mut().map(|n| n.wait().1).collect();
    assert!(
        logs[2].contains("--max-locks is 10000 on this node but 2 in the cluster"),
        "node 3 did not say so: {}",
        logs[2]
    );
}
