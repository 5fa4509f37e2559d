//! The `oncekv` binary: with no arguments, a Maelstrom node on stdin/stdout.
use std::process::ExitCode;

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
    /// Run a Maelstrom node on stdin/stdout (the default with no arguments).
    Node,
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

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        None | Some(Command::Node) => {
            let config = oncekv::config::Config::from_env()?;
            runtime.block_on(oncekv::maelstrom::run(
                tokio::io::stdin(),
                tokio::io::stdout(),
                config,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
