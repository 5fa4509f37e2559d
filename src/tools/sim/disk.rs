//! The simulated disk of one node: a durable image and the writes not yet synced.
//!
//! [`SimLogStore`] keeps openraft's log contract the way the durable log store
//! (`crate::storage`) does (entries readable at once, the append callback only
//! after the sync, a vote visible only once durable, writes reaching the disk in
//! call order), with the write-ahead log's files replaced by [`DiskState`]: what
//! is synced survives a crash; of what is not, a crash keeps a prefix, cut inside
//! a batch of entries as a torn write is (the log's recovery drops a torn tail
//! and keeps what came before it). Snapshots are written atomically, as
//! `storage::snapshots` writes them. A disk fault fails every write until it
//! clears, as a full disk or an I/O error does.
//!
//! A crash fences the old incarnation: its later writes fail and its pending
//! callbacks never run, so a node's leftover tasks cannot touch the disk its
//! successor opens.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use crate::raft::log_store::{LogFailure, LogMirror, SharedMirror, entry_bytes, lock};
use crate::raft::sm_store::{SnapshotSink, StateMachineStore};
use crate::raft::{Entry, LogId, SnapshotMeta, Storage, TypeConfig, Vote};

/// A disk fault in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// Writes succeed.
    None,
    /// Every write fails with "no space left on device".
    Full,
    /// Every write fails with an I/O error.
    Io,
}

/// One write, in call order.
#[derive(Debug)]
enum Write {
    Put(Vec<Entry>),
    TruncateFrom(u64),
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
}

/// Who waits for a write to be durable.
enum Done {
    Flushed(IOFlushed<TypeConfig>),
    Reply(oneshot::Sender<io::Result<()>>),
}

