//! The connection driver: how one stream of lines in becomes calls on the
//! [`Node`] and one stream of lines out, for both transports (Maelstrom's
//! stdin/stdout and each TCP connection).
//!
//! ```text
//! LineSource -> reader --ticket--> Node::start_batch / start_forwarded --spawn--> reply
//!                 |                                                             |
//!                 +-- Hooks: init, peer RPCs, hellos, status, membership -------+
//!                                                                               v
//!                                           Out (bounded) -> writer (Sequencer, msg_ids) -> sink
//! ```
//!
//! The *reader* ([`Driver::run`]) takes lines in arrival order: a line over its
//! limit or not UTF-8 gets error 12, a client request is checked
//! ([`check_entry_bytes`]), given a ticket and started with the node, so writes
//! enter the log in the order they arrived; proposals that arrive back to back
//! while this node leads go to Raft as one batch ([`Node::start_batch`], at most
//! [`BATCH_MAX`] and [`Config::batch_bytes_max`]). What waits (the log, the
//! leader) runs in spawned tasks. Everything else (init, a reply to one of our
//! RPCs, `raft_*`, `forward`, hellos, `status`, membership) goes to the
//! transport's [`Hooks`]. The *writer* ([`write_loop`]) is the only thing that
//! writes the output: it numbers every message from one counter, holds client
//! replies back per the order rule (`Sequencer`, `node/sequencer.rs`), and registers our own RPCs
//! written on the same output ([`Out::Call`], Maelstrom mode).
//!
//! What differs between transports is a parameter, not a copy: the line source
//! (timeouts and connection budgets are TCP's [`LineSource`]), the [`Hooks`], the
//! in-flight bounds ([`Permits`]: TCP adds one per connection), and the
//! writer's [`Sink`] (its counter: Maelstrom's own, or the TCP node's shared
//! one; a write deadline that gives up a connection whose peer stops reading;
//! whether our RPCs share the output).
//!
//! Owns: reading order, tickets, batches, permits, the writer. May not touch:
//! sockets, stdin/stdout or envelopes' transport rules (the transports', through
//! the traits here), nor the node's internals (only its public API).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::budget::{ByteBudget, BytesHeld, RawReply};
use super::sequencer::Sequencer;
use super::{Forwarded, Node, Started, check_entry_bytes};
use crate::config::{BATCH_MAX, Config, IN_FLIGHT_OVERHEAD_BYTES};
use crate::protocol::framing::{Line, LineReader, encode_raw};
use crate::protocol::{
    Body, ErrorCode, Message, ParseError, Reply, ReplyBody, Request, Skeleton, encode, parse_line,
};
use crate::raft::network::{self, RpcRequest};
use crate::raft::pending::{PendingCalls, ReplyTx};
use crate::state::Op;

/// Where a reply goes: the envelope's `src` and `dest` and the request answered.
#[derive(Debug, Clone)]
pub struct To {
    /// This node's name as the sender addressed it.
    pub src: Arc<str>,
    /// The sender of the request.
    pub dest: String,
    /// The request's `msg_id`.
    pub in_reply_to: u64,
}

/// What the writer is asked to do.
pub enum Out {
    /// A client request arrived (its ticket), and whether it waits on the log.
    Accept {
        /// Its ticket, in arrival order.
        ticket: u64,
        /// Whether it may wait on the log (it holds back later replies).
        log_waiting: bool,
    },
    /// The reply to a ticketed client request.
    Reply {
        /// The request's ticket.
        ticket: u64,
        /// Its addressing.
        to: To,
        /// The reply.
        reply: Reply,
        /// Its place among the replies not yet written ([`Node::hold_reply`])
        /// if it is large, given back once its line is written.
        held: Option<BytesHeld>,
    },
    /// An unsequenced reply (to a peer's RPC, a hello, `status`, membership).
    Raw {
        /// Its addressing.
        to: To,
        /// The body (`type` first once written), and its bytes among the
        /// replies not yet written if it carries a large reply.
        body: RawReply,
    },
    /// One of our RPCs written on this output: its `msg_id` is registered in the
    /// sink's [`Sink::calls`] before it is written, so the reply finds `reply`.
    Call {
        /// This node's name.
        src: Arc<str>,
        /// The peer's name.
        dest: String,
        /// The request (the writer assigns its `msg_id`).
        req: RpcRequest,
        /// The caller.
        reply: ReplyTx,
    },
    /// The input ended but something else holds the queue open (Maelstrom's
    /// transport, for the node's life): end once every accepted request is answered.
    Eof,
}

