//! One accepted connection. Its *reader* (this task) parses lines in arrival order
//! and starts each request with [`Node::start_request`], so writes enter the log in
//! the order this connection sent them; the work that waits (the log, the leader)
//! runs in spawned tasks. Its *writer* task is the only thing that writes the
//! socket: it holds client replies back per protocol.md section 4b (the same
//! [`Sequencer`] as Maelstrom mode, per connection) and numbers every message from
//! the node's one counter.
//!
//! ```text
//! socket -> reader --start_request/spawn--> Node --Out (bounded)--> writer -> socket
//! ```
//!
//! Whoever connects may send client requests (`read`, `write`, `cas`, `add`,
//! `open_session`, `close_session`), `status`, membership requests (`add_node`,
//! `remove_node`, leader only) and peer RPCs (`raft_*`, `forward`, each refused
//! unless addressed to this node). A connection is a client's, its lines bounded
//! by `request_bytes_max`, until a `peer_hello` naming a node as sender and
//! this node as receiver is accepted; then its lines may be a peer's length.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};

use super::TcpConfig;
use super::connection::{Line, LineReader, encode_raw, write_line};
use super::server::{Arrival, Class};
use crate::maelstrom::sequencer::Sequencer;
use crate::node::{Forwarded, Node, Started, check_entry_bytes};
use crate::protocol::{Body, ErrorCode, ParseError, Reply, ReplyBody, Request, encode, parse_line};
use crate::raft::Peer;

/// What the writer is asked to do.
enum Out {
    /// A client request arrived (its ticket), and whether it waits on the log.
    Accept { ticket: u64, log_waiting: bool },
    /// The reply to a ticketed client request.
    Reply {
        ticket: u64,
        dest: String,
        in_reply_to: u64,
        reply: Reply,
    },
    /// An unsequenced reply (peer RPCs, status, membership).
    Raw {
        dest: String,
        in_reply_to: u64,
        body: Map<String, Value>,
    },
}

/// A body of another type than a client request: its `type`, fields, `rpc`
/// kept as text, and [`crate::protocol::Message::encoded_bytes_max`].
type OtherBody = (
    String,
    Map<String, Value>,
    Option<Box<serde_json::value::RawValue>>,
    usize,
);

