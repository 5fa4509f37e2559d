//! An in-memory Raft log (Maelstrom mode: a killed node restarts empty and rejoins
//! by catching up from the leader, as Maelstrom expects).
//!
//! Owns [`MemLogStore`] and [`LogMirror`], the readable in-memory copy of the live
//! log that the durable store (`crate::storage::log_store`) keeps too. May not
//! touch: files, the state machine, the network or the node.

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
    inner: SharedMirror,
}

type Inner = LogMirror;

/// The Raft log as openraft sees it, in memory: the whole of [`MemLogStore`], and the
/// readable copy the durable store (`crate::storage`) keeps beside its log files.
/// Each entry is kept with its size (its JSON), so batches and the memory budget
/// are counted in bytes, and with its running position ([`Held::end`]), so the
/// bytes of any range (the log since the snapshot, which holds hundreds of
/// thousands of entries when the state is large) are two look-ups, not a walk
/// under the lock every log store call takes.
#[derive(Debug)]
pub struct LogMirror {
    /// The last entry removed by a purge (behind a snapshot).
    pub last_purged: Option<LogId>,
    /// Entries by index, contiguous, each with its size in bytes.
    pub log: BTreeMap<u64, Held>,
    /// Sum of the sizes in `log`.
    pub bytes: u64,
    /// The committed pointer openraft asks us to keep.
    pub committed: Option<LogId>,
    /// The current vote.
    pub vote: Option<Vote>,
    /// Most bytes [`LogMirror::limited`] hands out at once (one entry at least):
    /// what bounds an append batch (`Config::append_batch_bytes_max`).
    pub batch_bytes_max: u64,
}

impl Default for LogMirror {
    fn default() -> Self {
        LogMirror {
            last_purged: None,
            log: BTreeMap::new(),
            bytes: 0,
            committed: None,
            vote: None,
            batch_bytes_max: crate::config::Config::default().append_batch_bytes_max,
        }
    }
}

/// One entry as the mirror holds it.
#[derive(Debug, Clone)]
pub struct Held {
    /// The entry.
    pub entry: Entry,
    /// Its size in bytes (its JSON).
    pub bytes: u64,
    /// The sizes of the entries before it and its own, summed from an origin
    /// that only differences cancel: within the contiguous log, the bytes of
    /// entries `a..=b` are `end(b) - (end(a) - bytes(a))`.
    pub end: u64,
}

impl Held {
    /// Where the entry starts: `end` less its own size.
    fn start(&self) -> u64 {
        self.end - self.bytes
    }
}

/// The mirror shared between a log store, its readers and the node's memory
/// budget task.
pub type SharedMirror = Arc<Mutex<LogMirror>>;

