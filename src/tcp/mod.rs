//! TCP mode: the same [`Node`](crate::node::Node), message bodies and session rules
//! as Maelstrom mode, over loopback or a real network.
//!
//! Layout (one noun per file, after tokio-rs/mini-redis):
//! - [`server`]: `server::run(listener, node, config, shutdown)`: the accept loop,
//!   graceful shutdown.
//! - [`budgets`]: connection budgets (clients, peers, not yet classified).
//! - [`handler`]: one accepted connection, served by the node's connection driver
//!   ([`crate::node::driver`]) with what is TCP's: first-line and idle timeouts,
//!   classification into a budget, hellos and the cluster key, `status`,
//!   membership requests, which peer RPCs a connection may send.
//! - [`peers`]: [`peers::TcpTransport`], the node's way to reach peers: one connection
//!   per peer address, reconnect with back-off, a deadline on every call.
//! - [`client`]: [`Client`], the retrying exactly-once client (library type).
//! - [`serve`]: `oncekv serve`: one node process.
//!
//! The front ends `oncekv cluster` and `oncekv client` live in [`crate::cli`].
//!
//! `docs/cluster.md` is the user's guide.
//!
//! Owns [`TcpConfig`] (every socket limit and timeout, with `validate()`), TCP
//! mode's errors and node names. May not touch: reading order, tickets, batching or
//! reply order (the node's driver, [`crate::node::driver`]), nor the node's internals.

pub mod budgets;
pub mod client;
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
    /// Most client connections open at once ([`CLIENT_CONNECTIONS_MAX_VAR`]). A
    /// connection is a client's once its first line is anything but a peer hello;
    /// past the budget it gets one error line (code 11, definite) and is closed,
    /// so idle clients can never lock out peers or exhaust file descriptors.
    pub client_connections_max: usize,
    /// Most peer connections open at once ([`PEER_CONNECTIONS_MAX_VAR`]). A
    /// connection is a peer's once its first line is a `peer_hello` with the right
    /// key (or, with no cluster key, a hello or a Raft RPC). Each member keeps one
    /// connection to each other member, and the client CLI with the key counts
    /// here too; 64 covers a few dozen members plus reconnects.
    pub peer_connections_max: usize,
    /// Most connections open at once that have not sent their first line yet
    /// ([`UNCLASSIFIED_CONNECTIONS_MAX_VAR`]). Past it the oldest such connection
    /// is closed to make room, so a flood of silent sockets cannot keep newcomers
    /// (which send their first line at once) out.
    pub unclassified_connections_max: usize,
    /// Deadline for the first line of a new connection
    /// ([`FIRST_LINE_TIMEOUT_MS_VAR`]); a connection silent that long is closed.
    pub first_line_timeout_ms: u64,
    /// A connection with nothing in flight and no line received for this long is
    /// closed ([`IDLE_TIMEOUT_MS_VAR`]): forgotten or half-open connections give
    /// their slot back. A connection with a request in flight is never idle; a
    /// peer's connection that is closed is reopened on its next RPC.
    pub idle_timeout_ms: u64,
    /// File descriptors kept free of connections: log segments, snapshot files,
    /// outgoing peer links, the runtime's own. At start-up the three connection
    /// budgets plus this must fit under the open-files limit (raised to its hard
    /// limit first), or `serve` refuses to start: running out of descriptors
    /// would fail a log write, which stops the node.
    pub fds_reserved: usize,
    /// Bound of `DATA_DIR/node.log` in bytes ([`NODE_LOG_BYTES_MAX_VAR`]); past it
    /// the file becomes `node.log.1` (replacing the previous one), so the node's
    /// logs never take more than twice this from the disk that holds the Raft log.
    pub node_log_bytes_max: u64,
    /// How long the leader waits for a node to be added to answer `status`
    /// (connect and reply): one that answers as another node, or as the leader of
    /// a cluster of its own, is refused; one that does not answer is left to the
    /// catch-up wait. Well below `membership_timeout`.
    pub membership_probe_timeout: Duration,
    /// How long a starting node waits for Raft's metrics to report the
    /// membership loaded from its data dir, to compare it with
    /// `--peers`/`--listen`. A node with none stored (a new one, joining or
    /// forming in its turn) does not wait: Raft's state says so at once.
    pub stored_membership_timeout: Duration,
}