/// A body of another type than a client request, for [`Hooks::other`].
pub struct Other {
    /// The sender.
    pub src: String,
    /// The addressee.
    pub dest: String,
    /// The request's `msg_id`.
    pub msg_id: u64,
    /// Its `type`.
    pub kind: String,
    /// Its fields (without `rpc`).
    pub raw: Map<String, Value>,
    /// Its `rpc` field, kept as text.
    pub rpc: Option<Box<serde_json::value::RawValue>>,
    /// [`Message::encoded_bytes_max`].
    pub encoded_bytes_max: usize,
}

/// Where lines come from.
pub trait LineSource: Send {
    /// The next line ([`LineReader::read_line_with`]: `extend` may allow a line
    /// a larger limit by its addressing); `None` when the input ends or the
    /// transport closes it.
    fn next_line(
        &mut self,
        extend: impl Fn(&Skeleton) -> Option<usize> + Send,
    ) -> impl Future<Output = io::Result<Option<Line>>> + Send;

    /// Whether a whole line is already buffered: a batch may wait for it.
    fn line_ready(&self) -> bool;
}

impl<R: AsyncRead + Unpin + Send> LineSource for LineReader<BufReader<R>> {
    async fn next_line(
        &mut self,
        extend: impl Fn(&Skeleton) -> Option<usize> + Send,
    ) -> io::Result<Option<Line>> {
        self.read_line_with(extend).await
    }

    fn line_ready(&self) -> bool {
        self.get_ref().buffer().contains(&b'\n')
    }
}

/// What a transport decides for the messages the driver does not serve itself.
pub trait Hooks: Send + Sync {
    /// A larger limit for the line being read, judging by its addressing so far
    /// (a peer's line), if it gets one.
    fn line_bytes_max(&self, sk: &Skeleton) -> Option<usize>;

    /// Why `msg` must not be served here (it is addressed to another node), if so:
    /// a request then gets error 12 with this text, a reply is dropped.
    fn misaddressed(&self, d: &Driver, msg: &Message) -> Option<String>;

    /// A reply to one of our RPCs (`in_reply_to`) from `src`: its body, or why it
    /// could not be read.
    fn reply(&mut self, src: &str, in_reply_to: u64, body: Result<network::Body, String>);

    /// Maelstrom's `init`.
    fn init(
        &mut self,
        d: &mut Driver,
        src: String,
        msg_id: u64,
        node_id: String,
        node_ids: Vec<String>,
    ) -> impl Future<Output = ()> + Send;

    /// Any body that is not a client request.
    fn other(&mut self, d: &mut Driver, msg: Other) -> impl Future<Output = ()> + Send;
}

/// The bounds on requests in flight; the reader waits past them.
#[derive(Clone)]
pub struct Permits {
    /// Client requests in flight on the whole node
    /// ([`Config::requests_in_flight_max`]), shared by every connection.
    pub node: Arc<Semaphore>,
    /// Its size.
    pub node_max: usize,
    /// Bytes of client requests in flight on the whole node
    /// ([`Config::requests_in_flight_bytes_max`]), shared by every connection.
    pub bytes: Arc<ByteBudget>,
    /// Requests of any kind in flight on this connection, and its size (TCP's
    /// `requests_per_connection_max`); none in Maelstrom mode.
    pub connection: Option<(Arc<Semaphore>, usize)>,
}

/// Places held in [`Permits`] until a request is answered.
pub struct Permit {
    connection: Option<OwnedSemaphorePermit>,
    node: Option<OwnedSemaphorePermit>,
    bytes: Option<BytesHeld>,
}

impl Permit {
    /// Holds `other`'s places too (a batch's, given back when it is answered).
    fn merge(&mut self, other: Permit) {
        fn join<T>(mine: &mut Option<T>, theirs: Option<T>, merge: impl FnOnce(&mut T, T)) {
            match (mine.as_mut(), theirs) {
                (Some(m), Some(t)) => merge(m, t),
                (None, t) => *mine = t,
                (Some(_), None) => {}
            }
        }
        join(&mut self.connection, other.connection, |m, t| m.merge(t));
        join(&mut self.node, other.node, |m, t| m.merge(t));
        join(&mut self.bytes, other.bytes, |m, t| m.merge(t));
    }
}

impl Permits {
    /// Permits for Maelstrom mode: the node's bound only.
    pub fn node_only(config: &Config) -> Permits {
        Permits {
            node: Arc::new(Semaphore::new(config.requests_in_flight_max)),
            node_max: config.requests_in_flight_max,
            bytes: ByteBudget::for_node(config),
            connection: None,
        }
    }

