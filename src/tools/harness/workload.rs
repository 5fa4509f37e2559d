//! Operation generators: what each worker does next. Pure state machines (no clock, no
//! I/O), seeded, so the same seed and the same completions give the same operations.
//!
//! - [`LinKv`]: Jepsen's `tests/linearizable_register.clj` under `independent.clj`'s
//!   `concurrent-generator`, as Maelstrom's lin-kv runs it.
//! - [`ExactlyOnce`]: beyond Maelstrom; session clients with `client_id`/`seq` and `add`.
//!
//! It may not send or wait: workers do that with what it generates.

use std::collections::BTreeSet;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};

use crate::tools::history::OpType;

/// One operation for one worker to perform.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSpec {
    /// The worker's current process id.
    pub process: u64,
    /// `read`, `write`, `cas` or `add`.
    pub f: &'static str,
    /// The key.
    pub key: Value,
    /// The history invoke value: null (read), v (write), [from, to] (cas), delta (add).
    pub value: Value,
    /// Session fields (exactly-once mutations only).
    pub session: Option<(String, u64)>,
}

impl OpSpec {
    /// The request body (without `msg_id`).
    pub fn body(&self) -> Map<String, Value> {
        let mut b = Map::new();
        b.insert("type".into(), Value::from(self.f));
        b.insert("key".into(), self.key.clone());
        match self.f {
            "write" => {
                b.insert("value".into(), self.value.clone());
            }
            "cas" => {
                b.insert("from".into(), self.value[0].clone());
                b.insert("to".into(), self.value[1].clone());
            }
            "add" => {
                b.insert("delta".into(), self.value.clone());
            }
            _ => {}
        }
        if let Some((client_id, seq)) = &self.session {
            b.insert("client_id".into(), Value::from(client_id.as_str()));
            b.insert("seq".into(), Value::from(*seq));
        }
        b
    }
}

/// A source of operations.
pub trait Generator: Send {
    /// The next operation for `worker` (which is free).
    fn next_op(&mut self, worker: usize) -> OpSpec;
    /// `worker` finished its operation with `outcome`.
    fn complete(&mut self, worker: usize, outcome: OpType);
    /// A process id no worker has used or will use (for the harness's own reads).
    fn spare_process(&self) -> u64;
}

/// Process ids, Jepsen's rule: worker i starts as process i and, after every `info`,
/// continues as its process + concurrency.
#[derive(Debug, Clone)]
struct Processes {
    current: Vec<u64>,
}

impl Processes {
    fn new(concurrency: usize) -> Self {
        Processes {
            current: (0..concurrency as u64).collect(),
        }
    }

    fn complete(&mut self, worker: usize, outcome: OpType) {
        if outcome == OpType::Info {
            self.current[worker] += self.current.len() as u64;
        }
    }

    fn spare(&self) -> u64 {
        self.current.iter().max().copied().unwrap_or(0) + self.current.len() as u64
    }
}

#[derive(Debug, Clone)]
struct Group {
    key: u64,
    procs: BTreeSet<u64>,
}

/// Maelstrom's lin-kv generator. Workers form groups of 2n (n = node count); a group works
/// on one key; its first n workers only read, the other n write or cas at 1:2. Keys are
/// 0, 1, 2, ... in order; a group moves to the next key once more than `process_limit`
/// distinct processes have used its key.
pub struct LinKv {
    nodes: usize,
    process_limit: usize,
    procs: Processes,
    groups: Vec<Group>,
    next_key: u64,
    rng: StdRng,
}

impl LinKv {
    /// A generator for `concurrency` workers (a multiple of 2 * `nodes`).
    pub fn new(nodes: usize, concurrency: usize, process_limit: usize, rng: StdRng) -> LinKv {
        let group_size = 2 * nodes;
        let procs = Processes::new(concurrency);
        let groups: Vec<Group> = (0..concurrency / group_size)
            .map(|g| Group {
                key: g as u64,
                procs: (g * group_size..(g + 1) * group_size)
                    .map(|w| w as u64)
                    .collect(),
            })
            .collect();
        LinKv {
            nodes,
            process_limit,
            next_key: groups.len() as u64,
            procs,
            groups,
            rng,
        }
    }
}

