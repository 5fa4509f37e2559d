//! The wire format: Maelstrom envelopes, request and reply bodies, error codes.
//!
//! Owns the types a line becomes ([`Message`], [`Body`], [`Request`],
//! [`ParseError`]), the replies ([`Reply`], [`ErrorCode`]) and the limits on
//! what a request may carry. Parsing is strict and total: any line either
//! becomes a [`Message`] or a [`ParseError`] that says what was wrong, so a node
//! can answer error 12 (or log and drop) instead of crashing. Emitted bodies
//! keep the byte-stable key order of `docs/protocol.md`, "Envelope": `type`, payload,
//! `in_reply_to`, `msg_id`.
//!
//! - [`parse`]: one line in, one [`Message`] or [`ParseError`] out.
//! - [`skeleton`]: the addressing of a line that is never parsed whole.
//! - [`encode`](mod@encode): lines out.
//! - [`framing`]: newline-delimited lines on any async stream, with a maximum
//!   line length (stdin/stdout and TCP connections alike).
//!
//! It maps the wire to the state machine's types ([`KvOp`], [`SessionRef`],
//! `Outcome`) and back; it may not hold node, transport or storage logic. The
//! only I/O here is [`framing`]'s reading and writing of lines on a stream it is
//! handed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::state::{Failure, Outcome};
pub use crate::state::{KvOp, SessionRef};

pub mod encode;
pub mod framing;
pub mod parse;
pub mod skeleton;

pub use encode::{Envelope, ReplyBody, encode};
pub use parse::{parse_line, wide_integer};
pub use skeleton::Skeleton;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod legacy;
#[cfg(test)]
mod props;

/// A node or client name, as `init` and Maelstrom spell it (`n0`, `c12`).
pub type Name = String;

/// Maelstrom's error codes used by oncekv (`docs/protocol.md`, "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum ErrorCode {
    /// A forwarded or proposed request got no answer in time (indefinite).
    Timeout,
    /// Unknown `type` (definite).
    NotSupported,
    /// No leader known and the request was not proposed (definite).
    TemporarilyUnavailable,
    /// The body does not parse into a known request (definite).
    MalformedRequest,
    /// Anything after the request may have reached the log (indefinite).
    Crash,
    /// read/cas on a missing key (definite).
    KeyDoesNotExist,
    /// cas `from` mismatch, or `add` on a non-integer (definite).
    PreconditionFailed,
    /// The session expired or was evicted; the request may have run (indefinite).
    SessionExpired,
    /// The cached reply was discarded by the window (indefinite).
    StaleRequest,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::Timeout => 0,
            ErrorCode::NotSupported => 10,
            ErrorCode::TemporarilyUnavailable => 11,
            ErrorCode::MalformedRequest => 12,
            ErrorCode::Crash => 13,
            ErrorCode::KeyDoesNotExist => 20,
            ErrorCode::PreconditionFailed => 22,
            ErrorCode::SessionExpired => 1000,
            ErrorCode::StaleRequest => 1001,
        }
    }

    /// Whether the code promises that the operation did not and will not happen.
    /// This is the one place that decides it (`docs/protocol.md`, "Errors").
    pub fn is_definite(self) -> bool {
        matches!(
            self,
            ErrorCode::NotSupported
                | ErrorCode::TemporarilyUnavailable
                | ErrorCode::MalformedRequest
                | ErrorCode::KeyDoesNotExist
                | ErrorCode::PreconditionFailed
        )
    }
}

impl From<ErrorCode> for u32 {
    fn from(c: ErrorCode) -> u32 {
        c.code()
    }
}

impl TryFrom<u32> for ErrorCode {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        Ok(match n {
            0 => ErrorCode::Timeout,
            10 => ErrorCode::NotSupported,
            11 => ErrorCode::TemporarilyUnavailable,
            12 => ErrorCode::MalformedRequest,
            13 => ErrorCode::Crash,
            20 => ErrorCode::KeyDoesNotExist,
            22 => ErrorCode::PreconditionFailed,
            1000 => ErrorCode::SessionExpired,
            1001 => ErrorCode::StaleRequest,
            other => return Err(format!("unknown error code {other}")),
        })
    }
}

