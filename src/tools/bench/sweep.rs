//! `oncekv bench-cluster --sweep DIMENSION`: how the cost of a write grows with
//! one dimension of the work, oncekv against etcd 3.4 in the same invocation.
//!
//! Per point of the dimension, and per system (the order alternating from point
//! to point), a fresh cluster is started on loopback with fsync on, filled to the
//! point, measured with `--sweep-clients` writers in closed loops, and removed:
//! - `sessions`: live client sessions, each opened and holding one cached reply
//!   (oncekv only: etcd has no client sessions to deduplicate against). At the
//!   largest point, the GC stall: a 1-writer baseline, then the followers restart
//!   with a 2 s session timeout; a second baseline with one follower down (the
//!   leader, with the long timeout, removes nothing); then the leader is killed,
//!   so the new leader finds every filled session expired at once and removes
//!   them, with one member down like the second baseline, while the writer goes
//!   on; every write sent during that removal is timed.
//! - `keys`: distinct 100 B keys written before the measurement, which then
//!   writes keys drawn at random from them. One follower is down during the fill,
//!   so it is as many entries behind as there are keys: the time from its restart
//!   to applying what the leader had applied is its catch-up (by snapshot when
//!   the leader's log no longer holds the entries it lacks).
//! - `value-bytes`: the size of each written value (MB/s beside ops/s).
//! - `nodes`: cluster size.
//!
//! Also per point: resident memory per node (VmRSS) and the leader's data
//! directory's size. Writes a markdown table and an SVG plot per dimension into
//! `--plot-dir`.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::etcd::{EtcdClient, EtcdCluster};
use super::latency::{Samples, Summary};
use super::procs::OncekvCluster;
use super::systems::{
    BenchClient, Clusters, SETTLE_TIMEOUT, System, free_port, loadavg, ms, throughput,
};
use crate::tcp::Client;
use crate::tools::report::curves::{Curve, Curves, Panel, curves_svg};

/// A dimension the work grows along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dimension {
    /// Live client sessions (oncekv only).
    Sessions,
    /// Distinct keys in the store.
    Keys,
    /// Bytes of each written value.
    ValueBytes,
    /// Cluster members.
    Nodes,
}

impl Dimension {
    /// The name on the command line and in file names.
    fn name(self) -> &'static str {
        match self {
            Dimension::Sessions => "sessions",
            Dimension::Keys => "keys",
            Dimension::ValueBytes => "value-bytes",
            Dimension::Nodes => "nodes",
        }
    }

    /// The x axis title.
    fn label(self) -> &'static str {
        match self {
            Dimension::Sessions => "live sessions",
            Dimension::Keys => "keys in the store",
            Dimension::ValueBytes => "bytes per value",
            Dimension::Nodes => "cluster members",
        }
    }

    /// The points measured unless `--points` says otherwise.
    fn default_points(self) -> Vec<u64> {
        match self {
            Dimension::Sessions | Dimension::Keys => vec![1_000, 10_000, 100_000, 1_000_000],
            Dimension::ValueBytes => vec![100, 1_000, 10_000, 100_000, 1_000_000],
            Dimension::Nodes => vec![3, 5],
        }
    }

    /// The systems that have this dimension.
    fn systems(self, oncekv_only: bool) -> Vec<System> {
        if oncekv_only || self == Dimension::Sessions {
            vec![System::Oncekv]
        } else {
            vec![System::Oncekv, System::Etcd]
        }
    }
}

/// What a sweep runs (from `oncekv bench-cluster`'s flags).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The dimensions, each swept in turn.
    pub dimensions: Vec<Dimension>,
    /// The points, instead of the dimension's defaults (one dimension only).
    pub points: Vec<u64>,
    /// Concurrent writers of each measurement.
    pub clients: usize,
    /// Where the tables and plots go.
    pub plot_dir: PathBuf,
    /// Only oncekv is measured.
    pub oncekv_only: bool,
    /// The etcd binary and its extra flags.
    pub etcd: PathBuf,
    pub etcd_flags: Vec<String>,
    /// Bytes of each written value (but in the value-bytes sweep).
    pub value_bytes: usize,
}

/// Concurrent connections that fill a point (keys written, sessions opened).
const FILL_CONNS: usize = 256;
/// Longest a fill or a catch-up may take before the sweep fails.
const FILL_TIMEOUT: Duration = Duration::from_secs(900);
/// The session timeout the followers restart with for the GC stall: every
/// session filled before it is expired when the new leader's GC first runs.
const GC_SESSION_TIMEOUT_MS: &str = "2000";

/// Sessions that may remain when the GC stall counts the removal as done: the GC
/// writer's own, and any other client's that was active within the timeout.
const GC_SESSIONS_LEFT: usize = 10;

/// One system at one point.
#[derive(Debug, Clone)]
struct Point {
    x: u64,
    system: System,
    /// The writers' run.
    run: Summary,
    errors: u64,
    /// Bytes per written value.
    value_bytes: usize,
    /// How long the fill took (none without a fill).
    fill: Option<Duration>,
    /// Mean resident memory per member after the fill, bytes.
    rss_per_node: u64,
    /// The leader's data directory after the fill, bytes.
    disk: u64,
    /// Keys sweep: the lagging follower's catch-up, and whether the leader's log
    /// had been purged past it (so it caught up by snapshot).
    catch_up: Option<(Duration, bool)>,
}

