//! An in-memory Raft log (Maelstrom mode: a killed node restarts empty and rejoins
//! by catching up from the leader, as Maelstrom expects).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};

use super::{Entry, LogId, TypeConfig, Vote};

/// The log, vote and committed pointer, shared between the writer and readers.
#[derive(Debug, Clone, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<Inner>>,
}

type Inner = LogMirror;

/// The Raft log as openraft sees it, in memory: the whole of [`MemLogStore`], and the
/// readable copy the durable store (`crate::storage`) keeps beside its database.
#[derive(Debug, Default)]
pub struct LogMirror {
    /// The last entry removed by a purge (behind a snapshot).
    pub last_purged: Option<LogId>,
    /// Entries by index, contiguous.
    pub log: BTreeMap<u64, Entry>,
    /// The committed pointer openraft asks us to keep.
    pub committed: Option<LogId>,
    /// The current vote.
    pub vote: Option<Vote>,
}

impl LogMirror {
    /// The entries in `range`.
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        self.log.range(range).map(|(_, e)| e.clone()).collect()
    }

    /// Last purged and last present log ids.
    pub fn log_state(&self) -> LogState<TypeConfig> {
        let last = self.log.values().next_back().map(|e| e.log_id());
        LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last.or(self.last_purged),
        }
    }

    /// Adds entries (replacing any at the same index).
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            self.log.insert(e.index(), e);
        }
    }

    /// Drops every entry after `last`; returns the first index dropped.
    pub fn truncate_after(&mut self, last: Option<LogId>) -> u64 {
        let from = last.map_or(0, |l| l.index() + 1);
        drop(self.log.split_off(&from));
        from
    }

    /// Drops every entry up to `upto`, which becomes the last purged id.
    pub fn purge(&mut self, upto: LogId) {
        debug_assert!(self.last_purged.as_ref() <= Some(&upto));
        self.log = self.log.split_off(&(upto.index() + 1));
        self.last_purged = Some(upto);
    }
}

impl MemLogStore {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock means a panic mid-update; the data is still consistent
        // for every operation here (each is a single map edit), so keep going.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.with(|i| i.entries(range)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.with(|i| i.vote))
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self.with(|i| i.log_state()))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.with(|i| i.vote = Some(*vote));
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.with(|i| i.committed = committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.with(|i| i.committed))
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
        self.with(|i| i.append(entries));
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        self.with(|i| i.truncate_after(last));
        Ok(())
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        self.with(|i| i.purge(upto));
        Ok(())
    }
}
