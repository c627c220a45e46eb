//! Options: flags (`--name value` or `--name=value`, kebab-case or the original's
//! camelCase), environment variables `LOCKD_*`, and an optional TOML file, in that order
//! of precedence; then the built-in defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use lockd_proto::legacy::AuthScheme;
use lockd_server::ServerConfig;
use serde::Deserialize;

/// Default port when none is given.
pub const DEFAULT_PORT: u16 = 7531;
/// Long enough to see the next holder's RELEASE after a hand-off on this kind of machine
/// (a client's wake-up and reply take 25-40 µs), short enough to cost little when the
/// chain ends.
const DEFAULT_BUSY_POLL_US: u64 = 50;
const DEFAULT_ADDRESS: &str = "127.0.0.1";
/// The longest grace a client may ask for unless the operator says otherwise: an hour.
const DEFAULT_MAX_GRACE_SECS: u64 = 3600;
/// Durations in seconds are at most a year: far past any sane grace period, and far from
/// overflowing when counted in milliseconds.
const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// lockd: a lock server. Speaks MediaWiki's LockServerDaemon protocol (a drop-in
/// replacement) and a native RESP protocol on the same port.
///
/// With no options, lockd listens on 127.0.0.1:7531 with a freshly generated auth key,
/// printed and written to the key file.
#[derive(Parser, Debug, Default)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long, env = "LOCKD_ADDRESS")]
    pub address: Option<String>,

    /// Port to listen on [default: 7531]
    #[arg(long, env = "LOCKD_PORT")]
    pub port: Option<u16>,

    /// Shared secret that signs legacy requests and authenticates native clients
    /// [default: generated, see --key-file]
    #[arg(
        long = "auth-key",
        alias = "authKey",
        alias = "authkey",
        env = "LOCKD_AUTH_KEY",
        hide_env_values = true
    )]
    pub auth_key: Option<String>,

    /// A second secret for operators: only connections authenticated with it may revoke
    /// locks or end sessions (REVOKE, SESSION KILL, the admin HTTP's revocation). Unset:
    /// the auth key carries that right too
    #[arg(
        long = "admin-key",
        alias = "adminKey",
        env = "LOCKD_ADMIN_KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,

    /// Legacy signature schemes accepted: hmac (MediaWiki's LSLockManager), sha1 (the
    /// seed daemon) or both [default: both]
    #[arg(long = "auth-scheme", alias = "authScheme", env = "LOCKD_AUTH_SCHEME")]
    pub auth_scheme: Option<AuthScheme>,

    /// Seconds a session keeps its locks after its connection is lost [default: 60]
    #[arg(
        long = "lock-timeout",
        alias = "lockTimeout",
        env = "LOCKD_LOCK_TIMEOUT"
    )]
    pub lock_timeout: Option<u64>,

    /// Longest grace period a native client may ask for with SESSION GRACE, in seconds;
    /// longer asks are capped to it. At least --lock-timeout [default: 3600, or
    /// --lock-timeout if larger]
    #[arg(long = "max-grace", alias = "maxGrace", env = "LOCKD_MAX_GRACE")]
    pub max_grace: Option<u64>,

    /// Most locks held at once, over all sessions [default: 10000]
    #[arg(long = "max-locks", alias = "maxLocks", env = "LOCKD_MAX_LOCKS")]
    pub max_locks: Option<u64>,

    /// Most client connections at once; past it a client is refused at once [default: 1000]
    #[arg(long = "max-clients", alias = "maxClients", env = "LOCKD_MAX_CLIENTS")]
    pub max_clients: Option<usize>,

    /// Listen backlog [default: 100]
    #[arg(long = "max-backlog", alias = "maxBacklog", env = "LOCKD_MAX_BACKLOG")]
    pub max_backlog: Option<u32>,

    /// Close a connection whose unread replies pass this many bytes [default: 1048576]
    #[arg(
        long = "max-pending-output",
        alias = "maxPendingOutput",
        env = "LOCKD_MAX_PENDING_OUTPUT"
    )]
    pub max_pending_output: Option<usize>,

    /// Close connections idle this many seconds; 0 never does [default: 0]
    #[arg(
        long = "idle-timeout",
        alias = "idleTimeout",
        env = "LOCKD_IDLE_TIMEOUT"
    )]
    pub idle_timeout: Option<u64>,

    /// When a queued request is granted and others still wait, keep polling for the next
    /// request instead of sleeping until none came for this many microseconds: faster hand-offs down a queue,
    /// for CPU while they go on; traffic without queues is unaffected; 0 is off
    /// [default: 50]
    #[arg(
        long = "busy-poll-us",
        alias = "busyPollUs",
        env = "LOCKD_BUSY_POLL_US"
    )]
    pub busy_poll_us: Option<u64>,

    /// Directory for durable state: the fencing-token high-water mark, so tokens keep
    /// increasing across restarts [default: none; tokens then start from the clock]
    #[arg(long = "data-dir", alias = "dataDir", env = "LOCKD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Most queued (waiting) native ACQUIREs at once [default: 100000]
    #[arg(long = "max-waiters", alias = "maxWaiters", env = "LOCKD_MAX_WAITERS")]
    pub max_waiters: Option<usize>,

    /// Most queued native ACQUIREs on one key [default: 10000]
    #[arg(
        long = "max-waiters-per-key",
        alias = "maxWaitersPerKey",
        env = "LOCKD_MAX_WAITERS_PER_KEY"
    )]
    pub max_waiters_per_key: Option<usize>,

    /// Run as node N (1 to 65535) of a cluster (docs/cluster.md); needs --raft-address
    /// and --data-dir [default: a standalone server]
    #[arg(long = "node-id", alias = "nodeId", env = "LOCKD_NODE_ID")]
    pub node_id: Option<u64>,

    /// Where this node's Raft port listens, HOST:PORT (peers only: they prove they know
    /// the auth key)
    #[arg(
        long = "raft-address",
        alias = "raftAddress",
        env = "LOCKD_RAFT_ADDRESS"
    )]
    pub raft_address: Option<String>,

    /// The first members, ID=HOST:PORT,...; used only when --data-dir holds no cluster
    /// yet (a restarted node rejoins from its own data)
    #[arg(
        long = "initial-cluster",
        alias = "initialCluster",
        env = "LOCKD_INITIAL_CLUSTER"
    )]
    pub initial_cluster: Option<String>,

    /// The Raft election timeout, MIN-MAX in milliseconds; heartbeats every MIN/2. A leader
    /// killed costs clients about MAX + MIN..MAX + a vote (docs/cluster.md "Failover"):
    /// raise it for links with long round trips or disks slow to fsync, the same on every
    /// node [default: 200-400]
    #[arg(
        long = "election-timeout",
        alias = "electionTimeout",
        env = "LOCKD_ELECTION_TIMEOUT",
        value_name = "MIN-MAX"
    )]
    pub election_timeout: Option<String>,

    /// Worker threads; 1 runs everything on one thread, which costs the least CPU per
    /// request [default: 1]
    #[arg(long, env = "LOCKD_THREADS")]
    pub threads: Option<usize>,

    /// Where a generated auth key is written [default:
    /// $XDG_STATE_HOME/lockd/auth-key or ~/.local/state/lockd/auth-key]
    #[arg(long = "key-file", alias = "keyFile", env = "LOCKD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Serve metrics (/metrics), health (/healthz, /readyz), JSON introspection (/v1/...)
    /// and a status page (/) over HTTP here: ADDRESS:PORT, or a port for loopback. A
    /// non-loopback address requires the auth key, as a bearer token or as the password of
    /// HTTP Basic (which a browser prompts for) [default: off]
    #[arg(
        long = "http-address",
        alias = "httpAddress",
        env = "LOCKD_HTTP_ADDRESS"
    )]
    pub http_address: Option<String>,

    /// TLS certificate chain (PEM). With --tls-key, TLS clients are served on the same port
    /// (detected by their first byte); reloaded on SIGHUP
    #[arg(long = "tls-cert", alias = "tlsCert", env = "LOCKD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM)
    #[arg(long = "tls-key", alias = "tlsKey", env = "LOCKD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Cluster: the CA certificate(s) (PEM) that sign the nodes' certificates. With
    /// --tls-cert/--tls-key and --node-id the Raft port speaks mutual TLS, each node's
    /// certificate valid for its --raft-address [default: the node's own --tls-cert]
    #[arg(long = "tls-ca", alias = "tlsCa", env = "LOCKD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Refuse clients that do not use TLS
    #[arg(
        long = "tls-required",
        alias = "tlsRequired",
        env = "LOCKD_TLS_REQUIRED",
        // As in the environment people write it: 1/0, yes/no, on/off, true/false.
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    pub tls_required: bool,

    /// Seconds a new connection has to log in (a correct native AUTH, or a correctly
    /// signed legacy line) before it is closed, TLS handshake included; 0 never closes
    /// [default: 10]
    #[arg(
        long = "login-timeout",
        alias = "loginTimeout",
        env = "LOCKD_LOGIN_TIMEOUT"
    )]
    pub login_timeout: Option<u64>,

    /// Log format: text or json [default: text]
    #[arg(long = "log-format", alias = "logFormat", env = "LOCKD_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,

    /// Check the options (and the config file) and exit: 0 if they are valid
    #[arg(long = "check-config", alias = "checkConfig")]
    pub check_config: bool,

    /// Print shell completions for lockd (bash, zsh, fish, elvish, powershell) and exit
    #[arg(
        long = "print-completions",
        alias = "printCompletions",
        value_name = "SHELL",
        hide = true
    )]
    pub print_completions: Option<clap_complete::Shell>,

    /// Print lockd's man page (roff) and exit
    #[arg(long = "print-man", alias = "printMan", hide = true)]
    pub print_man: bool,

    /// TOML file with any of these options (kebab-case or camelCase names); flags and
    /// environment variables override it
    #[arg(long, env = "LOCKD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The options a TOML file may set.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileOptions {
    address: Option<String>,
    port: Option<u16>,
    #[serde(alias = "authKey")]
    auth_key: Option<String>,
    #[serde(alias = "adminKey")]
    admin_key: Option<String>,
    #[serde(alias = "authScheme")]
    auth_scheme: Option<String>,
    #[serde(alias = "lockTimeout")]
    lock_timeout: Option<u64>,
    #[serde(alias = "maxGrace")]
    max_grace: Option<u64>,
    #[serde(alias = "loginTimeout")]
    login_timeout: Option<u64>,
    #[serde(alias = "maxLocks")]
    max_locks: Option<u64>,
    #[serde(alias = "maxClients")]
    max_clients: Option<usize>,
    #[serde(alias = "maxBacklog")]
    max_backlog: Option<u32>,
    #[serde(alias = "maxPendingOutput")]
    max_pending_output: Option<usize>,
    #[serde(alias = "idleTimeout")]
    idle_timeout: Option<u64>,
    #[serde(alias = "busyPollUs")]
    busy_poll_us: Option<u64>,
    #[serde(alias = "keyFile")]
    key_file: Option<PathBuf>,
    threads: Option<usize>,
    #[serde(alias = "logFormat")]
    log_format: Option<String>,
    #[serde(alias = "httpAddress")]
    http_address: Option<String>,
    #[serde(alias = "tlsCert")]
    tls_cert: Option<PathBuf>,
    #[serde(alias = "tlsKey")]
    tls_key: Option<PathBuf>,
    #[serde(alias = "tlsRequired")]
    tls_required: Option<bool>,
    #[serde(alias = "dataDir")]
    data_dir: Option<PathBuf>,
    #[serde(alias = "maxWaiters")]
    max_waiters: Option<usize>,
    #[serde(alias = "maxWaitersPerKey")]
    max_waiters_per_key: Option<usize>,
    #[serde(alias = "nodeId")]
    node_id: Option<u64>,
    #[serde(alias = "tlsCa")]
    tls_ca: Option<PathBuf>,
    #[serde(alias = "raftAddress")]
    raft_address: Option<String>,
    #[serde(alias = "initialCluster")]
    initial_cluster: Option<String>,
    #[serde(alias = "electionTimeout")]
    election_timeout: Option<String>,
}

