//! Serving a request at this node: the ordered start of a request or a batch
//! (proposals enter the log in arrival order), a leader's local reads and
//! proposals, cached replies to retries, waiting on a proposal's outcome, and the
//! error rule that maps every failure after a proposal to an indefinite error.
//! The loop that retries at another leader (`serve_from`) lives here too; the
//! hop to a remote leader is `forward`'s. It may not answer peers' RPCs nor
//! change the membership.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::time::Instant;

use futures::future::BoxFuture;
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};

use super::{Forwarded, Node};
use crate::config::Config;
use crate::protocol::{ErrorCode, Reply, Request};
use crate::raft::TypeConfig;
use crate::raft::inflight::{Claim, Naming};
use crate::state::{Command, Op, Outcome};

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
    let cmd = Command::new(u64::MAX, op.clone());
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

/// How one attempt at serving a request ended, here or at the leader it was
/// forwarded to.
#[derive(Debug, PartialEq)]
pub(super) enum Served {
    /// The answer for the client.
    Answered(Reply),
    /// Not served: this node (or the one forwarded to) does not lead, and nothing
    /// was proposed. Retry at `leader` (a hint) or whoever leads next.
    NotLeader {
        /// The leader the refusing node believes in, if any.
        leader: Option<u64>,
    },
    /// Proposed, then the entry was discarded on a leader change. Only a session
    /// op ends so (its re-proposal is deduplicated by the session table), so it
    /// may be retried at `leader`; but if no retry answers, the final answer must
    /// be indefinite: the discarded entry may still commit elsewhere.
    Discarded {
        /// The leader the discarding node believes in, if any.
        leader: Option<u64>,
    },
}

/// Whether an earlier attempt at a request proposed it: decides how a request
/// that finds no leader in time is answered (error 11 is definite, so only when
/// nothing was proposed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proposed {
    /// No attempt put an entry in any log.
    Never,
    /// An attempt's entry was discarded on a leader change; it may still commit.
    Discarded,
}

/// Whether proposing an op a second time is safe: the session table answers a
/// second copy of a session op from its cache, any other op would run twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repropose {
    /// A session op: deduplicated.
    Safe,
    /// No session: a second copy would take effect again.
    Unsafe,
}

impl Repropose {
    /// Whether `op` may be proposed again.
    fn of(op: &Op) -> Repropose {
        match op {
            Op::Kv {
                session: Some(_), ..
            } => Repropose::Safe,
            _ => Repropose::Unsafe,
        }
    }
}

/// A proposal submitted to Raft whose outcome is still to come.
type Proposal = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>;

/// The outcomes of a batch submitted to Raft, one per proposal in order.
type BatchOutcomes = futures::stream::BoxStream<
    'static,
    Result<openraft::raft::WriteResult<TypeConfig>, openraft::errors::Fatal<TypeConfig>>,
>;

