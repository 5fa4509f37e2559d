//! The `oncekv` binary: with no arguments, a Maelstrom node on stdin/stdout.
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

/// Runs `oncekv test` and prints its summary; the exit status is the verdict's.
#[allow(clippy::print_stdout)] // CLI-only: the human summary goes to stdout.
fn test(args: TestArgs) -> anyhow::Result<i32> {
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    let cfg = match args.into_config(seed, out) {
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
    println!("{}", outcome.summary);
    println!("output: {}", outcome.out_dir.display());
    Ok(outcome.valid.exit_code())
}

/// Runs the demo and prints both summaries.
#[allow(clippy::print_stdout)] // CLI-only: the human summary goes to stdout.
fn demo(time_limit: f64, seed: Option<u64>) -> anyhow::Result<i32> {
    let preset = DemoPreset {
        bin: std::env::current_exe()?,
        time_limit_s: time_limit,
        rate: 50.0,
        nemesis_interval_s: 4.0,
        seed,
        out: default_out_dir(),
    };
    println!(
        "oncekv demo: 3 oncekv nodes, 12 clients, random network partitions every ~{} s.\n\
         1) exactly-once (beyond Maelstrom): clients retry timed-out requests with the same\n   \
         client_id/seq on another node; every counter must equal the sum of its adds.\n\
         2) lin-kv: Maelstrom's linearizable key-value workload, checked by this harness.\n",
        preset.nemesis_interval_s
    );
    let rt = tokio::runtime::Runtime::new()?;
    let outcomes = rt.block_on(run_demo(&preset))?;
    let mut worst = 0;
    for (workload, o) in &outcomes {
        println!(
            "\n--- {} ---\n{}\noutput: {}",
            workload.name(),
            o.summary,
            o.out_dir.display()
        );
        worst = worst.max(o.valid.exit_code());
    }
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
    let code = match cli.command {
        None | Some(Command::Node) => node()?,
        Some(Command::Bench(args)) => {
            oncekv::tools::bench::run(&args)?;
            0
        }
        Some(Command::BenchCluster(args)) => {
            tokio_main(oncekv::tools::bench::cluster::run(&args))??;
            0
        }
        Some(Command::Test(args)) => test(args)?,
        Some(Command::Demo { time_limit, seed }) => demo(time_limit, seed)?,
        Some(Command::Check(args)) => check_command(&args),
        Some(Command::Serve(_)) => unreachable!("served above"),
        Some(Command::Cluster(args)) => {
            tokio_main(oncekv::cli::cluster::run(&args))??;
            0
        }
        Some(Command::Client(args)) => tokio_main(oncekv::cli::client::run(args))?,
    };
    std::process::exit(code)
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

#[allow(clippy::print_stdout)] // the CLI's output
fn check_command(args: &CheckArgs) -> i32 {
    let Ok(time_limit) = std::time::Duration::try_from_secs_f64(args.time_limit) else {
        eprintln!("error: --time-limit must be a non-negative number of seconds");
        return EXIT_BAD_INPUT;
    };
    let opts = oncekv::tools::check::CheckOptions { time_limit };
    let started = std::time::Instant::now();
    match oncekv::tools::check::check_file(&args.history, &opts) {
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_BAD_INPUT
        }
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.render());
                println!(
                    "{} in {:.3} s",
                    report.valid().word(),
                    started.elapsed().as_secs_f64()
                );
            }
            report.valid().exit_code()
        }
    }
}

/// mimalloc: the nodes allocate per message (JSON, log entries); it took ~6% off
/// the CPU per write against glibc's allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
