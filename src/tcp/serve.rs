//! `oncekv serve`: one node over TCP. The node id comes from its name
//! ([`super::node_id`]); a fresh cluster forms from `--peers` (every member may
//! call openraft's `initialize` with the same list, in turn, the highest id
//! first: see `Node::start_with`; openraft ignores it once a log exists, so a
//! restarted node rejoins with no extra step). A node added later is
//! started with `--join`: it waits, empty, for the leader's `add_node`.
//!
//! Owns the wiring of a node process: data dir, storage, transport, server,
//! shutdown. A start goes in three steps so that a failure touches nothing it
//! does not own ([`crate::cli::node`] runs them): [`check_args`] (arguments,
//! the data dir's identity, the cluster key; reads only), [`prepare`]
//! (settings, the check for a node that lost its data), then, once the caller
//! has created the data dir, opened its log and [`open_storage`], [`bind`] and
//! [`run`]. May not touch: serving (the node's) or what a connection says
//! ([`super::handler`]'s).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;

use super::peers::TcpTransport;
use super::{TcpConfig, TcpError, parse_peers, server};
use crate::config::Config;
use crate::node::Node;
use crate::raft::{Peer, Storage};
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
    /// File holding the cluster key shared by every member (one line, readable
    /// by its owner only: mode 600). Instead of `ONCEKV_CLUSTER_KEY`; giving
    /// both is refused. `oncekv cluster` passes its `DATA_DIR/cluster.key`.
    #[arg(long, value_name = "PATH")]
    pub cluster_key_file: Option<PathBuf>,
}

/// Worker threads for each of `nodes` nodes sharing this machine's cores.
pub fn workers_per_node(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nodes.max(1)).max(1)
}

/// What [`check_args`] found: this node's id and the members.
#[derive(Debug, Clone)]
pub struct CheckedArgs {
    /// This node's Raft id.
    pub id: u64,
    /// Every member from `--peers`, by id.
    pub members: BTreeMap<u64, Peer>,
    /// The cluster key, from `--cluster-key-file` or `ONCEKV_CLUSTER_KEY`.
    pub cluster_key: Option<Arc<str>>,
}

/// Refuses, before anything is created or bound, arguments that would let this
/// process count as more than one voter or as another node: `--peers` with two
/// members at one address or mixing loopback and other addresses, an `--id` that
/// is not a canonical name in `--peers`, a `--listen` other than this node's own
/// `--peers` address (a wildcard on its port is fine), a `--data-dir` inside
/// another node's data dir or an `oncekv cluster` root, or recorded (its
/// `oncekv.meta`) as another node's, and a cluster key file that cannot be used
/// (or one given besides `ONCEKV_CLUSTER_KEY`). Reads files only: nothing is
/// created, not even a log line in the data dir. Each error names the problem;
/// `serve` exits non-zero with it.
pub fn check_args(args: &ServeArgs) -> Result<CheckedArgs, TcpError> {
    let members = parse_peers(&args.peers)?;
    let id = super::node_id(&args.id)?;
    let me = match members.get(&id) {
        Some(p) if p.name == args.id => p,
        Some(p) => {
            return Err(TcpError::Args(format!(
                "--id {} is node {id}, which --peers names {}: use --id {}",
                args.id, p.name, p.name
            )));
        }
        None => {
            return Err(TcpError::Args(format!(
                "--id {} is not in --peers {}",
                args.id, args.peers
            )));
        }
    };
    super::check_distinct_addresses(&members)?;
    super::check_loopback_mix(&members)?;
    super::check_listen(me, &args.listen)?;
    check_data_dir(&args.data_dir, id, &args.id)?;
    let cluster_key = super::cluster_key_from(args.cluster_key_file.as_deref())?;
    Ok(CheckedArgs {
        id,
        members,
        cluster_key,
    })
}

/// The name of the file only `oncekv cluster` writes in its root dir.
pub const CLUSTER_KEY_FILE: &str = "cluster.key";

/// The node data dir that `dir` is inside of (`dir` itself excluded), if any:
/// the nearest ancestor holding a data dir marker.
pub fn enclosing_node_dir(dir: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(dir).ok()?;
    abs.ancestors()
        .skip(1)
        .find(|a| a.join(crate::storage::marker::MARKER_FILE).exists())
        .map(Path::to_path_buf)
}

