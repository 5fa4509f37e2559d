//! The HTML pages: a run's `index.html` (verdict, parameters and the command
//! that re-runs it, the per-operation table, the summary, the latency and
//! throughput plots, the nemesis periods and the timeline) and the store's
//! `index.html` (every run, newest first). Self-contained: inline SVG and CSS,
//! no script, nothing fetched. Pure functions: the caller writes the files.

use std::fmt::Write as _;

use super::svg::{Window, escape, latency_svg, throughput_svg};
use super::timeline::{self, timeline_html};
use super::{Results, TestParams};
use crate::tools::check::Validity;
use crate::tools::history::HistoryOp;

const STYLE: &str = "body{font:14px sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}\
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere}\
.valid{color:#1a7f37}.invalid{color:#cf222e}.unknown{color:#9a6700}\
svg{max-width:100%;height:auto;display:block}\
.scroll{max-height:80vh;overflow:auto;border:1px solid #ccc}\
.note{color:#555}";

fn verdict_class(v: Validity) -> &'static str {
    match v {
        Validity::Valid => "valid",
        Validity::Invalid => "invalid",
        Validity::Unknown => "unknown",
    }
}

/// The files a run folder holds, linked from its page.
const RUN_FILES: [(&str, &str); 7] = [
    ("results.json", "every figure and parameter"),
    ("summary.txt", "the summary as printed"),
    ("history.jsonl", "the history, one op a line"),
    ("latency.svg", "latency plot"),
    ("throughput.svg", "throughput plot"),
    ("timeline.html", "timeline alone"),
    ("node-logs/", "each node's stderr"),
];

/// A run's `index.html`; `in_store` links it up to the store's list of runs.
pub fn run_page(
    results: &Results,
    summary: &str,
    ops: &[HistoryOp],
    windows: &[Window],
    in_store: bool,
) -> String {
    let name = results
        .test
        .as_ref()
        .map_or(results.workload.as_str(), |t| t.name.as_str());
    let word = results.valid.word();
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{} {word}</title><style>{STYLE}{}</style></head><body>\n{}\
         <h1>{}: <span class=\"{}\">{word}</span></h1>\n",
        escape(name),
        timeline::STYLE,
        if in_store {
            "<p><a href=\"../../index.html\">all runs</a></p>\n"
        } else {
            ""
        },
        escape(name),
        verdict_class(results.valid)
    );
    if let Some(t) = &results.test {
        params_section(&mut out, t);
    }
    out.push_str("<h2>Files</h2>\n<ul>\n");
    for (file, what) in RUN_FILES {
        let _ = writeln!(out, "<li><a href=\"{file}\">{file}</a>: {what}</li>");
    }
    out.push_str("</ul>\n<h2>Operations</h2>\n");
    op_table_html(&mut out, results);
    let _ = writeln!(
        out,
        "<h2>Summary</h2>\n<pre>{}</pre>\n<h2>Latency by operation type</h2>\n{}\
         <h2>Throughput</h2>\n{}",
        escape(summary),
        latency_svg(ops, windows),
        throughput_svg(ops, windows)
    );
    nemesis_section(&mut out, windows);
    let _ = writeln!(
        out,
        "<h2>Timeline</h2>\n<p class=\"note\">One column per process (a worker's process \
         changes after an info, as in Jepsen), time running down; boxes from invoke to \
         completion: <span style=\"background:#6DB6FE\">&nbsp;ok&nbsp;</span> \
         <span style=\"background:#FEB5DA\">&nbsp;fail&nbsp;</span> \
         <span style=\"background:#FFAA26\">&nbsp;info&nbsp;</span> (dashed: never \
         completed); hover a box for the op. Grey bands: partitions; red: a node down.</p>\n\
         <div class=\"scroll\">{}</div>\n</body></html>",
        timeline_html(ops, windows)
    );
    out
}

/// `timeline.html`: the timeline alone, as Maelstrom writes it.
pub fn timeline_page(title: &str, ops: &[HistoryOp], windows: &[Window]) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{} timeline</title><style>{STYLE}{}</style></head><body>\n{}</body></html>\n",
        escape(title),
        timeline::STYLE,
        timeline_html(ops, windows)
    )
}

