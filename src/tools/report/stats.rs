//! Op counts, availability and latency quantiles: the figures Maelstrom prints
//! beside the verdict.
//!
//! Pure functions of the history: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tools::check::pairs::Pair;
use crate::tools::history::{HistoryOp, OpType};

/// How many ops ended each way. An invoke the run never completed counts as
/// `info` (its outcome is unknown), so `count == ok + fail + info` == invokes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Ops invoked.
    pub count: u64,
    /// Ops that took effect.
    pub ok: u64,
    /// Ops that definitely did not.
    pub fail: u64,
    /// Ops that may or may not have.
    pub info: u64,
}

impl Counts {
    fn add(&mut self, outcome: OpType) {
        self.count += 1;
        match outcome {
            OpType::Ok => self.ok += 1,
            OpType::Fail => self.fail += 1,
            OpType::Info | OpType::Invoke => self.info += 1,
        }
    }
}

/// The `stats` object of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Jepsen's rule: false if some `f` never once succeeded (a run where, say,
    /// every cas failed tested nothing about cas).
    pub valid: bool,
    /// Ops invoked.
    pub count: u64,
    /// Ops that took effect.
    pub ok: u64,
    /// Ops that definitely did not.
    pub fail: u64,
    /// Ops that may or may not have.
    pub info: u64,
    /// The same counts per `f`.
    pub by_f: BTreeMap<String, Counts>,
}

/// Counts client ops in total and per `f`.
pub fn stats(ops: &[HistoryOp], pairs: &[Pair]) -> Stats {
    let mut total = Counts::default();
    let mut by_f: BTreeMap<String, Counts> = BTreeMap::new();
    for p in pairs {
        let outcome = p.outcome(ops);
        total.add(outcome);
        by_f.entry(ops[p.invoke].f.clone())
            .or_default()
            .add(outcome);
    }
    let valid = by_f.values().all(|c| c.ok > 0);
    let Counts {
        count,
        ok,
        fail,
        info,
    } = total;
    Stats {
        valid,
        count,
        ok,
        fail,
        info,
        by_f,
    }
}

/// The `f`s with no ok op, which make [`Stats::valid`] false.
pub fn fs_without_ok(stats: &Stats) -> Vec<&str> {
    stats
        .by_f
        .iter()
        .filter(|(_, c)| c.ok == 0)
        .map(|(f, _)| f.as_str())
        .collect()
}

/// The `availability` object: what fraction of invoked ops succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    /// ok / invokes; 0 when nothing was invoked.
    pub ok_fraction: f64,
}

/// ok / invokes, from the stats.
pub fn availability(stats: &Stats) -> Availability {
    let ok_fraction = if stats.count == 0 {
        0.0
    } else {
        stats.ok as f64 / stats.count as f64
    };
    Availability { ok_fraction }
}

/// Latency quantiles of one `f`'s ok ops, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// Per `f`, the latency quantiles of its ok ops (completion time minus invoke
/// time). An `f` with no ok op has no entry: a failed or timed-out op's latency
/// says how long the client waited, not how long the system took.
pub fn latency_ms(ops: &[HistoryOp], pairs: &[Pair]) -> BTreeMap<String, Quantiles> {
    let mut by_f: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.outcome(ops) == OpType::Ok) {
        let Some(done) = p.completion else { continue };
        let ns = ops[done].time.saturating_sub(ops[p.invoke].time);
        by_f.entry(ops[p.invoke].f.clone())
            .or_default()
            .push(ns as f64 / 1e6);
    }
    by_f.into_iter()
        .filter_map(|(f, mut v)| Some((f, quantiles(&mut v)?)))
        .collect()
}

/// Nearest-rank quantiles (the smallest value with at least q of the values at
/// or below it), rounded to the microsecond; `None` for no values.
pub fn quantiles(values: &mut [f64]) -> Option<Quantiles> {
    values.sort_by(f64::total_cmp);
    let max = *values.last()?;
    let at = |q: f64| {
        let rank = (q * values.len() as f64).ceil() as usize;
        round_us(values[rank.clamp(1, values.len()) - 1])
    };
    Some(Quantiles {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        max: round_us(max),
    })
}

fn round_us(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        v.reverse();
        let q = quantiles(&mut v).expect("non-empty");
        assert_eq!((q.p50, q.p95, q.p99, q.max), (50.0, 95.0, 99.0, 100.0));
        let q = quantiles(&mut [7.0]).expect("one value");
        assert_eq!((q.p50, q.p99, q.max), (7.0, 7.0, 7.0));
        assert_eq!(quantiles(&mut []), None);
        let q = quantiles(&mut [1.0, 2.0, 3.0]).expect("three");
        assert_eq!((q.p50, q.p95), (2.0, 3.0));
    }
}
