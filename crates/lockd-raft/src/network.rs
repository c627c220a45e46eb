//! Peer RPCs over TCP: Raft's append, vote and snapshot messages, and the cluster's own
//! (a follower forwarding a batch to the leader, liveness pings).
//!
//! A frame is a 4-byte big-endian length and a postcard body, at most [`MAX_FRAME`] bytes.
//! Before anything else both ends prove they know the auth key, without sending it: the
//! dialer sends a nonce, the listener answers with its own nonce and an HMAC over both,
//! the dialer answers with its HMAC; until then frames are at most [`MAX_HELLO`] bytes and
//! the exchange must end within [`LOGIN_TIMEOUT`]. Anything else is refused and closed.
//!
//! **Versions.** Each side appends its [`PEER_VERSION`] to its first login frame (the
//! dialer's hello, the listener's challenge), after the fields a node of version 0 reads
//! and ignores the rest of (postcard leaves trailing bytes alone); a frame without it is
//! version 0. A dialer sends a request that came in a later version only to a listener
//! that said it knows it, so nodes of two versions work together during a rolling
//! upgrade. Version 1 added [`PeerRequest::Probe`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::PeerTls;

/// A peer connection: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}
pub type Stream = Box<dyn Io>;

use crate::types::{Applied, Batch, NodeId, TypeConfig};

/// Largest frame after login: a snapshot chunk (openraft sends 3 MiB) or a batch of
/// maximal requests, with room.
pub const MAX_FRAME: usize = 64 << 20;
/// Largest frame before login.
pub const MAX_HELLO: usize = 256;
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(5);
/// This build's peer protocol version (see the module's *Versions*): 0 had `Ping`, 1 adds
/// `Probe`.
pub const PEER_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's batch for the leader to propose.
    Forward(Batch),
    /// `node` is alive (sent to the leader).
    Ping(NodeId),
    /// An operator's change of the members, for the leader to make.
    Member(MemberChange),
    /// `node` is alive, and asks what the peer's log and standing are (version 1; a
    /// ping to a node of version 0).
    Probe(NodeId),
}

/// What a node tells a [`PeerRequest::Probe`]: what it would be judged by in an election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The term and index of its last log entry (Raft's vote compares these, in order).
    pub last_log: Option<(u64, u64)>,
    /// Whether it may stand: a voter whose pings reach a quorum.
    pub stands: bool,
}

/// A change of the cluster's members, as `lockctl cluster add|remove` asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add node `id` at `addr`: as a learner, then, once it has caught up, a voter.
    Add { id: NodeId, addr: String },
    /// Remove node `id` (voter or learner).
    Remove { id: NodeId },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The batch's log index and outcomes, or why it was not proposed.
    Forward(Result<(u64, Applied), ForwardError>),
    Pong,
    /// What the change did, or why it was refused.
    Member(Result<String, String>),
    /// The asking node was removed from the cluster: nothing it sends is taken.
    Removed,
    /// The answer to a probe.
    Probed(Probe),
}

/// Why a forwarded batch was not committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("not the leader (the leader is {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("no quorum: {0}")]
    NoQuorum(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    node: NodeId,
    nonce: [u8; 16],
}

#[derive(Debug, Serialize, Deserialize)]
struct Challenge {
    nonce: [u8; 16],
    proof: Vec<u8>,
}