impl Done {
    fn complete(self, result: io::Result<()>) {
        match self {
            Done::Flushed(cb) => cb.io_completed(result),
            Done::Reply(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// What survives a crash.
#[derive(Debug, Default, Clone)]
pub struct Image {
    /// Log entries by index.
    pub entries: BTreeMap<u64, Entry>,
    /// The vote.
    pub vote: Option<Vote>,
    /// The committed pointer.
    pub committed: Option<LogId>,
    /// The last purged id.
    pub last_purged: Option<LogId>,
    /// The newest snapshot.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

impl Image {
    fn apply(&mut self, w: &Write) {
        match w {
            Write::Put(es) => {
                for e in es {
                    self.entries.insert(e.index(), e.clone());
                }
            }
            Write::TruncateFrom(from) => {
                self.entries.split_off(from);
            }
            Write::Purge(upto) => {
                self.entries = self.entries.split_off(&(upto.index() + 1));
                self.last_purged = self.last_purged.max(Some(*upto));
            }
            Write::Vote(v) => self.vote = Some(*v),
            Write::Committed(c) => self.committed = *c,
        }
    }

    /// The first hole in the log, if any (a crash must never leave one).
    pub fn hole(&self) -> Option<u64> {
        let mut expected = self.last_purged.map(|p| p.index() + 1);
        for &i in self.entries.keys() {
            if expected.is_some_and(|e| e != i) {
                return Some(i);
            }
            expected = Some(i + 1);
        }
        None
    }
}

/// One node's disk.
pub struct DiskState {
    /// What is durable.
    pub image: Image,
    /// Written but not synced, in call order.
    pending: VecDeque<(Write, Option<Done>)>,
    /// The incarnation allowed to write; older ones are fenced.
    incarnation: u64,
    /// The fault in force.
    pub fault: DiskFault,
    /// Whether a sync is on its way.
    sync_scheduled: bool,
    /// Set when a write of this incarnation fails: every later one fails too,
    /// as the log's writer stops at its first error, and the node ends (the
    /// process must restart).
    failure: LogFailure,
    /// Draws sync delays and crash cuts.
    rng: StdRng,
    /// Longest delay before a sync, in ms.
    pub sync_delay_max_ms: u64,
    /// Writes and syncs done, for the report.
    pub syncs: u64,
    /// Called once when a vote next becomes durable (then cleared): the
    /// simulator's way to crash a node at that moment, mid-election.
    pub on_vote_synced: Option<Box<dyn FnOnce() + Send>>,
}

/// A disk shared by the node's stores and the simulator.
pub type Disk = Arc<Mutex<DiskState>>;

/// How many times the node owning `disk` has crashed: its current incarnation.
pub fn incarnation(disk: &Disk) -> u64 {
    locked(disk).incarnation
}

/// A fresh, empty disk.
pub fn new_disk(seed: u64, sync_delay_max_ms: u64) -> Disk {
    Arc::new(Mutex::new(DiskState {
        image: Image::default(),
        pending: VecDeque::new(),
        incarnation: 0,
        fault: DiskFault::None,
        sync_scheduled: false,
        failure: LogFailure::default(),
        rng: StdRng::seed_from_u64(seed),
        sync_delay_max_ms,
        syncs: 0,
        on_vote_synced: None,
    }))
}

fn locked(d: &Disk) -> std::sync::MutexGuard<'_, DiskState> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

fn fenced() -> io::Error {
    io::Error::other("simulated crash: this process is gone")
}

fn fault_error(f: DiskFault) -> io::Error {
    match f {
        DiskFault::Full => io::Error::new(io::ErrorKind::StorageFull, "no space left on device"),
        _ => io::Error::other("input/output error"),
    }
}

/// Crashes the node owning `disk`: fences its incarnation and keeps a random
/// prefix of its unsynced writes (a batch of entries cut anywhere). Returns how
/// many writes were lost.
pub fn crash(disk: &Disk) -> usize {
    let mut d = locked(disk);
    d.incarnation += 1;
    d.sync_scheduled = false;
    d.failure = LogFailure::default();
    let pending: Vec<(Write, Option<Done>)> = d.pending.drain(..).collect();
    let keep = d.rng.gen_range(0..=pending.len());
    let torn = d.rng.r#gen::<f64>();
    let lost = pending.len() - keep;
    for (i, (w, _done)) in pending.into_iter().enumerate() {
        if i < keep {
            d.image.apply(&w);
        } else if i == keep {
            // The write in progress: a prefix of its entries reached the disk.
            if let Write::Put(es) = w {
                let n = (es.len() as f64 * torn) as usize;
                d.image.apply(&Write::Put(es.into_iter().take(n).collect()));
            }
        }
        // Callbacks of lost writes are dropped: nobody is left to hear them.
    }
    lost
}

/// What the disk holds, for the trace.
pub fn describe(disk: &Disk) -> String {
    let d = locked(disk);
    let i = &d.image;
    let id = |l: Option<LogId>| {
        l.map_or("-".to_string(), |l| {
            format!("{}-{}", l.leader_id.term, l.index)
        })
    };
    format!(
        "disk: log {}..{} purged {} committed {} vote {} snapshot {}",
        i.entries
            .keys()
            .next()
            .map_or("-".into(), |k| k.to_string()),
        i.entries
            .values()
            .last()
            .map_or("-".into(), |e| id(Some(e.log_id))),
        id(i.last_purged),
        id(i.committed),
        i.vote.map_or("-".into(), |v| v.to_string()),
        i.snapshot
            .as_ref()
            .map_or("-".into(), |(m, _)| id(m.last_log_id)),
    )
}

/// Opens the node's stores on `disk` after a start or a crash: the log as the
/// disk holds it, the state machine from its snapshot.
pub fn open(disk: &Disk) -> Result<Storage<SimLogStore>, String> {
    let (image, incarnation, failure) = {
        let d = locked(disk);
        (d.image.clone(), d.incarnation, d.failure.clone())
    };
    if let Some(at) = image.hole() {
        return Err(format!("the log on disk has a hole before index {at}"));
    }
    let mut m = LogMirror::default();
    for e in image.entries.values() {
        let size = entry_bytes(e);
        m.insert(e.clone(), size);
    }
    m.last_purged = image.last_purged;
    m.committed = image.committed;
    m.vote = image.vote;
    #[cfg(test)]
    if crate::planted::active(crate::planted::Bug::VoteForgotten) {
        m.vote = None;
    }
    let mirror: SharedMirror = Arc::new(Mutex::new(m));
    let sink = Arc::new(SimSnapshots {
        disk: disk.clone(),
        incarnation,
    });
    let sm = StateMachineStore::restored(image.snapshot, sink).map_err(|e| e.to_string())?;
    Ok(Storage {
        log: SimLogStore {
            mirror: mirror.clone(),
            disk: disk.clone(),
            incarnation,
        },
        sm,
        mirror,
        failure,
    })
}

/// The snapshot files of a simulated node.
#[derive(Debug)]
struct SimSnapshots {
    disk: Disk,
    incarnation: u64,
}

impl SnapshotSink for SimSnapshots {
    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut d = locked(&self.disk);
        if d.incarnation != self.incarnation {
            return Err(fenced());
        }
        if d.fault != DiskFault::None {
            return Err(fault_error(d.fault));
        }
        d.image.snapshot = Some((meta.clone(), data.to_vec()));
        Ok(())
    }
}

impl Debug for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskState(incarnation {})", self.incarnation)
    }
}

/// openraft's log store on a simulated disk.
#[derive(Clone)]
pub struct SimLogStore {
    mirror: SharedMirror,
    disk: Disk,
    incarnation: u64,
}

impl Debug for SimLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimLogStore(incarnation {})", self.incarnation)
    }
}