    /// Most proposals one batch may take: it holds a place per proposal, so it
    /// may not ask more than a bound has, or it would wait for ever.
    fn batch_max(&self) -> usize {
        let connection = self.connection.as_ref().map_or(usize::MAX, |(_, n)| *n);
        BATCH_MAX.min(self.node_max).min(connection).max(1)
    }

    /// A place for a client request (on the connection and the node) whose line
    /// has `line_bytes`, waiting for it.
    async fn client(&self, line_bytes: usize) -> Option<Permit> {
        let connection = match &self.connection {
            Some((sem, _)) => Some(sem.clone().acquire_owned().await.ok()?),
            None => None,
        };
        let node = self.node.clone().acquire_owned().await.ok()?;
        let bytes = self.bytes.take(Self::charge(line_bytes)).await;
        Some(Permit {
            connection,
            node: Some(node),
            bytes: Some(bytes),
        })
    }

    /// [`Permits::client`] if every bound has room now; never waits.
    fn client_now(&self, line_bytes: usize) -> Option<Permit> {
        let connection = match &self.connection {
            Some((sem, _)) => Some(sem.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let node = self.node.clone().try_acquire_owned().ok()?;
        let bytes = self.bytes.take_now(Self::charge(line_bytes))?;
        Some(Permit {
            connection,
            node: Some(node),
            bytes: Some(bytes),
        })
    }

    /// What a request counts against the byte bound while in flight.
    fn charge(line_bytes: usize) -> usize {
        line_bytes.saturating_add(IN_FLIGHT_OVERHEAD_BYTES)
    }

    /// A place for a request that is not a client's (status, a peer RPC): on the
    /// connection only.
    pub async fn other(&self) -> Option<Permit> {
        let connection = match &self.connection {
            Some((sem, _)) => Some(sem.clone().acquire_owned().await.ok()?),
            None => None,
        };
        Some(Permit {
            connection,
            node: None,
            bytes: None,
        })
    }
}

/// A proposal read, waiting in the current batch: sender, `msg_id`, op, and
/// its places in flight (taken as it joined the batch).
type Batched = (String, u64, Op, Permit);

/// The reader's state.
pub struct Driver {
    /// The node served; `None` until Maelstrom's `init` starts it.
    node: Option<Arc<Node>>,
    /// This node's name, the `src` of its replies (before it has one: the name
    /// the sender addressed).
    me: Arc<str>,
    /// The node's limits.
    config: Config,
    /// To the writer.
    out: mpsc::Sender<Out>,
    /// Last ticket given.
    next_ticket: u64,
    /// Proposals read back to back, not yet handed to Raft.
    batch: Vec<Batched>,
    /// The bytes of their lines (bounded by `batch_bytes_max`).
    batch_bytes: usize,
    /// The in-flight bounds.
    permits: Permits,
}

impl Driver {
    /// A driver for `node` (or none yet) that writes to `out`.
    pub fn new(
        node: Option<Arc<Node>>,
        me: &str,
        config: Config,
        out: mpsc::Sender<Out>,
        permits: Permits,
    ) -> Driver {
        Driver {
            node,
            me: me.into(),
            config,
            out,
            next_ticket: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            permits,
        }
    }

    /// The node, once there is one.
    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    /// Serves `node`, named `name`, from now on (Maelstrom's `init`).
    pub fn set_node(&mut self, node: Arc<Node>, name: &str) {
        self.node = Some(node);
        self.me = name.into();
    }

    /// This node's name as replies carry it.
    pub fn me(&self) -> &Arc<str> {
        &self.me
    }

    /// The writer's queue.
    pub fn out(&self) -> &mpsc::Sender<Out> {
        &self.out
    }

    /// The in-flight bounds.
    pub fn permits(&self) -> &Permits {
        &self.permits
    }

    fn to(&self, dest: String, in_reply_to: u64) -> To {
        To {
            src: self.me.clone(),
            dest,
            in_reply_to,
        }
    }

    /// Reads `source` until it ends (the batch in progress is submitted first).
    pub async fn run<S: LineSource, H: Hooks>(
        &mut self,
        source: &mut S,
        hooks: &mut H,
    ) -> io::Result<()> {
        loop {
            let read = {
                let hooks = &*hooks;
                source.next_line(|sk| hooks.line_bytes_max(sk)).await
            };
            let line = match read {
                Ok(Some(Line::Full(line))) => line,
                Ok(Some(bad)) => {
                    self.flush_batch().await;
                    self.refuse_line(bad, hooks).await;
                    continue;
                }
                Ok(None) => {
                    self.flush_batch().await;
                    return Ok(());
                }
                Err(e) => {
                    self.flush_batch().await;
                    return Err(e);
                }
            };
            match parse_line(&line) {
                Ok(msg) => {
                    if let Some(text) = hooks.misaddressed(self, &msg) {
                        self.flush_batch().await;
                        self.refuse_misaddressed(msg, text).await;
                    } else if (!self.batch.is_empty() || source.line_ready())
                        && self.batchable(&msg)
                    {
                        // (A proposal with nothing behind it and no batch to
                        // join is served alone at once, below.)
                        self.add_to_batch(msg, line.len()).await;
                    } else {
                        self.flush_batch().await;
                        self.dispatch(msg, hooks).await;
                    }
                }
                Err(ParseError::Envelope(e)) => {
                    self.flush_batch().await;
                    crate::reject!("dropping a line that is not a message ({e}): {line}");
                }
                Err(ParseError::Body {
                    src,
                    dest,
                    msg_id,
                    in_reply_to,
                    text,
                }) => {
                    self.flush_batch().await;
                    crate::reject!("malformed message from {src}: {text}");
                    if let Some(reply_to) = in_reply_to {
                        hooks.reply(&src, reply_to, Err(text));
                    } else if let Some(id) = msg_id {
                        self.addressed_as(&dest);
                        let reply = Reply::error(ErrorCode::MalformedRequest, text);
                        self.answer_now(src, id, reply).await;
                    }
                }
            }
            // Proposals that arrived back to back go to Raft together; a batch ends
            // when no further complete line is already buffered, or at its bounds.
            if self.batch.len() >= self.permits.batch_max()
                || self.batch_bytes >= self.config.batch_bytes_max
                || !source.line_ready()
            {
                self.flush_batch().await;
            }
        }
    }

    /// Before the node has a name, it answers as the name it was addressed by.
    fn addressed_as(&mut self, dest: &str) {
        if self.node.is_none() && *self.me != *dest {
            self.me = dest.into();
        }
    }

    /// A line over its limit (the error names the limit) or not valid UTF-8
    /// (never converted lossily, which could make two keys or two client_ids
    /// one), or one the node had no room to receive: error 12 (11 for that
    /// last) if its sender and `msg_id` could be read (nothing was proposed),
    /// its caller told if it was a reply, else a truncated log line.
    async fn refuse_line<H: Hooks>(&mut self, line: Line, hooks: &mut H) {
        let mut code = ErrorCode::MalformedRequest;
        let (sk, bytes, prefix, text) = match line {
            Line::Full(_) => return,
            Line::TooLong(long) => {
                let text = if let Some(pool) = long.crowded {
                    // Definite: nothing of it was kept, let alone proposed.
                    code = ErrorCode::TemporarilyUnavailable;
                    format!(
                        "no room for a line of {} bytes: the node's buffers for lines \
                         being received are full (line_buffers_bytes_max {pool} bytes, \
                         ONCEKV_LINE_BUFFERS_BYTES_MAX); dropped unread, not proposed; retry",
                        long.bytes
                    )
                } else if long.limit > self.config.request_bytes_max {
                    format!(
                        "line of {} bytes exceeds the peer line limit of {} bytes \
                         (peer_line_bytes_max, ONCEKV_PEER_LINE_BYTES_MAX)",
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
            (src, _, Some(reply_to)) => {
                hooks.reply(src.as_deref().unwrap_or("?"), reply_to, Err(text));
            }
            (Some(src), Some(id), None) => {
                if let Some(dest) = sk.dest {
                    self.addressed_as(&dest);
                }
                let reply = Reply::error(code, text);
                self.answer_now(src, id, reply).await;
            }
            _ => {}
        }
    }

    /// A message for another node: not served. A request gets error 12, a reply
    /// is dropped; both are logged.
    async fn refuse_misaddressed(&mut self, msg: Message, text: String) {
        crate::reject!("{text} (from {})", msg.src);
        if let (Some(id), None) = (msg.msg_id, msg.in_reply_to) {
            self.answer_now(msg.src, id, Reply::error(ErrorCode::MalformedRequest, text))
                .await;
        }
    }

    /// Whether this is a client proposal this node can add to the current batch
    /// (it leads).
    fn batchable(&self, msg: &Message) -> bool {
        // The message first: every peer RPC passes here, and asking who leads
        // reads openraft's metrics.
        msg.in_reply_to.is_none()
            && msg.msg_id.is_some()
            && matches!(&msg.body, Body::Request(r) if !matches!(r, Request::Read { .. }))
            && self.node.as_ref().is_some_and(|n| n.leader() == Some(n.id))
    }

    /// Adds a proposal (see [`Driver::batchable`]) to the batch, or refuses it if
    /// its entry would be too large.
    async fn add_to_batch(&mut self, msg: Message, line_bytes: usize) {
        let (Body::Request(req), Some(id)) = (msg.body, msg.msg_id) else {
            return;
        };
        let fwd = Forwarded::from_request(req);
        let bound = Some(msg.encoded_bytes_max);
        if let Some(reply) = check_entry_bytes(&self.config, &fwd, bound) {
            self.flush_batch().await;
            return self.answer_now(msg.src, id, reply).await;
        }
        let Forwarded::Propose(op) = fwd else {
            return;
        };
        if self.batch_bytes + line_bytes > self.config.batch_bytes_max {
            self.flush_batch().await;
        }
        // A request holds its place in flight from the moment it joins the
        // batch, so what waits in batches counts against the bounds too. Where
        // there is no room, the batch is submitted before waiting: waiting while
        // holding places could wait for ever (every place held by batches each
        // waiting for one more), and what is submitted gives them back.
        let permit = match self.permits.client_now(line_bytes) {
            Some(permit) => permit,
            None => {
                self.flush_batch().await;
                let Some(permit) = self.permits.client(line_bytes).await else {
                    return;
                };
                permit
            }
        };
        self.batch_bytes += line_bytes;
        self.batch.push((msg.src, id, op, permit));
    }

    /// Submits the current batch: one proposal alone as a single request; more as
    /// one batch, or each alone if leadership moved meanwhile.
    async fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.batch_bytes = 0;
        if self.batch.len() == 1 {
            // (Popped, not taken: the batch keeps its buffer for the next one.)
            if let Some((src, msg_id, op, permit)) = self.batch.pop() {
                self.start_holding(permit, src, msg_id, Forwarded::Propose(op), true)
                    .await;
            }
            return;
        }
        let items = std::mem::take(&mut self.batch);
        let Some(node) = self.node.clone() else {
            return;
        };
        let mut meta = Vec::with_capacity(items.len());
        let mut ops = Vec::with_capacity(items.len());
        let mut permits = Vec::with_capacity(items.len());
        for (src, msg_id, op, permit) in items {
            meta.push((src, msg_id));
            ops.push(op);
            permits.push(permit);
        }
        let started = match node.start_batch(ops).await {
            Ok(started) => started,
            Err(ops) => {
                for (((src, msg_id), op), permit) in meta.into_iter().zip(ops).zip(permits) {
                    self.start_holding(permit, src, msg_id, Forwarded::Propose(op), true)
                        .await;
                }
                return;
            }
        };
        let mut permits = permits.into_iter();
        let Some(mut permit) = permits.next() else {
            return;
        };
        permits.for_each(|p| permit.merge(p));
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
                    tickets.push((ticket, self.to(src, msg_id)));
                }
            }
        }
        let out = self.out.clone();
        let rest = started.rest;
        tokio::spawn(async move {
            let replies = rest.await;
            drop(permit);
            for ((ticket, to), reply) in tickets.into_iter().zip(replies) {
                // (Replies to proposals are small: none is held.)
                let reply = Out::Reply {
                    ticket,
                    to,
                    reply,
                    held: None,
                };
                if out.send(reply).await.is_err() {
                    return;
                }
            }
        });
    }

    async fn dispatch<H: Hooks>(&mut self, msg: Message, hooks: &mut H) {
        self.addressed_as(&msg.dest);
        if let (Some(reply_to), Body::Request(_), Some(id)) =
            (msg.in_reply_to, &msg.body, msg.msg_id)
        {
            // A client request is not a reply to anything of ours: answered,
            // not routed to a call that does not exist.
            let text = "a request must not carry in_reply_to".to_string();
            crate::reject!("{text} (from {}, in_reply_to {reply_to})", msg.src);
            let reply = Reply::error(ErrorCode::MalformedRequest, text);
            return self.answer_now(msg.src, id, reply).await;
        }
        if let Some(reply_to) = msg.in_reply_to {
            let body = match msg.body {
                Body::Other { raw, .. } => Ok(raw),
                _ => Err("a reply of an unexpected type".to_string()),
            };
            return hooks.reply(&msg.src, reply_to, body);
        }
        let Some(msg_id) = msg.msg_id else {
            crate::reject!("dropping a request without msg_id from {}", msg.src);
            return;
        };
        match msg.body {
            Body::Init { node_id, node_ids } => {
                hooks.init(self, msg.src, msg_id, node_id, node_ids).await
            }
            Body::Request(req) => {
                self.client_request(msg.src, msg_id, req, msg.encoded_bytes_max)
                    .await
            }
            Body::Other { kind, raw, rpc } => {
                let other = Other {
                    src: msg.src,
                    dest: msg.dest,
                    msg_id,
                    kind,
                    raw,
                    rpc,
                    encoded_bytes_max: msg.encoded_bytes_max,
                };
                hooks.other(self, other).await
            }
        }
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
        (self.start_and_answer(src, msg_id, fwd, log_waiting, encoded_bytes_max)).await;
    }

    /// Serves one request: its place in flight, then the ordered half now, the
    /// rest in a task.
    async fn start_and_answer(
        &mut self,
        src: String,
        msg_id: u64,
        fwd: Forwarded,
        log_waiting: bool,
        line_bytes: usize,
    ) {
        let Some(permit) = self.permits.client(line_bytes).await else {
            return;
        };
        self.start_holding(permit, src, msg_id, fwd, log_waiting)
            .await;
    }

    /// [`Driver::start_and_answer`] for a request that holds its place.
    async fn start_holding(
        &mut self,
        permit: Permit,
        src: String,
        msg_id: u64,
        fwd: Forwarded,
        log_waiting: bool,
    ) {
        let Some(node) = self.node.clone() else {
            return;
        };
        let finish = match node.start_forwarded(fwd).await {
            Started::Ready(reply) => return self.answer_now(src, msg_id, reply).await,
            Started::Pending(finish) => finish,
        };
        // A request that may wait on the log holds back later replies
        // (`docs/protocol.md`, "Reply order"); a read forwarded to the leader does not.
        let ticket = self.ticket();
        let accept = Out::Accept {
            ticket,
            log_waiting,
        };
        if self.out.send(accept).await.is_err() {
            return;
        }
        let out = self.out.clone();
        let to = self.to(src, msg_id);
        tokio::spawn(async move {
            let reply = finish.await;
            drop(permit);
            let (reply, held) = node.hold_reply(reply);
            let reply = Out::Reply {
                ticket,
                to,
                reply,
                held,
            };
            let _ = out.send(reply).await;
        });
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// A reply known at once (no serving): still sequenced behind earlier writes.
    pub async fn answer_now(&mut self, dest: String, in_reply_to: u64, reply: Reply) {
        let ticket = self.ticket();
        let accept = Out::Accept {
            ticket,
            log_waiting: false,
        };
        if self.out.send(accept).await.is_ok() {
            let to = self.to(dest, in_reply_to);
            let (reply, held) = match &self.node {
                Some(node) => node.hold_reply(reply),
                None => (reply, None),
            };
            let reply = Out::Reply {
                ticket,
                to,
                reply,
                held,
            };
            let _ = self.out.send(reply).await;
        }
    }

    /// An unsequenced reply known at once (a hello's, `status`, a refusal).
    pub async fn answer_raw(&self, dest: String, in_reply_to: u64, body: network::Body) {
        let to = self.to(dest, in_reply_to);
        let body = body.into();
        let _ = self.out.send(Out::Raw { to, body }).await;
    }

    /// An unsequenced reply that `work` yields, in a task; `permit` is held until
    /// it is done.
    pub fn answer_raw_later<R: Into<RawReply>>(
        &self,
        dest: String,
        in_reply_to: u64,
        permit: Option<Permit>,
        work: impl Future<Output = R> + Send + 'static,
    ) {
        let to = self.to(dest, in_reply_to);
        let out = self.out.clone();
        tokio::spawn(async move {
            let body = work.await.into();
            drop(permit);
            let _ = out.send(Out::Raw { to, body }).await;
        });
    }
}

/// When a sink last wrote, for a reader's idle timeout.
#[derive(Clone)]
pub struct Written {
    /// The start of the clock.
    pub base: Instant,
    /// Milliseconds after `base` of the last write.
    pub ms: Arc<AtomicU64>,
}

/// Where the writer's lines go, and its rules.
pub struct Sink<W> {
    /// The output.
    pub output: W,
    /// The counter numbering every message written (its `msg_id`): Maelstrom
    /// mode's own, from 0; in TCP mode the node's, shared by its connections and
    /// peer links.
    pub msg_ids: Arc<AtomicU64>,
    /// Where [`Out::Call`]s are registered (when our RPCs share this output).
    pub calls: Option<Arc<PendingCalls>>,
    /// Longest a write may block: a connection whose peer stops reading its
    /// replies is closed, not its writer (and queue) held for ever.
    pub write_timeout: Option<Duration>,
    /// Told the time of each write.
    pub written: Option<Written>,
}

/// The writer: sole owner of the output. Ends when every sender is gone, or
/// after [`Out::Eof`] once every accepted request is answered; or at a write
/// error or a write that blocked past the deadline.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    sink: Sink<W>,
    mut rx: mpsc::Receiver<Out>,
) -> io::Result<()> {
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 16, sink.output),
        msg_ids: sink.msg_ids,
        calls: sink.calls,
        sequencer: Sequencer::default(),
    };
    let deadline = sink.write_timeout;
    let mut eof = false;
    while let Some(msg) = rx.recv().await {
        let write = async {
            match msg {
                Out::Eof => eof = true,
                msg => w.handle(msg).await?,
            }
            if rx.is_empty() {
                w.out.flush().await?;
            }
            io::Result::Ok(())
        };
        match deadline {
            None => write.await?,
            Some(limit) => match tokio::time::timeout(limit, write).await {
                Ok(r) => r?,
                Err(_) => {
                    crate::reject!("closing a connection whose peer read no reply in {limit:?}");
                    return Err(io::ErrorKind::TimedOut.into());
                }
            },
        }
        if let Some(written) = &sink.written {
            let ms = u64::try_from(written.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            written.ms.store(ms, Ordering::Relaxed);
        }
        if eof && rx.is_empty() && w.sequencer.idle() {
            return Ok(());
        }
    }
    match deadline {
        None => w.out.flush().await,
        Some(limit) => tokio::time::timeout(limit, w.out.flush())
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
    }
}