/// Where the auth key came from.
#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A flag, the environment or the config file.
    Given,
    /// Generated at this start and written to this file (there was none).
    Generated(PathBuf),
    /// Read from this key file, written by an earlier start.
    File(PathBuf),
}

pub struct Settings {
    pub server: ServerConfig,
    pub threads: usize,
    pub json_logs: bool,
    pub key_source: KeySource,
}

/// The sample config's placeholder key: refused off loopback.
const PLACEHOLDER_KEY_PREFIX: &str = "change-me";

pub fn resolve(cli: Cli) -> anyhow::Result<Settings> {
    let file = match &cli.config {
        Some(path) => read_file(path)?,
        None => FileOptions::default(),
    };
    let auth_scheme = match (cli.auth_scheme, file.auth_scheme) {
        (Some(s), _) => s,
        (None, Some(s)) => s
            .parse()
            .map_err(|e: String| anyhow::anyhow!("auth-scheme in the config file: {e}"))?,
        (None, None) => AuthScheme::Both,
    };
    let max_clients = cli.max_clients.or(file.max_clients).unwrap_or(1000);
    if max_clients == 0 {
        bail!("--max-clients must be at least 1");
    }
    let mut server = ServerConfig::new(
        cli.address
            .or(file.address)
            .unwrap_or_else(|| DEFAULT_ADDRESS.into()),
        cli.port.or(file.port).unwrap_or(DEFAULT_PORT),
        String::new(),
    );
    server.auth_scheme = auth_scheme;
    let lock_timeout = cli.lock_timeout.or(file.lock_timeout).unwrap_or(60);
    if lock_timeout > MAX_SECONDS {
        bail!("--lock-timeout must be at most {MAX_SECONDS} seconds (a year); got {lock_timeout}");
    }
    server.lock_timeout = Duration::from_secs(lock_timeout);
    let max_grace = match cli.max_grace.or(file.max_grace) {
        None => lock_timeout.max(DEFAULT_MAX_GRACE_SECS),
        Some(g) if g > MAX_SECONDS => {
            bail!("--max-grace must be at most {MAX_SECONDS} seconds (a year); got {g}")
        }
        Some(g) if g < lock_timeout => bail!(
            "--max-grace ({g} s) must be at least --lock-timeout ({lock_timeout} s): \
             the default grace period cannot be longer than the longest one allowed"
        ),
        Some(g) => g,
    };
    server.max_grace = Duration::from_secs(max_grace);
    server.max_locks = cli.max_locks.or(file.max_locks).unwrap_or(10_000);
    server.max_clients = max_clients;
    server.max_backlog = cli.max_backlog.or(file.max_backlog).unwrap_or(100);
    server.max_pending_output = cli
        .max_pending_output
        .or(file.max_pending_output)
        .unwrap_or(1 << 20);
    if server.max_pending_output < 1024 {
        bail!("--max-pending-output must be at least 1024 bytes");
    }
    server.idle_timeout = match cli.idle_timeout.or(file.idle_timeout).unwrap_or(0) {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    server.busy_poll = match cli
        .busy_poll_us
        .or(file.busy_poll_us)
        .unwrap_or(DEFAULT_BUSY_POLL_US)
    {
        0 => None,
        us if us > 1_000_000 => bail!("--busy-poll-us must be at most 1000000 (one second)"),
        us => Some(Duration::from_micros(us)),
    };
    server.data_dir = cli.data_dir.or(file.data_dir);
    server.http_address = cli.http_address.or(file.http_address);
    server.tls_cert = cli.tls_cert.or(file.tls_cert);
    server.tls_key = cli.tls_key.or(file.tls_key);
    server.tls_required = cli.tls_required || file.tls_required.unwrap_or(false);
    if server.tls_cert.is_some() != server.tls_key.is_some() {
        bail!("--tls-cert and --tls-key go together");
    }
    if server.tls_required && server.tls_cert.is_none() {
        bail!("--tls-required needs --tls-cert and --tls-key");
    }
    server.max_waiters = cli.max_waiters.or(file.max_waiters).unwrap_or(100_000);
    server.max_waiters_per_key = cli
        .max_waiters_per_key
        .or(file.max_waiters_per_key)
        .unwrap_or(10_000);
    let json_logs = match cli.log_format.or(file.log_format).as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => bail!("log-format {other:?} in the config file: expected text or json"),
    };
    server.login_timeout = match cli.login_timeout.or(file.login_timeout).unwrap_or(10) {
        0 => None,
        s if s > MAX_SECONDS => bail!("--login-timeout must be at most {MAX_SECONDS} seconds"),
        s => Some(Duration::from_secs(s)),
    };
    if let Some(s) = cli
        .idle_timeout
        .or(file.idle_timeout)
        .filter(|&s| s > MAX_SECONDS)
    {
        bail!("--idle-timeout must be at most {MAX_SECONDS} seconds; got {s}");
    }
    let (auth_key, key_source) = match cli.auth_key.or(file.auth_key) {
        Some(k) if k.is_empty() => bail!("--auth-key must not be empty"),
        Some(k) => (k, KeySource::Given),
        None => {
            let path = cli
                .key_file
                .or(file.key_file)
                .unwrap_or_else(lockd_client::default_key_file);
            // Checking a configuration reads an existing key file, and writes none.
            match read_key_file(&path, !cli.check_config)? {
                Some(k) => (k, KeySource::File(path)),
                None if cli.check_config => (
                    String::from("(generated at start)"),
                    KeySource::Generated(path),
                ),
                None => {
                    let key = generate_key();
                    write_key_file(&path, &key)?;
                    (key, KeySource::Generated(path))
                }
            }
        }
    };
    server.auth_key = auth_key;
    server.admin_key = match cli.admin_key.or(file.admin_key) {
        Some(k) if k.is_empty() => bail!("--admin-key must not be empty"),
        other => other,
    };
    server.cluster = cluster_config(
        cli.node_id.or(file.node_id),
        cli.raft_address.or(file.raft_address),
        cli.initial_cluster.or(file.initial_cluster),
        cli.election_timeout.or(file.election_timeout),
        &server,
    )?;
    let tls_ca = cli.tls_ca.or(file.tls_ca);
    match (&mut server.cluster, &server.tls_cert, &server.tls_key) {
        (Some(c), Some(cert), Some(key)) => {
            c.tls = Some(lockd_server::PeerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: tls_ca.unwrap_or_else(|| cert.clone()),
            })
        }
        _ if tls_ca.is_some() => bail!(
            "--tls-ca is the CA of the cluster's node certificates: it needs --node-id, \
             --tls-cert and --tls-key"
        ),
        _ => {}
    }
    let threads = cli.threads.or(file.threads).unwrap_or(1);
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    Ok(Settings {
        server,
        threads,
        json_logs,
        key_source,
    })
}

