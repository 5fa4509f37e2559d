//! The end-of-run report: `results.json` (shape in `docs/history.md`), its
//! human summary, the plots and the HTML pages. Pure functions of the history
//! plus the figures only the harness knows (message counts, partitions), so the
//! harness and the standalone tools report alike.
//!
//! Layout:
//! - [`stats`]: counts per `f`, availability, latency quantiles.
//! - [`svg`]: the plots (latency per `f`, throughput), nemesis periods shaded.
//! - [`curves`]: figures against a growing dimension (the benchmark sweeps).
//! - [`timeline`]: the operations per process, as Jepsen's `timeline.html`.
//! - [`html`]: a run's `index.html` and the store's list of runs.
//! - [`params`]: the `test` object (every parameter of the run, the command
//!   that re-runs it).
//! - [`harness`]: the `harness` object (facts only the running harness knows) and
//!   the nemesis windows of a history.

pub mod curves;
pub mod harness;
pub mod html;
pub mod params;
pub mod stats;
pub mod svg;
pub mod timeline;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::tools::check::pairs::pair_ops;
use crate::tools::check::{CounterReport, LinReport, Validity};
use crate::tools::history::HistoryOp;
pub use harness::{HarnessFacts, fault_windows, nemesis_count};
pub use params::TestParams;
pub use stats::{Availability, Counts, Quantiles, Stats};
pub use svg::{latency_svg, throughput_svg};

/// Messages one class of endpoints sent and received, as the harness's network
/// counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounts {
    /// Messages sent.
    pub send: u64,
    /// Messages delivered.
    pub recv: u64,
}

/// The harness's message counts, per class as Maelstrom reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInputs {
    /// Every message.
    pub all: NetCounts,
    /// Messages between clients and nodes.
    pub clients: NetCounts,
    /// Messages between nodes.
    pub servers: NetCounts,
}

/// One class's line of the `net` object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NetStats {
    /// Messages sent.
    pub send: u64,
    /// Messages delivered.
    pub recv: u64,
    /// Distinct messages (Maelstrom's `msg-count`). The harness's network
    /// counts a duplicated copy once, as one send, so this equals `send`.
    pub msg_count: u64,
    /// Messages per client invoke (Maelstrom's `msgs-per-op`): the protocol's
    /// cost per op.
    pub msgs_per_op: f64,
}

/// The `net` object of `results.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Net {
    /// Every message.
    pub all: NetStats,
    /// Between clients and nodes.
    pub clients: NetStats,
    /// Between nodes.
    pub servers: NetStats,
}

/// The `nemesis` object of `results.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nemesis {
    /// Partitions started during the run.
    pub partitions: usize,
}

/// `results.json`: the verdict and the figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Every part's verdict merged: invalid beats unknown beats valid.
    pub valid: Validity,
    /// The workload name (`lin-kv`, `exactly-once`).
    pub workload: String,
    /// Per-key linearizability.
    pub linearizable: LinReport,
    /// The counter check; present for the exactly-once workload only (beyond
    /// Maelstrom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exactly_once: Option<CounterReport>,
    /// Op counts.
    pub stats: Stats,
    /// ok / invokes.
    pub availability: Availability,
    /// Latency quantiles of ok ops, per `f`, in ms.
    pub latency_ms: BTreeMap<String, Quantiles>,
    /// Message counts.
    pub net: Net,
    /// Faults injected.
    pub nemesis: Nemesis,
    /// What the harness that ran the test measured besides the history; absent
    /// when a report is rebuilt from a history file alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<HarnessFacts>,
    /// Every parameter of the run and the command that re-runs it; absent when
    /// a report is rebuilt from a history file alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestParams>,
}

/// Assembles `results.json` from the history, the checker's verdict and the
/// harness's own counts.
pub fn build_results(
    workload: &str,
    ops: &[HistoryOp],
    lin: LinReport,
    net: NetInputs,
    partitions: usize,
) -> Results {
    let pairs = pair_ops(ops).pairs;
    let stats = stats::stats(ops, &pairs);
    let mut results = Results {
        valid: Validity::Valid,
        workload: workload.to_string(),
        linearizable: lin,
        exactly_once: None,
        availability: stats::availability(&stats),
        latency_ms: stats::latency_ms(ops, &pairs),
        net: net_stats(net, stats.count),
        stats,
        nemesis: Nemesis { partitions },
        harness: None,
        test: None,
    };
    results.valid = results.merged_validity();
    results
}

impl Results {
    /// Adds the exactly-once counter check and folds it into the verdict.
    pub fn with_exactly_once(mut self, counters: CounterReport) -> Results {
        self.exactly_once = Some(counters);
        self.valid = self.merged_validity();
        self
    }

