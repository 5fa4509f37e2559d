//! One accepted connection, served by the node's connection driver
//! ([`crate::node::driver`]): its reader takes lines in arrival order and starts
//! each request with the node (proposals read back to back go to Raft as one
//! batch), its writer is the only thing that writes the socket, holds client
//! replies back per the order rule and numbers every message from the node's one
//! counter.
//!
//! ```text
//! socket -> Lines (timeouts, budget) -> Driver::run --Node, Handler hooks--> Out --> write_loop -> socket
//! ```
//!
//! Owns what is TCP's: [`Lines`] (the first-line and idle timeouts, eviction
//! from the unclassified, shutdown, the connection's class and budget place
//! taken at its first line) and [`Handler`], the driver's [`Hooks`]: whoever
//! connects may send client requests (`read`, `write`, `cas`, `add`,
//! `open_session`, `close_session`), `status`, membership requests (`add_node`,
//! `remove_node`, leader only) and peer RPCs (`raft_*`, `forward`, each refused
//! unless addressed to this node). A connection is a client's, its lines bounded
//! by `request_bytes_max`, until a `peer_hello` naming a node as sender and
//! this node as receiver is accepted; then its lines may be a peer's length.
//! The writer gives up a connection whose peer reads no reply within
//! `write_timeout`. May not touch: reading order, tickets, batching or the
//! sequencer (the driver's), nor the node's internals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Map, Value};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};

use super::TcpConfig;
use super::budgets::{Arrival, Budgets, Class};
use crate::node::budget::ByteBudget;
use crate::node::driver::{
    Driver, Hooks, LineSource, Other, Out, Permits, Sink, To, Written, write_loop,
};
use crate::node::{Member, MembershipError, Node};
use crate::protocol::framing::{Line, LinePool, LineReader};
use crate::protocol::{Body, ErrorCode, Message, ParseError, Reply, Skeleton, parse_line};
use crate::raft::Peer;

/// What all client connections of a node share: their requests in flight
/// ([`crate::config::Config::requests_in_flight_max`]) and those requests' bytes
/// ([`crate::config::Config::requests_in_flight_bytes_max`]), past which readers
/// wait, and the bytes of the lines they are receiving
/// ([`crate::config::Config::line_buffers_bytes_max`]). A peer's connection
/// takes nothing from the line pool: clients cannot crowd out replication.
#[derive(Clone)]
pub struct NodeBudgets {
    /// One permit per request in flight.
    pub requests: Arc<Semaphore>,
    /// Bytes of requests in flight.
    pub bytes: Arc<ByteBudget>,
    /// Bytes of lines being received.
    pub lines: Arc<LinePool>,
}

/// Per-connection state: what the driver asks this transport.
pub struct Handler {
    /// The node served.
    node: Arc<Node>,
    /// The node's message counter.
    msg_ids: Arc<AtomicU64>,
    /// Bounds and timeouts.
    config: TcpConfig,
    /// Closed when the server shuts down: stop reading (taken by [`Lines`]).
    shutdown: Option<broadcast::Receiver<()>>,
    /// Held until this connection is done, so the server can wait for it.
    _shutdown_complete: mpsc::Sender<()>,
    /// What all client connections of the node share.
    node_budgets: NodeBudgets,
    /// Whether this connection may send peer RPCs and membership changes: it
    /// presented the cluster key, or the node has none.
    trusted: bool,
    /// Whether this connection may send membership changes: `trusted`, or a
    /// client presented the cluster key (`client_hello`).
    admin: bool,
    /// Whether a peer node opened this connection (its `peer_hello` named a
    /// member and this node): its lines may be as long as a peer's, not a
    /// client's, and its reader stops taking from the line pool (it shares this).
    peer: Arc<AtomicBool>,
    /// The member whose `peer_hello` was accepted here: when its connection
    /// ends, [`leader_gone_check`] asks whether its process is gone.
    peer_name: Option<String>,
    /// A wrong cluster key was given on this connection: no later hello on it
    /// is even checked, so each guess at the key costs a new connection.
    hello_refused: bool,
}

