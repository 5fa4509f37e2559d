//! The `RaftStateMachine` adapter: feeds committed entries to the pure
//! [`State::apply`], answers openraft's responders, and builds/installs snapshots
//! (the whole [`State`] as JSON, sessions included).
//!
//! Owns [`StateMachineStore`] (the lock around the applied state, what openraft's
//! responders are answered with) and the snapshot a node serves. May not decide
//! what an entry does (that is [`State::apply`]'s), nor write files: a durable
//! copy of a snapshot goes through a [`SnapshotSink`] that `crate::storage` hands in.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};

use super::inflight::{Inflight, Naming};
use super::{LogId, SnapshotMeta, TypeConfig};
use crate::state::{Outcome, SessionLimits, SnapshotError, State};

/// openraft's stored-membership type for our config.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A snapshot with our data type.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;

/// The applied state plus what openraft needs to resume.
#[derive(Debug, Default)]
pub struct Applied {
    /// The replicated state.
    pub state: State,
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
}

/// The snapshot a node serves to lagging followers.
#[derive(Debug)]
enum Kept {
    /// Its metadata and the state as JSON, in memory (no sink, or one that cannot
    /// read it back: Maelstrom mode, the simulator).
    Memory(SnapshotMeta, Vec<u8>),
    /// Only its metadata: the data is read back from the sink when a follower
    /// needs it, so a node does not hold a second copy of its whole state (as
    /// JSON, larger than the state itself) between snapshots.
    Durable(SnapshotMeta),
}

/// Where built and installed snapshots are made durable (TCP mode's data dir, see
/// `crate::storage`). Called off the async threads, before openraft is told the
/// snapshot exists, so openraft never purges log entries a snapshot on disk does
/// not cover.
pub trait SnapshotSink: Send + Sync + std::fmt::Debug + 'static {
    /// Makes this snapshot durable (returns once it is).
    fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()>;

    /// Where partial incoming snapshots are assembled (see
    /// [`super::snapshot_transfer`]); `None` keeps them in memory.
    fn incoming_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Whether [`SnapshotSink::load_newest`] reads saved snapshots back; if not,
    /// the store keeps the one it serves in memory.
    fn can_load(&self) -> bool {
        false
    }

    /// The newest durable snapshot, read back (a blocking read).
    fn load_newest(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        Ok(None)
    }
}

/// Shared handle: openraft applies through it, the node reads through it.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    applied: Arc<RwLock<Applied>>,
    /// The cluster clock of the applied state, mirrored outside the lock so the
    /// proposer can stamp entries without contending with the apply loop.
    clock_ms: Arc<std::sync::atomic::AtomicU64>,
    /// The latest snapshot built or installed, served to lagging followers.
    current: Arc<RwLock<Option<Kept>>>,
    /// Its size in bytes (0 before the first).
    current_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Where snapshots are persisted; `None` in Maelstrom mode (memory only).
    sink: Option<Arc<dyn SnapshotSink>>,
    /// Where every key-value operation that ran is recorded, if anyone asked
    /// (the simulator's check of exactly-once execution).
    journal: Option<Journal>,
    /// Evictions applied but not logged yet (their lines are rate-limited).
    evictions: EvictionNote,
    /// The GC entries of a removal applied so far (one line per removal).
    gc_run: GcRun,
    /// Session requests this node proposed as leader and retries waiting on
    /// them: each session entry applied is reported to it.
    inflight: Arc<Inflight>,
}

/// Sessions evicted (the session table at `sessions_max`) are logged at most
/// once per [`EVICTION_LOG_INTERVAL`], with the count since the last line: a
/// client opening sessions in a loop evicts one per open.
#[derive(Debug, Clone, Default)]
struct EvictionNote {
    /// Evicted since the last line.
    pending: u64,
    /// When the last line was written.
    logged_at: Option<std::time::Instant>,
}

