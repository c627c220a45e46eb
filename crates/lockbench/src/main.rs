//! `lockbench`: drives a lock server with many concurrent sessions and reports throughput,
//! latency, server CPU per operation and memory, while a shadow table checks that no grant
//! contradicts another (any such violation is reported and fails the run).

mod client;
mod etcd;
mod pin;
mod report;
mod resume;
mod server;
mod shadow;
mod sweep;
mod trace;
mod workload;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// lockd's legacy line protocol, signed with HMAC-SHA1.
    Legacy,
    /// lockd's native RESP protocol.
    Native,
    /// Redis: SET key token NX PX ttl / DEL key.
    Redis,
    /// etcd: the v3 lock API (Lock/Unlock with a lease per connection), as etcdctl lock;
    /// run against etcd nodes given with --addr (scripts/bench-etcd.sh starts three).
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Each connection acquires random keys and releases them; --depth requests in flight
    /// (1: ping-pong; more: pipelined), --keys-per-request keys each.
    Pingpong,
    /// Every connection (its own session) waits for one hot key in turn (native): reports
    /// the hand-off latency from a release to the next waiter's grant.
    Hotkey,
    /// SH holders keep one key busy (each holds it --hold-us); one EX asks for it every
    /// 50 ms: reports how long the EX waits, against the SH hold time.
    Fairness,
    /// Take and hold --hold locks, then report the server's memory per lock.
    Hold,
    /// Open --connections idle connections, then report the server's memory per connection.
    Idle,
    /// The wait graph's worst case (native): one session holds EX on min(--keys, 4094)
    /// keys, --connections sessions queue EX on all of them, and a further request is
    /// repeated for --duration (see --requester), while another connection PINGs: reports
    /// the further request's latency, and the PINGs' as the extra figure.
    Waitgraph,
}

/// Who repeats the further request in the waitgraph workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Requester {
    /// The holder of the crowded keys asks for them again and for a key another session
    /// holds, waiting 1 ms.
    Holder,
    /// A session that holds a key someone waits on asks for the crowded keys, waiting 1 ms.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Ex,
    Sh,
    /// Nine SH for every EX.
    Mix,
    /// One permit of a semaphore of one permit per key (native only): the same exclusion
    /// as EX, through the semaphore path (`ACQUIRE PERMITS key 1 1`, `RELEASE PERMITS`).
    Permits,
}

