//! The `oncekv` binary: with no arguments, a Maelstrom node on stdin/stdout.
use std::io::{self, Write};

use clap::{Parser, Subcommand};
use oncekv::tools::harness::demo::{DemoPreset, run_demo};
use oncekv::tools::harness::{TestArgs, default_out_dir, seed::fresh_seed};

#[derive(Parser)]
#[command(
    name = "oncekv",
    version,
    about = "Raft key-value store with exactly-once sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Maelstrom node on stdin/stdout (the default with no arguments).
    Node,
    /// Measure single-node throughput over stdin against a no-consensus baseline.
    Bench(oncekv::tools::bench::BenchArgs),
    /// Compare a 3-node TCP cluster with a 3-member etcd 3.4 on loopback: write
    /// throughput and latency, failover unavailability (docs/benchmarks.md).
    BenchCluster(oncekv::tools::bench::cluster::BenchClusterArgs),
    /// Run a Maelstrom-style test against any Maelstrom node binary.
    Test(TestArgs),
    /// Test oncekv itself: exactly-once, then lin-kv, 3 nodes under partitions.
    Demo {
        /// Seconds per workload.
        #[arg(long, default_value_t = 25.0)]
        time_limit: f64,
        /// Seed (random if absent; printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Check a history.jsonl: per-key linearizability, and exactly-once counters
    /// if it has counter keys. Exit 0 valid, 1 invalid, 2 unknown, 3 bad input.
    Check(CheckArgs),
    /// Run one node over TCP (see docs/cluster.md).
    Serve(oncekv::tcp::serve::ServeArgs),
    /// Run N `serve` processes on loopback until Ctrl-C.
    Cluster(oncekv::cli::cluster::ClusterArgs),
    /// One operation against a TCP cluster, retried until a definite answer.
    Client(oncekv::cli::client::ClientArgs),
}

/// `oncekv test` exit status for flags it refuses (Jepsen's CLI uses 254), so it is
/// not read as a verdict (0 valid, 1 invalid, 2 unknown).
const EXIT_TEST_ARGS: i32 = 254;
/// `oncekv test` exit status when the run ends without a verdict (Jepsen: 255).
const EXIT_TEST_CRASHED: i32 = 255;

/// Runs `oncekv test` and writes its summary to `out`; the exit status is the verdict's.
fn test(args: TestArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let out_dir = args.out.clone().unwrap_or_else(default_out_dir);
    let cfg = match args.into_config(seed, out_dir) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return Ok(EXIT_TEST_ARGS);
        }
    };
    let rt = tokio::runtime::Runtime::new()?;
    let outcome = match rt.block_on(oncekv::tools::harness::run(cfg)) {
        Ok(o) => o,
        Err(e) => {
            // No verdict (e.g. a node never answered init): not 1 (invalid) or 2.
            eprintln!("error: the test did not run to a verdict: {e:#}");
            return Ok(EXIT_TEST_CRASHED);
        }
    };
    let written = writeln!(
        out,
        "{}\noutput: {}",
        outcome.summary,
        outcome.out_dir.display()
    );
    unread_is_fine(written.and_then(|()| out.flush()))?;
    Ok(outcome.valid.exit_code())
}

/// Runs the demo and writes both summaries to `out`.
fn demo(time_limit: f64, seed: Option<u64>, out: &mut dyn Write) -> anyhow::Result<i32> {
    let preset = DemoPreset {
        bin: std::env::current_exe()?,
        time_limit_s: time_limit,
        rate: 50.0,
        nemesis_interval_s: 4.0,
        seed,
        out: default_out_dir(),
    };
    writeln!(
        out,
        "oncekv demo: 3 oncekv nodes, 12 clients, random network partitions every ~{} s.\n\
         1) exactly-once (beyond Maelstrom): clients retry timed-out requests with the same\n   \
         client_id/seq on another node; every counter must equal the sum of its adds.\n\
         2) lin-kv: Maelstrom's linearizable key-value workload, checked by this harness.\n",
        preset.nemesis_interval_s
    )?;
    out.flush()?;
    let rt = tokio::runtime::Runtime::new()?;
    let outcomes = rt.block_on(run_demo(&preset))?;
    let mut worst = 0;
    let mut written = Ok(());
    for (workload, o) in &outcomes {
        written = written.and_then(|()| {
            writeln!(
                out,
                "\n--- {} ---\n{}\noutput: {}",
                workload.name(),
                o.summary,
                o.out_dir.display()
            )
        });
        worst = worst.max(o.valid.exit_code());
    }
    unread_is_fine(written.and_then(|()| out.flush()))?;
    Ok(worst)
}

/// Maelstrom node mode: the protocol on stdin/stdout until stdin closes.
fn node() -> anyhow::Result<i32> {
    let config = oncekv::config::Config::from_env()?;
    config.configure_reject_log();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(oncekv::maelstrom::run(
        tokio::io::stdin(),
        tokio::io::stdout(),
        config,
    ))?;
    Ok(0)
}

