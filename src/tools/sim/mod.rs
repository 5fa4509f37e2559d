//! `oncekv sim`: a deterministic simulation of a whole cluster in one process.
//!
//! The real node (the Maelstrom transport, the connection driver, the node's
//! serving, forwarding and duties, openraft, the state machine) runs 3 or 5 times
//! on one thread, on tokio's current-thread runtime with its clock paused: time
//! moves only when every task waits, straight to the next timer, so a minute of
//! cluster time passes in a fraction of a second and nothing depends on the
//! machine. Everything random comes from the seed: the network ([`net`]: loss,
//! duplication, delay and reordering, partitions of every shape), the disks
//! ([`disk`]: sync delays, what a crash keeps, full disks, I/O errors), the faults
//! and their timing, each node's wall clock (jumps forwards and backwards),
//! openraft's election timeouts (`crate::raft::runtime`), and the clients
//! ([`client`]). One seed, one run: the trace hash proves it.
//!
//! ```text
//!   clients ──lines──▶ ┌─────────── Net (loss, dup, delay, partitions) ───────────┐
//!      ▲               ▼                       ▼                       ▼
//!      │          n0 stdin                n1 stdin                n2 stdin
//!      │          maelstrom::run_on       maelstrom::run_on       maelstrom::run_on
//!      │          Node + openraft         Node + openraft         Node + openraft
//!      │          SimLogStore ── disk     SimLogStore ── disk     SimLogStore ── disk
//!      └──────────  n0 stdout ─────────── n1 stdout ───────────── n2 stdout ──▶ Net
//! ```
//!
//! A run: faults for the first part of the run, then everything heals (links,
//! disks, crashed nodes restart) and the clients must all get definite answers
//! within a bound; then the replicas must converge and [`check`] judges the run.

pub mod check;
pub mod client;
pub mod disk;
pub mod net;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Config;
use crate::maelstrom::{self, Backing};
use crate::node::{Node, WallClock};
use crate::raft::runtime::{seed_this_thread, splitmix64};
use crate::raft::sm_store::{Journal, StateMachineStore};
use crate::state::SessionLimits;
use crate::tools::history::HistoryOp;
use disk::{Disk, DiskFault};
use net::Net;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Cluster size: 3 or 5.
    pub nodes: usize,
    /// Simulated length of the run, ms (faults in the first 60%).
    pub duration_ms: u64,
    /// Client workers.
    pub clients: usize,
    /// Keep the trace's lines (for `--trace`), not only its hash.
    pub keep_trace: bool,
    /// Also hand each trace line here as it happens (a run that hangs still
    /// shows how it got there).
    pub live: Option<std::sync::mpsc::Sender<String>>,
    /// How long after the last fault heals every client must have a definite
    /// answer, ms.
    pub liveness_ms: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            duration_ms: 60_000,
            clients: 5,
            keep_trace: false,
            live: None,
            liveness_ms: 20_000,
        }
    }
}

/// The run's trace: every event in order, hashed (FNV-1a, stable across runs
/// and machines), and kept as lines if asked.
#[derive(Debug)]
pub struct Trace {
    /// Events so far, read by the hang watchdog from another thread.
    progress: Arc<std::sync::atomic::AtomicU64>,
    live: Option<std::sync::mpsc::Sender<String>>,
    start: Instant,
    hash: u64,
    lines: Option<Vec<String>>,
    events: u64,
}

impl Trace {
    fn new(
        start: Instant,
        keep: bool,
        live: Option<std::sync::mpsc::Sender<String>>,
        progress: Arc<std::sync::atomic::AtomicU64>,
    ) -> Trace {
        Trace {
            progress,
            live,
            start,
            hash: 0xcbf2_9ce4_8422_2325,
            lines: keep.then(Vec::new),
            events: 0,
        }
    }

