//! The timeline of operations, as Jepsen's `timeline.html` (which Maelstrom
//! writes for every run): one column per process, history lines running down
//! (a fixed height per line, as Jepsen draws it, so short ops stay readable;
//! the gutter gives the time every few lines), each op a box from its invoke's
//! line to its completion's, coloured by outcome (ok, fail, info; never
//! completed: info with a dashed edge, to the end), the op on hover. Nemesis
//! periods are bands across every column.
//!
//! Plain HTML and CSS, no script; a pure function of the ops and the windows.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::svg::{Window, escape};
use crate::tools::check::pairs::pair_ops;
use crate::tools::history::{HistoryOp, OpType, Process};

/// Most ops drawn (Jepsen's timeline stops at 10,000 too): past it, the first
/// this many by invoke are drawn and the page says so. Keeps the page a few MB.
pub const MAX_OPS: usize = 10_000;

/// Pixels per history line (Jepsen: 16).
const LINE_PX: f64 = 16.0;
/// The gutter gives the time every this many lines.
const TICK_LINES: usize = 25;
/// The time gutter on the left and the header row, in pixels.
const GUTTER_PX: f64 = 56.0;
const HEADER_PX: f64 = 22.0;
/// Column widths: wide when few (Jepsen: 100), at least wide enough for a short
/// label when many (the page then scrolls sideways, as Jepsen's does).
const COLUMN_PX_MAX: f64 = 100.0;
const COLUMN_PX_MIN: f64 = 64.0;
/// The total width the columns aim for when there are many.
const COLUMNS_PX: f64 = 1400.0;

/// Jepsen's timeline colours for ok, fail, info.
const OK: &str = "#6DB6FE";
const FAIL: &str = "#FEB5DA";
const INFO: &str = "#FFAA26";

/// The CSS the timeline needs (once per page).
pub const STYLE: &str = ".timeline{position:relative;font:11px sans-serif}\
.timeline .op{position:absolute;box-sizing:border-box;border:1px solid rgba(0,0,0,.35);\
overflow:hidden;white-space:nowrap;padding:0 2px;line-height:12px}\
.timeline .open{border-style:dashed}\
.timeline .hdr{position:absolute;top:0;height:20px;text-align:center;font-weight:bold;overflow:hidden}\
.timeline .tick{position:absolute;left:0;width:50px;text-align:right;color:#444;border-top:1px solid #999;font-size:10px}\
.timeline .band{position:absolute;background:rgba(136,136,136,.22)}\
.timeline .band.kill{background:rgba(214,39,40,.12)}\
.timeline .bandno{position:absolute;left:2px;font-size:10px;color:#333}";