impl Handler {
    /// A handler for one connection.
    pub fn new(
        node: Arc<Node>,
        msg_ids: Arc<AtomicU64>,
        config: TcpConfig,
        shutdown: broadcast::Receiver<()>,
        shutdown_complete: mpsc::Sender<()>,
        node_budgets: NodeBudgets,
    ) -> Handler {
        Handler {
            node,
            msg_ids,
            node_budgets,
            trusted: config.cluster_key.is_none(),
            admin: config.cluster_key.is_none(),
            config,
            shutdown: Some(shutdown),
            _shutdown_complete: shutdown_complete,
            peer: Arc::default(),
            peer_name: None,
            hello_refused: false,
        }
    }

    /// Serves the connection until the peer closes it, it breaks, shutdown, it
    /// stays silent or idle too long, or its budget is full (see
    /// [`super::budgets`]).
    pub async fn run(mut self, socket: TcpStream, arrival: Arrival) {
        let peer_addr = socket.peer_addr().ok();
        let (r, w) = socket.into_split();
        let (out, out_rx) = mpsc::channel(self.config.queue_capacity);
        let written = Written {
            base: Instant::now(),
            ms: Arc::new(AtomicU64::new(0)),
        };
        let sink = Sink {
            output: w,
            msg_ids: self.msg_ids.clone(),
            calls: None,
            write_timeout: Some(self.config.write_timeout),
            written: Some(written.clone()),
        };
        let writer = tokio::spawn(write_loop(sink, out_rx));
        let per_connection = self.config.requests_per_connection_max;
        let permits = Permits {
            node: self.node_budgets.requests.clone(),
            node_max: self.node.config.requests_in_flight_max,
            bytes: self.node_budgets.bytes.clone(),
            connection: Some((Arc::new(Semaphore::new(per_connection)), per_connection)),
        };
        let me: Arc<str> = self.node.name.as_str().into();
        let mut reader = LineReader::new(BufReader::new(r), self.node.config.request_bytes_max);
        reader.set_pool(Some(self.node_budgets.lines.clone()));
        let mut lines = Lines {
            lines: reader,
            peer: self.peer.clone(),
            peer_addr,
            config: self.config.clone(),
            shutdown: self.shutdown.take(),
            out: out.clone(),
            me,
            in_flight: permits.connection.clone(),
            written,
            last_line: Instant::now(),
            budgets: arrival.budgets.clone(),
            arrival: Some(arrival),
            _slot: None,
        };
        let node = self.node.clone();
        let mut driver = Driver::new(
            Some(node),
            &self.node.name,
            self.node.config.clone(),
            out,
            permits,
        );
        // A broken read was logged by `lines`; the connection closes either way.
        let _ = driver.run(&mut lines, &mut self).await;
        if let Some(name) = self.peer_name.take() {
            leader_gone_check(self.node.clone(), &name, self.config.connect_timeout);
        }
        // Requests in flight hold clones of the queue; the writer ends after their replies.
        drop(lines);
        drop(driver);
        let _ = writer.await;
    }

    /// A hello with the right key (or none needed). A `peer_hello` must name
    /// this node as its receiver, and a node (not a client, not another name for
    /// a member's id) as its sender: a node whose `--peers` points at the wrong
    /// address learns it here instead of counting the wrong node's votes. It
    /// makes the connection a peer's. A `client_hello` (the CLI
    /// presenting the key) allows membership changes only.
    fn hello_accepted(&mut self, kind: &str, src: &str, dest: &str) -> Map<String, Value> {
        let refuse = |text: String| {
            crate::reject!("refused a {kind} from {src}: {text}");
            crate::node::error_body(ErrorCode::MalformedRequest, &text)
        };
        if kind == "client_hello" {
            self.admin = true;
        } else if dest != self.node.name {
            return refuse(format!(
                "this is node {}, not {dest:?}: check --peers on {src}",
                self.node.name
            ));
        } else if let Err(why) = sender_is_a_node(&self.node, src) {
            return refuse(why);
        } else {
            self.trusted = true;
            self.admin = true;
            self.peer.store(true, Ordering::SeqCst);
            self.peer_name = Some(src.to_string());
        }
        let mut b = Map::new();
        b.insert("type".into(), Value::from(format!("{kind}_ok")));
        b
    }
}

