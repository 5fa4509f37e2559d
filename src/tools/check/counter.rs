//! The exactly-once counter check, for the harness's `exactly-once` workload
//! (beyond Maelstrom): every counter must end at the sum of the deltas of the adds
//! that took effect. `ok` adds took effect; `info` (or unfinished) adds may have;
//! so the final value must be `sum(ok deltas) + sum(some subset of info deltas)`.
//! Too high means an add was applied twice; too low means one was lost.
//!
//! It reads only the history; it may not touch the linearizability search.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pairs::{Pair, pair_ops};
use super::{Validity, check_times};
use crate::tools::history::{HistoryOp, OpType};

/// Most distinct subset sums tracked for one key before answering `unknown`;
/// bounds memory when many info adds have varied deltas.
pub const SUBSET_SUMS_MAX: usize = 1 << 20;

/// The `exactly_once` object of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterReport {
    /// Invalid if any counter is off; else unknown if any could not be decided.
    pub valid: Validity,
    /// Number of counter keys (keys with adds and no write or cas).
    pub keys_checked: usize,
    /// One entry per counter key, in order of first appearance.
    pub keys: Vec<CounterKey>,
    /// Why the history could not be judged at all (malformed input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one counter key showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CounterVerdict {
    /// The final value is explained by the ok adds plus some of the info adds.
    Ok,
    /// Too high even if every info add took effect: an add was applied twice.
    Duplicate,
    /// Too low even if no info add took effect: an ok add was lost.
    Lost,
    /// Within range, but no subset of the info adds sums to the gap.
    Unexplained,
    /// No read or add was seen after all adds finished, and no final read given.
    Unobserved,
    /// A value or delta is not an integer, or too many subset sums to decide.
    Undecided,
}

/// The evidence for one counter key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterKey {
    /// The key, as in the history.
    pub key: Value,
    /// The outcome.
    pub verdict: CounterVerdict,
    /// The value the counter ended at (null: never observed).
    pub final_value: Value,
    /// Where it came from: `"final read"` or `"entry N"` (1-based history entry).
    pub final_source: String,
    /// Number of ok adds counted.
    pub ok_adds: usize,
    /// Sum of their deltas.
    pub ok_sum: i64,
    /// Number of info (or unfinished) adds that may be in the final value.
    pub info_adds: usize,
    /// Final value minus the nearest explainable total: above 0 for duplicates,
    /// below 0 for losses, 0 otherwise.
    pub difference: i64,
}

/// Checks every counter key. `final_reads` maps a key's JSON text (`"0"`, or
/// `"\"x\""` for a string key) to a value read after the run quiesced; a key
/// without one is judged by the last ok read or add that began after every other
/// ok add on it finished.
pub fn check_counters(ops: &[HistoryOp], final_reads: &BTreeMap<String, Value>) -> CounterReport {
    let pairing = pair_ops(ops);
    let problem = check_times(ops)
        .err()
        .map(|e| e.to_string())
        .or_else(|| pairing.problems.first().map(ToString::to_string));
    if let Some(problem) = problem {
        let (valid, keys_checked, keys) = (Validity::Unknown, 0, Vec::new());
        return CounterReport {
            valid,
            keys_checked,
            keys,
            error: Some(problem),
        };
    }
    let keys: Vec<CounterKey> = counter_keys(ops, &pairing.pairs)
        .into_iter()
        .map(|(key, pairs)| judge(ops, key, &pairs, final_reads))
        .collect();
    let valid = keys
        .iter()
        .map(|k| validity(k.verdict))
        .fold(Validity::Valid, Validity::merge);
    CounterReport {
        valid,
        keys_checked: keys.len(),
        keys,
        error: None,
    }
}

fn validity(v: CounterVerdict) -> Validity {
    match v {
        CounterVerdict::Ok => Validity::Valid,
        CounterVerdict::Duplicate | CounterVerdict::Lost | CounterVerdict::Unexplained => {
            Validity::Invalid
        }
        CounterVerdict::Unobserved | CounterVerdict::Undecided => Validity::Unknown,
    }
}

/// Keys with at least one add and no write or cas, with their ops.
fn counter_keys<'a>(ops: &'a [HistoryOp], pairs: &[Pair]) -> Vec<(&'a Value, Vec<Pair>)> {
    let mut slot: HashMap<String, usize> = HashMap::new();
    let mut keys: Vec<(&Value, Vec<Pair>)> = Vec::new();
    for pair in pairs {
        let Some(key) = ops[pair.invoke].key.as_ref() else {
            continue;
        };
        let i = *slot.entry(key.to_string()).or_insert_with(|| {
            keys.push((key, Vec::new()));
            keys.len() - 1
        });
        keys[i].1.push(*pair);
    }
    let is_counter = |pairs: &[Pair]| {
        let f = |p: &Pair| ops[p.invoke].f.as_str();
        pairs.iter().any(|p| f(p) == "add") && pairs.iter().all(|p| matches!(f(p), "add" | "read"))
    };
    keys.retain(|(_, pairs)| is_counter(pairs));
    keys
}

/// The final observation of a counter.
struct Final {
    /// The value observed.
    value: Value,
    /// `"final read"` or `"entry N"`.
    source: String,
    /// Info adds invoked after this time cannot be in `value`.
    horizon: u64,
}

