//! Durable storage in `--data-dir` (TCP mode): a node killed with `kill -9` at any
//! instant restarts with everything it acknowledged. See `docs/storage.md`.
//!
//! ```text
//! DATA_DIR/
//!   oncekv.meta                 format name, version, owning node id (marker.rs)
//!   wal/                        Raft log, vote, committed, purge point: segment files (wal/)
//!   snapshots/
//!     snapshot-<index>.snap     the newest snapshot: header + State JSON (snapshots.rs)
//! ```
//!
//! The state machine stays in memory: at start it is the newest snapshot, and
//! openraft re-applies the committed log after it.
//!
//! - [`open_node_named`] / [`open_node`] / [`open_with_options`]: check the marker,
//!   load the snapshot, open the log.
//! - [`log_store::WalLogStore`]: the `RaftLogStorage` on the write-ahead log.
//! - [`writer`]: the group-commit writer thread behind it.
//! - [`wal`]: the segment files, their records, torn-write recovery.
//! - [`snapshots::SnapshotDir`]: atomic snapshot files.
//! - [`file`](mod@file): atomic replace, directory fsync, CRC-32.
//!
//! May not touch: serving, the network or the state machine's rules: it stores what
//! openraft hands it (entries, votes, committed pointers, snapshots of
//! [`crate::state::State`]) and gives it back. It builds on `crate::raft`'s types;
//! nothing below it (`raft`, `protocol`, `state`) imports it.

pub mod file;
pub mod log_store;
pub mod marker;
pub mod snapshots;
pub mod wal;
pub mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use log_store::WalLogStore;
use marker::{MARKER_FILE, Marker};
use snapshots::SnapshotDir;
pub use wal::{WalIo, WalOptions};
pub use writer::WriterStats;

use crate::raft::Storage;
use crate::raft::sm_store::StateMachineStore;
use crate::state::SnapshotError;

