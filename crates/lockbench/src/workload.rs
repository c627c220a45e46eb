//! The workloads. Each returns a [`Report`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

use crate::client::Client;
use crate::report::Report;
use crate::server::Spawned;
use crate::shadow::Shadow;
use crate::{Args, LockMode, Workload};

/// Keys per legacy request when taking many locks (a line holds at most 65,535 bytes).
const BATCH: usize = 1000;

pub async fn run(
    args: &Args,
    addr: &str,
    server: Option<&Spawned>,
    duration: Duration,
) -> anyhow::Result<Report> {
    match args.workload {
        Workload::Pingpong => pingpong(args, addr, server, duration).await,
        Workload::Hold => hold(args, addr, server).await,
        Workload::Idle => idle(args, addr, server).await,
    }
}

async fn connect_all(args: &Args, addr: &str) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let mut c = Client::connect(addr, args.protocol, &args.auth_key, i as u32)
            .await
            .with_context(|| format!("connection {i}"))?;
        c.ping().await.with_context(|| format!("connection {i}"))?;
        clients.push(c);
    }
    Ok(clients)
}

struct TaskResult {
    hist: Histogram<u64>,
    grants: u64,
    refusals: u64,
    errors: u64,
}

async fn pingpong(
    args: &Args,
    addr: &str,
    server: Option<&Spawned>,
    duration: Duration,
) -> anyhow::Result<Report> {
    let clients = connect_all(args, addr).await?;
    let shadow = Arc::new(Shadow::default());
    let cpu0 = server.map(|s| s.cpu_time());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let shadow = shadow.clone();
        let (keys, mode) = (args.keys, args.mode);
        tasks.push(tokio::spawn(async move {
            let mut r = TaskResult {
                hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram"),
                grants: 0,
                refusals: 0,
                errors: 0,
            };
            let mut rng = rand::rngs::SmallRng::from_entropy();
            while Instant::now() < deadline {
                let key = rng.gen_range(0..keys);
                let m = match mode {
                    LockMode::Mix if rng.gen_ratio(1, 10) => LockMode::Ex,
                    LockMode::Mix => LockMode::Sh,
                    m => m,
                };
                let t0 = Instant::now();
                match c.acquire(&[key], m).await {
                    Ok(true) => {
                        r.hist.saturating_record(t0.elapsed().as_micros() as u64);
                        r.grants += 1;
                        shadow.granted(key, i as u32, m);
                        shadow.releasing(key, i as u32, m);
                        let t1 = Instant::now();
                        if c.release(&[key], m).await.is_err() {
                            r.errors += 1;
                            break;
                        }
                        r.hist.saturating_record(t1.elapsed().as_micros() as u64);
                    }
                    Ok(false) => {
                        r.hist.saturating_record(t0.elapsed().as_micros() as u64);
                        r.refusals += 1;
                    }
                    Err(_) => {
                        r.errors += 1;
                        break;
                    }
                }
            }
            r
        }));
    }
    let mut hist: Histogram<u64> =
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram");
    let mut report = Report::new(args);
    for t in tasks {
        let r = t.await?;
        hist.add(&r.hist).expect("same-shaped histograms");
        report.grants += r.grants;
        report.refusals += r.refusals;
        report.errors += r.errors;
    }
    let elapsed = start.elapsed();
    report.set_latency(&hist, elapsed);
    report.violations = shadow.violations.load(Ordering::Relaxed);
    if let (Some(s), Some(cpu0)) = (server, cpu0) {
        let cpu = s.cpu_time().saturating_sub(cpu0);
        report.server_cpu_us_per_op = Some(cpu.as_secs_f64() * 1e6 / report.ops.max(1) as f64);
        report.server_rss_bytes = Some(s.rss());
    }
    Ok(report)
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
                if c.acquire(chunk, LockMode::Ex).await? {
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
    report.ops = report.grants;
    report.ops_per_sec = report.grants as f64 / start.elapsed().as_secs_f64();
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