impl Generator for LinKv {
    fn next_op(&mut self, worker: usize) -> OpSpec {
        let size = 2 * self.nodes;
        let g = worker / size;
        // ProcessLimit: count every process the group's threads have had.
        let current: BTreeSet<u64> = self.procs.current[g * size..(g + 1) * size]
            .iter()
            .copied()
            .collect();
        let group = &mut self.groups[g];
        let seen: BTreeSet<u64> = group.procs.union(&current).copied().collect();
        if seen.len() > self.process_limit {
            group.key = self.next_key;
            self.next_key += 1;
            group.procs = current;
        } else {
            group.procs = seen;
        }
        let key = Value::from(group.key);
        let process = self.procs.current[worker];
        let (f, value) = if worker % size < self.nodes {
            ("read", Value::Null)
        } else {
            match self.rng.gen_range(0..3) {
                0 => ("write", json!(self.rng.gen_range(0..5))),
                _ => (
                    "cas",
                    json!([self.rng.gen_range(0..5), self.rng.gen_range(0..5)]),
                ),
            }
        };
        OpSpec {
            process,
            f,
            key,
            value,
            session: None,
        }
    }

    fn complete(&mut self, worker: usize, outcome: OpType) {
        self.procs.complete(worker, outcome);
    }

    fn spare_process(&self) -> u64 {
        self.procs.spare()
    }
}

/// Beyond Maelstrom: every worker is a session client named `w<i>` with its own `seq`.
/// Mix: 40% `add` of 1..=5 on one of the counter keys (`"counter-<j>"`), 25% `cas`,
/// 15% `write`, 20% `read` on integer register keys, which advance every
/// `register_ops_per_key` register ops so that each key's history stays short.
pub struct ExactlyOnce {
    procs: Processes,
    seqs: Vec<u64>,
    register_ops: u64,
    register_ops_per_key: u64,
    counter_keys: usize,
    rng: StdRng,
}

impl ExactlyOnce {
    /// A generator for `concurrency` workers.
    pub fn new(
        concurrency: usize,
        register_ops_per_key: u64,
        counter_keys: usize,
        rng: StdRng,
    ) -> Self {
        ExactlyOnce {
            procs: Processes::new(concurrency),
            seqs: vec![0; concurrency],
            register_ops: 0,
            register_ops_per_key,
            counter_keys,
            rng,
        }
    }

    /// The counter keys `add` ops use.
    pub fn counter_keys(n: usize) -> Vec<Value> {
        (0..n)
            .map(|j| Value::from(format!("counter-{j}")))
            .collect()
    }
}

impl Generator for ExactlyOnce {
    fn next_op(&mut self, worker: usize) -> OpSpec {
        let process = self.procs.current[worker];
        let roll = self.rng.gen_range(0..100);
        let (f, key, value) = if roll < 40 {
            let j = self.rng.gen_range(0..self.counter_keys);
            (
                "add",
                Value::from(format!("counter-{j}")),
                json!(self.rng.gen_range(1..=5)),
            )
        } else {
            let key = Value::from(self.register_ops / self.register_ops_per_key);
            self.register_ops += 1;
            match roll {
                40..65 => (
                    "cas",
                    key,
                    json!([self.rng.gen_range(0..5), self.rng.gen_range(0..5)]),
                ),
                65..80 => ("write", key, json!(self.rng.gen_range(0..5))),
                _ => ("read", key, Value::Null),
            }
        };
        let session = (f != "read").then(|| {
            self.seqs[worker] += 1;
            (format!("w{worker}"), self.seqs[worker])
        });
        OpSpec {
            process,
            f,
            key,
            value,
            session,
        }
    }

    fn complete(&mut self, worker: usize, outcome: OpType) {
        self.procs.complete(worker, outcome);
    }

