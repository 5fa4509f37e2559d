//! Maelstrom node mode: the protocol on stdin/stdout.
//!
//! Two tasks own the two ends. The *reader* parses each line and either starts the
//! node (`init`), spawns the serving of a client request, spawns the answer to a
//! peer's RPC, or completes one of our own pending RPCs. The *writer* is the only
//! thing that touches stdout: it numbers every outgoing message from one counter
//! starting at 0, holds client replies back per the order rule ([`sequencer`]), and
//! registers our RPCs so their replies find their way back.
//!
//! ```text
//! stdin -> reader --spawn--> Node::serve / Node::handle_peer --Out--> writer -> stdout
//!            |                                                          ^
//!            +---- rpc replies (in_reply_to) --> pending calls <--------+ (registered on send)
//! ```

pub mod sequencer;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::Config;
use crate::node::{Forwarded, Node, Started, check_entry_bytes};
use crate::state::Op;
use crate::tcp::connection::{Line, LineReader};

/// Most proposals handed to Raft in one batch.
const BATCH_MAX: usize = 256;
use crate::protocol::{
    Body, ErrorCode, Message, ParseError, Reply, ReplyBody, Request, encode, parse_line,
};
use crate::raft::Peer;
use crate::raft::network::{self, CallError, Transport};
use sequencer::Sequencer;

/// What the writer is asked to do.
enum Out {
    /// A client request arrived (its ticket), and whether it waits on the log.
    Accept { ticket: u64, log_waiting: bool },
    /// The reply to a ticketed client request.
    Reply {
        ticket: u64,
        src: String,
        dest: String,
        in_reply_to: u64,
        reply: Reply,
    },
    /// An unsequenced message: a reply to a peer's RPC.
    Peer {
        src: String,
        dest: String,
        in_reply_to: Option<u64>,
        body: network::Body,
    },
    /// One of our RPCs; its reply goes to `reply_to`.
    Call {
        src: String,
        dest: String,
        req: network::RpcRequest,
        reply_to: oneshot::Sender<network::Body>,
    },
    /// stdin closed: exit once every accepted request is answered.
    Eof,
}

/// A body of another type than a client request: its `type`, fields, `rpc`
/// kept as text, and [`crate::protocol::Message::encoded_bytes_max`].
type OtherBody = (
    String,
    Map<String, Value>,
    Option<Box<serde_json::value::RawValue>>,
    usize,
);

/// RPCs awaiting a reply, by the `msg_id` we sent them with.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<network::Body>>>>;

/// [`Transport`] over Maelstrom messages.
struct MaelstromTransport {
    out: mpsc::Sender<Out>,
    /// This node's name, the `src` of its RPCs.
    me: String,
}

impl Transport for MaelstromTransport {
    fn call(
        &self,
        peer: &Peer,
        req: network::RpcRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<network::Body, CallError>> {
        let out = self.out.clone();
        let dest = peer.name.clone();
        let src = self.me.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let unreachable = |why: &str| CallError::Unreachable {
                peer: dest.clone(),
                why: why.to_string(),
            };
            out.send(Out::Call {
                src,
                dest: dest.clone(),
                req,
                reply_to: tx,
            })
            .await
            .map_err(|_| unreachable("node is shutting down"))?;
            match tokio::time::timeout(timeout, rx).await {
                Err(_) => Err(CallError::Timeout(dest)),
                Ok(Err(_)) => Err(CallError::Timeout(dest)),
                Ok(Ok(reply)) => network::reply_or_remote_error(&dest, reply),
            }
        })
    }
}

