//! The listener: binds, accepts, enforces `maxClients` by refusing at once (the original
//! left extra clients waiting in the backlog), and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::shared::{Shared, Snapshot};
use crate::tokens::TokenStore;
use crate::{busy_poll, conn, expiry, tokens};

/// What a client past `maxClients` is told before the connection closes.
const REFUSED: &[u8] = b"-ERR max number of clients reached\r\n";

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cluster: {0}")]
    Cluster(#[from] lockd_raft::ClusterError),
    #[error(transparent)]
    Tokens(#[from] crate::tokens::NoRoom),
    #[error("cannot resolve listen address {address}: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
    #[error("data directory {dir}: {source}")]
    DataDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for admin HTTP on {address}: {source}")]
    Admin {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("TLS needs both a certificate and a key")]
    TlsIncomplete,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    token_store: Option<TokenStore>,
}

/// A view of a running server's state.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Why the server stopped by itself, if it did: this node's Raft failed (a full or
    /// failing disk, or an error openraft treats as fatal). Then the process should exit
    /// with an error, so that its service manager starts it again.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the TLS certificate and key again (on SIGHUP). New connections use them; on
    /// error the old ones stay. Without TLS, nothing to do.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::TlsError> {
        match &self.shared.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }
}

/// The admin address `--http-address` names: a bare port means loopback.
pub fn admin_address(a: &str) -> String {
    if a.parse::<u16>().is_ok() {
        format!("127.0.0.1:{a}")
    } else {
        a.to_string()
    }
}

/// Loads the TLS certificate and key as a start would (for `--check-config`).
pub fn check_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(), crate::tls::TlsError> {
    crate::tls::Tls::load(cert, key, false).map(|_| ())
}

/// Checks a data directory as a start would use it (for `--check-config`): it can be
/// made, written and fsynced, and its token record leaves room for the next tokens.
pub fn check_data_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    let err = |source| ServerError::DataDir {
        dir: dir.to_path_buf(),
        source,
    };
    let (store, recorded) = TokenStore::open(dir).map_err(err)?;
    let file = dir.join(crate::tokens::FILE);
    crate::tokens::first_and_limit(recorded, crate::tokens::clock_floor(), &file)?;
    store.probe().map_err(err)?;
    Ok(())
}