/// Least time between two eviction lines.
const EVICTION_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl EvictionNote {
    /// Adds `n` evictions applied up to `index`; logs them (and any pending)
    /// unless a line was written less than the interval ago.
    fn add(&mut self, n: u64, index: u64, sessions_max: u64) {
        self.pending += n;
        if self.pending == 0 {
            return;
        }
        let now = std::time::Instant::now();
        if self
            .logged_at
            .is_some_and(|t| now.duration_since(t) < EVICTION_LOG_INTERVAL)
        {
            return;
        }
        tracing::info!(
            "{} sessions evicted, least recently used first (the table was at sessions_max \
             {sessions_max}), up to log index {index}",
            self.pending
        );
        self.pending = 0;
        self.logged_at = Some(now);
    }
}

/// The GC entries of one removal, applied so far. A removal of many idle
/// sessions spans many entries (at most `gc_sessions_per_entry_max` each), and a
/// line per entry would be thousands of lines: one line is written when the
/// removal ends (no session idle past its cutoff is left), each entry at DEBUG.
#[derive(Debug, Clone, Default)]
struct GcRun {
    /// The log index of its first entry, once one is applied.
    first_index: Option<u64>,
    /// Entries applied.
    entries: u64,
    /// Sessions they expired.
    expired: u64,
    /// The longest an entry took to apply.
    slowest: std::time::Duration,
}

impl GcRun {
    /// Adds the GC entry at `index`, which expired `expired` sessions in `took`,
    /// leaving `open`; `done` when no session idle past its cutoff is left. Logs
    /// the removal when it is done.
    fn add(&mut self, index: u64, expired: u64, took: std::time::Duration, open: u64, done: bool) {
        tracing::debug!(
            "GC entry at log index {index}: {expired} sessions expired in {} us, {open} open",
            took.as_micros()
        );
        let first = *self.first_index.get_or_insert(index);
        self.entries += 1;
        self.expired += expired;
        self.slowest = self.slowest.max(took);
        if !done {
            return;
        }
        if self.expired > 0 {
            tracing::info!(
                "GC: {} sessions expired (idle past the session timeout) by {} GC entries at \
                 log index {first} to {index}, {open} open; the slowest entry applied in {} us",
                self.expired,
                self.entries,
                self.slowest.as_micros()
            );
        }
        *self = GcRun::default();
    }
}

/// One key-value operation that ran (was not answered from the session table).
#[derive(Debug, Clone)]
pub struct Executed {
    /// The log index of its entry.
    pub index: u64,
    /// Its session, if it had one: `(client_id, seq)`.
    pub session: Option<(String, u64)>,
    /// What ran.
    pub op: crate::state::KvOp,
    /// What it answered.
    pub outcome: Outcome,
    /// Its request opened a session under an id with no record left: the id is
    /// new, or its tombstone was trimmed (then a late retry runs again, a window
    /// `docs/sessions.md` describes).
    pub fresh_session: bool,
}

/// What a state machine recorded for the simulator: every key-value operation
/// that ran, and a digest of the whole state after every applied entry,
/// installed snapshot and restore (so replicas can be compared index by index).
#[derive(Debug, Default)]
pub struct Record {
    /// Operations that ran, in apply order.
    pub executed: Vec<Executed>,
    /// (last applied index, FNV-1a of the state's JSON) after each step.
    pub states: Vec<(u64, u64)>,
}

/// The record, shared with whoever reads it.
pub type Journal = Arc<std::sync::Mutex<Record>>;