/// Runs a Maelstrom node until `input` closes and every accepted request is answered.
pub async fn run<R, W>(input: R, output: W, config: Config) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(config.outbox_capacity);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Arc<Node>>();
    let pending: Pending = Arc::default();
    let writer = tokio::spawn(write_loop(output, out_rx, pending.clone()));
    let mut reader = Reader {
        out: out_tx,
        pending,
        node: None,
        batch: Vec::new(),
        batch_bytes: 0,
        me: String::new(),
        members: BTreeSet::new(),
        node_ids: Vec::new(),
        next_ticket: 0,
        in_flight: Arc::new(Semaphore::new(config.requests_in_flight_max)),
        config,
        started: Some(started_tx),
    };
    // Read until stdin closes, or until Raft fails (a storage error): then the
    // process must end non-zero rather than linger as a node that cannot commit.
    let fatal = async move {
        match started_rx.await {
            Ok(node) => node.fatal().await,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = reader.read_all(input) => r,
        why = fatal => {
            tracing::error!("fatal: {why}; stopping the node");
            Err(std::io::Error::other(why))
        }
    };
    let _ = reader.out.send(Out::Eof).await;
    let written = writer
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Some(node) = reader.node.take() {
        node.shutdown().await;
    }
    result.and(written)
}

/// The reader's state.
struct Reader {
    out: mpsc::Sender<Out>,
    pending: Pending,
    /// Set by `init`.
    node: Option<Arc<Node>>,
    /// Proposals read back to back, not yet handed to Raft: (sender, msg_id, op).
    batch: Vec<(String, u64, Op)>,
    /// The bytes of those proposals' lines (bounded by `batch_bytes_max`).
    batch_bytes: usize,

    /// Our name: from `init`, or before it the `dest` of the message being answered.
    me: String,
    /// Node names from `init`: messages from these are peer traffic.
    members: BTreeSet<String>,
    /// `init`'s node list as given (a node's Raft id is its position in it).
    node_ids: Vec<String>,
    next_ticket: u64,
    /// Bounds requests in flight; the reader waits when it is exhausted.
    in_flight: Arc<Semaphore>,
    config: Config,
    /// Hands the node, once `init` started it, to `run`'s watch for a fatal error.
    started: Option<tokio::sync::oneshot::Sender<Arc<Node>>>,
}

impl Reader {
    async fn read_all<R: AsyncRead + Unpin>(&mut self, input: R) -> std::io::Result<()> {
        let input = BufReader::with_capacity(1 << 16, input);
        // A client's line may have request_bytes_max bytes; a member's (told by
        // its `src`, read before the line is buffered past that) a peer's limit.
        let mut lines = LineReader::new(input, self.config.request_bytes_max);
        loop {
            let peer_max = self.config.peer_line_bytes_max;
            let members = &self.members;
            let read = lines
                .read_line_with(|sk| {
                    sk.src
                        .as_ref()
                        .filter(|s| members.contains(*s))
                        .map(|_| peer_max)
                })
                .await?;
            let line = match read {
                None => {
                    self.flush_batch().await;
                    return Ok(());
                }
                Some(bad @ (Line::TooLong(_) | Line::NotUtf8(_))) => {
                    self.flush_batch().await;
                    self.refuse_line(bad).await;
                    continue;
                }
                Some(Line::Full(line)) => line,
            };
            let parsed = parse_line(&line);
            if parsed.is_err() {
                self.flush_batch().await;
            }
            match parsed {
                Ok(msg) if self.misaddressed(&msg) => {
                    self.flush_batch().await;
                    self.refuse_misaddressed(msg).await;
                }
                Ok(msg) if self.batchable(&msg) => {
                    if let (Body::Request(req), Some(id)) = (msg.body, msg.msg_id) {
                        let fwd = Forwarded::from_request(req);
                        let bound = Some(msg.encoded_bytes_max);
                        let refused = check_entry_bytes(&self.config, &fwd, bound);
                        if let Some(reply) = refused {
                            self.flush_batch().await;
                            self.answer_now(msg.src, id, reply).await;
                        } else if let Forwarded::Propose(op) = fwd {
                            if self.batch_bytes + line.len() > self.config.batch_bytes_max {
                                self.flush_batch().await;
                            }
                            self.batch_bytes += line.len();
                            self.batch.push((msg.src, id, op));
                        }
                    }
                }
                Ok(msg) => {
                    self.flush_batch().await;
                    self.dispatch(msg).await;
                }
                Err(ParseError::Envelope(e)) => {
                    crate::reject!("dropping a line that is not a message ({e}): {line}");
                }
                Err(ParseError::Body {
                    src,
                    dest,
                    msg_id,
                    in_reply_to,
                    text,
                }) => {
                    crate::reject!("malformed message from {src}: {text}");
                    if let Some(reply_to) = in_reply_to {
                        self.fail_call(reply_to, &text);
                    } else if let Some(id) = msg_id {
                        if self.node.is_none() {
                            // Before init, as for a parsed message: the reply's `src`
                            // is the name the sender addressed.
                            self.me = dest;
                        }
                        self.answer_now(src, id, Reply::error(ErrorCode::MalformedRequest, text))
                            .await;
                    }
                }
            }
            // Proposals that arrived back to back go to Raft together; a batch ends
            // when no further complete line is already buffered, or at its bounds.
            if self.batch.len() >= BATCH_MAX
                || self.batch_bytes >= self.config.batch_bytes_max
                || !lines.get_ref().buffer().contains(&b'\n')
            {
                self.flush_batch().await;
            }
        }
    }

