//! A node process's start-up: `oncekv node` (also the default with no arguments),
//! a Maelstrom node on stdin/stdout, and `oncekv serve`, one node over TCP. Each
//! reads its configuration from the environment, sets up logging (stderr for the
//! Maelstrom node, whose stdout carries protocol lines; `DATA_DIR/node.log` for a
//! TCP node), builds the runtime and runs the transport
//! ([`crate::maelstrom::run`], [`crate::tcp::serve::run`]) until it ends. The node
//! itself is the product's: this file decides nothing about serving, and writes
//! nothing to stdout itself.

use std::io;

use super::init_logging;
use crate::config::{Config, ConfigError};
use crate::log_file::CappedLog;
use crate::tcp::serve::{ServeArgs, check_args, stop_signal};
use crate::tcp::{TcpConfig, TcpError};

/// Why a node process did not start, or stopped with an error. Each variant shows
/// as its cause, unchanged.
#[derive(Debug, thiserror::Error)]
pub enum NodeProcessError {
    /// A bad `ONCEKV_*` setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The runtime or the Maelstrom node's stdin/stdout failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The TCP node's arguments, files or run failed.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// `serve`'s flags were refused before anything was created.
    #[error(transparent)]
    Usage(TcpError),
}

impl NodeProcessError {
    /// The process's exit status ([`super::exit::SERVE`]): bad usage, or a failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            NodeProcessError::Usage(_) => super::exit::USAGE,
            _ => super::exit::FAILED,
        }
    }
}

/// `oncekv node`: the Maelstrom protocol on stdin/stdout until stdin closes.
/// Logs go to stderr. Returns the exit status.
pub fn maelstrom() -> Result<i32, NodeProcessError> {
    init_logging(None);
    let config = Config::from_env()?;
    config.configure_reject_log();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // It writes its protocol lines to stdout itself (tokio's, from other
    // threads), so nothing here holds stdout's lock.
    runtime.block_on(crate::maelstrom::run(
        tokio::io::stdin(),
        tokio::io::stdout(),
        config,
    ))?;
    Ok(0)
}

/// `oncekv serve`: one TCP node, logging to DATA_DIR/node.log (size-capped,
/// `TcpConfig::node_log_bytes_max`), until Ctrl-C/SIGTERM. Returns the exit status.
pub fn serve(args: &ServeArgs) -> Result<i32, NodeProcessError> {
    // Before the data dir or its log file is created.
    check_args(args).map_err(NodeProcessError::Usage)?;
    let tcp = TcpConfig::from_env()?;
    std::fs::create_dir_all(&args.data_dir)?;
    let log = args.data_dir.join("node.log");
    let file = CappedLog::open(&log, tcp.node_log_bytes_max)?;
    init_logging(Some(file));
    eprintln!("{}: logging to {}", args.id, log.display());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(crate::tcp::serve::run(args, stop_signal()))?;
    Ok(0)
}
