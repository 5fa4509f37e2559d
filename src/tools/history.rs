//! The history file format (`history.jsonl`), shared by the harness, the checker and
//! any tool that reads a run. The shape is a contract: see `docs/testing.md` and
//! `docs/history.md`.
//!
//! It may not import the product: the history is about a run of any Maelstrom
//! node, written by the harness and read by the checker and the report.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who performed an operation: a client process (a fresh id after every `info`,
/// Jepsen's rule) or the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    /// A client worker's current process id.
    Client(u64),
    /// The fault injector.
    Nemesis,
}

impl Serialize for Process {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Process::Client(p) => s.serialize_u64(*p),
            Process::Nemesis => s.serialize_str("nemesis"),
        }
    }
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) if n.as_u64().is_some() => {
                Ok(Process::Client(n.as_u64().unwrap_or(0)))
            }
            Value::String(s) if s == "nemesis" => Ok(Process::Nemesis),
            other => Err(serde::de::Error::custom(format!(
                "process must be a non-negative integer or \"nemesis\", got {other}"
            ))),
        }
    }
}

/// The kind of a history line: an invocation or one of its three outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The operation was sent.
    Invoke,
    /// It took effect, with this result.
    Ok,
    /// It definitely did not take effect.
    Fail,
    /// It may or may not have taken effect (timeout, indefinite error).
    Info,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryOp {
    /// The client process, or the nemesis.
    pub process: Process,
    /// Invoke or outcome.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// `read`, `write`, `cas`, `add`, or a nemesis function.
    pub f: String,
    /// The key, as sent (absent on nemesis events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Value>,
    /// read: null on invoke, the value on ok; write: the value; cas: [from, to];
    /// add: delta on invoke, new total on ok; nemesis: its description.
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run, monotonic.
    pub time: u64,
    /// On fail/info: `[code, text]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<(i64, String)>,
    /// Present on ops sent with an exactly-once session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Present on ops sent with an exactly-once session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// Reads a history file, one op per non-empty line; the error names the bad line.
pub fn read_jsonl(text: &str) -> Result<Vec<HistoryOp>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}: {l}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_spec_examples() {
        let text = r#"{"process":3,"type":"invoke","f":"write","key":0,"value":4,"time":1830211}
{"process":5,"type":"fail","f":"cas","key":0,"value":[4,2],"time":2400000,"error":[22,"expected 4, had 1"]}
{"process":"nemesis","type":"info","f":"start-partition","value":{"n0":["n1","n2"]},"time":5000000000}"#;
        let ops = read_jsonl(text).expect("parses");
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[1].error, Some((22, "expected 4, had 1".to_string())));
        assert_eq!(ops[2].process, Process::Nemesis);
        let again: Vec<String> = ops
            .iter()
            .map(|o| serde_json::to_string(o).unwrap())
            .collect();
        assert_eq!(again.join("\n"), text);
    }
}
