//! What the state machine answers: [`Outcome`], the reply a session caches.
//!
//! Owns the outcome of applying an entry or serving a read, and its durable
//! encoding (cached outcomes are part of every snapshot). It may not import the
//! wire format: `crate::protocol` maps an [`Outcome`] to a client reply, so renaming
//! a wire type never changes what is on disk. The serde names below are the
//! snapshot's; the golden files in `tests/fixtures/` pin them (see [`super::format`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The answer of an applied entry or a read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Outcome {
    /// A read found `value`.
    #[serde(rename = "read_ok")]
    Read {
        /// The value read, shared with the state.
        value: Arc<Value>,
    },
    /// A write was done.
    #[serde(rename = "write_ok")]
    Written,
    /// A compare-and-set matched and was done.
    #[serde(rename = "cas_ok")]
    Swapped,
    /// An increment was done.
    #[serde(rename = "add_ok")]
    Added {
        /// The counter after the increment.
        value: i64,
    },
    /// A session was opened under this id.
    #[serde(rename = "open_session_ok")]
    SessionOpened {
        /// The new session's cluster-unique id.
        client_id: String,
    },
    /// A session was closed (or already was).
    #[serde(rename = "close_session_ok")]
    SessionClosed,
    /// An entry with nothing to tell a client: blank, membership, GC, limits.
    #[serde(rename = "applied")]
    Applied,
    /// The operation did not take effect (or, for session failures, its fate is
    /// unknown; the wire's error code says which to a client).
    #[serde(rename = "error")]
    Failed {
        /// Why.
        #[serde(rename = "code")]
        failure: Failure,
        /// A human explanation.
        text: String,
    },
}

impl Outcome {
    /// A failure with its explanation.
    pub fn failed(failure: Failure, text: impl Into<String>) -> Outcome {
        Outcome::Failed {
            failure,
            text: text.into(),
        }
    }

    /// The failure, if this is one.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Outcome::Failed { failure, .. } => Some(*failure),
            _ => None,
        }
    }
}

/// The ways an operation fails in the state machine. Stored as a number, which
/// is the snapshot's encoding (it happens to be the Maelstrom error code the
/// wire uses, and must not change if the wire's codes ever do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum Failure {
    /// read or cas of a missing key. Did not happen.
    KeyDoesNotExist,
    /// cas `from` did not match, or `add` on a non-integer or past `i64`. Did not happen.
    PreconditionFailed,
    /// The session expired, was evicted or closed; the request may have run before.
    SessionExpired,
    /// The request's cached reply is gone (below the window); it may have run.
    StaleRequest,
}

impl Failure {
    /// Whether the failure promises the operation did not and will not happen.
    pub fn is_definite(self) -> bool {
        matches!(self, Failure::KeyDoesNotExist | Failure::PreconditionFailed)
    }
}

impl From<Failure> for u32 {
    fn from(f: Failure) -> u32 {
        match f {
            Failure::KeyDoesNotExist => 20,
            Failure::PreconditionFailed => 22,
            Failure::SessionExpired => 1000,
            Failure::StaleRequest => 1001,
        }
    }
}

impl TryFrom<u32> for Failure {
    type Error = String;
    fn try_from(n: u32) -> Result<Failure, String> {
        Ok(match n {
            20 => Failure::KeyDoesNotExist,
            22 => Failure::PreconditionFailed,
            1000 => Failure::SessionExpired,
            1001 => Failure::StaleRequest,
            other => return Err(format!("unknown failure code {other} in a stored outcome")),
        })
    }
}
