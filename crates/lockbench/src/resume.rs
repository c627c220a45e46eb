//! Surviving a lost connection (`--reconnect`, pingpong): connect again, to another node
//! picked at random, and, on the native protocol, take the old session back with
//! `SESSION RESUME`, checking that the cluster kept what it had told the client.
//!
//! Every native session sets its grace (`SESSION GRACE`, `--grace-ms`) and holds one lock
//! for all its life, its *anchor*, on a key of its own (above the workload's keys). That
//! lock was acknowledged, so the cluster must keep it for the session until the grace
//! ends. After a loss, the session is resumed (retried on another node while the old
//! connection still counts as live, `-BUSYSESSION`, or a node has no quorum), then:
//! - `-NOSESSION` although less than the grace has passed since the last reply on the
//!   old connection (the grace can only have started after that reply) is a violation:
//!   an acknowledged lock was released before its session's grace ended;
//! - resumed, `RELEASE TOKEN anchor-token EX anchor` must let go of exactly that lock,
//!   else the same violation;
//! - `RELEASEALL` then drops what the lost batch may have left (an acquire granted but
//!   not heard of, a release not applied), and a new anchor is taken.
//!
//! The cluster, not the client, knows when the grace began (when it saw the connection
//! go, which may be long after the last reply: a batch that waits on a paused node), so a
//! resume is tried until it answers: `-NOSESSION` after the grace means the session
//! *expired* (the cluster kept its word); no node resuming it within [`give_up_after`]
//! means it was *unreached*, counted with the last answer a try got. Either way it is
//! given up and the connection goes on as a new session, as it does on the legacy
//! protocol (whose sessions are the client's names: a new name is a new session).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::client::{key_name, Client};
use crate::shadow::Shadow;
use crate::{LockMode, Protocol};

/// The longest one step of a reconnect may take (a connect, a resume, a release): a node
/// that accepts and then answers nothing (paused) must not hold the connection up.
const STEP: Duration = Duration::from_secs(3);
/// Between two tries.
const RETRY: Duration = Duration::from_millis(100);
/// A `-NOSESSION` this much before the grace is up is a violation; closer to it, timers
/// of a few ms and the reply's way back could explain it.
const MARGIN: Duration = Duration::from_millis(250);

/// What every connection's recovery needs to know.
#[derive(Clone)]
pub struct Survive {
    /// The nodes' addresses (`--addr`, split once).
    pub nodes: Vec<String>,
    pub protocol: Protocol,
    pub auth_key: String,
    pub connections: usize,
    pub grace: Duration,
    /// Anchor keys are this plus the shadow session number (the workload's keys are below).
    pub anchor_base: u64,
    pub lease_ms: Option<u64>,
}

/// One connection's life across its reconnects.
pub struct Life {
    /// The session's number in the shadow table.
    pub session: u32,
    /// When the last reply arrived on the current connection.
    pub last_ok: Instant,
    conn: usize,
    lives: usize,
    node: usize,
    /// The server's id of the session (native).
    id: Option<String>,
    /// The anchor lock: its key and token.
    anchor: Option<(u64, u64)>,
}

/// What reconnects did, per connection.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Counts {
    pub reconnects: u64,
    /// For each resumed session (their count is its length): how long after the last
    /// reply on the lost connection it was resumed and settled (ms), what a client of a
    /// lost node waited.
    pub resumed_after_ms: Vec<u64>,
    /// Given up: `-NOSESSION` once the grace was over.
    pub expired: u64,
    /// Given up: no answer resumed it in time; by the last try's answer.
    pub unreached: Unreached,
}

/// The last answer of a resume that never got through.
#[derive(Default, Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Unreached {
    /// `-BUSYSESSION`: the cluster still saw the old connection.
    pub busy: u64,
    /// `-CLUSTERDOWN`: the node tried had no quorum.
    pub clusterdown: u64,
    /// No connection could be made, or no reply within a step.
    pub silent: u64,
    /// Anything else (a failure after the resume itself, while settling).
    pub other: u64,
}

impl Unreached {
    pub fn total(&self) -> u64 {
        self.busy + self.clusterdown + self.silent + self.other
    }

    pub fn add(&mut self, o: &Unreached) {
        self.busy += o.busy;
        self.clusterdown += o.clusterdown;
        self.silent += o.silent;
        self.other += o.other;
    }
}

/// How long after the last reply a lost session is still tried: its grace, plus the
/// longest the cluster can have taken to see the connection go. A connection the client
/// drops is seen at once by a live node; one on a dead or paused node, after the peers'
/// detection time; one whose batch waited for a reply, after that wait, which is at most
/// the batch timeout. Past this, a cluster that still answers nothing useful is an outage.
pub fn give_up_after(grace: Duration) -> Duration {
    grace + crate::workload::BATCH_TIMEOUT
}

