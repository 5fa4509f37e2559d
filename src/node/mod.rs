//! Transport-agnostic node logic: serve a client request (locally as leader, or by
//! forwarding to the leader), answer peers' RPCs, stamp entries with the leader's
//! clock, and append GC entries. Maelstrom mode and TCP mode both drive a [`Node`].
//!
//! The error rule lives in [`Outcome`]: a definite error is only produced on paths
//! where nothing was proposed; once a proposal may have reached the log, every
//! failure becomes error 0 (timeout) or 13 (crash).

pub mod driver;
mod sequencer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::storage::RaftLogStorage;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::protocol::{ErrorCode, Reply, Request};
use crate::raft::log_store::{MemLogStore, SharedMirror};
use crate::raft::network::{
    Body, BulkLimits, CallError, ChunkReply, Network, RpcRequest, SnapshotChunk, Transport,
    check_terms, rpc_body, rpc_field, rpc_from,
};
use crate::raft::sm_store::{Snapshot, StateMachineStore};
use crate::raft::snapshot_transfer::{Accepted, SnapshotReceiver};
use crate::raft::{Peer, Raft, TypeConfig};
use crate::state::{Command, Op};

/// The two stores a node runs on: Raft's log and the state machine.
pub struct Storage<L> {
    /// The log, vote and committed pointer.
    pub log: L,
    /// The state machine (and its snapshots).
    pub sm: StateMachineStore,
    /// The log's in-memory copy, which the node keeps within its byte budget.
    pub mirror: SharedMirror,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `init` named a node list that does not contain this node.
    #[error("node {0} is not in the member list")]
    NotAMember(String),
    /// `init` named a node twice: one process would count as two voters.
    #[error("node {0} appears twice in the member list")]
    DuplicateMember(String),
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// openraft refused to start.
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// A request as forwarded between nodes: the op to propose (the leader stamps
/// it), or the key to read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarded {
    /// A linearizable read of this canonical key.
    Read(String),
    /// An op to propose.
    Propose(Op),
}

impl Forwarded {
    /// The forwarded form of a client request.
    pub fn from_request(req: Request) -> Forwarded {
        match req {
            Request::Read { key } => Forwarded::Read(key),
            Request::Mutate { op, session } => Forwarded::Propose(Op::Kv { kv: op, session }),
            Request::OpenSession => Forwarded::Propose(Op::OpenSession),
            Request::CloseSession { client_id } => {
                Forwarded::Propose(Op::CloseSession { client_id })
            }
        }
    }
}

