//! Pairing each client invoke with its completion. Both the checker and the report
//! need it, and both must agree on what an "op" is, so it lives in one place.
//!
//! It may not judge the ops it pairs.

use std::collections::HashMap;

use serde_json::Value;

use crate::tools::history::{HistoryOp, OpType, Process};

/// One client operation: where its invoke and its completion sit in the history.
///
/// Indexes (not copies) so that callers can quote the original lines and use the
/// history's order as the real-time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// Index of the `invoke` line in the history slice.
    pub invoke: usize,
    /// Index of the `ok`/`fail`/`info` line, or `None` if the run ended first.
    pub completion: Option<usize>,
}

impl Pair {
    /// The outcome as the checker sees it: a missing completion counts as `info`
    /// (it may or may not have happened), Jepsen's rule.
    pub fn outcome(&self, ops: &[HistoryOp]) -> OpType {
        self.completion.map_or(OpType::Info, |c| ops[c].kind)
    }
}

/// A history that breaks the "one outstanding op per process" contract. These are
/// harness bugs, not system bugs, so the checker reports them instead of a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// A process invoked again while its previous op was still outstanding.
    #[error(
        "line {entry}: process {process} invoked while its op at line {pending} is outstanding"
    )]
    DoubleInvoke {
        /// 1-based position of the second invoke in the history.
        entry: usize,
        /// The offending process id.
        process: u64,
        /// 1-based position of the outstanding invoke.
        pending: usize,
    },
    /// A completion arrived for a process with nothing outstanding.
    #[error("line {entry}: completion for process {process}, which has no outstanding invoke")]
    Orphan {
        /// 1-based position of the completion.
        entry: usize,
        /// The process id.
        process: u64,
    },
    /// The completion's `f` or `key` differs from its invoke's: the completion
    /// belongs to some other op.
    #[error(
        "line {entry}: completion {field} {got} does not match {want}, the {field} of its invoke at line {invoke}"
    )]
    Mismatch {
        /// 1-based position of the completion.
        entry: usize,
        /// 1-based position of the invoke.
        invoke: usize,
        /// `"f"` or `"key"`.
        field: &'static str,
        /// The invoke's, as JSON (`none` if absent).
        want: String,
        /// The completion's, as JSON (`none` if absent).
        got: String,
    },
}

impl PairError {
    /// The same error with its 1-based positions mapped through `line`: from
    /// positions among the parsed ops to line numbers of the file they came from.
    pub fn renumbered(self, line: impl Fn(usize) -> usize) -> PairError {
        match self {
            PairError::DoubleInvoke {
                entry,
                process,
                pending,
            } => PairError::DoubleInvoke {
                entry: line(entry),
                process,
                pending: line(pending),
            },
            PairError::Orphan { entry, process } => PairError::Orphan {
                entry: line(entry),
                process,
            },
            PairError::Mismatch {
                entry,
                invoke,
                field,
                want,
                got,
            } => PairError::Mismatch {
                entry: line(entry),
                invoke: line(invoke),
                field,
                want,
                got,
            },
        }
    }
}

/// The result of pairing: the ops found, plus every contract breach met on the way.
#[derive(Debug, Clone, Default)]
pub struct Pairing {
    /// Client ops, in invoke order. Nemesis lines are not included.
    pub pairs: Vec<Pair>,
    /// Contract breaches; empty for a well-formed history.
    pub problems: Vec<PairError>,
}

/// Pairs every client invoke with the next completion by the same process.
///
/// Lenient by design: it keeps going past problems (the report still wants its
/// counts) and lists them in [`Pairing::problems`]; the checker refuses to judge a
/// history with problems.
pub fn pair_ops(ops: &[HistoryOp]) -> Pairing {
    let mut out = Pairing::default();
    let mut open: HashMap<u64, usize> = HashMap::new(); // process -> index in out.pairs
    for (i, op) in ops.iter().enumerate() {
        let Process::Client(p) = op.process else {
            continue;
        };
        if op.kind == OpType::Invoke {
            if let Some(prev) = open.insert(p, out.pairs.len()) {
                let pending = out.pairs[prev].invoke + 1;
                out.problems.push(PairError::DoubleInvoke {
                    entry: i + 1,
                    process: p,
                    pending,
                });
            }
            out.pairs.push(Pair {
                invoke: i,
                completion: None,
            });
        } else {
            complete(ops, &mut out, &mut open, i, p);
        }
    }
    out
}

fn complete(
    ops: &[HistoryOp],
    out: &mut Pairing,
    open: &mut HashMap<u64, usize>,
    i: usize,
    p: u64,
) {
    let Some(slot) = open.remove(&p) else {
        out.problems.push(PairError::Orphan {
            entry: i + 1,
            process: p,
        });
        return;
    };
    let pair = &mut out.pairs[slot];
    let (invoke, done) = (&ops[pair.invoke], &ops[i]);
    let f = |op: &HistoryOp| Value::from(op.f.as_str()).to_string();
    let key = |op: &HistoryOp| op.key.as_ref().map_or("none".into(), Value::to_string);
    let differs = [
        ("f", invoke.f != done.f, f(invoke), f(done)),
        ("key", invoke.key != done.key, key(invoke), key(done)),
    ];
    if let Some((field, _, want, got)) = differs.into_iter().find(|d| d.1) {
        out.problems.push(PairError::Mismatch {
            entry: i + 1,
            invoke: pair.invoke + 1,
            field,
            want,
            got,
        });
    }
    pair.completion = Some(i);
}
