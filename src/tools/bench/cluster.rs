//! `oncekv bench-cluster`: a 3-node oncekv TCP cluster against a 3-member etcd 3.4
//! cluster, both on loopback with fsync on, both started and measured in the same
//! invocation, runs interleaved:
//!
//! 1. write throughput and p50/p99 latency per number of concurrent clients, each
//!    client one connection writing in a closed loop (oncekv: [`crate::tcp::Client`]
//!    `write` with a session, so every write carries `client_id`/`seq`; etcd:
//!    `POST /v3/kv/put` through its JSON gateway), same keys and value size;
//! 2. failover unavailability: one client writes in a tight loop, the leader is
//!    SIGKILLed, and the time from the kill to the first acknowledged write that
//!    was sent after the kill is taken; the killed node is restarted on its data
//!    directory and the cluster settles before the next kill.
//!
//! Figures are ratios against the peer in the same run (the machine is shared and
//! noisy); absolute numbers are printed for context.
//!
//! May not touch a node's internals: it measures `oncekv serve` processes from
//! outside, over [`crate::tcp::Client`], as etcd is measured over its gateway.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::etcd::{EtcdCluster, check_binary};
use super::latency::{Summary, median, round_ratios};
use super::procs::OncekvCluster;
use super::systems::{Clusters, SETTLE_TIMEOUT, System, Tight, free_port, loadavg, ms, throughput};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchClusterArgs {
    /// The etcd 3.4 binary (`apt-get install -y etcd-server` puts it at /usr/bin/etcd).
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd: PathBuf,
    /// Seconds measured per system and client count.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Seconds of load before each measurement starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    /// Concurrent clients, comma-separated; one throughput run per value and system.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub clients: Vec<usize>,
    /// Bytes of each written value (the same bytes for both systems).
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Times the throughput runs are repeated (the order of systems alternates).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Leader kills per system (0 skips the failover part).
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// Skip the etcd failover part (its kills).
    #[arg(long)]
    pub no_etcd_failover: bool,
    /// Per-attempt timeout of both failover writers, in ms (the clients' default,
    /// 2000, if absent). A request a follower holds for a dead leader waits this long.
    #[arg(long)]
    pub failover_attempt_ms: Option<u64>,
    /// Skip the throughput part (failover only).
    #[arg(long)]
    pub no_throughput: bool,
    /// etcd's `--heartbeat-interval` in ms (etcd's default, 100, if absent). oncekv's is 50.
    #[arg(long)]
    pub etcd_heartbeat_ms: Option<u64>,
    /// etcd's `--election-timeout` in ms (etcd's default, 1000, if absent). oncekv's
    /// is randomized in 150..300.
    #[arg(long)]
    pub etcd_election_ms: Option<u64>,
    /// Run oncekv alone, without starting etcd (for profiling; no ratios are printed).
    #[arg(long)]
    pub oncekv_only: bool,
    /// Where both clusters keep their data (the same filesystem for both); a fresh
    /// directory under the system temp dir if absent, removed at the end.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Instead of the throughput and failover parts: sweep these dimensions
    /// (comma-separated), a fresh cluster of each system per point, and write a
    /// table and an SVG plot per dimension (see docs/benchmarks.md).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<super::sweep::Dimension>,
    /// The sweep's points (comma-separated), instead of each dimension's defaults
    /// (sessions and keys 1000..1000000 by decades, value-bytes 100..1000000,
    /// nodes 3,5). Only with a single `--sweep` dimension.
    #[arg(long, value_delimiter = ',')]
    pub points: Vec<u64>,
    /// Concurrent writers of each sweep measurement.
    #[arg(long, default_value_t = 64)]
    pub sweep_clients: usize,
    /// Where a sweep writes `sweep-DIMENSION.svg` and `.md`.
    #[arg(long, default_value = "bench-sweep")]
    pub plot_dir: PathBuf,
}

/// How long a killed cluster may take to acknowledge a write again before the run fails.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between a failover writer's attempts (doubling to 8x), for both systems:
/// a tight loop rather than the library default of 25 ms.
const FAILOVER_BACKOFF: Duration = Duration::from_millis(5);
/// Acknowledged writes required before a kill, so the writer is known to be flowing.
const ACKS_BEFORE_KILL: usize = 20;

