//! The checker at scale, on histories from a seeded simulation of a linearizable
//! store (`check_common/sim.rs`). Each test prints its seed; rerun one with
//! `ONCEKV_CHECK_SEED=<seed> cargo test --test check_generated`.
//! Timings are printed, not asserted: see `docs/checker.md` for measured figures.

mod check_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use check_common::sim::{SimConfig, simulate};
use oncekv::tools::check::{CheckOptions, Validity, check_counters, check_linearizable};
use oncekv::tools::history::{HistoryOp, OpType, Process};
use serde_json::{Value, json};

fn seed() -> u64 {
    let seed = std::env::var("ONCEKV_CHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (rerun with ONCEKV_CHECK_SEED={seed})");
    seed
}

/// 100,000 ops over 50 keys (5 of them counters), 5 groups of 10 workers each.
fn big(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        ops: 100_000,
        keys: 50,
        counter_keys: 5,
        groups: 5,
        group_size: 10,
        info_probability: 0.01,
    }
}

fn opts() -> CheckOptions {
    CheckOptions {
        time_limit: Duration::from_secs(300),
        ..CheckOptions::default()
    }
}

#[test]
fn a_large_linearizable_history_checks_valid() {
    let run = simulate(&big(seed()));
    let invokes = run
        .history
        .iter()
        .filter(|o| o.kind == OpType::Invoke)
        .count();
    assert_eq!(invokes, 100_000 + 5, "plus a final read per counter key");
    let started = Instant::now();
    let report = check_linearizable(&run.history, &opts());
    eprintln!(
        "checked {invokes} ops over {} keys in {:?}",
        report.keys_checked,
        started.elapsed()
    );
    assert_eq!(report.valid, Validity::Valid, "{}", report.render());
    assert_eq!(report.keys_checked, 50);
    let counters = check_counters(&run.history, &run.final_counters);
    assert_eq!(counters.valid, Validity::Valid, "{}", counters.render());
    assert_eq!(counters.keys_checked, 5);
    let from_history = check_counters(&run.history, &Default::default());
    assert_eq!(
        from_history.valid,
        Validity::Valid,
        "{}",
        from_history.render()
    );
}

/// The index of an ok read of a register key, past 60% of the history, that was
/// invoked after some write on its key completed, early in that key's life (so
/// that refuting it is quick even in a debug build: the search must exhaust every
/// way of linearizing the key's ops before the read).
fn early_read_after_a_write(history: &[HistoryOp], counter_keys_from: i64) -> usize {
    let mut first_write_done: HashMap<i64, usize> = HashMap::new();
    let mut invoked_at: HashMap<Process, usize> = HashMap::new();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let start = history.len() * 3 / 5;
    for (i, op) in history.iter().enumerate() {
        let key = op.key.as_ref().and_then(Value::as_i64).unwrap_or(i64::MAX);
        *seen.entry(key).or_default() += 1;
        if op.kind == OpType::Invoke {
            invoked_at.insert(op.process, i);
        }
        if op.kind == OpType::Ok && op.f == "write" {
            first_write_done.entry(key).or_insert(i);
        }
        let is_read = op.kind == OpType::Ok && op.f == "read" && key < counter_keys_from;
        // A write completed before this read was invoked (`None < Some` would
        // wrongly count a key with no completed write yet).
        let after_write = matches!(
            (first_write_done.get(&key), invoked_at.get(&op.process)),
            (Some(w), Some(inv)) if w < inv
        );
        if i > start && is_read && seen[&key] < 200 && after_write && !op.value.is_null() {
            return i;
        }
    }
    panic!("no suitable read in the generated history");
}

/// Corrupts one read after a completed write into a read of a value never
/// written (so no order explains it) and expects that key to be named.
#[test]
fn a_corrupted_read_in_a_large_history_is_caught() {
    let mut run = simulate(&big(seed()));
    let at = early_read_after_a_write(&run.history, 45);
    let key = run.history[at].key.clone().expect("reads have keys");
    eprintln!(
        "corrupting entry {}: {:?} -> \"never written\"",
        at + 1,
        run.history[at].value
    );
    run.history[at].value = json!("never written");
    let started = Instant::now();
    let report = check_linearizable(&run.history, &opts());
    eprintln!("{}checked in {:?}", report.render(), started.elapsed());
    assert_eq!(report.valid, Validity::Invalid);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].key, key);
    let quoted = report.failures[0].ops.iter().any(|o| *o == run.history[at]);
    assert!(quoted, "the corrupted read is in the reported window");
}

/// Counter keys: one ok add's reply is dropped from the final value (a loss),
/// and one is counted twice (a duplicate).
#[test]
fn a_corrupted_final_counter_is_caught() {
    let run = simulate(&big(seed()));
    let mut finals = run.final_counters.clone();
    let (k_lost, k_dup) = ("45".to_string(), "46".to_string());
    let bump = |v: &Value, by: i64| json!(v.as_i64().unwrap_or(0) + by);
    finals.insert(k_lost.clone(), bump(&finals[&k_lost], -1_000_000));
    finals.insert(k_dup.clone(), bump(&finals[&k_dup], 1_000_000));
    let report = check_counters(&run.history, &finals);
    eprintln!("{}", report.render());
    assert_eq!(report.valid, Validity::Invalid);
    let bad: Vec<String> = report
        .keys
        .iter()
        .filter(|k| k.difference != 0)
        .map(|k| format!("{}:{:?}", k.key, k.verdict))
        .collect();
    assert_eq!(bad, ["45:Lost", "46:Duplicate"]);
}
