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

use serde_json::{Map, Value};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};

use super::TcpConfig;
use super::connection::{Line, LineReader, LongLine, encode_raw, write_line};
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
}

impl Handler {
    /// A handler for one connection.
    pub fn new(
        node: Arc<Node>,
        msg_ids: Arc<AtomicU64>,
        config: TcpConfig,
        shutdown: broadcast::Receiver<()>,
        shutdown_complete: mpsc::Sender<()>,
    ) -> Handler {
        Handler {
            node,
            msg_ids,
            in_flight: Arc::new(Semaphore::new(config.requests_per_connection_max)),
            config: config.clone(),
            shutdown,
            _shutdown_complete: shutdown_complete,
            next_ticket: 0,
            trusted: config.cluster_key.is_none(),
            admin: config.cluster_key.is_none(),
            peer: false,
        }
    }

    /// Serves the connection until the peer closes it, it breaks, or shutdown.
    pub async fn run(mut self, socket: TcpStream) {
        let peer_addr = socket.peer_addr().ok();
        let (r, w) = socket.into_split();
        let (out, out_rx) = mpsc::channel(self.config.queue_capacity);
        let writer = tokio::spawn(write_loop(
            w,
            out_rx,
            self.node.name.clone(),
            self.msg_ids.clone(),
        ));
        let mut lines = LineReader::new(BufReader::new(r), self.node.config.request_bytes_max);
        loop {
            let line = tokio::select! {
                l = lines.read_line() => l,
                _ = self.shutdown.recv() => break,
            };
            match line {
                Ok(Some(Line::Full(line))) => {
                    self.dispatch(&line, &out).await;
                    if self.peer {
                        lines.set_max(self.node.config.peer_line_bytes_max);
                    }
                }
                Ok(Some(Line::TooLong(long))) => self.too_long(long, &out).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("closing connection from {peer_addr:?}: {e}");
                    break;
                }
            }
        }
        // Requests in flight hold clones of `out`; the writer ends after their replies.
        drop(out);
        let _ = writer.await;
    }

    /// A line over the limit: error 12 naming the limit if its sender and
    /// `msg_id` could be read, else a (truncated) log line. Nothing was proposed.
    async fn too_long(&mut self, long: LongLine, out: &mpsc::Sender<Out>) {
        let sk = long.skeleton;
        let text = if self.peer {
            format!(
                "line of {} bytes exceeds the peer line limit of {} bytes \
                 (peer_line_bytes_max, ONCEKV_PEER_LINE_BYTES_MAX)",
                long.bytes, long.limit
            )
        } else {
            self.node.config.request_too_long_text(long.bytes)
        };
        match (sk.src, sk.msg_id, sk.in_reply_to) {
            (Some(src), Some(id), None) => {
                tracing::warn!("refused a line of {} bytes from {src}: {text}", long.bytes);
                let reply = Reply::error(ErrorCode::MalformedRequest, text);
                self.answer_now(out, src, id, reply).await;
            }
            _ => tracing::warn!(
                "dropping a line of {} bytes with no readable sender and msg_id: {:?}...",
                long.bytes,
                long.prefix
            ),
        }
    }

    async fn dispatch(&mut self, line: &str, out: &mpsc::Sender<Out>) {
        let msg = match parse_line(line) {
            Ok(msg) => msg,
            Err(ParseError::Envelope(e)) => {
                return tracing::warn!("dropping a line that is not a message ({e})");
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
                    _ => tracing::warn!("dropping a malformed message from {src}: {text}"),
                }
                return;
            }
        };
        if msg.in_reply_to.is_some() {
            return tracing::warn!("unexpected reply from {} on a served connection", msg.src);
        }
        let Some(msg_id) = msg.msg_id else {
            return tracing::warn!("dropping a request without msg_id from {}", msg.src);
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
                    Some(key) if !super::keys_match(given, key) => {
                        tracing::warn!("refused a peer_hello from {src}: wrong cluster key");
                        crate::node::error_body(ErrorCode::MalformedRequest, "wrong cluster key")
                    }
                    _ => self.hello_accepted(&kind, &src, &dest),
                }
            }
            _ if (peer_rpc && !self.trusted) || (admin_only && !self.admin) => {
                tracing::warn!("refused {kind} from {src}: the connection gave no cluster key");
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
                tracing::warn!(
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
            tracing::warn!("refused a {kind} from {src}: {text}");
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
            tracing::warn!(
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

/// `add_node {name, addr}` / `remove_node {name}`, on the leader only.
async fn membership(
    node: &Node,
    kind: &str,
    raw: &Map<String, Value>,
    config: &TcpConfig,
) -> Map<String, Value> {
    let err = |code, text: &str| crate::node::error_body(code, text);
    let field = |f: &str| raw.get(f).and_then(Value::as_str).map(str::to_string);
    let Some(name) = field("name") else {
        return err(ErrorCode::MalformedRequest, "missing field name");
    };
    let id = match super::node_id(&name) {
        Ok(id) => id,
        Err(e) => return err(ErrorCode::MalformedRequest, &e.to_string()),
    };
    if node.leader() != Some(node.id) {
        let text = format!("not the leader; leader is {:?}", node.leader());
        return err(ErrorCode::TemporarilyUnavailable, &text);
    }
    let change = async {
        if kind == "add_node" {
            let Some(addr) = field("addr") else {
                return Err("missing field addr".to_string());
            };
            node.add_member(id, Peer { name, addr }).await
        } else {
            node.remove_member(id).await
        }
    };
    match tokio::time::timeout(config.membership_timeout, change).await {
        Ok(Ok(())) => {
            let mut body = Map::new();
            body.insert("type".into(), Value::from(format!("{kind}_ok")));
            body
        }
        // The change may have been proposed: indefinite (retrying it is harmless).
        Ok(Err(text)) => err(ErrorCode::Crash, &text),
        Err(_) => err(ErrorCode::Timeout, "membership change not done in time"),
    }
}

/// The writer: sole owner of the socket's write half.
async fn write_loop(
    w: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    me: String,
    msg_ids: Arc<AtomicU64>,
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
        for line in lines {
            if write_line(&mut w, &line).await.is_err() {
                return;
            }
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.flush().await;
}
