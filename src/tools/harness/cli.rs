//! The `oncekv test` command line: Maelstrom's flag names and defaults, parsed into a
//! [`RunConfig`].
//!
//! Maelstrom (`src/maelstrom/core.clj`) and Jepsen (`jepsen/cli.clj`) are the
//! reference: `--rate 5`, `--time-limit 60`, `--latency 0`, `--latency-dist constant`,
//! no nemesis, `--nemesis-interval 10`, `--concurrency 1n`. Flags marked "beyond
//! Maelstrom" do not exist there.
//!
//! It may not run anything: it only turns flags into a run's configuration.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use thiserror::Error;

use super::config::{Limits, RunConfig, Workload};
use super::nemesis::{Fault, NemesisConfig};
use super::net::{LatencyDist, NetConfig};
use crate::tools::check::NullReads;

/// `oncekv test` flags.
#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// Workload to run: lin-kv (Maelstrom's) or exactly-once (beyond Maelstrom).
    #[arg(short = 'w', long, value_enum, default_value = "lin-kv")]
    pub workload: Workload,
    /// Path to the binary that runs a node (any Maelstrom node). Its arguments follow
    /// it (`--bin python3 node.py --node-count 3`), as in Maelstrom; arguments that
    /// start with `-` go after `--` at the end.
    #[arg(long)]
    pub bin: PathBuf,
    /// How many nodes to run (ids n0..n(N-1)). Without it, Jepsen's default nodes n1..n5.
    #[arg(long)]
    pub node_count: Option<usize>,
    /// How many workers: an integer, optionally followed by n to multiply by the node count.
    #[arg(long, default_value = "1n")]
    pub concurrency: String,
    /// Approximate number of requests per second, across all workers.
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
    pub rate: f64,
    /// Seconds to issue operations for.
    #[arg(long, default_value_t = 60.0, allow_negative_numbers = true)]
    pub time_limit: f64,
    /// Mean node-to-node latency, in ms (client messages have none).
    #[arg(long, default_value_t = 0)]
    pub latency: u64,
    /// Latency distribution.
    #[arg(long, value_enum, default_value = "constant")]
    pub latency_dist: LatencyDist,
    /// Comma-separated faults: partition (Maelstrom's); partition-one-way and kill
    /// (beyond Maelstrom).
    #[arg(long, default_value = "")]
    pub nemesis: String,
    /// Seconds between nemesis operations, on average.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub nemesis_interval: f64,
    /// Beyond Maelstrom: probability that a node-to-node message is lost.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub p_loss: f64,
    /// Beyond Maelstrom: probability that a node-to-node message is delivered twice.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub p_dup: f64,
    /// Output folder (default `store/<test-name>/<timestamp>/`, with `store/latest`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed for every random choice (printed at start; random if absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Beyond Maelstrom: an ok read of null must see a missing key. Without it,
    /// as Knossos (so Maelstrom), a read of null is legal in any state.
    #[arg(long)]
    pub strict_null_reads: bool,
    /// Arguments passed to every node process.
    #[arg(value_name = "ARGS")]
    pub args: Vec<String>,
    /// Maelstrom's logging, availability and repetition flags, and `--strict-protocol`.
    #[command(flatten)]
    pub run_flags: RunFlags,
}

/// `oncekv test` flags on how runs are repeated, judged and logged (Maelstrom's
/// `--availability`, `--test-count`, `--log-stderr`, `--log-net-send`,
/// `--log-net-recv`; `--strict-protocol` beyond Maelstrom).
#[derive(Debug, Clone, Args)]
pub struct RunFlags {
    /// The fraction of client requests which must succeed: a number from 0 to 1, or
    /// `total` (every one). If omitted, always valid.
    #[arg(long, value_name = "EXPECTED")]
    pub availability: Option<String>,
    /// How many times to repeat the test; stops at the first run that is not valid.
    #[arg(long, default_value_t = 1)]
    pub test_count: u64,
    /// Copy the nodes' stderr (their debugging output) to the console.
    #[arg(long)]
    pub log_stderr: bool,
    /// Log every message as it is sent into the network.
    #[arg(long)]
    pub log_net_send: bool,
    /// Log every message as it is delivered.
    #[arg(long)]
    pub log_net_recv: bool,
    /// Beyond Maelstrom: any protocol violation (a bad stdout line) makes the run
    /// invalid. Without it, as under Maelstrom, a violation is reported (the line is
    /// dropped) and the verdict is the checker's.
    #[arg(long)]
    pub strict_protocol: bool,
    /// Beyond Maelstrom: keep reading a node's stdout after a bad line. Without
    /// it, as under Maelstrom, the node is not heard from again after its first
    /// line that is not a valid message (its later lines are drained unread).
    #[arg(long)]
    pub read_on_bad_lines: bool,
}

