//! oncekv: a Raft-replicated key-value store with exactly-once client sessions.
//!
//! Layout (one concern per module):
//! - [`protocol`]: the wire format (Maelstrom envelopes, request and reply bodies, error codes).
//! - [`state`]: the replicated state machine as a pure function: KV map, sessions, cluster clock.
//! - [`raft`]: the openraft adapter (type config, log store, state machine store, network).
//! - [`storage`]: durable storage in `--data-dir`: the Raft log (a write-ahead log of segment files), snapshot files.
//! - [`node`]: transport-agnostic node logic: serving, forwarding, reply ordering, GC ticks.
//! - [`maelstrom`]: the stdin/stdout transport (Maelstrom node mode).
//! - [`tcp`]: the TCP transport: `serve`, `cluster`, `client` and [`tcp::Client`].
//! - [`history`]: the `history.jsonl` format shared by the harness and the checker.
//! - [`reject_log`]: logging of rejected input, truncated and rate-limited ([`reject!`]).
//! - [`log_file`]: the size-capped node log file of `oncekv serve`.
//! - [`utc`]: UTC time as text (output folder names, run markers in logs).
//! - [`check`]: the linearizability checker and the exactly-once counter check.
//! - [`report`]: `results.json`, the end-of-run summary and `latency.svg`.
//! - [`bench`]: `oncekv bench` (single node vs a no-consensus baseline, session memory)
//!   and `oncekv bench-cluster` (3-node TCP cluster vs etcd 3.4).
//! - [`harness`]: `oncekv test`, a Maelstrom-style test harness.
#![deny(clippy::print_stdout)]

pub mod bench;
pub mod check;
pub mod config;
pub mod harness;
pub mod history;
pub mod log_file;
pub mod maelstrom;
pub mod node;
pub mod protocol;
pub mod raft;
pub mod reject_log;
pub mod report;
pub mod state;
pub mod storage;
pub mod tcp;
pub mod utc;