/// Every effective option but the key, for the start-up line and `--check-config`.
pub fn describe(c: &ServerConfig, threads: usize) -> String {
    let secs = |d: Option<Duration>| d.map_or("off".to_string(), |d| format!("{} s", d.as_secs()));
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("none".to_string(), |p| p.display().to_string())
    };
    format!(
        "address {}:{}, auth-scheme {:?}, lock-timeout {} s, max-grace {} s, max-locks {}, \
         max-clients {}, max-backlog {}, max-pending-output {} B, idle-timeout {}, \
         login-timeout {}, max-waiters {}, max-waiters-per-key {}, busy-poll-us {}, \
         data-dir {}, http-address {}, tls-cert {}, tls-key {}, tls-required {}, threads {}",
        c.address,
        c.port,
        c.auth_scheme,
        c.lock_timeout.as_secs(),
        c.max_grace.as_secs(),
        c.max_locks,
        c.max_clients,
        c.max_backlog,
        c.max_pending_output,
        secs(c.idle_timeout),
        secs(c.login_timeout),
        c.max_waiters,
        c.max_waiters_per_key,
        c.busy_poll.map_or(0, |d| d.as_micros()),
        path(&c.data_dir),
        c.http_address.as_deref().unwrap_or("off"),
        path(&c.tls_cert),
        path(&c.tls_key),
        c.tls_required,
        threads
    )
}

