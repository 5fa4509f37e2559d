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
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => Ok(()),
    }
}
