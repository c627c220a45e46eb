//! The Raft log, the vote and the latest snapshot, in one redb file.
//!
//! Every write but the committed index is a redb transaction committed with
//! `Durability::Immediate` (fsync, with checksummed commit slots), and openraft is told an append is flushed only after that
//! commit returned. Writes run on the blocking pool: an fsync must not stall the runtime
//! that serves clients. openraft serializes log I/O, so the store needs no lock of its own.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::types::{NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// The log store; clones share the database (a clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    pub(crate) db: Arc<Database>,
    /// Test-only fault switch (the fault harness's slow disk): see [`SLOW_FSYNC_ENV`].
    slow: Option<std::path::PathBuf>,
}

/// Names a file; while it exists and holds a number, every durable write of this node's
/// Raft store waits that many milliseconds before its commit, as a disk slow to fsync
/// would. For `scripts/cluster-faults.sh` only; lockd warns at start when it is set.
pub const SLOW_FSYNC_ENV: &str = "LOCKD_FAULT_SLOW_FSYNC";

/// The delay the slow-fsync switch asks for now, if any.
fn slow_fsync_delay(switch: &Path) -> Option<std::time::Duration> {
    let ms: u64 = std::fs::read_to_string(switch).ok()?.trim().parse().ok()?;
    // Bounded: a typo cannot stall the node for hours.
    Some(std::time::Duration::from_millis(ms.min(10_000)))
}

/// Opens (or makes) the store's file.
pub fn open(path: &Path) -> Result<Arc<Database>, redb::DatabaseError> {
    let db = Database::create(path)?;
    Ok(Arc::new(db))
}

fn io(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> LogStore {
        let slow = std::env::var_os(SLOW_FSYNC_ENV).map(std::path::PathBuf::from);
        if let Some(p) = &slow {
            tracing::warn!(
                switch = %p.display(),
                "{SLOW_FSYNC_ENV} is set: a test-only fault switch (slow fsync) is armed"
            );
        }
        LogStore { db, slow }
    }

    /// Runs `f` in one write transaction on the blocking pool, durable unless told.
    async fn write<R: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, std::io::Error> + Send + 'static,
    ) -> Result<R, std::io::Error> {
        let db = self.db.clone();
        let slow = self.slow.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(io)?;
            txn.set_durability(durability).map_err(io)?;
            let r = f(&txn)?;
            if let Some(d) = slow
                .as_deref()
                .filter(|_| matches!(durability, Durability::Immediate))
                .and_then(slow_fsync_delay)
            {
                std::thread::sleep(d);
            }
            txn.commit().map_err(io)?;
            Ok(r)
        })
        .await
        .map_err(io)?
    }

    pub(crate) fn read_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &str,
    ) -> Result<Option<T>, std::io::Error> {
        let txn = db.begin_read().map_err(io)?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        match table.get(key).map_err(io)? {
            Some(v) => Ok(Some(postcard::from_bytes(v.value()).map_err(io)?)),
            None => Ok(None),
        }
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), std::io::Error> {
        let bytes = postcard::to_stdvec(value).map_err(io)?;
        self.write(durability, move |txn| {
            let mut t = txn.open_table(META).map_err(io)?;
            t.insert(key, bytes.as_slice()).map_err(io)?;
            Ok(())
        })
        .await
    }

    fn entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry<TypeConfig>>, std::io::Error> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = match txn.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        for item in table.range::<u64>(range).map_err(io)? {
            let (_, v) = item.map_err(io)?;
            out.push(postcard::from_bytes(v.value()).map_err(io)?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, std::io::Error> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = match txn.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let last = match table.last().map_err(io)? {
            Some((_, v)) => Some(postcard::from_bytes(v.value()).map_err(io)?),
            None => None,
        };
        Ok(last)
    }
}

fn bounds<RB: RangeBounds<u64>>(r: &RB) -> (Bound<u64>, Bound<u64>) {
    (r.start_bound().cloned(), r.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        self.entries(bounds(&range))
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let purged: Option<LogId<NodeId>> =
            Self::read_meta(&self.db, PURGED).map_err(|e| StorageIOError::read_logs(&e))?;
        let last = self
            .last_entry()
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map(|e| e.log_id)
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.write_meta(VOTE, vote, Durability::Immediate)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        Self::read_meta(&self.db, VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        // Not fsynced: the committed index is a hint that lets a restarted node apply its
        // log before it hears from a leader; losing the latest one costs nothing (the
        // leader sends it again), and it is made durable by the next append's commit. An
        // fsync of its own was one of the two per entry on every node.
        self.write_meta(COMMITTED, &committed, Durability::None)
            .await
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(
            Self::read_meta::<Option<LogId<NodeId>>>(&self.db, COMMITTED)
                .map_err(|e| StorageIOError::read(&e))?
                .flatten(),
        )
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            let bytes = postcard::to_stdvec(&e).map_err(|x| StorageIOError::write_logs(&io(x)))?;
            rows.push((e.log_id.index, bytes));
        }
        let r = self
            .write(Durability::Immediate, move |txn| {
                let mut t = txn.open_table(LOG).map_err(io)?;
                for (i, b) in &rows {
                    t.insert(*i, b.as_slice()).map_err(io)?;
                }
                Ok(())
            })
            .await;
        // Told only now: the commit (and its fsync) returned.
        let failed = r.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(r);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let from = log_id.index;
        self.write(Durability::Immediate, move |txn| {
            let mut t = txn.open_table(LOG).map_err(io)?;
            t.retain_in(from.., |_, _| false).map_err(io)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let bytes = postcard::to_stdvec(&log_id).map_err(|e| StorageIOError::write_logs(&io(e)))?;
        let upto = log_id.index;
        self.write(Durability::Immediate, move |txn| {
            {
                let mut m = txn.open_table(META).map_err(io)?;
                m.insert(PURGED, bytes.as_slice()).map_err(io)?;
            }
            let mut t = txn.open_table(LOG).map_err(io)?;
            t.retain_in(..=upto, |_, _| false).map_err(io)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
