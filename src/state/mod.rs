//! The replicated state machine, as a pure function of (state, entry).
//!
//! [`State::apply`] reads no clock, no randomness and does no I/O: time is the
//! leader's timestamp carried by each [`Command`], and every collection is ordered.
//! So every replica that applies the same log holds byte-identical state, and the
//! snapshot ([`State::to_snapshot`]) holds all of it: the KV map, the sessions with
//! their cached replies, the tombstones, the limits and the cluster clock.
//!
//! Owns the types it stores and returns: [`Command`] (what the log carries),
//! [`Outcome`] (what applying answers, cached per session) and [`SessionRef`],
//! each with a versioned, pinned encoding ([`format`](mod@format)). It may not import any
//! other module of the crate: the wire format (`crate::protocol`) maps requests to
//! commands and outcomes to replies, openraft (`crate::raft`) drives it, and
//! neither can change what it stores.
//!
//! ```text
//! command.rs  Command { v, ts_ms, op: Op { Kv { KvOp, SessionRef }, OpenSession, .. } }
//! mod.rs      State::apply(index, &Command) -> Outcome     State::read(key) -> Outcome
//! session.rs  SessionTable: admit / record / expire_before / evict (the dedup rules)
//! outcome.rs  Outcome { Read, Written, .., Failed { Failure, text } }
//! format.rs   ENTRY_FORMAT, SNAPSHOT_FORMAT; snapshot = {"format":1,"state":{..}}
//! ```

pub mod command;
pub mod format;
pub mod outcome;
pub mod session;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use command::{Command, KvOp, Op, SessionRef};
pub use format::SnapshotError;
pub use outcome::{Failure, Outcome};
pub use session::{Admission, ClientId, Removal, SessionLimits, SessionTable};