impl Node {
    /// The ordered half of serving, for a transport's reader to call in arrival order:
    /// a leader submits a proposal to Raft now, so writes enter the log in the order
    /// this node received them, and in a single-voter cluster a read is evaluated
    /// after every earlier proposal and before any later one (`docs/protocol.md`,
    /// "Reply order").
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
                match self.read_in_order(&key, deadline).await {
                    Served::Answered(r) => Started::Ready(r),
                    served => Started::Pending(Box::pin(async move {
                        node.finish(Forwarded::Read(key), deadline, served).await
                    })),
                }
            }
            Forwarded::Propose(op) if leader == Some(self.id) => {
                match self.submit_local(&op).await {
                    Ok(submitted) => Started::Pending(Box::pin(async move {
                        let served = match node.await_submitted(submitted, &op, deadline).await {
                            Some(served) => served,
                            // Its joined entry was let go: propose it after all.
                            None => node.propose_local(op.clone(), deadline, true).await,
                        };
                        node.finish(Forwarded::Propose(op), deadline, served).await
                    })),
                    Err(Served::Answered(r)) => Started::Ready(r),
                    Err(served) => Started::Pending(Box::pin(async move {
                        node.finish(Forwarded::Propose(op), deadline, served).await
                    })),
                }
            }
            fwd => Started::Pending(Box::pin(async move {
                node.serve_from(fwd, deadline, leader, Proposed::Never)
                    .await
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
            match self.claim(&op) {
                Claim::Join(rx) => proposed.push((op, Some(rx))),
                Claim::Propose => {
                    cmds.push(Command::new(self.next_ts_ms(), op.clone()));
                    proposed.push((op, None));
                }
            }
        }
        if proposed.is_empty() {
            return Ok(BatchStarted {
                immediate,
                rest: Box::pin(std::future::ready(Vec::new())),
            });
        }
        let count = cmds.len() as u64;
        let stream = if cmds.is_empty() {
            Ok(Box::pin(futures::stream::empty()) as BatchOutcomes)
        } else {
            self.raft.client_write_many(cmds).await
        };
        self.submitted.fetch_add(count, Ordering::SeqCst);
        let stream = stream
            .inspect_err(|e| tracing::warn!("raft stopped: {e}"))
            .ok();
        let rest = Box::pin(self.clone().finish_batch(stream, proposed, deadline));
        Ok(BatchStarted { immediate, rest })
    }

    /// The replies of a submitted batch's proposals, in order: each one's outcome
    /// taken from `outcomes` (none: Raft stopped) until `deadline`, or, for a
    /// retry that joined its request's entry, that entry's; then finished per
    /// the error rule.
    async fn finish_batch(
        self: Arc<Self>,
        mut outcomes: Option<BatchOutcomes>,
        proposed: Vec<(Op, Option<Joined>)>,
        deadline: Instant,
    ) -> Vec<Reply> {
        let mut replies = Vec::with_capacity(proposed.len());
        for (op, joined) in proposed {
            let served = match joined {
                Some(rx) => match self
                    .await_submitted(Submitted::Joined(rx), &op, deadline)
                    .await
                {
                    Some(served) => served,
                    None => self.propose_local(op.clone(), deadline, true).await,
                },
                None => {
                    let waited = match outcomes.as_mut() {
                        None => Waited::Dropped,
                        Some(st) => {
                            let wait = deadline.saturating_duration_since(Instant::now());
                            match tokio::time::timeout(wait, futures::StreamExt::next(st)).await {
                                Ok(Some(Ok(result))) => {
                                    Waited::Answered(result.map(|w| w.response.into()))
                                }
                                Ok(Some(Err(_)) | None) => Waited::Dropped,
                                Err(_) => Waited::TimedOut,
                            }
                        }
                    };
                    self.finished.send_modify(|n| *n += 1);
                    self.settle_claim(&op, &waited);
                    proposal_outcome(waited, Repropose::of(&op))
                }
            };
            replies.push(self.finish(Forwarded::Propose(op), deadline, served).await);
        }
        replies
    }

    /// What to do with `op` before proposing it: a session request registers as
    /// its client's latest in flight, and a retry of that one joins it (see
    /// [`crate::raft::inflight`]).
    fn claim(&self, op: &Op) -> Claim {
        let Some((client, naming)) = naming_of(op) else {
            return Claim::Propose;
        };
        let term = self.raft.metrics().borrow_watched().current_term;
        (self.sm.inflight()).claim(term, client, naming, self.config.requests_in_flight_max)
    }

    /// A proposal ended without its outcome (refused, discarded, dropped): its
    /// registration goes, letting any retries that joined it propose themselves.
    fn settle_claim(&self, op: &Op, waited: &Waited) {
        if matches!(waited, Waited::Answered(Err(_)) | Waited::Dropped)
            && let Some((client, naming)) = naming_of(op)
        {
            self.sm.inflight().withdraw(client, naming);
        }
    }

    /// The cached reply of a session op that already ran, answered without a log
    /// entry, but only when every proposal this node submitted before it has
    /// finished: otherwise an earlier `close_session`, `first_outstanding` or
    /// other entry still in flight could change the answer, and the reply would no
    /// longer be the one a sequential store gives (`docs/protocol.md`, "Reply
    /// order"). Then, or if the state is busy, the op goes through the log and the apply-time
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
        self.sm
            .try_read()
            .and_then(|a| a.state.cached_reply(s))
            .map(Reply::from)
    }

    /// Finishes a request whose first attempt ended as `served`: its answer, or
    /// the retries starting at the leader the attempt named.
    async fn finish(&self, fwd: Forwarded, deadline: Instant, served: Served) -> Reply {
        match served {
            Served::Answered(reply) => reply,
            Served::NotLeader { leader } => {
                self.serve_from(fwd, deadline, leader, Proposed::Never)
                    .await
            }
            Served::Discarded { leader } => {
                self.serve_from(fwd, deadline, leader, Proposed::Discarded)
                    .await
            }
        }
    }

    /// Serves `fwd` at `leader` (here or by forwarding), and while an attempt
    /// ends without an answer and time remains, at the next leader. `proposed`
    /// says whether an earlier attempt proposed it.
    pub(super) async fn serve_from(
        &self,
        fwd: Forwarded,
        deadline: Instant,
        mut leader: Option<u64>,
        mut proposed: Proposed,
    ) -> Reply {
        loop {
            let attempt = Instant::now();
            let served = match leader {
                Some(l) if l == self.id => self.serve_local(&fwd, deadline).await,
                Some(l) => self.forward(l, &fwd, deadline).await,
                None => Served::NotLeader { leader: None },
            };
            // Nothing was proposed, or a session op whose re-proposal the session
            // table deduplicates: trying again is safe. Wait for a (different)
            // leader while time remains.
            let hint = match served {
                Served::Answered(reply) => return reply,
                Served::NotLeader { leader } => leader,
                Served::Discarded { leader } => {
                    proposed = Proposed::Discarded;
                    leader
                }
            };
            // An attempt that failed at once (a peer that cannot be reached, a
            // Raft that has stopped) is not retried at once: two nodes naming
            // each other as leader would otherwise be tried in turn without a
            // pause until the deadline, a busy loop (found by the simulator).
            let pause = super::RETRY_PAUSE.saturating_sub(attempt.elapsed());
            if !pause.is_zero() && Instant::now() + pause < deadline {
                tokio::time::sleep(pause).await;
            }
            leader = Some(match self.wait_for_leader(hint, leader, deadline).await {
                Some(next) => next,
                None if proposed == Proposed::Discarded => {
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
            });
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
    async fn read_in_order(&self, key: &str, deadline: Instant) -> Served {
        let earlier = self.submitted.load(Ordering::SeqCst);
        let mut done = self.finished.subscribe();
        let wait = deadline.saturating_duration_since(Instant::now());
        // Drop the watch guard at once: holding it across the await below would make
        // this future !Send (TCP mode spawns connection readers).
        let caught_up = tokio::time::timeout(wait, done.wait_for(|n| *n >= earlier))
            .await
            .map(|r| r.map(|_| ()));
        if caught_up.is_err() {
            return Served::Answered(Reply::error(
                ErrorCode::Timeout,
                "earlier writes not applied in time",
            ));
        }
        self.read_local(key, deadline).await
    }

    pub(super) async fn serve_local(&self, fwd: &Forwarded, deadline: Instant) -> Served {
        match fwd {
            Forwarded::Read(key) => self.read_local(key, deadline).await,
            Forwarded::Propose(op) => self.propose_local(op.clone(), deadline, false).await,
        }
    }

    async fn read_local(&self, key: &str, deadline: Instant) -> Served {
        #[cfg(test)]
        if crate::planted::active(crate::planted::Bug::ReadWithoutReadIndex)
            && self.leader() == Some(self.id)
        {
            return Served::Answered(self.sm.read().state.read(key).into());
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let r =
            tokio::time::timeout(wait, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        match r {
            Ok(Ok(_)) => Served::Answered(self.sm.read().state.read(key).into()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Served::NotLeader {
                    leader: f.leader_id,
                }
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)))) => {
                // (openraft's own text dumps the membership's debug form.)
                let heard: Vec<String> = q.got.iter().map(u64::to_string).collect();
                Served::Answered(Reply::error(
                    ErrorCode::TemporarilyUnavailable,
                    format!(
                        "read not served: this leader could not confirm it still leads \
                         (a quorum of voters did not answer; heard from node ids [{}])",
                        heard.join(", ")
                    ),
                ))
            }
            Ok(Err(e)) => Served::Answered(Reply::error(
                ErrorCode::TemporarilyUnavailable,
                format!("read not served: {e}"),
            )),
            Err(_) => Served::Answered(Reply::error(
                ErrorCode::Timeout,
                "read could not confirm leadership in time",
            )),
        }
    }

    /// Proposes `op` here (this node leads) and waits for its outcome. `joined`:
    /// an earlier attempt joined the entry of the same request, which may still
    /// commit, so a refusal here is no longer "not proposed".
    pub(super) async fn propose_local(&self, op: Op, deadline: Instant, joined: bool) -> Served {
        let mut joined = joined;
        loop {
            let submitted = match self.submit_local(&op).await {
                Ok(submitted) => submitted,
                Err(outcome) => return outcome,
            };
            joined |= matches!(submitted, Submitted::Joined(_));
            let served = match self.await_submitted(submitted, &op, deadline).await {
                Some(served) => served,
                // The joined entry was let go: propose (or join) again.
                None => continue,
            };
            // A new leader refuses writes (before appending them) until a
            // quorum has acknowledged it, one round trip after its election:
            // wait for that here rather than send the request away.
            let retry = matches!(served, Served::NotLeader { .. })
                && self.leader_not_yet_acknowledged()
                && Instant::now() + super::RETRY_PAUSE < deadline;
            if !retry {
                return match served {
                    Served::NotLeader { leader } if joined => Served::Discarded { leader },
                    served => served,
                };
            }
            tokio::time::sleep(super::RETRY_PAUSE).await;
        }
    }

    /// Whether this node leads but no quorum has acknowledged it yet (it was
    /// just elected).
    fn leader_not_yet_acknowledged(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == openraft::ServerState::Leader && m.last_quorum_acked.is_none()
    }

    /// Hands a proposal to Raft, or answers a cached retry without one, or has a
    /// retry join the entry of its request already in flight.
    async fn submit_local(&self, op: &Op) -> Result<Submitted, Served> {
        // A retry whose reply is cached: answer it without a new entry.
        if let Some(reply) = self.cached(op) {
            return Err(Served::Answered(reply));
        }
        if let Claim::Join(rx) = self.claim(op) {
            return Ok(Submitted::Joined(rx));
        }
        let cmd = Command::new(self.next_ts_ms(), op.clone());
        let (responder, rx) = openraft::impls::ProgressResponder::complete_only();
        match self.raft.client_write_ff(cmd, Some(responder)).await {
            Ok(()) => {
                self.submitted.fetch_add(1, Ordering::SeqCst);
                Ok(Submitted::Proposal(rx))
            }
            Err(e) => {
                self.settle_claim(op, &Waited::Dropped);
                Err(Served::Answered(Reply::error(
                    ErrorCode::Crash,
                    format!("raft stopped: {e}"),
                )))
            }
        }
    }

    /// Waits for the outcome of `op`'s submission, mapping failures per the
    /// error rule. `None`: it had joined an entry that was let go (superseded or
    /// discarded), and should be proposed after all.
    async fn await_submitted(
        &self,
        submitted: Submitted,
        op: &Op,
        deadline: Instant,
    ) -> Option<Served> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match submitted {
            Submitted::Proposal(proposal) => {
                let waited = match tokio::time::timeout(wait, proposal).await {
                    Ok(Ok(result)) => Waited::Answered(result.map(|r| r.data.into())),
                    Ok(Err(_)) => Waited::Dropped,
                    Err(_) => Waited::TimedOut,
                };
                self.finished.send_modify(|n| *n += 1);
                self.settle_claim(op, &waited);
                Some(proposal_outcome(waited, Repropose::of(op)))
            }
            Submitted::Joined(rx) => match tokio::time::timeout(wait, rx).await {
                Ok(Ok(outcome)) => Some(Served::Answered(outcome.into())),
                Ok(Err(_)) => None,
                // The entry joined may still commit: as for a proposal of its own.
                Err(_) => Some(proposal_outcome(Waited::TimedOut, Repropose::of(op))),
            },
        }
    }
}