impl Default for RunFlags {
    fn default() -> Self {
        RunFlags {
            availability: None,
            test_count: 1,
            log_stderr: false,
            log_net_send: false,
            log_net_recv: false,
            strict_protocol: false,
            read_on_bad_lines: false,
        }
    }
}

/// A flag value the harness refuses, with the message Maelstrom/Jepsen would print.
#[derive(Debug, Error, PartialEq)]
pub enum CliError {
    /// `--concurrency` is not `\d+n?`.
    #[error("--concurrency {0} should be an integer optionally followed by n")]
    ConcurrencySyntax(String),
    /// Fewer workers than one key group needs.
    #[error(
        "With {threads} worker threads, this jepsen.concurrent/concurrent-generator cannot run a key with {group} threads concurrently. Consider raising your test's :concurrency to at least {group}."
    )]
    ConcurrencyTooLow {
        /// Worker count.
        threads: usize,
        /// Group size (2n).
        group: usize,
    },
    /// Not a multiple of the group size (Jepsen's `independent.clj` assertion).
    #[error(
        "This jepsen.independent/concurrent-generator has {threads} threads to work with, but can only use {usable} of those threads to run {groups} concurrent keys with {group} threads apiece. Consider raising or lowering the test's :concurrency to a multiple of {group}."
    )]
    ConcurrencyNotMultiple {
        /// Worker count.
        threads: usize,
        /// Threads that fit in whole groups.
        usable: usize,
        /// Whole groups.
        groups: usize,
        /// Group size (2n).
        group: usize,
    },
    /// An unknown fault name.
    #[error("--nemesis: unknown fault {0:?}; expected partition, partition-one-way or kill")]
    UnknownFault(String),
    /// A numeric flag out of range.
    #[error("{flag} {value}: {why}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Parses `--concurrency` as Jepsen does: an integer, optionally followed by `n`
/// (multiplied by the node count).
pub fn parse_concurrency(spec: &str, node_count: usize) -> Result<usize, CliError> {
    let (digits, unit) = match spec.strip_suffix('n') {
        Some(d) => (d, node_count),
        None => (spec, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CliError::ConcurrencySyntax(spec.to_string()));
    }
    let too_many = || CliError::OutOfRange {
        flag: "--concurrency",
        value: spec.to_string(),
        why: "at most 10,000 worker threads (beyond Maelstrom: a bound on what the harness spawns)",
    };
    let k: usize = digits.parse().map_err(|_| too_many())?;
    k.checked_mul(unit)
        .filter(|n| *n <= CONCURRENCY_MAX)
        .ok_or_else(too_many)
}

/// Most worker threads `--concurrency` may ask for.
pub const CONCURRENCY_MAX: usize = 10_000;

/// Most nodes: a key is given to at most 20 processes (Jepsen's
/// `process-limit 20` in Maelstrom's lin-kv, `Limits::processes_per_key`) and a key
/// group has 2n threads, so with more nodes no key could ever get an operation
/// (Jepsen's `process-limit` then yields nothing for any key).
pub const NODE_COUNT_MAX: usize = 10;

