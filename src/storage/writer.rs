//! The group-commit writer: one thread owns the [`Wal`], drains a bounded queue
//! of pending operations, writes every operation it drained with one synced write
//! (an `O_DIRECT | O_DSYNC` write by default, `pwrite` + `fdatasync` under
//! `--wal-io buffered`; see [`super::wal::WalIo`]) and only then completes each
//! operation's callback.
//!
//! ```text
//! append ─┐                          ┌──────────── one write, one sync ────────────┐
//! append ─┼─▶ bounded queue ─▶ drain ─▶ put, put, truncate, put, vote ─▶ synced write ─▶ complete all
//! vote  ──┘   (QUEUE_JOBS_MAX)        (≤ BATCH_JOBS_MAX jobs)
//! ```
//!
//! Operations reach the log in the order they were queued and a crash keeps a
//! prefix of them (a torn last write is dropped at open), so a crash never leaves
//! a later operation durable without an earlier one (no hole, no append that
//! survives its preceding truncate). No callback runs before its sync returned.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use openraft::storage::IOFlushed;
use tokio::sync::{mpsc, oneshot};

use super::wal::{CHECKPOINT_INTERVAL, Record, Wal};
use crate::raft::TypeConfig;
use crate::raft::log_store::LogFailure;

/// Operations waiting in the queue at most; `append` waits (backpressure) beyond.
pub const QUEUE_JOBS_MAX: usize = 4096;
/// Operations written by one batch at most, so one sync's latency stays bounded.
pub const BATCH_JOBS_MAX: usize = 1024;

/// One durable change.
#[derive(Debug)]
pub enum Change {
    /// Insert these (index, encoded entry) pairs.
    Put(Vec<(u64, Vec<u8>)>),
    /// Remove every entry at this index or later.
    TruncateFrom(u64),
    /// Remove every entry up to this index inclusive, and record the purged id.
    PurgeUpto(u64, Vec<u8>),
    /// Record the vote.
    Vote(Vec<u8>),
}

/// Who to tell once an operation is durable (or failed).
pub enum Done {
    /// openraft's append callback.
    Flushed(IOFlushed<TypeConfig>),
    /// A caller awaiting the result (`save_vote`).
    Reply(oneshot::Sender<io::Result<()>>),
    /// Nobody: ordered behind earlier work, written at once and durable with the
    /// next sync (a batch of only these is not synced on its own).
    Nothing,
}

impl Done {
    fn complete(self, result: &Result<(), String>) {
        let result = result.clone().map_err(io::Error::other);
        match self {
            Done::Flushed(cb) => cb.io_completed(result),
            Done::Reply(tx) => {
                // The caller may have given up waiting; nothing to do then.
                let _ = tx.send(result);
            }
            Done::Nothing => {}
        }
    }
}

/// Counters for the group-commit figures.
#[derive(Debug, Default)]
pub struct Stats {
    /// Operations queued (appends, truncates, purges, meta writes).
    pub jobs: AtomicU64,
    /// `append` calls among them.
    pub appends: AtomicU64,
    /// Batches made durable (one synced write each, more if a batch is large).
    pub commits: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Operations queued.
    pub jobs: u64,
    /// `append` calls.
    pub appends: u64,
    /// Durable commits.
    pub commits: u64,
}

