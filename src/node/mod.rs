//! The node: one Raft member with its state machine and its way to reach peers.
//! Maelstrom mode and TCP mode both drive a [`Node`]. This file owns the [`Node`]
//! struct, starting it (storage, Raft, the background duties), the leader it
//! believes in, the entry clock, and how it ends ([`Node::fatal`],
//! [`Node::shutdown`]). Each duty lives in its own file: `serve` (local reads and
//! proposals, the error rule), `forward` (to the leader), `peer` (peers' RPCs),
//! `duties` (the leader's GC and limits, the log's byte budget), `membership`,
//! `status`, `story` (elections, terms, leaders and membership in the log). This file holds no serving, forwarding or RPC logic itself; code
//! outside `node/` uses the names re-exported here, never the files' own paths.
//!
//! The error rule: a definite error is only produced on paths where nothing was
//! proposed; once a proposal may have reached the log, every failure becomes
//! error 0 (timeout) or 13 (crash).

pub mod budget;
mod duties;
mod forward;
mod leader_gone;
mod membership;
mod peer;
mod serve;
mod status;
mod story;

pub use forward::{ForwardReply, Forwarded};
pub use membership::{Member, MembershipError, NOT_LEADER_FIELD};
pub use peer::error_body;
pub use serve::{BatchStarted, Started, check_entry_bytes, command_bytes};
pub use status::{NodeStatus, Role};

pub mod driver;
mod sequencer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use openraft::async_runtime::WatchReceiver;
use openraft::storage::RaftLogStorage;

use crate::config::Config;
use crate::raft::network::{BulkLimits, Network, Transport};
use crate::raft::sm_store::StateMachineStore;
use crate::raft::snapshot_transfer::SnapshotReceiver;
use crate::raft::{Peer, Raft, Storage, TypeConfig};

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
    /// The wall clock entries are stamped from.
    clock: WallClock,
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
    /// Why a duty task of this node died by panicking, if one did
    /// ([`duties::spawn_duty`]): [`Node::fatal`] then ends the process.
    duty_failed: duties::DutyFailure,
    /// Set when a write of the log fails: [`Node::fatal`] then ends the process
    /// at once, not at the next append.
    log_failed: crate::raft::log_store::LogFailure,
    /// Bytes of large replies built and not yet written, to clients and to
    /// forwarding peers ([`Config::reply_buffers_bytes_max`]; [`Node::hold_reply`]).
    replies: Arc<budget::ByteBudget>,
    /// The leader this node was told is gone, for its term
    /// ([`Node::leader_process_gone`]).
    gone_leader: leader_gone::GoneLeader,
}

/// The wall clock a node stamps its entries from (milliseconds since the Unix
/// epoch): the system's, or the simulator's, which jumps.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl WallClock {
    /// The system clock.
    pub fn system() -> WallClock {
        WallClock(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        }))
    }

    /// A clock read through `now_ms`.
    pub fn new(now_ms: impl Fn() -> u64 + Send + Sync + 'static) -> WallClock {
        WallClock(Arc::new(now_ms))
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WallClock({} ms)", self.now_ms())
    }
}

/// How often [`Node::fatal`] looks at Raft's running state besides when its role
/// changes: a failed node exits within about this.
const FATAL_CHECK_PERIOD: Duration = Duration::from_millis(500);

/// How long a lone node's start waits for it to elect itself, in election
/// timeouts: it needs one; the rest is room for a slow start.
const LONE_ELECTION_WAIT_TIMEOUTS: u64 = 4;
const _: () = assert!(LONE_ELECTION_WAIT_TIMEOUTS >= 1);

/// How long a retry keeps away from the leader that just failed it, in
/// heartbeats: a new leader may refuse writes until the old leader's lease
/// ends, so the same leader is taken again only after this.
const FAILED_LEADER_BACKOFF_HEARTBEATS: u64 = 2;

/// The time kept back before a request's deadline, in heartbeats, so a retried
/// request still has time to commit: with less left, no attempt is made.
const RETRY_MARGIN_HEARTBEATS: u64 = 1;

/// The shortest time between two attempts at serving one request: an attempt
/// that fails faster waits out the rest before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
const _: () = assert!(RETRY_PAUSE.as_millis() > 0);

/// The longest wait between looks at the leader while waiting for one: a leader
/// change wakes the wait at once; this also catches the end of the back-off.
const LEADER_POLL_MAX: Duration = Duration::from_millis(20);

/// This member's place in forming a new cluster from `initial`: 0 for the
/// highest id, 1 for the next, and so on. `initialize` makes a node stand for
/// election at once, with a first entry whose id carries its own node id; were
/// every member to call it together, all would stand at once and only the
/// highest id's entry would win, a round or two later, deposing whoever won
/// first. So the highest id forms the cluster at once and each other member
/// waits `rank` × `election_timeout_max_ms` first, forming it itself only if
/// no leader's entries reached it meanwhile (the higher ones are down).
fn formation_rank(id: u64, initial: &BTreeMap<u64, Peer>) -> u64 {
    initial.keys().filter(|&&other| other > id).count() as u64
}

