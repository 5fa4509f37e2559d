//! [`WalLogStore`]: the durable Raft log, vote and committed pointer.
//!
//! The write-ahead log ([`super::wal`]) holds the durable copy; an in-memory mirror of the live (unpurged) log
//! serves readers, so an entry is readable as soon as `append` returns (openraft's
//! contract) while it is still waiting for its group commit. The live log is
//! bounded by the snapshot policy, in entries (`snapshot_every_entries` plus
//! `log_kept_behind_snapshot`) and in bytes (`snapshot_every_bytes` plus
//! `log_kept_behind_snapshot_bytes`, enforced by the node), so the mirror is too.
//!
//! | openraft's contract | here |
//! |---|---|
//! | `save_vote`: durable before return | queued, then awaited until its sync |
//! | `append`: readable on return, callback once durable | mirrored at once; callback after the group commit's sync |
//! | `truncate_after`, `purge`: no hole | one ordered record each, in the same queue, so nothing reorders them |
//! | `save_committed` | written lazily at the end of the next batch, after the entries it covers (see `Writer::set_committed`) |
//!
//! May not touch: the state machine, the network or the node; the bytes on disk are
//! [`super::wal`]'s, their ordering and syncing [`super::writer`]'s.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StorageError;
use super::wal::{Record, Wal, WalOptions};
use super::writer::{Change, Done, Writer, WriterStats};
use crate::raft::{Entry, LogId, TypeConfig, Vote};

/// The durable log store; clones share the mirror and the writer (openraft's
/// readers are clones).
#[derive(Debug, Clone)]
pub struct WalLogStore {
    /// What is durable plus what is queued, in call order.
    mirror: SharedMirror,
    /// The group-commit writer that owns the log files.
    writer: Arc<Writer>,
    /// The log directory, for error messages.
    path: Arc<PathBuf>,
    /// The segment files at open, oldest first.
    segments: Arc<Vec<PathBuf>>,
    /// This node's id, when known: appends of entries it did not propose are
    /// a follower's, synced inline (see [`WalLogStore::append`]).
    me: Option<u64>,
}

/// A follower's append up to this many bytes is synced inline rather than queued.
const INLINE_BYTES_MAX: usize = 256 << 10;

/// The readable copy of the log beside the files (shared with `MemLogStore`).
type Mirror = crate::raft::log_store::LogMirror;
use crate::raft::log_store::{LogFailure, SharedMirror};

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what} does not decode: {e}"))
}

impl WalLogStore {
    /// Opens (creating if absent) the log in the directory `path` with these
    /// segment and write options, replays it and checks the result.
    pub fn open_with(path: &Path, options: WalOptions) -> Result<WalLogStore, StorageError> {
        let mut mirror = Mirror::default();
        let wal = Wal::open(path, options, |rec| replay(&mut mirror, rec))?;
        let segments = wal.segment_paths();
        check(&mirror).map_err(|reason| StorageError::Corrupt {
            path: segments.last().cloned().unwrap_or_else(|| path.to_owned()),
            reason,
        })?;
        let writer = Writer::start(wal).map_err(|e| StorageError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        Ok(WalLogStore {
            mirror: Arc::new(Mutex::new(mirror)),
            writer: Arc::new(writer),
            path: Arc::new(path.to_owned()),
            segments: Arc::new(segments),
            me: None,
        })
    }

    /// Tells the store which node it belongs to (see [`WalLogStore::append`]).
    pub fn set_node_id(&mut self, me: Option<u64>) {
        self.me = me;
    }

    /// Group-commit counters: appends queued vs syncs made.
    pub fn stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// The log directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment files as they were at open, oldest first.
    pub fn segments_at_open(&self) -> &[PathBuf] {
        &self.segments
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
        f(&mut crate::raft::log_store::lock(&self.mirror))
    }

    /// The mirror, shared (for the node's memory budget).
    pub fn mirror(&self) -> SharedMirror {
        self.mirror.clone()
    }

    /// Set once a write of the log fails (for the node, which then ends).
    pub fn failure(&self) -> LogFailure {
        self.writer.failure()
    }
}

/// Applies one record, oldest first, to the mirror being rebuilt.
fn replay(m: &mut Mirror, rec: Record<'_>) -> Result<(), String> {
    match rec {
        Record::Entry(index, bytes) => {
            let entry: Entry = decode(&format!("log entry {index}"), bytes)?;
            if entry.index() != index {
                return Err(format!(
                    "log entry recorded as {index} has index {}",
                    entry.index()
                ));
            }
            m.insert(entry, bytes.len() as u64);
        }
        Record::TruncateFrom(from) => m.truncate_from(from),
        Record::Purge(upto, bytes) => {
            let id: LogId = decode("purged log id", bytes)?;
            if id.index() != upto {
                return Err(format!("purge record for {upto} holds {id}"));
            }
            m.drop_upto(upto).free_here();
            m.last_purged = m.last_purged.max(Some(id));
        }
        Record::Vote(bytes) => m.vote = Some(decode("vote", bytes)?),
        Record::Committed(bytes) => m.committed = decode::<Option<LogId>>("committed", bytes)?,
        // Checked by the WAL itself.
        Record::Start(_) => {}
    }
    Ok(())
}

/// The replayed log has no hole and starts right after the purged id.
fn check(m: &Mirror) -> Result<(), String> {
    let mut expected = m.last_purged.map(|p| p.index() + 1);
    for &index in m.log.keys() {
        if let Some(e) = expected
            && e != index
        {
            return Err(if index < e {
                format!("log entry {index} is behind the purged id")
            } else {
                format!("log hole before index {index}")
            });
        }
        expected = Some(index + 1);
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for WalLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.with(|m| m.entries(range)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.with(|m| m.vote))
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.with(|m| m.limited(start, end)))
    }
}

impl RaftLogStorage<TypeConfig> for WalLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self.with(|m| m.log_state()))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.writer
            .submit_and_wait(Change::Vote(encode(vote)?))
            .await?;
        // Visible only once durable: nobody acts on a vote a crash could forget.
        self.with(|m| m.vote = Some(*vote));
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = encode(&committed)?;
        self.with(|m| m.committed = committed);
        // Written after the entries it covers, with the next batch.
        self.writer.set_committed(bytes);
        Ok(())
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
        // A follower's append (entries another node proposed, a small batch) is
        // synced inline; see Writer::try_inline.
        let inline = self
            .me
            .is_some_and(|me| entries.iter().all(|e| e.log_id.leader_id.node_id != me))
            && encoded.iter().map(|(_, b)| b.len()).sum::<usize>() <= INLINE_BYTES_MAX;
        self.with(|m| {
            for (e, (_, b)) in entries.into_iter().zip(&encoded) {
                m.insert(e, b.len() as u64);
            }
        });
        let (op, done) = (Change::Put(encoded), Done::Flushed(callback));
        let (op, done) = if inline {
            match self.writer.try_inline(op, done) {
                Ok(()) => return Ok(()),
                Err(back) => back,
            }
        } else {
            (op, done)
        };
        self.writer.submit(op, done).await
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = self.with(|m| m.truncate_after(last))?;
        self.writer
            .submit(Change::TruncateFrom(from), Done::Nothing)
            .await
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        let bytes = encode(&upto)?;
        // Freed out of the lock, a slice at a time (`Removed`).
        drop(self.with(|m| m.purge(upto)));
        self.writer
            .submit(Change::PurgeUpto(upto.index(), bytes), Done::Nothing)
            .await
    }
}
