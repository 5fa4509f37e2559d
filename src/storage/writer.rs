//! The group-commit writer: one thread owns the redb write side, drains a bounded
//! queue of pending operations, writes every operation it drained in one
//! transaction, commits it once (one fsync) and only then completes each
//! operation's callback.
//!
//! ```text
//! append ─┐                          ┌─────────── one write transaction ───────────┐
//! append ─┼─▶ bounded queue ─▶ drain ─▶ put, put, truncate, put, vote ─▶ commit+fsync ─▶ complete all
//! vote  ──┘   (QUEUE_JOBS_MAX)        (≤ BATCH_JOBS_MAX jobs)
//! ```
//!
//! Operations commit in the order they were queued, and a batch commits whole or
//! not at all, so a crash never leaves a later operation durable without an earlier
//! one (no hole, no append that survives its preceding truncate).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use openraft::storage::IOFlushed;
use redb::{Database, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::raft::TypeConfig;

/// Log entries by index, each the JSON of an openraft `Entry`.
pub const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small records by name: [`META_VOTE`], [`META_COMMITTED`], [`META_LAST_PURGED`].
pub const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The vote (JSON).
pub const META_VOTE: &str = "vote";
/// The committed log id (JSON, `null` when none).
pub const META_COMMITTED: &str = "committed";
/// The last purged log id (JSON).
pub const META_LAST_PURGED: &str = "last_purged";

/// Operations waiting in the queue at most; `append` waits (backpressure) beyond.
pub const QUEUE_JOBS_MAX: usize = 4096;
/// Operations written by one transaction at most, so one commit's latency stays bounded.
pub const BATCH_JOBS_MAX: usize = 1024;

/// One durable change.
#[derive(Debug)]
pub enum Op {
    /// Insert these (index, encoded entry) pairs.
    Put(Vec<(u64, Vec<u8>)>),
    /// Remove every entry at this index or later.
    TruncateFrom(u64),
    /// Remove every entry up to this index inclusive, and record the purged id.
    PurgeUpto(u64, Vec<u8>),
    /// Set a meta record.
    Meta(&'static str, Vec<u8>),
}

/// Who to tell once an operation is durable (or failed).
pub enum Done {
    /// openraft's append callback.
    Flushed(IOFlushed<TypeConfig>),
    /// A caller awaiting the result (`save_vote`).
    Reply(oneshot::Sender<io::Result<()>>),
    /// Nobody: ordered behind earlier work, durable with the next commit.
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
    /// Transactions committed (one fsync each).
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
/// database closes cleanly) when the last handle drops.
pub struct Writer {
    /// The queue; `None` once shutting down.
    tx: Option<mpsc::Sender<(Op, Done)>>,
    /// Counters, also updated by the thread.
    stats: Arc<Stats>,
    /// Set after a failed commit: later operations fail too, since the in-memory
    /// log is then ahead of the disk and continuing could leave a hole.
    failed: Arc<AtomicBool>,
    /// The thread, joined on drop so the file lock is released when we return.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Writer {
    /// Starts the writer thread on `db`.
    pub fn start(db: Database) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE_JOBS_MAX);
        let stats = Arc::new(Stats::default());
        let failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stats, failed) = (stats.clone(), failed.clone());
            std::thread::Builder::new()
                .name("oncekv-log-writer".into())
                .spawn(move || run(db, rx, &stats, &failed))?
        };
        Ok(Writer {
            tx: Some(tx),
            stats,
            failed,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `op`; `done` is completed once it is durable. Waits while the queue is full.
    pub async fn submit(&self, op: Op, done: Done) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "log writer failed earlier; refusing writes",
            ));
        }
        self.stats.jobs.fetch_add(1, Ordering::Relaxed);
        if matches!(op, Op::Put(_)) {
            self.stats.appends.fetch_add(1, Ordering::Relaxed);
        }
        let tx = self.tx.as_ref().expect("writer running until dropped");
        tx.send((op, done))
            .await
            .map_err(|_| io::Error::other("log writer thread stopped"))
    }

    /// Queues `op` and waits until it is durable.
    pub async fn submit_and_wait(&self, op: Op) -> io::Result<()> {
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

/// The thread: take one job (blocking), drain what else is queued, commit once.
fn run(db: Database, mut rx: mpsc::Receiver<(Op, Done)>, stats: &Stats, failed: &AtomicBool) {
    let mut batch: Vec<(Op, Done)> = Vec::with_capacity(BATCH_JOBS_MAX);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH_JOBS_MAX {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = if failed.load(Ordering::Acquire) {
            Err("log writer failed earlier; refusing writes".to_string())
        } else {
            let r = write_batch(&db, batch.iter().map(|(op, _)| op));
            match &r {
                Ok(()) => {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!("log commit failed: {e}");
                    failed.store(true, Ordering::Release);
                }
            }
            r
        };
        for (_, done) in batch.drain(..) {
            done.complete(&result);
        }
    }
}

/// Writes `ops` in one transaction and commits it durably (redb's default
/// `Durability::Immediate`: the commit returns after fsync; two-phase, so two).
fn write_batch<'a>(db: &Database, ops: impl Iterator<Item = &'a Op>) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    // See `log_store::open_verified`: a damaged commit is then an error, never a rollback.
    txn.set_two_phase_commit(true);
    {
        let mut log = txn.open_table(LOG_TABLE).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META_TABLE).map_err(|e| e.to_string())?;
        for op in ops {
            apply(op, &mut log, &mut meta).map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

fn apply(
    op: &Op,
    log: &mut redb::Table<u64, &[u8]>,
    meta: &mut redb::Table<&str, &[u8]>,
) -> Result<(), redb::StorageError> {
    match op {
        Op::Put(entries) => {
            for (index, bytes) in entries {
                log.insert(*index, bytes.as_slice())?;
            }
        }
        Op::TruncateFrom(from) => log.retain_in(*from.., |_, _| false)?,
        Op::PurgeUpto(upto, id) => {
            log.retain_in(..=*upto, |_, _| false)?;
            meta.insert(META_LAST_PURGED, id.as_slice())?;
        }
        Op::Meta(key, bytes) => {
            meta.insert(*key, bytes.as_slice())?;
        }
    }
    Ok(())
}