fn proof(key: &[u8], role: &[u8], a: &[u8; 16], b: &[u8; 16]) -> Vec<u8> {
    let mut m = <Hmac<sha1::Sha1>>::new_from_slice(key).expect("HMAC takes any key");
    m.update(role);
    m.update(a);
    m.update(b);
    m.finalize().into_bytes().to_vec()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn bad(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// One frame, refusing one longer than `max` before reading its body.
pub async fn read_frame<T: DeserializeOwned, S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    max: usize,
) -> std::io::Result<T> {
    let buf = read_body(s, max).await?;
    postcard::from_bytes(&buf).map_err(bad)
}

async fn read_body<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
    if len > max {
        return Err(bad(format!("peer frame of {len} bytes (at most {max})")));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// A login frame: its fields, and the version the sender appended (0 if none).
fn versioned<T: DeserializeOwned>(body: &[u8]) -> std::io::Result<(T, u32)> {
    let (v, rest) = postcard::take_from_bytes::<T>(body).map_err(bad)?;
    if rest.is_empty() {
        return Ok((v, 0));
    }
    let (version, _) = postcard::take_from_bytes::<u32>(rest).map_err(bad)?;
    Ok((v, version))
}

pub async fn write_frame<T: Serialize, S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    v: &T,
) -> std::io::Result<()> {
    let body = postcard::to_stdvec(v).map_err(bad)?;
    if body.len() > MAX_FRAME {
        return Err(bad(format!("frame of {} bytes is too large", body.len())));
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    s.write_all(&out).await?;
    // TLS buffers records.
    s.flush().await
}

/// Dials `addr` (over mutual TLS when the node has a certificate) and logs in as `me`.
pub async fn dial(
    addr: &str,
    key: &[u8],
    me: NodeId,
    tls: Option<&PeerTls>,
) -> std::io::Result<Stream> {
    dial_peer(addr, key, me, tls).await.map(|(s, _)| s)
}

/// [`dial`], and the listener's peer protocol version.
pub async fn dial_peer(
    addr: &str,
    key: &[u8],
    me: NodeId,
    tls: Option<&PeerTls>,
) -> std::io::Result<(Stream, u32)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s: Stream = match tls {
        None => Box::new(tcp),
        Some(t) => {
            let name = crate::tls::server_name(addr).map_err(bad)?;
            let tls = tokio::time::timeout(LOGIN_TIMEOUT, t.connector.connect(name, tcp))
                .await
                .map_err(|_| bad("peer TLS handshake timed out"))??;
            Box::new(tls)
        }
    };
    let version = tokio::time::timeout(LOGIN_TIMEOUT, async {
        let nonce: [u8; 16] = rand::random();
        write_frame(&mut s, &(Hello { node: me, nonce }, PEER_VERSION)).await?;
        let (c, version): (Challenge, u32) = versioned(&read_body(&mut s, MAX_HELLO).await?)?;
        if !same(&c.proof, &proof(key, b"listener", &nonce, &c.nonce)) {
            return Err(bad("the peer does not know the cluster's auth key"));
        }
        write_frame(&mut s, &proof(key, b"dialer", &c.nonce, &nonce)).await?;
        Ok(version)
    })
    .await
    .map_err(|_| bad("peer login timed out"))??;
    Ok((s, version))
}

/// The listener's side of the login: the dialer's node id, or an error (then close).
pub async fn accept_login<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    key: &[u8],
) -> std::io::Result<NodeId> {
    tokio::time::timeout(LOGIN_TIMEOUT, async {
        // The dialer's version is not needed: it sends only what this node can read.
        let (h, _): (Hello, u32) = versioned(&read_body(s, MAX_HELLO).await?)?;
        let nonce: [u8; 16] = rand::random();
        let p = proof(key, b"listener", &h.nonce, &nonce);
        write_frame(s, &(Challenge { nonce, proof: p }, PEER_VERSION)).await?;
        let theirs: Vec<u8> = read_frame(s, MAX_HELLO).await?;
        if !same(&theirs, &proof(key, b"dialer", &nonce, &h.nonce)) {
            return Err(bad("a peer failed to prove it knows the auth key"));
        }
        Ok(h.node)
    })
    .await
    .map_err(|_| bad("peer login timed out"))?
}

/// Test-only fault switch (the fault harness's partitions): names a file; while it exists,
/// each of its words cuts this node off from a peer: `3` both ways, `>3` only what this
/// node sends to node 3, `<3` only what it receives from node 3; or slows the link:
/// `~3:60` holds each request to node 3 for 60 ms. A cut is a blackhole: connections stay
/// open, requests go unanswered (the sender times out). For
/// `scripts/cluster-faults.sh` only; lockd warns at start when it is set.
pub const PARTITION_ENV: &str = "LOCKD_FAULT_PARTITION";

/// Which way a message goes, for [`cut`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    To,
    From,
}

/// The partition switch's words now (none when it is not set or its file is absent).
fn switch_words() -> Option<String> {
    static SWITCH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let path = SWITCH.get_or_init(|| {
        let p = std::env::var_os(PARTITION_ENV).map(std::path::PathBuf::from);
        if let Some(p) = &p {
            tracing::warn!(
                switch = %p.display(),
                "{PARTITION_ENV} is set: a test-only fault switch (partitions) is armed"
            );
        }
        p
    });
    std::fs::read_to_string(path.as_ref()?).ok()
}