impl SimLogStore {
    fn with<T>(&self, f: impl FnOnce(&mut LogMirror) -> T) -> T {
        f(&mut lock(&self.mirror))
    }

    /// Queues a write; a sync follows after a random delay.
    fn write(&self, w: Write, done: Option<Done>) -> io::Result<()> {
        let mut d = locked(&self.disk);
        if d.incarnation != self.incarnation {
            return Err(fenced());
        }
        if d.failure.is_set() {
            return Err(fault_error(DiskFault::Io));
        }
        d.pending.push_back((w, done));
        if !d.sync_scheduled {
            d.sync_scheduled = true;
            let hi = d.sync_delay_max_ms;
            let delay = d.rng.gen_range(0..=hi);
            let disk = self.disk.clone();
            let incarnation = self.incarnation;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                sync(&disk, incarnation);
            });
        }
        Ok(())
    }
}

/// Makes every pending write durable (or fails them all under a fault), then
/// tells their waiters, in order.
fn sync(disk: &Disk, incarnation: u64) {
    let (done, result) = {
        let mut d = locked(disk);
        if d.incarnation != incarnation {
            return;
        }
        d.sync_scheduled = false;
        let pending: Vec<(Write, Option<Done>)> = d.pending.drain(..).collect();
        let fault = d.fault;
        if fault != DiskFault::None {
            d.failure.set(fault_error(fault).to_string());
        }
        let mut done = Vec::new();
        let mut voted = false;
        for (w, waiter) in pending {
            if fault == DiskFault::None {
                voted |= matches!(w, Write::Vote(_));
                d.image.apply(&w);
            }
            done.extend(waiter);
        }
        d.syncs += 1;
        if voted && let Some(hook) = d.on_vote_synced.take() {
            hook();
        }
        let result = match fault {
            DiskFault::None => Ok(()),
            f => Err(f),
        };
        (done, result)
    };
    for waiter in done {
        waiter.complete(result.map_err(fault_error));
    }
}

impl RaftLogReader<TypeConfig> for SimLogStore {
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

impl RaftLogStorage<TypeConfig> for SimLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(self.with(|m| m.log_state()))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let (tx, rx) = oneshot::channel();
        self.write(Write::Vote(*vote), Some(Done::Reply(tx)))?;
        rx.await.map_err(|_| fenced())??;
        self.with(|m| m.vote = Some(*vote));
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.with(|m| m.committed = committed);
        self.write(Write::Committed(committed), None)
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
        self.with(|m| m.append(entries.clone()));
        #[cfg(test)]
        if crate::planted::active(crate::planted::Bug::AckBeforeSync) {
            callback.io_completed(Ok(()));
            return self.write(Write::Put(entries), None);
        }
        self.write(Write::Put(entries), Some(Done::Flushed(callback)))
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = self.with(|m| m.truncate_after(last))?;
        self.write(Write::TruncateFrom(from), None)
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        self.with(|m| m.purge(upto)).free_here();
        self.write(Write::Purge(upto), None)
    }
}