    /// A line over its limit (the error names the limit) or not valid UTF-8
    /// (never converted lossily, which could make two keys or two client_ids
    /// one): error 12 if its sender and `msg_id` could be read (nothing was
    /// proposed), its caller told if it was a reply, else a truncated log line.
    /// A full line is not refused.
    async fn refuse_line(&mut self, line: Line) {
        let (sk, bytes, prefix, text) = match line {
            Line::Full(_) => return,
            Line::TooLong(long) => {
                let text = if long.limit > self.config.request_bytes_max {
                    format!(
                        "line of {} bytes exceeds the peer line limit of {} bytes \
                         (ONCEKV_PEER_LINE_BYTES_MAX)",
                        long.bytes, long.limit
                    )
                } else {
                    self.config.request_too_long_text(long.bytes)
                };
                (long.skeleton, long.bytes, long.prefix, text)
            }
            Line::NotUtf8(bad) => {
                let text = bad.text();
                (bad.skeleton, bad.bytes, bad.prefix, text)
            }
        };
        crate::reject!(
            "a line of {bytes} bytes from {:?}: {text}: {prefix:?}...",
            sk.src
        );
        match (sk.src, sk.msg_id, sk.in_reply_to) {
            (_, _, Some(reply_to)) => self.fail_call(reply_to, &text),
            (Some(src), Some(id), None) => {
                if self.node.is_none()
                    && let Some(dest) = sk.dest
                {
                    self.me = dest;
                }
                let reply = Reply::error(ErrorCode::MalformedRequest, text);
                self.answer_now(src, id, reply).await;
            }
            _ => {}
        }
    }

    /// Whether `msg` is addressed to another node than this one (after init).
    fn misaddressed(&self, msg: &Message) -> bool {
        self.node.is_some() && msg.dest != self.me
    }

    /// A message for another node: not served. A request gets error 12, a reply
    /// is dropped; both are logged.
    async fn refuse_misaddressed(&mut self, msg: Message) {
        let text = format!(
            "message for {} delivered to {}; nothing was done",
            msg.dest, self.me
        );
        crate::reject!("{text} (from {})", msg.src);
        if let (Some(id), None) = (msg.msg_id, msg.in_reply_to) {
            self.answer_now(msg.src, id, Reply::error(ErrorCode::MalformedRequest, text))
                .await;
        }
    }

