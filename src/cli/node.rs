//! A node process's start-up: `oncekv node` (also the default with no arguments),
//! a Maelstrom node on stdin/stdout, and `oncekv serve`, one node over TCP. Each
//! reads its configuration from the environment, sets up logging (stderr for the
//! Maelstrom node, whose stdout carries protocol lines; `DATA_DIR/node.log` for a
//! TCP node), builds the runtime and runs the transport
//! ([`crate::maelstrom::run`], [`crate::tcp::serve::run`]) until it ends. The node
//! itself is the product's: this file decides nothing about serving, and writes
//! nothing to stdout itself.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::init_logging;
use crate::config::{Config, ConfigError};
use crate::log_file::CappedLog;
use crate::raft::Storage;
use crate::storage::WalLogStore;
use crate::tcp::TcpError;
use crate::tcp::serve::{self, CheckedArgs, ServeArgs, check_args, stop_signal};

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
///
/// A start that fails touches nothing it does not own: the arguments, the data
/// dir's identity and the cluster key are checked before any file is opened,
/// and a data dir this start created is removed again if its storage does not
/// open or its address cannot be bound (before Raft ever ran in it, so no vote
/// is forgotten).
pub fn serve(args: &ServeArgs) -> Result<i32, NodeProcessError> {
    // Reads only: nothing is created or opened before these pass.
    // A damaged data dir found while checking is a failure to start, as it is
    // found later, not bad usage.
    let checked = check_args(args).map_err(|e| match e {
        e @ crate::tcp::TcpError::Storage(_) => NodeProcessError::Tcp(e),
        e => NodeProcessError::Usage(e),
    })?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime.enable_all().build()?;
    let prepared = runtime.block_on(serve::prepare(args, &checked))?;
    let created = create_dir(&args.data_dir)?;
    let before = entries_if_fresh(&args.data_dir);
    let opened = open_log_and_storage(args, &checked, prepared.tcp.node_log_bytes_max).and_then(
        |mut storage| {
            // A dir with a log must hold all the node acknowledged (an empty
            // one was checked before it was touched).
            use openraft::RaftLogReader;
            use openraft::storage::RaftLogStorage;
            let state = runtime.block_on(storage.log.get_log_state());
            let holds = state.ok().and_then(|s| s.last_log_id).map(|l| l.index());
            // Only a leader of this node's term or later knows what it holds:
            // an older one may count entries a later leader rightly cut.
            let vote = runtime.block_on(storage.log.read_vote()).ok().flatten();
            let term = vote.map_or(0, |v| v.leader_id().term);
            if holds.is_some() {
                runtime.block_on(serve::check_not_lost(
                    checked.id,
                    &args.id,
                    &args.data_dir,
                    &checked.members,
                    prepared.tcp.membership_probe_timeout,
                    holds.map(|h| (h, term)),
                ))?;
            }
            // Bound once the storage is open (opening a large dir takes a
            // while): until then a connect is refused, and clients and peers
            // move on at once instead of waiting in the backlog for an answer.
            let listener = runtime
                .block_on(serve::bind(args))
                .inspect_err(|e| tracing::error!("{}: {e}", args.id))?;
            Ok((storage, listener))
        },
    );
    let (storage, listener) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            if let Some(top) = created {
                let _ = std::fs::remove_dir_all(&top);
            } else if let Some(before) = before {
                undo_setup(&args.data_dir, &before);
            }
            return Err(e);
        }
    };
    let stop = stop_signal();
    runtime.block_on(serve::run(args, checked, prepared, storage, listener, stop))?;
    Ok(0)
}

/// Creates `dir` (and missing parents); returns the topmost directory this
/// created, if any, so a failed start can remove exactly what it made.
fn create_dir(dir: &Path) -> Result<Option<PathBuf>, TcpError> {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let top = abs
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .last()
        .map(Path::to_path_buf);
    std::fs::create_dir_all(&abs).map_err(|source| TcpError::File {
        what: "data dir",
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(top)
}

/// Every path in `dir` (relative, subdirectories walked) if it holds no node
/// yet (no marker): what a failed start puts back. None for a node's dir, whose
/// files a failed start leaves alone.
fn entries_if_fresh(dir: &Path) -> Option<BTreeSet<PathBuf>> {
    if dir.join(crate::storage::marker::MARKER_FILE).exists() {
        return None;
    }
    let mut found = BTreeSet::new();
    walk(dir, Path::new(""), &mut |rel, _| {
        found.insert(rel.to_path_buf());
    });
    Some(found)
}

/// Calls `f` with each path under `dir/rel` (relative to `dir`) and whether it
/// is a directory, a directory after what it holds. Symlinks are not followed.
fn walk(dir: &Path, rel: &Path, f: &mut dyn FnMut(&Path, bool)) {
    let Ok(names) = std::fs::read_dir(dir.join(rel)) else {
        return;
    };
    for e in names.flatten() {
        let rel = rel.join(e.file_name());
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            walk(dir, &rel, f);
        }
        f(&rel, is_dir);
    }
}

/// After a failed first start in an existing dir (made by the operator, say):
/// removes every file and directory the start added, at any depth, but
/// `node.log`, which says why it failed, so the dir is fresh again (no marker:
/// the next start is checked as a first start, `--join` or not). What was there
/// before stays. Raft never ran in it, so nothing is forgotten.
fn undo_setup(dir: &Path, before: &BTreeSet<PathBuf>) {
    walk(dir, Path::new(""), &mut |rel, is_dir| {
        if before.contains(rel) || rel == Path::new("node.log") {
            return;
        }
        let path = dir.join(rel);
        let removed = if is_dir {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(err) = removed {
            crate::stderr_line!(
                "could not remove {} after the failed start: {err}",
                path.display()
            );
        }
    });
}

/// Opens the node's log file (and logging into it) and its storage.
fn open_log_and_storage(
    args: &ServeArgs,
    checked: &CheckedArgs,
    log_bytes_max: u64,
) -> Result<Storage<WalLogStore>, NodeProcessError> {
    let log = args.data_dir.join("node.log");
    let file = CappedLog::open(&log, log_bytes_max).map_err(|source| TcpError::File {
        what: "node log",
        path: log.clone(),
        source,
    })?;
    init_logging(Some(file));
    crate::stderr_line!("{}: logging to {}", args.id, log.display());
    let storage = serve::open_storage(&args.data_dir, checked.id, &args.id, args.wal_io)
        .inspect_err(|e| tracing::error!("{}: {e}", args.id))?;
    Ok(storage)
}
