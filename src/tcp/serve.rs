//! `oncekv serve`: one node over TCP. The node id comes from its name
//! ([`super::node_id`]); a fresh cluster forms from `--peers` (every member calls
//! openraft's `initialize` with the same list; openraft ignores it once a log
//! exists, so a restarted node rejoins with no extra step). A node added later is
//! started with `--join`: it waits, empty, for the leader's `add_node`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::net::TcpListener;

use super::peers::TcpTransport;
use super::{TcpConfig, TcpError, parse_peers, server};
use crate::config::Config;
use crate::node::{Node, Storage};
use crate::storage::{WalIo, WalLogStore, WalOptions};

/// Arguments of `oncekv serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// This node's name, one of `--peers` (`n1`); its Raft id is the number in it.
    #[arg(long)]
    pub id: String,
    /// Address to listen on (`127.0.0.1:7001`).
    #[arg(long)]
    pub listen: String,
    /// Every member as NAME=HOST:PORT, comma-separated (this node included).
    #[arg(long)]
    pub peers: String,
    /// Directory for this node's files (created if missing): the Raft log, snapshots
    /// and `node.log`; a restarted node rejoins from it.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Do not form a cluster from `--peers`: wait to be added by `add-node`.
    #[arg(long)]
    pub join: bool,
    /// Runtime worker threads (default: one per core). Nodes sharing one machine
    /// do better with the cores divided among them (`oncekv cluster` does that):
    /// fewer threads to wake per message (docs/benchmarks.md).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How the log reaches the disk: `direct` (O_DIRECT|O_DSYNC block writes, the
    /// default; buffered where the filesystem refuses O_DIRECT) or `buffered`
    /// (pwrite + fdatasync). Both are durable (docs/storage.md).
    #[arg(long, value_enum, default_value_t = WalIo::Direct)]
    pub wal_io: WalIo,
}

/// Worker threads for each of `nodes` nodes sharing this machine's cores.
pub fn workers_per_node(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nodes.max(1)).max(1)
}

/// The stores a node runs on, opened from its data directory: the durable write-ahead log
/// and snapshot files (`crate::storage`). A damaged or foreign dir is refused with
/// an error naming the file, never silently reset.
pub fn open_storage(
    data_dir: &Path,
    node_id: u64,
    io: WalIo,
) -> Result<Storage<WalLogStore>, TcpError> {
    let options = WalOptions {
        io,
        ..WalOptions::default()
    };
    crate::storage::open_node(data_dir, node_id, options).map_err(TcpError::Storage)
}

/// Runs the node until `shutdown` resolves; returns after a graceful stop.
pub async fn run(args: &ServeArgs, shutdown: impl std::future::Future) -> Result<(), TcpError> {
    let members = parse_peers(&args.peers)?;
    let id = super::node_id(&args.id)?;
    match members.get(&id) {
        Some(p) if p.name == args.id => {}
        _ => {
            return Err(TcpError::Args(format!(
                "--id {} is not in --peers {}",
                args.id, args.peers
            )));
        }
    }
    let config = Config::from_env()?;
    let tcp = TcpConfig {
        cluster_key: super::cluster_key_from_env(),
        ..TcpConfig::default()
    };
    if tcp.cluster_key.is_none() {
        tracing::warn!(
            "no cluster key ({}): any process that reaches this port can send Raft RPCs",
            super::CLUSTER_KEY_VAR
        );
    }
    let storage = open_storage(&args.data_dir, id, args.wal_io)?;
    // Bind before starting Raft, so peers' first connects wait in the backlog.
    let listener = TcpListener::bind(&args.listen).await?;
    let msg_ids = Arc::new(AtomicU64::new(0));
    let transport = Arc::new(
        TcpTransport::new(args.id.clone(), msg_ids.clone(), tcp.clone())
            .with_line_bytes_max(config.peer_line_bytes_max),
    );
    let initialize = (!args.join).then(|| members.clone());
    let node = Node::start_with(id, members, transport, config, storage, initialize).await?;
    tracing::info!(
        "node {} (id {id}) serving on {}, pid {}",
        args.id,
        listener.local_addr()?,
        std::process::id()
    );
    // Stop serving on the signal, or when Raft fails (a storage error): a node
    // whose Raft has stopped must not linger answering `status`.
    let (fatal_tx, mut fatal_rx) = tokio::sync::oneshot::channel();
    let watched = node.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            why = watched.fatal() => {
                tracing::error!("fatal: {why}; stopping the node");
                let _ = fatal_tx.send(why);
            }
        }
    };
    server::run(listener, node.clone(), msg_ids, tcp, stop).await;
    node.shutdown().await;
    match fatal_rx.try_recv() {
        Ok(why) => Err(TcpError::Fatal(why)),
        Err(_) => Ok(()),
    }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
