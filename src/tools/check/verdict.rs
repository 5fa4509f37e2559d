//! The checker's verdict types, shaped as the `linearizable` object of
//! `results.json` (see `docs/history.md`).
//!
//! It may not search: it only holds, merges and renders what the search found.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::ModelOp;
use super::pairs::Pair;
use super::prepare::KeyHistory;
use super::window::Window;
use super::{KeyVerdict, NullReads};
use crate::tools::history::{HistoryOp, OpType, Process};

/// A three-way verdict, as Jepsen's `:valid?`: serialises as `true`, `false` or
/// `"unknown"` so that `results.json` reads like Maelstrom's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Checked and correct.
    Valid,
    /// Checked and wrong.
    Invalid,
    /// Could not decide (time limit, or an input the checker cannot judge).
    Unknown,
}

impl Validity {
    /// Combines two verdicts as Jepsen's `merge-valid`: one proven violation
    /// makes the run invalid; otherwise one undecided part makes it unknown.
    pub fn merge(self, other: Validity) -> Validity {
        use Validity::*;
        match (self, other) {
            (Invalid, _) | (_, Invalid) => Invalid,
            (Unknown, _) | (_, Unknown) => Unknown,
            _ => Valid,
        }
    }

    /// The process exit status Maelstrom uses: 0 valid, 1 invalid, 2 unknown.
    pub fn exit_code(self) -> i32 {
        match self {
            Validity::Valid => 0,
            Validity::Invalid => 1,
            Validity::Unknown => 2,
        }
    }

    /// One upper-case word for summaries.
    pub fn word(self) -> &'static str {
        match self {
            Validity::Valid => "VALID",
            Validity::Invalid => "INVALID",
            Validity::Unknown => "UNKNOWN",
        }
    }
}

impl Serialize for Validity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Validity::Valid => s.serialize_bool(true),
            Validity::Invalid => s.serialize_bool(false),
            Validity::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for Validity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(true) => Ok(Validity::Valid),
            Value::Bool(false) => Ok(Validity::Invalid),
            Value::String(s) if s == "unknown" => Ok(Validity::Unknown),
            other => Err(serde::de::Error::custom(format!(
                "valid must be true, false or \"unknown\", got {other}"
            ))),
        }
    }
}

/// Most ops quoted per list in a failure, so that a non-minimal window (after a
/// timeout) cannot bloat `results.json`.
pub const MAX_QUOTED_OPS: usize = 50;

/// One key that is not linearizable, with the ops that show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFailure {
    /// The key, as in the history.
    pub key: Value,
    /// History lines (invokes and completions) of a window of this key's ops that
    /// cannot be linearized, in history order.
    pub ops: Vec<HistoryOp>,
    /// Lines of other ops overlapping the window, which the check let take effect
    /// at any point or not at all (as `info`); their effects may explain a read.
    pub overlapping: Vec<HistoryOp>,
    /// True if the window starts at the key's first op, so from nil; otherwise it
    /// fails from every starting value.
    pub from_nil: bool,
    /// True if no contiguous sub-window fails; false if the window search ran out
    /// of time, so a shorter window might exist.
    pub minimal: bool,
    /// Ops left out of `ops` and `overlapping` by `MAX_QUOTED_OPS`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The `linearizable` object of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinReport {
    /// Invalid if any key failed; else unknown if any key timed out; else valid.
    pub valid: Validity,
    /// Number of distinct keys in the history.
    pub keys_checked: usize,
    /// One entry per key that is not linearizable.
    pub failures: Vec<KeyFailure>,
    /// Keys the time limit cut short.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_keys: Vec<Value>,
    /// Why the history could not be judged at all (malformed input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How ok reads of null were judged (`"any-state"`, Knossos' rule, or
    /// `"strict"`). Reports written before the field existed were strict.
    #[serde(default = "strict")]
    pub null_reads: NullReads,
}

fn strict() -> NullReads {
    NullReads::Strict
}

impl LinReport {
    /// A report for a history the checker could not judge.
    pub fn unjudged(error: String) -> LinReport {
        let (failures, unknown_keys) = (Vec::new(), Vec::new());
        let error = Some(error);
        LinReport {
            valid: Validity::Unknown,
            keys_checked: 0,
            failures,
            unknown_keys,
            error,
            null_reads: NullReads::default(),
        }
    }