/// Benchmark a lock server.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    #[arg(long, value_enum, default_value = "legacy")]
    pub protocol: Protocol,
    #[arg(long, value_enum, default_value = "pingpong")]
    pub workload: Workload,
    /// Concurrent connections, each its own session.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub connections: usize,
    /// Size of the key space.
    #[arg(long, short = 'k', default_value_t = 100_000)]
    pub keys: u64,
    /// How long to run, in seconds (pingpong).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, value_enum, default_value = "ex")]
    pub mode: LockMode,
    /// Native: every ACQUIRE asks for a lease of this many ms (`ACQUIRE LEASE ms ...`);
    /// it ends with the lock's release (runs are meant to hold locks for less)
    #[arg(long = "lease-ms")]
    pub lease_ms: Option<u64>,
    /// With --reconnect: write every stall (250 ms or more without a grant) to this file,
    /// a line each, `START LENGTH_MS ON RECONNECTING` (START in Unix seconds; ON, how many
    /// connections were on each node of --addr as it ended, `10/12/8`; RECONNECTING, how
    /// many were between nodes), so that a fault harness can say which fault each followed
    #[arg(long = "stall-log")]
    pub stall_log: Option<std::path::PathBuf>,
    /// Locks to hold (hold workload).
    #[arg(long, default_value_t = 1_000_000)]
    pub hold: u64,
    /// Requests in flight per connection (pipelining depth).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Keys in each ACQUIRE.
    #[arg(long = "keys-per-request", default_value_t = 1)]
    pub keys_per_request: usize,
    /// How long a lock is held, in microseconds (pingpong, hotkey, fairness). In pingpong a
    /// hold makes the shadow table's check stronger: overlapping holders are what it sees.
    #[arg(long = "hold-us", default_value_t = 0)]
    pub hold_us: u64,
    /// Run pingpong at each of these connection counts (comma-separated), for each
    /// protocol of --protocols, and report them together (with --plot, draw them).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// Protocols for --sweep.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "native,legacy,redis"
    )]
    pub protocols: Vec<Protocol>,
    /// Draw throughput against connections and the latency distribution into this SVG.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Worker threads of a spawned lockd.
    #[arg(long = "lockd-threads", default_value_t = 1)]
    pub lockd_threads: usize,
    /// Run a spawned server on a CPU of its own (the last this process may use) and
    /// lockbench on the others, so that the servers compared do not share their core with
    /// the client. Needs at least two CPUs.
    #[arg(long)]
    pub pin: bool,
    /// Client threads, each driving its share of the connections on a single-threaded
    /// runtime [default: one per CPU left to lockbench: all it may use, less a spawned
    /// server's threads unless --pin gave the server its own CPU].
    #[arg(long = "client-threads")]
    pub client_threads: Option<usize>,
    /// An extra option for a spawned lockd, e.g. `--lockd-arg=--busy-poll-us=50`
    /// (repeatable).
    #[arg(long = "lockd-arg", allow_hyphen_values = true)]
    pub lockd_args: Vec<String>,
    /// The redis-server binary to spawn.
    #[arg(long, default_value = "redis-server")]
    pub redis_bin: std::path::PathBuf,
    /// Server address, when not spawning one; several, comma-separated, for the nodes of
    /// a cluster: connection i goes to the i-th (modulo their number).
    #[arg(long, default_value = "127.0.0.1:7531")]
    pub addr: String,
    /// pingpong: a connection that fails (its node was killed, or the cluster had no
    /// quorum) connects again, to another address, and goes on; counted as `reconnects`,
    /// not errors. Native: it resumes its session (`SESSION RESUME`) and checks that the
    /// lock it was told it held is still its own (`lost in grace` otherwise: a violation),
    /// else, once the grace is over, goes on as a new session. Legacy: a new session.
    #[arg(long)]
    pub reconnect: bool,
    /// With --reconnect (native): each session's grace (`SESSION GRACE`), in ms: how long
    /// after a loss it may be resumed with its locks.
    #[arg(long = "grace-ms", default_value_t = 10_000)]
    pub grace_ms: u64,
    /// Auth key of the server (a spawned lockd gets this one).
    #[arg(long, env = "LOCKD_AUTH_KEY", default_value = "lockbench")]
    pub auth_key: String,
    /// Start the server on a free loopback port and measure its CPU and memory.
    #[arg(long)]
    pub spawn: bool,
    /// The lockd binary to spawn [default: lockd beside this program].
    #[arg(long)]
    pub lockd_bin: Option<std::path::PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Hold workload: fail the run if the server's memory per lock passes this many bytes
    /// (a budget CI checks).
    #[arg(long = "max-bytes-per-lock")]
    pub max_bytes_per_lock: Option<f64>,
    /// Idle workload: fail the run if the server's memory per connection passes this.
    #[arg(long = "max-bytes-per-conn")]
    pub max_bytes_per_conn: Option<f64>,
    /// Waitgraph: who repeats the further request.
    #[arg(long, value_enum, default_value = "holder")]
    pub requester: Requester,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("lockbench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the benchmark; `Ok(false)` when it saw violations or errors.
fn run(args: Args) -> anyhow::Result<bool> {
    if args.connections == 0 || args.keys == 0 || args.depth == 0 || args.keys_per_request == 0 {
        bail!("--connections, --keys, --depth and --keys-per-request must be at least 1");
    }
    if args.protocol == Protocol::Redis && (args.mode != LockMode::Ex || args.keys_per_request != 1)
    {
        bail!("the Redis lock is exclusive and takes one key: use --mode ex --keys-per-request 1");
    }
    if args.mode == LockMode::Permits && args.keys_per_request != 1 {
        bail!("--mode permits takes one semaphore a request: use --keys-per-request 1");
    }
    if (args.mode == LockMode::Permits || args.lease_ms.is_some())
        && args.protocol != Protocol::Native
    {
        bail!("--mode permits and --lease-ms are lockd's native protocol's: use --protocol native");
    }
    if args.protocol == Protocol::Etcd {
        if args.mode != LockMode::Ex || args.keys_per_request != 1 || args.depth != 1 {
            bail!(
                "etcd's lock is exclusive, takes one key and waits: use --mode ex \
                 --keys-per-request 1 --depth 1"
            );
        }
        if args.spawn {
            bail!("lockbench does not start etcd: scripts/bench-etcd.sh starts a 3-node cluster");
        }
    }
    if matches!(args.workload, Workload::Hotkey | Workload::Fairness)
        && args.protocol != Protocol::Native
    {
        bail!(
            "the {:?} workload needs waiting: use --protocol native",
            args.workload
        );
    }
    let _ = lockd_server::sys::raise_nofile_limit();
    if args.pin {
        if !args.spawn && args.sweep.is_empty() {
            bail!("--pin places a server that lockbench starts: use it with --spawn or --sweep");
        }
        // Before the runtime starts, so that its threads inherit the client's CPUs.
        pin::apply()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        if !args.sweep.is_empty() {
            return sweep::run(&args).await;
        }
        let spawned = if args.spawn {
            Some(server::Spawned::start(&args, args.protocol).await?)
        } else {
            None
        };
        let addr = match &spawned {
            Some(s) => s.addr.clone(),
            None => args.addr.clone(),
        };
        let duration = Duration::from_secs_f64(args.duration);
        let report = workload::run(&args, &addr, spawned.as_ref(), duration).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        if report.errors > 0 {
            if let Some(e) = workload::first_error_said() {
                eprintln!("lockbench: the first error: {e}");
            }
        }
        Ok(report.violations == 0 && report.errors == 0 && within_budgets(&args, &report))
    })
}

/// Whether the memory figures are within the budgets asked for; says which is not.
fn within_budgets(args: &Args, r: &report::Report) -> bool {
    let checks = [
        ("per lock", args.max_bytes_per_lock, r.bytes_per_lock),
        (
            "per connection",
            args.max_bytes_per_conn,
            r.bytes_per_connection,
        ),
    ];
    let mut ok = true;
    for (what, budget, measured) in checks {
        let Some(budget) = budget else { continue };
        match measured {
            Some(m) if m <= budget => {}
            Some(m) => {
                eprintln!("lockbench: {m:.1} bytes {what}, over the budget of {budget}");
                ok = false;
            }
            None => {
                eprintln!("lockbench: no bytes-{what} figure to check (needs --spawn and the workload that measures it)");
                ok = false;
            }
        }
    }
    ok
}
