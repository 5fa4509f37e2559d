//! [`RedbLogStore`]: the durable Raft log, vote and committed pointer.
//!
//! redb holds the durable copy; an in-memory mirror of the live (unpurged) log
//! serves readers, so an entry is readable as soon as `append` returns (openraft's
//! contract) while it is still waiting for its group commit. The live log is
//! bounded by the snapshot policy (`snapshot_every_entries` plus
//! `log_kept_behind_snapshot`), so the mirror is too.
//!
//! | openraft's contract | here |
//! |---|---|
//! | `save_vote`: durable before return | queued, then awaited until its commit (fsync) |
//! | `append`: readable on return, callback once durable | mirrored at once; callback after the group commit |
//! | `truncate_after`, `purge`: no hole | one ordered op each, in the same queue, so commits never reorder them |
//! | `save_committed` | queued behind the entries it covers, durable with the next commit |

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use redb::{Database, ReadableTable, ReadableTableMetadata};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StorageError;
use super::writer::{
    Done, LOG_TABLE, META_COMMITTED, META_LAST_PURGED, META_TABLE, META_VOTE, Op, Writer,
    WriterStats,
};
use crate::raft::{Entry, LogId, TypeConfig, Vote};

/// The durable log store; clones share the mirror and the writer (openraft's
/// readers are clones).
#[derive(Debug, Clone)]
pub struct RedbLogStore {
    /// What is durable plus what is queued, in call order.
    mirror: Arc<Mutex<Mirror>>,
    /// The group-commit writer that owns the database.
    writer: Arc<Writer>,
    /// The redb file, for error messages.
    path: Arc<PathBuf>,
}

/// The readable copy of the log beside the database (shared with `MemLogStore`).
type Mirror = crate::raft::log_store::LogMirror;

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

impl RedbLogStore {
    /// Opens (creating if absent) the log at `path`, verifies it and loads the live log.
    pub fn open(path: &Path) -> Result<RedbLogStore, StorageError> {
        let db = open_verified(path)?;
        create_tables(&db).map_err(|reason| StorageError::Database {
            path: path.to_owned(),
            reason,
        })?;
        let mirror = load(&db, path)?;
        let writer = Writer::start(db).map_err(|e| StorageError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        Ok(RedbLogStore {
            mirror: Arc::new(Mutex::new(mirror)),
            writer: Arc::new(writer),
            path: Arc::new(path.to_owned()),
        })
    }

    /// Group-commit counters: appends queued vs commits made.
    pub fn stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// The redb file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when nothing was ever stored (no vote, no entry, no purge).
    pub fn is_pristine(&self) -> bool {
        self.with(|m| {
            m.vote.is_none() && m.log.is_empty() && m.last_purged.is_none() && m.committed.is_none()
        })
    }

    /// The last purged log id (what the newest snapshot must cover).
    pub fn last_purged(&self) -> Option<LogId> {
        self.with(|m| m.last_purged)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Mirror) -> T) -> T {
        // Each mirror update is a single map edit: still consistent after a panic.
        let mut m = self.mirror.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut m)
    }
}

/// Opens the redb file and verifies every page checksum (redb only does so on its
/// own after an unclean shutdown). Commits use redb's two-phase commit, so a
/// damaged latest commit is reported as corruption instead of being rolled back to
/// the previous one (which would silently lose an acknowledged write).
fn open_verified(path: &Path) -> Result<Database, StorageError> {
    let db_err = |reason: String| StorageError::Database {
        path: path.to_owned(),
        reason,
    };
    // redb 2 panics (an assertion) on a file shorter than its header says; that is
    // a damaged file, not a bug of ours, so report it as one.
    let opened = std::panic::catch_unwind(|| {
        let mut db = Database::create(path)?;
        let clean = db.check_integrity()?;
        Ok::<_, redb::DatabaseError>((db, clean))
    });
    match opened {
        Ok(Ok((db, true))) => Ok(db),
        Ok(Ok((_, false))) => Err(db_err(
            "failed redb's integrity check (modified outside redb?)".into(),
        )),
        // redb reports a garbled header as InvalidData: the file is damaged.
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))))
            if source.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(StorageError::Corrupt {
                path: path.to_owned(),
                reason: format!("redb could not read it ({source})"),
            })
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(source)))) => {
            Err(StorageError::Io {
                path: path.to_owned(),
                source,
            })
        }
        Ok(Err(e)) => Err(db_err(e.to_string())),
        Err(_) => Err(StorageError::Corrupt {
            path: path.to_owned(),
            reason: "redb could not read it (truncated?)".into(),
        }),
    }
}