/// The sending side, shared by the store and its readers; the thread stops (and the
/// log files close cleanly) when the last handle drops.
pub struct Writer {
    /// The queue; `None` once shutting down.
    tx: Option<mpsc::Sender<(Change, Done)>>,
    /// Counters, also updated by the thread.
    stats: Arc<Stats>,
    /// Set after a failed commit: later operations fail too, since the in-memory
    /// log is then ahead of the disk and continuing could leave a hole.
    failed: LogFailure,
    /// The thread, joined on drop so the file lock is released when we return.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The newest committed pointer not yet handed to the thread (see
    /// [`Writer::set_committed`]).
    committed: Arc<Mutex<Option<Vec<u8>>>>,
    /// The log, locked by whoever writes a batch: the thread, or a caller
    /// writing inline ([`Writer::try_inline`]).
    wal: Arc<Mutex<Wal>>,
    /// Operations queued and not yet completed by the thread.
    outstanding: Arc<AtomicU64>,
    /// The checkpoint ticker ([`checkpoint_ticker`]) and its stop flag.
    ticker: Mutex<Option<(JoinHandle<()>, Arc<AtomicBool>)>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Writer {
    /// Starts the writer thread on `wal`.
    pub fn start(wal: Wal) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE_JOBS_MAX);
        let stats = Arc::new(Stats::default());
        let failed = LogFailure::default();
        let committed: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let wal = Arc::new(Mutex::new(wal));
        let outstanding = Arc::new(AtomicU64::new(0));
        let thread = {
            let shared = Shared {
                stats: stats.clone(),
                failed: failed.clone(),
                committed: committed.clone(),
                wal: wal.clone(),
                outstanding: outstanding.clone(),
            };
            // The thread is set up (named, scheduling policy set) before the
            // log is handed out.
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("oncekv-log-writer".into())
                .spawn(move || {
                    no_wakeup_preemption();
                    let _ = ready_tx.send(());
                    run(rx, &shared)
                })?;
            let _ = ready_rx.recv();
            thread
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (wal, failed, stop) = (wal.clone(), failed.clone(), stop.clone());
            std::thread::Builder::new()
                .name("oncekv-log-checkpoint".into())
                .spawn(move || checkpoint_ticker(&wal, &failed, &stop))?
        };
        Ok(Writer {
            tx: Some(tx),
            stats,
            failed,
            thread: Mutex::new(Some(thread)),
            committed,
            wal,
            outstanding,
            ticker: Mutex::new(Some((ticker, stop))),
        })
    }

    /// Set once a write fails (shared with the node, which then ends).
    pub fn failure(&self) -> LogFailure {
        self.failed.clone()
    }

    /// Records the committed pointer (its JSON) lazily: it is written at the end
    /// of the next batch (after every entry it covers, which were queued before
    /// it), or at close, and never wakes the thread by itself. A newer pointer
    /// replaces one not yet written. Losing the newest one in a crash only makes
    /// the restarted node re-apply less before the leader tells it more.
    pub fn set_committed(&self, bytes: Vec<u8>) {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    }

    /// Queues `op`; `done` is completed once it is durable. Waits while the queue is full.
    pub async fn submit(&self, op: Change, done: Done) -> io::Result<()> {
        if let Some(why) = self.failed.get() {
            return Err(io::Error::other(format!(
                "log writer failed earlier ({why}); refusing writes"
            )));
        }
        self.stats.jobs.fetch_add(1, Ordering::Relaxed);
        if matches!(op, Change::Put(_)) {
            self.stats.appends.fetch_add(1, Ordering::Relaxed);
        }
        let tx = self.tx.as_ref().expect("writer running until dropped");
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        tx.send((op, done)).await.map_err(|_| {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            io::Error::other("log writer thread stopped")
        })
    }

    /// Writes and syncs `op` on the calling thread, then completes `done`, if
    /// nothing is queued ahead of it and nobody is writing; otherwise hands both
    /// back. Saves the two thread wake-ups of the queue (to the writer and back)
    /// at the price of blocking the caller for one sync: for a follower's append,
    /// which its leader waits on and which has nothing to overlap with.
    ///
    /// Order: every operation comes from openraft's one core task, one call at a
    /// time, so none can be queued between the check and the write.
    pub fn try_inline(&self, op: Change, done: Done) -> Result<(), (Change, Done)> {
        if self.failed.is_set() || self.outstanding.load(Ordering::Acquire) != 0 {
            return Err((op, done));
        }
        let Ok(mut wal) = self.wal.try_lock() else {
            return Err((op, done));
        };
        if self.outstanding.load(Ordering::Acquire) != 0 {
            return Err((op, done));
        }
        self.stats.jobs.fetch_add(1, Ordering::Relaxed);
        if matches!(op, Change::Put(_)) {
            self.stats.appends.fetch_add(1, Ordering::Relaxed);
        }
        let pending = self
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let once = std::iter::once(&op);
        let result = commit(&mut wal, once, pending, true, &self.stats, &self.failed);
        drop(wal);
        done.complete(&result);
        Ok(())
    }

    /// Queues `op` and waits until it is durable.
    pub async fn submit_and_wait(&self, op: Change) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(op, Done::Reply(tx)).await?;
        rx.await
            .map_err(|_| io::Error::other("log writer thread stopped"))?
    }

    /// The counters so far.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            jobs: self.stats.jobs.load(Ordering::Relaxed),
            appends: self.stats.appends.load(Ordering::Relaxed),
            commits: self.stats.commits.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let ticker = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((t, stop)) = ticker {
            stop.store(true, Ordering::Release);
            t.thread().unpark();
            let _ = t.join();
        }
        // Closing the queue ends the thread after it commits what is queued.
        drop(self.tx.take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            tracing::error!("log writer thread panicked");
        }
    }
}