/// All replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Cluster time (ms): the largest entry timestamp applied. Never goes back.
    pub clock_ms: u64,
    /// The session limits in force.
    pub limits: SessionLimits,
    /// The key-value map, by canonical JSON text of the key. Persistent, as the
    /// session table's maps are (see [`SessionTable`]): a snapshot's copy shares
    /// it. Each value is behind an `Arc`, so the nodes a change copies while a
    /// copy lives hold 16 pointers, not 16 values of up to a megabyte each.
    /// (Serialized as the bare value.)
    pub kv: imbl::OrdMap<String, Arc<Value>>,
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
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Outcome {
        self.apply_traced(index, cmd).0
    }

    /// [`State::apply`], also saying whether a key-value operation ran (rather than
    /// being answered from the session table or refused by it), and if it did,
    /// whether its request opened a session under an id with no record (rule 1):
    /// the record the simulator checks exactly-once execution against.
    pub fn apply_traced(&mut self, index: u64, cmd: &Command) -> (Outcome, Option<bool>) {
        self.clock_ms = self.clock_ms.max(cmd.ts_ms);
        let now = self.clock_ms;
        let outcome = match &cmd.op {
            Op::Kv { kv, session: None } => return (self.execute(kv), Some(false)),
            Op::Kv {
                kv,
                session: Some(s),
            } => return self.apply_with_session(kv, s, now),
            Op::OpenSession => {
                let id = self.fresh_session_id(index);
                self.sessions.open(id.clone(), now, &self.limits);
                Outcome::SessionOpened {
                    client_id: id.to_string(),
                }
            }
            Op::CloseSession { client_id } => {
                if self
                    .sessions
                    .remove(client_id, Removal::Closed, &self.limits)
                {
                    Outcome::SessionClosed
                } else if self.sessions.tombstone(client_id).is_some() {
                    // Closing twice (a retried close) is fine; report success.
                    Outcome::SessionClosed
                } else {
                    Outcome::failed(Failure::KeyDoesNotExist, "no such session")
                }
            }
            Op::Gc { cutoff_ms, max } => {
                let max = max.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
                self.sessions.expire_before(*cutoff_ms, max, &self.limits);
                Outcome::Applied
            }
            Op::SetLimits(limits) => {
                self.limits = *limits;
                Outcome::Applied
            }
        };
        (outcome, None)
    }

    /// A linearizable read's answer, from the applied state (no log entry).
    pub fn read(&self, key: &str) -> Outcome {
        match self.kv.get(key) {
            Some(v) => Outcome::Read { value: v.clone() },
            None => Outcome::failed(Failure::KeyDoesNotExist, "key does not exist"),
        }
    }

    /// A cached answer for (client, seq) if it executed and the reply is held, without
    /// touching anything: lets a leader answer a retry without a new entry.
    pub fn cached_reply(&self, s: &SessionRef) -> Option<Outcome> {
        self.sessions
            .get(&s.client_id)?
            .replies
            .get(&s.seq)
            .cloned()
    }

    fn apply_with_session(
        &mut self,
        kv: &KvOp,
        s: &SessionRef,
        now: u64,
    ) -> (Outcome, Option<bool>) {
        let fresh = !self.sessions.is_known(&s.client_id);
        let admission =
            self.sessions
                .admit(&s.client_id, s.seq, s.first_outstanding, now, &self.limits);
        #[cfg(test)]
        let admission = match admission {
            Admission::Answer(Outcome::Failed { .. }) => admission,
            Admission::Answer(_)
                if crate::planted::active(crate::planted::Bug::DedupAtLeader)
                    && self.sessions.get(&s.client_id).is_some() =>
            {
                Admission::Execute
            }
            other => other,
        };
        match admission {
            Admission::Answer(reply) => (reply, None),
            Admission::Execute => {
                let reply = self.execute(kv);
                self.sessions
                    .record(&s.client_id, s.seq, reply.clone(), &self.limits);
                (reply, Some(fresh))
            }
        }
    }

    fn execute(&mut self, kv: &KvOp) -> Outcome {
        match kv {
            KvOp::Write { key, value } => {
                self.kv.insert(key.clone(), Arc::new(value.clone()));
                Outcome::Written
            }
            KvOp::Cas {
                key,
                from,
                to,
                create,
            } => match self.kv.get_mut(key) {
                Some(cur) if **cur == *from => {
                    *cur = Arc::new(to.clone());
                    Outcome::Swapped
                }
                Some(cur) => Outcome::failed(
                    Failure::PreconditionFailed,
                    format!("expected {}, had {}", shown(from), shown(cur)),
                ),
                None if *create => {
                    self.kv.insert(key.clone(), Arc::new(to.clone()));
                    Outcome::Swapped
                }
                None => Outcome::failed(Failure::KeyDoesNotExist, "key does not exist"),
            },
            KvOp::Add { key, delta } => {
                let cur = match self.kv.get(key) {
                    None => 0,
                    Some(v) => match v.as_i64() {
                        Some(n) => n,
                        None => {
                            return Outcome::failed(
                                Failure::PreconditionFailed,
                                format!("add needs an integer value, had {}", shown(v)),
                            );
                        }
                    },
                };
                match cur.checked_add(*delta) {
                    Some(total) => {
                        self.kv.insert(key.clone(), Arc::new(Value::from(total)));
                        Outcome::Added { value: total }
                    }
                    None => Outcome::failed(Failure::PreconditionFailed, "add would overflow"),
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

    /// A copy of what [`State::to_snapshot`] writes, to encode away from the
    /// lock: everything but the session table's derived index, which is as
    /// large as the table, is never written, and is rebuilt on restore. The
    /// maps are shared with `self`, so this takes microseconds at any size.
    pub fn snapshot_copy(&self) -> State {
        State {
            clock_ms: self.clock_ms,
            limits: self.limits,
            kv: self.kv.clone(),
            sessions: self.sessions.without_index(),
        }
    }

    /// The snapshot: the whole state, versioned ([`format`](mod@format)). Deterministic
    /// (ordered maps only).
    pub fn to_snapshot(&self) -> Vec<u8> {
        self.to_snapshot_sized(0)
    }

    /// [`State::to_snapshot`] into a buffer sized for about `expected` bytes.
    pub fn to_snapshot_sized(&self, expected: usize) -> Vec<u8> {
        #[cfg(test)]
        if crate::planted::active(crate::planted::Bug::SessionsNotInSnapshot) {
            let without = State {
                sessions: SessionTable::default(),
                ..self.clone()
            };
            return format::encode_snapshot(&without);
        }
        format::encode_snapshot_sized(self, expected)
    }

    /// Restores from [`State::to_snapshot`] bytes, rebuilding derived indexes.
    /// A format version this build does not know is refused, named.
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, SnapshotError> {
        let mut state = format::decode_snapshot(bytes)?;
        state.sessions.rebuild_index();
        Ok(state)
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

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
