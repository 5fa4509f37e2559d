//! The `oncekv` binary: the command line (clap) and one dispatch to the front ends
//! in `oncekv::cli` and the tools. With no arguments, a Maelstrom node on
//! stdin/stdout. Nothing else lives here: each command's work, and its output,
//! are the library's. Exit statuses follow one scheme ([`cli::exit`]): a flag
//! or argument clap refuses exits 254 (bad usage) for every subcommand.
use std::io::{self, Write};

use clap::{CommandFactory, Parser, Subcommand};
use oncekv::cli::{self, exit};
use oncekv::tools::{bench, harness::TestArgs};

#[derive(Parser)]
#[command(
    name = "oncekv",
    version,
    about = "Raft key-value store with exactly-once sessions",
    after_help = "Exit status: 0 success, 1 a definite failure, 2 no definite answer \
                  (unknown), 3 unreadable input (check), 254 bad usage, 255 no verdict; \
                  each subcommand's --help has its own table."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Maelstrom node on stdin/stdout (the default with no arguments).
    #[command(after_help = exit::NODE)]
    Node,
    /// Measure single-node throughput over stdin against a no-consensus baseline.
    #[command(after_help = exit::BENCH)]
    Bench(bench::BenchArgs),
    /// Compare a 3-node TCP cluster with a 3-member etcd 3.4 on loopback: write
    /// throughput and latency, failover unavailability (docs/benchmarks.md).
    #[command(after_help = exit::BENCH)]
    BenchCluster(bench::cluster::BenchClusterArgs),
    /// Run a Maelstrom-style test against any Maelstrom node binary.
    #[command(after_help = exit::TEST)]
    Test(TestArgs),
    /// Test oncekv itself: exactly-once, then lin-kv, 3 nodes under partitions.
    #[command(after_help = exit::DEMO)]
    Demo(cli::test::DemoArgs),
    /// Check a history.jsonl: per-key linearizability, and exactly-once counters
    /// if it has counter keys.
    #[command(after_help = exit::CHECK)]
    Check(cli::check::CheckArgs),
    /// Simulate whole clusters deterministically under seeded faults and check
    /// every run (docs/testing.md).
    #[command(after_help = exit::SIM)]
    Sim(cli::sim::SimArgs),
    /// Run one node over TCP (see docs/cluster.md).
    #[command(after_help = exit::SERVE)]
    Serve(oncekv::tcp::serve::ServeArgs),
    /// Run N `serve` processes on loopback until Ctrl-C.
    #[command(after_help = exit::CLUSTER)]
    Cluster(cli::cluster::ClusterArgs),
    /// Operations against a TCP cluster: read, write, cas, add (retried until a
    /// definite answer), status, members, health, sessions, an interactive shell.
    #[command(after_help = exit::CLIENT)]
    Client(cli::client::ClientArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = exit::COMPLETIONS)]
    Completions(cli::completions::CompletionsArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A refused flag or argument: bad usage, whatever the subcommand (clap's
        // own 2 means "unknown" or "no definite answer" here).
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(exit::USAGE);
        }
        // --help, --version.
        Err(e) => e.exit(),
    };
    let code = match cli.command {
        // The node processes set up their own logging, and are not handed stdout.
        None | Some(Command::Node) => cli::node::maelstrom().unwrap_or_else(failed),
        Some(Command::Serve(args)) => cli::node::serve(&args).unwrap_or_else(|e| {
            let code = e.exit_code();
            failed(e);
            code
        }),
        Some(Command::Bench(args)) => printing(exit::FAILED, |out| {
            bench::run(&args, out)?;
            Ok(exit::OK)
        }),
        Some(Command::BenchCluster(args)) => printing(exit::FAILED, |out| {
            cli::block_on(bench::cluster::run(&args, out))??;
            Ok(exit::OK)
        }),
        Some(Command::Test(args)) => {
            printing(exit::NO_VERDICT, |out| Ok(cli::test::run(args, out)?))
        }
        Some(Command::Demo(args)) => printing(exit::NO_VERDICT, |out| cli::test::demo(&args, out)),
        // No log subscriber: the simulated nodes' logs would drown the verdict.
        Some(Command::Sim(args)) => {
            let mut out = io::stdout().lock();
            match cli::sim::main(&args, &mut out) {
                Ok(code) => code,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => exit::NO_VERDICT,
                Err(e) => failed(e),
            }
        }
        Some(Command::Check(args)) => {
            printing(exit::NO_VERDICT, |out| Ok(cli::check::run(&args, out)?))
        }
        Some(Command::Cluster(args)) => match cli::cluster::check_args(&args) {
            Err(e) => {
                oncekv::stderr_line!("Error: {e}");
                exit::USAGE
            }
            Ok(()) => printing(exit::FAILED, |out| {
                cli::block_on(cli::cluster::run(&args, out))??;
                Ok(exit::OK)
            }),
        },
        Some(Command::Client(args)) => printing(exit::UNKNOWN, |out| {
            Ok(cli::block_on(cli::client::run(args, out))?)
        }),
        Some(Command::Completions(args)) => printing(exit::FAILED, |out| {
            cli::completions::run(&args, Cli::command(), out)?;
            Ok(exit::OK)
        }),
    };
    std::process::exit(code)
}

/// Reports a command's error as `main` returning it would (`Error: ` and the
/// chain of causes), and returns the status of a failure.
fn failed(e: impl Into<anyhow::Error>) -> i32 {
    oncekv::stderr_line!("Error: {:?}", e.into());
    exit::FAILED
}

/// Runs a command that prints, with logs on stderr and `out` the locked stdout (the
/// one place such output goes); returns its exit status, or `on_error`'s when it
/// fails (the error is printed). A reader of the output that went away
/// (`oncekv ... | head -1`) is a quiet end: the command's own status when it
/// returned one, else 0 for a command that is no verdict (`cluster`, `bench`)
/// and 255 (no verdict) for one that is.
fn printing(on_error: i32, command: impl FnOnce(&mut dyn Write) -> anyhow::Result<i32>) -> i32 {
    cli::init_logging(None);
    let mut out = io::stdout().lock();
    match command(&mut out) {
        Ok(code) => code,
        Err(e) if cli::is_broken_pipe(&*e) && on_error == exit::NO_VERDICT => exit::NO_VERDICT,
        Err(e) if cli::is_broken_pipe(&*e) => exit::OK,
        Err(e) => {
            oncekv::stderr_line!("Error: {e:?}");
            on_error
        }
    }
}

/// mimalloc: the nodes allocate per message (JSON, log entries); it took ~6% off
/// the CPU per write against glibc's allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
