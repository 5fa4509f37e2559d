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
//! `remove_node`, leader only) and peer RPCs (`raft_*`, `forward`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};

use super::TcpConfig;
use super::connection::{LineReader, encode_raw, write_line};
use crate::maelstrom::sequencer::Sequencer;
use crate::node::{Node, Started};
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
        let mut lines = LineReader::new(BufReader::new(r), self.config.line_bytes_max);
        loop {
            let line = tokio::select! {
                l = lines.read_line() => l,
                _ = self.shutdown.recv() => break,
            };
            match line {
                Ok(Some(line)) => self.dispatch(&line, &out).await,
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

    async fn dispatch(&mut self, line: &str, out: &mpsc::Sender<Out>) {
        let msg = match parse_line(line) {
            Ok(msg) => msg,
            Err(ParseError::Envelope(e)) => {
                return tracing::warn!("dropping a line that is not a message ({e})");
            }
            Err(ParseError::Body {
                src, msg_id, text, ..
            }) => {
                if let Some(id) = msg_id {
                    let reply = Reply::error(ErrorCode::MalformedRequest, text);
                    self.answer_now(out, src, id, reply).await;
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
            Body::Request(req) => self.client_request(out, src, msg_id, req).await,
            Body::Other { kind, raw, rpc } => self.other(out, src, msg_id, kind, raw, rpc).await,
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
    ) {
        let Some(permit) = self.permit().await else {
            return;
        };
        let log_waiting = !matches!(req, Request::Read { .. });
        let finish = match self.node.start_request(req).await {
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
        src: String,
        msg_id: u64,
        kind: String,
        raw: Map<String, Value>,
        rpc: Option<Box<serde_json::value::RawValue>>,
    ) {
        let Some(permit) = self.permit().await else {
            return;
        };
        let node = self.node.clone();
        let config = self.config.clone();
        let peer_only = matches!(kind.as_str(), "add_node" | "remove_node" | "forward")
            || kind.starts_with("raft_");
        let body = match kind.as_str() {
            "status" => status_body(&node),
            "peer_hello" => {
                let given = raw.get("key").and_then(Value::as_str).unwrap_or("");
                match &config.cluster_key {
                    Some(key) if !super::keys_match(given, key) => {
                        tracing::warn!("refused a peer_hello from {src}: wrong cluster key");
                        crate::node::error_body(ErrorCode::MalformedRequest, "wrong cluster key")
                    }
                    _ => {
                        self.trusted = true;
                        let mut b = Map::new();
                        b.insert("type".into(), Value::from("peer_hello_ok"));
                        b
                    }
                }
            }
            _ if peer_only && !self.trusted => {
                tracing::warn!("refused {kind} from {src}: the connection gave no cluster key");
                crate::node::error_body(
                    ErrorCode::NotSupported,
                    &format!(
                        "{kind} needs the cluster key: send peer_hello {{key}} with the right key \
                         first on this connection"
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
    (status.role == "Leader").then(|| {
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
