//! The tooling wing: everything that tests, checks or measures a node, as opposed to
//! the product that serves requests.
//! - [`harness`]: `oncekv test`, a Maelstrom-style test harness for any Maelstrom node.
//! - [`check`]: the linearizability checker and the exactly-once counter check.
//! - [`report`]: `results.json`, the end-of-run summary and `latency.svg`.
//! - [`history`]: the `history.jsonl` format shared by the harness and the checker.
//! - [`sim`]: `oncekv sim`, a deterministic simulation of a whole cluster under
//!   seeded faults, and the checks every run must pass.
//! - [`bench`](mod@bench): `oncekv bench` (single node vs a no-consensus baseline, session memory)
//!   and `oncekv bench-cluster` (3-node TCP cluster vs etcd 3.4).
//!
//! The direction is one way: tools may use the product's public API (`protocol`,
//! `state`, `tcp::Client`, ...), and the product (`state`, `protocol`, `node`, `raft`,
//! `storage`, `maelstrom`, `tcp`) never imports from here.

pub mod bench;
pub mod check;
pub mod harness;
pub mod history;
pub mod report;
pub mod sim;
