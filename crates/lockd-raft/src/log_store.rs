//! The Raft log's entries in append-only segment files ([`crate::wal`]); the vote, the
//! purged index, the committed index and the latest snapshot in one redb file.
//!
//! openraft is told an append is flushed only after its `fdatasync` returned. Every redb
//! write but the committed index is committed with `Durability::Immediate` (fsync, with
//! checksummed commit slots). Writes run on the blocking pool: an fsync must not stall the
//! runtime that serves clients. openraft serializes log writes; the segment index has its
//! own short-held lock for the replication tasks that read meanwhile.
//!
//! A data directory from a build that kept the entries in the redb file has them moved to
//! the segment files when it is first opened (then removed from the redb file).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::types::{NodeId, TypeConfig};
use crate::wal::Wal;

/// Where builds before the segment files kept the entries (read once, to move them).
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
    wal: Arc<Wal>,
    /// Test-only fault switch (the fault harness's slow disk): see [`SLOW_FSYNC_ENV`].
    slow: Option<std::path::PathBuf>,
    /// The last entry's log id as openraft knows it (see [`LogStore::last_log`]).
    last: LastLog,
}

/// A node's last log id, shared with its liveness pings, which must answer without
/// touching the disk (a slow fsync would make the node look unreachable).
pub type LastLog = Arc<std::sync::Mutex<Option<LogId<NodeId>>>>;

/// Names a file; while it exists and holds a number, every durable write of this node's
/// Raft store waits that many milliseconds before its commit, as a disk slow to fsync
/// would; while it holds `full`, every log append fails as on a full disk. For
/// `scripts/cluster-faults.sh` and the fault tests only; lockd warns at start when it is
/// set.
pub const SLOW_FSYNC_ENV: &str = "LOCKD_FAULT_SLOW_FSYNC";

/// The delay the slow-fsync switch asks for now, if any.
fn slow_fsync_delay(switch: &Path) -> Option<std::time::Duration> {
    let ms: u64 = std::fs::read_to_string(switch).ok()?.trim().parse().ok()?;
    // Bounded: a typo cannot stall the node for hours.
    Some(std::time::Duration::from_millis(ms.min(10_000)))
}

