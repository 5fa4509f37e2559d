//! The node's story at INFO: a task that watches Raft's metrics and logs one
//! line per change that matters to someone reading `node.log` after the fact:
//! an election started or won, a new term, the leader (by name) it follows, and
//! the membership. openraft's own log lines are kept at error by the default
//! filter (`crate::cli::init_logging`), so these lines are the account of who
//! led when.
//!
//! Snapshots (taken, installed, size and index) and the sessions that GC
//! entries expire or that are evicted are logged where they happen, in the
//! state machine's adapter (`crate::raft::sm_store`).
//!
//! Owns nothing the node decides with: it only reads the metrics.

use std::collections::BTreeMap;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::raft::{Peer, Raft};

/// What was last logged.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    term: u64,
    state: Option<ServerState>,
    /// The term of the last candidacy logged.
    candidate_term: u64,
    /// The leader followed, and the term it was logged with.
    leader: Option<u64>,
    leader_term: u64,
    /// Voters and learners by name, and the log index of the membership.
    membership: Option<(Vec<String>, Vec<String>, Option<u64>)>,
}

/// Starts the task; it ends when Raft stops (its metrics channel closes).
/// `members` names nodes the membership does not (yet) hold.
pub(super) fn spawn(raft: &Raft, name: String, members: BTreeMap<u64, Peer>) {
    let mut rx = raft.metrics();
    tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            {
                let m = rx.borrow_watched();
                let membership = m.membership_config.membership();
                let name_of = |id: u64| {
                    membership
                        .get_node(&id)
                        .or_else(|| members.get(&id))
                        .map_or_else(|| format!("node {id}"), |p| p.name.clone())
                };
                let term = m.current_term;
                if term != seen.term {
                    if seen.term == 0 && seen.state.is_none() {
                        tracing::info!("{name}: term {term} (from the log)");
                    } else {
                        tracing::info!("{name}: term {term} began (was {})", seen.term);
                    }
                    seen.term = term;
                }
                if seen.state != Some(m.state) {
                    match m.state {
                        ServerState::Candidate => {
                            tracing::info!("{name}: election started: candidate in term {term}");
                            seen.candidate_term = term;
                        }
                        ServerState::Leader => {
                            // A leader stood in this term, but the watch keeps only
                            // the latest metrics: a quick win can hide the candidacy.
                            if seen.candidate_term != term {
                                tracing::info!(
                                    "{name}: election started: candidate in term {term}"
                                );
                                seen.candidate_term = term;
                            }
                            tracing::info!("{name}: election won: leader of term {term}")
                        }
                        ServerState::Follower if seen.state.is_some() => {
                            tracing::info!("{name}: follower in term {term}")
                        }
                        ServerState::Learner if seen.state.is_some() => {
                            tracing::info!("{name}: learner in term {term}")
                        }
                        _ => {}
                    }
                    seen.state = Some(m.state);
                }
                // Also the same leader in a new term: it won another election.
                let new_term_of_leader = m.current_leader.is_some() && term != seen.leader_term;
                if m.current_leader != seen.leader || new_term_of_leader {
                    match m.current_leader {
                        Some(id) => {
                            tracing::info!("{name}: leader is {} (term {term})", name_of(id))
                        }
                        None => tracing::info!(
                            "{name}: no leader known (term {term}; was {})",
                            seen.leader.map_or_else(|| "none".into(), name_of)
                        ),
                    }
                    seen.leader = m.current_leader;
                    seen.leader_term = term;
                }
                let voters: Vec<String> = membership.voter_ids().map(name_of).collect();
                let learners: Vec<String> = membership.learner_ids().map(name_of).collect();
                let at = m.membership_config.log_id().as_ref().map(|l| l.index());
                let now = Some((voters, learners, at));
                if now != seen.membership {
                    if let Some((voters, learners, Some(at))) = &now {
                        tracing::info!(
                            "{name}: membership: voters [{}], learners [{}] (log index {at})",
                            voters.join(", "),
                            learners.join(", "),
                        );
                    }
                    seen.membership = now;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}