/// Whether the partition switch cuts messages going `way` between this node and `peer`.
pub fn cut(way: Way, peer: NodeId) -> bool {
    let Some(text) = switch_words() else {
        return false;
    };
    let id = peer.to_string();
    text.split_whitespace().any(|w| {
        let (dir, n) = match w.as_bytes().first() {
            Some(b'>') => (Some(Way::To), &w[1..]),
            Some(b'<') => (Some(Way::From), &w[1..]),
            Some(b'~') => return false,
            _ => (None, w),
        };
        n == id && dir.is_none_or(|d| d == way)
    })
}

/// How long the partition switch holds each request this node sends to `peer` before it
/// goes (`~3:60`: 60 ms to node 3; at most 10 s), as a slow link would.
pub fn delay(peer: NodeId) -> Option<Duration> {
    delay_in(&switch_words()?, peer)
}

fn delay_in(text: &str, peer: NodeId) -> Option<Duration> {
    text.split_whitespace().find_map(|w| {
        let (n, ms) = w.strip_prefix('~')?.split_once(':')?;
        let ms: u64 = ms.parse().ok()?;
        (n.parse::<NodeId>().ok()? == peer).then(|| Duration::from_millis(ms.min(10_000)))
    })
}

/// A connection to one peer, made again after any error.
pub struct PeerClient {
    /// The peer's node id, for the partition switch.
    target: NodeId,
    addr: String,
    key: Arc<Vec<u8>>,
    me: NodeId,
    tls: Option<PeerTls>,
    /// The connection, and the peer protocol version its listener told.
    conn: Option<(Stream, u32)>,
}

impl PeerClient {
    pub fn new(
        target: NodeId,
        addr: String,
        key: Arc<Vec<u8>>,
        me: NodeId,
        tls: Option<PeerTls>,
    ) -> PeerClient {
        PeerClient {
            target,
            addr,
            key,
            me,
            tls,
            conn: None,
        }
    }

    /// One request and its reply, within `ttl`.
    pub async fn call(&mut self, req: &PeerRequest, ttl: Duration) -> std::io::Result<PeerReply> {
        self.send(|_| Cow::Borrowed(req), ttl).await
    }

    /// A liveness ping, within `ttl`: a [`PeerRequest::Probe`] to a peer of version 1 or
    /// later, a `Ping` (answered `Pong`) to an older one.
    pub async fn probe(&mut self, ttl: Duration) -> std::io::Result<PeerReply> {
        let me = self.me;
        self.send(
            |version| {
                Cow::Owned(if version >= 1 {
                    PeerRequest::Probe(me)
                } else {
                    PeerRequest::Ping(me)
                })
            },
            ttl,
        )
        .await
    }

    /// The request `req` makes for the peer's version, and its reply, within `ttl`.
    async fn send<'a>(
        &mut self,
        req: impl FnOnce(u32) -> Cow<'a, PeerRequest>,
        ttl: Duration,
    ) -> std::io::Result<PeerReply> {
        let r = tokio::time::timeout(ttl, async {
            if cut(Way::To, self.target) {
                // Sent into a blackhole: no answer comes.
                return std::future::pending().await;
            }
            if let Some(d) = delay(self.target) {
                tokio::time::sleep(d).await;
            }
            if self.conn.is_none() {
                self.conn =
                    Some(dial_peer(&self.addr, &self.key, self.me, self.tls.as_ref()).await?);
            }
            let (s, version) = self.conn.as_mut().expect("connected above");
            write_frame(s, req(*version).as_ref()).await?;
            read_frame::<PeerReply, _>(s, MAX_FRAME).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer RPC timed out",
            ))
        });
        if r.is_err() {
            // The stream may hold half a frame: start afresh next time.
            self.conn = None;
        }
        r
    }
}

/// openraft's network factory: a [`PeerClient`] per target.
pub struct Network {
    pub key: Arc<Vec<u8>>,
    pub me: NodeId,
    pub tls: Option<PeerTls>,
    /// Set when a peer answers that this node was removed (see [`PeerReply::Removed`]).
    pub removed: Arc<std::sync::atomic::AtomicBool>,
}