/// The GC stall figures (sessions sweep, largest point).
#[derive(Debug, Clone)]
struct GcStall {
    sessions: usize,
    /// 1 writer, before: all members up, every session live.
    before: Phase,
    /// 1 writer with one follower down and nothing removed: the removal's
    /// like-for-like baseline (it runs with the old leader down).
    one_down: Phase,
    /// Writes sent while the new leader removed the expired sessions.
    during: Phase,
    /// How long the removal took, as seen by polling the leader's `status`.
    drain: Duration,
    /// 1 writer, after: all members up again, the sessions gone.
    after: Phase,
}

/// Runs every `--sweep` dimension and writes the report to `out`.
pub async fn run(
    plan: &Plan,
    root: &Path,
    etcd_version: &str,
    (warmup, window): (Duration, Duration),
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        plan.points.is_empty() || plan.dimensions.len() == 1,
        "--points needs exactly one --sweep dimension"
    );
    anyhow::ensure!(plan.clients > 0, "--sweep-clients must be positive");
    std::fs::create_dir_all(&plan.plot_dir)?;
    writeln!(
        out,
        "oncekv bench-cluster --sweep: oncekv vs etcd ({etcd_version}), loopback, fsync on, \
         a fresh cluster per point and system, {} writers, {window:?} windows after {warmup:?} \
         warm-up; load average at start {}",
        plan.clients,
        loadavg()
    )?;
    for &dim in &plan.dimensions {
        let mut points = if plan.points.is_empty() {
            dim.default_points()
        } else {
            plan.points.clone()
        };
        points.sort_unstable();
        points.dedup();
        check_points(dim, &points)?;
        writeln!(out, "\n## sweep: {}\n\n{}", dim.label(), header(dim))?;
        out.flush()?;
        let mut results = Vec::new();
        let mut gc = None;
        for (k, &x) in points.iter().enumerate() {
            let mut systems = dim.systems(plan.oncekv_only);
            if k % 2 == 1 {
                systems.reverse();
            }
            for system in systems {
                let dir = root.join(format!("{}-{x}-{}", dim.name(), system.name()));
                let last = k + 1 == points.len();
                let (p, g) = point(plan, dim, x, system, &dir, (warmup, window), last).await?;
                keep_logs(&dir, &plan.plot_dir.join("logs"))?;
                let _ = std::fs::remove_dir_all(&dir);
                writeln!(out, "{}", row(&p))?;
                out.flush()?;
                results.push(p);
                gc = gc.or(g);
            }
        }
        let table = table(dim, &results, gc.as_ref());
        writeln!(out, "\n{table}")?;
        let svg = curves_svg(&plot(dim, &results));
        let base = plan.plot_dir.join(format!("sweep-{}", dim.name()));
        std::fs::write(base.with_extension("svg"), svg)?;
        std::fs::write(base.with_extension("md"), &table)?;
        writeln!(
            out,
            "wrote {} and .md; load average now {}",
            base.with_extension("svg").display(),
            loadavg()
        )?;
        out.flush()?;
    }
    Ok(())
}

/// Refuses points that cannot be run.
fn check_points(dim: Dimension, points: &[u64]) -> anyhow::Result<()> {
    anyhow::ensure!(!points.is_empty(), "no points to sweep");
    let ok = |p: &u64| match dim {
        Dimension::Nodes => (1..=9).contains(p) && p % 2 == 1,
        Dimension::ValueBytes => (1..=1_000_000).contains(p),
        Dimension::Sessions | Dimension::Keys => (1..=10_000_000).contains(p),
    };
    match points.iter().find(|p| !ok(p)) {
        None => Ok(()),
        Some(p) => anyhow::bail!(
            "--points {p} is out of range for {}: nodes odd 1..=9, value-bytes 1..=1000000 \
             (oncekv's request limit is 1 MiB), sessions and keys 1..=10000000",
            dim.name()
        ),
    }
}

/// Starts `nodes` members of `system` under `dir`.
fn start(plan: &Plan, system: System, nodes: usize, dir: &Path) -> anyhow::Result<Clusters> {
    Ok(match system {
        System::Oncekv => {
            let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<Result<_, _>>()?;
            Clusters {
                oncekv: Some(OncekvCluster::start(
                    &std::env::current_exe()?,
                    dir,
                    &ports,
                )?),
                etcd: None,
            }
        }
        System::Etcd => {
            let ports: Vec<(u16, u16)> = (0..nodes)
                .map(|_| Ok::<_, std::io::Error>((free_port()?, free_port()?)))
                .collect::<Result<_, _>>()?;
            Clusters {
                oncekv: None,
                etcd: Some(EtcdCluster::start(
                    &plan.etcd,
                    dir,
                    &ports,
                    &plan.etcd_flags,
                )?),
            }
        }
    })
}

