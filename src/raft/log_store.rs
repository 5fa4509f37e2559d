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

#[derive(Debug, Default)]
struct Inner {
    /// The last entry removed by a purge (behind a snapshot).
    last_purged: Option<LogId>,
    /// Entries by index.
    log: BTreeMap<u64, Entry>,
    /// The committed pointer openraft asks us to keep.
    committed: Option<LogId>,
    /// The current vote.
    vote: Option<Vote>,
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
        Ok(self.with(|i| i.log.range(range).map(|(_, e)| e.clone()).collect()))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.with(|i| i.vote))
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self.with(|i| {
            let last = i.log.values().next_back().map(|e| e.log_id());
            LogState {
                last_purged_log_id: i.last_purged,
                last_log_id: last.or(i.last_purged),
            }
        }))
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
        self.with(|i| {
            for e in entries {
                i.log.insert(e.index(), e);
            }
        });
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = last.map_or(0, |l| l.index() + 1);
        self.with(|i| drop(i.log.split_off(&from)));
        Ok(())
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        self.with(|i| {
            debug_assert!(i.last_purged.as_ref() <= Some(&upto));
            i.log = i.log.split_off(&(upto.index() + 1));
            i.last_purged = Some(upto);
        });
        Ok(())
    }
}
