//! Spawning a server on loopback and reading its CPU time and resident memory from /proc.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{Args, Protocol};

pub struct Spawned {
    pub addr: String,
    child: Child,
}

impl Spawned {
    /// Starts the server the protocol talks to: lockd, or redis-server.
    pub async fn start(args: &Args, protocol: Protocol) -> anyhow::Result<Spawned> {
        match protocol {
            Protocol::Redis => Spawned::redis(args).await,
            _ => Spawned::lockd(args).await,
        }
    }

    async fn redis(args: &Args) -> anyhow::Result<Spawned> {
        let port = free_port()?;
        let child = command(&args.redis_bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                &(args.connections + 100).to_string(),
            ])
            .args(["--requirepass", &args.auth_key])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", args.redis_bin.display()))?;
        Spawned::wait_listening(child, port, &args.redis_bin).await
    }

    async fn lockd(args: &Args) -> anyhow::Result<Spawned> {
        let bin = match &args.lockd_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("lockd"),
        };
        let port = free_port()?;
        let max_clients = (args.connections + 100).max(1000);
        let max_locks = args.hold.max(1_000_000) + 1000;
        let child = command(&bin)
            .args(["--address", "127.0.0.1", "--port", &port.to_string()])
            .args(["--auth-key", &args.auth_key])
            .args(["--max-clients", &max_clients.to_string()])
            .args(["--max-locks", &max_locks.to_string()])
            .args(["--max-backlog", "4096"])
            .args(["--threads", &args.lockd_threads.to_string()])
            .args(&args.lockd_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Spawned::wait_listening(child, port, &bin).await
    }

    async fn wait_listening(
        child: Child,
        port: u16,
        bin: &std::path::Path,
    ) -> anyhow::Result<Spawned> {
        let addr = format!("127.0.0.1:{port}");
        let spawned = Spawned { addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&spawned.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not start listening on {}",
                    bin.display(),
                    spawned.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(spawned)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time of the server so far.
    pub fn cpu_time(&self) -> Duration {
        proc_cpu_time(self.pid()).unwrap_or_default()
    }

    /// Resident memory of the server, in bytes.
    pub fn rss(&self) -> u64 {
        proc_rss(self.pid()).unwrap_or(0)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command for the server, placed on its own CPU under `--pin`.
fn command(bin: &std::path::Path) -> Command {
    let mut c = Command::new(bin);
    if let Some(set) = crate::pin::server_set() {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the child between fork and exec, where only async-signal-safe
        // calls are allowed; `restrict` makes one system call on a set made beforehand.
        unsafe {
            c.pre_exec(move || crate::pin::restrict(set));
        }
    }
    c
}

fn free_port() -> anyhow::Result<u16> {
    Ok(lockd_server::free_port()?)
}

fn proc_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / hz))
}

fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