/// What a real start would check beyond parsing, for `--check-config`: the addresses, the
/// TLS files, the data directory, the key. Returns notes that are not errors (a port in
/// use, perhaps by the running lockd that this check precedes).
pub fn check(s: &Settings) -> anyhow::Result<Vec<String>> {
    let c = &s.server;
    let mut notes = Vec::new();
    let listen = check_address("--address", &c.address, c.port)?;
    bind_check(listen, "--address/--port", &mut notes)?;
    if let Some(h) = &c.http_address {
        let a = lockd_server::admin_address(h);
        let addr: std::net::SocketAddr = a
            .parse()
            .map_err(|_| anyhow::anyhow!("--http-address {h:?}: expected a port, or IP:PORT"))?;
        bind_check(addr, "--http-address", &mut notes)?;
    }
    if let (Some(cert), Some(key)) = (&c.tls_cert, &c.tls_key) {
        lockd_server::check_tls(cert, key)?;
    }
    if let Some(dir) = &c.data_dir {
        lockd_server::check_data_dir(dir)?;
    }
    if c.auth_key.starts_with(PLACEHOLDER_KEY_PREFIX) && !listen.ip().is_loopback() {
        bail!(
            "the auth key is the sample config's placeholder ({PLACEHOLDER_KEY_PREFIX}...) and \
             lockd would listen on {}: set a long random key (auth-key in the config file)",
            listen.ip()
        );
    }
    Ok(notes)
}