pub struct PeerNetwork {
    target: NodeId,
    client: PeerClient,
    removed: Arc<std::sync::atomic::AtomicBool>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            target,
            client: PeerClient::new(
                target,
                node.addr.clone(),
                self.key.clone(),
                self.me,
                self.tls.clone(),
            ),
            removed: self.removed.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

/// A failed call as openraft should take it. `Unreachable` makes its replication to the
/// peer back off for 500 ms; right for a peer that refuses connections (dead, restarting),
/// wrong for one that was only slower than the RPC's time limit, which openraft sets to
/// the heartbeat interval: a follower whose append and fsync once took longer than that
/// (a loaded machine, a slow disk) would get nothing for half a second, and with two
/// followers the leader could commit nothing (seen as 5-6 s stalls in the fault harness).
/// A timeout is a `Network` error: the next heartbeat retries.
fn unreachable<E: std::error::Error>(e: std::io::Error) -> RPCError<NodeId, BasicNode, E> {
    if matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::TimedOut
    ) {
        RPCError::Network(NetworkError::new(&e))
    } else {
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

fn odd_reply<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&bad("a reply of the wrong kind")))
}

impl PeerNetwork {
    /// The peer says this node is no longer a member: remember it, and fail the call.
    fn removed<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        self.removed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        RPCError::Network(NetworkError::new(&bad(
            "this node was removed from the cluster",
        )))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self
            .client
            .call(&PeerRequest::Append(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerReply::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(PeerReply::Removed) => Err(self.removed()),
            Ok(_) => Err(odd_reply()),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .client
            .call(&PeerRequest::Snapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerReply::Snapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(PeerReply::Removed) => Err(self.removed()),
            Ok(_) => Err(odd_reply()),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self
            .client
            .call(&PeerRequest::Vote(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerReply::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(PeerReply::Removed) => Err(self.removed()),
            Ok(_) => Err(odd_reply()),
            Err(e) => Err(unreachable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_delays_only_the_peers_it_names() {
        let words = "3 >2 ~2:60 ~5:99999 ~4:x";
        assert_eq!(delay_in(words, 2), Some(Duration::from_millis(60)));
        assert_eq!(delay_in(words, 3), None);
        assert_eq!(delay_in(words, 5), Some(Duration::from_secs(10)));
        assert_eq!(delay_in(words, 4), None);
    }

    /// The login frames as a node of version 0 wrote them.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct OldHello {
        node: NodeId,
        nonce: [u8; 16],
    }

    #[test]
    fn login_frames_carry_a_version_that_version_0_ignores() {
        let nonce = [7u8; 16];
        // A version-1 hello, read by a version-0 listener (postcard leaves the rest).
        let new = postcard::to_stdvec(&(Hello { node: 3, nonce }, PEER_VERSION)).unwrap();
        let old: OldHello = postcard::from_bytes(&new).unwrap();
        assert_eq!(old, OldHello { node: 3, nonce });
        // And read by this version, with the version.
        let (h, v): (Hello, u32) = versioned(&new).unwrap();
        assert_eq!((h.node, h.nonce, v), (3, nonce, PEER_VERSION));
        // A version-0 hello: version 0.
        let old = postcard::to_stdvec(&OldHello { node: 3, nonce }).unwrap();
        let (h, v): (Hello, u32) = versioned(&old).unwrap();
        assert_eq!((h.node, v), (3, 0));
        // The challenge, the same way.
        let c = Challenge {
            nonce,
            proof: vec![1, 2, 3],
        };
        let new = postcard::to_stdvec(&(c, 5u32)).unwrap();
        let (c, v): (Challenge, u32) = versioned(&new).unwrap();
        assert_eq!((c.proof, v), (vec![1, 2, 3], 5));
        // A truncated frame is refused, not read as version 0.
        assert!(versioned::<Hello>(&new[..3]).is_err());
    }

    #[test]
    fn a_probe_goes_only_to_a_peer_that_knows_it() {
        // The request a version-0 peer gets is one it decodes.
        const { assert!(PEER_VERSION >= 1) };
        let ping = postcard::to_stdvec(&PeerRequest::Ping(4)).unwrap();
        let probe = postcard::to_stdvec(&PeerRequest::Probe(4)).unwrap();
        // Appended, so every earlier variant keeps its number.
        assert_eq!(ping[0], 4, "Ping is variant 4");
        assert_eq!(probe[0], 6, "Probe comes after every version-0 variant");
    }
}
