//! The accept loop: `server::run(listener, node, config, shutdown)`, after
//! mini-redis, with three connection budgets ([`Budgets`]):
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

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot};

use super::handler::Handler;
use super::{TcpConfig, TcpError};
use crate::node::Node;

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
        node_requests: Arc::new(Semaphore::new(node.config.requests_in_flight_max)),
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
    /// Client requests in flight on the node, all connections together.
    node_requests: Arc<Semaphore>,
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
                self.node_requests.clone(),
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

/// The connection budgets of one server (see the module docs).
pub struct Budgets {
    /// One permit per client connection.
    clients: Arc<Semaphore>,
    /// One permit per peer connection.
    peers: Arc<Semaphore>,
    /// Connections that have not sent their first line, oldest first.
    unclassified: Mutex<Unclassified>,
    /// The bounds, for the refusals' text.
    client_max: usize,
    peer_max: usize,
    unclassified_max: usize,
}

/// The unclassified connections.
#[derive(Default)]
struct Unclassified {
    /// Number of the next arrival.
    next: u64,
    /// By arrival number: dropping the sender closes that connection.
    open: BTreeMap<u64, oneshot::Sender<()>>,
}

/// A new connection's place among the unclassified. `evicted` resolves when the
/// server closes it to make room; dropping the `Arrival` gives the place back.
pub struct Arrival {
    /// The server's budgets.
    pub budgets: Arc<Budgets>,
    /// Its number.
    id: u64,
    /// Resolves (with an error) when this connection is evicted.
    pub evicted: oneshot::Receiver<()>,
}

impl Drop for Arrival {
    fn drop(&mut self) {
        let mut u = self
            .budgets
            .unclassified
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        u.open.remove(&self.id);
    }
}

/// Which budget a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Class {
    /// A member of the cluster (or the client CLI with the cluster key).
    Peer,
    /// Anyone else.
    Client,
}

impl Budgets {
    /// The budgets of `config`.
    pub fn new(config: &TcpConfig) -> Budgets {
        Budgets {
            clients: Arc::new(Semaphore::new(config.client_connections_max)),
            peers: Arc::new(Semaphore::new(config.peer_connections_max)),
            unclassified: Mutex::default(),
            client_max: config.client_connections_max,
            peer_max: config.peer_connections_max,
            unclassified_max: config.unclassified_connections_max,
        }
    }

    /// Registers a new connection as unclassified, closing the oldest one if
    /// the budget is full.
    pub fn arrive(self: &Arc<Self>) -> Arrival {
        let (tx, rx) = oneshot::channel();
        let mut u = self.unclassified.lock().unwrap_or_else(|p| p.into_inner());
        while u.open.len() >= self.unclassified_max {
            // Dropping its sender wakes the oldest one's handler, which closes.
            if u.open.pop_first().is_none() {
                break;
            }
        }
        let id = u.next;
        u.next += 1;
        u.open.insert(id, tx);
        Arrival {
            budgets: self.clone(),
            id,
            evicted: rx,
        }
    }

    /// A place in the budget of `class`, or the text of the refusal.
    pub fn admit(&self, class: Class) -> Result<OwnedSemaphorePermit, String> {
        let (sem, max, what, var) = match class {
            Class::Client => (
                &self.clients,
                self.client_max,
                "client",
                super::CLIENT_CONNECTIONS_MAX_VAR,
            ),
            Class::Peer => (
                &self.peers,
                self.peer_max,
                "peer",
                super::PEER_CONNECTIONS_MAX_VAR,
            ),
        };
        sem.clone()
            .try_acquire_owned()
            .map_err(|_| format!("too many {what} connections (limit {max}, setting {var})"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_unclassified_budget_evicts_the_oldest() {
        let config = TcpConfig {
            unclassified_connections_max: 2,
            client_connections_max: 1,
            ..TcpConfig::default()
        };
        let b = Arc::new(Budgets::new(&config));
        let mut first = b.arrive();
        let mut second = b.arrive();
        let mut third = b.arrive();
        assert!(
            first
                .evicted
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Closed)
        );
        assert_eq!(
            second.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(
            third.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        drop(second);
        let mut fourth = b.arrive();
        assert_eq!(
            third.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        assert_eq!(
            fourth.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        let held = b.admit(Class::Client).expect("one client fits");
        let refused = b.admit(Class::Client).expect_err("the second does not");
        assert!(refused.contains("limit 1, setting ONCEKV_CLIENT_CONNECTIONS_MAX"));
        assert!(b.admit(Class::Peer).is_ok(), "peers have their own budget");
        drop(held);
        assert!(b.admit(Class::Client).is_ok());
    }
}
