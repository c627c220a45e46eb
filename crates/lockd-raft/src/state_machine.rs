//! The lock table as openraft's state machine.
//!
//! Applying an entry hands its [`Batch`] to the [`Table`] (in `lockd-server`, the table the
//! connections read, under its short-held mutex), unless the batch is a retry: each node
//! numbers its batches, and one whose number is not above the last applied from that node
//! was applied already (a forward retried after a lost reply or a leader change). That
//! dedup state is part of the snapshot, with the table's image.
//!
//! The snapshot is kept in the store's file too, so that a restarted node starts from it
//! and replays only the log after it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use lockd_core::{BadImage, LockTable, Outcome, TableImage};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};

use crate::log_store::{LogStore, META};
use crate::types::{Applied, Batch, NodeId, TypeConfig};

type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// Per origin node, the last batch applied and its outcomes: a node has one batch in
/// flight at a time, so a retry is always of its last, and gets that batch's outcomes.
type Dedup = BTreeMap<NodeId, (u64, Vec<Outcome>)>;

const SNAPSHOT: &str = "snapshot";

/// What the state machine applies to. `apply` is called in log order, one batch at a
/// time, and must be deterministic (see `lockd_core::Command`).
pub trait Table: Send + Sync + 'static {
    fn apply(&self, batch: &Batch) -> Vec<Outcome>;
    fn image(&self) -> TableImage;
    fn restore(&self, image: &TableImage) -> Result<(), BadImage>;
    /// The latest time applied: a new leader's clock starts there.
    fn last_now(&self) -> lockd_core::Millis;
    /// Nodes the table holds as down (see `lockd_core::Command::NodeDown`).
    fn down_nodes(&self) -> Vec<u16>;
    /// Whether the cluster's `Bootstrap` was applied.
    fn bootstrapped(&self) -> bool;
    /// The settings the table applies with (the cluster's, once bootstrapped).
    fn settings(&self) -> lockd_core::Settings;
}

/// A bare lock table, for tests and tools.
pub struct MemTable(pub Mutex<LockTable>);

impl MemTable {
    pub fn new(config: lockd_core::Config) -> MemTable {
        MemTable(Mutex::new(LockTable::new(config)))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, LockTable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Table for MemTable {
    fn apply(&self, batch: &Batch) -> Vec<Outcome> {
        let mut t = self.lock();
        let out = batch.cmds.iter().map(|c| t.apply(c, batch.now)).collect();
        // Nobody waits here: drop what a server would deliver.
        let (mut w, mut e) = (Vec::new(), Vec::new());
        t.take_wakeups(&mut w);
        t.take_expired(&mut e);
        out
    }

    fn image(&self) -> TableImage {
        self.lock().image()
    }

    fn restore(&self, image: &TableImage) -> Result<(), BadImage> {
        *self.lock() = LockTable::from_image(image)?;
        Ok(())
    }

    fn last_now(&self) -> lockd_core::Millis {
        self.lock().last_now()
    }

    fn down_nodes(&self) -> Vec<u16> {
        self.lock().down_nodes().collect()
    }

    fn bootstrapped(&self) -> bool {
        self.lock().bootstrapped()
    }

    fn settings(&self) -> lockd_core::Settings {
        lockd_core::Settings::of(self.lock().config())
    }
}

/// The committed (applied) membership as this node's state machine has it: which ids are
/// members now, and which ever were. Unlike openraft's metrics, which show the newest
/// membership *entry* (perhaps not committed), this never says a node left when it did
/// not.
#[derive(Clone)]
pub struct Members(Arc<Mutex<Inner>>);

impl Members {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is a member (voter or learner) in the committed membership.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.inner().membership.membership().get_node(&id).is_some()
    }

    /// Whether `id` was ever in a committed membership.
    pub fn was_used(&self, id: NodeId) -> bool {
        self.inner().used.contains(&id)
    }

    /// Whether `id` was a member and is no more: removed, for good.
    pub fn is_removed(&self, id: NodeId) -> bool {
        let inner = self.inner();
        inner.used.contains(&id) && inner.membership.membership().get_node(&id).is_none()
    }

    /// Ids that were members and are no more.
    pub fn removed(&self) -> Vec<NodeId> {
        let inner = self.inner();
        let m = inner.membership.membership();
        inner
            .used
            .iter()
            .filter(|id| m.get_node(id).is_none())
            .copied()
            .collect()
    }
}

/// Everything a snapshot holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Image {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    dedup: Dedup,
    table: TableImage,
    /// Every node id that has been in a committed membership: ids are never reused.
    used: BTreeSet<NodeId>,
}

#[derive(Default)]
struct Inner {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    dedup: Dedup,
    used: BTreeSet<NodeId>,
    /// The latest snapshot: its meta and its bytes.
    current: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    built: u64,
}

