//! The accept loop: `server::run(listener, node, config, shutdown)`, after
//! mini-redis, with three connection budgets ([`Budgets`], in [`super::budgets`]):
//!
//! - a new connection is *unclassified* until its first line, which must come
//!   within [`TcpConfig::first_line_timeout_ms`]; at most
//!   [`TcpConfig::unclassified_connections_max`] wait so, and past that the
//!   oldest is closed to make room (silent sockets cannot keep newcomers out);
//! - a first line that is a peer hello makes it a *peer* connection, anything
//!   else a *client* one, each counted against its own budget; a connection over
//!   its budget gets one error line and is closed.
//!
//! The accept loop itself never waits on a budget, so a full client budget never
//! keeps a peer out, and it never gives up: accept errors (out of file
//! descriptors) are logged, rate-limited, and retried with a capped back-off.
//! Shutdown: `shutdown` resolves, the loop stops accepting, a broadcast tells
//! every handler to stop reading, handlers finish the requests they accepted, and
//! `run` returns once every handler has dropped its completion sender.
//!
//! Owns: the listener, the accept loop, shutdown, the open-files check. May not
//! touch: what a connection says (its [`super::handler`]) or the node.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc};

use super::budgets::Budgets;
use super::handler::{Handler, NodeBudgets};
use super::{TcpConfig, TcpError};
use crate::node::Node;
use crate::node::budget::ByteBudget;
use crate::protocol::framing::LinePool;

/// First pause after an accept error (out of file descriptors, say).
const ACCEPT_BACKOFF_MIN_MS: u64 = 10;
/// Cap of that pause (it doubles per consecutive error): the loop recovers within
/// this long of descriptors coming free.
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;
/// At most one log line per this long about accept errors (with their count).
const ACCEPT_ERROR_LOG_EVERY_MS: u64 = 10_000;
const _: () = assert!(ACCEPT_BACKOFF_MIN_MS > 0 && ACCEPT_BACKOFF_MIN_MS < ACCEPT_BACKOFF_MAX_MS);

/// Serves `node` on `listener` until `shutdown` resolves and accepted requests are answered.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    msg_ids: Arc<AtomicU64>,
    config: TcpConfig,
    shutdown: impl Future,
) {
    let (notify_shutdown, _) = broadcast::channel(1);
    let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel::<()>(1);
    let mut listener = Listener {
        listener,
        budgets: Arc::new(Budgets::new(&config)),
        node_budgets: NodeBudgets {
            requests: Arc::new(Semaphore::new(node.config.requests_in_flight_max)),
            bytes: ByteBudget::for_node(&node.config),
            lines: LinePool::new(node.config.line_buffers_bytes_max),
        },
        node,
        msg_ids,
        config,
        notify_shutdown,
        shutdown_complete_tx,
    };
    tokio::select! {
        () = listener.accept_loop() => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    let Listener {
        notify_shutdown,
        shutdown_complete_tx,
        ..
    } = listener;
    drop(notify_shutdown);
    drop(shutdown_complete_tx);
    let _ = shutdown_complete_rx.recv().await;
}

/// The listener's state.
struct Listener {
    /// The bound socket.
    listener: TcpListener,
    /// The connection budgets.
    budgets: Arc<Budgets>,
    /// What all client connections of the node share.
    node_budgets: NodeBudgets,
    /// The node every connection serves.
    node: Arc<Node>,
    /// The node's message counter, shared with its peer transport.
    msg_ids: Arc<AtomicU64>,
    /// Bounds and timeouts.
    config: TcpConfig,
    /// Dropped to tell handlers to stop reading.
    notify_shutdown: broadcast::Sender<()>,
    /// Cloned into every handler; `run` waits until all clones are gone.
    shutdown_complete_tx: mpsc::Sender<()>,
}

impl Listener {
    async fn accept_loop(&mut self) {
        loop {
            let socket = self.accept().await;
            let _ = socket.set_nodelay(true);
            let arrival = self.budgets.arrive();
            let handler = Handler::new(
                self.node.clone(),
                self.msg_ids.clone(),
                self.config.clone(),
                self.notify_shutdown.subscribe(),
                self.shutdown_complete_tx.clone(),
                self.node_budgets.clone(),
            );
            tokio::spawn(handler.run(socket, arrival));
        }
    }

    /// Accepts, retrying errors for ever: at once after a connection-specific one
    /// (the client gave up), with a doubling, capped pause after any other (out
    /// of file descriptors: some come free when connections close).
    async fn accept(&mut self) -> tokio::net::TcpStream {
        let mut backoff = Duration::from_millis(ACCEPT_BACKOFF_MIN_MS);
        let mut failures = 0u64;
        let mut logged: Option<Instant> = None;
        loop {
            match self.listener.accept().await {
                Ok((socket, _)) => {
                    if failures > 0 {
                        tracing::warn!("accept works again after {failures} failures");
                    }
                    return socket;
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    failures += 1;
                    let log_every = Duration::from_millis(ACCEPT_ERROR_LOG_EVERY_MS);
                    if logged.is_none_or(|t| t.elapsed() >= log_every) {
                        tracing::warn!(
                            "accept failed ({failures} times in a row): {e}; retrying \
                             (pause up to {ACCEPT_BACKOFF_MAX_MS} ms)"
                        );
                        logged = Some(Instant::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(ACCEPT_BACKOFF_MAX_MS));
                }
            }
        }
    }
}

/// Errors that concern one connection only, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// Raises the soft open-files limit to the hard one and checks that the
/// connection budgets, plus [`TcpConfig::fds_reserved`], fit under it; returns the
/// limit. Running out of descriptors would fail a log or snapshot file open,
/// which stops the node, so budgets that do not fit are refused.
pub fn check_fd_limit(config: &TcpConfig) -> Result<u64, TcpError> {
    let limit = raise_fd_limit()?;
    let needed = config.fds_needed();
    if needed > limit {
        return Err(TcpError::Args(format!(
            "the connection budgets need {needed} file descriptors (clients {}, peers {}, \
             unclassified {}, reserved {}) but the open-files limit is {limit}: raise it \
             (ulimit -n) or lower {}",
            config.client_connections_max,
            config.peer_connections_max,
            config.unclassified_connections_max,
            config.fds_reserved,
            super::CLIENT_CONNECTIONS_MAX_VAR,
        )));
    }
    Ok(limit)
}

/// Sets RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit.
#[cfg(unix)]
fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass, nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::useless_conversion)] // rlim_t is u64 on Linux, not everywhere
    Ok(u64::try_from(lim.rlim_cur).unwrap_or(u64::MAX))
}

/// Elsewhere there is no such limit to raise or check.
#[cfg(not(unix))]
fn raise_fd_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}