/// The writer's state.
struct Writer<W> {
    out: BufWriter<W>,
    msg_ids: Arc<AtomicU64>,
    calls: Option<Arc<PendingCalls>>,
    /// Replies held back, each with its place among the replies not yet
    /// written ([`Node::hold_reply`]).
    sequencer: Sequencer<(To, Reply, Option<BytesHeld>)>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn handle(&mut self, msg: Out) -> io::Result<()> {
        match msg {
            Out::Accept {
                ticket,
                log_waiting,
            } => self.sequencer.accept(ticket, log_waiting),
            Out::Reply {
                ticket,
                to,
                reply,
                held,
            } => {
                for (to, reply, held) in self.sequencer.answer(ticket, (to, reply, held)) {
                    let body = ReplyBody {
                        reply: &reply,
                        in_reply_to: to.in_reply_to,
                        msg_id: self.msg_id(),
                    };
                    self.line(&encode(&to.src, &to.dest, body)).await?;
                    // Written (into the buffer, or the socket for a line this
                    // large): its bytes are given back.
                    drop(held);
                }
            }
            Out::Raw { to, body } => {
                let id = self.msg_id();
                let RawReply { body, held } = body;
                let line = encode_raw(&to.src, &to.dest, body, Some(to.in_reply_to), id);
                self.line(&line).await?;
                drop(held);
            }
            Out::Call {
                src,
                dest,
                req,
                reply,
            } => {
                let id = self.msg_id();
                match &self.calls {
                    Some(calls) => calls.insert(id, reply),
                    // Nothing would route its reply: its caller times out.
                    None => return Ok(()),
                }
                self.line(&req.line(&src, &dest, id)).await?;
            }
            Out::Eof => {}
        }
        Ok(())
    }