    /// Ends one of our pending RPCs whose reply could not be read, with an error
    /// (the peer may have acted on it: its caller treats this as indefinite).
    fn fail_call(&self, reply_to: u64, why: &str) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reply_to);
        if let Some(tx) = waiter {
            let text = format!("the reply could not be read ({why}); it may have been acted on");
            drop(tx.send(crate::node::error_body(ErrorCode::Crash, &text)));
        }
    }

    /// Whether this is a client proposal this node can add to the current batch
    /// (it leads).
    fn batchable(&self, msg: &Message) -> bool {
        let leads = self.node.as_ref().is_some_and(|n| n.leader() == Some(n.id));
        leads
            && msg.in_reply_to.is_none()
            && msg.msg_id.is_some()
            && matches!(&msg.body, Body::Request(r) if !matches!(r, Request::Read { .. }))
    }

    /// Submits the current batch; if leadership moved meanwhile, serves each op alone.
    async fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let Some(node) = self.node.clone() else {
            return;
        };
        let Ok(permits) = self
            .in_flight
            .clone()
            .acquire_many_owned(items.len() as u32)
            .await
        else {
            return;
        };
        let (meta, ops): (Vec<(String, u64)>, Vec<Op>) =
            items.into_iter().map(|(s, m, op)| ((s, m), op)).unzip();
        let started = match node.start_batch(ops).await {
            Ok(started) => started,
            Err(ops) => {
                drop(permits);
                for ((src, msg_id), op) in meta.into_iter().zip(ops) {
                    self.start_and_answer(src, msg_id, Forwarded::Propose(op), true)
                        .await;
                }
                return;
            }
        };
        let mut tickets = Vec::new();
        for ((src, msg_id), now) in meta.into_iter().zip(started.immediate) {
            match now {
                Some(reply) => self.answer_now(src, msg_id, reply).await,
                None => {
                    let ticket = self.ticket();
                    let accept = Out::Accept {
                        ticket,
                        log_waiting: true,
                    };
                    if self.out.send(accept).await.is_err() {
                        return;
                    }
                    tickets.push((ticket, src, msg_id));
                }
            }
        }
        let out = self.out.clone();
        let me = self.me.clone();
        let rest = started.rest;
        tokio::spawn(async move {
            let replies = rest.await;
            drop(permits);
            for ((ticket, dest, in_reply_to), reply) in tickets.into_iter().zip(replies) {
                let msg = Out::Reply {
                    ticket,
                    src: me.clone(),
                    dest,
                    in_reply_to,
                    reply,
                };
                if out.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }

    async fn dispatch(&mut self, msg: Message) {
        if self.node.is_none() {
            self.me = msg.dest.clone();
        }
        if let Some(reply_to) = msg.in_reply_to {
            return self.complete_call(msg, reply_to);
        }
        let Some(msg_id) = msg.msg_id else {
            crate::reject!("dropping a request without msg_id from {}", msg.src);
            return;
        };
        match msg.body {
            Body::Init { node_id, node_ids } => self.init(msg.src, msg_id, node_id, node_ids).await,
            Body::Request(req) => {
                self.client_request(msg.src, msg_id, req, msg.encoded_bytes_max)
                    .await
            }
            Body::Other { kind, raw, rpc } => {
                let body = (kind, raw, rpc, msg.encoded_bytes_max);
                self.other(msg.src, msg_id, body).await
            }
        }
    }

    fn complete_call(&self, msg: Message, reply_to: u64) {
        let Body::Other { raw, .. } = msg.body else {
            crate::reject!("unexpected reply type from {}", msg.src);
            return;
        };
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reply_to);
        match waiter {
            Some(tx) => drop(tx.send(raw)),
            None => tracing::debug!("late or unknown reply {reply_to} from {}", msg.src),
        }
    }

    async fn init(&mut self, src: String, msg_id: u64, node_id: String, node_ids: Vec<String>) {
        if let Some(node) = &self.node {
            // A repeated init is answered again if it is the same; any other would
            // be ignored while init_ok claimed it was taken: refuse it (definite).
            let reply = if node.name == node_id && self.node_ids == node_ids {
                Reply::InitOk
            } else {
                Reply::error(
                    ErrorCode::MalformedRequest,
                    format!(
                        "already initialized as {} with node_ids {:?}; this init \
                         (node_id {node_id:?}, node_ids {node_ids:?}) is refused",
                        node.name, self.node_ids
                    ),
                )
            };
            return self.answer_now(src, msg_id, reply).await;
        }
        let members: Vec<Peer> = node_ids
            .iter()
            .map(|n| Peer {
                name: n.clone(),
                addr: String::new(),
            })
            .collect();
        let transport = Arc::new(MaelstromTransport {
            out: self.out.clone(),
            me: node_id.clone(),
        });
        let reply = match Node::start(&node_id, members, transport, self.config.clone(), true).await
        {
            Ok(node) => {
                tracing::info!("node {node_id} started, members {node_ids:?}");
                if let Some(started) = self.started.take() {
                    let _ = started.send(node.clone());
                }
                self.node = Some(node);
                self.me = node_id.clone();
                self.members = node_ids.iter().cloned().collect();
                self.node_ids = node_ids;
                Reply::InitOk
            }
            Err(e) => {
                tracing::error!("init failed: {e}");
                Reply::error(ErrorCode::MalformedRequest, e.to_string())
            }
        };
        self.answer_now(src, msg_id, reply).await;
    }

    async fn client_request(
        &mut self,
        src: String,
        msg_id: u64,
        req: Request,
        encoded_bytes_max: usize,
    ) {
        if self.node.is_none() {
            let reply = Reply::error(ErrorCode::TemporarilyUnavailable, "not initialized yet");
            return self.answer_now(src, msg_id, reply).await;
        }
        let log_waiting = !matches!(req, Request::Read { .. });
        let fwd = Forwarded::from_request(req);
        if let Some(refused) = check_entry_bytes(&self.config, &fwd, Some(encoded_bytes_max)) {
            return self.answer_now(src, msg_id, refused).await;
        }
        self.start_and_answer(src, msg_id, fwd, log_waiting).await;
    }

    /// Serves one request: the ordered half now, the rest in a task.
    async fn start_and_answer(
        &mut self,
        src: String,
        msg_id: u64,
        fwd: Forwarded,
        log_waiting: bool,
    ) {
        let Some(node) = self.node.clone() else {
            return;
        };
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        let finish = match node.start_forwarded(fwd).await {
            Started::Ready(reply) => return self.answer_now(src, msg_id, reply).await,
            Started::Pending(finish) => finish,
        };
        // A request that may wait on the log holds back later replies (protocol.md
        // section 4b); a read forwarded to the leader does not.
        let ticket = self.ticket();
        if self
            .out
            .send(Out::Accept {
                ticket,
                log_waiting,
            })
            .await
            .is_err()
        {
            return;
        }
        let out = self.out.clone();
        let me = self.me.clone();
        tokio::spawn(async move {
            let reply = finish.await;
            drop(permit);
            let _ = out
                .send(Out::Reply {
                    ticket,
                    src: me,
                    dest: src,
                    in_reply_to: msg_id,
                    reply,
                })
                .await;
        });
    }

    async fn other(
        &mut self,
        src: String,
        msg_id: u64,
        (kind, raw, rpc, encoded_bytes_max): OtherBody,
    ) {
        let from_member = self.members.contains(&src);
        let node = match (&self.node, from_member) {
            (Some(node), true) => node.clone(),
            (None, _) => {
                let reply = Reply::error(ErrorCode::TemporarilyUnavailable, "not initialized yet");
                return self.answer_now(src, msg_id, reply).await;
            }
            (Some(_), false) => {
                let text = format!("unsupported request type {kind:?} from {src}");
                let code = if kind.starts_with("raft_") || kind == "forward" {
                    ErrorCode::MalformedRequest
                } else {
                    ErrorCode::NotSupported
                };
                return self.answer_now(src, msg_id, Reply::error(code, text)).await;
            }
        };
        let out = self.out.clone();
        let me = self.me.clone();
        let refused = (kind == "forward")
            .then(|| node.refuse_oversized_forward(&raw, rpc.as_deref(), encoded_bytes_max))
            .flatten();
        tokio::spawn(async move {
            let body = match refused {
                Some(body) => body,
                None => node.handle_peer(&kind, &raw, rpc.as_deref()).await,
            };
            let _ = out
                .send(Out::Peer {
                    src: me,
                    dest: src,
                    in_reply_to: Some(msg_id),
                    body,
                })
                .await;
        });
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// A reply known at once (no serving): still sequenced behind earlier writes.
    async fn answer_now(&mut self, dest: String, in_reply_to: u64, reply: Reply) {
        let ticket = self.ticket();
        let _ = self
            .out
            .send(Out::Accept {
                ticket,
                log_waiting: false,
            })
            .await;
        let _ = self
            .out
            .send(Out::Reply {
                ticket,
                src: self.me.clone(),
                dest,
                in_reply_to,
                reply,
            })
            .await;
    }
}

/// A node-to-node body with `type` first and the ids last.
#[derive(Serialize)]
struct PeerBody<'a> {
    #[serde(rename = "type")]
    kind: Value,
    #[serde(flatten)]
    rest: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_reply_to: Option<u64>,
    msg_id: u64,
}