fn params_section(out: &mut String, t: &TestParams) {
    let latency = format!("{} ms, {}", t.latency_ms, t.latency_dist);
    let nemesis = if t.nemesis.is_empty() {
        "none".to_string()
    } else {
        format!("{}, every ~{} s", t.nemesis.join(","), t.nemesis_interval_s)
    };
    let rows: [(&str, String); 13] = [
        ("workload", t.workload.clone()),
        ("bin", t.bin.clone()),
        ("args", t.args.join(" ")),
        ("nodes", t.nodes.join(" ")),
        ("concurrency", t.concurrency.to_string()),
        ("rate", format!("{} /s", t.rate)),
        ("time limit", format!("{} s", t.time_limit_s)),
        ("latency", latency),
        ("nemesis", nemesis),
        ("p_loss / p_dup", format!("{} / {}", t.p_loss, t.p_dup)),
        ("seed", t.seed.to_string()),
        ("started", t.started.clone()),
        ("working directory", t.cwd.clone()),
    ];
    out.push_str("<h2>Run</h2>\n<table>\n");
    for (k, v) in rows {
        let _ = writeln!(out, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    let _ = writeln!(
        out,
        "</table>\n<p>Run it again:</p>\n<pre class=\"command\">{}</pre>",
        escape(&t.command_line)
    );
}

fn op_table_html(out: &mut String, r: &Results) {
    out.push_str(
        "<table class=\"ops\">\n<tr><th>f</th><th>count</th><th>ok</th><th>fail</th>\
         <th>info</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th></tr>\n",
    );
    for (f, c) in &r.stats.by_f {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td>",
            escape(f),
            c.count,
            c.ok,
            c.fail,
            c.info
        );
        match r.latency_ms.get(f) {
            Some(q) => {
                for v in [q.p50, q.p95, q.p99, q.max] {
                    let _ = write!(out, "<td class=\"n\">{v}</td>");
                }
            }
            None => out.push_str(&"<td class=\"n\">-</td>".repeat(4)),
        }
        out.push_str("</tr>\n");
    }
    let s = &r.stats;
    let _ = writeln!(
        out,
        "<tr><th>all</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td colspan=\"4\">ok fraction {:.1}%</td></tr>\n</table>",
        s.count,
        s.ok,
        s.fail,
        s.info,
        100.0 * r.availability.ok_fraction
    );
}

fn nemesis_section(out: &mut String, windows: &[Window]) {
    out.push_str("<h2>Nemesis</h2>\n");
    if windows.is_empty() {
        out.push_str("<p>No fault was injected (a partition that cut no link is not one).</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"nemesis\">\n<tr><th>#</th><th>from (s)</th><th>to (s)</th><th>what</th></tr>\n",
    );
    for (i, (start, end, description)) in windows.iter().enumerate() {
        let end = end.map_or("end of run".to_string(), secs);
        let _ = writeln!(
            out,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{end}</td><td>{}</td></tr>",
            i + 1,
            secs(*start),
            escape(description)
        );
    }
    out.push_str("</table>\n");
}

fn secs(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

/// One run in the store's list.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEntry {
    /// The run folder, relative to the store (`lin-kv/20261202T071544.123Z`).
    pub path: String,
    /// The verdict; `None` if the run has no readable `results.json` (it ended
    /// without a verdict, or is still going).
    pub valid: Option<Validity>,
    /// What `results.json` records of the run, if it could be read.
    pub test: Option<TestParams>,
    /// The workload, from `results.json`.
    pub workload: String,
    /// Client ops invoked, and the fraction that were ok.
    pub ops: u64,
    /// ok / invokes.
    pub ok_fraction: f64,
}

/// The store's `index.html`: every run, newest first (by folder name, which is
/// the start time), with its verdict, workload, seed and date.
pub fn store_page(runs: &[RunEntry]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>oncekv test runs</title><style>{STYLE}</style></head><body>\n\
         <h1>Test runs ({})</h1>\n<p><a href=\"latest/index.html\">latest run</a></p>\n\
         <table class=\"runs\">\n<tr><th>started (UTC)</th><th>test</th><th>verdict</th><th>workload</th>\
         <th>seed</th><th>bin</th><th>nodes</th><th>ops</th><th>ok</th><th>nemesis</th><th>run</th></tr>\n",
        runs.len()
    );
    let mut sorted: Vec<&RunEntry> = runs.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |r: &RunEntry| {
            let stamp = r.path.rsplit('/').next().unwrap_or("").to_string();
            (stamp, r.path.clone())
        };
        key(b).cmp(&key(a))
    });
    for r in sorted {
        let (name, started, seed, bin, nodes, nemesis) = match &r.test {
            Some(t) => (
                t.name.clone(),
                t.started.clone(),
                t.seed.to_string(),
                t.bin.clone(),
                t.nodes.len().to_string(),
                if t.nemesis.is_empty() {
                    "none".to_string()
                } else {
                    t.nemesis.join(",")
                },
            ),
            None => (
                r.path.split('/').next().unwrap_or("").to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        let (word, class) = r
            .valid
            .map_or(("no verdict", "unknown"), |v| (v.word(), verdict_class(v)));
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{word}</td><td>{}</td><td class=\"n\">{}</td>\
             <td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}%</td><td>{}</td>\
             <td><a href=\"{}/index.html\">{}</a></td></tr>",
            escape(&started),
            escape(&name),
            class,
            escape(&r.workload),
            escape(&seed),
            escape(&bin),
            nodes,
            r.ops,
            100.0 * r.ok_fraction,
            escape(&nemesis),
            escape(&r.path),
            escape(&r.path)
        );
    }
    out.push_str("</table>\n</body></html>\n");
    out
}
