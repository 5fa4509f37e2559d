//! From history lines to one list of model ops per key (P-compositionality: a
//! history is linearizable iff each key's sub-history is, so keys are checked
//! apart). This is where `fail` ops and `info` reads are dropped, and, under
//! [`NullReads::AnyState`], ok reads of null.
//!
//! It may not search or judge.

use std::collections::HashMap;

use serde_json::Value;

use super::model::{Interner, Kind, ModelOp};
use super::pairs::Pair;
use super::{CheckError, NullReads};
use crate::tools::history::{HistoryOp, OpType};

/// One key's ops, ready for the search.
#[derive(Debug)]
pub(crate) struct KeyHistory {
    /// The key as it appears in the history.
    pub key: Value,
    /// Its ops in invoke order (the order windows are cut in).
    pub ops: Vec<ModelOp>,
}

/// Splits paired client ops by key, keys in order of first appearance.
pub(crate) fn per_key(
    ops: &[HistoryOp],
    pairs: &[Pair],
    null_reads: NullReads,
) -> Result<Vec<KeyHistory>, CheckError> {
    let mut slot_of: HashMap<String, usize> = HashMap::new();
    let mut keys: Vec<(KeyHistory, Interner)> = Vec::new();
    for (index, pair) in pairs.iter().enumerate() {
        let invoke = &ops[pair.invoke];
        let entry = pair.invoke + 1;
        let key = invoke
            .key
            .as_ref()
            .ok_or(CheckError::MissingKey { entry })?;
        let slot = *slot_of.entry(key.to_string()).or_insert_with(|| {
            let fresh = KeyHistory {
                key: key.clone(),
                ops: Vec::new(),
            };
            keys.push((fresh, Interner::default()));
            keys.len() - 1
        });
        let (history, interner) = &mut keys[slot];
        if let Some(op) = model_op(ops, *pair, index, interner, null_reads)? {
            history.ops.push(op);
        }
    }
    Ok(keys.into_iter().map(|(k, _)| k).collect())
}

/// The model op for one pair, or `None` if it constrains nothing (a `fail`, a
/// read without an ok, or an ok read of null under [`NullReads::AnyState`]).
fn model_op(
    ops: &[HistoryOp],
    pair: Pair,
    index: usize,
    interner: &mut Interner,
    null_reads: NullReads,
) -> Result<Option<ModelOp>, CheckError> {
    let invoke = &ops[pair.invoke];
    let outcome = pair.outcome(ops);
    let ok_reply = pair
        .completion
        .filter(|_| outcome == OpType::Ok)
        .map(|c| &ops[c]);
    let kind = match invoke.f.as_str() {
        // Knossos' rule: a read of nil is legal in any state and changes nothing,
        // so it constrains nothing and is left out, as an info read is.
        "read" => ok_reply
            .filter(|c| !(null_reads == NullReads::AnyState && c.value.is_null()))
            .map(|c| Kind::Read(interner.state(&c.value))),
        "write" => Some(Kind::Write(interner.state(&invoke.value))),
        "cas" => Some(cas(invoke, pair.invoke + 1, interner)?),
        "add" => {
            let delta = delta(invoke, pair.invoke + 1)?;
            let total = ok_reply.map(|c| interner.state(&c.value));
            Some(Kind::Add { delta, total })
        }
        other => {
            let (entry, f) = (pair.invoke + 1, other.to_string());
            return Err(CheckError::UnknownF { entry, f });
        }
    };
    let Some(kind) = kind.filter(|_| outcome != OpType::Fail) else {
        return Ok(None);
    };
    let ret = ok_reply.map(|c| c.time);
    Ok(Some(ModelOp {
        call: invoke.time,
        ret,
        kind,
        pair: index,
    }))
}

fn cas(invoke: &HistoryOp, entry: usize, interner: &mut Interner) -> Result<Kind, CheckError> {
    match invoke.value.as_array().map(Vec::as_slice) {
        Some([from, to]) => Ok(Kind::Cas(interner.state(from), interner.state(to))),
        _ => Err(bad_value(invoke, entry, "[from, to]")),
    }
}

fn delta(invoke: &HistoryOp, entry: usize) -> Result<i64, CheckError> {
    invoke
        .value
        .as_i64()
        .ok_or_else(|| bad_value(invoke, entry, "an integer delta"))
}

fn bad_value(op: &HistoryOp, entry: usize, expected: &'static str) -> CheckError {
    let (f, value) = (op.f.clone(), op.value.to_string());
    CheckError::BadValue {
        entry,
        f,
        value,
        expected,
    }
}
