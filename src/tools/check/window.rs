//! Narrowing a key's violation down to a short window of ops a human can read.
//!
//! A window is ops `i..=j` of the key in invoke order, checked on their own with
//! two allowances that keep it honest (a window that fails proves the whole key
//! fails):
//! - it starts from nil only when `i == 0`, otherwise from an unknown value that the
//!   first observation pins ([`State::Any`]);
//! - every other op that overlaps the window's time span (from its first invoke to
//!   its last ok completion) may take effect or not, as if it were `info` (its
//!   effect might be what a read in the window saw).
//!
//! Failure is monotone in both ends (widening a window only adds constraints), so
//! binary searches find an inclusion-minimal failing window: no contiguous
//! sub-window of it fails. The full search hands over how far it got (`reach`);
//! the ops invoked before that point already fail, which bounds the window's end.
//! Then the latest start is found (galloping back from the end, so most probes
//! are short windows), then the earliest end for that start.

use std::time::{Duration, Instant};

use super::model::{ModelOp, State};
use super::search::{SearchOutcome, search};

/// A failing window of one key's ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// First op (index into the key's ops).
    pub start: usize,
    /// Last op, inclusive.
    pub end: usize,
    /// Other ops of the key that were allowed to take effect or not.
    pub overlapping: Vec<usize>,
    /// False if some probe timed out, so a sub-window might fail too.
    pub minimal: bool,
}

/// Finds a failing window of `ops`, which fail as a whole (from nil) and whose
/// search got as far as the return entry at time `reach`.
pub(crate) fn find(ops: &[ModelOp], reach: u64, deadline: Instant) -> Window {
    let mut minimal = true;
    let mut probe = |i: usize, j: usize| match fails(ops, i, j, deadline) {
        Some(failed) => failed,
        None => {
            minimal = false;
            false // unproven: keep the bound we already know fails
        }
    };
    // The ops invoked at or before `reach` fail on their own (calls sort before
    // returns at equal times, so a call at `reach` was a candidate).
    let last = ops.len().saturating_sub(1);
    let bound = ops.iter().rposition(|o| o.call <= reach).unwrap_or(last);
    // Every configuration the full search explored stopped at a return entry at or
    // before `reach`, so later ops were never candidates: the same search fails.
    debug_assert!(
        fails(ops, 0, bound, deadline) != Some(false),
        "reach bound must fail"
    );
    // Invariant: lo..=bound fails. Gallop back from the end first: short windows
    // are cheap to refute, and most violations need only a few ops.
    let (mut lo, mut hi) = (0, bound);
    let mut size = 1;
    while lo < hi {
        let s = (bound + 1).saturating_sub(size).max(lo);
        if s == lo {
            break;
        }
        if probe(s, bound) {
            lo = s;
            break;
        }
        hi = s - 1;
        size *= 2;
    }
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if probe(mid, bound) {
            lo = mid
        } else {
            hi = mid - 1
        }
    }
    let start = lo;
    // Invariant: start..=hi fails.
    let (mut lo, mut hi) = (start, bound);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if probe(start, mid) {
            hi = mid
        } else {
            lo = mid + 1
        }
    }
    let (_, overlapping) = sub_history(ops, start, hi);
    Window {
        start,
        end: hi,
        overlapping,
        minimal,
    }
}

/// The most time one probe may take: a window that starts mid-history starts
/// from any value with every long-pending `info` op free to apply, which can be
/// far harder to refute than the whole key; such a probe counts as unproven
/// rather than eating the whole budget.
const PROBE_TIME_MAX: Duration = Duration::from_secs(2);

/// Whether window `i..=j` fails; `None` if the search timed out.
fn fails(ops: &[ModelOp], i: usize, j: usize, deadline: Instant) -> Option<bool> {
    let (sub, _) = sub_history(ops, i, j);
    let init = if i == 0 { State::Nil } else { State::Any };
    let deadline = deadline.min(Instant::now() + PROBE_TIME_MAX);
    match search(&sub, init, deadline) {
        SearchOutcome::NotLinearizable { .. } => Some(true),
        SearchOutcome::Linearizable => Some(false),
        SearchOutcome::TimedOut => None,
    }
}

/// The window's ops plus the overlapping ones made optional, and the indexes of
/// the latter.
fn sub_history(ops: &[ModelOp], i: usize, j: usize) -> (Vec<ModelOp>, Vec<usize>) {
    let span_start = ops[i].call;
    // Optional ops in the window do not stretch it: a linearization can be cut
    // after its last must-happen op, leaving them out (as never happening).
    let span_end = ops[i..=j]
        .iter()
        .filter_map(|o| o.ret)
        .max()
        .unwrap_or(span_start);
    let mut sub = ops[i..=j].to_vec();
    let mut overlapping = Vec::new();
    for (k, op) in ops.iter().enumerate() {
        // Equal times overlap: only a strictly earlier return orders two ops.
        let overlaps = op.call <= span_end && op.ret.is_none_or(|r| r >= span_start);
        if (i..=j).contains(&k) || !overlaps {
            continue;
        }
        if let Some(optional) = op.as_optional() {
            sub.push(optional);
            overlapping.push(k);
        }
    }
    (sub, overlapping)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::check::model::Kind;

    fn op(call: u64, ret: u64, kind: Kind) -> ModelOp {
        ModelOp {
            call,
            ret: Some(ret),
            kind,
            pair: call as usize,
        }
    }

    #[test]
    fn narrows_to_the_stale_read() {
        let w = |v| Kind::Write(State::Int(v));
        let r = |v| Kind::Read(State::Int(v));
        let ops = vec![
            op(0, 1, w(1)),
            op(2, 3, r(1)),
            op(4, 5, w(2)),
            op(6, 7, r(2)),
            op(8, 9, r(1)), // stale: 2 was written and read before
            op(10, 11, w(3)),
            op(12, 13, r(3)),
        ];
        let found = find(&ops, 9, Instant::now() + Duration::from_secs(5));
        assert_eq!((found.start, found.end), (3, 4), "{found:?}");
        assert!(found.minimal);
        assert!(found.overlapping.is_empty());
    }
}
