//! The `harness` object of `results.json`: what only the harness that ran the
//! test knows (seed, its own CPU share, protocol violations, malformed replies,
//! kills, network faults, which features go beyond Maelstrom). Not in
//! `docs/history.md`'s contract, so every field lives here, apart from
//! the keys that file lists.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tools::check::Validity;
use crate::tools::history::{HistoryOp, OpType, Process};

/// One offending stdout line of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The node that wrote it.
    pub node: String,
    /// What is wrong.
    pub reason: String,
    /// The line, verbatim (lossily decoded).
    pub line: String,
}

/// A reply that broke its schema (the op is recorded as `info`, as Maelstrom does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Malformed {
    /// The node that sent it.
    pub node: String,
    /// The request type.
    pub request: String,
    /// The reply body.
    pub reply: Value,
    /// What is wrong.
    pub reason: String,
}

/// The protocol-violations section: stdout lines of nodes that broke Maelstrom's
/// message schema (each dropped). By default they are reported and the verdict is
/// the checker's, as under Maelstrom, which logs such a line; under
/// `--strict-protocol` any violation makes the run invalid.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProtocolViolations {
    /// How many lines broke the protocol.
    pub count: u64,
    /// Whether the run was `--strict-protocol` (a violation makes it invalid).
    pub strict: bool,
    /// Whether the run was `--read-on-bad-lines` (a node is read on after a
    /// bad line, where Maelstrom stops reading it).
    #[serde(default)]
    pub read_on: bool,
    /// The first few, verbatim.
    pub first: Vec<Violation>,
}

impl ProtocolViolations {
    /// Invalid only under `--strict-protocol`.
    pub fn validity(&self) -> Validity {
        if self.strict && self.count > 0 {
            Validity::Invalid
        } else {
            Validity::Valid
        }
    }

    /// The summary's section (empty when there is none).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.count == 0 {
            return out;
        }
        let reading = if self.read_on {
            "logged, and each node read on after them (--read-on-bad-lines; Maelstrom stops reading a node at its first)"
        } else {
            "logged, and as under Maelstrom a node is not read after its first line that is not a valid message (--read-on-bad-lines reads on)"
        };
        let effect = if self.strict {
            format!("{reading}; the run is INVALID (--strict-protocol)")
        } else {
            format!(
                "{reading}; the verdict is the checker's (--strict-protocol makes any violation invalid)"
            )
        };
        let _ = writeln!(
            out,
            "PROTOCOL VIOLATIONS: {}: {effect}; see results.json harness.protocol_violations",
            self.count
        );
        for v in &self.first {
            let _ = writeln!(out, "  {}: {}: {}", v.node, v.reason, v.line);
        }
        out
    }
}

/// `--availability` (Maelstrom's availability checker): the fraction of client
/// ops that must complete ok, and whether the run met it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityCheck {
    /// Required ok / invoked (`total` is 1).
    pub required: f64,
    /// What the run got: ok / invoked client ops, 1 when none was invoked (as Maelstrom).
    pub ok_fraction: f64,
    /// `ok_fraction >= required`.
    pub valid: bool,
}

impl AvailabilityCheck {
    /// Checks `required` against the client ops of `ops`, counted as Maelstrom's
    /// checker counts them (`h/oks` over `h/invokes`).
    pub fn of(required: f64, ops: &[HistoryOp]) -> AvailabilityCheck {
        let client = || ops.iter().filter(|o| o.process != Process::Nemesis);
        let invokes = client().filter(|o| o.kind == OpType::Invoke).count();
        let oks = client().filter(|o| o.kind == OpType::Ok).count();
        let ok_fraction = if invokes == 0 {
            1.0
        } else {
            oks as f64 / invokes as f64
        };
        AvailabilityCheck {
            required,
            ok_fraction,
            valid: ok_fraction >= required,
        }
    }
}

/// Messages the simulated network did not deliver as sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetFaults {
    /// Node-to-node messages dropped by partitions (at dequeue).
    pub dropped_partition: u64,
    /// Node-to-node messages lost by `--p-loss`.
    pub dropped_loss: u64,
    /// Extra copies delivered by `--p-dup`.
    pub duplicated: u64,
    /// Messages to a node that was down when they came due.
    pub dropped_down: u64,
    /// Sends refused because a queue was full.
    pub refused_full: u64,
}

