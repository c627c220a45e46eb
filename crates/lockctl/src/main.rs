//! `lockctl`: lockd from the command line, after `flock(1)`, `etcdctl lock` and
//! `redis-cli`. `lockctl lock KEY -- CMD` runs a command while holding a lock.

mod exit;
mod supervise;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use exit::Failure;
use lockd_client::{Client, Mode};
use serde_json::json;

/// Command-line client for lockd.
///
/// The server address and auth key come from --addr/--auth-key, LOCKD_ADDR/LOCKD_AUTH_KEY,
/// or the key file a default lockd writes, so against a local default lockd no flags are
/// needed.
///
/// Exit status: the command's own for `lock`; 0 on success otherwise; 75 when the lock was
/// not had within the timeout (or waiting would deadlock); 69 when the server cannot be
/// reached or the connection was lost; 77 when the auth key is wrong (or, for revoke and
/// session kill, is not the admin key); 70 on any other
/// error; 2 for bad usage.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Server address; or several, comma-separated, for the nodes of a cluster (lockctl
    /// connects to the first that answers and, when its node is lost, resumes its session
    /// on another)
    #[arg(
        long,
        env = "LOCKD_ADDR",
        default_value = "127.0.0.1:7531",
        global = true
    )]
    addr: String,
    /// Auth key [default: read from --key-file]
    #[arg(
        long = "auth-key",
        env = "LOCKD_AUTH_KEY",
        hide_env_values = true,
        global = true
    )]
    auth_key: Option<String>,
    /// Key file written by a lockd that generated its key [default: as lockd's]
    #[arg(long = "key-file", env = "LOCKD_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CA certificates in this PEM file
    #[arg(long = "tls-ca", env = "LOCKD_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// The server's name in its certificate [default: the host part of --addr]
    #[arg(long = "tls-name", env = "LOCKD_TLS_NAME", global = true)]
    tls_name: Option<String>,
    /// Print machine-readable JSON
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command while holding locks: lockctl lock KEY... -- COMMAND [ARGS...]. The
    /// fencing token is in LOCKD_FENCING_TOKEN; the locks are released when it exits, and
    /// lockctl exits with its status.
    Lock {
        /// Take shared locks instead of exclusive ones
        #[arg(long, short = 's')]
        shared: bool,
        /// How long to wait for the locks (e.g. 10s, 500ms, 2m); 0 tries once
        #[arg(long, short = 't', value_parser = parse_duration, default_value = "24h")]
        timeout: Duration,
        /// Exit status when the locks could not be had
        #[arg(long = "conflict-exit-code", short = 'E', default_value_t = exit::TEMPFAIL)]
        conflict_exit_code: u8,
        /// The session's grace period: how long the server keeps the lock after the
        /// connection is lost, while lockctl tries to resume. Not resumed within half of
        /// it, the command is stopped (the server may cap it: lockctl uses what it says)
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        grace: Duration,
        /// Signal sent to the command when the lock is lost (a number, or TERM, INT, HUP,
        /// KILL, USR1, USR2, QUIT)
        #[arg(long, value_parser = parse_signal, default_value = "TERM")]
        signal: i32,
        /// After --signal, how long the command has to exit before SIGKILL
        #[arg(long = "kill-after", value_parser = parse_duration, default_value = "10s")]
        kill_after: Duration,
        /// Take the locks with a lease of this length (e.g. 30s): the server lets them go
        /// when it passes unless extended, which lockctl does every third of it while the
        /// command runs; when it cannot (or an operator revokes the lock), the command gets
        /// --signal, as for a lost connection
        #[arg(long, value_parser = parse_duration)]
        lease: Option<Duration>,
        /// Take one permit of a semaphore of N permits on the key instead of a lock, so
        /// that at most N commands run at once (as `consul lock -n`); one key only, and
        /// every lockctl using it must give the same N
        #[arg(short = 'n', long = "limit", value_parser = clap::value_parser!(u16).range(1..), conflicts_with = "shared")]
        limit: Option<u16>,
        /// Keys, then `--`, then the command
        #[arg(required = true, num_args = 1..)]
        keys: Vec<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Take locks and leave them held by a session that outlives lockctl for --grace;
    /// prints the session id (for `release --session`) and the fencing token.
    Acquire {
        #[arg(long, short = 's')]
        shared: bool,
        #[arg(long, short = 't', value_parser = parse_duration, default_value = "0s")]
        timeout: Duration,
        /// How long the locks are kept after lockctl exits
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        grace: Duration,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Release locks of a session left by `acquire` (all of them when no keys are named).
    Release {
        #[arg(long)]
        session: String,
        #[arg(long, short = 's')]
        shared: bool,
        keys: Vec<String>,
    },
    /// Show the holders and waiters of a key.
    Inspect { key: String },
    /// Show the locks of a session (a session is always named by --session).
    Locks {
        #[arg(long)]
        session: String,
    },
    /// Show the server's counters.
    Stats,
    /// Release the locks on KEY of every holder, or of --session (an operator's command:
    /// needs the admin key, given as --auth-key). Their holders are told; waiters move up.
    Revoke {
        key: String,
        #[arg(long)]
        session: Option<String>,
    },
    /// Sessions: `kill ID` ends a session at once, its locks released and its wait
    /// cancelled (an operator's command: needs the admin key, given as --auth-key).
    Session {
        #[command(subcommand)]
        what: SessionCommand,
    },
    /// The cluster: `status` (a node's view), `add ID RAFT_ADDR`, `remove ID`.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// Check that the server answers (and that the key is right).
    Ping,
    /// Print shell completions for lockctl (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print lockctl's man page (roff).
    Man,
}

#[derive(clap::Subcommand, Debug)]
enum SessionCommand {
    /// End session ID now.
    Kill { id: String },
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// The node's view: role, leader, term, indexes, and each member with its lag.
    Status,
    /// Add node ID, whose Raft port is at RAFT_ADDR and which runs with `--node-id ID`
    /// (and no --initial-cluster entry for itself): a learner until it has caught up, then
    /// a voter. Ids are never reused.
    Add { id: u64, raft_addr: String },
    /// Remove node ID; refused if the voters left would have no live quorum.
    Remove { id: u64 },
}

/// Prints what a cluster change did.
fn said(json: bool, done: String) -> Result<u8, Failure> {
    if json {
        println!("{}", json!({"ok": true, "said": done}));
    } else {
        println!("{done}");
    }
    Ok(0)
}

fn parse_signal(s: &str) -> Result<i32, String> {
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    Ok(match name.as_str() {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "QUIT" => libc::SIGQUIT,
        n => match n.parse::<i32>() {
            Ok(v) if (1..=64).contains(&v) => v,
            _ => {
                return Err(format!(
                    "{s:?} is not a signal (TERM, INT, HUP, KILL, USR1, USR2, QUIT or 1-64)"
                ))
            }
        },
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs >= 0.0 && secs.is_finite() {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (try 10s, 500ms, 2m)"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    // Made from the flags' definitions, without a server.
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "lockctl",
                &mut std::io::stdout(),
            );
            return std::process::ExitCode::SUCCESS;
        }
        Command::Man => {
            use clap::CommandFactory;
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => Failure::other(format!("cannot write the man page: {e}")).report(json),
            };
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Failure::other(format!("cannot start the runtime: {e}")).report(json),
    };
    match rt.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(f) => f.report(json),
    }
}

