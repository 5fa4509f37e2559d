//! What a node knows about itself and the cluster ([`NodeStatus`], the TCP
//! `status` request's answer), read from Raft's metrics and the applied state.
//! It may not change anything.

use std::collections::BTreeMap;

use openraft::async_runtime::WatchReceiver;

use super::Node;

impl Node {
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
            role: Role::from(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.as_ref().map(|l| l.index()),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index()),
            purged_index: m.purged.as_ref().map(|l| l.index()),
            sessions,
            members: membership
                .nodes()
                .map(|(id, peer)| (*id, peer.clone()))
                .collect(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            pid: Some(std::process::id()),
            replicated: m.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index())))
                    .collect()
            }),
            hello_refused: self.transport.refusals(),
            cluster_key: self.transport.keyed(),
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
    /// Its Raft role (`"Leader"`, `"Follower"`, ... on the wire).
    pub role: Role,
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
    /// Every member of the current membership (voters and learners) by id: its
    /// name and address, so a client can show the leader by name.
    #[serde(default)]
    pub members: BTreeMap<u64, crate::raft::Peer>,
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
    /// Peers that refuse this node's hello, and why (a wrong cluster key, an
    /// address in `--peers` that is another member's), one line each, while
    /// they do: this node cannot reach them. A refusal not heard again for a
    /// few seconds (an address no longer dialed) is left out. Empty when it
    /// reaches every peer it calls (or has no hellos: Maelstrom mode).
    #[serde(default)]
    pub hello_refused: Vec<String>,
    /// Whether this node has a cluster key (TCP mode; null in Maelstrom mode).
    /// In a cluster whose members have one, a node without it follows the
    /// leader but cannot forward a request or win a vote: its peers refuse its
    /// hellos.
    #[serde(default)]
    pub cluster_key: Option<bool>,
}

/// A node's Raft role, as [`NodeStatus`] reports it: on the wire its variant's
/// name (`"Leader"`, `"Follower"`, `"Candidate"`, `"Learner"`, `"Shutdown"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Leads the cluster: serves reads and proposals.
    Leader,
    /// Replicates the leader's log and votes.
    Follower,
    /// Campaigning to become leader.
    Candidate,
    /// Replicates the log without voting.
    Learner,
    /// Raft is shutting down.
    Shutdown,
}

impl From<openraft::ServerState> for Role {
    fn from(state: openraft::ServerState) -> Role {
        use openraft::ServerState as S;
        match state {
            S::Leader => Role::Leader,
            S::Follower => Role::Follower,
            S::Candidate => Role::Candidate,
            S::Learner => Role::Learner,
            S::Shutdown => Role::Shutdown,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::ServerState;

    /// The role goes on the wire spelled as before it was typed (openraft's
    /// state names), so a status reply reads the same.
    #[test]
    fn a_role_is_spelled_as_openraft_names_the_state() {
        for state in [
            ServerState::Leader,
            ServerState::Follower,
            ServerState::Candidate,
            ServerState::Learner,
            ServerState::Shutdown,
        ] {
            let role = Role::from(state);
            let wire = format!("\"{state:?}\"");
            assert_eq!(serde_json::to_string(&role).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Role>(&wire).unwrap(), role);
            assert_eq!(role.to_string(), format!("{state:?}"));
        }
    }
}