/// Whether the switch says the disk is full.
fn disk_full(switch: &Path) -> bool {
    std::fs::read_to_string(switch).is_ok_and(|s| s.trim() == "full")
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
    /// The store on `db` (see [`open`]) with its entries in the directory `wal_dir`.
    pub fn new(db: Arc<Database>, wal_dir: &Path) -> Result<LogStore, std::io::Error> {
        let slow = std::env::var_os(SLOW_FSYNC_ENV).map(std::path::PathBuf::from);
        if let Some(p) = &slow {
            tracing::warn!(
                switch = %p.display(),
                "{SLOW_FSYNC_ENV} is set: a test-only fault switch (slow fsync) is armed"
            );
        }
        let purged: Option<LogId<NodeId>> = Self::read_meta(&db, PURGED)?;
        let wal = Wal::open(wal_dir, purged.map(|p| p.index))?;
        let store = LogStore {
            db,
            wal: Arc::new(wal),
            slow,
            last: LastLog::default(),
        };
        store.move_entries_from_redb()?;
        store.reread_last()?;
        Ok(store)
    }

    /// Moves the entries an earlier build kept in the redb file into the segment files.
    fn move_entries_from_redb(&self) -> Result<(), std::io::Error> {
        let rows: Vec<(u64, Vec<u8>)> = {
            let txn = self.db.begin_read().map_err(io)?;
            let table = match txn.open_table(LOG) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(io(e)),
            };
            let mut rows = Vec::new();
            for item in table.iter().map_err(io)? {
                let (k, v) = item.map_err(io)?;
                rows.push((k.value(), v.value().to_vec()));
            }
            rows
        };
        if rows.is_empty() {
            return Ok(());
        }
        if !self.wal.is_empty() {
            return Err(std::io::Error::other(
                "the data directory has Raft entries both in raft.redb and in raft-log/",
            ));
        }
        let next = self.wal.next_index();
        let rows: Vec<_> = rows.into_iter().filter(|(i, _)| *i >= next).collect();
        self.wal.append(&rows, || {})?;
        let txn = self.db.begin_write().map_err(io)?;
        txn.delete_table(LOG).map_err(io)?;
        txn.commit().map_err(io)?;
        tracing::info!(
            entries = rows.len(),
            "moved the Raft log's entries from raft.redb to raft-log/"
        );
        Ok(())
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
        let from = match range.0 {
            Bound::Included(i) => i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.1 {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.wal
            .read(from, to)?
            .into_iter()
            .map(|(_, b)| postcard::from_bytes(&b).map_err(io))
            .collect()
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, std::io::Error> {
        let Some(last) = self.wal.last_index() else {
            return Ok(None);
        };
        Ok(self
            .entries((Bound::Included(last), Bound::Included(last)))?
            .pop())
    }

    /// The last log id, kept up to date by appends, truncations and purges: as openraft's
    /// own, it counts an append from when it is asked for, not from its fsync, since that
    /// is what a vote request of this node would carry.
    pub fn last_log(&self) -> LastLog {
        self.last.clone()
    }

    fn set_last(&self, id: Option<LogId<NodeId>>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = id;
    }

    /// Sets the last log id from the files: the last entry, or the last purged one.
    fn reread_last(&self) -> Result<(), std::io::Error> {
        let purged: Option<LogId<NodeId>> = Self::read_meta(&self.db, PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id).or(purged);
        self.set_last(last);
        Ok(())
    }

    /// The slow-disk switch's delay, slept before an fsync of the log.
    fn slow_delay(&self) -> Option<std::time::Duration> {
        self.slow.as_deref().and_then(slow_fsync_delay)
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
        let mut last = None;
        for e in entries {
            let bytes = postcard::to_stdvec(&e).map_err(|x| StorageIOError::write_logs(&io(x)))?;
            rows.push((e.log_id.index, bytes));
            last = Some(e.log_id);
        }
        if last.is_some() {
            self.set_last(last);
        }
        if self.slow.as_deref().is_some_and(disk_full) {
            let e = std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("no space left on device (the {SLOW_FSYNC_ENV} switch)"),
            );
            let failed = StorageIOError::write_logs(&e);
            callback.log_io_completed(Err(e));
            return Err(failed.into());
        }
        let wal = self.wal.clone();
        // The fault tests' broken store does not wait for its (slow) disk: as a store
        // that tells openraft of writes still in the page cache.
        let delay = self
            .slow_delay()
            .filter(|_| !crate::breaks::off(crate::breaks::Check::DurableAck));
        let r = tokio::task::spawn_blocking(move || {
            wal.append(&rows, || {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
            })
        })
        .await
        .map_err(io)
        .and_then(|r| r);
        // Told only now: the commit (and its fsync) returned.
        let failed = r.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(r);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.wal.truncate(log_id.index)?;
            store.reread_last()
        })
        .await
        .map_err(io)
        .and_then(|r| r)
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let bytes = postcard::to_stdvec(&log_id).map_err(|e| StorageIOError::write_logs(&io(e)))?;
        let upto = log_id.index;
        // Recorded first: the segment files then drop what the record says is gone.
        self.write(Durability::Immediate, move |txn| {
            let mut m = txn.open_table(META).map_err(io)?;
            m.insert(PURGED, bytes.as_slice()).map_err(io)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?;
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.purge(upto))
            .await
            .map_err(io)
            .and_then(|r| r)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // A snapshot installed past the log's end purges everything: the log then ends
        // at the snapshot's last entry.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|l| l.index < log_id.index) {
            *last = Some(log_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn entries_kept_in_redb_by_an_earlier_build_are_moved_to_the_segment_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("raft.redb")).unwrap();
        // As the build before the segment files wrote them, with entry 1 purged.
        {
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LOG).unwrap();
                for i in 2..=5 {
                    t.insert(i, postcard::to_stdvec(&entry(i)).unwrap().as_slice())
                        .unwrap();
                }
                let mut m = txn.open_table(META).unwrap();
                let purged = entry(1).log_id;
                m.insert(PURGED, postcard::to_stdvec(&purged).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let wal_dir = dir.path().join("raft-log");
        let mut store = LogStore::new(db.clone(), &wal_dir).unwrap();
        let got = store.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(entry(5).log_id)
        );
        drop(store);
        // Moved, not copied: a second open finds them only in the segment files.
        let txn = db.begin_read().unwrap();
        assert!(matches!(
            txn.open_table(LOG),
            Err(redb::TableError::TableDoesNotExist(_))
        ));
        drop(txn);
        let mut store = LogStore::new(db, &wal_dir).unwrap();
        assert_eq!(store.try_get_log_entries(3..=4).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_last_log_id_follows_truncation_and_a_purge_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("raft.redb")).unwrap();
        let wal_dir = dir.path().join("raft-log");
        let store = LogStore::new(db.clone(), &wal_dir).unwrap();
        assert_eq!(*store.last_log().lock().unwrap(), None, "an empty log");
        let rows: Vec<_> = (1..=5)
            .map(|i| (i, postcard::to_stdvec(&entry(i)).unwrap()))
            .collect();
        store.wal.append(&rows, || {}).unwrap();
        drop(store);
        // Read from the files at open.
        let mut store = LogStore::new(db, &wal_dir).unwrap();
        let last = store.last_log();
        assert_eq!(*last.lock().unwrap(), Some(entry(5).log_id));
        store.truncate(entry(4).log_id).await.unwrap();
        assert_eq!(*last.lock().unwrap(), Some(entry(3).log_id), "4 and 5 cut");
        store.purge(entry(2).log_id).await.unwrap();
        assert_eq!(
            *last.lock().unwrap(),
            Some(entry(3).log_id),
            "the end stays"
        );
        // A snapshot past the end: the log ends at its last entry.
        store.purge(entry(9).log_id).await.unwrap();
        assert_eq!(*last.lock().unwrap(), Some(entry(9).log_id));
    }
}