/// A request handed on: to Raft as its own entry, or joined to the entry of the
/// same request already in flight.
enum Submitted {
    /// Proposed; openraft's answer comes here.
    Proposal(Proposal),
    /// Joined; that entry's outcome comes here.
    Joined(Joined),
}

/// Where a retry that joined its request's entry gets the outcome.
type Joined = tokio::sync::oneshot::Receiver<Outcome>;

/// The client and request an op names, for the in-flight registry: a
/// session's key-value request, or a close.
fn naming_of(op: &Op) -> Option<(&str, Naming)> {
    match op {
        Op::Kv {
            session: Some(s), ..
        } => Some((&s.client_id, Naming::Seq(s.seq))),
        Op::CloseSession { client_id } => Some((client_id, Naming::Close)),
        _ => None,
    }
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
fn proposal_outcome(waited: Waited, repropose: Repropose) -> Served {
    match waited {
        Waited::Answered(Ok(reply)) => Served::Answered(reply),
        Waited::Answered(Err(ClientWriteError::ForwardToLeader(f))) => {
            // openraft rejected it before appending: definitely not proposed.
            Served::NotLeader {
                leader: f.leader_id,
            }
        }
        Waited::Answered(Err(ClientWriteError::LogEntryDiscarded(f)))
            if repropose == Repropose::Safe =>
        {
            // The entry may still commit elsewhere, but the session table will
            // deduplicate a re-proposal: retrying is safe.
            Served::Discarded {
                leader: f.leader_id,
            }
        }
        Waited::Answered(Err(e)) => Served::Answered(Reply::error(
            ErrorCode::Crash,
            format!("proposal outcome unknown: {e}"),
        )),
        Waited::Dropped => Served::Answered(Reply::error(
            ErrorCode::Crash,
            "raft dropped the proposal; it may still take effect",
        )),
        Waited::TimedOut => Served::Answered(Reply::error(
            ErrorCode::Timeout,
            "proposed but not committed in time; it may still take effect",
        )),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::{KvOp, parse_line};
    use crate::raft::network::RpcRequest;
    use openraft::errors::ForwardToLeader;
    use serde_json::Value;

    pub(in crate::node) fn write_op(key: Value, value: Value) -> Op {
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

    pub(in crate::node) fn entry(op: Op) -> crate::raft::Entry {
        crate::raft::Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(u64::MAX, u64::MAX, u64::MAX),
            payload: openraft::EntryPayload::Normal(Command::new(u64::MAX, op)),
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
        for repropose in [Repropose::Unsafe, Repropose::Safe] {
            let cases = [
                Waited::Answered(Err(discarded())),
                Waited::Dropped,
                Waited::TimedOut,
            ];
            for waited in cases {
                match proposal_outcome(waited, repropose) {
                    Served::Answered(reply) => {
                        let code = reply.error_code().expect("an error");
                        assert!(!code.is_definite(), "{code:?}");
                    }
                    Served::Discarded { .. } => {
                        assert_eq!(repropose, Repropose::Safe, "only a deduplicated retry");
                    }
                    Served::NotLeader { .. } => panic!("a proposal that may be in a log"),
                }
            }
            let rejected = Waited::Answered(Err(ClientWriteError::ForwardToLeader(
                ForwardToLeader::empty(),
            )));
            assert!(matches!(
                proposal_outcome(rejected, repropose),
                Served::NotLeader { .. }
            ));
        }
    }
}