/// A reply body without its addressing (`in_reply_to`, `msg_id`): what the state
/// machine caches per session and what a leader returns to a forwarding follower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `init_ok {}`.
    InitOk,
    /// `read_ok {value}`.
    ReadOk {
        /// The value read, shared with the state it was read from (a reply
        /// holds a pointer, not a copy of up to a megabyte).
        value: Arc<Value>,
    },
    /// `write_ok {}`.
    WriteOk,
    /// `cas_ok {}`.
    CasOk,
    /// `add_ok {value}`: the new total.
    AddOk {
        /// The counter after the increment.
        value: i64,
    },
    /// `open_session_ok {client_id}`.
    OpenSessionOk {
        /// The new session's cluster-unique id.
        client_id: String,
    },
    /// `close_session_ok {}`.
    CloseSessionOk,
    /// `error {code, text}`.
    Error {
        /// The Maelstrom error code.
        code: ErrorCode,
        /// A human explanation.
        text: String,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, text: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            text: text.into(),
        }
    }

    /// The error code, if this is an error.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Reply::Error { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<Failure> for ErrorCode {
    fn from(f: Failure) -> ErrorCode {
        match f {
            Failure::KeyDoesNotExist => ErrorCode::KeyDoesNotExist,
            Failure::PreconditionFailed => ErrorCode::PreconditionFailed,
            Failure::SessionExpired => ErrorCode::SessionExpired,
            Failure::StaleRequest => ErrorCode::StaleRequest,
        }
    }
}

impl From<Outcome> for Reply {
    /// The wire reply for a state machine outcome. [`Outcome::Applied`] (an
    /// entry no client asked for) has no reply of its own and reads as `write_ok`.
    fn from(o: Outcome) -> Reply {
        match o {
            Outcome::Read { value } => Reply::ReadOk { value },
            Outcome::Written | Outcome::Applied => Reply::WriteOk,
            Outcome::Swapped => Reply::CasOk,
            Outcome::Added { value } => Reply::AddOk { value },
            Outcome::SessionOpened { client_id } => Reply::OpenSessionOk { client_id },
            Outcome::SessionClosed => Reply::CloseSessionOk,
            Outcome::Failed { failure, text } => Reply::error(failure.into(), text),
        }
    }
}

/// A client request, parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Read a key (linearizable, no log entry).
    Read {
        /// Canonical JSON text of the key.
        key: String,
    },
    /// A mutation, with optional exactly-once session fields.
    Mutate {
        /// The mutation.
        op: KvOp,
        /// Present when the client uses a session.
        session: Option<SessionRef>,
    },
    /// Register a new session.
    OpenSession,
    /// Free a session.
    CloseSession {
        /// The session to free.
        client_id: String,
    },
}

/// The body of a message between nodes or from a client, by type.
#[derive(Debug, Clone)]
pub enum Body {
    /// Maelstrom's `init`.
    Init {
        /// This node's name.
        node_id: Name,
        /// Every node in the cluster, in the same order everywhere.
        node_ids: Vec<Name>,
    },
    /// A client request (or one forwarded by a peer node).
    Request(Request),
    /// Any other type: node-to-node traffic (RPCs and their replies) or an unknown type,
    /// kept raw for the node layer to route.
    Other {
        /// The `type` field.
        kind: String,
        /// The whole body (without `rpc` when that is in `rpc`).
        raw: Map<String, Value>,
        /// A `raft_*` request's `rpc` field as text, not yet parsed: it is decoded
        /// straight into openraft's type. In every other message `rpc` is in `raw`.
        rpc: Option<Box<RawValue>>,
    },
}