/// The cluster settings, checked: all or none of them, and the node in its own list.
fn cluster_config(
    node_id: Option<u64>,
    raft_address: Option<String>,
    initial: Option<String>,
    election: Option<String>,
    server: &ServerConfig,
) -> anyhow::Result<Option<lockd_server::ClusterConfig>> {
    let Some(id) = node_id else {
        if raft_address.is_some() || initial.is_some() || election.is_some() {
            bail!("--raft-address, --initial-cluster and --election-timeout need --node-id (this node's id in the cluster)");
        }
        return Ok(None);
    };
    if id == 0 || id > u64::from(u16::MAX) {
        bail!("--node-id must be 1 to 65535; got {id}");
    }
    let Some(raft) = raft_address else {
        bail!("--node-id needs --raft-address (where this node's Raft port listens)");
    };
    let Some(dir) = server.data_dir.clone() else {
        bail!("--node-id needs --data-dir (where the node keeps its Raft log and snapshots)");
    };
    let mut members = std::collections::BTreeMap::new();
    for part in initial
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (i, addr) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--initial-cluster: {part:?} is not ID=HOST:PORT"))?;
        let i: u64 = i
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--initial-cluster: {i:?} is not a node id"))?;
        if members.insert(i, addr.trim().to_string()).is_some() {
            bail!("--initial-cluster names node {i} twice");
        }
    }
    // A node not in the list (or with no list) joins a running cluster: it waits to be
    // added (`lockctl cluster add`). Listed, it must be listed with its own address.
    if let Some(listed) = members.get(&id) {
        if *listed != raft {
            bail!("--initial-cluster must list this node as {id}={raft} (it lists {listed})");
        }
    }
    let mut c = lockd_server::ClusterConfig::new(id, &raft, dir, server.auth_key.as_bytes());
    c.initial = members;
    if let Some(e) = election {
        let (min, max) = election_timeout(&e)?;
        c.election_min_ms = min;
        c.election_max_ms = max;
        c.heartbeat_ms = min / 2;
    }
    Ok(Some(c))
}