    fn msg_id(&mut self) -> u64 {
        self.msg_ids.fetch_add(1, Ordering::Relaxed)
    }

    async fn line(&mut self, line: &str) -> io::Result<()> {
        self.out.write_all(line.as_bytes()).await?;
        self.out.write_all(b"\n").await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::node::alone;
    use crate::raft::log_store::LogFailure;

    /// Lines that arrived back to back (each already buffered behind the one
    /// before), noting the bytes in flight each time the driver reads on.
    struct BackToBack {
        lines: VecDeque<String>,
        budget: Arc<ByteBudget>,
        in_flight_seen: Vec<usize>,
    }

    impl LineSource for BackToBack {
        async fn next_line(
            &mut self,
            _extend: impl Fn(&Skeleton) -> Option<usize> + Send,
        ) -> io::Result<Option<Line>> {
            self.in_flight_seen.push(self.budget.used());
            Ok(self.lines.pop_front().map(Line::Full))
        }

        fn line_ready(&self) -> bool {
            !self.lines.is_empty()
        }
    }

    /// Client requests only: nothing else arrives.
    struct ClientsOnly;

    impl Hooks for ClientsOnly {
        fn line_bytes_max(&self, _sk: &Skeleton) -> Option<usize> {
            None
        }

        fn misaddressed(&self, _d: &Driver, _msg: &Message) -> Option<String> {
            None
        }

        fn reply(&mut self, src: &str, _in_reply_to: u64, _body: Result<network::Body, String>) {
            panic!("a reply from {src} to a call nobody made");
        }

        async fn init(&mut self, _: &mut Driver, src: String, _: u64, _: String, _: Vec<String>) {
            panic!("an init from {src}");
        }

        async fn other(&mut self, _d: &mut Driver, msg: Other) {
            panic!("a {} from {}", msg.kind, msg.src);
        }
    }

    /// `n` writes that arrive back to back on one connection to a node that
    /// leads alone, with `budget` as its byte bound: the bytes in flight seen
    /// before each line is read, and the replies.
    async fn serve_back_to_back(n: u64, budget: Arc<ByteBudget>) -> (Vec<usize>, Vec<Reply>) {
        let config = Config::default();
        let node = alone::start(config.clone(), LogFailure::default()).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.leader() != Some(node.id) {
            assert!(Instant::now() < deadline, "the lone node never led");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (out, mut answers) = mpsc::channel(1024);
        let permits = Permits {
            bytes: budget.clone(),
            ..Permits::node_only(&config)
        };
        let mut driver = Driver::new(Some(node.clone()), "n1", config, out, permits);
        let lines = (1..=n)
            .map(|i| {
                format!(
                    r#"{{"src":"c1","dest":"n1","body":{{"type":"write","msg_id":{i},"key":{i},"value":{i}}}}}"#
                )
            })
            .collect();
        let mut source = BackToBack {
            lines,
            budget,
            in_flight_seen: Vec::new(),
        };
        let replies = tokio::spawn(async move {
            let mut replies = Vec::new();
            while let Some(o) = answers.recv().await {
                if let Out::Reply { reply, .. } = o {
                    replies.push(reply);
                }
            }
            replies
        });
        driver
            .run(&mut source, &mut ClientsOnly)
            .await
            .expect("runs");
        drop(driver);
        let replies = tokio::time::timeout(Duration::from_secs(30), replies)
            .await
            .expect("every request answered")
            .expect("the collector");
        node.shutdown().await;
        (source.in_flight_seen, replies)
    }

    /// A request takes its place in flight as it joins a batch, not when the
    /// batch is submitted: what waits in a batch counts against the bounds.
    #[tokio::test]
    async fn a_batch_holds_its_places_from_its_first_request() {
        let budget = ByteBudget::new(Config::default().requests_in_flight_bytes_max);
        let (seen, replies) = serve_back_to_back(10, budget).await;
        assert_eq!(replies, vec![Reply::WriteOk; 10]);
        // Before line k + 1 is read, k requests wait in the batch.
        for (k, used) in seen.iter().enumerate().take(10) {
            assert!(
                *used >= k * IN_FLIGHT_OVERHEAD_BYTES,
                "{k} requests in the batch but {used} bytes in flight: {seen:?}"
            );
        }
    }

    /// A batch that finds the byte bound full is submitted before its reader
    /// waits (waiting while holding places could wait for ever): every request
    /// is served, and the bound is never passed.
    #[tokio::test]
    async fn a_batch_that_finds_no_room_is_submitted_and_the_reader_waits() {
        let line =
            r#"{"src":"c1","dest":"n1","body":{"type":"write","msg_id":1,"key":1,"value":1}}"#;
        let max = 3 * Permits::charge(line.len() + 2);
        let budget = ByteBudget::new(max);
        let (seen, replies) = serve_back_to_back(20, budget).await;
        assert_eq!(replies, vec![Reply::WriteOk; 20]);
        assert!(seen.iter().all(|&used| used <= max), "{seen:?} over {max}");
        assert!(seen.iter().any(|&used| used > max / 2), "{seen:?}");
    }

    /// The default bounds hold a whole batch; smaller ones cut it (a batch holds
    /// a place per proposal, and asking for more than exist would wait for ever).
    #[test]
    fn a_batch_fits_the_in_flight_bounds() {
        let config = Config::default();
        let tcp = crate::tcp::TcpConfig::default();
        assert!(config.requests_in_flight_max >= BATCH_MAX);
        assert!(tcp.requests_per_connection_max >= BATCH_MAX);
        let mut permits = Permits::node_only(&config);
        assert_eq!(permits.batch_max(), BATCH_MAX);
        permits.connection = Some((Arc::new(Semaphore::new(3)), 3));
        assert_eq!(permits.batch_max(), 3);
        let small = Config {
            requests_in_flight_max: 2,
            ..Config::default()
        };
        assert_eq!(Permits::node_only(&small).batch_max(), 2);
    }
}
