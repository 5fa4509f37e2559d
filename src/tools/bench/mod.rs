//! Benchmarks, each against a peer measured in the same invocation (these machines
//! are shared and noisy, so only ratios mean something):
//! - [`single`]: `oncekv bench`, a single node over stdin against a no-consensus
//!   baseline, and memory per idle session.
//! - [`cluster`]: `oncekv bench-cluster`, a 3-node TCP cluster against a 3-member
//!   etcd 3.4 on loopback: write throughput and latency, failover unavailability.
//! - [`sweep`]: `oncekv bench-cluster --sweep`, both systems across a growing
//!   dimension (sessions, keys, value size, nodes), as tables and SVG curves.
//! - [`systems`]: what both share: the systems under test, their processes and
//!   clients, a throughput run.
//! - [`etcd`]: the etcd side: member processes and a minimal HTTP/1.1 client for
//!   its JSON gateway.
//! - [`procs`]: the oncekv side: `oncekv serve` processes that can be SIGKILLed
//!   and restarted on their data directories.
//! - [`latency`]: latency samples and their quantiles.

pub mod cluster;
pub mod etcd;
pub mod latency;
pub mod procs;
pub mod single;
pub mod sweep;
pub mod systems;

pub use single::{BenchArgs, baseline, bytes_per_session, run, through_node, workload};