/// Overrides [`TcpConfig::client_connections_max`].
pub const CLIENT_CONNECTIONS_MAX_VAR: &str = "ONCEKV_CLIENT_CONNECTIONS_MAX";
/// Overrides [`TcpConfig::peer_connections_max`].
pub const PEER_CONNECTIONS_MAX_VAR: &str = "ONCEKV_PEER_CONNECTIONS_MAX";
/// Overrides [`TcpConfig::unclassified_connections_max`].
pub const UNCLASSIFIED_CONNECTIONS_MAX_VAR: &str = "ONCEKV_UNCLASSIFIED_CONNECTIONS_MAX";
/// Overrides [`TcpConfig::first_line_timeout_ms`].
pub const FIRST_LINE_TIMEOUT_MS_VAR: &str = "ONCEKV_FIRST_LINE_TIMEOUT_MS";
/// Overrides [`TcpConfig::idle_timeout_ms`].
pub const IDLE_TIMEOUT_MS_VAR: &str = "ONCEKV_IDLE_TIMEOUT_MS";
/// Overrides [`TcpConfig::node_log_bytes_max`].
pub const NODE_LOG_BYTES_MAX_VAR: &str = "ONCEKV_NODE_LOG_BYTES_MAX";

impl TcpConfig {
    /// The defaults with the cluster key and `ONCEKV_*` overrides from the
    /// environment, validated.
    pub fn from_env() -> Result<TcpConfig, crate::config::ConfigError> {
        let mut c = TcpConfig {
            cluster_key: cluster_key_from_env(),
            ..TcpConfig::default()
        };
        use crate::config::env_override;
        env_override(CLIENT_CONNECTIONS_MAX_VAR, &mut c.client_connections_max)?;
        env_override(PEER_CONNECTIONS_MAX_VAR, &mut c.peer_connections_max)?;
        env_override(
            UNCLASSIFIED_CONNECTIONS_MAX_VAR,
            &mut c.unclassified_connections_max,
        )?;
        env_override(FIRST_LINE_TIMEOUT_MS_VAR, &mut c.first_line_timeout_ms)?;
        env_override(IDLE_TIMEOUT_MS_VAR, &mut c.idle_timeout_ms)?;
        env_override(NODE_LOG_BYTES_MAX_VAR, &mut c.node_log_bytes_max)?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the relations between fields.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let fail = |s: &str| Err(crate::config::ConfigError(s.to_string()));
        if self.client_connections_max == 0
            || self.peer_connections_max == 0
            || self.unclassified_connections_max == 0
        {
            return fail("connection budgets must be positive");
        }
        let most = tokio::sync::Semaphore::MAX_PERMITS;
        if self.client_connections_max > most || self.peer_connections_max > most {
            return fail("a connection budget is beyond what a semaphore can count");
        }
        if self.first_line_timeout_ms == 0 || self.idle_timeout_ms < self.first_line_timeout_ms {
            return fail("first_line_timeout_ms must be positive and idle_timeout_ms at least it");
        }
        if self.node_log_bytes_max < NODE_LOG_BYTES_MIN {
            return fail("node_log_bytes_max must be at least 64 KiB (a few hundred log lines)");
        }
        Ok(())
    }

    /// File descriptors the connection budgets and [`TcpConfig::fds_reserved`] need.
    pub fn fds_needed(&self) -> u64 {
        (self.client_connections_max as u64)
            .saturating_add(self.peer_connections_max as u64)
            .saturating_add(self.unclassified_connections_max as u64)
            .saturating_add(self.fds_reserved as u64)
    }
}

/// Least [`TcpConfig::node_log_bytes_max`]: room for a few hundred lines, so a
/// rotation never hides the lines just before a failure.
pub const NODE_LOG_BYTES_MIN: u64 = 64 << 10;

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

/// Longest cluster key accepted, in bytes (a random 128-bit key in hex is 32).
pub const CLUSTER_KEY_BYTES_MAX: usize = 1024;

