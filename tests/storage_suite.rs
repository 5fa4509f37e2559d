//! openraft's storage conformance suite (`openraft::testing::log::Suite`) against
//! the write-ahead log store and our state machine, each run in a fresh data dir.

mod storage_common;

use oncekv::raft::TypeConfig;
use oncekv::raft::sm_store::StateMachineStore;
use oncekv::storage::{self, WalIo, WalLogStore, WalOptions};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use storage_common::TempDir;

/// Builds a store in a new temp dir (the dir is the guard, removed when the test
/// ends), with log segments of this many bytes, owned by this node if any, written
/// directly (the default) or buffered.
struct Builder(u64, Option<u64>, WalIo);

impl StoreBuilder<TypeConfig, WalLogStore, StateMachineStore, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, WalLogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = TempDir::new("suite");
        let options = WalOptions {
            segment_bytes: self.0,
            io: self.2,
        };
        let mut s = storage::open_with_options(dir.path(), options).expect("open a fresh data dir");
        s.log.set_node_id(self.1);
        Ok((dir, s.log, s.sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_store_passes_openraft_suite() {
    Suite::test_all(Builder(
        oncekv::storage::wal::SEGMENT_BYTES_DEFAULT,
        None,
        WalIo::Direct,
    ))
    .await
    .expect("suite passes");
}

/// As a follower's store: the suite's entries are proposed by node 0, so as node
/// 1 every append with nothing queued ahead is synced inline, interleaved with
/// votes, truncates and purges, which still go through the writer thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_store_syncing_inline_passes_openraft_suite() {
    Suite::test_all(Builder(4096, Some(1), WalIo::Direct))
        .await
        .expect("suite passes");
}

/// The same with 4 KiB segments: most batches start a new segment, and purges
/// delete old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_store_with_tiny_segments_passes_openraft_suite() {
    Suite::test_all(Builder(4096, None, WalIo::Direct))
        .await
        .expect("suite passes");
}

/// With buffered writes (`pwrite` + `fdatasync`, `serve --wal-io buffered`), as
/// a leader's and as a follower's store, on tiny segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_wal_store_passes_openraft_suite() {
    Suite::test_all(Builder(4096, None, WalIo::Buffered))
        .await
        .expect("suite passes");
    Suite::test_all(Builder(4096, Some(1), WalIo::Buffered))
        .await
        .expect("suite passes");
}
