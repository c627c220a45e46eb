//! Where commands go. A standalone server applies a command at once under the table's
//! mutex; a cluster node commits it through Raft and applies it from the log (as every
//! node does). The protocol handlers build the same commands and render the same outcomes
//! either way: they call [`Shared::run_native`]-style helpers in `native` and `legacy`,
//! which take this module's [`Committed`] in the cluster case.
//!
//! The cluster's state machine is this server's own table: [`Shared`] implements
//! [`lockd_raft::Table`], applying each committed batch under the mutex, registering the
//! waits of this node's own queued requests, and delivering grants to local waiters.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use lockd_core::{BadImage, Command, LockTable, Millis, Outcome, TableImage};
use lockd_raft::{Batch, Cluster, ClusterError, Table};
use tokio_util::sync::CancellationToken;

use crate::shared::{log_expired, Shared};

/// The outcomes of committed commands, or why they were not committed.
pub(crate) type Committed = Result<Vec<Outcome>, ClusterError>;
pub(crate) type CommitFuture = Pin<Box<dyn Future<Output = Committed> + Send>>;

impl Shared {
    /// The cluster this node belongs to (set once it started).
    pub(crate) fn cluster(&self) -> Option<Arc<Cluster<Shared>>> {
        self.cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Commits `cmds` through the cluster.
    pub(crate) fn submit(&self, cmds: Vec<Command>) -> CommitFuture {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            for c in &cmds {
                // A Disconnect is what ends the entry, not what needs one.
                if let (Some(conn), false) = (c.conn(), matches!(c, Command::Disconnect { .. })) {
                    touched.insert(conn);
                }
            }
        }
        match self.cluster() {
            Some(c) => Box::pin(async move { c.submit(cmds).await }),
            None => {
                Box::pin(async { Err(ClusterError::NoQuorum("the node is not started".into())) })
            }
        }
    }

    /// Applies one command that comes from no client connection (an operator's, from the
    /// admin HTTP): at once on a standalone server, committed in a cluster.
    pub(crate) async fn execute(&self, cmd: Command) -> Result<Outcome, ClusterError> {
        if !self.clustered {
            let o = self.with(|core, now| core.apply(&cmd, now));
            self.expiry_changed.notify_one();
            return Ok(o);
        }
        let mut out = self.submit(vec![cmd]).await?;
        Ok(out.pop().expect("one outcome per command"))
    }

    /// A client connection of this node closed: its sessions die, in the cluster. One
    /// task commits the closed connections, many per entry, retrying until committed (if
    /// this node dies first, the cluster declares it down, which ends the connections'
    /// sessions all the same). What waits costs 8 bytes a connection.
    pub(crate) fn disconnect_in_cluster(&self, conn: lockd_core::ConnId) {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        self.closed_notify.notify_one();
    }

    /// The task behind [`Shared::disconnect_in_cluster`].
    pub(crate) async fn commit_disconnects(self: Arc<Self>, shutdown: CancellationToken) {
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            let conns = std::mem::take(&mut *self.closed.lock().unwrap_or_else(|p| p.into_inner()));
            if conns.is_empty() {
                tokio::select! {
                    _ = self.closed_notify.notified() => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            let cmds = conns
                .iter()
                .map(|&conn| Command::Disconnect { conn })
                .collect();
            // Shutdown does not wait for a commit (the cluster ends this node's sessions
            // when it restarts).
            let done = tokio::select! {
                r = self.submit(cmds) => r,
                _ = shutdown.cancelled() => return,
            };
            match done {
                Ok(_) => pause = std::time::Duration::from_millis(50),
                Err(ClusterError::Shutdown) => return,
                Err(_) => {
                    self.closed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(conns);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    }

    /// The token a new client connection ends on: the server's shutdown, or in a cluster
    /// also this node being cut off.
    pub(crate) fn connection_token(&self, shutdown: &CancellationToken) -> CancellationToken {
        if !self.clustered {
            return shutdown.clone();
        }
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        cut.get_or_insert_with(|| shutdown.child_token()).clone()
    }

    /// The cluster declared this node down: every client connection ends (their
    /// sessions were let go, and keep their locks for their grace elsewhere).
    pub(crate) fn cut_off(&self) {
        if let Some(t) = self.cut.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tracing::warn!(
                "this node was declared down by the cluster: closing its client connections"
            );
            t.cancel();
        }
    }

    /// In a cluster, the leader proposes the expiry of dead sessions when their time has
    /// come by its clock (checked every 100 ms).
    pub(crate) async fn propose_expiry(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(c) = self.cluster() else { continue };
            let (Some(now), Some(at)) = (c.leader_time(), self.read(|t, _| t.next_expiry())) else {
                continue;
            };
            if at <= now {
                tokio::select! {
                    _ = c.submit(vec![Command::Expire]) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

impl Table for Shared {
    fn apply(&self, batch: &Batch) -> Vec<Outcome> {
        let local = self
            .config
            .cluster
            .as_ref()
            .is_some_and(|c| c.node_id == batch.origin);
        let (out, expired) = self.with_core(|core| {
            let out: Vec<Outcome> = batch
                .cmds
                .iter()
                .map(|c| core.apply_from(c, batch.now, local))
                .collect();
            let mut expired = Vec::new();
            core.table.take_expired(&mut expired);
            (out, expired)
        });
        if batch.cmds.iter().any(|c| {
            matches!(
                c,
                Command::Disconnect { .. }
                    | Command::NodeDown { .. }
                    | Command::Resume { .. }
                    | Command::Regrace
            )
        }) {
            self.expiry_changed.notify_one();
        }
        log_expired(&expired);
        out
    }

    fn image(&self) -> TableImage {
        self.read(|t, _| t.image())
    }

    fn restore(&self, image: &TableImage) -> Result<(), BadImage> {
        let t = LockTable::from_image(image)?;
        self.with_core(|core| core.table = t);
        Ok(())
    }

    fn last_now(&self) -> Millis {
        self.read(|t, _| t.last_now())
    }

    fn down_nodes(&self) -> Vec<u16> {
        self.read(|t, _| t.down_nodes().collect())
    }

    fn bootstrapped(&self) -> bool {
        self.read(|t, _| t.bootstrapped())
    }

    fn settings(&self) -> lockd_core::Settings {
        self.read(|t, _| lockd_core::Settings::of(t.config()))
    }
}
