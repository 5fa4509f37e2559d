//! Everything a run depends on: the flags ([`RunConfig`]) and every bound and timeout
//! the harness itself uses ([`Limits`]), each with the reason for its value.
//!
//! It may not run anything: values and their reasons only.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use thiserror::Error;

use super::nemesis::NemesisConfig;
use super::net::NetConfig;
use super::services::ServiceLimits;

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Maelstrom's linearizable key-value workload (Jepsen's linearizable register).
    #[value(name = "lin-kv")]
    LinKv,
    /// Beyond Maelstrom: session clients (`client_id`/`seq`) that retry, `add` on counters.
    #[value(name = "exactly-once")]
    ExactlyOnce,
}

impl Workload {
    /// The name used on the command line and in `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::LinKv => "lin-kv",
            Workload::ExactlyOnce => "exactly-once",
        }
    }
}

/// One test run, fully resolved from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Which workload drives the clients.
    pub workload: Workload,
    /// The node binary (any Maelstrom node).
    pub bin: PathBuf,
    /// Arguments for every node process.
    pub args: Vec<String>,
    /// Node ids, in `init`'s `node_ids` order.
    pub nodes: Vec<String>,
    /// Worker count: a multiple of 2 * nodes (Jepsen's key groups).
    pub concurrency: usize,
    /// Ops per second across all workers; gaps are uniform in [0, 2/rate).
    pub rate: f64,
    /// How long operations are issued for.
    pub time_limit: Duration,
    /// Latency, loss and duplication of node-to-node messages.
    pub net: NetConfig,
    /// Which faults, how often.
    pub nemesis: NemesisConfig,
    /// Where history, results, plots and node logs go.
    pub out_dir: PathBuf,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// How the checker judges ok reads of null (`--strict-null-reads`).
    pub null_reads: crate::tools::check::NullReads,
    /// The harness's own bounds and timeouts.
    pub limits: Limits,
    /// `--strict-protocol`: any protocol violation makes the run invalid; otherwise
    /// (Maelstrom's handling) violations are reported and the verdict is the checker's.
    pub strict_protocol: bool,
    /// `--availability`: the fraction of client ops that must complete ok
    /// (Maelstrom's availability checker; `total` is 1); `None` checks nothing.
    pub availability: Option<f64>,
    /// `--log-stderr`: copy the nodes' stderr lines to the harness's stderr.
    pub log_stderr: bool,
    /// `--read-on-bad-lines` (beyond Maelstrom): after a stdout line Maelstrom
    /// would stop reading at, read the node's later lines too.
    pub read_on_bad_lines: bool,
}

