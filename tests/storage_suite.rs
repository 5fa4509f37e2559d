//! openraft's storage conformance suite (`openraft::testing::log::Suite`) against
//! the redb log store and our state machine, each run in a fresh data dir.

mod storage_common;

use oncekv::raft::TypeConfig;
use oncekv::raft::sm_store::StateMachineStore;
use oncekv::storage::{self, RedbLogStore};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use storage_common::TempDir;

/// Builds a store in a new temp dir; the dir is the guard, removed when the test ends.
struct Builder;

impl StoreBuilder<TypeConfig, RedbLogStore, StateMachineStore, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, RedbLogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = TempDir::new("suite");
        let s = storage::open(dir.path()).expect("open a fresh data dir");
        Ok((dir, s.log, s.sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_openraft_suite() {
    Suite::test_all(Builder).await.expect("suite passes");
}