    /// Milliseconds of simulated time since the start.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Adds bytes to the hash.
    pub fn hash_bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Records one event, stamped with the simulated time. Only hashed (no text
    /// is built) unless its lines are kept or watched.
    pub fn event(&mut self, what: std::fmt::Arguments<'_>) {
        self.events += 1;
        self.progress.store(self.events, Ordering::Relaxed);
        let now = self.now_ms();
        if self.lines.is_none() && self.live.is_none() {
            let mut h = Fnv(&mut self.hash);
            let _ = write!(h, "{now:>8} ms  {what}");
            return;
        }
        let mut line = String::new();
        let _ = write!(line, "{now:>8} ms  {what}");
        self.hash_bytes(line.as_bytes());
        if let Some(live) = &self.live {
            let _ = live.send(line.clone());
        }
        if let Some(lines) = &mut self.lines {
            lines.push(line);
        }
    }
}

/// FNV-1a over text written into it.
struct Fnv<'a>(&'a mut u64);

impl std::fmt::Write for Fnv<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for b in s.bytes() {
            *self.0 ^= u64::from(b);
            *self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        Ok(())
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct SimRun {
    /// The seed.
    pub seed: u64,
    /// The hash of the whole trace: equal for equal seeds.
    pub trace_hash: u64,
    /// The trace's lines, if kept.
    pub trace: Vec<String>,
    /// Every check that failed, described.
    pub failures: Vec<String>,
    /// Figures of the run.
    pub stats: Stats,
}

/// Figures of one run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Simulated time, ms.
    pub simulated_ms: u64,
    /// Client operations completed ok / failed definitely / indefinite.
    pub ops_ok: u64,
    /// Definite failures (key missing, cas mismatch).
    pub ops_fail: u64,
    /// Indefinite outcomes.
    pub ops_info: u64,
    /// Faults injected.
    pub faults: u64,
    /// Node crashes (injected or exits).
    pub crashes: u64,
    /// Messages sent and dropped.
    pub messages: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Events in the trace.
    pub events: u64,
    /// Re-executions allowed by the documented tombstone-trimming window.
    pub trimmed_reruns: u64,
    /// The linearizability verdict's word.
    pub linearizable: String,
}

/// The node configuration of a simulation: real defaults with tiny session
/// timeouts and caps (so GC, eviction and tombstone trimming happen often) and
/// frequent snapshots.
pub fn sim_config() -> Config {
    Config {
        session_timeout_ms: 8_000,
        gc_interval_ms: 500,
        // Several bounded GC entries in a row whenever a few sessions expire.
        gc_sessions_per_entry_max: 2,
        limits: SessionLimits {
            sessions_max: 16,
            replies_per_session_max: 3,
            tombstones_max: 24,
        },
        snapshot_every_entries: 60,
        log_kept_behind_snapshot: 10,
        request_bytes_max: 4 << 10,
        ..Config::default()
    }
}

/// The wall-clock origin of every simulated node (2026-01-01T00:00:00Z).
const EPOCH_MS: i64 = 1_767_225_600_000;

/// One node's place in the simulation.
struct Slot {
    name: String,
    up: bool,
    /// The process's tasks (its `run_on`, stdin writer, stdout reader).
    run: Option<JoinHandle<std::io::Result<()>>>,
    pipes: Vec<JoinHandle<()>>,
    /// The node, once `init` started it.
    node: Arc<Mutex<Option<Arc<Node>>>>,
    /// Its state machine (for checks).
    sm: Option<StateMachineStore>,
    /// A disk fault was injected since the last start: an exit is expected.
    disk_faulted: bool,
    /// Restarts scheduled and not yet done.
    restart_pending: bool,
}

/// Everything a simulated run shares between its tasks.
pub struct World {
    opts: SimOptions,
    config: Config,
    start: Instant,
    names: Vec<String>,
    slots: Mutex<Vec<Slot>>,
    disks: Vec<Disk>,
    journals: Vec<Journal>,
    clocks: Vec<Arc<AtomicI64>>,
    net: Arc<Mutex<Net>>,
    trace: Arc<Mutex<Trace>>,
    rng: Mutex<StdRng>,
    history: Mutex<Vec<HistoryOp>>,
    failures: Mutex<Vec<String>>,
    stats: Mutex<Stats>,
    /// Clients take no new operations once set.
    stop: AtomicBool,
    /// Membership changes under way (awaited before healing).
    changes: Mutex<Vec<JoinHandle<()>>>,
    /// When the last fault healed, ms.
    healed_at_ms: std::sync::atomic::AtomicU64,
    /// Clients give up on the operations they still wait for once set.
    give_up: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    /// Records an event in the trace.
    pub fn event(&self, what: std::fmt::Arguments<'_>) {
        lock(&self.trace).event(what);
    }