/// FNV-1a of the state's JSON: equal states, equal digests. (Hashed as it is
/// written, without building the JSON: this runs after every applied entry.)
fn digest(state: &State) -> u64 {
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            for b in buf {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    // Writing to memory cannot fail; a state that does not serialize would fail
    // snapshots long before this.
    let _ = serde_json::to_writer(&mut h, state);
    h.0
}

impl StateMachineStore {
    /// An empty state machine. Every replica starts from the same default limits;
    /// a node's configured limits reach the state only through a `SetLimits` log
    /// entry, so replicas configured differently still apply one history.
    pub fn new() -> Self {
        StateMachineStore {
            applied: Arc::new(RwLock::new(Applied {
                state: State::new(SessionLimits::default()),
                ..Applied::default()
            })),
            current: Arc::new(RwLock::new(None)),
            current_bytes: Arc::default(),
            clock_ms: Arc::default(),
            sink: None,
            journal: None,
            inflight: Arc::default(),
            evictions: EvictionNote::default(),
            gc_run: GcRun::default(),
        }
    }

    /// Records every key-value operation that runs, and the state's digest after
    /// every step, in `journal` from now on (set before the store is handed to
    /// Raft: clones made earlier do not record).
    pub fn set_journal(&mut self, journal: Journal) {
        let a = self.read();
        if let Some(at) = a.last_applied {
            lock_record(&journal)
                .states
                .push((at.index(), digest(&a.state)));
        }
        drop(a);
        self.journal = Some(journal);
    }

    fn record_state(&self, a: &Applied) {
        if let (Some(journal), Some(at)) = (&self.journal, a.last_applied) {
            lock_record(journal)
                .states
                .push((at.index(), digest(&a.state)));
        }
    }

    /// Expires sessions by a replica's own clock: the planted bug
    /// `GcByLocalClock` (test builds only).
    #[cfg(test)]
    pub fn planted_local_gc(&self, cutoff_ms: u64) {
        let mut a = self.write();
        let limits = a.state.limits;
        a.state
            .sessions
            .expire_before(cutoff_ms, usize::MAX, &limits);
    }

    /// The applied state's cluster clock (ms).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Read access if nobody is applying right now; for best-effort fast paths.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, Applied>> {
        self.applied.try_read().ok()
    }

    /// A state machine restored from a durable snapshot (or empty without one) that
    /// persists every later snapshot to `sink`. openraft then re-applies only the
    /// committed log after the snapshot.
    pub fn restored(
        snapshot: Option<(SnapshotMeta, Vec<u8>)>,
        sink: Arc<dyn SnapshotSink>,
    ) -> Result<Self, SnapshotError> {
        let mut sm = StateMachineStore::new();
        sm.sink = Some(sink);
        if let Some((meta, data)) = snapshot {
            let state = State::from_snapshot(&data)?;
            tracing::info!(
                "loaded the snapshot up to log index {} ({} bytes, {} sessions, {} keys)",
                meta.last_log_id.map_or(0, |l| l.index()),
                data.len(),
                state.sessions.len(),
                state.kv.len()
            );
            sm.clock_ms
                .store(state.clock_ms, std::sync::atomic::Ordering::Release);
            *sm.write() = Applied {
                state,
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            let bytes = data.len();
            sm.keep(meta, data, bytes);
        }
        Ok(sm)
    }

    /// Whether snapshots are durable and read back to be served (TCP mode):
    /// then a snapshot costs a write of the whole state to disk.
    pub fn durable_snapshots(&self) -> bool {
        self.sink.as_ref().is_some_and(|s| s.can_load())
    }

    /// Whether the snapshot `meta` describes is served from the sink's file: a
    /// snapshot of nothing (no log id) is not saved, so it stays in memory.
    fn reads_back(&self, meta: &SnapshotMeta) -> bool {
        self.durable_snapshots() && meta.last_log_id.is_some()
    }

    /// The size of the latest snapshot built or installed (0 before the first).
    pub fn snapshot_bytes(&self) -> u64 {
        self.current_bytes
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes (`meta`, `data`) the snapshot served: in memory, or only its
    /// metadata when the sink can read the data back. `bytes` is its size.
    fn keep(&self, meta: SnapshotMeta, data: Vec<u8>, bytes: usize) {
        (self.current_bytes).store(bytes as u64, std::sync::atomic::Ordering::Release);
        let kept = if self.reads_back(&meta) {
            Kept::Durable(meta)
        } else {
            Kept::Memory(meta, data)
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(kept);
    }

    /// Persists a snapshot through the sink, if any, on a blocking thread; hands
    /// the data back (moved there and back, not copied).
    async fn persist(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<Vec<u8>, io::Error> {
        let Some(sink) = self.sink.clone() else {
            return Ok(data);
        };
        let meta = meta.clone();
        super::runtime::blocking(move || sink.save(&meta, &data).map(|()| data)).await?
    }

    /// Where partial incoming snapshots go: the sink's directory, if any.
    pub fn incoming_dir(&self) -> Option<std::path::PathBuf> {
        self.sink.as_ref().and_then(|s| s.incoming_dir())
    }

    /// The registry of session requests in flight at this leader, which
    /// retries join (see [`super::inflight`]).
    pub fn inflight(&self) -> &Inflight {
        &self.inflight
    }

    /// Read access for linearizable reads and cache look-ups. Hold it briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }

    async fn snapshot_now(&self) -> Result<Snapshot, io::Error> {
        // Copy under the read lock and serialize after it: applies wait only for
        // the copy (microseconds: it shares the persistent maps, see
        // `State::snapshot_copy`), not for the JSON encoding or the disk. The
        // phases' wall times go in the log line (measured, not simulated, time).
        let started = std::time::Instant::now();
        let (meta, state) = {
            let applied = self.read();
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            (meta, applied.state.snapshot_copy())
        };
        let copied = started.elapsed();
        let (sessions, keys) = (state.sessions.len(), state.kv.len());
        // Encoding a large state takes long: off the runtime's workers (a node
        // sharing its machine may have only one), so heartbeats keep flowing.
        let expected = usize::try_from(self.snapshot_bytes()).unwrap_or(0);
        let data = super::runtime::blocking(move || state.to_snapshot_sized(expected)).await?;
        let encoded = started.elapsed();
        let data = self.persist(&meta, data).await?;
        let done = started.elapsed();
        tracing::info!(
            "snapshot taken up to log index {} ({} bytes, {sessions} sessions, {keys} keys; \
             copied under the lock in {} ms, encoded in {} ms, persisted in {} ms)",
            meta.last_log_id.map_or(0, |l| l.index()),
            data.len(),
            copied.as_millis(),
            (encoded - copied).as_millis(),
            (done - encoded).as_millis(),
        );
        // openraft only reads the metadata of what it built: with a sink that
        // reads back, the data goes with the returned snapshot and is dropped.
        let kept = if self.reads_back(&meta) {
            Vec::new()
        } else {
            data.clone()
        };
        self.keep(meta.clone(), kept, data.len());
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

fn lock_record(j: &Journal) -> std::sync::MutexGuard<'_, Record> {
    j.lock().unwrap_or_else(|p| p.into_inner())
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Default for StateMachineStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        self.snapshot_now().await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let a = self.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let mut evictions = None;
            let mut gc = None;
            let reply = {
                let mut a = self.write();
                a.last_applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => Outcome::Applied,
                    EntryPayload::Normal(ref cmd) => {
                        let index = entry.log_id.index();
                        let before = a.state.sessions.len() as u64;
                        let opens = match &cmd.op {
                            crate::state::Op::OpenSession => 1,
                            crate::state::Op::Kv {
                                session: Some(s), ..
                            } if !a.state.sessions.is_known(&s.client_id) => 1,
                            _ => 0,
                        };
                        let started = std::time::Instant::now();
                        let (reply, ran) = a.state.apply_traced(index, cmd);
                        let took = started.elapsed();
                        let after = a.state.sessions.len() as u64;
                        if let crate::state::Op::Gc { cutoff_ms, .. } = cmd.op {
                            let done = a
                                .state
                                .sessions
                                .oldest_last_seen_ms()
                                .is_none_or(|o| o >= cutoff_ms);
                            let expired = before.saturating_sub(after);
                            gc = Some((index, expired, took, after, done));
                        } else if opens == 1 {
                            let evicted = (before + 1).saturating_sub(after);
                            evictions = Some((evicted, index, a.state.limits.sessions_max));
                        }
                        if let (Some(fresh), Some(journal), crate::state::Op::Kv { kv, session }) =
                            (ran, &self.journal, &cmd.op)
                        {
                            lock_record(journal).executed.push(Executed {
                                index: entry.log_id.index(),
                                session: session.as_ref().map(|s| (s.client_id.to_string(), s.seq)),
                                op: kv.clone(),
                                outcome: reply.clone(),
                                fresh_session: fresh,
                            });
                        }
                        self.clock_ms
                            .store(a.state.clock_ms, std::sync::atomic::Ordering::Release);
                        match &cmd.op {
                            crate::state::Op::Kv {
                                session: Some(s), ..
                            } => self
                                .inflight
                                .applied(&s.client_id, Naming::Seq(s.seq), &reply),
                            crate::state::Op::CloseSession { client_id } => {
                                self.inflight.applied(client_id, Naming::Close, &reply)
                            }
                            _ => {}
                        }
                        reply
                    }
                    EntryPayload::Membership(ref m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Outcome::Applied
                    }
                };
                self.record_state(&a);
                reply
            };
            if let Some((n, index, sessions_max)) = evictions {
                self.evictions.add(n, index, sessions_max);
            }
            if let Some((index, expired, took, open, done)) = gc {
                self.gc_run.add(index, expired, took, open, done);
            }
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<(), io::Error> {
        // Decoding is as slow as encoding: off the workers too (see snapshot_now).
        let (state, data) = super::runtime::blocking(move || {
            let state = State::from_snapshot(&data);
            (state, data)
        })
        .await?;
        let state = state.map_err(invalid)?;
        // Durable before openraft purges the log it replaces.
        let data = self.persist(meta, data).await?;
        tracing::info!(
            "snapshot installed up to log index {} ({} bytes, {} sessions, {} keys)",
            meta.last_log_id.map_or(0, |l| l.index()),
            data.len(),
            state.sessions.len(),
            state.kv.len()
        );
        {
            let mut a = self.write();
            self.clock_ms
                .store(state.clock_ms, std::sync::atomic::Ordering::Release);
            a.state = state;
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            self.record_state(&a);
        }
        let bytes = data.len();
        self.keep(meta.clone(), data, bytes);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let durable = {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            match &*cur {
                None => return Ok(None),
                Some(Kept::Memory(meta, data)) => {
                    return Ok(Some(Snapshot {
                        meta: meta.clone(),
                        snapshot: data.clone(),
                    }));
                }
                Some(Kept::Durable(meta)) => meta.clone(),
            }
        };
        let sink = self.sink.clone().expect("a durable snapshot has a sink");
        // The newest durable one: the one kept, or a newer one saved since
        // (saved before it is kept, so never an older one).
        match super::runtime::blocking(move || sink.load_newest()).await?? {
            Some((meta, data)) => Ok(Some(Snapshot {
                meta,
                snapshot: data,
            })),
            None => Err(io::Error::other(format!(
                "the snapshot up to {:?} is no longer on disk",
                durable.last_log_id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GcRun;
    use std::time::Duration;

    #[test]
    fn a_removal_over_many_gc_entries_is_summed_until_its_last() {
        let mut run = GcRun::default();
        run.add(10, 250, Duration::from_micros(900), 750, false);
        run.add(11, 250, Duration::from_micros(1400), 500, false);
        assert_eq!(run.first_index, Some(10));
        assert_eq!((run.entries, run.expired), (2, 500));
        assert_eq!(run.slowest, Duration::from_micros(1400));
        // The last entry ends the removal: the next starts afresh.
        run.add(12, 100, Duration::from_micros(300), 400, true);
        assert_eq!(run.first_index, None);
        assert_eq!((run.entries, run.expired), (0, 0));
        run.add(20, 3, Duration::from_micros(5), 397, true);
        assert_eq!(run.first_index, None);
    }
}
