//! A worker: one client, performing the operations the scheduler hands it, one at a time,
//! and recording each as an invoke plus one completion.
//!
//! - lin-kv (Maelstrom's rules, `client.clj` `with-errors`): ok -> `ok`; definite error ->
//!   `fail`; indefinite error or timeout -> `info`, except reads, which are `fail`; a
//!   reply that breaks its schema crashes the op -> `info`.
//! - exactly-once (beyond Maelstrom): a timeout, an indefinite error, or error 11 is retried
//!   with the same `client_id`/`seq` on the next node, until a definite answer; 1000
//!   session-expired and 1001 stale-request are final `info` results.
//!
//! It may not choose operations (the workload's) nor when they go out (the scheduler's).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{CallError, Client};
use super::net::Net;
use super::process::ClientIds;
use super::recorder::Recorder;
use super::schema::{Reply, classify};
use super::workload::OpSpec;
use crate::tools::history::{HistoryOp, OpType, Process};

/// History error code for a reply that broke its schema (not a Maelstrom code).
pub const MALFORMED_CODE: i64 = -1;
/// History error code for a request the network refused to queue (not a Maelstrom code).
pub const REFUSED_CODE: i64 = -2;
/// Maelstrom's code for a timeout (net-timeout is recorded as code 0).
pub const TIMEOUT_CODE: i64 = 0;

/// A reply that broke its schema, kept for `results.json`.
pub use crate::tools::report::harness::Malformed;

/// Malformed replies seen so far.
pub struct MalformedLog {
    count: AtomicU64,
    kept: std::sync::Mutex<Vec<Malformed>>,
    keep: usize,
}

impl MalformedLog {
    /// Keeps the first `keep` verbatim.
    pub fn new(keep: usize) -> Self {
        MalformedLog {
            count: AtomicU64::new(0),
            kept: std::sync::Mutex::new(Vec::new()),
            keep,
        }
    }

    fn report(&self, m: Malformed) {
        crate::stderr_line!(
            "\nMALFORMED REPLY from {} to {}: {}\n    body: {}",
            m.node,
            m.request,
            m.reason,
            m.reply
        );
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut k = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if k.len() < self.keep {
            k.push(m);
        }
    }

    /// (total, kept).
    pub fn snapshot(&self) -> (u64, Vec<Malformed>) {
        (
            self.count.load(Ordering::Relaxed),
            self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        )
    }
}

/// Retry policy for exactly-once workers.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Give up (record `info`, or `fail` for reads) after this instant.
    pub deadline: Instant,
    /// Pause after an immediate failure before the next attempt.
    pub backoff: Duration,
}

/// One worker.
pub struct Worker {
    /// Its client connection: a new one (a new client id) after each `info`,
    /// as Jepsen opens a new client for the new process (Maelstrom's clients
    /// are not reusable).
    pub client: Client,
    /// Where new clients come from: the network and the id counter.
    pub opener: (Arc<Net>, Arc<ClientIds>),
    /// The node it is bound to (lin-kv: forever; exactly-once: first attempt).
    pub node: usize,
    /// All node ids (exactly-once retries rotate through them).
    pub nodes: Arc<Vec<String>>,
    /// Client RPC timeout.
    pub timeout: Duration,
    /// Where ops go.
    pub recorder: Arc<Recorder>,
    /// Where malformed replies go.
    pub malformed: Arc<MalformedLog>,
    /// `Some` for exactly-once workers.
    pub retry: Option<RetryPolicy>,
}

fn op_line(spec: &OpSpec, kind: OpType, value: Value, error: Option<(i64, String)>) -> HistoryOp {
    HistoryOp {
        process: Process::Client(spec.process),
        kind,
        f: spec.f.to_string(),
        key: Some(spec.key.clone()),
        value,
        time: 0,
        error,
        client_id: spec.session.as_ref().map(|s| s.0.clone()),
        seq: spec.session.as_ref().map(|s| s.1),
    }
}

/// The result of one attempt.
enum Attempt {
    Done(OpType, Value, Option<(i64, String)>),
    /// May have happened or not; retryable in exactly-once.
    Unsure(OpType, (i64, String), bool),
}

impl Worker {
    /// Performs `spec`, records it, and returns its final type.
    pub async fn perform(&mut self, spec: &OpSpec) -> OpType {
        self.recorder
            .record(op_line(spec, OpType::Invoke, spec.value.clone(), None));
        let mut node = self.node;
        // Once an attempt may have taken effect, giving up can only be `info`.
        let mut maybe_happened = false;
        let (kind, value, error) = loop {
            let attempt = self.attempt(spec, node).await;
            match (attempt, &self.retry) {
                (Attempt::Done(k, v, e), _) => break (k, v, e),
                (Attempt::Unsure(k, e, _), None) => break (k, spec.value.clone(), Some(e)),
                (Attempt::Unsure(k, e, immediate), Some(policy)) => {
                    maybe_happened |= k == OpType::Info;
                    if Instant::now() >= policy.deadline {
                        let k = if maybe_happened { OpType::Info } else { k };
                        break (k, spec.value.clone(), Some(e));
                    }
                    if immediate {
                        tokio::time::sleep(policy.backoff).await;
                    }
                    node = (node + 1) % self.nodes.len();
                }
            }
        };
        self.recorder.record(op_line(spec, kind, value, error));
        if kind == OpType::Info {
            // The process crashed: its successor gets a client of its own.
            let (net, ids) = &self.opener;
            self.client = Client::open(net.clone(), ids.next());
        }
        kind
    }

    async fn attempt(&mut self, spec: &OpSpec, node: usize) -> Attempt {
        let read = spec.f == "read";
        let unsure = if read { OpType::Fail } else { OpType::Info };
        let eo = self.retry.is_some();
        let dest = self.nodes[node].clone();
        match self.client.call(&dest, spec.body(), self.timeout).await {
            Err(CallError::Timeout) => {
                Attempt::Unsure(unsure, (TIMEOUT_CODE, "net-timeout".into()), false)
            }
            Err(CallError::Refused(e)) => {
                Attempt::Unsure(OpType::Fail, (REFUSED_CODE, e.to_string()), true)
            }
            Ok(reply) => match classify(spec.f, &reply) {
                Reply::Ok(v) => {
                    let value = match spec.f {
                        "read" | "add" => v.unwrap_or(Value::Null),
                        _ => spec.value.clone(),
                    };
                    Attempt::Done(OpType::Ok, value, None)
                }
                Reply::Error { code, text, .. } if eo && (code == 1000 || code == 1001) => {
                    Attempt::Done(unsure, spec.value.clone(), Some((code, text)))
                }
                Reply::Error { code: 11, text, .. } if eo => {
                    Attempt::Unsure(OpType::Fail, (11, text), true)
                }
                Reply::Error {
                    code,
                    text,
                    definite,
                } => {
                    if definite {
                        Attempt::Done(OpType::Fail, spec.value.clone(), Some((code, text)))
                    } else {
                        Attempt::Unsure(unsure, (code, text), true)
                    }
                }
                Reply::Malformed(reason) => {
                    self.malformed.report(Malformed {
                        node: dest,
                        request: spec.f.to_string(),
                        reply,
                        reason: reason.clone(),
                    });
                    Attempt::Done(
                        OpType::Info,
                        spec.value.clone(),
                        Some((MALFORMED_CODE, format!("malformed-rpc-response: {reason}"))),
                    )
                }
            },
        }
    }
}
