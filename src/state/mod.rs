//! The replicated state machine, as a pure function of (state, entry).
//!
//! [`State::apply`] reads no clock, no randomness and does no I/O: time is the
//! leader's timestamp carried by each [`Command`], and every collection is ordered.
//! So every replica that applies the same log holds byte-identical state, and the
//! snapshot ([`State::to_snapshot`]) holds all of it: the KV map, the sessions with
//! their cached replies, the tombstones, the limits and the cluster clock.

pub mod session;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::{ErrorCode, KvOp, Reply, SessionRef};
pub use session::{Admission, ClientId, Removal, SessionLimits, SessionTable};

/// One log entry's payload: what to do, and the leader's clock when it proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The proposing leader's clock (ms). The cluster clock is the max of these.
    pub ts_ms: u64,
    /// The operation.
    pub op: Op,
}

/// The operations the log carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A KV mutation, deduplicated when it carries a session.
    Kv {
        /// The mutation.
        kv: KvOp,
        /// Session fields, if the client uses a session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionRef>,
    },
    /// Register a session; its id is derived from the log index.
    OpenSession,
    /// Free a session at once (it leaves a tombstone).
    CloseSession {
        /// The session.
        client_id: String,
    },
    /// Expire sessions idle since before `cutoff_ms` (the leader's clock minus the
    /// timeout, decided by the leader and carried here so replicas agree).
    Gc {
        /// Sessions last seen before this cluster time are removed.
        cutoff_ms: u64,
    },
    /// Set the replicated session limits (proposed by a leader whose config differs).
    SetLimits(SessionLimits),
}

/// All replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Cluster time (ms): the largest entry timestamp applied. Never goes back.
    pub clock_ms: u64,
    /// The session limits in force.
    pub limits: SessionLimits,
    /// The key-value map, by canonical JSON text of the key.
    pub kv: BTreeMap<String, Value>,
    /// The session table.
    pub sessions: SessionTable,
}

impl State {
    /// A fresh state with these limits.
    pub fn new(limits: SessionLimits) -> State {
        State {
            limits,
            ..State::default()
        }
    }

    /// Applies entry `index` and returns its reply. Pure: same state and entry, same
    /// result, on every replica.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Reply {
        self.clock_ms = self.clock_ms.max(cmd.ts_ms);
        let now = self.clock_ms;
        match &cmd.op {
            Op::Kv { kv, session: None } => self.execute(kv),
            Op::Kv {
                kv,
                session: Some(s),
            } => self.apply_with_session(kv, s, now),
            Op::OpenSession => {
                let id = self.fresh_session_id(index);
                self.sessions.open(id.clone(), now, &self.limits);
                Reply::OpenSessionOk {
                    client_id: id.to_string(),
                }
            }
            Op::CloseSession { client_id } => {
                if self
                    .sessions
                    .remove(client_id, Removal::Closed, &self.limits)
                {
                    Reply::CloseSessionOk
                } else if self.sessions.tombstone(client_id).is_some() {
                    // Closing twice (a retried close) is fine; report success.
                    Reply::CloseSessionOk
                } else {
                    Reply::error(ErrorCode::KeyDoesNotExist, "no such session")
                }
            }
            Op::Gc { cutoff_ms } => {
                let removed = self.sessions.expire_before(*cutoff_ms, &self.limits);
                tracing::debug!(removed, cutoff_ms, "gc applied");
                Reply::WriteOk
            }
            Op::SetLimits(limits) => {
                self.limits = *limits;
                Reply::WriteOk
            }
        }
    }

    /// A linearizable read's answer, from the applied state (no log entry).
    pub fn read(&self, key: &str) -> Reply {
        match self.kv.get(key) {
            Some(v) => Reply::ReadOk { value: v.clone() },
            None => Reply::error(ErrorCode::KeyDoesNotExist, "key does not exist"),
        }
    }

    /// A cached answer for (client, seq) if it executed and the reply is held, without
    /// touching anything: lets a leader answer a retry without a new entry.
    pub fn cached_reply(&self, s: &SessionRef) -> Option<Reply> {
        self.sessions
            .get(&s.client_id)?
            .replies
            .get(&s.seq)
            .cloned()
    }

    fn apply_with_session(&mut self, kv: &KvOp, s: &SessionRef, now: u64) -> Reply {
        let admission =
            self.sessions
                .admit(&s.client_id, s.seq, s.first_outstanding, now, &self.limits);
        match admission {
            Admission::Answer(reply) => reply,
            Admission::Execute => {
                let reply = self.execute(kv);
                self.sessions
                    .record(&s.client_id, s.seq, reply.clone(), &self.limits);
                reply
            }
        }
    }

    fn execute(&mut self, kv: &KvOp) -> Reply {
        match kv {
            KvOp::Write { key, value } => {
                self.kv.insert(key.clone(), value.clone());
                Reply::WriteOk
            }
            KvOp::Cas {
                key,
                from,
                to,
                create,
            } => match self.kv.get_mut(key) {
                Some(cur) if cur == from => {
                    *cur = to.clone();
                    Reply::CasOk
                }
                Some(cur) => Reply::error(
                    ErrorCode::PreconditionFailed,
                    format!("expected {}, had {}", shown(from), shown(cur)),
                ),
                None if *create => {
                    self.kv.insert(key.clone(), to.clone());
                    Reply::CasOk
                }
                None => Reply::error(ErrorCode::KeyDoesNotExist, "key does not exist"),
            },
            KvOp::Add { key, delta } => {
                let cur = match self.kv.get(key) {
                    None => 0,
                    Some(v) => match v.as_i64() {
                        Some(n) => n,
                        None => {
                            return Reply::error(
                                ErrorCode::PreconditionFailed,
                                format!("add needs an integer value, had {}", shown(v)),
                            );
                        }
                    },
                };
                match cur.checked_add(*delta) {
                    Some(total) => {
                        self.kv.insert(key.clone(), Value::from(total));
                        Reply::AddOk { value: total }
                    }
                    None => Reply::error(ErrorCode::PreconditionFailed, "add would overflow"),
                }
            }
        }
    }

    /// `s<index>`, or with a suffix if a client already chose that name.
    fn fresh_session_id(&self, index: u64) -> ClientId {
        let base = format!("s{index}");
        let mut id = ClientId::from(base.as_str());
        let mut n = 1;
        while self.sessions.is_known(&id) {
            id = ClientId::from(format!("{base}-{n}"));
            n += 1;
        }
        id
    }

    /// The snapshot: the whole state as JSON. Deterministic (ordered maps only).
    pub fn to_snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("state serializes")
    }

    /// Restores from [`State::to_snapshot`] bytes, rebuilding derived indexes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, serde_json::Error> {
        let mut state: State = serde_json::from_slice(bytes)?;
        state.sessions.rebuild_index();
        Ok(state)
    }
}

#[cfg(test)]
mod tests;

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Compact JSON: what a log line or openraft's debug output should show.
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

/// Most bytes of a value quoted in an error text.
pub const SHOWN_VALUE_BYTES_MAX: usize = 200;

/// `v` as JSON for an error text, cut after [`SHOWN_VALUE_BYTES_MAX`] bytes:
/// the text of a failed cas is cached in the session table and sent back, and
/// must not grow with the values (two values of a megabyte each, escaped
/// again inside the text, would make a reply larger than a client reads).
fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= SHOWN_VALUE_BYTES_MAX {
        return text;
    }
    let mut end = SHOWN_VALUE_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}
