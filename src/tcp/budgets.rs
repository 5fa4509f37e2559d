//! The connection budgets of one server: a new connection is *unclassified*
//! until its first line (at most [`TcpConfig::unclassified_connections_max`]
//! such; past that the oldest is closed to make room), then it counts against
//! the *peer* budget (a peer hello with the right key) or the *client* budget
//! (anything else). Owns: the three budgets and a connection's place in them.
//! May not touch: sockets, lines, the node (the accept loop and the connection
//! handler ask it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::TcpConfig;

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