/// One parsed line: sender, receiver, message id fields and body.
#[derive(Debug, Clone)]
pub struct Message {
    /// Sender.
    pub src: Name,
    /// Receiver.
    pub dest: Name,
    /// The sender's `msg_id`, if any.
    pub msg_id: Option<u64>,
    /// The `in_reply_to`, if this is a reply.
    pub in_reply_to: Option<u64>,
    /// The typed body.
    pub body: Body,
    /// An upper bound of the bytes the body's contents take when the node
    /// re-encodes them (a log entry, a forward): the line's length plus what
    /// re-encoding can add ([`ENCODED_SLACK_BYTES`], per double in the body,
    /// and the quoting of a request's key, stored as text). Lets a node skip
    /// measuring an entry that cannot be too large. `usize::MAX` for a `raft_*`
    /// request, which is never measured.
    pub encoded_bytes_max: usize,
}

/// What re-encoding a request's contents as a log entry or forward may add
/// besides the growth [`parse_line`] counts per double and for the key: the
/// entry's own field names and a timestamp, with room to spare.
pub const ENCODED_SLACK_BYTES: usize = 512;

/// Why a line could not be turned into a message.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// Not JSON, or not an envelope: log and drop (no `msg_id` to answer).
    #[error("bad envelope: {0}")]
    Envelope(String),
    /// A valid envelope whose body is malformed: answer error 12 if `msg_id` allows.
    #[error("malformed body: {text}")]
    Body {
        /// Sender, to address the error reply.
        src: Name,
        /// Addressee: the node's own name, which the reply must carry as `src`
        /// even before `init` told the node its name.
        dest: Name,
        /// The request's `msg_id`, if one could be read.
        msg_id: Option<u64>,
        /// The `in_reply_to`, if one could be read: the line is a reply, which is
        /// never answered (its caller is told instead).
        in_reply_to: Option<u64>,
        /// What was wrong.
        text: String,
    },
}

/// The most levels of arrays and objects a value (`value`, `from`, `to`) may nest.
/// A value is stored inside a log entry, which travels inside a `raft_append`
/// (about ten more levels), and serde_json refuses anything deeper than
/// [`JSON_DEPTH_MAX`] levels: a value that parses in a request but not inside
/// an append would stop replication, so the bound is far below that limit.
pub const VALUE_DEPTH_MAX: usize = 64;

/// The longest `client_id`, in bytes. A session's name is kept in the session
/// table, its index and, once closed or expired, its tombstone, and any client
/// may name a new session: names as long as a request would multiply what a
/// request costs the state. The node's own names (`open_session`) are short.
pub const CLIENT_ID_BYTES_MAX: usize = 256;

/// serde_json's fixed recursion limit (levels of arrays and objects it parses).
pub const JSON_DEPTH_MAX: usize = 128;

/// The deepest a log entry nests around a value, as it travels in a
/// `raft_append` (envelope, body, rpc, entries, entry, payload, command, op, kv:
/// nine; one spare). A test encodes a real append and checks it.
pub const APPEND_WRAP_DEPTH: usize = 10;

const _: () = assert!(VALUE_DEPTH_MAX + APPEND_WRAP_DEPTH < JSON_DEPTH_MAX);

/// The canonical text of a JSON key: serde_json's compact form (object keys sorted,
/// as `serde_json::Map` is a `BTreeMap`), so equal keys map to one entry.
pub fn canonical_key(key: &Value) -> String {
    key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_definite_codes_promise_nothing_happened() {
        for c in [
            ErrorCode::Timeout,
            ErrorCode::Crash,
            ErrorCode::SessionExpired,
            ErrorCode::StaleRequest,
        ] {
            assert!(!c.is_definite(), "{c:?}");
        }
        for c in [10u32, 11, 12, 20, 22] {
            assert!(ErrorCode::try_from(c).unwrap().is_definite());
        }
    }
}
