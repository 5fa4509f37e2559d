//! Failover when the leader's process is known to be gone.
//!
//! openraft's followers refuse votes while their leader's lease runs (the
//! longest election timeout since they last heard it), so after a leader dies
//! the first candidate is normally refused and a new leader wins about one
//! lease plus one timeout later. A transport that sees more than silence can
//! tell this node: over TCP, the leader's connection closed and its port then
//! refused a connection, which only happens when no process listens there
//! (a partition drops packets, it does not refuse them; a slow or paused
//! leader still accepts). Then, for that leader's term only:
//!
//! - this node grants votes despite the lease (the vote request is handed to
//!   openraft as a leadership transfer, which openraft grants under a lease:
//!   every other rule, the log comparison and the term, still applies);
//! - after `leader_gone_stagger_ms` times its rank among the other voters, if
//!   no new leader has appeared, it stands for election itself.
//!
//! A voter without that knowledge keeps refusing, so a leader that is alive
//! keeps the lease's protection. Safety does not rest on the lease: reads
//! confirm leadership with a quorum (read index), never by time. The lease only
//! keeps a working leader from being disturbed; see docs/architecture.md.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::raft::VoteRequest;

use super::Node;
use crate::raft::TypeConfig;

/// How often a node that was asked for its vote looks for openraft's answer
/// before deciding whether to stand.
const ASKED_POLL: Duration = Duration::from_millis(2);

/// The leader this node knows to be gone, and whether it will still stand.
#[derive(Debug, Default)]
pub(super) struct GoneLeader(Mutex<Option<Gone>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gone {
    /// (term, node id) of the gone leader's vote.
    leader: (u64, u64),
    /// Whether this node will stand once its stagger has passed.
    stand: Stand,
}

/// Whether a node that knows its leader gone will stand for election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stand {
    /// Yes, unless a new leader appears first.
    Yes,
    /// A candidate asked for this node's vote and openraft has not answered
    /// yet (it answers after the vote is durable): wait for the answer.
    Asked,
    /// No: this node granted its vote to another candidate (standing too
    /// would split the votes; openraft's own timeout takes over if that
    /// candidacy fails).
    No,
}

impl GoneLeader {
    fn get(&self) -> Option<Gone> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, v: Option<Gone>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// Moves the standing decision of the gone leader's entry with `f`.
    fn update(&self, f: impl FnOnce(Stand) -> Stand) {
        if let Some(g) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            g.stand = f(g.stand);
        }
    }
}

impl Node {
    /// The committed leader this node follows: (term, id), if any.
    fn followed_leader(&self) -> Option<(u64, u64)> {
        let m = self.raft.server_metrics();
        let m = m.borrow_watched();
        let vote = &m.vote;
        let leader = vote.leader_id();
        (vote.is_committed() && leader.node_id != self.id).then_some((leader.term, leader.node_id))
    }

    /// Told by the transport that the process of node `id` is gone. If `id` is
    /// the leader this node follows, remembers it for that term and, after its
    /// stagger, stands for election unless a new leader appeared meanwhile.
    pub fn leader_process_gone(self: &Arc<Self>, id: u64) {
        let stagger = self.config.leader_gone_stagger_ms;
        if stagger == 0 {
            return;
        }
        let Some((term, leader)) = self.followed_leader().filter(|&(_, l)| l == id) else {
            tracing::debug!("node {id}'s process is gone; it is not the leader this node follows");
            return;
        };
        let voters: Vec<u64> = self
            .membership_nodes()
            .into_iter()
            .filter(|m| m.voter && m.id != leader)
            .map(|m| m.id)
            .collect();
        let Some(rank) = voters.iter().position(|&v| v == self.id) else {
            // A learner neither stands nor votes.
            return;
        };
        self.gone_leader.set(Some(Gone {
            leader: (term, leader),
            stand: Stand::Yes,
        }));
        tracing::info!(
            "leader {id} (term {term}) is gone: its connection closed and its port refuses \
             connections; granting votes despite its lease, standing in {} ms unless \
             another leader appears",
            stagger * (rank as u64 + 1)
        );
        let node = self.clone();
        // Past the first election timeout openraft's own timer stands anyway.
        let give_up = Duration::from_millis(self.config.election_timeout_min_ms);
        tokio::spawn(async move {
            let waited = Duration::from_millis(stagger * (rank as u64 + 1));
            tokio::time::sleep(waited).await;
            let deadline = tokio::time::Instant::now() + give_up.saturating_sub(waited);
            loop {
                // Not once the gone leader answered after all or a new leader
                // appeared, nor once this node granted its vote to another.
                let Some(gone) = node
                    .gone_leader
                    .get()
                    .filter(|g| g.leader == (term, leader))
                else {
                    return;
                };
                if node.followed_leader() != Some((term, leader)) {
                    return;
                }
                match gone.stand {
                    Stand::No => return,
                    Stand::Yes => break,
                    Stand::Asked if tokio::time::Instant::now() >= deadline => return,
                    Stand::Asked => tokio::time::sleep(ASKED_POLL).await,
                }
            }
            if let Err(e) = node.raft.trigger().elect(false).await {
                tracing::debug!("standing for election: {e}");
            }
        });
    }

    /// A vote request as this node's openraft should judge it: marked as a
    /// leadership transfer (granted under a lease) when this node knows that
    /// the leader whose lease it holds is gone.
    pub(super) fn vote_request_in_light_of_gone_leader(
        &self,
        mut req: VoteRequest<TypeConfig>,
    ) -> VoteRequest<TypeConfig> {
        if let Some(gone) = self.gone_leader.get()
            && self.followed_leader() == Some(gone.leader)
            && req.vote.leader_id().node_id != gone.leader.1
        {
            req.leadership_transfer = true;
            self.gone_leader
                .update(|s| if s == Stand::Yes { Stand::Asked } else { s });
        }
        req
    }

    /// This node answered a vote request: if it granted the vote, it leaves
    /// the standing to that candidate; if it refused (the candidate's log is
    /// behind this node's), it still stands.
    pub(super) fn vote_answered(&self, granted: bool) {
        self.gone_leader.update(|s| match (s, granted) {
            (Stand::No, _) | (_, true) => Stand::No,
            (_, false) => Stand::Yes,
        });
    }

    /// An append from the leader `(term, id)`: if that is the leader this node
    /// took for gone, it is not (it answers after all), so the lease holds again.
    pub(super) fn heard_from_leader(&self, term: u64, id: u64) {
        if self
            .gone_leader
            .get()
            .is_some_and(|g| g.leader == (term, id))
        {
            tracing::info!("leader {id} (term {term}) answers after all: its lease holds again");
            self.gone_leader.set(None);
        }
    }
}