fn init_logging(file: Option<oncekv::log_file::CappedLog>) {
    // Logs go to stderr (stdout carries only protocol lines), or to a TCP node's log file.
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONCEKV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,oncekv=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match file {
        Some(f) => builder.with_writer(std::sync::Arc::new(f)).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}

/// `oncekv serve`: one TCP node, logging to DATA_DIR/node.log (size-capped,
/// `TcpConfig::node_log_bytes_max`), until Ctrl-C/SIGTERM.
fn serve(args: &oncekv::tcp::serve::ServeArgs) -> anyhow::Result<i32> {
    // Before the data dir or its log file is created.
    oncekv::tcp::serve::check_args(args)?;
    let tcp = oncekv::tcp::TcpConfig::from_env()?;
    std::fs::create_dir_all(&args.data_dir)?;
    let log = args.data_dir.join("node.log");
    let file = oncekv::log_file::CappedLog::open(&log, tcp.node_log_bytes_max)?;
    init_logging(Some(file));
    eprintln!("{}: logging to {}", args.id, log.display());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(oncekv::tcp::serve::run(
        args,
        oncekv::tcp::serve::stop_signal(),
    ))?;
    Ok(0)
}

fn tokio_main<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

fn main() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `oncekv test` with a bad flag: 254, not clap's 2, which means "unknown".
        Err(e) if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("test") => {
            let _ = e.print();
            std::process::exit(EXIT_TEST_ARGS);
        }
        // `oncekv client` with a bad flag: its usage status, not clap's 2, which
        // it uses for "no definite answer".
        Err(e) if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("client") => {
            let _ = e.print();
            std::process::exit(oncekv::cli::client::EXIT_USAGE);
        }
        Err(e) => e.exit(),
    };
    if let Some(Command::Serve(args)) = &cli.command {
        std::process::exit(serve(args)?);
    }
    init_logging(None);
    if matches!(cli.command, None | Some(Command::Node)) {
        // It writes its protocol lines to stdout itself (tokio's, from other
        // threads), so stdout must not be locked here.
        std::process::exit(node()?);
    }
    // The one place the other commands' output goes: each command that prints is
    // handed this.
    let mut out = io::stdout().lock();
    let code = match run(cli.command, &mut out) {
        Ok(code) => code,
        // The reader of the output went away (`oncekv ... | head -1`): a quiet end.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => return Err(e),
    };
    std::process::exit(code)
}

/// Runs a command other than `serve` and the node; returns its exit status.
fn run(command: Option<Command>, out: &mut dyn Write) -> anyhow::Result<i32> {
    Ok(match command {
        None | Some(Command::Node) | Some(Command::Serve(_)) => unreachable!("run before"),
        Some(Command::Bench(args)) => {
            oncekv::tools::bench::run(&args, out)?;
            0
        }
        Some(Command::BenchCluster(args)) => {
            tokio_main(oncekv::tools::bench::cluster::run(&args, out))??;
            0
        }
        Some(Command::Test(args)) => test(args, out)?,
        Some(Command::Demo { time_limit, seed }) => demo(time_limit, seed, out)?,
        Some(Command::Check(args)) => check_command(&args, out)?,
        Some(Command::Cluster(args)) => {
            tokio_main(oncekv::cli::cluster::run(&args, out))??;
            0
        }
        Some(Command::Client(args)) => tokio_main(oncekv::cli::client::run(args, out))?,
    })
}

/// Output nobody reads any more (a closed pipe) is not an error for a command
/// whose exit status is a verdict: the verdict stands.
fn unread_is_fine(written: io::Result<()>) -> io::Result<()> {
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Whether `e` comes from writing to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io = cause.downcast_ref::<io::Error>().or_else(|| {
            match cause.downcast_ref::<oncekv::tcp::TcpError>() {
                Some(oncekv::tcp::TcpError::Io(e)) => Some(e),
                _ => None,
            }
        });
        io.is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Arguments of `oncekv check`.
#[derive(clap::Args)]
struct CheckArgs {
    /// The history file (JSON lines, as the harness writes it).
    history: std::path::PathBuf,
    /// Give up (verdict unknown) after this many seconds.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    time_limit: f64,
    /// Print the verdict as JSON (results.json's `linearizable` and
    /// `exactly_once` objects) instead of text.
    #[arg(long)]
    json: bool,
}

/// Exit status of `oncekv check` for an unreadable or malformed history.
const EXIT_BAD_INPUT: i32 = 3;

/// `oncekv check`: the verdict on `out`, as text or JSON; returns its exit status.
fn check_command(args: &CheckArgs, out: &mut dyn Write) -> io::Result<i32> {
    let Ok(time_limit) = std::time::Duration::try_from_secs_f64(args.time_limit) else {
        eprintln!("error: --time-limit must be a non-negative number of seconds");
        return Ok(EXIT_BAD_INPUT);
    };
    let opts = oncekv::tools::check::CheckOptions { time_limit };
    let started = std::time::Instant::now();
    match oncekv::tools::check::check_file(&args.history, &opts) {
        Err(e) => {
            eprintln!("error: {e}");
            Ok(EXIT_BAD_INPUT)
        }
        Ok(report) => {
            let written = if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                )
            } else {
                write!(out, "{}", report.render()).and_then(|()| {
                    writeln!(
                        out,
                        "{} in {:.3} s",
                        report.valid().word(),
                        started.elapsed().as_secs_f64()
                    )
                })
            };
            unread_is_fine(written.and_then(|()| out.flush()))?;
            Ok(report.valid().exit_code())
        }
    }
}

/// mimalloc: the nodes allocate per message (JSON, log entries); it took ~6% off
/// the CPU per write against glibc's allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
