//! oncekv: a Raft-replicated key-value store with exactly-once client sessions.
//!
//! Layout (one concern per module):
//! - [`protocol`]: the wire format (Maelstrom envelopes, request and reply bodies, error
//!   codes, line framing).
//! - [`state`]: the replicated state machine as a pure function: KV map, sessions, cluster clock.
//! - [`raft`]: the openraft adapter (type config, log store, state machine store, network,
//!   the pending peer calls).
//! - [`storage`]: durable storage in `--data-dir`: the Raft log (a write-ahead log of segment files), snapshot files.
//! - [`node`]: transport-agnostic node logic: the connection driver (reading order,
//!   batches, reply ordering) for both transports, serving, forwarding, peers' RPCs,
//!   GC ticks, membership, status.
//! - [`maelstrom`]: the stdin/stdout transport (Maelstrom node mode: `init`, envelopes).
//! - [`tcp`]: the TCP transport: `serve` and [`tcp::Client`].
//! - [`cli`]: the commands' front ends (`node`/`serve` start-up, `client`, `cluster`,
//!   `test`/`demo`, `check`); `main.rs` only dispatches to them.
//! - [`reject_log`]: logging of rejected input, truncated and rate-limited ([`reject!`]).
//! - [`log_file`]: the size-capped node log file of `oncekv serve`.
//! - `planted` (test builds only): bugs a test can switch on to show that the
//!   simulator finds them.
//! - [`utc`]: UTC time as text (output folder names, run markers in logs).
//! - [`tools`]: the tooling wing (test harness, checker, reports, history format,
//!   benchmarks); it uses the product modules above, none of which uses it; only the
//!   front ends in [`cli`] (`test`, `demo`, `check`) call into it.
//!
//! Imports go one way, down: `cli` and `tools` on top, then the transports
//! (`maelstrom`, `tcp`), then `node` and `storage`, then `raft`, `protocol`,
//! `state` (which imports nothing, but for the test-only `planted` switches); `config`, `reject_log`, `log_file` and `utc`
//! are leaves any layer uses. `docs/architecture.md` draws the layers and a
//! request's path through them.
#![deny(clippy::print_stdout, clippy::print_stderr)]

/// `eprintln!` that drops the line when stderr cannot take it (closed, a broken
/// pipe) instead of panicking: no message is worth a crash (exit 101) of a node,
/// of the `cluster` supervisor or of a client. The one way to stderr outside
/// tests (`clippy::print_stderr` is denied).
#[macro_export]
macro_rules! stderr_line {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod cli;
pub mod config;
pub mod log_file;
pub mod maelstrom;
pub mod node;
#[cfg(test)]
pub mod planted;
pub mod protocol;
pub mod raft;
pub mod reject_log;
pub mod state;
pub mod storage;
pub mod tcp;
pub mod tools;
pub mod utc;