/// What one try of a resume came to.
enum Try {
    Resumed(Box<Client>),
    Expired,
    Again(Last),
}

#[derive(Clone, Copy)]
enum Last {
    Busy,
    ClusterDown,
    Silent,
    Other,
}

impl Life {
    /// Connection `conn`'s, on the node it was first given (`addr_of`'s round robin).
    pub fn new(conn: usize) -> Life {
        Life {
            session: conn as u32,
            last_ok: Instant::now(),
            conn,
            lives: 0,
            node: conn,
            id: None,
            anchor: None,
        }
    }

    /// Counts the connection on the node it was first given (see [`Shadow::placed`]).
    pub fn arrive(&mut self, s: &Survive, shadow: &Shadow) {
        self.node %= s.nodes.len().max(1);
        if let Some(p) = shadow.placed.get(self.node) {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Another node than the last: the one with the fewest of this run's connections (ties
    /// at random), as a balanced client pool would. The next one in turn sent every
    /// connection of a lost node to the same one; a random other one still let them
    /// gather, fault after fault, on a node that stayed a follower (a soak's stall log:
    /// `connections 0/0/30` in three rounds), and its next fault, as leader, stopped every
    /// client for all of its length.
    fn next_node<'a>(&mut self, s: &'a Survive, rng: &mut impl Rng, shadow: &Shadow) -> &'a str {
        let n = s.nodes.len();
        if n > 1 {
            let from = self.node;
            let load = |i: usize| shadow.placed.get(i).map(|p| p.load(Ordering::Relaxed));
            let start = rng.gen_range(0..n - 1);
            self.node = (0..n - 1)
                .map(|k| (from + 1 + (start + k) % (n - 1)) % n)
                .min_by_key(|&i| load(i).unwrap_or(0))
                .unwrap_or(from);
            if let (Some(a), Some(b)) = (shadow.placed.get(from), shadow.placed.get(self.node)) {
                a.fetch_sub(1, Ordering::Relaxed);
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        &s.nodes[self.node % n.max(1)]
    }
}

async fn step<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP, f)
        .await
        .map_err(|_| anyhow::anyhow!("no reply within {STEP:?}"))?
}

fn anchor_name(key: u64) -> String {
    String::from_utf8_lossy(&key_name(key)).into_owned()
}

fn violation(shadow: &Shadow) {
    shadow.lost_in_grace.fetch_add(1, Ordering::Relaxed);
    shadow.violations.fetch_add(1, Ordering::Relaxed);
}

/// A new session's first steps (native): its grace, its id, its anchor.
pub async fn begin(
    c: &mut Client,
    s: &Survive,
    life: &mut Life,
    shadow: &Shadow,
) -> anyhow::Result<()> {
    if s.protocol != Protocol::Native {
        return Ok(());
    }
    let ms = s.grace.as_millis().to_string();
    let r = step(c.call(&["SESSION", "GRACE", &ms])).await?;
    anyhow::ensure!(r.starts_with("+OK"), "SESSION GRACE: {r}");
    let id = step(c.call(&["SESSION"])).await?;
    anyhow::ensure!(!id.is_empty() && !id.starts_with('-'), "SESSION: {id}");
    life.id = Some(id);
    take_anchor(c, s, life, shadow).await
}

async fn take_anchor(
    c: &mut Client,
    s: &Survive,
    life: &mut Life,
    shadow: &Shadow,
) -> anyhow::Result<()> {
    let key = s.anchor_base + u64::from(life.session);
    let r = step(c.call(&["ACQUIRE", "EX", "0", &anchor_name(key)])).await?;
    let token: u64 = r
        .strip_prefix(':')
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("anchor ACQUIRE: {r}"))?;
    shadow.granted_with(key, life.session, LockMode::Ex, Some(token));
    life.anchor = Some((key, token));
    Ok(())
}

/// A resumed session: its anchor checked and let go, the rest of what it holds let go,
/// a new anchor taken.
async fn settle(
    c: &mut Client,
    s: &Survive,
    life: &mut Life,
    shadow: &Shadow,
) -> anyhow::Result<()> {
    // Taken first: if the reply is lost, the next resume does not know whether the
    // release was applied, and must not check it.
    if let Some((key, token)) = life.anchor.take() {
        shadow.releasing(key, life.session, LockMode::Ex);
        let r = step(c.call(&[
            "RELEASE",
            "TOKEN",
            &token.to_string(),
            "EX",
            &anchor_name(key),
        ]))
        .await?;
        match r.as_str() {
            ":1" => {}
            ":0" => violation(shadow),
            _ => anyhow::bail!("anchor RELEASE: {r}"),
        }
    }
    let r = step(c.call(&["RELEASEALL"])).await?;
    anyhow::ensure!(r.starts_with(':'), "RELEASEALL: {r}");
    take_anchor(c, s, life, shadow).await
}