/// The rules every cluster key meets, wherever it comes from (a file, after its
/// surrounding whitespace is trimmed, or [`CLUSTER_KEY_VAR`] as given): not
/// empty, at most [`CLUSTER_KEY_BYTES_MAX`] bytes, one line without control
/// characters or surrounding whitespace. Says why not.
pub fn check_cluster_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("is empty: it must hold the key".into());
    }
    if key.len() > CLUSTER_KEY_BYTES_MAX {
        return Err(format!(
            "holds more than {CLUSTER_KEY_BYTES_MAX} bytes: a key is one short line"
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("holds control characters or several lines: a key is one line".into());
    }
    if key.trim() != key {
        return Err("has spaces around it: a key is one line without them".into());
    }
    Ok(())
}

/// Reads a cluster key file (`serve --cluster-key-file`, `DATA_DIR/cluster.key`
/// of `oncekv cluster`): the key is the file's text without surrounding
/// whitespace (a trailing newline is fine). Refuses, naming the file, one that
/// cannot be read, is not a regular file, is empty, longer than
/// [`CLUSTER_KEY_BYTES_MAX`], not UTF-8 or holds control characters, and (on
/// Unix) one that group or others may read or write: a secret anyone on the
/// machine can read is no secret (`chmod 600` it).
pub fn read_cluster_key_file(path: &std::path::Path) -> Result<Arc<str>, TcpError> {
    use std::io::Read;
    let refuse = |why: String| {
        Err(TcpError::Args(format!(
            "cluster key file {}: {why}",
            path.display()
        )))
    };
    // Looked at before opening: opening a FIFO would wait for a writer.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return refuse("is not a regular file".into()),
        Ok(_) => {}
        Err(e) => return refuse(format!("cannot be read: {e}")),
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return refuse(format!("cannot be read: {e}")),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return refuse(format!("cannot be read: {e}")),
    };
    if !meta.is_file() {
        return refuse("is not a regular file".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return refuse(format!(
                "group or others may access it (mode {mode:03o}): the key is a secret; \
                 chmod 600 {}",
                path.display()
            ));
        }
    }
    // Leading and trailing whitespace (a newline) is allowed around the key.
    let mut bytes = Vec::new();
    let limit = CLUSTER_KEY_BYTES_MAX as u64 + 64;
    if let Err(e) = file.take(limit + 1).read_to_end(&mut bytes) {
        return refuse(format!("cannot be read: {e}"));
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return refuse("is not UTF-8 text".into());
    };
    let key = text.trim();
    if bytes.len() as u64 > limit {
        return refuse(format!(
            "holds more than {CLUSTER_KEY_BYTES_MAX} bytes: a key is one short line"
        ));
    }
    if let Err(why) = check_cluster_key(key) {
        return refuse(why);
    }
    Ok(Arc::from(key))
}

/// The cluster key a node runs with: from `file` (`--cluster-key-file`) or
/// from [`CLUSTER_KEY_VAR`], or none. Both at once is refused (which one was
/// meant is not clear).
pub fn cluster_key_from(file: Option<&std::path::Path>) -> Result<Option<Arc<str>>, TcpError> {
    match (file, cluster_key_from_env()) {
        (Some(path), Some(_)) => Err(TcpError::Args(format!(
            "both {CLUSTER_KEY_VAR} and --cluster-key-file {} give a cluster key: \
             give one of them",
            path.display()
        ))),
        (Some(path), None) => read_cluster_key_file(path).map(Some),
        (None, Some(key)) => match check_cluster_key(&key) {
            Ok(()) => Ok(Some(key)),
            Err(why) => Err(TcpError::Args(format!("{CLUSTER_KEY_VAR} {why}"))),
        },
        (None, None) => Ok(None),
    }
}

/// The kinds of cluster key problems, each printed on stderr the first time it
/// is seen (and logged every time, rate-limited where outsiders cause it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// This node runs without a key.
    NoKey,
    /// A peer refused this node's hello (a wrong key, or none).
    RefusedByPeer,
    /// A connection to this node presented a wrong key.
    WrongKeyPresented,
    /// A connection to this node sent peer RPCs without a key.
    NoKeyPresented,
}

