//! The `oncekv` binary: with no arguments, a Maelstrom node on stdin/stdout.
use clap::{Parser, Subcommand};
use oncekv::harness::demo::{DemoPreset, run_demo};
use oncekv::harness::{TestArgs, default_out_dir, seed::fresh_seed};

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
    Bench(oncekv::bench::BenchArgs),
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
}

/// Runs `oncekv test` and prints its summary; the exit status is the verdict's.
#[allow(clippy::print_stdout)] // CLI-only: the human summary goes to stdout.
fn test(args: TestArgs) -> anyhow::Result<i32> {
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    let cfg = args.into_config(seed, out)?;
    let rt = tokio::runtime::Runtime::new()?;
    let outcome = rt.block_on(oncekv::harness::run(cfg))?;
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

fn init_logging() {
    // Logs go to stderr: stdout carries only protocol lines.
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONCEKV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,oncekv=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let code = match cli.command {
        None | Some(Command::Node) => node()?,
        Some(Command::Bench(args)) => {
            oncekv::bench::run(&args)?;
            0
        }
        Some(Command::Test(args)) => test(args)?,
        Some(Command::Demo { time_limit, seed }) => demo(time_limit, seed)?,
    };
    std::process::exit(code)
}