/// Counts the bytes of an encoding without keeping them.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `op`'s command as the log encodes it, with the largest timestamp.
pub fn command_bytes(op: &Op) -> usize {
    let mut counter = ByteCounter(0);
    let cmd = Command {
        ts_ms: u64::MAX,
        op: op.clone(),
    };
    match serde_json::to_writer(&mut counter, &cmd) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Error 12 if `fwd` would propose a log entry larger than
/// [`Config::entry_bytes_max`]: refused before anything is proposed, so no
/// request can make an entry the log cannot hold. `encoded_bytes_max` is an
/// upper bound of the entry's size when known ([`crate::protocol::Message`]
/// carries one): an op within the bound is not measured.
pub fn check_entry_bytes(
    config: &Config,
    fwd: &Forwarded,
    encoded_bytes_max: Option<usize>,
) -> Option<Reply> {
    let Forwarded::Propose(op) = fwd else {
        return None;
    };
    let bound = config.entry_bytes_max();
    if encoded_bytes_max.is_some_and(|n| n <= bound) {
        return None;
    }
    let bytes = command_bytes(op);
    (bytes > bound).then(|| {
        Reply::error(
            ErrorCode::MalformedRequest,
            format!(
                "this request takes {bytes} bytes as a log entry (keys are stored as quoted \
                 text, numbers such as 1e15 spelled out), above the limit of {bound} bytes \
                 (request_bytes_max {} plus {}); nothing was done. The limit is raised with \
                 ONCEKV_REQUEST_BYTES_MAX on every node",
                config.request_bytes_max,
                crate::config::ENTRY_SLACK_BYTES
            ),
        )
    })
}

/// A batch handed to Raft: per op, its reply if it was answered at once; and the
/// future yielding the other ops' replies, in order.
pub struct BatchStarted {
    /// `Some(reply)` for ops answered without a log entry (cached retries).
    pub immediate: Vec<Option<Reply>>,
    /// The replies of the ops that were proposed, in order.
    pub rest: BoxFuture<'static, Vec<Reply>>,
}

/// The ordered half of a request done: its reply, or the future that finishes it.
pub enum Started {
    /// Answered already (a read in a single-voter cluster, a cached retry).
    Ready(Reply),
    /// Still waiting on the log or on the leader.
    Pending(BoxFuture<'static, Reply>),
}

/// What serving a request locally gave.
#[derive(Debug)]
enum Outcome {
    /// The answer for the client.
    Done(Reply),
    /// Not served here; retry at this leader. `proposed` when an entry was appended
    /// and discarded (possible only for session ops, which dedup makes safe to retry):
    /// the final answer must then be indefinite.
    NotLeader(Option<u64>, bool),
}

/// One Raft member with its state machine and its way to reach peers.
pub struct Node {
    /// This node's Raft id.
    pub id: u64,
    /// This node's protocol name.
    pub name: String,
    /// The Raft handle.
    pub raft: Raft,
    /// The applied state, for reads and cached replies.
    pub sm: StateMachineStore,
    /// Members by id, to forward to the leader by name.
    members: BTreeMap<u64, Peer>,
    /// How to reach peers.
    transport: Arc<dyn Transport>,
    /// Timeouts and bounds.
    pub config: Config,
    /// The largest timestamp this node has stamped, so its clock never runs back.
    last_ts_ms: AtomicU64,
    /// Proposals this node submitted in arrival order (see [`Node::start_request`]).
    submitted: AtomicU64,
    /// How many of those have finished (applied, failed or timed out).
    finished: tokio::sync::watch::Sender<u64>,
    /// Snapshots being received from a leader, chunk by chunk.
    snapshots_in: SnapshotReceiver,
    /// Set by [`Node::shutdown`]: Raft stopping after this is not a failure.
    stopping: AtomicBool,
}

/// A proposal submitted to Raft whose outcome is still to come.
type Proposal = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>;

/// How often [`Node::fatal`] looks at Raft's running state besides when its role
/// changes: a failed node exits within about this.
const FATAL_CHECK_PERIOD: Duration = Duration::from_millis(500);

const NOT_LEADER_TEXT: &str = "not the leader; nothing was proposed";
/// A forwarded session op whose entry was discarded on a leader change: indefinite,
/// but safe for the forwarding node to re-propose elsewhere (dedup).
const DISCARDED_TEXT: &str = "entry discarded on a leader change; retry with the same seq";

impl Node {
    /// Starts a Raft member `name` of `members` (ids are positions in the list, the
    /// same on every node) on in-memory storage, bootstrapping the cluster from the
    /// list when `bootstrap`. This is Maelstrom mode.
    pub async fn start(
        name: &str,
        members: Vec<Peer>,
        transport: Arc<dyn Transport>,
        config: Config,
        bootstrap: bool,
    ) -> Result<Arc<Node>, StartError> {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = members.iter().find(|p| !seen.insert(&p.name)) {
            return Err(StartError::DuplicateMember(dup.name.clone()));
        }
        let members: BTreeMap<u64, Peer> = members
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p))
            .collect();
        let id = members
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| StartError::NotAMember(name.to_string()))?;
        let log = MemLogStore::default();
        let storage = Storage {
            mirror: log.mirror(),
            log,
            sm: StateMachineStore::new(),
        };
        let init = bootstrap.then(|| members.clone());
        Node::start_with(id, members, transport, config, storage, init).await
    }

    /// Starts member `id` of `members` on the given storage. `initialize` forms a new
    /// cluster from that membership (ignored by openraft when a log already exists,
    /// so a restarted node rejoins with no extra step).
    pub async fn start_with<L>(
        id: u64,
        members: BTreeMap<u64, Peer>,
        transport: Arc<dyn Transport>,
        config: Config,
        storage: Storage<L>,
        initialize: Option<BTreeMap<u64, Peer>>,
    ) -> Result<Arc<Node>, StartError>
    where
        L: RaftLogStorage<TypeConfig>,
    {
        config.validate()?;
        let name = members
            .get(&id)
            .map(|p| p.name.clone())
            .ok_or_else(|| StartError::NotAMember(id.to_string()))?;
        let sm = storage.sm;
        crate::raft::log_store::lock(&storage.mirror).batch_bytes_max =
            config.append_batch_bytes_max;
        let snapshots_in = SnapshotReceiver::new(
            sm.incoming_dir(),
            config.snapshot_transfers_max as usize,
            Duration::from_millis(config.snapshot_transfer_idle_ms),
        );
        let raft = Raft::new(
            id,
            Arc::new(config.raft_config()?),
            Network::new(transport.clone(), BulkLimits::from_config(&config)),
            storage.log,
            sm.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        if let Some(initial) = initialize {
            // Every node may call this with the same list: all but one get
            // NotAllowed once a log exists, which is fine.
            if let Err(e) = raft.initialize(initial).await {
                tracing::debug!("initialize: {e}");
            }
        }
        let node = Arc::new(Node {
            id,
            name,
            raft,
            sm,
            members,
            transport,
            config,
            last_ts_ms: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            finished: tokio::sync::watch::Sender::new(0),
            snapshots_in,
            stopping: AtomicBool::new(false),
        });
        node.clone().spawn_leader_duties();
        node.clone().spawn_log_budget(storage.mirror);
        if node.members.len() == 1 && node.leader().is_none() {
            // A lone node elects itself at once; answering init after that keeps
            // the first requests of a script in order without any waiting.
            let deadline =
                Instant::now() + Duration::from_millis(node.config.election_timeout_max_ms * 4);
            node.wait_for_leader(None, None, deadline).await;
        }
        Ok(node)
    }

    /// Serves a client request wherever the leader is, answering within about
    /// `request_timeout_ms`.
    pub async fn serve(&self, req: Request) -> Reply {
        let deadline = Instant::now() + self.config.request_timeout();
        self.serve_from(Forwarded::from_request(req), deadline, self.leader(), false)
            .await
    }

    /// The ordered half of serving, for a transport's reader to call in arrival order:
    /// a leader submits a proposal to Raft now, so writes enter the log in the order
    /// this node received them, and in a single-voter cluster a read is evaluated
    /// after every earlier proposal and before any later one (protocol.md section 4b).
    /// What is left to do is returned: the reply itself, or a future finishing it.
    pub async fn start_request(self: &Arc<Self>, req: Request) -> Started {
        self.start_forwarded(Forwarded::from_request(req)).await
    }

    /// [`Node::start_request`] for a request already in its forwarded form.
    pub async fn start_forwarded(self: &Arc<Self>, fwd: Forwarded) -> Started {
        let deadline = Instant::now() + self.config.request_timeout();
        let mut leader = self.leader();
        if leader.is_none() && (self.members.len() == 1 || self.single_voter()) {
            // A lone node elects itself within an election timeout; waiting here, in
            // arrival order, keeps requests that race the election in order. (With
            // peers the reader must not block: it carries their votes.)
            leader = self.wait_for_leader(None, None, deadline).await;
        }
        let node = self.clone();
        match fwd {
            Forwarded::Read(key) if leader == Some(self.id) && self.single_voter() => {
                let reply = match self.read_in_order(&key, deadline).await {
                    Outcome::Done(r) => r,
                    Outcome::NotLeader(hint, _) => {
                        return Started::Pending(Box::pin(async move {
                            node.serve_from(Forwarded::Read(key), deadline, hint, false)
                                .await
                        }));
                    }
                };
                Started::Ready(reply)
            }
            Forwarded::Propose(op) if leader == Some(self.id) => {
                let has_session = has_session(&op);
                match self.submit_local(op.clone()).await {
                    Ok(proposal) => Started::Pending(Box::pin(async move {
                        match node.await_proposal(proposal, has_session, deadline).await {
                            Outcome::Done(r) => r,
                            Outcome::NotLeader(hint, proposed) => {
                                node.serve_from(Forwarded::Propose(op), deadline, hint, proposed)
                                    .await
                            }
                        }
                    })),
                    Err(Outcome::Done(r)) => Started::Ready(r),
                    Err(Outcome::NotLeader(hint, proposed)) => {
                        Started::Pending(Box::pin(async move {
                            node.serve_from(Forwarded::Propose(op), deadline, hint, proposed)
                                .await
                        }))
                    }
                }
            }
            fwd => Started::Pending(Box::pin(async move {
                node.serve_from(fwd, deadline, leader, false).await
            })),
        }
    }

    /// Submits a run of proposals that arrived back to back as one batch (one message
    /// to Raft instead of one per request), in order, if this node leads; gives the
    /// ops back otherwise. Returns, per op, its reply if answered at once (a cached
    /// retry), and a future yielding the replies of the others in order.
    pub async fn start_batch(self: &Arc<Self>, ops: Vec<Op>) -> Result<BatchStarted, Vec<Op>> {
        if self.leader() != Some(self.id) {
            return Err(ops);
        }
        let deadline = Instant::now() + self.config.request_timeout();
        let mut immediate = Vec::with_capacity(ops.len());
        let mut proposed = Vec::new();
        let mut cmds = Vec::new();
        for op in ops {
            // Only ahead of every proposal of this batch: a later op must see them.
            if cmds.is_empty()
                && let Some(reply) = self.cached(&op)
            {
                immediate.push(Some(reply));
                continue;
            }
            immediate.push(None);
            cmds.push(Command {
                ts_ms: self.next_ts_ms(),
                op: op.clone(),
            });
            proposed.push(op);
        }
        if cmds.is_empty() {
            return Ok(BatchStarted {
                immediate,
                rest: Box::pin(std::future::ready(Vec::new())),
            });
        }
        let count = cmds.len() as u64;
        let stream = self.raft.client_write_many(cmds).await;
        self.submitted.fetch_add(count, Ordering::SeqCst);
        let node = self.clone();
        let rest = Box::pin(async move {
            let mut stream = match stream {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("raft stopped: {e}");
                    None
                }
            };
            let mut replies = Vec::with_capacity(proposed.len());
            for op in proposed {
                let waited = match stream.as_mut() {
                    None => Waited::Dropped,
                    Some(st) => {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(wait, futures::StreamExt::next(st)).await {
                            Ok(Some(Ok(result))) => Waited::Answered(result.map(|w| w.response)),
                            Ok(Some(Err(_)) | None) => Waited::Dropped,
                            Err(_) => Waited::TimedOut,
                        }
                    }
                };
                node.finished.send_modify(|n| *n += 1);
                let has_session = has_session(&op);
                let reply = match proposal_outcome(waited, has_session) {
                    Outcome::Done(r) => r,
                    Outcome::NotLeader(hint, discarded) => {
                        node.serve_from(Forwarded::Propose(op), deadline, hint, discarded)
                            .await
                    }
                };
                replies.push(reply);
            }
            replies
        });
        Ok(BatchStarted { immediate, rest })
    }

    /// The cached reply of a session op that already ran, answered without a log
    /// entry, but only when every proposal this node submitted before it has
    /// finished: otherwise an earlier `close_session`, `first_outstanding` or
    /// other entry still in flight could change the answer, and the reply would no
    /// longer be the one a sequential store gives (protocol.md section 4b). Then,
    /// or if the state is busy, the op goes through the log and the apply-time
    /// rule answers it.
    fn cached(&self, op: &Op) -> Option<Reply> {
        let Op::Kv {
            session: Some(s), ..
        } = op
        else {
            return None;
        };
        if self.submitted.load(Ordering::SeqCst) != *self.finished.borrow() {
            return None;
        }
        self.sm.try_read().and_then(|a| a.state.cached_reply(s))
    }

    async fn serve_from(
        &self,
        fwd: Forwarded,
        deadline: Instant,
        mut leader: Option<u64>,
        mut proposed: bool,
    ) -> Reply {
        loop {
            let outcome = match leader {
                Some(l) if l == self.id => self.serve_local(&fwd, deadline).await,
                Some(l) => self.forward(l, &fwd, deadline).await,
                None => Outcome::NotLeader(None, false),
            };
            match outcome {
                Outcome::Done(reply) => return reply,
                Outcome::NotLeader(hint, discarded) => {
                    // Nothing was proposed, or a session op whose re-proposal the
                    // session table deduplicates: trying again is safe. Wait for a
                    // (different) leader while time remains.
                    proposed |= discarded;
                    match self.wait_for_leader(hint, leader, deadline).await {
                        Some(next) => leader = Some(next),
                        None if proposed => {
                            return Reply::error(
                                ErrorCode::Crash,
                                "proposed, then the leader changed; it may still take effect",
                            );
                        }
                        None => {
                            return Reply::error(
                                ErrorCode::TemporarilyUnavailable,
                                "no leader known; the request was not proposed",
                            );
                        }
                    }
                }
            }
        }
    }

    /// Whether the membership has exactly one voter (so this leader cannot be deposed
    /// by an election and every entry is its own proposal).
    fn single_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().voter_ids().count() == 1
    }

    /// A read placed between the proposals submitted before it and those after it.
    async fn read_in_order(&self, key: &str, deadline: Instant) -> Outcome {
        let earlier = self.submitted.load(Ordering::SeqCst);
        let mut done = self.finished.subscribe();
        let wait = deadline.saturating_duration_since(Instant::now());
        // Drop the watch guard at once: holding it across the await below would make
        // this future !Send (TCP mode spawns connection readers).
        let caught_up = tokio::time::timeout(wait, done.wait_for(|n| *n >= earlier))
            .await
            .map(|r| r.map(|_| ()));
        if caught_up.is_err() {
            return Outcome::Done(Reply::error(
                ErrorCode::Timeout,
                "earlier writes not applied in time",
            ));
        }
        self.read_local(key, deadline).await
    }

    /// How to reach member `id`: from the current membership (which changes), else
    /// from the members this node started with.
    pub fn peer(&self, id: u64) -> Option<Peer> {
        let m = self.raft.metrics();
        let from_membership = m
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned();
        from_membership.or_else(|| self.members.get(&id).cloned())
    }

    /// The leader this node currently believes in.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Picks the leader to try next: `hint` if it names another node, else the first
    /// leader other than `failed` to appear, else (after a short back-off, as a new
    /// leader may refuse writes until the old leader's lease ends) whoever leads then.
    /// None when the deadline leaves no time for another attempt.
    async fn wait_for_leader(
        &self,
        hint: Option<u64>,
        failed: Option<u64>,
        deadline: Instant,
    ) -> Option<u64> {
        if let Some(h) = hint.filter(|h| Some(*h) != failed) {
            return Some(h);
        }
        let mut rx = self.raft.metrics();
        let backoff_until =
            Instant::now() + Duration::from_millis(self.config.heartbeat_interval_ms * 2);
        // Keep a margin so a retried request still has time to commit.
        let margin = Duration::from_millis(self.config.heartbeat_interval_ms);
        loop {
            let now = Instant::now();
            if now + margin >= deadline {
                return None;
            }
            let current = rx.borrow_watched().current_leader;
            if current.is_some() && (current != failed || now >= backoff_until) {
                return current;
            }
            let step = (deadline - margin - now).min(Duration::from_millis(20));
            let _ = tokio::time::timeout(step, rx.changed()).await;
        }
    }

    async fn serve_local(&self, fwd: &Forwarded, deadline: Instant) -> Outcome {
        match fwd {
            Forwarded::Read(key) => self.read_local(key, deadline).await,
            Forwarded::Propose(op) => self.propose_local(op.clone(), deadline).await,
        }
    }

    async fn read_local(&self, key: &str, deadline: Instant) -> Outcome {
        let wait = deadline.saturating_duration_since(Instant::now());
        let r =
            tokio::time::timeout(wait, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        match r {
            Ok(Ok(_)) => Outcome::Done(self.sm.read().state.read(key)),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Outcome::NotLeader(f.leader_id, false)
            }
            Ok(Err(e)) => Outcome::Done(Reply::error(
                ErrorCode::TemporarilyUnavailable,
                format!("read not served: {e}"),
            )),
            Err(_) => Outcome::Done(Reply::error(
                ErrorCode::Timeout,
                "read could not confirm leadership in time",
            )),
        }
    }

    async fn propose_local(&self, op: Op, deadline: Instant) -> Outcome {
        let has_session = has_session(&op);
        match self.submit_local(op).await {
            Ok(proposal) => self.await_proposal(proposal, has_session, deadline).await,
            Err(outcome) => outcome,
        }
    }

    /// Hands a proposal to Raft (or answers a cached retry without one).
    async fn submit_local(&self, op: Op) -> Result<Proposal, Outcome> {
        // A retry whose reply is cached: answer it without a new entry.
        if let Some(reply) = self.cached(&op) {
            return Err(Outcome::Done(reply));
        }
        let cmd = Command {
            ts_ms: self.next_ts_ms(),
            op,
        };
        let (responder, rx) = openraft::impls::ProgressResponder::complete_only();
        match self.raft.client_write_ff(cmd, Some(responder)).await {
            Ok(()) => {
                self.submitted.fetch_add(1, Ordering::SeqCst);
                Ok(rx)
            }
            Err(e) => Err(Outcome::Done(Reply::error(
                ErrorCode::Crash,
                format!("raft stopped: {e}"),
            ))),
        }
    }

    /// Waits for a submitted proposal's outcome, mapping failures per the error rule.
    async fn await_proposal(
        &self,
        proposal: Proposal,
        has_session: bool,
        deadline: Instant,
    ) -> Outcome {
        let wait = deadline.saturating_duration_since(Instant::now());
        let waited = match tokio::time::timeout(wait, proposal).await {
            Ok(Ok(result)) => Waited::Answered(result.map(|r| r.data)),
            Ok(Err(_)) => Waited::Dropped,
            Err(_) => Waited::TimedOut,
        };
        self.finished.send_modify(|n| *n += 1);
        proposal_outcome(waited, has_session)
    }

    async fn forward(&self, leader: u64, fwd: &Forwarded, deadline: Instant) -> Outcome {
        let Some(peer) = self.peer(leader) else {
            return Outcome::NotLeader(None, false);
        };
        let peer = &peer;
        let wait = deadline.saturating_duration_since(Instant::now());
        let req = match RpcRequest::new("forward", fwd) {
            Ok(req) => req,
            Err(e) => return Outcome::Done(Reply::error(ErrorCode::Crash, e)),
        };
        match self.transport.call(peer, req, wait).await {
            Ok(reply) => match rpc_field::<Reply>(&reply) {
                Ok(Reply::Error { code, text })
                    if code == ErrorCode::TemporarilyUnavailable && text == NOT_LEADER_TEXT =>
                {
                    Outcome::NotLeader(None, false)
                }
                Ok(Reply::Error { code, text })
                    if code == ErrorCode::Crash && text == DISCARDED_TEXT =>
                {
                    Outcome::NotLeader(None, true)
                }
                Ok(r) => Outcome::Done(r),
                Err(e) => Outcome::Done(Reply::error(
                    ErrorCode::Crash,
                    format!("bad reply from leader: {e}"),
                )),
            },
            // Never sent: nothing can have been proposed.
            Err(CallError::Unreachable { .. }) => Outcome::NotLeader(None, false),
            // The leader refused the forward RPC itself (this node presented no
            // cluster key, or the leader could not parse it): it never reached the
            // leader's log, so a definite code stays definite for the client.
            Err(CallError::Remote { peer, code, text }) if definite_code(code).is_some() => {
                Outcome::Done(Reply::error(
                    definite_code(code).expect("checked"),
                    format!("the leader {peer} refused the forwarded request: {text}"),
                ))
            }
            Err(e) => Outcome::Done(Reply::error(
                ErrorCode::Timeout,
                format!("forwarded to the leader, no answer: {e}; it may still take effect"),
            )),
        }
    }

    /// The reply to a `forward` whose op would make a log entry larger than
    /// [`Config::entry_bytes_max`] (error 12, nothing proposed), if it would;
    /// `encoded_bytes_max` bounds its size as the message's
    /// [`crate::protocol::Message::encoded_bytes_max`] does. A transport calls
    /// it before [`Node::handle_peer`]: a forward comes from a node that checked
    /// the request already, or from anyone when the cluster has no key.
    pub fn refuse_oversized_forward(
        &self,
        body: &Body,
        rpc: Option<&serde_json::value::RawValue>,
        encoded_bytes_max: usize,
    ) -> Option<Body> {
        if encoded_bytes_max <= self.config.entry_bytes_max() {
            return None;
        }
        let fwd: Forwarded = rpc_from(body, rpc).ok()?;
        check_entry_bytes(&self.config, &fwd, None).map(|r| rpc_body("forward_ok", &r))
    }

    /// Handles a request body from a peer node; returns the reply body.
    pub async fn handle_peer(
        &self,
        kind: &str,
        body: &Body,
        rpc: Option<&serde_json::value::RawValue>,
    ) -> Body {
        match self.handle_peer_inner(kind, body, rpc).await {
            Ok(b) => b,
            Err(text) => error_body(ErrorCode::Crash, &text),
        }
    }

    async fn handle_peer_inner(
        &self,
        kind: &str,
        body: &Body,
        raw_rpc: Option<&serde_json::value::RawValue>,
    ) -> Result<Body, String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        Ok(match kind {
            "raft_append" => {
                let rpc: AppendEntriesRequest<TypeConfig> = rpc_from(body, raw_rpc)?;
                check_terms(&(&rpc.vote, &rpc.prev_log_id, &rpc.leader_commit))?;
                rpc.entries
                    .iter()
                    .try_for_each(|e| check_terms(&e.log_id))?;
                let r = self.raft.append_entries(rpc).await.map_err(|e| s(&e))?;
                rpc_body("raft_append_ok", &r)
            }
            "raft_vote" => {
                let rpc: VoteRequest<TypeConfig> = rpc_from(body, raw_rpc)?;
                check_terms(&rpc)?;
                let r = self.raft.vote(rpc).await.map_err(|e| s(&e))?;
                rpc_body("raft_vote_ok", &r)
            }
            "raft_pre_vote" => {
                let rpc: VoteRequest<TypeConfig> = rpc_from(body, raw_rpc)?;
                check_terms(&rpc)?;
                let r = self.raft.pre_vote(rpc).await.map_err(|e| s(&e))?;
                rpc_body("raft_pre_vote_ok", &r)
            }
            "raft_snapshot" => {
                let chunk: SnapshotChunk = rpc_from(body, raw_rpc)?;
                check_terms(&(&chunk.vote, &chunk.meta))?;
                match self.snapshots_in.accept(&chunk).await.map_err(|e| s(&e))? {
                    Accepted::Next(next) => rpc_body("raft_snapshot_ok", &ChunkReply::Next(next)),
                    Accepted::Complete(data) => {
                        let snapshot = Snapshot {
                            meta: chunk.meta.clone(),
                            snapshot: data,
                        };
                        let r = self
                            .raft
                            .install_full_snapshot(chunk.vote, snapshot)
                            .await
                            .map_err(|e| s(&e))?;
                        self.snapshots_in.installed(&chunk);
                        rpc_body("raft_snapshot_ok", &ChunkReply::Done(r))
                    }
                    Accepted::Installed => {
                        let vote = self.raft.metrics().borrow_watched().vote;
                        let r = openraft::raft::SnapshotResponse { vote };
                        rpc_body("raft_snapshot_ok", &ChunkReply::Done(r))
                    }
                }
            }
            "forward" => {
                let fwd: Forwarded = rpc_from(body, raw_rpc)?;
                let deadline = Instant::now() + self.config.request_timeout();
                let reply = match self.serve_local(&fwd, deadline).await {
                    Outcome::Done(r) => r,
                    Outcome::NotLeader(_, false) => {
                        Reply::error(ErrorCode::TemporarilyUnavailable, NOT_LEADER_TEXT)
                    }
                    Outcome::NotLeader(_, true) => Reply::error(ErrorCode::Crash, DISCARDED_TEXT),
                };
                rpc_body("forward_ok", &reply)
            }
            other => {
                return Ok(error_body(
                    ErrorCode::NotSupported,
                    &format!("unknown peer request type {other}"),
                ));
            }
        })
    }

    /// The timestamp for a new entry: the wall clock, but never behind the cluster
    /// clock (the log's time) nor behind what this node already stamped, so a new
    /// leader with a slow clock starts from the log's time (LogCabin's cluster clock).
    pub fn next_ts_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let log_time = self.sm.clock_ms();
        let ts = wall.max(log_time);
        let prev = self.last_ts_ms.fetch_max(ts, Ordering::SeqCst);
        ts.max(prev)
    }

    /// Keeps the in-memory log within its byte budget: builds a snapshot once the
    /// applied entries after the last one pass `snapshot_every_bytes`, and purges
    /// entries behind the snapshot beyond `log_kept_behind_snapshot_bytes`
    /// (openraft's own policy counts entries only).
    fn spawn_log_budget(self: Arc<Self>, mirror: SharedMirror) {
        let weak = Arc::downgrade(&self);
        let period = Duration::from_millis(self.config.heartbeat_interval_ms * 2);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The snapshot a build was last asked after, and when.
            let mut asked: Option<(Option<u64>, Instant)> = None;
            let mut purge_asked = 0u64;
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                node.snapshots_in.sweep().await;
                let (snapshot, applied) = {
                    let m = node.raft.metrics();
                    let m = m.borrow_watched();
                    (m.snapshot.map(|l| l.index), m.last_applied.map(|l| l.index))
                };
                let c = &node.config;
                let (after, purge_to) = {
                    let m = crate::raft::log_store::lock(&mirror);
                    let after = match (snapshot, applied) {
                        (_, None) => 0,
                        (None, Some(a)) => m.bytes_in(..=a),
                        (Some(s), Some(a)) => m.bytes_in(s + 1..=a),
                    };
                    (after, snapshot.and_then(|s| purge_point(&m, s, c)))
                };
                let building = asked
                    .is_some_and(|(s, at)| s == snapshot && at.elapsed() < Duration::from_secs(10));
                if after > c.snapshot_every_bytes && !building {
                    asked = Some((snapshot, Instant::now()));
                    tracing::info!(
                        "{after} bytes of entries since the last snapshot: building one"
                    );
                    if node.raft.trigger().snapshot().await.is_err() {
                        return;
                    }
                }
                if let Some(p) = purge_to.filter(|p| *p > purge_asked) {
                    purge_asked = p;
                    if node.raft.trigger().purge_log(p).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    /// While leader: append a GC entry when some session is idle past the timeout,
    /// and make the replicated limits match this node's config.
    fn spawn_leader_duties(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(
                weak.upgrade().map_or(1_000, |n| n.config.gc_interval_ms),
            ));
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                if node.leader() == Some(node.id) {
                    node.leader_tick().await;
                }
            }
        });
    }

    async fn leader_tick(&self) {
        let (limits, oldest) = {
            let a = self.sm.read();
            (a.state.limits, a.state.sessions.oldest_last_seen_ms())
        };
        let deadline = Instant::now() + self.config.request_timeout();
        if limits != self.config.limits {
            let _ = self
                .propose_local(Op::SetLimits(self.config.limits), deadline)
                .await;
        }
        let ts = self.next_ts_ms();
        let cutoff_ms = ts.saturating_sub(self.config.session_timeout_ms);
        if oldest.is_some_and(|o| o < cutoff_ms) {
            let cmd = Command {
                ts_ms: ts,
                op: Op::Gc { cutoff_ms },
            };
            if let Err(e) =
                tokio::time::timeout(self.config.request_timeout(), self.raft.client_write(cmd))
                    .await
            {
                tracing::debug!("gc entry not committed in time: {e}");
            }
        }
    }

    /// What this node knows about itself and the cluster: the `status` request's
    /// answer (TCP mode). Reads Raft's metrics and the applied state; no I/O.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let sessions = self.sm.read().state.sessions.len();
        NodeStatus {
            id: self.id,
            name: self.name.clone(),
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.as_ref().map(|l| l.index()),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index()),
            purged_index: m.purged.as_ref().map(|l| l.index()),
            sessions,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            pid: Some(std::process::id()),
            replicated: m.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index())))
                    .collect()
            }),
        }
    }

    /// The current membership: every node with its address and whether it votes.
    pub fn membership_nodes(&self) -> Vec<(u64, Peer, bool)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, p)| (*id, p.clone(), voters.contains(id)))
            .collect()
    }

    /// Adds member `id` at `peer` (leader only): as a learner, then, once its log
    /// has reached the leader's last index at the time it was added, as a voter.
    /// If it has not caught up within `catch_up` (not running, say), it is removed
    /// as a learner again and the answer is a definite error: the voter change
    /// was never proposed and the membership is as before. Each membership step
    /// may take `step`. Ok carries a note when there was nothing to do.
    pub async fn add_member(
        &self,
        id: u64,
        peer: Peer,
        catch_up: Duration,
        step: Duration,
    ) -> Result<Option<String>, (ErrorCode, String)> {
        let current = self
            .membership_nodes()
            .into_iter()
            .find(|(i, _, _)| *i == id);
        match current {
            Some((_, old, true)) if old == peer => {
                return Ok(Some(format!("{peer} is a voter already")));
            }
            Some((_, old, true)) => {
                return Err((
                    ErrorCode::MalformedRequest,
                    format!("node id {id} is a voter already, as {old}; nothing was changed"),
                ));
            }
            Some((_, old, false)) if old != peer => {
                return Err((
                    ErrorCode::MalformedRequest,
                    format!(
                        "node id {id} is a learner already, as {old}; remove-node {} first",
                        old.name
                    ),
                ));
            }
            // A learner left by an earlier attempt: wait for it as below.
            Some(_) => {}
            None => {
                match tokio::time::timeout(step, self.raft.add_learner(id, peer.clone(), false))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(refused_or_unknown("adding it as a learner", e)),
                    Err(_) => {
                        return Err((
                            ErrorCode::Timeout,
                            format!(
                                "adding {peer} as a learner not done within {step:?}; it may still \
                             become a learner (not a voter)"
                            ),
                        ));
                    }
                }
            }
        }
        let target = self.raft.metrics().borrow_watched().last_log_index;
        if let Err((matched, leading)) = self.wait_caught_up(id, target, catch_up).await {
            let index = |i: Option<u64>| i.map_or("nothing".to_string(), |i| format!("index {i}"));
            let why = format!(
                "{peer} did not catch up within {catch_up:?} (replicated to it: {} of {}{})",
                index(matched),
                index(target),
                if leading {
                    ""
                } else {
                    "; this node lost the lead"
                }
            );
            let ids = std::collections::BTreeSet::from([id]);
            let removed = tokio::time::timeout(
                step,
                self.raft
                    .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false),
            )
            .await;
            return Err(match removed {
                Ok(Ok(_)) => (
                    ErrorCode::TemporarilyUnavailable,
                    format!(
                        "{why}: not made a voter, and removed as a learner again, so the \
                         membership is unchanged. Start it first (`oncekv serve --join`) and retry"
                    ),
                ),
                Ok(Err(e)) => (
                    ErrorCode::Crash,
                    format!(
                        "{why}: not made a voter, but removing it as a learner failed ({e}); \
                         it may remain a learner: remove-node {}",
                        peer.name
                    ),
                ),
                Err(_) => (
                    ErrorCode::Timeout,
                    format!(
                        "{why}: not made a voter; removing it as a learner not done within \
                         {step:?}; it may remain a learner: remove-node {}",
                        peer.name
                    ),
                ),
            });
        }
        let voters = std::collections::BTreeSet::from([id]);
        let promoted = tokio::time::timeout(
            step,
            self.raft
                .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false),
        )
        .await;
        match promoted {
            Ok(Ok(_)) => Ok(None),
            // A voter change takes two entries (joint, then final): an error may
            // come after the first was appended.
            Ok(Err(e)) => Err((
                ErrorCode::Crash,
                format!("making {peer} a voter failed ({e}); it may still take effect"),
            )),
            Err(_) => Err((
                ErrorCode::Timeout,
                format!("making {peer} a voter not done within {step:?}; it may still take effect"),
            )),
        }
    }

    /// Waits until the leader has replicated to `id` up to `target`, for at most
    /// `within`. On failure: how far it got, and whether this node still leads.
    async fn wait_caught_up(
        &self,
        id: u64,
        target: Option<u64>,
        within: Duration,
    ) -> Result<(), (Option<u64>, bool)> {
        let deadline = Instant::now() + within;
        let mut rx = self.raft.metrics();
        loop {
            let matched = {
                let m = rx.borrow_watched();
                match &m.replication {
                    None => return Err((None, false)),
                    Some(r) => r.get(&id).cloned().flatten().map(|l| l.index()),
                }
            };
            if matched >= target {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err((matched, true));
            }
            let _ = tokio::time::timeout(deadline - now, rx.changed()).await;
        }
    }

    /// Removes member `id` (leader only): a voter from the voters and the
    /// membership, a learner from the membership. Ok carries a note when there
    /// was nothing to do.
    pub async fn remove_member(&self, id: u64) -> Result<Option<String>, (ErrorCode, String)> {
        let ids = std::collections::BTreeSet::from([id]);
        let change = match self
            .membership_nodes()
            .into_iter()
            .find(|(i, _, _)| *i == id)
        {
            None => return Ok(Some(format!("node id {id} is not a member"))),
            Some((_, _, true)) => openraft::ChangeMembers::RemoveVoters(ids),
            Some((_, _, false)) => openraft::ChangeMembers::RemoveNodes(ids),
        };
        match self.raft.change_membership(change, false).await {
            Ok(_) => Ok(None),
            // openraft checks the change before proposing it (an empty voter set,
            // a change already in progress): nothing reached the log.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err((
                ErrorCode::MalformedRequest,
                format!("removing it was refused ({e}); nothing was changed"),
            )),
            Err(e) => Err((
                ErrorCode::Crash,
                format!("removing it failed ({e}); it may still take effect"),
            )),
        }
    }

    /// Resolves with the cause once Raft has stopped without being asked to: a
    /// storage error (a failed log write or sync, a full disk), a panic in Raft's
    /// core, or a stop from inside. A node in that state can no longer vote, append
    /// or apply, yet would still answer `status`; its process must end (loudly,
    /// non-zero) so a supervisor restarts it. Pending forever while Raft runs and
    /// after [`Node::shutdown`].
    ///
    /// It wakes on changes of the server metrics (role, leader, membership: rare)
    /// and once every [`FATAL_CHECK_PERIOD`], never per commit: the full metrics
    /// change on every applied entry, and a watcher woken by each of them cost a
    /// thread wake-up per write.
    pub async fn fatal(&self) -> String {
        let metrics = self.raft.metrics();
        let mut server = self.raft.server_metrics();
        loop {
            let failed = {
                let m = metrics.borrow_watched();
                match &m.running_state {
                    Err(e) => Some(format!("raft stopped: {e}")),
                    Ok(()) if m.state == openraft::ServerState::Shutdown => {
                        Some("raft shut down".to_string())
                    }
                    Ok(()) => None,
                }
            };
            let asked = self.stopping.load(Ordering::Acquire);
            match failed {
                Some(why) if !asked => return why,
                Some(_) => return std::future::pending().await,
                None => {}
            }
            let closed = tokio::select! {
                r = server.changed() => r.is_err(),
                () = tokio::time::sleep(FATAL_CHECK_PERIOD) => false,
            };
            if closed {
                if self.stopping.load(Ordering::Acquire) {
                    return std::future::pending().await;
                }
                return "raft stopped: its metrics channel closed".to_string();
            }
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// A node's view of itself and the cluster (`status_ok` in TCP mode).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// Raft id.
    pub id: u64,
    /// Name (`n1`).
    pub name: String,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader this node believes in.
    pub leader: Option<u64>,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last applied entry.
    pub applied_index: Option<u64>,
    /// Index the latest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log is purged (entries from there on only by snapshot).
    #[serde(default)]
    pub purged_index: Option<u64>,
    /// Open sessions in the applied state.
    pub sessions: usize,
    /// Voter ids of the current membership.
    pub voters: Vec<u64>,
    /// Learner ids of the current membership.
    pub learners: Vec<u64>,
    /// The process serving this node (so a supervisor can tell its own node
    /// from another process on the same port).
    #[serde(default)]
    pub pid: Option<u32>,
    /// On a leader: per member, the last log index it has confirmed to this
    /// leader (none yet: null). A node that starts on an empty data dir while the
    /// leader has replicated to its id ran before and lost its data.
    #[serde(default)]
    pub replicated: Option<BTreeMap<u64, Option<u64>>>,
}

/// The start of the text of error 11 when a membership request reached a node
/// that does not lead (the CLI retries those at the leader; other refusals are final).
pub const MEMBERSHIP_NOT_LEADER: &str = "not the leader";

/// A membership step that failed: definite if openraft refused it before
/// appending anything (not the leader, another change in progress), else not.
fn refused_or_unknown(
    what: &str,
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> (ErrorCode, String) {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => (
            ErrorCode::TemporarilyUnavailable,
            format!(
                "{MEMBERSHIP_NOT_LEADER} (leader {:?}) for {what}; nothing was changed",
                f.leader_id
            ),
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => (
            ErrorCode::TemporarilyUnavailable,
            format!("{what}: refused ({e}); nothing was changed"),
        ),
        e => (
            ErrorCode::Crash,
            format!("{what}: {e}; it may still take effect"),
        ),
    }
}

/// The error code `code` if it is one of ours and definite (see
/// [`ErrorCode::is_definite`]); `None` for indefinite or unknown codes.
fn definite_code(code: u64) -> Option<ErrorCode> {
    let code = ErrorCode::try_from(u32::try_from(code).ok()?).ok()?;
    code.is_definite().then_some(code)
}

/// An error reply body `{type: error, code, text}` for peers.
pub fn error_body(code: ErrorCode, text: &str) -> Body {
    let mut b = Map::new();
    b.insert("type".into(), Value::from("error"));
    b.insert("code".into(), Value::from(code.code()));
    b.insert("text".into(), Value::from(text));
    b
}

/// The index to purge up to so that the entries kept behind snapshot `snapshot`
/// hold at most `log_kept_behind_snapshot_bytes`; `None` if they already do.
fn purge_point(m: &crate::raft::log_store::LogMirror, snapshot: u64, c: &Config) -> Option<u64> {
    let mut kept = 0;
    for (&index, (_, bytes)) in m.log.range(..=snapshot).rev() {
        kept += bytes;
        if kept > c.log_kept_behind_snapshot_bytes {
            return Some(index);
        }
    }
    None
}

fn has_session(op: &Op) -> bool {
    matches!(
        op,
        Op::Kv {
            session: Some(_),
            ..
        }
    )
}

/// How waiting on a submitted proposal ended.
enum Waited {
    /// openraft answered: the applied reply, or an error.
    Answered(Result<Reply, ClientWriteError<TypeConfig>>),
    /// openraft dropped the responder without answering.
    Dropped,
    /// The deadline passed first.
    TimedOut,
}

/// The error rule after a proposal, in one place: only `ForwardToLeader` (rejected
/// before append) may lead to a definite answer; everything else is the applied reply
/// or an indefinite error, or a retry that the session table makes safe.
fn proposal_outcome(waited: Waited, has_session: bool) -> Outcome {
    match waited {
        Waited::Answered(Ok(reply)) => Outcome::Done(reply),
        Waited::Answered(Err(ClientWriteError::ForwardToLeader(f))) => {
            // openraft rejected it before appending: definitely not proposed.
            Outcome::NotLeader(f.leader_id, false)
        }
        Waited::Answered(Err(ClientWriteError::LogEntryDiscarded(f))) if has_session => {
            // The entry may still commit elsewhere, but the session table will
            // deduplicate a re-proposal: retrying is safe.
            Outcome::NotLeader(f.leader_id, true)
        }
        Waited::Answered(Err(e)) => Outcome::Done(Reply::error(
            ErrorCode::Crash,
            format!("proposal outcome unknown: {e}"),
        )),
        Waited::Dropped => Outcome::Done(Reply::error(
            ErrorCode::Crash,
            "raft dropped the proposal; it may still take effect",
        )),
        Waited::TimedOut => Outcome::Done(Reply::error(
            ErrorCode::Timeout,
            "proposed but not committed in time; it may still take effect",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{KvOp, VALUE_DEPTH_MAX, parse_line};
    use openraft::errors::ForwardToLeader;
    use openraft::raft::AppendEntriesRequest;

    #[test]
    fn the_log_kept_behind_a_snapshot_is_bounded_in_bytes() {
        use crate::raft::log_store::LogMirror;
        let mut m = LogMirror::default();
        for i in 1..=10 {
            m.insert(
                crate::raft::Entry {
                    log_id: openraft::testing::log_id::<TypeConfig>(1, 1, i),
                    payload: openraft::EntryPayload::Blank,
                },
                100,
            );
        }
        let c = Config {
            log_kept_behind_snapshot_bytes: 250,
            ..Config::default()
        };
        // Snapshot at 8: entries 7 and 8 (200 bytes) may stay, 6 and before go.
        assert_eq!(purge_point(&m, 8, &c), Some(6));
        assert_eq!(purge_point(&m, 2, &c), None);
    }

    fn write_op(key: Value, value: Value) -> Op {
        Op::Kv {
            kv: KvOp::Write {
                key: crate::protocol::canonical_key(&key),
                value,
            },
            session: Some(crate::protocol::SessionRef {
                client_id: "c".repeat(64),
                seq: u64::MAX,
                first_outstanding: Some(u64::MAX),
            }),
        }
    }

    fn entry(op: Op) -> crate::raft::Entry {
        crate::raft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(u64::MAX, u64::MAX, u64::MAX),
            payload: openraft::EntryPayload::Normal(Command {
                ts_ms: u64::MAX,
                op,
            }),
        }
    }

    /// What openraft and the log add around a command stays within
    /// ENTRY_WRAP_BYTES, so Config::validate's arithmetic holds.
    #[test]
    fn an_entry_adds_at_most_entry_wrap_bytes_to_its_command() {
        let op = write_op(Value::from("k"), Value::from("v".repeat(1000)));
        let entry_bytes = serde_json::to_vec(&entry(op.clone())).unwrap().len();
        let record_framing = 8 + 9;
        assert!(
            entry_bytes + record_framing <= command_bytes(&op) + crate::config::ENTRY_WRAP_BYTES,
            "{entry_bytes} vs {}",
            command_bytes(&op)
        );
    }

    /// A value as deep as a request may carry still parses inside every line
    /// that carries it between nodes (an append, a forward): serde_json's depth
    /// limit is not reached on the way.
    #[test]
    fn the_deepest_value_allowed_survives_an_append_and_a_forward() {
        let mut value = Value::from(1);
        for _ in 0..VALUE_DEPTH_MAX {
            value = Value::Array(vec![Value::Object(Map::new()), value]);
        }
        let op = write_op(Value::from("k"), value);
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![entry(op.clone())],
        };
        let line = RpcRequest::new("raft_append", &append)
            .unwrap()
            .line("n1", "n2", 1);
        let parsed = parse_line(&line).expect("an append parses");
        let crate::protocol::Body::Other { raw, rpc, .. } = parsed.body else {
            panic!("not a peer message")
        };
        let decoded: AppendEntriesRequest<TypeConfig> = rpc_from(&raw, rpc.as_deref()).unwrap();
        assert_eq!(decoded.entries.len(), 1);
        let fwd = RpcRequest::new("forward", &Forwarded::Propose(op))
            .unwrap()
            .line("n1", "n2", 1);
        let parsed = parse_line(&fwd).expect("a forward parses");
        let crate::protocol::Body::Other { raw, rpc, .. } = parsed.body else {
            panic!("not a peer message")
        };
        let _: Forwarded = rpc_from(&raw, rpc.as_deref()).expect("decodes");
    }

    /// The bound a parsed message carries holds for text built to grow the most
    /// when re-encoded; and a request that grows past the entry bound is
    /// refused with error 12.
    #[test]
    fn entries_grow_within_the_bound_and_oversized_ones_are_refused() {
        let config = Config::default();
        let cases = [
            ("[1e15,1e15,1e15,1e15]", "[1e15,1e15]"),
            ("1e15", "1e-5"),
            (r#""\"\"\"\"\"\"""#, "-0"),
            (r#"["\b\b\b\b",[-0,-0]]"#, r#"{"a":1E15,"b":1E15}"#),
            (r#""\u0001\u0001\u0001""#, "[[],[],[],{}]"),
            (r#"{"\"":["\\",0,"",""]}"#, r#""\u00e9\u0000\/""#),
            ("[-1,-2,-3,1.5,2.25]", "-2.2250738585072014e-308"),
        ];
        for (key, value) in cases {
            let line = format!(
                r#"{{"src":"c","dest":"n","body":{{"type":"cas","msg_id":1,"key":{key},"from":{value},"to":{value},"client_id":"c","seq":1,"first_outstanding":1,"create_if_not_exists":true}}}}"#
            );
            let msg = parse_line(&line).expect(&line);
            let bound = msg.encoded_bytes_max;
            let crate::protocol::Body::Request(req) = msg.body else {
                panic!()
            };
            let fwd = Forwarded::from_request(req);
            let Forwarded::Propose(op) = &fwd else {
                panic!()
            };
            assert!(
                command_bytes(op) <= bound,
                "{line}: {} > {bound}",
                command_bytes(op)
            );
            // And the forward of it, parsed at the leader, carries a bound too.
            let fwd_line = RpcRequest::new("forward", &fwd)
                .unwrap()
                .line("n1", "n2", 1);
            let fwd_msg = parse_line(&fwd_line).unwrap();
            assert!(command_bytes(op) <= fwd_msg.encoded_bytes_max, "{fwd_line}");
        }
        // Within the line limit, but 3.8 times that as an entry.
        let n = (config.request_bytes_max - 200) / 5;
        let value = format!("[{}1]", "1e15,".repeat(n));
        let line = format!(
            r#"{{"src":"c","dest":"n","body":{{"type":"write","msg_id":1,"key":"k","value":{value}}}}}"#
        );
        assert!(line.len() <= config.request_bytes_max);
        let msg = parse_line(&line).unwrap();
        let crate::protocol::Body::Request(req) = msg.body.clone() else {
            panic!()
        };
        let fwd = Forwarded::from_request(req);
        assert!(msg.encoded_bytes_max > config.entry_bytes_max());
        let refused =
            check_entry_bytes(&config, &fwd, Some(msg.encoded_bytes_max)).expect("refused");
        assert_eq!(refused.error_code(), Some(ErrorCode::MalformedRequest));
        assert!(
            refused.to_string().contains("ONCEKV_REQUEST_BYTES_MAX"),
            "{refused}"
        );
        // Unmeasured within the bound, measured (and fine) otherwise.
        let small = Forwarded::Propose(write_op(Value::from("k"), Value::from(1)));
        assert!(check_entry_bytes(&config, &small, Some(100)).is_none());
        assert!(check_entry_bytes(&config, &small, None).is_none());
        // A plain string value of about the limit needs no measuring.
        let v = "v".repeat(config.request_bytes_max - 1024);
        let line = format!(
            r#"{{"src":"c","dest":"n","body":{{"type":"write","msg_id":1,"key":"k","value":"{v}"}}}}"#
        );
        assert!(parse_line(&line).unwrap().encoded_bytes_max <= config.entry_bytes_max());
    }

    /// No path after a proposal gives a definite error; the only "not proposed"
    /// outcome is openraft's ForwardToLeader (rejected before append).
    #[test]
    fn no_failure_after_a_proposal_is_definite() {
        let discarded = || ClientWriteError::LogEntryDiscarded(ForwardToLeader::empty());
        for has_session in [false, true] {
            let cases = [
                Waited::Answered(Err(discarded())),
                Waited::Dropped,
                Waited::TimedOut,
            ];
            for waited in cases {
                match proposal_outcome(waited, has_session) {
                    Outcome::Done(reply) => {
                        let code = reply.error_code().expect("an error");
                        assert!(!code.is_definite(), "{code:?}");
                    }
                    Outcome::NotLeader(_, proposed) => {
                        assert!(has_session && proposed, "only a deduplicated retry");
                    }
                }
            }
            let rejected = Waited::Answered(Err(ClientWriteError::ForwardToLeader(
                ForwardToLeader::empty(),
            )));
            assert!(matches!(
                proposal_outcome(rejected, has_session),
                Outcome::NotLeader(_, false)
            ));
        }
    }
}
