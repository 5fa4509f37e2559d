//! The history as it happens: every client op and nemesis event, stamped under one lock
//! so that file order is real-time order, plus live counters for the progress line.
//!
//! It may not judge what it records: checking is [`crate::tools::check`]'s.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde_json::Value;

use crate::tools::history::{HistoryOp, OpType, Process};

/// Live tallies for the progress line.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Client invocations so far.
    pub invokes: u64,
    /// Completions by type.
    pub ok: u64,
    /// Definite failures.
    pub fail: u64,
    /// Indefinite outcomes.
    pub info: u64,
    /// What the nemesis is doing now, for humans.
    pub fault: String,
}

struct Inner {
    ops: Vec<HistoryOp>,
    tally: Tally,
}

/// Records ops with their time in ns since the start of the run.
pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Recorder {
    /// A recorder whose time zero is `start`.
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            inner: Mutex::new(Inner {
                ops: Vec::new(),
                tally: Tally {
                    fault: "none".into(),
                    ..Tally::default()
                },
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `op`, stamping its time now, under the lock and after the line
    /// before it (1 ns later if the clock has not moved), so times strictly
    /// increase: the checker reads real-time order from `time` and takes equal
    /// times as concurrent, and this keeps it equal to the line order.
    pub fn record(&self, mut op: HistoryOp) {
        let mut g = self.lock();
        let now = self.start.elapsed().as_nanos() as u64;
        op.time = g.ops.last().map_or(now, |last| now.max(last.time + 1));
        if op.process != Process::Nemesis {
            match op.kind {
                OpType::Invoke => g.tally.invokes += 1,
                OpType::Ok => g.tally.ok += 1,
                OpType::Fail => g.tally.fail += 1,
                OpType::Info => g.tally.info += 1,
            }
        }
        g.ops.push(op);
    }

    /// Records a nemesis event and what humans should see while it lasts.
    pub fn nemesis(&self, f: &str, value: Value, fault: String) {
        let op = HistoryOp {
            process: Process::Nemesis,
            kind: OpType::Info,
            f: f.to_string(),
            key: None,
            value,
            time: 0,
            error: None,
            client_id: None,
            seq: None,
        };
        self.record(op);
        self.lock().tally.fault = fault;
    }

    /// The live tallies.
    pub fn tally(&self) -> Tally {
        self.lock().tally.clone()
    }

    /// Ns since the start of the run.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The history so far.
    pub fn ops(&self) -> Vec<HistoryOp> {
        self.lock().ops.clone()
    }
}
