//! `oncekv sim`: the simulator's front end. Runs seeds (in parallel, one
//! simulated cluster per thread at a time), prints every failing seed with the
//! shortest simulated window in which it still fails and the command that
//! replays it, or replays one seed with its trace. The simulation itself is
//! `tools::sim`'s.

use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::tools::sim::{SimOptions, SimRun, run};

/// Arguments of `oncekv sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// How many seeds to run, from `--from`.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    pub seeds: u64,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Replay this one seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// With `--seed`: print the whole trace.
    #[arg(long, requires = "seed")]
    pub trace: bool,
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    pub nodes: usize,
    /// Simulated length of each run, in ms (faults during the first 60%).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(2_000..=3_600_000))]
    pub duration_ms: u64,
    /// Client workers per run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub clients: u64,
    /// Threads running seeds at once (default: the machine's cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub jobs: Option<u64>,
}

fn parse_nodes(s: &str) -> Result<usize, String> {
    match s {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("{s:?}: the simulator runs 3 or 5 nodes")),
    }
}

/// Exit status when some seed failed.
pub const EXIT_FAILED: i32 = 1;

/// `oncekv sim`: returns its exit status (0 every seed passed, 1 one failed).
pub fn main(args: &SimArgs, out: &mut dyn Write) -> io::Result<i32> {
    if !crate::tools::sim::REPRODUCIBLE {
        crate::stderr_line!(
            "warning: this build was made without --cfg tokio_unstable (RUSTFLAGS replaced \
             .cargo/config.toml): runs are checked but a seed may not replay exactly"
        );
    }
    // The nodes' own logs (openraft's too), only when asked for: they are not
    // part of a run, and a search over many seeds would drown in them.
    if std::env::var_os("ONCEKV_LOG").is_some() {
        super::init_logging(None);
    }
    let opts = SimOptions {
        nodes: args.nodes,
        duration_ms: args.duration_ms,
        clients: args.clients as usize,
        keep_trace: args.trace,
        ..SimOptions::default()
    };
    if let Some(seed) = args.seed {
        let started = Instant::now();
        // The trace is printed as it happens, so a run that hangs shows how.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let opts = SimOptions {
            keep_trace: false,
            live: args.trace.then_some(tx),
            ..opts
        };
        let r = std::thread::scope(|s| {
            // The runner owns the only sender: the loop below ends with the run.
            let runner = s.spawn(move || run(seed, &opts));
            for line in rx {
                writeln!(out, "{line}")?;
            }
            runner
                .join()
                .map_err(|_| io::Error::other("the simulation panicked"))
        })?;
        report_one(out, &r, started.elapsed().as_secs_f64())?;
        return Ok(if r.failures.is_empty() {
            0
        } else {
            EXIT_FAILED
        });
    }
    let jobs = args.jobs.map(|j| j as usize).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let started = Instant::now();
    let next = AtomicU64::new(args.from);
    let end = args.from.saturating_add(args.seeds);
    let failed: Mutex<Vec<SimRun>> = Mutex::new(Vec::new());
    let simulated_ms = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let total = end - args.from;
    let finished = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let seed = next.fetch_add(1, Ordering::SeqCst);
                        if seed >= end {
                            return;
                        }
                        let r = run(seed, &opts);
                        simulated_ms.fetch_add(r.stats.simulated_ms, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::SeqCst);
                        if !r.failures.is_empty() {
                            // At once, so a long search shows what it found so far.
                            crate::stderr_line!("seed {seed} FAILED: {}", r.failures[0]);
                            failed.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                        }
                    }
                })
            })
            .collect();
        // Progress on stderr every 10 s, for searches that take an hour.
        s.spawn(|| {
            let mut last = Instant::now();
            while !finished.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= PROGRESS_EVERY {
                    last = Instant::now();
                    let n = done.load(Ordering::SeqCst);
                    let bad = failed.lock().map_or(0, |f| f.len());
                    crate::stderr_line!(
                        "... {n} of {total} seeds run, {bad} failed, {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        });
        for w in workers {
            let _ = w.join();
        }
        finished.store(true, Ordering::SeqCst);
    });
    let wall = started.elapsed().as_secs_f64();
    let mut failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    failed.sort_by_key(|r| r.seed);
    for r in &failed {
        let window = shortest_window(r.seed, &opts);
        writeln!(out, "FAIL seed {}:", r.seed)?;
        for f in &r.failures {
            writeln!(out, "  {f}")?;
        }
        writeln!(
            out,
            "  still fails with a {window} ms run; replay: oncekv sim --seed {} --nodes {} \
             --clients {} --duration-ms {window} --trace",
            r.seed, opts.nodes, opts.clients
        )?;
    }
    let n = done.load(Ordering::SeqCst);
    let sim_s = simulated_ms.load(Ordering::SeqCst) as f64 / 1000.0;
    writeln!(
        out,
        "{} of {n} seeds failed ({}..{end}, {} nodes); {wall:.1} s wall on {jobs} threads, \
         {sim_s:.0} s simulated ({:.0}x wall per thread)",
        failed.len(),
        args.from,
        opts.nodes,
        sim_s / (wall * jobs as f64).max(1e-9)
    )?;
    Ok(if failed.is_empty() { 0 } else { EXIT_FAILED })
}

/// How often a search over many seeds reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The shortest run (halving the duration) in which `seed` still fails.
pub fn shortest_window(seed: u64, opts: &SimOptions) -> u64 {
    let mut best = opts.duration_ms;
    let mut d = opts.duration_ms / 2;
    while d >= 2_000 {
        let shorter = SimOptions {
            duration_ms: d,
            keep_trace: false,
            ..opts.clone()
        };
        if run(seed, &shorter).failures.is_empty() {
            break;
        }
        best = d;
        d /= 2;
    }
    best
}

fn report_one(out: &mut dyn Write, r: &SimRun, wall_s: f64) -> io::Result<()> {
    let s = &r.stats;
    writeln!(
        out,
        "seed {}: {} ({} ms simulated in {wall_s:.2} s wall, {:.0}x); trace hash {:016x}, {} events",
        r.seed,
        if r.failures.is_empty() {
            "PASS"
        } else {
            "FAIL"
        },
        s.simulated_ms,
        s.simulated_ms as f64 / 1000.0 / wall_s.max(1e-9),
        r.trace_hash,
        s.events
    )?;
    writeln!(
        out,
        "  ops ok {} fail {} info {}; faults {}, crashes {}; messages {} ({} dropped); \
         linearizable: {}; reruns after a trimmed tombstone: {}",
        s.ops_ok,
        s.ops_fail,
        s.ops_info,
        s.faults,
        s.crashes,
        s.messages,
        s.dropped,
        s.linearizable,
        s.trimmed_reruns
    )?;
    for f in &r.failures {
        writeln!(out, "  FAILURE: {f}")?;
    }
    Ok(())
}