    /// Records a failed check.
    pub fn fail(&self, what: String) {
        self.event(format_args!("FAILURE {what}"));
        lock(&self.failures).push(what);
    }

    /// Simulated ms since the start.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A fresh generator for one component, drawn from the world's.
    pub fn fork_rng(&self) -> StdRng {
        StdRng::seed_from_u64(lock(&self.rng).r#gen())
    }

    /// The node names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The network.
    pub fn net(&self) -> &Arc<Mutex<Net>> {
        &self.net
    }

    /// The trace.
    pub fn trace(&self) -> &Arc<Mutex<Trace>> {
        &self.trace
    }

    /// Appends to the history.
    pub fn record(&self, op: HistoryOp) {
        lock(&self.history).push(op);
    }

    /// Nanoseconds since the start, for the history.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The node configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts (or restarts) node `i` from its disk.
    fn start_node(self: &Arc<Self>, i: usize) {
        let name = self.names[i].clone();
        let on_disk = disk::describe(&self.disks[i]);
        let mut storage = match disk::open(&self.disks[i]) {
            Ok(s) => s,
            Err(e) => {
                self.fail(format!("{name} cannot restart from its disk: {e}"));
                return;
            }
        };
        storage.sm.set_journal(self.journals[i].clone());
        let sm = storage.sm.clone();
        let offset = self.clocks[i].clone();
        let start = self.start;
        let clock = WallClock::new(move || {
            let elapsed = start.elapsed().as_millis() as i64;
            (EPOCH_MS + elapsed + offset.load(Ordering::SeqCst)).max(0) as u64
        });
        let (started_tx, started_rx) = oneshot::channel();
        let backing = Backing {
            storage,
            clock,
            started: Some(started_tx),
            // Each incarnation numbers its messages in a range of its own.
            first_msg_id: disk::incarnation(&self.disks[i]) << 40,
        };
        let (mut stdin_w, stdin_r) = tokio::io::duplex(1 << 16);
        let (stdout_w, stdout_r) = tokio::io::duplex(1 << 16);
        let run = tokio::spawn(maelstrom::run_on(
            stdin_r,
            stdout_w,
            self.config.clone(),
            backing,
        ));
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut bytes = line.into_bytes();
                bytes.push(b'\n');
                if stdin_w.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        let world = self.clone();
        let me = name.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout_r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // The envelope's dest, read without building the line's tree.
                let mut sk = crate::protocol::Skeleton::default();
                sk.feed(line.as_bytes());
                sk.finish();
                let dest = sk.dest;
                match dest {
                    Some(dest) => net::send(&world.net, &world.trace, &me, &dest, line),
                    None => world.fail(format!("{me} wrote a line with no dest: {line}")),
                }
            }
        });
        let node_cell = Arc::new(Mutex::new(None));
        let cell = node_cell.clone();
        let watcher = tokio::spawn(async move {
            if let Ok(node) = started_rx.await {
                *lock(&cell) = Some(node);
            }
        });
        lock(&self.net).inboxes.insert(name.clone(), tx.clone());
        let init = serde_json::json!({
            "src": "sim", "dest": name,
            "body": {"type": "init", "msg_id": 0, "node_id": name, "node_ids": self.names},
        });
        let _ = tx.send(init.to_string());
        let mut slots = lock(&self.slots);
        let slot = &mut slots[i];
        slot.up = true;
        slot.run = Some(run);
        slot.pipes = vec![writer, reader, watcher];
        slot.node = node_cell;
        slot.sm = Some(sm);
        // A fault still in force when the node starts explains its next exit too.
        slot.disk_faulted = lock(&self.disks[i]).fault != DiskFault::None;
        slot.restart_pending = false;
        drop(slots);
        self.event(format_args!("start {name} ({on_disk})"));
    }

    /// Kills node `i` as `kill -9` would: its process is gone, its unsynced
    /// writes are cut to a random prefix.
    fn crash_node(&self, i: usize, why: &str) {
        let (node, run, pipes) = {
            let mut slots = lock(&self.slots);
            let slot = &mut slots[i];
            if !slot.up {
                return;
            }
            slot.up = false;
            (
                lock(&slot.node).take(),
                slot.run.take(),
                std::mem::take(&mut slot.pipes),
            )
        };
        lock(&self.net).inboxes.remove(&self.names[i]);
        let lost = disk::crash(&self.disks[i]);
        if let Some(run) = run {
            run.abort();
        }
        for p in pipes {
            p.abort();
        }
        if let Some(node) = node {
            // Stop what the dead process left running (its Raft core): it can
            // no longer write to the disk or the network, only burn time.
            tokio::spawn(async move { node.shutdown().await });
        }
        lock(&self.stats).crashes += 1;
        self.event(format_args!(
            "crash {} ({why}; {lost} unsynced writes lost)",
            self.names[i]
        ));
        self.tell_process_gone(i);
    }

    /// What TCP shows the survivors of node `i`'s death: its connections close
    /// and its port refuses, so each node it can reach (a partition would drop
    /// the close too) is told its process is gone, a link's delay later
    /// (`Node::leader_process_gone`, which acts only if `i` led it).
    fn tell_process_gone(&self, i: usize) {
        let survivors: Vec<Arc<Node>> = {
            let net = lock(&self.net);
            let slots = lock(&self.slots);
            (0..slots.len())
                .filter(|&j| j != i && slots[j].up)
                .filter(|&j| {
                    let link = (self.names[i].clone(), self.names[j].clone());
                    !net.blocked.contains(&link)
                })
                .filter_map(|j| lock(&slots[j].node).clone())
                .collect()
        };
        let delay = Duration::from_millis(lock(&self.net).delay_ms.0.max(1));
        let gone = i as u64;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for node in survivors {
                node.leader_process_gone(gone);
            }
        });
    }

    /// The node that believes it leads in the highest term, if one is up and does
    /// (a deposed or removed leader may still believe it leads an older term).
    fn leader(&self) -> Option<usize> {
        let slots = lock(&self.slots);
        slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let node = lock(&s.node).clone()?;
                let term = node.raft.metrics().borrow_watched().current_term;
                (s.up && node.leader() == Some(node.id)).then_some((term, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn up_node(&self, i: usize) -> Option<Arc<Node>> {
        let slots = lock(&self.slots);
        let s = &slots[i];
        if !s.up {
            return None;
        }
        lock(&s.node).clone()
    }
}

/// Whether runs are reproducible: this build seeds tokio's runtime (it was
/// built with `--cfg tokio_unstable`, which `.cargo/config.toml` sets).
pub const REPRODUCIBLE: bool = cfg!(tokio_unstable);

/// Runs one seed.
pub fn run(seed: u64, opts: &SimOptions) -> SimRun {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().expect("a current-thread runtime");
    seed_this_thread(Some(splitmix64(seed ^ 0x5eed)));
    panics::watch();
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let hung = Arc::new(tokio::sync::Notify::new());
    let watchdog = hang_watchdog(seed, progress.clone(), done.clone(), hung.clone());
    let result = runtime.block_on(run_world(seed, opts.clone(), progress, hung));
    // Dropping the runtime drops every task still there, a looping one included
    // (it is dropped between two polls, never polled again).
    drop(runtime);
    done.store(true, Ordering::SeqCst);
    watchdog.thread().unpark();
    let _ = watchdog.join();
    let panicked = panics::take();
    seed_this_thread(None);
    let mut result = result;
    for p in panicked {
        result.failures.push(format!("panic: {p}"));
    }
    result
}

/// How long a run may go without a single event before it is declared hung.
/// Events come every few milliseconds of simulated time, and a simulated
/// second takes a few milliseconds of wall time in a release build.
const HANG_WALL: Duration = Duration::from_secs(20);

/// A thread that watches the run on this thread for progress. When some task
/// loops without ever waiting, simulated time stands still and the run would
/// never end: the watchdog then wakes the run's top future, which ends the run
/// as failed ("hang"). Should even that not end it (a poll that never returns),
/// the process ends, loudly, naming the seed.
fn hang_watchdog(
    seed: u64,
    progress: Arc<std::sync::atomic::AtomicU64>,
    done: Arc<AtomicBool>,
    hung: Arc<tokio::sync::Notify>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seen = progress.load(Ordering::Relaxed);
        let mut since = std::time::Instant::now();
        let mut signalled = false;
        while !done.load(Ordering::SeqCst) {
            std::thread::park_timeout(Duration::from_millis(200));
            let now = progress.load(Ordering::Relaxed);
            if now != seen {
                (seen, since) = (now, std::time::Instant::now());
            } else if !signalled && since.elapsed() > HANG_WALL {
                hung.notify_one();
                signalled = true;
            } else if signalled && since.elapsed() > 3 * HANG_WALL && !done.load(Ordering::SeqCst) {
                crate::stderr_line!(
                    "oncekv sim: seed {seed} hangs inside a single poll after event {now} \
                     and cannot be stopped. Replay: oncekv sim --seed {seed} --trace"
                );
                std::process::abort();
            }
        }
    })
}