/// Per-connection state.
pub struct Handler {
    /// The node served.
    node: Arc<Node>,
    /// The node's message counter.
    msg_ids: Arc<AtomicU64>,
    /// Bounds and timeouts.
    config: TcpConfig,
    /// Closed when the server shuts down: stop reading.
    shutdown: broadcast::Receiver<()>,
    /// Held until this connection is done, so the server can wait for it.
    _shutdown_complete: mpsc::Sender<()>,
    /// Requests of this connection in flight; the reader waits past the bound.
    in_flight: Arc<Semaphore>,
    /// Client requests in flight on the whole node
    /// ([`crate::config::Config::requests_in_flight_max`]), shared by every
    /// connection; the reader waits past it.
    node_requests: Arc<Semaphore>,
    /// Next ticket for the reply sequencer.
    next_ticket: u64,
    /// Whether this connection may send peer RPCs and membership changes: it
    /// presented the cluster key, or the node has none.
    trusted: bool,
    /// Whether this connection may send membership changes: `trusted`, or a
    /// client presented the cluster key (`client_hello`).
    admin: bool,
    /// Whether a peer node opened this connection (its `peer_hello` named a
    /// member and this node): its lines may be as long as a peer's, not a client's.
    peer: bool,
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
        node_requests: Arc<Semaphore>,
    ) -> Handler {
        Handler {
            node,
            msg_ids,
            node_requests,
            in_flight: Arc::new(Semaphore::new(config.requests_per_connection_max)),
            config: config.clone(),
            shutdown,
            _shutdown_complete: shutdown_complete,
            next_ticket: 0,
            trusted: config.cluster_key.is_none(),
            admin: config.cluster_key.is_none(),
            peer: false,
            hello_refused: false,
        }
    }

    /// Serves the connection until the peer closes it, it breaks, shutdown, it
    /// stays silent or idle too long, or its budget is full (see [`server`]).
    ///
    /// [`server`]: super::server
    pub async fn run(mut self, socket: TcpStream, arrival: Arrival) {
        let peer_addr = socket.peer_addr().ok();
        let (r, w) = socket.into_split();
        let (out, out_rx) = mpsc::channel(self.config.queue_capacity);
        let started = Instant::now();
        let written_ms = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write_loop(
            w,
            out_rx,
            self.node.name.clone(),
            self.msg_ids.clone(),
            Activity {
                base: started,
                written_ms: written_ms.clone(),
                write_timeout: self.config.write_timeout,
            },
        ));
        let first_line_timeout = Duration::from_millis(self.config.first_line_timeout_ms);
        let idle_timeout = Duration::from_millis(self.config.idle_timeout_ms);
        let budgets = arrival.budgets.clone();
        // While unclassified: its place, which the server may take back.
        let mut arrival = Some(arrival);
        // Once classified: its place in the client or peer budget.
        let mut _slot = None;
        let mut last_line = started;
        let mut lines = LineReader::new(BufReader::new(r), self.node.config.request_bytes_max);
        'lines: loop {
            // The read stays the same future across timer wake-ups (a dropped
            // read would lose a partial line); it ends with the line.
            let line = {
                let read = lines.read_line();
                tokio::pin!(read);
                loop {
                    let deadline = match arrival {
                        Some(_) => started + first_line_timeout,
                        None => {
                            let written =
                                started + Duration::from_millis(written_ms.load(Ordering::Relaxed));
                            last_line.max(written) + idle_timeout
                        }
                    };
                    let evicted = async {
                        match arrival.as_mut() {
                            Some(a) => drop((&mut a.evicted).await),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        l = &mut read => break l,
                        _ = self.shutdown.recv() => break 'lines,
                        // The writer gave up (the peer reads no replies): stop reading.
                        () = out.closed() => break 'lines,
                        () = evicted => {
                            crate::reject!(
                                "closing a connection from {peer_addr:?} that sent no line yet: \
                                 the oldest of {} such (setting {})",
                                self.config.unclassified_connections_max,
                                super::UNCLASSIFIED_CONNECTIONS_MAX_VAR
                            );
                            break 'lines;
                        }
                        () = tokio::time::sleep_until(deadline.into()) => {
                            if arrival.is_some() {
                                crate::reject!(
                                    "closing a connection from {peer_addr:?}: no line in {} ms \
                                     (setting {})",
                                    self.config.first_line_timeout_ms,
                                    super::FIRST_LINE_TIMEOUT_MS_VAR
                                );
                                break 'lines;
                            }
                            let in_flight = self.in_flight.available_permits()
                                < self.config.requests_per_connection_max;
                            if in_flight {
                                // Never idle while a request is in flight.
                                last_line = Instant::now();
                            } else if Instant::now() >= deadline {
                                tracing::debug!(
                                    "closing a connection from {peer_addr:?} idle for {} ms",
                                    self.config.idle_timeout_ms
                                );
                                break 'lines;
                            }
                        }
                    }
                }
            };
            match line {
                Ok(Some(Line::Full(line))) => {
                    last_line = Instant::now();
                    if arrival.is_some() {
                        let class = self.classify(&line);
                        match budgets.admit(class) {
                            Ok(slot) => _slot = Some(slot),
                            Err(text) => {
                                crate::reject!("refused a connection from {peer_addr:?}: {text}");
                                self.refuse(&line, &text, &out).await;
                                break;
                            }
                        }
                        arrival = None;
                    }
                    self.dispatch(&line, &out).await;
                    if self.peer {
                        lines.set_max(self.node.config.peer_line_bytes_max);
                    }
                }
                Ok(Some(bad @ (Line::TooLong(_) | Line::NotUtf8(_)))) => {
                    last_line = Instant::now();
                    if arrival.is_some() {
                        // A peer's first line is its (short) hello: this is a client.
                        match budgets.admit(Class::Client) {
                            Ok(slot) => _slot = Some(slot),
                            Err(text) => {
                                crate::reject!("refused a connection from {peer_addr:?}: {text}");
                                break;
                            }
                        }
                        arrival = None;
                    }
                    self.refuse_line(bad, &out).await;
                }
                Ok(None) => break,
                Err(e) => {
                    crate::reject!("closing connection from {peer_addr:?}: {e}");
                    break;
                }
            }
        }
        // Requests in flight hold clones of `out`; the writer ends after their replies.
        drop(out);
        let _ = writer.await;
    }

    /// A line over the limit (the error names the limit) or not valid UTF-8
    /// (never converted lossily, which could make two keys or two client_ids
    /// one): error 12 if its sender and `msg_id` could be read, else a
    /// (truncated) log line. Nothing was proposed. A full line is not refused.
    async fn refuse_line(&mut self, line: Line, out: &mpsc::Sender<Out>) {
        let (sk, bytes, prefix, text) = match line {
            Line::Full(_) => return,
            Line::TooLong(long) => {
                let text = if self.peer {
                    format!(
                        "line of {} bytes exceeds the peer line limit of {} bytes \
                         (peer_line_bytes_max, ONCEKV_PEER_LINE_BYTES_MAX)",
                        long.bytes, long.limit
                    )
                } else {
                    self.node.config.request_too_long_text(long.bytes)
                };
                (long.skeleton, long.bytes, long.prefix, text)
            }
            Line::NotUtf8(bad) => {
                let text = bad.text();
                (bad.skeleton, bad.bytes, bad.prefix, text)
            }
        };
        match (sk.src, sk.msg_id, sk.in_reply_to) {
            (Some(src), Some(id), None) => {
                crate::reject!("refused a line of {bytes} bytes from {src}: {text}");
                let reply = Reply::error(ErrorCode::MalformedRequest, text);
                self.answer_now(out, src, id, reply).await;
            }
            _ => crate::reject!(
                "dropping a line of {bytes} bytes with no readable sender and msg_id \
                 ({text}): {prefix:?}..."
            ),
        }
    }

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
    async fn refuse(&mut self, line: &str, text: &str, out: &mpsc::Sender<Out>) {
        let (src, msg_id) = match parse_line(line) {
            Ok(msg) => (msg.src, msg.msg_id),
            Err(ParseError::Body { src, msg_id, .. }) => (src, msg_id),
            Err(ParseError::Envelope(_)) => return,
        };
        if let Some(id) = msg_id {
            let body = crate::node::error_body(ErrorCode::TemporarilyUnavailable, text);
            let _ = out.send(raw_reply(src, id, body)).await;
        }
    }

    async fn dispatch(&mut self, line: &str, out: &mpsc::Sender<Out>) {
        let msg = match parse_line(line) {
            Ok(msg) => msg,
            Err(ParseError::Envelope(e)) => {
                return crate::reject!("dropping a line that is not a message ({e}): {line}");
            }
            Err(ParseError::Body {
                src,
                msg_id,
                in_reply_to,
                text,
                ..
            }) => {
                match (msg_id, in_reply_to) {
                    (Some(id), None) => {
                        let reply = Reply::error(ErrorCode::MalformedRequest, text);
                        self.answer_now(out, src, id, reply).await;
                    }
                    _ => crate::reject!("dropping a malformed message from {src}: {text}"),
                }
                return;
            }
        };
        if msg.in_reply_to.is_some() {
            return crate::reject!("unexpected reply from {} on a served connection", msg.src);
        }
        let Some(msg_id) = msg.msg_id else {
            return crate::reject!("dropping a request without msg_id from {}", msg.src);
        };
        let src = msg.src;
        let encoded_bytes_max = msg.encoded_bytes_max;
        match msg.body {
            Body::Init { node_id, .. } => {
                // TCP nodes start from their flags; accept an init that agrees.
                let reply = if node_id == self.node.name {
                    Reply::InitOk
                } else {
                    Reply::error(ErrorCode::MalformedRequest, "this node has another name")
                };
                self.answer_now(out, src, msg_id, reply).await;
            }
            Body::Request(req) => {
                self.client_request(out, src, msg_id, req, encoded_bytes_max)
                    .await
            }
            Body::Other { kind, raw, rpc } => {
                let addr = (src, msg.dest);
                let body = (kind, raw, rpc, encoded_bytes_max);
                self.other(out, addr, msg_id, body).await
            }
        }
    }

    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().acquire_owned().await.ok()
    }

    async fn client_request(
        &mut self,
        out: &mpsc::Sender<Out>,
        src: String,
        msg_id: u64,
        req: Request,
        encoded_bytes_max: usize,
    ) {
        let Some(permit) = self.permit().await else {
            return;
        };
        let Ok(node_permit) = self.node_requests.clone().acquire_owned().await else {
            return;
        };
        let permit = (permit, node_permit);
        let log_waiting = !matches!(req, Request::Read { .. });
        let fwd = Forwarded::from_request(req);
        let bound = Some(encoded_bytes_max);
        if let Some(refused) = check_entry_bytes(&self.node.config, &fwd, bound) {
            return self.answer_now(out, src, msg_id, refused).await;
        }
        let finish = match self.node.start_forwarded(fwd).await {
            Started::Ready(reply) => return self.answer_now(out, src, msg_id, reply).await,
            Started::Pending(finish) => finish,
        };
        let ticket = self.ticket();
        let accept = Out::Accept {
            ticket,
            log_waiting,
        };
        if out.send(accept).await.is_err() {
            return;
        }
        let out = out.clone();
        tokio::spawn(async move {
            let reply = finish.await;
            drop(permit);
            let _ = out
                .send(Out::Reply {
                    ticket,
                    dest: src,
                    in_reply_to: msg_id,
                    reply,
                })
                .await;
        });
    }

    async fn other(
        &mut self,
        out: &mpsc::Sender<Out>,
        (src, dest): (String, String),
        msg_id: u64,
        (kind, raw, rpc, encoded_bytes_max): OtherBody,
    ) {
        let Some(permit) = self.permit().await else {
            return;
        };
        let node = self.node.clone();
        let config = self.config.clone();
        let peer_rpc = kind.starts_with("raft_") || kind == "forward";
        let admin_only = matches!(kind.as_str(), "add_node" | "remove_node");
        let body = match kind.as_str() {
            "status" => status_body(&node),
            "peer_hello" | "client_hello" => {
                let given = raw.get("key").and_then(Value::as_str).unwrap_or("");
                match &config.cluster_key {
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
                        // Each guess costs a new connection (and a place
                        // among the unclassified first).
                        self.hello_refused = true;
                        crate::node::error_body(ErrorCode::MalformedRequest, "wrong cluster key")
                    }
                    _ => self.hello_accepted(&kind, &src, &dest),
                }
            }
            _ if (peer_rpc && !self.trusted) || (admin_only && !self.admin) => {
                crate::reject!("refused {kind} from {src}: the connection gave no cluster key");
                crate::node::error_body(
                    ErrorCode::NotSupported,
                    &format!(
                        "{kind} needs the cluster key: send peer_hello {{key}} (a node) or \
                         client_hello {{key}} (add_node, remove_node) with the right key first \
                         on this connection"
                    ),
                )
            }
            _ if peer_rpc && dest != node.name => {
                crate::reject!(
                    "refused {kind} from {src} addressed to {dest:?}: this is {}",
                    node.name
                );
                crate::node::error_body(
                    ErrorCode::MalformedRequest,
                    &format!(
                        "{kind} is addressed to {dest:?} but this is node {}; nothing was done \
                         (do two members share an address in --peers?)",
                        node.name
                    ),
                )
            }
            "add_node" | "remove_node" => {
                let out = out.clone();
                tokio::spawn(async move {
                    let body = membership(&node, &kind, &raw, &config).await;
                    drop(permit);
                    let _ = out.send(raw_reply(src, msg_id, body)).await;
                });
                return;
            }
            "forward"
                if let Some(body) =
                    node.refuse_oversized_forward(&raw, rpc.as_deref(), encoded_bytes_max) =>
            {
                body
            }
            k if k.starts_with("raft_") || k == "forward" => {
                let out = out.clone();
                tokio::spawn(async move {
                    let body = node.handle_peer(&kind, &raw, rpc.as_deref()).await;
                    drop(permit);
                    let _ = out.send(raw_reply(src, msg_id, body)).await;
                });
                return;
            }
            other => crate::node::error_body(
                ErrorCode::NotSupported,
                &format!("unsupported request type {other:?}"),
            ),
        };
        let _ = out.send(raw_reply(src, msg_id, body)).await;
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
            self.peer = true;
        }
        let mut b = Map::new();
        b.insert("type".into(), Value::from(format!("{kind}_ok")));
        b
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// A reply known at once: still sequenced behind earlier writes.
    async fn answer_now(&mut self, out: &mpsc::Sender<Out>, dest: String, id: u64, reply: Reply) {
        let ticket = self.ticket();
        let accept = Out::Accept {
            ticket,
            log_waiting: false,
        };
        if out.send(accept).await.is_ok() {
            let reply = Out::Reply {
                ticket,
                dest,
                in_reply_to: id,
                reply,
            };
            let _ = out.send(reply).await;
        }
    }
}