/// When a write was sent and when it was acknowledged.
type Ack = (Instant, Instant);

/// One kill of `system`'s leader under a tight-loop writer: the time from just before
/// the SIGKILL to the acknowledgement of the first write sent after it.
async fn failover_once(
    clusters: &mut Clusters,
    system: System,
    attempt_timeout: Option<Duration>,
) -> anyhow::Result<Duration> {
    let leader = clusters.settle(system).await?;
    let tight = Tight {
        backoff: FAILOVER_BACKOFF,
        attempt_timeout,
    };
    let mut w = clusters.client(system, leader, Some(tight)).await?;
    // (sent, acknowledged) of every successful write.
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (acks, stop) = (acks.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t0 = Instant::now();
                if w.put("failover", &i.to_string()).await.is_ok() {
                    acks.lock().expect("acks").push((t0, Instant::now()));
                }
            }
        })
    };
    let count = || acks.lock().expect("acks").len();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while count() < ACKS_BEFORE_KILL {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: no writes before the kill",
            system.name()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = Instant::now();
    clusters.kill(system, leader);
    let deadline = killed_at + FAILOVER_TIMEOUT;
    let served = loop {
        let first = (acks.lock().expect("acks").iter())
            .find(|(sent, _)| *sent >= killed_at)
            .map(|(_, acked)| *acked);
        if let Some(t) = first {
            break t;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: no write acknowledged within {FAILOVER_TIMEOUT:?} of the kill",
            system.name()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    stop.store(true, Ordering::Relaxed);
    task.await?;
    clusters.restart(system, leader)?;
    Ok(served - killed_at)
}

/// Extra etcd flags for the timing options given.
pub(super) fn etcd_timing_args(args: &BenchClusterArgs) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(ms) = args.etcd_heartbeat_ms {
        flags.extend(["--heartbeat-interval".to_string(), ms.to_string()]);
    }
    if let Some(ms) = args.etcd_election_ms {
        flags.extend(["--election-timeout".to_string(), ms.to_string()]);
    }
    flags
}

/// Runs the benchmark and writes the report to `out`.
pub async fn run(args: &BenchClusterArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let etcd_version = if args.oncekv_only {
        "not run".to_string()
    } else {
        check_binary(&args.etcd)?
    };
    anyhow::ensure!(
        args.duration_s > 0.0 && args.warmup_s >= 0.0,
        "bad durations"
    );
    anyhow::ensure!(
        args.clients.iter().all(|&c| c > 0),
        "--clients must be positive"
    );
    let window = Duration::from_secs_f64(args.duration_s);
    let warmup = Duration::from_secs_f64(args.warmup_s);
    let (root, temporary) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("oncekv-bench-cluster-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&root)?;
    let result = if args.sweep.is_empty() {
        run_in(args, &root, &etcd_version, window, warmup, out).await
    } else {
        let plan = super::sweep::Plan {
            dimensions: args.sweep.clone(),
            points: args.points.clone(),
            clients: args.sweep_clients,
            plot_dir: args.plot_dir.clone(),
            oncekv_only: args.oncekv_only,
            etcd: args.etcd.clone(),
            etcd_flags: etcd_timing_args(args),
            value_bytes: args.value_bytes,
        };
        super::sweep::run(&plan, &root, &etcd_version, (warmup, window), out).await
    };
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// The whole benchmark with its data under `root`: start both clusters, the
/// header, the throughput part, the failover part.
async fn run_in(
    args: &BenchClusterArgs,
    root: &Path,
    etcd_version: &str,
    window: Duration,
    warmup: Duration,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut clusters = start_clusters(args, root)?;
    let systems: &[System] = if args.oncekv_only {
        &[System::Oncekv]
    } else {
        &[System::Oncekv, System::Etcd]
    };
    write_header(out, args, root, etcd_version, window, warmup)?;
    for &system in systems {
        clusters.settle(system).await?;
    }
    if !args.no_throughput {
        throughput_part(out, args, &clusters, systems, window, warmup).await?;
    }
    if args.kills > 0 {
        failover_part(out, args, &mut clusters).await?;
    }
    writeln!(out, "\nload average at end: {}", loadavg())?;
    out.flush()?;
    Ok(())
}

/// Starts the oncekv cluster and (unless `--oncekv-only`) the etcd cluster on free
/// loopback ports, with their data under `root`.
fn start_clusters(args: &BenchClusterArgs, root: &Path) -> anyhow::Result<Clusters> {
    let oncekv_ports = [free_port()?, free_port()?, free_port()?];
    let etcd_ports = [
        (free_port()?, free_port()?),
        (free_port()?, free_port()?),
        (free_port()?, free_port()?),
    ];
    let exe = std::env::current_exe()?;
    Ok(Clusters {
        oncekv: Some(OncekvCluster::start(
            &exe,
            &root.join("oncekv"),
            &oncekv_ports,
        )?),
        etcd: if args.oncekv_only {
            None
        } else {
            Some(EtcdCluster::start(
                &args.etcd,
                &root.join("etcd"),
                &etcd_ports,
                &etcd_timing_args(args),
            )?)
        },
    })
}

/// The report's first lines: what runs against what, the load, the timing settings.
fn write_header(
    out: &mut dyn Write,
    args: &BenchClusterArgs,
    root: &Path,
    etcd_version: &str,
    window: Duration,
    warmup: Duration,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "oncekv bench-cluster: 3 oncekv nodes vs 3 etcd members ({etcd_version}), loopback, \
         fsync on, data in {}",
        root.display()
    )?;
    writeln!(
        out,
        "load average at start: {}; writes of {} B values, {:?} windows after {:?} warm-up",
        loadavg(),
        args.value_bytes,
        window,
        warmup
    )?;
    let etcd_flags = etcd_timing_args(args);
    // The nodes inherit this environment, so its ONCEKV_* overrides are theirs.
    let cfg = crate::config::Config::from_env()?;
    writeln!(
        out,
        "timing: oncekv heartbeat {} ms, election timeout {}..{} ms; etcd {}",
        cfg.heartbeat_interval_ms,
        cfg.election_timeout_min_ms,
        cfg.election_timeout_max_ms,
        if etcd_flags.is_empty() {
            "heartbeat 100 ms, election timeout 1000 ms (defaults)".to_string()
        } else {
            etcd_flags.join(" ")
        }
    )?;
    out.flush()?;
    Ok(())
}

/// One throughput run's result: the system, its summary, server CPU us per write.
type Run = (System, Summary, f64);

/// The throughput table: per client count, `--rounds` runs of each system (the
/// order alternating by round), then the ratios.
async fn throughput_part(
    out: &mut dyn Write,
    args: &BenchClusterArgs,
    clusters: &Clusters,
    systems: &[System],
    window: Duration,
    warmup: Duration,
) -> anyhow::Result<()> {
    let value: Arc<str> = "v".repeat(args.value_bytes).into();
    writeln!(
        out,
        "\n## throughput (oncekv: tcp::Client write with session; etcd: /v3/kv/put)"
    )?;
    writeln!(
        out,
        "round clients system      ops/s   p50 ms   p99 ms  errors  server CPU us/op"
    )?;
    out.flush()?;
    for &clients in &args.clients {
        let mut runs: Vec<Run> = Vec::new();
        for round in 0..args.rounds {
            let mut order = systems.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            for system in order {
                let (s, errors, cpu) =
                    throughput(clusters, system, clients, &value, (warmup, window), 0).await?;
                writeln!(
                    out,
                    "{:>5} {clients:>7} {:<7} {:>9.0} {:>8} {:>8} {errors:>7} {cpu:>17.0}",
                    round + 1,
                    system.name(),
                    s.ops_per_s,
                    ms(s.p50_us),
                    ms(s.p99_us)
                )?;
                out.flush()?;
                runs.push((system, s, cpu));
            }
        }
        write_throughput_ratios(out, args, clients, &runs)?;
    }
    Ok(())
}

/// oncekv over etcd at one client count, as means over the rounds, and the
/// throughput ratio of each round; nothing without etcd runs.
fn write_throughput_ratios(
    out: &mut dyn Write,
    args: &BenchClusterArgs,
    clients: usize,
    runs: &[Run],
) -> anyhow::Result<()> {
    let pick = |sys: System| -> Vec<Summary> {
        runs.iter()
            .filter(|(s, _, _)| *s == sys)
            .map(|(_, s, _)| *s)
            .collect()
    };
    let cpu_mean = |sys: System| -> f64 {
        let v: Vec<f64> = (runs.iter().filter(|(s, _, _)| *s == sys))
            .map(|(_, _, c)| *c)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (o, e) = (pick(System::Oncekv), pick(System::Etcd));
    if e.is_empty() {
        return Ok(());
    }
    let mean =
        |v: &[Summary], f: fn(&Summary) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let tput = mean(&o, |s| s.ops_per_s) / mean(&e, |s| s.ops_per_s);
    let p50 = mean(&o, |s| s.p50_us as f64) / mean(&e, |s| s.p50_us as f64);
    let p99 = mean(&o, |s| s.p99_us as f64) / mean(&e, |s| s.p99_us as f64);
    let cpu = cpu_mean(System::Oncekv) / cpu_mean(System::Etcd);
    writeln!(
        out,
        "ratio oncekv/etcd at {clients} clients: throughput {tput:.2}x, p50 {p50:.2}x, p99 {p99:.2}x, \
         server CPU per write {cpu:.2}x (mean over {} round(s); load average now {})",
        args.rounds,
        loadavg()
    )?;
    let per_round = round_ratios(&o, &e);
    if per_round.len() > 1 {
        let shown: Vec<String> = per_round.iter().map(|r| format!("{r:.2}x")).collect();
        writeln!(
            out,
            "  throughput ratio per round (each round's two runs back to back), lowest first: {}",
            shown.join(", ")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The failover part: `--kills` leader kills per system (etcd's unless
/// `--no-etcd-failover` or `--oncekv-only`), then the medians; leaves oncekv settled.
async fn failover_part(
    out: &mut dyn Write,
    args: &BenchClusterArgs,
    clusters: &mut Clusters,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "\n## failover: SIGKILL the leader, time to the first acknowledged write sent after it \
         (writer: back-off {FAILOVER_BACKOFF:?} doubling to 8x, attempt timeout {})",
        args.failover_attempt_ms
            .map_or("2000 ms (client default)".to_string(), |ms| format!(
                "{ms} ms"
            ))
    )?;
    out.flush()?;
    let mut systems = vec![System::Oncekv];
    if !args.no_etcd_failover && !args.oncekv_only {
        systems.push(System::Etcd);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); systems.len()];
    for k in 0..args.kills {
        for (j, &system) in systems.iter().enumerate() {
            let attempt = args.failover_attempt_ms.map(Duration::from_millis);
            let t = failover_once(clusters, system, attempt).await?;
            writeln!(
                out,
                "kill {:>2} {:<7} {:>7.1} ms",
                k + 1,
                system.name(),
                t.as_secs_f64() * 1e3
            )?;
            out.flush()?;
            times[j].push(t);
        }
    }
    write_failover_summary(out, &systems, &times)?;
    clusters.settle(System::Oncekv).await?;
    Ok(())
}

/// Per system the median, min and max time to recover, and the ratio of medians.
fn write_failover_summary(
    out: &mut dyn Write,
    systems: &[System],
    times: &[Vec<Duration>],
) -> anyhow::Result<()> {
    for (j, &system) in systems.iter().enumerate() {
        let v = &times[j];
        let (lo, hi) = (v.iter().min(), v.iter().max());
        writeln!(
            out,
            "{}: median {:.0} ms over {} kills (min {:.0}, max {:.0})",
            system.name(),
            median(v).unwrap_or_default().as_secs_f64() * 1e3,
            v.len(),
            lo.copied().unwrap_or_default().as_secs_f64() * 1e3,
            hi.copied().unwrap_or_default().as_secs_f64() * 1e3,
        )?;
    }
    if systems.len() == 2
        && let (Some(o), Some(e)) = (median(&times[0]), median(&times[1]))
    {
        writeln!(
            out,
            "ratio oncekv/etcd median unavailability: {:.2}x",
            o.as_secs_f64() / e.as_secs_f64()
        )?;
    }
    out.flush()?;
    Ok(())
}