/// Checks that `threads` splits into whole groups of `group` (Jepsen's
/// `independent/group-threads` assertions, same wording).
pub fn check_groups(threads: usize, group: usize) -> Result<(), CliError> {
    if threads < group {
        return Err(CliError::ConcurrencyTooLow { threads, group });
    }
    let groups = threads / group;
    if threads != groups * group {
        return Err(CliError::ConcurrencyNotMultiple {
            threads,
            usable: groups * group,
            groups,
            group,
        });
    }
    Ok(())
}

/// Parses `--availability` as Maelstrom does: `total` (1), or a number from 0 to 1.
pub fn parse_availability(spec: &str) -> Result<f64, CliError> {
    let bad = || CliError::OutOfRange {
        flag: "--availability",
        value: spec.to_string(),
        why: "must be either 'total' or a number between 0 and 1.",
    };
    if spec == "total" {
        return Ok(1.0);
    }
    let a: f64 = spec.trim().parse().map_err(|_| bad())?;
    if (0.0..=1.0).contains(&a) {
        Ok(a)
    } else {
        Err(bad())
    }
}

/// The faults `--nemesis` takes, by name: the one list the parser reads and the
/// help text is checked against.
pub const FAULT_NAMES: [(&str, Fault); 3] = [
    ("partition", Fault::Partition),
    ("partition-one-way", Fault::PartitionOneWay),
    ("kill", Fault::Kill),
];

/// Parses `--nemesis` (comma-separated, blanks allowed as in Maelstrom).
pub fn parse_faults(spec: &str) -> Result<BTreeSet<Fault>, CliError> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            FAULT_NAMES
                .iter()
                .find(|(name, _)| *name == s)
                .map(|(_, fault)| *fault)
                .ok_or_else(|| CliError::UnknownFault(s.to_string()))
        })
        .collect()
}

fn positive_secs(flag: &'static str, v: f64) -> Result<Duration, CliError> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(CliError::OutOfRange {
            flag,
            value: v.to_string(),
            why: "must be positive",
        })
    }
}

fn probability(flag: &'static str, p: f64) -> Result<f64, CliError> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(CliError::OutOfRange {
            flag,
            value: p.to_string(),
            why: "must be between 0 and 1",
        })
    }
}

impl TestArgs {
    /// Turns flags into a run configuration. `seed` and `out` must already be
    /// resolved by the caller (they depend on the clock).
    pub fn into_config(self, seed: u64, out_dir: PathBuf) -> Result<RunConfig, CliError> {
        let nodes: Vec<String> = match self.node_count {
            Some(0) => {
                return Err(CliError::OutOfRange {
                    flag: "--node-count",
                    value: "0".into(),
                    why: "Must be positive.",
                });
            }
            Some(n) if n > NODE_COUNT_MAX => {
                return Err(CliError::OutOfRange {
                    flag: "--node-count",
                    value: n.to_string(),
                    why: "at most 10: lin-kv gives a key to at most 20 processes \
                          (process-limit 20) and a key group has 2n threads, so with \
                          more nodes no key could get an operation (Maelstrom would \
                          issue none)",
                });
            }
            Some(n) => (0..n).map(|i| format!("n{i}")).collect(),
            None => (1..=5).map(|i| format!("n{i}")).collect(),
        };
        let concurrency = parse_concurrency(&self.concurrency, nodes.len())?;
        check_groups(concurrency, 2 * nodes.len())?;
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err(CliError::OutOfRange {
                flag: "--rate",
                value: self.rate.to_string(),
                why: "must be a finite number of operations per second, at least 0",
            });
        }
        if self.run_flags.test_count == 0 {
            return Err(CliError::OutOfRange {
                flag: "--test-count",
                value: "0".into(),
                why: "Must be positive",
            });
        }
        let availability = match &self.run_flags.availability {
            Some(a) => Some(parse_availability(a)?),
            None => None,
        };
        Ok(RunConfig {
            workload: self.workload,
            bin: self.bin,
            args: self.args,
            nodes,
            concurrency,
            rate: self.rate,
            time_limit: positive_secs("--time-limit", self.time_limit)?,
            net: NetConfig {
                latency_mean_ms: self.latency,
                latency_dist: self.latency_dist,
                p_loss: probability("--p-loss", self.p_loss)?,
                p_dup: probability("--p-dup", self.p_dup)?,
                log_send: self.run_flags.log_net_send,
                log_recv: self.run_flags.log_net_recv,
                ..NetConfig::default()
            },
            nemesis: NemesisConfig {
                faults: parse_faults(&self.nemesis)?,
                interval: positive_secs("--nemesis-interval", self.nemesis_interval)?,
            },
            out_dir,
            seed,
            null_reads: NullReads::from_strict_flag(self.strict_null_reads),
            limits: Limits::default(),
            strict_protocol: self.run_flags.strict_protocol,
            read_on_bad_lines: self.run_flags.read_on_bad_lines,
            availability,
            log_stderr: self.run_flags.log_stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TestArgs,
    }

    fn parse(line: &[&str]) -> TestArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(line);
        Wrapper::try_parse_from(argv).expect("parses").args
    }