/// The timeline as an HTML fragment (a `div`), plus a one-line note of what was
/// left out, if anything.
pub fn timeline_html(ops: &[HistoryOp], windows: &[Window]) -> String {
    let pairs = pair_ops(ops).pairs;
    let shown = &pairs[..pairs.len().min(MAX_OPS)];
    let processes: Vec<u64> = shown
        .iter()
        .filter_map(|p| match ops[p.invoke].process {
            Process::Client(n) => Some(n),
            Process::Nemesis => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // The last line drawn: the last line of a shown op (all of them if none is cut).
    let last_line = if shown.len() < pairs.len() {
        shown
            .iter()
            .map(|p| p.completion.unwrap_or(p.invoke))
            .max()
            .unwrap_or(0)
    } else {
        ops.len().saturating_sub(1)
    };
    let y = |line: usize| HEADER_PX + line as f64 * LINE_PX;
    // The first line at or after `ns` (the history is in time order).
    let line_at = |ns: u64| ops.partition_point(|o| o.time < ns).min(last_line + 1);
    let col = (COLUMNS_PX / processes.len().max(1) as f64).clamp(COLUMN_PX_MIN, COLUMN_PX_MAX);
    let x = |p: u64| {
        let i = processes.binary_search(&p).unwrap_or(0);
        GUTTER_PX + i as f64 * col
    };
    let width = GUTTER_PX + col * processes.len() as f64;
    let height = y(last_line + 1) + LINE_PX;
    let mut out = String::new();
    if pairs.len() > shown.len() {
        let _ = writeln!(
            out,
            "<p class=\"note\">The first {} of {} ops are drawn.</p>",
            shown.len(),
            pairs.len()
        );
    }
    let _ = writeln!(
        out,
        "<div class=\"timeline\" style=\"width:{width:.0}px;height:{height:.0}px\">"
    );
    for (i, (start, end, description)) in windows.iter().enumerate() {
        let from = line_at(*start);
        if from > last_line {
            continue;
        }
        let to = end.map_or(last_line + 1, line_at);
        let kill = if description.starts_with("kill") {
            " kill"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<div class=\"band{kill}\" style=\"left:0;top:{:.1}px;width:{width:.0}px;height:{:.1}px\" \
             title=\"#{} {}\"><span class=\"bandno\">#{}</span></div>",
            y(from),
            ((to.max(from) - from) as f64 * LINE_PX).max(2.0),
            i + 1,
            escape(description),
            i + 1
        );
    }
    for line in (0..=last_line).step_by(TICK_LINES) {
        if let Some(op) = ops.get(line) {
            let _ = writeln!(
                out,
                "<div class=\"tick\" style=\"top:{:.1}px\">{:.3} s</div>",
                y(line),
                op.time as f64 / 1e9
            );
        }
    }
    for p in &processes {
        let _ = writeln!(
            out,
            "<div class=\"hdr\" style=\"left:{:.1}px;width:{:.1}px\" title=\"process {p}\">{p}</div>",
            x(*p),
            col - 2.0
        );
    }
    for pair in shown {
        let invoke = &ops[pair.invoke];
        let Process::Client(p) = invoke.process else {
            continue;
        };
        let done = pair.completion.map(|c| &ops[c]);
        let (colour, class) = match done.map(|d| d.kind) {
            Some(OpType::Ok) => (OK, "op ok"),
            Some(OpType::Fail) => (FAIL, "op fail"),
            Some(_) => (INFO, "op info"),
            None => (INFO, "op info open"),
        };
        let end = pair.completion.unwrap_or(last_line + 1);
        let top = y(pair.invoke);
        let h = ((end.max(pair.invoke + 1) - pair.invoke) as f64 * LINE_PX).max(LINE_PX);
        let _ = writeln!(
            out,
            "<div class=\"{class}\" style=\"left:{:.1}px;top:{top:.1}px;width:{:.1}px;height:{h:.1}px;background:{colour}\" \
             title=\"{}\">{}</div>",
            x(p),
            col - 2.0,
            escape(&describe(p, invoke, done)),
            escape(&short(invoke, done))
        );
    }
    out.push_str("</div>\n");
    out
}

fn value_text(op: &HistoryOp) -> String {
    match &op.key {
        Some(k) => format!("{} {k} {}", op.f, op.value),
        None => format!("{} {}", op.f, op.value),
    }
}

/// The box's text: the op as it completed (its invoke if it never did).
fn short(invoke: &HistoryOp, done: Option<&HistoryOp>) -> String {
    let op = done.unwrap_or(invoke);
    let mut text = value_text(&HistoryOp {
        key: op.key.clone().or_else(|| invoke.key.clone()),
        ..op.clone()
    });
    if text.chars().count() > 40 {
        text = text.chars().take(40).collect::<String>() + "…";
    }
    text
}

/// The hover text: process, the op invoked and how it ended, times.
fn describe(process: u64, invoke: &HistoryOp, done: Option<&HistoryOp>) -> String {
    let t = |ns: u64| format!("{:.3} s", ns as f64 / 1e9);
    let mut s = format!(
        "process {process}\ninvoke {} at {}",
        value_text(invoke),
        t(invoke.time)
    );
    match done {
        Some(d) => {
            let kind = match d.kind {
                OpType::Ok => "ok",
                OpType::Fail => "fail",
                _ => "info",
            };
            let _ = write!(
                s,
                "\n{kind} {} at {} ({:.3} ms)",
                d.value,
                t(d.time),
                d.time.saturating_sub(invoke.time) as f64 / 1e6
            );
            if let Some((code, text)) = &d.error {
                let _ = write!(s, "\nerror {code}: {text}");
            }
        }
        None => s.push_str("\nnever completed (info)"),
    }
    if let (Some(c), Some(q)) = (&invoke.client_id, invoke.seq) {
        let _ = write!(s, "\nsession {c} seq {q}");
    }
    s
}
