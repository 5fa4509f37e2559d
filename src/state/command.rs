//! What the log carries: [`Command`] (one entry's payload) and its parts.
//!
//! Owns the commands the state machine applies and their durable encoding (every
//! log entry holds one, on disk and in the leader's appends, and a forwarding
//! follower sends the [`Op`] it wants proposed). It may not import the wire format:
//! `crate::protocol` builds these from client requests. The encoding carries a
//! format version ([`super::format::ENTRY_FORMAT`]); the golden files in
//! `tests/fixtures/` pin it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{self, ENTRY_FORMAT};
use super::session::SessionLimits;

/// One log entry's payload: what to do, and the leader's clock when it proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CommandRecord")]
pub struct Command {
    /// The format version of this encoding; always [`ENTRY_FORMAT`] when written.
    #[serde(rename = "v")]
    pub format: u32,
    /// The proposing leader's clock (ms). The cluster clock is the max of these.
    pub ts_ms: u64,
    /// The operation.
    pub op: Op,
}

impl Command {
    /// A command in the current format.
    pub fn new(ts_ms: u64, op: Op) -> Command {
        Command {
            format: ENTRY_FORMAT,
            ts_ms,
            op,
        }
    }
}

/// A command as read from the log: entries written before the format had a
/// version carry none, and their encoding is that of version 1.
#[derive(Deserialize)]
struct CommandRecord {
    #[serde(default)]
    v: Option<u32>,
    ts_ms: u64,
    op: Op,
}

impl TryFrom<CommandRecord> for Command {
    type Error = String;
    fn try_from(r: CommandRecord) -> Result<Command, String> {
        let format = r.v.unwrap_or(format::UNVERSIONED_AS);
        format::check_range(
            "log entry",
            format,
            format::ENTRY_FORMAT_OLDEST,
            ENTRY_FORMAT,
        )
        .map_err(|e| e.to_string())?;
        // Each version reads as the one before it plus what it added (a GC
        // entry of version 1 has no `max`: it expires every idle session).
        Ok(Command::new(r.ts_ms, r.op))
    }
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
    /// timeout, decided by the leader and carried here so replicas agree), the
    /// longest idle first, at most `max` of them, so that no single entry holds
    /// up the entries behind it; the leader appends more while any remain.
    Gc {
        /// Sessions last seen before this cluster time are removed.
        cutoff_ms: u64,
        /// At most this many (`Config::gc_sessions_per_entry_max`); none (an
        /// entry of format version 1): every one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<u64>,
    },
    /// Set the replicated session limits (proposed by a leader whose config differs).
    SetLimits(SessionLimits),
}

/// The session fields of a mutation: who sent it and its number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The client's session name.
    pub client_id: String,
    /// The request's number within the session.
    pub seq: u64,
    /// The lowest seq the client still awaits; replies below it may be forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_outstanding: Option<u64>,
}

/// A mutation of the key-value map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum KvOp {
    /// Set `key` to `value`.
    Write {
        /// Canonical JSON text of the key.
        key: String,
        /// The new value.
        value: Value,
    },
    /// Set `key` to `to` if it currently equals `from`.
    Cas {
        /// Canonical JSON text of the key.
        key: String,
        /// The expected value.
        from: Value,
        /// The new value.
        to: Value,
        /// Create a missing key with `to` instead of failing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        create: bool,
    },
    /// Add `delta` to an integer counter (missing counts as 0).
    Add {
        /// Canonical JSON text of the key.
        key: String,
        /// The increment.
        delta: i64,
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Compact JSON: what a log line or openraft's debug output should show.
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}