fn create_tables(db: &Database) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_two_phase_commit(true);
    txn.open_table(LOG_TABLE).map_err(|e| e.to_string())?;
    txn.open_table(META_TABLE).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())
}

/// Reads everything back and checks it: every entry decodes and sits under its own
/// index, the log has no hole, and it starts after the purged id.
fn load(db: &Database, path: &Path) -> Result<Mirror, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let db_err = |e: redb::Error| StorageError::Database {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let txn = db.begin_read().map_err(|e| db_err(e.into()))?;
    let meta = txn.open_table(META_TABLE).map_err(|e| db_err(e.into()))?;
    fn record<T: DeserializeOwned>(
        meta: &redb::ReadOnlyTable<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, String> {
        match meta.get(key).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| format!("meta {key}: {e}")),
        }
    }
    let mut mirror = Mirror {
        vote: record(&meta, META_VOTE).map_err(corrupt)?,
        committed: record::<Option<LogId>>(&meta, META_COMMITTED)
            .map_err(corrupt)?
            .flatten(),
        last_purged: record(&meta, META_LAST_PURGED).map_err(corrupt)?,
        log: BTreeMap::new(),
    };
    let log = txn.open_table(LOG_TABLE).map_err(|e| db_err(e.into()))?;
    let mut expected: Option<u64> = None;
    let after_purge = mirror.last_purged.map(|p| p.index() + 1);
    let len = log.len().map_err(|e| db_err(e.into()))?;
    for item in log.iter().map_err(|e| db_err(e.into()))? {
        let (k, v) = item.map_err(|e| db_err(e.into()))?;
        let index = k.value();
        let entry: Entry = serde_json::from_slice(v.value())
            .map_err(|e| corrupt(format!("log entry {index} does not decode: {e}")))?;
        if entry.index() != index {
            return Err(corrupt(format!(
                "log entry stored at {index} has index {}",
                entry.index()
            )));
        }
        if after_purge.is_some_and(|first| index < first) {
            return Err(corrupt(format!(
                "log entry {index} is behind the purged id"
            )));
        }
        if expected.is_some_and(|e| e != index) {
            return Err(corrupt(format!("log hole before index {index}")));
        }
        expected = Some(index + 1);
        mirror.log.insert(index, entry);
    }
    debug_assert_eq!(mirror.log.len() as u64, len);
    Ok(mirror)
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.with(|m| m.entries(range)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.with(|m| m.vote))
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self.with(|m| m.log_state()))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.writer
            .submit_and_wait(Op::Meta(META_VOTE, encode(vote)?))
            .await?;
        // Visible only once durable: nobody acts on a vote a crash could forget.
        self.with(|m| m.vote = Some(*vote));
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = encode(&committed)?;
        self.with(|m| m.committed = committed);
        // Queued behind the entries it covers; durable with the next commit.
        self.writer
            .submit(Op::Meta(META_COMMITTED, bytes), Done::Nothing)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.with(|m| m.committed))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for e in &entries {
            encoded.push((e.index(), encode(e)?));
        }
        self.with(|m| m.append(entries));
        self.writer
            .submit(Op::Put(encoded), Done::Flushed(callback))
            .await
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = self.with(|m| m.truncate_after(last));
        self.writer
            .submit(Op::TruncateFrom(from), Done::Nothing)
            .await
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        let bytes = encode(&upto)?;
        self.with(|m| m.purge(upto));
        self.writer
            .submit(Op::PurgeUpto(upto.index(), bytes), Done::Nothing)
            .await
    }
}