/// A connection's lines, with what TCP adds around reading them: the first line
/// must come within `first_line_timeout_ms` (and the connection may be evicted
/// from the unclassified before), and it decides the connection's budget; later
/// the connection closes after `idle_timeout_ms` with nothing in flight and no
/// line read or reply written, on shutdown, or when its writer gave up.
pub struct Lines {
    /// The socket's read half.
    lines: LineReader<BufReader<OwnedReadHalf>>,
    /// Set once the connection is a peer's: its reader leaves the line pool.
    peer: Arc<AtomicBool>,
    /// The peer's address, for the log.
    peer_addr: Option<SocketAddr>,
    /// Bounds and timeouts.
    config: TcpConfig,
    /// Closed when the server shuts down.
    shutdown: Option<broadcast::Receiver<()>>,
    /// The writer's queue: closed when the writer gave up (the peer reads no
    /// replies); carries the refusal of a connection over its budget.
    out: mpsc::Sender<Out>,
    /// This node's name, for that refusal.
    me: Arc<str>,
    /// The connection's in-flight places and their number: a connection with a
    /// request in flight is never idle.
    in_flight: Option<(Arc<Semaphore>, usize)>,
    /// When the writer last wrote.
    written: Written,
    /// When the last line was read.
    last_line: Instant,
    /// The server's budgets.
    budgets: Arc<Budgets>,
    /// While unclassified: its place, which the server may take back.
    arrival: Option<Arrival>,
    /// Once classified: its place in the client or peer budget.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Lines {
    /// The budget a connection whose first line is `line` counts against: a
    /// peer's if it is a hello with the right key (with no cluster key: any
    /// hello, or a Raft RPC from a peer that sends none), else a client's.
    fn classify(&self, line: &str) -> Class {
        let Ok(msg) = parse_line(line) else {
            return Class::Client;
        };
        let Body::Other { kind, raw, .. } = &msg.body else {
            return Class::Client;
        };
        match &self.config.cluster_key {
            Some(key) => {
                let given = raw.get("key").and_then(Value::as_str).unwrap_or("");
                if kind == "peer_hello" && super::keys_match(given, key) {
                    Class::Peer
                } else {
                    Class::Client
                }
            }
            None if kind == "peer_hello" || kind == "forward" || kind.starts_with("raft_") => {
                Class::Peer
            }
            None => Class::Client,
        }
    }

    /// Answers the first line of a connection over its budget with error 11
    /// (definite: the request was not looked at), if it has a `msg_id`.
    async fn refuse(&self, line: &str, text: &str) {
        let (src, msg_id) = match parse_line(line) {
            Ok(msg) => (msg.src, msg.msg_id),
            Err(ParseError::Body { src, msg_id, .. }) => (src, msg_id),
            Err(ParseError::Envelope(_)) => return,
        };
        if let Some(id) = msg_id {
            let body = crate::node::error_body(ErrorCode::TemporarilyUnavailable, text);
            let to = To {
                src: self.me.clone(),
                dest: src,
                in_reply_to: id,
            };
            let _ = self
                .out
                .send(Out::Raw {
                    to,
                    body: body.into(),
                })
                .await;
        }
    }

    /// The first line decides the connection's budget: false if that is full
    /// (the line, if it can be answered, got error 11).
    async fn admit(&mut self, line: &Line) -> bool {
        let class = match line {
            Line::Full(line) => self.classify(line),
            // A peer's first line is its (short) hello: this is a client.
            Line::TooLong(_) | Line::NotUtf8(_) => Class::Client,
        };
        let peer_addr = self.peer_addr;
        match self.budgets.admit(class) {
            Ok(slot) => self._slot = Some(slot),
            Err(text) => {
                crate::reject!("refused a connection from {peer_addr:?}: {text}");
                if let Line::Full(line) = line {
                    self.refuse(line, &text).await;
                }
                return false;
            }
        }
        self.arrival = None;
        true
    }
}