    /// Adds the harness's own facts; under `--strict-protocol` a protocol
    /// violation makes the run invalid.
    pub fn with_harness(mut self, facts: HarnessFacts) -> Results {
        self.harness = Some(facts);
        self.valid = self.merged_validity();
        self
    }

    /// Adds the run's parameters (they do not touch the verdict).
    pub fn with_test(mut self, params: TestParams) -> Results {
        self.test = Some(params);
        self
    }

    fn merged_validity(&self) -> Validity {
        let stats = if self.stats.valid {
            Validity::Valid
        } else {
            Validity::Invalid
        };
        let counters = self
            .exactly_once
            .as_ref()
            .map_or(Validity::Valid, |c| c.valid);
        let harness = self
            .harness
            .as_ref()
            .map_or(Validity::Valid, HarnessFacts::validity);
        self.linearizable
            .valid
            .merge(stats)
            .merge(counters)
            .merge(harness)
    }
}

fn net_stats(net: NetInputs, invokes: u64) -> Net {
    let line = |c: NetCounts| NetStats {
        send: c.send,
        recv: c.recv,
        msg_count: c.send,
        msgs_per_op: if invokes == 0 {
            0.0
        } else {
            c.send as f64 / invokes as f64
        },
    };
    Net {
        all: line(net.all),
        clients: line(net.clients),
        servers: line(net.servers),
    }
}

/// The end-of-run summary for a terminal: verdicts, counts, latency, messages,
/// and Jepsen's closing line.
pub fn summary(results: &Results) -> String {
    let mut out = format!("workload {}: {}\n", results.workload, results.valid.word());
    if let Some(h) = &results.harness {
        out.push_str(&h.render_header());
    }
    out.push_str(&results.linearizable.render());
    if let Some(c) = &results.exactly_once {
        out.push_str(&c.render());
    }
    summarise_stats(&mut out, results);
    let n = &results.net;
    let _ = writeln!(
        out,
        "net: {} msgs sent ({:.2}/op): clients {} ({:.2}/op), servers {} ({:.2}/op)\n\
         nemesis: {} partitions",
        n.all.send,
        n.all.msgs_per_op,
        n.clients.send,
        n.clients.msgs_per_op,
        n.servers.send,
        n.servers.msgs_per_op,
        results.nemesis.partitions
    );
    if let Some(h) = &results.harness {
        out.push_str(&h.render());
    }
    if let Some(t) = &results.test {
        let _ = writeln!(out, "re-run: {}", t.command_line);
    }
    out.push_str(closing_line(results.valid));
    out.push('\n');
    out
}

fn summarise_stats(out: &mut String, r: &Results) {
    let s = &r.stats;
    let _ = writeln!(
        out,
        "ops: {} invoked: {} ok, {} fail, {} info (ok fraction {:.1}%)",
        s.count,
        s.ok,
        s.fail,
        s.info,
        100.0 * r.availability.ok_fraction
    );
    out.push_str(&op_table(r));
    let missing = stats::fs_without_ok(s);
    if !missing.is_empty() {
        let _ = writeln!(out, "stats: INVALID: no ok op for {}", missing.join(", "));
    }
}

/// The per-operation table: a header row, then one row per `f` with its counts
/// and the latency quantiles of its ok ops (`-` where it has none).
pub fn op_table(r: &Results) -> String {
    let mut out = String::new();
    let width = r
        .stats
        .by_f
        .keys()
        .map(|f| f.chars().count())
        .chain([2])
        .max()
        .unwrap_or(2);
    let _ = writeln!(
        out,
        "  {:<width$} {:>7} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "f", "count", "ok", "fail", "info", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for (f, c) in &r.stats.by_f {
        let _ = write!(
            out,
            "  {f:<width$} {:>7} {:>7} {:>6} {:>6}",
            c.count, c.ok, c.fail, c.info
        );
        match r.latency_ms.get(f) {
            Some(q) => {
                let _ = writeln!(out, " {:>9} {:>9} {:>9} {:>9}", q.p50, q.p95, q.p99, q.max);
            }
            None => {
                let _ = writeln!(out, " {:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-");
            }
        }
    }
    out
}

/// Jepsen's closing lines, which Maelstrom users know.
fn closing_line(valid: Validity) -> &'static str {
    match valid {
        Validity::Valid => "Everything looks good! ヽ(‘ー`)ノ",
        Validity::Invalid => "Analysis invalid! (ﾉಥ益ಥ）ﾉ ┻━┻",
        Validity::Unknown => "Errors occurred during analysis, but no anomalies found. ಠ~ಠ",
    }
}