async fn run_world(
    seed: u64,
    opts: SimOptions,
    progress: Arc<std::sync::atomic::AtomicU64>,
    hung: Arc<tokio::sync::Notify>,
) -> SimRun {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<String> = (0..opts.nodes).map(|i| format!("n{i}")).collect();
    let disks = (0..opts.nodes)
        .map(|_| disk::new_disk(rng.r#gen(), 3))
        .collect();
    let net = Net::new(
        StdRng::seed_from_u64(rng.r#gen()),
        names.iter().cloned().collect(),
    );
    let world = Arc::new(World {
        config: sim_config(),
        start,
        slots: Mutex::new(
            names
                .iter()
                .map(|n| Slot {
                    name: n.clone(),
                    up: false,
                    run: None,
                    pipes: Vec::new(),
                    node: Arc::new(Mutex::new(None)),
                    sm: None,
                    disk_faulted: false,
                    restart_pending: false,
                })
                .collect(),
        ),
        disks,
        journals: (0..opts.nodes).map(|_| Journal::default()).collect(),
        clocks: (0..opts.nodes)
            .map(|_| Arc::new(AtomicI64::new(0)))
            .collect(),
        net: Arc::new(Mutex::new(net)),
        trace: Arc::new(Mutex::new(Trace::new(
            start,
            opts.keep_trace,
            opts.live.clone(),
            progress,
        ))),
        rng: Mutex::new(StdRng::seed_from_u64(rng.r#gen())),
        history: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        stats: Mutex::new(Stats::default()),
        stop: AtomicBool::new(false),
        changes: Mutex::new(Vec::new()),
        healed_at_ms: std::sync::atomic::AtomicU64::new(u64::MAX / 2_000_000),
        give_up: AtomicBool::new(false),
        names,
        opts,
    });
    // A run ends by itself well within this much simulated time: the run, the
    // heal, the liveness wait and the convergence wait.
    let overrun = Duration::from_millis(3 * world.opts.duration_ms + 4 * world.opts.liveness_ms);
    tokio::select! {
        biased;
        () = hung.notified() => world.fail(format!(
            "hang: no event for {} s of wall time; some task loops without waiting, so \
             simulated time stood still at {} ms (replay with --trace to see the last events)",
            HANG_WALL.as_secs(),
            world.now_ms()
        )),
        () = tokio::time::sleep(overrun) => world.fail(format!(
            "the run did not end: still going after {} simulated ms (replay with --trace to \
             see what it waits for)",
            overrun.as_millis()
        )),
        () = drive(&world) => {}
    };
    let mut stats = lock(&world.stats).clone();
    {
        let n = lock(&world.net);
        stats.messages = n.sent;
        stats.dropped = n.dropped;
    }
    stats.simulated_ms = world.now_ms();
    let trace = lock(&world.trace);
    stats.events = trace.events;
    SimRun {
        seed,
        trace_hash: trace.hash,
        trace: trace.lines.clone().unwrap_or_default(),
        failures: lock(&world.failures).clone(),
        stats,
    }
}

/// The run itself: faults while clients work, then healing, liveness, the
/// checks, and the end of every node.
async fn drive(world: &Arc<World>) {
    let start = world.start;
    for i in 0..world.opts.nodes {
        world.start_node(i);
    }
    let fault_end = world.opts.duration_ms * 6 / 10;
    let supervisor = tokio::spawn(supervise(world.clone()));
    let clients = client::spawn_all(world, fault_end);
    nemesis(world, fault_end).await;
    heal_all(world);
    restore_membership(world).await;
    let healed_at = world.now_ms();
    world.healed_at_ms.store(healed_at, Ordering::SeqCst);
    world.event(format_args!("healed: every fault is over"));
    // Liveness: every client finishes its outstanding operations in time.
    let deadline = Duration::from_millis(world.opts.liveness_ms);
    let ops_end = world.opts.duration_ms.max(healed_at);
    tokio::time::sleep_until(start + Duration::from_millis(ops_end)).await;
    world.stop.store(true, Ordering::SeqCst);
    let clients = futures::future::join_all(clients);
    tokio::pin!(clients);
    let waited = tokio::time::timeout(deadline, &mut clients).await;
    if waited.is_err() {
        world.give_up.store(true, Ordering::SeqCst);
        clients.await;
        world.fail(format!(
            "liveness: a client still had no definite answer {} ms after the last fault \
             healed (at {healed_at} ms) and the run ended",
            world.opts.liveness_ms
        ));
    }
    let converged = check::converge(world).await;
    if converged {
        client::final_reads(world).await;
    }
    supervisor.abort();
    check::judge(world, converged);
    for i in 0..world.opts.nodes {
        world.crash_node(i, "end of run");
    }
}

/// Restarts nodes whose process ended, as a supervisor would; an exit nobody
/// caused (no crash, no disk fault) is a failure.
async fn supervise(world: Arc<World>) {
    let mut rng = world.fork_rng();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for i in 0..world.opts.nodes {
            let exited = {
                let mut slots = lock(&world.slots);
                let s = &mut slots[i];
                match &s.run {
                    Some(run) if s.up && run.is_finished() => Some(s.disk_faulted),
                    _ => None,
                }
            };
            if let Some(expected) = exited {
                let run = lock(&world.slots)[i].run.take();
                let why = match run {
                    Some(run) => match run.await {
                        Ok(Ok(())) => "exited cleanly".to_string(),
                        Ok(Err(e)) => format!("exited: {e}"),
                        Err(e) => format!("task ended: {e}"),
                    },
                    None => "exited".to_string(),
                };
                if !expected {
                    world.fail(format!("{} {why} with no fault injected", world.names[i]));
                }
                // Give the slot its run back so crash_node treats it as up.
                world.crash_node(i, &why);
                schedule_restart(&world, i, rng.gen_range(100..1_000));
            }
        }
    }
}

fn schedule_restart(world: &Arc<World>, i: usize, after_ms: u64) {
    {
        let mut slots = lock(&world.slots);
        if slots[i].restart_pending {
            return;
        }
        slots[i].restart_pending = true;
    }
    let w = world.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let down = !lock(&w.slots)[i].up;
        if down {
            w.start_node(i);
        } else {
            lock(&w.slots)[i].restart_pending = false;
        }
    });
}

/// The faults of a run, until `fault_end` ms.
async fn nemesis(world: &Arc<World>, fault_end: u64) {
    let mut rng = world.fork_rng();
    let n = world.opts.nodes;
    loop {
        let pause = rng.gen_range(100..1_500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if world.now_ms() >= fault_end {
            return;
        }
        lock(&world.stats).faults += 1;
        match rng.gen_range(0..100) {
            0..=24 => partition(world, &mut rng),
            25..=34 => {
                lock(&world.net).blocked.clear();
                world.event(format_args!("nemesis: partition healed"));
            }
            35..=44 => {
                let mut net = lock(&world.net);
                net.loss = rng.gen_range(0.0..0.3);
                net.dup = rng.gen_range(0.0..0.2);
                net.delay_ms = (1, rng.gen_range(5..200));
                let (l, d, hi) = (net.loss, net.dup, net.delay_ms.1);
                drop(net);
                world.event(format_args!(
                    "nemesis: links loss {l:.2} dup {d:.2} delay 1-{hi} ms"
                ));
            }
            45..=49 => {
                let mut net = lock(&world.net);
                net.loss = 0.0;
                net.dup = 0.0;
                net.delay_ms = (1, 5);
                drop(net);
                world.event(format_args!("nemesis: links calm"));
            }
            50..=64 => {
                let i = rng.gen_range(0..n);
                world.crash_node(i, "nemesis kill");
                schedule_restart(world, i, rng.gen_range(0..3_000));
            }
            65..=72 => {
                let target = if rng.gen_bool(0.7) {
                    world.leader().unwrap_or(rng.gen_range(0..n))
                } else {
                    rng.gen_range(0..n)
                };
                let jump: i64 = if rng.gen_bool(0.5) {
                    rng.gen_range(1_000..600_000)
                } else {
                    -rng.gen_range(1_000..600_000)
                };
                world.clocks[target].fetch_add(jump, Ordering::SeqCst);
                world.event(format_args!(
                    "nemesis: {}'s wall clock jumps {jump} ms",
                    world.names[target]
                ));
            }
            73..=79 => {
                let i = rng.gen_range(0..n);
                let fault = if rng.gen_bool(0.5) {
                    DiskFault::Full
                } else {
                    DiskFault::Io
                };
                lock(&world.disks[i]).fault = fault;
                lock(&world.slots)[i].disk_faulted = true;
                world.event(format_args!("nemesis: {}'s disk {fault:?}", world.names[i]));
                let (w, d) = (world.clone(), world.disks[i].clone());
                let lasts = rng.gen_range(50..2_000);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(lasts)).await;
                    lock(&d).fault = DiskFault::None;
                    w.event(format_args!("nemesis: {}'s disk works again", w.names[i]));
                });
            }
            80..=84 => {
                // Crash a node the moment its next vote is durable, and bring it
                // back at once: elections with a voter that restarted mid-way.
                let i = rng.gen_range(0..n);
                let back_after = rng.gen_range(0..50);
                let w = world.clone();
                world.event(format_args!(
                    "nemesis: crash {} at its next vote",
                    world.names[i]
                ));
                lock(&world.disks[i]).on_vote_synced = Some(Box::new(move || {
                    tokio::spawn(async move {
                        w.crash_node(i, "crashed right after its vote was synced");
                        schedule_restart(&w, i, back_after);
                    });
                }));
            }
            85..=89 => {
                let i = rng.gen_range(0..n);
                if let Some(node) = world.up_node(i) {
                    world.event(format_args!("nemesis: snapshot on {}", world.names[i]));
                    let _ = node.raft.trigger().snapshot().await;
                }
            }
            _ => membership_change(world, &mut rng).await,
        }
    }
}

