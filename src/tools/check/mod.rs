//! The checker: is a run's history linearizable, key by key, against a register
//! that starts at nil; and did every counter end at the sum of the adds that
//! took effect (exactly once)?
//!
//! Layout:
//! - [`pairs`]: invoke/completion pairing, shared with the report.
//! - `model`: the register and its compact states.
//! - `prepare`: per-key op lists (`fail` and `info` reads dropped).
//! - `search`: Wing & Gong / Lowe depth-first search with memoisation.
//! - `window`: the shortest failing window of a key, for the report.
//! - [`counter`]: the exactly-once counter check.
//! - `verdict`: the serialisable verdict types ([`LinReport`], [`Validity`]).
//!
//! `docs/checker.md` explains the algorithm and its limits.
//!
//! The checker reads a history only ([`crate::tools::history`]): it may not import
//! the product, so it judges any Maelstrom node's run.

pub mod counter;
mod model;
pub mod pairs;
mod prepare;
mod search;

mod verdict;
mod window;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use counter::{CounterReport, check_counters};
pub use verdict::{KeyFailure, LinReport, Validity};

use crate::tools::history::HistoryOp;
use prepare::KeyHistory;
use search::{SearchOutcome, search};

/// How the checker judges an `ok` read that returned null (JSON null: a missing
/// key). Recorded in `results.json` as `linearizable.null_reads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NullReads {
    /// Knossos' rule, so Maelstrom's: in `knossos/model.clj` (`cas-register`) a
    /// read whose value is nil is legal in whatever state the register is in, and
    /// changes nothing ("we don't know what the read was"). Such a read constrains
    /// nothing, so the checker leaves it out. The default of `oncekv check` and
    /// `oncekv test`.
    #[default]
    AnyState,
    /// A read of null must see a missing key: the register is nil at the read's
    /// linearization point (`--strict-null-reads`). Catches a node that answers
    /// "not there" for a key that was written.
    Strict,
}

impl NullReads {
    /// The mode a `--strict-null-reads` flag asks for.
    pub fn from_strict_flag(strict: bool) -> NullReads {
        if strict {
            NullReads::Strict
        } else {
            NullReads::AnyState
        }
    }
}

/// Knobs for [`check_linearizable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Total time the check may take before it answers `Unknown` for the keys it
    /// could not decide. Linearizability checking is NP-complete; a bound keeps a
    /// pathological history from hanging a test run.
    pub time_limit: Duration,
    /// How ok reads of null are judged.
    pub null_reads: NullReads,
}

impl Default for CheckOptions {
    /// 60 s: far more than a Maelstrom-sized run needs (see `docs/checker.md`);
    /// null reads as Knossos judges them.
    fn default() -> Self {
        CheckOptions {
            time_limit: Duration::from_secs(60),
            null_reads: NullReads::default(),
        }
    }
}

/// Why a history could not be judged. These mean the input (or the harness that
/// wrote it) is broken, not the system under test. Lines are 1-based positions in
/// the history, which are the line numbers of the `history.jsonl` the harness
/// writes (and of the file `oncekv check` read: [`check_file`] renumbers them).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The history file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a valid history op.
    #[error("bad history: {0}")]
    Parse(String),
    /// A process broke the one-outstanding-op rule.
    #[error("bad history: {0}")]
    Pair(#[from] pairs::PairError),
    /// A line's `time` is earlier than the line before it: the order of the lines
    /// and the times disagree, so neither can be trusted as real-time order.
    #[error(
        "bad history: line {entry}: time {time} is before time {previous_time} of line {previous} (times may not go backwards)"
    )]
    TimeBackwards {
        /// 1-based position of the line.
        entry: usize,
        /// Its `time`.
        time: u64,
        /// 1-based position of the line before it.
        previous: usize,
        /// That line's `time`.
        previous_time: u64,
    },
    /// A client op has no `key`.
    #[error("bad history: line {entry}: client op has no key")]
    MissingKey {
        /// 1-based position in the history.
        entry: usize,
    },
    /// An op's value does not have the shape its `f` needs.
    #[error("bad history: line {entry}: {f} value {value} is not {expected}")]
    BadValue {
        /// 1-based position in the history.
        entry: usize,
        /// The op's `f`.
        f: String,
        /// The value found, as JSON.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// An `f` the register model does not know.
    #[error("bad history: line {entry}: unsupported f {f:?} (expected read, write, cas, add)")]
    UnknownF {
        /// 1-based position in the history.
        entry: usize,
        /// The op's `f`.
        f: String,
    },
}

impl CheckError {
    /// The same error with its 1-based positions mapped through `line`.
    fn renumbered(self, line: impl Fn(usize) -> usize) -> CheckError {
        match self {
            CheckError::TimeBackwards {
                entry,
                time,
                previous,
                previous_time,
            } => CheckError::TimeBackwards {
                entry: line(entry),
                time,
                previous: line(previous),
                previous_time,
            },
            CheckError::MissingKey { entry } => CheckError::MissingKey { entry: line(entry) },
            CheckError::BadValue {
                entry,
                f,
                value,
                expected,
            } => CheckError::BadValue {
                entry: line(entry),
                f,
                value,
                expected,
            },
            CheckError::UnknownF { entry, f } => CheckError::UnknownF {
                entry: line(entry),
                f,
            },
            CheckError::Pair(e) => CheckError::Pair(e.renumbered(line)),
            other @ (CheckError::Io { .. } | CheckError::Parse(_)) => other,
        }
    }
}