/// One system at one point: start, fill, measure, and (sessions, `last`) the GC stall.
async fn point(
    plan: &Plan,
    dim: Dimension,
    x: u64,
    system: System,
    dir: &Path,
    timing: (Duration, Duration),
    last: bool,
) -> anyhow::Result<(Point, Option<GcStall>)> {
    let nodes = if dim == Dimension::Nodes {
        x as usize
    } else {
        3
    };
    let mut clusters = start(plan, system, nodes, dir)?;
    let leader = clusters.settle(system).await?;
    let value_bytes = if dim == Dimension::ValueBytes {
        x as usize
    } else {
        plan.value_bytes
    };
    let value: Arc<str> = "v".repeat(value_bytes).into();
    let t0 = Instant::now();
    let (fill, catch_up) = match dim {
        Dimension::Sessions => {
            fill_sessions(clusters.oncekv()?, x).await?;
            (Some(t0.elapsed()), None)
        }
        Dimension::Keys => {
            let follower = (leader + 1) % nodes;
            clusters.kill(system, follower);
            fill_keys(&clusters, system, leader, x, &value).await?;
            let fill = t0.elapsed();
            let caught = catch_up(&mut clusters, system, leader, follower).await?;
            (Some(fill), Some(caught))
        }
        Dimension::ValueBytes | Dimension::Nodes => (None, None),
    };
    let leader = clusters.settle(system).await?;
    let rss_per_node = {
        let pids = clusters.pids(system);
        pids.iter().map(|p| rss(*p)).sum::<u64>() / pids.len().max(1) as u64
    };
    let disk = match system {
        System::Oncekv => dir_bytes(clusters.oncekv()?.dir(leader)),
        System::Etcd => dir_bytes(clusters.etcd()?.dir(leader)),
    };
    let keys = if dim == Dimension::Keys { x } else { 0 };
    let (run, errors, _) =
        throughput(&clusters, system, plan.clients, &value, timing, keys).await?;
    let gc = if dim == Dimension::Sessions && last {
        Some(gc_stall(&mut clusters, x, &value, timing).await?)
    } else {
        None
    };
    let p = Point {
        x,
        system,
        run,
        errors,
        value_bytes,
        fill,
        rss_per_node,
        disk,
        catch_up,
    };
    Ok((p, gc))
}

