//! Maelstrom node mode: the protocol on stdin/stdout, served by the one
//! connection driver ([`crate::node::driver`]).
//!
//! ```text
//! stdin -> Driver::run --start_batch/start_forwarded, Hooks--> Out --> write_loop -> stdout
//!            |  (init, peer RPCs: here)                                 ^
//!            +-- replies to our RPCs (in_reply_to) --> PendingCalls <---+ (registered on write)
//! ```
//!
//! Owns what is Maelstrom's: `init` (it starts the node and names it; before it
//! a node answers as the name it was addressed by), the envelope rules (a
//! message for another node is refused; lines from members may be a peer's
//! length), answering peers' RPCs, and `MaelstromTransport`: our RPCs leave on
//! the same stdout as every reply (one counter numbers them all, from 0) and
//! their replies arrive on stdin among the requests. May not touch: reading
//! order, tickets, batching, permits or the writer (the driver's), nor the
//! node's internals.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::node::driver::{Driver, Hooks, Other, Out, Permits, Sink, write_loop};
use crate::node::{Node, StartError, WallClock};
use crate::protocol::framing::LineReader;
use crate::protocol::{ErrorCode, Message, Reply, Skeleton};
use crate::raft::log_store::MemLogStore;
use crate::raft::network::{self, CallError, Transport};
use crate::raft::pending::PendingCalls;
use crate::raft::sm_store::StateMachineStore;
use crate::raft::{Peer, Storage, TypeConfig};
use openraft::storage::RaftLogStorage;

/// [`Transport`] over Maelstrom messages.
struct MaelstromTransport {
    out: mpsc::Sender<Out>,
    /// This node's name, the `src` of its RPCs.
    me: Arc<str>,
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
            let call = Out::Call {
                src,
                dest: dest.clone(),
                req,
                reply: tx,
            };
            if out.send(call).await.is_err() {
                return Err(CallError::Unreachable {
                    peer: dest,
                    why: "node is shutting down".into(),
                });
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) | Err(_) => Err(CallError::Timeout(dest)),
            }
        })
    }
}

/// What a Maelstrom node runs on besides stdin and stdout: its stores and its
/// wall clock (in memory and the system's; the simulator hands in its own).
pub struct Backing<L> {
    /// Raft's log and the state machine.
    pub storage: Storage<L>,
    /// The clock entries are stamped from.
    pub clock: WallClock,
    /// Told the node once `init` started it.
    pub started: Option<oneshot::Sender<Arc<Node>>>,
    /// The first `msg_id` this process sends: 0 in Maelstrom mode (its
    /// reference exchange numbers from there). Replies are matched to calls by
    /// `in_reply_to` alone here, so a process restarted on the same disk must
    /// not reuse the ids of the one before it: a reply to that one, delayed in
    /// the network, would be taken for the reply to a new call with the same
    /// id (the simulator found a read answered with another key's value). The
    /// simulator gives each incarnation its own range; over TCP replies come
    /// back on the connection that carried the call, so they cannot cross.
    pub first_msg_id: u64,
}

impl Backing<MemLogStore> {
    /// Empty in-memory stores and the system clock: Maelstrom mode.
    pub fn in_memory() -> Backing<MemLogStore> {
        let log = MemLogStore::default();
        Backing {
            storage: Storage {
                mirror: log.mirror(),
                log,
                sm: StateMachineStore::new(),
                // The in-memory log has no write that can fail.
                failure: Default::default(),
            },
            clock: WallClock::system(),
            started: None,
            first_msg_id: 0,
        }
    }
}

/// Runs a Maelstrom node until `input` closes and every accepted request is answered.
pub async fn run<R, W>(input: R, output: W, config: Config) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    run_on(input, output, config, Backing::in_memory()).await
}

/// [`run`] on the given stores and clock.
pub async fn run_on<R, W, L>(
    input: R,
    output: W,
    config: Config,
    backing: Backing<L>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    L: RaftLogStorage<TypeConfig>,
{
    let Backing {
        storage,
        clock,
        started: tell_started,
        first_msg_id,
    } = backing;
    let (out_tx, out_rx) = mpsc::channel(config.outbox_capacity);
    let (started_tx, started_rx) = oneshot::channel::<Arc<Node>>();
    let calls = Arc::new(PendingCalls::default());
    let sink = Sink {
        output,
        msg_ids: Arc::new(AtomicU64::new(first_msg_id)),
        calls: Some(calls.clone()),
        write_timeout: None,
        written: None,
    };
    let writer = tokio::spawn(write_loop(sink, out_rx));
    let permits = Permits::node_only(&config);
    let mut driver = Driver::new(None, "", config.clone(), out_tx, permits);
    let mut hooks = Maelstrom {
        calls,
        members: BTreeSet::new(),
        node_ids: Vec::new(),
        config,
        started: Some(started_tx),
        tell_started,
        backing: Some((storage, clock)),
    };
    // A client's line may have request_bytes_max bytes; a member's (told by
    // its `src`, read before the line is buffered past that) a peer's limit.
    let request_bytes_max = hooks.config.request_bytes_max;
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 16, input), request_bytes_max);
    // Read until stdin closes, or until Raft fails (a storage error): then the
    // process must end non-zero rather than linger as a node that cannot commit.
    let fatal = async move {
        match started_rx.await {
            Ok(node) => node.fatal().await,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        biased;
        r = driver.run(&mut lines, &mut hooks) => r,
        why = fatal => {
            tracing::error!("fatal: {why}; stopping the node");
            Err(std::io::Error::other(why))
        }
    };
    // The transport holds the queue open for the node's life: say the input ended.
    let _ = driver.out().send(Out::Eof).await;
    let written = writer
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Some(node) = driver.node() {
        node.shutdown().await;
    }
    result.and(written)
}

