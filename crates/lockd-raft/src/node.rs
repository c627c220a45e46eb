//! One cluster node: its Raft instance, the peer listener, and the proposer that turns
//! client commands into log entries.
//!
//! **Group commit.** [`Cluster::submit`] queues commands; one proposer task per node takes
//! everything queued as one [`Batch`] (one entry, one fsync on each node), and has one
//! batch in flight at a time: the next one collects while it commits. On the leader a
//! batch is proposed directly; on a follower it is forwarded to the leader, which stamps
//! it with its time and proposes it. A batch is retried under the same number until it is
//! committed or its deadline passes; the state machine applies a number once.
//!
//! **Answers are committed facts.** `submit` returns only when the batch is committed and
//! applied by this node's own table, so that what the client is told and what this node
//! shows agree.
//!
//! **Time.** The leader's clock continues from the last time the table applied when it
//! was elected, so a leader change never moves time forward by a jump of clock skew; the
//! new leader then proposes `Regrace`, giving every dead session its full grace again.
//!
//! **Liveness.** Every node pings the other members; the leader proposes `NodeDown` for a
//! member not heard from for the detection time, or whose peer port has refused
//! connections for the shortest election timeout (no process there). A voter whose pings
//! reach no quorum stands for no election until they do (a pre-vote of sorts): a node cut
//! off, or mute, would otherwise raise its term in elections no one hears and depose the
//! working leader when it is heard again. The pings are probes (peer protocol version 1):
//! each answer carries the peer's last log id and whether it may stand, and with no leader
//! a voter leaves the election to a reachable one that would win it (the longer log, or
//! the same and a lower id), while that one stands as soon as the leader lease is out
//! (see [`whose_turn`]): one election round instead of a refused candidate that raised the
//! term for the other. A node that finds itself down (it was cut off)
//! calls its `on_cut_off` hook (the server closes its clients' connections) and proposes
//! `NodeUp`. At start a node proposes `NodeDown` and `NodeUp` for itself, which ends what
//! its previous run left bound.
//!
//! **Membership.** [`Cluster::change_members`] adds a node as a learner, waits for it to
//! catch up, then makes it a voter; or removes one, refusing what would leave the voters
//! without a quorum of live members. The state machine records every id that was ever a
//! member, so an id is never given to a second machine, and a node whose id left the
//! committed membership (or that a peer tells so) serves no more: it closes its clients'
//! connections and answers every command with [`ClusterError::Removed`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockd_core::{Command, Millis, Outcome};
use openraft::{BasicNode, Raft, ServerState};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::log_store::{self, LogStore};
use crate::network::{
    accept_login, read_frame, write_frame, ForwardError, MemberChange, Network, PeerClient,
    PeerReply, PeerRequest, Probe, MAX_FRAME,
};
use crate::state_machine::{Members, StateMachine, Table};
use crate::types::{Applied, Batch, NodeId, TypeConfig};

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// 1 to 65535 (connection ids carry it in 16 bits).
    pub node_id: NodeId,
    /// Where the peer listener binds (and what the other nodes dial).
    pub raft_addr: String,
    /// The first members, used only when the data directory is new.
    pub initial: BTreeMap<NodeId, String>,
    pub key: Vec<u8>,
    pub data_dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// A member not heard from for this long is declared down.
    pub detect_ms: u64,
    /// A snapshot every this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (a node further behind is sent the
    /// snapshot).
    pub keep_log: u64,
    /// A batch not committed within this time is answered `NoQuorum`.
    pub commit_timeout: Duration,
    /// Where the cluster's tokens start, if this node makes the cluster (see
    /// `lockd_core::Command::Bootstrap`).
    pub token_floor: u64,
    /// The table's settings, if this node makes the cluster: they become the cluster's.
    pub settings: lockd_core::Settings,
    /// Mutual TLS on the Raft port (see `tls`); `None`: plain TCP (the auth-key login
    /// still authenticates peers).
    pub tls: Option<crate::tls::PeerTlsFiles>,
}

impl ClusterConfig {
    pub fn new(node_id: NodeId, raft_addr: &str, data_dir: PathBuf, key: &[u8]) -> ClusterConfig {
        ClusterConfig {
            node_id,
            raft_addr: raft_addr.to_string(),
            initial: BTreeMap::new(),
            key: key.to_vec(),
            data_dir,
            // A follower that has heard from its leader stands for election only after the
            // leader lease (openraft 0.9: election_max, fixed) plus a random election
            // timeout, so a leader killed costs election_max + [min, max] + a vote round:
            // 600-800 ms here. Client-seen over 20 kills under load (BENCHMARKS.md): p50
            // 0.8 s, at most 0.9-1.3 s; 250-500 ms gave 1.0 s and 1.6-2.4 s, 400-800 ms 1.5 s
            // and 3.2-3.7 s (the outliers: a candidate with the shorter log refused, then a
            // split vote, each costing another timeout). Heartbeats
            // every 100 ms: a follower stands after 600 ms without one. The heartbeat is also
            // openraft's time limit for an append (a follower's write and fsync): 50 ms
            // was too short for debug builds under load. A spurious election costs a moment
            // of availability, never safety.
            heartbeat_ms: 100,
            election_min_ms: 200,
            election_max_ms: 400,
            detect_ms: 3000,
            snapshot_every: 10_000,
            // A node back from a restart or a partition catches up from the log, not by
            // snapshot, if it is fewer entries behind: 20,000 is about 30 s of the fault
            // soak's load (700 entries/s), and costs the log's index 24 bytes each. Sending
            // snapshots is also where openraft 0.9.25 can stop a deposed leader's Raft on a
            // race (a snapshot sent to a replication stream that just ended), seen once in
            // a soak; that node then stops (see `failed`).
            keep_log: 20_000,
            commit_timeout: Duration::from_secs(5),
            token_floor: 0,
            settings: lockd_core::Settings::of(&lockd_core::Config::default()),
            tls: None,
        }
    }
}

/// A node's view of the cluster, for `/v1/cluster`, `lockctl cluster status` and metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterStatus {
    pub node: NodeId,
    /// `leader`, `follower`, `candidate`, `learner`, or `removed` (this node left the
    /// cluster and serves nothing).
    pub role: &'static str,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// On the leader: milliseconds since a majority last acknowledged it.
    pub quorum_ack_ms: Option<u64>,
    /// This node's `--election-timeout` (min, max) and heartbeat, in milliseconds.
    pub election_timeout_ms: [u64; 2],
    pub heartbeat_ms: u64,
    pub members: Vec<MemberStatus>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub raft_address: String,
    /// A voter (counted in the quorum), or a learner (catching up, not counted).
    pub voter: bool,
    /// Known to the leader only: the last log index replicated to the member.
    pub matched_index: Option<u64>,
    /// Known to the leader only: how many entries the member is behind.
    pub lag: Option<u64>,
    /// Declared down by the cluster (its sessions were let go).
    pub down: bool,
    /// The peer protocol version the member answered this node's last ping in (this
    /// node's own for itself; `None`: not heard from since this node started). In a
    /// rolling upgrade, which members run a build that knows the newer messages.
    pub peer_protocol: Option<u32>,
}