impl LineSource for Lines {
    async fn next_line(
        &mut self,
        extend: impl Fn(&Skeleton) -> Option<usize> + Send,
    ) -> std::io::Result<Option<Line>> {
        if self.lines.has_pool() && self.peer.load(Ordering::SeqCst) {
            self.lines.set_pool(None);
        }
        let peer_addr = self.peer_addr;
        let first_line_timeout = Duration::from_millis(self.config.first_line_timeout_ms);
        let idle_timeout = Duration::from_millis(self.config.idle_timeout_ms);
        // The read stays the same future across timer wake-ups (a dropped read
        // would lose a partial line); it ends with the line.
        let line = {
            let read = self.lines.read_line_with(extend);
            tokio::pin!(read);
            loop {
                let deadline = match self.arrival {
                    Some(_) => self.written.base + first_line_timeout,
                    None => {
                        let ms = self.written.ms.load(Ordering::Relaxed);
                        let written = self.written.base + Duration::from_millis(ms);
                        self.last_line.max(written) + idle_timeout
                    }
                };
                let evicted = async {
                    match self.arrival.as_mut() {
                        Some(a) => drop((&mut a.evicted).await),
                        None => std::future::pending().await,
                    }
                };
                let shutdown = async {
                    match self.shutdown.as_mut() {
                        Some(s) => drop(s.recv().await),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    l = &mut read => break l,
                    () = shutdown => return Ok(None),
                    // The writer gave up (the peer reads no replies): stop reading.
                    () = self.out.closed() => return Ok(None),
                    () = evicted => {
                        crate::reject!(
                            "closing a connection from {peer_addr:?} that sent no line yet: \
                             the oldest of {} such (setting {})",
                            self.config.unclassified_connections_max,
                            super::UNCLASSIFIED_CONNECTIONS_MAX_VAR
                        );
                        return Ok(None);
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        if self.arrival.is_some() {
                            crate::reject!(
                                "closing a connection from {peer_addr:?}: no line in {} ms \
                                 (setting {})",
                                self.config.first_line_timeout_ms,
                                super::FIRST_LINE_TIMEOUT_MS_VAR
                            );
                            return Ok(None);
                        }
                        // (Not a method: `read` holds `self.lines`.)
                        let busy = self
                            .in_flight
                            .as_ref()
                            .is_some_and(|(sem, max)| sem.available_permits() < *max);
                        if busy {
                            // Never idle while a request is in flight.
                            self.last_line = Instant::now();
                        } else if Instant::now() >= deadline {
                            tracing::debug!(
                                "closing a connection from {peer_addr:?} idle for {} ms",
                                self.config.idle_timeout_ms
                            );
                            return Ok(None);
                        }
                    }
                }
            }
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(None),
            Err(e) => {
                crate::reject!("closing connection from {peer_addr:?}: {e}");
                return Ok(None);
            }
        };
        self.last_line = Instant::now();
        if self.arrival.is_some() && !self.admit(&line).await {
            return Ok(None);
        }
        Ok(Some(line))
    }

    fn line_ready(&self) -> bool {
        self.lines.get_ref().buffer().contains(&b'\n')
    }
}

impl Hooks for Handler {
    /// A peer's connection may send a peer's lines.
    fn line_bytes_max(&self, _: &Skeleton) -> Option<usize> {
        (self.peer.load(Ordering::SeqCst)).then_some(self.node.config.peer_line_bytes_max)
    }

    /// Client requests are served whatever name they address; peer RPCs are
    /// checked in [`Hooks::other`].
    fn misaddressed(&self, _: &Driver, _: &Message) -> Option<String> {
        None
    }

    /// This connection is served, not a link of ours: a reply has no caller.
    fn reply(&mut self, src: &str, _: u64, body: Result<Map<String, Value>, String>) {
        match body {
            Ok(_) => crate::reject!("unexpected reply from {src} on a served connection"),
            Err(why) => crate::reject!("dropping a malformed reply from {src}: {why}"),
        }
    }

