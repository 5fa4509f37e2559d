//! `results.json`, the human summary and `latency.svg`, from a finished run.
//!
//! This is the harness's adapter to the report: it computes Maelstrom's figures (stats
//! per f, availability, latency quantiles, net counts and msgs-per-op) and adds the
//! harness's own section (seed, CPU share, protocol violations, malformed replies,
//! which features go beyond Maelstrom).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::check::{CounterReport, LinReport, Validity};
use crate::history::{Op, OpType, Process};

use super::net::{Counts, NetStats};
use super::process::Violation;
use super::worker::Malformed;

/// Everything the harness measured besides the history.
#[derive(Debug, Clone, Serialize)]
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
    /// Completed client ops per second of time limit.
    pub ops_per_s: f64,
    /// Protocol violations: total and the first few.
    pub protocol_violations: (u64, Vec<Violation>),
    /// Malformed replies: total and the first few.
    pub malformed_replies: (u64, Vec<Malformed>),
    /// Features of this run that Maelstrom does not have.
    pub beyond_maelstrom: Vec<String>,
}

/// Per-f counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FStats {
    /// Completions.
    pub count: u64,
    /// ok.
    pub ok: u64,
    /// fail.
    pub fail: u64,
    /// info.
    pub info: u64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (invoke time, completion) pairs for client ops, by process.
pub fn pairs(ops: &[Op]) -> Vec<(&Op, &Op)> {
    let mut open: BTreeMap<u64, &Op> = BTreeMap::new();
    let mut out = Vec::new();
    for op in ops {
        let Process::Client(p) = op.process else {
            continue;
        };
        if op.kind == OpType::Invoke {
            open.insert(p, op);
        } else if let Some(inv) = open.remove(&p) {
            out.push((inv, op));
        }
    }
    out
}

fn net_json(c: Counts, invokes: u64) -> Value {
    let per_op = if invokes > 0 {
        c.msgs as f64 / invokes as f64
    } else {
        0.0
    };
    json!({"send": c.send, "recv": c.recv, "msg_count": c.msgs, "msgs_per_op": per_op})
}

/// Builds `results.json`.
pub fn build(
    workload: &str,
    ops: &[Op],
    lin: &LinReport,
    counters: Option<&CounterReport>,
    net: &NetStats,
    facts: &HarnessFacts,
) -> (Validity, Value) {
    let mut by_f: BTreeMap<String, FStats> = BTreeMap::new();
    let mut lat: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut total = FStats::default();
    for (inv, done) in pairs(ops) {
        let s = by_f.entry(done.f.clone()).or_default();
        for s in [s, &mut total] {
            s.count += 1;
            match done.kind {
                OpType::Ok => s.ok += 1,
                OpType::Fail => s.fail += 1,
                _ => s.info += 1,
            }
        }
        if done.kind == OpType::Ok {
            let ms = done.time.saturating_sub(inv.time) as f64 / 1e6;
            lat.entry(done.f.clone()).or_default().push(ms);
        }
    }
    let invokes = ops
        .iter()
        .filter(|o| o.kind == OpType::Invoke && o.process != Process::Nemesis)
        .count() as u64;
    let latency: BTreeMap<String, Value> = lat
        .into_iter()
        .map(|(f, mut v)| {
            v.sort_by(f64::total_cmp);
            let q = |x| (quantile(&v, x) * 1000.0).round() / 1000.0;
            (f, json!({"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": q(1.0), "count": v.len()}))
        })
        .collect();
    // Jepsen's stats checker: every f needs at least one ok.
    let stats_valid = !by_f.is_empty() && by_f.values().all(|s| s.ok > 0);
    let mut valid = lin.valid;
    if !stats_valid {
        valid = valid.merge(Validity::Invalid);
    }
    if let Some(c) = counters {
        valid = valid.merge(c.valid);
    }
    if facts.protocol_violations.0 > 0 {
        valid = valid.merge(Validity::Invalid);
    }
    let count_f = |f: &str| {
        ops.iter()
            .filter(|o| o.process == Process::Nemesis && o.f == f)
            .count()
    };
    let mut results = json!({
        "valid": valid,
        "workload": workload,
        "linearizable": lin,
        "stats": {"valid": stats_valid, "count": total.count, "ok": total.ok, "fail": total.fail,
                  "info": total.info, "by_f": by_f},
        "availability": {"ok_fraction": if invokes > 0 { total.ok as f64 / invokes as f64 } else { 0.0 }},
        "latency_ms": latency,
        "net": {"all": net_json(net.all, invokes), "clients": net_json(net.clients, invokes),
                "servers": net_json(net.servers, invokes),
                "dropped_partition": net.dropped_partition, "dropped_loss": net.dropped_loss,
                "duplicated": net.duplicated, "dropped_down": net.dropped_down},
        "nemesis": {"partitions": count_f("start-partition"), "kills": count_f("kill")},
        "harness": facts,
    });
    if let Some(c) = counters {
        results["exactly_once"] = json!(c);
    }
    (valid, results)
}

