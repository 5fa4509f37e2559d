//! Helpers shared by the storage tests: a self-removing temp dir, entries, and an
//! append that waits for durability.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oncekv::protocol::KvOp;
use oncekv::raft::{Entry, LogId, TypeConfig, Vote};
use oncekv::state::{Command, Op};
use oncekv::storage::WalLogStore;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, Membership};

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, not yet created, directory path.
    pub fn new(name: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "oncekv-{name}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        TempDir(dir)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A log id with leader `node` of `term`.
pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 0, index)
}

/// A committed vote for `node` in `term`.
pub fn vote(term: u64, node: u64) -> Vote {
    Vote::new_committed(term, node)
}

/// A normal entry writing key `k<index>`.
pub fn entry(term: u64, index: u64) -> Entry {
    let cmd = Command::new(
        index,
        Op::Kv {
            kv: KvOp::Write {
                key: format!("\"k{index}\""),
                value: serde_json::json!(index),
            },
            session: None,
        },
    );
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// A membership entry making node 0 the only voter.
pub fn membership_entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new_with_defaults(
            vec![[0u64].into_iter().collect()],
            Vec::<u64>::new(),
        )),
    }
}

/// Appends and waits until the store reports the entries durable.
pub async fn append_durable(store: &mut WalLogStore, entries: Vec<Entry>) -> io::Result<()> {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await?;
    rx.await.map_err(io::Error::other)?
}
