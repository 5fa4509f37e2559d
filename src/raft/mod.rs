//! The openraft adapter: type config, stores and network. Thin by design: the
//! state machine logic lives in [`crate::state`], the transports in [`crate::maelstrom`]
//! and [`crate::tcp`] (both register their calls in one [`pending::PendingCalls`] table).
//!
//! | openraft's contract | our implementation |
//! |---|---|
//! | `RaftTypeConfig` | [`TypeConfig`]: `D` = [`Command`], `R` = [`Outcome`], `NodeId` = `u64`, `Node` = [`Peer`] |
//! | `RaftLogStorage` | [`log_store::MemLogStore`] (Maelstrom mode keeps nothing across restarts) |
//! | `RaftStateMachine` | [`sm_store::StateMachineStore`], a lock around the pure [`crate::state::State`] |
//! | `RaftNetworkFactory` / `RaftNetworkV2` | [`network::Network`], RPCs as JSON bodies over any [`network::Transport`] |
//! | `AsyncRuntime` | [`runtime::OnceRuntime`]: tokio, with a random source the simulator seeds |
//!
//! May not touch: serving logic (the node's), how bytes travel (the transports'),
//! or the durable log and snapshot files (`crate::storage` builds on the types
//! here, not the other way round; only a snapshot being received is assembled
//! in a partial file, [`snapshot_transfer`]). It imports only `config`,
//! `protocol` and `state`.

pub mod inflight;
pub mod log_store;
pub mod network;
pub mod pending;
pub mod runtime;
pub mod sm_store;
pub mod snapshot_transfer;

use serde::{Deserialize, Serialize};

use crate::state::{Command, Outcome};

/// A cluster member as Raft's membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The node's protocol name (`n0`), used to address messages.
    pub name: String,
    /// Where to reach it over TCP (empty in Maelstrom mode, where names route).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.addr.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}@{}", self.name, self.addr)
        }
    }
}

openraft::declare_raft_types!(
    /// oncekv's Raft types.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = Peer,
        AsyncRuntime = runtime::OnceRuntime,
);

/// The two stores a node runs on, as opened by [`crate::storage`] (durable) or
/// made in memory (Maelstrom mode): Raft's log and the state machine.
pub struct Storage<L> {
    /// The log, vote and committed pointer.
    pub log: L,
    /// The state machine (and its snapshots).
    pub sm: sm_store::StateMachineStore,
    /// The log's in-memory copy, which the node keeps within its byte budget.
    pub mirror: log_store::SharedMirror,
    /// Set when a write of the log fails: the node then ends.
    pub failure: log_store::LogFailure,
}

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig, sm_store::StateMachineStore>;
/// A log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
