//! A seeded simulation of a linearizable register store under concurrent clients,
//! producing histories that are linearizable by construction. Tests use it to
//! check the checker at scale (and to corrupt a history and see it caught).
//!
//! Clients work as Jepsen's `independent` workload: groups of workers share one
//! key at a time, half reading and half writing (write:cas 1:2, or add on counter
//! keys); a key retires after its share of ops and the group takes the next key.
//! Each op takes effect at one instant between its invoke and its completion.
//! Some ops time out (`info`): they take effect or not, at random, and the worker
//! continues under a fresh process id, as in Jepsen. Once all ops are done, each
//! counter key is read once more.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use oncekv::tools::history::{HistoryOp, OpType, Process};

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed for every random choice: the same config gives the same history.
    pub seed: u64,
    /// Client ops to invoke in total.
    pub ops: usize,
    /// Keys to spread them over (each gets `ops / keys`).
    pub keys: usize,
    /// The last this-many keys are counters (`add` and `read` only).
    pub counter_keys: usize,
    /// Worker groups, each on one key at a time.
    pub groups: usize,
    /// Workers per group (its concurrency on a key).
    pub group_size: usize,
    /// Probability an op times out and completes as `info`.
    pub info_probability: f64,
}

/// A simulated run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRun {
    /// The history, in real-time order.
    pub history: Vec<HistoryOp>,
    /// Each counter key's final value, keyed by the key's JSON text (the shape
    /// [`super::check_counters`] takes).
    pub final_counters: BTreeMap<String, Value>,
}

/// Runs the simulation.
pub fn simulate(cfg: &SimConfig) -> SimRun {
    let mut sim = Sim::new(cfg);
    for w in 0..sim.workers.len() {
        let at = sim.rng.gen_range(0..THINK_NS);
        sim.schedule(at, w, Phase::Invoke);
    }
    while let Some(Reverse((now, _, w, phase))) = sim.queue.pop() {
        sim.handle(now, w, phase);
    }
    sim.final_reads();
    let final_counters = sim.final_counters();
    SimRun {
        history: sim.history,
        final_counters,
    }
}

/// Largest think time between a worker's ops.
const THINK_NS: u64 = 1_000_000;
/// Largest time from invoke to effect, and from effect to reply.
const HALF_LATENCY_NS: u64 = 2_000_000;
/// Largest extra wait before a timed-out op is reported as `info`.
const TIMEOUT_NS: u64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Invoke,
    Apply,
    Complete,
}

/// One worker's op in flight.
#[derive(Debug, Clone)]
struct InFlight {
    key: usize,
    f: &'static str,
    value: Value,
    /// Whether it times out, and if so whether it takes effect anyway.
    timeout: Option<bool>,
    /// The reply, set when it takes effect.
    reply: Option<(OpType, Value)>,
}

