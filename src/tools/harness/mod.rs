//! `oncekv test`: a Maelstrom-style test harness that drives any Maelstrom node binary
//! (not only oncekv) and checks the history. `docs/testing.md` describes it in full.
//!
//! Layout (one noun per file):
//! - [`cli`]: flags, Maelstrom's names and defaults; [`config`]: the resolved run and
//!   every bound and timeout.
//! - [`seed`]: named random streams derived from the run's seed.
//! - [`net`]: the simulated network (queues by deadline, latency, partitions, loss, dup).
//! - [`process`]: node processes (spawn, init, stdin/stdout, kill, restart, stop).
//! - [`client`]: a Maelstrom client (ids, msg_ids); [`mailbox`]: its replies awaited
//!   by `msg_id`, filled by the network; [`schema`]: closed reply schemas and the
//!   error registry.
//! - [`workload`]: what to do next (lin-kv, exactly-once); [`scheduler`]: when;
//!   [`worker`]: doing it and recording the outcome.
//! - [`nemesis`]: fault schedules and partition shapes.
//! - [`services`]: Maelstrom's `lin-kv`, `seq-kv`, `lww-kv` and `lin-tso` services.
//! - [`recorder`]: the history as it happens; [`cpu`]: the harness's own CPU share.
//!   `results.json`, the summary, the plots and the pages come from
//!   [`crate::tools::report`], with the harness's own facts in its `harness` object.
//! - [`store`]: where runs are kept (`store/<test>/<time>/`, `latest`), the run's
//!   parameters and the command that re-runs it.
//! - [`runner`]: one run, start to finish; [`demo`]: the README's first command.

pub mod cli;
pub mod client;
pub mod config;
pub mod cpu;
pub mod demo;
pub mod mailbox;
pub mod nemesis;
pub mod net;
pub mod process;
pub mod recorder;
pub mod runner;
pub mod scheduler;
pub mod schema;
pub mod seed;
pub mod services;
pub mod store;
pub mod worker;
pub mod workload;

pub use cli::TestArgs;
pub use config::Workload;
pub use runner::{HarnessError, RunOutcome, run};

/// The default output folder, like Maelstrom's: `store/<test-name>/<UTC
/// timestamp>/` (the test's name is its workload's, [`store::test_name`]).
pub fn default_out_dir(test_name: &str) -> std::path::PathBuf {
    store::run_dir(std::path::Path::new(store::STORE_DIR), test_name)
}