/// Whether `name` may open a peer connection: a node's name (not a client's),
/// and, if this node knows a member with its id (in the current membership, or
/// the list it started with), that member's name. A node name this node does not
/// know is accepted with a warning: a node that missed a membership change (it
/// was down when `add_node` ran) must still hear from the member that was added,
/// which may lead by then, or it could never catch up.
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

fn raw_reply(dest: String, in_reply_to: u64, body: Map<String, Value>) -> Out {
    Out::Raw {
        dest,
        in_reply_to,
        body,
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
        let text = format!(
            "{}; leader is {:?}; nothing was changed",
            crate::node::MEMBERSHIP_NOT_LEADER,
            node.leader()
        );
        return err((ErrorCode::TemporarilyUnavailable, text));
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
        let member = node.membership_nodes().iter().any(|(i, _, _)| *i == id);
        if !member && let Some(text) = foreign_node(&peer, config.membership_probe_timeout).await {
            return malformed(text);
        }
        node.add_member(id, peer, catch_up, config.membership_timeout)
            .await
    } else {
        match tokio::time::timeout(config.membership_timeout, node.remove_member(id)).await {
            Ok(r) => r,
            Err(_) => Err((
                ErrorCode::Timeout,
                "membership change not done in time; it may still take effect".into(),
            )),
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
        Err(e) => err(e),
    }
}

/// What the writer reports to the reader and how long it may block.
struct Activity {
    /// When the connection was accepted.
    base: Instant,
    /// Milliseconds after `base` of the last write (for the idle timeout).
    written_ms: Arc<AtomicU64>,
    /// Longest a write may block: a reader that stops reading its replies gets
    /// its connection closed, not a writer (and its queue) held for ever.
    write_timeout: Duration,
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
fn address_taken(members: Vec<(u64, Peer, bool)>, id: u64, peer: &Peer) -> Option<String> {
    let mine = super::resolve(&peer.addr).unwrap_or_default();
    members
        .into_iter()
        .filter(|(other, _, _)| *other != id)
        .find(|(_, other, _)| {
            other.addr.eq_ignore_ascii_case(&peer.addr)
                || super::resolve(&other.addr)
                    .unwrap_or_default()
                    .iter()
                    .any(|a| mine.contains(a))
        })
        .map(|(_, other, _)| {
            format!(
                "address {} is already {other}'s: every member needs its own; nothing was changed",
                peer.addr
            )
        })
}

/// The writer: sole owner of the socket's write half.
async fn write_loop(
    w: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    me: String,
    msg_ids: Arc<AtomicU64>,
    activity: Activity,
) {
    let mut w = BufWriter::with_capacity(1 << 16, w);
    let mut sequencer: Sequencer<(String, u64, Reply)> = Sequencer::default();
    let next_id = || msg_ids.fetch_add(1, Ordering::Relaxed);
    while let Some(msg) = rx.recv().await {
        let mut lines = Vec::new();
        match msg {
            Out::Accept {
                ticket,
                log_waiting,
            } => sequencer.accept(ticket, log_waiting),
            Out::Reply {
                ticket,
                dest,
                in_reply_to,
                reply,
            } => {
                for (dest, in_reply_to, reply) in
                    sequencer.answer(ticket, (dest, in_reply_to, reply))
                {
                    let body = ReplyBody {
                        reply: &reply,
                        in_reply_to,
                        msg_id: next_id(),
                    };
                    lines.push(encode(&me, &dest, body));
                }
            }
            Out::Raw {
                dest,
                in_reply_to,
                body,
            } => lines.push(encode_raw(&me, &dest, body, Some(in_reply_to), next_id())),
        }
        let write = async {
            for line in lines {
                write_line(&mut w, &line).await?;
            }
            if rx.is_empty() {
                w.flush().await?;
            }
            std::io::Result::Ok(())
        };
        match tokio::time::timeout(activity.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                crate::reject!(
                    "closing a connection whose peer read no reply in {:?}",
                    activity.write_timeout
                );
                return;
            }
        }
        let ms = u64::try_from(activity.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.written_ms.store(ms, Ordering::Relaxed);
    }
    let _ = tokio::time::timeout(activity.write_timeout, w.flush()).await;
}