    fn spare_process(&self) -> u64 {
        self.procs.spare()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::harness::seed::derive_rng;

    fn drive(
        g: &mut dyn Generator,
        steps: usize,
        outcome: impl Fn(usize) -> OpType,
    ) -> Vec<OpSpec> {
        let workers = 12;
        (0..steps)
            .map(|i| {
                let w = (i * 7) % workers;
                let op = g.next_op(w);
                g.complete(w, outcome(i));
                op
            })
            .collect()
    }

    #[test]
    fn same_seed_same_operations() {
        let info_every_5 = |i: usize| {
            if i.is_multiple_of(5) {
                OpType::Info
            } else {
                OpType::Ok
            }
        };
        let a = drive(
            &mut LinKv::new(3, 12, 20, derive_rng(7, "ops")),
            500,
            info_every_5,
        );
        let b = drive(
            &mut LinKv::new(3, 12, 20, derive_rng(7, "ops")),
            500,
            info_every_5,
        );
        let c = drive(
            &mut LinKv::new(3, 12, 20, derive_rng(8, "ops")),
            500,
            info_every_5,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let e1 = drive(
            &mut ExactlyOnce::new(12, 60, 3, derive_rng(7, "ops")),
            300,
            info_every_5,
        );
        let e2 = drive(
            &mut ExactlyOnce::new(12, 60, 3, derive_rng(7, "ops")),
            300,
            info_every_5,
        );
        assert_eq!(e1, e2);
    }

    #[test]
    fn lin_kv_groups_readers_writers_and_values_like_jepsen() {
        let mut g = LinKv::new(3, 12, 20, derive_rng(1, "ops"));
        let (mut writes, mut cas) = (0, 0);
        for round in 0..300 {
            for w in 0..12 {
                let op = g.next_op(w);
                g.complete(w, OpType::Ok);
                // Group 0 = workers 0..6 on key 0, group 1 = workers 6..12 on key 1.
                assert_eq!(op.key, json!(w / 6), "round {round}");
                assert_eq!(op.process, w as u64);
                if w % 6 < 3 {
                    assert_eq!(op.f, "read");
                } else {
                    match op.f {
                        "write" => {
                            writes += 1;
                            assert!((0..5).contains(&op.value.as_i64().unwrap()));
                        }
                        "cas" => {
                            cas += 1;
                            assert!(
                                op.value
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .all(|v| (0..5).contains(&v.as_i64().unwrap()))
                            );
                        }
                        f => panic!("writer did {f}"),
                    }
                }
            }
        }
        let ratio = cas as f64 / writes as f64;
        assert!(
            (1.7..2.3).contains(&ratio),
            "write:cas should be 1:2, got {writes}:{cas}"
        );
    }

    #[test]
    fn a_key_retires_after_twenty_processes_and_info_changes_the_process() {
        // n = 1: one group of 2 workers, starting with processes {0, 1}.
        let mut g = LinKv::new(1, 2, 20, derive_rng(1, "ops"));
        let mut keys = Vec::new();
        let mut processes = BTreeSet::new();
        for _ in 0..20 {
            let op = g.next_op(1);
            keys.push(op.key.as_u64().unwrap());
            processes.insert(op.process);
            g.complete(1, OpType::Info);
        }
        assert_eq!(
            processes.len(),
            20,
            "each info gives worker 1 a new process"
        );
        assert!(
            processes.iter().all(|p| p % 2 == 1),
            "process = worker + k * concurrency"
        );
        // Processes 0 and 1, 3, ..., 37 make 20 on key 0; the 21st (39) starts key 1.
        assert!(keys[..19].iter().all(|k| *k == 0), "{keys:?}");
        assert_eq!(keys[19], 1, "{keys:?}");
        assert_eq!(g.next_op(0).key, json!(1), "the whole group moved");
    }

    #[test]
    fn exactly_once_ops_carry_increasing_sessions_and_reads_none() {
        let mut g = ExactlyOnce::new(4, 10, 3, derive_rng(2, "ops"));
        let mut last = [0u64; 4];
        let mut fs = BTreeSet::new();
        for i in 0..400 {
            let w = i % 4;
            let op = g.next_op(w);
            g.complete(w, OpType::Ok);
            fs.insert(op.f);
            match (&op.session, op.f) {
                (None, "read") => {}
                (Some((cid, seq)), _) => {
                    assert_eq!(cid, &format!("w{w}"));
                    assert_eq!(*seq, last[w] + 1);
                    last[w] = *seq;
                    let body = op.body();
                    assert_eq!(body["seq"], json!(seq));
                }
                other => panic!("{other:?}"),
            }
            if op.f == "add" {
                assert!(op.key.as_str().unwrap().starts_with("counter-"));
                assert!(op.body()["delta"].as_i64().unwrap() >= 1);
            }
        }
        assert_eq!(fs, ["add", "cas", "read", "write"].into());
    }
}