/// The `harness` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessFacts {
    /// The run's seed.
    pub seed: u64,
    /// Nodes.
    pub node_count: usize,
    /// Workers.
    pub concurrency: usize,
    /// Seconds of op issuing.
    pub time_limit_s: f64,
    /// Harness CPU seconds per wall second over the run (1.0 = one core).
    pub cpu_share: Option<f64>,
    /// Completed client ops per second of the run.
    pub ops_per_s: f64,
    /// Protocol violations, their own section.
    pub protocol_violations: ProtocolViolations,
    /// `--availability`'s check, when the flag was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<AvailabilityCheck>,
    /// Malformed replies: total and the first few.
    pub malformed_replies: (u64, Vec<Malformed>),
    /// Nodes killed by the nemesis (beyond Maelstrom).
    pub kills: usize,
    /// Messages dropped or duplicated by the network.
    pub net_faults: NetFaults,
    /// Features of this run that Maelstrom does not have.
    pub beyond_maelstrom: Vec<String>,
}

impl HarnessFacts {
    /// Invalid if a node broke the envelope protocol under `--strict-protocol`, or
    /// the run fell short of `--availability`; else valid.
    pub fn validity(&self) -> Validity {
        let available = match self.availability {
            Some(a) if !a.valid => Validity::Invalid,
            _ => Validity::Valid,
        };
        self.protocol_violations.validity().merge(available)
    }

    /// The run's header line for the summary.
    pub fn render_header(&self) -> String {
        format!(
            "seed {} | {} nodes, {} workers, {} s | {:.1} ops/s\n",
            self.seed, self.node_count, self.concurrency, self.time_limit_s, self.ops_per_s
        )
    }

    /// The harness's lines for the summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.beyond_maelstrom.is_empty() {
            let _ = writeln!(
                out,
                "BEYOND MAELSTROM: {}",
                self.beyond_maelstrom.join("; ")
            );
        }
        if self.kills > 0 {
            let _ = writeln!(out, "kills: {}", self.kills);
        }
        let f = &self.net_faults;
        let _ = writeln!(
            out,
            "network: {} dropped by partitions, {} lost, {} duplicated, {} to down nodes",
            f.dropped_partition, f.dropped_loss, f.duplicated, f.dropped_down
        );
        let cpu = self
            .cpu_share
            .map_or("n/a".into(), |c| format!("{:.0}% of one core", 100.0 * c));
        let _ = writeln!(out, "harness cpu: {cpu}");
        if let Some(a) = &self.availability {
            let _ = writeln!(
                out,
                "availability: ok fraction {:.4}, required {}: {}",
                a.ok_fraction,
                a.required,
                if a.valid { "met" } else { "INVALID" }
            );
        }
        out.push_str(&self.protocol_violations.render());
        let mr = self.malformed_replies.0;
        if mr > 0 {
            let _ = writeln!(
                out,
                "MALFORMED REPLIES: {mr} (recorded as info, as Maelstrom does)"
            );
        }
        out
    }
}

/// True for a `start-partition` value (a grudge: node -> nodes it does not
/// hear) that blocks no link, such as `minority-third` on 3 nodes: nothing was
/// cut, so it is neither shaded nor counted.
pub fn cuts_nothing(grudge: &Value) -> bool {
    grudge
        .as_object()
        .is_some_and(|g| g.values().all(|v| v.as_array().is_some_and(Vec::is_empty)))
}

/// A nemesis op that did something: a partition that cut no link did not.
fn effective(op: &HistoryOp) -> bool {
    op.process == Process::Nemesis && !(op.f == "start-partition" && cuts_nothing(&op.value))
}

/// Nemesis fault windows from a history: (start ns, end ns if it ended,
/// description), for the plots. A partition ends at the next
/// `stop-partition`, a kill of a node at its next `start`. A partition that cut
/// nothing ([`cuts_nothing`]) is no window.
pub fn fault_windows(ops: &[HistoryOp]) -> Vec<(u64, Option<u64>, String)> {
    let mut out: Vec<(u64, Option<u64>, String)> = Vec::new();
    let mut open: Vec<(usize, &str, String)> = Vec::new();
    for op in ops.iter().filter(|o| effective(o)) {
        let node = op.value.as_str().unwrap_or("").to_string();
        match op.f.as_str() {
            "start-partition" | "kill" => {
                let description = if op.f == "kill" {
                    format!("kill {node}")
                } else {
                    format!("partition {}", op.value)
                };
                open.push((out.len(), op.f.as_str(), node));
                out.push((op.time, None, description));
            }
            "stop-partition" | "start" => {
                let (opened_by, node) = if op.f == "start" {
                    ("kill", node)
                } else {
                    ("start-partition", String::new())
                };
                if let Some(i) = open
                    .iter()
                    .position(|(_, f, n)| *f == opened_by && (opened_by != "kill" || *n == node))
                {
                    let (w, ..) = open.remove(i);
                    out[w].1 = Some(op.time);
                }
            }
            _ => {}
        }
    }
    out
}

