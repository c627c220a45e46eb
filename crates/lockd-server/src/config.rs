//! The server's settings, already validated (the binary parses flags, environment and
//! file into this).

use std::time::Duration;

use lockd_proto::legacy::AuthScheme;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub address: String,
    pub port: u16,
    /// The shared secret: signs legacy requests, authenticates native connections.
    pub auth_key: String,
    /// The operators' secret (REVOKE, SESSION KILL); `None`: `auth_key` grants that too.
    pub admin_key: Option<String>,
    pub auth_scheme: AuthScheme,
    /// Seconds a dead session keeps its locks (`lockTimeout`).
    pub lock_timeout: Duration,
    /// Most locks held at once (`maxLocks`).
    pub max_locks: u64,
    /// Most connections at once (`maxClients`); past it a client is refused at once.
    pub max_clients: usize,
    /// The listen backlog (`maxBacklog`).
    pub max_backlog: u32,
    /// A connection whose unsent replies pass this many bytes (a client that does not
    /// read) is closed.
    pub max_pending_output: usize,
    /// Close connections idle this long; `None`: never (the original's behaviour).
    pub idle_timeout: Option<Duration>,
    /// Where the fencing-token high-water mark is kept; `None`: tokens start from the
    /// clock (see the `tokens` module).
    pub data_dir: Option<std::path::PathBuf>,
    /// TLS certificate chain and private key (PEM). With them, TLS clients are served on
    /// the same port; with `tls_required` too, plaintext clients are refused.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub tls_required: bool,
    /// Where the admin HTTP server listens (metrics, health, introspection); `None`: off.
    pub http_address: Option<String>,
    /// Most queued ACQUIREs at once, and on one key.
    pub max_waiters: usize,
    pub max_waiters_per_key: usize,
    /// After each request, keep polling for the next one this long instead of sleeping
    /// (see the `busy_poll` module); `None`: off.
    pub busy_poll: Option<Duration>,
    /// The longest grace period a client may ask for with `SESSION GRACE`; longer asks
    /// are capped to it, so no client can keep its locks past what the operator allows.
    pub max_grace: Duration,
    /// A connection must be logged in within this long of connecting (native: a correct
    /// AUTH; legacy: a correctly signed line), or it is closed, so that a client without
    /// the key holds a connection slot this long at most. The TLS handshake counts.
    /// `None`: never closed for this.
    pub login_timeout: Option<Duration>,
    /// A deliberately broken lock table, for tests (see `lockd_core::Config::fault`):
    /// honoured only with the `fault-injection` feature.
    pub fault: lockd_core::Fault,
    /// Run as a node of a cluster (see docs/cluster.md); `None`: a standalone server.
    pub cluster: Option<lockd_raft::ClusterConfig>,
}

impl ServerConfig {
    /// The key that gives the admin right: `admin_key`, else `auth_key`.
    pub fn admin_key(&self) -> &str {
        self.admin_key.as_deref().unwrap_or(&self.auth_key)
    }

    /// The original daemon's defaults, listening on `address:port` with `auth_key`.
    pub fn new(address: impl Into<String>, port: u16, auth_key: impl Into<String>) -> Self {
        ServerConfig {
            address: address.into(),
            port,
            auth_key: auth_key.into(),
            admin_key: None,
            auth_scheme: AuthScheme::Both,
            lock_timeout: Duration::from_secs(60),
            max_locks: 10_000,
            max_clients: 1000,
            max_backlog: 100,
            max_pending_output: 1 << 20,
            idle_timeout: None,
            busy_poll: None,
            data_dir: None,
            http_address: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            max_waiters: 100_000,
            max_waiters_per_key: 10_000,
            max_grace: Duration::from_secs(3600),
            login_timeout: Some(Duration::from_secs(10)),
            fault: lockd_core::Fault::None,
            cluster: None,
        }
    }
}
