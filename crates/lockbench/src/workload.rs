//! The workloads. Each returns a [`Report`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use crate::client::{Client, Outcome, Req};
use crate::report::Report;
use crate::server::Spawned;
use crate::shadow::Shadow;
use crate::{Args, LockMode, Protocol, Requester, Workload};

/// Keys per request when taking many locks (a legacy line holds at most 65,535 bytes).
const BATCH: usize = 1000;
/// How long a waiting request may wait (hotkey, fairness), in ms.
const WAIT_MS: u64 = 60_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub async fn run(
    args: &Args,
    addr: &str,
    server: Option<&Spawned>,
    duration: Duration,
) -> anyhow::Result<Report> {
    match args.workload {
        Workload::Pingpong => pingpong(args, addr, server, duration).await,
        Workload::Hotkey => hotkey(args, addr, server, duration).await,
        Workload::Fairness => fairness(args, addr, server, duration).await,
        Workload::Hold => hold(args, addr, server).await,
        Workload::Idle => idle(args, addr, server).await,
        Workload::Waitgraph => waitgraph(args, addr, duration).await,
    }
}

async fn connect_all(args: &Args, addr: &str) -> anyhow::Result<Vec<Client>> {
    let ids: Vec<usize> = (0..args.connections).collect();
    connect_ids(args, addr, &ids).await
}

/// The address of connection `i` (several: one per cluster node, round robin).
pub(crate) fn addr_of(addr: &str, i: usize) -> &str {
    let n = addr.split(',').count();
    addr.split(',').nth(i % n).unwrap_or(addr).trim()
}

/// Opens the connections numbered `ids` (each its own session), one after another.
async fn connect_ids(args: &Args, addr: &str, ids: &[usize]) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(ids.len());
    for &i in ids {
        let mut c = Client::connect(addr_of(addr, i), args.protocol, &args.auth_key, i as u32)
            .await
            .with_context(|| format!("connection {i}"))?;
        c.lease_ms = args.lease_ms;
        c.ping().await.with_context(|| format!("connection {i}"))?;
        clients.push(c);
    }
    Ok(clients)
}

/// How many client threads drive the connections: `--client-threads`, or one per CPU
/// left to lockbench, never more than there are connections. A server lockbench spawns
/// without `--pin` shares the CPUs, so its threads are left to it: a client with a thread
/// on every CPU as well kept more threads busy than there were CPUs, and what it measured
/// was how the kernel shared them out (ping-pong at 50 connections woke the client 2.6
/// times as often per reply with lockd as with Redis, and each wake-up preempted the
/// server). Under `--pin` lockbench may already use only the CPUs left to it.
fn client_threads(args: &Args) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_threads = match args.protocol {
        Protocol::Redis => 1,
        _ => args.lockd_threads,
    };
    let n = args.client_threads.unwrap_or(if args.spawn && !args.pin {
        cpus.saturating_sub(server_threads)
    } else {
        cpus
    });
    n.clamp(1, args.connections.max(1))
}

/// One client thread's histograms, shared by its connections. A set per connection
/// (three histograms of 136 KB each) cost 4 GB at 10,000 connections, and allocating them
/// when the run started kept the client busy for seconds while the server waited.
struct Recorder {
    hist: RefCell<Histogram<u64>>,
    extra: RefCell<Histogram<u64>>,
    /// Fairness: how long SH holders actually held the key.
    holds: RefCell<Histogram<u64>>,
}

/// What one connection did; made before the run starts.
struct TaskResult {
    rec: Rc<Recorder>,
    counts: Counts,
}

impl TaskResult {
    fn new(rec: Rc<Recorder>) -> TaskResult {
        TaskResult {
            rec,
            counts: Counts::default(),
        }
    }

    /// `n` operations that took `us` each.
    fn done(&mut self, us: u64, n: u64) {
        self.counts.ops += n;
        self.rec.hist.borrow_mut().saturating_record_n(us, n);
    }