/// Refuses a node data dir nested in another node's, an `oncekv cluster` root,
/// or a dir whose marker names another node (or is unreadable, or of another
/// format): checked here, before the node's log file in it is opened, so a
/// refused start writes nothing into another node's dir.
fn check_data_dir(dir: &Path, id: u64, name: &str) -> Result<(), TcpError> {
    if let Some(owner) = enclosing_node_dir(dir) {
        return Err(TcpError::Args(format!(
            "--data-dir {} is inside the data dir of another node ({})",
            dir.display(),
            owner.display()
        )));
    }
    if dir.join(CLUSTER_KEY_FILE).exists() {
        return Err(TcpError::Args(format!(
            "--data-dir {} is the root of an `oncekv cluster` (it holds {CLUSTER_KEY_FILE}); \
             a node's dir is a subdirectory of it (n1, n2, ...)",
            dir.display()
        )));
    }
    check_not_in_use(dir)?;
    use crate::storage::{StorageError, marker::Marker};
    let marker = Marker::read(dir).map_err(TcpError::Storage)?;
    let path = dir.join(crate::storage::marker::MARKER_FILE);
    match marker {
        Some(Marker {
            node_id: Some(found),
            ..
        }) if found != id => Err(TcpError::Storage(StorageError::WrongNode {
            path,
            found,
            expected: id,
        })),
        Some(Marker {
            node_name: Some(found),
            ..
        }) if found != name => Err(TcpError::Storage(StorageError::WrongName {
            path,
            found,
            expected: name.to_string(),
        })),
        // No marker: a dir holding anything else is refused here, before its
        // node.log is written, as opening the storage would refuse it.
        None if dir.is_dir() => crate::storage::check_only_ours(dir).map_err(TcpError::Storage),
        _ => Ok(()),
    }
}

/// Refuses a data dir whose log another process holds (a node running on it),
/// before anything is opened for writing: the storage would refuse it later,
/// but only after this start had written to that node's `node.log`. A probe:
/// the lock file is opened read-only and its lock released at once (the
/// storage takes it for good when it opens).
fn check_not_in_use(dir: &Path) -> Result<(), TcpError> {
    let lock_path = dir
        .join(crate::storage::LOG_DIR)
        .join(crate::storage::wal::LOCK_FILE);
    let Ok(lock) = std::fs::File::open(&lock_path) else {
        return Ok(());
    };
    match lock.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => Err(TcpError::Args(format!(
            "--data-dir {}: a node is already running on it ({} is held by another process)",
            dir.display(),
            lock_path.display()
        ))),
        _ => Ok(()),
    }
}

/// The stores a node runs on, opened from its data directory: the durable write-ahead log
/// and snapshot files (`crate::storage`). A damaged or foreign dir is refused with
/// an error naming the file, never silently reset.
pub fn open_storage(
    data_dir: &Path,
    node_id: u64,
    name: &str,
    io: WalIo,
) -> Result<Storage<WalLogStore>, TcpError> {
    let options = WalOptions {
        io,
        ..WalOptions::default()
    };
    crate::storage::open_node_named(data_dir, node_id, name, options).map_err(TcpError::Storage)
}

/// What a node needs before its data dir is touched: its settings, checked.
pub struct Prepared {
    /// The node's settings (`ONCEKV_*`).
    pub config: Config,
    /// The TCP layer's settings, with the cluster key in force.
    pub tcp: TcpConfig,
    /// The open-files limit after raising it.
    pub fd_limit: u64,
}

/// Everything `serve` checks before it creates or writes anything in its data
/// dir: the settings, the open-files limit, and that an empty dir is not a node
/// that lost its data.
pub async fn prepare(args: &ServeArgs, checked: &CheckedArgs) -> Result<Prepared, TcpError> {
    let (config, tcp) = (Config::from_env(), TcpConfig::from_env());
    // Both read first: a misspelled setting is named even when another is bad.
    crate::config::warn_of_unknown_env_vars();
    let config = config?;
    config.configure_reject_log();
    let mut tcp = tcp?;
    tcp.cluster_key = checked.cluster_key.clone();
    let fd_limit = server::check_fd_limit(&tcp)?;
    // Before the first open writes the dir's marker (a refused dir stays fresh).
    let fresh = !args
        .data_dir
        .join(crate::storage::marker::MARKER_FILE)
        .exists();
    // `--join` too: a member's name on an empty dir is the same loss, whether
    // or not the operator says it joins.
    if fresh {
        check_not_lost(
            checked.id,
            &args.id,
            &args.data_dir,
            &checked.members,
            tcp.membership_probe_timeout,
            None,
        )
        .await?;
    }
    Ok(Prepared {
        config,
        tcp,
        fd_limit,
    })
}

