//! Changing the membership (leader only): adding a member as a learner, waiting
//! for it to catch up, making it a voter; removing a member. Each failure is
//! definite only when openraft refused the step before appending anything. It
//! may not serve clients' requests.

use std::time::Duration;

use tokio::time::Instant;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};

use super::Node;
use crate::protocol::ErrorCode;
use crate::raft::{Peer, TypeConfig};

/// openraft's `blocking` for `add_learner`: return once the learner is in the
/// membership. [`Node::add_member`] then waits for it to catch up itself, within
/// its own deadline, and can undo the step if it does not.
const ADD_LEARNER_BLOCKING: bool = false;

/// openraft's `retain` for `change_membership`: a voter removed by a change
/// leaves the membership rather than staying on as a learner.
const RETAIN_REMOVED: bool = false;

/// How far a new member got when it did not catch up in time.
struct NotCaughtUp {
    /// The last index the leader has confirmed replicated to it (none: null).
    matched: Option<u64>,
    /// Whether this node still leads (it knows the replication state only then).
    leading: bool,
}

impl NotCaughtUp {
    /// How far it got of `target`, for an error text.
    fn describe(&self, target: Option<u64>) -> String {
        let index = |i: Option<u64>| i.map_or("nothing".to_string(), |i| format!("index {i}"));
        format!(
            "replicated to it: {} of {}{}",
            index(self.matched),
            index(target),
            if self.leading {
                ""
            } else {
                "; this node lost the lead"
            }
        )
    }
}

/// Why a membership change was not made, or may not have been.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipError {
    /// This node does not lead: nothing was changed, and the same change may
    /// succeed at the leader (the CLI retries it there).
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<u64>,
        /// What was being done.
        what: String,
    },
    /// Refused or failed: the code is definite only if nothing changed.
    Failed {
        /// The error code.
        code: ErrorCode,
        /// What happened.
        text: String,
    },
}

impl MembershipError {
    /// The error code of the reply.
    pub fn code(&self) -> ErrorCode {
        match self {
            MembershipError::NotLeader { .. } => ErrorCode::TemporarilyUnavailable,
            MembershipError::Failed { code, .. } => *code,
        }
    }

    /// The text of the reply.
    pub fn text(&self) -> String {
        match self {
            MembershipError::NotLeader { leader, what } => {
                format!("not the leader (leader {leader:?}) for {what}; nothing was changed")
            }
            MembershipError::Failed { text, .. } => text.clone(),
        }
    }

    /// The error reply: `error {code, text}`, and for [`MembershipError::NotLeader`]
    /// also `"not_leader": true`, the typed mark a client retries on.
    pub fn body(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut body = super::error_body(self.code(), &self.text());
        if matches!(self, MembershipError::NotLeader { .. }) {
            body.insert(NOT_LEADER_FIELD.into(), serde_json::Value::Bool(true));
        }
        body
    }
}

/// The field of a membership error reply that marks "retry at the leader".
pub const NOT_LEADER_FIELD: &str = "not_leader";

impl From<(ErrorCode, String)> for MembershipError {
    fn from((code, text): (ErrorCode, String)) -> MembershipError {
        MembershipError::Failed { code, text }
    }
}

/// A failed membership step.
type StepError = MembershipError;

/// A member as the current membership holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its Raft id.
    pub id: u64,
    /// Its name and address.
    pub peer: Peer,
    /// Whether it votes (else it is a learner).
    pub voter: bool,
}

impl Node {
    /// Member `id` in the current membership, if it is one.
    fn member(&self, id: u64) -> Option<Member> {
        self.membership_nodes().into_iter().find(|m| m.id == id)
    }

