//! The checks every simulated run must pass:
//! - the history is linearizable (the project's checker, `tools::check`);
//! - no (client_id, seq) ran twice, from the state machines' own record of what
//!   ran (their journals), not from replies;
//! - every counter holds the sum of the adds that ran on it;
//! - every acknowledged sessioned write is in that record (nothing acknowledged
//!   was lost across crashes);
//! - replicas that applied the same index hold byte-identical states (from
//!   each state machine's digest after every step);
//! - after the last fault healed, every operation got an answer in bounded time
//!   and the replicas converged;
//! - no panic, and no node exited without a fault that explains it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::client::COUNTERS;
use super::{World, lock};
use crate::raft::sm_store::Executed;
use crate::state::{KvOp, Outcome};
use crate::tools::check::{CheckOptions, NullReads, check_linearizable};
use crate::tools::history::OpType;

/// Every replica's state after each index it applied (its record's digests,
/// over all its incarnations) against every other's at the same index: a
/// difference is a divergence, whatever happened after it.
fn compare_states(world: &World) {
    let mut first: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for (n, j) in world.journals.iter().enumerate() {
        for &(index, digest) in &lock(j).states {
            match first.get(&index) {
                Some(&(d, other)) if d != digest => {
                    world.fail(format!(
                        "replicas diverged: {} and {} applied index {index} but hold \
                         different states",
                        world.names[other], world.names[n]
                    ));
                    return;
                }
                Some(_) => {}
                None => {
                    first.insert(index, (digest, n));
                }
            }
        }
    }
}

/// Waits (up to 30 simulated s) until every node is up and all applied the same
/// index as the leader's committed one; false if they never do.
pub async fn converge(world: &Arc<World>) -> bool {
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let slots = lock(&world.slots);
        if slots.iter().any(|s| !s.up) {
            continue;
        }
        let applied: Vec<Option<u64>> = slots
            .iter()
            .map(|s| {
                s.sm.as_ref()
                    .and_then(|sm| sm.read().last_applied.map(|l| l.index))
            })
            .collect();
        let members: Vec<Option<Vec<u64>>> = slots
            .iter()
            .map(|s| {
                lock(&s.node)
                    .as_ref()
                    .map(|n| n.membership_nodes().iter().map(|m| m.id).collect())
            })
            .collect();
        drop(slots);
        let same = applied.windows(2).all(|w| w[0] == w[1]) && applied[0].is_some();
        let leader = world.leader().is_some();
        // Nodes removed from the membership stop receiving entries: only
        // members need to agree.
        let all_members = members
            .iter()
            .all(|m| m.as_ref().is_some_and(|m| m.len() == world.opts.nodes));
        if leader && same && all_members {
            return true;
        }
    }
    let slots = lock(&world.slots);
    let view: Vec<String> = slots
        .iter()
        .map(|s| {
            let applied =
                s.sm.as_ref()
                    .and_then(|sm| sm.read().last_applied.map(|l| l.index));
            format!("{} up={} applied={applied:?}", s.name, s.up)
        })
        .collect();
    drop(slots);
    world.fail(format!(
        "liveness: the replicas did not converge within 30 s after the run: {}",
        view.join(", ")
    ));
    false
}