    #[test]
    fn node_arguments_follow_bin_as_in_maelstrom_or_come_after_dashes() {
        let a = parse(&[
            "-w",
            "lin-kv",
            "--bin",
            "python3",
            "node.py",
            "--node-count",
            "3",
        ]);
        assert_eq!(a.bin, PathBuf::from("python3"));
        assert_eq!(a.args, ["node.py"]);
        assert_eq!(a.node_count, Some(3));
        let a = parse(&["--bin", "node", "--rate", "10", "--", "--port", "5"]);
        assert_eq!(a.args, ["--port", "5"]);
        assert_eq!(a.rate, 10.0);
        let a = parse(&["--bin", "target/release/oncekv", "--node-count", "3"]);
        assert!(a.args.is_empty());
    }

    #[test]
    fn concurrency_accepts_plain_and_n_suffixed_counts() {
        assert_eq!(parse_concurrency("4n", 3), Ok(12));
        assert_eq!(parse_concurrency("10", 3), Ok(10));
        assert_eq!(
            parse_concurrency("n", 3).unwrap_err(),
            CliError::ConcurrencySyntax("n".into())
        );
        assert!(parse_concurrency("2x", 3).is_err());
        assert!(parse_concurrency("-1", 3).is_err());
    }

    #[test]
    fn negative_and_non_finite_numbers_are_refused_by_name() {
        let cfg = |flag: &str, v: &str| {
            parse(&["--bin", "x", flag, v, "--concurrency", "2n"])
                .into_config(1, PathBuf::from("/tmp/x"))
        };
        // Parsed as numbers (not taken for flags), then refused by name.
        for (flag, v) in [
            ("--time-limit", "-5"),
            ("--rate", "-1"),
            ("--nemesis-interval", "-2"),
        ] {
            let e = cfg(flag, v).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{flag} {v}: {e}");
        }
        for v in ["inf", "NaN"] {
            let e = cfg("--rate", v).unwrap_err().to_string();
            assert!(e.contains("finite"), "{v}: {e}");
        }
    }

    #[test]
    fn concurrency_and_node_count_are_bounded_without_overflow() {
        assert_eq!(parse_concurrency("10000", 1), Ok(10_000));
        for (spec, n) in [
            ("4611686018427387904n", 1),
            ("9223372036854775810n", 2),
            ("99999999999999999999999", 1),
            ("10001", 1),
            ("1001n", 10),
        ] {
            let e = parse_concurrency(spec, n).unwrap_err();
            assert!(e.to_string().contains("at most 10,000"), "{spec}: {e}");
        }
        let cfg = |n: &str| {
            parse(&["--bin", "x", "--node-count", n, "--concurrency", "2n"])
                .into_config(1, PathBuf::from("/tmp/x"))
        };
        assert!(cfg("10").is_ok());
        for n in ["11", "100000000"] {
            let e = cfg(n).unwrap_err();
            assert!(e.to_string().contains("at most 10"), "{n}: {e}");
        }
    }