/// One try at resuming session `id` on the next node.
async fn try_resume(
    s: &Survive,
    life: &mut Life,
    id: &str,
    rng: &mut impl Rng,
    shadow: &Shadow,
    lost_at: Instant,
) -> Try {
    let addr = life.next_node(s, rng, shadow);
    let Ok(mut c) = step(Client::connect(addr, s.protocol, &s.auth_key, life.session)).await else {
        crate::trace::event(format_args!(
            "conn {} resume on {addr}: no connection",
            life.conn
        ));
        return Try::Again(Last::Silent);
    };
    c.lease_ms = s.lease_ms;
    let answer = step(c.call(&["SESSION", "RESUME", id])).await;
    crate::trace::event(format_args!(
        "conn {} resume on {addr}: {}",
        life.conn,
        match &answer {
            Ok(r) => r.clone(),
            Err(e) => format!("{e:#}"),
        }
    ));
    match answer {
        Ok(r) if r == "+OK" => match settle(&mut c, s, life, shadow).await {
            Ok(()) => Try::Resumed(Box::new(c)),
            // Lost again on the way: the session is still ours to resume.
            Err(_) => Try::Again(Last::Other),
        },
        Ok(r) if r.starts_with("-NOSESSION") => {
            if life.anchor.is_some() && lost_at.elapsed() + MARGIN < s.grace {
                violation(shadow);
            }
            Try::Expired
        }
        // -BUSYSESSION: the cluster has not seen the old connection go yet (a killed
        // node is declared down after its detection time); -CLUSTERDOWN: this node has
        // no quorum. Either way, another try.
        Ok(r) if r.starts_with("-BUSYSESSION") => Try::Again(Last::Busy),
        Ok(r) if r.starts_with("-CLUSTERDOWN") => Try::Again(Last::ClusterDown),
        Ok(_) => Try::Again(Last::Other),
        Err(_) => Try::Again(Last::Silent),
    }
}

/// Connects again after a loss: the same session if it can be resumed (native), else a
/// new one. `None` once the deadline passed.
pub async fn recover(
    s: &Survive,
    life: &mut Life,
    rng: &mut impl Rng,
    shadow: &Shadow,
    deadline: Instant,
    counts: &mut Counts,
) -> Option<Client> {
    shadow.recovering.fetch_add(1, Ordering::Relaxed);
    crate::trace::event(format_args!(
        "conn {} lost on node {} ({} ms after its last reply)",
        life.conn,
        life.node + 1,
        life.last_ok.elapsed().as_millis()
    ));
    // A block, so that each of its returns passes the count back on its way out.
    let got = async {
        let lost_at = life.last_ok;
        if let Some(id) = life.id.clone() {
            // Counted as silent if not even one try fits (cannot happen while the batch
            // timeout is below the bound, but an uncounted loss would hide).
            let mut last = Some(Last::Silent);
            while Instant::now() < deadline && lost_at.elapsed() < give_up_after(s.grace) {
                counts.reconnects += 1;
                match try_resume(s, life, &id, rng, shadow, lost_at).await {
                    Try::Resumed(c) => {
                        counts
                            .resumed_after_ms
                            .push(lost_at.elapsed().as_millis() as u64);
                        life.last_ok = Instant::now();
                        return Some(*c);
                    }
                    Try::Expired => {
                        counts.expired += 1;
                        last = None;
                        break;
                    }
                    Try::Again(why) => last = Some(why),
                }
                tokio::time::sleep(RETRY).await;
            }
            if let (Some(why), true) = (last, Instant::now() < deadline) {
                let u = &mut counts.unreached;
                match why {
                    Last::Busy => u.busy += 1,
                    Last::ClusterDown => u.clusterdown += 1,
                    Last::Silent => u.silent += 1,
                    Last::Other => u.other += 1,
                }
            }
        }
        life.id = None;
        life.anchor = None;
        while Instant::now() < deadline {
            life.lives += 1;
            counts.reconnects += 1;
            life.session = (life.conn + life.lives * s.connections) as u32;
            let addr = life.next_node(s, rng, shadow);
            if let Ok(mut c) =
                step(Client::connect(addr, s.protocol, &s.auth_key, life.session)).await
            {
                c.lease_ms = s.lease_ms;
                if begin(&mut c, s, life, shadow).await.is_ok() {
                    life.last_ok = Instant::now();
                    return Some(c);
                }
            }
            tokio::time::sleep(RETRY).await;
        }
        None
    }
    .await;
    shadow.recovering.fetch_sub(1, Ordering::Relaxed);
    got
}