/// Prints `text` on stderr if it is the first problem of this `kind` in this
/// process: an operator starting `serve` by hand sees it on the terminal, not
/// only in `node.log` (where the caller logs it).
pub fn key_problem_on_stderr(kind: KeyProblem, text: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SEEN: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];
    let i = match kind {
        KeyProblem::NoKey => 0,
        KeyProblem::RefusedByPeer => 1,
        KeyProblem::WrongKeyPresented => 2,
        KeyProblem::NoKeyPresented => 3,
    };
    if !SEEN[i].swap(true, Ordering::Relaxed) {
        crate::stderr_line!("warning: {text}");
    }
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
            requests_per_connection_max: 4_096,
            queue_capacity: 4_096,
            connect_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_millis(500),
            membership_timeout: Duration::from_secs(60),
            cluster_key: None,
            client_connections_max: 2_048,
            peer_connections_max: 64,
            unclassified_connections_max: 1_024,
            first_line_timeout_ms: 5_000,
            idle_timeout_ms: 300_000,
            fds_reserved: 256,
            node_log_bytes_max: 64 << 20,
            membership_probe_timeout: Duration::from_secs(1),
            stored_membership_timeout: Duration::from_millis(500),
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
    /// The listening socket could not be bound (`Address already in use`).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The `--listen` address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file or directory of the node could not be created or opened.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What it is (`data dir`, `node log`).
        what: &'static str,
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
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