/// What can go wrong for a submitted batch or at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("node id {0} is out of range (1 to 65535)")]
    BadNodeId(NodeId),
    #[error("cannot open the data directory {path}: {source}")]
    Data {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("Raft port TLS: {0}")]
    Tls(String),
    #[error("the node is shutting down")]
    Shutdown,
    /// A membership change that was refused, with why.
    #[error("{0}")]
    Refused(String),
    #[error(
        "this node was removed from the cluster and serves no clients (to bring the machine \
         back, give it a new node id and an empty data directory, and add it)"
    )]
    Removed,
}

type Reply = oneshot::Sender<Result<Vec<Outcome>, ClusterError>>;

/// A running node.
pub struct Cluster<T: Table> {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    table: Arc<T>,
    config: ClusterConfig,
    queue: Mutex<Vec<(Vec<Command>, Reply)>>,
    queued: Notify,
    /// While leader: when it became leader and the table's time then.
    leader_clock: Mutex<Option<(u64, Instant, Millis)>>,
    /// While leader: when each member was last heard from.
    seen: Mutex<HashMap<NodeId, Instant>>,
    /// Since when this node has known no leader (or, as leader, no quorum).
    leaderless_since: Mutex<Option<Instant>>,
    on_cut_off: Box<dyn Fn() + Send + Sync>,
    /// This node made the cluster (at this start): it proposes `Bootstrap`.
    made_it: bool,
    tls: Option<crate::tls::PeerTls>,
    stop: tokio_util_stop::Stop,
    /// The store, to see it closed at shutdown.
    db: std::sync::Weak<redb::Database>,
    /// The committed membership, from the state machine.
    members: Members,
    /// Set when a peer said this node was removed (the committed membership may not
    /// have reached it).
    removed: Arc<AtomicBool>,
    /// Whether the removal was acted on (clients cut off, logged).
    removal_handled: AtomicBool,
    /// As a follower: since when the leader has not answered this node's pings (`None`:
    /// it answers). See [`Cluster::deaf_leader`].
    leader_silent_since: Mutex<Option<(NodeId, Instant)>>,
    /// When each other member last answered this node's ping: whether this node can
    /// reach a quorum. See [`Cluster::hears_quorum`].
    heard: Mutex<HashMap<NodeId, Instant>>,
    /// Since when each other member's peer port has refused every ping: no process
    /// listens there (killed, or restarting). See [`Cluster::gone`].
    refused: Mutex<HashMap<NodeId, Instant>>,
    /// What each other member last answered a probe (`None`: a node of peer protocol
    /// version 0, which answers pings only). See [`whose_turn`].
    probes: Mutex<HashMap<NodeId, Option<Probe>>>,
    /// This node's last log id, from its log store.
    last_log: log_store::LastLog,
    /// When this node last took an append (a heartbeat is one) from a leader.
    appended: Mutex<Option<Instant>>,
}

/// How long `lockctl cluster add` waits for a new learner to catch up.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A tiny stop signal (the crate does not need all of tokio-util).
mod tokio_util_stop {
    #[derive(Default)]
    pub struct Stop {
        flag: std::sync::atomic::AtomicBool,
        notify: tokio::sync::Notify,
    }
    impl Stop {
        pub fn stop(&self) {
            self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
            self.notify.notify_waiters();
        }
        pub fn stopped(&self) -> bool {
            self.flag.load(std::sync::atomic::Ordering::SeqCst)
        }
        pub async fn wait(&self) {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.stopped() {
                n.await;
            }
        }
    }
}