/// Locks a shared mirror. A poisoned lock means a panic mid-update; every
/// operation here is a single map edit and its byte count, so keep going.
pub fn lock(m: &SharedMirror) -> std::sync::MutexGuard<'_, LogMirror> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Set once, when a write of the log fails; never cleared. The store then
/// refuses every later write (its in-memory log is ahead of the disk, and going
/// on could leave a hole), and [`crate::node::Node::fatal`] ends the node at
/// once. Without the second half, a failure nobody waits on (the committed
/// pointer, a truncate or purge, a checkpoint) surfaced only at the node's next
/// append, which may come seconds later: meanwhile the node answered heartbeats
/// as a voter whose log could no longer grow, holding up every commit that
/// needed its vote (found by the simulator).
#[derive(Debug, Clone)]
pub struct LogFailure(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for LogFailure {
    fn default() -> Self {
        LogFailure(Arc::new(tokio::sync::watch::Sender::new(None)))
    }
}

impl LogFailure {
    /// Records `why` as the failure, unless one is recorded already (the first
    /// cause is kept). Callable from any thread.
    pub fn set(&self, why: impl Into<String>) {
        let why = why.into();
        self.0.send_if_modified(|cur| {
            if cur.is_some() {
                return false;
            }
            *cur = Some(why);
            true
        });
    }

    /// Whether a write has failed.
    pub fn is_set(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The failure, if a write has failed.
    pub fn get(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves with the failure once a write has failed; pending until then.
    pub async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        let why = rx.wait_for(Option::is_some).await.map(|why| why.clone());
        match why {
            Ok(why) => why.unwrap_or_default(),
            // The sender lives in `self`: it cannot close while we wait.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The size of an entry's JSON, without building it.
pub fn entry_bytes(e: &Entry) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, e);
    c.0
}

impl LogMirror {
    /// The entries in `range`.
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        self.log
            .range(range)
            .map(|(_, h)| h.entry.clone())
            .collect()
    }

    /// The entries from `start` (before `end`) up to [`LogMirror::batch_bytes_max`]
    /// bytes, at least one if `start` is present.
    pub fn limited(&self, start: u64, end: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, h) in self.log.range(start..end) {
            if !out.is_empty() && bytes + h.bytes > self.batch_bytes_max {
                break;
            }
            bytes += h.bytes;
            out.push(h.entry.clone());
        }
        out
    }

    /// Bytes of the entries after index `after` (all, for `None`) up to `upto`
    /// inclusive; 0 when that range is empty (`after >= upto`), which it is
    /// whenever nothing was applied since the last snapshot.
    pub fn bytes_in(&self, after: Option<u64>, upto: u64) -> u64 {
        let start = match after {
            None => 0,
            Some(a) if a >= upto => return 0,
            Some(a) => a + 1,
        };
        let mut held = self.log.range(start..=upto).map(|(_, h)| h);
        let Some(first) = held.next() else { return 0 };
        let last = held.next_back().unwrap_or(first);
        last.end - first.start()
    }

    /// The index to purge up to so that the entries at or before `upto` (the
    /// snapshot) hold at most `keep` bytes; `None` if they already do. Walks
    /// only the entries that would go.
    pub fn purge_point(&self, upto: u64, keep: u64) -> Option<u64> {
        let last = self.log.range(..=upto).next_back()?.1;
        if self.bytes_in(None, upto) <= keep {
            return None;
        }
        // The newest entry that still starts more than `keep` bytes before the
        // end: it and everything before it go, the rest fits.
        let below = last.end - keep;
        let mut point = None;
        for (&index, h) in self.log.range(..=upto) {
            if h.start() >= below {
                break;
            }
            point = Some(index);
        }
        point
    }

    /// Last purged and last present log ids.
    pub fn log_state(&self) -> LogState<TypeConfig> {
        let last = self.log.values().next_back().map(|h| h.entry.log_id());
        LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last.or(self.last_purged),
        }
    }

    /// Adds one entry of `size` bytes (replacing any at the same index).
    pub fn insert(&mut self, e: Entry, size: u64) {
        let index = e.index();
        let start = (index.checked_sub(1))
            .and_then(|before| self.log.get(&before))
            .map_or(0, |h| h.end);
        let end = start + size;
        self.bytes += size;
        let held = Held {
            entry: e,
            bytes: size,
            end,
        };
        if let Some(old) = self.log.insert(index, held) {
            self.bytes -= old.bytes;
            // Entries after a replaced one move with it. openraft truncates
            // before it writes over an entry, so this loop finds none.
            let mut end = end;
            for (_, h) in self.log.range_mut(index + 1..) {
                end += h.bytes;
                h.end = end;
            }
        }
    }

    /// Adds entries (replacing any at the same index), measuring each.
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            let size = entry_bytes(&e);
            self.insert(e, size);
        }
    }

    /// Drops every entry after `last`; returns the first index dropped.
    ///
    /// Refuses (an error that stops Raft, and so the node, loudly) to drop an
    /// entry this node knows is committed. A leader of this cluster never asks
    /// that (Raft's log matching: a committed entry is in every later leader's
    /// log), so such a request comes from something that is not this
    /// cluster's leader: a leader of another cluster that shares this one's
    /// key and names and was pointed here by a wrong address, or this node's
    /// data dir restored from an old copy. Obeying it loses acknowledged
    /// writes without a trace.
    pub fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<u64> {
        let from = last.map_or(0, |l| l.index() + 1);
        if let Some(committed) = self.committed
            && from <= committed.index()
        {
            return Err(io::Error::other(format!(
                "refusing to truncate the log from index {from}: entries up to {committed} \
                 are committed on this node, and no leader of its cluster asks that. The \
                 appends come from elsewhere: check that no member's --peers address points \
                 at a node of another cluster sharing this cluster key, and that this data \
                 dir was not restored from an old copy"
            )));
        }
        self.truncate_from(from);
        Ok(from)
    }

    /// Drops every entry at `from` or later.
    pub fn truncate_from(&mut self, from: u64) {
        let cut = self.log.split_off(&from);
        self.bytes -= cut.values().map(|h| h.bytes).sum::<u64>();
    }

    /// Removes every entry up to `upto`, which becomes the last purged id.
    /// What it returns holds them: drop it after the lock is released.
    pub fn purge(&mut self, upto: LogId) -> Removed {
        debug_assert!(self.last_purged.as_ref() <= Some(&upto));
        let removed = self.drop_upto(upto.index());
        self.last_purged = Some(upto);
        removed
    }

    /// Removes every entry at `upto` or before, in time logarithmic in the
    /// log's length: the bytes they held come from the running positions, and
    /// freeing them is left to the returned [`Removed`].
    pub fn drop_upto(&mut self, upto: u64) -> Removed {
        self.bytes -= self.bytes_in(None, upto);
        let kept = self.log.split_off(&(upto + 1));
        Removed(std::mem::replace(&mut self.log, kept))
    }
}