/// How many times the nemesis performed `f` (`start-partition`, `kill`); a
/// partition that cut nothing does not count.
pub fn nemesis_count(ops: &[HistoryOp], f: &str) -> usize {
    ops.iter().filter(|o| effective(o) && o.f == f).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nemesis(f: &str, value: Value, time: u64) -> HistoryOp {
        HistoryOp {
            process: Process::Nemesis,
            kind: OpType::Info,
            f: f.into(),
            key: None,
            value,
            time,
            error: None,
            client_id: None,
            seq: None,
        }
    }

    fn op(process: Process, kind: OpType) -> HistoryOp {
        HistoryOp {
            process,
            kind,
            ..nemesis("read", Value::Null, 0)
        }
    }

    #[test]
    fn violations_invalidate_only_under_strict_protocol() {
        let mut pv = ProtocolViolations {
            count: 2,
            strict: false,
            read_on: false,
            first: vec![Violation {
                node: "n1".into(),
                reason: "src and dest must be strings".into(),
                line: r#"{"src":null}"#.into(),
            }],
        };
        assert_eq!(pv.validity(), Validity::Valid);
        let text = pv.render();
        assert!(text.starts_with("PROTOCOL VIOLATIONS: 2: "), "{text}");
        assert!(text.contains("the verdict is the checker's"), "{text}");
        assert!(text.contains(r#"n1: src and dest must be strings: {"src":null}"#));
        assert!(
            text.contains("a node is not read after its first"),
            "{text}"
        );
        pv.read_on = true;
        assert!(pv.render().contains("each node read on after them"));
        pv.strict = true;
        assert_eq!(pv.validity(), Validity::Invalid);
        assert!(pv.render().contains("INVALID (--strict-protocol)"));
        assert_eq!(ProtocolViolations::default().render(), "");
    }

    #[test]
    fn availability_counts_client_oks_over_client_invokes_like_maelstrom() {
        let c = Process::Client(0);
        let ops = [
            op(c, OpType::Invoke),
            op(c, OpType::Ok),
            op(c, OpType::Invoke),
            op(c, OpType::Fail),
            nemesis("start-partition", json!({}), 1),
        ];
        let a = AvailabilityCheck::of(0.5, &ops);
        assert_eq!((a.ok_fraction, a.valid), (0.5, true));
        assert!(!AvailabilityCheck::of(1.0, &ops).valid);
        // Nothing invoked: Maelstrom's fraction is 1.
        assert!(AvailabilityCheck::of(1.0, &[]).valid);
    }

    #[test]
    fn windows_pair_starts_with_their_ends() {
        let ops = [
            nemesis("start-partition", json!({"n0": ["n1"]}), 1),
            nemesis("kill", json!("n2"), 2),
            nemesis("stop-partition", Value::Null, 3),
            nemesis("kill", json!("n1"), 4),
            nemesis("start", json!("n2"), 5),
            nemesis("start-partition", json!({"n0": ["n2"]}), 6),
        ];
        let w = fault_windows(&ops);
        assert_eq!(
            w.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
            vec![(1, Some(3)), (2, Some(5)), (4, None), (6, None)]
        );
        assert_eq!(w[1].2, "kill n2");
        assert!(w[0].2.starts_with("partition {"));
        assert_eq!(nemesis_count(&ops, "kill"), 2);
        assert_eq!(nemesis_count(&ops, "start-partition"), 2);
    }

    #[test]
    fn a_partition_that_cuts_nothing_is_no_window_and_no_count() {
        let ops = [
            nemesis("start-partition", json!({"n0": [], "n1": [], "n2": []}), 1),
            nemesis("stop-partition", Value::Null, 2),
            nemesis("start-partition", json!({"n0": ["n1"], "n1": []}), 3),
            nemesis("stop-partition", Value::Null, 4),
        ];
        assert!(cuts_nothing(&json!({})));
        assert!(!cuts_nothing(&json!({"n0": ["n1"]})));
        let w = fault_windows(&ops);
        assert_eq!(
            w.iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
            vec![(3, Some(4))]
        );
        assert_eq!(nemesis_count(&ops, "start-partition"), 1);
    }
}