impl<T: Table> Cluster<T> {
    /// Opens the node's data, starts Raft, the peer listener and the node's tasks. A new
    /// data directory with `initial` members is initialized by the lowest of them.
    pub async fn start(
        config: ClusterConfig,
        table: Arc<T>,
        on_cut_off: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Arc<Cluster<T>>, ClusterError> {
        if config.node_id == 0 || config.node_id > u64::from(u16::MAX) {
            return Err(ClusterError::BadNodeId(config.node_id));
        }
        crate::breaks::validate().map_err(ClusterError::Raft)?;
        let data = |source| ClusterError::Data {
            path: config.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(data)?;
        let db = log_store::open(&config.data_dir.join("raft.redb"))
            .map_err(|e| data(std::io::Error::other(e.to_string())))?;
        let sm = StateMachine::open(db.clone(), table.clone()).map_err(data)?;
        let members = sm.members();
        let removed = Arc::new(AtomicBool::new(false));
        let weak_db = Arc::downgrade(&db);
        let listener = TcpListener::bind(&config.raft_addr)
            .await
            .map_err(|source| ClusterError::Listen {
                addr: config.raft_addr.clone(),
                source,
            })?;
        let raft_config = openraft::Config {
            cluster_name: "lockd".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_min_ms,
            election_timeout_max: config.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_log,
            purge_batch_size: (config.snapshot_every / 4).clamp(1, 256),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let tls = match &config.tls {
            Some(f) => Some(crate::tls::PeerTls::load(f).map_err(ClusterError::Tls)?),
            None => None,
        };
        let network = Network {
            key: Arc::new(config.key.clone()),
            me: config.node_id,
            tls: tls.clone(),
            removed: removed.clone(),
        };
        let store = LogStore::new(db, &config.data_dir.join("raft-log")).map_err(data)?;
        let last_log = store.last_log();
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, store, sm)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let fresh = !raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let made_it = fresh && config.initial.keys().next() == Some(&config.node_id);
        if made_it {
            let members: BTreeMap<NodeId, BasicNode> = config
                .initial
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            raft.initialize(members)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        let node = Arc::new(Cluster {
            id: config.node_id,
            raft,
            table,
            config,
            queue: Mutex::new(Vec::new()),
            queued: Notify::new(),
            leader_clock: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
            leaderless_since: Mutex::new(Some(Instant::now())),
            on_cut_off,
            made_it,
            tls,
            stop: Default::default(),
            db: weak_db,
            members,
            removed,
            removal_handled: AtomicBool::new(false),
            leader_silent_since: Mutex::new(None),
            heard: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            last_log,
            appended: Mutex::new(None),
        });
        tokio::spawn(node.clone().serve_peers(listener));
        tokio::spawn(node.clone().propose_loop());
        tokio::spawn(node.clone().watch_leadership());
        tokio::spawn(node.clone().liveness());
        Ok(node)
    }

    /// Ends what this node's previous run left bound, once a leader is there, and waits
    /// until the cluster is bootstrapped (by the node that made it): to be awaited before
    /// serving clients, so that no token is issued below the cluster's floor.
    pub async fn join(&self) -> Result<(), ClusterError> {
        let me = self.id as u16;
        // A new node that is not in the cluster yet waits to be added, however long (one
        // of the initial members only until the cluster's first entry is applied: it is
        // told nothing unless that takes long).
        let mut told = if self.config.initial.contains_key(&self.id) {
            Instant::now()
        } else {
            Instant::now() - Duration::from_secs(60)
        };
        while !self.members.is_member(self.id) {
            if self.is_removed() {
                return Err(ClusterError::Removed);
            }
            if self.stop.stopped() {
                return Err(ClusterError::Shutdown);
            }
            if told.elapsed() >= Duration::from_secs(15) {
                tracing::info!(
                    "node {} is not a member yet: waiting to be added (lockctl cluster add {} {})",
                    self.id,
                    self.id,
                    self.config.raft_addr
                );
                told = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut cmds = Vec::new();
        if self.made_it {
            cmds.push(Command::Bootstrap {
                floor: self.config.token_floor,
                settings: self.config.settings,
            });
        }
        cmds.extend([Command::NodeDown { node: me }, Command::NodeUp { node: me }]);
        loop {
            match self.submit(cmds.clone()).await {
                Ok(_) => break,
                Err(ClusterError::NoQuorum(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(e),
            }
        }
        while !self.table.bootstrapped() {
            if Instant::now() > deadline || self.stop.stopped() {
                return Err(ClusterError::NoQuorum(
                    "the cluster was never bootstrapped by its first node".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Commits `cmds` (with other nodes' and clients' commands in the same entry) and
    /// returns their outcomes once this node's table applied them.
    pub async fn submit(&self, cmds: Vec<Command>) -> Result<Vec<Outcome>, ClusterError> {
        if self.stop.stopped() {
            return Err(ClusterError::Shutdown);
        }
        if self.is_removed() {
            return Err(ClusterError::Removed);
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((cmds, tx));
        self.queued.notify_one();
        rx.await.unwrap_or(Err(ClusterError::Shutdown))
    }

    /// The node's view of the cluster now.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let down = self.table.down_nodes();
        let last = m.last_log_index.unwrap_or(0);
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let probes = self.probes_lock().clone();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.as_ref().map_or(0, |l| l.index));
                MemberStatus {
                    id: *id,
                    raft_address: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.map(|x| last.saturating_sub(x)),
                    down: down.contains(&(*id as u16)),
                    peer_protocol: if *id == self.id {
                        Some(crate::network::PEER_VERSION)
                    } else {
                        // A probe's answer came from version 1 or later; a pong from 0.
                        probes.get(id).map(|p| if p.is_some() { 1 } else { 0 })
                    },
                }
            })
            .collect();
        ClusterStatus {
            node: self.id,
            role: match m.state {
                _ if self.is_removed() => "removed",
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                _ => "learner",
            },
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: last,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            quorum_ack_ms: m.millis_since_quorum_ack,
            election_timeout_ms: [self.config.election_min_ms, self.config.election_max_ms],
            heartbeat_ms: self.config.heartbeat_ms,
            members,
        }
    }

    /// The log index this node's table has applied, and a CRC-32 of the table's image
    /// there (its postcard bytes: the image is laid out the same on every replica).
    /// Replicas at the same index have the same digest, or they diverged. The index is
    /// read again until it did not move while the image was taken; an apply under way
    /// may still put the image one batch ahead of it, so compare nodes when no entries
    /// are coming (the fault harness retries until they agree, and fails if they never
    /// do).
    pub fn digest(&self) -> (u64, u32) {
        let applied = || {
            self.raft
                .metrics()
                .borrow()
                .last_applied
                .map_or(0, |l| l.index)
        };
        loop {
            let before = applied();
            let image = postcard::to_stdvec(&self.table.image()).unwrap_or_default();
            if applied() == before {
                return (before, crc32fast::hash(&image));
            }
        }
    }

    /// Resolves, with the reason, when Raft stopped on its own rather than by
    /// [`shutdown`](Self::shutdown): a storage error (a full or failing disk) or a fault
    /// openraft treats as fatal. From then on the node takes part in nothing, yet its
    /// process would go on answering clients and holding their sessions on a node the
    /// others see as silent; its server must stop instead, so that the service manager
    /// starts it again from its data directory.
    pub async fn failed(&self) -> String {
        if crate::breaks::off(crate::breaks::Check::FailStop) {
            std::future::pending::<()>().await;
        }
        let mut m = self.raft.metrics();
        loop {
            let why = match &m.borrow_and_update().running_state {
                Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
                Err(e) => Some(e.to_string()),
            };
            match why {
                Some(why) if !self.stop.stopped() => return why,
                _ => {}
            }
            // The sender is dropped when the core's task ends, a panic included.
            if m.changed().await.is_err() {
                if self.stop.stopped() {
                    std::future::pending::<()>().await;
                }
                return "the Raft core ended".to_string();
            }
        }
    }

    /// Whether this node was removed from the cluster (by the committed membership, or as
    /// a peer told it).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst) || self.members.is_removed(self.id)
    }

    /// Once, when this node finds itself removed: says so and ends its clients'
    /// connections (their sessions are let go by the cluster, which declares the node
    /// down; clients resume on another node).
    fn handle_removal(&self) {
        if self.is_removed() && !self.removal_handled.swap(true, Ordering::SeqCst) {
            tracing::error!(
                node = self.id,
                "this node was removed from the cluster: it serves no clients from now on"
            );
            (self.on_cut_off)();
        }
    }

    /// Makes a membership change (on the leader; a follower forwards it there) and says
    /// what it did, or why it was refused.
    pub async fn change_members(&self, change: MemberChange) -> Result<String, ClusterError> {
        let deadline = Instant::now() + CATCH_UP + Duration::from_secs(30);
        loop {
            if self.is_removed() {
                return Err(ClusterError::Removed);
            }
            match self.raft.current_leader().await {
                Some(l) if l == self.id => return self.lead_change(change).await,
                Some(l) if self.addr_of(l).is_some() => {
                    let addr = self.addr_of(l).unwrap_or_default();
                    let mut c = PeerClient::new(
                        l,
                        addr,
                        Arc::new(self.config.key.clone()),
                        self.id,
                        self.tls.clone(),
                    );
                    let left = deadline.saturating_duration_since(Instant::now());
                    return match c.call(&PeerRequest::Member(change), left).await {
                        Ok(PeerReply::Member(r)) => r.map_err(ClusterError::Refused),
                        Ok(PeerReply::Removed) => Err(ClusterError::Removed),
                        Ok(_) => Err(ClusterError::NoQuorum("odd reply from the leader".into())),
                        Err(e) => Err(ClusterError::NoQuorum(format!(
                            "cannot reach leader {l}: {e}"
                        ))),
                    };
                }
                // No leader, or one just removed (the next is being elected).
                _ if Instant::now() < deadline && !self.stop.stopped() => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => return Err(ClusterError::NoQuorum("no leader".into())),
            }
        }
    }

    /// The leader's part of [`Cluster::change_members`].
    async fn lead_change(&self, change: MemberChange) -> Result<String, ClusterError> {
        use openraft::ChangeMembers;
        let refuse = |s: String| Err(ClusterError::Refused(s));
        let raft_err =
            |e: openraft::error::RaftError<NodeId, _>| ClusterError::Refused(e.to_string());
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let quorum = |n: usize| n / 2 + 1;
        match change {
            MemberChange::Add { id, addr } => {
                if id == 0 || id > u64::from(u16::MAX) {
                    return refuse(format!("node id {id} is out of range (1 to 65535)"));
                }
                match membership.get_node(&id) {
                    Some(n) if voters.contains(&id) => {
                        return refuse(format!("node {id} is already a voter (at {})", n.addr));
                    }
                    Some(n) if n.addr != addr => {
                        return refuse(format!(
                            "node {id} is a learner at {}, not {addr}: remove it first",
                            n.addr
                        ));
                    }
                    Some(_) => {} // a learner that did not catch up before: try again
                    None => {
                        if self.members.was_used(id) {
                            return refuse(format!(
                                "node id {id} was a member before and was removed; ids are never \
                                 reused: start the new machine with a new --node-id"
                            ));
                        }
                        if let Some((other, _)) = membership.nodes().find(|(_, n)| n.addr == addr) {
                            return refuse(format!("{addr} is the Raft address of node {other}"));
                        }
                        self.raft
                            .add_learner(id, BasicNode::new(&addr), false)
                            .await
                            .map_err(raft_err)?;
                    }
                }
                let target = self.raft.metrics().borrow().last_log_index;
                let caught = self
                    .raft
                    .wait(Some(CATCH_UP))
                    .metrics(
                        |m| {
                            let matched = m
                                .replication
                                .as_ref()
                                .and_then(|r| r.get(&id))
                                .and_then(|l| l.as_ref().map(|l| l.index));
                            matched >= target
                        },
                        "the new learner caught up",
                    )
                    .await;
                if caught.is_err() {
                    return refuse(format!(
                        "node {id} is a learner now, but did not catch up within {} s: is lockd \
                         running at {addr} with --node-id {id} and the cluster's auth key? It stays \
                         a learner (not counted in the quorum): run the add again once it runs, or \
                         remove it",
                        CATCH_UP.as_secs()
                    ));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map_err(raft_err)?;
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, Instant::now());
                let n = voters.len() + 1;
                tracing::info!(node = id, %addr, voters = n, "member added");
                Ok(format!(
                    "node {id} ({addr}) is a voter: {n} voters, a quorum is {}",
                    quorum(n)
                ))
            }
            MemberChange::Remove { id } => {
                if membership.get_node(&id).is_none() {
                    return refuse(format!("node {id} is not a member"));
                }
                if !voters.contains(&id) {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                        .await
                        .map_err(raft_err)?;
                    tracing::info!(node = id, "learner removed");
                    return Ok(format!("learner {id} removed"));
                }
                let rest: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
                if rest.is_empty() {
                    return refuse(format!("node {id} is the only voter: a cluster needs one"));
                }
                // Up: this node, and members heard from within the detection time that
                // the cluster has not declared down.
                let detect = Duration::from_millis(self.config.detect_ms);
                let down = self.table.down_nodes();
                let up = {
                    let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                    rest.iter()
                        .filter(|v| {
                            **v == self.id
                                || (!down.contains(&(**v as u16))
                                    && seen.get(v).is_some_and(|at| at.elapsed() < detect))
                        })
                        .count()
                };
                if up < quorum(rest.len()) {
                    return refuse(format!(
                        "removing node {id} would leave {} voters of which {up} are up, and a \
                         quorum of them is {}: bring a member back (or add one) first",
                        rest.len(),
                        quorum(rest.len())
                    ));
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                    .await
                    .map_err(raft_err)?;
                tracing::info!(node = id, voters = rest.len(), "member removed");
                Ok(format!(
                    "node {id} removed: {} voters, a quorum is {}",
                    rest.len(),
                    quorum(rest.len())
                ))
            }
        }
    }

    /// Resolves once this node knows a leader other than `l`.
    async fn leader_moved_from(&self, l: NodeId) {
        let mut m = self.raft.metrics();
        loop {
            let now = m.borrow_and_update().current_leader;
            if now.is_some_and(|x| x != l) {
                return;
            }
            if m.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The members (voters and learners) of the newest membership this node knows.
    fn member_ids(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Stops the node's tasks and Raft, and waits (up to 5 s) for the store to be closed,
    /// so that the data directory can be opened again at once.
    pub async fn shutdown(&self) {
        self.stop.stop();
        self.queued.notify_one();
        let _ = self.raft.shutdown().await;
        for _ in 0..500 {
            if self.db.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!("the Raft store is still open 5 s after shutdown");
    }

    /// While this node leads: the time it stamps on entries (the table's time scale).
    pub fn leader_time(&self) -> Option<Millis> {
        self.leader_now()
    }

    /// The time a leader stamps on an entry.
    fn leader_now(&self) -> Option<Millis> {
        let c = self.leader_clock.lock().unwrap_or_else(|p| p.into_inner());
        c.map(|(_, at, base)| base + at.elapsed().as_millis() as Millis)
    }

    /// Proposes a batch as leader: its log index and outcomes.
    async fn propose(&self, mut batch: Batch) -> Result<(u64, Applied), ForwardError> {
        let Some(now) = self.leader_now() else {
            return Err(ForwardError::NotLeader(self.raft.current_leader().await));
        };
        batch.now = now;
        match self.raft.client_write(batch).await {
            Ok(r) => Ok((r.log_id.index, r.data)),
            Err(e) => match e.forward_to_leader::<BasicNode>() {
                Some(f) => Err(ForwardError::NotLeader(f.leader_id)),
                None => Err(ForwardError::NoQuorum(e.to_string())),
            },
        }
    }

    fn addr_of(&self, node: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&node).map(|n| n.addr.clone())
    }

    async fn propose_loop(self: Arc<Self>) {
        let mut seq = 0u64;
        let mut peers: HashMap<NodeId, PeerClient> = HashMap::new();
        // Each run numbers its batches above every earlier run's: its start time.
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        loop {
            let waiting = self.queued.notified();
            let work: Vec<(Vec<Command>, Reply)> =
                std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
            if work.is_empty() {
                if self.stop.stopped() {
                    return;
                }
                waiting.await;
                continue;
            }
            seq += 1;
            let mut cmds = Vec::new();
            let mut lens = Vec::with_capacity(work.len());
            for (c, _) in &work {
                lens.push(c.len());
                cmds.extend(c.iter().cloned());
            }
            let batch = Batch {
                origin: self.id,
                seq: base + seq,
                now: 0,
                cmds,
            };
            let result = self.commit(batch, &mut peers).await;
            let mut outcomes = match result {
                Ok(o) => Ok(o.into_iter()),
                Err(e) => Err(e.to_string()),
            };
            for ((_, reply), n) in work.into_iter().zip(lens) {
                let r = match &mut outcomes {
                    Ok(it) => Ok(it.by_ref().take(n).collect()),
                    Err(e) => Err(ClusterError::NoQuorum(e.clone())),
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Whether this node has had no leader (as leader: no quorum) for longer than a
    /// failover takes (four times the longest election timeout: a follower stands after
    /// the leader lease and an election timeout, each up to that long, and a vote may
    /// split once): then a command is answered
    /// "no quorum" at once instead of after the commit timeout.
    fn long_without_quorum(&self) -> bool {
        let failover = Duration::from_millis(4 * self.config.election_max_ms);
        let m = self.raft.metrics().borrow().clone();
        let mut since = self
            .leaderless_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let ack = m.millis_since_quorum_ack;
        let has_quorum = match m.state {
            ServerState::Leader => ack.is_some_and(|ms| ms < failover.as_millis() as u64),
            // A follower that reaches no quorum cannot have its commands committed
            // (and, since it stands for no election then, keeps the leader it had).
            _ => m.current_leader.is_some() && self.hears_quorum(None),
        };
        if has_quorum {
            *since = None;
            return false;
        }
        since.get_or_insert_with(Instant::now).elapsed() > failover
    }

    /// Commits one batch, retrying under its number until the deadline; waits for this
    /// node to apply it.
    async fn commit(
        &self,
        batch: Batch,
        peers: &mut HashMap<NodeId, PeerClient>,
    ) -> Result<Vec<Outcome>, ForwardError> {
        if self.long_without_quorum() {
            return Err(ForwardError::NoQuorum(
                "this node has had no leader with a quorum for longer than a failover takes".into(),
            ));
        }
        let deadline = Instant::now() + self.config.commit_timeout;
        let mut last = ForwardError::NoQuorum("no leader".into());
        while Instant::now() < deadline && !self.stop.stopped() {
            let leader = self.raft.current_leader().await;
            let got = match leader {
                // Bounded as a forward is: a leader that lost its quorum (its followers
                // dead, cut off, or not acknowledging) would otherwise hold this node's one
                // batch in flight, and every client behind it, until the quorum is back.
                // The batch may still commit later: applied once, as a retried one is.
                Some(l) if l == self.id => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.propose(batch.clone())).await {
                        Ok(r) => r,
                        Err(_) => Err(ForwardError::NoQuorum(
                            "not committed within the commit timeout (no quorum)".into(),
                        )),
                    }
                }
                Some(l) => match self.addr_of(l) {
                    Some(addr) => {
                        let c = peers.entry(l).or_insert_with(|| {
                            PeerClient::new(
                                l,
                                addr,
                                Arc::new(self.config.key.clone()),
                                self.id,
                                self.tls.clone(),
                            )
                        });
                        let left = deadline.saturating_duration_since(Instant::now());
                        // A leader that stopped answering (paused, or cut off with its
                        // connections kept open) must not hold this node's one batch in
                        // flight until the deadline: once another leader is known, the
                        // call is dropped (with its connection, now mid-request) and the
                        // batch goes there under the same number (applied once).
                        let req = PeerRequest::Forward(batch.clone());
                        let r = tokio::select! {
                            r = c.call(&req, left) => Some(r),
                            _ = self.leader_moved_from(l),
                                if !crate::breaks::off(crate::breaks::Check::ForwardMoves) => None,
                        };
                        match r {
                            Some(Ok(PeerReply::Forward(r))) => r,
                            Some(Ok(_)) => Err(ForwardError::NoQuorum("odd reply".into())),
                            Some(Err(e)) => Err(ForwardError::NoQuorum(e.to_string())),
                            None => {
                                peers.remove(&l);
                                Err(ForwardError::NotLeader(None))
                            }
                        }
                    }
                    None => Err(ForwardError::NotLeader(None)),
                },
                None => Err(ForwardError::NotLeader(None)),
            };
            match got {
                Ok((index, Applied(Some(outcomes)))) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let applied = self
                        .raft
                        .wait(Some(left.max(Duration::from_secs(1))))
                        .applied_index_at_least(Some(index), "applied here")
                        .await;
                    return match applied {
                        Ok(_) => Ok(outcomes),
                        Err(e) => Err(ForwardError::NoQuorum(e.to_string())),
                    };
                }
                Ok((_, Applied(None))) => {
                    return Err(ForwardError::NoQuorum("superseded batch".into()))
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }

    /// Sets the leader clock when this node becomes leader, and proposes `Regrace`.
    async fn watch_leadership(self: Arc<Self>) {
        let mut m = self.raft.metrics();
        loop {
            let (state, term) = {
                let x = m.borrow_and_update();
                (x.state, x.current_term)
            };
            if state == ServerState::Leader {
                let newly = {
                    let mut c = self.leader_clock.lock().unwrap_or_else(|p| p.into_inner());
                    if c.is_none_or(|(t, _, _)| t != term) {
                        let mut base = self.table.last_now();
                        if crate::breaks::off(crate::breaks::Check::LeaderTime) {
                            base += 3_600_000;
                        }
                        *c = Some((term, Instant::now(), base));
                        true
                    } else {
                        false
                    }
                };
                if newly {
                    let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let start = first_seen(
                        &self.member_ids(),
                        &heard,
                        Instant::now(),
                        Duration::from_millis(self.config.detect_ms / 2),
                    );
                    *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = start;
                    let me = self.clone();
                    if !crate::breaks::off(crate::breaks::Check::LeaderTime) {
                        tokio::spawn(async move {
                            let _ = me.submit(vec![Command::Regrace]).await;
                        });
                    }
                }
            } else {
                *self.leader_clock.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            // Keeps the leaderless clock running between commands.
            self.long_without_quorum();
            tokio::select! {
                r = m.changed() => if r.is_err() { return },
                _ = self.stop.wait() => return,
            }
        }
    }

    /// Pings every other member (the leader's answers say whether it is deaf, the others'
    /// whether this node may stand for election); as leader, declares silent members down;
    /// as a member declared down, ends its clients' connections and comes back up.
    async fn liveness(self: Arc<Self>) {
        // Often enough to find a leader that no longer answers within an election timeout.
        let every = Duration::from_millis(
            (self.config.detect_ms / 4)
                .min(self.config.election_min_ms / 2)
                .max(50),
        );
        let detect = Duration::from_millis(self.config.detect_ms);
        let mut peers: HashMap<NodeId, PeerClient> = HashMap::new();
        // openraft starts with elections allowed.
        let mut electing = true;
        let mut reaching = true;
        // Since when this node has had no leader that answers its pings, whom it leaves
        // the election to, and whether it stood at once in this stretch (see `whose_turn`).
        let mut lost: Option<Instant> = None;
        let mut deferring: Option<NodeId> = None;
        let mut stood = false;
        let started = Instant::now();
        // How long a node leaves the election to another before it may stand itself (a
        // failover's time, as in `long_without_quorum`): the other may have failed.
        let patience = Duration::from_millis(4 * self.config.election_max_ms);
        // Every other node's leader lease (election_max) has run out this long after the
        // leader fell silent, and an election timer would be running out: a vote asked
        // for now is not refused for the lease.
        let lease_out =
            Duration::from_millis(self.config.election_max_ms + self.config.election_min_ms);
        let me = self.id as u16;
        // Whether a liveness command is committing (see `submit_aside`).
        let aside = Arc::new(AtomicBool::new(false));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.stop.wait() => return,
            }
            if self.is_removed() {
                self.handle_removal();
                continue;
            }
            if self.table.down_nodes().contains(&me) {
                (self.on_cut_off)();
                self.submit_aside(vec![Command::NodeUp { node: me }], &aside);
            }
            let leader = self.raft.current_leader().await;
            if leader.is_none_or(|l| l == self.id) {
                // Only this node's pings to its current leader say whether that leader
                // is deaf; with no leader (a candidate) every leader's appends are taken,
                // or a node that once found its leader deaf would ignore it forever.
                *self
                    .leader_silent_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            if leader == Some(self.id) {
                // Members added since this node became leader are watched from now;
                // removed ones are not, and their sessions are let go (as for a node
                // that went silent), once.
                let members = self.member_ids();
                {
                    let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                    seen.retain(|id, _| members.contains(id));
                    for id in &members {
                        seen.entry(*id).or_insert_with(Instant::now);
                    }
                }
                let down = self.table.down_nodes();
                let gone: Vec<Command> = self
                    .members
                    .removed()
                    .into_iter()
                    .filter(|id| !down.contains(&(*id as u16)))
                    .map(|id| Command::NodeDown { node: id as u16 })
                    .collect();
                if !gone.is_empty() {
                    tracing::info!(?gone, "removed members: their sessions are let go");
                    self.submit_aside(gone, &aside);
                }
                let silent: Vec<NodeId> = {
                    let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                    seen.iter()
                        .filter(|(id, at)| {
                            **id != self.id && (at.elapsed() > detect || self.gone(**id))
                        })
                        .map(|(id, _)| *id)
                        .collect()
                };
                let down = self.table.down_nodes();
                let cmds: Vec<Command> = silent
                    .into_iter()
                    .filter(|id| !down.contains(&(*id as u16)))
                    .map(|id| Command::NodeDown { node: id as u16 })
                    .collect();
                if !cmds.is_empty() && !crate::breaks::off(crate::breaks::Check::NodeDown) {
                    tracing::warn!(
                        ?cmds,
                        "members silent past the detection time, or whose peer port refuses \
                         connections: declared down"
                    );
                    self.submit_aside(cmds, &aside);
                }
            }
            let answers = self.ping_members(&mut peers, every).await;
            if let Some(l) = leader.filter(|l| *l != self.id) {
                if let Some(answered) = answers.get(&l) {
                    let mut silent = self
                        .leader_silent_since
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    *silent = match (*answered, *silent) {
                        (true, _) => None,
                        (false, Some((id, at))) if id == l => Some((id, at)),
                        (false, _) => Some((l, Instant::now())),
                    };
                }
            }
            // A node that cannot reach a quorum stands for no election: its votes would
            // go unheard, and the term it reached would depose the working leader when
            // it is heard again (a pre-vote, which openraft 0.9 does not have).
            let quorum = self.hears_quorum(None);
            if quorum != reaching {
                reaching = quorum;
                if quorum {
                    tracing::info!("this node reaches a quorum again: it may stand for election");
                } else {
                    tracing::warn!(
                        "this node reaches no quorum: it stands for no election until it does"
                    );
                }
            }
            let leaderless = match leader {
                Some(l) if l == self.id => false,
                Some(l) => !answers.get(&l).copied().unwrap_or(false),
                None => true,
            };
            if !leaderless {
                (lost, stood) = (None, false);
            } else if lost.is_none() {
                lost = Some(Instant::now());
            }
            let turn = match lost {
                Some(since) if !crate::breaks::off(crate::breaks::Check::LongestLog) => {
                    // Not the leader that went silent: it answered within the window, but
                    // not now.
                    let peers = self.reachable_voters(leader);
                    let t = whose_turn(self.id, self.probe_with(quorum), &peers);
                    (since, t)
                }
                _ => (Instant::now(), Turn::Open),
            };
            let defer_to = match turn {
                (since, Turn::Theirs(id)) if since.elapsed() < patience => Some(id),
                _ => None,
            };
            if defer_to != deferring {
                match (defer_to, deferring) {
                    (Some(id), _) => tracing::info!(
                        node = id,
                        "no leader, and node {id} has the longer log (or the same and a \
                         lower id): this node leaves the election to it"
                    ),
                    (None, Some(id)) => tracing::info!(
                        node = id,
                        "this node no longer leaves the election to node {id}"
                    ),
                    (None, None) => {}
                }
                deferring = defer_to;
            }
            // A follower whose leader answers its pings stands for no election: the leader
            // is alive and reaches it, and a vote would only depose it. Its heartbeats can
            // still stop for a while: openraft's replication to a follower that was
            // unreachable backs off for 500 ms at a time, so a follower restarted at once
            // (an upgrade) heard nothing for longer than its timer and deposed the leader
            // (a 400 ms stall each time, seen in `cluster-faults.sh ... upgrade`). Only for
            // a while: a leader whose Raft is wedged while its peer port answers must not
            // keep the cluster from electing another for ever.
            let appended = *self.appended.lock().unwrap_or_else(|p| p.into_inner());
            let held = leader.is_some_and(|l| l != self.id)
                && !leaderless
                && appended.unwrap_or(started).elapsed() < patience;
            let may_elect = quorum
                && defer_to.is_none()
                && (!held || crate::breaks::off(crate::breaks::Check::LeaderHeld));
            if may_elect != electing {
                electing = may_elect;
                self.raft.runtime_config().elect(may_elect);
            }
            // The node with the longest log stands as soon as no lease holds a vote back,
            // instead of when its own timer runs out: openraft adds twice the longest
            // election timeout to the timer of a node that once lost an election to a
            // longer log, until its next own election, and that is often this one.
            if let (since, Turn::Mine) = turn {
                let quiet = appended.is_none_or(|at| at.elapsed() >= lease_out);
                let follower = self.raft.metrics().borrow().state == ServerState::Follower;
                if !stood && quorum && quiet && follower && since.elapsed() >= lease_out {
                    stood = true;
                    tracing::info!(
                        "no leader, and this node has the longest log of the voters it \
                         reaches: it stands for election now"
                    );
                    let _ = self.raft.trigger().elect().await;
                }
            }
        }
    }

    fn probes_lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Option<Probe>>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What this node answers a probe: its last log id, and whether it may stand.
    fn my_probe(&self) -> Probe {
        self.probe_with(self.hears_quorum(None))
    }

    /// [`Cluster::my_probe`], with whether this node reaches a quorum already known.
    fn probe_with(&self, quorum: bool) -> Probe {
        let last_log = self
            .last_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|l| (l.leader_id.term, l.index));
        Probe {
            last_log,
            stands: quorum && self.voters().contains(&self.id),
        }
    }

    /// The voters of the newest membership this node knows.
    fn voters(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The other voters but `without` that answered a ping within the longest election
    /// timeout (as [`Cluster::hears_quorum`] counts them), with their last probe answers.
    fn reachable_voters(&self, without: Option<NodeId>) -> Vec<(NodeId, Option<Probe>)> {
        let voters = self.voters();
        let window = Duration::from_millis(self.config.election_max_ms);
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let probes = self.probes_lock();
        voters
            .into_iter()
            .filter(|v| *v != self.id && Some(*v) != without)
            .filter(|v| heard.get(v).is_some_and(|at| at.elapsed() <= window))
            .map(|v| (v, probes.get(&v).copied().flatten()))
            .collect()
    }

    /// Pings every other member at once (each for at most `ttl`), records who answered
    /// in `heard`, and returns it by id. A peer that answers `Removed` means this node's
    /// id left the committed membership.
    async fn ping_members(
        &self,
        peers: &mut HashMap<NodeId, PeerClient>,
        ttl: Duration,
    ) -> HashMap<NodeId, bool> {
        let members = self.member_ids();
        peers.retain(|id, _| members.contains(id));
        let mut pings = tokio::task::JoinSet::new();
        for id in members.into_iter().filter(|id| *id != self.id) {
            let client = match peers.remove(&id) {
                Some(c) => c,
                None => match self.addr_of(id) {
                    Some(a) => PeerClient::new(
                        id,
                        a,
                        Arc::new(self.config.key.clone()),
                        self.id,
                        self.tls.clone(),
                    ),
                    None => continue,
                },
            };
            pings.spawn(async move {
                let mut client = client;
                let answer = client.probe(ttl).await;
                (id, client, answer)
            });
        }
        let mut answers = HashMap::new();
        while let Some(done) = pings.join_next().await {
            // A ping task cannot panic short of a bug; its client is made anew next time.
            let Ok((id, client, answer)) = done else {
                continue;
            };
            peers.insert(id, client);
            match &answer {
                Ok(PeerReply::Removed) => self.removed.store(true, Ordering::SeqCst),
                Ok(PeerReply::Probed(p)) => {
                    self.probes_lock().insert(id, Some(*p));
                }
                Ok(PeerReply::Pong) => {
                    self.probes_lock().insert(id, None);
                }
                _ => {}
            }
            if answer.is_ok() {
                self.heard
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, Instant::now());
            }
            {
                let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                match &answer {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused.entry(id).or_insert_with(Instant::now);
                    }
                    _ => {
                        refused.remove(&id);
                    }
                }
            }
            answers.insert(id, answer.is_ok());
        }
        answers
    }

    /// Whether member `id` is gone: its peer port has refused every ping for the shortest
    /// election timeout. A refused connection means no process listens there (the kernel
    /// answers for a dead or restarting one; a paused or cut-off node's port still takes
    /// connections, or says nothing), so the leader need not wait the detection time to
    /// let its sessions go: the clients of a killed node resume elsewhere about a second
    /// after the kill instead of the detection time after the next election. A node that
    /// restarts declares itself down anyway (see the module's *Liveness*). A firewall that
    /// rejects the peer port of a live node makes it look gone: it is then cut off from
    /// the leader, and what it would be declared after the detection time it is now.
    fn gone(&self, id: NodeId) -> bool {
        if crate::breaks::off(crate::breaks::Check::RefusedGone) {
            return false;
        }
        let after = Duration::from_millis(self.config.election_min_ms);
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|since| since.elapsed() >= after)
    }

    /// Whether this node reaches a quorum of the voters (itself included if it is one)
    /// without `without`: the other voters that answered a ping within the longest
    /// election timeout.
    fn hears_quorum(&self, without: Option<NodeId>) -> bool {
        if crate::breaks::off(crate::breaks::Check::QuorumHeard) {
            return true;
        }
        let voters = self.voters();
        let mine = usize::from(voters.contains(&self.id));
        let window = Duration::from_millis(self.config.election_max_ms);
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let reached = voters
            .iter()
            .filter(|v| **v != self.id && Some(**v) != without)
            .filter(|v| heard.get(v).is_some_and(|at| at.elapsed() <= window))
            .count();
        reached + mine > voters.len() / 2
    }

    async fn serve_peers(self: Arc<Self>, listener: TcpListener) {
        let permits = Arc::new(Semaphore::new(64));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = self.stop.wait() => return,
            };
            let Ok((tcp, peer)) = accepted else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                let mut s: crate::network::Stream = match &me.tls {
                    None => Box::new(tcp),
                    Some(t) => {
                        let hs = tokio::time::timeout(
                            crate::network::LOGIN_TIMEOUT,
                            t.acceptor.accept(tcp),
                        )
                        .await;
                        match hs {
                            Ok(Ok(tls)) => Box::new(tls),
                            Ok(Err(e)) => {
                                tracing::warn!(%peer, "raft port: TLS refused: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(%peer, "raft port: TLS handshake timed out");
                                return;
                            }
                        }
                    }
                };
                let from = match accept_login(&mut s, &me.config.key).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(%peer, "raft port: refused: {e}");
                        return;
                    }
                };
                while let Ok(req) = read_frame::<PeerRequest, _>(&mut s, MAX_FRAME).await {
                    // The partition switch: a request from a cut-off peer is never
                    // received, and a reply to a peer cut off the other way never sent.
                    if crate::network::cut(crate::network::Way::From, from) {
                        continue;
                    }
                    let Some(reply) = me.handle(from, req).await else {
                        continue;
                    };
                    if crate::network::cut(crate::network::Way::To, from) {
                        continue;
                    }
                    if write_frame(&mut s, &reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// Commits the liveness loop's own commands beside it, one batch at a time: waiting for
    /// them (up to the commit timeout without a quorum) would stop the pings, and with
    /// them the finding of a deaf leader, for as long.
    fn submit_aside(self: &Arc<Self>, cmds: Vec<Command>, busy: &Arc<AtomicBool>) {
        if busy.swap(true, Ordering::SeqCst) {
            return; // the next round proposes them again if they are still due
        }
        let (me, busy) = (self.clone(), busy.clone());
        tokio::spawn(async move {
            let _ = me.submit(cmds).await;
            busy.store(false, Ordering::SeqCst);
        });
    }

    /// Whether `from`, this follower's leader, has not answered its pings for longer than
    /// the longest election timeout while its appends still arrive: a one-way partition
    /// (the leader sends, but hears nothing back, so it can commit nothing), and this node
    /// reaches a quorum without it. Its appends are then left unanswered as if they had not arrived, so that this node's election
    /// timer runs out and the nodes that can hear each other elect a leader; without it
    /// the cluster would stop for as long as the partition lasts (openraft 0.9 has no
    /// check-quorum step-down, and ignores an election trigger on a leader). When the
    /// pings are answered again, appends are taken again.
    fn deaf_leader(&self, from: NodeId) -> bool {
        if crate::breaks::off(crate::breaks::Check::DeafLeader) {
            return false;
        }
        let limit = Duration::from_millis(self.config.election_max_ms);
        let silent = self
            .leader_silent_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(id, at)| id == from && at.elapsed() > limit);
        // A node that reaches no quorum without the leader cannot tell a deaf leader
        // from being mute itself, and nothing is gained by ignoring it: its election
        // would go unheard. It follows the appends it gets instead.
        silent && self.hears_quorum(Some(from))
    }

    async fn handle(&self, from: NodeId, req: PeerRequest) -> Option<PeerReply> {
        // A removed node's requests (votes, appends as a former leader, pings) are not
        // taken: its id never comes back, and the answer tells it to stop.
        if self.members.is_removed(from) {
            return Some(PeerReply::Removed);
        }
        if matches!(req, PeerRequest::Append(_)) {
            if self.deaf_leader(from) {
                return None;
            }
            *self.appended.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        if let Some(at) = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&from)
        {
            *at = Instant::now();
        }
        Some(match req {
            PeerRequest::Append(r) => PeerReply::Append(self.raft.append_entries(r).await),
            PeerRequest::Vote(r) => PeerReply::Vote(self.raft.vote(r).await),
            PeerRequest::Snapshot(r) => PeerReply::Snapshot(self.raft.install_snapshot(r).await),
            // Bounded as the forwarding node's call is (see `commit`).
            PeerRequest::Forward(b) => PeerReply::Forward(
                tokio::time::timeout(self.config.commit_timeout, self.propose(b))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ForwardError::NoQuorum(
                            "not committed within the commit timeout (no quorum)".into(),
                        ))
                    }),
            ),
            PeerRequest::Ping(_) => PeerReply::Pong,
            PeerRequest::Probe(_) => PeerReply::Probed(self.my_probe()),
            PeerRequest::Member(c) => {
                PeerReply::Member(self.lead_change(c).await.map_err(|e| e.to_string()))
            }
        })
    }
}

/// Who should stand when there is no leader, from what the reachable voters answered
/// their probes: a log-comparing pre-vote. [`Turn::Theirs`] when a voter that may stand
/// has a longer log than this node (Raft's order: the last entry's term, then its index),
/// or the same log and a lower id: that node would win, and this one, standing first,
/// would only be refused, and raise the term that node then has to pass. Without it the
/// longest failovers took three or four election rounds (docs/cluster.md).
/// [`Turn::Mine`] when this node may stand and leads that order among them all;
/// [`Turn::Open`] otherwise, or when a reachable voter is of peer protocol version 0 (no
/// log known): then the election timers decide, as in plain Raft.
fn whose_turn(me: NodeId, mine: Probe, peers: &[(NodeId, Option<Probe>)]) -> Turn {
    let unknown = peers.iter().any(|(_, p)| p.is_none());
    let best = peers
        .iter()
        .filter_map(|(id, p)| p.filter(|p| p.stands).map(|p| (*id, p.last_log)))
        .chain(mine.stands.then_some((me, mine.last_log)))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
    match best {
        Some((id, _)) if id != me => Turn::Theirs(id),
        Some(_) if !unknown => Turn::Mine,
        _ => Turn::Open,
    }
}

/// See [`whose_turn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    Mine,
    Theirs(NodeId),
    Open,
}

/// What a new leader counts as each member's last sign of life: when the member last
/// answered this node's pings (the silence of a node whose loss caused the election began
/// before the election did, and need not be waited for again), or `now` for one never
/// heard; but never more than `credit` ago, so that a node elected as it wakes from a
/// pause, its record of everyone stale, gives every member time to report in.
fn first_seen(
    members: &[NodeId],
    heard: &HashMap<NodeId, Instant>,
    now: Instant,
    credit: Duration,
) -> HashMap<NodeId, Instant> {
    let floor = now.checked_sub(credit).unwrap_or(now);
    members
        .iter()
        .map(|id| {
            let at = heard.get(id).copied().unwrap_or(now).clamp(floor, now);
            (*id, at)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_leader_counts_silence_from_the_last_answer_within_its_credit() {
        let now = Instant::now() + Duration::from_secs(60);
        let s = Duration::from_secs(1);
        let heard = HashMap::from([(2, now - s / 10), (3, now - 2 * s), (4, now - 5 * s)]);
        let seen = first_seen(&[1, 2, 3, 4, 5], &heard, now, 3 * s);
        assert_eq!(
            seen[&2],
            now - s / 10,
            "a live member: when it last answered"
        );
        assert_eq!(seen[&3], now - 2 * s, "silent since before the election");
        assert_eq!(
            seen[&4],
            now - 3 * s,
            "a stale record counts no further back than the credit"
        );
        assert_eq!(seen[&1], now, "never heard (this node itself): from now");
        assert_eq!(seen[&5], now);
        assert_eq!(seen.len(), 5, "every member, and only the members");
    }

    fn probe(term: u64, index: u64, stands: bool) -> Option<Probe> {
        Some(Probe {
            last_log: Some((term, index)),
            stands,
        })
    }

    #[test]
    fn the_voter_with_the_longest_log_stands_and_the_others_leave_it_the_election() {
        let me = |t, i| probe(t, i, true).unwrap();
        let empty = Probe {
            last_log: None,
            stands: true,
        };
        let off = Probe {
            last_log: Some((9, 99)),
            stands: false,
        };
        let p = probe;
        type Case = (
            &'static str,
            NodeId,
            Probe,
            Vec<(NodeId, Option<Probe>)>,
            Turn,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("a longer index, the same term", 2, me(3, 10), vec![(3, p(3, 11, true))], Turn::Theirs(3)),
            ("the term counts first", 2, me(4, 5), vec![(3, p(3, 11, true))], Turn::Mine),
            ("the same log: the lower id stands", 2, me(3, 10), vec![(3, p(3, 10, true))], Turn::Mine),
            ("the same log: the higher id waits", 3, me(3, 10), vec![(2, p(3, 10, true))], Turn::Theirs(2)),
            ("a longer log that may not stand", 2, me(3, 10), vec![(3, p(3, 11, false))], Turn::Mine),
            ("no log is the shortest", 2, empty, vec![(3, p(1, 1, true))], Turn::Theirs(3)),
            ("a version-0 peer: no standing at once", 2, me(3, 10), vec![(3, None)], Turn::Open),
            ("a version-0 peer, and a longer log", 2, me(3, 10), vec![(3, None), (4, p(3, 12, true))], Turn::Theirs(4)),
            ("unable to stand: the best that may", 2, off, vec![(3, p(3, 1, true)), (4, p(3, 2, true))], Turn::Theirs(4)),
            ("unable to stand, and alone", 2, off, vec![], Turn::Open),
        ];
        for (why, id, mine, peers, want) in cases {
            assert_eq!(whose_turn(id, mine, &peers), want, "{why}");
        }
    }
}