/// `--election-timeout MIN-MAX`, checked: what a cluster can run with.
fn election_timeout(text: &str) -> anyhow::Result<(u64, u64)> {
    let bad = || {
        anyhow::anyhow!(
            "--election-timeout {text:?}: give MIN-MAX in milliseconds, 100 <= MIN < MAX <= 60000 (e.g. 200-400)"
        )
    };
    let (min, max) = text.split_once('-').ok_or_else(bad)?;
    let min: u64 = min.trim().parse().map_err(|_| bad())?;
    let max: u64 = max.trim().parse().map_err(|_| bad())?;
    if min < 100 || min >= max || max > 60_000 {
        return Err(bad());
    }
    Ok((min, max))
}

/// The listen address: an IP address or a host name, without a port (the port is its own
/// option).
fn check_address(what: &str, address: &str, port: u16) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    if address.parse::<std::net::SocketAddr>().is_ok() {
        bail!("{what} {address:?} has a port in it: give the port with --port");
    }
    (address, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| anyhow::anyhow!("{what} {address:?} is not an address lockd can listen on"))
}

/// Binds `addr` and lets it go; a port in use is a note (it may be the lockd this check
/// precedes), anything else an error.
fn bind_check(
    addr: std::net::SocketAddr,
    what: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            notes.push(format!("{what} {addr} is in use now (by a running lockd?)"));
            Ok(())
        }
        Err(e) => bail!("{what} {addr}: cannot listen there: {e}"),
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileOptions> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
}