    #[test]
    fn default_concurrency_1n_is_rejected_with_jepsens_message() {
        let threads = parse_concurrency("1n", 3).unwrap();
        let err = check_groups(threads, 6).unwrap_err();
        assert_eq!(
            err.to_string(),
            "With 3 worker threads, this jepsen.concurrent/concurrent-generator cannot run a key \
             with 6 threads concurrently. Consider raising your test's :concurrency to at least 6."
        );
        let err = check_groups(parse_concurrency("3n", 3).unwrap(), 6).unwrap_err();
        assert_eq!(
            err.to_string(),
            "This jepsen.independent/concurrent-generator has 9 threads to work with, but can only \
             use 6 of those threads to run 1 concurrent keys with 6 threads apiece. Consider raising \
             or lowering the test's :concurrency to a multiple of 6."
        );
        assert_eq!(check_groups(12, 6), Ok(()));
    }

    #[test]
    fn maelstroms_run_flags_parse_with_its_defaults() {
        let a = parse(&["--bin", "node", "--concurrency", "10"]);
        assert_eq!(a.run_flags.test_count, 1);
        assert_eq!(a.run_flags.availability, None);
        assert!(!a.run_flags.log_stderr && !a.run_flags.log_net_send && !a.run_flags.log_net_recv);
        assert!(!a.run_flags.strict_protocol);
        let cfg = a.into_config(1, PathBuf::from("out")).unwrap();
        assert_eq!(cfg.availability, None);
        assert!(!cfg.strict_protocol && !cfg.log_stderr && !cfg.net.log_send);

        let a = parse(&[
            "--bin",
            "node",
            "--node-count",
            "1",
            "--concurrency",
            "2n",
            "--availability",
            "total",
            "--test-count",
            "4",
            "--log-stderr",
            "--log-net-send",
            "--log-net-recv",
            "--strict-protocol",
        ]);
        assert_eq!(a.run_flags.test_count, 4);
        let cfg = a.into_config(1, PathBuf::from("out")).unwrap();
        assert_eq!(cfg.availability, Some(1.0));
        assert!(cfg.strict_protocol && cfg.log_stderr && cfg.net.log_send && cfg.net.log_recv);

        assert_eq!(parse_availability("0.99"), Ok(0.99));
        assert_eq!(parse_availability("0"), Ok(0.0));
        for bad in ["1.5", "-0.1", "most", ""] {
            let e = parse_availability(bad).unwrap_err().to_string();
            assert!(
                e.contains("'total' or a number between 0 and 1"),
                "{bad}: {e}"
            );
        }
        let zero = parse(&[
            "--bin",
            "n",
            "--node-count",
            "1",
            "--concurrency",
            "2",
            "--test-count",
            "0",
        ]);
        assert_eq!(
            zero.into_config(1, PathBuf::from("out"))
                .unwrap_err()
                .to_string(),
            "--test-count 0: Must be positive"
        );
    }

    /// `--help` names every fault the parser takes, and the parser takes every
    /// fault there is.
    #[test]
    fn nemesis_help_names_every_fault_the_parser_takes() {
        use clap::CommandFactory;
        let cmd = Wrapper::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "nemesis")
            .expect("--nemesis");
        let help = arg.get_help().expect("help").to_string();
        for (name, fault) in FAULT_NAMES {
            assert!(help.contains(name), "{name} missing from {help:?}");
            assert_eq!(parse_faults(name), Ok(BTreeSet::from([fault])));
        }
        let all: Vec<&str> = FAULT_NAMES.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            parse_faults(&all.join(",")).unwrap().len(),
            FAULT_NAMES.len()
        );
        let refused = CliError::UnknownFault("clock".into()).to_string();
        for name in all {
            assert!(refused.contains(name), "{name} missing from {refused:?}");
        }
    }

    #[test]
    fn faults_parse_like_maelstrom() {
        assert!(parse_faults("").unwrap().is_empty());
        let both = parse_faults("partition, kill").unwrap();
        assert!(both.contains(&Fault::Partition) && both.contains(&Fault::Kill));
        assert_eq!(
            parse_faults("clock"),
            Err(CliError::UnknownFault("clock".into()))
        );
    }
}