    /// Sends `reqs` as one batch and records each request as taking the batch's round
    /// trip; false (its failure counted by kind) if the connection failed.
    async fn timed_batch(
        &mut self,
        c: &mut Client,
        reqs: &[Req<'_>],
        outcomes: &mut Vec<Outcome>,
    ) -> bool {
        let t0 = Instant::now();
        // Bounded: these are try-locks and releases, answered at once by a server that
        // works (a cluster answers within its 5 s commit timeout); a reply that never
        // comes is a lost connection, not a hang of the whole run.
        let answered = tokio::time::timeout(BATCH_TIMEOUT, c.batch(reqs, outcomes)).await;
        if !matches!(answered, Ok(Ok(()))) {
            let error = match answered {
                Ok(Err(e)) => Some(format!("{e:#}")),
                _ => None,
            };
            self.counts.failures.count(error.as_deref());
            crate::trace::event(format_args!(
                "a batch failed: {}",
                error.as_deref().unwrap_or("no reply")
            ));
            first_error(error.unwrap_or_else(|| format!("no reply within {BATCH_TIMEOUT:?}")));
            return false;
        }
        self.done(t0.elapsed().as_micros() as u64, reqs.len() as u64);
        true
    }

    fn extra(&self, us: u64) {
        self.rec.extra.borrow_mut().saturating_record(us);
    }

    fn held(&self, us: u64) {
        self.rec.holds.borrow_mut().saturating_record(us);
    }
}

/// The run's first failed batch, kept so that a run that reports errors can say why
/// (with --reconnect, a batch that failed with its connection is not an error).
static FIRST_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn first_error(what: String) {
    FIRST_ERROR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert(what);
}

/// What [`first_error`] kept.
pub fn first_error_said() -> Option<String> {
    FIRST_ERROR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// The longest a ping-pong batch may wait for its replies.
pub(crate) const BATCH_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection's counts, sent back from its client thread (the histograms are the
/// thread's).
#[derive(Default)]
struct Counts {
    ops: u64,
    grants: u64,
    refusals: u64,
    errors: u64,
    survival: crate::resume::Counts,
    failures: crate::report::Failures,
}

fn pick_mode(mode: LockMode, rng: &mut impl Rng) -> LockMode {
    match mode {
        LockMode::Mix if rng.gen_ratio(1, 10) => LockMode::Ex,
        LockMode::Mix => LockMode::Sh,
        m => m,
    }
}

/// Runs `body` on every connection until the deadline and gathers the results.
///
/// The connections are shared out over `--client-threads` threads, each with a
/// single-threaded runtime, whose run queue is one FIFO. One work-stealing runtime for all
/// of them served its connections unevenly at 10,000 (the fewest operations on one
/// connection was 7 against a median of 28, and p99 was 2-6 s against the same lockd;
/// with this, 52-73 against 66-76, p99 0.4-1.4 s): likely tasks that overflow a worker's
/// bounded local queue wait in the global queue while newly woken ones run, so the tail
/// measured the client's scheduler rather than the server.
async fn drive<F, Fut>(
    args: &Args,
    addr: &str,
    server: Option<&Spawned>,
    duration: Duration,
    body: F,
) -> anyhow::Result<(Report, Histogram<u64>, Histogram<u64>)>
where
    F: Fn(usize, Client, Arc<Shadow>, Instant, TaskResult) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = TaskResult> + 'static,
{
    let threads = client_threads(args);
    let shadow = Arc::new(Shadow::default());
    let body = Arc::new(body);
    // Every thread connects its share, then all start together.
    let connected = Arc::new(tokio::sync::Barrier::new(threads + 1));
    let (go, deadline_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let (a, addr, shadow, body) =
            (args.clone(), addr.to_string(), shadow.clone(), body.clone());
        let (connected, mut deadline_rx) = (connected.clone(), deadline_rx.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("lockbench-client-{t}"))
            .spawn(move || {
                let run = async move {
                    let ids: Vec<usize> = (t..a.connections).step_by(threads).collect();
                    let clients = connect_ids(&a, &addr, &ids).await;
                    connected.wait().await;
                    let clients = clients?;
                    let rec = Rc::new(Recorder {
                        hist: RefCell::new(histogram()),
                        extra: RefCell::new(histogram()),
                        holds: RefCell::new(histogram()),
                    });
                    let results: Vec<TaskResult> =
                        ids.iter().map(|_| TaskResult::new(rec.clone())).collect();
                    let deadline = loop {
                        if let Some(d) = *deadline_rx.borrow_and_update() {
                            break d;
                        }
                        deadline_rx.changed().await?;
                    };
                    let tasks: Vec<_> = ids
                        .into_iter()
                        .zip(clients)
                        .zip(results)
                        .map(|((i, c), r)| {
                            tokio::task::spawn_local(body(i, c, shadow.clone(), deadline, r))
                        })
                        .collect();
                    let mut counts = Vec::with_capacity(tasks.len());
                    for task in tasks {
                        counts.push(task.await?.counts);
                    }
                    let hists = [&rec.hist, &rec.extra, &rec.holds].map(|h| h.borrow().clone());
                    anyhow::Ok((counts, hists))
                };
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| tokio::task::LocalSet::new().block_on(&rt, run));
                let _ = tx.send(result);
            })
            .context("cannot start a client thread")?;
        handles.push(rx);
    }
    connected.wait().await;
    let cpu0 = server.map(|s| s.cpu_time());
    let start = Instant::now();
    let _ = go.send(Some(start + duration));
    let mut hist = histogram();
    let mut extra = histogram();
    let mut holds = histogram();
    let mut report = Report::new(args);
    let mut per_conn = Vec::with_capacity(args.connections);
    let mut first_error = None;
    for h in handles {
        let (counts, [h_lat, h_extra, h_holds]) = match h.await.context("a client thread died") {
            Ok(Ok(r)) => r,
            Ok(Err(e)) | Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        hist.add(&h_lat).expect("same-shaped histograms");
        extra.add(&h_extra).expect("same-shaped histograms");
        holds.add(&h_holds).expect("same-shaped histograms");
        for r in counts {
            per_conn.push(r.ops);
            report.grants += r.grants;
            report.refusals += r.refusals;
            report.errors += r.errors;
            report.add_survival(&r.survival);
            report.failures.add(&r.failures);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    report.set_latency(&hist, start.elapsed());
    report.set_conn_ops(&mut per_conn);
    report.violations = shadow.violations.load(Ordering::Relaxed);
    report.token_violations = shadow.token_violations.load(Ordering::Relaxed);
    report.lost_in_grace = shadow.lost_in_grace.load(Ordering::Relaxed);
    if args.reconnect {
        let end = start + duration;
        report.longest_outage_ms = Some(shadow.longest_outage(end).as_millis() as u64);
        report.stalls_ms = Some(shadow.stalls_ms());
        report.finish_resumes();
        if let Some(path) = &args.stall_log {
            let lines: String = shadow
                .stall_times()
                .iter()
                .map(|(at, ms, p)| {
                    let n = addr.split(',').count().min(crate::shadow::MAX_NODES);
                    let on: Vec<String> = p.on[..n].iter().map(u32::to_string).collect();
                    format!("{at:.3} {ms} {} {}\n", on.join("/"), p.recovering)
                })
                .collect();
            std::fs::write(path, lines)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if let (Some(s), Some(cpu0)) = (server, cpu0) {
        let cpu = s.cpu_time().saturating_sub(cpu0);
        report.server_cpu_us_per_op = Some(cpu.as_secs_f64() * 1e6 / report.ops.max(1) as f64);
        report.server_rss_bytes = Some(s.rss());
    }
    Ok((report, extra, holds))
}

async fn pingpong(
    args: &Args,
    addr: &str,
    server: Option<&Spawned>,
    duration: Duration,
) -> anyhow::Result<Report> {
    let (keys, mode, depth, per) = (args.keys, args.mode, args.depth, args.keys_per_request);
    let hold = Duration::from_micros(args.hold_us);
    let survive = args.reconnect.then(|| crate::resume::Survive {
        nodes: addr.split(',').map(|a| a.trim().to_string()).collect(),
        protocol: args.protocol,
        auth_key: args.auth_key.clone(),
        connections: args.connections,
        grace: Duration::from_millis(args.grace_ms),
        anchor_base: keys,
        lease_ms: args.lease_ms,
    });
    let (report, _, _) = drive(
        args,
        addr,
        server,
        duration,
        move |i, mut c, shadow, deadline, mut r| {
            let survive = survive.clone();
            async move {
                let mut rng = rand::rngs::SmallRng::from_entropy();
                let mut life = crate::resume::Life::new(i);
                if let Some(s) = survive.as_ref() {
                    life.arrive(s, &shadow);
                }
                // A failed batch: with --reconnect, the session resumed or a new one (see
                // `resume`); what the batch left undecided is let go, and was never in the
                // shadow table (an acquire whose answer was lost is not recorded, a release
                // is recorded before it is sent).
                macro_rules! lost {
                    () => {{
                        let Some(s) = survive.as_ref() else {
                            r.counts.errors += 1;
                            break;
                        };
                        let got = crate::resume::recover(
                            s,
                            &mut life,
                            &mut rng,
                            &shadow,
                            deadline,
                            &mut r.counts.survival,
                        )
                        .await;
                        match got {
                            Some(c2) => {
                                c = c2;
                                continue;
                            }
                            None => break,
                        }
                    }};
                }
                // The first session's first steps (a recovered one has had them).
                let mut fresh = true;
                // Reused for every batch: the client must cost less than the server it measures.
                let mut keys_buf: Vec<u64> = Vec::with_capacity(depth * per);
                let mut modes: Vec<LockMode> = Vec::with_capacity(depth);
                let mut outcomes = Vec::with_capacity(depth);
                let mut held: Vec<usize> = Vec::with_capacity(depth);
                while Instant::now() < deadline {
                    if std::mem::take(&mut fresh) {
                        if let Some(s) = survive.as_ref() {
                            if crate::resume::begin(&mut c, s, &mut life, &shadow)
                                .await
                                .is_err()
                            {
                                lost!();
                            }
                        }
                    }
                    keys_buf.clear();
                    modes.clear();
                    for _ in 0..depth {
                        keys_buf.extend((0..per).map(|_| rng.gen_range(0..keys)));
                        modes.push(pick_mode(mode, &mut rng));
                    }
                    let session = life.session;
                    let reqs: Vec<Req> = keys_buf
                        .chunks(per)
                        .zip(&modes)
                        .map(|(k, &m)| Req::Acquire {
                            keys: k,
                            mode: m,
                            timeout_ms: 0,
                        })
                        .collect();
                    if !r.timed_batch(&mut c, &reqs, &mut outcomes).await {
                        lost!();
                    }
                    if survive.is_some() {
                        life.last_ok = Instant::now();
                    }
                    held.clear();
                    for (j, o) in outcomes.iter().enumerate() {
                        if *o == Outcome::Granted {
                            r.counts.grants += 1;
                            let token = c.tokens.get(j).copied().flatten();
                            for &key in &keys_buf[j * per..(j + 1) * per] {
                                shadow.granted_with(key, session, modes[j], token);
                            }
                            held.push(j);
                        } else {
                            r.counts.refusals += 1;
                        }
                    }
                    if held.is_empty() {
                        continue;
                    }
                    // Hold while marked held: the shadow table sees a double grant only while
                    // two holders overlap, so a hold widens what it can catch.
                    if !hold.is_zero() {
                        tokio::time::sleep(hold).await;
                    }
                    // Same-session duplicates within a batch are one lock on the server.
                    for &j in &held {
                        for &key in &keys_buf[j * per..(j + 1) * per] {
                            shadow.releasing(key, session, modes[j]);
                        }
                    }
                    let reqs: Vec<Req> = held
                        .iter()
                        .map(|&j| Req::Release {
                            keys: &keys_buf[j * per..(j + 1) * per],
                            mode: modes[j],
                        })
                        .collect();
                    if !r.timed_batch(&mut c, &reqs, &mut outcomes).await {
                        lost!();
                    }
                    if survive.is_some() {
                        life.last_ok = Instant::now();
                    }
                    // Each release must let go of exactly the locks it names that this batch
                    // has not let go of yet: fewer means a lock the client believed it held
                    // was not held.
                    let mut gone: Vec<(u64, LockMode)> = Vec::with_capacity(depth * per);
                    for (&j, o) in held.iter().zip(outcomes.iter()) {
                        let mut expect = 0;
                        for &key in &keys_buf[j * per..(j + 1) * per] {
                            if !gone.contains(&(key, modes[j])) {
                                gone.push((key, modes[j]));
                                expect += 1;
                            }
                        }
                        if let Outcome::Released(Some(n)) = *o {
                            if n != expect {
                                shadow.violations.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                r
            }
        },
    )
    .await?;
    Ok(report)
}

async fn hotkey(
    args: &Args,
    addr: &str,
    server: Option<&Spawned>,
    duration: Duration,
) -> anyhow::Result<Report> {
    let hold = Duration::from_micros(args.hold_us);
    let lock_mode = args.mode;
    let epoch = Instant::now();
    // When the last release was sent, in ns since `epoch` (0: none yet).
    let released_at = Arc::new(AtomicU64::new(0));
    let (mut report, handoff, _) = drive(
        args,
        addr,
        server,
        duration,
        move |i, mut c, shadow, deadline, mut r| {
            let released_at = released_at.clone();
            async move {
                let session = i as u32;
                let mut rng = rand::rngs::SmallRng::seed_from_u64(i as u64);
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let mode = pick_mode(lock_mode, &mut rng);
                    match c.acquire_one(0, mode, WAIT_MS).await {
                        Ok(true) => {
                            let now_ns = epoch.elapsed().as_nanos() as u64;
                            let rel = released_at.load(Ordering::SeqCst);
                            if rel > 0 && now_ns > rel {
                                r.extra((now_ns - rel) / 1000);
                            }
                            r.done(t0.elapsed().as_micros() as u64, 1);
                            r.counts.grants += 1;
                            shadow.granted(0, session, mode);
                        }
                        Ok(false) => {
                            r.counts.refusals += 1;
                            continue;
                        }
                        Err(_) => {
                            r.counts.errors += 1;
                            break;
                        }
                    }
                    if !hold.is_zero() {
                        tokio::time::sleep(hold).await;
                    }
                    shadow.releasing(0, session, mode);
                    released_at.store(epoch.elapsed().as_nanos() as u64, Ordering::SeqCst);
                    if c.release_one(0, mode).await.is_err() {
                        r.counts.errors += 1;
                        break;
                    }
                }
                r
            }
        },
    )
    .await?;
    report.set_extra("handoff", &handoff);
    Ok(report)
}

async fn fairness(
    args: &Args,
    addr: &str,
    server: Option<&Spawned>,
    duration: Duration,
) -> anyhow::Result<Report> {
    let hold = Duration::from_micros(args.hold_us.max(1000));
    let board = Arc::new(std::sync::Mutex::new(Board::default()));
    let after_release = Arc::new(std::sync::Mutex::new(histogram()));
    let (board2, after2) = (board.clone(), after_release.clone());
    let (mut report, ex_waits, holds) = drive(
        args,
        addr,
        server,
        duration,
        move |i, mut c, shadow, deadline, mut r| {
            let (board, after_release) = (board2.clone(), after2.clone());
            async move {
                let session = i as u32;
                // Connection 0 asks for EX now and then; the others keep SH on the key.
                let ex = i == 0;
                let mode = if ex { LockMode::Ex } else { LockMode::Sh };
                let mut rng = rand::rngs::SmallRng::from_entropy();
                if !ex {
                    // Spread the SH holders' phases so the key is never free.
                    tokio::time::sleep(hold.mul_f64(rng.gen_range(0.0..1.0))).await;
                }
                while Instant::now() < deadline {
                    if ex {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let t0 = Instant::now();
                    // The EX notes the SH requests already sent; each SH notes when it sent its
                    // request and when it let go.
                    let ahead = {
                        let mut b = board.lock().expect("board");
                        if ex {
                            b.active.clone()
                        } else {
                            b.active.insert(session, t0);
                            HashMap::new()
                        }
                    };
                    match c.acquire_one(0, mode, WAIT_MS).await {
                        Ok(true) => {
                            let granted = Instant::now();
                            let waited = (granted - t0).as_micros() as u64;
                            r.done(waited, 1);
                            if ex {
                                r.extra(waited);
                                let b = board.lock().expect("board");
                                // Of those, the ones that held the key ahead of the EX have
                                // released it since (the others queued behind the EX).
                                let last = ahead
                                    .iter()
                                    .filter_map(|(s, sent)| {
                                        b.released
                                            .get(s)
                                            .filter(|(x, _)| x == sent)
                                            .map(|(_, at)| *at)
                                    })
                                    .max();
                                if let Some(last) = last {
                                    after_release.lock().expect("histogram").saturating_record(
                                        granted.saturating_duration_since(last).as_micros() as u64,
                                    );
                                }
                            }
                            r.counts.grants += 1;
                            shadow.granted(0, session, mode);
                        }
                        Ok(false) => {
                            r.counts.refusals += 1;
                            continue;
                        }
                        Err(_) => {
                            r.counts.errors += 1;
                            break;
                        }
                    }
                    if !ex {
                        let held = Instant::now();
                        tokio::time::sleep(hold).await;
                        r.held(held.elapsed().as_micros() as u64);
                    }
                    shadow.releasing(0, session, mode);
                    if !ex {
                        let mut b = board.lock().expect("board");
                        if let Some(sent) = b.active.remove(&session) {
                            b.released.insert(session, (sent, Instant::now()));
                        }
                    }
                    if c.release_one(0, mode).await.is_err() {
                        r.counts.errors += 1;
                        break;
                    }
                }
                r
            }
        },
    )
    .await?;
    report.set_extra("ex_wait", &ex_waits);
    report.set_ex_after_release(&after_release.lock().expect("histogram"));
    report.hold_us = Some(hold.as_micros() as u64);
    report.hold_us_max = Some(holds.max());
    Ok(report)
}

/// Fairness: which SH requests are out, and when each SH holder last let go.
#[derive(Default)]
struct Board {
    /// SH sessions with a request sent and not yet released: when it was sent.
    active: HashMap<u32, Instant>,
    /// Each SH session's last release: when its request had been sent, and when it let go.
    released: HashMap<u32, (Instant, Instant)>,
}

async fn hold(args: &Args, addr: &str, server: Option<&Spawned>) -> anyhow::Result<Report> {
    let mut clients = connect_all(args, addr).await?;
    let rss0 = server.map(|s| s.rss());
    let start = Instant::now();
    let per = args.hold.div_ceil(args.connections as u64);
    let mut tasks = Vec::new();
    for (i, mut c) in clients.drain(..).enumerate() {
        let first = i as u64 * per;
        let last = (first + per).min(args.hold);
        tasks.push(tokio::spawn(async move {
            let keys: Vec<u64> = (first..last).collect();
            let mut granted = 0u64;
            for chunk in keys.chunks(BATCH) {
                let req = Req::Acquire {
                    keys: chunk,
                    mode: LockMode::Ex,
                    timeout_ms: 0,
                };
                let mut outcome = Vec::with_capacity(1);
                c.batch(&[req], &mut outcome).await?;
                if outcome == [Outcome::Granted] {
                    granted += chunk.len() as u64;
                }
            }
            anyhow::Ok((c, granted))
        }));
    }
    let mut report = Report::new(args);
    let mut held_by = Vec::new();
    for t in tasks {
        match t.await? {
            Ok((c, n)) => {
                report.grants += n;
                held_by.push(c);
            }
            Err(e) => {
                eprintln!("lockbench: {e:#}");
                report.errors += 1;
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.ops = report.grants;
    report.ops_per_sec = report.grants as f64 / report.seconds;
    if let (Some(s), Some(rss0)) = (server, rss0) {
        // Let the allocator settle, then read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss = s.rss();
        report.server_rss_bytes = Some(rss);
        report.bytes_per_lock = Some(rss.saturating_sub(rss0) as f64 / report.grants.max(1) as f64);
    }
    drop(held_by);
    Ok(report)
}

async fn idle(args: &Args, addr: &str, server: Option<&Spawned>) -> anyhow::Result<Report> {
    let rss0 = server.map(|s| s.rss());
    let clients = connect_all(args, addr).await?;
    let mut report = Report::new(args);
    report.ops = clients.len() as u64;
    if let (Some(s), Some(rss0)) = (server, rss0) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss = s.rss();
        report.server_rss_bytes = Some(rss);
        report.bytes_per_connection = Some(rss.saturating_sub(rss0) as f64 / clients.len() as f64);
    }
    drop(clients);
    Ok(report)
}

/// Keys one holder takes in the waitgraph workload: a request of 4,094 keys, its command,
/// mode and timeout, and one more key stays within the 4,096-key limit.
const WAITGRAPH_KEYS: u64 = 4094;

async fn waitgraph(args: &Args, addr: &str, duration: Duration) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.protocol == Protocol::Native,
        "the waitgraph workload needs --protocol native"
    );
    let crowded: Vec<u64> = (0..args.keys.min(WAITGRAPH_KEYS)).collect();
    let (other_key, waited_key) = (WAITGRAPH_KEYS + 1, WAITGRAPH_KEYS + 2);
    let connect = |id: u32| Client::connect(addr, Protocol::Native, &args.auth_key, id);
    let ex = |keys, timeout_ms| Req::Acquire {
        keys,
        mode: LockMode::Ex,
        timeout_ms,
    };
    let (other_keys, waited_keys) = ([other_key], [waited_key]);
    // The holder of the crowded keys; a holder of `other_key`, and the requester of the
    // `other` variant, who holds `waited_key` with someone queued on it.
    let mut holder = connect(0).await?;
    granted(&mut holder, &crowded).await?;
    let mut other = connect(1).await?;
    granted(&mut other, &other_keys).await?;
    let mut requester = match args.requester {
        Requester::Holder => holder,
        Requester::Other => {
            let mut z = connect(2).await?;
            granted(&mut z, &waited_keys).await?;
            let mut y = connect(3).await?;
            y.send(&ex(&waited_keys, WAIT_MS)).await?;
            drop(holder_keepalive(holder));
            drop(holder_keepalive(y));
            z
        }
    };
    let mut waiters = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let mut c = connect(10 + i as u32).await?;
        c.send(&ex(&crowded[..], WAIT_MS)).await?;
        waiters.push(c);
    }
    let probe = lockd_client::Client::connect(addr, &args.auth_key).await?;
    let expected = args.connections as i64 + (args.requester == Requester::Other) as i64;
    let queued = async {
        loop {
            let stats = probe.stats().await?;
            if stats.iter().any(|(k, v)| k == "waiters" && *v >= expected) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), queued)
        .await
        .context("the waiters were not all queued within 120 s")??;
    // The further request, repeated; meanwhile PINGs on another connection.
    let further: Vec<u64> = match args.requester {
        Requester::Holder => crowded.iter().copied().chain([other_key]).collect(),
        Requester::Other => crowded.clone(),
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pinger = connect(4).await?;
    let ping_stop = stop.clone();
    let pings = tokio::spawn(async move {
        let mut h = histogram();
        while !ping_stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            pinger.ping().await?;
            h.saturating_record(t.elapsed().as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        anyhow::Ok(h)
    });
    let mut report = Report::new(args);
    let mut h = histogram();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        match requester.acquire_reply(&ex(&further[..], 1)).await? {
            // Timed out after 1 ms, or refused as a (possible) deadlock.
            Some(reply) if reply.starts_with(b"-DEADLOCK") || reply == b"$-1" => {
                report.refusals += 1
            }
            Some(reply) => {
                eprintln!(
                    "lockbench: unexpected reply {}",
                    String::from_utf8_lossy(&reply)
                );
                report.errors += 1;
            }
            None => report.errors += 1,
        }
        h.saturating_record(t.elapsed().as_micros() as u64);
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let pings = pings.await??;
    report.set_latency(&h, elapsed);
    report.set_extra("ping_us", &pings);
    drop(waiters);
    Ok(report)
}

/// Takes EX on `keys` at once, or fails the run.
async fn granted(c: &mut Client, keys: &[u64]) -> anyhow::Result<()> {
    let req = Req::Acquire {
        keys,
        mode: LockMode::Ex,
        timeout_ms: 0,
    };
    let mut out = Vec::with_capacity(1);
    c.batch(&[req], &mut out).await?;
    anyhow::ensure!(
        out == [Outcome::Granted],
        "the setup's locks were not granted"
    );
    Ok(())
}

/// Keeps a connection (and so its session's locks and wait) open until the run ends.
fn holder_keepalive(c: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        drop(c);
    })
}