/// Refuses a history whose times go backwards from one line to the next. The
/// real-time order is read from `time` (op A precedes op B iff A's completion
/// time is less than B's invoke time), and the harness stamps lines under one
/// lock, so lines are in time order; a history where they are not was written
/// wrong (or edited), and its order cannot be trusted either way.
pub(crate) fn check_times(ops: &[HistoryOp]) -> Result<(), CheckError> {
    match ops.windows(2).position(|w| w[1].time < w[0].time) {
        None => Ok(()),
        Some(i) => Err(CheckError::TimeBackwards {
            entry: i + 2,
            time: ops[i + 1].time,
            previous: i + 1,
            previous_time: ops[i].time,
        }),
    }
}

/// Checks every key of `ops` for linearizability, in parallel, within
/// `opts.time_limit`. A malformed history yields `Unknown` with
/// [`LinReport::error`] set; use [`try_check_linearizable`] to get the error.
pub fn check_linearizable(ops: &[HistoryOp], opts: &CheckOptions) -> LinReport {
    try_check_linearizable(ops, opts).unwrap_or_else(|e| {
        let mut report = LinReport::unjudged(e.to_string());
        report.null_reads = opts.null_reads;
        report
    })
}

/// As [`check_linearizable`], but a malformed history is an error: times that
/// go backwards, a process with two ops outstanding, a completion with no
/// invoke or whose `f` or `key` differs from its invoke's, or an op the register
/// model cannot read.
pub fn try_check_linearizable(
    ops: &[HistoryOp],
    opts: &CheckOptions,
) -> Result<LinReport, CheckError> {
    let deadline = Instant::now() + opts.time_limit;
    check_times(ops)?;
    let pairing = pairs::pair_ops(ops);
    if let Some(problem) = pairing.problems.first() {
        return Err(problem.clone().into());
    }
    let keys = prepare::per_key(ops, &pairing.pairs, opts.null_reads)?;
    let verdicts = check_keys(&keys, deadline);
    let mut report = LinReport::from_keys(ops, &pairing.pairs, &keys, verdicts);
    report.null_reads = opts.null_reads;
    Ok(report)
}

/// Reads and checks a `history.jsonl` file: the `oncekv check` command. Errors
/// name lines of the file (blank lines, which the reader skips, are counted).
pub fn check_file(path: &std::path::Path, opts: &CheckOptions) -> Result<FileReport, CheckError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let ops = crate::tools::history::read_jsonl(&text).map_err(CheckError::Parse)?;
    // The file line of each op: `read_jsonl` skips the same blank lines.
    let lines: Vec<usize> = (1..)
        .zip(text.lines())
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, _)| n)
        .collect();
    let line = |entry: usize| lines.get(entry.wrapping_sub(1)).copied().unwrap_or(entry);
    let linearizable = try_check_linearizable(&ops, opts).map_err(|e| e.renumbered(line))?;
    let counters = check_counters(&ops, &Default::default());
    let exactly_once = (counters.keys_checked > 0).then_some(counters);
    Ok(FileReport {
        linearizable,
        exactly_once,
    })
}

/// What `oncekv check` found in a file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileReport {
    /// Per-key linearizability.
    pub linearizable: LinReport,
    /// The counter check, if the history has counter keys (only `add`s and reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exactly_once: Option<CounterReport>,
}

impl FileReport {
    /// Both verdicts merged: invalid wins over unknown wins over valid.
    pub fn valid(&self) -> Validity {
        let counters = self
            .exactly_once
            .as_ref()
            .map_or(Validity::Valid, |c| c.valid);
        self.linearizable.valid.merge(counters)
    }

    /// A few lines for a human.
    pub fn render(&self) -> String {
        let mut out = self.linearizable.render();
        if let Some(c) = &self.exactly_once {
            out.push_str(&c.render());
        }
        out
    }
}

/// The verdict on one key.
#[derive(Debug, Clone)]
pub(crate) enum KeyVerdict {
    /// Linearizable.
    Valid,
    /// Not linearizable; the window to show.
    Invalid(window::Window),
    /// Timed out.
    Unknown,
}

/// Checks keys on all cores, each thread taking the next unchecked key.
fn check_keys(keys: &[KeyHistory], deadline: Instant) -> Vec<KeyVerdict> {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores.min(keys.len()).max(1);
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, KeyVerdict)> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(key) = keys.get(i) else { break mine };
                        mine.push((i, check_key(key, deadline)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, v)| v).collect()
}

/// The smallest budget the window search gets, even past the deadline: a
/// violation found late is still worth a readable explanation.
const WINDOW_FLOOR: Duration = Duration::from_secs(1);

fn check_key(key: &KeyHistory, deadline: Instant) -> KeyVerdict {
    match search(&key.ops, model::State::Nil, deadline) {
        SearchOutcome::Linearizable => KeyVerdict::Valid,
        SearchOutcome::TimedOut => KeyVerdict::Unknown,
        SearchOutcome::NotLinearizable { reach } => {
            let window_deadline = deadline.max(Instant::now() + WINDOW_FLOOR);
            KeyVerdict::Invalid(window::find(&key.ops, reach, window_deadline))
        }
    }
}