/// A mode as lockctl prints it: `N permits` on a semaphore.
fn shown(mode: Mode, permits: u16) -> String {
    match permits {
        0 => mode.as_str().to_string(),
        1 => "1 permit".to_string(),
        n => format!("{n} permits"),
    }
}

/// What `lockctl lock` holds while the command runs: locks, or a semaphore's permit.
enum Held {
    Locks(lockd_client::Guard),
    Permit(lockd_client::Permit),
}

impl Held {
    fn token(&self) -> u64 {
        match self {
            Held::Locks(g) => g.token(),
            Held::Permit(p) => p.token(),
        }
    }

    fn may_be_lost(&self) -> bool {
        match self {
            Held::Locks(g) => g.may_be_lost(),
            Held::Permit(p) => p.may_be_lost(),
        }
    }

    async fn lost(&self) -> lockd_client::Loss {
        match self {
            Held::Locks(g) => g.lost().await,
            Held::Permit(p) => p.lost().await,
        }
    }

    async fn release(self) -> Result<(), lockd_client::Error> {
        match self {
            Held::Locks(g) => g.release().await,
            Held::Permit(p) => p.release().await,
        }
    }
}

fn mode(shared: bool) -> Mode {
    if shared {
        Mode::Sh
    } else {
        Mode::Ex
    }
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let (key, from) = auth_key(cli)?;
    // A refused key says which key lockctl used, so that a stale key file is found.
    let refused = |e: lockd_client::Error| {
        match e {
        lockd_client::Error::Auth(m) => Failure::from(lockd_client::Error::Auth(format!(
            "{m} (lockctl used the key from {from}; give --auth-key or LOCKD_AUTH_KEY to use another)"
        ))),
        other => Failure::from(other),
    }
    };
    match &cli.tls_ca {
        None => Client::connect(&cli.addr, &key).await.map_err(refused),
        Some(ca) => {
            // With several nodes, the first one's host (give --tls-name otherwise).
            let first = cli.addr.split(',').next().unwrap_or_default().trim();
            let host = first.rsplit_once(':').map_or(first, |(h, _)| h);
            let name = cli.tls_name.as_deref().unwrap_or(host);
            let tls = lockd_client::TlsOptions::from_ca_file(ca, name)
                .map_err(|e| Failure::usage(e.to_string()))?;
            Client::connect_tls(&cli.addr, &key, tls)
                .await
                .map_err(refused)
        }
    }
}

