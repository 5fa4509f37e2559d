//! Histories for the checker's tests: a small builder for hand-written ones, and
//! [`sim`], a seeded simulation that generates large linearizable ones.
#![allow(dead_code)] // each test file uses a different part

pub mod sim;

use oncekv::tools::history::{HistoryOp, OpType, Process};
use serde_json::{Value, json};

/// Builds a history line by line; each line is 1 ms after the previous one.
#[derive(Default)]
pub struct H {
    pub ops: Vec<HistoryOp>,
}

impl H {
    fn push(&mut self, p: u64, kind: OpType, f: &str, key: Value, value: Value) -> &mut Self {
        let time = (self.ops.len() as u64 + 1) * 1_000_000;
        let error = matches!(kind, OpType::Fail | OpType::Info).then(|| (0, "test".to_string()));
        let (process, f, key) = (Process::Client(p), f.to_string(), Some(key));
        let (client_id, seq) = (None, None);
        self.ops.push(HistoryOp {
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
        self
    }

    /// Invokes `f` on key `k` by process `p`.
    pub fn inv(&mut self, p: u64, f: &str, k: i64, value: Value) -> &mut Self {
        self.push(p, OpType::Invoke, f, json!(k), value)
    }

    fn done(&mut self, p: u64, kind: OpType, value: Option<Value>) -> &mut Self {
        let invoke = self
            .ops
            .iter()
            .rev()
            .find(|o| o.process == Process::Client(p) && o.kind == OpType::Invoke)
            .expect("completion without invoke in test")
            .clone();
        let value = value.unwrap_or(invoke.value);
        self.push(p, kind, &invoke.f, invoke.key.unwrap_or_default(), value)
    }

    /// Completes `p`'s op as ok with `value` (the read value, or the add total).
    pub fn ok(&mut self, p: u64, value: Value) -> &mut Self {
        self.done(p, OpType::Ok, Some(value))
    }

    /// Completes `p`'s op as ok, echoing the invoke's value (writes, cas).
    pub fn ok_echo(&mut self, p: u64) -> &mut Self {
        self.done(p, OpType::Ok, None)
    }

    /// Completes `p`'s op as fail.
    pub fn fail(&mut self, p: u64) -> &mut Self {
        self.done(p, OpType::Fail, None)
    }

    /// Completes `p`'s op as info.
    pub fn info(&mut self, p: u64) -> &mut Self {
        self.done(p, OpType::Info, None)
    }

    /// A whole write on key `k`.
    pub fn write(&mut self, p: u64, k: i64, v: Value) -> &mut Self {
        self.inv(p, "write", k, v).ok_echo(p)
    }

    /// A whole ok read on key `k` that saw `v`.
    pub fn read(&mut self, p: u64, k: i64, v: Value) -> &mut Self {
        self.inv(p, "read", k, Value::Null).ok(p, v)
    }

    /// A whole ok add on key `k`.
    pub fn add(&mut self, p: u64, k: i64, delta: i64, total: i64) -> &mut Self {
        self.inv(p, "add", k, json!(delta)).ok(p, json!(total))
    }
}
