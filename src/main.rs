//! The `oncekv` binary: with no arguments, a Maelstrom node on stdin/stdout.
use clap::{Parser, Subcommand};

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
    /// Check a history.jsonl: per-key linearizability, and exactly-once counters
    /// if it has counter keys. Exit 0 valid, 1 invalid, 2 unknown, 3 bad input.
    Check(CheckArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => Ok(()),
        Some(Command::Check(args)) => std::process::exit(check_command(&args)),
    }
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
    let opts = oncekv::check::CheckOptions { time_limit };
    let started = std::time::Instant::now();
    match oncekv::check::check_file(&args.history, &opts) {
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