/// A partition of a random shape: one node isolated, a majority/minority split,
/// a bridge (two halves that share one node), or one-way cuts.
fn partition(world: &World, rng: &mut StdRng) {
    let names = &world.names;
    let n = names.len();
    let mut blocked = BTreeSet::new();
    let cut_both = |a: usize, b: usize, set: &mut BTreeSet<(String, String)>| {
        set.insert((names[a].clone(), names[b].clone()));
        set.insert((names[b].clone(), names[a].clone()));
    };
    let shape = rng.gen_range(0..4);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let described = match shape {
        0 => {
            let lone = order[0];
            for &o in &order[1..] {
                cut_both(lone, o, &mut blocked);
            }
            format!("{} isolated", names[lone])
        }
        1 => {
            let k = n / 2;
            for &a in &order[..k] {
                for &b in &order[k..] {
                    cut_both(a, b, &mut blocked);
                }
            }
            format!("split {:?} | rest", &order[..k])
        }
        2 => {
            // A bridge: the first node talks to both halves, which cannot talk.
            let rest = &order[1..];
            let k = rest.len() / 2;
            for &a in &rest[..k] {
                for &b in &rest[k..] {
                    cut_both(a, b, &mut blocked);
                }
            }
            format!("bridge through {}", names[order[0]])
        }
        _ => {
            let cuts = rng.gen_range(1..=n);
            for _ in 0..cuts {
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                blocked.insert((names[a].clone(), names[b].clone()));
            }
            let list: Vec<String> = blocked.iter().map(|(a, b)| format!("{a}->{b}")).collect();
            format!("one-way cuts {}", list.join(" "))
        }
    };
    lock(&world.net).blocked = blocked;
    world.event(format_args!("nemesis: partition, {described}"));
}