/// What Maelstrom mode adds to the driver.
struct Maelstrom<L> {
    /// Our RPCs awaiting replies (registered by the writer).
    calls: Arc<PendingCalls>,
    /// Node names from `init`: messages from these are peer traffic.
    members: BTreeSet<String>,
    /// `init`'s node list as given (a node's Raft id is its position in it).
    node_ids: Vec<String>,
    config: Config,
    /// Hands the node, once `init` started it, to `run`'s watch for a fatal error.
    started: Option<oneshot::Sender<Arc<Node>>>,
    /// Also told, for whoever runs this node (the simulator).
    tell_started: Option<oneshot::Sender<Arc<Node>>>,
    /// What the node starts on, taken by the first `init`.
    backing: Option<(Storage<L>, WallClock)>,
}

impl<L: RaftLogStorage<TypeConfig>> Hooks for Maelstrom<L> {
    fn line_bytes_max(&self, sk: &Skeleton) -> Option<usize> {
        sk.src
            .as_ref()
            .filter(|s| self.members.contains(*s))
            .map(|_| self.config.peer_line_bytes_max)
    }

    /// After init, a message for another node than this one.
    fn misaddressed(&self, d: &Driver, msg: &Message) -> Option<String> {
        (d.node().is_some() && *msg.dest != **d.me()).then(|| {
            format!(
                "message for {} delivered to {}; nothing was done",
                msg.dest,
                d.me()
            )
        })
    }

    /// Completes one of our RPCs; one whose reply could not be read ends with an
    /// error (the peer may have acted on it: its caller treats this as indefinite).
    fn reply(&mut self, src: &str, in_reply_to: u64, body: Result<network::Body, String>) {
        let outcome = match body {
            Ok(raw) => network::reply_or_remote_error(src, raw),
            Err(why) => return self.calls.unreadable(in_reply_to, src, &why),
        };
        if !self.calls.complete(in_reply_to, outcome) {
            tracing::debug!("late or unknown reply {in_reply_to} from {src}");
        }
    }

    async fn init(
        &mut self,
        d: &mut Driver,
        src: String,
        msg_id: u64,
        node_id: String,
        node_ids: Vec<String>,
    ) {
        if let Some(node) = d.node() {
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
            return d.answer_now(src, msg_id, reply).await;
        }
        let members: Vec<Peer> = node_ids
            .iter()
            .map(|n| Peer {
                name: n.clone(),
                addr: String::new(),
            })
            .collect();
        let transport = Arc::new(MaelstromTransport {
            out: d.out().clone(),
            me: node_id.as_str().into(),
        });
        let config = self.config.clone();
        let started = match Node::number_members(&node_id, members) {
            Err(e) => Err(e),
            Ok((id, members)) => match self.backing.take() {
                Some((storage, clock)) => {
                    let initial = Some(members.clone());
                    Node::start_with(id, members, transport, config, storage, initial, clock).await
                }
                None => {
                    let why = "an earlier init failed after its stores were taken";
                    Err(StartError::Raft(why.to_string()))
                }
            },
        };
        let reply = match started {
            Ok(node) => {
                tracing::info!("node {node_id} started, members {node_ids:?}");
                if let Some(started) = self.started.take() {
                    let _ = started.send(node.clone());
                }
                if let Some(started) = self.tell_started.take() {
                    let _ = started.send(node.clone());
                }
                d.set_node(node, &node_id);
                self.members = node_ids.iter().cloned().collect();
                self.node_ids = node_ids;
                Reply::InitOk
            }
            Err(e) => {
                tracing::error!("init failed: {e}");
                Reply::error(ErrorCode::MalformedRequest, e.to_string())
            }
        };
        d.answer_now(src, msg_id, reply).await;
    }

    /// A peer's RPC (from a member, after init), answered in a task; anything
    /// else is refused.
    async fn other(&mut self, d: &mut Driver, msg: Other) {
        let Other {
            src,
            msg_id,
            kind,
            raw,
            rpc,
            encoded_bytes_max,
            ..
        } = msg;
        let node = match (d.node(), self.members.contains(&src)) {
            (Some(node), true) => node.clone(),
            (None, _) => {
                let reply = Reply::error(ErrorCode::TemporarilyUnavailable, "not initialized yet");
                return d.answer_now(src, msg_id, reply).await;
            }
            (Some(_), false) => {
                let text = format!("unsupported request type {kind:?} from {src}");
                let code = if kind.starts_with("raft_") || kind == "forward" {
                    ErrorCode::MalformedRequest
                } else {
                    ErrorCode::NotSupported
                };
                return d.answer_now(src, msg_id, Reply::error(code, text)).await;
            }
        };
        let refused = (kind == "forward")
            .then(|| node.refuse_oversized_forward(&raw, rpc.as_deref(), encoded_bytes_max))
            .flatten();
        d.answer_raw_later(src, msg_id, None, async move {
            match refused {
                Some(body) => body.into(),
                None => node.handle_peer(&kind, &raw, rpc.as_deref()).await,
            }
        });
    }
}