/// Entries removed from the log by a purge, freed when this is dropped: a few
/// at a time when there are many. A purge after a snapshot of a large state
/// removes hundreds of thousands of entries, and freeing them at once took 20
/// to 101 ms, measured on a 3-node cluster at 1,000,000 sessions. Under the
/// mirror's lock (which every append, log read and commit takes) that held up
/// every write for as long, so this is returned out of the lock. Freed on
/// another thread, a write sent at the purge still took 90 ms, most likely
/// because the allocator hands a block freed elsewhere back to the heap of the
/// thread that allocated it, so the work came back to the runtime's worker.
/// So they are freed in slices (at most [`Removed::FREE_SLICE`] entries and
/// [`Removed::FREE_SLICE_BYTES`], so that large values are sliced too): the
/// first where this is dropped, the rest by a task on the runtime that yields
/// between slices, so that whatever the runtime's threads have to do runs in
/// between.
#[must_use = "drop it after releasing the lock"]
pub struct Removed(BTreeMap<u64, Held>);

impl Removed {
    /// Most entries freed between two yields: tens of microseconds of work.
    pub const FREE_SLICE: usize = 1024;

    /// Most bytes of entries (their encoded size, about what they hold in
    /// memory) freed between two yields, one entry at least: four 1 MB values
    /// are a few hundred microseconds of unmapping.
    pub const FREE_SLICE_BYTES: u64 = 4 << 20;

    /// How many entries were removed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Frees them here and now (where no other work waits: a replay at start,
    /// the deterministic simulation).
    pub fn free_here(mut self) {
        drop(std::mem::take(&mut self.0));
    }

    /// Frees entries from `entries` up to one slice's bounds; how many.
    fn free_slice(entries: &mut impl Iterator<Item = (u64, Held)>) -> usize {
        let (mut freed, mut bytes) = (0, 0);
        for (_, held) in entries {
            (freed, bytes) = (freed + 1, bytes + held.bytes);
            drop(held);
            if freed == Self::FREE_SLICE || bytes >= Self::FREE_SLICE_BYTES {
                break;
            }
        }
        freed
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        let mut entries = std::mem::take(&mut self.0).into_iter();
        Self::free_slice(&mut entries);
        if entries.len() == 0 {
            return;
        }
        // Without a runtime the rest is freed here, with `entries`.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            while Self::free_slice(&mut entries) > 0 {
                tokio::task::yield_now().await;
            }
        });
    }
}