/// `Raft::initialize` with `initial`. Every member may call it: all but one
/// get NotAllowed once a log exists, which is fine.
async fn form(raft: &Raft, initial: BTreeMap<u64, Peer>) {
    if let Err(e) = raft.initialize(initial).await {
        tracing::debug!("initialize: {e}");
    }
}

impl Node {
    /// Numbers `members` by position (ids are positions in the list, the same on
    /// every node) and finds `name` among them: Maelstrom mode's membership.
    pub fn number_members(
        name: &str,
        members: Vec<Peer>,
    ) -> Result<(u64, BTreeMap<u64, Peer>), StartError> {
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
        Ok((id, members))
    }

    /// Starts member `id` of `members` on the given storage. `initialize` forms a new
    /// cluster from that membership, in this member's turn (`formation_rank`;
    /// ignored by openraft when a log already exists, so a restarted node rejoins
    /// with no extra step).
    pub async fn start_with<L>(
        id: u64,
        members: BTreeMap<u64, Peer>,
        transport: Arc<dyn Transport>,
        config: Config,
        storage: Storage<L>,
        initialize: Option<BTreeMap<u64, Peer>>,
        clock: WallClock,
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
            Arc::new(config.raft_config_with(sm.durable_snapshots())?),
            Network::new(transport.clone(), BulkLimits::from_config(&config)),
            storage.log,
            sm.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        if let Some(initial) = initialize {
            let wait = Duration::from_millis(
                formation_rank(id, &initial).saturating_mul(config.election_timeout_max_ms),
            );
            if wait.is_zero() {
                form(&raft, initial).await;
            } else {
                let raft = raft.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    // The first member's log reached this node meanwhile.
                    if matches!(raft.is_initialized().await, Ok(false)) {
                        form(&raft, initial).await;
                    }
                });
            }
        }
        let replies = budget::ByteBudget::new(config.reply_buffers_bytes_max);
        let node = Arc::new(Node {
            id,
            name,
            raft,
            sm,
            members,
            transport,
            config,
            clock,
            last_ts_ms: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            finished: tokio::sync::watch::Sender::new(0),
            snapshots_in,
            stopping: AtomicBool::new(false),
            duty_failed: duties::DutyFailure::default(),
            log_failed: storage.failure,
            gone_leader: Default::default(),
            replies,
        });
        story::spawn(&node.raft, node.name.clone(), node.members.clone());
        node.clone().spawn_leader_duties();
        node.clone().spawn_log_budget(storage.mirror);
        if node.members.len() == 1 && node.leader().is_none() {
            // A lone node elects itself at once; answering init after that keeps
            // the first requests of a script in order without any waiting.
            let wait_ms = node.config.election_timeout_max_ms * LONE_ELECTION_WAIT_TIMEOUTS;
            let deadline = Instant::now() + Duration::from_millis(wait_ms);
            node.wait_for_leader(None, None, deadline).await;
        }
        Ok(node)
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
        let heartbeat_ms = self.config.heartbeat_interval_ms;
        let backoff_until =
            Instant::now() + Duration::from_millis(heartbeat_ms * FAILED_LEADER_BACKOFF_HEARTBEATS);
        let margin = Duration::from_millis(heartbeat_ms * RETRY_MARGIN_HEARTBEATS);
        // The vote when the attempt failed: once it changes (a new term, or the
        // same leader's vote now granted by a quorum, as when this node has just
        // won an election), the failed leader is worth trying again at once.
        let failed_vote = rx.borrow_watched().vote;
        loop {
            let now = Instant::now();
            if now + margin >= deadline {
                return None;
            }
            let (current, vote) = {
                let m = rx.borrow_watched();
                (m.current_leader, m.vote)
            };
            if current.is_some()
                && (current != failed || now >= backoff_until || vote != failed_vote)
            {
                return current;
            }
            let step = (deadline - margin - now).min(LEADER_POLL_MAX);
            if let Ok(Err(_)) = tokio::time::timeout(step, rx.changed()).await {
                // Raft has stopped (its metrics are gone): no leader will come,
                // and waiting on a closed channel would spin until the deadline.
                return None;
            }
        }
    }

    /// The timestamp for a new entry: the wall clock, but never behind the cluster
    /// clock (the log's time) nor behind what this node already stamped, so a new
    /// leader with a slow clock starts from the log's time (LogCabin's cluster clock).
    pub fn next_ts_ms(&self) -> u64 {
        let wall = self.clock.now_ms();
        let log_time = self.sm.clock_ms();
        let ts = wall.max(log_time);
        let prev = self.last_ts_ms.fetch_max(ts, Ordering::SeqCst);
        ts.max(prev)
    }

    /// Resolves with the cause once Raft has stopped without being asked to: a
    /// storage error (a failed log write or sync, a full disk), a panic in Raft's
    /// core, or a stop from inside; or at once when a write of the log fails,
    /// even one no caller waits on (the store refuses every later write). A
    /// node in that state can no longer vote, append or apply, yet would still
    /// answer `status` and heartbeats; its process must end (loudly, non-zero)
    /// so a supervisor restarts it. Pending forever while Raft runs and
    /// after [`Node::shutdown`].
    ///
    /// It wakes on changes of the server metrics (role, leader, membership: rare)
    /// and once every `FATAL_CHECK_PERIOD`, never per commit: the full metrics
    /// change on every applied entry, and a watcher woken by each of them cost a
    /// thread wake-up per write.
    pub async fn fatal(&self) -> String {
        let metrics = self.raft.metrics();
        let mut server = self.raft.server_metrics();
        loop {
            let failed = self.duty_failed.get();
            let failed = failed.or_else(|| {
                self.log_failed
                    .get()
                    .map(|why| format!("the log can no longer be written: {why}"))
            });
            let failed = failed.or_else(|| {
                let m = metrics.borrow_watched();
                match &m.running_state {
                    Err(e) => Some(format!("raft stopped: {e}")),
                    Ok(()) if m.state == openraft::ServerState::Shutdown => {
                        Some("raft shut down".to_string())
                    }
                    Ok(()) => None,
                }
            });
            let asked = self.stopping.load(Ordering::Acquire);
            match failed {
                Some(why) if !asked => return why,
                Some(_) => return std::future::pending().await,
                None => {}
            }
            let closed = tokio::select! {
                biased;
                _ = self.log_failed.wait() => false,
                r = server.changed() => r.is_err(),
                () = tokio::time::sleep(FATAL_CHECK_PERIOD) => false,
            };
            if closed {
                if self.stopping.load(Ordering::Acquire) {
                    return std::future::pending().await;
                }
                // The error Raft stopped on, if its last metrics carry it.
                if let Err(e) = &metrics.borrow_watched().running_state {
                    return format!("raft stopped: {e}");
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

/// A node that is a whole cluster by itself, in memory, for unit tests.
#[cfg(test)]
pub(crate) mod alone {
    use futures::future::BoxFuture;

    use super::*;
    use crate::raft::log_store::{LogFailure, MemLogStore};
    use crate::raft::network::{Body, CallError, RpcRequest};

    /// A single-node cluster calls nobody.
    struct Alone;

    impl Transport for Alone {
        fn call(
            &self,
            peer: &Peer,
            _req: RpcRequest,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<Body, CallError>> {
            let peer = peer.to_string();
            Box::pin(async move {
                Err(CallError::Unreachable {
                    peer,
                    why: "a single-node cluster".into(),
                })
            })
        }
    }

    /// Node `n1` (id 1), forming its cluster of one; `failure` is its log's.
    pub(crate) async fn start(config: Config, failure: LogFailure) -> Arc<Node> {
        let log = MemLogStore::default();
        let storage = Storage {
            mirror: log.mirror(),
            log,
            sm: StateMachineStore::new(),
            failure,
        };
        let peer = Peer {
            name: "n1".into(),
            addr: String::new(),
        };
        let members = BTreeMap::from([(1, peer)]);
        Node::start_with(
            1,
            members.clone(),
            Arc::new(Alone),
            config,
            storage,
            Some(members),
            WallClock::system(),
        )
        .await
        .expect("the node starts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log_store::LogFailure;

    /// The highest id forms a new cluster at once; the others wait their turn.
    #[test]
    fn the_highest_id_forms_the_cluster_first() {
        let peer = |i: u64| Peer {
            name: format!("n{i}"),
            addr: format!("127.0.0.1:{}", 7000 + i),
        };
        let members: BTreeMap<u64, Peer> = [1, 2, 3].into_iter().map(|i| (i, peer(i))).collect();
        let ranks: Vec<u64> = [1, 2, 3]
            .iter()
            .map(|&i| formation_rank(i, &members))
            .collect();
        assert_eq!(ranks, [2, 1, 0]);
        // A lone node, and Maelstrom's numbering from 0.
        assert_eq!(formation_rank(1, &BTreeMap::from([(1, peer(1))])), 0);
        let from0: BTreeMap<u64, Peer> = (0..5).map(|i| (i, peer(i))).collect();
        assert_eq!(formation_rank(0, &from0), 4);
        assert_eq!(formation_rank(4, &from0), 0);
    }

    /// A failed log write nobody waits on (the committed pointer, a purge, a
    /// checkpoint) ends the node at once: `fatal` resolves with its cause while
    /// Raft itself still runs, rather than at the next append.
    #[tokio::test]
    async fn a_failed_log_write_is_fatal_at_once() {
        let failure = LogFailure::default();
        let node = alone::start(Config::default(), failure.clone()).await;
        let fatal = tokio::spawn({
            let node = node.clone();
            async move { node.fatal().await }
        });
        failure.set("input/output error");
        failure.set("a later failure is not the cause");
        let why = tokio::time::timeout(Duration::from_secs(30), fatal)
            .await
            .expect("fatal resolves")
            .expect("fatal does not panic");
        assert_eq!(
            why, "the log can no longer be written: input/output error",
            "the first cause is kept"
        );
        assert!(node.raft.metrics().borrow_watched().running_state.is_ok());
        node.shutdown().await;
    }
}
