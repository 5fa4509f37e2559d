//! The `oncekv` binary: the command line (clap) and one dispatch to the front ends
//! in `oncekv::cli` and the tools. With no arguments, a Maelstrom node on
//! stdin/stdout. Nothing else lives here: each command's work, and its output,
//! are the library's.
use std::io::{self, Write};

use clap::{Parser, Subcommand};
use oncekv::cli;
use oncekv::tools::{bench, harness::TestArgs};

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
    Bench(bench::BenchArgs),
    /// Compare a 3-node TCP cluster with a 3-member etcd 3.4 on loopback: write
    /// throughput and latency, failover unavailability (docs/benchmarks.md).
    BenchCluster(bench::cluster::BenchClusterArgs),
    /// Run a Maelstrom-style test against any Maelstrom node binary.
    Test(TestArgs),
    /// Test oncekv itself: exactly-once, then lin-kv, 3 nodes under partitions.
    Demo(cli::test::DemoArgs),
    /// Check a history.jsonl: per-key linearizability, and exactly-once counters
    /// if it has counter keys. Exit 0 valid, 1 invalid, 2 unknown, 3 bad input.
    Check(cli::check::CheckArgs),
    /// Simulate whole clusters deterministically under seeded faults and check
    /// every run (docs/testing.md). Exit 0 every seed passed, 1 one failed.
    Sim(cli::sim::SimArgs),
    /// Run one node over TCP (see docs/cluster.md).
    Serve(oncekv::tcp::serve::ServeArgs),
    /// Run N `serve` processes on loopback until Ctrl-C.
    Cluster(cli::cluster::ClusterArgs),
    /// One operation against a TCP cluster, retried until a definite answer.
    Client(cli::client::ClientArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `oncekv test` with a bad flag: 254, not clap's 2, which means "unknown".
        Err(e) if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("test") => {
            let _ = e.print();
            std::process::exit(cli::test::EXIT_TEST_ARGS);
        }
        // `oncekv client` with a bad flag: its usage status, not clap's 2, which
        // it uses for "no definite answer".
        Err(e) if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("client") => {
            let _ = e.print();
            std::process::exit(cli::client::EXIT_USAGE);
        }
        Err(e) => e.exit(),
    };
    let code = match cli.command {
        // The node processes set up their own logging, and are not handed stdout.
        None | Some(Command::Node) => cli::node::maelstrom()?,
        Some(Command::Serve(args)) => cli::node::serve(&args)?,
        Some(Command::Bench(args)) => printing(|out| {
            bench::run(&args, out)?;
            Ok(0)
        })?,
        Some(Command::BenchCluster(args)) => printing(|out| {
            cli::block_on(bench::cluster::run(&args, out))??;
            Ok(0)
        })?,
        Some(Command::Test(args)) => printing(|out| Ok(cli::test::run(args, out)?))?,
        Some(Command::Demo(args)) => printing(|out| cli::test::demo(&args, out))?,
        // No log subscriber: the simulated nodes' logs would drown the verdict.
        Some(Command::Sim(args)) => {
            let mut out = io::stdout().lock();
            cli::sim::main(&args, &mut out)?
        }
        Some(Command::Check(args)) => printing(|out| Ok(cli::check::run(&args, out)?))?,
        Some(Command::Cluster(args)) => printing(|out| {
            cli::block_on(cli::cluster::run(&args, out))??;
            Ok(0)
        })?,
        Some(Command::Client(args)) => {
            printing(|out| Ok(cli::block_on(cli::client::run(args, out))?))?
        }
    };
    std::process::exit(code)
}

/// Runs a command that prints, with logs on stderr and `out` the locked stdout (the
/// one place such output goes); returns its exit status. A reader of the output
/// that went away (`oncekv ... | head -1`) is a quiet end.
fn printing(command: impl FnOnce(&mut dyn Write) -> anyhow::Result<i32>) -> anyhow::Result<i32> {
    cli::init_logging(None);
    let mut out = io::stdout().lock();
    match command(&mut out) {
        Ok(code) => Ok(code),
        Err(e) if cli::is_broken_pipe(&*e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// mimalloc: the nodes allocate per message (JSON, log entries); it took ~6% off
/// the CPU per write against glibc's allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