/// Every check on the finished run.
pub fn judge(world: &Arc<World>, converged: bool) {
    let history = lock(&world.history).clone();
    compare_states(world);
    // The union of what every replica ran, by log index.
    // (Copied out first: a journal's lock is never held while another is taken.)
    let executed: Vec<Vec<Executed>> = world
        .journals
        .iter()
        .map(|j| lock(j).executed.clone())
        .collect();
    let mut by_index: BTreeMap<u64, Executed> = BTreeMap::new();
    for (i, list) in executed.iter().enumerate() {
        for e in list {
            match by_index.get(&e.index) {
                Some(other) if !same_execution(other, e) => {
                    let around: Vec<String> = executed
                        .iter()
                        .enumerate()
                        .flat_map(|(n, list)| {
                            list.iter()
                                .filter(|x| x.index + 3 >= e.index && x.index <= e.index + 3)
                                .map(move |x| format!("n{n}@{}:{:?}", x.index, x.session))
                        })
                        .collect();
                    world.fail(format!(
                        "replicas ran different operations at index {}: {other:?} and ({}) \
                         {e:?}; around it: {}",
                        e.index,
                        world.names[i],
                        around.join(" ")
                    ))
                }
                Some(_) => {}
                None => {
                    by_index.insert(e.index, e.clone());
                }
            }
        }
    }
    // Exactly once.
    let mut runs: BTreeMap<(String, u64), Vec<&Executed>> = BTreeMap::new();
    for e in by_index.values() {
        if let Some(s) = &e.session {
            runs.entry(s.clone()).or_default().push(e);
        }
    }
    for ((client, seq), list) in &runs {
        if list.len() < 2 {
            continue;
        }
        if list[1..].iter().all(|e| e.fresh_session) {
            lock(&world.stats).trimmed_reruns += 1;
            continue;
        }
        let at: Vec<u64> = list.iter().map(|e| e.index).collect();
        world.fail(format!(
            "exactly-once violated: ({client}, {seq}) ran {} times, at indexes {at:?}",
            list.len()
        ));
    }
    // Linearizability.
    let mut resolved = resolve(&history, &runs);
    // The sim's clock is paused virtual time: many lines share an instant, yet
    // their order is the real one (one thread). The checker reads real-time
    // order from `time`, where equal times are concurrent, so each line gets a
    // time after the line before it, keeping the order the line order gives.
    for i in 1..resolved.len() {
        resolved[i].time = resolved[i].time.max(resolved[i - 1].time + 1);
    }
    let report = check_linearizable(
        &resolved,
        &CheckOptions {
            time_limit: Duration::from_secs(10),
            // oncekv answers a missing key with error 20, never a null read.
            null_reads: NullReads::Strict,
        },
    );
    lock(&world.stats).linearizable = report.valid.word().to_string();
    if report.valid == crate::tools::check::Validity::Invalid {
        world.fail(format!("not linearizable: {}", report.render().trim()));
    }
    // Acknowledged writes are in the record.
    for op in history
        .iter()
        .filter(|o| o.kind == OpType::Ok && o.f != "read")
    {
        if let (Some(c), Some(q)) = (&op.client_id, op.seq)
            && !runs.contains_key(&(c.clone(), q))
        {
            world.fail(format!(
                "acknowledged {} ({c}, {q}) is in no replica's record: lost",
                op.f
            ));
        }
    }
    // Counters hold the sum of the adds that ran.
    if converged {
        let state = {
            let slots = lock(&world.slots);
            slots
                .iter()
                .find_map(|s| s.sm.as_ref().map(|sm| sm.read().state.kv.clone()))
        };
        if let Some(kv) = state {
            for key in COUNTERS {
                let canonical = Value::from(key).to_string();
                let sum: i64 = by_index
                    .values()
                    .filter_map(|e| match (&e.op, &e.outcome) {
                        (KvOp::Add { key: k, delta }, Outcome::Added { .. }) if *k == canonical => {
                            Some(*delta)
                        }
                        _ => None,
                    })
                    .sum();
                let held = kv.get(&canonical).and_then(|v| v.as_i64()).unwrap_or(0);
                if held != sum {
                    world.fail(format!(
                        "counter {key} holds {held} but the adds that ran sum to {sum}"
                    ));
                }
            }
        }
    }
    liveness(world, &history);
}

/// The history with each indefinite answer that the session table gave (1000:
/// the session is gone; 1001: the reply was dropped) settled from the
/// replicas' record: such a request can no longer run (its session is
/// tombstoned, or its seq is below the client's window), so if it ran, it ran
/// before that answer was given, with the outcome the record holds; if it is
/// not in the record, it never ran. This keeps the checker's search small
/// (an open-ended operation is concurrent with everything after it) without
/// trusting a reply for anything.
fn resolve(
    history: &[crate::tools::history::HistoryOp],
    runs: &BTreeMap<(String, u64), Vec<&Executed>>,
) -> Vec<crate::tools::history::HistoryOp> {
    history
        .iter()
        .map(|op| {
            let settled = op.kind == OpType::Info
                && op
                    .error
                    .as_ref()
                    .is_some_and(|(c, _)| *c == 1000 || *c == 1001);
            let (Some(c), Some(q), true) = (&op.client_id, op.seq, settled) else {
                return op.clone();
            };
            let mut op = op.clone();
            match runs.get(&(c.clone(), q)).and_then(|l| l.first()) {
                None => op.kind = OpType::Fail,
                Some(e) => match &e.outcome {
                    Outcome::Added { value } => {
                        op.kind = OpType::Ok;
                        op.value = Value::from(*value);
                    }
                    Outcome::Written | Outcome::Swapped => op.kind = OpType::Ok,
                    _ => op.kind = OpType::Fail,
                },
            }
            op.error = None;
            op
        })
        .collect()
}

/// Two records of one index agree.
fn same_execution(a: &Executed, b: &Executed) -> bool {
    a.session == b.session && a.op == b.op && a.outcome == b.outcome
}

/// Every operation pending when the faults healed, or started after, completed
/// within the bound.
fn liveness(world: &World, history: &[crate::tools::history::HistoryOp]) {
    let healed_ns = world.healed_at_ms.load(std::sync::atomic::Ordering::SeqCst) * 1_000_000;
    let bound_ns = world.opts.liveness_ms * 1_000_000;
    let mut open: BTreeMap<u64, u64> = BTreeMap::new();
    for op in history {
        let crate::tools::history::Process::Client(p) = op.process else {
            continue;
        };
        if op.kind == OpType::Invoke {
            open.insert(p, op.time);
            continue;
        }
        let Some(invoked) = open.remove(&p) else {
            continue;
        };
        let due = invoked.max(healed_ns) + bound_ns;
        let gave_up = op.error.as_ref().is_some_and(|(c, _)| *c == -1);
        if op.time > due || gave_up {
            world.fail(format!(
                "liveness: {} on {:?} by process {p} (invoked at {} ms) had no definite \
                 answer within {} ms of the heal",
                op.f,
                op.key,
                invoked / 1_000_000,
                world.opts.liveness_ms
            ));
            return;
        }
    }
}