/// Puts the calling thread in `SCHED_BATCH`: its CPU share is unchanged (unlike
/// `nice`, it cannot be starved), but waking it never preempts the thread that
/// woke it. A leader queues its own append and then sends the entries to its
/// followers; on a busy core the writer used to take the CPU before those sends
/// went out (measured: +5% writes/s at one client, docs/benchmarks.md). A
/// refusal (not Linux, a seccomp policy) changes nothing but that.
fn no_wakeup_preemption() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` outlives the call; pid 0 is the calling thread.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if r != 0 {
            tracing::debug!(
                "SCHED_BATCH for the log writer refused: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// What the thread shares with the [`Writer`].
struct Shared {
    stats: Arc<Stats>,
    failed: LogFailure,
    committed: Arc<Mutex<Option<Vec<u8>>>>,
    wal: Arc<Mutex<Wal>>,
    outstanding: Arc<AtomicU64>,
}

/// Records the synced position in the WAL's checkpoint every
/// [`CHECKPOINT_INTERVAL`] while it moves (see `wal::checkpoint`), until `stop`.
/// A failure is a failed log write: the writer refuses later operations.
fn checkpoint_ticker(wal: &Mutex<Wal>, failed: &LogFailure, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(CHECKPOINT_INTERVAL);
        if stop.load(Ordering::Acquire) || failed.is_set() {
            continue;
        }
        let mut wal = wal.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = wal.checkpoint_if_stale(false) {
            tracing::error!("log checkpoint failed: {e}");
            failed.set(format!("log checkpoint failed: {e}"));
        }
    }
}

/// The thread: take one job (blocking), drain what else is queued, commit once.
fn run(mut rx: mpsc::Receiver<(Change, Done)>, shared: &Shared) {
    let Shared {
        stats,
        failed,
        committed,
        wal,
        outstanding,
    } = shared;
    let take_committed = || committed.lock().unwrap_or_else(|p| p.into_inner()).take();
    let mut batch: Vec<(Change, Done)> = Vec::with_capacity(BATCH_JOBS_MAX);
    while let Some(first) = rx.blocking_recv() {
        let mut wal = wal.lock().unwrap_or_else(|p| p.into_inner());
        // Taken before draining: the entries a committed pointer covers were
        // queued before it was set, so a drain that empties the queue holds them.
        let mut pending = take_committed();
        batch.push(first);
        let mut emptied = false;
        while batch.len() < BATCH_JOBS_MAX {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => {
                    emptied = true;
                    break;
                }
            }
        }
        if !emptied && let Some(c) = pending.take() {
            // Some covered entries may still be queued: leave it for a later
            // batch, unless a newer pointer arrived meanwhile.
            let mut slot = committed.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(c);
            }
        }
        let result = if let Some(why) = failed.get() {
            Err(format!(
                "log writer failed earlier ({why}); refusing writes"
            ))
        } else {
            // A batch nobody waits on (a truncate or purge queued ahead of
            // appends) is written now and synced by the next one.
            let sync = batch.iter().any(|(_, done)| !matches!(done, Done::Nothing));
            let ops = batch.iter().map(|(op, _)| op);
            commit(&mut wal, ops, pending, sync, stats, failed)
        };
        drop(wal);
        let n = batch.len() as u64;
        for (_, done) in batch.drain(..) {
            done.complete(&result);
        }
        outstanding.fetch_sub(n, Ordering::AcqRel);
    }
    // Closing: the last committed pointer, and what was written without a sync.
    let mut wal = wal.lock().unwrap_or_else(|p| p.into_inner());
    if !failed.is_set()
        && let Err(e) = write_batch(&mut wal, std::iter::empty(), take_committed(), true)
    {
        tracing::error!("log sync at close failed: {e}");
    }
}

/// [`write_batch`], counting a sync in `stats`; a failure is logged and marks
/// the writer failed (the in-memory log is then ahead of the disk).
fn commit<'a>(
    wal: &mut Wal,
    ops: impl Iterator<Item = &'a Change>,
    committed: Option<Vec<u8>>,
    sync: bool,
    stats: &Stats,
    failed: &LogFailure,
) -> Result<(), String> {
    let r = write_batch(wal, ops, committed, sync);
    match &r {
        Ok(()) if sync => {
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(()) => {}
        Err(e) => {
            tracing::error!("log commit failed: {e}");
            failed.set(format!("log commit failed: {e}"));
        }
    }
    r
}

/// Writes `ops`, then the committed pointer if one is pending, and syncs if `sync`.
fn write_batch<'a>(
    wal: &mut Wal,
    ops: impl Iterator<Item = &'a Change>,
    committed: Option<Vec<u8>>,
    sync: bool,
) -> Result<(), String> {
    for op in ops {
        push(wal, op).map_err(|e| e.to_string())?;
    }
    if let Some(c) = &committed {
        wal.push(Record::Committed(c)).map_err(|e| e.to_string())?;
    }
    if sync {
        wal.commit()
    } else {
        wal.write_unsynced()
    }
    .map_err(|e| e.to_string())
}

fn push(wal: &mut Wal, op: &Change) -> io::Result<()> {
    match op {
        Change::Put(entries) => {
            for (index, bytes) in entries {
                wal.push(Record::Entry(*index, bytes))?;
            }
            Ok(())
        }
        Change::TruncateFrom(from) => wal.push(Record::TruncateFrom(*from)),
        Change::PurgeUpto(upto, id) => wal.push(Record::Purge(*upto, id)),
        Change::Vote(bytes) => wal.push(Record::Vote(bytes)),
    }
}