    /// The current membership: every node with its address and whether it votes.
    pub fn membership_nodes(&self) -> Vec<Member> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, p)| Member {
                id: *id,
                peer: p.clone(),
                voter: voters.contains(id),
            })
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
    ) -> Result<Option<String>, StepError> {
        tokio::time::timeout(step, self.ready_for_change())
            .await
            .map_err(|_| {
                StepError::from((
                    ErrorCode::Timeout,
                    format!(
                        "completing an interrupted membership change not done within \
                         {step:?}; it may still be done. {peer} was not added"
                    ),
                ))
            })??;
        match self.member(id) {
            Some(Member {
                peer: old,
                voter: true,
                ..
            }) if old == peer => {
                return Ok(Some(format!("{peer} is a voter already")));
            }
            Some(Member {
                peer: old,
                voter: true,
                ..
            }) => {
                return Err((
                    ErrorCode::MalformedRequest,
                    format!("node id {id} is a voter already, as {old}; nothing was changed"),
                )
                    .into());
            }
            Some(Member {
                peer: old,
                voter: false,
                ..
            }) if old != peer => {
                return Err((
                    ErrorCode::MalformedRequest,
                    format!(
                        "node id {id} is a learner already, as {old}; remove-node {} first",
                        old.name
                    ),
                )
                    .into());
            }
            // A learner left by an earlier attempt: wait for it as below.
            Some(_) => {}
            None => self.add_learner(id, &peer, step).await?,
        }
        let target = self.raft.metrics().borrow_watched().last_log_index;
        if let Err(behind) = self.wait_caught_up(id, target, catch_up).await {
            // A node that refuses this leader's hello (a wrong cluster key, a
            // name that is not its own) can never catch up: say so.
            let dialed = format!("{} at {} refused", peer.name, peer.addr);
            let refused: Vec<String> = self
                .transport
                .refusals()
                .into_iter()
                .filter(|r| r.starts_with(&dialed))
                .collect();
            let why = format!(
                "{peer} did not catch up within {catch_up:?} ({}){}",
                behind.describe(target),
                refused.iter().map(|r| format!("; {r}")).collect::<String>()
            );
            return Err(self.undo_learner(id, &peer, &why, step).await);
        }
        self.promote(id, &peer, step).await.map(|()| None)
    }

    /// The first step of adding a member: `id` at `peer` as a learner, within `step`.
    async fn add_learner(&self, id: u64, peer: &Peer, step: Duration) -> Result<(), StepError> {
        let added = tokio::time::timeout(
            step,
            self.raft
                .add_learner(id, peer.clone(), ADD_LEARNER_BLOCKING),
        )
        .await;
        match added {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(refused_or_unknown("adding it as a learner", e)),
            Err(_) => Err((
                ErrorCode::Timeout,
                format!(
                    "adding {peer} as a learner not done within {step:?}; it may still \
                     become a learner (not a voter)"
                ),
            )
                .into()),
        }
    }

    /// After a learner did not catch up (`why`): removes it again, within `step`,
    /// so the membership is as before. The error to answer: definite only if the
    /// removal is known to be done.
    async fn undo_learner(&self, id: u64, peer: &Peer, why: &str, step: Duration) -> StepError {
        let ids = std::collections::BTreeSet::from([id]);
        let removed = tokio::time::timeout(
            step,
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(ids), RETAIN_REMOVED),
        )
        .await;
        let failed: (ErrorCode, String) = match removed {
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
        };
        failed.into()
    }

    /// The last step of adding a member: the caught-up learner `id` made a
    /// voter, within `step`.
    async fn promote(&self, id: u64, peer: &Peer, step: Duration) -> Result<(), StepError> {
        let voters = std::collections::BTreeSet::from([id]);
        let promoted = tokio::time::timeout(
            step,
            self.raft
                .change_membership(openraft::ChangeMembers::AddVoterIds(voters), RETAIN_REMOVED),
        )
        .await;
        match promoted {
            Ok(Ok(_)) => Ok(()),
            // A voter change takes two entries (joint, then final): an error may
            // come after the first was appended.
            Ok(Err(e)) => Err((
                ErrorCode::Crash,
                format!("making {peer} a voter failed ({e}); it may still take effect"),
            )
                .into()),
            Err(_) => Err((
                ErrorCode::Timeout,
                format!("making {peer} a voter not done within {step:?}; it may still take effect"),
            )
                .into()),
        }
    }

    /// Makes this leader ready for a membership change: completes a change
    /// left halfway, and refuses if this node is not a voter of the membership
    /// (it may lead for a while after its own removal, until it steps down).
    ///
    /// A voter change takes two entries, the joint membership (old and new
    /// voters) and then the new one alone; a leader that loses the lead between
    /// the two leaves the joint membership behind. openraft starts the next
    /// change from there, and a change whose first step leaves out the leader
    /// making it breaks openraft's rule that only a member leads: a debug
    /// assertion trips when the second step is appended (found by the
    /// simulator, as is the removed leader still leading). So a joint
    /// membership is first completed, in one entry (its newer half alone),
    /// while the leader is still a member of it. Either refusal is definite:
    /// the change asked for was not made, and may be retried at the leader.
    async fn ready_for_change(&self) -> Result<(), StepError> {
        let (joint, member) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let configs = m.membership_config.membership().get_joint_config();
            (
                configs.len() > 1,
                configs.iter().any(|c| c.contains(&self.id)),
            )
        };
        let not_a_voter = |what: &str| -> StepError {
            (
                ErrorCode::TemporarilyUnavailable,
                format!(
                    "{what}: this node leads but is not a voter, so it is stepping down; \
                     the change asked for was not made: retry at the new leader"
                ),
            )
                .into()
        };
        if !member {
            return Err(not_a_voter("removed from the membership"));
        }
        if !joint {
            return Ok(());
        }
        let what = "completing an interrupted membership change";
        self.raft
            .change_membership(
                openraft::ChangeMembers::AddVoterIds(Default::default()),
                RETAIN_REMOVED,
            )
            .await
            .map_err(|e| refused_or_unknown(what, e))?;
        if !self
            .membership_nodes()
            .iter()
            .any(|m| m.id == self.id && m.voter)
        {
            return Err(not_a_voter(what));
        }
        Ok(())
    }

    /// Waits until the leader has replicated to `id` up to `target`, for at most
    /// `within`.
    async fn wait_caught_up(
        &self,
        id: u64,
        target: Option<u64>,
        within: Duration,
    ) -> Result<(), NotCaughtUp> {
        let deadline = Instant::now() + within;
        let mut rx = self.raft.metrics();
        loop {
            let matched = {
                let m = rx.borrow_watched();
                match &m.replication {
                    None => {
                        return Err(NotCaughtUp {
                            matched: None,
                            leading: false,
                        });
                    }
                    Some(r) => r.get(&id).cloned().flatten().map(|l| l.index()),
                }
            };
            if matched >= target {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NotCaughtUp {
                    matched,
                    leading: true,
                });
            }
            // The metrics channel closes when Raft shuts down: then stop, rather
            // than loop on an error returned at once until the deadline.
            if let Ok(Err(_)) = tokio::time::timeout(deadline - now, rx.changed()).await {
                return Err(NotCaughtUp {
                    matched,
                    leading: false,
                });
            }
        }
    }

    /// Removes member `id` (leader only): a voter from the voters and the
    /// membership, a learner from the membership. Ok carries a note when there
    /// was nothing to do.
    pub async fn remove_member(&self, id: u64) -> Result<Option<String>, StepError> {
        self.ready_for_change().await?;
        let ids = std::collections::BTreeSet::from([id]);
        let change = match self.member(id) {
            None => return Ok(Some(format!("node id {id} is not a member"))),
            Some(Member { voter: true, .. }) => openraft::ChangeMembers::RemoveVoters(ids),
            Some(Member { voter: false, .. }) => openraft::ChangeMembers::RemoveNodes(ids),
        };
        match self.raft.change_membership(change, RETAIN_REMOVED).await {
            Ok(_) => Ok(None),
            // openraft checks the change before proposing it (an empty voter set,
            // a change already in progress): nothing reached the log.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err((
                ErrorCode::MalformedRequest,
                format!("removing it was refused ({e}); nothing was changed"),
            )
                .into()),
            Err(e) => Err((
                ErrorCode::Crash,
                format!("removing it failed ({e}); it may still take effect"),
            )
                .into()),
        }
    }
}