/// The auth key: --auth-key or LOCKD_AUTH_KEY, else the key file; and where it came from,
/// for the message when the server refuses it.
fn auth_key(cli: &Cli) -> Result<(String, String), Failure> {
    if let Some(k) = &cli.auth_key {
        let from = if std::env::var_os("LOCKD_AUTH_KEY").is_some() {
            "--auth-key or LOCKD_AUTH_KEY"
        } else {
            "--auth-key"
        };
        return Ok((k.clone(), from.to_string()));
    }
    let path = cli
        .key_file
        .clone()
        .unwrap_or_else(lockd_client::default_key_file);
    std::fs::read_to_string(&path)
        .map(|s| {
            (
                s.trim().to_string(),
                format!("the key file {}", path.display()),
            )
        })
        .map_err(|e| {
            Failure::usage(format!(
                "no auth key: give --auth-key or LOCKD_AUTH_KEY, or make {} readable ({e})",
                path.display()
            ))
        })
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let client = connect(&cli).await?;
    let json = cli.json;
    match &cli.command {
        Command::Lock {
            shared,
            timeout,
            conflict_exit_code,
            grace,
            signal,
            kill_after,
            lease,
            limit,
            keys,
            command,
        } => {
            if limit.is_some() && keys.len() != 1 {
                return Err(Failure::usage(
                    "--limit (-n) takes one key: the semaphore's",
                ));
            }
            // Caught from now on: a signal while waiting ends lockctl without running the
            // command; one while it runs is passed to it.
            let mut signals = supervise::Signals::install()
                .map_err(|e| Failure::other(format!("cannot catch signals: {e}")))?;
            let grace = client.set_grace(*grace).await?;
            // Subscribed, so that a revocation or an ended session reaches the guard at
            // once (its events themselves are not needed here).
            let _events = client.subscribe().await?;
            let acquired = tokio::select! {
                r = async {
                    match (limit, lease) {
                        (Some(n), _) => client
                            .acquire_permits(&keys[0], 1, *n, *timeout, *lease)
                            .await
                            .map(Held::Permit),
                        (None, Some(l)) => client
                            .acquire_leased(mode(*shared), keys, *timeout, *l)
                            .await
                            .map(Held::Locks),
                        (None, None) => client.acquire(mode(*shared), keys, *timeout).await.map(Held::Locks),
                    }
                } => r,
                sig = signals.next() => return Ok(128 + sig as u8),
            };
            let guard = match acquired {
                Ok(g) => g,
                Err(e @ (lockd_client::Error::Timeout | lockd_client::Error::Deadlock { .. })) => {
                    return Err(Failure::new(*conflict_exit_code, e.to_string()));
                }
                Err(e) => return Err(e.into()),
            };
            let child = tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .env("LOCKD_FENCING_TOKEN", guard.token().to_string())
                .env("LOCKD_SESSION", client.session_id())
                .spawn()
                .map_err(|e| {
                    Failure::new(exit::NOINPUT_CMD, format!("cannot run {}: {e}", command[0]))
                })?;
            let end = supervise::supervise(
                child,
                &mut signals,
                &client,
                guard.lost(),
                grace,
                *signal,
                *kill_after,
            )
            .await
            .map_err(|e| Failure::other(format!("cannot watch the command: {e}")))?;
            match end {
                supervise::End::Exited(status) => {
                    let lost = guard.may_be_lost();
                    // Bounded: over a connection that stalled as the command ended, the
                    // lock cannot be vouched for, and its grace lets it go.
                    match tokio::time::timeout(grace.clamp(Duration::from_secs(1), Duration::from_secs(10)), guard.release()).await {
                        Ok(r) => r.map_err(Failure::from)?,
                        Err(_) => return Err(Failure::new(exit::UNAVAILABLE, "the release was not answered: the lock is let go when the session's grace ends")),
                    }
                    if lost {
                        return Err(Failure::new(exit::UNAVAILABLE, "the connection was lost while the command ran: the lock may have passed to another"));
                    }
                    Ok(exit::of_status(status))
                }
                supervise::End::Lost(why) => {
                    std::mem::forget(guard);
                    Err(Failure::new(exit::UNAVAILABLE, why))
                }
            }
        }
        Command::Acquire {
            shared,
            timeout,
            grace,
            keys,
        } => {
            client.set_grace(*grace).await?;
            let guard = match client.acquire(mode(*shared), keys, *timeout).await {
                Ok(g) => g,
                Err(e @ (lockd_client::Error::Timeout | lockd_client::Error::Deadlock { .. })) => {
                    return Err(Failure::new(exit::TEMPFAIL, e.to_string()));
                }
                Err(e) => return Err(e.into()),
            };
            let (session, token) = (client.session_id(), guard.token());
            // Keep the locks: the session outlives this process for its grace period.
            std::mem::forget(guard);
            if json {
                println!(
                    "{}",
                    json!({"session": session, "token": token, "grace_ms": grace.as_millis() as u64})
                );
            } else {
                println!("session {session}\ntoken {token}");
            }
            Ok(0)
        }
        Command::Release {
            session,
            shared,
            keys,
        } => {
            client.resume_session(session).await?;
            let c = client;
            let n = if keys.is_empty() {
                c.release_all().await?
            } else {
                c.release(mode(*shared), keys).await?
            };
            if json {
                println!("{}", json!({"released": n}));
            } else {
                println!("released {n}");
            }
            Ok(0)
        }
        Command::Revoke { key, session } => {
            let n = client.revoke(key, session.as_deref()).await?;
            if json {
                println!("{}", json!({"released": n}));
            } else {
                println!("revoked {n}");
            }
            Ok(0)
        }
        Command::Session {
            what: SessionCommand::Kill { id },
        } => {
            let n = client.kill_session(id).await?;
            if json {
                println!("{}", json!({"released": n}));
            } else {
                println!("session ended, {n} locks released");
            }
            Ok(0)
        }
        Command::Inspect { key } => {
            let info = client.inspect(key).await?;
            if json {
                let holders: Vec<_> = info.holders.iter().map(|h| json!({"session": h.session, "mode": shown(h.mode, h.permits), "permits": h.permits, "token": h.token, "held_ms": h.held_ms})).collect();
                let waiters: Vec<_> = info.waiters.iter().map(|w| json!({"session": w.session, "mode": shown(w.mode, w.permits), "permits": w.permits, "waited_ms": w.waited_ms})).collect();
                println!(
                    "{}",
                    json!({"key": key, "capacity": info.capacity, "holders": holders, "waiters": waiters})
                );
            } else {
                if info.holders.is_empty() && info.waiters.is_empty() {
                    println!("{key}: free");
                }
                if info.capacity > 0 {
                    println!("{key}: a semaphore of {} permits", info.capacity);
                }
                for h in &info.holders {
                    println!(
                        "holder  {}  {}  token {}  held {} ms",
                        h.session,
                        shown(h.mode, h.permits),
                        h.token,
                        h.held_ms
                    );
                }
                for w in &info.waiters {
                    println!(
                        "waiter  {}  {}  waited {} ms",
                        w.session,
                        shown(w.mode, w.permits),
                        w.waited_ms
                    );
                }
            }
            Ok(0)
        }
        Command::Locks { session } => {
            let locks = client.locks(Some(session)).await?;
            if json {
                let l: Vec<_> = locks.iter().map(|l| json!({"key": String::from_utf8_lossy(&l.key), "mode": l.mode.as_str(), "token": l.token})).collect();
                println!("{}", json!(l));
            } else {
                for l in &locks {
                    println!(
                        "{}  {}  token {}",
                        String::from_utf8_lossy(&l.key),
                        l.mode.as_str(),
                        l.token
                    );
                }
            }
            Ok(0)
        }
        Command::Stats => {
            let stats = client.stats().await?;
            if json {
                let m: serde_json::Map<String, serde_json::Value> =
                    stats.into_iter().map(|(k, v)| (k, json!(v))).collect();
                println!("{}", serde_json::Value::Object(m));
            } else {
                for (k, v) in stats {
                    println!("{k:<18} {v}");
                }
            }
            Ok(0)
        }
        Command::Cluster {
            what: ClusterCommand::Add { id, raft_addr },
        } => said(json, client.cluster_add(*id, raft_addr).await?),
        Command::Cluster {
            what: ClusterCommand::Remove { id },
        } => said(json, client.cluster_remove(*id).await?),
        Command::Cluster {
            what: ClusterCommand::Status,
        } => {
            let status = client.cluster_status().await?;
            if json {
                println!("{status}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&status).map_err(|e| {
                    Failure::new(exit::SOFTWARE, format!("odd CLUSTER STATUS: {e}"))
                })?;
                println!(
                    "node {} is {}; leader {}; term {}; log {} applied {} snapshot {}",
                    v["node"],
                    v["role"].as_str().unwrap_or("?"),
                    v["leader"],
                    v["term"],
                    v["last_log_index"],
                    v["applied_index"],
                    v["snapshot_index"]
                );
                for m in v["members"].as_array().into_iter().flatten() {
                    println!(
                        "  member {:<3} {:<22} {:<7} lag {:<8} {:<4} peer protocol {}",
                        m["id"],
                        m["raft_address"].as_str().unwrap_or("?"),
                        if m["voter"].as_bool() == Some(false) {
                            "learner"
                        } else {
                            "voter"
                        },
                        if m["lag"].is_null() {
                            "-".to_string()
                        } else {
                            m["lag"].to_string()
                        },
                        if m["down"].as_bool() == Some(true) {
                            "DOWN"
                        } else {
                            "up"
                        },
                        if m["peer_protocol"].is_null() {
                            "-".to_string()
                        } else {
                            m["peer_protocol"].to_string()
                        }
                    );
                }
            }
            Ok(0)
        }
        Command::Ping => {
            client.ping().await?;
            if json {
                println!("{}", json!({"ok": true, "addr": cli.addr}));
            } else {
                println!("PONG from {}", cli.addr);
            }
            Ok(0)
        }
        Command::Completions { .. } | Command::Man => unreachable!("answered in main"),
    }
}