/// The log directory's name in the data dir.
pub const LOG_DIR: &str = wal::WAL_DIR;
/// The snapshot directory's name in the data dir.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Why a data dir could not be opened. Every variant names the file at fault;
/// none is ever resolved by starting empty.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O error on this file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file's content is damaged (truncated, garbled, inconsistent).
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The dir was written by an incompatible version.
    #[error("{}: format {found}, this build reads {expected}", path.display())]
    Incompatible {
        /// The marker file.
        path: PathBuf,
        /// What the marker says.
        found: String,
        /// What this build reads.
        expected: String,
    },
    /// The dir belongs to another node.
    #[error("{}: data dir of node {found}, not of node {expected}", path.display())]
    WrongNode {
        /// The marker file.
        path: PathBuf,
        /// The owner the marker names.
        found: u64,
        /// The node opening it.
        expected: u64,
    },
    /// The dir belongs to a node of the same id under another name.
    #[error("{}: data dir of node {found}, not of {expected}", path.display())]
    WrongName {
        /// The marker file.
        path: PathBuf,
        /// The owner's name the marker records.
        found: String,
        /// The name of the node opening it.
        expected: String,
    },
    /// The dir holds something but is not an oncekv data dir.
    #[error("{}: not an oncekv data dir: {reason}", path.display())]
    NotADataDir {
        /// The dir.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Opens (creating on first use) the data dir, whoever owns it, with these log
/// options. A node opens its dir with [`open_node_named`]; this one is for
/// looking at a dir apart from any node (the storage tests open dirs so).
pub fn open_with_options(
    data_dir: &Path,
    options: WalOptions,
) -> Result<Storage<WalLogStore>, StorageError> {
    open_with(data_dir, None, options)
}

/// Opens (creating on first use) the data dir of node `node_id`; refuses a dir
/// that another node's id was recorded in.
pub fn open_node(
    data_dir: &Path,
    node_id: u64,
    options: WalOptions,
) -> Result<Storage<WalLogStore>, StorageError> {
    open_with(data_dir, Some((node_id, None)), options)
}

/// [`open_node`] for node `node_id` named `name`: also refuses a dir recorded
/// under another name, and records the name in a dir that has none yet.
pub fn open_node_named(
    data_dir: &Path,
    node_id: u64,
    name: &str,
    options: WalOptions,
) -> Result<Storage<WalLogStore>, StorageError> {
    open_with(data_dir, Some((node_id, Some(name))), options)
}

fn open_with(
    dir: &Path,
    owner: Option<(u64, Option<&str>)>,
    options: WalOptions,
) -> Result<Storage<WalLogStore>, StorageError> {
    let node_id = owner.map(|(id, _)| id);
    let node_name = owner.and_then(|(_, name)| name);
    fs::create_dir_all(dir).map_err(|source| StorageError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let marker = Marker::read(dir)?;
    match marker.as_ref().map(|m| (m.node_id, node_id)) {
        Some((Some(found), Some(expected))) if found != expected => {
            return Err(StorageError::WrongNode {
                path: dir.join(MARKER_FILE),
                found,
                expected,
            });
        }
        _ => {}
    }
    match marker.as_ref().map(|m| (m.node_name.as_deref(), node_name)) {
        Some((Some(found), Some(expected))) if found != expected => {
            return Err(StorageError::WrongName {
                path: dir.join(MARKER_FILE),
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
        _ => {}
    }
    match marker.as_ref() {
        // The marker is written after the log exists: a marker without a log
        // means the log was lost, and starting empty would forget the vote.
        Some(_) if !has_segments(&dir.join(LOG_DIR)) => {
            return Err(StorageError::Corrupt {
                path: dir.join(LOG_DIR),
                reason: format!(
                    "missing or without segments, though {MARKER_FILE} says this dir was in use"
                ),
            });
        }
        Some(_) => {}
        None => check_only_ours(dir)?,
    }
    let (snapshots, snapshot) = SnapshotDir::open(&dir.join(SNAPSHOT_DIR))?;
    let mut log = WalLogStore::open_with(&dir.join(LOG_DIR), options)?;
    if marker.is_none() && (!log.is_pristine() || snapshot.is_some()) {
        return Err(StorageError::NotADataDir {
            path: dir.to_owned(),
            reason: format!("it holds a log or snapshot but no {MARKER_FILE}"),
        });
    }
    // The log is purged only behind a durable snapshot, so one must cover the purge.
    if let Some(purged) = log.last_purged() {
        let covered = snapshot.as_ref().and_then(|(m, _)| m.last_log_id);
        if covered.is_none_or(|c| c.index() < purged.index()) {
            return Err(StorageError::Corrupt {
                path: dir.join(SNAPSHOT_DIR),
                reason: format!(
                    "the log is purged up to {purged}, but the newest snapshot covers {covered:?}"
                ),
            });
        }
    }
    // Written last on first use, so a dir without it was never acknowledged into.
    let owner = marker.as_ref().and_then(|m| m.node_id).or(node_id);
    let owner_name = marker
        .as_ref()
        .and_then(|m| m.node_name.clone())
        .or(node_name.map(str::to_string));
    log.set_node_id(owner);
    let current = marker.as_ref().map(|m| (m.node_id, m.node_name.clone()));
    if current != Some((owner, owner_name.clone())) {
        Marker {
            node_name: owner_name,
            ..Marker::new(owner)
        }
        .write(dir)?;
    }
    let sm = StateMachineStore::restored(snapshot, Arc::new(snapshots)).map_err(|e| match e {
        SnapshotError::Version(v) => StorageError::Incompatible {
            path: dir.join(SNAPSHOT_DIR),
            found: format!("snapshot format version {}", v.found),
            expected: format!("snapshot format version {}", v.known),
        },
        SnapshotError::Decode(e) => StorageError::Corrupt {
            path: dir.join(SNAPSHOT_DIR),
            reason: format!("the snapshot's state does not load: {e}"),
        },
    })?;
    let (mirror, failure) = (log.mirror(), log.failure());
    Ok(Storage {
        log,
        sm,
        mirror,
        failure,
    })
}

/// True if `wal_dir` holds at least one segment file.
fn has_segments(wal_dir: &Path) -> bool {
    wal::segment_files(wal_dir).is_ok_and(|s| !s.is_empty())
}

/// A dir without a marker may hold only what an interrupted first open creates.
pub(crate) fn check_only_ours(dir: &Path) -> Result<(), StorageError> {
    let io_err = |source| StorageError::Io {
        path: dir.to_owned(),
        source,
    };
    for item in fs::read_dir(dir).map_err(io_err)? {
        let name = item.map_err(io_err)?.file_name();
        let name = name.to_string_lossy();
        // The node's own log files (`serve` writes node.log, `cluster` stderr.log)
        // may be created before the first open.
        let ours = name == LOG_DIR
            || name == SNAPSHOT_DIR
            || name == "node.log"
            || name == "stderr.log"
            || name == format!("{MARKER_FILE}{}", file::TMP_SUFFIX);
        if !ours {
            return Err(StorageError::NotADataDir {
                path: dir.to_owned(),
                reason: format!("unexpected {name:?} and no {MARKER_FILE}"),
            });
        }
    }
    Ok(())
}