/// A membership step that failed: definite if openraft refused it before
/// appending anything (not the leader, another change in progress), else not.
fn refused_or_unknown(
    what: &str,
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> StepError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MembershipError::NotLeader {
            leader: f.leader_id,
            what: what.to_string(),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => (
            ErrorCode::TemporarilyUnavailable,
            format!("{what}: refused ({e}); nothing was changed"),
        )
            .into(),
        e => (
            ErrorCode::Crash,
            format!("{what}: {e}; it may still take effect"),
        )
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Retry at the leader" is a typed field of the reply, not a text to match:
    /// only a not-leader refusal carries it, and its code stays definite (11).
    #[test]
    fn a_not_leader_refusal_is_marked_by_a_field() {
        let not_leader = MembershipError::NotLeader {
            leader: Some(2),
            what: "add_node".into(),
        }
        .body();
        assert_eq!(
            not_leader.get(NOT_LEADER_FIELD),
            Some(&serde_json::Value::Bool(true))
        );
        assert_eq!(not_leader.get("code"), Some(&serde_json::json!(11)));
        let refused = MembershipError::from((
            ErrorCode::TemporarilyUnavailable,
            "not the leader in its text, but refused for another reason".to_string(),
        ))
        .body();
        assert_eq!(refused.get(NOT_LEADER_FIELD), None);
        assert_eq!(refused.get("code"), Some(&serde_json::json!(11)));
    }
}