    pub(crate) fn from_keys(
        ops: &[HistoryOp],
        pairs: &[Pair],
        keys: &[KeyHistory],
        verdicts: Vec<KeyVerdict>,
    ) -> LinReport {
        let mut report = LinReport::unjudged(String::new());
        report.error = None;
        report.keys_checked = keys.len();
        for (key, verdict) in keys.iter().zip(verdicts) {
            match verdict {
                KeyVerdict::Valid => {}
                KeyVerdict::Unknown => report.unknown_keys.push(key.key.clone()),
                KeyVerdict::Invalid(w) => report.failures.push(failure(ops, pairs, key, &w)),
            }
        }
        report.valid = match (report.failures.is_empty(), report.unknown_keys.is_empty()) {
            (false, _) => Validity::Invalid,
            (true, false) => Validity::Unknown,
            (true, true) => Validity::Valid,
        };
        report
    }

    /// A few lines for a human: the verdict, then each failing key's window.
    pub fn render(&self) -> String {
        let null_reads = match self.null_reads {
            NullReads::AnyState => "null reads legal in any state, as Knossos",
            NullReads::Strict => "null reads strict",
        };
        let mut out = format!(
            "linearizable: {} ({} keys checked, {} failing, {} undecided; {null_reads})\n",
            self.valid.word(),
            self.keys_checked,
            self.failures.len(),
            self.unknown_keys.len()
        );
        if let Some(e) = &self.error {
            let _ = writeln!(out, "  cannot judge: {e}");
        }
        for f in &self.failures {
            out.push_str(&f.render());
        }
        out
    }
}

impl KeyFailure {
    /// The window as text, one history line each, times in ms.
    pub fn render(&self) -> String {
        let start = if self.from_nil {
            "starting from nil"
        } else {
            "from any starting value"
        };
        let count = self.ops.iter().filter(|o| o.kind == OpType::Invoke).count();
        let key = &self.key;
        let mut out = format!("  key {key}: no linearization of these {count} ops, {start}:\n");
        self.ops
            .iter()
            .for_each(|op| out.push_str(&render_line(op)));
        if !self.overlapping.is_empty() {
            out.push_str("    even letting these overlapping ops take effect or not:\n");
            self.overlapping
                .iter()
                .for_each(|op| out.push_str(&render_line(op)));
        }
        if !self.minimal {
            out.push_str("    (window search ran out of time: a shorter window may exist)\n");
        }
        if self.omitted > 0 {
            let _ = writeln!(out, "    ({} more ops not shown)", self.omitted);
        }
        out
    }
}

fn render_line(op: &HistoryOp) -> String {
    let process = match op.process {
        Process::Client(p) => p.to_string(),
        Process::Nemesis => "nemesis".to_string(),
    };
    let kind = serde_json::to_string(&op.kind).unwrap_or_default();
    let ms = op.time as f64 / 1e6;
    format!(
        "    {ms:>12.3} ms  p{process:<4} {:<8} {:<5} {}\n",
        kind.trim_matches('"'),
        op.f,
        op.value
    )
}

fn failure(ops: &[HistoryOp], pairs: &[Pair], key: &KeyHistory, w: &Window) -> KeyFailure {
    let window: Vec<&ModelOp> = key.ops[w.start..=w.end].iter().collect();
    let others: Vec<&ModelOp> = w.overlapping.iter().map(|&k| &key.ops[k]).collect();
    let omitted =
        window.len().saturating_sub(MAX_QUOTED_OPS) + others.len().saturating_sub(MAX_QUOTED_OPS);
    KeyFailure {
        key: key.key.clone(),
        ops: lines(ops, pairs, &window),
        overlapping: lines(ops, pairs, &others),
        from_nil: w.start == 0,
        minimal: w.minimal,
        omitted,
    }
}

/// The history lines of (at most [`MAX_QUOTED_OPS`] of) `chosen`, in order.
fn lines(ops: &[HistoryOp], pairs: &[Pair], chosen: &[&ModelOp]) -> Vec<HistoryOp> {
    let mut at: Vec<usize> = chosen
        .iter()
        .rev() // the latest ops: a window fails at its end
        .take(MAX_QUOTED_OPS)
        .flat_map(|m| [Some(pairs[m.pair].invoke), pairs[m.pair].completion])
        .flatten()
        .collect();
    at.sort_unstable();
    at.into_iter().map(|i| ops[i].clone()).collect()
}