/// The human summary.
pub fn summary(results: &Value) -> String {
    let mut s = String::new();
    let r = results;
    let h = &r["harness"];
    let _ = writeln!(
        s,
        "== {} | seed {} | {} nodes, {} workers, {} s ==",
        r["workload"].as_str().unwrap_or("?"),
        h["seed"],
        h["node_count"],
        h["concurrency"],
        h["time_limit_s"]
    );
    let st = &r["stats"];
    let _ = writeln!(
        s,
        "ops: {} completed ({} ok, {} fail, {} info), {:.1} ops/s, availability {:.1}%",
        st["count"],
        st["ok"],
        st["fail"],
        st["info"],
        h["ops_per_s"].as_f64().unwrap_or(0.0),
        100.0 * r["availability"]["ok_fraction"].as_f64().unwrap_or(0.0)
    );
    if let Some(by_f) = st["by_f"].as_object() {
        for (f, c) in by_f {
            let l = &r["latency_ms"][f];
            let _ = writeln!(
                s,
                "  {f:<6} ok {:>6} fail {:>5} info {:>5} | ok latency ms p50 {} p95 {} p99 {} max {}",
                c["ok"], c["fail"], c["info"], l["p50"], l["p95"], l["p99"], l["max"]
            );
        }
    }
    let n = &r["net"];
    let _ = writeln!(
        s,
        "net: {} msgs ({} between servers), {:.2} msgs/op, {:.2} server msgs/op",
        n["all"]["msg_count"],
        n["servers"]["msg_count"],
        n["all"]["msgs_per_op"].as_f64().unwrap_or(0.0),
        n["servers"]["msgs_per_op"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        s,
        "nemesis: {} partitions, {} kills",
        r["nemesis"]["partitions"], r["nemesis"]["kills"]
    );
    if let Some(b) = h["beyond_maelstrom"].as_array().filter(|b| !b.is_empty()) {
        let names: Vec<&str> = b.iter().filter_map(Value::as_str).collect();
        let _ = writeln!(s, "BEYOND MAELSTROM: {}", names.join("; "));
    }
    let _ = writeln!(
        s,
        "harness cpu: {}",
        h["cpu_share"]
            .as_f64()
            .map_or("n/a".into(), |c| format!("{:.0}% of one core", 100.0 * c))
    );
    let pv = h["protocol_violations"][0].as_u64().unwrap_or(0);
    if pv > 0 {
        let _ = writeln!(
            s,
            "PROTOCOL VIOLATIONS: {pv} (see results.json harness.protocol_violations)"
        );
    }
    let mr = h["malformed_replies"][0].as_u64().unwrap_or(0);
    if mr > 0 {
        let _ = writeln!(
            s,
            "MALFORMED REPLIES: {mr} (recorded as info, as Maelstrom does)"
        );
    }
    let lin = &r["linearizable"];
    let _ = writeln!(
        s,
        "linearizable: {} ({} keys checked, {} failing)",
        word(&lin["valid"]),
        lin["keys_checked"],
        lin["failures"].as_array().map_or(0, Vec::len)
    );
    if let Some(f) = lin["failures"].as_array().and_then(|f| f.first()) {
        let _ = writeln!(
            s,
            "  first failing key {}: {} ops in the window, e.g.",
            f["key"],
            f["ops"].as_array().map_or(0, Vec::len)
        );
        for op in f["ops"].as_array().into_iter().flatten().take(8) {
            let _ = writeln!(s, "    {op}");
        }
    }
    if let Some(e) = r.get("exactly_once") {
        let _ = writeln!(
            s,
            "exactly-once counters (beyond Maelstrom): {}",
            word(&e["valid"])
        );
        for k in e["keys"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "  {}: final {} ({}), ok adds {} summing {}, info adds {}, verdict {}",
                k["key"],
                k["final_value"],
                k["final_source"].as_str().unwrap_or(""),
                k["ok_adds"],
                k["ok_sum"],
                k["info_adds"],
                k["verdict"].as_str().unwrap_or("?")
            );
        }
    }
    let _ = write!(s, "verdict: {}", word(&r["valid"]));
    s
}