impl MemLogStore {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut lock(&self.inner))
    }

    /// The mirror, shared (for the node's memory budget).
    pub fn mirror(&self) -> SharedMirror {
        self.inner.clone()
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

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.with(|i| i.limited(start, end)))
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
        self.with(|i| i.truncate_after(last))?;
        Ok(())
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        // Freed out of the lock, a slice at a time (`Removed`).
        drop(self.with(|i| i.purge(upto)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn batches_are_bounded_in_bytes_with_one_entry_at_least() {
        let mut m = LogMirror {
            batch_bytes_max: 250,
            ..LogMirror::default()
        };
        for i in 1..=10 {
            m.insert(entry(i), 100);
        }
        assert_eq!(m.bytes, 1_000);
        let first = |v: Vec<Entry>| v.iter().map(|e| e.index()).collect::<Vec<_>>();
        assert_eq!(first(m.limited(1, 11)), vec![1, 2]);
        assert_eq!(first(m.limited(9, 11)), vec![9, 10]);
        // An entry larger than the bound still goes, alone.
        m.insert(entry(11), 1_000);
        assert_eq!(first(m.limited(11, 12)), vec![11]);
        assert_eq!(first(m.limited(10, 12)), vec![10]);
        // Sizes follow truncation, replacement and purge.
        m.truncate_from(11);
        m.insert(entry(10), 50);
        assert_eq!(m.bytes, 950);
        assert_eq!(m.purge(entry(4).log_id).len(), 4);
        assert_eq!(m.bytes, 550);
        assert_eq!(m.bytes_in(None, 7), 300);
        // Nothing after the snapshot (or a snapshot ahead): 0, never a panic.
        assert_eq!(m.bytes_in(Some(7), 7), 0);
        assert_eq!(m.bytes_in(Some(9), 7), 0);
        assert_eq!(m.bytes_in(Some(u64::MAX), u64::MAX), 0);
    }

    /// A conflicting tail after the committed entries is dropped; a request to
    /// drop a committed entry is refused and changes nothing.
    #[test]
    fn a_committed_entry_is_never_truncated() {
        let mut m = LogMirror::default();
        for i in 1..=10 {
            m.insert(entry(i), 100);
        }
        assert_eq!(m.truncate_after(Some(entry(9).log_id)).unwrap(), 10);
        m.committed = Some(entry(5).log_id);
        assert_eq!(m.truncate_after(Some(entry(5).log_id)).unwrap(), 6);
        for last in [Some(entry(4).log_id), Some(entry(1).log_id), None] {
            let e = m
                .truncate_after(last)
                .expect_err("a committed entry dropped");
            assert!(e.to_string().contains("committed on this node"), "{e}");
        }
        assert_eq!(m.log.len(), 5, "nothing dropped by a refusal");
    }

    #[test]
    fn the_log_kept_behind_a_snapshot_is_bounded_in_bytes() {
        let mut m = LogMirror::default();
        for i in 1..=10 {
            m.insert(entry(i), 100);
        }
        // Snapshot at 8, 250 bytes kept: entries 7 and 8 (200 bytes) stay, 6
        // and before go.
        assert_eq!(m.purge_point(8, 250), Some(6));
        assert_eq!(m.purge_point(8, 200), Some(6));
        assert_eq!(m.purge_point(8, 199), Some(7));
        assert_eq!(m.purge_point(2, 250), None);
        assert_eq!(m.purge_point(10, 1_000), None);
        assert_eq!(m.purge_point(0, 0), None);
        assert_eq!(m.purge(entry(6).log_id).len(), 6);
        assert_eq!(m.purge_point(8, 250), None);
    }

    /// Ranged byte counts and purge points from running positions agree with
    /// summing entry by entry, through appends, replacements, truncations and
    /// purges in a random order (the seed is printed).
    #[test]
    #[allow(clippy::print_stderr)] // the seed, for a rerun
    fn running_positions_agree_with_summing() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("seed {seed}");
        let mut rng = seed;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n.max(1)
        };
        let mut m = LogMirror::default();
        for _ in 0..2_000 {
            let first = m.log.keys().next().copied();
            let last = m.log.keys().next_back().copied();
            match next(10) {
                0..=5 => {
                    let after = last.or(m.last_purged.map(|p| p.index()));
                    let i = after.map_or(next(5) + 1, |l| l + 1);
                    m.insert(entry(i), next(300) + 1);
                }
                6 => {
                    if let Some(l) = last {
                        m.insert(entry(l), next(300) + 1);
                    }
                }
                7 => {
                    if let (Some(f), Some(l)) = (first, last) {
                        m.truncate_from(f + next(l - f + 1));
                    }
                }
                8 => {
                    if let (Some(f), Some(l)) = (first, last) {
                        let upto = f + next(l - f + 1);
                        let going = m.log.range(..=upto).count();
                        assert_eq!(m.purge(entry(upto).log_id).len(), going, "seed {seed}");
                    }
                }
                _ => {
                    if let (Some(f), Some(l)) = (first, last) {
                        // A replacement in the middle (never done by openraft).
                        m.insert(entry(f + next(l - f + 1)), next(300) + 1);
                    }
                }
            }
            let sum = |lo: u64, hi: u64| -> u64 {
                if lo > hi {
                    return 0;
                }
                m.log.range(lo..=hi).map(|(_, h)| h.bytes).sum()
            };
            assert_eq!(m.bytes, sum(0, u64::MAX), "seed {seed}");
            let top = m.log.keys().next_back().copied().unwrap_or(0) + 2;
            let (a, b) = (next(top), next(top));
            let (a, b) = (a.min(b), a.max(b));
            assert_eq!(m.bytes_in(Some(a), b), sum(a + 1, b), "seed {seed}");
            assert_eq!(m.bytes_in(None, b), sum(0, b), "seed {seed}");
            let keep = next(3_000);
            let walked = {
                let mut kept = 0;
                let mut point = None;
                for (&index, h) in m.log.range(..=b).rev() {
                    kept += h.bytes;
                    if kept > keep {
                        point = Some(index);
                        break;
                    }
                }
                point
            };
            assert_eq!(m.purge_point(b, keep), walked, "seed {seed}");
        }
    }

    /// A purge large enough to be freed in slices leaves the log
    /// and its byte count as a small one does.
    #[test]
    fn a_large_purge_is_counted_like_a_small_one() {
        let mut m = LogMirror::default();
        let n = Removed::FREE_SLICE as u64 * 4;
        for i in 1..=n {
            m.insert(entry(i), 10);
        }
        let removed = m.purge(entry(n - 10).log_id);
        assert_eq!(removed.len() as u64, n - 10);
        assert_eq!(m.bytes, 100);
        assert_eq!(m.log.len(), 10);
        assert_eq!(m.bytes_in(None, n), 100);
        drop(removed);
        // Nothing left to purge: an empty removal.
        assert!(m.purge(entry(n - 10).log_id).is_empty());
        assert_eq!(m.bytes, 100);
    }

    /// On a runtime, a large removal is freed by a task that yields between
    /// slices and ends once everything is freed; a small one (or one without
    /// a runtime) is freed where it is dropped.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_removal_is_freed_in_slices_by_a_task_that_ends() {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        // Yields until no task is left; how many turns that took.
        let turns_until_freed = || async move {
            let mut yields = 0;
            while alive() > 0 {
                tokio::task::yield_now().await;
                yields += 1;
                assert!(yields < 1_000, "the freeing task never ended");
            }
            yields
        };
        let mut m = LogMirror::default();
        let slices = 4;
        let n = (Removed::FREE_SLICE * slices) as u64;
        for i in 1..=n + 1 {
            m.insert(entry(i), 10);
        }
        drop(m.purge(entry(1).log_id));
        assert_eq!(alive(), 0, "one entry is freed in place");
        drop(m.purge(entry(n).log_id));
        assert_eq!(alive(), 1, "a task frees the rest");
        let yields = turns_until_freed().await;
        assert!(
            yields >= slices - 1,
            "freed in {yields} turns, not in slices"
        );
        assert_eq!((m.log.len(), m.bytes), (1, 10));
        // A few large entries are sliced by their bytes.
        let big = Removed::FREE_SLICE_BYTES / 2;
        for i in n + 2..=n + 9 {
            m.insert(entry(i), big);
        }
        drop(m.purge(entry(n + 8).log_id));
        assert_eq!(alive(), 1, "a task frees the large entries");
        let yields = turns_until_freed().await;
        assert!(
            yields >= 3,
            "8 entries of half a slice freed in {yields} turns"
        );
        assert_eq!((m.log.len(), m.bytes), (1, big));
    }
}