/// A node's Raft id: the number its name ends with (`n1` is 1, `db12` is 12). The
/// rule needs no shared state, so a node added later (`n4`) gets the same id on
/// every member, whatever list it was started with. Names are canonical, so one
/// id has one spelling per prefix: lowercase ASCII letters (not starting with `c`,
/// which means a client), then a decimal number without leading zeros (`n03` is
/// refused: it would be node 3 under a second name).
pub fn node_id(name: &str) -> Result<u64, TcpError> {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (prefix, number) = name.split_at(name.len() - digits);
    let bad = |why: &str| {
        Err(TcpError::Args(format!(
            "node name {name:?} {why}: a name is lowercase letters, not starting with c, \
             then a number without leading zeros (n1, n2, db12)"
        )))
    };
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_lowercase()) {
        return bad("does not start with lowercase letters");
    }
    if prefix.starts_with('c') {
        return bad("starts with c");
    }
    if digits == 0 {
        return bad("has no number");
    }
    if number.len() > 1 && number.starts_with('0') {
        return bad("has a leading zero");
    }
    number
        .parse()
        .or_else(|e| bad(&format!("has a number that does not fit ({e})")))
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6) and checks it names a reachable
/// address: a host, a port that is not 0, and not a wildcard (`0.0.0.0`, `[::]`),
/// which a peer cannot connect to.
pub fn split_addr(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("address {addr:?}: port {port:?}: {e}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("address {addr:?} has no host"));
    }
    if port == 0 {
        return Err(format!("address {addr:?} has port 0"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Whether `addr` is a wildcard listen address (`0.0.0.0:P`, `[::]:P`).
pub fn is_wildcard(addr: &str) -> bool {
    split_addr(addr)
        .ok()
        .and_then(|(h, _)| h.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_unspecified())
}

/// The socket addresses `addr` resolves to (DNS for a host name), or why not.
pub fn resolve(addr: &str) -> Result<Vec<std::net::SocketAddr>, String> {
    let (host, port) = split_addr(addr)?;
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .map(|a| a.collect())
        .map_err(|e| format!("address {addr:?} does not resolve: {e}"))
}

/// Parses `n1=127.0.0.1:7001,n2=...` into members by id. Names must be canonical
/// ([`node_id`]) with distinct ids, addresses `HOST:PORT` (not a wildcard, not
/// port 0) and distinct as written (host case-insensitive, `localhost` the same as
/// `127.0.0.1`). Two members at one address would let one process answer for two
/// voters, so a node could elect itself alone; [`check_distinct_addresses`] also
/// compares what the addresses resolve to.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, Peer>, TcpError> {
    let mut members = BTreeMap::new();
    let mut seen: BTreeMap<(String, u16), String> = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, addr) = item
            .split_once('=')
            .ok_or_else(|| TcpError::Args(format!("peer {item:?} is not NAME=HOST:PORT")))?;
        let (name, addr) = (name.trim(), addr.trim());
        let (mut host, port) =
            split_addr(addr).map_err(|e| TcpError::Args(format!("peer {name}: {e}")))?;
        if is_wildcard(addr) {
            return Err(TcpError::Args(format!(
                "peer {name}={addr}: a wildcard address cannot be connected to; \
                 give the address the other nodes reach {name} at"
            )));
        }
        if host == "localhost" {
            host = "127.0.0.1".into();
        }
        if let Some(other) = seen.insert((host, port), name.to_string()) {
            return Err(TcpError::Args(format!(
                "{other} and {name} have the same address {addr}: every member needs its own"
            )));
        }
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

/// Refuses members whose addresses resolve to a common socket address (one
/// process would answer for both). Addresses that do not resolve now are left
/// out (a peer's name may resolve later); they were compared as written.
pub fn check_distinct_addresses(members: &BTreeMap<u64, Peer>) -> Result<(), TcpError> {
    let mut seen: BTreeMap<std::net::SocketAddr, &str> = BTreeMap::new();
    for peer in members.values() {
        let Ok(addrs) = resolve(&peer.addr) else {
            continue;
        };
        for a in addrs {
            if let Some(other) = seen.insert(a, &peer.name)
                && other != peer.name
            {
                return Err(TcpError::Args(format!(
                    "{other} and {} have the same address ({a}): every member needs its own",
                    peer.name
                )));
            }
        }
    }
    Ok(())
}

/// Refuses `--peers` mixing loopback addresses with others: nodes on other
/// machines would reach themselves at the loopback one, thinking it is that
/// member (and could count their own vote twice). Addresses that do not
/// resolve now are left out.
pub fn check_loopback_mix(members: &BTreeMap<u64, Peer>) -> Result<(), TcpError> {
    let mut loopback = None;
    let mut other = None;
    for peer in members.values() {
        let Ok(addrs) = resolve(&peer.addr) else {
            continue;
        };
        if addrs.is_empty() {
            continue;
        }
        if addrs.iter().all(|a| a.ip().is_loopback()) {
            loopback.get_or_insert(peer);
        } else {
            other.get_or_insert(peer);
        }
    }
    match (loopback, other) {
        (Some(l), Some(o)) => Err(TcpError::Args(format!(
            "--peers mixes a loopback address ({l}) with others ({o}): a node on another \
             machine would reach itself at {}; give every member an address the others \
             can reach it at",
            l.addr
        ))),
        _ => Ok(()),
    }
}

/// Checks that `listen` is where `me` is reached according to `--peers`: the
/// same address (as written or resolved), or a wildcard (`0.0.0.0`, `[::]`) on
/// its port. Listening elsewhere (another member's address, say) would let this
/// process answer for that member.
pub fn check_listen(me: &Peer, listen: &str) -> Result<(), TcpError> {
    let refuse = |why: String| {
        Err(TcpError::Args(format!(
            "--listen {listen} is not {}'s address in --peers ({}): {why}",
            me.name, me.addr
        )))
    };
    let (_, own_port) = split_addr(&me.addr).map_err(TcpError::Args)?;
    let listen_port = match listen.rsplit_once(':').map(|(_, p)| p.parse::<u16>()) {
        Some(Ok(p)) => p,
        _ => {
            return Err(TcpError::Args(format!(
                "--listen {listen} is not HOST:PORT"
            )));
        }
    };
    if listen_port != own_port {
        return refuse(format!("port {listen_port}, not {own_port}"));
    }
    if is_wildcard(listen) || listen.eq_ignore_ascii_case(&me.addr) {
        return Ok(());
    }
    let own = resolve(&me.addr).map_err(TcpError::Args)?;
    let listening = resolve(listen).map_err(TcpError::Args)?;
    if listening.iter().any(|a| own.contains(a)) {
        return Ok(());
    }
    refuse(format!("it resolves to {listening:?}, not {own:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_budgets_and_log_bound_validate() {
        let d = TcpConfig::default();
        assert!(d.validate().is_ok());
        assert_eq!(d.fds_needed(), 2_048 + 64 + 1_024 + 256);
        let bad = [
            TcpConfig {
                peer_connections_max: 0,
                ..d.clone()
            },
            TcpConfig {
                idle_timeout_ms: d.first_line_timeout_ms - 1,
                ..d.clone()
            },
            TcpConfig {
                node_log_bytes_max: NODE_LOG_BYTES_MIN - 1,
                ..d.clone()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn ids_come_from_the_name_and_must_be_distinct() {
        assert_eq!(node_id("n1").unwrap(), 1);
        assert_eq!(node_id("node12").unwrap(), 12);
        assert_eq!(node_id("n0").unwrap(), 0);
        assert!(node_id("n").is_err());
        assert!(node_id("7").is_err());
        assert!(node_id("c1").is_err());
        let m = parse_peers("n1=127.0.0.1:7001, n3=127.0.0.1:7003").unwrap();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(m[&3].addr, "127.0.0.1:7003");
        assert!(parse_peers("n1=a:1,x01=b:2").is_err());
        assert!(parse_peers("n1").is_err());
    }

    /// One id, one spelling: `n03` and `N3` are not names of node 3.
    #[test]
    fn names_are_canonical() {
        for bad in [
            "n03",
            "n00",
            "N3",
            "n-3",
            "é3",
            "n3x",
            "n99999999999999999999",
        ] {
            let e = node_id(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(
            node_id("n03")
                .unwrap_err()
                .to_string()
                .contains("leading zero")
        );
        assert!(parse_peers("n1=127.0.0.1:7001,n03=127.0.0.1:7003").is_err());
        assert_eq!(node_id("x3").unwrap(), 3);
    }

    /// Two members at one address let one process answer for both.
    #[test]
    fn peers_need_distinct_reachable_addresses() {
        let dup = |text: &str| parse_peers(text).unwrap_err().to_string();
        let e = dup("n1=127.0.0.1:7001,n2=127.0.0.1:7001,n3=127.0.0.1:7003");
        assert!(e.contains("n1 and n2 have the same address"), "{e}");
        assert!(dup("n1=localhost:7001,n2=127.0.0.1:7001").contains("same address"));
        assert!(dup("n1=LocalHost:7001,n2=localhost:7001").contains("same address"));
        assert!(dup("n1=0.0.0.0:7001,n2=127.0.0.1:7002").contains("wildcard"));
        assert!(dup("n1=[::]:7001,n2=127.0.0.1:7002").contains("wildcard"));
        assert!(dup("n1=127.0.0.1:0,n2=127.0.0.1:7002").contains("port 0"));
        assert!(dup("n1=127.0.0.1,n2=127.0.0.1:7002").contains("HOST:PORT"));
        assert!(dup("n1=:7001").contains("no host"));
        // Different strings, one socket address once resolved.
        let peer = |name: &str, addr: &str| Peer {
            name: name.into(),
            addr: addr.into(),
        };
        let m = BTreeMap::from([
            (1, peer("n1", "localhost:7001")),
            (2, peer("n2", "127.0.0.1:7001")),
        ]);
        let e = check_distinct_addresses(&m).unwrap_err().to_string();
        assert!(e.contains("n1 and n2 have the same address"), "{e}");
        let ok = parse_peers("n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=[::1]:7001").unwrap();
        check_distinct_addresses(&ok).unwrap();
        check_loopback_mix(&ok).unwrap();
        let apart = parse_peers("n1=192.0.2.1:7001,n2=192.0.2.2:7001").unwrap();
        check_loopback_mix(&apart).unwrap();
        let mixed = parse_peers("n1=127.0.0.1:7001,n2=192.0.2.2:7001").unwrap();
        let e = check_loopback_mix(&mixed).unwrap_err().to_string();
        assert!(
            e.contains("mixes a loopback address (n1@127.0.0.1:7001)"),
            "{e}"
        );
    }

    /// `--listen` must be the node's own entry, or a wildcard on its port.
    #[test]
    fn listen_must_be_the_own_address() {
        let me = Peer {
            name: "n1".into(),
            addr: "127.0.0.1:7001".into(),
        };
        for good in [
            "127.0.0.1:7001",
            "0.0.0.0:7001",
            "[::]:7001",
            "localhost:7001",
        ] {
            check_listen(&me, good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["127.0.0.1:7002", "0.0.0.0:7002", "127.0.0.2:7001", "7001"] {
            let e = check_listen(&me, bad).unwrap_err().to_string();
            assert!(e.contains("--listen"), "{bad}: {e}");
        }
    }
}