/// Removes a voter that does not lead, or gives back one removed earlier.
async fn membership_change(world: &Arc<World>, rng: &mut StdRng) {
    let Some(l) = world.leader() else { return };
    let Some(node) = world.up_node(l) else { return };
    let members = node.membership_nodes();
    let voters: Vec<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let all: Vec<u64> = (0..world.opts.nodes as u64).collect();
    let missing: Vec<u64> = all
        .iter()
        .copied()
        .filter(|i| !voters.contains(i))
        .collect();
    let timeout = world.config.request_timeout();
    if let Some(&back) = missing.first() {
        world.event(format_args!("nemesis: add n{back} back as a voter"));
        let peer = crate::raft::Peer {
            name: format!("n{back}"),
            addr: String::new(),
        };
        let w = world.clone();
        lock(&world.changes).push(tokio::spawn(async move {
            let r = node.add_member(back, peer, timeout * 5, timeout).await;
            w.event(format_args!("nemesis: add n{back}: {}", describe(r)));
        }));
    } else if voters.len() > 3 || (voters.len() == 3 && rng.gen_bool(0.5)) {
        let candidates: Vec<u64> = voters.iter().copied().filter(|&v| v != node.id).collect();
        let gone = candidates[rng.gen_range(0..candidates.len())];
        world.event(format_args!("nemesis: remove n{gone}"));
        let w = world.clone();
        lock(&world.changes).push(tokio::spawn(async move {
            // Bounded as an operator's command is (`membership_timeout` over
            // TCP): a change whose leader lost the lead may never be answered.
            match tokio::time::timeout(timeout * 5, node.remove_member(gone)).await {
                Ok(r) => w.event(format_args!("nemesis: remove n{gone}: {}", describe(r))),
                Err(_) => w.event(format_args!("nemesis: remove n{gone}: no answer in time")),
            }
        }));
    }
}