impl Server {
    /// Binds the listener with the real clock.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        Self::bind_with_clock(config, Clock::real()).await
    }

    pub async fn bind_with_clock(
        config: ServerConfig,
        clock: Clock,
    ) -> Result<Server, ServerError> {
        let address = format!("{}:{}", config.address, config.port);
        let addr = tokio::net::lookup_host(&address)
            .await
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
            })
            .map_err(|source| ServerError::Resolve { address, source })?;
        let listener = (|| {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(config.max_backlog.max(1))
        })()
        .map_err(|source| ServerError::Bind { addr, source })?;
        let admin = match &config.http_address {
            Some(a) => {
                let a = admin_address(a);
                let l = TcpListener::bind(&a)
                    .await
                    .map_err(|source| ServerError::Admin {
                        address: a.clone(),
                        source,
                    })?;
                Some(l)
            }
            None => None,
        };
        let data_dir = config.data_dir.clone();
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::Tls::load(c, k, config.tls_required)?),
            (None, None) if !config.tls_required => None,
            _ => return Err(ServerError::TlsIncomplete),
        };
        let cluster = config.cluster.clone();
        let mut shared = Shared::new(config, clock);
        shared.tls = tls;
        if let Some(cfg) = cluster {
            // The cluster's tokens are its replicated counter: no reservation file. Its
            // data directory is the Raft store's; one that a standalone lockd used keeps
            // its token limit, and the cluster's tokens start above it.
            let recorded = match std::fs::read_to_string(cfg.data_dir.join(crate::tokens::FILE)) {
                Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
                Err(_) => 0,
            };
            shared.cluster_token_floor = recorded.saturating_add(1);
            let mut cfg = cfg;
            cfg.token_floor = tokens::clock_floor().max(shared.cluster_token_floor);
            cfg.settings = shared.read(|t, _| lockd_core::Settings::of(t.config()));
            let shared = Arc::new(shared);
            let weak = Arc::downgrade(&shared);
            let node = lockd_raft::Cluster::start(
                cfg,
                shared.clone(),
                Box::new(move || {
                    if let Some(s) = weak.upgrade() {
                        s.cut_off();
                    }
                }),
            )
            .await?;
            *shared.cluster.write().unwrap_or_else(|p| p.into_inner()) = Some(node);
            return Ok(Server {
                listener,
                admin,
                shared,
                token_store: None,
            });
        }
        let token_store = match data_dir {
            Some(dir) => {
                let err = |source| ServerError::DataDir {
                    dir: dir.clone(),
                    source,
                };
                let (store, recorded) = TokenStore::open(&dir).map_err(err)?;
                let file = dir.join(crate::tokens::FILE);
                let (first, limit) =
                    crate::tokens::first_and_limit(recorded, crate::tokens::clock_floor(), &file)?;
                store.persist(limit).map_err(err)?;
                shared.init_tokens(first, Some(limit));
                Some(store)
            }
            None => {
                shared.init_tokens(crate::tokens::clock_floor(), None);
                None
            }
        };
        Ok(Server {
            listener,
            admin,
            shared: Arc::new(shared),
            token_store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where the admin HTTP server listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then closes every connection and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            listener,
            admin,
            shared,
            token_store,
        } = self;
        let tracker = TaskTracker::new();
        // Ended by the caller, or by this node's Raft failing: a node whose Raft stopped
        // would answer clients for a cluster that sees it as silent.
        let shutdown = shutdown.child_token();
        if let Some(node) = shared.cluster() {
            let (told, stop, watched) = (shared.clone(), shutdown.clone(), node.clone());
            tokio::spawn(async move {
                tokio::select! {
                    why = watched.failed() => {
                        tracing::error!(
                            "this node's Raft stopped: {why}; lockd stops so that it can be \
                             started again from its data directory"
                        );
                        *told.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                        stop.cancel();
                    }
                    _ = stop.cancelled() => {}
                }
            });
            // Clients are served once what this node's previous run left is ended, and
            // tokens are above what a standalone server on this machine issued.
            let joined = tokio::select! {
                r = node.join() => r,
                _ = shutdown.cancelled() => Err(lockd_raft::ClusterError::Shutdown),
            };
            if let Err(e) = joined {
                tracing::error!("cannot join the cluster: {e}");
            } else {
                let floor = tokens::clock_floor().max(shared.cluster_token_floor);
                tokio::select! {
                    _ = node.submit(vec![lockd_core::Command::RaiseTokens { floor }]) => {}
                    _ = shutdown.cancelled() => {}
                }
                tracing::info!(node = node.id, "joined the cluster");
                // The table applies with the cluster's settings; flags that disagree are
                // said to be ignored rather than applied differently on this node.
                let own = lockd_core::Settings {
                    max_locks: shared.config.max_locks,
                    grace_ms: shared.config.lock_timeout.as_millis() as u64,
                    max_waiters: shared.config.max_waiters,
                    max_waiters_per_key: shared.config.max_waiters_per_key,
                };
                let cluster = lockd_raft::Table::settings(&*shared);
                for (name, mine, theirs) in own.differences(&cluster) {
                    tracing::warn!(
                        "--{name} is {mine} on this node but {theirs} in the cluster (set when it \
                         was made): the cluster's {theirs} applies here too"
                    );
                }
            }
            tracker.spawn(shared.clone().propose_expiry(shutdown.clone()));
            tracker.spawn(shared.clone().commit_disconnects(shutdown.clone()));
        }
        if !shared.clustered {
            // The expiry timer is what releases dead sessions' locks: if it ever ended
            // other than by shutdown (a panic), start it again.
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            tracker.spawn(async move {
                loop {
                    let task = tokio::spawn(expiry::run(shared.clone(), shutdown.clone()));
                    let ended = task.await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tracing::error!(error = ?ended.err(), "the expiry timer stopped: restarting it");
                }
            });
        }
        if let Some(window) = shared.config.busy_poll {
            let (shared, stop) = (shared.clone(), shutdown.clone());
            tracker.spawn(async move { busy_poll::run(&shared.activity, window, stop).await });
        }
        if let Some(store) = token_store {
            tracker.spawn(tokens::reserve(shared.clone(), store, shutdown.clone()));
        }
        if let Some(l) = admin {
            tracker.spawn(crate::admin::serve(l, shared.clone(), shutdown.clone()));
            tracker.spawn(crate::history::run(shared.clone(), shutdown.clone()));
        }
        let permits = Arc::new(Semaphore::new(shared.config.max_clients));
        shared
            .ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracker.spawn(conn::serve(
                        stream,
                        peer,
                        shared.clone(),
                        shutdown.clone(),
                        permit,
                    ));
                }
                Err(_) => {
                    shared
                        .counters
                        .refused_clients
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%peer, max_clients = shared.config.max_clients, "refused client: maxClients reached");
                    let _ = stream.try_write(REFUSED);
                    drop(stream);
                }
            }
        }
        shared
            .ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        drop(listener);
        tracker.close();
        tracker.wait().await;
        if let Some(node) = shared.cluster() {
            node.shutdown().await;
            // The node holds the table; the table held the node: let go of both.
            *shared.cluster.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
        tracing::info!("lockd stopped");
    }
}