fn word(v: &Value) -> &'static str {
    match v {
        Value::Bool(true) => "VALID",
        Value::Bool(false) => "INVALID",
        _ => "UNKNOWN",
    }
}

/// Partition windows (start ns, end ns if healed, description) from the history.
pub fn fault_windows(ops: &[Op]) -> Vec<(u64, Option<u64>, String)> {
    let mut out: Vec<(u64, Option<u64>, String)> = Vec::new();
    for op in ops.iter().filter(|o| o.process == Process::Nemesis) {
        match op.f.as_str() {
            "start-partition" | "kill" => {
                out.push((op.time, None, format!("{} {}", op.f, op.value)))
            }
            "stop-partition" | "start" => {
                let prefix = if op.f == "start" {
                    "kill"
                } else {
                    "start-partition"
                };
                if let Some(w) = out
                    .iter_mut()
                    .rev()
                    .find(|w| w.1.is_none() && w.2.starts_with(prefix))
                {
                    w.1 = Some(op.time);
                }
            }
            _ => {}
        }
    }
    out
}

/// A latency-over-time scatter plot: one dot per completed op (green ok, orange info,
/// red fail), log-scaled latency, faults shaded.
pub fn latency_svg(ops: &[Op]) -> String {
    let (w, h, left, bottom) = (1000.0, 400.0, 60.0, 30.0);
    let pts = pairs(ops);
    let t_max = ops.last().map_or(1, |o| o.time).max(1) as f64;
    let lat = |i: &Op, d: &Op| (d.time.saturating_sub(i.time) as f64 / 1e6).max(0.01);
    let l_max = pts.iter().map(|(i, d)| lat(i, d)).fold(1.0, f64::max);
    let (lo, hi) = (0.01f64.log10(), l_max.log10().max(0.0) + 0.1);
    let x = |t: f64| left + (w - left - 10.0) * t / t_max;
    let y = |ms: f64| (h - bottom) - (h - bottom - 10.0) * (ms.log10() - lo) / (hi - lo);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    for (a, b, label) in fault_windows(ops) {
        let (xa, xb) = (x(a as f64), x(b.map_or(t_max, |b| b as f64)));
        let color = if label.starts_with("kill") {
            "#F3C1C1"
        } else {
            "#E9DCA0"
        };
        let _ = write!(
            s,
            r#"<rect x="{xa:.1}" y="10" width="{:.1}" height="{:.1}" fill="{color}" opacity="0.6"><title>{}</title></rect>"#,
            (xb - xa).max(1.0),
            h - bottom - 10.0,
            label.replace('"', "'")
        );
    }
    for (i, d) in &pts {
        let color = match d.kind {
            OpType::Ok => "#3A9A3A",
            OpType::Info => "#E08A1E",
            _ => "#C83232",
        };
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{color}"/>"#,
            x(d.time as f64),
            y(lat(i, d))
        );
    }
    let mut ms = 0.01;
    while ms <= 10f64.powf(hi) {
        let _ = write!(
            s,
            r##"<text x="5" y="{:.1}">{ms} ms</text><line x1="{left}" x2="{w}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            y(ms) + 4.0,
            y(ms),
            y(ms)
        );
        ms *= 10.0;
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{}">time (s) 0 .. {:.1}; green ok, orange info, red fail; shaded: partitions (yellow), kills (pink)</text></svg>"#,
        h - 8.0,
        t_max / 1e9
    );
    s.push('\n');
    s
}