fn describe<T: std::fmt::Debug, E: std::fmt::Debug>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("error {e:?}"),
    }
}

/// Gives every removed node its vote back (part of healing), retrying while
/// leadership settles.
async fn restore_membership(world: &Arc<World>) {
    let changes: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&world.changes));
    for c in changes {
        let _ = c.await;
    }
    let timeout = world.config.request_timeout();
    for _ in 0..50 {
        let Some(l) = world.leader() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(node) = world.up_node(l) else {
            continue;
        };
        let voters: Vec<u64> = node
            .membership_nodes()
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        let Some(back) = (0..world.opts.nodes as u64).find(|i| !voters.contains(i)) else {
            return;
        };
        let peer = crate::raft::Peer {
            name: format!("n{back}"),
            addr: String::new(),
        };
        let r = node.add_member(back, peer, timeout * 5, timeout).await;
        world.event(format_args!("heal: add n{back} back: {}", describe(r)));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world.fail("liveness: the removed members could not be added back after the heal".into());
}

/// Ends every fault: links calm and whole, disks working, dead nodes restarted.
fn heal_all(world: &Arc<World>) {
    lock(&world.net).heal();
    for (i, d) in world.disks.iter().enumerate() {
        let mut disk = lock(d);
        disk.fault = DiskFault::None;
        disk.on_vote_synced = None;
        drop(disk);
        let down = !lock(&world.slots)[i].up;
        if down {
            schedule_restart(world, i, 0);
        }
    }
}

/// Panics on the simulation's thread, caught by a hook so they are counted
/// rather than lost in a task's `JoinError`.
mod panics {
    use std::cell::RefCell;
    use std::sync::Once;

    thread_local! {
        static SEEN: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    }

    /// Starts recording panics on this thread.
    pub fn watch() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let recorded = SEEN.with(|s| {
                    let mut s = s.borrow_mut();
                    match s.as_mut() {
                        Some(list) => {
                            // With RUST_BACKTRACE set, where it panicked too.
                            let trace = std::backtrace::Backtrace::capture();
                            list.push(match trace.status() {
                                std::backtrace::BacktraceStatus::Captured => {
                                    format!("{info}\n{trace}")
                                }
                                _ => info.to_string(),
                            });
                            true
                        }
                        None => false,
                    }
                });
                if !recorded {
                    previous(info);
                }
            }));
        });
        SEEN.with(|s| *s.borrow_mut() = Some(Vec::new()));
    }

    /// The panics since [`watch`], and stops recording.
    pub fn take() -> Vec<String> {
        SEEN.with(|s| s.borrow_mut().take().unwrap_or_default())
    }
}