/// Binds the listening address; the error names it ("Address already in
/// use"). Called once the storage is open, just before Raft starts: connects
/// are refused, not left waiting, until the node can answer them.
pub async fn bind(args: &ServeArgs) -> Result<TcpListener, TcpError> {
    TcpListener::bind(&args.listen)
        .await
        .map_err(|source| TcpError::Listen {
            addr: args.listen.clone(),
            source,
        })
}

/// One line with the settings a node runs with: who and where it is, its
/// timeouts and the limits that decide its behaviour under load.
fn log_settings(args: &ServeArgs, checked: &CheckedArgs, p: &Prepared, listener: &TcpListener) {
    let c = &p.config;
    let t = &p.tcp;
    let key = match (&checked.cluster_key, &args.cluster_key_file) {
        (None, _) => "none".to_string(),
        (Some(_), Some(file)) => format!("from {}", file.display()),
        (Some(_), None) => format!("from {}", super::CLUSTER_KEY_VAR),
    };
    let listen = listener
        .local_addr()
        .map_or_else(|_| args.listen.clone(), |a| a.to_string());
    tracing::info!(
        "starting {} (id {}): listen {listen}, peers {}, data dir {}, {}, \
         cluster key {key}, wal-io {}, workers {}; election timeout {}-{} ms, \
         heartbeat {} ms, session timeout {} ms, request bytes max {}, \
         requests in flight max {}, connections max {} clients / {} peers / {} \
         unclassified, open-files limit {}, node.log max {} bytes",
        args.id,
        checked.id,
        args.peers,
        args.data_dir.display(),
        if args.join {
            "joining"
        } else {
            "forming from --peers"
        },
        format!("{:?}", args.wal_io).to_lowercase(),
        args.workers
            .map_or_else(|| "one per core".to_string(), |n| n.to_string()),
        c.election_timeout_min_ms,
        c.election_timeout_max_ms,
        c.heartbeat_interval_ms,
        c.session_timeout_ms,
        c.request_bytes_max,
        c.requests_in_flight_max,
        t.client_connections_max,
        t.peer_connections_max,
        t.unclassified_connections_max,
        p.fd_limit,
        t.node_log_bytes_max,
    );
}