    /// TCP nodes start from their flags; an init that agrees is accepted.
    async fn init(
        &mut self,
        d: &mut Driver,
        src: String,
        msg_id: u64,
        node_id: String,
        _: Vec<String>,
    ) {
        let reply = if node_id == self.node.name {
            Reply::InitOk
        } else {
            Reply::error(ErrorCode::MalformedRequest, "this node has another name")
        };
        d.answer_now(src, msg_id, reply).await;
    }

    /// `status`, a hello, or a request that needs the cluster key (membership,
    /// peer RPCs): checked here (`Handler::gate`), then served.
    async fn other(&mut self, d: &mut Driver, msg: Other) {
        let Other {
            src,
            dest,
            msg_id,
            kind,
            raw,
            rpc,
            encoded_bytes_max,
        } = msg;
        let Some(permit) = d.permits().other().await else {
            return;
        };
        let node = self.node.clone();
        let body = match kind.as_str() {
            "status" => status_body(&node),
            _ if let Some(answer) = self.gate(&kind, &src, &dest, &raw) => answer,
            "add_node" | "remove_node" => {
                let config = self.config.clone();
                let work = async move { membership(&node, &kind, &raw, &config).await };
                return d.answer_raw_later(src, msg_id, Some(permit), work);
            }
            "forward"
                if let Some(body) =
                    node.refuse_oversized_forward(&raw, rpc.as_deref(), encoded_bytes_max) =>
            {
                body
            }
            k if k.starts_with("raft_") || k == "forward" => {
                let work = async move { node.handle_peer(&kind, &raw, rpc.as_deref()).await };
                return d.answer_raw_later(src, msg_id, Some(permit), work);
            }
            other => {
                // An error found while parsing: in order behind earlier writes.
                let text = format!("unsupported request type {other:?}");
                drop(permit);
                let reply = Reply::error(ErrorCode::NotSupported, text);
                return d.answer_now(src, msg_id, reply).await;
            }
        };
        d.answer_raw(src, msg_id, body).await;
        drop(permit);
    }
}

impl Handler {
    /// The answer to a hello (its key checked once per connection), or the
    /// refusal of a request this connection may not send (a peer RPC or a
    /// membership change without the cluster key, a peer RPC for another
    /// node); `None` to serve the request.
    fn gate(
        &mut self,
        kind: &str,
        src: &str,
        dest: &str,
        raw: &Map<String, Value>,
    ) -> Option<Map<String, Value>> {
        let peer_rpc = kind.starts_with("raft_") || kind == "forward";
        let admin_only = matches!(kind, "add_node" | "remove_node");
        let body = match kind {
            "peer_hello" | "client_hello" => {
                let given = raw.get("key").and_then(Value::as_str).unwrap_or("");
                match &self.config.cluster_key {
                    Some(_) if self.hello_refused => {
                        crate::reject!("refused a peer_hello from {src}: a wrong key came first");
                        crate::node::error_body(
                            ErrorCode::MalformedRequest,
                            "wrong cluster key earlier on this connection: keys are checked \
                             once per connection",
                        )
                    }
                    Some(key) if !super::keys_match(given, key) => {
                        crate::reject!("refused a peer_hello from {src}: wrong cluster key");
                        super::key_problem_on_stderr(
                            super::KeyProblem::WrongKeyPresented,
                            &if given.is_empty() {
                                format!(
                                    "{}: refused a {kind} from {src:?} without a cluster key \
                                     (a member started without one?)",
                                    self.node.name
                                )
                            } else {
                                format!(
                                    "{}: refused a {kind} from {src:?} with a wrong cluster \
                                     key (a member started with another key?)",
                                    self.node.name
                                )
                            },
                        );
                        // Each guess costs a new connection (and a place
                        // among the unclassified first).
                        self.hello_refused = true;
                        crate::node::error_body(ErrorCode::MalformedRequest, "wrong cluster key")
                    }
                    _ => self.hello_accepted(kind, src, dest),
                }
            }
            _ if (peer_rpc && !self.trusted) || (admin_only && !self.admin) => {
                crate::reject!("refused {kind} from {src}: the connection gave no cluster key");
                if peer_rpc {
                    super::key_problem_on_stderr(
                        super::KeyProblem::NoKeyPresented,
                        &format!(
                            "{}: refused {kind} from {src:?}: it presented no cluster key \
                             (a member started without one?)",
                            self.node.name
                        ),
                    );
                }
                crate::node::error_body(
                    ErrorCode::NotSupported,
                    &format!(
                        "{kind} needs the cluster key: send peer_hello {{key}} (a node) or \
                         client_hello {{key}} (add_node, remove_node) with the right key first \
                         on this connection"
                    ),
                )
            }
            _ if peer_rpc && dest != self.node.name => {
                crate::reject!(
                    "refused {kind} from {src} addressed to {dest:?}: this is {}",
                    self.node.name
                );
                crate::node::error_body(
                    ErrorCode::MalformedRequest,
                    &format!(
                        "{kind} is addressed to {dest:?} but this is node {}; nothing was done \
                         (do two members share an address in --peers?)",
                        self.node.name
                    ),
                )
            }
            _ => return None,
        };
        Some(body)
    }
}

/// Whether `name` may open a peer connection: a node's name (not a client's),
/// and, if this node knows a member with its id (in the current membership, or
/// the list it started with), that member's name. A node name this node does not
/// know is accepted with a warning: a node that missed a membership change (it
/// was down when `add_node` ran) must still hear from the member that was added,
/// which may lead by then, or it could never catch up.
/// After the connection of member `name` ended: if it is the leader this node
/// follows, asks whether its process is gone ([`process_gone`]), and if so
/// tells the node ([`Node::leader_process_gone`]).
fn leader_gone_check(node: Arc<Node>, name: &str, timeout: Duration) {
    let Some(leader) = node.leader() else {
        tracing::debug!("connection of {name} closed; no leader known");
        return;
    };
    let Some(member) = node
        .membership_nodes()
        .into_iter()
        .find(|m| m.id == leader && m.peer.name == name && m.id != node.id)
    else {
        tracing::debug!("connection of {name} closed; it is not the leader ({leader})");
        return;
    };
    tokio::spawn(async move {
        match process_gone(&member.peer.addr, timeout).await {
            Ok(()) => node.leader_process_gone(member.id),
            Err(why) => tracing::debug!("leader {}'s connection closed; {why}", member.peer.name),
        }
    });
}

/// How long an accepted probe connection is watched for the reset a dying
/// process's listener gives the connections it never accepted.
const PROBE_SETTLE: Duration = Duration::from_millis(20);

/// Whether no process listens at `addr` any more: a connection refused or reset
/// while connecting, or accepted and then reset or closed unanswered within
/// [`PROBE_SETTLE`]
/// (a killed process closes its sockets one by one, so its listener may
/// accept just after another of its connections closed). A partition drops
/// packets rather than refusing them, and a slow or paused process still
/// accepts and keeps the connection open, so neither counts. Err says why not.
pub async fn process_gone(addr: &str, timeout: Duration) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut conn = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Err(e)) if connect_error_means_gone(&e) => return Ok(()),
        Ok(Err(e)) => return Err(format!("connecting: {e}")),
        Err(_) => return Err("connecting timed out".into()),
        Ok(Ok(conn)) => conn,
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(PROBE_SETTLE, conn.read(&mut byte)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(Ok(_)) => Err("its port accepts and answers".into()),
        Ok(Err(e)) => Err(format!("its port accepts; reading: {e}")),
        Err(_) => Err("its port accepts and keeps the connection open".into()),
    }
}

