//! TCP mode: the same [`Node`](crate::node::Node), message bodies and session rules
//! as Maelstrom mode, over loopback or a real network.
//!
//! Layout (one noun per file, after tokio-rs/mini-redis):
//! - [`connection`]: framing: newline-delimited JSON envelopes with a maximum line length.
//! - [`server`]: `server::run(listener, node, config, shutdown)`: the accept loop,
//!   bounded connections (a semaphore permit taken before `accept`), graceful shutdown.
//! - [`handler`]: one accepted connection: client requests, peer RPCs, `status`,
//!   membership requests; replies through a bounded queue to the connection's writer.
//! - [`peers`]: [`peers::TcpTransport`], the node's way to reach peers: one connection
//!   per peer address, reconnect with back-off, a deadline on every call.
//! - [`client`]: [`Client`], the retrying exactly-once client (library type).
//! - [`serve`]: `oncekv serve`: one node process.
//! - [`cluster`]: `oncekv cluster`: N `serve` processes on loopback.
//! - [`cli`]: `oncekv client`: the command-line client.
//!
//! `docs/cluster.md` is the user's guide.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod connection;
pub mod handler;
pub mod peers;
pub mod serve;
pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use client::{Client, ClientError, ClientOptions};

use crate::raft::Peer;

/// Bounds and timeouts of the TCP layer (the node's own live in [`crate::config::Config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TcpConfig {
    /// Most connections a node serves at once; `accept` waits past it (peers and
    /// clients alike), so a flood of clients cannot exhaust file descriptors.
    pub connections_max: usize,
    /// Requests one connection may have in flight; its reader stops reading past it
    /// (back-pressure onto the sender's socket).
    pub requests_per_connection_max: usize,
    /// Capacity of each connection's outgoing queue and of each peer link's queue.
    pub queue_capacity: usize,
    /// Deadline of one TCP connect to a peer.
    pub connect_timeout: Duration,
    /// Deadline of writing one line to a peer; past it the connection is dropped.
    pub write_timeout: Duration,
    /// First delay before reconnecting to a peer that refused; doubles per failure.
    pub reconnect_backoff_min: Duration,
    /// Cap of that delay.
    pub reconnect_backoff_max: Duration,
    /// How long a membership change may take before the node answers error 0.
    pub membership_timeout: Duration,
    /// The shared secret of the cluster ([`CLUSTER_KEY_VAR`]). When set, a
    /// connection must present it (`peer_hello` from a node, `client_hello`
    /// from a client) before its peer RPCs (`peer_hello` only) and membership
    /// changes are served, and the node presents it to its peers. Line limits
    /// are the node's ([`crate::config::Config::request_bytes_max`] for a
    /// client's connection, `peer_line_bytes_max` once a `peer_hello` is accepted).
    /// Client requests and `status` need no key.
    pub cluster_key: Option<Arc<str>>,
}

/// The environment variable holding the cluster key (kept out of the command
/// line, which other users of the machine can read).
pub const CLUSTER_KEY_VAR: &str = "ONCEKV_CLUSTER_KEY";

/// The cluster key from [`CLUSTER_KEY_VAR`], if set and not empty.
pub fn cluster_key_from_env() -> Option<Arc<str>> {
    std::env::var(CLUSTER_KEY_VAR)
        .ok()
        .filter(|k| !k.is_empty())
        .map(Arc::from)
}

/// Compares keys in time independent of where they differ.
pub fn keys_match(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The first line of every connection a node opens to a peer: `peer_hello
/// {key}` from `src` (this node) to `dest` (the member it means to reach), with
/// the cluster key if there is one. The receiver refuses it unless it is `dest`
/// and `src` is a member, so a wrong address in `--peers` is found at once.
pub fn hello_line(src: &str, dest: &str, key: Option<&str>, msg_id: u64) -> String {
    serde_json::json!({
        "src": src,
        "dest": dest,
        "body": {"type": "peer_hello", "key": key.unwrap_or(""), "msg_id": msg_id}
    })
    .to_string()
}

/// The line a client sends first to present the cluster key (`client_hello
/// {key}`): it allows `add_node` and `remove_node` on that connection.
pub fn client_hello_line(src: &str, key: &str, msg_id: u64) -> String {
    serde_json::json!({
        "src": src,
        "dest": "",
        "body": {"type": "client_hello", "key": key, "msg_id": msg_id}
    })
    .to_string()
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            connections_max: 1_024,
            requests_per_connection_max: 4_096,
            queue_capacity: 4_096,
            connect_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_millis(500),
            membership_timeout: Duration::from_secs(60),
            cluster_key: None,
        }
    }
}

/// Why the TCP layer could not start or parse its arguments.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// A bad `--peers`, `--id` or node name.
    #[error("{0}")]
    Args(String),
    /// A socket or file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The node's configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The node did not start.
    #[error(transparent)]
    Start(#[from] crate::node::StartError),
    /// The data dir could not be opened (damaged, foreign, or unreadable).
    #[error(transparent)]
    Storage(crate::storage::StorageError),
    /// Raft stopped on its own while serving (a storage error such as a full disk).
    #[error("{0}")]
    Fatal(String),
}

/// A node's Raft id: the number its name ends with (`n1` is 1, `n12` is 12). The
/// rule needs no shared state, so a node added later (`n4`) gets the same id on
/// every member, whatever list it was started with.
pub fn node_id(name: &str) -> Result<u64, TcpError> {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (prefix, number) = name.split_at(name.len() - digits);
    if digits == 0 || prefix.is_empty() || prefix.starts_with('c') {
        return Err(TcpError::Args(format!(
            "node name {name:?} must be letters then a number (n1, n2, ...), not starting with c"
        )));
    }
    number
        .parse()
        .map_err(|e| TcpError::Args(format!("node name {name:?}: {e}")))
}

/// Parses `n1=127.0.0.1:7001,n2=...` into members by id; ids must be distinct.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, Peer>, TcpError> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, addr) = item
            .split_once('=')
            .ok_or_else(|| TcpError::Args(format!("peer {item:?} is not NAME=HOST:PORT")))?;
        let peer = Peer {
            name: name.to_string(),
            addr: addr.to_string(),
        };
        if let Some(old) = members.insert(node_id(name)?, peer) {
            return Err(TcpError::Args(format!(
                "{name} and {} have the same id",
                old.name
            )));
        }
    }
    if members.is_empty() {
        return Err(TcpError::Args("--peers names no node".into()));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_name_and_must_be_distinct() {
        assert_eq!(node_id("n1").unwrap(), 1);
        assert_eq!(node_id("node12").unwrap(), 12);
        assert!(node_id("n").is_err());
        assert!(node_id("7").is_err());
        assert!(node_id("c1").is_err());
        let m = parse_peers("n1=127.0.0.1:7001, n3=127.0.0.1:7003").unwrap();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(m[&3].addr, "127.0.0.1:7003");
        assert!(parse_peers("n1=a:1,x01=b:2").is_err());
        assert!(parse_peers("n1").is_err());
    }
}