struct Worker {
    process: u64,
    group: usize,
    reader: bool,
    op: Option<InFlight>,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    rng: StdRng,
    queue: BinaryHeap<Reverse<(u64, u64, usize, Phase)>>,
    seq: u64,
    workers: Vec<Worker>,
    /// Per group: its current key, and ops it has invoked on it.
    group_key: Vec<(usize, usize)>,
    next_key: usize,
    next_process: u64,
    invoked: usize,
    registers: Vec<Value>,
    history: Vec<HistoryOp>,
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a SimConfig) -> Self {
        let n = cfg.groups * cfg.group_size;
        let workers = (0..n)
            .map(|i| Worker {
                process: i as u64,
                group: i / cfg.group_size,
                reader: i % 2 == 0,
                op: None,
            })
            .collect();
        Sim {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
            queue: BinaryHeap::new(),
            seq: 0,
            workers,
            group_key: (0..cfg.groups).map(|g| (g, 0)).collect(),
            next_key: cfg.groups,
            next_process: n as u64,
            invoked: 0,
            registers: vec![Value::Null; cfg.keys],
            history: Vec::new(),
        }
    }

    fn schedule(&mut self, at: u64, worker: usize, phase: Phase) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, worker, phase)));
    }

    fn handle(&mut self, now: u64, w: usize, phase: Phase) {
        match phase {
            Phase::Invoke => self.invoke(now, w),
            Phase::Apply => self.apply(w),
            Phase::Complete => self.complete(now, w),
        }
    }

    /// The group's key, moving it to a fresh key when this one has had its share.
    fn key_for(&mut self, group: usize) -> Option<usize> {
        let per_key = (self.cfg.ops / self.cfg.keys).max(1);
        let (key, used) = self.group_key[group];
        if used < per_key && key < self.cfg.keys {
            self.group_key[group].1 += 1;
            return Some(key);
        }
        if self.next_key >= self.cfg.keys {
            return None;
        }
        self.group_key[group] = (self.next_key, 1);
        self.next_key += 1;
        Some(self.next_key - 1)
    }

    fn invoke(&mut self, now: u64, w: usize) {
        if self.invoked >= self.cfg.ops {
            return;
        }
        let Some(key) = self.key_for(self.workers[w].group) else {
            return;
        };
        self.invoked += 1;
        let (f, value) = self.choose(key, self.workers[w].reader);
        let timeout = self
            .rng
            .gen_bool(self.cfg.info_probability)
            .then(|| self.rng.gen_bool(0.5));
        self.emit(now, w, OpType::Invoke, key, f, value.clone());
        self.workers[w].op = Some(InFlight {
            key,
            f,
            value,
            timeout,
            reply: None,
        });
        let apply_at = now + 1 + self.rng.gen_range(0..HALF_LATENCY_NS);
        let done_at = apply_at + 1 + self.rng.gen_range(0..HALF_LATENCY_NS);
        let extra = if timeout.is_some() {
            self.rng.gen_range(0..TIMEOUT_NS)
        } else {
            0
        };
        if timeout != Some(false) {
            self.schedule(apply_at, w, Phase::Apply);
        }
        self.schedule(done_at + extra, w, Phase::Complete);
    }

    fn choose(&mut self, key: usize, reader: bool) -> (&'static str, Value) {
        let counter = key >= self.cfg.keys - self.cfg.counter_keys.min(self.cfg.keys);
        match (reader, counter) {
            (true, _) => ("read", Value::Null),
            (false, true) => ("add", json!(self.rng.gen_range(1..=5))),
            (false, false) if self.rng.gen_ratio(1, 3) => {
                ("write", json!(self.rng.gen_range(0..5)))
            }
            (false, false) => (
                "cas",
                json!([self.rng.gen_range(0..5), self.rng.gen_range(0..5)]),
            ),
        }
    }

    /// The op takes effect now, atomically.
    fn apply(&mut self, w: usize) {
        let Some(op) = self.workers[w].op.as_mut() else {
            return;
        };
        let reg = &mut self.registers[op.key];
        op.reply = Some(match op.f {
            "read" => (OpType::Ok, reg.clone()),
            "write" => {
                *reg = op.value.clone();
                (OpType::Ok, op.value.clone())
            }
            "cas" if *reg == op.value[0] => {
                *reg = op.value[1].clone();
                (OpType::Ok, op.value.clone())
            }
            "cas" => (OpType::Fail, op.value.clone()),
            _ => {
                let total = reg.as_i64().unwrap_or(0) + op.value.as_i64().unwrap_or(0);
                *reg = json!(total);
                (OpType::Ok, json!(total))
            }
        });
    }

    fn complete(&mut self, now: u64, w: usize) {
        let Some(op) = self.workers[w].op.take() else {
            return;
        };
        let (kind, value) = match (op.timeout, op.reply) {
            (Some(_), _) => (OpType::Info, op.value.clone()),
            (None, Some(reply)) => reply,
            (None, None) => unreachable!("an op without timeout always applies"),
        };
        self.emit(now, w, kind, op.key, op.f, value);
        if let Some(last) = self.history.last_mut() {
            last.error = match kind {
                OpType::Info => Some((0, "timeout".into())),
                OpType::Fail => Some((22, "cas mismatch".into())),
                _ => None,
            };
        }
        if kind == OpType::Info {
            self.workers[w].process = self.next_process;
            self.next_process += 1;
        }
        let next = now + self.rng.gen_range(0..THINK_NS);
        self.schedule(next, w, Phase::Invoke);
    }

    fn emit(&mut self, time: u64, w: usize, kind: OpType, key: usize, f: &str, value: Value) {
        let process = Process::Client(self.workers[w].process);
        let (key, f) = (Some(json!(key)), f.to_string());
        let (error, client_id, seq) = (None, None, None);
        self.history.push(HistoryOp {
            process,
            kind,
            f,
            key,
            value,
            time,
            error,
            client_id,
            seq,
        });
    }

    /// Reads every counter once the run is quiet, from a fresh process each, as
    /// the harness does for the exactly-once workload.
    fn final_reads(&mut self) {
        let mut time = self.history.last().map_or(0, |o| o.time);
        let first = self.cfg.keys - self.cfg.counter_keys.min(self.cfg.keys);
        for key in first..self.cfg.keys {
            self.workers[0].process = self.next_process;
            self.next_process += 1;
            let value = self.registers[key].clone();
            time += 1;
            self.emit(time, 0, OpType::Invoke, key, "read", Value::Null);
            time += 1;
            self.emit(time, 0, OpType::Ok, key, "read", value);
        }
    }

    fn final_counters(&self) -> BTreeMap<String, Value> {
        let first = self.cfg.keys - self.cfg.counter_keys.min(self.cfg.keys);
        (first..self.cfg.keys)
            .map(|k| (k.to_string(), self.registers[k].clone()))
            .collect()
    }
}