fn judge(
    ops: &[HistoryOp],
    key: &Value,
    pairs: &[Pair],
    reads: &BTreeMap<String, Value>,
) -> CounterKey {
    let mut out = CounterKey {
        key: key.clone(),
        verdict: CounterVerdict::Unobserved,
        final_value: Value::Null,
        final_source: String::new(),
        ok_adds: 0,
        ok_sum: 0,
        info_adds: 0,
        difference: 0,
    };
    let observed = match reads.get(&key.to_string()) {
        Some(v) => Some(Final {
            value: v.clone(),
            source: "final read".into(),
            horizon: u64::MAX,
        }),
        None => last_observation(ops, pairs),
    };
    let Some(fin) = observed else { return out };
    out.final_value = fin.value.clone();
    out.final_source = fin.source.clone();
    out.verdict = tally(ops, pairs, &fin, &mut out).unwrap_or(CounterVerdict::Undecided);
    out
}

/// The ok read or add that completed last among those invoked after every other
/// ok add completed (strictly earlier `time`: equal times are concurrent): its
/// value includes every ok add.
fn last_observation(ops: &[HistoryOp], pairs: &[Pair]) -> Option<Final> {
    let ok = |p: &&Pair| p.outcome(ops) == OpType::Ok;
    let ok_add_ends: Vec<(usize, u64)> = pairs
        .iter()
        .filter(ok)
        .filter(|p| ops[p.invoke].f == "add")
        .filter_map(|p| Some((p.invoke, ops[p.completion?].time)))
        .collect();
    let sees_all = |p: &Pair| {
        let invoked = ops[p.invoke].time;
        ok_add_ends
            .iter()
            .all(|&(i, done)| i == p.invoke || done < invoked)
    };
    let last = pairs
        .iter()
        .filter(ok)
        .filter(|p| sees_all(p))
        .max_by_key(|p| p.completion)?;
    let done = last.completion?;
    let source = format!("entry {}", done + 1);
    Some(Final {
        value: ops[done].value.clone(),
        source,
        horizon: ops[done].time,
    })
}

/// Fills the sums; the verdict, or `None` if undecidable.
fn tally(
    ops: &[HistoryOp],
    pairs: &[Pair],
    fin: &Final,
    out: &mut CounterKey,
) -> Option<CounterVerdict> {
    let final_value = if fin.value.is_null() {
        0
    } else {
        fin.value.as_i64()?
    };
    let mut info = Vec::new();
    for p in pairs.iter().filter(|p| ops[p.invoke].f == "add") {
        let delta = ops[p.invoke].value.as_i64()?;
        match p.outcome(ops) {
            OpType::Ok => {
                out.ok_adds += 1;
                out.ok_sum = out.ok_sum.checked_add(delta)?;
            }
            // Invoked no later than the observation completed: it may be in it.
            OpType::Info if ops[p.invoke].time <= fin.horizon => info.push(delta),
            _ => {}
        }
    }
    out.info_adds = info.len();
    let gap = final_value.checked_sub(out.ok_sum)?;
    let (low, high) = info.iter().fold((0i64, 0i64), |(lo, hi), &d| {
        (lo.saturating_add(d.min(0)), hi.saturating_add(d.max(0)))
    });
    if gap > high || gap < low {
        out.difference = if gap > high { gap - high } else { gap - low };
        return Some(if gap > high {
            CounterVerdict::Duplicate
        } else {
            CounterVerdict::Lost
        });
    }
    Some(if subset_sums_to(&info, gap)? {
        CounterVerdict::Ok
    } else {
        CounterVerdict::Unexplained
    })
}

/// Whether some subset of `deltas` sums to `target`; `None` past
/// [`SUBSET_SUMS_MAX`] distinct partial sums.
fn subset_sums_to(deltas: &[i64], target: i64) -> Option<bool> {
    let mut sums: HashSet<i64> = HashSet::from([0]);
    for &d in deltas {
        let more: Vec<i64> = sums.iter().filter_map(|s| s.checked_add(d)).collect();
        sums.extend(more);
        if sums.len() > SUBSET_SUMS_MAX {
            return None;
        }
    }
    Some(sums.contains(&target))
}

impl CounterReport {
    /// A few lines for a human: the verdict, then each counter that is off.
    pub fn render(&self) -> String {
        let mut out = format!(
            "exactly-once counters (beyond Maelstrom): {} ({} counter keys)\n",
            self.valid.word(),
            self.keys_checked
        );
        if let Some(e) = &self.error {
            let _ = writeln!(out, "  cannot judge: {e}");
        }
        for k in self.keys.iter().filter(|k| k.verdict != CounterVerdict::Ok) {
            if k.verdict == CounterVerdict::Unobserved {
                let _ = writeln!(
                    out,
                    "  key {}: no read after the last add, no final read",
                    k.key
                );
                continue;
            }
            let _ = writeln!(
                out,
                "  key {}: {:?}: final {} ({}), ok adds {} summing to {}, {} info adds, off by {}",
                k.key,
                k.verdict,
                k.final_value,
                k.final_source,
                k.ok_adds,
                k.ok_sum,
                k.info_adds,
                k.difference
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_sums() {
        assert_eq!(subset_sums_to(&[1, 2, 5], 7), Some(true));
        assert_eq!(subset_sums_to(&[1, 2, 5], 4), Some(false));
        assert_eq!(subset_sums_to(&[], 0), Some(true));
        assert_eq!(subset_sums_to(&[-3, 4], 1), Some(true));
    }
}