/// Opens `n` sessions over [`FILL_CONNS`] connections, each session then writing
/// once so it holds a cached reply, as a client's session does.
async fn fill_sessions(cluster: &OncekvCluster, n: u64) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..FILL_CONNS as u64)
        .map(|t| {
            let opts = cluster.client_options();
            tokio::spawn(async move {
                let mut c = Client::new(opts);
                c.find_leader().await;
                let mut i = t;
                while i < n {
                    c.open_session().await.map_err(|e| e.to_string())?;
                    c.write(json!(format!("s{t}")), json!(i))
                        .await
                        .map_err(|e| e.to_string())?;
                    i += FILL_CONNS as u64;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    join_fill(tasks, "session fill").await
}

/// Writes keys `k0`..`k{n-1}` once each over [`FILL_CONNS`] connections, each
/// task connecting on its own (so the connections open in parallel).
async fn fill_keys(
    clusters: &Clusters,
    system: System,
    leader: usize,
    n: u64,
    value: &Arc<str>,
) -> anyhow::Result<()> {
    let oncekv = clusters.oncekv.as_ref().map(OncekvCluster::client_options);
    let etcd = clusters.etcd.as_ref().map(EtcdCluster::endpoints);
    let tasks = (0..FILL_CONNS as u64)
        .map(|t| {
            let (oncekv, etcd, value) = (oncekv.clone(), etcd.clone(), value.clone());
            tokio::spawn(async move {
                let mut c = match (system, oncekv, etcd) {
                    (System::Oncekv, Some(opts), _) => {
                        let mut c = Client::new(opts);
                        c.open_session().await.map_err(|e| e.to_string())?;
                        c.find_leader().await;
                        BenchClient::Oncekv(Box::new(c))
                    }
                    (System::Etcd, _, Some(endpoints)) => {
                        let mut c = EtcdClient::new(endpoints);
                        c.set_target(leader);
                        BenchClient::Etcd(c)
                    }
                    _ => return Err(format!("{} is not running", system.name())),
                };
                let mut i = t;
                while i < n {
                    c.put(&format!("k{i}"), &value).await?;
                    i += FILL_CONNS as u64;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    join_fill(tasks, "key fill").await
}

/// Waits for fill tasks, failing on the first error or at [`FILL_TIMEOUT`].
async fn join_fill(
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    what: &str,
) -> anyhow::Result<()> {
    let all = futures::future::join_all(tasks);
    let results = tokio::time::timeout(FILL_TIMEOUT, all)
        .await
        .map_err(|_| anyhow::anyhow!("{what} took longer than {FILL_TIMEOUT:?}"))?;
    for r in results {
        r?.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    }
    Ok(())
}

/// Restarts `follower` and times it from the restart until it has applied what
/// the leader had applied then. Also says whether the leader's log was purged past
/// the follower's last entry (then only a snapshot could bring it up).
async fn catch_up(
    clusters: &mut Clusters,
    system: System,
    leader: usize,
    follower: usize,
) -> anyhow::Result<(Duration, bool)> {
    let deadline = Instant::now() + FILL_TIMEOUT;
    match system {
        System::Oncekv => {
            let mut probe = Client::new(clusters.oncekv()?.client_options());
            let s = (probe.status_of(leader).await).map_err(anyhow::Error::msg)?;
            let target = s.applied_index.unwrap_or(0);
            let by_snapshot = s.purged_index.unwrap_or(0) > 0;
            let t0 = Instant::now();
            clusters.restart(system, follower)?;
            loop {
                if let Ok(f) = probe.status_of(follower).await
                    && f.applied_index.unwrap_or(0) >= target
                {
                    return Ok((t0.elapsed(), by_snapshot));
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "oncekv follower did not catch up"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        System::Etcd => {
            let mut probe = EtcdClient::new(clusters.etcd()?.endpoints());
            let s = (probe.status(leader).await).map_err(anyhow::Error::msg)?;
            let target = s.applied;
            let t0 = Instant::now();
            clusters.restart(system, follower)?;
            loop {
                if let Ok(f) = probe.status(follower).await
                    && f.applied >= target
                {
                    // etcd sends a snapshot past --snapshot-count (100,000) entries.
                    return Ok((t0.elapsed(), target > 100_000));
                }
                anyhow::ensure!(Instant::now() < deadline, "etcd member did not catch up");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The GC stall at `sessions` live sessions: see the module comment.
async fn gc_stall(
    clusters: &mut Clusters,
    sessions: u64,
    value: &Arc<str>,
    timing: (Duration, Duration),
) -> anyhow::Result<GcStall> {
    let system = System::Oncekv;
    let stalls = StallMonitor::start();
    let leader = clusters.settle(system).await?;
    let before = one_writer(clusters, leader, value, timing, &stalls).await?;
    let n = clusters.oncekv()?.len();
    let o = clusters.oncekv.as_mut().expect("oncekv runs");
    o.set_env(&[("ONCEKV_SESSION_TIMEOUT_MS", GC_SESSION_TIMEOUT_MS)]);
    let followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    for &f in &followers {
        clusters.kill(system, f);
        clusters.restart(system, f)?;
        let now_leader = clusters.settle(system).await?;
        anyhow::ensure!(now_leader == leader, "the leader moved during a restart");
    }
    // The removal runs with one member down (the old leader). The baseline it is
    // held against has one member down too (a follower), under the leader with
    // the long timeout, so nothing is removed.
    let down = *followers.last().expect("a follower");
    clusters.kill(system, down);
    let one_down = one_writer(clusters, leader, value, timing, &stalls).await?;
    catch_up(clusters, system, leader, down).await?;
    anyhow::ensure!(
        clusters.settle(system).await? == leader,
        "the leader moved during the baseline with one member down"
    );
    let mut probe = Client::new(clusters.oncekv()?.client_options());
    let live = (probe.status_of(leader).await)
        .map_err(anyhow::Error::msg)?
        .sessions;
    // The writer: (sent, wall time sent, acknowledged) of every write.
    let mut w = clusters.client(system, leader, None).await?;
    let acks: Arc<std::sync::Mutex<Vec<Write1>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (acks, stop, value) = (acks.clone(), stop.clone(), value.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (t0, wall) = (Instant::now(), SystemTime::now());
                if w.put("gc-writer", &value).await.is_ok() {
                    acks.lock().expect("acks").push((t0, wall, t0.elapsed()));
                }
            }
        })
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while acks.lock().expect("acks").len() < 20 {
        anyhow::ensure!(Instant::now() < deadline, "no writes before the GC stall");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clusters.kill(system, leader);
    // Poll the others until one leads and has removed the filled sessions.
    let (mut started, mut ended) = (None, None);
    let deadline = Instant::now() + FILL_TIMEOUT;
    while ended.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the expired sessions were not removed"
        );
        for i in (0..n).filter(|&i| i != leader) {
            let Ok(s) = probe.status_of(i).await else {
                continue;
            };
            if s.role != crate::node::Role::Leader {
                continue;
            }
            if started.is_none() && s.sessions < live {
                started = Some(Instant::now());
            }
            // Every session idle for the timeout goes, the measurement's writers'
            // too; the GC writer's own stays.
            if s.sessions <= GC_SESSIONS_LEFT {
                started.get_or_insert_with(Instant::now);
                ended = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    task.await?;
    let (started, ended) = (started.expect("set"), ended.expect("set"));
    let drain = ended - started;
    let during = Phase::of(
        (acks.lock().expect("acks").iter()).filter(|(sent, ..)| *sent >= started && *sent <= ended),
        drain.max(Duration::from_millis(1)),
        &stalls,
    );
    clusters.restart(system, leader)?;
    let leader = clusters.settle(system).await?;
    let after = one_writer(clusters, leader, value, timing, &stalls).await?;
    Ok(GcStall {
        sessions: sessions as usize,
        before,
        one_down,
        during,
        drain,
        after,
    })
}

/// One write of a phase: when it was sent (monotonic and wall clock) and how
/// long it took.
type Write1 = (Instant, SystemTime, Duration);

/// One writer's phase of the GC stall.
#[derive(Debug, Clone)]
struct Phase {
    summary: Summary,
    /// The slowest write, µs.
    slowest_us: u64,
    /// When the slowest write was sent, UTC (to find it in the node logs).
    slowest_at: Option<SystemTime>,
    /// The longest a 1 ms sleep in the bench process took during the phase, µs
    /// (0 if none passed [`STALL_MIN`]): a stall of the machine, which no write
    /// sent across it can beat.
    machine_stall_us: u64,
    /// How many such stalls overlapped the phase: the removal's own work on
    /// every member may add to them, which this shows against the baselines.
    machine_stalls: usize,
    /// The slowest write that no recorded machine stall overlapped, µs: what
    /// the members did to it, apart from what the machine did to everything.
    calm_slowest_us: u64,
}

impl Phase {
    /// The phase of `writes` over `window`.
    fn of<'a>(
        writes: impl Iterator<Item = &'a Write1>,
        window: Duration,
        stalls: &StallMonitor,
    ) -> Phase {
        let mut s = Samples::default();
        let (mut slowest, mut slowest_at, mut calm) = (Duration::ZERO, None, Duration::ZERO);
        let mut span: Option<(Instant, Instant)> = None;
        for (sent, wall, took) in writes {
            let (from, to) = span.get_or_insert((*sent, *sent + *took));
            (*from, *to) = ((*from).min(*sent), (*to).max(*sent + *took));
            s.push(*took);
            if *took > slowest {
                (slowest, slowest_at) = (*took, Some(*wall));
            }
            if *took > calm && stalls.count_in(*sent, *sent + *took) == 0 {
                calm = *took;
            }
        }
        Phase {
            summary: s.summary(window),
            slowest_us: slowest.as_micros() as u64,
            slowest_at,
            machine_stall_us: span.map_or(0, |(from, to)| stalls.longest_in(from, to)),
            machine_stalls: span.map_or(0, |(from, to)| stalls.count_in(from, to)),
            calm_slowest_us: calm.as_micros() as u64,
        }
    }
}

/// Sleeps shorter than this are not recorded by [`StallMonitor`]: a 1 ms sleep
/// that took 2 ms kept its thread from a core for a millisecond, as long as a
/// write's whole p99 on a quiet machine.
const STALL_MIN: Duration = Duration::from_millis(2);

/// A thread of the bench process that sleeps 1 ms at a time and records every
/// sleep that took longer than [`STALL_MIN`]: stalls of the whole machine (the
/// hypervisor, every core busy, the members' work included), seen from outside
/// the members, so that a slow write can be told from a slow machine.
struct StallMonitor {
    stop: Arc<AtomicBool>,
    /// (when the sleep ended, how long it took) of each long sleep.
    stalls: Arc<std::sync::Mutex<Vec<(Instant, Duration)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StallMonitor {
    fn start() -> StallMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let stalls: Arc<std::sync::Mutex<Vec<(Instant, Duration)>>> = Arc::default();
        let thread = {
            let (stop, stalls) = (stop.clone(), stalls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    std::thread::sleep(Duration::from_millis(1));
                    let took = t0.elapsed();
                    if took > STALL_MIN {
                        stalls.lock().expect("stalls").push((Instant::now(), took));
                    }
                }
            })
        };
        StallMonitor {
            stop,
            stalls,
            thread: Some(thread),
        }
    }

    /// The longest recorded sleep overlapping `from..to`, µs.
    fn longest_in(&self, from: Instant, to: Instant) -> u64 {
        let stalls = self.stalls.lock().expect("stalls");
        (stalls.iter())
            .filter(|(end, took)| *end >= from && *end - *took <= to)
            .map(|(_, took)| took.as_micros() as u64)
            .max()
            .unwrap_or(0)
    }

    /// How many recorded sleeps overlap `from..to`.
    fn count_in(&self, from: Instant, to: Instant) -> usize {
        let stalls = self.stalls.lock().expect("stalls");
        (stalls.iter())
            .filter(|(end, took)| *end >= from && *end - *took <= to)
            .count()
    }
}

impl Drop for StallMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One writer to `leader` in a closed loop over the window.
async fn one_writer(
    clusters: &Clusters,
    leader: usize,
    value: &Arc<str>,
    (warmup, window): (Duration, Duration),
    stalls: &StallMonitor,
) -> anyhow::Result<Phase> {
    let mut w = clusters.client(System::Oncekv, leader, None).await?;
    let start = Instant::now() + warmup;
    let end = start + window;
    let mut writes = Vec::new();
    loop {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        if t0 >= end {
            break;
        }
        let ok = w.put("gc-baseline", value).await.is_ok();
        let t1 = Instant::now();
        if ok && t0 >= start && t1 <= end {
            writes.push((t0, wall, t1 - t0));
        }
    }
    Ok(Phase::of(writes.iter(), window, stalls))
}

/// Copies the node logs of the point in `dir` (the `*.log` files in each
/// member's folder, as `<member>-<file>`, and etcd's `eN.log`) to
/// `logs/<dir's name>/`, before the point's data is removed: the slow writes the
/// report names are found there by their time.
fn keep_logs(dir: &Path, logs: &Path) -> std::io::Result<()> {
    let Some(name) = dir.file_name() else {
        return Ok(());
    };
    let to = logs.join(name);
    std::fs::create_dir_all(&to)?;
    let is_log = |p: &Path| p.is_file() && p.to_string_lossy().contains(".log");
    for e in std::fs::read_dir(dir)?.flatten() {
        let path = e.path();
        if is_log(&path) {
            std::fs::copy(&path, to.join(e.file_name()))?;
        } else if path.is_dir() {
            let member = e.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(&path)?.flatten() {
                if is_log(&f.path()) {
                    let file = f.file_name().to_string_lossy().into_owned();
                    std::fs::copy(f.path(), to.join(format!("{member}-{file}")))?;
                }
            }
        }
    }
    Ok(())
}

/// Resident memory of process `pid` in bytes (0 if gone), from `/proc/PID/status`.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Megabytes with one decimal.
fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// MB/s of values written in a run.
fn mb_per_s(p: &Point) -> f64 {
    p.run.ops_per_s * p.value_bytes as f64 / 1e6
}

/// The header of a dimension's table (two lines).
fn header(dim: Dimension) -> String {
    format!(
        "| {} | system | writes/s | MB/s | p50 ms | p99 ms | errors | RSS MB/node | leader dir MB | fill s | catch-up s |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        dim.label()
    )
}

/// One point's row of the table, also printed as it is measured.
fn row(p: &Point) -> String {
    format!(
        "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
        p.x,
        p.system.name(),
        p.run.ops_per_s,
        mb_per_s(p),
        ms(p.run.p50_us),
        ms(p.run.p99_us),
        p.errors,
        mb(p.rss_per_node),
        mb(p.disk),
        p.fill
            .map_or("-".into(), |f| format!("{:.1}", f.as_secs_f64())),
        p.catch_up.map_or("-".into(), |(c, snap)| format!(
            "{:.2}{}",
            c.as_secs_f64(),
            if snap { " (snapshot)" } else { "" }
        )),
    )
}

/// The markdown table of a dimension, oncekv/etcd ratios where both ran, and the
/// GC stall.
fn table(dim: Dimension, results: &[Point], gc: Option<&GcStall>) -> String {
    let mut t = header(dim);
    t.push('\n');
    for p in results {
        let _ = writeln!(t, "{}", row(p));
    }
    let pair = |x: u64| {
        let get = |s: System| results.iter().find(|p| p.x == x && p.system == s);
        get(System::Oncekv).zip(get(System::Etcd))
    };
    let mut xs: Vec<u64> = results.iter().map(|p| p.x).collect();
    xs.dedup();
    let ratios: Vec<String> = (xs.iter())
        .filter_map(|&x| {
            let (o, e) = pair(x)?;
            Some(format!(
                "{x}: throughput {:.2}x, p99 {:.2}x",
                o.run.ops_per_s / e.run.ops_per_s,
                o.run.p99_us as f64 / e.run.p99_us.max(1) as f64
            ))
        })
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(t, "\noncekv/etcd at each point: {}", ratios.join("; "));
    }
    let oncekv: Vec<&Point> = (results.iter())
        .filter(|p| p.system == System::Oncekv)
        .collect();
    if let (Some(first), Some(last)) = (oncekv.first(), oncekv.last())
        && oncekv.len() > 1
    {
        let _ = writeln!(
            t,
            "\noncekv at {} against {}: throughput {:.2}x, p99 {:.2}x",
            last.x,
            first.x,
            last.run.ops_per_s / first.run.ops_per_s,
            last.run.p99_us as f64 / first.run.p99_us.max(1) as f64
        );
        if dim == Dimension::Sessions && last.x > first.x {
            let per =
                (last.rss_per_node as f64 - first.rss_per_node as f64) / (last.x - first.x) as f64;
            let _ = writeln!(t, "resident memory per added session, per node: {per:.0} B");
        }
    }
    if let Some(g) = gc {
        let line = |p: &Phase| {
            format!(
                "{} writes, p50 {} ms, p99 {} ms, slowest {} ms{}; {} machine stalls \
                 (longest {} ms); slowest write no stall overlapped {} ms",
                p.summary.ops,
                ms(p.summary.p50_us),
                ms(p.summary.p99_us),
                ms(p.slowest_us),
                p.slowest_at.map_or(String::new(), |at| {
                    let t = at.duration_since(UNIX_EPOCH).unwrap_or_default();
                    let utc = crate::utc::Utc::from_unix(t.as_secs(), t.subsec_millis());
                    format!(" (sent {} UTC)", utc.compact())
                }),
                p.machine_stalls,
                ms(p.machine_stall_us),
                ms(p.calm_slowest_us),
            )
        };
        let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
        let _ = writeln!(
            t,
            "\nGC stall, {} sessions expired at once (1 writer):\n\
             - before (all members, all live): {}\n\
             - one member down, nothing removed: {}\n\
             - during the removal, one member down ({:.2} s): {}\n\
             - after (all members, all gone): {}\n\
             - slowest write during the removal against p99 with one member down: {:.2}x \
             (against p99 before: {:.2}x); against the slowest with one member down: {:.2}x\n\
             - p99 during the removal against p99 with one member down: {:.2}x\n\
             - slowest write no machine stall overlapped, against p99 with one member \
             down: {:.2}x during the removal, {:.2}x with nothing removed",
            g.sessions,
            line(&g.before),
            line(&g.one_down),
            g.drain.as_secs_f64(),
            line(&g.during),
            line(&g.after),
            ratio(g.during.slowest_us, g.one_down.summary.p99_us),
            ratio(g.during.slowest_us, g.before.summary.p99_us),
            ratio(g.during.slowest_us, g.one_down.slowest_us),
            ratio(g.during.summary.p99_us, g.one_down.summary.p99_us),
            ratio(g.during.calm_slowest_us, g.one_down.summary.p99_us),
            ratio(g.one_down.calm_slowest_us, g.one_down.summary.p99_us),
        );
    }
    t
}

/// The dimension's plot: throughput, p99 and memory (keys: catch-up too; value
/// bytes: MB/s instead of writes/s).
fn plot(dim: Dimension, results: &[Point]) -> Curves {
    let systems: Vec<System> = [System::Oncekv, System::Etcd]
        .into_iter()
        .filter(|s| results.iter().any(|p| p.system == *s))
        .collect();
    let panel = |label: &str, f: &dyn Fn(&Point) -> Option<f64>| Panel {
        y_label: label.to_string(),
        curves: (systems.iter())
            .map(|&s| Curve {
                name: s.name().to_string(),
                points: (results.iter())
                    .filter(|p| p.system == s)
                    .map(|p| (p.x as f64, f(p)))
                    .collect(),
            })
            .collect(),
    };
    let mut panels = vec![if dim == Dimension::ValueBytes {
        panel("MB/s written", &|p| Some(mb_per_s(p)))
    } else {
        panel("writes/s", &|p| Some(p.run.ops_per_s))
    }];
    panels.push(panel("p99 ms", &|p| Some(p.run.p99_us as f64 / 1e3)));
    panels.push(panel("RSS MB per node", &|p| {
        Some(p.rss_per_node as f64 / 1e6)
    }));
    if dim == Dimension::Keys {
        panels.push(panel("follower catch-up s", &|p| {
            p.catch_up.map(|(c, _)| c.as_secs_f64())
        }));
    }
    Curves {
        title: format!("writes against {}", dim.label()),
        x_label: dim.label().to_string(),
        x_log: dim != Dimension::Nodes,
        panels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(ops_per_s: f64, p99_us: u64) -> Summary {
        Summary {
            ops: ops_per_s as usize,
            ops_per_s,
            p50_us: p99_us / 2,
            p99_us,
        }
    }

    fn point(x: u64, system: System, ops_per_s: f64, p99_us: u64) -> Point {
        Point {
            x,
            system,
            run: summary(ops_per_s, p99_us),
            errors: 0,
            value_bytes: 100,
            fill: Some(Duration::from_secs(1)),
            rss_per_node: 10_000_000 + x * 200,
            disk: 1_000_000,
            catch_up: Some((Duration::from_millis(1500), x >= 100_000)),
        }
    }

    #[test]
    fn the_table_gives_every_point_and_the_ratios() {
        let results = vec![
            point(1_000, System::Oncekv, 30_000.0, 4_000),
            point(1_000, System::Etcd, 10_000.0, 8_000),
            point(1_000_000, System::Etcd, 9_000.0, 9_000),
            point(1_000_000, System::Oncekv, 27_000.0, 5_000),
        ];
        let t = table(Dimension::Keys, &results, None);
        assert_eq!(t.lines().filter(|l| l.starts_with("| 1")).count(), 4);
        assert!(t.contains("1000: throughput 3.00x, p99 0.50x"), "{t}");
        assert!(t.contains("1000000: throughput 3.00x"), "{t}");
        assert!(t.contains("oncekv at 1000000 against 1000: throughput 0.90x, p99 1.25x"));
        assert!(t.contains("1.50 (snapshot)"));
        let c = plot(Dimension::Keys, &results);
        assert_eq!(c.panels.len(), 4);
        assert_eq!(c.panels[0].curves.len(), 2);
        assert!(c.x_log);
    }

    #[test]
    fn the_sessions_table_gives_memory_per_session_and_the_gc_stall() {
        let results = vec![
            point(1_000, System::Oncekv, 30_000.0, 4_000),
            point(1_000_000, System::Oncekv, 28_000.0, 5_000),
        ];
        let phase = |p99_us: u64, slowest_us: u64| Phase {
            summary: summary(1_000.0, p99_us),
            slowest_us,
            slowest_at: Some(UNIX_EPOCH + Duration::from_millis(951_827_696_007)),
            machine_stall_us: 12_300,
            machine_stalls: 3,
            calm_slowest_us: slowest_us / 2,
        };
        let gc = GcStall {
            sessions: 1_000_000,
            before: phase(1_000, 3_000),
            one_down: phase(800, 2_000),
            during: phase(1_500, 2_500),
            drain: Duration::from_secs(4),
            after: phase(800, 2_000),
        };
        let t = table(Dimension::Sessions, &results, Some(&gc));
        assert!(t.contains("per added session, per node: 200 B"), "{t}");
        assert!(
            t.contains("one member down: 3.12x (against p99 before: 2.50x); against the slowest with one member down: 1.25x"),
            "{t}"
        );
        assert!(t.contains("against p99 with one member down: 1.88x"), "{t}");
        assert!(
            t.contains(
                "slowest 2.5 ms (sent 20000229T123456.007 UTC); 3 machine stalls \
                 (longest 12.3 ms); slowest write no stall overlapped 1.2 ms"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "no machine stall overlapped, against p99 with one member down: \
                 1.56x during the removal, 1.25x with nothing removed"
            ),
            "{t}"
        );
        assert!(!t.contains("oncekv/etcd"));
        let c = plot(Dimension::Sessions, &results);
        assert_eq!(c.panels[0].curves.len(), 1);
    }

    #[test]
    fn points_out_of_range_are_refused() {
        assert!(check_points(Dimension::Nodes, &[3, 5]).is_ok());
        assert!(check_points(Dimension::Nodes, &[4]).is_err());
        assert!(check_points(Dimension::ValueBytes, &[2_000_000]).is_err());
        assert!(check_points(Dimension::Keys, &[0]).is_err());
        assert!(check_points(Dimension::Keys, &[]).is_err());
        assert_eq!(
            Dimension::Sessions.systems(false),
            vec![System::Oncekv],
            "etcd has no client sessions"
        );
    }

    #[test]
    fn memory_and_disk_are_read_from_this_process() {
        assert!(rss(std::process::id()) > 1_000_000);
        assert_eq!(rss(u32::MAX), 0);
        let dir = std::env::temp_dir().join(format!("oncekv-sweep-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), [0u8; 100]).unwrap();
        std::fs::write(dir.join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(&dir), 123);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(dir_bytes(&dir), 0);
    }

    #[test]
    fn the_longest_machine_stall_is_the_longest_overlapping_the_phase() {
        // No thread: only the stalls put here.
        let m = StallMonitor {
            stop: Arc::default(),
            stalls: Arc::default(),
            thread: None,
        };
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        m.stalls.lock().unwrap().extend([
            (t0 + ms(100), ms(50)),  // 50..100
            (t0 + ms(300), ms(200)), // 100..300
            (t0 + ms(330), ms(20)),  // 310..330
        ]);
        assert_eq!(m.longest_in(t0, t0 + ms(60)), 50_000);
        assert_eq!(m.longest_in(t0 + ms(150), t0 + ms(160)), 200_000);
        assert_eq!(m.longest_in(t0 + ms(305), t0 + ms(400)), 20_000);
        assert_eq!(m.longest_in(t0 + ms(331), t0 + ms(400)), 0);
        assert_eq!(m.count_in(t0, t0 + ms(400)), 3);
        assert_eq!(m.count_in(t0 + ms(150), t0 + ms(160)), 1);
        assert_eq!(m.count_in(t0 + ms(331), t0 + ms(400)), 0);
    }

    #[test]
    fn a_write_a_machine_stall_overlapped_is_told_apart() {
        let m = StallMonitor {
            stop: Arc::default(),
            stalls: Arc::default(),
            thread: None,
        };
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        m.stalls.lock().unwrap().push((t0 + ms(30), ms(10))); // 20..30
        let wall = UNIX_EPOCH;
        let writes = [
            (t0, wall, ms(2)),          // 0..2: calm
            (t0 + ms(15), wall, ms(9)), // 15..24: across the stall
            (t0 + ms(40), wall, ms(3)), // 40..43: calm
        ];
        let p = Phase::of(writes.iter(), ms(50), &m);
        assert_eq!(p.slowest_us, 9_000);
        assert_eq!(p.calm_slowest_us, 3_000);
        assert_eq!((p.machine_stalls, p.machine_stall_us), (1, 10_000));
    }

    #[test]
    fn node_logs_are_kept_before_a_point_is_removed() {
        let root = std::env::temp_dir().join(format!("oncekv-keep-{}", std::process::id()));
        let point = root.join("sessions-1000-oncekv");
        std::fs::create_dir_all(point.join("n1/log")).unwrap();
        std::fs::write(point.join("n1/stderr.log"), "node one").unwrap();
        std::fs::write(point.join("n1/node.log"), "node one's log").unwrap();
        std::fs::write(point.join("n1/log/segment"), "not a log to keep").unwrap();
        std::fs::write(point.join("e2.log"), "etcd two").unwrap();
        std::fs::write(point.join("pid"), "1").unwrap();
        keep_logs(&point, &root.join("logs")).unwrap();
        let kept = root.join("logs/sessions-1000-oncekv");
        let mut names: Vec<String> = (std::fs::read_dir(&kept).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["e2.log", "n1-node.log", "n1-stderr.log"]);
        assert_eq!(
            std::fs::read_to_string(kept.join("n1-stderr.log")).unwrap(),
            "node one"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