/// The harness's bounds and timeouts. Defaults follow Maelstrom where it has one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A node must answer `init` within this (Maelstrom: 10 s), or the run fails.
    pub init_timeout: Duration,
    /// Client RPC timeout floor in ms (lin_kv.clj: `max(10 * mean latency, 1000)`).
    pub client_timeout_floor_ms: u64,
    /// Multiplier of the mean latency in the client timeout (lin_kv.clj: 10).
    pub client_timeout_latency_factor: u64,
    /// A key retires once more than this many distinct process ids used it
    /// (linearizable_register.clj: `process-limit 20`).
    pub processes_per_key: usize,
    /// After closing a node's stdin at the end, how long it may take to exit before SIGKILL.
    pub stop_grace: Duration,
    /// Exactly-once: after the time limit, how long retries and final reads may go on
    /// (the partitions are healed at the time limit, so a live cluster answers well within it).
    pub final_phase: Duration,
    /// Exactly-once: pause before retrying a request that failed at once (error 11,
    /// or a node that is down), so a retry loop does not spin.
    pub retry_backoff: Duration,
    /// Exactly-once: a register key takes this many logical ops before the next key is
    /// used, keeping each key's history short enough to check quickly.
    pub register_ops_per_key: u64,
    /// Exactly-once: how many counter keys the `add` ops spread over.
    pub counter_keys: usize,
    /// Protocol violations kept verbatim in `results.json` (all are counted).
    pub violations_kept: usize,
    /// Malformed replies kept verbatim in `results.json` (all are counted).
    pub malformed_kept: usize,
    /// Period of the progress line on stderr.
    pub progress_period: Duration,
    /// How long the checker may search before answering "unknown".
    pub check_time_limit: Duration,
    /// Bounds on Maelstrom's services (`lin-kv`, `seq-kv`, `lww-kv`, `lin-tso`).
    pub services: ServiceLimits,
    /// How often every node process is looked at for an exit the harness did not
    /// cause (a crash ends the run); short, so a crashed node's run ends soon after.
    pub crash_poll_period: Duration,
    /// Lines of a crashed node's stdout and of its stderr shown in the crash report
    /// (Maelstrom's `debug-buffer-size`: 32).
    pub crash_tail_lines: usize,
    /// Longest line kept for a crash report; longer ones are cut, so a node writing
    /// huge lines cannot make the harness hold much (32 lines of this at most).
    pub crash_tail_line_chars: usize,
    /// Longest stdout line read from a node, newline included. A longer line is
    /// read to its end without being kept and reported as a protocol violation, so
    /// a node that writes without newlines cannot make the harness grow without
    /// bound. Far above what Maelstrom nodes write (oncekv's own peer lines stay
    /// under 8 MiB); at least a service request (`services.request_bytes_max`).
    pub node_line_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            init_timeout: Duration::from_secs(10),
            client_timeout_floor_ms: 1000,
            client_timeout_latency_factor: 10,
            processes_per_key: 20,
            stop_grace: Duration::from_secs(2),
            final_phase: Duration::from_secs(20),
            retry_backoff: Duration::from_millis(50),
            register_ops_per_key: 60,
            counter_keys: 3,
            violations_kept: 20,
            malformed_kept: 20,
            progress_period: Duration::from_secs(1),
            check_time_limit: Duration::from_secs(60),
            services: ServiceLimits::default(),
            crash_poll_period: Duration::from_millis(100),
            crash_tail_lines: 32,
            crash_tail_line_chars: 1000,
            node_line_bytes_max: 64 << 20,
        }
    }
}

/// A configuration the harness refuses to run.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Some field is out of its range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl RunConfig {
    /// The client timeout: `max(factor * mean latency, floor)` ms, as lin_kv.clj.
    pub fn client_timeout(&self) -> Duration {
        let ms = (self.limits.client_timeout_latency_factor * self.net.latency_mean_ms)
            .max(self.limits.client_timeout_floor_ms);
        Duration::from_millis(ms)
    }

    /// Checks the invariants the rest of the harness relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| Err(ConfigError::Invalid(s.to_string()));
        if self.nodes.is_empty() {
            return bad("no nodes");
        }
        if self.concurrency == 0 || !self.concurrency.is_multiple_of(2 * self.nodes.len()) {
            return bad("concurrency must be a positive multiple of 2 * node count");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return bad("rate must be finite and non-negative");
        }
        if self.time_limit.is_zero() || self.nemesis.interval.is_zero() {
            return bad("time limit and nemesis interval must be positive");
        }
        if !(0.0..=1.0).contains(&self.net.p_loss) || !(0.0..=1.0).contains(&self.net.p_dup) {
            return bad("probabilities must be in [0, 1]");
        }
        if self.limits.processes_per_key < 2 * self.nodes.len() {
            return bad("processes_per_key must cover one key group");
        }
        if self.limits.counter_keys == 0 || self.limits.register_ops_per_key == 0 {
            return bad("exactly-once key counts must be positive");
        }
        if let Err(why) = self.limits.services.validate() {
            return bad(&why);
        }
        if self.limits.node_line_bytes_max < self.limits.services.request_bytes_max {
            return bad(
                "node_line_bytes_max must hold a service request (services.request_bytes_max)",
            );
        }
        if self.availability.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
            return bad("availability must be in [0, 1]");
        }
        if self.limits.crash_poll_period.is_zero() {
            return bad("crash_poll_period must be positive");
        }
        if self.limits.crash_poll_period >= self.limits.init_timeout {
            return bad("crash_poll_period must be shorter than init_timeout");
        }
        Ok(())
    }
}