/// The state machine; clones share it (a clone is the snapshot builder).
pub struct StateMachine<T: Table> {
    table: Arc<T>,
    inner: Arc<Mutex<Inner>>,
    db: Arc<Database>,
    /// A builder's copy of the state, taken when openraft asked for the builder (the
    /// build runs beside later applies).
    frozen: Option<Image>,
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl<T: Table> StateMachine<T> {
    /// The state machine over `table`, started from the snapshot in the store, if any.
    pub fn open(db: Arc<Database>, table: Arc<T>) -> Result<StateMachine<T>, std::io::Error> {
        let mut inner = Inner::default();
        if let Some((meta, data)) = LogStore::read_meta::<(
            SnapshotMeta<NodeId, openraft::BasicNode>,
            Vec<u8>,
        )>(&db, SNAPSHOT)?
        {
            let img: Image = postcard::from_bytes(&data).map_err(io)?;
            table.restore(&img.table).map_err(io)?;
            inner.last_applied = img.last_applied;
            inner.membership = img.membership;
            inner.dedup = img.dedup;
            inner.used = img.used;
            inner.current = Some((meta, data));
        }
        Ok(StateMachine {
            table,
            inner: Arc::new(Mutex::new(inner)),
            db,
            frozen: None,
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table this state machine applies to.
    pub fn table(&self) -> &Arc<T> {
        &self.table
    }

    /// A view of the committed membership, shared with the state machine.
    pub fn members(&self) -> Members {
        Members(self.inner.clone())
    }

    async fn persist(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: &[u8],
    ) -> Result<(), std::io::Error> {
        let bytes = postcard::to_stdvec(&(meta, data)).map_err(io)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(io)?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(io)?;
            {
                let mut t = txn.open_table(META).map_err(io)?;
                t.insert(SNAPSHOT, bytes.as_slice()).map_err(io)?;
            }
            txn.commit().map_err(io)
        })
        .await
        .map_err(io)?
    }
}

impl<T: Table> RaftSnapshotBuilder<TypeConfig> for StateMachine<T> {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let img = self
            .frozen
            .take()
            .ok_or_else(|| StorageIOError::write_snapshot(None, &io("no frozen state")))?;
        let data =
            postcard::to_stdvec(&img).map_err(|e| StorageIOError::write_snapshot(None, &io(e)))?;
        let built = {
            let mut inner = self.inner();
            inner.built += 1;
            inner.built
        };
        let meta = SnapshotMeta {
            last_log_id: img.last_applied,
            last_membership: img.membership.clone(),
            snapshot_id: format!("{}-{built}", img.last_applied.map_or(0, |l| l.index)),
        };
        self.persist(&meta, &data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.inner().current = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<T: Table> RaftStateMachine<TypeConfig> for StateMachine<T> {
    type SnapshotBuilder = StateMachine<T>;

    async fn applied_state(&mut self) -> StoreResult<(Option<LogId<NodeId>>, Membership)> {
        let inner = self.inner();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Applied>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            let mut inner = self.inner();
            inner.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Applied(Some(Vec::new())),
                EntryPayload::Membership(m) => {
                    let ids: Vec<NodeId> = m.nodes().map(|(id, _)| *id).collect();
                    inner.used.extend(ids);
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    Applied(Some(Vec::new()))
                }
                EntryPayload::Normal(batch) => match inner.dedup.get(&batch.origin) {
                    Some((seq, outcomes)) if *seq == batch.seq => Applied(Some(outcomes.clone())),
                    Some((seq, _)) if *seq > batch.seq => Applied(None),
                    _ => {
                        let outcomes = self.table.apply(&batch);
                        inner
                            .dedup
                            .insert(batch.origin, (batch.seq, outcomes.clone()));
                        Applied(Some(outcomes))
                    }
                },
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine<T> {
        let inner = self.inner();
        let frozen = Image {
            last_applied: inner.last_applied,
            membership: inner.membership.clone(),
            dedup: inner.dedup.clone(),
            table: self.table.image(),
            used: inner.used.clone(),
        };
        drop(inner);
        StateMachine {
            table: self.table.clone(),
            inner: self.inner.clone(),
            db: self.db.clone(),
            frozen: Some(frozen),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let bad = |e: std::io::Error| StorageIOError::read_snapshot(Some(meta.signature()), &e);
        let img: Image = postcard::from_bytes(&data).map_err(|e| bad(io(e)))?;
        self.table.restore(&img.table).map_err(|e| bad(io(e)))?;
        {
            let mut inner = self.inner();
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.dedup = img.dedup;
            inner.used = img.used;
        }
        self.persist(meta, &data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.inner().current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.inner().current.clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