/// Whether a failed connect says no process listens: refused (nothing bound),
/// or reset while connecting (the listener closed with this connection in its
/// queue, which is a dying process's listener too). Anything else (no route,
/// a timeout, too many open files) says nothing about the peer.
fn connect_error_means_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
    )
}

fn sender_is_a_node(node: &Node, name: &str) -> Result<(), String> {
    let id = super::node_id(name).map_err(|e| format!("not a node: {e}"))?;
    match node.peer(id) {
        Some(p) if p.name == name => Ok(()),
        Some(p) => Err(format!(
            "member {id} of this cluster is {}, not {name:?}: check --id and --peers",
            p.name
        )),
        None => {
            crate::reject!(
                "accepted a peer_hello from {name}, not a member as far as this node knows \
                 (it may not have applied a membership change yet)"
            );
            Ok(())
        }
    }
}

/// `status_ok` with the fields of [`crate::node::NodeStatus`].
fn status_body(node: &Node) -> Map<String, Value> {
    let mut body = match serde_json::to_value(node.status()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    body.insert("type".into(), Value::from("status_ok"));
    body
}

/// `add_node {name, addr, timeout_ms?}` / `remove_node {name}`, on the leader only.
/// `add_node` waits up to `timeout_ms` (capped by `membership_timeout`) for the
/// node to catch up as a learner before making it a voter (see
/// [`Node::add_member`]); a node whose id or address is already a member's is
/// refused (an identical voter is a no-op, so a retry succeeds).
async fn membership(
    node: &Node,
    kind: &str,
    raw: &Map<String, Value>,
    config: &TcpConfig,
) -> Map<String, Value> {
    let err = |(code, text): (ErrorCode, String)| crate::node::error_body(code, &text);
    let malformed = |text: String| err((ErrorCode::MalformedRequest, text));
    let field = |f: &str| raw.get(f).and_then(Value::as_str).map(str::to_string);
    let Some(name) = field("name") else {
        return malformed("missing field name".into());
    };
    let id = match super::node_id(&name) {
        Ok(id) => id,
        Err(e) => return malformed(e.to_string()),
    };
    if node.leader() != Some(node.id) {
        return MembershipError::NotLeader {
            leader: node.leader(),
            what: kind.to_string(),
        }
        .body();
    }
    let result = if kind == "add_node" {
        let Some(addr) = field("addr") else {
            return malformed("missing field addr".into());
        };
        if let Err(e) = super::split_addr(&addr) {
            return malformed(e);
        }
        if super::is_wildcard(&addr) {
            return malformed(format!("address {addr}: a wildcard cannot be connected to"));
        }
        let catch_up = match raw.get("timeout_ms") {
            None => config.membership_timeout,
            Some(v) => match v.as_u64() {
                Some(ms) => Duration::from_millis(ms).min(config.membership_timeout),
                None => return malformed("timeout_ms must be a non-negative integer".into()),
            },
        };
        let peer = Peer { name, addr };
        // Resolving may wait on DNS: off the runtime's threads.
        let (members, candidate) = (node.membership_nodes(), peer.clone());
        let taken = tokio::task::spawn_blocking(move || address_taken(members, id, &candidate));
        if let Ok(Some(text)) = taken.await {
            return malformed(text);
        }
        // A member already is handled by add_member (a no-op, or a refusal).
        let member = node.membership_nodes().iter().any(|m| m.id == id);
        if !member && let Some(text) = foreign_node(&peer, config.membership_probe_timeout).await {
            return malformed(text);
        }
        node.add_member(id, peer, catch_up, config.membership_timeout)
            .await
    } else {
        match tokio::time::timeout(config.membership_timeout, node.remove_member(id)).await {
            Ok(r) => r,
            Err(_) => Err(MembershipError::Failed {
                code: ErrorCode::Timeout,
                text: "membership change not done in time; it may still take effect".into(),
            }),
        }
    };
    match result {
        Ok(note) => {
            let mut body = Map::new();
            body.insert("type".into(), Value::from(format!("{kind}_ok")));
            if let Some(note) = note {
                body.insert("note".into(), Value::from(note));
            }
            body
        }
        Err(e) => e.body(),
    }
}

/// Why the process at `peer.addr` may not join, if it answers `status` and is
/// plainly not an empty node named `peer.name`: another node, or the leader of a
/// cluster of its own (merging it would discard the writes it acknowledged). A
/// node that does not answer is left to the catch-up wait.
async fn foreign_node(peer: &Peer, timeout: Duration) -> Option<String> {
    let mut opts = super::ClientOptions::new(vec![peer.addr.clone()]);
    opts.connect_timeout = timeout;
    opts.attempt_timeout = timeout;
    let status = super::Client::new(opts).status_of(0).await.ok()?;
    if status.name != peer.name {
        return Some(format!(
            "{} is served by {}, not {}; nothing was changed",
            peer.addr, status.name, peer.name
        ));
    }
    (status.role == crate::node::Role::Leader).then(|| {
        format!(
            "{peer} leads a cluster of its own (term {}, voters {:?}, last log index {:?}): \
             adding it would discard what it acknowledged. Start it on an empty data dir \
             with --join; nothing was changed",
            status.term, status.voters, status.last_log_index
        )
    })
}

/// Why `peer` may not join: another member (not id `id`) has its address, as
/// written or resolved.
fn address_taken(members: Vec<Member>, id: u64, peer: &Peer) -> Option<String> {
    let mine = super::resolve(&peer.addr).unwrap_or_default();
    members
        .into_iter()
        .filter(|m| m.id != id)
        .map(|m| m.peer)
        .find(|other| {
            other.addr.eq_ignore_ascii_case(&peer.addr)
                || super::resolve(&other.addr)
                    .unwrap_or_default()
                    .iter()
                    .any(|a| mine.contains(a))
        })
        .map(|other| {
            format!(
                "address {} is already {other}'s: every member needs its own; nothing was changed",
                peer.addr
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const PROBE: Duration = Duration::from_secs(5);

    /// The connect errors a dying leader's port gives count as gone, both of
    /// them; errors of this side or the path do not. (A reset during the
    /// handshake needs a listener closing at that very moment, which no test
    /// can time: the mapping is what is checked.)
    #[test]
    fn refused_or_reset_while_connecting_is_gone_and_nothing_else() {
        for (kind, gone) in [
            (ErrorKind::ConnectionRefused, true),
            (ErrorKind::ConnectionReset, true),
            (ErrorKind::TimedOut, false),
            (ErrorKind::HostUnreachable, false),
            (ErrorKind::NetworkUnreachable, false),
            (ErrorKind::AddrNotAvailable, false),
            (ErrorKind::PermissionDenied, false),
            (ErrorKind::Other, false),
        ] {
            assert_eq!(
                connect_error_means_gone(&Error::from(kind)),
                gone,
                "{kind:?}"
            );
        }
    }

    /// A port nobody listens on is gone.
    #[tokio::test]
    async fn a_closed_port_is_gone() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        assert_eq!(process_gone(&addr, PROBE).await, Ok(()));
    }

    /// Accepted and then reset (what a dying process's listener does to the
    /// connections in its queue) or closed unanswered: gone. Accepted and
    /// answered, or held open: alive.
    #[tokio::test]
    async fn what_an_accepted_probe_sees_decides() {
        #[derive(Clone, Copy, Debug)]
        enum Peer {
            Resets,
            Closes,
            Answers,
            Holds,
        }
        for (peer, gone) in [
            (Peer::Resets, true),
            (Peer::Closes, true),
            (Peer::Answers, false),
            (Peer::Holds, false),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr").to_string();
            let server = tokio::spawn(async move {
                let (mut conn, _) = l.accept().await.expect("accept");
                match peer {
                    Peer::Resets => conn.set_zero_linger().expect("linger"),
                    Peer::Closes => {}
                    Peer::Answers => conn.write_all(b"{}\n").await.expect("write"),
                    Peer::Holds => tokio::time::sleep(PROBE_SETTLE * 10).await,
                }
                drop(conn);
            });
            let r = process_gone(&addr, PROBE).await;
            assert_eq!(r.is_ok(), gone, "{peer:?}: {r:?}");
            server.await.expect("server");
        }
    }
}