fn generate_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..40)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The key an earlier start wrote to `path`, if there is one. A file that others may
/// read is tightened to 0600 when `fix`, else refused.
fn read_key_file(path: &Path, fix: bool) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read key file {}", path.display()))
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        if !fix {
            bail!(
                "key file {} can be read by others (mode {mode:04o}): chmod 600 it",
                path.display()
            );
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(
            || {
                format!(
                    "key file {} can be read by others (mode {mode:04o}) and cannot be tightened",
                    path.display()
                )
            },
        )?;
    }
    let key = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let key = key.trim();
    if key.is_empty() {
        bail!(
            "key file {} is empty: delete it to have a key generated",
            path.display()
        );
    }
    Ok(Some(key.to_string()))
}

fn write_key_file(path: &Path, key: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write key file {}", path.display()))?;
    writeln!(f, "{key}").with_context(|| format!("cannot write key file {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lockd").chain(args.iter().copied()))
    }

    #[test]
    fn accepts_both_spellings_and_forms() {
        let a = parse(&[
            "--address=0.0.0.0",
            "--port",
            "8000",
            "--authKey=s3cret",
            "--lockTimeout=5",
            "--max-locks",
            "7",
        ])
        .unwrap();
        assert_eq!(a.address.as_deref(), Some("0.0.0.0"));
        assert_eq!(a.port, Some(8000));
        assert_eq!(a.auth_key.as_deref(), Some("s3cret"));
        assert_eq!(a.lock_timeout, Some(5));
        assert_eq!(a.max_locks, Some(7));
        let b = parse(&[
            "--auth-key",
            "k",
            "--maxClients=3",
            "--maxBacklog",
            "9",
            "--auth-scheme=hmac",
        ])
        .unwrap();
        assert_eq!(b.max_clients, Some(3));
        assert_eq!(b.max_backlog, Some(9));
        assert_eq!(b.auth_scheme, Some(AuthScheme::Hmac));
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = parse(&["--port", "99999"]).unwrap_err().to_string();
        assert!(e.contains("--port"), "{e}");
        let e = parse(&["--maxLocks=many"]).unwrap_err().to_string();
        assert!(e.contains("--max-locks"), "{e}");
        let e = parse(&["--auth-scheme", "md5"]).unwrap_err().to_string();
        assert!(e.contains("--auth-scheme"), "{e}");
        let e = parse(&["--bogus"]).unwrap_err().to_string();
        assert!(e.contains("--bogus"), "{e}");
    }

    #[test]
    fn grace_limits_are_checked_and_never_wrap() {
        let r = |args: &[&str]| {
            let mut a = vec!["--auth-key", "k"];
            a.extend_from_slice(args);
            resolve(parse(&a).unwrap())
        };
        let e = r(&["--lock-timeout", "18446744073709552"]).err().unwrap();
        assert!(
            e.to_string().contains("--lock-timeout must be at most"),
            "{e}"
        );
        let e = r(&["--lock-timeout", "120", "--max-grace", "60"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("at least --lock-timeout"), "{e}");
        let s = r(&["--lock-timeout", "7200"]).unwrap();
        assert_eq!(s.server.max_grace, Duration::from_secs(7200));
        let s = r(&["--max-grace", "600"]).unwrap();
        assert_eq!(s.server.max_grace, Duration::from_secs(600));
        assert_eq!(r(&[]).unwrap().server.max_grace, Duration::from_secs(3600));
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockd.toml");
        std::fs::write(
            &path,
            "port = 9000\nauthKey = \"fromfile\"\nmax-locks = 3\nlockTimeout = 9\n",
        )
        .unwrap();
        let cli = parse(&["--config", path.to_str().unwrap(), "--max-locks", "4"]).unwrap();
        let s = resolve(cli).unwrap();
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.server.auth_key, "fromfile");
        assert_eq!(s.server.max_locks, 4);
        assert_eq!(s.server.lock_timeout, Duration::from_secs(9));
        assert_eq!(s.key_source, KeySource::Given);
    }

    #[test]
    fn the_admin_key_comes_from_a_flag_or_the_file_and_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockd.toml");
        std::fs::write(&path, "auth-key = \"k\"\nadmin-key = \"ops\"\n").unwrap();
        let s = resolve(parse(&["--config", path.to_str().unwrap()]).unwrap()).unwrap();
        assert_eq!(s.server.admin_key.as_deref(), Some("ops"));
        assert_eq!(s.server.admin_key(), "ops");
        let r = |args: &[&str]| {
            let mut a = vec!["--auth-key", "k"];
            a.extend_from_slice(args);
            resolve(parse(&a).unwrap())
        };
        let s = r(&["--adminKey", "flag"]).unwrap();
        assert_eq!(s.server.admin_key.as_deref(), Some("flag"));
        let s = r(&[]).unwrap();
        assert_eq!(
            s.server.admin_key(),
            s.server.auth_key,
            "unset: the auth key's right"
        );
        let e = r(&["--admin-key", ""]).err().unwrap();
        assert_eq!(e.to_string(), "--admin-key must not be empty");
    }

    #[test]
    fn file_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "prot = 9000\n").unwrap();
        let e = resolve(parse(&["--config", path.to_str().unwrap()]).unwrap())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("prot"), "{e:#}");
        let e = resolve(parse(&["--config", "/nonexistent/x.toml"]).unwrap())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("/nonexistent/x.toml"), "{e:#}");
    }

    #[test]
    fn no_key_generates_and_writes_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/auth-key");
        let cli = parse(&["--key-file", path.to_str().unwrap()]).unwrap();
        let s = resolve(cli).unwrap();
        assert_eq!(s.key_source, KeySource::Generated(path.clone()));
        let key = s.server.auth_key.clone();
        assert_eq!(key.len(), 40);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), key);
        assert_eq!(
            (s.server.address.as_str(), s.server.port),
            ("127.0.0.1", DEFAULT_PORT)
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// Issue 11, defect 6: a keyless start reuses the key it wrote before, and tightens a
    /// file others can read.
    #[test]
    fn a_keyless_start_keeps_the_key_it_wrote_before() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth-key");
        let p = path.to_str().unwrap();
        let first = resolve(parse(&["--key-file", p]).unwrap()).unwrap();
        let again = resolve(parse(&["--key-file", p]).unwrap()).unwrap();
        assert_eq!(again.server.auth_key, first.server.auth_key);
        assert_eq!(again.key_source, KeySource::File(path.clone()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A check refuses the loose file and changes nothing; a start tightens it.
        let e = resolve(parse(&["--key-file", p, "--check-config"]).unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let third = resolve(parse(&["--key-file", p]).unwrap()).unwrap();
        assert_eq!(third.server.auth_key, first.server.auth_key);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// Issue 11, defect 7: every option also has its camelCase name.
    #[test]
    fn every_option_has_a_camel_case_name() {
        use clap::CommandFactory;
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if !long.contains('-') {
                continue;
            }
            let mut camel = String::new();
            let mut up = false;
            for ch in long.chars() {
                if ch == '-' {
                    up = true;
                } else if up {
                    camel.extend(ch.to_uppercase());
                    up = false;
                } else {
                    camel.push(ch);
                }
            }
            let aliases: Vec<&str> = arg.get_all_aliases().unwrap_or_default();
            assert!(
                aliases.contains(&camel.as_str()),
                "--{long} has no alias --{camel}"
            );
        }
    }
}