/// Runs the node on `storage` (its data dir, opened) until `shutdown` resolves;
/// returns after a graceful stop.
pub async fn run(
    args: &ServeArgs,
    checked: CheckedArgs,
    prepared: Prepared,
    storage: Storage<WalLogStore>,
    listener: TcpListener,
    shutdown: impl std::future::Future,
) -> Result<(), TcpError> {
    log_settings(args, &checked, &prepared, &listener);
    let CheckedArgs { id, members, .. } = checked;
    let Prepared {
        config,
        tcp,
        fd_limit,
    } = prepared;
    if tcp.cluster_key.is_none() {
        let text = format!(
            "{}: no cluster key (--cluster-key-file or {}): any process that reaches this \
             port can send Raft RPCs, and members that have a key refuse this node",
            args.id,
            super::CLUSTER_KEY_VAR
        );
        tracing::warn!("{text}");
        super::key_problem_on_stderr(super::KeyProblem::NoKey, &text);
    }
    let msg_ids = Arc::new(AtomicU64::new(0));
    let transport = Arc::new(
        TcpTransport::new(args.id.clone(), msg_ids.clone(), tcp.clone())
            .with_line_bytes_max(config.peer_line_bytes_max),
    );
    let initialize = (!args.join).then(|| members.clone());
    let node = Node::start_with(
        id,
        members.clone(),
        transport,
        config,
        storage,
        initialize,
        crate::node::WallClock::system(),
    )
    .await?;
    let stored =
        check_stored_membership(&node, &members, &args.listen, tcp.stored_membership_timeout);
    if let Err(e) = stored.await {
        node.shutdown().await;
        return Err(e);
    }
    tracing::info!(
        "node {} (id {id}) serving on {}, pid {}, open-files limit {fd_limit}",
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

/// Refuses to start node `id` on a data dir that holds less of its log than a
/// leader among `members` has had confirmed by it: on an empty dir (`--join` or
/// not, `holds` is `None`) when any entry was confirmed, on a dir whose log
/// ends at index `holds.0` when a later one was, by a leader of the dir's vote
/// term `holds.1` or later (an older leader may count entries a later one
/// rightly cut from this node's log). Either way the node ran on
/// other data (it was lost, or this is an old copy), and starting here it would
/// have forgotten the entries it acknowledged (and, empty, its vote: it could
/// vote twice in one term). A member that does not answer within `timeout` is
/// passed over (on a first start the others may not be up yet); a leader
/// elected since the node died does not know, so this catches the case only
/// while that leader leads.
pub async fn check_not_lost(
    id: u64,
    name: &str,
    data_dir: &Path,
    members: &BTreeMap<u64, Peer>,
    timeout: Duration,
    holds: Option<(u64, u64)>,
) -> Result<(), TcpError> {
    let others: Vec<String> = members
        .iter()
        .filter(|(i, _)| **i != id)
        .map(|(_, p)| p.addr.clone())
        .collect();
    let asks = others.iter().map(|addr| async move {
        let mut opts = super::ClientOptions::new(vec![addr.clone()]);
        opts.connect_timeout = timeout;
        opts.attempt_timeout = timeout;
        super::Client::new(opts).status_of(0).await.ok()
    });
    for status in futures::future::join_all(asks).await.into_iter().flatten() {
        let confirmed = status.replicated.as_ref().and_then(|r| r.get(&id));
        let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        if let (Some(Some(index)), Some((last, term))) = (confirmed, holds) {
            if *index <= last || status.term < term {
                continue;
            }
            return Err(TcpError::Args(format!(
                "the data dir {} holds {name}'s log up to index {last}, but the leader {} \
                 (term {}) has log entries up to index {index} confirmed by {name}: the \
                 dir is older than what {name} acknowledged (restored from a copy?). \
                 Started on it, {name} would have forgotten acknowledged entries and could \
                 help elect a leader without them. Start {name} on its current dir; if that \
                 is lost, remove it (remove-node {name}) and add a new node under a new \
                 name (serve --join, add-node)",
                dir.display(),
                status.name,
                status.term
            )));
        }
        if let Some(Some(index)) = confirmed {
            return Err(TcpError::Args(format!(
                "the data dir {} holds no node, but the leader {} (term {}) has log entries \
                 up to index {index} confirmed by {name}: {name} has run with a data dir \
                 holding its log. If that dir is elsewhere (a mistyped --data-dir, a disk \
                 not mounted), start {name} on it. If it is lost, {name} must not start \
                 empty (it would forget its vote and what it acknowledged): remove it \
                 (remove-node {name}) and add a new node under a new name (serve --join, \
                 add-node)",
                dir.display(),
                status.name,
                status.term
            )));
        }
    }
    Ok(())
}

/// Compares the membership recorded in the node's log (which is what Raft uses)
/// with the command line: refuses a `--listen` that is not where the log says
/// this node is (with `--peers` edited to match, the node could listen at
/// another member's address and count itself twice); warns about `--peers`
/// entries that differ from, or omit, recorded members.
async fn check_stored_membership(
    node: &Node,
    members: &BTreeMap<u64, Peer>,
    listen: &str,
    wait: Duration,
) -> Result<(), TcpError> {
    // Raft's own state (loaded from storage before it runs) says whether a
    // membership is stored: a new node's is not (it forms the cluster in its
    // turn or learns it from the leader once it serves), so there is nothing to
    // check and no reason to wait before serving.
    let stored = node
        .raft
        .with_raft_state(|st| st.membership_state.effective().log_id().is_some())
        .await;
    if !matches!(stored, Ok(true)) {
        return Ok(());
    }
    // The metrics, which `membership_nodes` reads, follow shortly.
    let _ = node
        .raft
        .wait(Some(wait))
        .metrics(
            |m| m.membership_config.log_id().is_some(),
            "the stored membership",
        )
        .await;
    for crate::node::Member {
        id, peer: recorded, ..
    } in node.membership_nodes()
    {
        if id == node.id {
            if !recorded.addr.eq_ignore_ascii_case(&members[&id].addr)
                && super::check_listen(&recorded, listen).is_err()
            {
                return Err(TcpError::Args(format!(
                    "this node's log records it as {recorded}, but --peers gives {} and it \
                     would listen on {listen}: a member's address changes only through \
                     remove-node and add-node",
                    members[&id].addr
                )));
            }
            continue;
        }
        match members.get(&id) {
            None => tracing::warn!(
                "--peers omits {recorded}, a member in this node's log; the log's \
                 membership is used"
            ),
            Some(given) if !given.addr.eq_ignore_ascii_case(&recorded.addr) => {
                tracing::warn!(
                    "--peers gives {given} but this node's log records {recorded}; the log's \
                     membership is used"
                )
            }
            Some(_) => {}
        }
    }
    Ok(())
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
