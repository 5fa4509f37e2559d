//! Pairing each client invoke with its completion. Both the checker and the report
//! need it, and both must agree on what an "op" is, so it lives in one place.
//!
//! It may not judge the ops it pairs.

use std::collections::HashMap;

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
        "entry {entry}: process {process} invoked while its op at entry {pending} is outstanding"
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
    #[error("entry {entry}: completion for process {process}, which has no outstanding invoke")]
    Orphan {
        /// 1-based position of the completion.
        entry: usize,
        /// The process id.
        process: u64,
    },
    /// The completion's `f` differs from its invoke's.
    #[error("entry {entry}: completion f {got:?} does not match the invoke's f {want:?}")]
    Mismatch {
        /// 1-based position of the completion.
        entry: usize,
        /// The invoke's `f`.
        want: String,
        /// The completion's `f`.
        got: String,
    },
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
    let want = &ops[pair.invoke].f;
    if *want != ops[i].f {
        let (want, got) = (want.clone(), ops[i].f.clone());
        out.problems.push(PairError::Mismatch {
            entry: i + 1,
            want,
            got,
        });
    }
    pair.completion = Some(i);
}