/// The writer: sole owner of stdout and of the message counter.
struct Writer<W> {
    out: BufWriter<W>,
    next_msg_id: u64,
    sequencer: Sequencer<(String, String, u64, Reply)>,
    pending: Pending,
    calls_since_sweep: u32,
}

async fn write_loop<W: AsyncWrite + Unpin>(
    output: W,
    mut rx: mpsc::Receiver<Out>,
    pending: Pending,
) -> std::io::Result<()> {
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 16, output),
        next_msg_id: 0,
        sequencer: Sequencer::default(),
        pending,
        calls_since_sweep: 0,
    };
    let mut eof = false;
    while let Some(msg) = rx.recv().await {
        match msg {
            Out::Eof => eof = true,
            other => w.handle(other).await?,
        }
        if rx.is_empty() {
            w.out.flush().await?;
            if eof && w.sequencer.idle() {
                return Ok(());
            }
        }
    }
    w.out.flush().await
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn handle(&mut self, msg: Out) -> std::io::Result<()> {
        match msg {
            Out::Accept {
                ticket,
                log_waiting,
            } => self.sequencer.accept(ticket, log_waiting),
            Out::Reply {
                ticket,
                src,
                dest,
                in_reply_to,
                reply,
            } => {
                for (src, dest, in_reply_to, reply) in self
                    .sequencer
                    .answer(ticket, (src, dest, in_reply_to, reply))
                {
                    let msg_id = self.msg_id();
                    let line = encode(
                        &src,
                        &dest,
                        ReplyBody {
                            reply: &reply,
                            in_reply_to,
                            msg_id,
                        },
                    );
                    self.line(&line).await?;
                }
            }
            Out::Peer {
                src,
                dest,
                in_reply_to,
                body,
            } => self.peer(&src, &dest, in_reply_to, body).await?,
            Out::Call {
                src,
                dest,
                req,
                reply_to,
            } => {
                let id = self.msg_id();
                {
                    let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                    pending.insert(id, reply_to);
                    self.calls_since_sweep += 1;
                    if self.calls_since_sweep >= 1024 {
                        // Callers that timed out dropped their receivers: forget them.
                        pending.retain(|_, tx| !tx.is_closed());
                        self.calls_since_sweep = 0;
                    }
                }
                self.line(&req.line(&src, &dest, id)).await?;
            }
            Out::Eof => {}
        }
        Ok(())
    }

    fn msg_id(&mut self) -> u64 {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        id
    }

    async fn peer(
        &mut self,
        src: &str,
        dest: &str,
        in_reply_to: Option<u64>,
        mut body: network::Body,
    ) -> std::io::Result<()> {
        let kind = body.remove("type").unwrap_or(Value::Null);
        let msg_id = self.msg_id();
        let line = encode(
            src,
            dest,
            PeerBody {
                kind,
                rest: &body,
                in_reply_to,
                msg_id,
            },
        );
        self.line(&line).await
    }

    async fn line(&mut self, line: &str) -> std::io::Result<()> {
        self.out.write_all(line.as_bytes()).await?;
        self.out.write_all(b"\n").await
    }
}
